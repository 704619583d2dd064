// The CUDA scoring kernels (cuda/window_scores.cu, pool_chunk.cu, topk.cu,
// quest_bounds.cu) against their CPU twins (cpu_* of native/cpu/kernels.h run
// on host copies of the same inputs), on fresh random inputs of awkward sizes.
// Without a device every test SKIPs (counted as skipped, never as passed).
//
// Tolerances (each derived in the kernel's header comment):
//  * window scores: both results are within sum_i P_i[t] (2 dz_i + eps) of the
//    exact column sums (CPU: dz = |s| D 2^-24 B + 2^-24 zmax, eps 4e-5; GPU:
//    dz = |s| B ((D+2) 2^-22 [+ 2^-14 for f32 inputs, bf16 hi/lo split]) +
//    2^-22 zmax, eps 1e-4), B = max_t sum_d |q_d k_d|. Every term is positive,
//    so |gpu - cpu| <= rel * cpu with rel = 2 (dz_cpu + dz_gpu) + 1.4e-4 taken
//    over the group's rows (mean/sum linear, max 1-Lipschitz). Here B is
//    bounded above by sum_d |q_d| max_t |k_t,d| (cheap, and only looser).
//  * pool1d: bit-identical (same fold order).
//  * chunk scores: 2^-23 |cpu| + 1e-12 sum|in| (both double sums, rounded once).
//  * top-k: exact (indices and counts, including the -1 padding).
//  * Quest bounds: 2 (D + 2) 2^-24 sum_d |q_d| max(|kmin_d|, |kmax_d|) (each is
//    within half of that of the exact value); -inf entries exact.
//
// cuda_bench_scores (KVSQ_CUDA_BENCH=1): CUDA-event timings, median of many,
// L2 flushed between launches by writing a 100 MB buffer, device copy
// bandwidth measured in the same run; "BENCH ..." lines.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "../../cuda/launchers.h"
#include "core/device.h"
#include "core/dtype.h"
#include "cpu/kernels.h"
#include "cuda_need_device.h"
#include "harness.h"
#include "quest_overflow_case.h"

using namespace kvsq;
using kvsqtest::normal;
using kvsqtest::randint;

