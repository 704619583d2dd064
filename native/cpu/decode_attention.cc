// Decode attention over the paged head-wise KV pool (methods.md; layout and
// argument contract in core/ops.h DecodeAttnArgs).
//
// Formula. For sequence b, query head h (h in [0, Hq)), KV head j = h / g,
// g = Hq / Hkv, list l = b*Hkv + j, and the slot set S_h (all valid slots of
// l, or the valid slots of the pages selected for (b, h)):
//   z_s   = scale * q[b,h] . k_s                    s in S_h
//   p_s   = exp(z_s - lse),  lse = log sum_{s in S_h} exp(z_s)
//   o     = sum_s p_s v_s                           (zeros and lse = -inf if S_h is empty)
//   score_pool[slot s] += reduce_{h in group j} p_h[s]   (p_h[s] = 0 for s not in S_h;
//                                                         mean divides by g; only slots of
//                                                         the union of the S_h are touched)
//   score_before / score_after (optional, flat, list l at sum_{l'<l} kv_len[l']):
//     the pool value of every valid slot of l before / after the add
//   evict_slot[l] (optional): argmin of the pool after the add over the slots
//     s with evict_pos[s] <= evict_max_pos[l] (ties: lower position), or -1
// Slot s of list l is row s % P of physical page page_ids[page_indptr[l] + s / P].
//
// Arithmetic is fp32 throughout: q is converted once and pre-multiplied by
// scale*log2(e), so every exponential is an exp2 and the logits live in base-2
// units (lse is converted back to natural log at the end). f16/bf16 -> f32 is
// exact, so the only errors are fp32 rounding of the dot products (D terms),
// of q*scale*log2e, of the exp2 (the SIMD polynomial is within ~2 ulp), and of
// the sums over slots. Tolerance the tests hold this to, per output element:
//   |o - o_ref| <= max|v| * (2*dz + 8*sqrt(n)*u + 8u),  dz = (D+4)*u*scale*max_s sum_d|q_d k_sd|
// (u = 2^-24; dz is the worst-case recursive-summation bound of a logit, plus
// the roundings of q*scale*log2e and of the subtraction of the running max;
// it becomes a relative error of at most 2*dz in every p after normalisation;
// the sqrt(n) term is the usual probabilistic bound for summing n positive
// weights in fp32, the 8u covers the exp2 polynomial), plus half an ulp of the
// output dtype; lse within dz + 8*sqrt(n)*u + 8u*|lse|. These are the
// tolerances test/native/test_decode_attention.cc asserts.
//
// Design (why):
// * Decode attention is a stream over K and V: each byte is used once, so the
//   kernel must run at memory bandwidth. With GQA, g query heads read the same
//   KV list; loading a K row and dotting it with one head at a time would make
//   the kernel compute/shuffle-bound (and re-convert f16 g times). So each
//   loaded K row is converted once and FMA'd against all g query vectors, with
//   8 independent dot products in flight (8/g slots x g heads, 8 ymm
//   accumulators: enough to hide FMA latency; 16 zmm with AVX-512) and a
//   single transpose-reduce (hadd tree) turning the 8 accumulators into 8
//   logits, instead of 8 separate horizontal sums.
// * V is accumulated as a small GEMM: acc[g][D] += p[g][T] * V[T][D], register
//   tiles of (heads x 8-float columns) = 8 ymm, each V vector converted once
//   per tile and broadcast-multiplied by the probabilities of every head. The
//   online-softmax rescale (alpha) is folded into the load of the accumulator
//   tile, so a running-max change costs no extra pass.
// * Slots are processed in blocks of kT: logits of the block for all heads,
//   then one online-softmax update per head, then V. The per-block softmax
//   amortises the exp and max work over vectors of slots.
// * Parallelism is flash-decoding: each list's slot range is cut into splits
//   (about kItemsPerThread per thread, so the last ones even out the threads'
//   finish); (list, split) items are handed out dynamically (atomic counter)
//   because lengths are ragged and the 2-core machine is noisy. Each split
//   leaves a partial (max, sum, acc) and the partials are merged per list. A
//   list with a single split finalises inline, so a batch of short sequences
//   pays no merge; without score accumulation the thread that finishes a
//   list's last split merges it, so a call is one pool dispatch.
// * Score accumulation needs this step's normalised probabilities, which are
//   known only after the last split of the list. Rather than read K again, the
//   block's probabilities relative to its running max (which the online
//   softmax computes anyway) are kept in a per-call scratch (g floats per
//   slot), with that max per block; after the last split the final lse of
//   each head rescales them by exp2(max - lse) (one exp2 per block and head,
//   not per slot), and they are reduced over the group and added to the pool.
//   p = exp2(z - m) * exp2(m - lse) adds one rounding and one scalar exp2
//   (<= 1 ulp) to exp2(z - lse): inside the 8u allowed for the exp2 below.
// * Quest subsets: the heads of a group usually select overlapping pages. The
//   kernel walks the union of the group's selected pages once (each K/V row
//   read once for the group) and masks the logits of heads that did not
//   select a page to -inf (exp2 -> exactly 0).
// * Software prefetch, because pages are scattered in the pool (a 16-slot f16
//   page of D=128 is one 4 KiB OS page: a TLB miss and a new stream that the
//   hardware prefetchers pick up late or not at all). Each row is prefetched
//   kPfBytes of K ahead by the inner kernels, one line of the future row per
//   line of the current row consumed, so prefetches go out at the rate data
//   is used. Issued as a burst per block (the previous design) they filled
//   the miss queue: the core waited on the burst and then computed with no
//   miss in flight, so memory and compute time added up (f16 32K target,
//   2 threads, AVX2 tiles in both: 8.1 ms with bursts, 4.7 ms spread).
//   Pages kTouchBytes ahead get one touch per 4 KiB so that their page walks
//   are done early (~5%).
// * Bound, on the target (EPYC Zen 5 VM, 2 cores, f16 32K, 134 MB): compute
//   alone (K/V resident in L2) takes ~2.4 ms with the AVX-512 tiles and
//   ~4.2 ms with AVX2 (2 threads); a read-only pass over the same bytes in
//   shuffled 4 KiB pages ~3.0-3.7 ms (the bench prints it). The kernel runs
//   ~4.3-4.6 ms: memory-bound, compute overlapped. With the AVX2 tiles only
//   it runs ~4.7 ms, at the compute figure.
// * Where the CPU has AVX-512F (checked at run time, as are AVX2/FMA/F16C)
//   the dot products and the V accumulation use 16-float vectors: half the
//   FMA and conversion instructions per row; the logits reduce 16
//   accumulators (4 slots x 4 heads) with one shuffle tree. The softmax and
//   score primitives stay AVX2 (a few % of the work). KVSQ_NO_AVX512=1 keeps
//   the AVX2 tiles, to test or compare them on such a machine.
// * Everything is validated before anything is written; scratch is allocated
//   before the first output write (allocation failure -> Status::OOM).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVSQ_DA_X86 1
#define KVSQ_DA_SIMD __attribute__((target("avx2,fma,f16c")))
#endif

