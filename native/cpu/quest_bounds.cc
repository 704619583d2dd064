// Quest page bounds (methods.md "Quest"; layout in core/ops.h QuestBoundsArgs).
//
// For list l = b*Hkv + j (n = ceil(kv_len[l] / P) pages) and query head h of
// group j (h in [j*g, (j+1)*g), g = Hq / Hkv):
//   u[h][p] = sum_d max(q[h][d] * kmax[p][d], q[h][d] * kmin[p][d]),  p < n - 1
// out row (b, h) (or (b, j) with share, = max over the group's heads) holds
// u[0 .. n-2] and -inf at every entry p >= n - 1 of its out_stride.
//
// Arithmetic: q and the metadata are converted exactly to f32 (f16/bf16 -> f32
// is exact); products and the sum are f32. With kmin <= kmax,
//   max(q*kmax, q*kmin) = max(q,0)*kmax + min(q,0)*kmin
// exactly (one of the two terms is an exact zero), which turns the per-element
// max into two FMAs against precomputed q+ / q- rows. The only error is f32
// rounding of the products and of the D-term sum, so against an exact reference
// |u - u_ref| <= (D + 2) * 2^-24 * sum_d |q_d| * max(|kmin_d|, |kmax_d|)
// (the standard recursive-summation bound; lane-wise partial sums only lower it).
// The tests use exactly that tolerance. Non-finite metadata is not supported
// (0 * inf): the pools never hold it for finite keys.
//
// Overflow: with finite q and metadata a product can still overflow to +-inf;
// a sum meeting both signs is NaN, which would make Quest's selection fail on
// valid data. Such a bound is +inf instead (ops.h: an overflowed upper bound is
// unbounded). Only a NaN whose q row and page row are both finite is mapped,
// so non-finite inputs still show; the page row is checked only once its
// bound is NaN, so finite data pay nothing for the rule.
// When two terms are infinite with opposite signs every summation order gives
// NaN, so both twins store +inf; when only partial sums overflow, whether they
// do depends on the order, and one twin may store +inf where the other has a
// value near the f32 limit (the tolerance above is infinite there).
//
// Speed: the kernel is a stream over the metadata (2*D values per page and KV
// head, in shuffled physical order). Each page's kmin/kmax row is loaded and
// converted once and reused for all g query heads of the group (up to 8 heads'
// accumulators in registers at a time), the next pages' rows are prefetched,
// and the work is split over the thread pool in units of whole pages of one
// list, so ragged batches balance. AVX2/FMA/F16C are picked at run time
// (cpu_features().simd()); the portable path is plain scalar f32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVSQ_QB_X86 1
#endif

