// CUDA twins of the small kernels: count_nonfinite and the score restore
// (read_scores with write_back), against their CPU twins. Skipped without a
// device. Tolerance: exact (counts and copies). Also the wgmma operand
// layouts of cuda/common.cuh on their own (a 64 x 32 x 32 product against a
// double reference), so a misread layout shows there and not only as a
// wrong window score.
#include <cuda_runtime.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "../../cuda/common.cuh"
#include "../../cuda/launchers.h"
#include "core/device.h"
#include "core/dtype.h"
#include "cpu/kernels.h"
#include "cuda_need_device.h"
#include "harness.h"

using namespace kvsq;

namespace {
template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  CHECK(cudaMalloc(&d, std::max<size_t>(1, h.size()) * sizeof(T)) == cudaSuccess);
  if (!h.empty()) CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return d;
}
template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  if (n) CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}
}  // namespace

KVSQ_TEST(cuda_count_nonfinite_vs_cpu) {
  need_device();
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int n : {0, 1, 17, 1000, 4097, 1 << 20}) {
      std::vector<float> x(static_cast<size_t>(n));
      for (auto& v : x) {
        const int r = kvsqtest::randint(0, 99);
        v = r == 0 ? NAN : r == 1 ? INFINITY : kvsqtest::uniform(-3, 3);
      }
      std::vector<uint8_t> buf(x.size() * 4 + 4);
      convert_from_f32(t, x.data(), buf.data(), x.size());
      int64_t ref = -1;
      NonFiniteArgs a;
      a.dtype = t;
      a.x = buf.data();
      a.n = n;
      a.count = &ref;
      CHECK(cpu_count_nonfinite(a) == Status::Ok);
      uint8_t* dx = upload(buf);
      int64_t* dc = upload(std::vector<int64_t>{-1});
      a.x = dx;
      a.count = dc;
      CHECK(cuda_count_nonfinite(a, nullptr) == Status::Ok);
      CHECK(cudaDeviceSynchronize() == cudaSuccess);
      CHECK_EQ(download(dc, 1)[0], ref);
      cudaFree(dx);
      cudaFree(dc);
    }
}

KVSQ_TEST(cuda_read_write_scores_vs_cpu) {
  need_device();
  const int P = 7, lists = 5;
  std::vector<int32_t> len(lists), indptr(lists + 1, 0);
  for (int l = 0; l < lists; ++l) {
    len[l] = kvsqtest::randint(0, 100);
    indptr[l + 1] = indptr[l] + (len[l] + P - 1) / P;
  }
  const int64_t N = indptr[lists] + 3;
  std::vector<int32_t> ids(indptr[lists]);
  std::iota(ids.begin(), ids.end(), 2);
  std::vector<float> pool(size_t(N) * P);
  for (auto& v : pool) v = kvsqtest::uniform();
  const int64_t total = std::accumulate(len.begin(), len.end(), int64_t(0));
  std::vector<float> flat(static_cast<size_t>(total));
  for (auto& v : flat) v = kvsqtest::uniform(5, 6);
  // CPU: write back, then read
  std::vector<float> cpu_pool = pool;
  ReadScoresArgs a;
  a.lists = lists;
  a.page_size = P;
  a.num_pages = N;
  a.score_pool = cpu_pool.data();
  a.page_indptr = indptr.data();
  a.page_ids = ids.data();
  a.kv_len = len.data();
  a.write_back = true;
  a.in = flat.data();
  CHECK(cpu_read_scores(a) == Status::Ok);
  // CUDA
  float* dpool = upload(pool);
  int32_t* dind = upload(indptr);
  int32_t* dids = upload(ids);
  int32_t* dlen = upload(len);
  float* dflat = upload(flat);
  float* dout = upload(std::vector<float>(size_t(total) + 1, 0.f));
  ReadScoresArgs d = a;
  d.score_pool = dpool;
  d.page_indptr = dind;
  d.page_ids = dids;
  d.kv_len = dlen;
  d.in = dflat;
  CHECK(cuda_read_scores(d, nullptr) == Status::Ok);
  d.write_back = false;
  d.in = nullptr;
  d.out = dout;
  CHECK(cuda_read_scores(d, nullptr) == Status::Ok);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<float> gpu_pool = download(dpool, pool.size()), out = download(dout, size_t(total));
  for (size_t i = 0; i < pool.size(); ++i) CHECK_EQ(gpu_pool[i], cpu_pool[i]);
  for (int64_t i = 0; i < total; ++i) CHECK_EQ(out[i], flat[i]);
  for (void* p : {(void*)dpool, (void*)dind, (void*)dids, (void*)dlen, (void*)dflat, (void*)dout}) cudaFree(p);
}

