// Window scores (methods.md "Window scores", "H2O"; layout in core/ops.h
// WindowScoresArgs).
//
// Formula. For KV head j, query head h = j*g + hh (g = Hq / Hkv), window row
// i in [0, w) at position p = L - w + i (q row q_rows - w + i of head h):
//   z_i[t] = scale * dot(q_i, k_j[t])            t <= p (masked for t > p)
//   P_i[t] = exp(z_i[t] - M_i) / S_i,  M_i = max_t z_i[t],  S_i = sum_t exp(z_i[t] - M_i)
//   A_h[t] = sum_i P_i[t]
//   out[j, t] = mean / sum / max over hh of A_h[t]        (f32 [Hkv, L])
// w = L is H2O's full causal column sum.
//
// Layout and memory. Per KV head the g*w query rows are cut into row tiles of
// g heads x rt window rows (R = g*rt <= 128 rows unless g > 128), so a tile's
// causal extent is Lr = L - w + i0 + rt. For a tile the kernel keeps
//   E [R, Lr] f32: per-row exponentials exp(z - m_b) with m_b the row's max in
//                  key block b (blocks of Lb <= 256 keys), plus m_b and the
//                  block sum s_b per row and block,
// i.e. O(L) per row of a bounded tile, never [Hq, w, L]. Two passes, both
// parallel over key blocks of the tile (both cores work on one KV head; for
// short prompts with enough KV heads the heads are split over the threads
// instead, each with its own scratch set, see cpu_window_scores):
//   1. for each block: pack 16 keys at a time into a transposed f32 panel
//      [D][16] (converting f16/bf16 once; the panel then serves all R rows:
//      GQA reuse), a 6x16 register-blocked FMA micro-kernel writes scale*dot
//      into E, then per row: block max, exp, block sum (the block is still in
//      L2);
//   2. per row M = max_b m_b, S = sum_b s_b exp(m_b - M) (R * nb terms: each
//      thread recomputes them instead of waiting on one more barrier), and
//      for every block c_b = exp(m_b - M) / S; the column sums
//      A_h[t] += sum_i c_b * E_i[t] go into a per-head accumulator (only Max
//      needs one per head; Mean and Sum share one). After the last tile:
//      group reduce into out[j].
// Splitting the softmax into per-block maxima is what lets phase 1 run over
// key blocks in any order and on any thread without a running rescale. The
// window path (w = 32, L = 32K, g = 4: one tile of 128 rows) reads K once.
// For w = L the tiles walk down the causal triangle; each reads K[0, Lr) once
// and the total work is ~Hq * L^2 * D flops.
//
// Arithmetic (all f32, whatever the storage dtype; f16/bf16 -> f32 is exact):
// the dot is a sequential FMA chain over d; scale is applied to the f32 dot.
// exp: the SIMD path uses Cody-Waite range reduction x = n ln2 + r (|r| <=
// ln2/2) and a degree-7 Taylor polynomial for e^r (truncation < 6e-9), so the
// result is within ~3e-7 relative of e^x; results below e^-87.3 (near the
// smallest normal f32) are flushed to 0. The portable path uses std::exp.
// Tolerance against an exact (double) softmax of the same rounded inputs: each
// P_i[t] has relative error <= 2 dz_i + 4e-5, where
//   dz_i = |scale| D 2^-24 max_t sum_d |q_d k_d| + 2^-24 max_t |z_i[t]|
// bounds the f32 logit error (FMA-chain dot, then the rounding of scale*dot;
// it enters once through z and once through log S), and 4e-5 covers exp, the
// blocked sums (<= 256 + #blocks terms), the phase-2 row sum (<= 128 terms)
// and the mean division. All terms of A_h[t] are positive, so
// |A - A_ref| <= sum_i P_i[t] (2 dz_i + 4e-5); mean/sum/max keep that bound.
// test/native/test_window_scores.cc checks exactly this bound.
//
// Scratch memory: E is 4 R bytes per key (512 B at R = 128: 16 MiB for
// L = 32K), plus O(R * L / 16) block statistics and g (Max) or 1 f32
// accumulator rows of length L; the head-parallel split (short prompts only,
// E <= 512 KiB) holds one such set per thread.
//
// Run-time dispatch: AVX2+FMA+F16C (cpu_features().simd()) for the packing,
// micro-kernel, exp and column sums; otherwise portable code (GCC/Clang
// generic 4-lane vectors in the micro-kernel, i.e. SSE2 on baseline x86-64,
// plain loops elsewhere, std::exp).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVSQ_WS_X86 1
#endif

