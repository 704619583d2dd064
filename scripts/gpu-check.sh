#!/usr/bin/env bash
# One command on a GPU machine (no network, maybe no node): the native suite
# with the CUDA tests on, compute-sanitizer memcheck and racecheck on it, a
# Node smoke test of the CUDA path, the kernel benchmarks (L2 flushed) and
# PyTorch baselines; a short table last. Needs .gpu-carry from
# scripts/gpu-prepare.sh. Under 8 minutes on an H100.
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

tests=$carry/build/kvsq_native_tests
step() { # name, command...
  local name=$1; shift
  local t0=$SECONDS
  if timeout 300 "$@" > "$log/$name.txt" 2>&1; then result[$name]="ok ($((SECONDS - t0)) s)"; else result[$name]="FAIL rc=$? ($((SECONDS - t0)) s)"; fi
  tail -3 "$log/$name.txt"
}

step native "$tests"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$tests" cuda_
step racecheck compute-sanitizer --tool racecheck --error-exitcode 9 "$tests" cuda_
step smoke env KVSQ_ADDON="$carry/kvsqueeze.node" KVSQ_DIST="$carry/dist" "$NODE" scripts/gpu-smoke.js
step bench env KVSQ_CUDA_BENCH=1 "$tests" cuda_bench
if python3 -c 'import torch' 2>/dev/null; then
  step torch python3 scripts/torch-baseline.py
else
  result[torch]="skipped (no torch)"
fi

echo
echo "== kvsqueeze GPU check: $(head -1 "$log/gpu.txt")"
for k in native memcheck racecheck smoke bench torch; do printf '%-10s %s\n' "$k" "${result[$k]:-not run}"; done
grep -hE '^(BENCH|TORCH)' "$log/bench.txt" "$log/torch.txt" 2>/dev/null | column -t || true
grep -hE 'passed, [0-9]+ failed' "$log/native.txt" || true
