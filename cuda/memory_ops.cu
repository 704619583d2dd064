// CUDA twins of native/cpu/append.cc, gather.cc (gather + page_meta) and
// read_scores.cc. Contracts: native/core/ops.h AppendArgs, GatherArgs,
// PageMetaArgs, ReadScoresArgs. All four move or select stored values, no
// arithmetic: results are bit-identical to the CPU twins (tolerance: exact).
//
// append: one block per row i, threads over the row's elements:
//   k_pool[dst_slot[i]] = k_new[i], v_pool[...] = v_new[i], score_pool[slot] = 0,
//   meta (page = slot / P, kmin[D] then kmax[D] at meta_pool + page*2*D):
//     reset (reset_meta[i], or slot % P == 0 without reset_meta): kmin = kmax = key
//     else kmin[d] = key[d] < kmin[d] ? key[d] : kmin[d] (compared as f32, stored as bits;
//          NaN never widens), same for kmax with >.
//   Assumption (documented, not checked): the rows of one call target distinct
//   pages' metadata, i.e. at most one row per page. A decode step appends one
//   row per list and different lists (sequences, KV heads) never share pages,
//   so it holds; row-ordered multi-row page updates (prefill) go through
//   gather + page_meta instead. Distinct slots are the caller's contract.
// gather: grid-stride over (row, 16/4/2-byte unit): coalesced copies; the
//   widest unit the row size and every base pointer's alignment allow.
// page_meta: one block per page, thread per element: reset to row 0, then
//   widen by rows 1 .. fill-1 in order (the append rule, so metadata rebuilt
//   here equal appended metadata bit for bit).
// read_scores: one block per list; its output offset (sum of the earlier
//   lists' kv_len) is a block reduction over kv_len[0..l) - lists are few
//   (B*Hkv of one layer), so this beats a separate scan launch.
//
// Launchers validate sizes, dtypes and null pointers only: index contents are
// device data, validated by the caller on the host (launchers.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../native/core/ops.h"
#include "common.cuh"
#include "launchers.h"

