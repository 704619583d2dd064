// cpu_decode_attention against a plain double-precision reference (written
// here, from the dtype-rounded inputs), on fresh random inputs of awkward
// sizes: head dims with and without a multiple-of-8 tail, group sizes 1..8 and
// odd ones, page sizes 16, 7 and 1, shuffled physical pages, ragged batches
// (lengths 0, 1, 17, 1000, 4097 and random, capacity beyond kv_len), Quest
// subsets, H2O score accumulation (mean/sum/max), every q and K/V dtype, and
// both the SIMD and the portable path (cpu_features_force).
//
// Tolerance (derived in native/cpu/decode_attention.cc), u = 2^-24, n = slots
// attended, dz = (D + 4) * u * scale * max_s sum_d |q_d k_sd| (worst-case fp32
// error of one logit, including the rounding of q * scale * log2 e and of l - max):
//   o:     |o - ref| <= max|v| * (2 dz + 8 sqrt(n) u + 8 u) + |ref| * ulp_out / 2
//          (ulp_out: 2^-23 f32, 2^-10 f16, 2^-7 bf16 relative, plus f16's subnormal step)
//   lse:   |lse - ref| <= dz + 8 sqrt(n) u + 8 u * |ref|
//   score: |s - ref| <= added * (2 dz + 8 sqrt(n) u + 8 u) + u * |ref|
//          (each probability has relative error <= 2 dz + ...; the reduce over heads
//          of positive terms keeps the relative bound; one rounding on the add)
// Slots whose pages no head selected (and slots outside kv_len) must be bit-identical.
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
using kvsqtest::randint;
using kvsqtest::uniform;

namespace {

constexpr double kU = 1.0 / 16777216.0;  // 2^-24

// Storage in a dtype plus the exact value it holds.
struct Buf {
  DType t = DType::F32;
  std::vector<uint8_t> bytes;
  std::vector<float> val;  // decoded (what the kernel sees)
  void init(DType dt, size_t n) {
    t = dt;
    bytes.assign(n * dtype_size(dt), 0);
    val.assign(n, 0.f);
  }
  void set(size_t i, float x) {
    if (t == DType::F16) {
      uint16_t h = f32_to_f16(x);
      std::memcpy(&bytes[i * 2], &h, 2);
      val[i] = f16_to_f32(h);
    } else if (t == DType::BF16) {
      uint16_t h = f32_to_bf16(x);
      std::memcpy(&bytes[i * 2], &h, 2);
      val[i] = bf16_to_f32(h);
    } else {
      std::memcpy(&bytes[i * 4], &x, 4);
      val[i] = x;
    }
  }
  float get(size_t i) const {
    if (t == DType::F16) { uint16_t h; std::memcpy(&h, &bytes[i * 2], 2); return f16_to_f32(h); }
    if (t == DType::BF16) { uint16_t h; std::memcpy(&h, &bytes[i * 2], 2); return bf16_to_f32(h); }
    float f; std::memcpy(&f, &bytes[i * 4], 4); return f;
  }
  void* data() { return bytes.data(); }
};

struct Config {
  int B = 1, Hq = 1, Hkv = 1, D = 16, P = 16;
  DType qdt = DType::F32, kvdt = DType::F32;
  std::vector<int> lens;  // per list (B*Hkv)
  bool subset = false;
  bool score = false;
  Reduce reduce = Reduce::Mean;
  float scale_mult = 1.f;  // scale = scale_mult / sqrt(D)
};

std::vector<int> shuffled(int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), 0);
  std::shuffle(v.begin(), v.end(), kvsqtest::rng());
  return v;
}

// Inputs + arguments for one configuration.
struct Problem {
  Config cfg;
  int g = 1;
  int64_t num_pages = 0;
  Buf q, k, v;
  std::vector<int32_t> indptr, ids, kv_len, sel_indptr, sel_pages;
  std::vector<float> score0;
  float scale = 0.f;

