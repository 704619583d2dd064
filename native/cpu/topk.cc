// Row-wise top-k selection (methods.md "Top-k selection"; contract: TopkArgs
// in ../core/ops.h).
//
// Formula. For each row r with n = len[r] (lengths null: row_stride) and
// kk = min(k[r], n): the selected set is the kk positions i in [0, n) that come
// first in the order (score desc, index asc) -- larger score wins, equal scores:
// the lower index wins. Scores compare as real numbers: -0.0 == +0.0, -Inf and
// +Inf are ordinary values, NaN anywhere in scores[r, 0 .. n) (for every row,
// whatever its k) is an input error (Status::NaN, nothing written).
//
// Layout. scores[r * row_stride + i]; out[r * out_stride + j], j < kk holds the
// selected indices in ascending order, j >= kk holds -1; count[r] = kk.
// Tolerance: exact (the result is a set of integers, equal to a stable sort's).
//
// Algorithm (a partial select, never a full sort):
//  * Order-preserving keys: a float's bits u map to an unsigned key with
//    key(a) < key(b) <=> a < b (negative: ~u; non-negative: u | 2^31; -0.0 is
//    first canonicalised to +0.0 so the two zeros tie).
//  * Candidates. For k << n most of the row cannot be in the answer. A
//    strided, jittered sample of the row (>= 512 values, ~8 expected above the
//    k-th largest, plus a 3-sigma + 4 margin) gives a float bound `lo`. One
//    streaming pass keeps the candidates x >= lo as (index, value) in index
//    order. AVX2: one compare per 8 floats (the unordered NLT compare also
//    lets NaN through, to be caught on the short list), then a table-driven
//    lane compaction, branch-free -- candidates are ~2k/n of the row, too
//    dense for a per-block branch to predict; when the expected density is
//    <= 1/128 (e.g. 1M rows, k 2048) a per-32 test skips empty blocks instead.
//    If at least k survive, the answer lies among them (everything dropped is
//    strictly smaller than every candidate); if fewer survive (an unlucky
//    sample, adversarial patterns) the row falls back to keys for the whole
//    row: same answer, one more read. For k > n/8 or n < 4096 there is no
//    sampling and the list is the whole row.
//  * Radix select on the list's keys: over the range in play [base, base +
//    span] (initially min..max of the keys), a histogram of the digit
//    (key - base) >> shift (<= 2048 buckets, about m/4) finds the bucket holding
//    the k-th largest; its keys are packed (SIMD compaction) and it becomes the
//    new range, until the bucket is taken whole or is a single key. Result: the
//    threshold key T and `need`, the number of keys equal to T to take.
//    Digits over the actual range rather than fixed bit fields spread a row's
//    candidates (a binade or two) over all buckets: two passes, usually.
//  * Emission: one scan in index order taking key > T, plus key == T up to the
//    position of the need-th such key -- exactly "ties: the lower index wins" --
//    and the result comes out in ascending index order (no sort at all).
//  * Cost: about one read of the row plus O(k) work; the sort-based reference
//    is O(n log n) per row.
//  * NaN: rows are computed into a scratch buffer; only when every row is
//    NaN-free is the scratch committed to out/count, so an error writes nothing.
//    Rows with k = 0 or k >= len are still scanned for NaN.
//  * Threads: rows >= pool threads -> rows split across the pool; otherwise
//    each row of >= 32K elements is split across the pool (per-part candidate
//    segments, packed in index order; the select on the short list is serial).
//  * SIMD: AVX2 paths chosen at run time (cpu_features().simd()); the portable
//    scalar path gives identical results.
//  * Scratch: per-thread buffers of ~20 bytes per element of the longest row
//    seen, kept between calls (no page faults per decode step).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"
#include "kernels.h"

