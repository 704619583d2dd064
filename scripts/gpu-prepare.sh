#!/usr/bin/env bash
# Builds, on a machine with nvcc (no GPU needed), everything scripts/gpu-check.sh
# runs on a GPU machine without network access, into .gpu-carry/ (ignored by git):
#   kvsq_native_tests, kvsqueeze.node   native suite and addon, CUDA sm_90a (KVSQ_CUDA_ARCHS to change)
#   dist/           the compiled TypeScript (the smoke test and the CLI load it)
#   node_modules/   the CLI's runtime packages (commander, cli-progress + deps)
#   node.xz         this machine's node binary, for GPU machines without node
# Carry .gpu-carry with the working tree, then run: bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
archs=${KVSQ_CUDA_ARCHS:-90a-real;90-virtual}
out=.gpu-carry
mkdir -p "$out"
# Build trees stay out of the carried folder (it must stay small): only the
# two binaries travel.
cmake -S . -B build-gpu -G Ninja -DKVSQ_CUDA=ON -DKVSQ_CUDA_ARCHS="$archs" -DKVSQ_TESTS=ON >/dev/null
cmake --build build-gpu --target kvsq_native_tests
cp build-gpu/kvsq_native_tests "$out/kvsq_native_tests"
npx cmake-js build -O build-gpu-addon --CDKVSQ_CUDA=ON --CDKVSQ_CUDA_ARCHS="$archs" >/dev/null
cp build-gpu-addon/Release/kvsqueeze.node "$out/kvsqueeze.node"
strip --strip-unneeded "$out/kvsqueeze.node" "$out/kvsq_native_tests" 2>/dev/null || true
rm -rf "$out/build"
npx tsc -p tsconfig.build.json --outDir "$out/dist"
cp package.json "$out/package.json"
# The CLI's runtime packages (for `kvsqueeze bench --backend cuda` there):
# commander, cli-progress and what cli-progress needs.
rm -rf "$out/node_modules" && mkdir -p "$out/node_modules"
for m in commander cli-progress string-width strip-ansi ansi-regex emoji-regex is-fullwidth-code-point; do
  cp -r "node_modules/$m" "$out/node_modules/$m"
done
[ -f "$out/node.xz" ] || xz -T2 -6 -c "$(command -v node)" > "$out/node.xz"
du -sh "$out"
echo "carry: .gpu-carry    run: bash scripts/gpu-check.sh"
