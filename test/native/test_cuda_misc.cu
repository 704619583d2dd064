// CUDA twins of the small kernels: count_nonfinite and the score restore
// (read_scores with write_back), against their CPU twins. Skipped without a
// device. Tolerance: exact (counts and copies).
#include <cuda_runtime.h>

#include <cmath>
#include <numeric>
#include <vector>

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
#endif