namespace {

template <class T>
struct DBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DBuf(size_t n_) : n(n_) {
    if (n) CHECK_MSG(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess, "cudaMalloc " << n * sizeof(T));
  }
  DBuf(const DBuf&) = delete;
  DBuf& operator=(const DBuf&) = delete;
  ~DBuf() {
    if (p) cudaFree(p);
  }
  void up(const void* h) { CHECK(cudaMemcpy(p, h, n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess); }
  void down(void* h) const { CHECK(cudaMemcpy(h, p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess); }
};

// A typed host buffer: set() rounds to the dtype, get() decodes exactly.
struct HBuf {
  DType t;
  std::vector<uint8_t> bytes;
  HBuf(DType t_, size_t n) : t(t_), bytes(n * dtype_size(t_)) {}
  void* data() { return bytes.data(); }
  void set(size_t i, float v) {
    if (t == DType::F32) {
      std::memcpy(&bytes[i * 4], &v, 4);
    } else {
      const uint16_t h = t == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(&bytes[i * 2], &h, 2);
    }
  }
  float get(size_t i) const {
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

// q and k as the kernel before window scores writes them (a projection, a
// gather): window scores' launches may then not read them before they wait
// for that kernel (cuda/common.cuh; the emulator starts dependent launches
// early, so a launch that did would read what was there before the copy).
__global__ void copy2_kernel(uint8_t* d1, const uint8_t* s1, size_t n1, uint8_t* d2, const uint8_t* s2, size_t n2) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n1 + n2; i += stride) {
    if (i < n1) d1[i] = s1[i];
    else d2[i - n1] = s2[i - n1];
  }
}

const DType kFloat[3] = {DType::F32, DType::F16, DType::BF16};
const Reduce kReduce[3] = {Reduce::Mean, Reduce::Sum, Reduce::Max};
const char* rname(Reduce r) { return r == Reduce::Mean ? "mean" : r == Reduce::Sum ? "sum" : "max"; }

// ---------------------------------------------------------------- window scores

struct WsCase {
  int Hkv = 1, g = 1, D = 64, L = 1, w = 1, q_rows = 1;
  DType dt = DType::BF16;
  Reduce red = Reduce::Mean;
  float qmul = 1.f, scale = 0.f;
};

void ws_run(const WsCase& c) {
  const int Hq = c.Hkv * c.g, D = c.D, L = c.L, w = c.w, QR = c.q_rows;
  const float scale = c.scale != 0.f ? c.scale : 1.f / std::sqrt(float(D));
  HBuf q(c.dt, size_t(Hq) * QR * D), k(c.dt, size_t(c.Hkv) * L * D);
  for (int h = 0; h < Hq; ++h)
    for (int r = 0; r < QR; ++r)
      for (int d = 0; d < D; ++d)  // rows before the window must not be read: NaN
        q.set((size_t(h) * QR + r) * D + d, r < QR - w ? std::numeric_limits<float>::quiet_NaN() : normal() * c.qmul);
  for (size_t i = 0; i < size_t(c.Hkv) * L * D; ++i) k.set(i, normal());

  WindowScoresArgs a;
  a.num_q_heads = Hq;
  a.num_kv_heads = c.Hkv;
  a.head_dim = D;
  a.seq_len = L;
  a.window = w;
  a.q_rows = QR;
  a.dtype = c.dt;
  a.scale = scale;
  a.reduce = c.red;
  std::vector<float> ref(size_t(c.Hkv) * L), got(size_t(c.Hkv) * L);
  a.q = q.data();
  a.k = k.data();
  a.out = ref.data();
  CHECK(cpu_window_scores(a) == Status::Ok);

  DBuf<uint8_t> dq(q.bytes.size()), dk(k.bytes.size()), sq(q.bytes.size()), sk(k.bytes.size());
  DBuf<float> dout(got.size());
  sq.up(q.data());
  sk.up(k.data());
  a.q = dq.p;
  a.k = dk.p;
  a.out = dout.p;
  // 16-bit inputs: the wgmma path (on a 9.0 device with 90a code, and the
  // emulator) and the mma.sync path, each against the CPU.
  struct Restore {
    ~Restore() { cuda_set_wgmma(true); }
  } restore;
  for (const bool wg : {true, false}) {
    if (!wg && c.dt == DType::F32) break;  // f32 has the mma.sync path only
    cuda_set_wgmma(wg);
    CHECK(cudaMemset(dout.p, 0xff, got.size() * 4) == cudaSuccess);  // NaN sentinel: every entry must be written
    CHECK(cudaMemset(dq.p, 0xff, dq.n) == cudaSuccess);  // NaN until the copy below
    CHECK(cudaMemset(dk.p, 0xff, dk.n) == cudaSuccess);
    copy2_kernel<<<64, 256>>>(dq.p, sq.p, dq.n, dk.p, sk.p, dk.n);
    CHECK(cudaGetLastError() == cudaSuccess);
    const Status st = cuda_window_scores(a, nullptr);
    CHECK_MSG(st == Status::Ok, status_name(st) << " " << last_cuda_error());
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    dout.down(got.data());

    const double u24 = std::ldexp(1.0, -24), u22 = std::ldexp(1.0, -22), u14 = std::ldexp(1.0, -14);
    for (int j = 0; j < c.Hkv; ++j) {
      std::vector<double> kabs(D, 0.0);
      for (int t = 0; t < L; ++t)
        for (int d = 0; d < D; ++d) kabs[d] = std::max(kabs[d], double(std::fabs(k.get((size_t(j) * L + t) * D + d))));
      double rel = 0.0;
      for (int hh = 0; hh < c.g; ++hh)
        for (int i = 0; i < w; ++i) {
          const size_t row = (size_t(j) * c.g + hh) * QR + (QR - w + i);
          double B = 0.0;
          for (int d = 0; d < D; ++d) B += std::fabs(q.get(row * D + d)) * kabs[d];
          const double zmax = std::fabs(scale) * B;
          const double dz_cpu = std::fabs(scale) * D * u24 * B + u24 * zmax;
          const double dz_gpu = std::fabs(scale) * B * ((D + 2) * u22 + (c.dt == DType::F32 ? u14 : 0.0)) + u22 * zmax;
          rel = std::max(rel, 2.0 * (dz_cpu + dz_gpu) + 1.4e-4);
        }
      for (int t = 0; t < L; ++t) {
        const double r = ref[size_t(j) * L + t], x = got[size_t(j) * L + t];
        const double tol = rel * std::fabs(r) * 1.01 + 1e-30 * w * c.g;
        CHECK_MSG(std::fabs(x - r) <= tol, "Hkv " << c.Hkv << " g " << c.g << " D " << D << " L " << L << " w " << w
                                                  << " q_rows " << QR << " " << dtype_name(c.dt) << " " << rname(c.red)
                                                  << (wg ? " wgmma allowed" : " mma.sync") << ": out[" << j << ","
                                                  << t << "] gpu " << x << " cpu " << r << " tol " << tol);
      }
    }
  }
}

}  // namespace

KVSQ_TEST(cuda_window_scores_vs_cpu) {
  need_device();
  const int Ls[] = {1, 17, 1000, 4097};
  int n = 0;
  for (int L : Ls)
    for (int wsel : {1, 32, -1}) {
      const int w = wsel < 0 ? L : wsel;
      if (w > L || (wsel < 0 && (L == 1 || L == 17) && n % 2)) continue;
      WsCase c;
      c.L = L;
      c.w = w;
      c.D = n % 2 ? 128 : 64;
      const bool big = int64_t(L) * w > 200000;
      c.g = big ? 2 : 1 + n % 8;
      c.Hkv = big ? 1 : 1 + n % 3;
      c.dt = kFloat[n % 3];
      c.red = kReduce[(n / 3) % 3];
      c.q_rows = w + (n % 3 == 1 ? randint(1, 5) : 0);
      ws_run(c);
      ++n;
    }
}

// Every dtype x reduce x group size at a moderate length, D 64 and 128.
KVSQ_TEST(cuda_window_scores_dtype_reduce_group) {
  need_device();
  for (DType dt : kFloat)
    for (Reduce red : kReduce)
      for (int g = 1; g <= 8; ++g) {
        WsCase c;
        c.dt = dt;
        c.red = red;
        c.g = g;
        c.D = g % 2 ? 64 : 128;
        c.Hkv = randint(1, 3);
        c.L = randint(40, 700);
        c.w = std::min(c.L, randint(1, 40));
        c.q_rows = c.w + randint(0, 3);
        ws_run(c);
      }
}

// Row tiles: heads that straddle warps (g 3, w 50: 42 rows per tile), several
// tiles per head (atomic accumulation), Max with several tiles (one head at a
// time), H2O (w = L), large and negative logits.
KVSQ_TEST(cuda_window_scores_tiles_and_logits) {
  need_device();
  for (Reduce red : kReduce) {
    WsCase c;
    c.g = 3;
    c.Hkv = 2;
    c.L = 333;
    c.w = 50;
    c.q_rows = 53;
    c.red = red;
    c.dt = DType::F16;
    ws_run(c);
    c.g = 4;
    c.w = c.L = c.q_rows = 1000;
    c.Hkv = 1;
    c.dt = DType::BF16;
    ws_run(c);
  }
  for (Reduce red : kReduce) {
    WsCase c;
    c.g = 2;
    c.Hkv = 2;
    c.D = 64;
    c.L = 700;
    c.w = 32;
    c.q_rows = 32;
    c.qmul = 40.f;  // |z| ~ 30..100: peaked softmax
    c.red = red;
    c.dt = kFloat[int(red)];
    ws_run(c);
  }
  WsCase c;
  c.L = c.w = c.q_rows = 300;
  c.D = 128;
  c.scale = -0.5f;  // the max is not scale * max(dot)
  c.dt = DType::F32;
  ws_run(c);
}

// Head dims other than the unrolled 64 / 128 / 256 (zero-padded to the next
// of them: 8, 40, 80, 96, 112, 160, 200, 248) and 256 itself, in every
// dtype (f32 also at D % 8 == 4), on both kernels.
KVSQ_TEST(cuda_window_scores_head_dims) {
  need_device();
  int n = 0;
  for (int D : {8, 40, 80, 96, 112, 160, 200, 248, 256, 12, 100}) {
    WsCase c;
    c.D = D;
    c.dt = D % 8 ? DType::F32 : kFloat[n % 3];
    c.red = kReduce[n % 3];
    c.g = 1 + n % 4;
    c.Hkv = 1 + n % 2;
    c.L = randint(30, 300);
    c.w = std::min(c.L, randint(1, 40));
    c.q_rows = c.w + randint(0, 2);
    ws_run(c);
    ++n;
  }
}

#ifdef KVSQ_CUDA_EMU
// Emulator only (the part is set, not found): a 99 KB device (sm_86/89) takes
// the 16-bit kernels with a 2-chunk ring where pass 2 would not fit with 3
// (D 256 at any group, D 128 with more than 96 heads per tile), f32 with its
// 2-tile ring, and the lean tiling where no ring fits a column-sum row per
// head (D above 128 with more than 66 heads per tile: Sum and Mean into one
// row, directly and with several row tiles per head; Max one head at a
// time, which the natural tiling would run as one tile). An sm_80 (163 KB)
// keeps the 3-chunk ring at D 256 with 128 heads per tile (exactly its
// limit).
KVSQ_TEST(cuda_window_scores_other_parts) {
  cuda_emu::PartScope scope(cuda_emu::part("sm_86"));
  const struct { int D, g, w; DType dt; Reduce red; } ok[] = {
      {256, 4, 20, DType::BF16, Reduce::Mean}, {200, 3, 9, DType::F16, Reduce::Sum},
      {128, 100, 1, DType::F16, Reduce::Mean}, {256, 2, 17, DType::F32, Reduce::Max},
      {256, 80, 3, DType::BF16, Reduce::Max},  // Max over 240 rows: one head per tile
      // lean: one column-sum row (80 rows in one tile; 70 heads x 3 rows in three tiles)
      {256, 80, 1, DType::BF16, Reduce::Sum}, {200, 70, 3, DType::F16, Reduce::Mean},
      {256, 70, 1, DType::F32, Reduce::Mean},
      {160, 96, 1, DType::F16, Reduce::Max},  // lean Max: 96 rows, one head at a time
  };
  for (const auto& o : ok) {
    WsCase c;
    c.D = o.D;
    c.g = o.g;
    c.dt = o.dt;
    c.red = o.red;
    c.L = randint(o.w, 200);
    c.w = o.w;
    c.q_rows = c.w + randint(0, 2);
    ws_run(c);
  }
  cuda_emu::st().dev = cuda_emu::part("sm_80");
  WsCase c;
  c.D = 256;
  c.g = 128;
  c.L = 70;
  c.w = c.q_rows = 1;
  c.dt = DType::BF16;
  ws_run(c);
}
#endif

// The key split at other CTA counts per SM than the default: 1 leaves whole
// splits without keys (they report (-inf, 0) to the merge), 64 gives every
// split one chunk. (4 KV heads of L 3001: 47 chunks over 33 or 47 splits.)
KVSQ_TEST(cuda_window_scores_key_splits) {
  need_device();
  struct Restore {
    ~Restore() { cuda_window_scores_set_ctas_per_sm(0); }
  } restore;
  for (int per_sm : {1, 64}) {
    cuda_window_scores_set_ctas_per_sm(per_sm);
    WsCase c;
    c.Hkv = 4;
    c.g = 4;
    c.L = 3001;
    c.w = c.q_rows = 32;
    c.dt = per_sm == 1 ? DType::BF16 : DType::F16;
    c.red = per_sm == 1 ? Reduce::Mean : Reduce::Max;
    ws_run(c);
  }
}

// Sum reduce: each row's probabilities sum to 1, so sum_t out[j, t] = g * w (long L).
KVSQ_TEST(cuda_window_scores_rows_sum_to_one_long) {
  need_device();
#ifdef KVSQ_CUDA_EMU
  const int Hkv = 2, g = 4, D = 128, L = 5003, w = 32;  // still many splits; a quarter of the emulator's time
#else
  const int Hkv = 2, g = 4, D = 128, L = 20000, w = 32;
#endif
  for (DType dt : kFloat) {
    HBuf q(dt, size_t(Hkv) * g * w * D), k(dt, size_t(Hkv) * L * D);
    for (size_t i = 0; i < q.bytes.size() / dtype_size(dt); ++i) q.set(i, normal() * 3.f);
    for (size_t i = 0; i < k.bytes.size() / dtype_size(dt); ++i) k.set(i, normal());
    DBuf<uint8_t> dq(q.bytes.size()), dk(k.bytes.size());
    DBuf<float> dout(size_t(Hkv) * L);
    dq.up(q.data());
    dk.up(k.data());
    WindowScoresArgs a;
    a.num_q_heads = Hkv * g;
    a.num_kv_heads = Hkv;
    a.head_dim = D;
    a.seq_len = L;
    a.window = w;
    a.q_rows = w;
    a.dtype = dt;
    a.scale = 1.f / 8.f;
    a.q = dq.p;
    a.k = dk.p;
    a.reduce = Reduce::Sum;
    a.out = dout.p;
    CHECK(cuda_window_scores(a, nullptr) == Status::Ok);
    std::vector<float> out(size_t(Hkv) * L);
    dout.down(out.data());
    for (int j = 0; j < Hkv; ++j) {
      double s = 0.0;
      for (int t = 0; t < L; ++t) {
        CHECK(out[size_t(j) * L + t] >= 0.f);
        s += out[size_t(j) * L + t];
      }
      CHECK_CLOSE(s, double(g * w), 0.0, 1e-4);
    }
  }
}

// Unsupported head dims and invalid arguments: Status::Shape, out untouched.
KVSQ_TEST(cuda_window_scores_invalid) {
  need_device();
  const int Hq = 4, Hkv = 2, L = 10, w = 4;
  DBuf<float> dq(size_t(Hq) * w * 128), dk(size_t(Hkv) * L * 128), dout(size_t(Hkv) * L);
  CHECK(cudaMemset(dq.p, 0, dq.n * 4) == cudaSuccess);
  CHECK(cudaMemset(dk.p, 0, dk.n * 4) == cudaSuccess);
  CHECK(cudaMemset(dout.p, 0x7f, dout.n * 4) == cudaSuccess);
  WindowScoresArgs base;
  base.num_q_heads = Hq;
  base.num_kv_heads = Hkv;
  base.head_dim = 64;
  base.seq_len = L;
  base.window = w;
  base.q_rows = w;
  base.dtype = DType::F32;
  base.scale = 0.3f;
  base.q = dq.p;
  base.k = dk.p;
  base.out = dout.p;
  auto expect = [&](WindowScoresArgs a, Status want, const char* what) {
    const Status got = cuda_window_scores(a, nullptr);
    CHECK_MSG(got == want, what << ": got " << status_name(got) << " want " << status_name(want));
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<uint32_t> o(dout.n);
    dout.down(o.data());
    for (uint32_t x : o) CHECK_MSG(x == 0x7f7f7f7fu, what << ": out written on failure");
  };
  WindowScoresArgs a;
  a = base; a.head_dim = 42; expect(a, Status::Shape, "f32 D 42 (rows not whole 16-byte vectors)");
  a = base; a.head_dim = 260; expect(a, Status::Shape, "D 260 (above 256)");
  a = base; a.head_dim = 36; a.dtype = DType::BF16; expect(a, Status::Shape, "bf16 D 36 (rows not whole 16-byte vectors)");
  a = base; a.head_dim = 0; expect(a, Status::Shape, "D 0");
  a = base; a.num_q_heads = 3; expect(a, Status::Shape, "Hq % Hkv");
  a = base; a.window = L + 1; a.q_rows = L + 1; expect(a, Status::Shape, "w > L");
  a = base; a.q_rows = w - 1; expect(a, Status::Shape, "q_rows < w");
  a = base; a.k = nullptr; expect(a, Status::Shape, "k null");
  a = base; a.out = nullptr; expect(a, Status::Shape, "out null");
  a = base; a.dtype = DType::I32; expect(a, Status::DType, "dtype i32");
  a = base; a.reduce = Reduce(7); expect(a, Status::Range, "reduce");
  // D 42 is a valid CPU input: the CPU twin serves it.
  std::vector<float> hq(size_t(Hq) * w * 42, 0.1f), hk(size_t(Hkv) * L * 42, 0.2f), ho(size_t(Hkv) * L);
  a = base;
  a.head_dim = 42;
  a.q = hq.data();
  a.k = hk.data();
  a.out = ho.data();
  CHECK(cpu_window_scores(a) == Status::Ok);
}

// ---------------------------------------------------------------- pool1d / chunk scores

KVSQ_TEST(cuda_pool1d_vs_cpu) {
  need_device();
  for (int n : {1, 17, 1000, 4097})
    for (int kernel : {1, 3, 5, 7, 9, 31})
      for (PoolMode mode : {PoolMode::Max, PoolMode::Avg}) {
        const int rows = randint(1, 9);
        const int64_t stride = n + randint(0, 40);
        std::vector<float> in(size_t(rows) * stride);
        for (auto& x : in) x = std::exp(2.f * normal()) * 1e-3f;
        Pool1dArgs a;
        a.rows = rows;
        a.n = n;
        a.in_stride = stride;
        a.kernel = kernel;
        a.mode = mode;
        std::vector<float> ref(size_t(rows) * n), got(ref.size());
        a.in = in.data();
        a.out = ref.data();
        CHECK(cpu_pool1d(a) == Status::Ok);
        DBuf<float> din(in.size()), dout(got.size());
        din.up(in.data());
        a.in = din.p;
        a.out = dout.p;
        CHECK(cuda_pool1d(a, nullptr) == Status::Ok);
        dout.down(got.data());
        for (size_t i = 0; i < ref.size(); ++i)
          CHECK_MSG(std::memcmp(&ref[i], &got[i], 4) == 0, "n " << n << " k " << kernel << " mode " << int(mode)
                                                                  << " i " << i << ": " << got[i] << " vs " << ref[i]);
      }
  // invalid: even kernel, stride < n
  Pool1dArgs a;
  DBuf<float> d(64), o(64);
  a.rows = 1; a.n = 8; a.in_stride = 8; a.kernel = 4; a.in = d.p; a.out = o.p;
  CHECK(cuda_pool1d(a, nullptr) == Status::Shape);
  a.kernel = 3; a.in_stride = 7;
  CHECK(cuda_pool1d(a, nullptr) == Status::Shape);
  a.in_stride = 8; a.out = d.p + 4;  // overlaps in
  CHECK(cuda_pool1d(a, nullptr) == Status::Shape);
}

KVSQ_TEST(cuda_chunk_scores_vs_cpu) {
  need_device();
  for (int n : {1, 17, 1000, 4097, 100000})
    for (int chunk : {1, 10, 64, 65, 1000, 5000}) {
      const int rows = randint(1, 8);
      const int64_t stride = n + randint(0, 40);
      std::vector<float> in(size_t(rows) * stride);
      for (auto& x : in) x = normal();
      const int64_t nc = (n + chunk - 1) / chunk;
      ChunkScoresArgs a;
      a.rows = rows;
      a.n = n;
      a.in_stride = stride;
      a.chunk = chunk;
      std::vector<float> ref(nc), got(nc);
      a.in = in.data();
      a.out = ref.data();
      CHECK(cpu_chunk_scores(a) == Status::Ok);
      DBuf<float> din(in.size()), dout(nc);
      din.up(in.data());
      a.in = din.p;
      a.out = dout.p;
      CHECK(cuda_chunk_scores(a, nullptr) == Status::Ok);
      dout.down(got.data());
      for (int64_t c = 0; c < nc; ++c) {
        double sa = 0.0;
        for (int r = 0; r < rows; ++r)
          for (int64_t t = c * chunk; t < std::min<int64_t>(n, (c + 1) * chunk); ++t) sa += std::fabs(in[r * stride + t]);
        CHECK_CLOSE(got[c], ref[c], 1e-12 * sa, std::ldexp(1.0, -23));
      }
    }
}

// ---------------------------------------------------------------- top-k

namespace {

enum class Dist { Normal, FewValues, Zeros, WithInf, Constant, Sorted };

void fill_row(float* s, int64_t n, Dist d) {
  const float vals[] = {-1.f, 0.f, 0.5f, 2.f};
  for (int64_t i = 0; i < n; ++i) {
    switch (d) {
      case Dist::Normal: s[i] = normal(); break;
      case Dist::FewValues: s[i] = vals[randint(0, 3)]; break;
      case Dist::Zeros: {
        const int c = randint(0, 9);
        s[i] = c < 4 ? 0.f : c < 8 ? -0.f : normal();
        break;
      }
      case Dist::WithInf: {
        const int c = randint(0, 19);
        s[i] = c == 0 ? INFINITY : c == 1 ? -INFINITY : normal();
        break;
      }
      case Dist::Constant: s[i] = 3.f; break;
      case Dist::Sorted: s[i] = float(i) * 0.25f; break;
    }
  }
}

struct TkCase {
  int rows = 1;
  int64_t row_stride = 0;
  std::vector<float> scores;
  std::vector<int32_t> lengths;  // empty = null
  std::vector<int32_t> k;
  int32_t out_stride = 0;
};

// Runs both twins; returns the GPU status (the CPU must agree on it).
Status tk_run(const TkCase& c, bool compare = true, bool with_count = true) {
  TopkArgs a;
  a.rows = c.rows;
  a.row_stride = c.row_stride;
  a.k = c.k.data();
  a.lengths = c.lengths.empty() ? nullptr : c.lengths.data();
  a.scores = c.scores.data();
  a.out_stride = c.out_stride;
  std::vector<int32_t> ref(size_t(c.rows) * c.out_stride, 12345), rc(c.rows, -7);
  a.out = ref.data();
  a.count = with_count ? rc.data() : nullptr;
  const Status cs = cpu_topk(a);

  DBuf<float> ds(c.scores.size());
  DBuf<int32_t> dl(c.lengths.size()), dk(c.k.size()), dout(ref.size()), dc(c.rows);
  ds.up(c.scores.data());
  if (!c.lengths.empty()) dl.up(c.lengths.data());
  dk.up(c.k.data());
  std::vector<int32_t> got(ref.size(), 12345), gc(c.rows, -7);
  if (!got.empty()) dout.up(got.data());
  dc.up(gc.data());
  a.scores = ds.p;
  a.lengths = c.lengths.empty() ? nullptr : dl.p;
  a.k = dk.p;
  a.out = dout.p;
  a.count = with_count ? dc.p : nullptr;
  const Status gs = cuda_topk(a, nullptr);
  CHECK_MSG(gs == cs, "gpu " << status_name(gs) << " cpu " << status_name(cs) << " " << last_cuda_error());
  if (!got.empty()) dout.down(got.data());
  dc.down(gc.data());
  if (compare) {
    for (int r = 0; r < c.rows; ++r) {
      CHECK_MSG(gc[r] == rc[r], "row " << r << " count gpu " << gc[r] << " cpu " << rc[r]);
      for (int j = 0; j < c.out_stride; ++j) {
        const size_t i = size_t(r) * c.out_stride + j;
        CHECK_MSG(got[i] == ref[i], "row " << r << " len " << (c.lengths.empty() ? c.row_stride : c.lengths[r])
                                          << " k " << c.k[r] << " out[" << j << "] gpu " << got[i] << " cpu "
                                          << ref[i]);
      }
    }
  }
  if (gs != Status::Ok) {  // nothing written
    for (int32_t x : got) CHECK_MSG(x == 12345, "out written on " << status_name(gs));
    for (int32_t x : gc) CHECK_MSG(x == -7, "count written on " << status_name(gs));
  }
  return gs;
}

}  // namespace

// Ragged rows (lengths 0 .. stride, k 0, 1, small, = len, > len), every value
// distribution (ties, +-0, +-inf), row strides that exercise the scalar path
// (stride % 4 != 0), the 16-byte path, clusters of 1..8 blocks and the
// uncached (re-read) path for rows too long for shared memory.
KVSQ_TEST(cuda_topk_vs_cpu) {
  need_device();
  const int64_t strides[] = {1, 17, 1000, 4097, 4096, 70001, 140000};
  int n = 0;
  for (int64_t stride : strides) {
    TkCase c;
    c.rows = stride > 50000 ? 6 : randint(1, 24);
    c.row_stride = stride;
    c.scores.resize(size_t(c.rows) * stride);
    c.out_stride = 0;
    const bool null_len = n % 3 == 2;
    for (int r = 0; r < c.rows; ++r) {
      const int64_t len = null_len ? stride : (r == 0 ? stride : randint(0, int(stride)));
      if (!null_len) c.lengths.push_back(int32_t(len));
      fill_row(c.scores.data() + size_t(r) * stride, stride, Dist((r + n) % 6));
      int k;
      switch (r % 5) {
        case 0: k = 0; break;
        case 1: k = 1; break;
        case 2: k = int(std::min<int64_t>(len, 2048)) / 2 + 1; break;
        case 3: k = int(len); break;
        default: k = int(len) + randint(1, 5); break;
      }
      if (stride > 50000 && r % 2) k = 2048;
      c.k.push_back(k);
      c.out_stride = std::max<int32_t>(c.out_stride, int32_t(std::min<int64_t>(k, len)));
    }
    c.out_stride += randint(0, 3);
    CHECK(tk_run(c, true, n % 2 == 0) == Status::Ok);
    ++n;
  }
  // one row too long for shared memory in a cluster of 8: re-read path
  TkCase c;
  c.rows = 2;
  c.row_stride = 600000;
  c.scores.resize(size_t(c.rows) * c.row_stride);
  fill_row(c.scores.data(), c.row_stride, Dist::Normal);
  fill_row(c.scores.data() + c.row_stride, c.row_stride, Dist::FewValues);
  c.k = {2048, 5000};
  c.out_stride = 5000;
  CHECK(tk_run(c) == Status::Ok);
}

KVSQ_TEST(cuda_topk_nan_and_errors) {
  need_device();
  TkCase c;
  c.rows = 4;
  c.row_stride = 5000;
  c.scores.resize(size_t(c.rows) * c.row_stride);
  for (int r = 0; r < c.rows; ++r) fill_row(c.scores.data() + size_t(r) * c.row_stride, c.row_stride, Dist::Normal);
  c.lengths = {5000, 3000, 5000, 10};
  c.k = {100, 0, 5000, 3};
  c.out_stride = 5000;
  CHECK(tk_run(c) == Status::Ok);
  // NaN in a row with k = 0 (still scanned) -> NaN, nothing written
  c.scores[size_t(1) * c.row_stride + 2999] = std::numeric_limits<float>::quiet_NaN();
  CHECK(tk_run(c, false) == Status::NaN);
  // NaN beyond a row's length is not scanned
  c.scores[size_t(1) * c.row_stride + 2999] = 1.f;
  c.scores[size_t(3) * c.row_stride + 4000] = std::numeric_limits<float>::quiet_NaN();
  CHECK(tk_run(c) == Status::Ok);
  // k < 0 -> Range; len > stride -> Range; min(k, len) > out_stride -> Shape
  TkCase e = c;
  e.k[2] = -1;
  CHECK(tk_run(e, false) == Status::Range);
  e = c;
  e.lengths[0] = 5001;
  CHECK(tk_run(e, false) == Status::Range);
  e = c;
  e.out_stride = 4999;
  e.k[2] = 5000;
  {
    TopkArgs a;
    a.rows = 1;
    a.row_stride = 10;
    a.k = nullptr;
    CHECK(cuda_topk(a, nullptr) == Status::Shape);
  }
  CHECK(tk_run(e, false) == Status::Shape);
}

// The two kernels of cuda_topk (cuda/topk.cu): the sampled one-pass filter
// and the cluster radix select it leaves rows to. Each case runs with the
// filter on and off, both against the CPU twin. Rows aimed at each of the
// filter's branches: sampled (len > 6144, k small), every key a candidate
// (len <= 6144), a sample that cannot promise k within 6144 (large k), ties
// across the threshold (few distinct values: too many candidates), sorted
// rows (the answer in one block of the cluster), a sample that misleads
// (fewer than k candidates), +-Inf, and more rows than
// the radix kernel's grid has clusters (its loop over the filter's list).
namespace {
// Rows of one stride aimed at the filter's branches (see below).
TkCase mixed_rows(int rows, int64_t stride) {
  TkCase c;
  c.rows = rows;
  c.row_stride = stride;
  c.scores.resize(size_t(c.rows) * stride);
  c.lengths.reserve(size_t(c.rows));
  c.k.reserve(size_t(c.rows));
  for (int r = 0; r < c.rows; ++r) {
    int64_t len;
    switch (r % 7) {
      case 0: len = stride; break;
      case 1: len = std::min<int64_t>(stride, 6144); break;
      case 2: len = std::min<int64_t>(stride, 6145); break;
      default: len = randint(1, int(stride)); break;
    }
    c.lengths.push_back(int32_t(len));
    float* row = c.scores.data() + size_t(r) * stride;
    switch (r % 7) {
      case 0: fill_row(row, stride, Dist::Normal); break;
      case 1: fill_row(row, stride, Dist::FewValues); break;
      case 2: fill_row(row, stride, Dist::Sorted); break;
      case 3:  // descending: the answer at the row's start
        for (int64_t i = 0; i < stride; ++i) row[i] = float(stride - i) * 0.5f;
        break;
      case 4: fill_row(row, stride, Dist::WithInf); break;
      case 5: fill_row(row, stride, Dist::Zeros); break;
      default:  // descending runs of 1024: the filter's sample sees only their heads, keeps < k
        for (int64_t i = 0; i < stride; ++i) row[i] = float(1024 - i % 1024);
        break;
    }
    const int ks[] = {1, 2, 17, 127, 1000, 2048, 2049, 4096, 6144, 6200};
    int k = ks[randint(0, 9)];
    if (r % 11 == 10) k = int(len) - 1;
    c.k.push_back(std::max(k, 0));
    c.out_stride = std::max<int32_t>(c.out_stride, int32_t(std::min<int64_t>(c.k.back(), len)));
  }
  return c;
}
}  // namespace

KVSQ_TEST(cuda_topk_filter_and_radix_paths) {
  need_device();
  struct Restore {
    ~Restore() { cuda_topk_set_filter(true); }
  } restore;
  const int64_t strides[] = {131072, 16384, 40001, 6145, 100000};
  for (int64_t stride : strides) {
#ifdef KVSQ_CUDA_EMU
    const int rows = stride == 131072 ? 36 : 20;  // fewer under the emulator; still more than 33 clusters (132 SMs / 8 x 2)
#else
    const int rows = stride == 131072 ? 90 : randint(20, 40);
#endif
    const TkCase c = mixed_rows(rows, stride);
    for (bool filter : {true, false}) {
      cuda_topk_set_filter(filter);
      CHECK_MSG(tk_run(c) == Status::Ok, "stride " << stride << " filter " << filter);
    }
  }
  // The benchmark's shape, uniform scores (the filter's common case), and a
  // NaN in one row found by the filter's pass (nothing written).
  TkCase c;
#ifdef KVSQ_CUDA_EMU
  c.rows = 8;
#else
  c.rows = 64;
#endif
  c.row_stride = 131072;
  c.scores.resize(size_t(c.rows) * c.row_stride);
  for (float& x : c.scores) x = float(randint(0, (1 << 24) - 1)) / 16777216.f;
  c.k.assign(c.rows, 2048);
  c.out_stride = 2048;
  for (bool filter : {true, false}) {
    cuda_topk_set_filter(filter);
    CHECK(tk_run(c) == Status::Ok);
  }
  c.scores[size_t(c.rows / 2 + 1) * c.row_stride + 99999] = std::numeric_limits<float>::quiet_NaN();
  for (bool filter : {true, false}) {
    cuda_topk_set_filter(filter);
    CHECK(tk_run(c, false) == Status::NaN);
  }
}

#ifdef KVSQ_CUDA_EMU
// Emulator only (the part is set, not found): the launcher's paths for other
// GPUs -- a 4-SM sm_90 (the radix kernel's loop over the filter's list with
// few clusters) and an sm_80 (no clusters: one block per row, the filter for
// rows of <= 16K keys).
KVSQ_TEST(cuda_topk_other_parts) {
  cuda_emu::PartScope scope(cuda_emu::st().dev);  // changed below, restored at the end
  for (const auto& part : {std::pair<int, int>{9, 4}, std::pair<int, int>{8, 108}}) {
    cuda_emu::st().dev.major = part.first;
    cuda_emu::st().dev.sms = part.second;
    for (int64_t stride : {131072, 16384, 6145, 1000}) {
      if (part.first < 9 && stride > 16384) continue;
      CHECK_MSG(tk_run(mixed_rows(stride > 16384 ? 12 : 10, stride)) == Status::Ok,
                "sm_" << part.first << "0, " << part.second << " SMs, stride " << stride);
    }
  }
}
#endif

// ---------------------------------------------------------------- Quest bounds

KVSQ_TEST(cuda_quest_bounds_vs_cpu) {
  need_device();
  int n = 0;
  for (int D : {16, 40, 64, 128, 256})
    for (int g : {1, 2, 3, 4, 8})
      for (bool share : {false, true}) {
        const int B = randint(1, 3), Hkv = randint(1, 3), P = (n % 3 == 0) ? 1 : (n % 3 == 1 ? 7 : 16);
        const DType qt = kFloat[n % 3], kt = kFloat[(n / 3) % 3];
        const int lens[] = {1, 17, 1000, 4097, 0, 16, 33};
        std::vector<int32_t> kv(B * Hkv), indptr(B * Hkv + 1, 0);
        int64_t max_m = 0;
        for (int l = 0; l < B * Hkv; ++l) {
          kv[l] = lens[(l + n) % 7];
          const int pages = (kv[l] + P - 1) / P + randint(0, 2);
          indptr[l + 1] = indptr[l] + pages;
          max_m = std::max<int64_t>(max_m, (kv[l] + P - 1) / P - 1);
        }
        const int64_t num_pages = std::max(1, indptr.back()) + 5;
        std::vector<int32_t> perm(num_pages);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
        std::vector<int32_t> ids(perm.begin(), perm.begin() + indptr.back());
        ids.reserve(1);  // every list empty: still a valid (non-null) page_ids pointer
        HBuf q(qt, size_t(B) * Hkv * g * D), meta(kt, size_t(num_pages) * 2 * D);
        for (size_t i = 0; i < size_t(B) * Hkv * g * D; ++i) q.set(i, normal());
        for (int64_t p = 0; p < num_pages; ++p)
          for (int d = 0; d < D; ++d) {
            float x = normal(), y = normal();
            if (x > y) std::swap(x, y);
            meta.set(size_t(p) * 2 * D + d, x);
            meta.set(size_t(p) * 2 * D + D + d, y);
          }
        QuestBoundsArgs a;
        a.batch = B;
        a.num_q_heads = Hkv * g;
        a.num_kv_heads = Hkv;
        a.head_dim = D;
        a.page_size = P;
        a.q_dtype = qt;
        a.kv_dtype = kt;
        a.num_pages = num_pages;
        a.share = share;
        a.out_stride = int32_t(std::max<int64_t>(1, max_m + randint(0, 3)));
        const size_t out_rows = size_t(B) * (share ? Hkv : Hkv * g);
        std::vector<float> ref(out_rows * a.out_stride, 7.f), got(ref.size(), 7.f);
        a.q = q.data();
        a.meta_pool = meta.data();
        a.page_indptr = indptr.data();
        a.page_ids = ids.data();
        a.kv_len = kv.data();
        a.out = ref.data();
        CHECK(cpu_quest_bounds(a) == Status::Ok);
        DBuf<uint8_t> dq(q.bytes.size()), dm(meta.bytes.size());
        DBuf<int32_t> dind(indptr.size()), dids(std::max<size_t>(1, ids.size())), dkv(kv.size());
        DBuf<float> dout(got.size());
        dq.up(q.data());
        dm.up(meta.data());
        dind.up(indptr.data());
        if (!ids.empty()) dids.up(ids.data());
        dkv.up(kv.data());
        dout.up(got.data());
        a.q = dq.p;
        a.meta_pool = dm.p;
        a.page_indptr = dind.p;
        a.page_ids = dids.p;
        a.kv_len = dkv.p;
        a.out = dout.p;
        CHECK(cuda_quest_bounds(a, nullptr) == Status::Ok);
        dout.down(got.data());
        for (int l = 0; l < B * Hkv; ++l) {
          const int b = l / Hkv, j = l % Hkv;
          for (int rr = 0; rr < (share ? 1 : g); ++rr) {
            const size_t orow = share ? size_t(l) : size_t(b) * Hkv * g + size_t(j) * g + rr;
            for (int p = 0; p < a.out_stride; ++p) {
              const float r = ref[orow * a.out_stride + p], x = got[orow * a.out_stride + p];
              if (std::isinf(r)) {
                CHECK_MSG(std::isinf(x) && x < 0, "expected -inf at list " << l << " p " << p << ": " << x);
                continue;
              }
              double bound = 0.0;  // over the heads that feed this row
              const int64_t pid = ids[indptr[l] + p];
              for (int hh = share ? 0 : rr; hh < (share ? g : rr + 1); ++hh) {
                const size_t qrow = (size_t(b) * Hkv * g + size_t(j) * g + hh) * D;
                double s = 0.0;
                for (int d = 0; d < D; ++d)
                  s += std::fabs(q.get(qrow + d)) *
                       std::max(std::fabs(meta.get(size_t(pid) * 2 * D + d)), std::fabs(meta.get(size_t(pid) * 2 * D + D + d)));
                bound = std::max(bound, s);
              }
              const double tol = 2.0 * (D + 2) * std::ldexp(1.0, -24) * bound;
              CHECK_MSG(std::fabs(double(x) - r) <= tol, "D " << D << " g " << g << " share " << share << " list " << l
                                                               << " p " << p << ": gpu " << x << " cpu " << r);
            }
          }
        }
        ++n;
      }
  // D > 256 is not supported on the GPU
  QuestBoundsArgs a;
  DBuf<float> d(1024);
  DBuf<int32_t> di(4);
  a.batch = 1; a.num_q_heads = 1; a.num_kv_heads = 1; a.head_dim = 300; a.page_size = 16; a.num_pages = 1;
  a.out_stride = 1; a.q = d.p; a.meta_pool = d.p; a.page_indptr = di.p; a.page_ids = di.p; a.kv_len = di.p; a.out = d.p;
  CHECK(cuda_quest_bounds(a, nullptr) == Status::Shape);
}

// ---------------------------------------------------------------- benchmark

namespace {

__global__ void fill_random_kernel(uint16_t* p, size_t n, uint32_t seed, int bf16) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9e3779b1u ^ seed;
    h ^= h >> 15; h *= 0x85ebca77u; h ^= h >> 13; h *= 0xc2b2ae3du; h ^= h >> 16;
    const float u = (float(h & 0xffffff) / 16777216.f) * 2.f - 1.f;  // uniform(-1, 1), never all zeros
    const float x = u * 1.7f;
    const uint32_t b = __float_as_uint(x);
    p[i] = bf16 ? uint16_t(b >> 16) : uint16_t(__half_as_ushort(__float2half_rn(x)));
  }
}
__global__ void fill_random_f32_kernel(float* p, size_t n, uint32_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9e3779b1u ^ seed;
    h ^= h >> 15; h *= 0x85ebca77u; h ^= h >> 13; h *= 0xc2b2ae3du; h ^= h >> 16;
    p[i] = float(h & 0xffffff) / 16777216.f;
  }
}

