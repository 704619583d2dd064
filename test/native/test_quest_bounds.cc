// cpu_quest_bounds against a plain double-precision reference, on fresh random
// inputs: D {16, 40, 128} (+ odd D for the SIMD tail), P {1, 7, 16}, kv_len
// {1, 17, 1000, 4097} spread over the lists of a ragged batch, g {1, 2, 4, 8}
// (+ 3, 6, 16 for the head blocking), share on/off, every q/kv dtype pair,
// shuffled physical pages, SIMD and portable paths; invalid arguments.
//
// Tolerance: q and the metadata are exact in f32, so the kernel's only error is
// f32 rounding of D products and their sum:
//   |u - u_ref| <= (D + 2) * 2^-24 * sum_d |q_d| max(|kmin_d|, |kmax_d|)
// (max over the group's heads with share). Entries p >= n - 1 must be -inf.
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
#include "quest_overflow_case.h"

using namespace kvsq;
using kvsqtest::normal;
using kvsqtest::randint;

namespace {

// A typed buffer: set() rounds to the dtype, get() decodes exactly.
struct Buf {
  DType t;
  std::vector<uint8_t> bytes;
  Buf(DType t_, size_t n) : t(t_), bytes(n * dtype_size(t_)) {}
  void* data() { return bytes.data(); }
  void set(size_t i, float v) {
    if (t == DType::F32) std::memcpy(&bytes[i * 4], &v, 4);
    else {
      uint16_t h = t == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  double get(size_t i) const {
    if (t == DType::F32) {
      float f;
      std::memcpy(&f, &bytes[i * 4], 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, &bytes[i * 2], 2);
    return t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
};

const DType kFloat[3] = {DType::F32, DType::F16, DType::BF16};

struct Case {
  int B, Hkv, g, D, P;
  DType qt, kt;
  std::vector<int32_t> kv_len, indptr, ids;
  int64_t num_pages = 0;
  Buf q{DType::F32, 0}, meta{DType::F32, 0};
  int32_t max_m = 0;

  int Hq() const { return Hkv * g; }
  int n_of(int l) const { return (kv_len[l] + P - 1) / P; }

  void build() {
    const int L = B * Hkv;
    indptr.assign(1, 0);
    for (int l = 0; l < L; ++l) indptr.push_back(indptr.back() + n_of(l) + randint(0, 1));  // spare pages too
    if (indptr.back() == 0) indptr.back() = 1;  // page_ids must be a real (non-null) array
    const int total = indptr.back();
    num_pages = total + randint(1, 5);  // >= 1 even when every list is empty
    std::vector<int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
    ids.assign(perm.begin(), perm.begin() + total);
    meta = Buf(kt, size_t(num_pages) * 2 * D);
    for (int64_t p = 0; p < num_pages; ++p) {
      const float scale = std::ldexp(1.f, randint(-3, 3));
      for (int d = 0; d < D; ++d) {
        // two stored keys: their min/max are the page's meta (sometimes one key)
        const size_t lo = size_t(p) * 2 * D + d, hi = lo + D;
        meta.set(lo, normal() * scale);
        meta.set(hi, randint(0, 7) == 0 ? float(meta.get(lo)) : normal() * scale);
        if (meta.get(hi) < meta.get(lo)) {
          const float a = float(meta.get(lo)), b = float(meta.get(hi));
          meta.set(lo, b);
          meta.set(hi, a);
        }
      }
    }
    q = Buf(qt, size_t(B) * Hq() * D);
    for (size_t i = 0; i < size_t(B) * Hq() * D; ++i) q.set(i, normal());
    max_m = 0;
    for (int l = 0; l < L; ++l) max_m = std::max(max_m, n_of(l) - 1);
  }

  QuestBoundsArgs args(bool share, int32_t out_stride, float* out) {
    QuestBoundsArgs a;
    a.batch = B, a.num_q_heads = Hq(), a.num_kv_heads = Hkv, a.head_dim = D, a.page_size = P;
    a.q_dtype = qt, a.kv_dtype = kt, a.q = q.data(), a.meta_pool = meta.data(), a.num_pages = num_pages;
    a.page_indptr = indptr.data(), a.page_ids = ids.data(), a.kv_len = kv_len.data();
    a.share = share, a.out_stride = out_stride, a.out = out;
    return a;
  }

  // Reference bound and its error scale for (b, query head h, logical page p).
  void ref(int b, int h, int p, double* u, double* m) const {
    const int l = b * Hkv + h / g;
    const int64_t page = ids[indptr[l] + p];
    double s = 0, mag = 0;
    for (int d = 0; d < D; ++d) {
      const double qd = q.get((size_t(b) * Hq() + h) * D + d);
      const double lo = meta.get(size_t(page) * 2 * D + d), hi = meta.get(size_t(page) * 2 * D + D + d);
      s += std::max(qd * hi, qd * lo);
      mag += std::fabs(qd) * std::max(std::fabs(lo), std::fabs(hi));
    }
    *u = s;
    *m = mag;
  }

  // Runs the kernel on both paths and both share modes and checks every entry.
  void check_all() {
    const int L = B * Hkv;
    const int32_t stride = std::max(1, max_m + randint(0, 3));
    // reference per (b, h, p)
    std::vector<double> U, M;
    std::vector<int64_t> off(size_t(B) * Hq() + 1, 0);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < Hq(); ++h) {
        const int l = b * Hkv + h / g;
        off[size_t(b) * Hq() + h + 1] = off[size_t(b) * Hq() + h] + std::max(0, n_of(l) - 1);
      }
    U.resize(off.back());
    M.resize(off.back());
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < Hq(); ++h) {
        const int l = b * Hkv + h / g;
        for (int p = 0; p < n_of(l) - 1; ++p) ref(b, h, p, &U[off[size_t(b) * Hq() + h] + p], &M[off[size_t(b) * Hq() + h] + p]);
      }
    const double tol_unit = (D + 2) * std::ldexp(1.0, -24);
    for (int simd : {1, 0}) {
      for (bool share : {false, true}) {
        const int rows = share ? L : B * Hq();
        std::vector<float> out(size_t(rows) * stride, std::numeric_limits<float>::quiet_NaN());
        cpu_features_force(simd);
        Status st = cpu_quest_bounds(args(share, stride, out.data()));
        cpu_features_force(-1);
        CHECK_EQ(int(st), int(Status::Ok));
        for (int r = 0; r < rows; ++r) {
          const int b = share ? r / Hkv : r / Hq();
          const int l = share ? r : b * Hkv + (r % Hq()) / g;
          const int m = std::max(0, n_of(l) - 1);
          for (int p = 0; p < stride; ++p) {
            const float got = out[size_t(r) * stride + p];
            if (p >= m) {
              CHECK_MSG(std::isinf(got) && got < 0, "tail r=" << r << " p=" << p << " got " << got);
              continue;
            }
            double u, tol;
            if (share) {
              u = -INFINITY, tol = 0;
              for (int k = 0; k < g; ++k) {
                const size_t idx = off[size_t(b) * Hq() + (l % Hkv) * g + k] + p;
                u = std::max(u, U[idx]);
                tol = std::max(tol, M[idx]);
              }
            } else {
              const size_t idx = off[size_t(r)] + p;
              u = U[idx], tol = M[idx];
            }
            tol = tol * tol_unit + 1e-30;
            CHECK_MSG(std::fabs(double(got) - u) <= tol,
                      "simd=" << simd << " share=" << share << " D=" << D << " P=" << P << " g=" << g << " q="
                              << dtype_name(qt) << " kv=" << dtype_name(kt) << " r=" << r << " p=" << p
                              << ": " << got << " vs " << u << " tol " << tol);
          }
        }
      }
    }
  }
};

}  // namespace

KVSQ_TEST(quest_bounds_vs_reference) {
  int combo = 0;
  for (int D : {16, 40, 128})
    for (int P : {1, 7, 16})
      for (int g : {1, 2, 4, 8})
        for (DType kt : kFloat) {
          Case c;
          c.B = 2, c.Hkv = 2, c.g = g, c.D = D, c.P = P, c.kt = kt;
          c.qt = kFloat[(combo++ / 3) % 3];  // every (q, kv) pair occurs
          c.kv_len = {1, 17, 1000, 4097};   // ragged: every length, shuffled over the lists
          std::shuffle(c.kv_len.begin(), c.kv_len.end(), kvsqtest::rng());
          c.build();
          c.check_all();
        }
}

// Odd head dims (SIMD tail chunk), odd group sizes (head blocks 8/4/2/1), random
// batch shapes and lengths, including zero-length lists.
KVSQ_TEST(quest_bounds_odd_shapes) {
  for (int it = 0; it < 40; ++it) {
    Case c;
    const int Ds[] = {1, 3, 12, 20, 33, 64, 100};
    const int gs[] = {1, 3, 5, 6, 7, 16};
    c.B = randint(1, 3), c.Hkv = randint(1, 3), c.g = gs[randint(0, 5)], c.D = Ds[randint(0, 6)];
    c.P = randint(1, 20);
    c.kt = kFloat[randint(0, 2)], c.qt = kFloat[randint(0, 2)];
    for (int l = 0; l < c.B * c.Hkv; ++l) c.kv_len.push_back(randint(0, 9) == 0 ? 0 : randint(1, 700));
    c.build();
    c.check_all();
  }
}

KVSQ_TEST(quest_bounds_invalid_inputs_untouched) {
  Case c;
  c.B = 2, c.Hkv = 2, c.g = 2, c.D = 16, c.P = 4, c.kt = DType::F16, c.qt = DType::F32;
  c.kv_len = {9, 1, 16, 5};
  c.build();
  const int32_t stride = c.max_m;  // exactly enough
  const float sentinel = 12345.f;
  std::vector<float> out(size_t(c.B) * c.Hq() * stride, sentinel);
  auto expect = [&](QuestBoundsArgs a, Status want, const char* what) {
    std::fill(out.begin(), out.end(), sentinel);
    Status got = cpu_quest_bounds(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got) << " want " << status_name(want));
    for (float v : out) CHECK_MSG(v == sentinel, what << ": output written");
  };
  // the base case is valid
  CHECK(cpu_quest_bounds(c.args(false, stride, out.data())) == Status::Ok);
  QuestBoundsArgs a;
  a = c.args(false, stride, out.data()); a.q_dtype = DType::I32; expect(a, Status::DType, "q i32");
  a = c.args(false, stride, out.data()); a.kv_dtype = DType::I32; expect(a, Status::DType, "kv i32");
  a = c.args(false, stride, out.data()); a.batch = 0; expect(a, Status::Shape, "batch 0");
  a = c.args(false, stride, out.data()); a.num_kv_heads = 0; expect(a, Status::Shape, "hkv 0");
  a = c.args(false, stride, out.data()); a.num_q_heads = 3; expect(a, Status::Shape, "hq % hkv");
  a = c.args(false, stride, out.data()); a.head_dim = -1; expect(a, Status::Shape, "D < 0");
  a = c.args(false, stride, out.data()); a.page_size = 0; expect(a, Status::Shape, "P 0");
  a = c.args(false, stride, out.data()); a.num_pages = 0; expect(a, Status::Shape, "no pages");
  a = c.args(false, stride, out.data()); a.out_stride = 0; expect(a, Status::Shape, "stride 0");
  a = c.args(false, stride, out.data()); a.out_stride = stride - 1; expect(a, Status::Shape, "stride small");
  a = c.args(false, stride, out.data()); a.q = nullptr; expect(a, Status::Shape, "null q");
  a = c.args(false, stride, out.data()); a.meta_pool = nullptr; expect(a, Status::Shape, "null meta");
  a = c.args(false, stride, out.data()); a.page_indptr = nullptr; expect(a, Status::Shape, "null indptr");
  a = c.args(false, stride, out.data()); a.page_ids = nullptr; expect(a, Status::Shape, "null ids");
  a = c.args(false, stride, out.data()); a.kv_len = nullptr; expect(a, Status::Shape, "null kv_len");
  {
    a = c.args(false, stride, out.data());
    a.out = nullptr;
    CHECK(cpu_quest_bounds(a) == Status::Shape);
  }
  const auto ids0 = c.ids;
  c.ids[1] = -1; a = c.args(false, stride, out.data()); expect(a, Status::Range, "page id < 0");
  c.ids = ids0; c.ids.back() = int32_t(c.num_pages); a = c.args(false, stride, out.data()); expect(a, Status::Range, "page id >= num_pages");
  c.ids = ids0;
  const auto len0 = c.kv_len;
  c.kv_len[2] = -1; a = c.args(true, stride, out.data()); expect(a, Status::Range, "kv_len < 0");
  c.kv_len = len0;
  c.kv_len[0] = (c.indptr[1] - c.indptr[0]) * c.P + 1; a = c.args(true, 1 << 20, out.data()); expect(a, Status::Range, "kv_len > pages * P");
  c.kv_len = len0;
  const auto ip0 = c.indptr;
  std::swap(c.indptr[1], c.indptr[2]); a = c.args(false, stride, out.data()); expect(a, Status::Range, "indptr decreasing");
  c.indptr = ip0;
  c.indptr[0] = -1; a = c.args(false, stride, out.data()); expect(a, Status::Range, "indptr < 0");
  c.indptr = ip0;
  CHECK(cpu_quest_bounds(c.args(true, stride, out.data())) == Status::Ok);
}

// ---------------------------------------------------------------- quest_select
// cpu_quest_select against the double-precision bounds: per query head, the
// count is min(n, budget); a list of at most `budget` pages lists every page;
// otherwise the pages are ascending, end with n - 1, and the other budget - 1
// are a top set of the reference bounds up to the kernel's tolerance (every
// chosen bound >= every unchosen one - 2 tol). It must also equal, exactly,
// cpu_quest_bounds followed by cpu_topk (the path it fuses).
namespace {

struct Selection {
  std::vector<int32_t> indptr, pages;
};

Selection run_select(Case& c, bool share, int budget, Status* st) {
  int64_t total = 0;
  for (int l = 0; l < c.B * c.Hkv; ++l) total += int64_t(c.g) * std::min(c.n_of(l), budget);
  Selection s;
  s.indptr.assign(size_t(c.B) * c.Hq() + 1, -9);
  s.pages.assign(size_t(total) + 1, -9);  // one spare, must stay -9
  QuestSelectArgs a;
  a.bounds = c.args(share, 0, nullptr);
  a.budget_pages = budget;
  a.max_pages = c.max_m + 1;
  a.sel_indptr = s.indptr.data();
  a.sel_pages = s.pages.data();
  *st = cpu_quest_select(a);
  return s;
}

// The composition questBounds -> topk -> assembly, as the cache did it in JS.
Selection composed(Case& c, bool share, int budget) {
  const int rows = share ? c.B * c.Hkv : c.B * c.Hq();
  const int32_t width = std::max(1, c.max_m), k = budget - 1;
  std::vector<float> u(size_t(rows) * width);
  CHECK(cpu_quest_bounds(c.args(share, width, u.data())) == Status::Ok);
  std::vector<int32_t> lens(rows), ks(rows, k), top(size_t(rows) * std::max(k, 1));
  for (int r = 0; r < rows; ++r) {
    const int l = share ? r : (r / c.Hq()) * c.Hkv + (r % c.Hq()) / c.g;
    lens[r] = c.n_of(l) > budget ? c.n_of(l) - 1 : 0;
  }
  TopkArgs t;
  t.rows = rows, t.row_stride = width, t.scores = u.data(), t.lengths = lens.data(), t.k = ks.data();
  t.out_stride = k, t.out = top.data();
  CHECK(cpu_topk(t) == Status::Ok);
  Selection s;
  s.indptr.push_back(0);
  for (int r = 0; r < c.B * c.Hq(); ++r) {
    const int l = (r / c.Hq()) * c.Hkv + (r % c.Hq()) / c.g, n = c.n_of(l);
    if (n <= budget) {
      for (int p = 0; p < n; ++p) s.pages.push_back(p);
    } else {
      const int tr = share ? l : r;
      for (int i = 0; i < k; ++i) s.pages.push_back(top[size_t(tr) * k + i]);
      s.pages.push_back(n - 1);
    }
    s.indptr.push_back(int32_t(s.pages.size()));
  }
  return s;
}

void check_select(Case& c, bool share, int budget) {
  Status st;
  const Selection s = run_select(c, share, budget, &st);
  CHECK_MSG(st == Status::Ok, "status " << status_name(st));
  const double tol_unit = (c.D + 2) * std::ldexp(1.0, -24);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.Hq(); ++h) {
      const int r = b * c.Hq() + h, l = b * c.Hkv + h / c.g, n = c.n_of(l);
      const int cnt = s.indptr[r + 1] - s.indptr[r];
      CHECK_MSG(s.indptr[0] == 0 && cnt == std::min(n, budget), "row " << r << " count " << cnt);
      const int32_t* p = s.pages.data() + s.indptr[r];
      if (n <= budget) {
        for (int i = 0; i < n; ++i) CHECK_MSG(p[i] == i, "dense row " << r << " page " << i << " = " << p[i]);
        continue;
      }
      CHECK_MSG(p[cnt - 1] == n - 1, "row " << r << " does not end with the last page");
      std::vector<char> chosen(n, 0);
      for (int i = 0; i < cnt; ++i) {
        CHECK_MSG(p[i] >= 0 && p[i] < n && (i == 0 || p[i] > p[i - 1]), "row " << r << " not ascending in range");
        chosen[p[i]] = 1;
      }
      // reference bound of the row (max over the group with share)
      auto bound = [&](int q, double* tol) {
        double u = -INFINITY, m = 0;
        for (int k = 0; k < c.g; ++k) {
          const int hh = share ? (h / c.g) * c.g + k : h;
          double uk, mk;
          c.ref(b, hh, q, &uk, &mk);
          u = std::max(u, uk), m = std::max(m, mk);
          if (!share) break;
        }
        *tol = m * tol_unit + 1e-30;
        return u;
      };
      double lo_chosen = INFINITY, hi_other = -INFINITY, tmax = 0;
      for (int q = 0; q < n - 1; ++q) {
        double t;
        const double u = bound(q, &t);
        tmax = std::max(tmax, t);
        if (chosen[q]) lo_chosen = std::min(lo_chosen, u);
        else hi_other = std::max(hi_other, u);
      }
      CHECK_MSG(lo_chosen >= hi_other - 2 * tmax, "row " << r << ": a chosen page's bound " << lo_chosen
                                                          << " is below an unchosen one " << hi_other);
    }
  CHECK_MSG(s.pages.back() == -9, "written past the selection");
  const Selection want = composed(c, share, budget);
  CHECK_MSG(std::equal(want.indptr.begin(), want.indptr.end(), s.indptr.begin()), "indptr differs from bounds + topk");
  CHECK_MSG(std::equal(want.pages.begin(), want.pages.end(), s.pages.begin()), "pages differ from bounds + topk");
}

}  // namespace

