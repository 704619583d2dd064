// Small shared device helpers of the CUDA kernels (cuda/*.cu). Header-only;
// every .cu that includes it gets its own inline copies. Keep the API stable:
// other kernel files include it read-only.
//
//   Status cuda_status(cudaError_t)      map a runtime error to a Status (Ok on success)
//   Status cuda_launch_status()          cuda_status(cudaGetLastError()), after a launch
//   KVSQ_CUDA_TRY(expr)                  return cuda_status(expr) from a Status function on error
//   cu::ceil_div(a, b)                   host+device
//   cu::to_f32(x), cu::from_f32<T>(f)    scalar conversions, T in {float, __half, __nv_bfloat16}
//   cu::Vec16<T>                         16 bytes of T (8 x 16-bit or 4 x f32): load_vec16 -> floats
//   cu::load_vec16 / store_vec16         16-byte vectorised load/store with conversion to/from f32
//   cu::unpack16<T>(uint4, floats)        16 raw bytes (e.g. from shared memory) -> floats
//   cu::warp_sum / warp_max<W>()         butterfly reductions over W lanes (power of 2, <= 32)
//   cu::TRed<N, O[, Stop]>::run(v, lane) N sums at once over 2*O lanes (lane bits below Stop kept apart),
//                                        each lane left with its share
//   cu::warp_incl_sum(x, lane)           inclusive prefix sum of an int over a warp
//   cu::block_sum / block_max            whole-block reductions through 32 floats of shared memory
//   cu::with_float_dtype(DType, f)       calls f(T{}) for the storage type of a float DType
//   cu::ldsm_x4 / ldsm_x4_trans, mma16816<F16>, pack_bf16, split_bf16, pack_f16, split_f16, split_pair<F16>
//                                        tensor-core fragments (sm_80+)
//   cu::neg_inf(), cu::pos_inf(), cu::kLog2e, cu::kLn2
//   cu::pdl_wait / pdl_trigger / pdl_wait_then_trigger, cu::launch_pdl / launch_ex, cu::pdl_capable()
//                                        programmatic dependent launch (sm_90+; plain launch below)
//
// Conversions match native/core/dtype.h: f16/bf16 -> f32 exact; f32 -> f16/bf16
// round to nearest even (NaN stays NaN; its payload may differ from the CPU's).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "../native/core/dtype.h"
#include "../native/core/status.h"

namespace kvsq {

// Optional hook: cuda/device.cu may define this (a non-weak definition) to
// record the error text for last_cuda_error() and remember sticky errors the
// way its own calls do. Until it does, the weak reference resolves to null and
// cuda_status() maps and clears the error itself.
Status cuda_record_error(cudaError_t e) __attribute__((weak));

// Maps a CUDA runtime error to a Status. Non-sticky error state is cleared
// (cudaGetLastError) so a later call does not report it again.
inline Status cuda_status(cudaError_t e) {
  if (e == cudaSuccess) return Status::Ok;
  if (&cuda_record_error != nullptr) return cuda_record_error(e);
  cudaGetLastError();
  if (e == cudaErrorMemoryAllocation) return Status::OOM;
  if (e == cudaErrorInvalidDevice || e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) return Status::Device;
  return Status::Cuda;
}

// After a <<<>>> launch: configuration errors (too many threads, too much
// shared memory, no kernel image for this GPU) surface here, synchronously.
inline Status cuda_launch_status() { return cuda_status(cudaGetLastError()); }

#define KVSQ_CUDA_TRY(expr)                                 \
  do {                                                      \
    const cudaError_t kvsq_e_ = (expr);                     \
    if (kvsq_e_ != cudaSuccess) return ::kvsq::cuda_status(kvsq_e_); \
  } while (0)

namespace cu {

constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kLn2 = 0.693147180559945309417f;
__host__ __device__ inline float neg_inf() {
#ifdef __CUDA_ARCH__
  return __int_as_float(0xff800000u);
#else
  return -__builtin_inff();
#endif
}
__host__ __device__ inline float pos_inf() {
#ifdef __CUDA_ARCH__
  return __int_as_float(0x7f800000u);
#else
  return __builtin_inff();
#endif
}

template <class I>
__host__ __device__ inline I ceil_div(I a, I b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- scalar conversions
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_f32(float f);
template <> __device__ __forceinline__ float from_f32<float>(float f) { return f; }
template <> __device__ __forceinline__ __half from_f32<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

// ---------------------------------------------------------------- 16-byte vectors
// N = elements of T in 16 bytes. The pointer must be 16-byte aligned: callers
// guarantee it by requiring D * sizeof(T) % 16 == 0 and 16-byte aligned bases
// (cudaMalloc gives 256).
template <class T> struct Vec16 { static constexpr int N = 16 / int(sizeof(T)); };

// Converts 16 raw bytes (as loaded from global or shared memory) to floats.
template <class T>
__device__ __forceinline__ void unpack16(const uint4& u, float (&out)[Vec16<T>::N]) {
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(u.x); out[1] = __uint_as_float(u.y);
    out[2] = __uint_as_float(u.z); out[3] = __uint_as_float(u.w);
  } else {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        // bf16 is the top half of an f32: exact by shifting/masking
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      } else {
        __half2 h;
        memcpy(&h, &w[i], 4);
        const float2 f = __half22float2(h);  // exact
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      }
    }
  }
}

