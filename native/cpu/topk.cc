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
//  * Radix select on keys: histograms of the top digit (11/11/10 bits for long
//    lists, 8/8/8/8 for short ones) narrow down the key T of the k-th largest
//    element and `need`, the number of elements equal to T that are still to
//    take. Each pass after the first compacts the surviving keys, so the cost
//    is one pass over the list plus passes over shrinking remainders.
//  * Emission: one scan in index order emitting key > T, and key == T while
//    need > 0 -- which is exactly "ties: lower index wins", and comes out
//    already in ascending index order (no sort of the output).
//  * Why it is fast: for k << n most of the row cannot be in the answer. A
//    strided, jittered sample of the row (~16 expected hits above the k-th
//    value plus a 3-sigma margin) gives a float bound `lo`; one streaming pass
//    (AVX2: one compare per 8 floats, NaN caught by the same unordered compare)
//    keeps only the candidates x >= lo, as (key, index) pairs in index order.
//    If at least k survive, the answer lies among them (everything dropped is
//    strictly smaller than every candidate) and the radix select runs on a list
//    of ~2k entries. If fewer survive (unlucky sample, adversarial patterns),
//    the row falls back to keys for the whole row -- same answer, slower. So
//    the row is read about once, which is the floor for this operation.
//  * NaN: rows are computed into a scratch buffer; only when every row is
//    NaN-free is the scratch committed to out/count, so an error writes nothing.
//  * Threads: many rows -> rows split across the pool; fewer rows than threads
//    -> each long row is split across the pool (per-thread candidate segments,
//    concatenated in index order; the select on the small list is serial).
//  * SIMD: AVX2 paths chosen at run time (cpu_features().simd()); the portable
//    scalar path gives bit-identical results.
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
  std::vector<int32_t> idx;
  std::vector<float> sample;
  void reserve(size_t n) {
    if (key.size() < n) {
      key.resize(n);
      idx.resize(n);
      tmp.resize(n);
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

// Candidates x >= lo (and NaN, reported) of s[0..n) as (key, base + i), in
// index order. Returns the count; *nan set on a NaN (count then meaningless).
int64_t candidates_scalar(const float* s, int64_t n, int32_t base, float lo, uint32_t* ck,
                          int32_t* ci, bool* nan) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    float x = s[i];
    if (!(x < lo)) {
      if (std::isnan(x)) {
        *nan = true;
        return m;
      }
      ck[m] = key_of(x);
      ci[m] = int32_t(base + i);
      ++m;
    }
  }
  return m;
}

__attribute__((target("avx2"))) int64_t candidates_avx2(const float* s, int64_t n, int32_t base,
                                                        float lo, uint32_t* ck, int32_t* ci,
                                                        bool* nan) {
  const __m256 vlo = _mm256_set1_ps(lo);
  int64_t i = 0, m = 0;
  for (; i + 32 <= n; i += 32) {
    // NLT_UQ: true for x >= lo and for NaN, so one compare does both jobs.
    __m256 c0 = _mm256_cmp_ps(_mm256_loadu_ps(s + i), vlo, _CMP_NLT_UQ);
    __m256 c1 = _mm256_cmp_ps(_mm256_loadu_ps(s + i + 8), vlo, _CMP_NLT_UQ);
    __m256 c2 = _mm256_cmp_ps(_mm256_loadu_ps(s + i + 16), vlo, _CMP_NLT_UQ);
    __m256 c3 = _mm256_cmp_ps(_mm256_loadu_ps(s + i + 24), vlo, _CMP_NLT_UQ);
    __m256 any = _mm256_or_ps(_mm256_or_ps(c0, c1), _mm256_or_ps(c2, c3));
    if (_mm256_testz_ps(any, any)) continue;
    uint32_t mk = uint32_t(_mm256_movemask_ps(c0)) | (uint32_t(_mm256_movemask_ps(c1)) << 8) |
                  (uint32_t(_mm256_movemask_ps(c2)) << 16) | (uint32_t(_mm256_movemask_ps(c3)) << 24);
    while (mk) {
      int b = __builtin_ctz(mk);
      mk &= mk - 1;
      float x = s[i + b];
      if (std::isnan(x)) {
        *nan = true;
        return m;
      }
      ck[m] = key_of(x);
      ci[m] = int32_t(base + i + b);
      ++m;
    }
  }
  return m + candidates_scalar(s + i, n - i, int32_t(base + i), lo, ck + m, ci + m, nan);
}

inline bool has_nan(const float* s, int64_t n, bool simd) {
  return simd ? has_nan_avx2(s, n) : has_nan_scalar(s, n);
}
inline bool all_keys(const float* s, int64_t n, uint32_t* key, bool simd) {
  return simd ? all_keys_avx2(s, n, key) : all_keys_scalar(s, n, key);
}
inline int64_t candidates(const float* s, int64_t n, int32_t base, float lo, uint32_t* ck,
                          int32_t* ci, bool* nan, bool simd) {
  return simd ? candidates_avx2(s, n, base, lo, ck, ci, nan)
              : candidates_scalar(s, n, base, lo, ck, ci, nan);
}

// ---------------------------------------------------------------- select + emit

