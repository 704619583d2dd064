// cpu_pool1d and cpu_chunk_scores against plain double-precision references
// written here (methods.md "Pooling" and "ChunkKV"), on fresh random inputs.
// Row gaps (in_stride > n) hold NaN, so reading past the prefix shows.
//
// Tolerances:
//  - pool Max: exact (a selection of inputs).
//  - pool Avg: the kernel sums m <= k values in f32 and divides by k once:
//    |err| <= (m-1) 2^-24 sum|x| / k + 2^-24 |ref| <= 2^-24 (sum|x| + |ref|);
//    the tests allow 1.01 times that.
//  - chunk: double accumulation then one rounding to f32:
//    |err| <= 2^-24 |ref| + rows*chunk*2^-53 sum|x|; tests use 2^-23 |ref| +
//    1e-12 sum|x|.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "harness.h"

using namespace kvsq;

namespace {

std::vector<float> rows_with_gaps(int rows, int n, int64_t stride) {
  std::vector<float> in(size_t((rows - 1) * stride + n), std::numeric_limits<float>::quiet_NaN());
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < n; ++t) in[size_t(r * stride + t)] = kvsqtest::uniform(-2.f, 5.f);
  return in;
}

void check_pool(int rows, int n, int64_t stride, int kernel, PoolMode mode) {
  const std::vector<float> in = rows_with_gaps(rows, n, stride);
  std::vector<float> out(size_t(rows) * n, -99.f);
  Pool1dArgs a;
  a.rows = rows;
  a.n = n;
  a.in_stride = stride;
  a.kernel = kernel;
  a.mode = mode;
  a.in = in.data();
  a.out = out.data();
  CHECK(cpu_pool1d(a) == Status::Ok);
  const int h = kernel / 2;
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < n; ++t) {
      double mx = -INFINITY, sum = 0.0, abs_sum = 0.0;
      for (int u = std::max(0, t - h); u <= std::min(n - 1, t + h); ++u) {
        const double x = in[size_t(r * stride + u)];
        mx = std::max(mx, x);
        sum += x;
        abs_sum += std::fabs(x);
      }
      const double got = out[size_t(r) * n + t];
      if (mode == PoolMode::Max) {
        CHECK_MSG(got == mx, "max n " << n << " k " << kernel << " r " << r << " t " << t << ": " << got
                                      << " vs " << mx);
      } else {
        const double ref = sum / kernel;
        const double tol = 1.01 * std::ldexp(abs_sum + std::fabs(ref), -24);
        CHECK_MSG(std::fabs(got - ref) <= tol, "avg n " << n << " k " << kernel << " r " << r << " t " << t << ": "
                                                        << got << " vs " << ref);
      }
    }
}

void check_chunks(int rows, int n, int64_t stride, int chunk) {
  const std::vector<float> in = rows_with_gaps(rows, n, stride);
  const int nc = (n + chunk - 1) / chunk;
  std::vector<float> out(size_t(nc) + 1, -99.f);  // one extra: must stay untouched
  ChunkScoresArgs a;
  a.rows = rows;
  a.n = n;
  a.in_stride = stride;
  a.chunk = chunk;
  a.in = in.data();
  a.out = out.data();
  CHECK(cpu_chunk_scores(a) == Status::Ok);
  for (int c = 0; c < nc; ++c) {
    double ref = 0.0, abs_sum = 0.0;
    for (int r = 0; r < rows; ++r)
      for (int t = c * chunk; t < std::min(n, (c + 1) * chunk); ++t) {
        ref += in[size_t(r * stride + t)];
        abs_sum += std::fabs(in[size_t(r * stride + t)]);
      }
    CHECK_MSG(std::fabs(out[c] - ref) <= std::ldexp(std::fabs(ref), -23) + 1e-12 * abs_sum,
              "chunk rows " << rows << " n " << n << " chunk " << chunk << " c " << c << ": " << out[c] << " vs "
                            << ref);
  }
  CHECK(out[nc] == -99.f);
}

}  // namespace

KVSQ_TEST(pool1d_vs_reference) {
  for (PoolMode mode : {PoolMode::Max, PoolMode::Avg})
    for (int n : {1, 2, 5, 17, 1000, 4097})
      for (int kernel : {1, 3, 5, 7, 9, 31}) {
        const int rows = kvsqtest::randint(1, 4);
        const int64_t stride = n + (kvsqtest::randint(0, 1) ? kvsqtest::randint(1, 9) : 0);
        check_pool(rows, n, stride, kernel, mode);
      }
}

