// cpu_window_scores against a plain double-precision reference written here
// (methods.md "Window scores"/"H2O": causal-in-window softmax, column sums per
// query head, group reduce), on fresh random inputs of awkward sizes, every
// dtype (the reference reads the same rounded inputs), every reduce mode, and
// both the SIMD and the portable path.
//
// Tolerance (derived in native/cpu/window_scores.cc): per window row i the f32
// logits are off by at most
//   dz_i = |s| * D * 2^-24 * max_t sum_d |q_d k_d|  +  2^-24 * max_t |z_t|
// (FMA-chain dot bound, plus the rounding of s * dot), so each probability has
// relative error <= 2 dz_i (the logit and the log of the normaliser) plus
// 4e-5 for exp (<= 3e-7 SIMD), the f32 blocked sums (<= ~300 terms), the
// phase-2 row sum (<= 128 terms) and the final mean division. Every term of a
// column sum is positive, so
//   |A_h[t] - ref_h[t]| <= sum_i P_i[t] * (2 dz_i + 4e-5)
// and the group reduce keeps that bound (mean/sum: linear, max: 1-Lipschitz).
// A 1e-30 absolute slack covers probabilities the SIMD exp flushes to 0
// (below e^-87.3 relative to the row max).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "cpu/kernels.h"
#include "harness.h"

using namespace kvsq;

namespace {

struct WsCase {
  int Hkv = 1, g = 1, D = 16, L = 1, w = 1, q_rows = 1;
  DType dt = DType::F32;
  Reduce red = Reduce::Mean;
  float scale = 0.f;   // 0: 1/sqrt(D)
  float qmul = 1.f;    // query magnitude (large -> peaked softmax, large logits)
  bool nan_outside = true;  // q rows before the window hold NaN: they must not be read
};

// Storage of a tensor in dtype dt plus the exact f32 values it holds.
struct Stored {
  std::vector<uint16_t> h;
  std::vector<float> f;   // f32 storage, or the decoded f16/bf16 values
  std::vector<float> val; // decoded values (what the kernel sees)
  const void* ptr(DType dt) const { return dt == DType::F32 ? static_cast<const void*>(f.data()) : h.data(); }
};

Stored store(const std::vector<float>& x, DType dt) {
  Stored s;
  s.val.resize(x.size());
  if (dt == DType::F32) {
    s.f = x;
    s.val = x;
  } else {
    s.h.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      s.h[i] = dt == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
      s.val[i] = dt == DType::F16 ? f16_to_f32(s.h[i]) : bf16_to_f32(s.h[i]);
    }
  }
  return s;
}

const char* red_name(Reduce r) { return r == Reduce::Mean ? "mean" : r == Reduce::Sum ? "sum" : "max"; }