namespace kvsq {

namespace {

constexpr int kT = 32;  // slots per block (32 vs 64 vs 128: within noise, 32 slightly ahead)
// Prefetch lookahead, in bytes of K (the same slots' V is prefetched too): rows
// about 16 KiB ahead; and pages about 256 KiB ahead touched for their TLB
// entries. Measured on the target (2 threads, f16 32K): 8-16 KiB within noise
// of each other, 4 KiB ~10% slower; the far touch ~5% faster than none.
constexpr int64_t kPfBytes = 16 << 10;
constexpr int64_t kTouchBytes = 256 << 10;
constexpr int64_t kItemsPerThread = 16;  // splits per thread: the last ones even out the threads' finish
constexpr int64_t kMinSplit = 512;  // slots: shorter splits cost more in merge than they balance
constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kLn2 = 0.693147180559945309417f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------- inner kernels
// Both paths implement the same five primitives; the driver below is shared.
struct Kern {
  // out[h*ls + t] = qf[h*D ..] . K(rows[t]) for h < g, t < n (n <= kT). ws: >= D floats.
  // pf[t]: a row to prefetch while rows[t] is consumed, line for line (see run_item).
  void (*logits)(const float* qf, int g, int D, const char* const* rows, const char* const* pf, int n,
                 float* out, int64_t ls, float* ws);
  // max of l[0..n)
  float (*maxv)(const float* l, int n);
  // p[t] = exp2(l[t] - m), returns the sum; m finite.
  float (*expsum)(const float* l, int n, float m, float* p);
  // acc[h*D + d] = alpha[h] * acc[h*D + d] + sum_t p[h*ps + t] * V(rows[t])[d]
  void (*vacc)(const float* p, int64_t ps, const float* alpha, int g, int D,
               const char* const* rows, const char* const* pf, int n, float* acc, float* ws);
  // r[t] = reduce_h p[h*ps + t] * sc[h] (heads with sc = 0 contribute 0), t < n
  void (*scores)(const float* p, int64_t ps, const float* sc, int g, int n, Reduce mode, float* r);
};

template <DType T>
inline float ld1(const char* row, int d) {
  if (T == DType::F32) return reinterpret_cast<const float*>(row)[d];
  if (T == DType::F16) return f16_to_f32(reinterpret_cast<const uint16_t*>(row)[d]);
  return bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[d]);
}

// ---- portable: plain fp32 loops; rows are converted once into ws.
template <DType T>
void logits_portable(const float* qf, int g, int D, const char* const* rows, const char* const*, int n,
                     float* out, int64_t ls, float* ws) {
  for (int t = 0; t < n; ++t) {
    for (int d = 0; d < D; ++d) ws[d] = ld1<T>(rows[t], d);
    for (int h = 0; h < g; ++h) {
      const float* q = qf + int64_t(h) * D;
      float acc = 0.f;
      for (int d = 0; d < D; ++d) acc += q[d] * ws[d];
      out[h * ls + t] = acc;
    }
  }
}
float maxv_portable(const float* l, int n) {
  float m = kNegInf;
  for (int t = 0; t < n; ++t) m = l[t] > m ? l[t] : m;
  return m;
}
float expsum_portable(const float* l, int n, float m, float* p) {
  float s = 0.f;
  for (int t = 0; t < n; ++t) s += (p[t] = std::exp2(l[t] - m));
  return s;
}
template <DType T>
void vacc_portable(const float* p, int64_t ps, const float* alpha, int g, int D,
                   const char* const* rows, const char* const*, int n, float* acc, float* ws) {
  for (int h = 0; h < g; ++h)
    if (alpha[h] != 1.f)
      for (int d = 0; d < D; ++d) acc[int64_t(h) * D + d] *= alpha[h];
  for (int t = 0; t < n; ++t) {
    for (int d = 0; d < D; ++d) ws[d] = ld1<T>(rows[t], d);
    for (int h = 0; h < g; ++h) {
      const float w = p[h * ps + t];
      float* ah = acc + int64_t(h) * D;
      for (int d = 0; d < D; ++d) ah[d] += w * ws[d];
    }
  }
}
// r[t] = reduce over heads h of p[h][t] * sc[h] (p: the block's stored
// probabilities relative to its running max, sc: exp2(block max - lse)).
void scores_portable(const float* p, int64_t ps, const float* sc, int g, int n, Reduce mode, float* r) {
  for (int t = 0; t < n; ++t) {
    float acc = 0.f;
    for (int h = 0; h < g; ++h) {
      if (sc[h] == 0.f) continue;
      const float v = p[h * ps + t] * sc[h];
      acc = mode == Reduce::Max ? std::max(acc, v) : acc + v;
    }
    r[t] = mode == Reduce::Mean ? acc / float(g) : acc;
  }
}

#ifdef KVSQ_DA_X86
// ---- AVX2 + FMA + F16C
template <DType T>
KVSQ_DA_SIMD inline __m256 ld8(const char* row, int d) {
  if (T == DType::F32) return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + d);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + d));
  if (T == DType::F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// r[i] = horizontal sum of a[i]
KVSQ_DA_SIMD inline __m256 reduce8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 2^x, x <= 128. Round-to-nearest split x = n + f, |f| <= 1/2; 2^f by its
// degree-7 Taylor polynomial (truncation < 6e-9 relative, below fp32
// rounding); 2^n built in the exponent field. x < -126.5 (including -inf)
// gives n = -127, a zero exponent field: exactly 0, which the subset masking
// relies on. NaN propagates.
KVSQ_DA_SIMD inline __m256 exp2_ps(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-127.f), x);
  x = _mm256_min_ps(_mm256_set1_ps(127.f), x);
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(x, n);
  __m256 p = _mm256_set1_ps(1.5252733804059840e-05f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530393381608e-04f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-03f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-02f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-01f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

KVSQ_DA_SIMD inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
KVSQ_DA_SIMD inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// NS slots x NH heads of logits per pass (NS * NH = 8 accumulators).
template <DType T, int NH>
KVSQ_DA_SIMD void logits_simd(const float* qf, int g, int D, const char* const* rows, const char* const* pf,
                              int n, float* out, int64_t ls, float*) {
  constexpr int NS = 8 / NH;
  constexpr int kLine = 64 / int(T == DType::F32 ? 4 : 2);  // elements per cache line
  const int D8 = D & ~7;
  for (int h0 = 0; h0 < g; h0 += NH) {
    const float* q0 = qf + int64_t(h0) * D;
    for (int t0 = 0; t0 < n; t0 += NS) {
      const char* r[NS];
      const char* f[NS];
#pragma GCC unroll 8
      for (int s = 0; s < NS; ++s) r[s] = rows[std::min(t0 + s, n - 1)], f[s] = pf[std::min(t0 + s, n - 1)];
      __m256 acc[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
      for (int d = 0; d < D8; d += 8) {
        if (h0 == 0 && d % kLine == 0)
#pragma GCC unroll 8
          for (int s = 0; s < NS; ++s) _mm_prefetch(f[s] + d * (T == DType::F32 ? 4 : 2), _MM_HINT_T0);
#pragma GCC unroll 8
        for (int s = 0; s < NS; ++s) {
          const __m256 kv = ld8<T>(r[s], d);
#pragma GCC unroll 8
          for (int h = 0; h < NH; ++h)
            acc[s * NH + h] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(q0 + h * D + d), acc[s * NH + h]);
        }
      }
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, reduce8(acc));
      for (int d = D8; d < D; ++d)
        for (int s = 0; s < NS; ++s) {
          const float kd = ld1<T>(r[s], d);
          for (int h = 0; h < NH; ++h) tmp[s * NH + h] += kd * q0[h * D + d];
        }
      for (int s = 0; s < NS && t0 + s < n; ++s)
        for (int h = 0; h < NH; ++h) out[(h0 + h) * ls + t0 + s] = tmp[s * NH + h];
    }
  }
}

