// Append (decode step): K/V rows into physical slots, fused Quest meta update
// (core/ops.h AppendArgs).
//
// Row i goes to slot s = dst_slot[i] (page s / P, row s % P): K and V rows are
// copied bit for bit; with meta_pool the page's kmin/kmax (K dtype, at
// meta_pool + page * 2 * D) are reset to the key when reset_meta[i] is set (or,
// without reset_meta, when s % P == 0) and otherwise widened:
//   kmin[d] = k[d] < kmin[d] ? k[d] : kmin[d],  kmax[d] = k[d] > kmax[d] ? k[d] : kmax[d]
// compared as exact f32 values, stored as the original K-dtype bits, so the
// metadata are stored key values and bit-reproducible (a NaN key never widens).
// With score_pool the slot's score becomes 0. Rows that share a page are applied
// in row order (reset, then widen, gives the page's true min/max).
// Tolerance: exact (bit-equal) - no arithmetic touches the data.
//
// Validation runs first and writes nothing on failure: sizes > 0 (Shape), float
// dtype (DType), non-null buffers (Shape), slots in [0, num_pages * P) and
// pairwise distinct (Range).
//
// Speed: a decode step appends B * Hkv rows, a few KB; the path is serial and
// allocation-free (the distinctness check uses a stack buffer up to 1024 rows).
// Large appends (prefill chunks) are split over the pool by page, so each page's
// rows stay in row order on one thread.
//
// The meta rule and the distinctness check are shared with gather.cc
// (cpu_page_meta must reproduce the appended metadata bit for bit), through the
// kvsq::detail declarations below.
#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVSQ_AP_X86 1
#endif

namespace kvsq {
namespace detail {

// Widens the meta row pair (kmin[D] then kmax[D], dtype t) by key[D].
void meta_widen(DType t, void* meta, const void* key, int D, bool simd);
// Range if v[0..n) has a repeated value or (probe non-null) shares a value with
// probe[0..np); OOM if the scratch for a large n cannot be allocated; else Ok.
Status check_distinct(const int64_t* v, int64_t n, const int64_t* probe, int64_t np);

namespace {

template <class T, class Dec>
void widen_scalar(T* mn, T* mx, const T* k, int b, int e, Dec dec) {
  for (int d = b; d < e; ++d) {
    const float x = dec(k[d]);
    if (x < dec(mn[d])) mn[d] = k[d];
    if (x > dec(mx[d])) mx[d] = k[d];
  }
}

#ifdef KVSQ_AP_X86
// 8 lanes at a time; _CMP_LT_OQ / _CMP_GT_OQ are false on NaN exactly like the
// scalar comparisons, and the blend moves original bits, so both paths agree
// bit for bit.
__attribute__((target("avx2,fma,f16c"))) int widen_f32_simd(float* mn, float* mx, const float* k, int D) {
  int d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 x = _mm256_loadu_ps(k + d), a = _mm256_loadu_ps(mn + d), b = _mm256_loadu_ps(mx + d);
    _mm256_storeu_ps(mn + d, _mm256_blendv_ps(a, x, _mm256_cmp_ps(x, a, _CMP_LT_OQ)));
    _mm256_storeu_ps(mx + d, _mm256_blendv_ps(b, x, _mm256_cmp_ps(x, b, _CMP_GT_OQ)));
  }
  return d;
}

template <bool F16>
__attribute__((target("avx2,fma,f16c"))) inline __m256 dec8(__m128i h) {
  if constexpr (F16) return _mm256_cvtph_ps(h);
  else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// 32-bit lane masks -> 16-bit lane masks (all-ones / zero survive signed packing).
__attribute__((target("avx2,fma,f16c"))) inline __m128i mask16(__m256 m) {
  const __m256i mi = _mm256_castps_si256(m);
  return _mm_packs_epi32(_mm256_castsi256_si128(mi), _mm256_extracti128_si256(mi, 1));
}
template <bool F16>
__attribute__((target("avx2,fma,f16c"))) int widen_h_simd(uint16_t* mn, uint16_t* mx, const uint16_t* k, int D) {
  int d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m128i kr = _mm_loadu_si128(reinterpret_cast<const __m128i*>(k + d));
    const __m128i ar = _mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + d));
    const __m128i br = _mm_loadu_si128(reinterpret_cast<const __m128i*>(mx + d));
    const __m256 x = dec8<F16>(kr), a = dec8<F16>(ar), b = dec8<F16>(br);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(mn + d), _mm_blendv_epi8(ar, kr, mask16(_mm256_cmp_ps(x, a, _CMP_LT_OQ))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(mx + d), _mm_blendv_epi8(br, kr, mask16(_mm256_cmp_ps(x, b, _CMP_GT_OQ))));
  }
  return d;
}
#endif

}  // namespace