// Runs one case on the currently forced path and compares with the reference.
void run_case(const WsCase& cs) {
  const int Hq = cs.Hkv * cs.g, D = cs.D, L = cs.L, w = cs.w, QR = cs.q_rows;
  const float scale = cs.scale != 0.f ? cs.scale : 1.f / std::sqrt(float(D));
  std::vector<float> q(size_t(Hq) * QR * D), k(size_t(cs.Hkv) * L * D);
  for (auto& x : q) x = kvsqtest::normal() * cs.qmul;
  for (auto& x : k) x = kvsqtest::normal();
  if (cs.nan_outside)
    for (int h = 0; h < Hq; ++h)
      for (int r = 0; r < QR - w; ++r)
        for (int d = 0; d < D; ++d) q[(size_t(h) * QR + r) * D + d] = std::numeric_limits<float>::quiet_NaN();
  const Stored qs = store(q, cs.dt), ks = store(k, cs.dt);

  std::vector<float> out(size_t(cs.Hkv) * L, -7.f);
  WindowScoresArgs a;
  a.num_q_heads = Hq;
  a.num_kv_heads = cs.Hkv;
  a.head_dim = D;
  a.seq_len = L;
  a.window = w;
  a.q_rows = QR;
  a.dtype = cs.dt;
  a.scale = scale;
  a.q = qs.ptr(cs.dt);
  a.k = ks.ptr(cs.dt);
  a.reduce = cs.red;
  a.out = out.data();
  const Status st = cpu_window_scores(a);
  CHECK_MSG(st == Status::Ok, status_name(st));

  const double u = std::ldexp(1.0, -24);
  std::vector<double> z(L), A(L), tolA(L);
  for (int j = 0; j < cs.Hkv; ++j) {
    std::vector<double> ref(L, cs.red == Reduce::Max ? -1.0 : 0.0), tol(L, 0.0);
    for (int hh = 0; hh < cs.g; ++hh) {
      const int h = j * cs.g + hh;
      std::fill(A.begin(), A.end(), 0.0);
      std::fill(tolA.begin(), tolA.end(), 0.0);
      for (int i = 0; i < w; ++i) {
        const float* qi = qs.val.data() + (size_t(h) * QR + QR - w + i) * D;
        const int p = L - w + i;
        double M = -INFINITY, B = 0.0, zmax = 0.0;
        for (int t = 0; t <= p; ++t) {
          const float* kt = ks.val.data() + (size_t(j) * L + t) * D;
          double dot = 0.0, ab = 0.0;
          for (int d = 0; d < D; ++d) {
            dot += double(qi[d]) * double(kt[d]);
            ab += std::fabs(double(qi[d]) * double(kt[d]));
          }
          z[t] = double(scale) * dot;
          M = std::max(M, z[t]);
          B = std::max(B, ab);
          zmax = std::max(zmax, std::fabs(z[t]));
        }
        double S = 0.0;
        for (int t = 0; t <= p; ++t) S += std::exp(z[t] - M);
        const double dz = std::fabs(double(scale)) * D * u * B + u * zmax;
        const double rel = 2.0 * dz + 4e-5;
        for (int t = 0; t <= p; ++t) {
          const double P = std::exp(z[t] - M) / S;
          A[t] += P;
          tolA[t] += P * rel;
        }
      }
      for (int t = 0; t < L; ++t) {
        if (cs.red == Reduce::Max) {
          ref[t] = std::max(ref[t], A[t]);
          tol[t] = std::max(tol[t], tolA[t]);
        } else {
          ref[t] += A[t];
          tol[t] += tolA[t];
        }
      }
    }
    if (cs.red == Reduce::Mean)
      for (int t = 0; t < L; ++t) ref[t] /= cs.g, tol[t] /= cs.g;
    for (int t = 0; t < L; ++t) {
      const double got = out[size_t(j) * L + t];
      CHECK_MSG(std::fabs(got - ref[t]) <= tol[t] + 1e-30,
                "Hkv " << cs.Hkv << " g " << cs.g << " D " << D << " L " << L << " w " << w << " q_rows " << QR
                       << " " << dtype_name(cs.dt) << " " << red_name(cs.red) << " simd "
                       << cpu_features().simd() << ": out[" << j << "," << t << "] = " << got << " ref " << ref[t]
                       << " tol " << tol[t]);
    }
  }
}

// Both paths; SKIP-free: without AVX2 the "SIMD" pass is the portable path again.
template <class F>
void both_paths(F&& f) {
  for (int mode : {1, 0}) {
    cpu_features_force(mode);
    try {
      f();
    } catch (...) {
      cpu_features_force(-1);
      throw;
    }
  }
  cpu_features_force(-1);
}

const DType kDTypes[] = {DType::F32, DType::F16, DType::BF16};
const Reduce kReduces[] = {Reduce::Mean, Reduce::Sum, Reduce::Max};

}  // namespace