struct Timer {
  cudaEvent_t a, b;
  Timer() { cudaEventCreate(&a); cudaEventCreate(&b); }
  ~Timer() { cudaEventDestroy(a); cudaEventDestroy(b); }
};

// Median ms of `reps` runs of f(), L2 flushed (100 MB written) before each.
template <class F>
double time_median(F&& f, int reps, void* flush, size_t flush_bytes) {
  Timer t;
  std::vector<double> ms;
  f();  // warm-up (first-use attributes, pools)
  cudaDeviceSynchronize();
  for (int i = 0; i < reps; ++i) {
    cudaMemsetAsync(flush, i & 0xff, flush_bytes, nullptr);
    cudaEventRecord(t.a, nullptr);
    f();
    cudaEventRecord(t.b, nullptr);
    cudaEventSynchronize(t.b);
    float x = 0.f;
    cudaEventElapsedTime(&x, t.a, t.b);
    ms.push_back(x);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

KVSQ_TEST(cuda_bench_scores) {
#ifdef KVSQ_CUDA_EMU
  SKIP("benchmarks time a device, not the emulator");
#endif
  const char* env = std::getenv("KVSQ_CUDA_BENCH");
  if (!env || std::strcmp(env, "1") != 0) SKIP("set KVSQ_CUDA_BENCH=1 to run the CUDA scoring benchmarks");
  need_device();
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  const size_t flush_bytes = size_t(100) << 20;
  DBuf<uint8_t> flush(flush_bytes);

  // device copy bandwidth (read + write), 1 GiB
  double copy_gbs = 0.0;
  {
    const size_t bytes = size_t(1) << 30;
    DBuf<uint8_t> s(bytes), d(bytes);
    CHECK(cudaMemset(s.p, 1, bytes) == cudaSuccess);
    const double ms = time_median([&] { cudaMemcpyAsync(d.p, s.p, bytes, cudaMemcpyDeviceToDevice, nullptr); }, 10,
                                  flush.p, flush_bytes);
    copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
    std::printf("BENCH copy device=%s bytes=%zu ms=%.4f GB/s=%.1f\n", prop.name, bytes, ms, copy_gbs);
  }

  // window scores: SnapKV shape, bf16
  {
    const int Hq = 32, Hkv = 8, D = 128, L = 131072, w = 32;
    const size_t kn = size_t(Hkv) * L * D, qn = size_t(Hq) * w * D;
    DBuf<uint16_t> k(kn), q(qn);
    DBuf<float> out(size_t(Hkv) * L);
    fill_random_kernel<<<4096, 256>>>(k.p, kn, 1234u, 1);
    fill_random_kernel<<<256, 256>>>(q.p, qn, 777u, 1);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    WindowScoresArgs a;
    a.num_q_heads = Hq; a.num_kv_heads = Hkv; a.head_dim = D; a.seq_len = L; a.window = w; a.q_rows = w;
    a.dtype = DType::BF16; a.scale = 1.f / std::sqrt(float(D)); a.q = q.p; a.k = k.p; a.out = out.p;
    Status st = Status::Ok;
    const double ms = time_median([&] { st = cuda_window_scores(a, nullptr); }, 30, flush.p, flush_bytes);
    CHECK_MSG(st == Status::Ok, status_name(st));
    const double bytes = double(kn) * 2 + double(qn) * 2 + double(Hkv) * L * 4;
    const double flops = 2.0 * 2.0 * double(Hq) * w * double(L) * D;  // two passes of QK^T
    const double floor_ms = bytes / (copy_gbs * 1e9) * 1e3;
    std::printf("BENCH window_scores L=%d w=%d Hq=%d Hkv=%d D=%d bf16 ms=%.4f GB/s=%.1f TFLOP/s=%.1f "
                "mem_floor_ms=%.4f pct_of_mem_roofline=%.1f%% pct_of_989TF=%.1f%% target_ms=0.150\n",
                L, w, Hq, Hkv, D, ms, bytes / (ms * 1e-3) / 1e9, flops / (ms * 1e-3) / 1e12, floor_ms,
                100.0 * floor_ms / ms, 100.0 * flops / (ms * 1e-3) / 989e12);
    cuda_set_dependent_launch(false);  // the same launches without PDL
    const double ms_n = time_median([&] { st = cuda_window_scores(a, nullptr); }, 30, flush.p, flush_bytes);
    cuda_set_dependent_launch(true);
    CHECK_MSG(st == Status::Ok, status_name(st));
    std::printf("BENCH window_scores_nopdl ms=%.4f (with PDL %.4f)\n", ms_n, ms);
    cuda_set_wgmma(false);  // the mma.sync kernels (the wgmma ones need a 9.0 device and 90a code)
    const double ms_m = time_median([&] { st = cuda_window_scores(a, nullptr); }, 30, flush.p, flush_bytes);
    cuda_set_wgmma(true);
    CHECK_MSG(st == Status::Ok, status_name(st));
    std::printf("BENCH window_scores_mma ms=%.4f TFLOP/s=%.1f (default path %.4f; wgmma %s)\n", ms_m,
                flops / (ms_m * 1e-3) / 1e12, ms, prop.major == 9 && prop.minor == 0 ? "possible" : "not on this card");
    // the key split: CTAs per SM (default 4), for the next choice of default
    for (int per_sm : {2, 8}) {
      cuda_window_scores_set_ctas_per_sm(per_sm);
      const double ms_c = time_median([&] { st = cuda_window_scores(a, nullptr); }, 30, flush.p, flush_bytes);
      CHECK_MSG(st == Status::Ok, status_name(st));
      std::printf("BENCH window_scores_split ctas_per_sm=%d ms=%.4f (default 4: %.4f)\n", per_sm, ms_c, ms);
    }
    cuda_window_scores_set_ctas_per_sm(0);
  }

  // top-k: 256 rows x 128K, k 2048
  {
    const int rows = 256;
    const int64_t n = 131072;
    const int kk = 2048;
    DBuf<float> s(size_t(rows) * n);
    DBuf<int32_t> kd(rows), out(size_t(rows) * kk), cnt(rows);
    fill_random_f32_kernel<<<4096, 256>>>(s.p, size_t(rows) * n, 4321u);
    std::vector<int32_t> hk(rows, kk);
    kd.up(hk.data());
    TopkArgs a;
    a.rows = rows; a.row_stride = n; a.scores = s.p; a.k = kd.p; a.out_stride = kk; a.out = out.p; a.count = cnt.p;
    const double bytes = double(rows) * n * 4 + double(rows) * kk * 4 * 3;
    const double floor_ms = bytes / (copy_gbs * 1e9) * 1e3;
    for (bool filter : {true, false}) {  // the sampled one-pass kernel, then radix select alone
      cuda_topk_set_filter(filter);
      Status st = Status::Ok;
      const double ms = time_median([&] { st = cuda_topk(a, nullptr); }, 30, flush.p, flush_bytes);
      CHECK_MSG(st == Status::Ok, status_name(st));
      std::printf("BENCH topk%s rows=%d n=%lld k=%d f32 ms=%.4f GB/s=%.1f mem_floor_ms=%.4f "
                  "pct_of_mem_roofline=%.1f%% (includes the launcher's stream sync)\n",
                  filter ? "" : "_radix_only", rows, (long long)n, kk, ms, bytes / (ms * 1e-3) / 1e9, floor_ms,
                  100.0 * floor_ms / ms);
    }
    cuda_topk_set_filter(true);
  }

  // pool1d and chunk scores on [8, 128K] scores
  {
    const int rows = 8;
    const int n = 131072 - 32;
    DBuf<float> in(size_t(rows) * 131072), o(size_t(rows) * n);
    fill_random_f32_kernel<<<1024, 256>>>(in.p, in.n, 99u);
    Pool1dArgs a;
    a.rows = rows; a.n = n; a.in_stride = 131072; a.kernel = 7; a.mode = PoolMode::Max; a.in = in.p; a.out = o.p;
    const double ms = time_median([&] { cuda_pool1d(a, nullptr); }, 30, flush.p, flush_bytes);
    const double bytes = 2.0 * rows * n * 4;
    std::printf("BENCH pool1d rows=%d n=%d k=7 max ms=%.4f GB/s=%.1f pct_of_mem_roofline=%.1f%%\n", rows, n, ms,
                bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / 1e9 / copy_gbs);
    ChunkScoresArgs c;
    c.rows = rows; c.n = n; c.in_stride = 131072; c.chunk = 10; c.in = in.p; c.out = o.p;
    const double ms2 = time_median([&] { cuda_chunk_scores(c, nullptr); }, 30, flush.p, flush_bytes);
    const double bytes2 = double(rows) * n * 4;
    std::printf("BENCH chunk_scores rows=%d n=%d chunk=10 ms=%.4f GB/s=%.1f pct_of_mem_roofline=%.1f%%\n", rows, n,
                ms2, bytes2 / (ms2 * 1e-3) / 1e9, 100.0 * bytes2 / (ms2 * 1e-3) / 1e9 / copy_gbs);
  }

  // Quest bounds: 32 sequences x 8 KV heads x 32K tokens (2048 pages of 16), g 4, D 128, bf16 meta
  {
    const int B = 32, Hkv = 8, g = 4, D = 128, P = 16, pages = 2048;
    const int lists = B * Hkv;
    const int64_t num_pages = int64_t(lists) * pages;
    DBuf<uint16_t> meta(size_t(num_pages) * 2 * D), q(size_t(B) * Hkv * g * D);
    fill_random_kernel<<<4096, 256>>>(meta.p, meta.n, 5u, 1);
    fill_random_kernel<<<64, 256>>>(q.p, q.n, 6u, 1);
    std::vector<int32_t> indptr(lists + 1), ids(num_pages), kv(lists, pages * P);
    for (int l = 0; l <= lists; ++l) indptr[l] = l * pages;
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), kvsqtest::rng());
    DBuf<int32_t> dind(indptr.size()), dids(ids.size()), dkv(kv.size());
    dind.up(indptr.data());
    dids.up(ids.data());
    dkv.up(kv.data());
    DBuf<float> out(size_t(lists) * pages);
    QuestBoundsArgs a;
    a.batch = B; a.num_q_heads = Hkv * g; a.num_kv_heads = Hkv; a.head_dim = D; a.page_size = P;
    a.q_dtype = DType::BF16; a.kv_dtype = DType::BF16; a.q = q.p; a.meta_pool = meta.p; a.num_pages = num_pages;
    a.page_indptr = dind.p; a.page_ids = dids.p; a.kv_len = dkv.p; a.share = true; a.out_stride = pages; a.out = out.p;
    Status st = Status::Ok;
    const double ms = time_median([&] { st = cuda_quest_bounds(a, nullptr); }, 30, flush.p, flush_bytes);
    CHECK(st == Status::Ok);
    const double bytes = double(num_pages) * 2 * D * 2 + double(lists) * pages * 4;
    std::printf("BENCH quest_bounds B=%d Hkv=%d g=%d D=%d pages/list=%d share bf16 ms=%.4f GB/s=%.1f "
                "pct_of_mem_roofline=%.1f%%\n",
                B, Hkv, g, D, pages, ms, bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / 1e9 / copy_gbs);
  }
}

