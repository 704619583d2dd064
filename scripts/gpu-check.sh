#!/usr/bin/env bash
# One command on a GPU machine (no network, maybe no node): the native suite
# with the CUDA tests on, compute-sanitizer memcheck and racecheck on it, a
# Node smoke test of the CUDA path, the kernel benchmarks (L2 flushed) and
# PyTorch baselines; a short table last. Needs .gpu-carry from
# scripts/gpu-prepare.sh. Each step has its own time limit (at most 11.5
# minutes in all; a passing run on an H100 should take well under 8).
set -uo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry
log=${OUT:-/tmp}/gpu-check
mkdir -p "$log"
declare -A result

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log/gpu.txt"

# node: the machine's, or the carried one
NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  NODE=/tmp/kvsq-node
  xz -dc "$carry/node.xz" > "$NODE" && chmod +x "$NODE"
fi

tests=$carry/kvsq_native_tests
step() { # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$log/$name.txt" 2>&1; then result[$name]="ok ($((SECONDS - t0)) s)"; else result[$name]="FAIL rc=$? ($((SECONDS - t0)) s)"; fi
  tail -3 "$log/$name.txt"
}

step native 120 "$tests"
step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$tests" cuda_
step racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 9 "$tests" cuda_
step smoke 90 env KVSQ_ADDON="$carry/kvsqueeze.node" KVSQ_DIST="$carry/dist" "$NODE" scripts/gpu-smoke.js
step bench 120 env KVSQ_CUDA_BENCH=1 "$tests" bench
if python3 -c 'import torch' 2>/dev/null; then
  step torch 90 python3 scripts/torch-baseline.py
else
  result[torch]="skipped (no torch)"
fi

echo
echo "== kvsqueeze GPU check: $(head -1 "$log/gpu.txt")"
for k in native memcheck racecheck smoke bench torch; do printf '%-10s %s\n' "$k" "${result[$k]:-not run}"; done
grep -hE '^(BENCH|TORCH|SMOKE)' "$log/bench.txt" "$log/torch.txt" "$log/smoke.txt" 2>/dev/null || true
grep -hE 'passed, [0-9]+ failed' "$log/native.txt" || true