// The wgmma operand layouts (cuda/wgmma_check.cu's kernel: one warpgroup,
// D (64 x 32) = A (64 x 32) . B^T in two k-steps of m64n32k16, B staged as
// window scores stages K) on random normals against a double reference, for
// both 16-bit types. The library's own check uses small integers; this one
// also sees rounding and magnitudes.
KVSQ_TEST(cuda_wgmma_fragment_layout) {
  need_device();
  if (!cu::wgmma_supported()) SKIP("wgmma needs a compute capability 9.0 device and a build with sm_90a code");
  for (const bool f16 : {false, true}) {
    std::vector<uint16_t> A(64 * 32), B(32 * 32);
    std::vector<float> af(A.size()), bf(B.size());
    auto enc = [&](float x, float& back) {
      const uint16_t h = f16 ? f32_to_f16(x) : f32_to_bf16(x);
      back = f16 ? f16_to_f32(h) : bf16_to_f32(h);
      return h;
    };
    for (size_t i = 0; i < A.size(); ++i) A[i] = enc(kvsqtest::normal(), af[i]);
    for (size_t i = 0; i < B.size(); ++i) B[i] = enc(kvsqtest::normal(), bf[i]);
    uint16_t* dA = upload(A);
    uint16_t* dB = upload(B);
    float* dD = nullptr;
    CHECK(cudaMalloc(&dD, 64 * 32 * sizeof(float)) == cudaSuccess);
    CHECK(cuda_wgmma_product(dA, dB, dD, f16, nullptr) == Status::Ok);
    const cudaError_t err = cudaDeviceSynchronize();
    CHECK_MSG(err == cudaSuccess, cudaGetErrorString(err));
    const std::vector<float> got = download(dD, 64 * 32);
    for (int r = 0; r < 64; ++r)
      for (int n = 0; n < 32; ++n) {
        double ref = 0.0, mag = 0.0;
        for (int k = 0; k < 32; ++k) {
          ref += double(af[r * 32 + k]) * bf[n * 32 + k];
          mag += std::fabs(double(af[r * 32 + k]) * bf[n * 32 + k]);
        }
        // products exact in f32; the tensor core's f32 sum of 32 terms
        CHECK_MSG(std::fabs(got[r * 32 + n] - ref) <= 34 * std::ldexp(1.0, -22) * mag + 1e-30,
                  (f16 ? "f16" : "bf16") << " D[" << r << "][" << n << "] = " << got[r * 32 + n] << ", expected " << ref);
      }
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dD);
  }
}

