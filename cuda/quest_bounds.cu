// Quest page bounds on the GPU: the CUDA twin of native/cpu/quest_bounds.cc
// (layout: QuestBoundsArgs in core/ops.h; methods.md "Quest").
//
// Formula. List l = b*Hkv + j, n = ceil(kv_len[l] / P) pages, query head h of
// group j: u[h][p] = sum_d max(q_d * kmax[p][d], q_d * kmin[p][d]) for p < n - 1,
// -inf for p in [n - 1, out_stride). share: one row per list, max over the
// group's heads.
//
// Work: one warp per 4 consecutive logical pages of a list. Each page's
// kmin/kmax row (meta pool, 2*D values in the K dtype) is loaded once,
// coalesced (lane d, d + 32, ...; D <= 256 -> at most 8 values of each per
// lane, kept in registers; the 4 pages' loads are all issued before use) and
// reused for all g query heads of the group (q is tiny and stays in L1); the
// 4 page sums of a head in one transposed butterfly (6 shuffles where 4 warp
// sums took 20; lanes 0, 8, 16, 24 store). Grid: x covers out_stride pages
// in blocks of 8 warps x 4 pages, y the lists, so every out entry is written
// exactly once, the -inf tail included.
// Index contents (page_indptr, page_ids, kv_len) are device memory: the caller
// validates them on the host (cuda/launchers.h); out_stride must cover every
// list's n - 1.
//
// Arithmetic: f32 products and sums (f16/bf16 -> f32 exact). The sum order
// differs from the CPU twin's; each is within (D + 2) 2^-24 sum_d |q_d| max(|kmin_d|,
// |kmax_d|) of the exact value, so they are within twice that of each other.
// Overflow (ops.h): a NaN sum from a finite q row and a finite page row
// (inf - inf) is stored as +inf, as on the CPU; non-finite inputs propagate.
// The page rows are checked only once one of the head's sums is NaN (a warp
// vote), so finite data pay nothing for the rule.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "launchers.h"