// For keys[0..m) and 1 <= k <= m: the key T of the k-th largest and `need`,
// such that {key > T} plus the first `need` of {key == T} (index order) are the
// k selected (kNeedAll: every key == T). tmp has room for m keys.
void radix_select(const uint32_t* keys, int64_t m, int64_t k, uint32_t* tmp, uint32_t* T,
                  int64_t* need) {
  static const int kWide[][2] = {{21, 11}, {10, 11}, {0, 10}};    // shift, bits
  static const int kNarrow[][2] = {{24, 8}, {16, 8}, {8, 8}, {0, 8}};
  const bool narrow = m <= (1 << 14);  // small lists: cheaper 256-bin histograms
  const int (*digits)[2] = narrow ? kNarrow : kWide;
  const int passes = narrow ? 4 : 3;

  uint32_t hist[2048];
  const uint32_t* cur = keys;
  int64_t cm = m, krem = k;
  uint32_t prefix = 0;
  int prev_shift = 32;
  for (int p = 0; p < passes; ++p) {
    const int shift = digits[p][0], nb = 1 << digits[p][1];
    const uint32_t dmask = uint32_t(nb - 1);
    std::memset(hist, 0, sizeof(uint32_t) * nb);
    if (p == 0) {
      for (int64_t i = 0; i < cm; ++i) ++hist[(cur[i] >> shift) & dmask];
    } else {
      // keep the keys whose higher digits equal the prefix (compacting into tmp;
      // in place once cur == tmp, which is safe as j <= i)
      const uint32_t want = prefix >> prev_shift;
      int64_t j = 0;
      for (int64_t i = 0; i < cm; ++i) {
        uint32_t x = cur[i];
        if ((x >> prev_shift) == want) {
          tmp[j++] = x;
          ++hist[(x >> shift) & dmask];
        }
      }
      cur = tmp;
      cm = j;
    }
    int b = nb - 1;
    int64_t above = 0;
    for (; b > 0; --b) {
      if (above + hist[b] >= krem) break;
      above += hist[b];
    }
    krem -= above;
    prefix |= uint32_t(b) << shift;
    prev_shift = shift;
    if (int64_t(hist[b]) == krem) {  // the whole bucket is taken: select key >= prefix
      *T = prefix;
      *need = kNeedAll;
      return;
    }
  }
  *T = prefix;
  *need = krem;
}

// Scan keys in index order; idx null means index = base + i. Writes k indices.
void emit(const uint32_t* keys, const int32_t* idx, int64_t m, int32_t base, uint32_t T,
          int64_t need, int64_t k, int32_t* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < m && c < k; ++i) {
    uint32_t x = keys[i];
    if (x > T || (x == T && need > 0)) {
      if (x == T) --need;
      out[c++] = idx ? idx[i] : int32_t(base + i);
    }
  }
}

// ---------------------------------------------------------------- the bound from a sample

// A float lo such that probably k <= #{x >= lo} ~ 2k. false: no sampling (use
// the whole row). *nan set if a sampled value is NaN.
bool choose_lo(const float* s, int64_t n, int64_t k, float* lo, bool* nan, std::vector<float>& smp) {
  if (n < 4096 || k * 8 > n) return false;
  const double p = double(k) / double(n);
  int64_t ns = std::max<int64_t>(1024, int64_t(std::ceil(16.0 / p)));
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
  bool nan = false;
  uint32_t T;
  int64_t need;
  if (choose_lo(s, n, k, &lo, &nan, sc.sample)) {
    int64_t m = candidates(s, n, 0, lo, sc.key.data(), sc.idx.data(), &nan, simd);
    if (nan) return false;
    if (m >= k) {
      radix_select(sc.key.data(), m, k, sc.tmp.data(), &T, &need);
      emit(sc.key.data(), sc.idx.data(), m, 0, T, need, k, res);
      return true;
    }
  } else if (nan) {
    return false;
  }
  if (all_keys(s, n, sc.key.data(), simd)) return false;
  radix_select(sc.key.data(), n, k, sc.tmp.data(), &T, &need);
  emit(sc.key.data(), nullptr, n, 0, T, need, k, res);
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
  bool nan = false;
  uint32_t T;
  int64_t need;
  if (choose_lo(s, n, k, &lo, &nan, sc.sample)) {
    const int nt = pool_threads();
    std::vector<int64_t> seg_begin(nt, 0), seg_count(nt, 0);
    std::atomic<bool> bad{false};
    // each part writes its candidates at its own offset (a part's candidates
    // never outnumber its elements), then the segments are packed in order
    parallel_for(n, [&](int64_t b, int64_t e, int t) {
      bool my_nan = false;
      seg_begin[t] = b;
      seg_count[t] = candidates(s + b, e - b, int32_t(b), lo, key + b, idx + b, &my_nan, simd);
      if (my_nan) bad = true;
    }, grain);
    if (bad) return false;
    int64_t m = 0;
    for (int t = 0; t < nt; ++t) {
      if (!seg_count[t]) continue;
      if (seg_begin[t] != m) {
        std::memmove(key + m, key + seg_begin[t], sizeof(uint32_t) * seg_count[t]);
        std::memmove(idx + m, idx + seg_begin[t], sizeof(int32_t) * seg_count[t]);
      }
      m += seg_count[t];
    }
    if (m >= k) {
      radix_select(key, m, k, sc.tmp.data(), &T, &need);
      emit(key, idx, m, 0, T, need, k, res);
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
  radix_select(key, n, k, sc.tmp.data(), &T, &need);
  emit(key, nullptr, n, 0, T, need, k, res);
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