// 16-byte load through the read-only (non-coherent) path: only for data no
// kernel of the same launch writes.
template <class T>
__device__ __forceinline__ void load_vec16(const T* p, float (&out)[Vec16<T>::N]) {
  unpack16<T>(__ldg(reinterpret_cast<const uint4*>(p)), out);
}

// Same through the default (coherent) path.
template <class T>
__device__ __forceinline__ void load_vec16_coherent(const T* p, float (&out)[Vec16<T>::N]) {
  unpack16<T>(*reinterpret_cast<const uint4*>(p), out);
}

template <class T>
__device__ __forceinline__ void store_vec16(T* p, const float (&in)[Vec16<T>::N]) {
  uint4 u;
  if constexpr (sizeof(T) == 4) {
    u.x = __float_as_uint(in[0]); u.y = __float_as_uint(in[1]);
    u.z = __float_as_uint(in[2]); u.w = __float_as_uint(in[3]);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const T lo = from_f32<T>(in[2 * i]), hi = from_f32<T>(in[2 * i + 1]);
      w[i] = uint32_t(*reinterpret_cast<const uint16_t*>(&lo)) | (uint32_t(*reinterpret_cast<const uint16_t*>(&hi)) << 16);
    }
    u.x = w[0]; u.y = w[1]; u.z = w[2]; u.w = w[3];
  }
  *reinterpret_cast<uint4*>(p) = u;
}

// ---------------------------------------------------------------- reductions
template <int W = 32>
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, W);
  return v;
}
template <int W = 32>
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, W));
  return v;
}

// Transposed butterfly: N sums at once (v[0..N-1] per lane), each over a
// group of L = 2*O lanes. Each halving step sends half the values and keeps
// the other half (the upper half on lanes with bit O set), so after log2(L)
// steps lane x holds the full sums of max(1, N/L) values starting at index
// (x % L) * N / L (when N < L, lanes sharing that index hold copies). With
// N <= L it costs N - 1 + log2(L / N) shuffles; N separate sums, N log2(L).
// Stop > 0 leaves out the lane bits below it: TRed<8, 16, 2> sums over the
// 8 lanes that share lane % 4 (offsets 16, 8, 4), lane x keeping the sum of
// value (x / 4) % 8.
template <int N, int O, int Stop = 0>
struct TRed {
  static __device__ __forceinline__ void run(float* v, int lane) {
    if constexpr (O > Stop) {
      if constexpr (N >= 2) {
        const bool hi = (lane & O) != 0;
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
          const float send = hi ? v[i] : v[i + N / 2];
          const float keep = hi ? v[i + N / 2] : v[i];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
        }
        TRed<N / 2, O / 2, Stop>::run(v, lane);
      } else {
        v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
        TRed<1, O / 2, Stop>::run(v, lane);
      }
    }
  }
};

// Inclusive prefix sum over the 32 lanes of a warp (all lanes call it).
__device__ __forceinline__ int warp_incl_sum(int x, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  return x;
}

// Whole-block reductions (blockDim.x a multiple of 32, <= 1024). `red` is 32
// floats of shared memory; every thread gets the result. Contains
// __syncthreads: call from all threads, not under divergent control flow.
__device__ inline float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[wid] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return warp_sum(v);
}
__device__ inline float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[wid] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : neg_inf();
  return warp_max(v);
}

