// Chunk scores (methods.md "ChunkKV"; layout in core/ops.h ChunkScoresArgs).
//
// Formula: out[c] = sum over rows r and t in [c*chunk, min(n, (c+1)*chunk))
// of in[r, t], for c in [0, ceil(n / chunk)); the last chunk may be partial.
// In ChunkKV the rows are the KV heads' window scores S_j and n = L - w.
//
// Layout: in row r at in + r * in_stride (in_stride >= n); out [ceil(n/chunk)]
// f32. out must not overlap in (checked: Status::Shape).
//
// Method: parallel over chunks; each thread walks the rows in order and adds
// each row's chunk sums into a double accumulator per chunk, then rounds once
// to f32. Scores are non-negative in practice, but nothing relies on it.
// Tolerance: the double sum of rows * chunk terms is within
// rows * chunk * 2^-53 * sum|in| of exact; the final rounding adds 2^-24 |out|.
// Against a double reference the tests use 2^-23 |ref| + 1e-12 sum|in|.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "../core/threadpool.h"
#include "kernels.h"

namespace kvsq {

Status cpu_chunk_scores(const ChunkScoresArgs& a) {
  // ---- validation (nothing is written before it passes)
  if (a.rows <= 0 || a.n <= 0 || a.chunk < 1 || a.in_stride < a.n) return Status::Shape;
  if (!a.in || !a.out) return Status::Shape;
  const int64_t n = a.n, chunk = a.chunk;
  const int64_t nc = (n + chunk - 1) / chunk;
  {
    const uintptr_t ib = reinterpret_cast<uintptr_t>(a.in);
    const uintptr_t ie = reinterpret_cast<uintptr_t>(a.in + (int64_t(a.rows) - 1) * a.in_stride + n);
    const uintptr_t ob = reinterpret_cast<uintptr_t>(a.out);
    const uintptr_t oe = reinterpret_cast<uintptr_t>(a.out + nc);
    if (ob < ie && ib < oe) return Status::Shape;
  }
  std::unique_ptr<double[]> acc(new (std::nothrow) double[size_t(nc)]);
  if (!acc) return Status::OOM;
  const int64_t min_chunks = std::max<int64_t>(1, (int64_t(1) << 15) / (chunk * a.rows));
  parallel_for(nc, [&](int64_t c0, int64_t c1, int) {
    const int64_t tb = c0 * chunk, te = std::min(n, c1 * chunk);
    for (int64_t c = c0; c < c1; ++c) acc[c] = 0.0;
    for (int64_t r = 0; r < a.rows; ++r) {
      const float* row = a.in + r * a.in_stride;
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t s = c * chunk, e = std::min(te, s + chunk);
        double sum = 0.0;
        for (int64_t t = std::max(s, tb); t < e; ++t) sum += double(row[t]);
        acc[c] += sum;
      }
    }
    for (int64_t c = c0; c < c1; ++c) a.out[c] = float(acc[c]);
  }, min_chunks);
  return Status::Ok;
}

}  // namespace kvsq
