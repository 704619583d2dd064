// Micro-benchmark of cpu_decode_attention against the machine's copy bandwidth.
//
// Roofline: decode attention must read every K and V byte of the attended
// slots once, so the figure of merit is K+V bytes / time, compared with a
// 2-thread (pool) copy of a 256 MB buffer measured in the same run (read +
// write bytes counted). Shapes: the target (1 sequence, Hq 32, Hkv 8, D 128,
// P 16, 32K context: 134 MB of f16 K+V, beyond the L3) and a smaller one
// (4K context, 16 MB: partly cache-resident, so not a DRAM figure), for f16,
// f32 and bf16 K/V, plus the target with its pages in pool order, with H2O
// score accumulation and with a Quest subset. Pages are shuffled in the pool
// as a real cache's would be (each 4 KiB f16 page is then a TLB miss and a
// fresh hardware-prefetch stream), so a read-only pass over shuffled 4 KiB
// pages is printed too: the copy loop is the target's yardstick, the shuffled
// read a practical ceiling for this access pattern.
//
//   bench_decode_attention [runs=20] [only: f16|f32|bf16 at 32K, for profiling]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/threadpool.h"
#include "cpu/kernels.h"

using namespace kvsq;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <class F>
double median_ms(int runs, F&& f) {
  f();  // warm-up (page faults, pool wake)
  // KVSQ_BENCH_COLD=1: 64 MB written between runs, so every run starts with
  // cold caches, as a decode step does after the model's other layers ran.
  static const bool cold = [] {
    const char* e = std::getenv("KVSQ_BENCH_COLD");
    return e && e[0] == '1';
  }();
  static std::vector<char> junk(cold ? size_t(64) << 20 : 0);
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    for (size_t j = 0; j < junk.size(); j += 64) junk[j]++;
    const double t0 = now_ms();
    f();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// GB/s (read + write) of a 256 MB copy split over the pool: a plain 32-byte-step loop and memcpy.
void copy_bandwidth(int runs, double* loop_gbs, double* memcpy_gbs) {
  const size_t n = size_t(256) << 20;
  std::vector<char> src(n), dst(n);
  for (size_t i = 0; i < n; i += 4096) src[i] = char(i);
  std::memset(dst.data(), 1, n);
  const double ml = median_ms(runs, [&] {
    parallel_for(pool_threads(), [&](int64_t b, int64_t e, int) {
      const size_t lo = n * b / pool_threads(), hi = n * e / pool_threads();
      const uint64_t* s = reinterpret_cast<const uint64_t*>(src.data() + lo);
      uint64_t* d = reinterpret_cast<uint64_t*>(dst.data() + lo);
      const size_t words = (hi - lo) / 8;
      for (size_t i = 0; i < words; i += 4) {
        d[i] = s[i];
        d[i + 1] = s[i + 1];
        d[i + 2] = s[i + 2];
        d[i + 3] = s[i + 3];
      }
    });
  });
  const double mm = median_ms(runs, [&] {
    parallel_for(pool_threads(), [&](int64_t b, int64_t e, int) {
      const size_t lo = n * b / pool_threads(), hi = n * e / pool_threads();
      std::memcpy(dst.data() + lo, src.data() + lo, hi - lo);
    });
  });
  *loop_gbs = 2.0 * n / (ml * 1e6);
  *memcpy_gbs = 2.0 * n / (mm * 1e6);
}

// GB/s of a read-only pass over 128 MB split over the pool, in 4 KiB pages
// taken in order or shuffled (as the K/V pool's pages are), each page's lines
// prefetched one page ahead: the ceiling for a kernel that only reads.
double read_bandwidth(int runs, bool shuffled) {
  const size_t n = size_t(128) << 20, pg = 4096, np = n / pg;
  std::vector<char> buf(n + pg);
  char* base = buf.data() + (pg - reinterpret_cast<uintptr_t>(buf.data()) % pg) % pg;
  std::memset(base, 1, n);
  std::vector<int32_t> order(np);
  std::iota(order.begin(), order.end(), 0);
  if (shuffled) std::shuffle(order.begin(), order.end(), std::mt19937_64(3));
  volatile uint64_t sink = 0;
  const double ms = median_ms(runs, [&] {
    parallel_for(pool_threads(), [&](int64_t b, int64_t e, int) {
      const size_t lo = np * b / pool_threads(), hi = np * e / pool_threads();
      uint64_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
      for (size_t i = lo; i < hi; ++i) {
        const uint64_t* s = reinterpret_cast<const uint64_t*>(base + size_t(order[i]) * pg);
        const char* nx = i + 1 < hi ? base + size_t(order[i + 1]) * pg : nullptr;
        for (size_t w = 0; w < pg / 8; w += 8) {
          if (nx) __builtin_prefetch(nx + w * 8);
          acc0 += s[w] + s[w + 4];
          acc1 += s[w + 1] + s[w + 5];
          acc2 += s[w + 2] + s[w + 6];
          acc3 += s[w + 3] + s[w + 7];
        }
      }
      sink = sink + acc0 + acc1 + acc2 + acc3;
    });
  });
  return double(n) / (ms * 1e6);
}

struct Setup {
  int Hq, Hkv, D, P, len;
  DType kvdt;
  int64_t num_pages;
  std::vector<uint8_t> k, v;
  std::vector<uint16_t> q, o;
  std::vector<int32_t> indptr, ids, kv_len, sel_indptr, sel_pages, shuffled_ids;
  std::vector<float> lse, score, before, after;  // before/after: the cache's eviction view and undo record

  Setup(int Hq_, int Hkv_, int D_, int P_, int len_, DType dt) : Hq(Hq_), Hkv(Hkv_), D(D_), P(P_), len(len_), kvdt(dt) {
    std::mt19937_64 rng(42);
    const int np = (len + P - 1) / P;
    num_pages = int64_t(np) * Hkv;
    std::vector<int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    indptr.push_back(0);
    for (int j = 0; j < Hkv; ++j) {
      for (int p = 0; p < np; ++p) ids.push_back(perm[int64_t(j) * np + p]);
      indptr.push_back(int32_t(ids.size()));
      kv_len.push_back(len);
    }
    shuffled_ids = ids;
    const size_t elems = size_t(num_pages) * P * D;
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    k.resize(elems * dtype_size(dt));
    v.resize(elems * dtype_size(dt));
    std::vector<float> tmp(elems);
    uint64_t x = rng();  // a cheap generator for the bulk: mt19937 would dominate the run
    for (auto* buf : {&k, &v}) {
      for (auto& f : tmp) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        f = float(int32_t(x >> 32)) * (1.f / 2147483648.f);
      }
      convert_from_f32(dt, tmp.data(), buf->data(), elems);
    }
    q.resize(size_t(Hq) * D);
    for (auto& x : q) x = f32_to_f16(u(rng));
    o.resize(q.size());
    lse.resize(Hq);
    score.assign(size_t(num_pages) * P, 0.f);
  }
  // Page ids in pool order (list j holds pages j*np .. (j+1)*np - 1), or back to the shuffled ones.
  // The same values sit at other addresses; the kernel's result is unchanged in kind.
  void sequential_pages() { std::iota(ids.begin(), ids.end(), 0); }
  void shuffled_pages() { ids = shuffled_ids; }
  // Quest-like subset: every query head keeps `keep` of the pages (the same random pick per group,
  // with one differing page per head), always including the last.
  void make_subset(int keep, bool same = false) {
    std::mt19937_64 rng(7);
    const int np = (len + P - 1) / P;
    const int g = Hq / Hkv;
    sel_indptr.assign(1, 0);
    sel_pages.clear();
    for (int j = 0; j < Hkv; ++j) {
      std::vector<int> all(np - 1);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      for (int h = 0; h < g; ++h) {
        std::vector<int> s(all.begin(), all.begin() + keep - 2);
        s.push_back(all[keep - 2 + (same ? 0 : h)]);
        s.push_back(np - 1);
        std::sort(s.begin(), s.end());
        sel_pages.insert(sel_pages.end(), s.begin(), s.end());
        sel_indptr.push_back(int32_t(sel_pages.size()));
      }
    }
  }
  DecodeAttnArgs args(bool with_score, bool with_subset) {
    DecodeAttnArgs a;
    a.batch = 1;
    a.num_q_heads = Hq;
    a.num_kv_heads = Hkv;
    a.head_dim = D;
    a.page_size = P;
    a.q_dtype = DType::F16;
    a.kv_dtype = kvdt;
    a.scale = 1.f / std::sqrt(float(D));
    a.q = q.data();
    a.o = o.data();
    a.k_pool = k.data();
    a.v_pool = v.data();
    a.num_pages = num_pages;
    a.page_indptr = indptr.data();
    a.page_ids = ids.data();
    a.kv_len = kv_len.data();
    a.lse = lse.data();
    if (with_score) {
      a.score_pool = score.data();
      before.resize(size_t(Hkv) * len);
      after.resize(size_t(Hkv) * len);
      a.score_before = before.data();
      a.score_after = after.data();
    }
    if (with_subset) {
      a.sel_indptr = sel_indptr.data();
      a.sel_pages = sel_pages.data();
    }
    return a;
  }
};