// The library's check of those layouts (cuda/wgmma_check.cu): it passes on
// this device, it catches a wrong product (B transposed, what a K/N mix-up
// in the staging computes), and a failed verdict keeps the kernels off wgmma
// while window scores stay right (against the CPU twin).
KVSQ_TEST(cuda_wgmma_check_verdict) {
  need_device();
  if (!cu::wgmma_supported()) SKIP("wgmma needs a compute capability 9.0 device and a build with sm_90a code");
  int dev = 0;
  CHECK(cudaGetDevice(&dev) == cudaSuccess);
  struct Restore {
    int dev;
    ~Restore() { cuda_wgmma_check_reset(dev, 0, nullptr); }
  } restore{dev};
  const std::string ok = cuda_wgmma_run_check(false);
  CHECK_MSG(ok.empty(), ok);
  const std::string bad = cuda_wgmma_run_check(true);
  CHECK_MSG(bad.rfind("bf16 D[", 0) == 0, "a transposed B was not caught: '" << bad << "'");

  cuda_wgmma_check_reset(dev, 0, nullptr);
  CHECK_EQ(cuda_wgmma_check_state(dev), std::string("unchecked"));
  CHECK(cu::wgmma_usable());  // runs the check
  CHECK_EQ(cuda_wgmma_check_state(dev), std::string("ok"));

  cuda_wgmma_check_reset(dev, 2, "bf16 D[0][0] = 1, expected 2");
  CHECK(!cu::wgmma_usable());
  CHECK_EQ(cuda_wgmma_check_state(dev), std::string("failed: bf16 D[0][0] = 1, expected 2"));
  // Window scores on the fallback: 2 KV heads x 2 query heads, D 64, f16.
  WindowScoresArgs a{};
  a.num_q_heads = 4;
  a.num_kv_heads = 2;
  a.head_dim = 64;
  a.seq_len = 301;
  a.window = 17;
  a.q_rows = 17;
  a.dtype = DType::F16;
  a.reduce = Reduce::Mean;
  a.scale = 0.125f;
  std::vector<uint16_t> q(size_t(a.num_q_heads) * a.q_rows * a.head_dim), k(size_t(a.num_kv_heads) * a.seq_len * a.head_dim);
  for (auto& x : q) x = f32_to_f16(kvsqtest::normal());
  for (auto& x : k) x = f32_to_f16(kvsqtest::normal());
  const size_t n_out = size_t(a.num_kv_heads) * a.seq_len;
  std::vector<float> want(n_out);
  WindowScoresArgs c = a;
  c.q = q.data();
  c.k = k.data();
  c.out = want.data();
  CHECK(cpu_window_scores(c) == Status::Ok);
  uint16_t* dq = upload(q);
  uint16_t* dk = upload(k);
  float* dout = upload(std::vector<float>(n_out, -1.f));
  WindowScoresArgs d = a;
  d.q = dq;
  d.k = dk;
  d.out = dout;
  CHECK(cuda_window_scores(d, nullptr) == Status::Ok);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);
  const std::vector<float> got = download(dout, n_out);
  for (size_t i = 0; i < n_out; ++i)
    CHECK_MSG(std::fabs(got[i] - want[i]) <= 5e-4f * std::fabs(want[i]) + 1e-6f, "out[" << i << "] = " << got[i] << ", CPU " << want[i]);
  for (void* p : {(void*)dq, (void*)dk, (void*)dout}) cudaFree(p);
}

#ifdef KVSQ_CUDA_EMU
// The emulator's thread order (cuda_emu.h "Order"), checked on a kernel with
// a deliberate race, so emulator-only: thread 0 writes a shared word and
// every thread reads it with no barrier in between. Ascending order hides the
// bug (thread 0 always runs first); descending and shuffled orders expose it
// (the other threads read the fill pattern).
namespace {
__global__ void missing_barrier_kernel(int* out) {
  __shared__ int word;
  if (threadIdx.x == 0) word = 1;
  out[threadIdx.x] = word;  // a race: the __syncthreads() that belongs here is missing
}
}  // namespace

KVSQ_TEST(cuda_emulator_thread_order_exposes_missing_barrier) {
  need_device();
  struct Restore {
    cuda_emu::Order o = cuda_emu::st().order;
    ~Restore() { cuda_emu::st().order = o; }
  } restore;
  constexpr int kN = 64;
  int* d = upload(std::vector<int>(kN, 0));
  auto stale = [&](cuda_emu::Order o) {  // threads that did not see thread 0's write
    cuda_emu::st().order = o;
    missing_barrier_kernel<<<1, kN>>>(d);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    const std::vector<int> h = download(d, kN);
    CHECK_EQ(h[0], 1);
    int n = 0;
    for (int v : h) n += v != 1;
    return n;
  };
  CHECK_EQ(stale(cuda_emu::Order::Forward), 0);
  CHECK_EQ(stale(cuda_emu::Order::Reverse), kN - 1);
  int shuffled = 0;
  for (int i = 0; i < 8; ++i) shuffled += stale(cuda_emu::Order::Shuffle);
  CHECK_MSG(shuffled > 0, "eight shuffled launches all ran thread 0 first");
  CHECK_MSG(shuffled < 8 * (kN - 1), "eight shuffled launches all ran thread 0 last");
  cudaFree(d);
}