namespace kvsq {

namespace {

constexpr int kPagesPerUnit = 64;  // pages of one list per parallel work unit

inline float load_scalar(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

// u as stored: a NaN from finite q and finite metadata (an overflow, inf -
// inf) is +inf; any other u is kept. page_id: the physical page of the bound.
inline float settle(float u, uint8_t q_finite, const QuestBoundsArgs& a, int64_t page_id) {
  if (u == u || !q_finite) return u;
  const int64_t base = page_id * 2 * a.head_dim;
  for (int64_t i = 0; i < 2 * int64_t(a.head_dim); ++i)
    if (!std::isfinite(load_scalar(a.kv_dtype, a.meta_pool, base + i))) return u;
  return std::numeric_limits<float>::infinity();
}

// Everything a work unit needs, resolved once per call.
struct Ctx {
  const QuestBoundsArgs* a;
  int g;          // query heads per KV head
  int D, Dp;      // head dim, padded to a multiple of 8
  size_t elt;     // bytes per meta element
  const float* qs;  // per query head (b*Hq + h): q+[Dp] then q-[Dp], zero padded
  const uint8_t* qfinite;  // per query head: 1 when its q row is finite
  int64_t out_rows_per_list;  // 1 (share) or g
};

// Portable path: the formula as written, f32. Each page's meta row is decoded
// once into row[2*Dp] (zero padded) and reused for the g heads; 8 partial sums
// (lane d % 8, as the SIMD path) let the compiler use baseline SSE2.
void pages_portable(const Ctx& c, int64_t list, int p0, int p1) {
  const QuestBoundsArgs& a = *c.a;
  const int32_t* ids = a.page_ids + a.page_indptr[list];
  const int64_t b = list / a.num_kv_heads, j = list % a.num_kv_heads;
  const int64_t h0 = b * a.num_q_heads + j * c.g;
  const int D = c.D, Dp = c.Dp;
  std::vector<float> row(size_t(2) * Dp, 0.f);  // one allocation per unit of up to 64 pages
  float* lo = row.data();
  float* hi = lo + Dp;
  for (int p = p0; p < p1; ++p) {
    const int64_t base = int64_t(ids[p]) * 2 * D;
    for (int d = 0; d < D; ++d) {
      lo[d] = load_scalar(a.kv_dtype, a.meta_pool, base + d);
      hi[d] = load_scalar(a.kv_dtype, a.meta_pool, base + D + d);
    }
    float best = -std::numeric_limits<float>::infinity();
    for (int h = 0; h < c.g; ++h) {
      const float* qp = c.qs + (h0 + h) * 2 * Dp;
      const float* qn = qp + Dp;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int d0 = 0; d0 < Dp; d0 += 8)
        for (int r = 0; r < 8; ++r)  // = max(q*hi, q*lo) exactly (one term is a zero), and NaN
          acc[r] += qp[d0 + r] * hi[d0 + r] + qn[d0 + r] * lo[d0 + r];  // propagates as on the SIMD path
      const float u = settle(((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])),
                             c.qfinite[h0 + h], a, ids[p]);
      if (a.share) best = std::max(best, u);
      else a.out[(h0 + h) * a.out_stride + p] = u;
    }
    if (a.share) a.out[list * a.out_stride + p] = best;
  }
}

#ifdef KVSQ_QB_X86

template <int KT>  // 0 f32, 1 f16, 2 bf16
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const void* base, int64_t i) {
  if constexpr (KT == 0) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (KT == 1) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  } else {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

__attribute__((target("avx2,fma,f16c"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// u for NH consecutive heads (q rows qh[0..NH)) against one page whose meta
// chunks are lo/hi (full chunks read from memory; the partial tail chunk from
// the zero-padded buffers tlo/thi). NH <= 4 keeps two accumulators per head
// (q+ and q- chains) for latency; NH = 8 already has 8 independent chains.
template <int KT, int NH>
__attribute__((target("avx2,fma,f16c"))) inline void page_heads(const Ctx& c, const float* const* qh,
                                                                 const void* lo, const void* hi, int nfull,
                                                                 const float* tlo, const float* thi,
                                                                 float* u) {
  constexpr bool kTwo = NH <= 4;
  __m256 acc[NH], acc2[kTwo ? NH : 1];
  for (int h = 0; h < NH; ++h) acc[h] = _mm256_setzero_ps();
  if constexpr (kTwo)
    for (int h = 0; h < NH; ++h) acc2[h] = _mm256_setzero_ps();
  const int Dp = c.Dp;
  for (int k = 0; k < nfull; ++k) {
    const __m256 vlo = load8<KT>(lo, int64_t(k) * 8), vhi = load8<KT>(hi, int64_t(k) * 8);
    for (int h = 0; h < NH; ++h) {
      const float* q = qh[h] + k * 8;
      acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q), vhi, acc[h]);
      if constexpr (kTwo) acc2[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + Dp), vlo, acc2[h]);
      else acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + Dp), vlo, acc[h]);
    }
  }
  if (tlo) {
    const __m256 vlo = _mm256_loadu_ps(tlo), vhi = _mm256_loadu_ps(thi);
    for (int h = 0; h < NH; ++h) {
      const float* q = qh[h] + nfull * 8;
      acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q), vhi, acc[h]);
      acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + Dp), vlo, acc[h]);
    }
  }
  for (int h = 0; h < NH; ++h) {
    if constexpr (kTwo) u[h] = hsum8(_mm256_add_ps(acc[h], acc2[h]));
    else u[h] = hsum8(acc[h]);
  }
}