void meta_widen(DType t, void* meta, const void* key, int D, bool simd) {
  int d0 = 0;
  if (t == DType::F32) {
    float* mn = static_cast<float*>(meta);
    const float* k = static_cast<const float*>(key);
#ifdef KVSQ_AP_X86
    if (simd) d0 = widen_f32_simd(mn, mn + D, k, D);
#endif
    widen_scalar(mn, mn + D, k, d0, D, [](float v) { return v; });
  } else {
    uint16_t* mn = static_cast<uint16_t*>(meta);
    const uint16_t* k = static_cast<const uint16_t*>(key);
    if (t == DType::F16) {
#ifdef KVSQ_AP_X86
      if (simd) d0 = widen_h_simd<true>(mn, mn + D, k, D);
#endif
      widen_scalar(mn, mn + D, k, d0, D, f16_to_f32);
    } else {
#ifdef KVSQ_AP_X86
      if (simd) d0 = widen_h_simd<false>(mn, mn + D, k, D);
#endif
      widen_scalar(mn, mn + D, k, d0, D, bf16_to_f32);
    }
  }
}

Status check_distinct(const int64_t* v, int64_t n, const int64_t* probe, int64_t np) {
  if (n <= 32 && (!probe || np <= 32)) {  // tiny (decode): quadratic beats sorting
    for (int64_t i = 1; i < n; ++i)
      for (int64_t j = 0; j < i; ++j)
        if (v[i] == v[j]) return Status::Range;
    if (probe)
      for (int64_t i = 0; i < np; ++i)
        for (int64_t j = 0; j < n; ++j)
          if (probe[i] == v[j]) return Status::Range;
    return Status::Ok;
  }
  constexpr int64_t kStack = 1024;
  int64_t stack_buf[kStack];
  std::vector<int64_t> heap;
  int64_t* s = stack_buf;
  if (n > kStack) {
    try {
      heap.resize(size_t(n));
    } catch (const std::bad_alloc&) {
      return Status::OOM;
    }
    s = heap.data();
  }
  std::copy(v, v + n, s);
  std::sort(s, s + n);
  if (std::adjacent_find(s, s + n) != s + n) return Status::Range;
  if (probe)
    for (int64_t i = 0; i < np; ++i)
      if (std::binary_search(s, s + n, probe[i])) return Status::Range;
  return Status::Ok;
}

}  // namespace detail

// The argument checks of cpu_append (host pointers; nothing is written):
// also run by the CUDA path's bindings before uploading the index arrays.
Status validate_append(const AppendArgs& a) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0) return Status::Shape;
  if (!a.k_new || !a.v_new || !a.dst_slot || !a.k_pool || !a.v_pool) return Status::Shape;
  const int64_t P = a.page_size, nslots = a.num_pages * P;
  if (nslots / P != a.num_pages) return Status::Shape;  // overflow
  for (int32_t i = 0; i < a.count; ++i)
    if (a.dst_slot[i] < 0 || a.dst_slot[i] >= nslots) return Status::Range;
  if (Status s = detail::check_distinct(a.dst_slot, a.count, nullptr, 0); s != Status::Ok) return s;
  return Status::Ok;
}

Status cpu_append(const AppendArgs& a) {
  if (Status st = validate_append(a); st != Status::Ok) return st;
  const int64_t P = a.page_size;


  const int D = a.head_dim;
  const size_t row = size_t(D) * dtype_size(a.dtype);
  const bool simd = cpu_features().simd();
  const char* kn = static_cast<const char*>(a.k_new);
  const char* vn = static_cast<const char*>(a.v_new);
  char* kp = static_cast<char*>(a.k_pool);
  char* vp = static_cast<char*>(a.v_pool);
  char* mp = static_cast<char*>(a.meta_pool);

  auto one = [&](int32_t i) {
    const int64_t s = a.dst_slot[i];
    const char* key = kn + size_t(i) * row;
    std::memcpy(kp + size_t(s) * row, key, row);
    std::memcpy(vp + size_t(s) * row, vn + size_t(i) * row, row);
    if (a.score_pool) a.score_pool[s] = 0.f;
    if (mp) {
      char* meta = mp + size_t(s / P) * 2 * row;
      const bool reset = a.reset_meta ? a.reset_meta[i] != 0 : s % P == 0;
      if (reset) {
        std::memcpy(meta, key, row);
        std::memcpy(meta + row, key, row);
      } else {
        detail::meta_widen(a.dtype, meta, key, D, simd);
      }
    }
  };

  const int threads = pool_threads();
  if (threads <= 1 || size_t(a.count) * row * 2 < (size_t(1) << 18)) {
    for (int32_t i = 0; i < a.count; ++i) one(i);
    return Status::Ok;
  }
  // Part t owns the pages with page % threads == t and walks the rows in order.
  parallel_for(threads, [&](int64_t tb, int64_t te, int) {
    for (int64_t t = tb; t < te; ++t)
      for (int32_t i = 0; i < a.count; ++i)
        if ((a.dst_slot[i] / P) % threads == t) one(i);
  });
  return Status::Ok;
}

}  // namespace kvsq