  explicit Problem(const Config& c) : cfg(c) {
    g = c.Hq / c.Hkv;
    const int nl = c.B * c.Hkv;
    CHECK(int(c.lens.size()) == nl);
    std::vector<int> npages(nl);
    int64_t total = 0;
    for (int l = 0; l < nl; ++l) {
      npages[l] = (c.lens[l] + c.P - 1) / c.P + (randint(0, 3) == 0 ? 1 : 0);  // spare capacity sometimes
      total += npages[l];
    }
    num_pages = total + randint(0, 3);  // unused pages in the pool
    std::vector<int> perm = shuffled(int(num_pages));
    indptr.assign(1, 0);
    int64_t at = 0;
    for (int l = 0; l < nl; ++l) {
      for (int i = 0; i < npages[l]; ++i) ids.push_back(perm[at++]);
      indptr.push_back(int32_t(ids.size()));
      kv_len.push_back(c.lens[l]);
    }
    const size_t pool = size_t(num_pages) * c.P * c.D;
    k.init(c.kvdt, pool);
    v.init(c.kvdt, pool);
    for (size_t i = 0; i < pool; ++i) {
      k.set(i, kvsqtest::normal());
      v.set(i, uniform(-2.f, 2.f));
    }
    q.init(c.qdt, size_t(c.B) * c.Hq * c.D);
    for (size_t i = 0; i < q.val.size(); ++i) q.set(i, kvsqtest::normal());
    scale = c.scale_mult / std::sqrt(float(c.D));
    if (c.subset) {
      sel_indptr.assign(1, 0);
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.Hq; ++h) {
          const int len = c.lens[b * c.Hkv + h / g];
          const int np = (len + c.P - 1) / c.P;
          const int mode = randint(0, 5);  // 0: empty, 1: all, else random incl. the last page
          for (int p = 0; p < np; ++p) {
            bool take = mode == 1 || (mode > 1 && (p == np - 1 || randint(0, 2) == 0));
            if (take) sel_pages.push_back(p);
          }
          sel_indptr.push_back(int32_t(sel_pages.size()));
        }
    }
    score0.resize(size_t(num_pages) * c.P);
    for (auto& s : score0) s = uniform(0.f, 4.f);
  }

  DecodeAttnArgs args(void* o, float* lse, float* score) const {
    DecodeAttnArgs a;
    a.batch = cfg.B;
    a.num_q_heads = cfg.Hq;
    a.num_kv_heads = cfg.Hkv;
    a.head_dim = cfg.D;
    a.page_size = cfg.P;
    a.q_dtype = cfg.qdt;
    a.kv_dtype = cfg.kvdt;
    a.scale = scale;
    a.q = q.bytes.data();
    a.o = o;
    a.k_pool = k.bytes.data();
    a.v_pool = v.bytes.data();
    a.num_pages = num_pages;
    a.page_indptr = indptr.data();
    a.page_ids = ids.data();
    a.kv_len = kv_len.data();
    if (cfg.subset) {
      a.sel_indptr = sel_indptr.data();
      a.sel_pages = sel_pages.data();
    }
    a.score_pool = cfg.score ? score : nullptr;
    a.reduce = cfg.reduce;
    a.lse = lse;
    return a;
  }

  // Physical slot of slot s of list l.
  int64_t phys(int l, int s) const { return int64_t(ids[indptr[l] + s / cfg.P]) * cfg.P + s % cfg.P; }

  // Slots attended by query row (b, h), ascending.
  std::vector<int> slots(int b, int h) const {
    const int l = b * cfg.Hkv + h / g, len = cfg.lens[l];
    std::vector<int> s;
    if (!cfg.subset) {
      for (int i = 0; i < len; ++i) s.push_back(i);
    } else {
      const int r = b * cfg.Hq + h;
      for (int i = sel_indptr[r]; i < sel_indptr[r + 1]; ++i) {
        const int p = sel_pages[i];
        for (int t = p * cfg.P; t < std::min(len, (p + 1) * cfg.P); ++t) s.push_back(t);
      }
    }
    return s;
  }

  // Runs the kernel and checks it against the double reference.
  void check(const char* path) const {
    const Config& c = cfg;
    const int D = c.D;
    Buf o;
    o.init(c.qdt, size_t(c.B) * c.Hq * D);
    std::vector<float> lse(size_t(c.B) * c.Hq, 12345.f);
    std::vector<float> score = score0;
    DecodeAttnArgs a = args(o.data(), lse.data(), score.data());
    // The before/after records (score mode): sentinel-filled, one spare value
    // past the end that must stay untouched.
    int64_t total = 0;
    for (int l = 0; l < c.B * c.Hkv; ++l) total += c.lens[l];
    std::vector<float> before(size_t(total) + 1, -7.f), after(size_t(total) + 1, -7.f);
    // Eviction candidates: distinct random positions per list, and per list a
    // max that excludes everything, includes everything, or cuts in between.
    const int nl = c.B * c.Hkv;
    std::vector<int32_t> epos(static_cast<size_t>(total)), emax(nl), eslot(nl, -7);
    {
      int64_t f = 0;
      for (int l = 0; l < nl; ++l) {
        std::vector<int32_t> perm(c.lens[l]);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
        for (int s = 0; s < c.lens[l]; ++s) epos[f++] = perm[s] * 3;
        const int kind = kvsqtest::randint(0, 3);
        emax[l] = kind == 0 ? std::numeric_limits<int32_t>::min() : kind == 1 ? 3 * c.lens[l] : kvsqtest::randint(0, 3 * c.lens[l]);
      }
    }
    if (c.score) {
      a.score_before = before.data();
      a.score_after = after.data();
      a.evict_pos = epos.data();
      a.evict_max_pos = emax.data();
      a.evict_slot = eslot.data();
    }
    Status st = cpu_decode_attention(a);
    CHECK_MSG(st == Status::Ok, path << ": status " << status_name(st));
    if (c.score) {
      int64_t f = 0;
      for (int l = 0; l < c.B * c.Hkv; ++l)
        for (int s = 0; s < c.lens[l]; ++s, ++f) {
          const int64_t ps = phys(l, s);
          CHECK_MSG(f32_bits(before[f]) == f32_bits(score0[ps]), path << " score_before[" << f << "] is not the pool before the step");
          CHECK_MSG(f32_bits(after[f]) == f32_bits(score[ps]), path << " score_after[" << f << "] is not the pool after the step");
        }
      CHECK_MSG(before[total] == -7.f && after[total] == -7.f, path << " before/after written past sum kv_len");
      // the candidate, recomputed from the pool after the step
      f = 0;
      for (int l = 0; l < nl; ++l) {
        int want = -1;
        for (int s = 0; s < c.lens[l]; ++s) {
          const int32_t p = epos[f + s];
          if (p > emax[l]) continue;
          const float v = score[phys(l, s)];
          if (want < 0 || v < score[phys(l, want)] || (v == score[phys(l, want)] && p < epos[f + want])) want = s;
        }
        CHECK_MSG(eslot[l] == want, path << " evict_slot[" << l << "] = " << eslot[l] << ", want " << want);
        f += c.lens[l];
      }
    }

    const double ulp_out = c.qdt == DType::F16 ? std::ldexp(1.0, -10) : c.qdt == DType::BF16 ? std::ldexp(1.0, -7)
                                                                                                 : std::ldexp(1.0, -23);
    const double sub_out = c.qdt == DType::F16 ? std::ldexp(1.0, -24) : 0.0;
    std::vector<double> added(score.size(), 0.0);   // reference score increments
    std::vector<char> touched(score.size(), 0);
    std::vector<double> slot_tol(score.size(), 0.0);  // relative tolerance of the added amount
    for (int b = 0; b < c.B; ++b) {
      for (int j = 0; j < c.Hkv; ++j) {
        const int l = b * c.Hkv + j;
        const int len = c.lens[l];
        std::vector<double> red(len, 0.0);  // group-reduced probabilities per slot
        std::vector<char> inu(len, 0);
        double group_rel = 0.0;
        for (int hh = 0; hh < g; ++hh) {
          const int h = j * g + hh;
          const int64_t qrow = int64_t(b) * c.Hq + h;
          const float* qv = &q.val[qrow * D];
          std::vector<int> S = slots(b, h);
          const int n = int(S.size());
          std::vector<double> z(n);
          double zmax = -INFINITY, absdot = 0.0, vmax = 0.0;
          for (int i = 0; i < n; ++i) {
            const int64_t base = phys(l, S[i]) * D;
            double dot = 0.0, ad = 0.0;
            for (int d = 0; d < D; ++d) {
              dot += double(qv[d]) * double(k.val[base + d]);
              ad += std::fabs(double(qv[d]) * double(k.val[base + d]));
              vmax = std::max(vmax, std::fabs(double(v.val[base + d])));
            }
            z[i] = double(scale) * dot;
            zmax = std::max(zmax, z[i]);
            absdot = std::max(absdot, ad);
          }
          const double dz = (D + 4) * kU * double(scale) * absdot;
          const double sumtol = 8 * std::sqrt(double(std::max(n, 1))) * kU + 8 * kU;
          double sum = 0.0;
          for (int i = 0; i < n; ++i) sum += std::exp(z[i] - zmax);
          const double ref_lse = n ? zmax + std::log(sum) : -INFINITY;
          std::vector<double> pr(n);
          std::vector<int64_t> vb(n);
          for (int i = 0; i < n; ++i) pr[i] = std::exp(z[i] - ref_lse), vb[i] = phys(l, S[i]) * D;
          for (int d = 0; d < D; ++d) {
            double ref = 0.0;
            for (int i = 0; i < n; ++i) ref += pr[i] * v.val[vb[i] + d];
            const double got = o.get(qrow * D + d);
            const double tol = vmax * (2 * dz + sumtol) + std::fabs(ref) * ulp_out / 2 + sub_out;
            CHECK_MSG(std::fabs(got - ref) <= tol, path << " o b=" << b << " h=" << h << " d=" << d << " got " << got
                                                         << " ref " << ref << " tol " << tol << " n=" << n);
          }
          if (n == 0) {
            CHECK_MSG(std::isinf(lse[qrow]) && lse[qrow] < 0, path << " lse of empty row " << lse[qrow]);
          } else {
            const double tol = dz + sumtol + 8 * kU * std::fabs(ref_lse);
            CHECK_MSG(std::fabs(lse[qrow] - ref_lse) <= tol,
                      path << " lse b=" << b << " h=" << h << " got " << lse[qrow] << " ref " << ref_lse);
          }
          group_rel = std::max(group_rel, 2 * dz + sumtol);
          for (int i = 0; i < n; ++i) {
            const double p = pr[i];
            const int s = S[i];
            inu[s] = 1;
            if (c.reduce == Reduce::Max) red[s] = std::max(red[s], p);
            else red[s] += p;
          }
        }
        for (int s = 0; s < len; ++s) {
          if (!inu[s]) continue;
          const int64_t ps = phys(l, s);
          added[ps] = c.reduce == Reduce::Mean ? red[s] / g : red[s];
          touched[ps] = 1;
          slot_tol[ps] = group_rel;
        }
      }
    }
    for (size_t i = 0; i < score.size(); ++i) {
      if (!c.score || !touched[i]) {
        CHECK_MSG(f32_bits(score[i]) == f32_bits(score0[i]), path << " untouched score slot " << i << " changed");
        continue;
      }
      const double ref = double(score0[i]) + added[i];
      const double tol = added[i] * slot_tol[i] + kU * std::fabs(ref) * 2;
      CHECK_MSG(std::fabs(score[i] - ref) <= tol, path << " score slot " << i << " got " << score[i] << " ref " << ref
                                                       << " added " << added[i]);
    }
  }

  void check_both() const {
    cpu_features_force(1);
    check("simd");
    cpu_features_force(0);
    check("portable");
    cpu_features_force(-1);
  }
};

