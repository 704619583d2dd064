// Micro-benchmark: Quest page bounds, append and gather on the CPU.
//
//   ./build-native/bench_quest_append [iterations]
//
// quest bounds: 32K context (2048 pages of 16 per list), Hq 32, Hkv 8, D 128,
//   f16 q/meta, physical pages shuffled; per-head and shared; SIMD and portable;
//   B 1 (8 MB of meta, may sit in the last-level cache) and B 4 (32 MB).
//   GB/s = meta bytes read (pages 0 .. n-2 of every list) / median time.
// append: one decode token for 8 KV heads (8 rows, D 128, f16, meta + score).
// gather: 1024 rows x 8 heads from a contiguous [8, 4096, 128] f16 tensor into
//   shuffled slots; GB/s counts K and V bytes read + written. Then page_meta
//   over the 512 filled pages.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/threadpool.h"
#include "cpu/kernels.h"

using namespace kvsq;

namespace {

std::mt19937_64 rng(12345);

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
double median_ms(int iters, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < 3; ++i) f();  // warm-up
  for (int i = 0; i < iters; ++i) {
    double a = now_ms();
    f();
    t.push_back(now_ms() - a);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<uint16_t> rand_f16(size_t n) {
  std::normal_distribution<float> nd;
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_f16(nd(rng));
  return v;
}

void bench_quest(int B, int iters) {
  const int Hq = 32, Hkv = 8, D = 128, P = 16, ctx = 32768, n = ctx / P;
  const int L = B * Hkv;
  const int64_t num_pages = int64_t(L) * n;
  std::vector<int32_t> ids(num_pages), indptr(L + 1), kv_len(L, ctx);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (int l = 0; l <= L; ++l) indptr[l] = l * n;
  // meta: kmin <= kmax per channel
  std::vector<uint16_t> meta = rand_f16(size_t(num_pages) * 2 * D);
  for (int64_t p = 0; p < num_pages; ++p)
    for (int d = 0; d < D; ++d) {
      uint16_t& a = meta[size_t(p) * 2 * D + d];
      uint16_t& b = meta[size_t(p) * 2 * D + D + d];
      if (f16_to_f32(a) > f16_to_f32(b)) std::swap(a, b);
    }
  std::vector<uint16_t> q = rand_f16(size_t(B) * Hq * D);
  const int stride = n - 1;
  std::vector<float> out(size_t(B) * Hq * stride);
  const double bytes = double(L) * (n - 1) * 2 * D * 2;
  for (int simd : {1, 0}) {
    if (simd && !cpu_features().simd()) continue;
    for (bool share : {false, true}) {
      QuestBoundsArgs a;
      a.batch = B, a.num_q_heads = Hq, a.num_kv_heads = Hkv, a.head_dim = D, a.page_size = P;
      a.q_dtype = DType::F16, a.kv_dtype = DType::F16, a.q = q.data(), a.meta_pool = meta.data();
      a.num_pages = num_pages, a.page_indptr = indptr.data(), a.page_ids = ids.data(), a.kv_len = kv_len.data();
      a.share = share, a.out_stride = stride, a.out = out.data();
      cpu_features_force(simd);
      Status st = Status::Ok;
      const double ms = median_ms(iters, [&] { st = cpu_quest_bounds(a); });
      cpu_features_force(-1);
      if (st != Status::Ok) std::printf("  error %s\n", status_name(st));
      std::printf("quest_bounds B=%d ctx=%d Hq=%d Hkv=%d D=%d f16 %-9s %-8s : %8.3f ms  %6.2f GB/s meta (%.1f MB)\n", B,
                  ctx, Hq, Hkv, D, share ? "share" : "per-head", simd ? "simd" : "portable", ms, bytes / ms / 1e6,
                  bytes / 1e6);
    }
  }
}

void bench_append(int iters) {
  const int Hkv = 8, D = 128, P = 16;
  const int64_t num_pages = 4096;
  std::vector<uint16_t> kp(size_t(num_pages) * P * D), vp(kp.size()), meta(size_t(num_pages) * 2 * D);
  std::vector<float> score(size_t(num_pages) * P);
  std::vector<uint16_t> kn = rand_f16(size_t(Hkv) * D), vn = rand_f16(size_t(Hkv) * D);
  std::vector<int64_t> slots(Hkv);
  for (int j = 0; j < Hkv; ++j) slots[j] = int64_t(j * 97 + 5) * P + 3;  // mid-page: widen path
  AppendArgs a;
  a.count = Hkv, a.head_dim = D, a.page_size = P, a.dtype = DType::F16, a.k_new = kn.data(), a.v_new = vn.data();
  a.dst_slot = slots.data(), a.num_pages = num_pages, a.k_pool = kp.data(), a.v_pool = vp.data();
  a.meta_pool = meta.data(), a.score_pool = score.data();
  const int reps = 1000;
  Status st = Status::Ok;
  const double ms = median_ms(iters, [&] {
    for (int r = 0; r < reps; ++r) st = cpu_append(a);
  });
  if (st != Status::Ok) std::printf("  error %s\n", status_name(st));
  std::printf("append 1 token x %d KV heads, D=%d f16, meta+score  : %8.3f us/call\n", Hkv, D, ms * 1000 / reps);
}

void bench_gather(int iters) {
  const int Hkv = 8, D = 128, P = 16, Lsrc = 4096, rows_per_head = 1024;
  const int count = Hkv * rows_per_head;
  const int64_t num_pages = 8192;
  std::vector<uint16_t> ks = rand_f16(size_t(Hkv) * Lsrc * D), vs = rand_f16(ks.size());
  std::vector<uint16_t> kp(size_t(num_pages) * P * D), vp(kp.size()), meta(size_t(num_pages) * 2 * D);
  std::vector<int64_t> src(count), dst(count);
  std::vector<int32_t> pages;
  for (int j = 0; j < Hkv; ++j) {
    std::vector<int> keep(Lsrc);
    std::iota(keep.begin(), keep.end(), 0);
    std::shuffle(keep.begin(), keep.end(), rng);
    std::sort(keep.begin(), keep.begin() + rows_per_head);
    for (int i = 0; i < rows_per_head; ++i) src[size_t(j) * rows_per_head + i] = int64_t(j) * Lsrc + keep[i];
  }
  std::vector<int32_t> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int i = 0; i < count; ++i) dst[i] = int64_t(perm[i / P]) * P + i % P;
  for (int i = 0; i < count / P; ++i) pages.push_back(perm[i]);
  GatherArgs g;
  g.count = count, g.head_dim = D, g.dtype = DType::F16, g.k_src = ks.data(), g.v_src = vs.data();
  g.src_rows = int64_t(Hkv) * Lsrc, g.src_row = src.data(), g.num_pages = num_pages, g.page_size = P;
  g.k_pool = kp.data(), g.v_pool = vp.data(), g.dst_slot = dst.data();
  Status st = Status::Ok;
  double ms = median_ms(iters, [&] { st = cpu_gather(g); });
  if (st != Status::Ok) std::printf("  error %s\n", status_name(st));
  const double bytes = double(count) * D * 2 * 2 * 2;  // K and V, read + write
  std::printf("gather %d rows x %d heads, D=%d f16                   : %8.3f ms  %6.2f GB/s (r+w)\n", rows_per_head, Hkv, D,
              ms, bytes / ms / 1e6);
  std::vector<int32_t> fill(pages.size(), P);
  PageMetaArgs m;
  m.count = int32_t(pages.size()), m.head_dim = D, m.page_size = P, m.dtype = DType::F16, m.num_pages = num_pages;
  m.k_pool = kp.data(), m.meta_pool = meta.data(), m.page_ids = pages.data(), m.fill = fill.data();
  ms = median_ms(iters, [&] { st = cpu_page_meta(m); });
  if (st != Status::Ok) std::printf("  error %s\n", status_name(st));
  std::printf("page_meta %zu full pages, D=%d f16                   : %8.3f ms  %6.2f GB/s K read\n", pages.size(), D, ms,
              double(pages.size()) * P * D * 2 / ms / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::max(1, std::atoi(argv[1])) : 30;
  std::printf("threads %d, simd %s, median of %d\n", pool_threads(), cpu_features().simd() ? "avx2+fma+f16c" : "none",
              iters);
  bench_quest(1, iters);
  bench_quest(4, iters);
  bench_append(iters);
  bench_gather(iters);
  return 0;
}
