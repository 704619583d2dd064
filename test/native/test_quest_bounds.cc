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