// ---------------------------------------------------------------- tensor cores
// ldmatrix x4 (four 8x8 b16 matrices; lanes 8i..8i+7 give matrix i's row
// addresses), its transposing form, and mma.sync m16n8k16 with f32
// accumulators (A row-major 16x16, B col-major 16x8, bf16 or f16 operands).
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
template <bool F16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (F16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low 16 bits)
  return *reinterpret_cast<const uint32_t*>(&v);
}
// x -> (hi, lo) bf16 pair with hi + lo ~ x to ~2^-16 relative.
__device__ __forceinline__ void split_bf16(float x, float& hi, float& lo) {
  hi = __bfloat162float(__float2bfloat16_rn(x));
  lo = x - hi;  // exact in f32
}
// The same in f16 (11-bit significands: hi + lo ~ x to ~2^-22 relative)
// for x of magnitude 2^-14 .. 2^15; outside it hi overflows or lo becomes
// subnormal, so callers scale x into that range by a power of two first.
__device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  return uint32_t(__half_as_ushort(__float2half_rn(lo))) | (uint32_t(__half_as_ushort(__float2half_rn(hi))) << 16);
}
__device__ __forceinline__ void split_f16(float x, float& hi, float& lo) {
  hi = __half2float(__float2half_rn(x));
  lo = x - hi;  // exact in f32
}
// Two consecutive operand elements x0, x1 (x0 in the low half) as the
// packed hi and lo registers of their splits, in f16 or bf16.
template <bool F16>
__device__ __forceinline__ void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  float h0, l0, h1, l1;
  if constexpr (F16) {
    split_f16(x0, h0, l0);
    split_f16(x1, h1, l1);
    hi = pack_f16(h0, h1);
    lo = pack_f16(l0, l1);
  } else {
    split_bf16(x0, h0, l0);
    split_bf16(x1, h1, l1);
    hi = pack_bf16(h0, h1);
    lo = pack_bf16(l0, l1);
  }
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// ---------------------------------------------------------------- warpgroup MMA (sm_90a)
// wgmma.mma_async m64nNk16, f32 += f16/bf16, A from registers, B from shared
// memory through a matrix descriptor. These are arch-specific instructions:
// they exist only in code compiled for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL), so
// elsewhere the wrappers trap and host code must not launch a kernel that
// reaches them (wgmma_usable() decides: a 9.0 device and a build with 90a).
//
// A warpgroup = 4 consecutive warps (threads 128w .. 128w + 127); every
// thread of it executes each instruction (.sync.aligned). Warp i of the group
// holds rows 16i .. 16i + 15 of A and D in exactly the m16n8k16 fragment
// layout (A: a0 a1 row g, k 2t..2t+1; a2 a3 row g + 8; a4..a7 the same at
// k + 8; g = lane / 4, t = lane % 4), and D's n8 block j in d[4j .. 4j + 3]
// (rows g, g + 8; columns 8j + 2t, + 1), so mma.sync epilogues carry over.
// B, K-major without swizzle: "core matrices" of 8 rows x 16 contiguous bytes
// (128 contiguous bytes); the descriptor's leading byte offset (LBO) steps
// from one core matrix to the next along K, the stride byte offset (SBO)
// from one group of 8 rows (N) to the next. Start address, LBO and SBO are
// stored >> 4 in 14-bit fields (bits 0-13, 16-29, 32-45; swizzle bits 62-63
// = 0).
//
// Ordering: wg_fence() before the first wgmma that touches registers other
// instructions wrote; wg_commit() closes a group of issued wgmmas;
// wg_wait<N>() returns when all but the N most recent groups are complete
// (the D registers must not be read or written before). Shared memory that
// ordinary stores or cp.async wrote is read by wgmma through the async
// proxy: the writer executes fence_proxy_async_smem() after its data has
// landed and before the barrier that publishes it.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KVSQ_WGMMA_DEVICE 1
#endif
__device__ __forceinline__ uint64_t wg_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((saddr & 0x3FFFFu) >> 4) | (uint64_t((lbo & 0x3FFFFu) >> 4) << 16) |
         (uint64_t((sbo & 0x3FFFFu) >> 4) << 32);
}
__device__ __forceinline__ void wg_fence() {
#ifdef KVSQ_WGMMA_DEVICE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void wg_commit() {
#ifdef KVSQ_WGMMA_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#ifdef KVSQ_WGMMA_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}
// After wg_wait: ties the D registers to this point, so the compiler does not
// move a read of them above the wait (the wait's asm names no registers, and
// to the compiler the wgmma's outputs were ready when it was issued).
template <int N>
__device__ __forceinline__ void wg_fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void fence_proxy_async_smem() {
#ifdef KVSQ_WGMMA_DEVICE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// D (64 x 32, f32) = A (64 x 16, registers) . B (16 x 32, K-major in shared
// memory at desc) + (accumulate ? D : 0).
template <bool F16>
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], const uint32_t (&a)[4], uint64_t desc, int accumulate) {
#ifdef KVSQ_WGMMA_DEVICE
  if constexpr (F16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
  }
#else
  (void)d, (void)a, (void)desc, (void)accumulate;
  __trap();
#endif
}