template <int KT>
__attribute__((target("avx2,fma,f16c"))) void pages_simd(const Ctx& c, int64_t list, int p0, int p1) {
  const QuestBoundsArgs& a = *c.a;
  const int32_t* ids = a.page_ids + a.page_indptr[list];
  const int64_t b = list / a.num_kv_heads, j = list % a.num_kv_heads;
  const int64_t h0 = b * a.num_q_heads + j * c.g;
  const int D = c.D, nfull = D / 8, rem = D % 8;
  const char* meta = static_cast<const char*>(a.meta_pool);
  const size_t row_bytes = size_t(D) * c.elt;
  // q rows of the group, in blocks of at most 8 heads.
  constexpr int kMaxBlock = 8;
  float u[kMaxBlock];
  alignas(32) float tlo[8], thi[8];
  // Shuffled physical pages defeat the hardware prefetcher: prefetch ~4 KB of
  // meta ahead (8 pages at D 128 f16), at least 2 pages.
  const int ahead = int(std::min<size_t>(8, std::max<size_t>(2, 4096 / (2 * row_bytes))));
  for (int p = p0; p < p1; ++p) {
    if (p + ahead < p1) {
      const uintptr_t s = reinterpret_cast<uintptr_t>(meta + size_t(ids[p + ahead]) * 2 * row_bytes);
      for (uintptr_t line = s & ~uintptr_t(63); line < s + 2 * row_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
    }
    const char* lo = meta + size_t(ids[p]) * 2 * row_bytes;
    const char* hi = lo + row_bytes;
    const bool tail = rem != 0;
    if (tail) {
      for (int r = 0; r < 8; ++r) {
        tlo[r] = r < rem ? load_scalar(a.kv_dtype, lo, int64_t(nfull) * 8 + r) : 0.f;
        thi[r] = r < rem ? load_scalar(a.kv_dtype, hi, int64_t(nfull) * 8 + r) : 0.f;
      }
    }
    float best = -std::numeric_limits<float>::infinity();
    for (int hb = 0; hb < c.g;) {
      const int left = c.g - hb;
      const int nh = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
      const float* qh[kMaxBlock];
      for (int h = 0; h < nh; ++h) qh[h] = c.qs + (h0 + hb + h) * 2 * c.Dp;
      const float* t0 = tail ? tlo : nullptr;
      const float* t1 = tail ? thi : nullptr;
      switch (nh) {
        case 8: page_heads<KT, 8>(c, qh, lo, hi, nfull, t0, t1, u); break;
        case 4: page_heads<KT, 4>(c, qh, lo, hi, nfull, t0, t1, u); break;
        case 2: page_heads<KT, 2>(c, qh, lo, hi, nfull, t0, t1, u); break;
        default: page_heads<KT, 1>(c, qh, lo, hi, nfull, t0, t1, u); break;
      }
      for (int h = 0; h < nh; ++h) u[h] = settle(u[h], c.qfinite[h0 + hb + h], a, ids[p]);
      if (a.share) {
        for (int h = 0; h < nh; ++h) best = std::max(best, u[h]);
      } else {
        for (int h = 0; h < nh; ++h) a.out[(h0 + hb + h) * a.out_stride + p] = u[h];
      }
      hb += nh;
    }
    if (a.share) a.out[list * a.out_stride + p] = best;
  }
}

#endif  // KVSQ_QB_X86

inline int64_t pages_used(int64_t kv_len, int32_t P) { return (kv_len + P - 1) / P; }

}  // namespace

// The argument checks of cpu_quest_bounds (host pointers; nothing is written):
// also run by the CUDA path's bindings before uploading the index arrays.
Status validate_quest_bounds(const QuestBoundsArgs& a) {
  // ---- validation (nothing is written before it passes)
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0 ||
      a.num_pages <= 0 || a.out_stride <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0) return Status::Shape;
  if (!a.q || !a.meta_pool || !a.page_indptr || !a.page_ids || !a.kv_len || !a.out) return Status::Shape;
  const int64_t L = int64_t(a.batch) * a.num_kv_heads;
  if (a.page_indptr[0] < 0) return Status::Range;
  int64_t max_m = 0;  // largest n - 1 over the lists
  for (int64_t l = 0; l < L; ++l) {
    const int64_t s = a.page_indptr[l], e = a.page_indptr[l + 1];
    if (e < s) return Status::Range;
    for (int64_t i = s; i < e; ++i)
      if (a.page_ids[i] < 0 || a.page_ids[i] >= a.num_pages) return Status::Range;
    const int64_t kv = a.kv_len[l];
    if (kv < 0 || kv > (e - s) * int64_t(a.page_size)) return Status::Range;
    max_m = std::max(max_m, pages_used(kv, a.page_size) - 1);
  }
  if (a.out_stride < max_m) return Status::Shape;
  return Status::Ok;
}