// Every (L, w) pair of the awkward sizes; D, g, dtype, reduce rotate through
// their values so each appears with small and large L.
KVSQ_TEST(window_scores_sizes_vs_reference) {
  const int Ls[] = {1, 17, 1000, 4097};
  const int Ds[] = {16, 40, 64, 128};
  const int gs[] = {1, 2, 4, 8};
  int n = 0;
  for (int L : Ls) {
    for (int wsel : {1, 17, 32, -1}) {
      const int w = wsel < 0 ? L : wsel;
      if (w > L) continue;
      WsCase cs;
      cs.L = L;
      cs.w = w;
      // w = L at L = 4097 costs L^2 D per head: keep that one small.
      const bool big = int64_t(L) * w > 200000;
      cs.D = big ? 16 : Ds[n % 4];
      cs.g = big ? 2 : gs[(n / 2) % 4];
      cs.Hkv = big ? 1 : 1 + n % 2;
      cs.dt = kDTypes[n % 3];
      cs.red = kReduces[(n / 3) % 3];
      cs.q_rows = w + (n % 3 == 1 ? kvsqtest::randint(1, 5) : 0);
      both_paths([&] { run_case(cs); });
      ++n;
    }
  }
}

// All dtypes x reduce modes x group sizes x head dims at a moderate length.
KVSQ_TEST(window_scores_dtype_reduce_group_dim) {
  const int Ds[] = {16, 40, 64, 128};
  for (DType dt : kDTypes)
    for (Reduce red : kReduces)
      for (int g : {1, 2, 4, 8})
        for (int D : Ds) {
          WsCase cs;
          cs.dt = dt;
          cs.red = red;
          cs.g = g;
          cs.D = D;
          cs.Hkv = kvsqtest::randint(1, 2);
          cs.L = kvsqtest::randint(40, 300);
          cs.w = std::min(cs.L, kvsqtest::randint(1, 40));
          cs.q_rows = cs.w + kvsqtest::randint(0, 3);
          both_paths([&] { run_case(cs); });
        }
}

// Odd head dims (not a multiple of 8: the packing tail) and row tiles that do
// not divide w (g * w > 128 rows: several tiles, a partial last one).
KVSQ_TEST(window_scores_odd_dims_and_tiles) {
  for (int D : {1, 3, 20, 77}) {
    WsCase cs;
    cs.D = D;
    cs.g = 3;
    cs.Hkv = 2;
    cs.L = 333;
    cs.w = 50;  // 3 * 50 = 150 rows: tiles of 42 window rows
    cs.q_rows = 53;
    cs.dt = kDTypes[D % 3];
    cs.red = kReduces[D % 3];
    both_paths([&] { run_case(cs); });
  }
  WsCase cs;  // H2O with g = 8: tiles of 16 window rows down the triangle
  cs.D = 24;
  cs.g = 8;
  cs.L = cs.w = cs.q_rows = 203;
  cs.red = Reduce::Max;
  cs.dt = DType::BF16;
  both_paths([&] { run_case(cs); });
}

// Large logits (|z| ~ 30..100): the softmax must stay finite and exact in shape.
KVSQ_TEST(window_scores_large_logits) {
  for (Reduce red : kReduces) {
    WsCase cs;
    cs.D = 64;
    cs.g = 2;
    cs.Hkv = 2;
    cs.L = 700;
    cs.w = 32;
    cs.q_rows = 32;
    cs.qmul = 40.f;
    cs.red = red;
    cs.dt = DType::F16;
    both_paths([&] { run_case(cs); });
  }
  WsCase cs;
  cs.D = 32;
  cs.L = cs.w = cs.q_rows = 300;
  cs.scale = -0.5f;  // negative scale: the max is not scale * max(dot)
  both_paths([&] { run_case(cs); });
}

