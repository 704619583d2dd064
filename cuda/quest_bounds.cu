// Quest page bounds on the GPU: the CUDA twin of native/cpu/quest_bounds.cc
// (layout: QuestBoundsArgs in core/ops.h; methods.md "Quest").
//
// Formula. List l = b*Hkv + j, n = ceil(kv_len[l] / P) pages, query head h of
// group j: u[h][p] = sum_d max(q_d * kmax[p][d], q_d * kmin[p][d]) for p < n - 1,
// -inf for p in [n - 1, out_stride). share: one row per list, max over the
// group's heads.
//
// Work: one warp per (list, logical page). The page's kmin/kmax row (meta
// pool, 2*D values in the K dtype) is loaded once, coalesced (lane d, d + 32,
// ...; D <= 256 -> at most 8 values of each per lane, kept in registers) and
// reused for all g query heads of the group (q is tiny and stays in L1); one
// warp sum per head. Grid: x covers out_stride pages in blocks of 8 warps, y
// the lists, so every out entry is written exactly once, the -inf tail included.
// Index contents (page_indptr, page_ids, kv_len) are device memory: the caller
// validates them on the host (cuda/launchers.h); out_stride must cover every
// list's n - 1.
//
// Arithmetic: f32 products and sums (f16/bf16 -> f32 exact). The sum order
// differs from the CPU twin's; each is within (D + 2) 2^-24 sum_d |q_d| max(|kmin_d|,
// |kmax_d|) of the exact value, so they are within twice that of each other.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "launchers.h"

namespace kvsq {

namespace {

constexpr int kWarps = 8;
constexpr int kMaxPer = 8;  // D <= 256

template <class TQ, class TK>
__global__ void __launch_bounds__(kWarps * 32) quest_kernel(const QuestBoundsArgs a, int g) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t list = blockIdx.y;
  const int64_t p = int64_t(blockIdx.x) * kWarps + warp;
  if (p >= a.out_stride) return;
  const int64_t b = list / a.num_kv_heads, j = list % a.num_kv_heads;
  const int64_t h0 = b * a.num_q_heads + j * g;
  const int64_t kv = a.kv_len[list];
  const int64_t m = max(int64_t(0), (kv + a.page_size - 1) / a.page_size - 1);
  const int D = a.head_dim;
  if (p >= m) {  // the last (always attended) page and the unused tail
    if (lane == 0) {
      if (a.share) a.out[list * a.out_stride + p] = cu::neg_inf();
      else
        for (int h = 0; h < g; ++h) a.out[(h0 + h) * a.out_stride + p] = cu::neg_inf();
    }
    return;
  }
  const int64_t pid = a.page_ids[a.page_indptr[list] + p];
  const TK* lo = static_cast<const TK*>(a.meta_pool) + pid * 2 * D;
  const TK* hi = lo + D;
  float klo[kMaxPer], khi[kMaxPer];
#pragma unroll
  for (int e = 0; e < kMaxPer; ++e) {
    const int d = lane + 32 * e;
    klo[e] = d < D ? cu::to_f32(lo[d]) : 0.f;
    khi[e] = d < D ? cu::to_f32(hi[d]) : 0.f;
  }
  const TQ* q = static_cast<const TQ*>(a.q);
  float best = cu::neg_inf();
  for (int h = 0; h < g; ++h) {
    const TQ* qh = q + (h0 + h) * D;
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < kMaxPer; ++e) {
      const int d = lane + 32 * e;
      if (d < D) {
        const float qd = cu::to_f32(__ldg(qh + d));
        s += fmaxf(qd * khi[e], qd * klo[e]);
      }
    }
    s = cu::warp_sum(s);
    if (a.share) best = fmaxf(best, s);
    else if (lane == 0) a.out[(h0 + h) * a.out_stride + p] = s;
  }
  if (a.share && lane == 0) a.out[list * a.out_stride + p] = best;
}

}  // namespace

Status cuda_quest_bounds(const QuestBoundsArgs& a, void* stream) {
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0 ||
      a.num_pages <= 0 || a.out_stride <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0) return Status::Shape;
  if (!a.q || !a.meta_pool || !a.page_indptr || !a.page_ids || !a.kv_len || !a.out) return Status::Shape;
  if (a.head_dim > 32 * kMaxPer) return Status::Shape;  // registers hold D <= 256
  const int64_t lists = int64_t(a.batch) * a.num_kv_heads;
  if (lists > 65535) return Status::Shape;
  const int g = a.num_q_heads / a.num_kv_heads;
  const dim3 grid(unsigned((int64_t(a.out_stride) + kWarps - 1) / kWarps), unsigned(lists));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  return cu::with_float_dtype(a.q_dtype, [&](auto qt) -> Status {
    using TQ = decltype(qt);
    return cu::with_float_dtype(a.kv_dtype, [&](auto kt) -> Status {
      using TK = decltype(kt);
      quest_kernel<TQ, TK><<<grid, kWarps * 32, 0, st>>>(a, g);
      return cuda_launch_status();
    });
  });
}

}  // namespace kvsq
