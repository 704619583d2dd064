// pool1d (methods.md "Pooling"; layout in core/ops.h Pool1dArgs).
//
// Formula. For row r and t in [0, n), with h = k / 2 (k odd):
//   Max: out[r, t] = max { in[r, u] : u in [t - h, t + h] and 0 <= u < n }
//   Avg: out[r, t] = (sum of those in[r, u]) / k
// Only the prefix [0, n) is pooled (n = L - w: the window is never pooled);
// positions outside it count as absent (Max) or zero (Avg, always divided by
// k, as PyTorch's avg_pool1d with count_include_pad), so edges are damped.
//
// Layout: in row r at in + r * in_stride (in_stride >= n), out [rows, n]
// contiguous. out must not overlap in (checked: Status::Shape).
//
// Method: out starts as in[t] (offset 0), then for each offset o = 1..h the
// right neighbour in[t + o] (t < n - o) and the left neighbour in[t - o]
// (t >= o) are folded in. Each pass is a contiguous elementwise loop the
// compiler vectorises, O(n k) per row; k is small (5 or 7 in practice).
//
// Tolerance: Max is exact (a selection). Avg sums k values in f32 in the
// order centre, +1, -1, +2, -2, ... and divides by k once: |err| <= k 2^-24
// sum|in| / k + 2^-24 |out| (standard recursive-summation bound).
#include <algorithm>
#include <cstdint>

#include "../core/threadpool.h"
#include "kernels.h"

namespace kvsq {

namespace {

void pool_row(const float* __restrict in, float* __restrict out, int64_t n, int64_t h, PoolMode mode, float k) {
  for (int64_t t = 0; t < n; ++t) out[t] = in[t];
  const int64_t hmax = std::min<int64_t>(h, n - 1);  // offsets >= n reach nothing
  if (mode == PoolMode::Max) {
    for (int64_t o = 1; o <= hmax; ++o) {
      for (int64_t t = 0; t < n - o; ++t) out[t] = out[t] < in[t + o] ? in[t + o] : out[t];
      for (int64_t t = o; t < n; ++t) out[t] = out[t] < in[t - o] ? in[t - o] : out[t];
    }
  } else {
    for (int64_t o = 1; o <= hmax; ++o) {
      for (int64_t t = 0; t < n - o; ++t) out[t] += in[t + o];
      for (int64_t t = o; t < n; ++t) out[t] += in[t - o];
    }
    for (int64_t t = 0; t < n; ++t) out[t] /= k;
  }
}

}  // namespace

Status cpu_pool1d(const Pool1dArgs& a) {
  // ---- validation (nothing is written before it passes)
  if (a.rows <= 0 || a.n <= 0 || a.in_stride < a.n || a.kernel < 1 || a.kernel % 2 == 0) return Status::Shape;
  if (!a.in || !a.out) return Status::Shape;
  if (a.mode != PoolMode::Max && a.mode != PoolMode::Avg) return Status::Range;
  {
    const uintptr_t ib = reinterpret_cast<uintptr_t>(a.in);
    const uintptr_t ie = reinterpret_cast<uintptr_t>(a.in + (int64_t(a.rows) - 1) * a.in_stride + a.n);
    const uintptr_t ob = reinterpret_cast<uintptr_t>(a.out);
    const uintptr_t oe = reinterpret_cast<uintptr_t>(a.out + int64_t(a.rows) * a.n);
    if (ob < ie && ib < oe) return Status::Shape;  // in-place pooling would read pooled values
  }
  const int64_t n = a.n, h = a.kernel / 2;
  const float k = float(a.kernel);
  // Rows are independent; small jobs (a few thousand elements) stay on the caller.
  const int64_t per_row = n * (std::min<int64_t>(h, n) + 1);
  const int64_t min_rows = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, per_row));
  parallel_for(a.rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) pool_row(a.in + r * a.in_stride, a.out + r * n, n, h, a.mode, k);
  }, min_rows);
  return Status::Ok;
}

}  // namespace kvsq