namespace kvsq {
namespace {

constexpr int kRowThreads = 128;

// Raw storage + exact decode of each float dtype.
struct RawF32 {
  using R = uint32_t;
  static __device__ __forceinline__ float dec(R x) { return __uint_as_float(x); }
};
struct RawF16 {
  using R = uint16_t;
  static __device__ __forceinline__ float dec(R x) { return __half2float(__ushort_as_half(x)); }
};
struct RawBF16 {
  using R = uint16_t;
  static __device__ __forceinline__ float dec(R x) { return __uint_as_float(uint32_t(x) << 16); }
};

template <class Fn>
Status with_raw(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: return fn(RawF32{});
    case DType::F16: return fn(RawF16{});
    case DType::BF16: return fn(RawBF16{});
    default: return Status::DType;
  }
}

template <class Tr>
__device__ __forceinline__ void widen(typename Tr::R* mn, typename Tr::R* mx, typename Tr::R k) {
  const float x = Tr::dec(k);
  if (x < Tr::dec(*mn)) *mn = k;
  if (x > Tr::dec(*mx)) *mx = k;
}

template <class Tr>
__global__ void __launch_bounds__(kRowThreads) append_kernel(AppendArgs a) {
  using R = typename Tr::R;
  const int i = blockIdx.x, D = a.head_dim;
  const int64_t s = a.dst_slot[i];
  const R* kn = static_cast<const R*>(a.k_new) + int64_t(i) * D;
  const R* vn = static_cast<const R*>(a.v_new) + int64_t(i) * D;
  R* kp = static_cast<R*>(a.k_pool) + s * D;
  R* vp = static_cast<R*>(a.v_pool) + s * D;
  const bool reset = a.reset_meta ? a.reset_meta[i] != 0 : s % a.page_size == 0;
  R* meta = a.meta_pool ? static_cast<R*>(a.meta_pool) + (s / a.page_size) * 2 * D : nullptr;
  for (int d = threadIdx.x; d < D; d += kRowThreads) {
    const R k = kn[d];
    kp[d] = k;
    vp[d] = vn[d];
    if (meta) {
      if (reset) {
        meta[d] = k;
        meta[D + d] = k;
      } else {
        widen<Tr>(&meta[d], &meta[D + d], k);
      }
    }
  }
  if (a.score_pool && threadIdx.x == 0) a.score_pool[s] = 0.f;
}

template <class U>
__global__ void gather_kernel(GatherArgs a, int units_per_row) {
  const int64_t total = int64_t(a.count) * units_per_row;
  const U* ks = static_cast<const U*>(a.k_src);
  const U* vs = static_cast<const U*>(a.v_src);
  U* kp = static_cast<U*>(a.k_pool);
  U* vp = static_cast<U*>(a.v_pool);
  for (int64_t x = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; x < total; x += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = x / units_per_row;
    const int u = int(x - i * units_per_row);
    const int64_t sr = a.src_row[i], dr = a.dst_slot[i];
    kp[dr * units_per_row + u] = ks[sr * units_per_row + u];
    vp[dr * units_per_row + u] = vs[sr * units_per_row + u];
    if (u == 0 && a.score_pool) a.score_pool[dr] = a.score_src[sr];
  }
}

template <class Tr>
__global__ void __launch_bounds__(kRowThreads) page_meta_kernel(PageMetaArgs a) {
  using R = typename Tr::R;
  const int i = blockIdx.x, D = a.head_dim;
  const int64_t pg = a.page_ids[i];
  const int fill = a.fill[i];
  const R* k = static_cast<const R*>(a.k_pool) + pg * a.page_size * D;
  R* meta = static_cast<R*>(a.meta_pool) + pg * 2 * D;
  for (int d = threadIdx.x; d < D; d += kRowThreads) {
    R mn = k[d], mx = k[d];
    for (int r = 1; r < fill; ++r) widen<Tr>(&mn, &mx, k[int64_t(r) * D + d]);
    meta[d] = mn;
    meta[D + d] = mx;
  }
}

__global__ void __launch_bounds__(256) read_scores_kernel(ReadScoresArgs a) {
  const int l = blockIdx.x;
  // offset = sum kv_len[0..l), in 64-bit integers (shared atomic).
  __shared__ unsigned long long s_off;
  if (threadIdx.x == 0) s_off = 0;
  __syncthreads();
  unsigned long long part = 0;
  for (int x = threadIdx.x; x < l; x += blockDim.x) part += unsigned(a.kv_len[x]);
  if (part) atomicAdd(&s_off, part);
  __syncthreads();
  const int64_t off = int64_t(s_off);
  const int len = a.kv_len[l], P = a.page_size;
  const int* ids = a.page_ids + a.page_indptr[l];
  float* pool = const_cast<float*>(a.score_pool);
  for (int s = threadIdx.x; s < len; s += blockDim.x) {
    const int64_t slot = int64_t(ids[s / P]) * P + s % P;
    if (a.write_back) pool[slot] = a.in[off + s];
    else a.out[off + s] = pool[slot];
  }
}

bool aligned(const void* p, size_t n) { return (reinterpret_cast<uintptr_t>(p) % n) == 0; }

}  // namespace

Status cuda_append(const AppendArgs& a, void* stream) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0) return Status::Shape;
  if (!a.k_new || !a.v_new || !a.dst_slot || !a.k_pool || !a.v_pool) return Status::Shape;
  if (a.num_pages * a.page_size / a.page_size != a.num_pages) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  return with_raw(a.dtype, [&](auto tr) -> Status {
    append_kernel<decltype(tr)><<<a.count, kRowThreads, 0, st>>>(a);
    return cuda_launch_status();
  });
}

