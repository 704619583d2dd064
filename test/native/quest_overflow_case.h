// A Quest case whose inputs are all finite but one page's bound overflows
// both ways: q_0 * kmax_0 = +inf and q_1 * kmin_1 = -inf, so the f32 sum is
// inf - inf = NaN in any order. ops.h makes that bound +inf (an overflowed
// upper bound is unbounded), so the page must be chosen for every query head
// of its list. Used by the CPU suite (test_quest_bounds.cc) and the CUDA
// suite (test_cuda_scores.cu) alike.
//
// Layout: B = 1, Hkv = 2, g = 2, D = 17 (the SIMD tail), P = 4; list 0 holds
// 37 tokens (10 pages, overflow at logical page 5), list 1 13 tokens (4
// pages, overflow at logical page 1); physical pages shuffled. q is f32; the
// metadata dtype is the caller's (f16 cannot hold 1e30: its "big" key is
// 6e4 and its big query 1e35, whose product still overflows f32).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "core/dtype.h"
#include "core/ops.h"
#include "harness.h"

namespace kvsqtest {

struct QuestOverflowCase {
  static constexpr int B = 1, Hkv = 2, g = 2, Hq = 4, D = 17, P = 4, budget = 3;
  kvsq::DType kt;
  std::vector<int32_t> kv_len{37, 13}, indptr{0, 10, 14}, ids;
  std::vector<float> q;             // f32 [B, Hq, D]
  std::vector<uint8_t> meta;        // kt [num_pages, 2, D]
  int64_t num_pages = 16;
  int overflow_page[2] = {5, 1};    // logical page per list
  int max_pages = 10;

  explicit QuestOverflowCase(kvsq::DType t) : kt(t) {
    const bool f16 = t == kvsq::DType::F16;
    const float big_q = f16 ? 1e35f : 1e30f, big_k = f16 ? 6e4f : 1e30f;
    ids.resize(14);
    std::vector<int32_t> perm(static_cast<size_t>(num_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng());
    std::copy(perm.begin(), perm.begin() + 14, ids.begin());
    q.resize(size_t(B) * Hq * D);
    for (int h = 0; h < Hq; ++h)
      for (int d = 0; d < D; ++d) q[size_t(h) * D + d] = d == 0 ? big_q : d == 1 ? -big_q : normal();
    meta.assign(size_t(num_pages) * 2 * D * kvsq::dtype_size(t), 0);
    for (int64_t p = 0; p < num_pages; ++p)
      for (int d = 2; d < D; ++d) {  // dims 0 and 1 stay 0 except on the overflow pages
        float lo = normal(), hi = normal();
        if (lo > hi) std::swap(lo, hi);
        set(p, 0, d, lo);
        set(p, 1, d, hi);
      }
    for (int l = 0; l < 2; ++l) {
      const int64_t p = ids[size_t(indptr[l] + overflow_page[l])];
      set(p, 0, 0, big_k), set(p, 1, 0, big_k);  // q_0 > 0: q_0 * kmax_0 = +inf
      set(p, 0, 1, big_k), set(p, 1, 1, big_k);  // q_1 < 0: both products -inf
    }
  }

  // row 0 = kmin, 1 = kmax
  void set(int64_t page, int row, int d, float v) {
    const size_t i = (size_t(page) * 2 + row) * D + d;
    if (kt == kvsq::DType::F32) {
      std::memcpy(&meta[i * 4], &v, 4);
    } else {
      const uint16_t h = kt == kvsq::DType::F16 ? kvsq::f32_to_f16(v) : kvsq::f32_to_bf16(v);
      std::memcpy(&meta[i * 2], &h, 2);
    }
  }

  // Selection arguments over host (or, after the caller swaps the pointers, device) memory.
  kvsq::QuestSelectArgs args(bool share) {
    kvsq::QuestSelectArgs a;
    kvsq::QuestBoundsArgs& b = a.bounds;
    b.batch = B, b.num_q_heads = Hq, b.num_kv_heads = Hkv, b.head_dim = D, b.page_size = P;
    b.q_dtype = kvsq::DType::F32, b.kv_dtype = kt, b.q = q.data(), b.meta_pool = meta.data();
    b.num_pages = num_pages, b.page_indptr = indptr.data(), b.page_ids = ids.data(), b.kv_len = kv_len.data();
    b.share = share;
    a.budget_pages = budget;
    a.max_pages = max_pages;
    return a;
  }

  // Selection size: every row reads min(n, budget) = 3 pages.
  static constexpr int total = Hq * budget;

  // True when every row of the selection holds its list's overflow page.
  bool all_rows_hold_overflow(const std::vector<int32_t>& ind, const std::vector<int32_t>& pages) const {
    for (int r = 0; r < Hq; ++r) {
      const int l = r / g;
      if (ind[size_t(r) + 1] - ind[size_t(r)] != budget) return false;
      if (!std::count(pages.begin() + ind[size_t(r)], pages.begin() + ind[size_t(r) + 1], overflow_page[l])) return false;
    }
    return true;
  }
};

}  // namespace kvsqtest
