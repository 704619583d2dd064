#!/usr/bin/env bash
# The Node smoke test of the CUDA path (scripts/gpu-smoke.js) without a GPU:
# an addon built with KVSQ_CUDA_EMU=ON, whose kernels and device layer are
# cuda/*.cu run by the CPU emulator (test/native/emu/cuda_emu.h), behind the
# real N-API bindings, op dispatch and cache. Tensors on 'cuda:0' live in
# host memory there; results must match the CPU run as on a card. Needs
# dist/ (npm run build:ts). Ends with "SMOKE OK" or "SMOKE FAILED".
set -euo pipefail
cd "$(dirname "$0")/.."
log=build-emu/build.log
mkdir -p build-emu
if ! npx cmake-js build -O build-emu --CDKVSQ_CUDA=OFF --CDKVSQ_CUDA_EMU=ON > "$log" 2>&1; then
  tail -30 "$log"
  echo "SMOKE FAILED (the emulated addon did not build)"
  exit 1
fi
KVSQ_ADDON=build-emu/Release/kvsqueeze.node KVSQ_SMOKE_SMALL=1 node scripts/gpu-smoke.js
