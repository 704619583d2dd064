#!/usr/bin/env bash
# Hardware-counter profile of the hot CUDA kernels (Nsight Compute, clocks
# left alone), on a GPU machine with .gpu-carry from scripts/gpu-prepare.sh:
#   1. per-launch durations of every kernel in the decode benchmark (which
#      kernels a decode step and a Quest step are made of, and what each costs);
#   2. speed of light, occupancy, warp stalls and memory sections for one
#      launch each of decode attention, window scores, top-k and Quest bounds.
# Logs in $OUT/gpu-profile (or /tmp/gpu-profile).
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp}/gpu-profile
mkdir -p "$log"
tests=.gpu-carry/kvsq_native_tests
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
export KVSQ_CUDA_BENCH=1
timeout 120 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
  -k 'regex:^(?!fill)' -c 160 "$tests" cuda_decode_bench > "$log/durations.txt" 2>&1
echo "durations: rc=$?"
KVSQ_CUDA_BENCH_ONLY=quest timeout 60 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
  -k 'regex:^(?!fill)' -c 60 "$tests" cuda_decode_bench > "$log/durations-quest.txt" 2>&1
echo "durations (Quest 128K): rc=$?"
sections="--section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --section LaunchStats --section SchedulerStats --section ComputeWorkloadAnalysis"
timeout 90 "$NCU" --clock-control none $sections -k regex:attn_kernel -s 2 -c 1 "$tests" cuda_decode_bench > "$log/attn.txt" 2>&1
echo "attn: rc=$?"
timeout 90 "$NCU" --clock-control none $sections -k 'regex:ws_pass_kernel|topk_kernel|quest_kernel' -s 0 -c 3 "$tests" cuda_bench_scores > "$log/scores.txt" 2>&1
echo "scores: rc=$?"
for f in durations durations-quest; do
  grep -E '^  [a-zA-Z_].*\(|gpu__time_duration' "$log/$f.txt" | paste - - | sed -E 's/\(unnamed>::[A-Za-z]+\)//; s/, Context.*gpu__time_duration.sum//' | awk '{$1=$1; print}' > "$log/$f-short.txt"
done
head -24 "$log/durations-short.txt"; head -40 "$log/durations-quest-short.txt"
grep -E 'attn_kernel|ws_pass|topk_kernel|quest_kernel|Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Block Limit|Stall|Warp Cycles Per Issued|Issue Slots Busy|Compute \(SM\) Throughput|L2 Hit|L1/TEX Hit|Dynamic Shared|Theoretical Occ' "$log/attn.txt" "$log/scores.txt" | cut -c1-160