KVSQ_DA_SIMD float maxv_simd(const float* l, int n) {
  __m256 m = _mm256_set1_ps(kNegInf);
  int t = 0;
  for (; t + 8 <= n; t += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(l + t));
  float r = hmax(m);
  for (; t < n; ++t) r = l[t] > r ? l[t] : r;
  return r;
}
KVSQ_DA_SIMD float expsum_simd(const float* l, int n, float m, float* p) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp2_ps(_mm256_sub_ps(_mm256_loadu_ps(l + t), mv));
    _mm256_storeu_ps(p + t, e);
    s = _mm256_add_ps(s, e);
  }
  float r = hsum(s);
  if (t < n) {  // tail through a padded vector, so both paths of a row use the same exp2
    alignas(32) float buf[8];
    for (int i = 0; i < 8; ++i) buf[i] = t + i < n ? l[t + i] : kNegInf;
    _mm256_store_ps(buf, exp2_ps(_mm256_sub_ps(_mm256_load_ps(buf), mv)));
    for (int i = 0; t + i < n; ++i) r += (p[t + i] = buf[i]);
  }
  return r;
}

// Tile: NH heads x ND 8-float columns of acc, held in registers across the block.
template <DType T, int NH, int ND>
KVSQ_DA_SIMD inline void vtile(const float* p, int64_t ps, const float* alpha, int D, const char* const* rows,
                               const char* const* pf, int n, float* acc, int d0) {
  constexpr int es = T == DType::F32 ? 4 : 2;
  __m256 a[NH][ND];
#pragma GCC unroll 8
  for (int h = 0; h < NH; ++h) {
    const __m256 al = _mm256_set1_ps(alpha[h]);
#pragma GCC unroll 8
    for (int j = 0; j < ND; ++j) a[h][j] = _mm256_mul_ps(al, _mm256_loadu_ps(acc + h * D + d0 + 8 * j));
  }
  for (int t = 0; t < n; ++t) {
    if (pf)
#pragma GCC unroll 8
      for (int j = 0; j < ND; ++j)
        if ((d0 + 8 * j) * es % 64 == 0) _mm_prefetch(pf[t] + (d0 + 8 * j) * es, _MM_HINT_T0);
    __m256 v[ND];
#pragma GCC unroll 8
    for (int j = 0; j < ND; ++j) v[j] = ld8<T>(rows[t], d0 + 8 * j);
#pragma GCC unroll 8
    for (int h = 0; h < NH; ++h) {
      const __m256 w = _mm256_broadcast_ss(p + h * ps + t);
#pragma GCC unroll 8
      for (int j = 0; j < ND; ++j) a[h][j] = _mm256_fmadd_ps(w, v[j], a[h][j]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 8
    for (int j = 0; j < ND; ++j) _mm256_storeu_ps(acc + h * D + d0 + 8 * j, a[h][j]);
}

template <DType T, int NH, int ND>
KVSQ_DA_SIMD inline void vtile_rest(int nd, const float* p, int64_t ps, const float* alpha, int D,
                                    const char* const* rows, const char* const* pf, int n, float* acc, int d0) {
  // nd < ND leftover columns: the widest tile that fits, so short rows keep several chains.
  if constexpr (ND > 1) {
    if (nd == ND - 1) return vtile<T, NH, ND - 1>(p, ps, alpha, D, rows, pf, n, acc, d0);
    return vtile_rest<T, NH, ND - 1>(nd, p, ps, alpha, D, rows, pf, n, acc, d0);
  }
}

template <DType T, int NH>
KVSQ_DA_SIMD void vacc_simd(const float* p, int64_t ps, const float* alpha, int g, int D,
                            const char* const* rows, const char* const* pf, int n, float* acc, float*) {
  constexpr int ND = 8 / NH;
  const int D8 = D & ~7;
  for (int h0 = 0; h0 < g; h0 += NH) {
    const float* ph = p + h0 * ps;
    const float* al = alpha + h0;
    float* ah = acc + int64_t(h0) * D;
    int d0 = 0;
    const char* const* f = h0 == 0 ? pf : nullptr;  // each line prefetched once
    for (; d0 + 8 * ND <= D8; d0 += 8 * ND) vtile<T, NH, ND>(ph, ps, al, D, rows, f, n, ah, d0);
    if (d0 < D8) vtile_rest<T, NH, ND>((D8 - d0) / 8, ph, ps, al, D, rows, f, n, ah, d0);
    if (D8 < D) {
      for (int h = 0; h < NH; ++h)
        for (int d = D8; d < D; ++d) ah[h * D + d] *= al[h];
      for (int t = 0; t < n; ++t)
        for (int d = D8; d < D; ++d) {
          const float vd = ld1<T>(rows[t], d);
          for (int h = 0; h < NH; ++h) ah[h * D + d] += ph[h * ps + t] * vd;
        }
    }
  }
}

KVSQ_DA_SIMD void scores_simd(const float* p, int64_t ps, const float* sc, int g, int n, Reduce mode, float* r) {
  const __m256 inv_g = _mm256_set1_ps(1.f / float(g));
  for (int t = 0; t < n; t += 8) {
    const int w = std::min(8, n - t);
    __m256 acc = _mm256_setzero_ps();
    for (int h = 0; h < g; ++h) {
      if (sc[h] == 0.f) continue;
      __m256 x;
      if (w == 8) {
        x = _mm256_loadu_ps(p + h * ps + t);
      } else {
        alignas(32) float buf[8];
        for (int i = 0; i < 8; ++i) buf[i] = i < w ? p[h * ps + t + i] : 0.f;
        x = _mm256_load_ps(buf);
      }
      const __m256 e = _mm256_mul_ps(x, _mm256_set1_ps(sc[h]));
      acc = mode == Reduce::Max ? _mm256_max_ps(acc, e) : _mm256_add_ps(acc, e);
    }
    if (mode == Reduce::Mean) acc = _mm256_mul_ps(acc, inv_g);
    if (w == 8) {
      _mm256_storeu_ps(r + t, acc);
    } else {
      alignas(32) float buf[8];
      _mm256_store_ps(buf, acc);
      for (int i = 0; i < w; ++i) r[t + i] = buf[i];
    }
  }
}

template <DType T>
Kern simd_kern(int g) {
  Kern k{};
  const int nh = g % 8 == 0 ? 8 : g % 4 == 0 ? 4 : g % 2 == 0 ? 2 : 1;
  switch (nh) {
    case 8: k.logits = logits_simd<T, 8>; k.vacc = vacc_simd<T, 8>; break;
    case 4: k.logits = logits_simd<T, 4>; k.vacc = vacc_simd<T, 4>; break;
    case 2: k.logits = logits_simd<T, 2>; k.vacc = vacc_simd<T, 2>; break;
    default: k.logits = logits_simd<T, 1>; k.vacc = vacc_simd<T, 1>; break;
  }
  k.maxv = maxv_simd;
  k.expsum = expsum_simd;
  k.scores = scores_simd;
  return k;
}

// ---- AVX-512F (same algorithm, 16-float vectors). Where the FMA units are
// 512 bits wide (Zen 5, recent Intel server cores) this halves the FMA and
// conversion instruction count per row, which is what bounds the kernel once
// memory is streamed well (see the design notes).
#define KVSQ_DA_SIMD512 __attribute__((target("avx512f,avx2,fma,f16c")))
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and trip
// -Wmaybe-uninitialized once inlined (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

template <DType T>
KVSQ_DA_SIMD512 inline __m512 ld16(const char* row, int d) {
  if (T == DType::F32) return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + d);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(row) + d));
  if (T == DType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Sums of a[0..16): the sum of a[i] lands in lane 4 * (i % 4) + i / 4.
KVSQ_DA_SIMD512 inline __m512 reduce16(const __m512* a) {
  __m512 b[8], c[4];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)  // blocks: a[2i] (lanes 0-7), a[2i+1] (lanes 8-15)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // 128-bit block j: a[4i + j]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  const __m512 d0 = _mm512_add_ps(_mm512_unpacklo_ps(c[0], c[1]), _mm512_unpackhi_ps(c[0], c[1]));
  const __m512 d1 = _mm512_add_ps(_mm512_unpacklo_ps(c[2], c[3]), _mm512_unpackhi_ps(c[2], c[3]));
  return _mm512_add_ps(_mm512_shuffle_ps(d0, d1, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(d0, d1, _MM_SHUFFLE(3, 2, 3, 2)));
}

// NS slots x NH heads per pass, NS * NH = 16 accumulators.
template <DType T, int NH>
KVSQ_DA_SIMD512 void logits_512(const float* qf, int g, int D, const char* const* rows, const char* const* pf,
                                int n, float* out, int64_t ls, float*) {
  constexpr int NS = 16 / NH;
  constexpr int es = T == DType::F32 ? 4 : 2;
  const int D16 = D & ~15;
  for (int h0 = 0; h0 < g; h0 += NH) {
    const float* q0 = qf + int64_t(h0) * D;
    for (int t0 = 0; t0 < n; t0 += NS) {
      const char* r[NS];
      const char* f[NS];
#pragma GCC unroll 16
      for (int s = 0; s < NS; ++s) r[s] = rows[std::min(t0 + s, n - 1)], f[s] = pf[std::min(t0 + s, n - 1)];
      __m512 acc[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      for (int d = 0; d < D16; d += 16) {
        if (h0 == 0 && d * es % 64 == 0)
#pragma GCC unroll 16
          for (int s = 0; s < NS; ++s) _mm_prefetch(f[s] + d * es, _MM_HINT_T0);
        __m512 qv[NH];
#pragma GCC unroll 16
        for (int h = 0; h < NH; ++h) qv[h] = _mm512_loadu_ps(q0 + h * D + d);
#pragma GCC unroll 16
        for (int s = 0; s < NS; ++s) {
          const __m512 kv = ld16<T>(r[s], d);
#pragma GCC unroll 16
          for (int h = 0; h < NH; ++h) acc[s * NH + h] = _mm512_fmadd_ps(kv, qv[h], acc[s * NH + h]);
        }
      }
      const __m512 sums = reduce16(acc);
      if (NH == 4 && D16 == D && t0 + NS <= n) {  // lanes 4h..4h+3: head h, slots t0..t0+3
        float* o = out + int64_t(h0) * ls + t0;
        _mm_storeu_ps(o, _mm512_castps512_ps128(sums));
        _mm_storeu_ps(o + ls, _mm512_extractf32x4_ps(sums, 1));
        _mm_storeu_ps(o + 2 * ls, _mm512_extractf32x4_ps(sums, 2));
        _mm_storeu_ps(o + 3 * ls, _mm512_extractf32x4_ps(sums, 3));
        continue;
      }
      alignas(64) float tmp[16];
      _mm512_store_ps(tmp, sums);
      for (int s = 0; s < NS && t0 + s < n; ++s)
        for (int h = 0; h < NH; ++h) {
          const int i = s * NH + h;
          float v = tmp[4 * (i & 3) + (i >> 2)];
          for (int d = D16; d < D; ++d) v += ld1<T>(r[s], d) * q0[h * D + d];
          out[(h0 + h) * ls + t0 + s] = v;
        }
    }
  }
}

template <DType T, int NH, int ND>
KVSQ_DA_SIMD512 inline void vtile_512(const float* p, int64_t ps, const float* alpha, int D, const char* const* rows,
                                      const char* const* pf, int n, float* acc, int d0) {
  constexpr int es = T == DType::F32 ? 4 : 2;
  __m512 a[NH][ND];
#pragma GCC unroll 16
  for (int h = 0; h < NH; ++h) {
    const __m512 al = _mm512_set1_ps(alpha[h]);
#pragma GCC unroll 16
    for (int j = 0; j < ND; ++j) a[h][j] = _mm512_mul_ps(al, _mm512_loadu_ps(acc + h * D + d0 + 16 * j));
  }
  for (int t = 0; t < n; ++t) {
    if (pf)
#pragma GCC unroll 16
      for (int j = 0; j < ND; ++j)
        if ((d0 + 16 * j) * es % 64 == 0) _mm_prefetch(pf[t] + (d0 + 16 * j) * es, _MM_HINT_T0);
    __m512 v[ND];
#pragma GCC unroll 16
    for (int j = 0; j < ND; ++j) v[j] = ld16<T>(rows[t], d0 + 16 * j);
#pragma GCC unroll 16
    for (int h = 0; h < NH; ++h) {
      const __m512 w = _mm512_set1_ps(p[h * ps + t]);
#pragma GCC unroll 16
      for (int j = 0; j < ND; ++j) a[h][j] = _mm512_fmadd_ps(w, v[j], a[h][j]);
    }
  }
#pragma GCC unroll 16
  for (int h = 0; h < NH; ++h)
#pragma GCC unroll 16
    for (int j = 0; j < ND; ++j) _mm512_storeu_ps(acc + h * D + d0 + 16 * j, a[h][j]);
}

template <DType T, int NH, int ND>
KVSQ_DA_SIMD512 inline void vtile_rest_512(int nd, const float* p, int64_t ps, const float* alpha, int D,
                                           const char* const* rows, const char* const* pf, int n, float* acc,
                                           int d0) {
  if constexpr (ND > 1) {
    if (nd == ND - 1) return vtile_512<T, NH, ND - 1>(p, ps, alpha, D, rows, pf, n, acc, d0);
    return vtile_rest_512<T, NH, ND - 1>(nd, p, ps, alpha, D, rows, pf, n, acc, d0);
  }
}

template <DType T, int NH>
KVSQ_DA_SIMD512 void vacc_512(const float* p, int64_t ps, const float* alpha, int g, int D,
                              const char* const* rows, const char* const* pf, int n, float* acc, float*) {
  constexpr int ND = NH >= 2 ? 16 / NH : 8;
  const int D16 = D & ~15;
  for (int h0 = 0; h0 < g; h0 += NH) {
    const float* ph = p + h0 * ps;
    const float* al = alpha + h0;
    float* ah = acc + int64_t(h0) * D;
    int d0 = 0;
    const char* const* f = h0 == 0 ? pf : nullptr;  // each line prefetched once
    for (; d0 + 16 * ND <= D16; d0 += 16 * ND) vtile_512<T, NH, ND>(ph, ps, al, D, rows, f, n, ah, d0);
    if (d0 < D16) vtile_rest_512<T, NH, ND>((D16 - d0) / 16, ph, ps, al, D, rows, f, n, ah, d0);
    if (D16 < D) {
      for (int h = 0; h < NH; ++h)
        for (int d = D16; d < D; ++d) ah[h * D + d] *= al[h];
      for (int t = 0; t < n; ++t)
        for (int d = D16; d < D; ++d) {
          const float vd = ld1<T>(rows[t], d);
          for (int h = 0; h < NH; ++h) ah[h * D + d] += ph[h * ps + t] * vd;
        }
    }
  }
}

template <DType T>
Kern avx512_kern(int g) {
  Kern k = simd_kern<T>(g);  // softmax and score primitives: the AVX2 ones (a small share of the work)
  const int nh = g % 8 == 0 ? 8 : g % 4 == 0 ? 4 : g % 2 == 0 ? 2 : 1;
  switch (nh) {
    case 8: k.logits = logits_512<T, 8>; k.vacc = vacc_512<T, 8>; break;
    case 4: k.logits = logits_512<T, 4>; k.vacc = vacc_512<T, 4>; break;
    case 2: k.logits = logits_512<T, 2>; k.vacc = vacc_512<T, 2>; break;
    default: k.logits = logits_512<T, 1>; k.vacc = vacc_512<T, 1>; break;
  }
  return k;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// AVX-512F (detected with the other features: native/core/cpu_features.cc;
// KVSQ_NO_AVX512=1 keeps the AVX2 path, to test or compare it on such a machine).
bool use_avx512() { return cpu_features().avx512f; }
#endif  // KVSQ_DA_X86

template <DType T>
Kern portable_kern() {
  Kern k{};
  k.logits = logits_portable<T>;
  k.maxv = maxv_portable;
  k.expsum = expsum_portable;
  k.vacc = vacc_portable<T>;
  k.scores = scores_portable;
  return k;
}

Kern pick_kern(DType kv, int g) {
#ifdef KVSQ_DA_X86
  if (cpu_features().simd()) {
    if (use_avx512()) switch (kv) {
        case DType::F16: return avx512_kern<DType::F16>(g);
        case DType::BF16: return avx512_kern<DType::BF16>(g);
        default: return avx512_kern<DType::F32>(g);
      }
    switch (kv) {
      case DType::F16: return simd_kern<DType::F16>(g);
      case DType::BF16: return simd_kern<DType::BF16>(g);
      default: return simd_kern<DType::F32>(g);
    }
  }
#endif
  switch (kv) {
    case DType::F16: return portable_kern<DType::F16>();
    case DType::BF16: return portable_kern<DType::BF16>();
    default: return portable_kern<DType::F32>();
  }
}

// ---------------------------------------------------------------- driver
struct ListInfo {
  int64_t pbase = 0;   // page_indptr[l]
  int64_t ulen = 0;    // slots walked (all valid slots, or the union of the selected pages' valid slots)
  int64_t ubase = 0;   // first union page in Ctx::upage (subset mode)
  int64_t nu = 0;      // union pages
  int64_t loff = 0;    // logits scratch offset (score mode): g rows of ulen
  int64_t item0 = 0;   // first item
  int64_t foff = 0;    // offset of the list in score_before / score_after (sum of earlier kv_len)
  int32_t nitems = 0;
  int32_t len = 0;     // kv_len
};
struct Item {
  int64_t list, u0, u1;
  int64_t blk0 = 0;  // score mode: index of the item's first block in Ctx::bmax (g floats each)
};

struct Ctx {
  const DecodeAttnArgs* a;
  Kern k;
  int g, D, P, Hq, Hkv;
  size_t kv_es, q_es;
  int64_t row_bytes;
  bool subset;
  std::vector<float> qf;         // [B*Hq*D], scaled by scale*log2e
  std::vector<ListInfo> lists;
  std::vector<Item> items;
  std::vector<int32_t> upage;    // subset: logical page of each union page
  std::vector<int64_t> ustart;   // subset: first union slot of each union page (list-local)
  std::vector<uint8_t> umask;    // subset: g flags per union page
  // The two large buffers live in a per-calling-thread cache (see Scratch).
  std::vector<float>& logits;    // score mode: per slot and head, exp2(logit - running max of its block)
  std::vector<float>& part;      // per item: m[g], s[g], acc[g*D]
  std::vector<float>& bmax;      // score mode: per block of kT slots and head, that running max
  Ctx(std::vector<float>& lg, std::vector<float>& pt, std::vector<float>& bm) : logits(lg), part(pt), bmax(bm) {}
  int64_t part_stride;
  int64_t pf_dist, pf_tlb;       // lookahead of the row prefetches and of the page touches, slots
};

// Walks the slots of a list in union order, yielding physical rows.
struct Cursor {
  const Ctx* c;
  const ListInfo* L;
  const int32_t* ids;
  int64_t up;     // current union page (index relative to the list)
  int64_t row;    // row within the page
  int64_t rows_in_page;
  void seek(int64_t u) {
    if (!c->subset) {
      up = u / c->P;
      row = u % c->P;
    } else {
      const int64_t* st = c->ustart.data() + L->ubase;
      up = std::upper_bound(st, st + L->nu, u) - st - 1;
      row = u - st[up];
    }
    set_page_rows();
  }
  void set_page_rows() {
    const int64_t lp = logical_page();
    rows_in_page = std::min<int64_t>(c->P, int64_t(L->len) - lp * c->P);
  }
  int64_t logical_page() const { return c->subset ? c->upage[L->ubase + up] : up; }
  const uint8_t* mask() const { return c->subset ? c->umask.data() + (L->ubase + up) * c->g : nullptr; }
  int64_t phys() const { return int64_t(ids[logical_page()]) * c->P + row; }
  void next() {
    if (++row == rows_in_page) {
      ++up;
      row = 0;
      if (up < (c->subset ? L->nu : (int64_t(L->len) + c->P - 1) / c->P)) set_page_rows();
    }
  }
  // m slots on (m <= rows_in_page - row: at most to the next page)
  void skip(int64_t m) {
    row += m - 1;
    next();
  }
};

// The eviction candidate rule (DecodeAttnArgs::evict_slot): the lowest score
// among the offered slots, ties to the lower position; NaN never wins.
struct EvictBest {
  int32_t slot = -1, pos = 0;
  float score = 0.f;
  void offer(int32_t s, float v, int32_t p) {
    if (v != v) return;
    if (slot < 0 || v < score || (v == score && p < pos)) slot = s, score = v, pos = p;
  }
};

struct Workspace {
  std::vector<float> lbuf, pbuf, alpha, ws, r, scale;
  EvictBest ev;  // the list being scored (dense lists: tracked in the score pass; see score_list)
  void init(int g, int D) {
    scale.resize(g);
    lbuf.resize(size_t(g) * kT);
    pbuf.resize(size_t(g) * kT);
    alpha.resize(g);
    ws.resize(std::max(D, kT));
    r.resize(kT);
  }
};

// One (list, split): online softmax over [u0, u1) -> partial m, s, acc (log2 units).
void run_item(Ctx& c, int64_t item, Workspace& w) {
  const DecodeAttnArgs& a = *c.a;
  const Item& it = c.items[item];
  const ListInfo& L = c.lists[it.list];
  const int g = c.g, D = c.D;
  const int64_t b = it.list / c.Hkv, j = it.list % c.Hkv;
  const float* q = c.qf.data() + (b * c.Hq + j * g) * D;
  float* m = c.part.data() + item * c.part_stride;
  float* s = m + g;
  float* acc = s + g;
  for (int h = 0; h < g; ++h) m[h] = kNegInf, s[h] = 0.f;
  std::fill(acc, acc + int64_t(g) * D, 0.f);

  const char* kp = static_cast<const char*>(a.k_pool);
  const char* vp = static_cast<const char*>(a.v_pool);
  const bool keep = a.score_pool != nullptr;
  Cursor cur{&c, &L, a.page_ids + L.pbase, 0, 0, 0};
  cur.seek(it.u0);
  // Prefetching. Each K/V row is prefetched pf_dist slots before it is used,
  // by the inner kernels themselves, one line of the row ahead for each line
  // of the current row they consume (pk/pv below). The prefetches are thus
  // spread at the rate of consumption: issued in bursts (a block's worth
  // before its compute) they filled the miss queue, the core waited for the
  // burst, then computed with no miss outstanding: memory and compute time
  // added up instead of overlapping.
  Cursor pf = cur;
  const int64_t pf_dist = std::min(c.pf_dist, it.u1 - it.u0);
  for (int64_t i = 0; i < pf_dist; ++i) pf.next();
  // Page-granular touch further ahead: one line of K and of V per page, so
  // that the page walk (TLB miss) of a shuffled 4 KiB page is under way
  // before the row prefetches reach it.
  const int64_t npages_u = c.subset ? L.nu : (int64_t(L.len) + c.P - 1) / c.P;
  int64_t tup = cur.up;  // next union page to touch
  auto page_start = [&](int64_t up) { return c.subset ? c.ustart[L.ubase + up] : up * c.P; };
  auto touch_to = [&](int64_t target) {
    for (; tup < npages_u && page_start(tup) < target; ++tup) {
      const int64_t lp = c.subset ? c.upage[L.ubase + tup] : tup;
      const int64_t off = int64_t(a.page_ids[L.pbase + lp]) * c.P * c.row_bytes;
      for (int64_t o = 0; o < c.P * c.row_bytes; o += 4096) {  // each 4 KiB OS page of a larger KV page
        __builtin_prefetch(kp + off + o, 0, 3);
        __builtin_prefetch(vp + off + o, 0, 3);
      }
    }
  };

  const char* krows[kT];
  const char* vrows[kT];
  const char* pk[kT];
  const char* pv[kT];
  const uint8_t* masks[kT];
  float* pb = w.pbuf.data();
  float* alpha = w.alpha.data();
  for (int64_t u = it.u0; u < it.u1; u += kT) {
    const int n = int(std::min<int64_t>(kT, it.u1 - u));
    touch_to(std::min(u + n + c.pf_tlb, it.u1));
    for (int t = 0; t < n; ++t) {
      const int64_t off = cur.phys() * c.row_bytes;
      krows[t] = kp + off;
      vrows[t] = vp + off;
      masks[t] = cur.mask();
      cur.next();
      if (u + t + pf_dist < it.u1) {
        const int64_t poff = pf.phys() * c.row_bytes;
        pk[t] = kp + poff;
        pv[t] = vp + poff;
        pf.next();
      } else {  // past the split: re-touch the current row (an L1 hit)
        pk[t] = krows[t];
        pv[t] = vrows[t];
      }
    }
    float* lrow;
    int64_t ls;
    if (keep) {
      lrow = c.logits.data() + L.loff + u;
      ls = L.ulen;
    } else {
      lrow = w.lbuf.data();
      ls = kT;
    }
    c.k.logits(q, g, D, krows, pk, n, lrow, ls, w.ws.data());
    if (c.subset)
      for (int t = 0; t < n; ++t)
        for (int h = 0; h < g; ++h)
          if (!masks[t][h]) lrow[h * ls + t] = kNegInf;
    // Score mode keeps this block's probabilities (relative to the running
    // max, in place of the logits) and that max: the score pass then only
    // rescales them by exp2(max - lse), instead of a second exp2 per slot
    // and head (which cost a tenth of a 2K-token step).
    float* bm = keep ? c.bmax.data() + (it.blk0 + (u - it.u0) / kT) * g : nullptr;
    for (int h = 0; h < g; ++h) {
      const float* lh = lrow + h * ls;
      float* ph = keep ? lrow + h * ls : pb + h * kT;
      const float mo = m[h];
      const float mn = std::max(mo, c.k.maxv(lh, n));
      if (bm) bm[h] = mn;
      if (mn == kNegInf) {  // nothing attended yet: p = 0, acc stays 0
        alpha[h] = 1.f;
        std::fill(ph, ph + n, 0.f);
        continue;
      }
      alpha[h] = mo == mn ? 1.f : std::exp2(mo - mn);
      s[h] = s[h] * alpha[h] + c.k.expsum(lh, n, mn, ph);
      m[h] = mn;
    }
    c.k.vacc(keep ? lrow : pb, keep ? ls : kT, alpha, g, D, vrows, pv, n, acc, w.ws.data());
  }
}

// Final log2-sum-exp of each head of a list from its items' (m, s); -inf if nothing attended.
void list_lse2(const Ctx& c, const ListInfo& L, float* lse2) {
  for (int h = 0; h < c.g; ++h) {
    float M = kNegInf;
    for (int i = 0; i < L.nitems; ++i) M = std::max(M, c.part[(L.item0 + i) * c.part_stride + h]);
    float S = 0.f;
    if (M != kNegInf)
      for (int i = 0; i < L.nitems; ++i) {
        const float* pm = c.part.data() + (L.item0 + i) * c.part_stride;
        if (pm[h] != kNegInf) S += pm[c.g + h] * std::exp2(pm[h] - M);
      }
    lse2[h] = S > 0.f ? M + std::log2(S) : kNegInf;
  }
}

void store_out(const Ctx& c, int64_t qrow, const float* v) {
  const int D = c.D;
  switch (c.a->q_dtype) {
    case DType::F16: {
      uint16_t* o = static_cast<uint16_t*>(c.a->o) + qrow * D;
      for (int d = 0; d < D; ++d) o[d] = f32_to_f16(v[d]);
      break;
    }
    case DType::BF16: {
      uint16_t* o = static_cast<uint16_t*>(c.a->o) + qrow * D;
      for (int d = 0; d < D; ++d) o[d] = f32_to_bf16(v[d]);
      break;
    }
    default: std::memcpy(static_cast<float*>(c.a->o) + qrow * D, v, size_t(D) * 4);
  }
}

// Merges the partials of list l and writes o and lse.
void finish_list(const Ctx& c, int64_t l, Workspace& w) {
  const ListInfo& L = c.lists[l];
  const int g = c.g, D = c.D;
  const int64_t b = l / c.Hkv, j = l % c.Hkv;
  float* out = w.ws.data();  // >= D
  for (int h = 0; h < g; ++h) {
    const int64_t qrow = b * c.Hq + j * g + h;
    float M = kNegInf;
    for (int i = 0; i < L.nitems; ++i) M = std::max(M, c.part[(L.item0 + i) * c.part_stride + h]);
    std::fill(out, out + D, 0.f);
    float S = 0.f;
    if (M != kNegInf) {
      for (int i = 0; i < L.nitems; ++i) {
        const float* pm = c.part.data() + (L.item0 + i) * c.part_stride;
        if (pm[h] == kNegInf) continue;
        const float f = std::exp2(pm[h] - M);
        S += pm[g + h] * f;
        const float* ac = pm + 2 * g + int64_t(h) * D;
        for (int d = 0; d < D; ++d) out[d] += f * ac[d];
      }
    }
    if (S > 0.f) {
      const float inv = 1.f / S;
      for (int d = 0; d < D; ++d) out[d] *= inv;
    }
    store_out(c, qrow, out);
    if (c.a->lse) c.a->lse[qrow] = S > 0.f ? (M + std::log2(S)) * kLn2 : kNegInf;
  }
}

// Adds this step's group-reduced probabilities of item's slots to score_pool.
void score_item(const Ctx& c, int64_t item, Workspace& w) {
  const Item& it = c.items[item];
  const ListInfo& L = c.lists[it.list];
  float* lse2 = w.alpha.data();
  list_lse2(c, L, lse2);
  Cursor cur{&c, &L, c.a->page_ids + L.pbase, 0, 0, 0};
  cur.seek(it.u0);
  float* r = w.r.data();
  float* scale = w.scale.data();
  for (int64_t u = it.u0; u < it.u1; u += kT) {
    const int n = int(std::min<int64_t>(kT, it.u1 - u));
    const float* bm = c.bmax.data() + (it.blk0 + (u - it.u0) / kT) * c.g;
    for (int h = 0; h < c.g; ++h)
      scale[h] = bm[h] == kNegInf || lse2[h] == kNegInf ? 0.f : std::exp2(bm[h] - lse2[h]);
    c.k.scores(c.logits.data() + L.loff + u, L.ulen, scale, c.g, n, c.a->reduce, r);
    // Dense lists: union slot u is slot u, so the before/after records and
    // the eviction candidate (evict_list's rule) come out of this same pass
    // over the pool (see score_list). A subset list copies around instead.
    const bool rec = !c.subset;
    float* before = rec && c.a->score_before ? c.a->score_before + L.foff + u : nullptr;
    float* after = rec && c.a->score_after ? c.a->score_after + L.foff + u : nullptr;
    const int32_t* pos = rec && c.a->evict_slot ? c.a->evict_pos + L.foff + u : nullptr;
    const int32_t limit = pos ? c.a->evict_max_pos[it.list] : 0;
    // Runs of slots inside one page are contiguous in the pool.
    for (int t = 0; t < n;) {
      const int m = int(std::min<int64_t>(cur.rows_in_page - cur.row, n - t));
      float* p = c.a->score_pool + cur.phys();
      if (before) std::copy(p, p + m, before + t);
      for (int i = 0; i < m; ++i) p[i] += r[t + i];
      if (after) std::copy(p, p + m, after + t);
      if (pos)
        for (int i = 0; i < m; ++i)
          if (pos[t + i] <= limit) w.ev.offer(int32_t(u + t + i), p[i], pos[t + i]);
      t += m;
      cur.skip(m);
    }
  }
}

// Copies the score-pool values of every valid slot of list l (slot order) to
// out + foff: the step's before/after record of the scores (score mode).
void copy_list_scores(const Ctx& c, int64_t l, float* out) {
  const ListInfo& L = c.lists[l];
  const int32_t* ids = c.a->page_ids + L.pbase;
  float* dst = out + L.foff;
  for (int64_t s0 = 0; s0 < L.len; s0 += c.P) {
    const float* src = c.a->score_pool + int64_t(ids[s0 / c.P]) * c.P;
    const int64_t n = std::min<int64_t>(c.P, L.len - s0);
    std::copy(src, src + n, dst + s0);
  }
}

// The eviction candidate of list l (DecodeAttnArgs::evict_slot) from the
// pool as it is: EvictBest over the slots whose position is <= evict_max_pos[l].
void evict_list(const Ctx& c, int64_t l) {
  const DecodeAttnArgs& a = *c.a;
  const ListInfo& L = c.lists[l];
  const int32_t limit = a.evict_max_pos[l];
  const int32_t* pos = a.evict_pos + L.foff;
  const int32_t* ids = a.page_ids + L.pbase;
  EvictBest best;
  for (int64_t s0 = 0; s0 < L.len; s0 += c.P) {
    const float* sc = a.score_pool + int64_t(ids[s0 / c.P]) * c.P;
    const int64_t n = std::min<int64_t>(c.P, L.len - s0);
    for (int64_t i = 0; i < n; ++i)
      if (pos[s0 + i] <= limit) best.offer(int32_t(s0 + i), sc[i], pos[s0 + i]);
  }
  a.evict_slot[l] = best.slot;
}

// Score mode, once every split of list l is done (so its lse is known): adds
// the step's probabilities of all the list's items, with the optional
// before/after copies and eviction candidate around. One thread per list: the
// lists' slots are disjoint, so no atomics.
void score_list(const Ctx& c, int64_t l, Workspace& w) {
  const ListInfo& L = c.lists[l];
  // A dense list's items cover every slot: score_item writes the records as
  // it adds. A subset touches only the union's slots: copy around instead.
  const bool copies = c.subset;
  if (copies && c.a->score_before) copy_list_scores(c, l, c.a->score_before);
  w.ev = EvictBest{};
  for (int32_t i = 0; i < L.nitems; ++i) score_item(c, L.item0 + i, w);
  if (copies && c.a->score_after) copy_list_scores(c, l, c.a->score_after);
  if (c.a->evict_slot) {
    if (copies) evict_list(c, l);
    else c.a->evict_slot[l] = w.ev.slot;
  }
}


// Plans lists, union pages, splits and scratch. Throws std::bad_alloc on OOM.
void plan(Ctx& c) {
  const DecodeAttnArgs& a = *c.a;
  const int64_t nl = int64_t(a.batch) * c.Hkv;
  const int g = c.g, D = c.D, P = c.P;
  c.lists.resize(nl);
  // q once, in log2 units
  const int64_t nq = int64_t(a.batch) * c.Hq * D;
  c.qf.resize(nq);
  const float qs = a.scale * kLog2e;
  for (int64_t i = 0; i < nq; ++i) {
    float v;
    switch (a.q_dtype) {
      case DType::F16: v = f16_to_f32(static_cast<const uint16_t*>(a.q)[i]); break;
      case DType::BF16: v = bf16_to_f32(static_cast<const uint16_t*>(a.q)[i]); break;
      default: v = static_cast<const float*>(a.q)[i];
    }
    c.qf[i] = v * qs;
  }
  int64_t total = 0;
  std::vector<int64_t> cursor;  // subset: per head of the group, next entry of its selection
  for (int64_t l = 0; l < nl; ++l) {
    ListInfo& L = c.lists[l];
    L.pbase = a.page_indptr[l];
    L.len = a.kv_len[l];
    if (!c.subset) {
      L.ulen = L.len;
    } else {
      // Union of the group's selections: a g-way merge of their ascending
      // page lists (O(g * selected), not O(g * pages): a 32K-token list has
      // 2048 pages of which Quest reads ~128).
      const int64_t b = l / c.Hkv, j = l % c.Hkv;
      const int64_t r0 = b * c.Hq + j * g;
      cursor.assign(a.sel_indptr + r0, a.sel_indptr + r0 + g);
      L.ubase = int64_t(c.upage.size());
      int64_t u = 0;
      for (;;) {
        int32_t p = std::numeric_limits<int32_t>::max();
        for (int h = 0; h < g; ++h)
          if (cursor[h] < a.sel_indptr[r0 + h + 1]) p = std::min(p, a.sel_pages[cursor[h]]);
        if (p == std::numeric_limits<int32_t>::max()) break;
        c.upage.push_back(p);
        c.ustart.push_back(u);
        for (int h = 0; h < g; ++h) {
          const bool hit = cursor[h] < a.sel_indptr[r0 + h + 1] && a.sel_pages[cursor[h]] == p;
          c.umask.push_back(hit ? 1 : 0);
          cursor[h] += hit;
        }
        u += std::min<int64_t>(P, L.len - int64_t(p) * P);
      }
      L.nu = int64_t(c.upage.size()) - L.ubase;
      L.ulen = u;
    }
    total += L.ulen;
  }
  // Splits: about kItemsPerThread items per thread over the whole batch, none shorter than
  // kMinSplit, lengths a multiple of the block.
  const int threads = pool_threads();
  int64_t target = std::max<int64_t>(kMinSplit, (total + threads * kItemsPerThread - 1) / (threads * kItemsPerThread));
  target = (target + kT - 1) / kT * kT;
  int64_t loff = 0;
  int64_t foff = 0, nblk = 0;
  for (int64_t l = 0; l < nl; ++l) {
    ListInfo& L = c.lists[l];
    L.foff = foff;
    foff += L.len;
    L.item0 = int64_t(c.items.size());
    if (L.ulen > 0) {
      const int64_t ns = (L.ulen + target - 1) / target;
      for (int64_t i = 0; i < ns; ++i) {
        const int64_t u0 = L.ulen * i / ns, u1 = L.ulen * (i + 1) / ns;
        c.items.push_back({l, u0, u1, nblk});
        nblk += (u1 - u0 + kT - 1) / kT;
      }
      L.nitems = int32_t(ns);
    }
    if (a.score_pool) {
      L.loff = loff;
      loff += int64_t(g) * L.ulen;
    }
  }
  c.part_stride = int64_t(g) * (D + 2);
  c.part.resize(c.items.size() * c.part_stride);
  if (a.score_pool) {
    c.logits.resize(loff);
    c.bmax.resize(nblk * g);
  }
}

// The logits scratch of a long context is megabytes (g floats per slot);
// fresh each call it would cost page faults every decode step, so it is kept
// per calling thread, and dropped after a call that needed more than kKeep.
struct Scratch {
  std::vector<float> logits, part, bmax;
  static constexpr size_t kKeep = size_t(16) << 20;  // floats
  void trim() {
    if (logits.capacity() > kKeep) std::vector<float>().swap(logits);
    if (part.capacity() > kKeep) std::vector<float>().swap(part);
    if (bmax.capacity() > kKeep) std::vector<float>().swap(bmax);
  }
};

}  // namespace

// The argument checks of cpu_decode_attention (host pointers; nothing is
// written): also run by the CUDA path's bindings before uploading the index arrays.
Status validate_decode_attention(const DecodeAttnArgs& a) {
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0 || a.num_pages < 0) return Status::Shape;
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  // The pools and page ids may be null only when they would be empty (an empty
  // std::vector's data()).
  if (!a.q || !a.o || !a.page_indptr || !a.kv_len) return Status::Shape;
  if ((!a.k_pool || !a.v_pool) && a.num_pages > 0) return Status::Shape;
  if (a.score_pool && a.reduce != Reduce::Mean && a.reduce != Reduce::Sum && a.reduce != Reduce::Max)
    return Status::Shape;
  const bool pool_ok = a.score_pool || a.num_pages == 0;  // an empty pool's scores may be null too
  if ((a.score_before || a.score_after) && !pool_ok) return Status::Shape;
  if (bool(a.evict_pos) != bool(a.evict_slot) || bool(a.evict_max_pos) != bool(a.evict_slot) || (a.evict_slot && !pool_ok))
    return Status::Shape;
  const int64_t nl = int64_t(a.batch) * a.num_kv_heads;
  const int g = a.num_q_heads / a.num_kv_heads;
  const int64_t P = a.page_size;
  if (a.page_indptr[0] < 0) return Status::Shape;
  for (int64_t l = 0; l < nl; ++l)
    if (a.page_indptr[l + 1] < a.page_indptr[l]) return Status::Shape;
  if (!a.page_ids && a.page_indptr[nl] > a.page_indptr[0]) return Status::Shape;
  for (int64_t i = a.page_indptr[0]; i < a.page_indptr[nl]; ++i)
    if (a.page_ids[i] < 0 || a.page_ids[i] >= a.num_pages) return Status::Range;
  for (int64_t l = 0; l < nl; ++l) {
    const int64_t cap = int64_t(a.page_indptr[l + 1] - a.page_indptr[l]) * P;
    if (a.kv_len[l] < 0 || a.kv_len[l] > cap) return Status::Range;  // a length out of its list: an index error, as in quest_bounds
  }
  if (a.sel_indptr) {
    const int64_t nq = int64_t(a.batch) * a.num_q_heads;
    if (a.sel_indptr[0] < 0) return Status::Shape;
    for (int64_t r = 0; r < nq; ++r)
      if (a.sel_indptr[r + 1] < a.sel_indptr[r]) return Status::Shape;
    if (!a.sel_pages && a.sel_indptr[nq] > a.sel_indptr[0]) return Status::Shape;
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t b = r / a.num_q_heads, h = r % a.num_q_heads;
      const int64_t len = a.kv_len[b * a.num_kv_heads + h / g];
      const int64_t np = (len + P - 1) / P;
      int64_t prev = -1;
      for (int64_t i = a.sel_indptr[r]; i < a.sel_indptr[r + 1]; ++i) {
        const int64_t p = a.sel_pages[i];
        if (p < 0 || p >= np || p <= prev) return Status::Range;
        prev = p;
      }
    }
  }
  return Status::Ok;
}

Status cpu_decode_attention(const DecodeAttnArgs& a) {
  const Status st = validate_decode_attention(a);
  if (st != Status::Ok) return st;
  static thread_local Scratch scratch;
  struct Trim {
    Scratch& s;
    ~Trim() { s.trim(); }
  } trim{scratch};
  Ctx c(scratch.logits, scratch.part, scratch.bmax);
  c.a = &a;
  c.g = a.num_q_heads / a.num_kv_heads;
  c.D = a.head_dim;
  c.P = a.page_size;
  c.Hq = a.num_q_heads;
  c.Hkv = a.num_kv_heads;
  c.kv_es = dtype_size(a.kv_dtype);
  c.q_es = dtype_size(a.q_dtype);
  c.row_bytes = int64_t(c.D) * int64_t(c.kv_es);
  c.subset = a.sel_indptr != nullptr;
  c.pf_dist = std::max<int64_t>(4, kPfBytes / c.row_bytes);
  c.pf_tlb = std::max<int64_t>(c.pf_dist, kTouchBytes / c.row_bytes);
  c.k = pick_kern(a.kv_dtype, c.g);
  std::unique_ptr<std::atomic<int32_t>[]> left;  // per list: splits not yet done
  std::vector<Workspace> wss;  // per pool thread, allocated here so OOM surfaces before any write
  try {
    plan(c);
    left.reset(new std::atomic<int32_t>[c.lists.size()]);
    wss.resize(pool_threads());
    for (auto& w : wss) w.init(c.g, c.D);
  } catch (const std::bad_alloc&) {
    return Status::OOM;
  }

  const int64_t nl = int64_t(c.lists.size());
  const int64_t ni = int64_t(c.items.size());
  // Lists with nothing to attend: zeros and -inf.
  {
    float* zero = wss[0].ws.data();
    std::fill(zero, zero + c.D, 0.f);
    for (int64_t l = 0; l < nl; ++l) {
      if (c.lists[l].nitems) continue;
      // No item will score this list: its before/after records are the pool as it is.
      if (a.score_before) copy_list_scores(c, l, a.score_before);
      if (a.score_after) copy_list_scores(c, l, a.score_after);
      if (a.evict_slot) evict_list(c, l);
      const int64_t b = l / c.Hkv, j = l % c.Hkv;
      for (int h = 0; h < c.g; ++h) {
        const int64_t qrow = b * c.Hq + j * c.g + h;
        store_out(c, qrow, zero);
        if (a.lse) a.lse[qrow] = kNegInf;
      }
    }
  }
  if (ni == 0) return Status::Ok;

  // Longest items first: dynamic hand-out then balances ragged batches.
  std::vector<int64_t> order(ni);
  for (int64_t i = 0; i < ni; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return c.items[x].u1 - c.items[x].u0 > c.items[y].u1 - c.items[y].u0;
  });

  const int threads = int(std::min<int64_t>(pool_threads(), ni));
  std::atomic<int64_t> next{0};
  // The thread that finishes the last split of a list merges it (acq_rel on
  // the counter publishes the other splits' partials) and, in score mode,
  // adds the list's probabilities (they need the list's final lse): the call
  // is one pool dispatch either way. (A second dispatch for the score pass
  // cost ~20-60 us per call on the 2-core target, a fifth of a 2K-token step.)
  for (int64_t l = 0; l < nl; ++l) left[l].store(c.lists[l].nitems, std::memory_order_relaxed);
  parallel_for(threads, [&](int64_t, int64_t, int tid) {
    Workspace& w = wss[tid];
    for (int64_t i; (i = next.fetch_add(1)) < ni;) {
      const int64_t idx = order[i];
      run_item(c, idx, w);
      const int64_t l = c.items[idx].list;
      if (c.lists[l].nitems == 1 || left[l].fetch_sub(1, std::memory_order_acq_rel) == 1) {
        finish_list(c, l, w);
        if (a.score_pool) score_list(c, l, w);
      }
    }
  });
  return Status::Ok;
}

}  // namespace kvsq