struct ForceReset {  // a failing CHECK throws: put detection back for the other tests
  ~ForceReset() { cpu_features_force(-1); }
};

int pick(std::initializer_list<int> v) { return *(v.begin() + randint(0, int(v.size()) - 1)); }
int random_len() {
  switch (randint(0, 5)) {
    case 0: return 1;
    case 1: return 17;
    case 2: return 1000;
    case 3: return 4097;
    default: return randint(2, 1500);
  }
}

}  // namespace

// Every head dim x group size, page sizes and dtypes rotating, ragged lengths.
KVSQ_TEST(decode_attention_dense_shapes) {
  ForceReset fr;
  const DType dts[3] = {DType::F32, DType::F16, DType::BF16};
  int it = 0;
  for (int D : {16, 40, 64, 128, 20, 3}) {
    for (int g : {1, 2, 4, 8, 3, 9, 16}) {
      Config c;
      c.Hkv = pick({1, 2});
      c.Hq = c.Hkv * g;
      c.B = pick({1, 2, 3});
      c.D = D;
      c.P = pick({16, 1, 7});
      c.qdt = dts[it % 3];
      c.kvdt = dts[(it / 3 + it) % 3];
      c.scale_mult = float(pick({1, 1, 4}));
      for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(D >= 64 && g >= 4 ? randint(1, 700) : random_len());
      ++it;
      Problem(c).check_both();
    }
  }
}

