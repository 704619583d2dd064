// The wgmma operand layouts (cuda/common.cuh), checked on the device itself
// before a kernel first takes its wgmma path there.
//
// Why: the sm_90a kernels (window scores' WG variant) read their operands
// through layouts that this project derived from the PTX manual and checked
// on the CPU emulator, which models what we read, not what the hardware
// does. If a card disagrees, the kernels would return wrong scores without
// an error. So the first wgmma_usable() on a device runs one small product
// with exactly representable inputs, compares it bit for bit, and keeps that
// device on the mma.sync kernels (same results within their tolerance) if it
// differs or fails to run. One host synchronisation per device and process,
// at the first window-scores call; backend.info() reports the verdict.
//
// Formula: D (64 x 32, f32) = A (64 x 32) . B^T, B given as 32 rows (N) of
// 32 (K), in two k-steps of wgmma m64n32k16 (one warpgroup, 128 threads), the
// first with scale-d 0 over a D full of NaN (which must not leak in), the
// second accumulating.
// Layout: A row-major [64][32], B [32][32] as 16-bit words (f16 or bf16), D
// row-major [64][32] f32. B is staged as window scores stages K: K-major core
// matrices without swizzle, byte (n / 8) * 512 + (k / 8) * 128 + (n % 8) * 16
// + (k % 8) * 2 (LBO 128, SBO 512), k-step ks at + 256 ks.
// Tolerance: the check's inputs are small integers (|x| <= 3), so every
// product and every partial sum is an exact f32 integer: any difference is a
// layout error. (test/native/test_cuda_misc.cu runs the same kernel on random
// normals against a double reference.)
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "../native/core/dtype.h"
#include "common.cuh"
#include "launchers.h"