namespace kvsq {

namespace {

constexpr int64_t kNeedAll = INT64_MAX;

inline uint32_t key_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (u == 0x80000000u) u = 0;  // -0.0 ties with +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Per-thread buffers, kept between calls (the pool's workers are persistent)
// so a decode step does not page-fault fresh memory each time.
struct Scratch {
  std::vector<uint32_t> key, tmp;
  std::vector<int32_t> idx, sel;
  std::vector<float> val, sample;
  void reserve(size_t n) {
    if (key.size() < n + 8) {  // + 8: the SIMD candidate pass stores 8 wide
      key.resize(n + 8);
      idx.resize(n + 8);
      tmp.resize(n + 8);
      val.resize(n + 8);
      sel.resize(n + 8);
    }
  }
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// ---------------------------------------------------------------- streaming passes

bool has_nan_scalar(const float* s, int64_t n) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= std::isnan(s[i]);
  return bad;
}

__attribute__((target("avx2"))) bool has_nan_avx2(const float* s, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 x0 = _mm256_loadu_ps(s + i), x1 = _mm256_loadu_ps(s + i + 8);
    acc0 = _mm256_or_ps(acc0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));
    acc1 = _mm256_or_ps(acc1, _mm256_cmp_ps(x1, x1, _CMP_UNORD_Q));
  }
  __m256 acc = _mm256_or_ps(acc0, acc1);
  if (_mm256_movemask_ps(acc)) return true;
  return has_nan_scalar(s + i, n - i);
}

// Keys of the whole range into key[0..n). Returns true if a NaN was seen.
bool all_keys_scalar(const float* s, int64_t n, uint32_t* key) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= std::isnan(s[i]);
    key[i] = key_of(s[i]);
  }
  return bad;
}

__attribute__((target("avx2"))) bool all_keys_avx2(const float* s, int64_t n, uint32_t* key) {
  const __m256i sign = _mm256_set1_epi32(int32_t(0x80000000u));
  __m256 bad = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(s + i);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    __m256i u = _mm256_castps_si256(x);
    u = _mm256_andnot_si256(_mm256_cmpeq_epi32(u, sign), u);                 // -0 -> +0
    __m256i flip = _mm256_or_si256(_mm256_srai_epi32(u, 31), sign);           // neg: ~0, pos: 2^31
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(key + i), _mm256_xor_si256(u, flip));
  }
  bool tail = all_keys_scalar(s + i, n - i, key + i);
  return tail || _mm256_movemask_ps(bad) != 0;
}

// Candidate pass: indices base + i of s[0..n) with !(x < lo) -- that is
// x >= lo, or NaN -- in index order, into ci (room for n + 8). Branch-free:
// the density of candidates (~2k/n) is too high for a branch per block to
// predict well, so every element costs the same few instructions.
int64_t candidates_scalar(const float* s, int64_t n, int32_t base, float lo, int32_t* ci, float* cv) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    ci[m] = int32_t(base + i);
    cv[m] = s[i];
    m += !(s[i] < lo);
  }
  return m;
}

// Lane-compaction table: row m lists the set lanes of the 8-bit mask m first.
struct CompressLut {
  alignas(32) int32_t lanes[256][8];
  CompressLut() {
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int l = 0; l < 8; ++l)
        if (m & (1 << l)) lanes[m][c++] = l;
      for (int l = c; l < 8; ++l) lanes[m][l] = 0;
    }
  }
};
const CompressLut g_lut;