// Each listed length and page size explicitly, with a long single list (many splits).
KVSQ_TEST(decode_attention_lengths_pages) {
  ForceReset fr;
  for (int P : {16, 1, 7}) {
    for (int len : {1, 17, 1000, 4097}) {
      Config c;
      c.B = 1;
      c.Hkv = 1;
      c.Hq = pick({1, 4});
      c.D = pick({64, 40});
      c.P = P;
      c.kvdt = DType::F16;
      c.lens = {len};
      Problem(c).check_both();
    }
  }
  // one long GQA sequence with 8 KV heads: the benchmark shape, shortened
  Config c;
  c.B = 1, c.Hkv = 8, c.Hq = 32, c.D = 128, c.P = 16;
  c.qdt = DType::F16, c.kvdt = DType::F16;
  c.lens.assign(8, 4097 - randint(0, 20));
  Problem(c).check_both();
}

// Ragged batch with empty lists, lse of empty rows, and f16/bf16 outputs.
KVSQ_TEST(decode_attention_ragged_and_empty) {
  ForceReset fr;
  Config c;
  c.B = 4, c.Hkv = 2, c.Hq = 8, c.D = 64, c.P = 7;
  c.qdt = DType::BF16, c.kvdt = DType::F32;
  c.lens = {0, 17, 1000, 1, 0, 0, 4097, 300};
  Problem(c).check_both();
  Config e = c;  // every list empty
  e.lens.assign(8, 0);
  e.qdt = DType::F16;
  Problem(e).check_both();
}