namespace kvsq {
namespace {

constexpr int kM = 64, kN = 32, kK = 32;

template <bool F16>
__global__ void __launch_bounds__(128) wgmma_product_kernel(const uint16_t* A, const uint16_t* B, float* D) {
  __shared__ __align__(128) uint16_t sb[kN * kK];
  const int t = threadIdx.x, w = t / 32, lane = t % 32, g = lane / 4, tq = lane % 4;
  for (int i = t; i < kN * kK; i += 128) {
    const int n = i / kK, k = i % kK;
    sb[((n / 8) * 512 + (k / 8) * 128 + (n % 8) * 16 + (k % 8) * 2) / 2] = B[i];
  }
  cu::fence_proxy_async_smem();  // plain stores, read by the async proxy
  __syncthreads();
  uint32_t a[2][4];
#pragma unroll
  for (int ks = 0; ks < 2; ++ks)
#pragma unroll
    for (int r = 0; r < 4; ++r) {  // r: +8 rows (bit 0), +8 columns (bit 1)
      const int row = 16 * w + g + 8 * (r & 1), col = 16 * ks + 2 * tq + 8 * (r >> 1);
      a[ks][r] = uint32_t(A[row * kK + col]) | (uint32_t(A[row * kK + col + 1]) << 16);
    }
  float d[16];
#pragma unroll
  for (float& x : d) x = __int_as_float(0x7fc00000);
  const uint64_t desc = cu::wg_desc(static_cast<uint32_t>(__cvta_generic_to_shared(sb)), 128, 512);
  cu::wg_fence();
  cu::wgmma_m64n32k16<F16>(d, a[0], desc, 0);
  cu::wgmma_m64n32k16<F16>(d, a[1], desc + (256 >> 4), 1);
  cu::wg_commit();
  cu::wg_wait<0>();
  cu::wg_fence_operands(d);
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) D[(16 * w + g + 8 * (e >> 1)) * kN + 8 * j + 2 * tq + (e & 1)] = d[4 * j + e];
}

cudaError_t launch_product(const uint16_t* A, const uint16_t* B, float* D, bool f16, cudaStream_t st) {
  if (f16) wgmma_product_kernel<true><<<1, 128, 0, st>>>(A, B, D);
  else wgmma_product_kernel<false><<<1, 128, 0, st>>>(A, B, D);
  return cudaGetLastError();
}

// Per device: 0 not yet checked, 1 passed, 2 failed (g_why says how).
constexpr int kMaxDev = 64;
std::atomic<int> g_state[kMaxDev];
std::string g_why[kMaxDev];
std::mutex g_mu;

// Small integers, exact in f16 and bf16 (and every sum of their products in f32).
float check_value(int i, int salt) { return float((i * 7 + salt * 3 + (i / 5)) % 7 - 3); }

// Runs the product on the current device for both input types and compares
// it with the exact result; "" when it matches, else what differed.
// flawed_b (tests): uploads B transposed, what a K/N mix-up in the staging
// would compute, so the comparison must report it.
std::string run_check(bool flawed_b) {
  std::vector<float> af(kM * kK), bf(kN * kK);
  for (int i = 0; i < kM * kK; ++i) af[i] = check_value(i, 1);
  for (int i = 0; i < kN * kK; ++i) bf[i] = check_value(i, 2);
  std::vector<float> want(kM * kN);
  for (int r = 0; r < kM; ++r)
    for (int n = 0; n < kN; ++n) {
      float s = 0.f;
      for (int k = 0; k < kK; ++k) s += af[r * kK + k] * bf[n * kK + k];
      want[r * kN + n] = s;
    }
  const size_t a_bytes = kM * kK * 2, b_bytes = kN * kK * 2, d_bytes = kM * kN * 4;
  char* buf = nullptr;
  cudaError_t e = cudaMalloc(&buf, a_bytes + b_bytes + d_bytes);
  if (e != cudaSuccess) {
    const std::string why = std::string("could not run: ") + cudaGetErrorName(e);
    cuda_status(e);
    return why;
  }
  std::string why;
  for (const bool f16 : {false, true}) {
    std::vector<uint16_t> A(af.size()), B(bf.size());
    for (size_t i = 0; i < A.size(); ++i) A[i] = f16 ? f32_to_f16(af[i]) : f32_to_bf16(af[i]);
    for (size_t i = 0; i < B.size(); ++i) {
      const size_t src = flawed_b ? (i % kK) * kK + i / kK : i;
      B[i] = f16 ? f32_to_f16(bf[src]) : f32_to_bf16(bf[src]);
    }
    uint16_t* dA = reinterpret_cast<uint16_t*>(buf);
    uint16_t* dB = reinterpret_cast<uint16_t*>(buf + a_bytes);
    float* dD = reinterpret_cast<float*>(buf + a_bytes + b_bytes);
    std::vector<float> got(kM * kN);
    e = cudaMemcpy(dA, A.data(), a_bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(dB, B.data(), b_bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = launch_product(dA, dB, dD, f16, nullptr);
    if (e == cudaSuccess) e = cudaMemcpy(got.data(), dD, d_bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      why = std::string("could not run: ") + cudaGetErrorName(e);
      cuda_status(e);  // a sticky error poisons the device (cuda/device.cu), as any launch's would
      break;
    }
    for (int i = 0; i < kM * kN && why.empty(); ++i)
      if (!(got[i] == want[i]))  // NaN included
        why = std::string(f16 ? "f16" : "bf16") + " D[" + std::to_string(i / kN) + "][" + std::to_string(i % kN) +
              "] = " + std::to_string(got[i]) + ", expected " + std::to_string(want[i]);
    if (!why.empty()) break;
  }
  cudaFree(buf);
  cudaGetLastError();
  return why;
}

}  // namespace

Status cuda_wgmma_product(const uint16_t* A, const uint16_t* B, float* D, bool f16, void* stream) {
  if (!A || !B || !D) return Status::Shape;
  return cuda_status(launch_product(A, B, D, f16, static_cast<cudaStream_t>(stream)));
}

namespace cu {
bool wgmma_checked_ok(int device) {
  if (device < 0 || device >= kMaxDev) return false;
  const int s = g_state[device].load(std::memory_order_acquire);
  if (s != 0) return s == 1;
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_state[device].load(std::memory_order_relaxed) == 0) {
    g_why[device] = run_check(false);
    g_state[device].store(g_why[device].empty() ? 1 : 2, std::memory_order_release);
  }
  return g_state[device].load(std::memory_order_relaxed) == 1;
}
}  // namespace cu

std::string cuda_wgmma_check_state(int device) {
  if (device < 0 || device >= kMaxDev) return "unchecked";
  const int s = g_state[device].load(std::memory_order_acquire);
  if (s == 0) return "unchecked";
  if (s == 1) return "ok";
  std::lock_guard<std::mutex> lk(g_mu);
  return "failed: " + g_why[device];
}

std::string cuda_wgmma_run_check(bool flawed_b) { return run_check(flawed_b); }

void cuda_wgmma_check_reset(int device, int state, const char* why) {
  if (device < 0 || device >= kMaxDev) return;
  std::lock_guard<std::mutex> lk(g_mu);
  g_why[device] = why ? why : "";
  g_state[device].store(state == 1 || state == 2 ? state : 0, std::memory_order_release);
}

}  // namespace kvsq
