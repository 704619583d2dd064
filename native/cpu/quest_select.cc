// Quest page selection, fused (methods.md "Quest"; contract in core/ops.h
// QuestSelectArgs): the page bounds of every list, the top budget_pages - 1
// pages of each row, and the per-query-head selection (indptr + ascending
// logical pages, the last page always included) in one call.
//
// Formula: as cpu_quest_bounds (u[p] = sum_d max(q_d kmax_d, q_d kmin_d),
// f32, within (D + 2) 2^-24 sum_d |q_d| max(|kmin_d|, |kmax_d|) of exact) and
// cpu_topk (largest first, ties to the lower page, ascending output). The
// selection is exactly what those two kernels give when called one after the
// other: it is built from them, on internal scratch.
//
// Why a fused call: a decode step used to copy the bounds to the host, build
// top-k lengths, copy the top pages back and assemble the page lists in JS:
// at 32K tokens those copies and the allocation of fresh output buffers cost
// about as much as the bounds pass itself. Here the scratch is reused across
// calls (per calling thread), the outputs are only the selection, and the
// CUDA twin keeps everything on the device.
#include <algorithm>
#include <limits>
#include <new>
#include <vector>

#include "kernels.h"

namespace kvsq {

namespace {

inline int64_t pages_of(int64_t len, int32_t P) { return (len + P - 1) / P; }

struct Scratch {
  std::vector<float> bounds;
  std::vector<int32_t> lens, ks, top;
  static constexpr size_t kKeep = size_t(8) << 20;  // elements kept between calls
  void trim() {
    if (bounds.capacity() > kKeep) std::vector<float>().swap(bounds);
    if (top.capacity() > kKeep) std::vector<int32_t>().swap(top);
  }
};

}  // namespace

Status validate_quest_select(const QuestSelectArgs& a) {
  if (a.budget_pages < 1) return Status::Range;
  if (!a.sel_indptr) return Status::Shape;
  // The bounds checks (dtypes, sizes, page ids, lengths), with the scratch
  // output standing in for out (its width is known once the lengths are).
  QuestBoundsArgs b = a.bounds;
  float dummy = 0.f;
  b.out = &dummy;
  b.out_stride = std::numeric_limits<int32_t>::max();
  if (Status st = validate_quest_bounds(b); st != Status::Ok) return st;
  const int64_t lists = int64_t(b.batch) * b.num_kv_heads;
  int64_t total = 0, max_n = 0;
  const int g = b.num_q_heads / b.num_kv_heads;
  for (int64_t l = 0; l < lists; ++l) {
    const int64_t n = pages_of(b.kv_len[l], b.page_size);
    max_n = std::max(max_n, n);
    total += g * std::min<int64_t>(n, a.budget_pages);
  }
  if (max_n > a.max_pages) return Status::Shape;
  if (total > 0 && !a.sel_pages) return Status::Shape;
  return Status::Ok;
}

Status cpu_quest_select(const QuestSelectArgs& a) {
  if (Status st = validate_quest_select(a); st != Status::Ok) return st;
  const QuestBoundsArgs& qb = a.bounds;
  const int64_t B = qb.batch, Hq = qb.num_q_heads, Hkv = qb.num_kv_heads, g = Hq / Hkv;
  // q must be finite (checked even with q_checked: it is cheap here, and the
  // bounds' overflow rule in ops.h relies on it).
  int64_t bad = 0;
  NonFiniteArgs nf;
  nf.dtype = qb.q_dtype;
  nf.x = qb.q;
  nf.n = B * Hq * qb.head_dim;
  nf.count = &bad;
  if (Status st = cpu_count_nonfinite(nf); st != Status::Ok) return st;
  if (bad) return Status::NaN;
  const int32_t P = qb.page_size, K = a.budget_pages;
  const int64_t rows = qb.share ? B * Hkv : B * Hq;
  auto list_of = [&](int64_t r) { return qb.share ? r : (r / Hq) * Hkv + (r % Hq) / g; };
  int64_t width = 1;
  bool sparse = false;
  for (int64_t l = 0; l < B * Hkv; ++l) {
    const int64_t n = pages_of(qb.kv_len[l], P);
    width = std::max(width, n - 1);
    sparse |= n > K;
  }
  static thread_local Scratch sc;
  struct Trim {
    Scratch& s;
    ~Trim() { s.trim(); }
  } trim{sc};
  const int32_t k = K - 1;  // bound-ranked pages per sparse row (the last page is added)
  if (sparse && k > 0) {
    try {
      sc.bounds.resize(size_t(rows * width));
      sc.lens.resize(size_t(rows));
      sc.ks.assign(size_t(rows), k);
      sc.top.resize(size_t(rows * k));
    } catch (const std::bad_alloc&) {
      return Status::OOM;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = pages_of(qb.kv_len[list_of(r)], P);
      sc.lens[size_t(r)] = n > K ? int32_t(n - 1) : 0;  // dense rows rank nothing
    }
    QuestBoundsArgs b = qb;
    b.out = sc.bounds.data();
    b.out_stride = int32_t(width);
    if (Status st = cpu_quest_bounds(b); st != Status::Ok) return st;
    TopkArgs t;
    t.rows = int32_t(rows);
    t.row_stride = width;
    t.scores = sc.bounds.data();
    t.lengths = sc.lens.data();
    t.k = sc.ks.data();
    t.out_stride = k;
    t.out = sc.top.data();
    // With finite q and metadata no bound is NaN; NaN metadata (which the
    // cache never stores) still ends here as Status::NaN, nothing written.
    if (Status st = cpu_topk(t); st != Status::Ok) return st;
  }
  // Assembly, per query head (the outputs are written only from here on).
  int32_t* out = a.sel_pages;
  a.sel_indptr[0] = 0;
  for (int64_t r = 0; r < B * Hq; ++r) {
    const int64_t l = (r / Hq) * Hkv + (r % Hq) / g;
    const int32_t n = int32_t(pages_of(qb.kv_len[l], P));
    if (n <= K) {
      for (int32_t p = 0; p < n; ++p) *out++ = p;
    } else {
      const int64_t tr = qb.share ? l : r;
      out = std::copy(sc.top.data() + tr * k, sc.top.data() + (tr + 1) * k, out);
      *out++ = n - 1;
    }
    a.sel_indptr[r + 1] = int32_t(out - a.sel_pages);
  }
  return Status::Ok;
}

}  // namespace kvsq