// Quest selection on the device (cuda/quest_select.cu) against the CPU twin:
// the same counts and indptr; dense rows identical; a sparse row ends with its
// last page and its other pages are a top set of the CPU's bounds within the
// bounds' tolerance (2 (D + 2) 2^-24 sum_d |q_d| max(|kmin_d|, |kmax_d|)), so a
// near tie may go either way, nothing else. Also: NaN -> Status::NaN with the
// outputs untouched.
KVSQ_TEST(cuda_quest_select_vs_cpu) {
  need_device();
  for (int it = 0; it < 24; ++it) {
    const int B = randint(1, 3), Hkv = randint(1, 3), g = std::vector<int>{1, 2, 4, 8}[randint(0, 3)];
    const int D = std::vector<int>{16, 64, 128}[randint(0, 2)], P = std::vector<int>{1, 7, 16}[randint(0, 2)];
    const DType qt = kFloat[randint(0, 2)], kt = kFloat[randint(0, 2)];
    const bool share = randint(0, 1) == 1;
    const int Hq = Hkv * g;
    std::vector<int32_t> kv(B * Hkv), indptr(B * Hkv + 1, 0);
    int maxn = 0;
    for (int l = 0; l < B * Hkv; ++l) {
      kv[l] = std::vector<int>{0, 1, 17, 1000, 4097}[randint(0, 4)];
      const int n = (kv[l] + P - 1) / P;
      indptr[l + 1] = indptr[l] + n + randint(0, 2);
      maxn = std::max(maxn, n);
    }
    const int budget = std::vector<int>{1, 2, std::max(1, maxn / 3), maxn + 1}[randint(0, 3)];
    const int64_t num_pages = std::max(1, indptr.back()) + 5;
    std::vector<int32_t> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
    std::vector<int32_t> ids(perm.begin(), perm.begin() + indptr.back());
    ids.reserve(1);  // every list empty: still a valid (non-null) page_ids pointer
    HBuf q(qt, size_t(B) * Hq * D), meta(kt, size_t(num_pages) * 2 * D);
    for (size_t i = 0; i < size_t(B) * Hq * D; ++i) q.set(i, normal());
    for (int64_t p = 0; p < num_pages; ++p)
      for (int d = 0; d < D; ++d) {
        float x = normal(), y = normal();
        if (x > y) std::swap(x, y);
        meta.set(size_t(p) * 2 * D + d, x);
        meta.set(size_t(p) * 2 * D + D + d, y);
      }
    int64_t total = 0;
    for (int l = 0; l < B * Hkv; ++l) total += int64_t(g) * std::min((kv[l] + P - 1) / P, budget);
    QuestSelectArgs a;
    QuestBoundsArgs& qb = a.bounds;
    qb.batch = B, qb.num_q_heads = Hq, qb.num_kv_heads = Hkv, qb.head_dim = D, qb.page_size = P;
    qb.q_dtype = qt, qb.kv_dtype = kt, qb.num_pages = num_pages, qb.share = share;
    qb.q = q.data(), qb.meta_pool = meta.data(), qb.page_indptr = indptr.data(), qb.page_ids = ids.data(), qb.kv_len = kv.data();
    a.budget_pages = budget;
    a.max_pages = maxn;
    std::vector<int32_t> ci(B * Hq + 1), cp(total + 1, -9), gi(B * Hq + 1), gp(total + 1, -9);
    a.sel_indptr = ci.data(), a.sel_pages = cp.data();
    CHECK(cpu_quest_select(a) == Status::Ok);
    // CPU bounds per row for the validity check
    const int rows = share ? B * Hkv : B * Hq;
    const int32_t width = std::max(1, maxn - 1);
    std::vector<float> u(size_t(rows) * width);
    QuestBoundsArgs bb = qb;
    bb.out = u.data(), bb.out_stride = width;
    CHECK(cpu_quest_bounds(bb) == Status::Ok);
    DBuf<uint8_t> dq(q.bytes.size()), dm(meta.bytes.size());
    DBuf<int32_t> dind(indptr.size()), dids(std::max<size_t>(1, ids.size())), dkv(kv.size()), dsi(gi.size()), dsp(gp.size());
    dq.up(q.data()), dm.up(meta.data()), dind.up(indptr.data()), dkv.up(kv.data()), dsp.up(gp.data());
    if (!ids.empty()) dids.up(ids.data());
    QuestSelectArgs d = a;
    d.bounds.q = dq.p, d.bounds.meta_pool = dm.p, d.bounds.page_indptr = dind.p, d.bounds.page_ids = dids.p, d.bounds.kv_len = dkv.p;
    d.sel_indptr = dsi.p, d.sel_pages = dsp.p;
    const Status st = cuda_quest_select(d, nullptr);
    CHECK_MSG(st == Status::Ok, "cuda status " << status_name(st));
    dsi.down(gi.data());
    dsp.down(gp.data());
    CHECK_MSG(gi == ci, "indptr differs");
    CHECK_MSG(gp[total] == -9, "written past the selection");
    for (int r = 0; r < B * Hq; ++r) {
      const int b = r / Hq, h = r % Hq, l = b * Hkv + h / g, n = (kv[l] + P - 1) / P;
      const int32_t* x = gp.data() + gi[r];
      const int cnt = gi[r + 1] - gi[r];
      if (n <= budget) {
        for (int i = 0; i < cnt; ++i) CHECK_MSG(x[i] == i, "dense row " << r);
        continue;
      }
      CHECK_MSG(x[cnt - 1] == n - 1, "row " << r << " last page");
      const int ur = share ? l : r;
      std::vector<char> chosen(n, 0);
      for (int i = 0; i < cnt; ++i) chosen[x[i]] = 1;
      double lo = INFINITY, hi = -INFINITY, mag = 0;
      for (int p = 0; p < n - 1; ++p) {
        const double v = u[size_t(ur) * width + p];
        if (chosen[p]) lo = std::min(lo, v);
        else hi = std::max(hi, v);
        const int64_t pid = ids[indptr[l] + p];
        for (int hh = share ? (h / g) * g : h; hh < (share ? (h / g + 1) * g : h + 1); ++hh) {
          double m = 0;
          for (int dd = 0; dd < D; ++dd)
            m += std::fabs(q.get((size_t(b) * Hq + hh) * D + dd)) *
                 std::max(std::fabs(meta.get(size_t(pid) * 2 * D + dd)), std::fabs(meta.get(size_t(pid) * 2 * D + D + dd)));
          mag = std::max(mag, m);
        }
      }
      CHECK_MSG(lo >= hi - 2 * (D + 2) * std::ldexp(1.0, -24) * mag - 1e-30, "row " << r << ": not a top set");
    }
  }
}

