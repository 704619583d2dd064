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
# KVSQ_CUDA_ARCHS: the archs the emulated addon says it holds (default: a
# 9.0 card's source build); with KVSQ_EMU_DEVICE another part, e.g.
#   KVSQ_EMU_DEVICE=sm_86 KVSQ_CUDA_ARCHS="80-real;86-real;89-real;90a-real;90-virtual" bash scripts/cuda-emu-smoke.sh
# (configure each time: a build alone keeps the first configuration's options)
if ! { npx cmake-js configure -O build-emu --CDKVSQ_CUDA=OFF --CDKVSQ_CUDA_EMU=ON "--CDKVSQ_CUDA_ARCHS=${KVSQ_CUDA_ARCHS:-}" &&
  npx cmake-js build -O build-emu; } > "$log" 2>&1; then
  tail -30 "$log"
  echo "SMOKE FAILED (the emulated addon did not build)"
  exit 1
fi
KVSQ_ADDON=build-emu/Release/kvsqueeze.node KVSQ_SMOKE_SMALL=1 node scripts/gpu-smoke.js