// Whether kernels may take their wgmma path on the current device: compute
// capability exactly 9.0 (sm_90a code runs on nothing else), a build that
// compiled 90a code (KVSQ_CUDA_ARCHS names it; the emulator models it), and
// the device computed the layout check's product exactly.
// wgmma_enabled_flag(): benchmarks and tests turn the paths off (default on;
// KVSQ_NO_WGMMA=1 in the environment starts the process with them off, so a
// card where they misbehave can be run on mma.sync without a rebuild).
inline std::atomic<bool>& wgmma_enabled_flag() {
  static std::atomic<bool> on{std::getenv("KVSQ_NO_WGMMA") == nullptr};
  return on;
}
inline bool build_has_sm90a() {
#if defined(KVSQ_CUDA_EMU)
  return true;
#elif defined(KVSQ_CUDA_ARCHS)
  return std::strstr(KVSQ_CUDA_ARCHS, "90a") != nullptr;
#else
  return false;
#endif
}
// The current device's compute capability; false (error cleared) if it
// cannot be read.
inline bool current_cc(int& major, int& minor) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}
// Whether the wgmma paths could run on a device of this capability (flag,
// build, 9.0); wgmma_supported(): on the current device.
inline bool wgmma_supported_cc(int major, int minor) {
  return wgmma_enabled_flag().load(std::memory_order_relaxed) && build_has_sm90a() && major == 9 && minor == 0;
}
inline bool wgmma_supported() {
  int major = 0, minor = 0;
  return current_cc(major, minor) && wgmma_supported_cc(major, minor);
}
// cuda/wgmma_check.cu: whether the operand layouts below give the exact
// product on `device` (checked once per device and process, at the first
// call: one small kernel and a host synchronisation).
bool wgmma_checked_ok(int device);
// What kernels ask before taking a wgmma path: supported, and the device
// passed the layout check (else they stay on mma.sync).
inline bool wgmma_usable() {
  if (!wgmma_supported()) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return wgmma_checked_ok(dev);
}

// ---------------------------------------------------------------- dtype dispatch
// f(T{}) with T the storage type of t; Status::DType for a non-float dtype.
template <class F>
inline Status with_float_dtype(DType t, F&& f) {
  switch (t) {
    case DType::F32: return f(float{});
    case DType::F16: return f(__half{});
    case DType::BF16: return f(__nv_bfloat16{});
    default: return Status::DType;
  }
}


// ---------------------------------------------------------------- dependent launch
// Programmatic dependent launch (sm_90+). A kernel launched by launch_pdl with
// pdl = true may be scheduled while the kernel before it in the stream is
// still running (once every block of that one has called pdl_trigger() or
// exited), so its preamble -- index loads, inputs no earlier kernel of the
// call writes -- overlaps that kernel's tail and the launch latency. It must
// call pdl_wait() before it reads anything the previous kernel wrote:
// griddepcontrol.wait returns once that grid has completed and its memory is
// visible. Kernels two or more launches back completed before the previous
// one started (it was launched without the attribute, or waited itself), so
// their results may be read before the wait. Without the attribute (or below
// sm_90) both instructions are no-ops and the launch is an ordinary one.
// A kernel always waits before it triggers, and one that triggers before its
// last global write lets its dependent start while those writes are in
// flight, so no pre-wait read may touch them. Early triggers here: decode
// attention (after its tile loop; the merge writes o, lse and workspace
// after), and the short kernels of the Quest selection, top-k, the decode
// union and plan (wait, then trigger at once; they write only scratch and
// their launcher's outputs). Pre-wait reads: the H2O score pass (items, page
// ids, pool scores) and window scores (q, k), none of which those write.
// The tests' CPU emulator starts dependents that early (its threads see the
// previous kernel's writes only past the wait), so a pre-wait read of them
// fails the emulated tests.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Dependent launches on or off for the process (cuda_set_dependent_launch:
// benchmarks time both; default on). One flag for every translation unit
// (an inline function's static).
inline std::atomic<bool>& dependent_launch_flag() {
  static std::atomic<bool> on{true};
  return on;
}