namespace kvsq {

namespace {

constexpr int kNR = 16;         // keys per packed panel (two 8-lane vectors)
constexpr int kMR = 6;          // query rows per micro-kernel call (12 accumulators)
constexpr int kTileRows = 128;  // rows of a tile (g * rt); bounds E at 512 bytes per key
constexpr int kMaxBlock = 256;  // keys per block (E block of 128 rows = 128 KiB, stays in L2)
constexpr int64_t kHeadParallelBytes = int64_t(512) << 10;  // E per thread for the head-parallel split

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using FBuf = std::unique_ptr<float[], FreeDeleter>;

FBuf alloc_floats(int64_t n) {
  if (n > (int64_t(1) << 40)) return nullptr;  // absurd sizes: report OOM, never wrap the byte count
  const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  return FBuf(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline float load_elem(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

// Everything the phases need, fixed per call.
struct Ctx {
  const WindowScoresArgs* a;
  int g, D, L, w;
  int64_t ldE;       // row stride of E and of the accumulators (multiple of 16)
  int64_t nb_max;    // blocks per row in the stats arrays
  float* E;          // [kTileRows or g, ldE]
  float* bmax;       // [rows, nb_max] block maxima m_b
  float* bsum;       // [rows, nb_max] block sums s_b
  float* rowstats;   // [threads, 3 * rows]: per thread M, S and one block's coefficients
  int rows_max;      // rows of the largest tile
  int threads;       // pool threads meant to split one head
  float* qt;         // [rows, D] the tile's query rows in f32
  float* panels;     // [threads, D * kNR]
  float* acc;        // [nacc, ldE]
  bool simd;
};

// Per-tile geometry.
struct Tile {
  int j;        // KV head
  int i0, rt;   // window rows [i0, i0 + rt)
  int R;        // g * rt
  int64_t Lr;   // causal extent: keys [0, Lr)
  int64_t Lb;   // keys per block (multiple of kNR)
  int64_t nb;   // blocks
};

// ---------------------------------------------------------------- portable path

// panel[d * kNR + c] = k[t0 + c][d] for c < nk, 0 for c >= nk.
void pack_portable(const Ctx& c, const void* kbase, int64_t t0, int nk, float* panel) {
  const int D = c.D;
  for (int kk = 0; kk < kNR; ++kk) {
    if (kk < nk) {
      const int64_t row = (t0 + kk) * D;
      for (int d = 0; d < D; ++d) panel[d * kNR + kk] = load_elem(c.a->dtype, kbase, row + d);
    } else {
      for (int d = 0; d < D; ++d) panel[d * kNR + kk] = 0.f;
    }
  }
}

// e[r * lde + kk] = scale * sum_d q[r * D + d] * panel[d * kNR + kk], r < MR.
// Written with GCC/Clang 4-lane vector types (plain SSE2 on baseline x86-64,
// scalar code elsewhere): left to itself the auto-vectoriser shuffled the
// 16-key accumulators around and ran ~3x slower. Two rows x 16 keys = 8
// accumulators fit the 16 SSE registers.
typedef float v4f __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, v4f v) { std::memcpy(p, &v, sizeof v); }

template <int MR>
void micro_portable_t(const float* q, int D, const float* panel, float scale, float* e, int64_t lde) {
  v4f acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = v4f{0.f, 0.f, 0.f, 0.f};
  for (int d = 0; d < D; ++d) {
    const float* b = panel + d * kNR;
    const v4f b0 = load4(b), b1 = load4(b + 4), b2 = load4(b + 8), b3 = load4(b + 12);
    for (int r = 0; r < MR; ++r) {
      const float av = q[r * D + d];
      const v4f a4 = v4f{av, av, av, av};
      acc[r][0] += a4 * b0;
      acc[r][1] += a4 * b1;
      acc[r][2] += a4 * b2;
      acc[r][3] += a4 * b3;
    }
  }
  const v4f s4 = v4f{scale, scale, scale, scale};
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) store4(e + r * lde + 4 * v, s4 * acc[r][v]);
}

void micro_portable(const float* q, int mr, int D, const float* panel, float scale, float* e, int64_t lde) {
  int r = 0;
  for (; r + 2 <= mr; r += 2) micro_portable_t<2>(q + r * D, D, panel, scale, e + r * lde, lde);
  if (r < mr) micro_portable_t<1>(q + r * D, D, panel, scale, e + r * lde, lde);
}

// x[0, nv) -> exp(x - m) with m = max x[0, nv); x[nv, npad) -> 0.
void rowexp_portable(float* x, int64_t nv, int64_t npad, float* m_out, float* s_out) {
  if (nv <= 0) {
    for (int64_t i = 0; i < npad; ++i) x[i] = 0.f;
    *m_out = -std::numeric_limits<float>::infinity();
    *s_out = 0.f;
    return;
  }
  float m = x[0];
  for (int64_t i = 1; i < nv; ++i) m = std::max(m, x[i]);
  float s = 0.f;
  for (int64_t i = 0; i < nv; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  for (int64_t i = nv; i < npad; ++i) x[i] = 0.f;
  *m_out = m;
  *s_out = s;
}

// acc[t] += sum_r coef[r] * E[r * lde + t] for t in [0, n).
void colsum_portable(float* acc, const float* E, int64_t lde, const float* coef, int64_t coef_stride, int nrows,
                     int64_t n) {
  for (int r = 0; r < nrows; ++r) {
    const float cf = coef[r * coef_stride];
    if (cf == 0.f) continue;  // block fully masked (or underflowed) for this row
    const float* e = E + r * lde;
    for (int64_t t = 0; t < n; ++t) acc[t] += cf * e[t];
  }
}

// ---------------------------------------------------------------- AVX2 / FMA / F16C path
#ifdef KVSQ_WS_X86

template <int KT>  // 0 f32, 1 f16, 2 bf16
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const void* base, int64_t i) {
  if constexpr (KT == 0) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (KT == 1) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  } else {
    const __m256i v = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
}

// In-register 8x8 transpose: r[i][c] -> r[c][i].
__attribute__((target("avx2"))) inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Full panels (16 keys) with 8x8 transposes; the D % 8 tail and partial
// panels (last keys of a block) take the scalar route.
template <int KT>
__attribute__((target("avx2,fma,f16c"))) void pack_simd(const Ctx& c, const void* kbase, int64_t t0, int nk,
                                                        float* panel) {
  const int D = c.D;
  if (nk < kNR) {
    pack_portable(c, kbase, t0, nk, panel);
    return;
  }
  const int d8 = D / 8 * 8;
  for (int kg = 0; kg < kNR; kg += 8) {
    for (int d0 = 0; d0 < d8; d0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = load8<KT>(kbase, (t0 + kg + i) * D + d0);
      transpose8(r);
      for (int i = 0; i < 8; ++i) _mm256_store_ps(panel + (d0 + i) * kNR + kg, r[i]);
    }
  }
  for (int d = d8; d < D; ++d)
    for (int kk = 0; kk < kNR; ++kk) panel[d * kNR + kk] = load_elem(c.a->dtype, kbase, (t0 + kk) * D + d);
}

// 12 accumulators (MR rows x 2 vectors of 8 keys): per d, two panel loads and
// MR broadcasts feed 2*MR FMAs, so the loop is FMA-bound, not load-bound.
// Named variables, not an array: GCC keeps an array of __m256 on the stack and
// would store all 12 accumulators every iteration.
#define KVSQ_WS_ROW(r)                                          \
  if constexpr (MR > r) {                                       \
    const __m256 av = _mm256_broadcast_ss(q + r * D + d);       \
    c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                 \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                 \
  }
#define KVSQ_WS_STORE(r)                                        \
  if constexpr (MR > r) {                                       \
    _mm256_storeu_ps(e + r * lde, _mm256_mul_ps(c##r##0, s));     \
    _mm256_storeu_ps(e + r * lde + 8, _mm256_mul_ps(c##r##1, s)); \
  }
template <int MR>
__attribute__((target("avx2,fma"))) void micro_simd(const float* q, int D, const float* panel, float scale, float* e,
                                                    int64_t lde) {
  const __m256 z = _mm256_setzero_ps();
  __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z;
  __m256 c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
  for (int d = 0; d < D; ++d) {
    const __m256 b0 = _mm256_load_ps(panel + d * kNR);
    const __m256 b1 = _mm256_load_ps(panel + d * kNR + 8);
    KVSQ_WS_ROW(0)
    KVSQ_WS_ROW(1)
    KVSQ_WS_ROW(2)
    KVSQ_WS_ROW(3)
    KVSQ_WS_ROW(4)
    KVSQ_WS_ROW(5)
  }
  const __m256 s = _mm256_set1_ps(scale);
  KVSQ_WS_STORE(0)
  KVSQ_WS_STORE(1)
  KVSQ_WS_STORE(2)
  KVSQ_WS_STORE(3)
  KVSQ_WS_STORE(4)
  KVSQ_WS_STORE(5)
}
#undef KVSQ_WS_ROW
#undef KVSQ_WS_STORE

// e^x for x <= 0 (x = z - rowmax). Cody-Waite reduction with ln2 split into a
// 9-bit head (n * head exact for |n| < 2^15) and a tail; Taylor degree 7 for
// e^r on |r| <= ln2/2; 2^n assembled in the exponent field. x < -87.3 (and
// -inf) give 0, keeping 2^n normal. NaN stays NaN, as std::exp on the
// portable path: a NaN logit must reach the scores (and top-k's KVSQ_NAN) on
// every machine alike.
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_NLT_UQ);  // true for NaN (unordered)
  x = _mm256_max_ps(lo, x);                                // max returns its 2nd operand for NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

__attribute__((target("avx2"))) inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
__attribute__((target("avx2"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) void rowexp_simd(float* x, int64_t nv, int64_t npad, float* m_out,
                                                     float* s_out) {
  if (nv <= 0) {
    for (int64_t i = 0; i < npad; ++i) x[i] = 0.f;
    *m_out = -std::numeric_limits<float>::infinity();
    *s_out = 0.f;
    return;
  }
  const int64_t n8 = nv / 8 * 8;
  __m256 vm = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vnan = _mm256_setzero_ps();  // max drops NaN: track it apart
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    vm = _mm256_max_ps(vm, v);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float m = hmax8(vm);
  bool nan = _mm256_movemask_ps(vnan) != 0;
  for (int64_t i = n8; i < nv; ++i) {
    m = std::max(m, x[i]);
    nan |= std::isnan(x[i]);
  }
  if (nan) m = std::numeric_limits<float>::quiet_NaN();  // the whole row is NaN, as on the portable path
  const __m256 vmx = _mm256_set1_ps(m);
  __m256 vs = _mm256_setzero_ps();
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
    _mm256_storeu_ps(x + i, e);
    vs = _mm256_add_ps(vs, e);
  }
  if (n8 < nv) {  // tail through the same vector exp (lanes past nv are -inf -> 0)
    alignas(32) float tmp[8];
    for (int i = 0; i < 8; ++i)
      tmp[i] = n8 + i < nv ? x[n8 + i] : -std::numeric_limits<float>::infinity();
    const __m256 e = exp8(_mm256_sub_ps(_mm256_load_ps(tmp), vmx));
    _mm256_store_ps(tmp, e);
    vs = _mm256_add_ps(vs, e);
    for (int64_t i = n8; i < nv; ++i) x[i] = tmp[i - n8];
  }
  for (int64_t i = nv; i < npad; ++i) x[i] = 0.f;
  *m_out = m;
  *s_out = hsum8(vs);
}

// n is a multiple of 16 (blocks are padded); 32 columns per pass keep 4
// accumulators in registers while the rows stream through.
__attribute__((target("avx2,fma"))) void colsum_simd(float* acc, const float* E, int64_t lde, const float* coef,
                                                     int64_t coef_stride, int nrows, int64_t n) {
  int64_t t = 0;
  for (; t + 32 <= n; t += 32) {
    __m256 a0 = _mm256_loadu_ps(acc + t), a1 = _mm256_loadu_ps(acc + t + 8);
    __m256 a2 = _mm256_loadu_ps(acc + t + 16), a3 = _mm256_loadu_ps(acc + t + 24);
    for (int r = 0; r < nrows; ++r) {
      const float cf = coef[r * coef_stride];
      if (cf == 0.f) continue;
      const __m256 vc = _mm256_set1_ps(cf);
      const float* e = E + r * lde + t;
      a0 = _mm256_fmadd_ps(vc, _mm256_loadu_ps(e), a0);
      a1 = _mm256_fmadd_ps(vc, _mm256_loadu_ps(e + 8), a1);
      a2 = _mm256_fmadd_ps(vc, _mm256_loadu_ps(e + 16), a2);
      a3 = _mm256_fmadd_ps(vc, _mm256_loadu_ps(e + 24), a3);
    }
    _mm256_storeu_ps(acc + t, a0);
    _mm256_storeu_ps(acc + t + 8, a1);
    _mm256_storeu_ps(acc + t + 16, a2);
    _mm256_storeu_ps(acc + t + 24, a3);
  }
  for (; t < n; t += 8) {
    __m256 a0 = _mm256_loadu_ps(acc + t);
    for (int r = 0; r < nrows; ++r) {
      const float cf = coef[r * coef_stride];
      if (cf == 0.f) continue;
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(cf), _mm256_loadu_ps(E + r * lde + t), a0);
    }
    _mm256_storeu_ps(acc + t, a0);
  }
}

#endif  // KVSQ_WS_X86

// ---------------------------------------------------------------- driver

// Phase 1 for block b of a tile: logits into E, then per-row block max / exp / sum.
void phase1_block(const Ctx& c, const Tile& T, int64_t b, float* panel) {
  const WindowScoresArgs& a = *c.a;
  const int D = c.D;
  const int64_t t0 = b * T.Lb, t1 = std::min(T.Lr, t0 + T.Lb);
  const int64_t t1p = round_up(t1, kNR);
  const void* kbase =
      static_cast<const char*>(a.k) + size_t(T.j) * size_t(c.L) * size_t(D) * dtype_size(a.dtype);
  for (int64_t p = t0; p < t1; p += kNR) {
    const int nk = int(std::min<int64_t>(kNR, t1 - p));
#ifdef KVSQ_WS_X86
    if (c.simd) {
      if (a.dtype == DType::F16) pack_simd<1>(c, kbase, p, nk, panel);
      else if (a.dtype == DType::BF16) pack_simd<2>(c, kbase, p, nk, panel);
      else pack_simd<0>(c, kbase, p, nk, panel);
      int r = 0;
      for (; r + kMR <= T.R; r += kMR) micro_simd<kMR>(c.qt + r * D, D, panel, a.scale, c.E + r * c.ldE + p, c.ldE);
      const float* q = c.qt + r * D;
      float* e = c.E + r * c.ldE + p;
      switch (T.R - r) {
        case 5: micro_simd<5>(q, D, panel, a.scale, e, c.ldE); break;
        case 4: micro_simd<4>(q, D, panel, a.scale, e, c.ldE); break;
        case 3: micro_simd<3>(q, D, panel, a.scale, e, c.ldE); break;
        case 2: micro_simd<2>(q, D, panel, a.scale, e, c.ldE); break;
        case 1: micro_simd<1>(q, D, panel, a.scale, e, c.ldE); break;
        default: break;
      }
      continue;
    }
#endif
    pack_portable(c, kbase, p, nk, panel);
    for (int r = 0; r < T.R; r += kMR)
      micro_portable(c.qt + r * D, std::min(kMR, T.R - r), D, panel, a.scale, c.E + r * c.ldE + p, c.ldE);
  }
  // Causal mask: row (hh, ii) sits at position L - w + i0 + ii and sees t <= it.
  for (int r = 0; r < T.R; ++r) {
    const int64_t pos = int64_t(c.L) - c.w + T.i0 + r % T.rt;
    const int64_t nv = std::clamp<int64_t>(pos + 1 - t0, 0, t1 - t0);
    float* x = c.E + r * c.ldE + t0;
    float* mo = c.bmax + r * c.nb_max + b;
    float* so = c.bsum + r * c.nb_max + b;
#ifdef KVSQ_WS_X86
    if (c.simd) {
      rowexp_simd(x, nv, t1p - t0, mo, so);
      continue;
    }
#endif
    rowexp_portable(x, nv, t1p - t0, mo, so);
  }
}

// Row statistics M = max_b m_b and S = sum_b s_b exp(m_b - M) over the tile's blocks.
void row_stats(const Ctx& c, const Tile& T, float* M, float* S) {
  for (int r = 0; r < T.R; ++r) {
    const float* m = c.bmax + r * c.nb_max;
    const float* s = c.bsum + r * c.nb_max;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t b = 0; b < T.nb; ++b) mx = std::max(mx, m[b]);
    float sum = 0.f;
    for (int64_t b = 0; b < T.nb; ++b)
      if (s[b] != 0.f) sum += s[b] * std::exp(m[b] - mx);
    // Every row sees key 0, so mx is finite and sum >= 1 (its max term is e^0).
    M[r] = mx;
    S[r] = sum;
  }
}

// Phase 2 for block b: coefficients c_b = exp(m_b - M) / S per row, then the
// column sums of each head's rows into its accumulator.
void phase2_block(const Ctx& c, const Tile& T, int64_t b, const float* M, const float* S, float* coef) {
  for (int r = 0; r < T.R; ++r) {
    const float sb = c.bsum[r * c.nb_max + b];
    coef[r] = sb != 0.f ? std::exp(c.bmax[r * c.nb_max + b] - M[r]) / S[r] : 0.f;
  }
  const int64_t t0 = b * T.Lb, t1p = round_up(std::min(T.Lr, t0 + T.Lb), kNR);
  const bool per_head = c.a->reduce == Reduce::Max && c.g > 1;
  for (int hh = 0; hh < c.g; ++hh) {
    float* acc = c.acc + (per_head ? hh : 0) * c.ldE + t0;
    const int r0 = hh * T.rt;
    const float* E = c.E + r0 * c.ldE + t0;
#ifdef KVSQ_WS_X86
    if (c.simd) {
      colsum_simd(acc, E, c.ldE, coef + r0, 1, T.rt, t1p - t0);
      continue;
    }
#endif
    colsum_portable(acc, E, c.ldE, coef + r0, 1, T.rt, t1p - t0);
  }
}

// One set of scratch buffers. `threads` = how many pool threads are meant to
// split one head (sets the block size); the per-thread panels and row
// statistics are sized for the whole pool regardless, so a context is safe
// whichever way parallel_for ends up running.
struct Scratch {
  FBuf E, bmax, bsum, qt, panels, acc, rowstats;
};

bool make_ctx(const WindowScoresArgs& a, int threads, Ctx& c, Scratch& s) {
  const int g = a.num_q_heads / a.num_kv_heads;
  c.a = &a;
  c.g = g;
  c.D = a.head_dim;
  c.L = a.seq_len;
  c.w = a.window;
  c.ldE = round_up(c.L, kNR);
  c.nb_max = c.ldE / kNR;  // blocks are at least kNR keys
  c.rows_max = g * std::max(1, std::min(c.w, kTileRows / g));
  c.threads = threads;
  const int nacc = a.reduce == Reduce::Max && g > 1 ? g : 1;
  s.E = alloc_floats(int64_t(c.rows_max) * c.ldE);
  s.bmax = alloc_floats(int64_t(c.rows_max) * c.nb_max);
  s.bsum = alloc_floats(int64_t(c.rows_max) * c.nb_max);
  s.qt = alloc_floats(int64_t(c.rows_max) * c.D);
  const int pool = std::max(1, pool_threads());
  s.panels = alloc_floats(int64_t(pool) * c.D * kNR);
  s.acc = alloc_floats(int64_t(nacc) * c.ldE);
  s.rowstats = alloc_floats(int64_t(pool) * 3 * c.rows_max);
  if (!s.E || !s.bmax || !s.bsum || !s.qt || !s.panels || !s.acc || !s.rowstats) return false;
  c.E = s.E.get();
  c.bmax = s.bmax.get();
  c.bsum = s.bsum.get();
  c.qt = s.qt.get();
  c.panels = s.panels.get();
  c.acc = s.acc.get();
  c.rowstats = s.rowstats.get();
#ifdef KVSQ_WS_X86
  c.simd = cpu_features().simd();
#else
  c.simd = false;
#endif
  return true;
}

// All tiles of KV head j, then the group reduce into out[j]. The parallel_for
// calls inside split key blocks over c.threads threads, or run inline when
// this is itself a job of the head-parallel split.
void process_head(const Ctx& c, int j) {
  const WindowScoresArgs& a = *c.a;
  const int g = c.g, D = c.D, L = c.L, w = c.w;
  const int rt_max = c.rows_max / g;
  const size_t esz = dtype_size(a.dtype);
  const bool per_head = a.reduce == Reduce::Max && g > 1;
  std::memset(c.acc, 0, size_t(per_head ? g : 1) * size_t(c.ldE) * sizeof(float));
  for (int i0 = 0; i0 < w; i0 += rt_max) {
    Tile T;
    T.j = j;
    T.i0 = i0;
    T.rt = std::min(rt_max, w - i0);
    T.R = g * T.rt;
    T.Lr = int64_t(L) - w + i0 + T.rt;
    // ~4 blocks per thread for balance, 16..256 keys each.
    T.Lb = std::clamp<int64_t>(round_up((T.Lr + 4 * c.threads - 1) / (4 * c.threads), kNR), kNR, kMaxBlock);
    T.nb = (T.Lr + T.Lb - 1) / T.Lb;
    // The tile's query rows, row r = hh * rt + ii, in f32.
    for (int hh = 0; hh < g; ++hh) {
      const int64_t h = int64_t(j) * g + hh;
      const int64_t row0 = h * a.q_rows + (a.q_rows - w + i0);
      convert_to_f32(a.dtype, static_cast<const char*>(a.q) + size_t(row0) * D * esz, c.qt + int64_t(hh) * T.rt * D,
                     size_t(T.rt) * D);
    }
    parallel_for(T.nb, [&](int64_t b0, int64_t b1, int ti) {
      float* panel = c.panels + int64_t(ti) * D * kNR;
      for (int64_t b = b0; b < b1; ++b) phase1_block(c, T, b, panel);
    });
    // Each thread recomputes the (cheap: R * nb) row statistics itself
    // rather than waiting on a third barrier.
    parallel_for(T.nb, [&](int64_t b0, int64_t b1, int ti) {
      float* M = c.rowstats + int64_t(ti) * 3 * c.rows_max;
      float* S = M + c.rows_max;
      float* coef = S + c.rows_max;
      row_stats(c, T, M, S);
      for (int64_t b = b0; b < b1; ++b) phase2_block(c, T, b, M, S, coef);
    });
  }
  // Group reduce into out[j].
  float* out = a.out + int64_t(j) * L;
  if (per_head) {
    for (int64_t t = 0; t < L; ++t) {
      float m = c.acc[t];
      for (int hh = 1; hh < g; ++hh) m = std::max(m, c.acc[hh * c.ldE + t]);
      out[t] = m;
    }
  } else if (a.reduce == Reduce::Mean && g > 1) {
    const float fg = float(g);
    for (int64_t t = 0; t < L; ++t) out[t] = c.acc[t] / fg;
  } else {
    std::memcpy(out, c.acc, size_t(L) * sizeof(float));
  }
}

}  // namespace

Status cpu_window_scores(const WindowScoresArgs& a) {
  // ---- validation (nothing is written before it passes)
  if (a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.seq_len <= 0 || a.window <= 0 ||
      a.q_rows <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0) return Status::Shape;
  if (a.window > a.seq_len || a.window > a.q_rows) return Status::Shape;
  if (!a.q || !a.k || !a.out) return Status::Shape;
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.reduce != Reduce::Mean && a.reduce != Reduce::Sum && a.reduce != Reduce::Max) return Status::Range;

  const int nthreads = std::max(1, pool_threads());
  const int Hkv = a.num_kv_heads;
  const int g = a.num_q_heads / Hkv;
  const double e_bytes = double(g) * std::max(1, std::min(a.window, kTileRows / g)) * round_up(a.seq_len, kNR) * 4;
  // Heads in parallel (one scratch set per thread, no barriers inside a head)
  // when the heads split evenly and each thread's E is small (short prompts:
  // there the two barriers per tile cost more than the work; measured ~30%
  // faster at L <= 1K). Otherwise every head is split over key blocks (one
  // scratch set, E shared in L3), which was as fast or faster from L = 2K up.
  const bool head_parallel = nthreads > 1 && Hkv >= nthreads && (Hkv % nthreads == 0 || Hkv >= 4 * nthreads) &&
                             e_bytes <= double(kHeadParallelBytes);
  if (head_parallel) {
    std::unique_ptr<Ctx[]> ctx(new (std::nothrow) Ctx[nthreads]);
    std::unique_ptr<Scratch[]> scratch(new (std::nothrow) Scratch[nthreads]);
    if (!ctx || !scratch) return Status::OOM;
    for (int t = 0; t < nthreads; ++t)
      if (!make_ctx(a, 1, ctx[t], scratch[t])) return Status::OOM;
    parallel_for(Hkv, [&](int64_t j0, int64_t j1, int ti) {
      for (int64_t j = j0; j < j1; ++j) process_head(ctx[ti], int(j));
    });
    return Status::Ok;
  }
  Ctx c{};
  Scratch s;
  if (!make_ctx(a, nthreads, c, s)) return Status::OOM;
  for (int j = 0; j < Hkv; ++j) process_head(c, j);
  return Status::Ok;
}

}  // namespace kvsq
