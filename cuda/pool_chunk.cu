// pool1d and chunk scores on the GPU: the CUDA twins of native/cpu/pool1d.cc
// and native/cpu/chunk_scores.cc (layouts: Pool1dArgs, ChunkScoresArgs in
// core/ops.h; methods.md "Pooling", "ChunkKV").
//
// pool1d. out[r, t], t < n, h = k / 2, over in[r, t-h .. t+h] restricted to
// [0, n): Max = max of the in-range values, Avg = their sum / k (zero padding).
// One thread per output, consecutive threads on consecutive t (coalesced; the
// 2h neighbours come from L1). The fold order is the CPU twin's (centre, +1,
// -1, +2, -2, ..., same comparison for Max, one division by k for Avg), so the
// results are bit-identical to it: tolerance 0.
//
// chunk scores. out[c] = sum over rows r and t in chunk c of in[r, t]. Small
// chunks (<= 64): a block owns up to 1024 consecutive positions (whole chunks);
// thread t sums column t over the rows (coalesced across threads, double),
// then one thread per chunk adds its columns. Large chunks: one block per
// chunk, block-wide double reduction. Sums in double, rounded once to f32, as
// the CPU twin, but in another order: |gpu - cpu| <= 2^-24 |cpu| (one f32
// rounding step apart at most) + rows*chunk*2^-52 sum|in| (double order).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "launchers.h"

namespace kvsq {

namespace {

__global__ void pool1d_kernel(const float* __restrict__ in, float* __restrict__ out, int rows, int64_t n,
                              int64_t in_stride, int h, int mode, float k) {
  const int64_t total = int64_t(rows) * n;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, t = i - r * n;
    const float* x = in + r * in_stride;
    float v = x[t];
    const int64_t hmax = min(int64_t(h), n - 1);
    if (mode == int(PoolMode::Max)) {
      for (int64_t o = 1; o <= hmax; ++o) {
        if (t < n - o) v = v < x[t + o] ? x[t + o] : v;
        if (t >= o) v = v < x[t - o] ? x[t - o] : v;
      }
    } else {
      for (int64_t o = 1; o <= hmax; ++o) {
        if (t < n - o) v = __fadd_rn(v, x[t + o]);
        if (t >= o) v = __fadd_rn(v, x[t - o]);
      }
      v = __fdiv_rn(v, k);
    }
    out[i] = v;
  }
}

constexpr int kSmallChunk = 64;
constexpr int kSpan = 1024;  // positions per block, small chunks

__global__ void chunk_small_kernel(const float* __restrict__ in, float* __restrict__ out, int rows, int64_t n,
                                   int64_t in_stride, int chunk, int64_t nc) {
  __shared__ double col[kSpan];
  const int cpb = kSpan / chunk;  // chunks per block
  const int64_t c0 = int64_t(blockIdx.x) * cpb;
  const int64_t t0 = c0 * chunk;
  const int span = cpb * chunk;
  for (int i = threadIdx.x; i < span; i += blockDim.x) {
    const int64_t t = t0 + i;
    double s = 0.0;
    if (t < n)
      for (int r = 0; r < rows; ++r) s += double(in[r * in_stride + t]);
    col[i] = s;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < cpb; c += blockDim.x) {
    if (c0 + c >= nc) break;
    double s = 0.0;
    for (int e = 0; e < chunk; ++e) s += col[c * chunk + e];
    out[c0 + c] = float(s);
  }
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void chunk_large_kernel(const float* __restrict__ in, float* __restrict__ out, int rows, int64_t n,
                                   int64_t in_stride, int64_t chunk) {
  __shared__ double red[32];
  const int64_t c = blockIdx.x;
  const int64_t tb = c * chunk, te = min(n, tb + chunk);
  double s = 0.0;
  for (int r = 0; r < rows; ++r)
    for (int64_t t = tb + threadIdx.x; t < te; t += blockDim.x) s += double(in[r * in_stride + t]);
  s = warp_sum_d(s);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) red[wid] = s;
  __syncthreads();
  if (wid == 0) {
    s = lane < int(blockDim.x >> 5) ? red[lane] : 0.0;
    s = warp_sum_d(s);
    if (lane == 0) out[c] = float(s);
  }
}

bool overlaps(const float* in, int64_t in_len, const float* out, int64_t out_len) {
  const uintptr_t ib = reinterpret_cast<uintptr_t>(in), ie = reinterpret_cast<uintptr_t>(in + in_len);
  const uintptr_t ob = reinterpret_cast<uintptr_t>(out), oe = reinterpret_cast<uintptr_t>(out + out_len);
  return ob < ie && ib < oe;
}

}  // namespace

Status cuda_pool1d(const Pool1dArgs& a, void* stream) {
  if (a.rows <= 0 || a.n <= 0 || a.in_stride < a.n || a.kernel < 1 || a.kernel % 2 == 0) return Status::Shape;
  if (!a.in || !a.out) return Status::Shape;
  if (a.mode != PoolMode::Max && a.mode != PoolMode::Avg) return Status::Range;
  if (overlaps(a.in, (int64_t(a.rows) - 1) * a.in_stride + a.n, a.out, int64_t(a.rows) * a.n)) return Status::Shape;
  const int64_t total = int64_t(a.rows) * a.n;
  const unsigned blocks = unsigned(std::min<int64_t>((total + 255) / 256, 65535));
  pool1d_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(a.in, a.out, a.rows, a.n, a.in_stride,
                                                                       a.kernel / 2, int(a.mode), float(a.kernel));
  return cuda_launch_status();
}

Status cuda_chunk_scores(const ChunkScoresArgs& a, void* stream) {
  if (a.rows <= 0 || a.n <= 0 || a.chunk < 1 || a.in_stride < a.n) return Status::Shape;
  if (!a.in || !a.out) return Status::Shape;
  const int64_t n = a.n, chunk = a.chunk, nc = (n + chunk - 1) / chunk;
  if (overlaps(a.in, (int64_t(a.rows) - 1) * a.in_stride + n, a.out, nc)) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (chunk <= kSmallChunk) {
    const int cpb = kSpan / int(chunk);
    const int64_t blocks = (nc + cpb - 1) / cpb;
    if (blocks > INT32_MAX) return Status::Shape;
    chunk_small_kernel<<<unsigned(blocks), 256, 0, st>>>(a.in, a.out, a.rows, n, a.in_stride, int(chunk), nc);
  } else {
    if (nc > INT32_MAX) return Status::Shape;
    chunk_large_kernel<<<unsigned(nc), 256, 0, st>>>(a.in, a.out, a.rows, n, a.in_stride, chunk);
  }
  return cuda_launch_status();
}

}  // namespace kvsq