// Per 8 lanes: one compare, the mask's row of the table plus the block's base
// index is the packed index vector; store 8 wide, advance by the popcount. A
// block's store ends at most at its own position + 8, so part-rows written at
// their own offsets never overlap.
// sparse: expected density low enough (~1/128 or less) that most 32-element
// blocks hold no candidate; then one test per block skips them, predictably.
__attribute__((target("avx2,popcnt"))) int64_t candidates_avx2(const float* s, int64_t n, int32_t base,
                                                               float lo, int32_t* ci, float* cv,
                                                               bool sparse) {
  const __m256 vlo = _mm256_set1_ps(lo);
  const __m256i eight = _mm256_set1_epi32(8);
  __m256i vbase = _mm256_set1_epi32(base);  // base + i, carried along
  int64_t i = 0, m = 0;
  auto put = [&](__m256 x) __attribute__((target("avx2,popcnt"))) {
    // NLT_UQ: true for x >= lo and for NaN
    const unsigned mk = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(x, vlo, _CMP_NLT_UQ)));
    const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(g_lut.lanes[mk]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ci + m), _mm256_add_epi32(l, vbase));
    _mm256_storeu_ps(cv + m, _mm256_permutevar8x32_ps(x, l));
    m += __builtin_popcount(mk);
    vbase = _mm256_add_epi32(vbase, eight);
  };
  if (sparse) {
    for (; i + 32 <= n; i += 32) {
      const __m256 x0 = _mm256_loadu_ps(s + i), x1 = _mm256_loadu_ps(s + i + 8);
      const __m256 x2 = _mm256_loadu_ps(s + i + 16), x3 = _mm256_loadu_ps(s + i + 24);
      const __m256 any = _mm256_or_ps(
          _mm256_or_ps(_mm256_cmp_ps(x0, vlo, _CMP_NLT_UQ), _mm256_cmp_ps(x1, vlo, _CMP_NLT_UQ)),
          _mm256_or_ps(_mm256_cmp_ps(x2, vlo, _CMP_NLT_UQ), _mm256_cmp_ps(x3, vlo, _CMP_NLT_UQ)));
      if (_mm256_testz_ps(any, any)) {
        vbase = _mm256_add_epi32(vbase, _mm256_set1_epi32(32));
        continue;
      }
      put(x0);
      put(x1);
      put(x2);
      put(x3);
    }
  }
  for (; i + 32 <= n; i += 32) {
    put(_mm256_loadu_ps(s + i));
    put(_mm256_loadu_ps(s + i + 8));
    put(_mm256_loadu_ps(s + i + 16));
    put(_mm256_loadu_ps(s + i + 24));
  }
  for (; i + 8 <= n; i += 8) put(_mm256_loadu_ps(s + i));
  return m + candidates_scalar(s + i, n - i, int32_t(base + i), lo, ci + m, cv + m);
}

inline bool has_nan(const float* s, int64_t n, bool simd) {
  return simd ? has_nan_avx2(s, n) : has_nan_scalar(s, n);
}
inline bool all_keys(const float* s, int64_t n, uint32_t* key, bool simd) {
  return simd ? all_keys_avx2(s, n, key) : all_keys_scalar(s, n, key);
}
inline int64_t candidates(const float* s, int64_t n, int32_t base, float lo, int32_t* ci, float* cv,
                          bool sparse, bool simd) {
  return simd ? candidates_avx2(s, n, base, lo, ci, cv, sparse) : candidates_scalar(s, n, base, lo, ci, cv);
}

// ---------------------------------------------------------------- select + emit

// Histogram of digit (x - base) >> shift (< nb) over keys[0..m), into hist
// (nb bins, zeroed here). Four interleaved counters: clustered keys hit the same
// bucket in a row, and one counter would serialise on store-to-load forwarding.
void histogram(const uint32_t* keys, int64_t m, uint32_t base, int shift, int nb, uint32_t* hist) {
  uint32_t h[4][2048];
  for (auto& row : h) std::memset(row, 0, sizeof(uint32_t) * nb);
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    ++h[0][(keys[i] - base) >> shift];
    ++h[1][(keys[i + 1] - base) >> shift];
    ++h[2][(keys[i + 2] - base) >> shift];
    ++h[3][(keys[i + 3] - base) >> shift];
  }
  for (; i < m; ++i) ++h[0][(keys[i] - base) >> shift];
  for (int b = 0; b < nb; ++b) hist[b] = h[0][b] + h[1][b] + h[2][b] + h[3][b];
}

// Keeps the keys x with (x - base) >> shift == want, packed into out (room for
// m + 8; out may equal keys). Returns the count.
int64_t compact_scalar(const uint32_t* keys, int64_t m, uint32_t base, int shift, uint32_t want,
                       uint32_t* out) {
  int64_t j = 0;
  for (int64_t i = 0; i < m; ++i) {
    const uint32_t x = keys[i];
    out[j] = x;
    j += ((x - base) >> shift) == want;
  }
  return j;
}

