// Quest page selection on the GPU: the CUDA twin of native/cpu/quest_select.cc
// (contract: QuestSelectArgs in core/ops.h; methods.md "Quest").
//
// Formula: bounds u[p] (cuda_quest_bounds), the budget_pages - 1 largest of
// each sparse row (cuda_topk's radix select: ties to the lower page,
// ascending), then per query head row r: every page of a list with at most
// budget_pages pages, else the row's top pages followed by page n - 1.
//
// Work, all stream-ordered on the device (no host copy of bounds or pages):
//   1. prep kernel: zeroes the verdict (error word, and q's non-finite count
//      when nothing counts it), and per top-k row its length (n - 1, or 0 for
//      a dense list) and k, from the device kv_len;
//   2. cuda_quest_bounds into scratch [rows, max_pages - 1];
//   3. cuda_topk_enqueue (error bits in a device word);
//   4. assemble kernel (one block): if no error, sel_indptr by a block scan of
//      min(n, budget_pages) and the pages, a warp per row.
// q must be finite (ops.h; with finite q no bound is NaN). Unless the caller
// has checked that already (q_checked: the cache checks a decode step's
// inputs before anything changes), a count of q's non-finite values is
// enqueued first and the launcher reads it and the error word back, which
// synchronises the stream, to report Status::NaN. With q_checked nothing is
// read back and nothing waits: the selection is one more stream-ordered
// stage of the decode step, and the pages never leave the device. The one
// failure left then, NaN metadata (the cache never stores it), goes
// unreported: the assembly writes nothing, and the outputs keep what the
// caller put there (the bindings zero them: every row empty, memory-safe).
// Every kernel is a dependent launch (sm_90+) of the one before, with no
// memset between them (prep zeroes, top-k marks its rows instead of
// counting them), so the launch gaps of the chain overlap its kernels.
//
// Tolerance vs the CPU twin: the bounds differ by at most twice the bound
// stated in quest_bounds.cu, so a page whose bound is that close to the k-th
// largest may be chosen on one device and not the other; every other choice
// is the same (test/native/test_cuda_scores.cu checks exactly that).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "launchers.h"

namespace kvsq {

namespace {

constexpr int kAsmThreads = 1024;  // a warp per row for up to 32 rows at once

struct SelParams {
  int batch, hq, hkv, g, P, budget, k, width;
  bool share;
  const int32_t* kv_len;
  int32_t* lens;  // [rows]
  int32_t* ks;    // [rows]
  const int32_t* top;  // [rows, k]
  unsigned* flag;       // top-k's error word (zeroed by prep)
  int64_t* nonfinite;   // q's non-finite values (counted first, or zeroed by prep)
  bool zero_nonfinite;  // q_checked: nothing counts them; prep writes 0
  int32_t* sel_indptr;
  int32_t* sel_pages;
};

__device__ inline int pages_of(int len, int P) { return (len + P - 1) / P; }

__global__ void prep_kernel(SelParams p) {
  cu::pdl_wait_then_trigger();  // a link of a dependent-launch chain (sm_90+)
  // The verdict's zeroing, here rather than a memset: a memset between two
  // kernels would break the chain of dependent launches.
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *p.flag = 0u;
    if (p.zero_nonfinite) *p.nonfinite = 0;
  }
  const int rows = p.share ? p.batch * p.hkv : p.batch * p.hq;
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
    const int l = p.share ? r : (r / p.hq) * p.hkv + (r % p.hq) / p.g;
    const int n = pages_of(p.kv_len[l], p.P);
    p.lens[r] = n > p.budget ? n - 1 : 0;
    p.ks[r] = p.k;
  }
}

