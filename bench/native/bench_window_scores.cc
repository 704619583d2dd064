// Micro-benchmark for cpu_window_scores (and a look at pool1d/chunk_scores).
//
//   bench_window_scores [reps]      (KVSQ_THREADS, KVSQ_NO_SIMD=1 as usual)
//
// Rooflines measured first, on this machine:
//  - FMA peak (best of 7, before and after the kernels: the machine may be
//    shared): every pool thread runs a register-resident loop of 12
//    independent 8-lane FMA chains (AVX2; 16 flops per FMA instruction);
//  - copy bandwidth: every thread memcpy's its part of a 128 MiB buffer.
// Then per case the median wall time of `reps` calls on fresh random inputs,
// GFLOP/s with flops = 2 * Hq * D * (number of unmasked (row, key) pairs)
// (QK only: 2 * Hq * w * L * D for w << L, Hq * D * L * (L + 1) for w = L),
// the share of the measured FMA peak, and GB/s of compulsory traffic (the
// window rows of q, k and out once).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/threadpool.h"
#include "cpu/kernels.h"

using namespace kvsq;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__attribute__((target("avx2,fma"), noinline)) float fma_loop(int64_t iters, float seed) {
  // Twelve named chains (not an array) so they stay in registers; FMA latency
  // x throughput needs at least 8 in flight.
  __m256 a0 = _mm256_set1_ps(seed), a1 = _mm256_set1_ps(seed + 1), a2 = _mm256_set1_ps(seed + 2);
  __m256 a3 = _mm256_set1_ps(seed + 3), a4 = _mm256_set1_ps(seed + 4), a5 = _mm256_set1_ps(seed + 5);
  __m256 a6 = _mm256_set1_ps(seed + 6), a7 = _mm256_set1_ps(seed + 7), a8 = _mm256_set1_ps(seed + 8);
  __m256 a9 = _mm256_set1_ps(seed + 9), a10 = _mm256_set1_ps(seed + 10), a11 = _mm256_set1_ps(seed + 11);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    a0 = _mm256_fmadd_ps(a0, m, c);
    a1 = _mm256_fmadd_ps(a1, m, c);
    a2 = _mm256_fmadd_ps(a2, m, c);
    a3 = _mm256_fmadd_ps(a3, m, c);
    a4 = _mm256_fmadd_ps(a4, m, c);
    a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c);
    a7 = _mm256_fmadd_ps(a7, m, c);
    a8 = _mm256_fmadd_ps(a8, m, c);
    a9 = _mm256_fmadd_ps(a9, m, c);
    a10 = _mm256_fmadd_ps(a10, m, c);
    a11 = _mm256_fmadd_ps(a11, m, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float o[8];
  _mm256_storeu_ps(o, s);
  return o[0];
}

double fma_peak_gflops() {
  if (!cpu_features().simd()) return 0.0;
  const int T = pool_threads();
  const int64_t iters = 10'000'000;
  std::vector<float> sink(T);
  double best = 0.0;
  for (int rep = 0; rep < 7; ++rep) {  // best of 7: the machine may be shared
    const double t0 = now_s();
    parallel_for(T, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) sink[i] = fma_loop(iters, float(i));
    });
    const double dt = now_s() - t0;
    best = std::max(best, double(T) * iters * 12 * 16 / dt * 1e-9);
  }
  return best;
}

double copy_gbs() {
  const size_t n = size_t(128) << 20;
  std::vector<char> src(n, 1), dst(n, 0);
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = now_s();
    parallel_for(int64_t(n), [&](int64_t b, int64_t e, int) { std::memcpy(&dst[b], &src[b], size_t(e - b)); },
                 1 << 20);
    const double dt = now_s() - t0;
    best = std::max(best, 2.0 * n / dt * 1e-9);  // read + write
  }
  return best;
}

struct Case {
  const char* name;
  int Hq, Hkv, D, L, w;
  DType dt;
};