// Finite inputs whose bound overflows both ways (quest_overflow_case.h): the
// device selection, with and without q_checked (no read back, no wait), holds
// the overflow page for every query head, with the CPU's indptr. Without
// q_checked a NaN q is Status::NaN (every list dense too) and NaN metadata
// (finite q, no share) as well, the outputs untouched.
KVSQ_TEST(cuda_quest_select_overflow_and_nan) {
  need_device();
  using kvsqtest::QuestOverflowCase;
  constexpr int kTotal = QuestOverflowCase::total;
  for (DType kt : kFloat) {
    QuestOverflowCase c(kt);
    DBuf<float> dq(c.q.size());
    DBuf<uint8_t> dm(c.meta.size());
    DBuf<int32_t> dind(c.indptr.size()), dids(c.ids.size()), dkv(c.kv_len.size());
    dq.up(c.q.data()), dm.up(c.meta.data()), dind.up(c.indptr.data()), dids.up(c.ids.data()), dkv.up(c.kv_len.data());
    auto on_device = [&](QuestSelectArgs a) {
      a.bounds.q = dq.p, a.bounds.meta_pool = dm.p, a.bounds.page_indptr = dind.p, a.bounds.page_ids = dids.p;
      a.bounds.kv_len = dkv.p;
      return a;
    };
    const std::vector<int32_t> untouched(size_t(c.Hq) * (c.max_pages + 1), -9);
    for (bool share : {false, true}) {
      std::vector<int32_t> ci(c.Hq + 1), cp(kTotal + 1, -9);
      QuestSelectArgs a = c.args(share);
      a.sel_indptr = ci.data(), a.sel_pages = cp.data();
      CHECK(cpu_quest_select(a) == Status::Ok);
      for (bool checked : {false, true}) {
        DBuf<int32_t> dsi(c.Hq + 1), dsp(kTotal + 1);
        dsp.up(untouched.data());
        QuestSelectArgs d = on_device(c.args(share));
        d.q_checked = checked;
        d.sel_indptr = dsi.p, d.sel_pages = dsp.p;
        const Status st = cuda_quest_select(d, nullptr);
        CHECK_MSG(st == Status::Ok, dtype_name(kt) << " share " << share << " checked " << checked << ": " << status_name(st));
        std::vector<int32_t> gi(c.Hq + 1), gp(kTotal + 1);
        dsi.down(gi.data());  // a blocking copy: waits for the q_checked launch too
        dsp.down(gp.data());
        CHECK_MSG(gi == ci, "indptr differs from the CPU's");
        CHECK_MSG(c.all_rows_hold_overflow(gi, gp), dtype_name(kt) << " share " << share << ": overflow page not chosen");
        CHECK(gp[kTotal] == -9);
      }
    }
    auto expect_nan = [&](int budget, bool share, const char* what) {
      DBuf<int32_t> dsi(c.Hq + 1), dsp(untouched.size());
      dsi.up(untouched.data()), dsp.up(untouched.data());
      QuestSelectArgs d = on_device(c.args(share));
      d.budget_pages = budget;
      d.sel_indptr = dsi.p, d.sel_pages = dsp.p;
      const Status st = cuda_quest_select(d, nullptr);
      CHECK_MSG(st == Status::NaN, what << " (" << dtype_name(kt) << ", budget " << budget << "): " << status_name(st));
      std::vector<int32_t> gi(c.Hq + 1), gp(untouched.size());
      dsi.down(gi.data()), dsp.down(gp.data());
      for (int32_t v : gi) CHECK_MSG(v == -9, what << ": indptr written");
      CHECK_MSG(gp == untouched, what << ": pages written");
    };
    // NaN metadata on a candidate page of list 0 (not its overflow page), in
    // both kmin and kmax: fmaxf would pass over a NaN in one of them
    // (non-finite metadata is outside the kernels' contract; the cache never
    // stores it). Logical pages 0 and 2: the bounds kernel takes pages in
    // fours, and the NaN page must not borrow a finite neighbour's verdict.
    const std::vector<uint8_t> meta0 = c.meta;
    for (int logical : {0, 2}) {
      CHECK(logical != c.overflow_page[0]);
      const int64_t page = c.ids[size_t(logical)];
      c.set(page, 0, 5, std::numeric_limits<float>::quiet_NaN());
      c.set(page, 1, 5, std::numeric_limits<float>::quiet_NaN());
      dm.up(c.meta.data());
      expect_nan(c.budget, false, "NaN metadata");
      c.meta = meta0;
      dm.up(c.meta.data());
    }
    c.q[3] = std::numeric_limits<float>::quiet_NaN();
    dq.up(c.q.data());
    for (bool share : {false, true}) {
      expect_nan(c.budget, share, "NaN q");
      expect_nan(c.max_pages + 1, share, "NaN q, every list dense");
    }
  }
}
