// Run-time CPU feature detection. The binary is built for baseline x86-64;
// AVX2/FMA/F16C code paths are compiled with per-function target attributes
// and chosen here at run time, so one prebuild runs on every x86-64.
#pragma once

namespace kvsq {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  // AVX-512F with the OS saving zmm state; used by kernels that have a wider
  // path (decode attention) on top of the AVX2 one. KVSQ_NO_AVX512=1 clears it.
  bool avx512f = false;
  // All three: the fast paths need them together.
  bool simd() const { return avx2 && fma && f16c; }
};

// Detected once; KVSQ_NO_SIMD=1 in the environment forces the portable path
// (and clears avx512f)
// (used by the tests to cover both paths on one machine).
const CpuFeatures& cpu_features();
// Override for tests: -1 = back to detection, 0 = portable, 1 = SIMD if present.
void cpu_features_force(int mode);

}  // namespace kvsq