// One block: a scan of the per-row counts gives sel_indptr, then each warp
// copies rows (the top pages and the last page, or 0 .. n-1).
__global__ void __launch_bounds__(kAsmThreads) assemble_kernel(SelParams p) {
  cu::pdl_wait_then_trigger();  // a link of a dependent-launch chain (sm_90+)
  if (*p.flag || *p.nonfinite) return;  // non-finite q or a failed top-k: nothing written
  __shared__ int32_t s_carry;
  __shared__ int32_t s_warp[kAsmThreads / 32];
  const int nrows = p.batch * p.hq;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  if (tid == 0) {
    s_carry = 0;
    p.sel_indptr[0] = 0;
  }
  __syncthreads();
  for (int base = 0; base < nrows; base += kAsmThreads) {
    const int r = base + tid;
    int c = 0;
    if (r < nrows) {
      const int l = (r / p.hq) * p.hkv + (r % p.hq) / p.g;
      c = min(pages_of(p.kv_len[l], p.P), p.budget);
    }
    // inclusive warp scan, then across warps
    const int x = cu::warp_incl_sum(c, lane);
    if (lane == 31) s_warp[warp] = x;
    __syncthreads();
    if (warp == 0) {
      const int w = cu::warp_incl_sum(lane < kAsmThreads / 32 ? s_warp[lane] : 0, lane);
      if (lane < kAsmThreads / 32) s_warp[lane] = w;
    }
    __syncthreads();
    const int incl = s_carry + x + (warp ? s_warp[warp - 1] : 0);
    if (r < nrows) p.sel_indptr[r + 1] = incl;
    __syncthreads();
    if (tid == kAsmThreads - 1) s_carry = incl;
    __syncthreads();
  }
  __syncthreads();  // sel_indptr complete (block-visible)
  for (int r = warp; r < nrows; r += kAsmThreads / 32) {
    const int l = (r / p.hq) * p.hkv + (r % p.hq) / p.g;
    const int n = pages_of(p.kv_len[l], p.P);
    int32_t* out = p.sel_pages + p.sel_indptr[r];
    if (n <= p.budget) {
      for (int i = lane; i < n; i += 32) out[i] = i;
    } else {
      // 4 loads in flight per lane before the stores (out and top are both
      // int32 pointers, so the compiler would not reorder them): this copy
      // was a chain of L2 round trips, 15 us of a 128K Quest step on an H200.
      const int32_t* top = p.top + int64_t(p.share ? l : r) * p.k;
      for (int i0 = lane; i0 < p.k; i0 += 128) {
        int32_t v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = i0 + 32 * u < p.k ? top[i0 + 32 * u] : 0;
#pragma unroll
        for (int u = 0; u < 4; ++u)
          if (i0 + 32 * u < p.k) out[i0 + 32 * u] = v[u];
      }
      if (lane == 0) out[p.k] = n - 1;
    }
  }
}

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

}  // namespace

