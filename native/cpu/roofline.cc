// Rooflines for the benchmarks (see roofline.h). Each figure is the best of a
// few repetitions: the question is what the machine can do, and interference
// from other processes only ever lowers a sample.
#include "roofline.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"

namespace kvsq {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// 12 independent accumulators hide the FMA latency (4-5 cycles x 2 ports).
__attribute__((target("avx2,fma"))) double fma_loop_simd(long iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + i * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long n = 0; n < iters; ++n)
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return double(out[0]) + iters * 12.0 * 8 * 2;  // flops; the sum keeps the loop alive
}

double fma_loop_portable(long iters) {
  float a[32];
  for (int i = 0; i < 32; ++i) a[i] = 1.0f + i * 1e-3f;
  for (long n = 0; n < iters; ++n)
    for (int i = 0; i < 32; ++i) a[i] = a[i] * 0.999999f + 1e-7f;
  float s = 0;
  for (float x : a) s += x;
  return double(s > 0 ? 0 : 1) + iters * 32.0 * 2;
}

}  // namespace

Roofline measure_roofline(int millis, size_t bytes) {
  Roofline r;
  r.threads = pool_threads();
  r.simd = cpu_features().simd();
  const double budget = std::max(10, millis) / 1000.0;

  // FMA peak: every pool thread runs the loop for about `budget` seconds.
  const long iters = r.simd ? 2000000 : 500000;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> flops(size_t(r.threads), 0);
    const auto t0 = Clock::now();
    parallel_for(r.threads, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) {
        double f = 0;
        const auto start = Clock::now();
        while (seconds_since(start) < budget / 3) f += r.simd ? fma_loop_simd(iters) : fma_loop_portable(iters);
        flops[size_t(t)] = f;
      }
    });
    double total = 0;
    for (double f : flops) total += f;
    r.fma_gflops = std::max(r.fma_gflops, total / seconds_since(t0) / 1e9);
  }

  // Bandwidth: buffers split across the pool threads.
  const size_t n = std::max<size_t>(bytes, 1 << 20) / sizeof(float);
  float* src = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  float* dst = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (!src || !dst) {
    std::free(src);
    std::free(dst);
    return r;
  }
  parallel_for(int64_t(n), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) src[i] = float(i & 1023), dst[i] = 0;
  }, 1 << 16);
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = Clock::now();
    parallel_for(int64_t(n), [&](int64_t b, int64_t e, int) { std::memcpy(dst + b, src + b, size_t(e - b) * sizeof(float)); }, 1 << 16);
    r.copy_gbps = std::max(r.copy_gbps, 2.0 * n * sizeof(float) / seconds_since(t0) / 1e9);
    std::vector<double> sums(size_t(r.threads) + 1, 0);
    t0 = Clock::now();
    parallel_for(int64_t(n), [&](int64_t b, int64_t e, int th) {
      // Four independent partial sums: the read, not the add chain, is the limit.
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t i = b;
      for (; i + 4 <= e; i += 4) s0 += src[i], s1 += src[i + 1], s2 += src[i + 2], s3 += src[i + 3];
      for (; i < e; ++i) s0 += src[i];
      sums[size_t(th)] += s0 + s1 + s2 + s3;
    }, 1 << 16);
    const double secs = seconds_since(t0);
    if (sums[0] >= 0) r.read_gbps = std::max(r.read_gbps, double(n) * sizeof(float) / secs / 1e9);
  }
  std::free(src);
  std::free(dst);
  return r;
}

}  // namespace kvsq