// Each row's probabilities sum to 1: with Sum, sum_t out[j, t] = g * w, also
// at a long length (cheap check of the blocked normalisation).
KVSQ_TEST(window_scores_rows_sum_to_one_long) {
  const int Hkv = 2, g = 2, D = 64, L = 20000, w = 32;
  std::vector<float> q(size_t(Hkv) * g * w * D), k(size_t(Hkv) * L * D);
  for (auto& x : q) x = kvsqtest::normal() * 3.f;
  for (auto& x : k) x = kvsqtest::normal();
  for (DType dt : kDTypes) {
    const Stored qs = store(q, dt), ks = store(k, dt);
    both_paths([&] {
      std::vector<float> out(size_t(Hkv) * L);
      WindowScoresArgs a;
      a.num_q_heads = Hkv * g;
      a.num_kv_heads = Hkv;
      a.head_dim = D;
      a.seq_len = L;
      a.window = w;
      a.q_rows = w;
      a.dtype = dt;
      a.scale = 1.f / 8.f;
      a.q = qs.ptr(dt);
      a.k = ks.ptr(dt);
      a.reduce = Reduce::Sum;
      a.out = out.data();
      CHECK(cpu_window_scores(a) == Status::Ok);
      for (int j = 0; j < Hkv; ++j) {
        double s = 0.0;
        for (int t = 0; t < L; ++t) {
          CHECK(out[size_t(j) * L + t] >= 0.f);
          s += out[size_t(j) * L + t];
        }
        CHECK_CLOSE(s, double(g * w), 0.0, 1e-4);
      }
    });
  }
}

KVSQ_TEST(window_scores_invalid_args) {
  const int Hq = 4, Hkv = 2, D = 8, L = 10, w = 4;
  std::vector<float> q(size_t(Hq) * w * D, 0.5f), k(size_t(Hkv) * L * D, 0.25f);
  std::vector<float> out(size_t(Hkv) * L, -3.f);
  WindowScoresArgs base;
  base.num_q_heads = Hq;
  base.num_kv_heads = Hkv;
  base.head_dim = D;
  base.seq_len = L;
  base.window = w;
  base.q_rows = w;
  base.dtype = DType::F32;
  base.scale = 0.3f;
  base.q = q.data();
  base.k = k.data();
  base.out = out.data();
  auto expect = [&](WindowScoresArgs a, Status want, const char* what) {
    const Status got = cpu_window_scores(a);
    CHECK_MSG(got == want, what << ": got " << status_name(got) << " want " << status_name(want));
    for (float x : out) CHECK_MSG(x == -3.f, what << ": out written on failure");
  };
  WindowScoresArgs a;
  a = base; a.num_q_heads = 0; expect(a, Status::Shape, "Hq 0");
  a = base; a.num_q_heads = -4; expect(a, Status::Shape, "Hq < 0");
  a = base; a.num_kv_heads = 0; expect(a, Status::Shape, "Hkv 0");
  a = base; a.num_q_heads = 3; expect(a, Status::Shape, "Hq % Hkv");
  a = base; a.num_kv_heads = 4; a.num_q_heads = 2; expect(a, Status::Shape, "Hkv > Hq");
  a = base; a.head_dim = 0; expect(a, Status::Shape, "D 0");
  a = base; a.seq_len = 0; expect(a, Status::Shape, "L 0");
  a = base; a.seq_len = -1; expect(a, Status::Shape, "L < 0");
  a = base; a.window = 0; expect(a, Status::Shape, "w 0");
  a = base; a.window = L + 1; a.q_rows = L + 1; expect(a, Status::Shape, "w > L");
  a = base; a.q_rows = w - 1; expect(a, Status::Shape, "w > q_rows");
  a = base; a.q_rows = 0; expect(a, Status::Shape, "q_rows 0");
  a = base; a.q = nullptr; expect(a, Status::Shape, "null q");
  a = base; a.k = nullptr; expect(a, Status::Shape, "null k");
  a = base; a.out = nullptr; expect(a, Status::Shape, "null out");
  a = base; a.dtype = DType::I32; expect(a, Status::DType, "i32");
  a = base; a.dtype = static_cast<DType>(9); expect(a, Status::DType, "bad dtype");
  a = base; a.reduce = static_cast<Reduce>(3); expect(a, Status::Range, "bad reduce");
  a = base; a.reduce = static_cast<Reduce>(-1); expect(a, Status::Range, "bad reduce < 0");
  // and the base itself is fine
  CHECK(cpu_window_scores(base) == Status::Ok);
}