Status cuda_quest_select(const QuestSelectArgs& a, void* stream) {
  const QuestBoundsArgs& qb = a.bounds;
  if (a.budget_pages < 1) return Status::Range;
  if (qb.batch <= 0 || qb.num_q_heads <= 0 || qb.num_kv_heads <= 0 || qb.page_size <= 0 || a.max_pages < 0)
    return Status::Shape;
  if (qb.num_q_heads % qb.num_kv_heads != 0) return Status::Shape;
  if (!qb.kv_len || !a.sel_indptr) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t rows = qb.share ? int64_t(qb.batch) * qb.num_kv_heads : int64_t(qb.batch) * qb.num_q_heads;
  const int64_t width = std::max<int64_t>(1, int64_t(a.max_pages) - 1);
  const int k = a.budget_pages - 1;
  const bool sparse = a.max_pages > a.budget_pages && k > 0;

  // The error word and q's non-finite count sit together: one read for both.
  struct Verdict {
    unsigned flag, pad;
    int64_t nonfinite;
  };
  size_t off = 0;
  const size_t o_flag = off; off = align256(off + sizeof(Verdict));
  const size_t o_lens = off; off = align256(off + size_t(rows) * sizeof(int32_t));
  const size_t o_ks = off; off = align256(off + size_t(rows) * sizeof(int32_t));
  const size_t o_top = off; off = align256(off + size_t(rows) * size_t(std::max(k, 1)) * sizeof(int32_t));
  const size_t o_bounds = off;
  if (sparse) off = align256(off + size_t(rows) * size_t(width) * sizeof(float));
  void* ws = nullptr;
  KVSQ_CUDA_TRY(cudaMallocAsync(&ws, off, st));
  char* w = static_cast<char*>(ws);
  SelParams p;
  p.batch = qb.batch;
  p.hq = qb.num_q_heads;
  p.hkv = qb.num_kv_heads;
  p.g = qb.num_q_heads / qb.num_kv_heads;
  p.P = qb.page_size;
  p.budget = a.budget_pages;
  p.k = k;
  p.width = int(width);
  p.share = qb.share;
  p.kv_len = qb.kv_len;
  p.lens = reinterpret_cast<int32_t*>(w + o_lens);
  p.ks = reinterpret_cast<int32_t*>(w + o_ks);
  p.top = reinterpret_cast<int32_t*>(w + o_top);
  p.flag = reinterpret_cast<unsigned*>(w + o_flag);
  int64_t* nonfinite = reinterpret_cast<int64_t*>(w + o_flag + offsetof(Verdict, nonfinite));
  p.nonfinite = nonfinite;
  p.zero_nonfinite = a.q_checked;
  p.sel_indptr = a.sel_indptr;
  p.sel_pages = a.sel_pages;

  Status s = Status::Ok;
  auto fail = [&](cudaError_t e) {
    if (s == Status::Ok && e != cudaSuccess) s = cuda_status(e);
  };
  // Dependent launches (sm_90+): each kernel of the chain waits for the one
  // before and lets the next be scheduled at once, hiding the launch gaps of
  // the five or six launches (with the decode step's three after them).
  const bool pdl = cu::pdl_capable();
  if (!a.q_checked) {
    NonFiniteArgs nf;
    nf.dtype = qb.q_dtype;
    nf.x = qb.q;
    nf.n = int64_t(qb.batch) * qb.num_q_heads * qb.head_dim;
    nf.count = nonfinite;
    s = cuda_count_nonfinite(nf, stream);
  }
  // prep always runs: it zeroes the verdict (and sizes the top-k rows)
  if (s == Status::Ok)
    s = cuda_status(cu::launch_pdl(pdl, prep_kernel, dim3(unsigned((rows + 255) / 256)), dim3(256), 0, st, p));
  if (s == Status::Ok && sparse) {
    QuestBoundsArgs b = qb;
    b.out = reinterpret_cast<float*>(w + o_bounds);
    b.out_stride = int32_t(width);
    s = cuda_quest_bounds(b, stream);
    if (s == Status::Ok) {
      TopkArgs t;
      t.rows = int32_t(rows);
      t.row_stride = width;
      t.scores = reinterpret_cast<const float*>(w + o_bounds);
      t.lengths = p.lens;
      t.k = p.ks;
      t.out_stride = k;
      t.out = reinterpret_cast<int32_t*>(w + o_top);
      s = cuda_topk_enqueue(t, reinterpret_cast<unsigned*>(w + o_flag), stream);
    }
  }
  if (s == Status::Ok) {
    s = cuda_status(cu::launch_pdl(pdl, assemble_kernel, dim3(1), dim3(kAsmThreads), 0, st, p));
  }
  if (a.q_checked) {  // no read back, no wait (the free is stream-ordered)
    fail(cudaFreeAsync(ws, st));
    return s;
  }
  Verdict v{};
  if (s == Status::Ok) fail(cudaMemcpyAsync(&v, w + o_flag, sizeof(Verdict), cudaMemcpyDeviceToHost, st));
  fail(cudaFreeAsync(ws, st));
  fail(cudaStreamSynchronize(st));
  if (s != Status::Ok) return s;
  if (v.nonfinite) return Status::NaN;
  return topk_flag_status(v.flag);
}

}  // namespace kvsq