void report(const char* label, int runs, Setup& s, bool score, bool subset, double copy_gbs, int64_t slots_read) {
  DecodeAttnArgs a = s.args(score, subset);
  Status st = Status::Ok;
  const double ms = median_ms(runs, [&] { st = cpu_decode_attention(a); });
  if (st != Status::Ok) {
    std::printf("%-44s status %s\n", label, status_name(st));
    return;
  }
  const double bytes = 2.0 * double(slots_read) * s.D * dtype_size(s.kvdt);
  const double gbs = bytes / (ms * 1e6);
  std::printf("%-44s %8.3f ms  %7.1f MB  %6.2f GB/s  %5.1f%% of copy\n", label, ms, bytes / 1e6, gbs,
              100.0 * gbs / copy_gbs);
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  const char* only = argc > 2 ? argv[2] : nullptr;
  // The kernel takes its AVX-512 tiles where the CPU has AVX-512F, unless KVSQ_NO_AVX512=1.
  const char* no512 = std::getenv("KVSQ_NO_AVX512");
  const bool avx512 = __builtin_cpu_supports("avx512f") && !(no512 && no512[0] == '1');
  std::printf("decode attention bench: %d pool threads, SIMD %s, median of %d runs\n", pool_threads(),
              !cpu_features().simd() ? "off (portable)" : avx512 ? "avx512f (+avx2 softmax)" : "avx2+fma+f16c", runs);
  double loop_gbs, memcpy_gbs;
  copy_bandwidth(runs, &loop_gbs, &memcpy_gbs);
  std::printf("copy 256 MB over the pool (read+write): loop %.1f GB/s, memcpy %.1f GB/s; %% below is of the loop\n",
              loop_gbs, memcpy_gbs);
  std::printf("read-only 128 MB over the pool, 4 KiB pages prefetched a page ahead: in order %.1f GB/s, shuffled %.1f GB/s\n",
              read_bandwidth(runs, false), read_bandwidth(runs, true));
  struct Shape { int len; DType dt; };
  for (Shape sh : {Shape{32768, DType::F16}, Shape{32768, DType::F32}, Shape{32768, DType::BF16},
                   Shape{4096, DType::F16}, Shape{4096, DType::F32}, Shape{4096, DType::BF16},
                   Shape{2048, DType::F16}}) {
    if (only && (sh.len != 32768 || std::strcmp(only, dtype_name(sh.dt)) != 0)) continue;
    Setup s(32, 8, 128, 16, sh.len, sh.dt);
    char label[96];
    std::snprintf(label, sizeof label, "Hq32 Hkv8 D128 P16 L%-5d %-4s", sh.len, dtype_name(sh.dt));
    report(label, runs, s, false, false, loop_gbs, int64_t(8) * sh.len);
    if (sh.len < 32768 && sh.dt == DType::F16 && !only) {
      // H2O's decode size: the fixed cost of the score pass shows here.
      std::snprintf(label, sizeof label, "  + H2O score accumulation (mean)");
      report(label, runs, s, true, false, loop_gbs, int64_t(8) * sh.len);
    }
    if (sh.len == 32768 && sh.dt == DType::F16 && !only) {
      std::snprintf(label, sizeof label, "  pages in order (unshuffled pool)");
      s.sequential_pages();
      report(label, runs, s, false, false, loop_gbs, int64_t(8) * sh.len);
      s.shuffled_pages();
      std::snprintf(label, sizeof label, "  + H2O score accumulation (mean)");
      report(label, runs, s, true, false, loop_gbs, int64_t(8) * sh.len);
      // Quest budget 4096 tokens = 256 pages per head; the union over a group is a bit larger.
      s.make_subset(256);
      int64_t union_slots = 0;
      {
        const int g = 4, np = (sh.len + 15) / 16;
        for (int j = 0; j < 8; ++j) {
          std::vector<char> in(np, 0);
          for (int h = 0; h < g; ++h)
            for (int i = s.sel_indptr[j * g + h]; i < s.sel_indptr[j * g + h + 1]; ++i) in[s.sel_pages[i]] = 1;
          for (int p = 0; p < np; ++p) union_slots += in[p] ? std::min(16, sh.len - p * 16) : 0;
        }
      }
      std::snprintf(label, sizeof label, "  Quest subset, 256 pages/head (union read)");
      report(label, runs, s, false, true, loop_gbs, union_slots);
      // Quest at budget 2048 with share: 128 pages per KV head, the group's heads alike.
      s.make_subset(128, true);
      std::snprintf(label, sizeof label, "  Quest share, 128 pages/KV head");
      report(label, runs, s, false, true, loop_gbs, int64_t(8) * 128 * 16);
    }
  }
  return 0;
}