__attribute__((target("avx2,popcnt"))) int64_t compact_avx2(const uint32_t* keys, int64_t m, uint32_t base,
                                                            int shift, uint32_t want, uint32_t* out) {
  const __m128i cnt = _mm_cvtsi32_si128(shift);
  const __m256i w = _mm256_set1_epi32(int32_t(want)), vb = _mm256_set1_epi32(int32_t(base));
  int64_t i = 0, j = 0;
  // in place is safe: the 8-wide store at j <= i only reaches lanes already loaded
  for (; i + 8 <= m; i += 8) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
    const __m256i eq = _mm256_cmpeq_epi32(_mm256_srl_epi32(_mm256_sub_epi32(x, vb), cnt), w);
    const unsigned mk = unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(eq)));
    const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(g_lut.lanes[mk]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_permutevar8x32_epi32(x, l));
    j += __builtin_popcount(mk);
  }
  return j + compact_scalar(keys + i, m - i, base, shift, want, out + j);
}

void minmax_scalar(const uint32_t* keys, int64_t m, uint32_t* lo, uint32_t* hi) {
  uint32_t a = keys[0], b = keys[0];
  for (int64_t i = 1; i < m; ++i) {
    a = std::min(a, keys[i]);
    b = std::max(b, keys[i]);
  }
  *lo = a;
  *hi = b;
}
// the same loop; with AVX2 the compiler has unsigned vector min/max
__attribute__((target("avx2"))) void minmax_avx2(const uint32_t* keys, int64_t m, uint32_t* lo, uint32_t* hi) {
  uint32_t a = keys[0], b = keys[0];
  for (int64_t i = 1; i < m; ++i) {
    a = std::min(a, keys[i]);
    b = std::max(b, keys[i]);
  }
  *lo = a;
  *hi = b;
}

// For keys[0..m) and 1 <= k <= m: the key T of the k-th largest and `need`,
// such that {key > T} plus the first `need` of {key == T} (index order) are the
// k selected (kNeedAll: every key == T). tmp has room for m + 8 keys.
// Radix select on the key range: with [base, base + span] the range still in
// play, digit = (key - base) >> shift (shift such that the digit has at most
// `bits` bits). A histogram of the digit finds the bucket holding the k-th
// largest; its keys are packed, and the bucket becomes the new range, until
// the bucket is taken whole or is a single key. Digits over the actual range
// (min to max, not fixed bit fields) spread a row's candidates -- which span a
// binade or two -- over all buckets, so the second pass is usually tiny.
void radix_select(const uint32_t* keys, int64_t m, int64_t k, uint32_t* tmp, uint32_t* T,
                  int64_t* need, bool simd) {
  uint32_t base, top;
  if (simd) minmax_avx2(keys, m, &base, &top);
  else minmax_scalar(keys, m, &base, &top);
  uint32_t span = top - base;  // keys in play lie in [base, base + span]
  uint32_t hist[2048];
  const uint32_t* cur = keys;
  int64_t cm = m, krem = k;
  while (true) {
    if (span == 0) {  // one key value left: the first krem of it
      *T = base;
      *need = krem;
      return;
    }
    // digit bits: about cm / 4 buckets, 64 .. 2048
    int bits = 6;
    while (bits < 11 && (int64_t(4) << bits) < cm) ++bits;
    const int width = 32 - __builtin_clz(span);  // bits of span
    const int shift = std::max(0, width - bits);
    const int nb = int((span >> shift) + 1);
    histogram(cur, cm, base, shift, nb, hist);
    int b = nb - 1;
    int64_t above = 0;
    for (; b > 0; --b) {
      if (above + hist[b] >= krem) break;
      above += hist[b];
    }
    krem -= above;
    const uint32_t blo = base + (uint32_t(b) << shift);
    if (int64_t(hist[b]) == krem) {  // the whole bucket is taken: select key >= blo
      *T = blo;
      *need = kNeedAll;
      return;
    }
    cm = simd ? compact_avx2(cur, cm, base, shift, uint32_t(b), tmp)
              : compact_scalar(cur, cm, base, shift, uint32_t(b), tmp);
    cur = tmp;
    span = std::min<uint32_t>(top - blo, (uint32_t(1) << shift) - 1);
    base = blo;
  }
}