// The start of a short kernel in a chain of dependent launches: the previous
// kernel is complete from here on, and the next may be scheduled (it waits
// for this one).
__device__ __forceinline__ void pdl_wait_then_trigger() {
  pdl_wait();
  pdl_trigger();
}

// k<<<grid, block, smem, st>>>(args...) in clusters of `cluster` blocks
// (1: none), with programmatic stream serialization when pdl (the caller
// passes pdl only for devices of compute capability >= 9.0: pdl_capable())
// and the process-wide switch is on.
template <class... A, class... B>
inline cudaError_t launch_ex(bool pdl, unsigned cluster, void (*k)(A...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t st, B&&... args) {
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl && dependent_launch_flag().load(std::memory_order_relaxed)) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, k, std::forward<B>(args)...);
}
template <class... A, class... B>
inline cudaError_t launch_pdl(bool pdl, void (*k)(A...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                              B&&... args) {
  return launch_ex(pdl, 1u, k, grid, block, smem, st, std::forward<B>(args)...);
}

// Whether the current device takes dependent launches (compute capability
// >= 9.0). Asked at each call, not cached: the attribute query is cheap, and
// the emulated device of the tests changes its capability between tests.
inline bool pdl_capable() {
  int major = 0, minor = 0;
  return current_cc(major, minor) && major >= 9;
}

// Shared memory a block of `dev` may opt in to (0, error cleared, if it
// cannot be read). Asked at each call, for the same reason.
inline int smem_optin(int dev) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    cudaGetLastError();
    v = 0;
  }
  return v;
}

// Makes kernel k launchable with `bytes` of dynamic shared memory on the
// current device: its limit (cudaFuncAttributeMaxDynamicSharedMemorySize)
// is raised to the largest size a call has asked for and never lowered.
// A kernel serves calls of several sizes, possibly from several host
// threads: a call that set a smaller limit would fail another's launch of a
// larger one between its own set and launch. Not more than the largest
// need either: the limit plus the kernel's static shared memory must fit
// the device's per-block opt-in, or the set fails. Kept per (device,
// kernel), as the attribute is, with the opt-in it was set under: the
// opt-in of a device is fixed on a card, but the tests' emulated device
// changes its part, and a limit one part took may not fit another, so a
// record made under another opt-in does not describe the attribute (a part
// that set it lower since) and the limit is set again. (Keyed by opt-in as
// well, a 96 KB record of sm_80 outlived an sm_86 run's 72 KB set of the
// same kernel, and the next 96 KB launch on sm_80 failed.)
struct SmemLimit {
  int dev;
  const void* fn;
  int optin;
  size_t bytes;
};
inline std::mutex& smem_limit_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<SmemLimit>& smem_limits() {
  static std::vector<SmemLimit> v;
  return v;
}
// dev: the current device; optin: its smem_optin (launchers that have both
// at hand pass them; the two-argument form asks).
template <class... A>
inline cudaError_t raise_smem_limit(void (*k)(A...), size_t bytes, int dev, int optin) {
  const void* key = reinterpret_cast<const void*>(k);
  std::lock_guard<std::mutex> lk(smem_limit_mutex());
  SmemLimit* have = nullptr;
  for (SmemLimit& l : smem_limits())
    if (l.dev == dev && l.fn == key) have = &l;
  if (have && have->optin == optin && have->bytes >= bytes) return cudaSuccess;
  const cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess) return e;
  if (have) *have = {dev, key, optin, bytes};
  else smem_limits().push_back({dev, key, optin, bytes});
  return cudaSuccess;
}
template <class... A>
inline cudaError_t raise_smem_limit(void (*k)(A...), size_t bytes) {
  int dev = 0;
  if (const cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
  return raise_smem_limit(k, bytes, dev, smem_optin(dev));
}

}  // namespace cu
}  // namespace kvsq