bool run(const Case& c, int reps, double* ms, double* gflops, double* gbs) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t esz = dtype_size(c.dt);
  const size_t nq = size_t(c.Hq) * c.w * c.D, nk = size_t(c.Hkv) * c.L * c.D;
  std::vector<float> qf(nq), kf(nk);
  for (auto& x : qf) x = nd(rng);
  for (auto& x : kf) x = nd(rng);
  std::vector<char> q(nq * esz), k(nk * esz);
  convert_from_f32(c.dt, qf.data(), q.data(), nq);
  convert_from_f32(c.dt, kf.data(), k.data(), nk);
  std::vector<float> out(size_t(c.Hkv) * c.L);
  WindowScoresArgs a;
  a.num_q_heads = c.Hq;
  a.num_kv_heads = c.Hkv;
  a.head_dim = c.D;
  a.seq_len = c.L;
  a.window = c.w;
  a.q_rows = c.w;
  a.dtype = c.dt;
  a.scale = 1.f / std::sqrt(float(c.D));
  a.q = q.data();
  a.k = k.data();
  a.out = out.data();
  std::vector<double> times;
  if (cpu_window_scores(a) != Status::Ok) {  // warm-up (pages, thread pool)
    std::printf("%s: kernel failed\n", c.name);
    return false;
  }
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    cpu_window_scores(a);
    times.push_back(now_s() - t0);
  }
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  // unmasked (row, key) pairs per query head: sum_i (L - w + i + 1)
  const double pairs = double(c.w) * (double(c.L) - c.w) + double(c.w) * (c.w + 1) / 2.0;
  const double flops = 2.0 * c.Hq * c.D * pairs;
  const double bytes = double(nq + nk) * esz + double(out.size()) * 4;
  *ms = t * 1e3;
  *gflops = flops / t * 1e-9;
  *gbs = bytes / t * 1e-9;
  return true;
}

void run_pool_chunk() {
  const int rows = 8, n = 32768 - 32;
  std::vector<float> in(size_t(rows) * 32768), out(size_t(rows) * n), cout_(n / 10 + 1);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> ud(0.f, 1.f);
  for (auto& x : in) x = ud(rng);
  for (PoolMode mode : {PoolMode::Max, PoolMode::Avg}) {
    Pool1dArgs p;
    p.rows = rows;
    p.n = n;
    p.in_stride = 32768;
    p.kernel = 7;
    p.mode = mode;
    p.in = in.data();
    p.out = out.data();
    std::vector<double> ts;
    for (int r = 0; r < 21; ++r) {
      const double t0 = now_s();
      cpu_pool1d(p);
      ts.push_back(now_s() - t0);
    }
    std::sort(ts.begin(), ts.end());
    std::printf("pool1d %s k 7, 8 x 32736             median %8.3f ms  %6.2f GB/s\n",
                mode == PoolMode::Max ? "max" : "avg", ts[10] * 1e3, 2.0 * rows * n * 4 / ts[10] * 1e-9);
  }
  ChunkScoresArgs c;
  c.rows = rows;
  c.n = n;
  c.in_stride = 32768;
  c.chunk = 10;
  c.in = in.data();
  c.out = cout_.data();
  std::vector<double> ts;
  for (int r = 0; r < 21; ++r) {
    const double t0 = now_s();
    cpu_chunk_scores(c);
    ts.push_back(now_s() - t0);
  }
  std::sort(ts.begin(), ts.end());
  std::printf("chunk_scores chunk 10, 8 x 32736     median %8.3f ms  %6.2f GB/s\n", ts[10] * 1e3,
              double(rows) * n * 4 / ts[10] * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 7;
  std::printf("threads %d, simd %s\n", pool_threads(), cpu_features().simd() ? "avx2+fma+f16c" : "portable");
  double peak = fma_peak_gflops();
  std::printf("measured FMA peak (AVX2, %d threads): %.1f GFLOP/s; copy bandwidth: %.1f GB/s\n", pool_threads(),
              peak, copy_gbs());
  // Measured again after the kernels; percentages use the larger figure.
  const Case cases[] = {
      {"window L32K w32 Hq32 Hkv8 D128", 32, 8, 128, 32768, 32, DType::F16},
      {"window L32K w32 Hq32 Hkv8 D128", 32, 8, 128, 32768, 32, DType::F32},
      {"window L32K w32 Hq32 Hkv8 D128", 32, 8, 128, 32768, 32, DType::BF16},
      {"h2o L4096 w=L Hq32 Hkv8 D128", 32, 8, 128, 4096, 4096, DType::F16},
  };
  struct Row {
    const Case* c;
    double ms, gflops, gbs;
  };
  std::vector<Row> rows;
  for (const Case& c : cases) {
    double ms, gf, gbs;
    if (run(c, c.w == c.L ? std::max(1, reps / 2) : reps, &ms, &gf, &gbs)) rows.push_back({&c, ms, gf, gbs});
  }
  peak = std::max(peak, fma_peak_gflops());
  std::printf("FMA peak (best of before/after): %.1f GFLOP/s\n", peak);
  for (const Row& r : rows)
    std::printf("%-34s %-4s  median %8.2f ms  %7.1f GFLOP/s  %5.1f%% of FMA peak  %6.2f GB/s\n", r.c->name,
                dtype_name(r.c->dt), r.ms, r.gflops, peak > 0 ? 100.0 * r.gflops / peak : 0.0, r.gbs);
  run_pool_chunk();
  return 0;
}
