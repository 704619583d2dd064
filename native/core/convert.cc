// Bulk dtype conversions for Tensor creation and read-back.
// Portable path: the scalar routines of dtype.h. Fast path (F16C/AVX2, chosen
// at run time): 8 lanes at a time; vcvtps2ph with imm 0 rounds to nearest
// even and keeps NaN/Inf, matching the scalar routine bit for bit except for
// NaN payloads (both stay NaN).
#include <immintrin.h>

#include "cpu_features.h"
#include "dtype.h"
#include "threadpool.h"

namespace kvsq {

namespace {

__attribute__((target("avx2,f16c"))) void f16_to_f32_simd(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
}
__attribute__((target("avx2,f16c"))) void f32_to_f16_simd(const float* s, uint16_t* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), 0));
  for (; i < n; ++i) d[i] = f32_to_f16(s[i]);
}
__attribute__((target("avx2"))) void bf16_to_f32_simd(const uint16_t* s, float* d, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm256_slli_epi32(w, 16));
  }
  for (; i < n; ++i) d[i] = bf16_to_f32(s[i]);
}

// Large arrays are split across the pool; small ones stay on the caller.
template <class F>
void chunked(size_t n, F&& f) {
  parallel_for(int64_t(n), [&](int64_t b, int64_t e, int) { f(size_t(b), size_t(e)); }, 1 << 16);
}

}  // namespace

void convert_to_f32(DType t, const void* src, float* dst, size_t n) {
  const bool simd = cpu_features().simd();
  if (t == DType::F32) {
    chunked(n, [&](size_t b, size_t e) { std::memcpy(dst + b, static_cast<const float*>(src) + b, (e - b) * 4); });
  } else if (t == DType::F16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    chunked(n, [&](size_t b, size_t e) {
      if (simd) f16_to_f32_simd(s + b, dst + b, e - b);
      else for (size_t i = b; i < e; ++i) dst[i] = f16_to_f32(s[i]);
    });
  } else if (t == DType::BF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    chunked(n, [&](size_t b, size_t e) {
      if (simd) bf16_to_f32_simd(s + b, dst + b, e - b);
      else for (size_t i = b; i < e; ++i) dst[i] = bf16_to_f32(s[i]);
    });
  } else {  // I32: numeric conversion
    const int32_t* s = static_cast<const int32_t*>(src);
    for (size_t i = 0; i < n; ++i) dst[i] = float(s[i]);
  }
}

void convert_from_f32(DType t, const float* src, void* dst, size_t n) {
  const bool simd = cpu_features().simd();
  if (t == DType::F32) {
    chunked(n, [&](size_t b, size_t e) { std::memcpy(static_cast<float*>(dst) + b, src + b, (e - b) * 4); });
  } else if (t == DType::F16) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    chunked(n, [&](size_t b, size_t e) {
      if (simd) f32_to_f16_simd(src + b, d + b, e - b);
      else for (size_t i = b; i < e; ++i) d[i] = f32_to_f16(src[i]);
    });
  } else if (t == DType::BF16) {
    // No AVX2 instruction rounds to bf16 with NaN handling in one step; the
    // scalar routine is a few integer ops and memory-bound anyway.
    uint16_t* d = static_cast<uint16_t*>(dst);
    chunked(n, [&](size_t b, size_t e) { for (size_t i = b; i < e; ++i) d[i] = f32_to_bf16(src[i]); });
  } else {
    int32_t* d = static_cast<int32_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = int32_t(src[i]);
  }
}

}  // namespace kvsq
