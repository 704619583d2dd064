#!/usr/bin/env bash
# A short GPU iteration (about a minute): the CUDA tests, racecheck on the
# decode tests, the decode benchmark, and per-launch durations of a Quest
# step at 128K and of window scores. The full check is scripts/gpu-check.sh.
# Logs (at most 8 files) in $OUT (or /tmp/gpu-quick).
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp/gpu-quick}
mkdir -p "$log"
tests=.gpu-carry/kvsq_native_tests
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
short() { grep -E '^  [a-zA-Z_].*\(|gpu__time_duration' "$1" | paste - - | sed -E 's/\(unnamed>::[A-Za-z]+\)//; s/, Context.*gpu__time_duration.sum//' | awk '{$1=$1; print}'; }
timeout 100 "$tests" cuda_ > "$log/native.txt" 2>&1; echo "native rc=$?"; grep -E "FAIL|passed" "$log/native.txt"
timeout 90 "$CS" --tool racecheck --error-exitcode 9 "$tests" cuda_decode > "$log/racecheck.txt" 2>&1; echo "racecheck rc=$?"; grep -E "FAIL|passed|SUMMARY" "$log/racecheck.txt"
KVSQ_CUDA_BENCH=1 timeout 60 "$tests" cuda_decode_bench > "$log/bench.txt" 2>&1; echo "bench rc=$?"; grep BENCH "$log/bench.txt"
export KVSQ_CUDA_BENCH=1
KVSQ_CUDA_BENCH_ONLY=quest timeout 60 "$NCU" --clock-control none --metrics gpu__time_duration.sum -k 'regex:^(?!fill)' -c 40 "$tests" cuda_decode_bench > /tmp/dq.txt 2>&1
short /tmp/dq.txt > "$log/durations-quest.txt"; head -40 "$log/durations-quest.txt"
timeout 60 "$NCU" --clock-control none --metrics gpu__time_duration.sum -k 'regex:ws_|topk' -c 40 "$tests" cuda_bench_scores > /tmp/dw.txt 2>&1
short /tmp/dw.txt > "$log/durations-scores.txt"; head -40 "$log/durations-scores.txt"