// Emission: the selected are key > T, plus key == T at list positions <= cut,
// where cut is the position of the need-th key equal to T (m: all of them).
// A stateless predicate, so the scan has no dependency chain and vectorises.
int64_t tie_cut(const uint32_t* keys, int64_t m, uint32_t T, int64_t need) {
  if (need == kNeedAll) return m;
  for (int64_t i = 0; i < m; ++i)
    if (keys[i] == T && --need == 0) return i;
  return m;  // not reached: need <= #{key == T}
}

// Writes the k selected indices (idx[i], or i when idx is null) in list
// order into out (room for k + 8). Scalar: branch-free.
void emit_scalar(const uint32_t* keys, const int32_t* idx, int64_t m, uint32_t T, int64_t cut,
                 int32_t* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < m; ++i) {
    const uint32_t x = keys[i];
    out[c] = idx ? idx[i] : int32_t(i);
    c += (x > T) | ((x == T) & (i <= cut));
  }
}

__attribute__((target("avx2,popcnt"))) void emit_avx2(const uint32_t* keys, const int32_t* idx,
                                                      int64_t m, uint32_t T, int64_t cut,
                                                      int32_t* out) {
  const __m256i sign = _mm256_set1_epi32(int32_t(0x80000000u));
  const __m256i vT = _mm256_set1_epi32(int32_t(T));
  const __m256i vTs = _mm256_xor_si256(vT, sign);  // unsigned compare via signed
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i vcut = _mm256_set1_epi32(int32_t(std::min<int64_t>(cut, m)));
  int64_t i = 0, c = 0;
  for (; i + 8 <= m; i += 8) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
    const __m256i pos = _mm256_add_epi32(lane, _mm256_set1_epi32(int32_t(i)));
    const __m256i gt = _mm256_cmpgt_epi32(_mm256_xor_si256(x, sign), vTs);
    const __m256i tie = _mm256_andnot_si256(_mm256_cmpgt_epi32(pos, vcut), _mm256_cmpeq_epi32(x, vT));
    const unsigned mk = unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(gt, tie))));
    const __m256i l = _mm256_load_si256(reinterpret_cast<const __m256i*>(g_lut.lanes[mk]));
    __m256i v = idx ? _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + i)), l)
                    : _mm256_add_epi32(l, _mm256_set1_epi32(int32_t(i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), v);
    c += __builtin_popcount(mk);
  }
  for (; i < m; ++i) {
    const uint32_t x = keys[i];
    out[c] = idx ? idx[i] : int32_t(i);
    c += (x > T) | ((x == T) & (i <= cut));
  }
}

// Select k of keys[0..m) (with their indices) into res, ascending.
void select_emit(const uint32_t* keys, const int32_t* idx, int64_t m, int64_t k, bool simd,
                 Scratch& sc, int32_t* res) {
  uint32_t T;
  int64_t need;
  radix_select(keys, m, k, sc.tmp.data(), &T, &need, simd);
  const int64_t cut = tie_cut(keys, m, T, need);
  int32_t* out = sc.sel.data();
  if (simd) emit_avx2(keys, idx, m, T, cut, out);
  else emit_scalar(keys, idx, m, T, cut, out);
  std::memcpy(res, out, sizeof(int32_t) * k);
}

// ---------------------------------------------------------------- the bound from a sample