// The emulator's model of dependent launches (cuda_emu.h "dependent launches,
// started early"), on kernels that break the rule of cuda/common.cuh on
// purpose: a dependent reads, before its griddepcontrol.wait, what the
// kernel before it wrote (it gets the older value), or writes there (the
// launch fails). In order, as the emulator used to run them, both look fine.
namespace {
__global__ void pdl_writer_kernel(int* buf, int v) {
  cu::pdl_wait();
  buf[threadIdx.x] = v;
}
__global__ void pdl_reader_kernel(int* buf, int* early, int* late, int write_early) {
  early[threadIdx.x] = buf[threadIdx.x];  // before the wait: the rule broken
  if (write_early && threadIdx.x == 5) buf[threadIdx.x] = -7;
  __syncthreads();  // threads held at the wait below hold this barrier's others too: the model must not deadlock
  cu::pdl_wait();
  late[threadIdx.x] = buf[threadIdx.x];
}
}  // namespace

KVSQ_TEST(cuda_emulator_dependent_launch_starts_early) {
  need_device();
  struct Restore {
    bool m = cuda_emu::st().pdl_model;
    cuda_emu::Device dev = cuda_emu::st().dev;
    ~Restore() {
      cuda_emu::st().pdl_model = m;
      cuda_emu::st().dev = dev;
    }
  } restore;
  cuda_emu::st().dev.major = 9;
  constexpr int kN = 64;
  int* buf = upload(std::vector<int>(kN, 1));
  int* early = upload(std::vector<int>(kN, 0));
  int* late = upload(std::vector<int>(kN, 0));
  // writer then reader, both dependent launches on one stream; returns the reader's status
  auto pair = [&](bool pdl, bool write_early, bool copy_between) {
    CHECK(cu::launch_pdl(pdl, pdl_writer_kernel, dim3(1), dim3(kN), 0, nullptr, buf, 2) == cudaSuccess);
    if (copy_between) CHECK(cudaMemsetAsync(early, 0, sizeof(int), nullptr) == cudaSuccess);
    const cudaError_t e = cu::launch_pdl(pdl, pdl_reader_kernel, dim3(1), dim3(kN), 0, nullptr, buf, early, late,
                                         write_early ? 1 : 0);
    (void)cudaGetLastError();
    return e;
  };
  const long checked0 = cuda_emu::st().pdl_checked;
  cuda_emu::st().pdl_model = true;
  CHECK(cudaMemcpy(buf, std::vector<int>(kN, 1).data(), kN * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(pair(true, false, false) == cudaSuccess);
  CHECK_EQ(cuda_emu::st().pdl_checked, checked0 + 1);
  for (int v : download(early, kN)) CHECK_EQ(v, 1);  // the value before the writer ran
  for (int v : download(late, kN)) CHECK_EQ(v, 2);   // after the wait: the writer's
  // A write before the wait to what the writer wrote fails the launch; memory
  // is then as the writer left it.
  CHECK(cudaMemcpy(buf, std::vector<int>(kN, 1).data(), kN * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
  const long fails0 = cuda_emu::st().failures;
  CHECK(pair(true, true, false) != cudaSuccess);
  CHECK(cuda_emu::st().failures > fails0);
  {
    const std::vector<int> b = download(buf, kN);
    for (int i = 0; i < kN; ++i)
      if (i != 5) CHECK_EQ(b[i], 2);  // (thread 5's early write is a race: its bytes are not defined)
  }
  // Ordinary launches, or a memset between the two: the reader sees the writer's values.
  for (int mode = 0; mode < 2; ++mode) {
    CHECK(cudaMemcpy(buf, std::vector<int>(kN, 1).data(), kN * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(pair(mode == 1, false, mode == 1) == cudaSuccess);
    const std::vector<int> e = download(early, kN);
    for (int i = 1; i < kN; ++i) CHECK_EQ(e[i], 2);
  }
  // KVSQ_EMU_PDL=off: in order.
  cuda_emu::st().pdl_model = false;
  CHECK(cudaMemcpy(buf, std::vector<int>(kN, 1).data(), kN * sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(pair(true, false, false) == cudaSuccess);
  for (int v : download(early, kN)) CHECK_EQ(v, 2);
  for (void* p : {(void*)buf, (void*)early, (void*)late}) cudaFree(p);
}
#endif
