#!/usr/bin/env bash
# A short GPU iteration (two to three minutes) on a machine with .gpu-carry
# from scripts/gpu-prepare.sh: the CUDA tests, racecheck on the decode and
# top-k tests, the decode and scoring benchmarks, per-launch durations of a
# decode step, and the stall profile of one decode-attention launch (batch 4)
# and one top-k launch. The full check is scripts/gpu-check.sh.
# Logs (at most 8 files) in $OUT (or /tmp/gpu-quick).
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp/gpu-quick}
mkdir -p "$log"
tests=.gpu-carry/kvsq_native_tests
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
short() { grep -E '^  [a-zA-Z_].*\(|gpu__time_duration' "$1" | paste - - | sed -E 's/\(unnamed>::[A-Za-z]+\)//; s/, Context.*gpu__time_duration.sum//' | awk '{$1=$1; print}'; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$log/native.txt"
date -u +"date: %Y-%m-%d %H:%M UTC" | tee -a "$log/native.txt"
timeout 100 "$tests" cuda_ >> "$log/native.txt" 2>&1; echo "native rc=$?"; grep -E "FAIL|passed" "$log/native.txt"
{ timeout 70 "$CS" --tool racecheck --error-exitcode 9 "$tests" cuda_decode; echo "rc=$?";
  timeout 40 "$CS" --tool racecheck --error-exitcode 9 "$tests" cuda_topk; echo "rc=$?"; } > "$log/racecheck.txt" 2>&1
grep -E "FAIL|passed|SUMMARY|^rc=" "$log/racecheck.txt"
export KVSQ_CUDA_BENCH=1
{ timeout 60 "$tests" cuda_decode_bench; timeout 60 "$tests" cuda_bench_scores; } > "$log/bench.txt" 2>&1
echo "bench rc=$?"; grep BENCH "$log/bench.txt"
# durations: two plain then two H2O steps of the benchmark's B=1 case (53 plain steps come first)
timeout 60 "$NCU" --clock-control none --metrics gpu__time_duration.sum -k 'regex:plan|attn|score_kernel|read_scores' -s 102 -c 10 "$tests" cuda_decode_bench > /tmp/dd.txt 2>&1
short /tmp/dd.txt > "$log/durations.txt"; head -12 "$log/durations.txt"
sections="--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis"
# tile-kernel launches before batch 4's plain step: 3 + 50 for each of B=1's
# plain, H2O and Quest runs, the same without dependent launches, and plain
# and H2O with a host plan (8 x 53), then 6 of batch 4's; warp-page kernel
# launches before batch 4's: B=1's plain, H2O and Quest (3 x 53), then 6
timeout 60 "$NCU" --clock-control none $sections -k regex:attn_kernel -s 430 -c 1 "$tests" cuda_decode_bench > "$log/attn.txt" 2>&1
timeout 60 "$NCU" --clock-control none $sections -k regex:wp_kernel -s 165 -c 1 "$tests" cuda_decode_bench > "$log/wp.txt" 2>&1
timeout 60 "$NCU" --clock-control none $sections -k regex:topk_kernel -s 1 -c 1 "$tests" cuda_bench_scores > "$log/topk.txt" 2>&1
grep -ihE 'attn_kernel|wp_kernel|topk_kernel|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Issue Slots Busy|SM Active|Elapsed Cycles' "$log/attn.txt" "$log/wp.txt" "$log/topk.txt" | cut -c1-150