// Quest subsets, with and without score accumulation, every reduce.
KVSQ_TEST(decode_attention_subset_and_scores) {
  ForceReset fr;
  const DType dts[3] = {DType::F32, DType::F16, DType::BF16};
  int it = 0;
  for (bool subset : {false, true}) {
    for (Reduce r : {Reduce::Mean, Reduce::Sum, Reduce::Max}) {
      for (int g : {1, 4, 8, 3, 9, 17}) {
        Config c;
        c.subset = subset;
        c.score = true;
        c.reduce = r;
        c.Hkv = pick({1, 2});
        c.Hq = c.Hkv * g;
        c.B = pick({1, 2});
        c.D = pick({16, 40, 128});
        c.P = pick({16, 1, 7});
        c.qdt = dts[it % 3];
        c.kvdt = dts[(it + 1 + it / 3) % 3];
        for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(random_len());
        ++it;
        Problem(c).check_both();
      }
    }
  }
  // subset without score
  Config c;
  c.subset = true;
  c.B = 2, c.Hkv = 2, c.Hq = 8, c.D = 128, c.P = 16, c.kvdt = DType::F16;
  c.lens = {4097, 1000, 17, 1};
  Problem(c).check_both();
}

// Paths agree with each other closely (same algorithm, different rounding order).
KVSQ_TEST(decode_attention_simd_matches_portable) {
  ForceReset fr;
  Config c;
  c.B = 2, c.Hkv = 2, c.Hq = 8, c.D = 128, c.P = 16, c.kvdt = DType::F16;
  c.score = true;
  c.lens = {3000, 77, 1, 2049};
  Problem p(c);
  std::vector<float> o1(size_t(c.B) * c.Hq * c.D), o2(o1.size()), l1(c.B * c.Hq), l2(l1.size());
  std::vector<float> s1 = p.score0, s2 = p.score0;
  cpu_features_force(1);
  CHECK(cpu_decode_attention(p.args(o1.data(), l1.data(), s1.data())) == Status::Ok);
  cpu_features_force(0);
  CHECK(cpu_decode_attention(p.args(o2.data(), l2.data(), s2.data())) == Status::Ok);
  cpu_features_force(-1);
  for (size_t i = 0; i < o1.size(); ++i) CHECK_CLOSE(o1[i], o2[i], 2e-5, 0);
  for (size_t i = 0; i < l1.size(); ++i) CHECK_CLOSE(l1[i], l2[i], 1e-5, 1e-6);
  for (size_t i = 0; i < s1.size(); ++i) CHECK_CLOSE(s1[i], s2[i], 1e-6, 1e-5);
}

