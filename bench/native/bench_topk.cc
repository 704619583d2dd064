// Micro-benchmark of cpu_topk against
//   * a sort-based reference (per row: std::sort of the indices by
//     (score desc, index asc), take k, sort ascending; rows across the pool),
//   * one read of the scores (AVX2 sum over the same buffer on the pool),
// for 8 x 128K, 256 x 128K and 1 x 1M rows, k = 2048, normal scores.
// Prints median ms, GB/s of score bytes, and the ratios.
//   ./build-native/bench_topk [reps]      (KVSQ_THREADS to set the pool size)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/threadpool.h"
#include "cpu/kernels.h"

using namespace kvsq;

namespace {

template <class F>
double median_ms(int reps, F&& f) {
  f();  // warm-up (caches, page faults, pool start)
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    auto t1 = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

__attribute__((target("avx2"))) float sum_avx2(const float* s, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(s + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(s + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(s + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(s + i + 24));
  }
  __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  alignas(32) float l[8];
  _mm256_store_ps(l, a);
  float r = 0;
  for (float x : l) r += x;
  for (; i < n; ++i) r += s[i];
  return r;
}

volatile float g_sink;

void sort_reference(const float* scores, int rows, int64_t n, int k, int32_t* out) {
  parallel_for(rows, [&](int64_t rb, int64_t re, int) {
    std::vector<int32_t> id(n);
    for (int64_t r = rb; r < re; ++r) {
      const float* s = scores + r * n;
      std::iota(id.begin(), id.end(), 0);
      std::sort(id.begin(), id.end(), [&](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
      int kk = int(std::min<int64_t>(k, n));
      std::sort(id.begin(), id.begin() + kk);
      std::copy(id.begin(), id.begin() + kk, out + r * k);
    }
  });
}

void run(int rows, int64_t n, int k, int reps) {
  std::vector<float> scores(size_t(rows) * n);
  std::mt19937_64 g(12345);
  std::normal_distribution<float> nd;
  for (auto& x : scores) x = nd(g);
  std::vector<int32_t> kv(rows, k), out(size_t(rows) * k), ref(size_t(rows) * k), count(rows);
  TopkArgs a;
  a.rows = rows, a.row_stride = n, a.scores = scores.data(), a.k = kv.data();
  a.out_stride = k, a.out = out.data(), a.count = count.data();

  const double bytes = double(rows) * n * 4;
  double t_topk = median_ms(reps, [&] { cpu_topk(a); });
  cpu_features_force(0);
  double t_scalar = median_ms(reps, [&] { cpu_topk(a); });
  cpu_features_force(-1);
  double t_sum = median_ms(reps, [&] {
    std::vector<float> part(pool_threads(), 0.f);
    parallel_for(int64_t(rows) * n, [&](int64_t b, int64_t e, int t) { part[t] += sum_avx2(scores.data() + b, e - b); },
                 1 << 14);
    g_sink = std::accumulate(part.begin(), part.end(), 0.f);
  });
  int ref_reps = rows * n > (1 << 24) ? 1 : std::max(3, reps / 4);
  double t_sort = median_ms(ref_reps, [&] { sort_reference(scores.data(), rows, n, k, ref.data()); });
  bool same = out == ref;

  std::printf("%4d x %-8lld k %-5d | topk %8.3f ms %6.1f GB/s | scalar %8.3f ms | sum %7.3f ms %6.1f GB/s |"
              " sort %9.2f ms | sort/topk %6.1fx  topk/sum %4.2fx | %s\n",
              rows, (long long)n, k, t_topk, bytes / t_topk * 1e-6, t_scalar, t_sum, bytes / t_sum * 1e-6, t_sort,
              t_sort / t_topk, t_topk / t_sum, same ? "matches sort" : "MISMATCH");
}

}  // namespace

int main(int argc, char** argv) {
  int reps = argc > 1 ? std::atoi(argv[1]) : 21;
  std::printf("cpu_topk benchmark: %d threads, simd %s, median of %d\n", pool_threads(),
              cpu_features().simd() ? "avx2" : "off", reps);
  run(8, 128 * 1024, 2048, reps);
  run(256, 128 * 1024, 2048, std::max(3, reps / 4));
  run(1, 1 << 20, 2048, reps);
  return 0;
}
