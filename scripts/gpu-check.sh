#!/usr/bin/env bash
# One command on a GPU machine (no network, maybe no node): the native suite
# with the CUDA tests on, a Node smoke test of the CUDA path, the kernel
# benchmarks (L2 flushed) and PyTorch baselines, then compute-sanitizer
# memcheck and racecheck on the CUDA tests; a short table last. Needs
# .gpu-carry from scripts/gpu-prepare.sh.
#
# Each step has its own time limit (at most 10 minutes in all; a passing run
# on an H200 takes about 3). The steps that say the most come first, so a run cut short
# still reports them; logs go to $OUT/gpu-check (or /tmp/gpu-check).
# If the carried test binary cannot start there (other system libraries),
# it is rebuilt on the spot from the carried sources with that machine's nvcc.
set -uo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry
log=${OUT:-/tmp}/gpu-check
mkdir -p "$log"
declare -A result
t_start=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$log/gpu.txt"
date -u +"date: %Y-%m-%d %H:%M UTC" | tee -a "$log/gpu.txt"

# node: the machine's, or the carried one
NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  NODE=/tmp/kvsq-node
  xz -dc "$carry/node.xz" > "$NODE" && chmod +x "$NODE"
fi
echo "node: $NODE $("$NODE" --version 2>&1)" | tee -a "$log/gpu.txt"

CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
CS=${CS:-compute-sanitizer}

tests=$carry/kvsq_native_tests
if ! "$tests" no_test_has_this_name > /dev/null 2>&1; then
  echo "carried test binary does not start here; rebuilding with $(command -v nvcc)" | tee -a "$log/gpu.txt"
  cmake -S . -B /tmp/kvsq-build -G Ninja -DKVSQ_CUDA=ON "-DKVSQ_CUDA_ARCHS=90a-real;90-virtual" -DKVSQ_TESTS=ON > "$log/rebuild.txt" 2>&1 &&
    cmake --build /tmp/kvsq-build --target kvsq_native_tests -j 16 >> "$log/rebuild.txt" 2>&1
  tests=/tmp/kvsq-build/kvsq_native_tests
fi

step() { # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc=0
  echo "== $name (limit $limit s, at $((SECONDS - t_start)) s)"
  timeout "$limit" "$@" > "$log/$name.txt" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    result[$name]="ok ($((SECONDS - t0)) s)"
  elif grep -qE 'Device not supported|unable to initialize|error 999' "$log/$name.txt"; then
    result[$name]="unavailable on this machine's runtime (see $name.txt)"
  elif [ $rc -eq 124 ]; then
    result[$name]="TIMEOUT after $limit s"
  else
    result[$name]="FAIL rc=$rc ($((SECONDS - t0)) s)"
  fi
  tail -4 "$log/$name.txt"
}

# The wgmma operand layouts first, in a process of their own: if this
# project's reading of them is wrong on the card, this line says so even when
# a faulting kernel takes the rest of a run with it (KVSQ_NO_WGMMA=1 then
# keeps every kernel on mma.sync for a rerun).
step wgmma 15 "$tests" cuda_wgmma_fragment_layout
step native 100 "$tests" -emu_  # the emulated copies of the CUDA tests ran in CI already
step smoke 60 env KVSQ_ADDON="$carry/kvsqueeze.node" KVSQ_DIST="$carry/dist" "$NODE" scripts/gpu-smoke.js
# The same smoke test (small) with decode on the warp-page kernel, which is
# off by default until this card has timed it (BENCH decode_warp_pages).
step smoke-wp 45 env KVSQ_DECODE_WARP_PAGES=1 KVSQ_SMOKE_SMALL=1 KVSQ_ADDON="$carry/kvsqueeze.node" KVSQ_DIST="$carry/dist" "$NODE" scripts/gpu-smoke.js
step bench 90 env KVSQ_CUDA_BENCH=1 "$tests" bench
# The same kernels through the library, as a user runs them (L2 flushed
# between launches by the bench itself).
step cli-bench 75 env KVSQ_ADDON="$carry/kvsqueeze.node" NODE_PATH="$PWD/$carry/node_modules" "$NODE" -e \
  "require('./$carry/dist/cli.js').main(['node', 'kvsqueeze', 'bench', '--backend', 'cuda', '--no-ort', '--kernel', 'decode-f16,decode-f32,topk,window,quest,quest-share,quest-select,quest-select-share,pool1d-max,pool1d-avg,chunk,append,gather']).then((c) => { process.exitCode = c; })"
if python3 -c 'import torch' 2>/dev/null; then
  step torch 60 env PYTHONUNBUFFERED=1 python3 scripts/torch-baseline.py
else
  result[torch]="skipped (no torch)"
fi
step memcheck 100 "$CS" --tool memcheck --error-exitcode 9 "$tests" cuda_
step racecheck 100 "$CS" --tool racecheck --error-exitcode 9 "$tests" cuda_

echo
echo "== kvsqueeze GPU check: $(head -1 "$log/gpu.txt"), $((SECONDS - t_start)) s"
for k in wgmma native smoke smoke-wp bench cli-bench torch memcheck racecheck; do printf '%-10s %s\n' "$k" "${result[$k]:-not run}"; done
grep -hE 'FAIL|ERROR SUMMARY|RACECHECK SUMMARY' "$log/wgmma.txt" "$log/native.txt" "$log/smoke.txt" "$log/smoke-wp.txt" "$log/memcheck.txt" "$log/racecheck.txt" 2>/dev/null | head -20 || true
grep -hE '^(BENCH|TORCH|SMOKE)' "$log/bench.txt" "$log/torch.txt" "$log/smoke.txt" 2>/dev/null || true
grep -hE '^[a-zA-Z]+ +(f16|bf16|f32) ' "$log/cli-bench.txt" 2>/dev/null | cut -c1-160 || true
grep -hE 'passed, [0-9]+ failed' "$log/native.txt" || true