KVSQ_TEST(pool1d_edges) {
  for (PoolMode mode : {PoolMode::Max, PoolMode::Avg}) {
    check_pool(1, 1, 1, 1, mode);      // n = 1, k = 1
    check_pool(3, 1, 4, 7, mode);      // n = 1 < k
    check_pool(2, 3, 3, 7, mode);      // n < k: every window clipped at both ends
    check_pool(2, 4, 9, 101, mode);    // k far beyond n
    check_pool(64, 300, 311, 7, mode); // many rows (threaded)
  }
  // k = 1 is the identity; avg of a constant row is damped only at the edges.
  std::vector<float> in(10, 2.f), out(10);
  Pool1dArgs a;
  a.rows = 1;
  a.n = 10;
  a.in_stride = 10;
  a.kernel = 5;
  a.mode = PoolMode::Avg;
  a.in = in.data();
  a.out = out.data();
  CHECK(cpu_pool1d(a) == Status::Ok);
  CHECK_CLOSE(out[0], 2.f * 3 / 5, 0, 1e-6);
  CHECK_CLOSE(out[1], 2.f * 4 / 5, 0, 1e-6);
  CHECK_CLOSE(out[5], 2.f, 0, 1e-6);
  CHECK_CLOSE(out[9], 2.f * 3 / 5, 0, 1e-6);
}

KVSQ_TEST(pool1d_invalid_args) {
  std::vector<float> in(40, 1.f), out(40, -5.f);
  Pool1dArgs base;
  base.rows = 2;
  base.n = 10;
  base.in_stride = 20;
  base.kernel = 3;
  base.in = in.data();
  base.out = out.data();
  auto expect = [&](Pool1dArgs a, Status want, const char* what) {
    const Status got = cpu_pool1d(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got));
    for (float x : out) CHECK_MSG(x == -5.f, what << ": out written on failure");
  };
  Pool1dArgs a;
  a = base; a.rows = 0; expect(a, Status::Shape, "rows 0");
  a = base; a.rows = -1; expect(a, Status::Shape, "rows < 0");
  a = base; a.n = 0; expect(a, Status::Shape, "n 0");
  a = base; a.in_stride = 9; expect(a, Status::Shape, "n > stride");
  a = base; a.kernel = 0; expect(a, Status::Shape, "kernel 0");
  a = base; a.kernel = -3; expect(a, Status::Shape, "kernel < 0");
  a = base; a.kernel = 4; expect(a, Status::Shape, "kernel even");
  a = base; a.in = nullptr; expect(a, Status::Shape, "null in");
  a = base; a.out = nullptr; expect(a, Status::Shape, "null out");
  a = base; a.mode = static_cast<PoolMode>(2); expect(a, Status::Range, "bad mode");
  a = base; a.out = out.data(); a.in = out.data() + 5; expect(a, Status::Shape, "overlap");
  CHECK(cpu_pool1d(base) == Status::Ok);
}

KVSQ_TEST(chunk_scores_vs_reference) {
  for (int rows : {1, 3, 8})
    for (int n : {1, 9, 10, 11, 1000, 4097})
      for (int chunk : {1, 3, 10, 20, n, n + 5}) {
        const int64_t stride = n + (kvsqtest::randint(0, 1) ? kvsqtest::randint(1, 9) : 0);
        check_chunks(rows, n, stride, chunk);
      }
  check_chunks(8, 32768 - 32, 32768, 10);  // ChunkKV's shape: 8 heads, prefix of a 32K prompt
}

KVSQ_TEST(chunk_scores_partial_last_chunk) {
  // n = 25, chunk = 10: chunks [0,10), [10,20), [20,25).
  std::vector<float> in(2 * 25);
  for (int r = 0; r < 2; ++r)
    for (int t = 0; t < 25; ++t) in[size_t(r * 25 + t)] = float(t + 100 * r);
  std::vector<float> out(3);
  ChunkScoresArgs a;
  a.rows = 2;
  a.n = 25;
  a.in_stride = 25;
  a.chunk = 10;
  a.in = in.data();
  a.out = out.data();
  CHECK(cpu_chunk_scores(a) == Status::Ok);
  CHECK_EQ(out[0], 45.f + 1045.f);
  CHECK_EQ(out[1], 145.f + 1145.f);
  CHECK_EQ(out[2], 110.f + 610.f);
}

KVSQ_TEST(chunk_scores_invalid_args) {
  std::vector<float> in(40, 1.f), out(10, -5.f);
  ChunkScoresArgs base;
  base.rows = 2;
  base.n = 10;
  base.in_stride = 20;
  base.chunk = 3;
  base.in = in.data();
  base.out = out.data();
  auto expect = [&](ChunkScoresArgs a, Status want, const char* what) {
    const Status got = cpu_chunk_scores(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got));
    for (float x : out) CHECK_MSG(x == -5.f, what << ": out written on failure");
  };
  ChunkScoresArgs a;
  a = base; a.rows = 0; expect(a, Status::Shape, "rows 0");
  a = base; a.n = 0; expect(a, Status::Shape, "n 0");
  a = base; a.n = -2; expect(a, Status::Shape, "n < 0");
  a = base; a.in_stride = 9; expect(a, Status::Shape, "n > stride");
  a = base; a.chunk = 0; expect(a, Status::Shape, "chunk 0");
  a = base; a.chunk = -1; expect(a, Status::Shape, "chunk < 0");
  a = base; a.in = nullptr; expect(a, Status::Shape, "null in");
  a = base; a.out = nullptr; expect(a, Status::Shape, "null out");
  CHECK(cpu_chunk_scores(base) == Status::Ok);
}