KVSQ_TEST(quest_select_vs_reference) {
  for (int it = 0; it < 30; ++it) {
    Case c;
    c.B = randint(1, 3), c.Hkv = randint(1, 3), c.g = std::vector<int>{1, 2, 4, 8}[randint(0, 3)];
    c.D = std::vector<int>{16, 40, 128}[randint(0, 2)], c.P = std::vector<int>{1, 7, 16}[randint(0, 2)];
    c.kt = kFloat[randint(0, 2)], c.qt = kFloat[randint(0, 2)];
    const int lens[] = {0, 1, 17, 1000, 4097};
    for (int l = 0; l < c.B * c.Hkv; ++l) c.kv_len.push_back(lens[randint(0, 4)]);
    c.build();
    const int maxn = c.max_m + 1;
    for (int budget : {1, 2, std::max(1, maxn / 3), maxn, maxn + 5})
      for (bool share : {false, true})
        for (int simd : {1, 0}) {
          cpu_features_force(simd);
          check_select(c, share, budget);
          cpu_features_force(-1);
        }
  }
}

KVSQ_TEST(quest_select_invalid_inputs_untouched) {
  Case c;
  c.B = 1, c.Hkv = 2, c.g = 2, c.D = 16, c.P = 4, c.kt = DType::F16, c.qt = DType::F32;
  c.kv_len = {40, 9};
  c.build();
  std::vector<int32_t> indptr(c.Hq() + 1, -9), pages(64, -9);
  auto args = [&] {
    QuestSelectArgs a;
    a.bounds = c.args(true, 0, nullptr);
    a.budget_pages = 3, a.max_pages = c.max_m + 1, a.sel_indptr = indptr.data(), a.sel_pages = pages.data();
    return a;
  };
  auto expect = [&](QuestSelectArgs a, Status want, const char* what) {
    const Status got = cpu_quest_select(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got) << " want " << status_name(want));
    for (int32_t v : indptr) CHECK_MSG(v == -9, what << ": indptr written");
    for (int32_t v : pages) CHECK_MSG(v == -9, what << ": pages written");
  };
  QuestSelectArgs a;
  a = args(); a.budget_pages = 0; expect(a, Status::Range, "budget 0");
  a = args(); a.max_pages = c.max_m; expect(a, Status::Shape, "max_pages short");
  a = args(); a.sel_indptr = nullptr; expect(a, Status::Shape, "null indptr");
  a = args(); a.sel_pages = nullptr; expect(a, Status::Shape, "null pages");
  a = args(); a.bounds.page_ids = nullptr; expect(a, Status::Shape, "null page ids");
  a = args(); c.kv_len[0] = 1 << 20; expect(a, Status::Range, "length beyond its pages");
  c.kv_len[0] = 40;
  // NaN metadata gives a NaN bound (the cache never stores it; a caller of
  // the op might): Status::NaN, nothing written.
  a = args();
  a.bounds.share = false;  // (with share the group max skips a NaN head, as quest_bounds does)
  c.meta.set(size_t(c.ids[c.indptr[0]]) * 2 * c.D + 3, std::numeric_limits<float>::quiet_NaN());
  expect(a, Status::NaN, "NaN metadata");
}