namespace kvsq {

namespace {

constexpr int kWarps = 8;
constexpr int kPPW = 4;  // pages per warp

// PER: values of each of kmin/kmax per lane (ceil(D / 32) rounded up: 4 or 8).
template <class TQ, class TK, int PER>
__global__ void __launch_bounds__(kWarps * 32) quest_kernel(const QuestBoundsArgs a, int g) {
  cu::pdl_wait_then_trigger();  // a link of a dependent-launch chain (sm_90+)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t list = blockIdx.y;
  const int64_t p0 = (int64_t(blockIdx.x) * kWarps + warp) * kPPW;
  if (p0 >= a.out_stride) return;
  const int64_t b = list / a.num_kv_heads, j = list % a.num_kv_heads;
  const int64_t h0 = b * a.num_q_heads + j * g;
  const int64_t kv = a.kv_len[list];
  const int64_t m = max(int64_t(0), (kv + a.page_size - 1) / a.page_size - 1);
  const int D = a.head_dim;
  // The last (always attended) page and the unused tail: -inf.
  if (lane == 0)
    for (int i = 0; i < kPPW; ++i) {
      const int64_t p = p0 + i;
      if (p < m || p >= a.out_stride) continue;
      if (a.share) a.out[list * a.out_stride + p] = cu::neg_inf();
      else
        for (int h = 0; h < g; ++h) a.out[(h0 + h) * a.out_stride + p] = cu::neg_inf();
    }
  const int nv = int(min(int64_t(kPPW), max(int64_t(0), m - p0)));  // pages < m (m <= out_stride)
  if (nv == 0) return;
  // All the warp's page rows are loaded before any arithmetic, so their
  // latencies overlap (one warp per page waited kv_len -> page_ids -> meta
  // for every 512 bytes: 21% of the copy bandwidth on an H200).
  const int32_t* ids = a.page_ids + a.page_indptr[list] + p0;
  int64_t pid[kPPW];
#pragma unroll
  for (int i = 0; i < kPPW; ++i) pid[i] = i < nv ? int64_t(ids[i]) : 0;
  float klo[kPPW][PER], khi[kPPW][PER];
#pragma unroll
  for (int i = 0; i < kPPW; ++i) {
    const TK* lo = static_cast<const TK*>(a.meta_pool) + pid[i] * 2 * D;
    const TK* hi = lo + D;
#pragma unroll
    for (int e = 0; e < PER; ++e) {
      const int d = lane + 32 * e;
      const bool ok = i < nv && d < D;
      klo[i][e] = ok ? cu::to_f32(lo[d]) : 0.f;
      khi[i][e] = ok ? cu::to_f32(hi[d]) : 0.f;
    }
  }
  const TQ* q = static_cast<const TQ*>(a.q);
  // The kPPW page sums of a head in one transposed butterfly (cu::TRed: 6
  // shuffles, not 4 x 5): lane x ends with the full sum of page i = x / 8,
  // so lanes 0, 8, 16, 24 hold the warp's four results.
  static_assert(kPPW == 4, "lane x holds page x / 8");
  const int i = lane >> 3;
  const bool writer = (lane & 7) == 0 && i < nv;
  float best = cu::neg_inf();
  for (int h = 0; h < g; ++h) {
    const TQ* qh = q + (h0 + h) * D;
    float qd[PER];
    bool fin = true;
#pragma unroll
    for (int e = 0; e < PER; ++e) {
      const int d = lane + 32 * e;
      qd[e] = d < D ? cu::to_f32(__ldg(qh + d)) : 0.f;
      fin = fin && isfinite(qd[e]);
    }
    const bool q_finite = __all_sync(0xffffffffu, fin);
    float s[kPPW];
#pragma unroll
    for (int k = 0; k < kPPW; ++k) {
      s[k] = 0.f;
#pragma unroll
      for (int e = 0; e < PER; ++e)
        if (lane + 32 * e < D) s[k] += fmaxf(qd[e] * khi[k][e], qd[e] * klo[k][e]);
    }
    cu::TRed<kPPW, 16>::run(s, lane);
    float v = s[0];
    const bool nan = q_finite && v != v;
    if (__any_sync(0xffffffffu, nan)) {  // rare: an overflow, or a non-finite page row
      bool kfin_mine = false;
#pragma unroll
      for (int k = 0; k < kPPW; ++k) {
        bool kfin = true;
#pragma unroll
        for (int e = 0; e < PER; ++e) kfin = kfin && isfinite(klo[k][e]) && isfinite(khi[k][e]);
        kfin = __all_sync(0xffffffffu, kfin);
        if (k == i) kfin_mine = kfin;
      }
      if (nan && kfin_mine) v = cu::pos_inf();
    }
    if (a.share) best = fmaxf(best, v);
    else if (writer) a.out[(h0 + h) * a.out_stride + p0 + i] = v;
  }
  if (a.share && writer) a.out[list * a.out_stride + p0 + i] = best;
}

}  // namespace

Status cuda_quest_bounds(const QuestBoundsArgs& a, void* stream) {
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0 ||
      a.num_pages <= 0 || a.out_stride <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0) return Status::Shape;
  if (!a.q || !a.meta_pool || !a.page_indptr || !a.page_ids || !a.kv_len || !a.out) return Status::Shape;
  if (a.head_dim > 256) return Status::Shape;  // registers hold D <= 256
  const int64_t lists = int64_t(a.batch) * a.num_kv_heads;
  if (lists > 65535) return Status::Shape;
  const int g = a.num_q_heads / a.num_kv_heads;
  const dim3 grid(unsigned((int64_t(a.out_stride) + kWarps * kPPW - 1) / (kWarps * kPPW)), unsigned(lists));
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  return cu::with_float_dtype(a.q_dtype, [&](auto qt) -> Status {
    using TQ = decltype(qt);
    return cu::with_float_dtype(a.kv_dtype, [&](auto kt) -> Status {
      using TK = decltype(kt);
      // a dependent launch (sm_90+): in Quest's selection it follows a short prep kernel
      const bool pdl = cu::pdl_capable();
      if (a.head_dim <= 128) return cuda_status(cu::launch_pdl(pdl, quest_kernel<TQ, TK, 4>, grid, dim3(kWarps * 32), 0, st, a, g));
      return cuda_status(cu::launch_pdl(pdl, quest_kernel<TQ, TK, 8>, grid, dim3(kWarps * 32), 0, st, a, g));
    });
  });
}

}  // namespace kvsq