// Each invalid argument returns its status and leaves every output untouched.
KVSQ_TEST(decode_attention_invalid_args) {
  Config c;
  c.B = 2, c.Hkv = 2, c.Hq = 4, c.D = 16, c.P = 4;
  c.subset = true;
  c.score = true;
  c.lens = {9, 5, 12, 1};
  Problem p(c);
  // Make every head's selection non-empty and at least two pages where possible.
  p.sel_indptr.assign(1, 0);
  p.sel_pages.clear();
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq; ++h) {
      const int np = (c.lens[b * c.Hkv + h / 2] + c.P - 1) / c.P;
      for (int i = 0; i < np; ++i) p.sel_pages.push_back(i);
      p.sel_indptr.push_back(int32_t(p.sel_pages.size()));
    }
  std::vector<float> o(size_t(c.B) * c.Hq * c.D, 7.f), lse(c.B * c.Hq, 7.f), score(p.score0);
  const std::vector<float> o0 = o, lse0 = lse, sc0 = score;
  auto expect = [&](const char* what, Status want, const DecodeAttnArgs& a) {
    const Status got = cpu_decode_attention(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got) << " want " << status_name(want));
    CHECK_MSG(o == o0 && lse == lse0 && std::memcmp(score.data(), sc0.data(), score.size() * 4) == 0,
              what << ": output written");
  };
  const DecodeAttnArgs good = p.args(o.data(), lse.data(), score.data());
  {  // sanity: the unmodified arguments work (on copies, so the originals stay untouched)
    std::vector<float> o2(o), l2(lse), s2(score);
    CHECK(cpu_decode_attention(p.args(o2.data(), l2.data(), s2.data())) == Status::Ok);
  }
  DecodeAttnArgs a;
  a = good; a.batch = 0; expect("batch 0", Status::Shape, a);
  a = good; a.num_q_heads = -1; expect("Hq < 0", Status::Shape, a);
  a = good; a.num_kv_heads = 0; expect("Hkv 0", Status::Shape, a);
  a = good; a.num_q_heads = 3; expect("Hq % Hkv", Status::Shape, a);
  a = good; a.head_dim = 0; expect("D 0", Status::Shape, a);
  a = good; a.page_size = 0; expect("P 0", Status::Shape, a);
  a = good; a.kv_dtype = DType::I32; expect("kv i32", Status::DType, a);
  a = good; a.q_dtype = DType::I32; expect("q i32", Status::DType, a);
  a = good; a.q = nullptr; expect("q null", Status::Shape, a);
  a = good; a.o = nullptr; expect("o null", Status::Shape, a);
  a = good; a.k_pool = nullptr; expect("k null", Status::Shape, a);
  a = good; a.v_pool = nullptr; expect("v null", Status::Shape, a);
  a = good; a.page_indptr = nullptr; expect("indptr null", Status::Shape, a);
  a = good; a.page_ids = nullptr; expect("ids null", Status::Shape, a);
  a = good; a.kv_len = nullptr; expect("kv_len null", Status::Shape, a);
  a = good; a.sel_pages = nullptr; expect("sel_pages null", Status::Shape, a);
  a = good; a.reduce = Reduce(7); expect("reduce 7", Status::Shape, a);
  {
    std::vector<int32_t> ip = p.indptr;
    std::swap(ip[1], ip[2]);
    a = good; a.page_indptr = ip.data(); expect("indptr non-monotone", Status::Shape, a);
    ip = p.indptr;
    ip[0] = -1;
    a = good; a.page_indptr = ip.data(); expect("indptr negative", Status::Shape, a);
  }
  {
    std::vector<int32_t> ids = p.ids;
    ids[randint(0, int(ids.size()) - 1)] = int32_t(p.num_pages);
    a = good; a.page_ids = ids.data(); expect("page id >= num_pages", Status::Range, a);
    ids = p.ids;
    ids[randint(0, int(ids.size()) - 1)] = -1;
    a = good; a.page_ids = ids.data(); expect("page id < 0", Status::Range, a);
    a = good; a.num_pages = p.num_pages - 1;
    // some page id equals num_pages - 1 only if it is used; force one
    ids = p.ids;
    ids[0] = int32_t(p.num_pages - 1);
    a.page_ids = ids.data();
    expect("num_pages too small", Status::Range, a);
  }
  {
    std::vector<int32_t> kl = p.kv_len;
    kl[1] = -1;
    a = good; a.kv_len = kl.data(); expect("kv_len < 0", Status::Range, a);
    kl = p.kv_len;
    kl[2] = (p.indptr[3] - p.indptr[2]) * c.P + 1;
    a = good; a.kv_len = kl.data(); expect("kv_len > capacity", Status::Range, a);
  }
  {
    std::vector<int32_t> si = p.sel_indptr;
    std::swap(si[2], si[3]);
    a = good; a.sel_indptr = si.data(); expect("sel_indptr non-monotone", Status::Shape, a);
    std::vector<int32_t> sp = p.sel_pages;
    sp[0] = 3;  // list 0 has 3 pages (len 9, P 4): index 3 is out of range
    a = good; a.sel_pages = sp.data(); expect("sel page out of range", Status::Range, a);
    sp = p.sel_pages;
    sp[0] = -1;
    a = good; a.sel_pages = sp.data(); expect("sel page < 0", Status::Range, a);
    sp = p.sel_pages;
    std::swap(sp[0], sp[1]);  // head 0 selects pages 0,1,2 -> 1,0,2
    a = good; a.sel_pages = sp.data(); expect("sel pages not ascending", Status::Range, a);
    sp = p.sel_pages;
    sp[1] = sp[0];  // duplicate
    a = good; a.sel_pages = sp.data(); expect("sel pages duplicate", Status::Range, a);
  }
}