// Finite inputs whose bound overflows both ways (inf - inf): the bound is
// +inf, not NaN (ops.h), on the SIMD and portable paths, with and without
// share, for every metadata dtype; the selection then holds that page for
// every query head of the list. A NaN in q makes that head's bounds NaN, and
// the selection Status::NaN with nothing written, also when every list is
// dense (no bound is computed then).
KVSQ_TEST(quest_select_overflow_is_unbounded) {
  using kvsqtest::QuestOverflowCase;
  constexpr int kTotal = QuestOverflowCase::total;
  for (DType kt : kFloat)
    for (int simd : {1, 0}) {
      cpu_features_force(simd);
      QuestOverflowCase c(kt);
      const int32_t width = c.max_pages - 1;
      for (bool share : {false, true}) {
        const int rows = share ? c.Hkv : c.Hq;
        std::vector<float> u(size_t(rows) * width);
        QuestBoundsArgs b = c.args(share).bounds;
        b.out = u.data(), b.out_stride = width;
        CHECK(cpu_quest_bounds(b) == Status::Ok);
        for (int r = 0; r < rows; ++r) {
          const int l = share ? r : r / c.g;
          CHECK_MSG(u[size_t(r) * width + c.overflow_page[l]] == std::numeric_limits<float>::infinity(),
                    "row " << r << " (" << dtype_name(kt) << ", simd " << simd << ", share " << share << "): "
                           << u[size_t(r) * width + c.overflow_page[l]]);
          for (int p = 0; p < width; ++p) CHECK_MSG(!std::isnan(u[size_t(r) * width + p]), "NaN bound at " << p);
        }
        for (bool checked : {false, true}) {
          std::vector<int32_t> ind(c.Hq + 1, -9), pages(kTotal + 1, -9);
          QuestSelectArgs a = c.args(share);
          a.q_checked = checked;
          a.sel_indptr = ind.data(), a.sel_pages = pages.data();
          CHECK(cpu_quest_select(a) == Status::Ok);
          CHECK_MSG(c.all_rows_hold_overflow(ind, pages), "overflow page not chosen");
          CHECK(pages[kTotal] == -9);
        }
      }
      c.q[3] = std::numeric_limits<float>::quiet_NaN();  // head 0, d 3
      {
        // questBounds propagates it: head 0's bounds NaN, head 1's not.
        std::vector<float> u(size_t(c.Hq) * width);
        QuestBoundsArgs b = c.args(false).bounds;
        b.out = u.data(), b.out_stride = width;
        CHECK(cpu_quest_bounds(b) == Status::Ok);
        for (int p = 0; p < width; ++p) {
          CHECK_MSG(std::isnan(u[size_t(p)]), "head 0 page " << p << ": " << u[size_t(p)]);
          CHECK_MSG(!std::isnan(u[size_t(width) + p]), "head 1 page " << p);
        }
      }
      for (int budget : {c.budget, c.max_pages + 1})
        for (bool share : {false, true}) {
          std::vector<int32_t> ind(c.Hq + 1, -9), pages(size_t(c.Hq) * (c.max_pages + 1), -9);
          QuestSelectArgs a = c.args(share);
          a.budget_pages = budget;
          a.sel_indptr = ind.data(), a.sel_pages = pages.data();
          CHECK_MSG(cpu_quest_select(a) == Status::NaN, "NaN q, budget " << budget << " share " << share);
          for (int32_t v : ind) CHECK(v == -9);
          for (int32_t v : pages) CHECK(v == -9);
        }
      cpu_features_force(-1);
    }
}