// A float lo such that probably k <= #{x >= lo} ~ 2k; *sparse when the
// expected fraction of candidates is <= 1/128. false: no sampling (use the
// whole row). *nan set if a sampled value is NaN.
bool choose_lo(const float* s, int64_t n, int64_t k, float* lo, bool* sparse, bool* nan,
               std::vector<float>& smp) {
  if (n < 4096 || k * 8 > n) return false;
  const double p = double(k) / double(n);
  int64_t ns = std::max<int64_t>(512, int64_t(std::ceil(8.0 / p)));
  ns = std::min<int64_t>(ns, n / 4);
  const double mean = double(ns) * p;
  const int64_t r = int64_t(std::ceil(mean + 3.0 * std::sqrt(mean * (1.0 - p)) + 4.0));
  if (r >= ns) return false;
  if (int64_t(smp.size()) < ns) smp.resize(ns);
  const int64_t block = n / ns;  // >= 4
  uint32_t h = 0x9e3779b9u;
  for (int64_t i = 0; i < ns; ++i) {
    h ^= h << 13;  // xorshift jitter: keeps periodic patterns from aliasing the stride
    h ^= h >> 17;
    h ^= h << 5;
    float x = s[i * block + int64_t(h % uint32_t(block))];
    if (std::isnan(x)) {
      *nan = true;
      return false;
    }
    smp[i] = x;
  }
  std::nth_element(smp.begin(), smp.begin() + (r - 1), smp.begin() + ns, std::greater<float>());
  *lo = smp[r - 1];
  *sparse = r * 128 <= ns;
  return true;
}

// ---------------------------------------------------------------- one row

// Single-threaded. res has room for min(k, n). false on NaN.
bool topk_row(const float* s, int64_t n, int64_t k, int32_t* res, bool simd, Scratch& sc) {
  if (k >= n || k == 0) {
    if (has_nan(s, n, simd)) return false;
    for (int64_t i = 0; i < std::min(k, n); ++i) res[i] = int32_t(i);
    return true;
  }
  sc.reserve(size_t(n));
  float lo;
  bool sparse = false, nan = false;
  if (choose_lo(s, n, k, &lo, &sparse, &nan, sc.sample)) {
    float* cv = sc.val.data();
    const int64_t m = candidates(s, n, 0, lo, sc.idx.data(), cv, sparse, simd);
    if (m >= k) {  // (else: fall back; NaN is then found by the whole-row pass)
      if (all_keys(cv, m, sc.key.data(), simd)) return false;
      select_emit(sc.key.data(), sc.idx.data(), m, k, simd, sc, res);
      return true;
    }
  } else if (nan) {
    return false;
  }
  if (all_keys(s, n, sc.key.data(), simd)) return false;
  select_emit(sc.key.data(), nullptr, n, k, simd, sc, res);
  return true;
}

// One long row split across the pool (called outside any pool job).
bool topk_row_parallel(const float* s, int64_t n, int64_t k, int32_t* res, bool simd, Scratch& sc) {
  const int64_t grain = 1 << 14;
  if (k >= n || k == 0) {
    std::atomic<bool> bad{false};
    parallel_for(n, [&](int64_t b, int64_t e, int) {
      if (has_nan(s + b, e - b, simd)) bad = true;
    }, grain);
    if (bad) return false;
    for (int64_t i = 0; i < std::min(k, n); ++i) res[i] = int32_t(i);
    return true;
  }
  sc.reserve(size_t(n));
  uint32_t* key = sc.key.data();
  int32_t* idx = sc.idx.data();
  float lo;
  bool sparse = false, nan = false;
  if (choose_lo(s, n, k, &lo, &sparse, &nan, sc.sample)) {
    const int nt = pool_threads();
    std::vector<int64_t> seg_begin(nt, 0), seg_count(nt, 0);
    float* cv = sc.val.data();
    // each part writes its candidates at its own offset (a part's candidates
    // never outnumber its elements), then the segments are packed in order
    parallel_for(n, [&](int64_t b, int64_t e, int t) {
      seg_begin[t] = b;
      seg_count[t] = candidates(s + b, e - b, int32_t(b), lo, idx + b, cv + b, sparse, simd);
    }, grain);
    int64_t m = 0;
    for (int t = 0; t < nt; ++t) {
      if (!seg_count[t]) continue;
      if (seg_begin[t] != m) {
        std::memmove(idx + m, idx + seg_begin[t], sizeof(int32_t) * seg_count[t]);
        std::memmove(cv + m, cv + seg_begin[t], sizeof(float) * seg_count[t]);
      }
      m += seg_count[t];
    }
    if (m >= k) {
      if (all_keys(cv, m, key, simd)) return false;
      select_emit(key, idx, m, k, simd, sc, res);
      return true;
    }
  } else if (nan) {
    return false;
  }
  std::atomic<bool> bad{false};
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    if (all_keys(s + b, e - b, key + b, simd)) bad = true;
  }, grain);
  if (bad) return false;
  select_emit(key, nullptr, n, k, simd, sc, res);
  return true;
}

}  // namespace