Status cuda_gather(const GatherArgs& a, void* stream) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0 || a.src_rows <= 0)
    return Status::Shape;
  if (!a.k_src || !a.v_src || !a.src_row || !a.k_pool || !a.v_pool || !a.dst_slot) return Status::Shape;
  if (!a.score_src != !a.score_pool) return Status::Shape;
  const int64_t nslots = a.num_pages * a.page_size;
  if (nslots / a.page_size != a.num_pages) return Status::Shape;
  const bool from_pool = a.k_src == a.k_pool || a.v_src == a.v_pool;
  if (from_pool && a.src_rows > nslots) return Status::Shape;
  const size_t row = size_t(a.head_dim) * dtype_size(a.dtype);
  auto ok = [&](size_t n) {
    return row % n == 0 && aligned(a.k_src, n) && aligned(a.v_src, n) && aligned(a.k_pool, n) && aligned(a.v_pool, n);
  };
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  auto go = [&](auto unit) -> Status {
    using U = decltype(unit);
    const int upr = int(row / sizeof(U));
    const int64_t total = int64_t(a.count) * upr;
    const int threads = 256;
    const int64_t blocks = (total + threads - 1) / threads;
    gather_kernel<U><<<int(blocks < 65536 ? blocks : 65536), threads, 0, st>>>(a, upr);
    return cuda_launch_status();
  };
  if (ok(16)) return go(uint4{});
  if (ok(4)) return go(uint32_t{});
  return go(uint16_t{});
}

Status cuda_page_meta(const PageMetaArgs& a, void* stream) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0) return Status::Shape;
  if (!a.k_pool || !a.meta_pool || !a.page_ids || !a.fill) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  return with_raw(a.dtype, [&](auto tr) -> Status {
    page_meta_kernel<decltype(tr)><<<a.count, kRowThreads, 0, st>>>(a);
    return cuda_launch_status();
  });
}

Status cuda_read_scores(const ReadScoresArgs& a, void* stream) {
  if (a.lists < 0 || a.page_size <= 0 || a.num_pages < 0) return Status::Shape;
  if (a.lists == 0) return Status::Ok;
  if (!a.page_indptr || !a.kv_len || (a.write_back ? !a.in : !a.out)) return Status::Shape;
  // score_pool and page_ids may be null only for an empty pool (no page can
  // be listed: the CPU twin's rule, checked without reading device indptr).
  if ((!a.score_pool || !a.page_ids) && a.num_pages > 0) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  read_scores_kernel<<<a.lists, 256, 0, st>>>(a);
  return cuda_launch_status();
}

}  // namespace kvsq

// ---------------------------------------------------------------- non-finite count
namespace kvsq {
namespace {
template <class U>
__global__ void nonfinite_kernel(const U* x, int64_t n, U mask, unsigned long long* count) {
  unsigned long long c = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    c += (x[i] & mask) == mask;
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0 && c) atomicAdd(count, c);
}
}  // namespace

Status cuda_count_nonfinite(const NonFiniteArgs& a, void* stream) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.n < 0 || !a.count || (a.n > 0 && !a.x)) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  unsigned long long* c = reinterpret_cast<unsigned long long*>(a.count);
  KVSQ_CUDA_TRY(cudaMemsetAsync(c, 0, sizeof(*c), st));
  if (a.n == 0) return Status::Ok;
  const int blocks = int(std::min<int64_t>((a.n + 255) / 256, 1024));
  if (a.dtype == DType::F32)
    nonfinite_kernel<<<blocks, 256, 0, st>>>(static_cast<const uint32_t*>(a.x), a.n, 0x7f800000u, c);
  else if (a.dtype == DType::BF16)
    nonfinite_kernel<<<blocks, 256, 0, st>>>(static_cast<const uint16_t*>(a.x), a.n, uint16_t(0x7f80u), c);
  else
    nonfinite_kernel<<<blocks, 256, 0, st>>>(static_cast<const uint16_t*>(a.x), a.n, uint16_t(0x7c00u), c);
  return cuda_launch_status();
}
}  // namespace kvsq