// An empty pool (every list empty, num_pages 0) may come with null K/V, page
// ids and scores, the data of empty tensors, even when score records and an
// eviction candidate are asked for; with pages, null scores stay an error.
KVSQ_TEST(decode_attention_empty_pool_null_pointers) {
  const int B = 2, Hq = 4, Hkv = 2, D = 16;
  std::vector<float> q(size_t(B) * Hq * D, 0.5f), o(q.size(), 7.f), lse(size_t(B) * Hq, 7.f);
  std::vector<int32_t> indptr(B * Hkv + 1, 0), len(B * Hkv, 0), epos(1, 0), emax(B * Hkv, 100), slot(B * Hkv, 5);
  std::vector<float> rec(1, 3.f);
  DecodeAttnArgs a;
  a.batch = B, a.num_q_heads = Hq, a.num_kv_heads = Hkv, a.head_dim = D, a.page_size = 4;
  a.q_dtype = DType::F32, a.kv_dtype = DType::F32, a.scale = 0.25f;
  a.q = q.data(), a.o = o.data(), a.lse = lse.data(), a.num_pages = 0;
  a.page_indptr = indptr.data(), a.kv_len = len.data();
  a.score_before = rec.data(), a.score_after = rec.data();
  a.evict_pos = epos.data(), a.evict_max_pos = emax.data(), a.evict_slot = slot.data();
  CHECK(cpu_decode_attention(a) == Status::Ok);
  for (float x : o) CHECK(x == 0.f);
  for (float x : lse) CHECK(x == -std::numeric_limits<float>::infinity());
  for (int32_t s : slot) CHECK(s == -1);
  CHECK(rec[0] == 3.f);
  DecodeAttnArgs b = a;  // a non-empty pool needs its scores
  std::vector<float> pool(16, 0.f);
  b.num_pages = 4, b.k_pool = pool.data(), b.v_pool = pool.data();
  std::vector<int32_t> ids(1, 0);
  b.page_ids = ids.data();
  CHECK(cpu_decode_attention(b) == Status::Shape);
}