Status cpu_quest_bounds(const QuestBoundsArgs& a) {
  if (Status st = validate_quest_bounds(a); st != Status::Ok) return st;
  const int64_t L = int64_t(a.batch) * a.num_kv_heads;


  const int g = a.num_q_heads / a.num_kv_heads;
  const int D = a.head_dim, Dp = (D + 7) / 8 * 8;
  std::vector<float> qs;
  std::vector<uint8_t> qfinite;
  std::vector<int64_t> unit_off;
  try {
    qs.assign(size_t(a.batch) * a.num_q_heads * 2 * Dp, 0.f);
    qfinite.assign(size_t(a.batch) * a.num_q_heads, 1);
    unit_off.resize(size_t(L) + 1);
  } catch (const std::bad_alloc&) {
    return Status::OOM;
  }
  // q split into q+ = max(q, 0) and q- = min(q, 0), exact in f32 (NaN: both).
  for (int64_t r = 0; r < int64_t(a.batch) * a.num_q_heads; ++r) {
    float* qp = qs.data() + r * 2 * Dp;
    float* qn = qp + Dp;
    for (int d = 0; d < D; ++d) {
      const float v = load_scalar(a.q_dtype, a.q, r * D + d);
      if (!std::isfinite(v)) qfinite[size_t(r)] = 0;
      // A NaN goes into both halves, so it propagates to the head's bounds
      // as on the CUDA twin (max of two NaN products); it used to vanish here.
      qp[d] = v < 0.f ? 0.f : v;
      qn[d] = v > 0.f ? 0.f : v;
    }
  }
  // Work units: every list gets at least one (its first unit writes the -inf tail).
  unit_off[0] = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t m = std::max<int64_t>(0, pages_used(a.kv_len[l], a.page_size) - 1);
    unit_off[l + 1] = unit_off[l] + std::max<int64_t>(1, (m + kPagesPerUnit - 1) / kPagesPerUnit);
  }

  Ctx c{&a, g, D, Dp, dtype_size(a.kv_dtype), qs.data(), qfinite.data(), a.share ? 1 : g};
  void (*run)(const Ctx&, int64_t, int, int) = pages_portable;
#ifdef KVSQ_QB_X86
  if (cpu_features().simd()) {
    run = a.kv_dtype == DType::F16 ? pages_simd<1> : a.kv_dtype == DType::BF16 ? pages_simd<2> : pages_simd<0>;
  }
#endif
  const float ninf = -std::numeric_limits<float>::infinity();
  parallel_for(unit_off[L], [&](int64_t ub, int64_t ue, int) {
    int64_t l = std::upper_bound(unit_off.begin(), unit_off.end(), ub) - unit_off.begin() - 1;
    for (int64_t u = ub; u < ue; ++u) {
      while (unit_off[l + 1] <= u) ++l;
      const int64_t k = u - unit_off[l];
      const int m = int(std::max<int64_t>(0, pages_used(a.kv_len[l], a.page_size) - 1));
      if (k == 0) {
        const int64_t row0 = a.share ? l : (l / a.num_kv_heads) * a.num_q_heads + (l % a.num_kv_heads) * g;
        for (int64_t r = 0; r < c.out_rows_per_list; ++r)
          std::fill(a.out + (row0 + r) * a.out_stride + m, a.out + (row0 + r + 1) * a.out_stride, ninf);
      }
      const int p0 = int(k * kPagesPerUnit), p1 = std::min(m, p0 + kPagesPerUnit);
      if (p0 < p1) run(c, l, p0, p1);
    }
  });
  return Status::Ok;
}

}  // namespace kvsq
