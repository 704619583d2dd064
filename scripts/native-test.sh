#!/usr/bin/env bash
# The native suite: builds test/native with CMake and runs it through ctest.
#   scripts/native-test.sh              release build; CUDA tests compiled when nvcc is found
#                                       (they print SKIP without a device)
#   scripts/native-test.sh --sanitize   AddressSanitizer + UBSan build, CPU only
# Ends with the suite's own line "N passed, N failed, N skipped" (the main run's).
# CUDA kernels the CPU emulator can run are tested on every machine
# (emu_* tests: test/native/emu), with or without nvcc and a device.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
if [ "$mode" = "--sanitize" ]; then
  dir=build-asan
  cfg=(-DKVSQ_CUDA=OFF -DKVSQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
else
  dir=build-test
  cfg=(-DKVSQ_CUDA=${KVSQ_CUDA:-AUTO} "-DKVSQ_CUDA_ARCHS=${KVSQ_CUDA_ARCHS:-90a-real;90-virtual}")
fi
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S . -B "$dir" "${gen[@]}" "${cfg[@]}" -DKVSQ_TESTS=ON >/dev/null
cmake --build "$dir" --target kvsq_native_tests -j "$(nproc)"
# ctest for the registry; the suite's own output (per-test lines and the closing
# "N passed, N failed, N skipped") is printed in full.
main_log=$(mktemp)
(cd "$dir" && ctest --output-on-failure -V) | grep -E '^[0-9]+: (PASS|FAIL|SKIP|kvsqueeze|[0-9]+ passed)|tests passed|tests failed' | sed -E 's/^[0-9]+: //' | tee "$main_log"
rc=${PIPESTATUS[0]}
# The SIMD kernels pick AVX-512, AVX2 or portable code at run time: the main run
# covers this machine's best path; the narrower ones run here too (without the
# emulated CUDA tests, which the main run has done: they exercise the CUDA code).
for narrow in KVSQ_NO_AVX512 KVSQ_NO_SIMD; do
  echo "-- $narrow=1"
  env "$narrow=1" "$dir/kvsq_native_tests" -emu_ | tail -1 || rc=1
done
# The emulated CUDA tests again as the other parts the prebuild targets: an
# A100-like sm_80 (163 KB of shared memory per block, no clusters, dependent
# launches or wgmma) and a 99 KB sm_86 (kernels that step down to smaller
# pipelines and tilings there). Release build only (the sanitizer build has
# no CUDA tests).
if [ "$mode" != "--sanitize" ]; then
  for part in sm_80 sm_86; do
    echo "-- KVSQ_EMU_DEVICE=$part"
    env KVSQ_EMU_DEVICE=$part "$dir/kvsq_native_tests" emu_ | grep -E '^FAIL|passed, [0-9]+ failed' || rc=1
  done
fi
# The closing line of the whole suite (the main run's counts).
grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$main_log" | tail -1
rm -f "$main_log"
exit "$rc"
