// cpu_append, cpu_gather and cpu_page_meta against plain references (bit-exact:
// these kernels only move and select stored values), SIMD and portable paths,
// every float dtype; invalid arguments leave every buffer untouched; and the
// Quest property: after appending keys token by token into shuffled pages of a
// ragged batch, the fused metadata equal cpu_page_meta's recomputation bit for
// bit, and q . k <= u[page] for every key of every page that gets a bound (the
// bound is an upper bound), up to the bound's f32 rounding
// (D + 2) * 2^-24 * sum_d |q_d| max(|kmin_d|, |kmax_d|).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "cpu/kernels.h"
#include "harness.h"

using namespace kvsq;
using kvsqtest::normal;
using kvsqtest::randint;

namespace {

const DType kFloat[3] = {DType::F32, DType::F16, DType::BF16};

// Raw element access for any float dtype.
struct Arr {
  DType t = DType::F32;
  std::vector<uint8_t> b;
  Arr() = default;
  Arr(DType t_, size_t n) : t(t_), b(n * dtype_size(t_)) {}
  size_t esz() const { return dtype_size(t); }
  void* data() { return b.data(); }
  void set(size_t i, float v) {
    if (t == DType::F32) std::memcpy(&b[i * 4], &v, 4);
    else {
      uint16_t h = t == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  double get(size_t i) const {
    if (t == DType::F32) {
      float f;
      std::memcpy(&f, &b[i * 4], 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, &b[i * 2], 2);
    return t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
  void randomize() {
    for (size_t i = 0; i < b.size() / esz(); ++i) set(i, normal());
  }
  // Copy element i of src (same dtype) into element j.
  void put(size_t j, const Arr& src, size_t i) { std::memcpy(&b[j * esz()], &src.b[i * esz()], esz()); }
};

std::vector<int64_t> distinct_slots(int64_t nslots, int count) {
  std::vector<int64_t> s(nslots);
  std::iota(s.begin(), s.end(), 0);
  std::shuffle(s.begin(), s.end(), kvsqtest::rng());
  s.resize(count);
  return s;
}

// Reference meta update: the same rule as the kernel, in doubles.
void ref_widen(Arr& meta, size_t page, int D, const Arr& key, size_t krow) {
  for (int d = 0; d < D; ++d) {
    const double x = key.get(krow * D + d);
    if (x < meta.get(page * 2 * D + d)) meta.put(page * 2 * D + d, key, krow * D + d);
    if (x > meta.get(page * 2 * D + D + d)) meta.put(page * 2 * D + D + d, key, krow * D + d);
  }
}
void ref_reset(Arr& meta, size_t page, int D, const Arr& key, size_t krow) {
  for (int d = 0; d < D; ++d) {
    meta.put(page * 2 * D + d, key, krow * D + d);
    meta.put(page * 2 * D + D + d, key, krow * D + d);
  }
}

}  // namespace

KVSQ_TEST(append_vs_reference) {
  for (DType t : kFloat)
    for (int D : {16, 40, 128, 7})
      for (int P : {1, 7, 16})
        for (int count : {1, 8, 37, 3000}) {
          const int64_t num_pages = (count + P - 1) / P + randint(1, 40);
          const int64_t nslots = num_pages * P;
          Arr kp(t, nslots * D), vp(t, nslots * D), meta(t, num_pages * 2 * D), kn(t, size_t(count) * D),
              vn(t, size_t(count) * D);
          kp.randomize(), vp.randomize(), meta.randomize(), kn.randomize(), vn.randomize();
          std::vector<float> score(nslots);
          for (auto& s : score) s = 1.f + float(randint(0, 9));
          const auto slots = distinct_slots(nslots, count);
          const bool use_reset = randint(0, 1);
          std::vector<uint8_t> reset(count);
          for (auto& r : reset) r = uint8_t(randint(0, 3) == 0);
          const bool with_meta = randint(0, 4) != 0, with_score = randint(0, 1);
          // reference, rows in order
          Arr rk = kp, rv = vp, rm = meta;
          std::vector<float> rs = score;
          for (int i = 0; i < count; ++i) {
            const int64_t s = slots[i];
            for (int d = 0; d < D; ++d) {
              rk.put(size_t(s) * D + d, kn, size_t(i) * D + d);
              rv.put(size_t(s) * D + d, vn, size_t(i) * D + d);
            }
            if (with_score) rs[s] = 0.f;
            if (with_meta) {
              const bool r = use_reset ? reset[i] != 0 : s % P == 0;
              if (r) ref_reset(rm, s / P, D, kn, i);
              else ref_widen(rm, s / P, D, kn, i);
            }
          }
          for (int simd : {1, 0}) {
            Arr k2 = kp, v2 = vp, m2 = meta;
            std::vector<float> s2 = score;
            AppendArgs a;
            a.count = count, a.head_dim = D, a.page_size = P, a.dtype = t;
            a.k_new = kn.data(), a.v_new = vn.data(), a.dst_slot = slots.data();
            a.reset_meta = use_reset ? reset.data() : nullptr;
            a.num_pages = num_pages, a.k_pool = k2.data(), a.v_pool = v2.data();
            a.meta_pool = with_meta ? m2.data() : nullptr;
            a.score_pool = with_score ? s2.data() : nullptr;
            cpu_features_force(simd);
            Status st = cpu_append(a);
            cpu_features_force(-1);
            CHECK_EQ(int(st), int(Status::Ok));
            CHECK(k2.b == rk.b);
            CHECK(v2.b == rv.b);
            CHECK_MSG(m2.b == rm.b, "meta D=" << D << " P=" << P << " count=" << count << " " << dtype_name(t));
            CHECK(s2 == rs);
          }
        }
}

KVSQ_TEST(gather_vs_reference) {
  for (DType t : kFloat)
    for (int D : {16, 40, 128})
      for (int count : {1, 5, 1024, 5000})
        for (bool from_pool : {false, true}) {
          const int P = std::vector<int>{1, 7, 16}[randint(0, 2)];
          const int64_t num_pages = (2 * count + P - 1) / P + randint(1, 10);
          const int64_t nslots = num_pages * P;
          Arr kp(t, nslots * D), vp(t, nslots * D);
          kp.randomize(), vp.randomize();
          std::vector<float> score(nslots);
          for (auto& s : score) s = kvsqtest::uniform(0.f, 1.f);
          const bool with_score = randint(0, 1);
          std::vector<int64_t> src, dst;
          Arr ks, vs;
          std::vector<float> ssrc;
          int64_t src_rows;
          if (from_pool) {  // disjoint source and destination slots of one pool
            auto s = distinct_slots(nslots, 2 * count);
            src.assign(s.begin(), s.begin() + count);
            dst.assign(s.begin() + count, s.end());
            src_rows = nslots;
          } else {  // contiguous [Hkv, L, D] prefill tensor
            const int Hkv = randint(1, 4), L = randint(count / Hkv + 1, count + 50);
            src_rows = int64_t(Hkv) * L;
            ks = Arr(t, size_t(src_rows) * D), vs = Arr(t, size_t(src_rows) * D);
            ks.randomize(), vs.randomize();
            ssrc.resize(src_rows);
            for (auto& x : ssrc) x = kvsqtest::uniform(0.f, 1.f);
            for (int i = 0; i < count; ++i) src.push_back(randint(0, int(src_rows) - 1));  // repeats allowed
            dst = distinct_slots(nslots, count);
          }
          const Arr& SK = from_pool ? kp : ks;
          const Arr& SV = from_pool ? vp : vs;
          const std::vector<float>& SS = from_pool ? score : ssrc;
          Arr rk = kp, rv = vp;
          std::vector<float> rs = score;
          for (int i = 0; i < count; ++i) {
            for (int d = 0; d < D; ++d) {
              rk.put(size_t(dst[i]) * D + d, SK, size_t(src[i]) * D + d);
              rv.put(size_t(dst[i]) * D + d, SV, size_t(src[i]) * D + d);
            }
            if (with_score) rs[dst[i]] = SS[src[i]];
          }
          Arr k2 = kp, v2 = vp;
          std::vector<float> s2 = score;
          GatherArgs a;
          a.count = count, a.head_dim = D, a.dtype = t;
          a.k_src = from_pool ? k2.data() : ks.data();
          a.v_src = from_pool ? v2.data() : vs.data();
          a.src_rows = src_rows, a.src_row = src.data();
          a.score_src = with_score ? (from_pool ? s2.data() : ssrc.data()) : nullptr;
          a.num_pages = num_pages, a.page_size = P, a.k_pool = k2.data(), a.v_pool = v2.data();
          a.score_pool = with_score ? s2.data() : nullptr;
          a.dst_slot = dst.data();
          CHECK_EQ(int(cpu_gather(a)), int(Status::Ok));
          CHECK(k2.b == rk.b);
          CHECK(v2.b == rv.b);
          CHECK(s2 == rs);
        }
}

KVSQ_TEST(page_meta_vs_reference) {
  for (DType t : kFloat)
    for (int D : {16, 40, 128, 5})
      for (int P : {1, 7, 16})
        for (int count : {1, 9, 600}) {
          const int64_t num_pages = count + randint(0, 20);
          Arr kp(t, size_t(num_pages) * P * D), meta(t, size_t(num_pages) * 2 * D);
          kp.randomize(), meta.randomize();
          auto pages64 = distinct_slots(num_pages, count);
          std::vector<int32_t> pages(pages64.begin(), pages64.end()), fill(count);
          for (auto& f : fill) f = randint(1, P);
          std::vector<std::vector<uint8_t>> results;
          for (int simd : {1, 0}) {
            Arr m2 = meta;
            PageMetaArgs a;
            a.count = count, a.head_dim = D, a.page_size = P, a.dtype = t, a.num_pages = num_pages;
            a.k_pool = kp.data(), a.meta_pool = m2.data(), a.page_ids = pages.data(), a.fill = fill.data();
            cpu_features_force(simd);
            Status st = cpu_page_meta(a);
            cpu_features_force(-1);
            CHECK_EQ(int(st), int(Status::Ok));
            std::vector<bool> touched(num_pages, false);
            for (int i = 0; i < count; ++i) {
              touched[pages[i]] = true;
              for (int d = 0; d < D; ++d) {
                double lo = INFINITY, hi = -INFINITY;
                for (int r = 0; r < fill[i]; ++r) {
                  const double x = kp.get((size_t(pages[i]) * P + r) * D + d);
                  lo = std::min(lo, x), hi = std::max(hi, x);
                }
                CHECK_EQ(m2.get(size_t(pages[i]) * 2 * D + d), lo);
                CHECK_EQ(m2.get(size_t(pages[i]) * 2 * D + D + d), hi);
              }
            }
            for (int64_t p = 0; p < num_pages; ++p)  // other pages untouched
              if (!touched[p])
                CHECK(std::memcmp(&m2.b[size_t(p) * 2 * D * m2.esz()], &meta.b[size_t(p) * 2 * D * m2.esz()],
                                  2 * D * m2.esz()) == 0);
            results.push_back(m2.b);
          }
          CHECK(results[0] == results[1]);  // SIMD and portable agree bit for bit
        }
}

// Quest property: token-by-token appends into shuffled pages of a ragged batch.
KVSQ_TEST(append_meta_matches_page_meta_and_bounds_hold) {
  int combo = 0;
  for (DType t : kFloat)
    for (int D : {16, 40, 128})
      for (int P : {1, 7, 16}) {
        const int B = 2, Hkv = 2, L = B * Hkv;
        const int g = std::vector<int>{1, 2, 4, 8}[combo % 4];
        const int Hq = Hkv * g;
        const DType qt = kFloat[(combo++ / 4) % 3];
        const int lens_pool[] = {1, 17, 1000};
        std::vector<int32_t> len_b = {lens_pool[randint(0, 2)], lens_pool[randint(0, 2)]};
        std::vector<int32_t> kv_len(L), indptr(1, 0);
        for (int l = 0; l < L; ++l) {
          kv_len[l] = len_b[l / Hkv];
          indptr.push_back(indptr.back() + (kv_len[l] + P - 1) / P);
        }
        const int64_t num_pages = indptr.back() + 3;
        std::vector<int32_t> ids(num_pages);
        std::iota(ids.begin(), ids.end(), 0);
        std::shuffle(ids.begin(), ids.end(), kvsqtest::rng());
        const int64_t nslots = num_pages * P;
        Arr kp(t, nslots * D), vp(t, nslots * D), meta(t, num_pages * 2 * D);
        meta.randomize();  // garbage: the row-0 reset must clear it
        std::vector<float> score(nslots, 7.f);
        const int T = std::max(len_b[0], len_b[1]);
        for (int step = 0; step < T; ++step) {
          std::vector<int64_t> slots;
          std::vector<uint8_t> reset;
          for (int l = 0; l < L; ++l) {
            if (step >= kv_len[l]) continue;  // ragged: this sequence is done
            slots.push_back(int64_t(ids[indptr[l] + step / P]) * P + step % P);
            reset.push_back(uint8_t(step % P == 0));
          }
          const int count = int(slots.size());
          Arr kn(t, size_t(count) * D), vn(t, size_t(count) * D);
          for (int i = 0; i < count; ++i) {
            const float scale = std::ldexp(1.f, randint(-2, 2));
            for (int d = 0; d < D; ++d) kn.set(size_t(i) * D + d, normal() * scale), vn.set(size_t(i) * D + d, normal());
          }
          AppendArgs a;
          a.count = count, a.head_dim = D, a.page_size = P, a.dtype = t;
          a.k_new = kn.data(), a.v_new = vn.data(), a.dst_slot = slots.data();
          a.reset_meta = randint(0, 1) ? reset.data() : nullptr;
          a.num_pages = num_pages, a.k_pool = kp.data(), a.v_pool = vp.data(), a.meta_pool = meta.data();
          a.score_pool = score.data();
          cpu_features_force(step % 2);
          Status st = cpu_append(a);
          cpu_features_force(-1);
          CHECK_EQ(int(st), int(Status::Ok));
        }
        // 1. recomputed metadata equal the appended ones, bit for bit
        std::vector<int32_t> pm_ids, pm_fill;
        for (int l = 0; l < L; ++l)
          for (int p = 0; p < indptr[l + 1] - indptr[l]; ++p) {
            pm_ids.push_back(ids[indptr[l] + p]);
            pm_fill.push_back(std::min(P, kv_len[l] - p * P));
          }
        Arr meta2(t, num_pages * 2 * D);
        PageMetaArgs pm;
        pm.count = int32_t(pm_ids.size()), pm.head_dim = D, pm.page_size = P, pm.dtype = t;
        pm.num_pages = num_pages, pm.k_pool = kp.data(), pm.meta_pool = meta2.data();
        pm.page_ids = pm_ids.data(), pm.fill = pm_fill.data();
        CHECK_EQ(int(cpu_page_meta(pm)), int(Status::Ok));
        for (int32_t p : pm_ids)
          CHECK_MSG(std::memcmp(&meta.b[size_t(p) * 2 * D * meta.esz()], &meta2.b[size_t(p) * 2 * D * meta.esz()],
                                2 * D * meta.esz()) == 0,
                    "page " << p << " D=" << D << " P=" << P << " " << dtype_name(t));
        for (int l = 0; l < L; ++l)  // scores of written slots were zeroed
          for (int s = 0; s < kv_len[l]; ++s) CHECK(score[int64_t(ids[indptr[l] + s / P]) * P + s % P] == 0.f);
        // 2. every key's dot with q is within its page's bound
        Arr q(qt, size_t(B) * Hq * D);
        q.randomize();
        int32_t stride = 1;
        for (int l = 0; l < L; ++l) stride = std::max(stride, (kv_len[l] + P - 1) / P - 1);
        for (bool share : {false, true})
          for (int simd : {1, 0}) {
            const int rows = share ? L : B * Hq;
            std::vector<float> out(size_t(rows) * stride);
            QuestBoundsArgs qa;
            qa.batch = B, qa.num_q_heads = Hq, qa.num_kv_heads = Hkv, qa.head_dim = D, qa.page_size = P;
            qa.q_dtype = qt, qa.kv_dtype = t, qa.q = q.data(), qa.meta_pool = meta.data(), qa.num_pages = num_pages;
            qa.page_indptr = indptr.data(), qa.page_ids = ids.data(), qa.kv_len = kv_len.data();
            qa.share = share, qa.out_stride = stride, qa.out = out.data();
            cpu_features_force(simd);
            Status st = cpu_quest_bounds(qa);
            cpu_features_force(-1);
            CHECK_EQ(int(st), int(Status::Ok));
            for (int b = 0; b < B; ++b)
              for (int h = 0; h < Hq; ++h) {
                const int l = b * Hkv + h / g;
                const int n = (kv_len[l] + P - 1) / P;
                for (int p = 0; p < n - 1; ++p) {
                  const int64_t page = ids[indptr[l] + p];
                  const float u = out[size_t(share ? l : b * Hq + h) * stride + p];
                  double mag = 0;
                  for (int d = 0; d < D; ++d)
                    mag += std::fabs(q.get((size_t(b) * Hq + h) * D + d)) *
                           std::max(std::fabs(meta.get(size_t(page) * 2 * D + d)),
                                    std::fabs(meta.get(size_t(page) * 2 * D + D + d)));
                  const double tol = (D + 2) * std::ldexp(1.0, -24) * mag;
                  for (int r = 0; r < P; ++r) {
                    double dot = 0;
                    for (int d = 0; d < D; ++d)
                      dot += q.get((size_t(b) * Hq + h) * D + d) * kp.get((size_t(page) * P + r) * D + d);
                    CHECK_MSG(dot <= double(u) + tol, "bound violated: dot " << dot << " u " << u);
                  }
                }
                for (int p = std::max(0, n - 1); p < stride; ++p)
                  CHECK(std::isinf(out[size_t(share ? l : b * Hq + h) * stride + p]));
              }
          }
      }
}

KVSQ_TEST(append_gather_page_meta_invalid_untouched) {
  const DType t = DType::BF16;
  const int D = 8, P = 4;
  const int64_t num_pages = 6, nslots = num_pages * P;
  Arr kp(t, nslots * D), vp(t, nslots * D), meta(t, num_pages * 2 * D), kn(t, 3 * D), vn(t, 3 * D);
  kp.randomize(), vp.randomize(), meta.randomize(), kn.randomize(), vn.randomize();
  std::vector<float> score(nslots, 3.f);
  const Arr k0 = kp, v0 = vp, m0 = meta;
  const std::vector<float> s0 = score;
  auto untouched = [&](const char* what) {
    CHECK_MSG(kp.b == k0.b && vp.b == v0.b && meta.b == m0.b && score == s0, what << ": buffer written");
  };
  std::vector<int64_t> slots = {3, 9, 17};
  auto base_append = [&] {
    AppendArgs a;
    a.count = 3, a.head_dim = D, a.page_size = P, a.dtype = t, a.k_new = kn.data(), a.v_new = vn.data();
    a.dst_slot = slots.data(), a.num_pages = num_pages, a.k_pool = kp.data(), a.v_pool = vp.data();
    a.meta_pool = meta.data(), a.score_pool = score.data();
    return a;
  };
  auto expect_append = [&](AppendArgs a, Status want, const char* what) {
    Status got = cpu_append(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got));
    untouched(what);
  };
  AppendArgs a;
  a = base_append(); a.dtype = DType::I32; expect_append(a, Status::DType, "append i32");
  a = base_append(); a.count = 0; expect_append(a, Status::Shape, "append count 0");
  a = base_append(); a.head_dim = 0; expect_append(a, Status::Shape, "append D 0");
  a = base_append(); a.page_size = -2; expect_append(a, Status::Shape, "append P < 0");
  a = base_append(); a.num_pages = 0; expect_append(a, Status::Shape, "append no pages");
  a = base_append(); a.k_new = nullptr; expect_append(a, Status::Shape, "append null k_new");
  a = base_append(); a.v_pool = nullptr; expect_append(a, Status::Shape, "append null v_pool");
  a = base_append(); a.dst_slot = nullptr; expect_append(a, Status::Shape, "append null slots");
  slots = {3, nslots, 17}; a = base_append(); expect_append(a, Status::Range, "append slot >= end");
  slots = {-1, 9, 17}; a = base_append(); expect_append(a, Status::Range, "append slot < 0");
  slots = {3, 9, 3}; a = base_append(); expect_append(a, Status::Range, "append duplicate slot");
  {  // duplicates in a large batch go through the sorting path
    const int64_t bp = 600;
    Arr bkp(t, bp * P * D), bvp(t, bp * P * D), bk(t, 2000 * D);
    bkp.randomize(), bk.randomize();
    const Arr bk0 = bkp;
    std::vector<int64_t> big(2000);
    std::iota(big.begin(), big.end(), 0);
    big[1500] = 77;
    AppendArgs b;
    b.count = 2000, b.head_dim = D, b.page_size = P, b.dtype = t, b.k_new = bk.data(), b.v_new = bk.data();
    b.dst_slot = big.data(), b.num_pages = bp, b.k_pool = bkp.data(), b.v_pool = bvp.data();
    CHECK(cpu_append(b) == Status::Range);
    CHECK(bkp.b == bk0.b);
    big[1500] = 1500;
    CHECK(cpu_append(b) == Status::Ok);
  }
  slots = {3, 9, 17};
  CHECK(cpu_append(base_append()) == Status::Ok);  // the base case is valid
  kp = k0, vp = v0, meta = m0, score = s0;

  // gather from a contiguous source of 5 rows
  Arr ks(t, 5 * D), vs(t, 5 * D);
  ks.randomize(), vs.randomize();
  std::vector<float> ssrc(5, 0.5f);
  std::vector<int64_t> src = {0, 4, 2}, dst = {1, 2, 23};
  auto base_gather = [&] {
    GatherArgs g;
    g.count = 3, g.head_dim = D, g.dtype = t, g.k_src = ks.data(), g.v_src = vs.data(), g.src_rows = 5;
    g.src_row = src.data(), g.score_src = ssrc.data(), g.num_pages = num_pages, g.page_size = P;
    g.k_pool = kp.data(), g.v_pool = vp.data(), g.score_pool = score.data(), g.dst_slot = dst.data();
    return g;
  };
  auto expect_gather = [&](GatherArgs g, Status want, const char* what) {
    Status got = cpu_gather(g);
    CHECK_MSG(got == want, what << ": got " << status_name(got));
    untouched(what);
  };
  GatherArgs g;
  g = base_gather(); g.dtype = DType::I32; expect_gather(g, Status::DType, "gather i32");
  g = base_gather(); g.count = -1; expect_gather(g, Status::Shape, "gather count < 0");
  g = base_gather(); g.src_rows = 0; expect_gather(g, Status::Shape, "gather no source rows");
  g = base_gather(); g.k_src = nullptr; expect_gather(g, Status::Shape, "gather null k_src");
  g = base_gather(); g.score_pool = nullptr; expect_gather(g, Status::Shape, "gather score_src without pool");
  g = base_gather(); g.score_src = nullptr; expect_gather(g, Status::Shape, "gather score_pool without src");
  src = {0, 5, 2}; g = base_gather(); expect_gather(g, Status::Range, "gather src row >= src_rows");
  src = {0, -1, 2}; g = base_gather(); expect_gather(g, Status::Range, "gather src row < 0");
  src = {0, 4, 2};
  dst = {1, 2, nslots}; g = base_gather(); expect_gather(g, Status::Range, "gather slot out of range");
  dst = {1, 2, 1}; g = base_gather(); expect_gather(g, Status::Range, "gather duplicate slot");
  dst = {1, 2, 23};
  {  // pools as source: overlap of source and destination slots
    g = base_gather();
    g.k_src = kp.data(), g.v_src = vp.data(), g.src_rows = nslots, g.score_src = score.data();
    src = {5, 6, 2};
    expect_gather(g, Status::Range, "gather overlapping pool source");
    g.src_rows = nslots + 1;
    src = {5, 6, 7};
    expect_gather(g, Status::Shape, "gather pool source larger than pool");
    src = {0, 4, 2};
  }
  CHECK(cpu_gather(base_gather()) == Status::Ok);
  kp = k0, vp = v0, meta = m0, score = s0;

  std::vector<int32_t> pids = {0, 5}, fill = {4, 1};
  auto base_pm = [&] {
    PageMetaArgs m;
    m.count = 2, m.head_dim = D, m.page_size = P, m.dtype = t, m.num_pages = num_pages;
    m.k_pool = kp.data(), m.meta_pool = meta.data(), m.page_ids = pids.data(), m.fill = fill.data();
    return m;
  };
  auto expect_pm = [&](PageMetaArgs m, Status want, const char* what) {
    Status got = cpu_page_meta(m);
    CHECK_MSG(got == want, what << ": got " << status_name(got));
    untouched(what);
  };
  PageMetaArgs m;
  m = base_pm(); m.dtype = DType::I32; expect_pm(m, Status::DType, "page_meta i32");
  m = base_pm(); m.count = 0; expect_pm(m, Status::Shape, "page_meta count 0");
  m = base_pm(); m.meta_pool = nullptr; expect_pm(m, Status::Shape, "page_meta null meta");
  m = base_pm(); m.fill = nullptr; expect_pm(m, Status::Shape, "page_meta null fill");
  pids = {0, 6}; m = base_pm(); expect_pm(m, Status::Range, "page_meta page out of range");
  pids = {0, 0}; m = base_pm(); expect_pm(m, Status::Range, "page_meta duplicate page");
  pids = {0, 5};
  fill = {0, 1}; m = base_pm(); expect_pm(m, Status::Range, "page_meta fill 0");
  fill = {4, 5}; m = base_pm(); expect_pm(m, Status::Range, "page_meta fill > P");
  fill = {4, 1};
  CHECK(cpu_page_meta(base_pm()) == Status::Ok);
}