Status cpu_topk(const TopkArgs& a) {
  // ---- validate everything before touching any output
  if (a.rows < 0 || a.row_stride < 0 || a.out_stride < 0) return Status::Shape;
  if (a.rows == 0) return Status::Ok;
  if (!a.k) return Status::Shape;
  if (!a.lengths && a.row_stride > INT32_MAX) return Status::Shape;  // indices are int32
  const int64_t rows = a.rows;
  std::vector<int64_t> off(size_t(rows) + 1);
  off[0] = 0;
  bool any_len = false;
  int64_t max_len = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t len = a.lengths ? int64_t(a.lengths[r]) : a.row_stride;
    const int64_t k = a.k[r];
    if (len < 0 || len > a.row_stride || k < 0) return Status::Range;
    const int64_t kk = std::min(k, len);
    if (kk > a.out_stride) return Status::Shape;
    any_len |= len > 0;
    max_len = std::max(max_len, len);
    off[r + 1] = off[r] + kk;
  }
  if (any_len && !a.scores) return Status::Shape;
  if (a.out_stride > 0 && !a.out) return Status::Shape;

  // ---- compute into scratch
  const bool simd = cpu_features().simd();
  thread_local std::vector<int32_t> res_buf;
  if (int64_t(res_buf.size()) < off[rows]) res_buf.resize(size_t(off[rows]));
  int32_t* res = res_buf.data();
  auto row_len = [&](int64_t r) { return a.lengths ? int64_t(a.lengths[r]) : a.row_stride; };

  std::atomic<bool> bad{false};
  const int nt = pool_threads();
  if (rows >= nt || max_len < (1 << 15)) {
    parallel_for(rows, [&](int64_t rb, int64_t re, int) {
      Scratch& sc = scratch();
      for (int64_t r = rb; r < re && !bad.load(std::memory_order_relaxed); ++r) {
        if (!topk_row(a.scores + r * a.row_stride, row_len(r), a.k[r], res + off[r], simd, sc))
          bad = true;
      }
    });
  } else {
    Scratch& sc = scratch();
    for (int64_t r = 0; r < rows && !bad; ++r) {
      const int64_t n = row_len(r);
      const float* s = a.scores + r * a.row_stride;
      bool ok = n >= (1 << 15) ? topk_row_parallel(s, n, a.k[r], res + off[r], simd, sc)
                               : topk_row(s, n, a.k[r], res + off[r], simd, sc);
      if (!ok) bad = true;
    }
  }
  if (bad) return Status::NaN;

  // ---- commit
  parallel_for(rows, [&](int64_t rb, int64_t re, int) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t kk = off[r + 1] - off[r];
      int32_t* o = a.out + r * int64_t(a.out_stride);
      if (kk) std::memcpy(o, res + off[r], sizeof(int32_t) * kk);
      for (int64_t j = kk; j < a.out_stride; ++j) o[j] = -1;
      if (a.count) a.count[r] = int32_t(kk);
    }
  }, 64);
  return Status::Ok;
}

}  // namespace kvsq
