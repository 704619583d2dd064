// CUDA decode attention over the paged head-wise KV pool: the twin of
// native/cpu/decode_attention.cc (argument contract: native/core/ops.h
// DecodeAttnArgs).
//
// Formula (same as the CPU twin). Sequence b, query head h, KV head j = h / g,
// list l = b*Hkv + j, slot set S_h (valid slots of l, or of the pages selected
// for (b, h)):
//   z_s = scale * q . k_s (kept in base-2 units: q is pre-multiplied by scale*log2 e)
//   lse = log sum_s exp(z_s);  o = sum_s exp(z_s - lse) v_s   (zeros, lse -inf if S_h empty)
//   score_pool[s] += reduce_{h in group} p_h[s] over the union of the group's S_h.
//
// Layout: K row of slot s of list l at k_pool + (page_ids[page_indptr[l] + s/P] * P + s%P) * D.
//
// Design (why):
// * Flash-decoding. A 1-block plan kernel reads kv_len, sizes chunks so the
//   batch makes whole waves of resident blocks (occupancy x SMs; never
//   shorter than 256 slots), and writes (list, first page, end page) items;
//   one sequence with 8 KV heads at 32K thus fills all 132 SMs. Planning on
//   the device keeps the launcher free of host syncs (the lengths are device
//   data). A wave that spills by a few items doubles the time: measured on
//   an H200, 536 items for 528 resident blocks. Callers that hold the
//   lengths on the host (the bindings, which validate every index array
//   there) make the same plan on the host instead (cuda_decode_plan) and
//   upload it with the page tables: no plan kernel, whose ~7 us (H200) was
//   ~10% of a one-sequence 32K step. Quest subsets keep the kernel (their
//   work is the union, device data).
// * One block (4 warps) per item loads each K/V row of its chunk once, through
//   a 3-stage cp.async pipeline (16-byte copies, coalesced: a page is P
//   contiguous rows), and computes all g query heads of the group from shared
//   memory (GQA reuse). f32 K/V (CUDA cores): rows are read as 16-byte
//   vectors, LPR lanes per row, each lane holding the matching 16-byte
//   slice of all g pre-scaled query vectors in registers. The g*rows
//   partial dot products are reduced with a transposed butterfly (each
//   step halves the values a lane holds), so a tile of 32 rows costs
//   ~g*LPR/32 shuffles per row instead of g*log2(LPR).
//   f16 and bf16 K/V use tensor cores (q.k and p.V as mma.sync with the
//   group's heads as N; see attn_kernel's MMA notes): on an H200 that took
//   the bf16 32K batch-4 step from 55% (the same rows on CUDA cores) to 69%
//   of copy bandwidth and one sequence from 39% to 47% (docs/perf.md). f16
//   K/V has taken the same kernels since 2026-12-07, and head dims other
//   than 64 / 128 / 256 (8 to 248, each on the kernel of the next
//   power-of-two row) since session 18, where they ran on CUDA cores (not
//   yet timed).
// * A second kernel, off by default until a card times it
//   (cuda_decode_set_warp_pages): f16/bf16 D 128 in pages of 16 with each
//   warp owning whole pages and no block barrier in its loop (wp_kernel).
// * Online softmax per 32-row tile (one warp per head: lane = row), V
//   accumulated with each lane owning a 16-byte column slice for all g heads
//   (MMA: each warp a quarter of D for all heads); the running-max rescale is
//   one multiply per accumulator per tile. Three block barriers per tile.
// * Partials (m, s, acc) of each item go to a workspace; the last block of a
//   list to finish (atomic counter, threadfence pattern) merges them, writes o,
//   lse and the base-2 lse used by the score pass. No separate merge launch.
// * Quest subsets: a union kernel (block per list) first joins the group's
//   sorted selections into one ascending page list with, per page, the heads
//   that chose it and its physical id; items are then ranges of that list,
//   read like dense pages (32 entries per window load), so only union pages
//   are read, once for the whole group; logits of heads that did not select a
//   page are -inf (exp2 -> exactly 0), as on the CPU. (The kernels used to
//   walk the g sorted cursors page by page inside each item: a chain of
//   dependent loads per page in one warp plus a binary search per item,
//   most of the 66 us a 128K Quest step's sparse attention took on an H200
//   for 8 MB of K/V.)
// * H2O accumulation, fused: the main pass stores the raw base-2 logits per
//   (physical slot, head) in the workspace (indexed by physical slot, so the
//   size, num_pages * P * g floats for the whole group, is known on the host);
//   after the merge a small score kernel (block per item) turns them into
//   probabilities with the final lse, reduces over the group and adds to
//   score_pool. K is not read again.
// * Wide groups (MQA and wide GQA: g = Hq / Hkv up to Hq). The tensor-core
//   kernels take up to 16 heads as two mma n tiles of 8 (phase A: each warp
//   16 rows x 8 heads, all four warps busy; phase C: each warp a quarter of
//   D for both tiles), so f16/bf16 K/V with 9 to 16 heads per KV head
//   (GLM-4, Qwen3-235B: 16) read each K/V row once. Larger groups, and
//   more than 8 heads on CUDA cores (f32, which hold every head's q slice and
//   accumulators in registers), run as ns = ceil(g / max) sub-groups of
//   ceil(g / ns) heads (max 16, 8, or 4 for wide f32 rows), each planned,
//   attended and merged as a list of its own, the last sub-group's missing
//   heads computed on zero queries and never stored (71 on tensor cores:
//   4 x 15 + 11; on CUDA cores 8 x 8 + 7). Each sub-group reads the KV
//   head's rows, so K/V traffic is ns times that of one pass; the
//   sub-groups of a list are adjacent in the plan, so their repeats run in
//   the same waves and may hit L2 (unmeasured: BENCH decode_mqa). With H2O scores the
//   score pass writes each sub-group's reduce to its own row of a workspace
//   (slots a sub-group did not reach keep a marker) and a combine kernel
//   adds the reduce over the sub-groups to the pool: no atomics, and the
//   result does not depend on scheduling.
// * Workspace: one cudaMallocAsync / cudaFreeAsync pair per call on the
//   caller's stream (stream-ordered, no host sync, safe with concurrent calls
//   on different streams). On first use of a device the default memory pool's
//   release threshold is raised to 256 MiB (only raised, never lowered) so the
//   workspace is reused across calls instead of being unmapped at every sync.
//
// * f32 K/V with D 132..256 (rows of 528..1024 bytes, more 16-byte vectors
//   than a warp has lanes): each lane holds two vectors of its row,
//   sub-groups of at most 4 heads keep its registers where the 8-head kernels
//   of shorter rows are, and the pipeline has two stages (128 KB of tiles;
//   three would be 192 KB, sm_90 only). Devices that cannot give a block
//   that much shared memory (sm_86/89: 99 KB) run them with one stage (64
//   KB: each tile's copies complete before it is computed); a device with
//   less than that would refuse them (cuda_decode_row_check says why).
// * Shared memory per block: the stage tiles (dynamic) plus the static row
//   tables and per-head arrays (3.7 KB, 6.1 KB with 16 heads) must fit the
//   device's opt-in (attn_stages): 512-byte tile rows (f16/bf16 D 200..256,
//   f32 D 128)
//   take three stages (96 KB of tiles) on sm_80/90 and two (64 KB) on the
//   99 KB sm_86/89, where three leave no room for the static arrays.
//
// Limits (Status::Shape otherwise): D * sizeof(kv) a multiple of 16 bytes
// and <= 512 bytes (D <= 256 for f16/bf16), or f32 with D <= 256, on a device
// with the shared memory of the fewest stages (row_check); K/V pool pointers 16-byte aligned.
// Pages may not be shared between lists of one call when score_pool is given
// (the score adds would race; the CPU twin has the same requirement). Index
// contents are validated by the caller (launchers.h).
//
// Tolerance vs the CPU twin: both are fp32 with different summation orders and
// exp2 implementations (CUDA exp2f: 2 ulp; the MMA kernels' bf16 hi + lo
// splits of q and p add at most 2^-18 relative per term, the f16 ones,
// scaled into f16's normal range, ~2^-22, inside the same bound), so each
// is within the bound derived
// in native/cpu/decode_attention.cc of the exact result and the two differ by
// at most twice that bound (test/native/test_cuda_decode.cu asserts this).
// Scores of slots outside the union are untouched (bit-identical). Groups
// split into sub-groups add their sub-groups' sums where the CPU keeps one
// running sum over the group: up to g more units in the last place of a
// slot's increment (the test allows 2g).
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>
#include <algorithm>
#include <type_traits>

#include "../native/core/ops.h"
#include "common.cuh"
#include "launchers.h"

namespace kvsq {
namespace {

constexpr int kTR = 32;        // rows per tile (= warp size: phase B maps lane = row)
constexpr int kNW = 4;         // warps per attention block
constexpr int kThreads = kNW * 32;
constexpr int kStages = 3;     // cp.async pipeline depth
constexpr int kStagesWide = 2; // ... with wide (f32, > 512-byte) rows
constexpr int kMaxG = 8;          // heads per sub-group on CUDA cores
constexpr int kMaxGMma = 16;      // ... on tensor cores (two mma n tiles of 8 heads)
constexpr int kMaxGAll = kMaxGMma;  // the most of any kernel: per-head arrays and strides
constexpr int kMaxGWide = 4;        // heads per sub-group with wide (f32, > 512-byte) rows
constexpr int kMaxRowBytes = 1024;  // f32 D 256; 16-bit rows stop at 512 (D 256)
// The longest K/V row the kernels take in dtype kv.
constexpr int64_t max_row_bytes(DType kv) { return kv == DType::F32 ? kMaxRowBytes : 512; }
// K/V rows of nvr 16-byte vectors that the tensor-core kernels take: every
// f16/bf16 row (D % 8 == 0, up to 256). D % 16 == 8 (an odd nvr) ends in half
// an mma k step, whose other half is zero-filled in shared memory.
constexpr bool mma_rows(DType kv, int nvr) {
  return (kv == DType::BF16 || kv == DType::F16) && nvr >= 1 && nvr <= 32;
}
// Bytes per K/V row in the attention kernel's shared-memory tiles: the
// tensor-core kernels' rows are padded to a multiple of 128 bytes (8 chunks),
// so the row % 8 XOR swizzle of a chunk index stays inside its row's 8-chunk
// block and the 8 rows of an ldmatrix meet distinct banks at any D (D 80:
// 160 -> 256 bytes, D 136..192: 384; an odd nvr's zero chunk always fits);
// CUDA-core (f32) rows are packed.
constexpr int pad_row128(int row_bytes) { return (row_bytes + 127) & ~127; }
constexpr int64_t tile_row_bytes(DType kv, int64_t row_bytes) {
  return mma_rows(kv, int(row_bytes / 16)) ? pad_row128(int(row_bytes)) : row_bytes;
}
constexpr int kRowsPerWarp = kTR / kNW;
constexpr int kMinItemSlots = 256;
constexpr int kScoreThreads = 256;
constexpr unsigned kFull = 0xffffffffu;

// An item: list `list`, pages [p0, p1) (with Quest subsets: union entries
// [p0, p1), absolute indices into the u_* arrays, so the attention kernel's
// producer needs no base register), the list's items first .. first + count - 1.
struct Item {
  int list, p0, p1, first, count, pad0, pad1, pad2;
};

struct Params {
  int B, Hq, Hkv, D, P;
  // Groups of more than kMaxG query heads (kMaxGMma on tensor cores,
  // kMaxGWide with wide f32 rows) run as ns sub-groups of at most g heads
  // (g = ceil(gq / ns)); each sub-group is a list of its own ("virtual list"
  // v = l * ns + s, nl of them) that reads the KV head's pages. With gq <=
  // that maximum: ns 1, g = gq, v = l.
  int g, gq, ns, nl;
  int nvr;        // 16-byte vectors per row
  int row_bytes;  // D * sizeof(kv)
  float qs;       // scale * log2(e)
  DType q_dtype;
  const void* q;
  void* o;
  const char* k_pool;
  const char* v_pool;
  const int* page_indptr;
  const int* page_ids;
  const int* kv_len;
  const int* sel_indptr;  // null = dense
  const int* sel_pages;
  // Quest union (workspace, indexed like sel_pages: list l's union sits at
  // [sel_indptr[r0], sel_indptr[r0 + g]), r0 its first query head's row).
  int* u_cnt;        // [nl] union length
  int* u_pg;         // logical page
  unsigned* u_mask;  // bit h: head h of the group chose it
  int* u_id;         // physical page id
  int sel_count;     // elements of sel_pages (a bound for the union writes)
  float* score_pool;
  int reduce;
  float* lse;
  // workspace
  Item* items;
  int* n_items;
  int* counters;  // [nl]
  int* first;     // [nl + 1] first item of each list
  float* part_ms; // [items_max, kMaxGAll, 2]
  float* part_acc;// [items_max, g, D]
  float* lse2;    // [nl, g]
  float* logits;  // [num_pages * P, gq], only with score_pool
  float* score_part;  // ns > 1 with score_pool: [ns, pool_slots] sub-group reduces (kNoPart: none)
  int64_t pool_slots; // num_pages * P
  int target_items;
  int min_chunk_pages;
};

// Sub-group v: physical list (b * Hkv + j), first head within the group, its
// head count, and the q row of that head.
struct Sub {
  int list, hb, g;
  int64_t row0;
};
__host__ __device__ __forceinline__ int phys_list(const Params& p, int v) { return p.ns == 1 ? v : v / p.ns; }
__device__ __forceinline__ Sub sub_of(const Params& p, int v) {
  Sub s;
  s.list = phys_list(p, v);
  s.hb = (v - s.list * p.ns) * p.g;
  s.g = min(p.g, p.gq - s.hb);
  s.row0 = int64_t(s.list / p.Hkv) * p.Hq + int64_t(s.list % p.Hkv) * p.gq + s.hb;
  return s;
}
// The bit pattern score_part is filled with: a sub-group that did not reach
// a slot (Quest) leaves it. Arithmetic never makes it (a NaN result of exp2f
// and friends is the canonical 0x7fffffff).
constexpr unsigned kNoPart = 0xffffffffu;

__device__ __forceinline__ float load_q(const void* q, DType t, int64_t i) {
  if (t == DType::F16) return __half2float(static_cast<const __half*>(q)[i]);
  if (t == DType::BF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(q)[i]);
  return static_cast<const float*>(q)[i];
}
__device__ __forceinline__ void store_o(void* o, DType t, int64_t i, float v) {
  if (t == DType::F16) static_cast<__half*>(o)[i] = __float2half_rn(v);
  else if (t == DType::BF16) static_cast<__nv_bfloat16*>(o)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(o)[i] = v;
}

// ---------------------------------------------------------------- plan
// One block. Items: list l with np_l = ceil(kv_len/P) pages and work w_l
// (list_work) is cut into n_l = ceil(w_l / chunk) near-equal page ranges,
// chunk = max(min pages, ceil(sum w / target)); so sum n_l <= target + nl =
// items_max.
// Lists with no pages get their outputs here (zeros, lse -inf).
// Two phases: a scan of the per-list counts (each thread a contiguous
// segment of lists) writes first[l]; then every thread writes items, found by
// binary search over first[] (the 64-bit divisions of the page ranges are
// spread over the block: done serially by one thread per list they took
// ~13 us for 8 lists of 66 items on an H200).
// Work of list l in pages: its pages, or with Quest subsets its union pages
// (an item is then a range of the union list). 0 = nothing to attend.
__device__ __forceinline__ long long list_work(const Params& p, int v) {
  if (p.sel_indptr) return p.u_cnt[v];
  return (p.kv_len[phys_list(p, v)] + p.P - 1) / p.P;
}

// Launched as a dependent (sm_90+) of whatever the stream ran before (with
// Quest subsets: the union kernel): everything it reads or writes waits.
__global__ void __launch_bounds__(1024) plan_kernel(Params p) {
  cu::pdl_wait_then_trigger();  // the attention blocks may be scheduled (they wait for the plan)
  __shared__ unsigned long long s_total;
  __shared__ int s_warp[32];
  __shared__ long long s_chunk;
  const int tid = threadIdx.x, nt = blockDim.x;
  if (tid == 0) s_total = 0;
  __syncthreads();
  long long local = 0;
  for (int l = tid; l < p.nl; l += nt) local += list_work(p, l);
  if (local) atomicAdd(&s_total, (unsigned long long)local);
  __syncthreads();
  if (tid == 0) {
    const long long total = (long long)s_total;
    long long chunk = (total + p.target_items - 1) / p.target_items;
    s_chunk = chunk < p.min_chunk_pages ? p.min_chunk_pages : chunk;
  }
  __syncthreads();
  const long long chunk = s_chunk;

  // Contiguous segment of lists per thread, exclusive scan of item counts.
  const int seg = (p.nl + nt - 1) / nt;
  const int l0 = min(p.nl, tid * seg), l1 = min(p.nl, l0 + seg);
  int cnt = 0;
  // (not unrolled: a thread's segment is a list or two, and the unrolled 64-bit
  // divisions' calls made ptxas spill)
#pragma unroll 1
  for (int l = l0; l < l1; ++l) cnt += int((list_work(p, l) + chunk - 1) / chunk);
  // block exclusive scan
  const int lane = tid & 31, wid = tid >> 5;
  const int incl = cu::warp_incl_sum(cnt, lane);
  if (lane == 31) s_warp[wid] = incl;
  __syncthreads();
  if (wid == 0) {
    s_warp[lane] = cu::warp_incl_sum(lane < (nt >> 5) ? s_warp[lane] : 0, lane);  // inclusive warp totals
  }
  __syncthreads();
  int off = incl - cnt + (wid > 0 ? s_warp[wid - 1] : 0);
  const int n_items = s_warp[(nt >> 5) - 1];
  if (tid == 0) {
    *p.n_items = n_items;
    p.first[p.nl] = n_items;
  }
  for (int l = l0; l < l1; ++l) {
    const int n = int((list_work(p, l) + chunk - 1) / chunk);
    p.counters[l] = 0;
    p.first[l] = off;
    off += n;
  }
  __syncthreads();  // first[] visible to the block
  // Lists with nothing to attend (no items): their outputs, here.
  for (int l = l0; l < l1; ++l) {
    if (p.first[l + 1] != p.first[l]) continue;
    const Sub sb = sub_of(p, l);
    for (int h = 0; h < sb.g; ++h) {
      const int64_t row = sb.row0 + h;
      for (int d = 0; d < p.D; ++d) store_o(p.o, p.q_dtype, row * p.D + d, 0.f);
      if (p.lse) p.lse[row] = cu::neg_inf();
      p.lse2[int64_t(l) * p.g + h] = cu::neg_inf();
    }
  }
  for (int x = tid; x < n_items; x += nt) {
    int lo = 0, hi = p.nl;  // the last l with first[l] <= x: a non-empty list
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (p.first[mid] <= x) lo = mid;
      else hi = mid;
    }
    const int f = p.first[lo], n = p.first[lo + 1] - f, i = x - f;
    const long long wk = list_work(p, lo);  // pages, or union entries
    const int base = p.sel_indptr ? p.sel_indptr[sub_of(p, lo).row0] : 0;
    Item it;
    it.list = lo;
    it.p0 = base + int(wk * i / n);
    it.p1 = base + int(wk * (i + 1) / n);
    it.first = f;
    it.count = n;
    it.pad0 = it.pad1 = it.pad2 = 0;
    p.items[x] = it;
  }
}

// ---------------------------------------------------------------- union
// Quest subsets, block per list l: the union of its g heads' selections
// (pages < np, ascending), with the heads that chose each page (bit h) and
// its physical id, written at the list's own range of the selection
// [sel_indptr[r0], sel_indptr[r0 + g]) (a union is no longer than the
// selections it joins), and its length to u_cnt[l]. The list's pages go in
// chunks of kUnionChunk: each selection entry sets its head's bit in a
// shared mask (atomicOr), then a block scan of the non-empty masks in page
// order places the chunk's union pages. Reads sum_h |S_h| entries per chunk
// (one chunk up to 128K tokens at P = 16) and the chunk's masks, no chain of
// dependent loads longer than kv_len -> page id. 1024 threads: a chunk's scan
// is 8 masks per thread (the grid is only one block per list).
constexpr int kUnionThreads = 1024;
constexpr int kUnionChunk = 8192;                       // pages per pass: 32 KB of masks
constexpr int kUnionPer = kUnionChunk / kUnionThreads;  // consecutive pages per thread

__global__ void __launch_bounds__(kUnionThreads) union_kernel(Params p) {
  __shared__ unsigned s_mask[kUnionChunk];
  __shared__ int s_ind[kMaxGAll + 1];
  __shared__ int s_warp[kUnionThreads / 32];
  cu::pdl_wait_then_trigger();  // the selection may be the previous kernel's output; the plan waits for this one
  const int l = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const Sub sb = sub_of(p, l);
  const int g = sb.g;
  if (tid <= g) s_ind[tid] = p.sel_indptr[sb.row0 + tid];
  const int np = (p.kv_len[sb.list] + p.P - 1) / p.P;
  const int* ids = p.page_ids + p.page_indptr[sb.list];
  __syncthreads();
  const int e0 = s_ind[0], e1 = min(s_ind[g], p.sel_count);
  int carry = 0;
  for (int c0 = 0; c0 < np; c0 += kUnionChunk) {  // block-uniform
    const int cn = min(kUnionChunk, np - c0);
    for (int i = tid; i < kUnionChunk; i += kUnionThreads) s_mask[i] = 0u;
    __syncthreads();
    for (int e = e0 + tid; e < e1; e += kUnionThreads) {
      const int v = p.sel_pages[e] - c0;
      if (v >= 0 && v < cn) {
        int h = 0;
        while (h + 1 < g && e >= s_ind[h + 1]) ++h;
        atomicOr(&s_mask[v], 1u << h);
      }
    }
    __syncthreads();
    // This thread's pages: kUnionPer consecutive ones, so a block exclusive
    // scan of the counts keeps page order.
    const int q0 = tid * kUnionPer;
    unsigned m[kUnionPer];
    int cnt = 0;
#pragma unroll
    for (int i = 0; i < kUnionPer; ++i) {
      m[i] = s_mask[q0 + i];
      cnt += m[i] != 0u;
    }
    const int incl = cu::warp_incl_sum(cnt, lane);
    if (lane == 31) s_warp[warp] = incl;
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < kUnionThreads / 32; ++w) {
      const int x = s_warp[w];
      before += w < warp ? x : 0;
      total += x;
    }
    // The page ids first (all loads in flight), then the stores.
    int id[kUnionPer];
#pragma unroll
    for (int i = 0; i < kUnionPer; ++i) id[i] = m[i] ? __ldg(ids + c0 + q0 + i) : 0;
    int pos = e0 + carry + before + incl - cnt;
#pragma unroll
    for (int i = 0; i < kUnionPer; ++i)
      if (m[i]) {
        if (pos < e1) {  // always, for a valid selection; a bound for any other
          p.u_pg[pos] = c0 + q0 + i;
          p.u_mask[pos] = m[i];
          p.u_id[pos] = id[i];
        }
        ++pos;
      }
    carry += total;
    __syncthreads();  // s_mask and s_warp are rewritten by the next chunk
  }
  if (tid == 0) p.u_cnt[l] = max(0, min(carry, e1 - e0));
}

// Producer state of the attention block (warp 0 only): the page being cut
// into tile rows.
struct Producer {
  int next;      // next page (dense) or union entry (subset) of the item
  int win0, idw; // lane x holds the physical id of entry win0 + x (one load per 32 pages, not one per page)
  int pgw;       // subset: lane x holds the logical page of entry win0 + x
  unsigned mw;   // subset: ... and its head mask
  int p1, len;
  int64_t phys;  // physical slot of row 0 of the current page
  int row, rows; // rows consumed / valid in the current page
  unsigned mask;
  bool done;
};

// Fills one tile's row table (physical slots, head masks, count). Warp 0.
__device__ __forceinline__ void produce(Producer& pr, const Params& p, const int* ids, bool subset,
                                        int64_t* t_slot, unsigned* t_mask, int* t_n, int lane) {
  int n = 0;
  while (n < kTR) {
    if (pr.row == pr.rows) {
      if (pr.done) break;
      int pg = -1, id = 0;
      const int x = pr.next++;
      if (x < pr.p1) {
        if (x - pr.win0 >= 32) {  // warp-uniform; entries only move forward
          pr.win0 = x;
          const bool in = x + lane < pr.p1;
          if (subset) {
            const int u = x + lane;
            pr.idw = in ? p.u_id[u] : 0;
            pr.pgw = in ? p.u_pg[u] : 0;
            pr.mw = in ? p.u_mask[u] : 0u;
          } else {
            pr.idw = in ? ids[x + lane] : 0;
          }
        }
        id = __shfl_sync(kFull, pr.idw, x - pr.win0);
        pg = subset ? __shfl_sync(kFull, pr.pgw, x - pr.win0) : x;
        pr.mask = subset ? __shfl_sync(kFull, pr.mw, x - pr.win0) : kFull;
      }
      if (pg < 0) {
        pr.done = true;
        break;
      }
      pr.phys = int64_t(id) * p.P;
      pr.row = 0;
      pr.rows = min(p.P, pr.len - pg * p.P);
    }
    const int k = min(kTR - n, pr.rows - pr.row);
    if (lane < k) {
      t_slot[n + lane] = pr.phys + pr.row + lane;
      t_mask[n + lane] = pr.mask;
    }
    n += k;
    pr.row += k;
  }
  if (lane == 0) *t_n = n;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
// 16 zero bytes to shared memory (src-size 0: nothing is read from gmem).
__device__ __forceinline__ void cp_async16_zero(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, 0;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Resident blocks per SM that ptxas may plan registers for (0: no hint, its
// own choice). A block's tiles take kStages * kTR rows of K and of V, up to
// LPR * 16 bytes each: 24 / 48 / 96 KB for LPR 8 / 16 / 32, so shared memory
// alone caps an SM at 7 / 4 / 2 attention blocks (H100; fewer on sm_86/89).
// The CUDA-core kernels' registers grow with the group: G <= 2 fit 7 blocks
// (72 registers), G 4 fit 4 (128), G 8 only 2 (up to 255). Left to itself,
// ptxas cut some of them (CUDA-core G <= 2 on sm_90, f32 G 4 on sm_89, the D 64
// tensor-core kernel) to 64-72 registers and spilled 4-12 bytes; the smaller
// of the two counts lets every one keep its state in registers at no
// occupancy cost. The LPR 16 tensor-core kernels (the measured target
// shape, D 128, among them) never spilled and keep ptxas's own allocation:
// no hint. The LPR 32 ones did not either until they took rows shorter than
// 32 vectors (session 18: the k steps and m tiles past D skipped at run
// time), when ptxas, unhinted, held the 8-head kernels to 128 registers and
// spilled 4 bytes; 2 (what 512-byte tile rows allow by shared memory)
// leaves them 142-169, no spills.
template <int LPR, int G, bool MMA>
constexpr int attn_min_blocks() {
  if (MMA && LPR != 8) return LPR == 32 ? 2 : 0;
  if (LPR > 32) return 1;  // wide f32 rows: 128 KB of tiles, one block per SM
  const int by_smem = LPR == 8 ? 7 : LPR == 16 ? 4 : 2;
  const int by_regs = MMA || G <= 2 ? 7 : G == 4 ? 4 : 2;
  return by_smem < by_regs ? by_smem : by_regs;
}

// Static shared memory of an attention kernel with `stages` stages and
// per-head arrays of gs heads (its row tables, logits, weights and softmax
// state, as declared in attn_kernel, which asserts the bound), plus room for
// the compiler's alignment. 3.7 KB at 3 stages and 8 heads, 6.1 KB with 16:
// beside 96 KB of tiles (512-byte rows) more than a 99 KB part has.
constexpr size_t attn_static_smem(int stages, int gs) {
  return size_t(stages) * kTR * (sizeof(int64_t) + sizeof(unsigned)) + size_t(stages) * sizeof(int) +
         size_t(gs) * (kTR + 1) * sizeof(float) + size_t(gs) * (kTR + 8) * sizeof(float) + 3 * size_t(gs) * sizeof(float) +
         2 * sizeof(int) + 64;
}

// f16 K/V, q of another type: the power of two 2^-e that brings a head's
// largest |q| into [2^14, 2^15) before q's f16 hi + lo split (f16 overflows
// at 65504 and goes subnormal below 2^-14), and the logit multiplier qs 2^e
// that takes it back. m: this lane's largest |q| of the head, whose four
// lanes are a quad (lane & ~3); qmul / zmul are left as they are (1, qs) for
// a zero or non-finite head. Exact: powers of two.
__device__ __forceinline__ void f16_q_scale(float m, float qs, float& qmul, float& zmul) {
  m = fmaxf(m, __shfl_xor_sync(kFull, m, 1));
  m = fmaxf(m, __shfl_xor_sync(kFull, m, 2));
  if (m > 0.f && isfinite(m)) {
    int x;
    frexpf(m, &x);  // m = f 2^x, f in [0.5, 1): m 2^(15 - x) in [2^14, 2^15)
    // x <= 128 (m finite): e <= 113, 2^-e normal. Below 2^-111 q is only
    // scaled up by 2^126 (2^-e and 2^e must stay normal).
    const int e = max(x - 15, -126);
    qmul = ldexpf(1.f, -e);
    zmul = ldexpf(qs, e);
  }
}

// The end of an attention block's item, after it has written part_acc and
// its per-head (m, s) into s_m / s_s (visible to the block): writes part_ms,
// counts the item in, and the list's last block to finish merges every item
// of the list into o, lse and lse2. smem: scratch of `scratch` bytes (the
// stage buffers, free by now); s_m, s_s: shared arrays of at least p.g
// floats (reused by the merge); s_last: a shared int.
__device__ __forceinline__ void finish_item(const Params& p, const Item& it, int item_idx, unsigned char* smem,
                                            size_t scratch, float* s_m, float* s_s, int& s_last) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int D = p.D, list = it.list;
  if (tid < p.g) {
    p.part_ms[(int64_t(item_idx) * kMaxGAll + tid) * 2] = s_m[tid];
    p.part_ms[(int64_t(item_idx) * kMaxGAll + tid) * 2 + 1] = s_s[tid];
  }
  // The score pass (launched as this kernel's dependent) may be scheduled
  // once every block is past its tile loop: its preamble (items, page ids,
  // pool scores) overlaps the merges below; it waits for this grid before
  // reading logits or lse.
  cu::pdl_trigger();

  // Last block of the list merges (threadfence reduction pattern).
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(&p.counters[list], 1) == it.count - 1;
  __syncthreads();
  if (!s_last) return;
  // Every block of the list has counted: back to zero, so a plan image made
  // on the host serves repeated calls with the same lengths (benchmarks).
  if (tid == 0) p.counters[list] = 0;
  __threadfence();
  // The sub-group's real heads and their first q row (recomputed: not held
  // in registers through the tile loop). Partials have the item stride p.g.
  const Sub sm = sub_of(p, list);
  const int gv = sm.g;
  const int64_t qrow0 = sm.row0;

  // Per head: M = max m_i, S = sum s_i 2^(m_i - M) (warp per head, lanes over
  // items). When they fit, the items' (m_i, s_i) pairs are loaded once into
  // the (now free) stage buffers and turned into weights 2^(m_i - M) there,
  // so the output loop below is a stream of independent 16-byte loads: one
  // thread per 4 outputs, 8 items in flight. (A chain of scalar loads, two in
  // flight, made the merging block of a 66-item list a ~20 us tail.)
  float2* wts = reinterpret_cast<float2*>(smem);  // [gv][count]: (weight, unused)
  const bool wfit = int64_t(it.count) * gv * 8 <= int64_t(scratch);
  const float2* ms = reinterpret_cast<const float2*>(p.part_ms);  // [item][kMaxGAll]: (m, s)
  for (int h = warp; h < gv; h += kNW) {
    float M = cu::neg_inf();
    for (int i = lane; i < it.count; i += 32) {
      const float2 v = __ldcg(&ms[int64_t(it.first + i) * kMaxGAll + h]);
      if (wfit) wts[h * it.count + i] = v;
      M = fmaxf(M, v.x);
    }
    M = cu::warp_max(M);
    float S = 0.f;
    for (int i = lane; i < it.count; i += 32) {
      const float2 v = wfit ? wts[h * it.count + i] : __ldcg(&ms[int64_t(it.first + i) * kMaxGAll + h]);
      const float w = (M == cu::neg_inf() || v.x == cu::neg_inf()) ? 0.f : exp2f(v.x - M);
      if (w != 0.f) S += v.y * w;
      if (wfit) wts[h * it.count + i].x = w;
    }
    S = cu::warp_sum(S);
    if (lane == 0) {
      s_m[h] = M;
      s_s[h] = S;
      const float l2 = S > 0.f ? M + log2f(S) : cu::neg_inf();
      p.lse2[int64_t(list) * p.g + h] = l2;
      if (p.lse) p.lse[qrow0 + h] = S > 0.f ? l2 * cu::kLn2 : cu::neg_inf();
    }
  }
  __syncthreads();
  const int gd = gv * D;  // a multiple of 4: D * sizeof(kv) is a multiple of 16 bytes
  const int64_t ist = int64_t(p.g) * D;  // item stride of part_acc
  for (int i4 = tid; i4 < gd / 4; i4 += kThreads) {
    const int h = i4 * 4 / D;
    const float M = s_m[h], S = s_s[h];
    float4 out = make_float4(0.f, 0.f, 0.f, 0.f);
    if (wfit) {
      const float2* wh = wts + h * it.count;
      const float4* src = reinterpret_cast<const float4*>(p.part_acc + it.first * ist) + i4;
      const int64_t st4 = ist / 4;
      int t = 0;
      for (; t + 8 <= it.count; t += 8) {
        float4 a[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) a[u] = __ldcg(src + (t + u) * st4);
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const float w = wh[t + u].x;
          out.x += w * a[u].x;
          out.y += w * a[u].y;
          out.z += w * a[u].z;
          out.w += w * a[u].w;
        }
      }
      for (; t < it.count; ++t) {
        const float4 a = __ldcg(src + t * st4);
        const float w = wh[t].x;
        out.x += w * a.x;
        out.y += w * a.y;
        out.z += w * a.z;
        out.w += w * a.w;
      }
    } else if (M != cu::neg_inf()) {
      for (int t = 0; t < it.count; ++t) {
        const int64_t ii = it.first + t;
        const float mi = __ldcg(&p.part_ms[(ii * kMaxGAll + h) * 2]);
        if (mi == cu::neg_inf()) continue;
        const float w = exp2f(mi - M);
        const float4 a = __ldcg(reinterpret_cast<const float4*>(p.part_acc + ii * ist) + i4);
        out.x += w * a.x;
        out.y += w * a.y;
        out.z += w * a.z;
        out.w += w * a.w;
      }
    }
    const float inv = S > 0.f ? 1.f / S : 1.f;
    const int64_t o0 = qrow0 * D + int64_t(i4) * 4;
    store_o(p.o, p.q_dtype, o0, out.x * inv);
    store_o(p.o, p.q_dtype, o0 + 1, out.y * inv);
    store_o(p.o, p.q_dtype, o0 + 2, out.z * inv);
    store_o(p.o, p.q_dtype, o0 + 3, out.w * inv);
  }
}

// ---------------------------------------------------------------- attention
// T: K/V storage type; LPR: pow2 >= 16-byte vectors per row, the lanes per
// row up to 32; G: group size rounded up to a power of two (heads >= g are
// zero padding).
//
// Wide rows (LPR 64: f32 K/V of D 132..256, 528..1024-byte rows, CUDA cores):
// a warp per row, each lane holding VPL = 2 vectors (vec and vec + 32) of q,
// k, v and the accumulators; sub-groups of at most 4 heads (G <= 4, so a
// lane's q and acc stay at 2 x 4 x 8 floats, what the 8-head kernels of
// 16-byte rows hold); a two-stage pipeline, since three stages of 1 KiB rows
// (192 KB) leave no room on anything but sm_90 (two: 128 KB, sm_80 and sm_90),
// and one stage (ST = 1: 64 KB, no copy in flight during the compute) on
// sm_86/89, whose 99 KB take neither (attn_stages).
//
// MMA (f16 or bf16 K/V, any D: LPR the power of two >= nvr, at least 8;
// the k steps and m tiles past ceil(D / 16) skipped, tile rows padded to
// 128 bytes, and with D % 16 == 8 the last k step's second half a zero
// chunk in shared memory and zero q): q.k and p.V on
// tensor cores (mma.sync m16n8k16, f32 accumulators, operands in K/V's
// type), the group's heads as N: one n tile of 8 (G 8) or two (G 16).
// Phase A: warp w takes 16 rows (w % 2) of n tile w / 2 (G 8: warps 0-1
// only), A = K rows (ldmatrix), B = the query vectors, not multiplied by
// qs (a q of K's type is exact; another is split into hi + lo, two mma:
// bf16 ~2^-17 relative; f16 ~2^-22 after a per-head power-of-two scaling
// into f16's range), z = qs * (q.k): the CPU twin rounds q * qs first, a
// difference far inside the tolerance. Phase C: O^T [d, h] += V^T [d,
// rows] P^T [rows, h], each warp LPR / 8 consecutive m tiles of 16 dims
// (a quarter of LPR * 8; with a shorter D the last warps have fewer or
// none: D 80 gives 2, 2, 1, 0) for every n tile (one A fragment, NT mma
// pairs), A = V (ldmatrix.trans), B = p split into hi +
// lo (p is not rounded to 16 bits: the two products sum to p within ~2^-17
// in bf16; in f16 p is first scaled by 2^14 so small weights stay normal,
// and the accumulators are scaled back when stored). K and V rows sit in shared memory
// with their 16-byte chunks XOR-swizzled by row % 8, so the 8 row addresses
// of an ldmatrix fall in distinct banks; rows past the tile's end are
// zero-filled so a 0 weight never meets stale (possibly non-finite) data.
// On CUDA cores the same tile cost ~250 instructions per warp for q.k and
// ~200 for p.V (Nsight Compute: 58% issue-slot use at 55% of copy bandwidth).
template <class T, int LPR, int G, bool MMA, int ST = kStages>
__global__ void __launch_bounds__(kThreads, (attn_min_blocks<LPR, G, MMA>())) attn_kernel(Params p) {
  constexpr int E = cu::Vec16<T>::N;       // elements per 16-byte vector
  constexpr int LL = LPR < 32 ? LPR : 32;  // lanes per row
  constexpr int VPL = LPR / LL;            // 16-byte vectors per lane (2: wide rows)
  constexpr int NST = ST;                   // cp.async pipeline depth
  static_assert(VPL == 1 || (!MMA && G <= 4 && sizeof(T) == 4), "wide rows: f32, CUDA cores, <= 4 heads");
  static_assert(NST >= 2 || VPL > 1, "one stage: wide rows only");
  static_assert(MMA ? (G == 8 || G == 16) : G <= kMaxG, "heads: one or two mma n tiles; <= 8 on CUDA cores");
  static_assert(MMA || sizeof(T) == 4, "f16/bf16 K/V: tensor cores only (mma_rows)");
  constexpr int GS = G > kMaxG ? G : kMaxG;  // per-head shared arrays
  constexpr int NT = MMA ? G / 8 : 1;        // mma n tiles of 8 heads
  constexpr bool F16K = std::is_same_v<T, __half>;  // f16 K/V: f16 mma operands
  constexpr float kPScale = 16384.f;                 // MMA f16: p scaled by 2^14 (exact) for its split
  constexpr int AW = kTR / 16;               // MMA phase A: warps per n tile (16 rows each)
  constexpr int RGW = 32 / LL;             // row groups per warp
  constexpr int RPL = kRowsPerWarp / RGW;  // rows per lane per tile
  static_assert(RPL >= 1 && RPL * RGW == kRowsPerWarp, "tile mapping");
  constexpr int RB0 = LL / G > 0 ? LL / G : 1;
  constexpr int RB = RB0 < RPL ? RB0 : RPL;  // rows per reduction batch
  constexpr int NV = RB * G;                 // values per lane in one reduction

  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t s_slot[NST][kTR];
  __shared__ unsigned s_mask[NST][kTR];
  __shared__ int s_n[NST];
  __shared__ float s_z[GS][kTR + 1];
  __shared__ __align__(16) float s_p[GS][kTR + 8];  // +8: the MMA path's float2 reads of 8 heads fall in distinct bank pairs
  __shared__ float s_m[GS], s_s[GS], s_alpha[GS];
  __shared__ int s_last;

  // Launched as a dependent of the plan kernel (sm_90+): everything below
  // reads the plan's items.
  cu::pdl_wait();
  const int item_idx = blockIdx.x;
  if (item_idx >= *p.n_items) return;  // uniform: the plan made fewer items than the grid
  const Item it = p.items[item_idx];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int list = it.list;  // the sub-group's (virtual) list
  const Sub sb = sub_of(p, list);
  // Heads computed: g = p.g for every sub-group, the last one's heads past
  // sb.g being zero queries whose results are never stored (a per-list head
  // count held in a register through the tile loop made the 72-register
  // G <= 2 kernels spill; p.g sits in the constant bank).
  const int g = p.g, D = p.D, nvr = p.nvr, rb = p.row_bytes;
  // Shared-memory row stride (tile_row_bytes): MMA rows padded to 128 bytes.
  const int srb = MMA ? pad_row128(rb) : rb;
  // MMA: ceil(D / 16) 16-element k steps <= KS: a kernel of LPR serves
  // every nvr in (LPR / 2, LPR] (LPR 8: 1..8); the k steps at or past D are
  // skipped, and so are the m tiles in phase C. With D % 16 == 8 the last
  // step is half D's, half a zero chunk. (Bounds are written against D,
  // which is live anyway: a separate step count cost a register and made
  // the f16 16-head LPR 8 kernel spill under its 72-register bound.)
  // This sub-group's first head: logits of slot s at p.logits[s * gq + s_hb + h]
  // (shared memory, read at the H2O-only logit stores, for the same reason).
  __shared__ int s_hb;
  static_assert(sizeof(s_slot) + sizeof(s_mask) + sizeof(s_n) + sizeof(s_z) + sizeof(s_p) + sizeof(s_m) + sizeof(s_s) +
                        sizeof(s_alpha) + sizeof(s_last) + sizeof(s_hb) + 64 <=
                    attn_static_smem(NST, GS),
                "attn_static_smem: the launcher's bound of these arrays");
  const int* ids = p.page_ids + p.page_indptr[sb.list];
  const bool subset = p.sel_indptr != nullptr;
  const int rgl = lane / LL, vec = lane % LL;  // this lane's vectors: vec + j * LL, j < VPL

  unsigned char* sK = smem;
  unsigned char* sV = smem + NST * kTR * srb;

  if (tid == 0) s_hb = sb.hb;
  if (tid < GS) {
    s_m[tid] = cu::neg_inf();
    s_s[tid] = 0.f;
    s_alpha[tid] = 1.f;
  }
  for (int i = tid; i < GS * (kTR + 8); i += kThreads) (&s_p[0][0])[i] = 0.f;

  // CUDA cores: this lane's 16-byte slice of every query vector, pre-scaled
  // into base 2. MMA: the B fragments of head lane/4 of the warp's n tile
  // (warp / AW: its phase A takes one tile's 8 heads), unscaled, hi and lo.
  constexpr int QE = MMA ? 1 : E * VPL;
  constexpr int QG = MMA ? 1 : G;
  float qv[QG][QE];
  constexpr int KS = MMA ? LPR / 2 : 1;  // 16-element k steps of D
  uint32_t qh[KS][2], ql[KS][2];
  bool qsplit = false;
  // MMA: the logit multiplier of this lane's two phase-A heads (n tile
  // warp / AW, heads 2 * (lane % 4) + {0, 1}): qs, times 2^e_h for f16 K/V.
  float zs[2] = {p.qs, p.qs};
  if constexpr (MMA) {
    const int h = (warp / AW) * 8 + (lane >> 2), c0 = 2 * (lane & 3);
    qsplit = p.q_dtype != (F16K ? DType::F16 : DType::BF16);
    // f16 K/V: q (unless f16 itself, which is exact) is scaled per head by
    // 2^-e_h so that its largest |element| lies in [2^14, 2^15) before the
    // f16 hi + lo split: f16 overflows at 65504 and goes subnormal below
    // 2^-14, where bf16 has f32's range. The four lanes lane & ~3 hold all of
    // head h's D elements; a power of two is exact, and the logits take 2^e_h
    // back (zs). Zero, non-finite or padding heads: e_h = 0 (an inf or NaN
    // element reaches the result as it does on the CPU).
    float qmul = 1.f;
    if constexpr (F16K) {
      float zmul = p.qs;
      if (qsplit) {
        float m = 0.f;
        if (h < sb.g)
          for (int ks = 0; ks * 16 < D; ++ks)
#pragma unroll
            for (int j = 0; j < 4; ++j)  // (D % 8 == 0: the 8-element half decides)
              if (ks * 16 + (j >> 1) * 8 < D)
                m = fmaxf(m, fabsf(load_q(p.q, p.q_dtype, (sb.row0 + h) * D + ks * 16 + (j >> 1) * 8 + c0 + (j & 1))));
        f16_q_scale(m, p.qs, qmul, zmul);
      }
      zs[0] = __shfl_sync(kFull, zmul, c0 * 4);  // lanes 4j .. 4j + 3 hold head j of the tile
      zs[1] = __shfl_sync(kFull, zmul, (c0 + 1) * 4);
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float x[2] = {0.f, 0.f};
        // elements past D (steps past it; the last half step of D % 16 == 8): 0
        if (h < sb.g && ks * 16 + half * 8 < D)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            x[e] = load_q(p.q, p.q_dtype, (sb.row0 + h) * D + ks * 16 + half * 8 + c0 + e) * qmul;
        cu::split_pair<F16K>(x[0], x[1], qh[ks][half], ql[ks][half]);
      }
  } else {
#pragma unroll
    for (int h = 0; h < G; ++h)
#pragma unroll
      for (int j = 0; j < VPL; ++j)
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int vj = vec + j * LL;
          qv[h][j * E + e] = (h < sb.g && vj < nvr) ? load_q(p.q, p.q_dtype, (sb.row0 + h) * D + vj * E + e) * p.qs : 0.f;
        }
  }
  (void)qv; (void)qh; (void)ql; (void)qsplit; (void)zs;

  Producer pr;
  {
    pr.next = it.p0;
    pr.win0 = -64;  // entries are >= 0: the first one loads a window
    pr.idw = pr.pgw = 0;
    pr.mw = 0u;
    pr.p1 = it.p1;
    pr.len = p.kv_len[sb.list];
    pr.row = pr.rows = 0;
    pr.phys = 0;
    pr.mask = kFull;
    pr.done = false;
  }

  auto issue = [&](int st) {
    const int n = s_n[st];
    if constexpr (MMA) {
      // every row of the tile: rows >= n are zero-filled (n == 0: nothing),
      // and so is chunk nvr of an odd nvr (the k step's half past D); chunks
      // of k steps past D (a D short of LPR * 8) are never read
      const int chunks = n > 0 ? kTR * LPR : 0;
      for (int c = tid; c < chunks; c += kThreads) {
        const int r = c / LPR, v = c % LPR;
        if ((v & ~1) * 8 >= D) continue;  // chunk v: elements 8v .. 8v + 7
        const int so = (st * kTR + r) * srb + ((v ^ (r & 7)) << 4);
        if (r < n && v * 8 < D) {
          const int64_t off = s_slot[st][r] * rb + v * 16;
          cp_async16(sK + so, p.k_pool + off);
          cp_async16(sV + so, p.v_pool + off);
        } else {
          cp_async16_zero(sK + so, p.k_pool);
          cp_async16_zero(sV + so, p.v_pool);
        }
      }
    } else {
      const int chunks = n * LPR;  // LPR is a power of two >= nvr: shifts, not a division
      for (int c = tid; c < chunks; c += kThreads) {
        const int r = c / LPR, v = c % LPR;
        if (v >= nvr) continue;
        const int64_t off = s_slot[st][r] * rb + v * 16;
        const int so = (st * kTR + r) * srb + v * 16;
        cp_async16(sK + so, p.k_pool + off);
        cp_async16(sV + so, p.v_pool + off);
      }
    }
  };

  // Prologue: stages 0 .. NST-2.
#pragma unroll
  for (int st = 0; st < NST - 1; ++st) {
    if (warp == 0) produce(pr, p, ids, subset, s_slot[st], s_mask[st], &s_n[st], lane);
    __syncthreads();
    issue(st);
    cp_async_commit();
  }

  float acc[QG][QE];
#pragma unroll
  for (int h = 0; h < QG; ++h)
#pragma unroll
    for (int e = 0; e < QE; ++e) acc[h][e] = 0.f;
  constexpr int MTW = MMA ? LPR / 8 : 1;  // 16-dim m tiles of D per warp in phase C (D / 16 / kNW)
  float oc[MTW][NT][4];
#pragma unroll
  for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) oc[mt][nt][0] = oc[mt][nt][1] = oc[mt][nt][2] = oc[mt][nt][3] = 0.f;
  const uint32_t sK32 = static_cast<uint32_t>(__cvta_generic_to_shared(sK));
  const uint32_t sV32 = static_cast<uint32_t>(__cvta_generic_to_shared(sV));
  (void)oc; (void)sK32; (void)sV32;

  // Three block barriers per tile. Iteration i: warp 0 writes the row table
  // of stage i+NST-1 (i+2; wide rows i+1), whose buffers are i-1's (the table
  // last read in phase A of i-1, before that iteration's second barrier);
  // barrier 1 makes stage i's copies and that table visible and ends
  // everyone's phase C of i-1, so those buffers are free to refill; barriers
  // 2 and 3 separate the phases. (The previous order had two more barriers
  // per tile.)
  for (int i = 0;; ++i) {
    const int st = i % NST;
    if constexpr (NST == 1) {
      // One stage: nothing is in flight while a tile is computed. The row
      // table is rewritten while other warps may still be in the previous
      // tile's phase C, which does not read it (phase A, which does, ended
      // two barriers ago); the first barrier publishes it and ends phase C,
      // so the buffers are free to refill; the second publishes the copies.
      if (warp == 0) produce(pr, p, ids, subset, s_slot[0], s_mask[0], &s_n[0], lane);
      __syncthreads();
      issue(0);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    } else {
      const int pst = (i + NST - 1) % NST;
      if (warp == 0) produce(pr, p, ids, subset, s_slot[pst], s_mask[pst], &s_n[pst], lane);
      cp_async_wait<NST - 2>();  // this thread's copies of stage i (stage i+1 may still fly)
      __syncthreads();
      issue(pst);
      cp_async_commit();
    }
    const int n = s_n[st];
    if (n == 0) break;  // uniform; every later tile is empty too
    const unsigned char* kt = sK + st * kTR * srb;
    const unsigned char* vt = sV + st * kTR * srb;

    // Phase A: logits of the tile's rows for all heads.
    if constexpr (MMA) {
      // warp w: rows (w % AW) * 16 .. + 15 of the tile, heads (w / AW) * 8 .. + 7
      if (warp < AW * NT) {
        const int wr = warp % AW, hn = (warp / AW) * 8;
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        const int lr = (lane & 7) + ((lane >> 3) & 1) * 8;  // ldmatrix row of this lane's address
        const int row = st * kTR + wr * 16 + lr;
        const uint32_t base = sK32 + uint32_t(row * srb);
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          if (ks * 16 >= D) break;  // uniform
          const int chunk = 2 * ks + (lane >> 4);
          uint32_t a[4];
          cu::ldsm_x4(base + uint32_t((chunk ^ (lr & 7)) << 4), a[0], a[1], a[2], a[3]);
          cu::mma16816<F16K>(c, a, qh[ks][0], qh[ks][1]);
          if (qsplit) cu::mma16816<F16K>(c, a, ql[ks][0], ql[ks][1]);
        }
        // c[0], c[1]: row lane/4, heads 2*(lane%4) + {0, 1}; c[2], c[3]: row + 8
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = wr * 16 + (lane >> 2) + (e >> 1) * 8, h = hn + 2 * (lane & 3) + (e & 1);
          if (h < g) {
            const bool on = r < n && ((s_mask[st][r] >> h) & 1u);
            const float z = on ? c[e] * zs[e & 1] : cu::neg_inf();
            s_z[h][r] = z;
            if (p.logits && r < n && s_hb + h < p.gq) p.logits[s_slot[st][r] * p.gq + s_hb + h] = z;
          }
        }
      }
    } else {
#pragma unroll
      for (int kb = 0; kb < RPL / RB; ++kb) {
        float v[NV];
#pragma unroll
        for (int k = 0; k < RB; ++k) {
          const int r = warp * kRowsPerWarp + rgl + (kb * RB + k) * RGW;
          float kf[VPL][E];
#pragma unroll
          for (int j = 0; j < VPL; ++j) {
            if (vec + j * LL < nvr && r < n) {
              cu::unpack16<T>(*reinterpret_cast<const uint4*>(kt + r * srb + (vec + j * LL) * 16), kf[j]);
            } else {
#pragma unroll
              for (int e = 0; e < E; ++e) kf[j][e] = 0.f;
            }
          }
#pragma unroll
          for (int h = 0; h < G; ++h) {
            float s = 0.f;
#pragma unroll
            for (int j = 0; j < VPL; ++j)
#pragma unroll
              for (int e = 0; e < E; ++e) s = fmaf(qv[h][j * E + e], kf[j][e], s);
            v[k * G + h] = s;
          }
        }
        cu::TRed<NV, LL / 2>::run(v, lane);
        constexpr int NF = NV >= LL ? NV / LL : 1;
        constexpr int DUP = NV >= LL ? 1 : LL / NV;
        if (vec % DUP == 0) {
          const int base = NV >= LL ? vec * NF : vec / DUP;
#pragma unroll
          for (int f = 0; f < NF; ++f) {
            const int idx = base + f;
            const int k = idx / G, h = idx % G;
            const int r = warp * kRowsPerWarp + rgl + (kb * RB + k) * RGW;
            if (h < g) {
              const bool on = r < n && ((s_mask[st][r] >> h) & 1u);
              const float z = on ? v[f] : cu::neg_inf();
              s_z[h][r] = z;
              if (p.logits && r < n && s_hb + h < p.gq) p.logits[s_slot[st][r] * p.gq + s_hb + h] = z;
            }
          }
        }
      }
    }
    __syncthreads();

    // Phase B: online softmax, one warp per head, lane = row.
    for (int h = warp; h < g; h += kNW) {
      const float z = s_z[h][lane];
      const float tmax = cu::warp_max(z);
      const float mo = s_m[h];
      const float mn = fmaxf(mo, tmax);
      float pz = 0.f, alpha = 1.f;
      if (mn != cu::neg_inf()) {
        pz = exp2f(z - mn);
        alpha = mo == mn ? 1.f : exp2f(mo - mn);
      }
      const float sum = cu::warp_sum(pz);
      s_p[h][lane] = pz;
      __syncwarp();
      if (lane == 0) {
        s_s[h] = s_s[h] * alpha + sum;
        s_m[h] = mn;
        s_alpha[h] = alpha;
      }
    }
    __syncthreads();

    // Phase C: acc = alpha * acc + sum_rows p * V.
    if constexpr (MMA) {
      const int h0 = 2 * (lane & 3);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float a0 = s_alpha[nt * 8 + h0], a1 = s_alpha[nt * 8 + h0 + 1];
#pragma unroll
        for (int mt = 0; mt < MTW; ++mt) {
          oc[mt][nt][0] *= a0;
          oc[mt][nt][1] *= a1;
          oc[mt][nt][2] *= a0;
          oc[mt][nt][3] *= a1;
        }
      }
      const int hb = lane >> 2, rb0 = 2 * (lane & 3);
      const int mi = lane >> 3, mj = lane & 7;  // ldmatrix: matrix, row within it
#pragma unroll
      for (int ks = 0; ks < kTR / 16; ++ks) {
        // B = P^T (rows x heads): head nt * 8 + lane/4, rows 16ks + 2(lane%4) + {0, 1} and + 8
        uint32_t bh[NT][2], bl[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const float2 p0 = *reinterpret_cast<const float2*>(&s_p[nt * 8 + hb][ks * 16 + rb0]);
          const float2 p1 = *reinterpret_cast<const float2*>(&s_p[nt * 8 + hb][ks * 16 + 8 + rb0]);
          // f16: p <= 1 times kPScale, so its hi + lo stay normal down to
          // p = 2^-28 (unscaled, every p below 2^-14 would lose bits)
          constexpr float ps = F16K ? kPScale : 1.f;
          cu::split_pair<F16K>(p0.x * ps, p0.y * ps, bh[nt][0], bl[nt][0]);
          cu::split_pair<F16K>(p1.x * ps, p1.y * ps, bh[nt][1], bl[nt][1]);
        }
        // A = V^T (dims x rows) by ldmatrix.trans of V rows: matrix mi holds
        // rows 16ks + (mi >> 1) * 8 + 0..7 at dims d0 + (mi & 1) * 8 + 0..7
        const int r = st * kTR + ks * 16 + (mi >> 1) * 8 + mj;
#pragma unroll
        for (int mt = 0; mt < MTW; ++mt) {
          if ((warp * MTW + mt) * 16 >= D) break;  // uniform: this warp's m tiles past D
          const int chunk = (warp * MTW + mt) * 2 + (mi & 1);
          uint32_t a[4];
          cu::ldsm_x4_trans(sV32 + uint32_t(r * srb + ((chunk ^ (r & 7)) << 4)), a[0], a[1], a[2], a[3]);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            cu::mma16816<F16K>(oc[mt][nt], a, bh[nt][0], bh[nt][1]);
            cu::mma16816<F16K>(oc[mt][nt], a, bl[nt][0], bl[nt][1]);
          }
        }
      }
    } else {
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float a = s_alpha[h];
#pragma unroll
        for (int e = 0; e < QE; ++e) acc[h][e] *= a;
      }
#pragma unroll
      for (int j = 0; j < VPL; ++j)
        if (vec + j * LL < nvr) {
#pragma unroll
          for (int k = 0; k < RPL; ++k) {
            const int r = warp * kRowsPerWarp + rgl + k * RGW;
            if (r < n) {
              float vf[E];
              cu::unpack16<T>(*reinterpret_cast<const uint4*>(vt + r * srb + (vec + j * LL) * 16), vf);
#pragma unroll
              for (int h = 0; h < G; ++h) {
                const float pw = s_p[h][r];
#pragma unroll
                for (int e = 0; e < E; ++e) acc[h][j * E + e] = fmaf(pw, vf[e], acc[h][j * E + e]);
              }
            }
          }
        }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Item stride p.g * D: the last sub-group's items may have fewer heads.
  float* pacc = p.part_acc + int64_t(item_idx) * p.g * D;
  if constexpr (MMA) {
    // each warp holds its quarter of D for all heads: no reduction
#pragma unroll
    for (int mt = 0; mt < MTW; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int d = (warp * MTW + mt) * 16 + (lane >> 2) + (e >> 1) * 8, h = nt * 8 + 2 * (lane & 3) + (e & 1);
          if (h < g && d < D) pacc[h * D + d] = F16K ? oc[mt][nt][e] * (1.f / kPScale) : oc[mt][nt][e];
        }
  } else {
    // Sum the row groups: inside the warp by shuffles, across warps in shared
    // memory (the stage buffers are free now: kNW*G*D*4 <= stage bytes).
#pragma unroll
    for (int o = LL; o < 32; o <<= 1)
#pragma unroll
      for (int h = 0; h < G; ++h)
#pragma unroll
        for (int e = 0; e < QE; ++e) acc[h][e] += __shfl_xor_sync(kFull, acc[h][e], o);
    float* red = reinterpret_cast<float*>(smem);  // [kNW][g][D]
    if (rgl == 0) {
#pragma unroll
      for (int h = 0; h < G; ++h)
        if (h < g)
#pragma unroll
          for (int j = 0; j < VPL; ++j)
            if (vec + j * LL < nvr)
#pragma unroll
              for (int e = 0; e < E; ++e) red[(warp * g + h) * D + (vec + j * LL) * E + e] = acc[h][j * E + e];
    }
    __syncthreads();
    for (int i = tid; i < g * D; i += kThreads) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kNW; ++w) s += red[w * g * D + i];
      pacc[i] = s;
    }
  }
  finish_item(p, it, item_idx, smem, size_t(NST) * kTR * srb * 2, s_m, s_s, s_last);
}

// ---------------------------------------------------------------- warp-page kernel
// f16/bf16 K/V of head dim 128 in pages of 16 slots (the common case: Llama,
// Mistral, Qwen at the default page size), without block barriers in the
// tile loop. The tile kernel above shares each 32-row tile between its four
// warps (phase A: q.k on two warps, B: softmax one warp per head, C: p.V one
// quarter of D per warp), so every tile costs three block barriers and two
// round trips of logits and weights through shared memory; its H200
// profile read as latency-bound on them (24% occupancy, 0.65 eligible warps
// per scheduler, DRAM 65% of peak). Here each warp owns whole pages: page j
// of the item goes to warp j % 4, which copies it into its own 3-stage
// cp.async ring (16 rows of K and V, 8 KB per stage; every wait is a
// cp.async.wait_group and a __syncwarp), computes S = Q K^T with the heads as
// the mma's M (16: q rows of the group, zero past it) and the page's rows as
// N, keeps its own online softmax in registers (a head is a quad of lanes:
// max and sum by two shuffles) and multiplies P V with P straight from S's
// accumulators (the m16n8 C layout of two row tiles is the m16n8k16 A layout),
// each lane accumulating O for its two heads over all of D (16 n tiles). The
// four warps' (m, s, O) meet once, after the loop, in shared memory.
//   Layout: warp w's stages at smem + w * kWPStages * 16 KB, stage s: K rows
//   then V rows, 256 bytes each, 16-byte chunks XOR-swizzled by row % 8
//   (ldmatrix rows in distinct banks); rows past the page's length
//   zero-filled. Numerics as the tile kernel's MMA path: q not of K's type
//   split into hi + lo (f16: per-head power-of-two scaling first), p split
//   into hi + lo (f16: times 2^14), f32 accumulators; same tolerance.
// Half the mma's M is padding with groups of 8 or fewer heads; the tensor
// cores are not what limits a decode step.
constexpr int kWPRows = 16;   // rows per warp tile: one page
constexpr int kWPStages = 3;  // per-warp cp.async ring
constexpr int kWPD = 128;     // head dim
constexpr int kWPStage = 2 * kWPRows * kWPD * 2;  // K + V bytes per stage
constexpr size_t wp_smem() { return size_t(kNW) * kWPStages * kWPStage; }

template <class T>
__global__ void __launch_bounds__(kThreads) wp_kernel(Params p) {
  constexpr int D = kWPD, RB = D * 2, KS = D / 16, NTD = D / 8;
  constexpr int NS = kWPStages;
  constexpr bool F16K = std::is_same_v<T, __half>;
  constexpr float kPScale = 16384.f;  // f16: p scaled by 2^14 (exact) for its split
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float s_wm[kNW][16], s_ws[kNW][16];
  __shared__ float s_m[16], s_s[16];
  __shared__ int s_tn[kNW][NS];
  __shared__ unsigned s_tmask[kNW][NS];
  __shared__ int64_t s_tslot[kNW][NS];
  __shared__ int s_last;

  // Launched as a dependent of the plan kernel (sm_90+), or after the
  // upload of a plan made on the host.
  cu::pdl_wait();
  const int item_idx = blockIdx.x;
  if (item_idx >= *p.n_items) return;  // uniform
  const Item it = p.items[item_idx];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int list = it.list;
  const Sub sb = sub_of(p, list);
  const bool subset = p.sel_indptr != nullptr;
  const int* ids = p.page_ids + p.page_indptr[sb.list];
  const int len = p.kv_len[sb.list];
  const int g = p.g;
  unsigned char* wb = smem + size_t(warp) * NS * kWPStage;
  const uint32_t wb32 = static_cast<uint32_t>(__cvta_generic_to_shared(wb));

  // Q as the A operand: lane holds heads hA = lane / 4 (a0, a2) and hA + 8
  // (a1, a3), elements 16 ks + c0 + {0, 1} (a0, a1) and + 8 (a2, a3).
  const int c0 = 2 * (lane & 3), hA = lane >> 2, hB = hA + 8;
  const bool qsplit = p.q_dtype != (F16K ? DType::F16 : DType::BF16);
  float zsA = p.qs, zsB = p.qs, qmA = 1.f, qmB = 1.f;
  if constexpr (F16K) {
    // f16: each head's q scaled by 2^-e into [2^14, 2^15) before its split
    // (as the tile kernel; the quad lane & ~3 holds all of a head's D).
    if (qsplit) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int h = hA + hh * 8;
        float m = 0.f;
        if (h < sb.g)
          for (int ks = 0; ks < KS; ++ks)
#pragma unroll
            for (int j = 0; j < 4; ++j)
              m = fmaxf(m, fabsf(load_q(p.q, p.q_dtype, (sb.row0 + h) * D + ks * 16 + (j >> 1) * 8 + c0 + (j & 1))));
        float qm = 1.f, zm = p.qs;
        f16_q_scale(m, p.qs, qm, zm);
        if (hh == 0) qmA = qm, zsA = zm;
        else qmB = qm, zsB = zm;
      }
    }
  }
  uint32_t qh[KS][4], ql[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int h = (r & 1) ? hB : hA, k = ks * 16 + (r >> 1) * 8 + c0;
      const float qm = (r & 1) ? qmB : qmA;
      float x0 = 0.f, x1 = 0.f;
      if (h < sb.g) {
        x0 = load_q(p.q, p.q_dtype, (sb.row0 + h) * D + k) * qm;
        x1 = load_q(p.q, p.q_dtype, (sb.row0 + h) * D + k + 1) * qm;
      }
      cu::split_pair<F16K>(x0, x1, qh[ks][r], ql[ks][r]);
    }

  // The warp's pages: item entries it.p0 + warp + 4 j. Lane x of the window
  // holds the physical id (and, with Quest subsets, the logical page and the
  // head mask) of page j = wj + x: one load per 32 pages.
  int wj = -64, idw = 0, pgw = 0;
  unsigned mw = 0u;
  auto issue = [&](int j, int st) {
    const int e = it.p0 + warp + kNW * j;
    if (e < it.p1) {  // uniform
      if (j - wj >= 32) {
        wj = j;
        const int ex = it.p0 + warp + kNW * (j + lane);
        const bool in = ex < it.p1;
        if (subset) {
          idw = in ? p.u_id[ex] : 0;
          pgw = in ? p.u_pg[ex] : 0;
          mw = in ? p.u_mask[ex] : 0u;
        } else {
          idw = in ? ids[ex] : 0;
        }
      }
      const int id = __shfl_sync(kFull, idw, j - wj);
      const int pg = subset ? __shfl_sync(kFull, pgw, j - wj) : e;
      const unsigned mask = subset ? __shfl_sync(kFull, mw, j - wj) : kFull;
      const int nv = min(kWPRows, len - pg * kWPRows);
      const int64_t slot0 = int64_t(id) * kWPRows;
      if (lane == 0) s_tn[warp][st] = nv, s_tmask[warp][st] = mask, s_tslot[warp][st] = slot0;
      unsigned char* kst = wb + st * kWPStage;
      unsigned char* vst = kst + kWPRows * RB;
#pragma unroll
      for (int i = 0; i < kWPRows * (RB / 16) / 32; ++i) {
        const int c = lane + 32 * i, r = c / (RB / 16), v = c % (RB / 16);
        const int so = r * RB + ((v ^ (r & 7)) << 4);
        if (r < nv) {
          const int64_t off = (slot0 + r) * RB + v * 16;
          cp_async16(kst + so, p.k_pool + off);
          cp_async16(vst + so, p.v_pool + off);
        } else {  // zero rows: a 0 weight never meets stale data
          cp_async16_zero(kst + so, p.k_pool);
          cp_async16_zero(vst + so, p.v_pool);
        }
      }
    }
    cp_async_commit();  // (an empty group past the last page keeps the count uniform)
  };

  float oc[NTD][4];
#pragma unroll
  for (int n = 0; n < NTD; ++n) oc[n][0] = oc[n][1] = oc[n][2] = oc[n][3] = 0.f;
  float mA = cu::neg_inf(), mB = cu::neg_inf(), sA = 0.f, sB = 0.f;  // s: this lane's share
  const int mi = lane >> 3, lr = lane & 7;

#pragma unroll
  for (int j = 0; j < NS - 1; ++j) issue(j, j);
  for (int j = 0;; ++j) {
    if (it.p0 + warp + kNW * j >= it.p1) break;  // uniform
    const int st = j % NS;
    issue(j + NS - 1, (j + NS - 1) % NS);  // the stage computed at j - 1 (freed by its __syncwarp)
    cp_async_wait<NS - 1>();               // this lane's copies of page j
    __syncwarp();                          // ... and every lane's
    const int nv = s_tn[warp][st];
    const unsigned mask = s_tmask[warp][st];
    const uint32_t kb = wb32 + uint32_t(st * kWPStage), vb = kb + uint32_t(kWPRows * RB);

    // S = Q K^T: n tile 0 rows 0-7, n tile 1 rows 8-15. ldmatrix x4: matrix
    // mi covers rows (mi >> 1) * 8 + 0..7, chunk 2 ks + (mi & 1): B fragments
    // (b0, b1) of both n tiles.
    float s0[4] = {0.f, 0.f, 0.f, 0.f}, s1[4] = {0.f, 0.f, 0.f, 0.f};
    {
      const int row = (mi >> 1) * 8 + lr;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const int chunk = 2 * ks + (mi & 1);
        uint32_t b0, b1, b2, b3;
        cu::ldsm_x4(kb + uint32_t(row * RB + ((chunk ^ (row & 7)) << 4)), b0, b1, b2, b3);
        cu::mma16816<F16K>(s0, qh[ks], b0, b1);
        cu::mma16816<F16K>(s1, qh[ks], b2, b3);
        if (qsplit) {
          cu::mma16816<F16K>(s0, ql[ks], b0, b1);
          cu::mma16816<F16K>(s1, ql[ks], b2, b3);
        }
      }
    }
    // Logits: zA rows c0, c0 + 1, 8 + c0, 9 + c0 of head hA; zB of hB.
    float zA[4] = {s0[0], s0[1], s1[0], s1[1]}, zB[4] = {s0[2], s0[3], s1[2], s1[3]};
    const bool onA = (mask >> hA) & 1u, onB = (mask >> hB) & 1u;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = (e >> 1) * 8 + c0 + (e & 1);
      zA[e] = r < nv && onA ? zA[e] * zsA : cu::neg_inf();
      zB[e] = r < nv && onB ? zB[e] * zsB : cu::neg_inf();
    }
    if (p.logits) {  // H2O: the raw base-2 logits per (slot, head)
      const int64_t slot0 = s_tslot[warp][st];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = (e >> 1) * 8 + c0 + (e & 1);
        if (r < nv && hA < sb.g) p.logits[(slot0 + r) * p.gq + sb.hb + hA] = zA[e];
        if (r < nv && hB < sb.g) p.logits[(slot0 + r) * p.gq + sb.hb + hB] = zB[e];
      }
    }
    // Online softmax per head: the quad's max, this lane's share of the sum.
    float tA = fmaxf(fmaxf(zA[0], zA[1]), fmaxf(zA[2], zA[3]));
    float tB = fmaxf(fmaxf(zB[0], zB[1]), fmaxf(zB[2], zB[3]));
    tA = fmaxf(tA, __shfl_xor_sync(kFull, tA, 1));
    tB = fmaxf(tB, __shfl_xor_sync(kFull, tB, 1));
    tA = fmaxf(tA, __shfl_xor_sync(kFull, tA, 2));
    tB = fmaxf(tB, __shfl_xor_sync(kFull, tB, 2));
    const float nA = fmaxf(mA, tA), nB = fmaxf(mB, tB);
    float pA[4] = {0.f, 0.f, 0.f, 0.f}, pB[4] = {0.f, 0.f, 0.f, 0.f}, aA = 1.f, aB = 1.f;
    if (nA != cu::neg_inf()) {
      aA = mA == nA ? 1.f : exp2f(mA - nA);
#pragma unroll
      for (int e = 0; e < 4; ++e) pA[e] = exp2f(zA[e] - nA);
    }
    if (nB != cu::neg_inf()) {
      aB = mB == nB ? 1.f : exp2f(mB - nB);
#pragma unroll
      for (int e = 0; e < 4; ++e) pB[e] = exp2f(zB[e] - nB);
    }
    mA = nA, mB = nB;
    sA = sA * aA + ((pA[0] + pA[1]) + (pA[2] + pA[3]));
    sB = sB * aB + ((pB[0] + pB[1]) + (pB[2] + pB[3]));
#pragma unroll
    for (int n = 0; n < NTD; ++n) {
      oc[n][0] *= aA;
      oc[n][1] *= aA;
      oc[n][2] *= aB;
      oc[n][3] *= aB;
    }
    // P as the A operand (rows of S's two n tiles = the k step's 16 rows),
    // split into hi + lo.
    constexpr float ps = F16K ? kPScale : 1.f;
    uint32_t ph[4], pl[4];
    cu::split_pair<F16K>(pA[0] * ps, pA[1] * ps, ph[0], pl[0]);
    cu::split_pair<F16K>(pB[0] * ps, pB[1] * ps, ph[1], pl[1]);
    cu::split_pair<F16K>(pA[2] * ps, pA[3] * ps, ph[2], pl[2]);
    cu::split_pair<F16K>(pB[2] * ps, pB[3] * ps, ph[3], pl[3]);
    // O += P V: ldmatrix.trans x4, matrix mi: rows (mi & 1) * 8 + 0..7,
    // chunk 2 n2 + (mi >> 1): B fragments of the n tiles 2 n2 and 2 n2 + 1.
    {
      const int row = (mi & 1) * 8 + lr;
#pragma unroll
      for (int n2 = 0; n2 < NTD / 2; ++n2) {
        const int chunk = 2 * n2 + (mi >> 1);
        uint32_t b0, b1, b2, b3;
        cu::ldsm_x4_trans(vb + uint32_t(row * RB + ((chunk ^ (row & 7)) << 4)), b0, b1, b2, b3);
        cu::mma16816<F16K>(oc[2 * n2], ph, b0, b1);
        cu::mma16816<F16K>(oc[2 * n2], pl, b0, b1);
        cu::mma16816<F16K>(oc[2 * n2 + 1], ph, b2, b3);
        cu::mma16816<F16K>(oc[2 * n2 + 1], pl, b2, b3);
      }
    }
    __syncwarp();  // every lane is done with stage st before it is refilled
  }
  cp_async_wait<0>();

  // The four warps' states: M = max m_w, S = sum s_w 2^(m_w - M), O the
  // same weights' sum of the warps' accumulators (through the stage buffers,
  // free once every warp is past its loop).
  sA += __shfl_xor_sync(kFull, sA, 1);
  sB += __shfl_xor_sync(kFull, sB, 1);
  sA += __shfl_xor_sync(kFull, sA, 2);
  sB += __shfl_xor_sync(kFull, sB, 2);
  if ((lane & 3) == 0) {
    s_wm[warp][hA] = mA, s_ws[warp][hA] = sA;
    s_wm[warp][hB] = mB, s_ws[warp][hB] = sB;
  }
  __syncthreads();
  float MA = cu::neg_inf(), MB = cu::neg_inf();
#pragma unroll
  for (int w = 0; w < kNW; ++w) MA = fmaxf(MA, s_wm[w][hA]), MB = fmaxf(MB, s_wm[w][hB]);
  const float fA = mA == cu::neg_inf() ? 0.f : exp2f(mA - MA), fB = mB == cu::neg_inf() ? 0.f : exp2f(mB - MB);
  float* red = reinterpret_cast<float*>(smem);  // [kNW][16][D]
  constexpr float os = F16K ? 1.f / kPScale : 1.f;
#pragma unroll
  for (int n = 0; n < NTD; ++n) {
    const int d = n * 8 + c0;
    *reinterpret_cast<float2*>(&red[(warp * 16 + hA) * D + d]) = make_float2(oc[n][0] * fA * os, oc[n][1] * fA * os);
    *reinterpret_cast<float2*>(&red[(warp * 16 + hB) * D + d]) = make_float2(oc[n][2] * fB * os, oc[n][3] * fB * os);
  }
  if (tid < 16) {
    float M = cu::neg_inf(), S = 0.f;
#pragma unroll
    for (int w = 0; w < kNW; ++w) M = fmaxf(M, s_wm[w][tid]);
#pragma unroll
    for (int w = 0; w < kNW; ++w)
      if (s_wm[w][tid] != cu::neg_inf()) S += s_ws[w][tid] * exp2f(s_wm[w][tid] - M);
    s_m[tid] = M;
    s_s[tid] = S;
  }
  __syncthreads();
  float* pacc = p.part_acc + int64_t(item_idx) * g * D;  // item stride p.g * D
  for (int i = tid; i < g * D; i += kThreads) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < kNW; ++w) o += red[w * 16 * D + i];
    pacc[i] = o;
  }
  finish_item(p, it, item_idx, smem, wp_smem(), s_m, s_s, s_last);
}

// Whether a call takes the warp-page kernel: switched on (off by default
// until a card has timed it against the tile kernel: BENCH decode_warp_pages;
// KVSQ_DECODE_WARP_PAGES=1 in the environment starts the process with it on,
// so a whole run, Node included, can take it without a rebuild), f16/bf16
// K/V of head dim 128 in pages of 16, and the device lets a block have its
// 96 KB of stages plus its static arrays (< 1 KB; an unknown opt-in, 0: the
// launch says).
std::atomic<bool>& wp_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("KVSQ_DECODE_WARP_PAGES");
    return e && std::strcmp(e, "1") == 0;
  }()};
  return on;
}
bool wp_rows(DType kv, int head_dim, int page_size, int smem_optin) {
  return wp_flag().load(std::memory_order_relaxed) && (kv == DType::F16 || kv == DType::BF16) && head_dim == kWPD &&
         page_size == kWPRows && (smem_optin <= 0 || wp_smem() + 1024 <= size_t(smem_optin));
}

// ---------------------------------------------------------------- score pass
// Block per item: probabilities from the stored logits and the merged lse,
// group-reduced, added to score_pool (each slot belongs to one item: no atomics).
// Sub-groups (ns > 1): each item writes its sub-group's reduce (a sum for
// Mean) to its own row of score_part instead, and score_combine_kernel adds
// the reduce over the rows to the pool.
// Launched as the attention kernel's dependent (sm_90+): the item, its page
// ids and the pool scores (nothing the attention kernel writes) are loaded
// before cu::pdl_wait(), so after the attention grid ends only the logits
// and lse loads and the stores remain (before: a chain of six dependent loads
// and a block barrier after the launch gap, most of the ~8 us this pass took
// per one-sequence step on an H200).
// GM: the most heads of a sub-group (8, or 16 on tensor cores), the size of
// the per-thread logit arrays.
template <int GM>
__global__ void __launch_bounds__(kScoreThreads) score_kernel(Params p) {
  const int item_idx = blockIdx.x;
  if (item_idx >= *p.n_items) return;  // the plan's output: complete before the attention kernel began
  const Item it = p.items[item_idx];
  const int tid = threadIdx.x, P = p.P;
  const int list = it.list;  // virtual
  const Sub sb = sub_of(p, list);
  const int g = sb.g, len = p.kv_len[sb.list];
  const int* ids = p.page_ids + p.page_indptr[sb.list];
  const float* lgt = p.logits + sb.hb;
  float* part = p.score_part ? p.score_part + (list - sb.list * p.ns) * p.pool_slots : nullptr;
  // The group's base-2 lse, per thread (the same g addresses for the whole
  // block: broadcast loads, no barrier). Only after pdl_wait.
  float l2[GM];
  auto load_lse = [&] {
#pragma unroll
    for (int h = 0; h < GM; ++h) l2[h] = h < g ? __ldcg(p.lse2 + int64_t(list) * p.g + h) : cu::neg_inf();
  };
  // What a slot adds to its pool score, from its g logits lg[h < g].
  auto slot_add = [&](const float (&lg)[GM]) {
    float acc = 0.f;
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      if (h >= g) break;
      const float m = l2[h];
      if (m == cu::neg_inf()) continue;
      const float v = exp2f(lg[h] - m);
      acc = p.reduce == int(Reduce::Max) ? fmaxf(acc, v) : acc + v;
    }
    // CPU: acc / float(g); divide (not multiply by 1/g) to round the same way
    // (sub-groups: the combine kernel divides the whole group's sum)
    return p.reduce == int(Reduce::Mean) && !part ? acc / float(g) : acc;
  };
  // U slots per thread, their loads issued before any use (one slot at a
  // time was a chain of three dependent reads per slot): 4, or 2 with 16
  // heads, the same 32 logits in flight (4 x 16 spilled). The ids and pool
  // scores before the wait; logits (written by the attention kernel) after.
  // Slot u of the item: row u % P of its page u / P, or with Quest subsets of
  // its union entry u / P (the union kernel ran before the plan; heads that
  // did not choose the page have -inf logits, so they add exactly 0).
  constexpr int U = 32 / GM;
  const bool subset = p.sel_indptr != nullptr;
  const int ubase = subset ? p.sel_indptr[sb.row0] : 0;
  const int u0 = (it.p0 - ubase) * P, u1 = subset ? (it.p1 - ubase) * P : min(it.p1 * P, len);
  int64_t ph[U];
  float sp[U];
  int ub = u0 + tid;
  auto load_slots = [&] {
    if (subset) {
      int pg[U], id[U];
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int u = ub + k * kScoreThreads;
        pg[k] = u < u1 ? __ldg(p.u_pg + ubase + u / P) : 0;
        id[k] = u < u1 ? __ldg(p.u_id + ubase + u / P) : 0;
      }
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int u = ub + k * kScoreThreads, r = u % P;
        ph[k] = u < u1 && r < len - pg[k] * P ? int64_t(id[k]) * P + r : -1;
      }
    } else {
#pragma unroll
      for (int k = 0; k < U; ++k) {
        const int u = ub + k * kScoreThreads;
        ph[k] = u < u1 ? int64_t(__ldg(ids + u / P)) * P + u % P : -1;
      }
    }
#pragma unroll
    for (int k = 0; k < U; ++k) sp[k] = ph[k] >= 0 && !part ? p.score_pool[ph[k]] : 0.f;
  };
  if (ub < u1) load_slots();
  cu::pdl_wait();
  load_lse();
  for (; ub < u1;) {
    float lg[U][GM];
#pragma unroll
    for (int k = 0; k < U; ++k)
#pragma unroll
      for (int h = 0; h < GM; ++h) lg[k][h] = ph[k] >= 0 && h < g ? __ldcg(lgt + ph[k] * p.gq + h) : 0.f;
#pragma unroll
    for (int k = 0; k < U; ++k)
      if (ph[k] >= 0) {
        if (part) part[ph[k]] = slot_add(lg[k]);
        else p.score_pool[ph[k]] = sp[k] + slot_add(lg[k]);
      }
    ub += U * kScoreThreads;
    if (ub < u1) load_slots();
  }
}

// ---------------------------------------------------------------- sub-groups
// score_part := kNoPart, before the step's first kernel (its dependent).
__global__ void part_fill_kernel(Params p) {
  cu::pdl_wait_then_trigger();
  const int64_t n = p.pool_slots * p.ns;
  unsigned* x = reinterpret_cast<unsigned*>(p.score_part);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = kNoPart;
}

// Pool slot i: the sub-groups that reached it (Quest: those with a head that
// chose its page) combined in sub-group order, sum or max, Mean divided by
// the whole group's gq; added to score_pool. A slot no sub-group reached is
// untouched. Sums of the sub-group sums round differently from the CPU's one
// running sum over the group: within g units of the last place, in the bound
// test_cuda_decode.cu allows.
__global__ void score_combine_kernel(Params p) {
  cu::pdl_wait();
  const int64_t n = p.pool_slots;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    bool any = false;
    for (int s = 0; s < p.ns; ++s) {
      const float x = __ldcg(p.score_part + s * n + i);
      if (__float_as_uint(x) == kNoPart) continue;
      any = true;
      acc = p.reduce == int(Reduce::Max) ? fmaxf(acc, x) : acc + x;
    }
    if (any) p.score_pool[i] += p.reduce == int(Reduce::Mean) ? acc / float(p.gq) : acc;
  }
}

// ---------------------------------------------------------------- host side
using AttnFn = void (*)(Params);

template <int LPR, int ST = kStages>
AttnFn pick_g(int g) {
  if (g <= 1) return attn_kernel<float, LPR, 1, false, ST>;
  if (g <= 2) return attn_kernel<float, LPR, 2, false, ST>;
  if (g <= 4) return attn_kernel<float, LPR, 4, false, ST>;
  return attn_kernel<float, LPR, 8, false, ST>;
}

template <int WST>
AttnFn pick_wide(int g) {
  if (g <= 1) return attn_kernel<float, 64, 1, false, WST>;
  if (g <= 2) return attn_kernel<float, 64, 2, false, WST>;
  return attn_kernel<float, 64, 4, false, WST>;
}

// f32 K/V: the CUDA-core kernels. stages: the pipeline depth (attn_stages).
// Rows up to 256 bytes always have three (48 KB); 512-byte rows (D 128) two
// where three do not fit (99 KB parts); wide rows (D 132..256: sub-groups
// of at most kMaxGWide heads) two or one.
AttnFn pick_f32(int nvr, int g, int stages) {
  if (nvr <= 8) return pick_g<8>(g);
  if (nvr <= 16) return pick_g<16>(g);
  if (nvr > 32) return stages >= kStagesWide ? pick_wide<kStagesWide>(g) : pick_wide<1>(g);
  return stages < kStages ? pick_g<32, 2>(g) : pick_g<32>(g);
}

// f16 or bf16 K/V (T): the tensor-core kernels (every such row: mma_rows).
// Heads are the mma's N: one n tile of 8 for groups up to 8 (fewer heads:
// zero queries), two for 9 to 16, which the sub-grouping above gives such
// rows instead of 8. A row of nvr vectors takes the kernel of the power of
// two >= nvr (at least 8); 512-byte tile rows (D 200..256) on 99 KB parts
// two stages. (Until session 18 the rows other than D 64 / 128 / 256 ran
// on CUDA-core twins of the f32 kernels: 24 kernels, gone.)
template <class T>
AttnFn pick_16bit(int nvr, int g, int stages) {
  if (g > kMaxG) {
    if (nvr <= 8) return attn_kernel<T, 8, kMaxGMma, true>;
    if (nvr <= 16) return attn_kernel<T, 16, kMaxGMma, true>;
    return stages < kStages ? attn_kernel<T, 32, kMaxGMma, true, 2> : attn_kernel<T, 32, kMaxGMma, true>;
  }
  if (nvr <= 8) return attn_kernel<T, 8, kMaxG, true>;
  if (nvr <= 16) return attn_kernel<T, 16, kMaxG, true>;
  return stages < kStages ? attn_kernel<T, 32, kMaxG, true, 2> : attn_kernel<T, 32, kMaxG, true>;
}

// Resident blocks per SM of an attention kernel with this much dynamic shared
// memory (the plan sizes the grid to whole waves of it), after making sure
// the kernel's dynamic shared memory limit covers smem (cu::raise_smem_limit:
// one kernel serves rows of several sizes, every row of 17..32 vectors is the
// 32-lane kernel; the limit is the largest need, so with the static arrays it
// fits the opt-in, where a limit of 96 KB for every kernel, as before, failed
// every decode on the 99 KB parts).
Status attn_blocks_per_sm(int dev, int optin, AttnFn fn, size_t smem, int* out) {
  struct Key {
    int dev;
    AttnFn fn;
    size_t smem;
    int bps;
  };
  KVSQ_CUDA_TRY(cu::raise_smem_limit(fn, smem, dev, optin));
  static std::mutex mu;
  static std::vector<Key> seen;
  std::lock_guard<std::mutex> lk(mu);
  for (const Key& k : seen)
    if (k.dev == dev && k.fn == fn && k.smem == smem) return *out = k.bps, Status::Ok;
  // A hint only: a failed or implausible answer (seen under compute-sanitizer
  // racecheck, which made the grid look oversized) falls back to 1..32.
  int bps = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, fn, kThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    bps = 1;
  }
  bps = std::min(32, std::max(1, bps));
  seen.push_back({dev, fn, smem, bps});
  *out = bps;
  return Status::Ok;
}

struct DevInfo {
  int sms = 0;
  bool pdl = false;  // compute capability >= 9.0: programmatic dependent launch
};
// Asked at each call, not cached (cheap attribute reads; the emulated
// device of the tests changes its part between tests, as cu::pdl_capable).
DevInfo dev_info(int dev) {
  static std::mutex mu;
  static bool pool_set[64];
  DevInfo di;
  if (cudaDeviceGetAttribute(&di.sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || di.sms <= 0) {
    cudaGetLastError();
    di.sms = 132;
  }
  di.pdl = cu::pdl_capable();
  std::lock_guard<std::mutex> lk(mu);
  if (dev < 0 || dev >= 64) dev = 0;
  if (!pool_set[dev]) {
    pool_set[dev] = true;
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
      uint64_t cur = 0;
      if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &cur) == cudaSuccess &&
          cur < (uint64_t(256) << 20)) {
        uint64_t want = uint64_t(256) << 20;
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &want);
      }
    }
    cudaGetLastError();  // best effort
  }
  return di;
}

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

// The attention kernel's dynamic shared memory (K and V tiles of every
// pipeline stage) for K/V rows of row_bytes in dtype kv (padded: tile_row_bytes).
size_t attn_smem(DType kv, int64_t row_bytes, int stages) {
  return size_t(stages) * kTR * size_t(tile_row_bytes(kv, row_bytes)) * 2;
}

// Pipeline stages for rows of row_bytes, gs-head arrays (kMaxGMma for 16-bit
// rows the tensor cores take and groups above 8, else kMaxG), on a device
// that lets a block opt in to smem_optin bytes, tiles and static arrays
// together: the deepest that fits, kStages down to two for rows up to 512
// bytes (two only for 512-byte tile rows on 99 KB parts: 96 KB of tiles leave
// no room for the arrays), kStagesWide down to one for wide rows; 0 where
// none fits (refused). An unknown opt-in (0): the deepest (the launch says).
int attn_stages(DType kv, int64_t row_bytes, int smem_optin, int gs) {
  const bool wide = row_bytes > 512;
  const int most = wide ? kStagesWide : kStages, least = wide ? 1 : 2;
  if (smem_optin <= 0) return most;
  for (int stages = most; stages >= least; --stages)
    if (attn_smem(kv, row_bytes, stages) + attn_static_smem(stages, gs) <= size_t(smem_optin)) return stages;
  return 0;
}
// The gs a launch with rows of kv / nvr vectors and g heads per sub-group uses.
int attn_gs(DType kv, int nvr, int g) { return mma_rows(kv, nvr) && g > kMaxG ? kMaxGMma : kMaxG; }

// "" when the kernels take K/V rows of head_dim elements of kv on a device
// that lets a block opt in to smem_optin bytes of shared memory, else why not.
std::string row_check(DType kv, int64_t head_dim, int smem_optin) {
  const int64_t rb = head_dim * int64_t(dtype_size(kv));
  const int64_t max_rb = max_row_bytes(kv);
  if (head_dim <= 0 || rb % 16 != 0 || rb > max_rb)
    return "the CUDA decode kernels take K/V rows of whole 16-byte vectors up to " + std::to_string(max_rb) +
           " bytes (headDim " + (kv == DType::F32 ? "% 4 == 0 and <= 256" : "% 8 == 0 and <= 256") + " in " +
           dtype_name(kv) + "), not headDim " + std::to_string(head_dim);
  // The largest head arrays a launch with these rows may use (any group size).
  const int gs = mma_rows(kv, int(rb / 16)) ? kMaxGMma : kMaxG;
  if (attn_stages(kv, rb, smem_optin, gs) == 0) {
    const int least = rb > 512 ? 1 : 2;
    return std::string(dtype_name(kv)) + " K/V rows of " + std::to_string(rb) + " bytes (headDim " +
           std::to_string(head_dim) + ") need " +
           std::to_string((attn_smem(kv, rb, least) + attn_static_smem(least, gs) + 1023) / 1024) +
           " KB of shared memory per block and this device allows " + std::to_string(smem_optin / 1024) +
           " KB (every GPU the build targets, sm_80 and up, allows enough)";
  }
  return "";
}

// ---------------------------------------------------------------- eviction candidate
// Block per list: the lowest pool score among slots with evict_pos <=
// evict_max_pos[l], ties to the lower position, NaN skipped (as the CPU
// twin's scan: given the same pool bits the result is identical). Each thread
// scans a strided share of the slots, then a shared-memory tree reduction.
constexpr int kEvictThreads = 256;
__global__ void __launch_bounds__(kEvictThreads) evict_kernel(DecodeAttnArgs a) {
  const int l = blockIdx.x;
  __shared__ unsigned long long s_off;
  __shared__ float s_score[kEvictThreads];
  __shared__ int s_pos[kEvictThreads], s_slot[kEvictThreads];
  if (threadIdx.x == 0) s_off = 0;
  __syncthreads();
  unsigned long long part = 0;
  for (int x = threadIdx.x; x < l; x += blockDim.x) part += unsigned(a.kv_len[x]);
  if (part) atomicAdd(&s_off, part);
  __syncthreads();
  const int64_t off = int64_t(s_off);
  const int len = a.kv_len[l], P = a.page_size, limit = a.evict_max_pos[l];
  const int* ids = a.page_ids + a.page_indptr[l];
  float bs = 0.f;
  int bp = 0, bslot = -1;
  auto better = [](float v, int p, float w, int q, int qslot) {  // (v, p) beats (w, q)?
    return qslot < 0 || v < w || (v == w && p < q);
  };
  for (int s = threadIdx.x; s < len; s += blockDim.x) {
    const int p = a.evict_pos[off + s];
    if (p > limit) continue;
    const float v = a.score_pool[int64_t(ids[s / P]) * P + s % P];
    if (v != v) continue;  // NaN
    if (better(v, p, bs, bp, bslot)) bs = v, bp = p, bslot = s;
  }
  s_score[threadIdx.x] = bs, s_pos[threadIdx.x] = bp, s_slot[threadIdx.x] = bslot;
  __syncthreads();
  for (int w = kEvictThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) {
      const int o = threadIdx.x + w;
      if (s_slot[o] >= 0 && better(s_score[o], s_pos[o], s_score[threadIdx.x], s_pos[threadIdx.x], s_slot[threadIdx.x]))
        s_score[threadIdx.x] = s_score[o], s_pos[threadIdx.x] = s_pos[o], s_slot[threadIdx.x] = s_slot[o];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) a.evict_slot[l] = s_slot[0];
}

}  // namespace

std::string cuda_decode_row_check(int device, DType kv_dtype, int64_t head_dim) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n) {
    cudaGetLastError();
    return "no CUDA device " + std::to_string(device);
  }
  return row_check(kv_dtype, head_dim, cu::smem_optin(device));
}

void cuda_set_dependent_launch(bool on) { cu::dependent_launch_flag().store(on, std::memory_order_relaxed); }
void cuda_decode_set_warp_pages(bool on) { wp_flag().store(on, std::memory_order_relaxed); }
bool cuda_decode_warp_pages() { return wp_flag().load(std::memory_order_relaxed); }

namespace {

// What a decode call launches, from its arguments and the current device:
// the checks both cuda_decode_attention and cuda_decode_plan make, the
// kernel, its shared memory and the plan's capacity (items_max).
struct Prep {
  Params p{};
  int dev = 0;
  DevInfo di;
  int g = 0, gq = 0, ns = 0;
  int64_t lists = 0, nl64 = 0, items_max = 0;
  AttnFn fn = nullptr;
  size_t smem = 0;
};

Status attn_prepare(const DecodeAttnArgs& a, Prep* out) {
  Prep& r = *out;
  Params& p = r.p;
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0 || a.num_pages < 0) return Status::Shape;
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  if (!a.q || !a.o || !a.page_indptr || !a.kv_len) return Status::Shape;
  if ((!a.k_pool || !a.v_pool || !a.page_ids) && a.num_pages > 0) return Status::Shape;
  if (a.score_pool && a.reduce != Reduce::Mean && a.reduce != Reduce::Sum && a.reduce != Reduce::Max)
    return Status::Shape;
  // An empty pool (num_pages 0: every list is empty) may come with null
  // score and page-id pointers, the data of empty tensors.
  const bool pool_ok = a.score_pool || a.num_pages == 0;
  if ((a.score_before || a.score_after) && !pool_ok) return Status::Shape;
  if (bool(a.evict_pos) != bool(a.evict_slot) || bool(a.evict_max_pos) != bool(a.evict_slot) || (a.evict_slot && !pool_ok))
    return Status::Shape;
  const int gq = a.num_q_heads / a.num_kv_heads;
  const int es = int(dtype_size(a.kv_dtype));
  const int64_t row_bytes = int64_t(a.head_dim) * es;
  if (row_bytes % 16 != 0 || row_bytes > max_row_bytes(a.kv_dtype)) return Status::Shape;
  const int nvr = int(row_bytes / 16);
  const int maxg = row_bytes > 512 ? kMaxGWide : mma_rows(a.kv_dtype, nvr) ? kMaxGMma : kMaxG;
  const int ns = (gq + maxg - 1) / maxg;  // sub-groups per KV head
  const int g = (gq + ns - 1) / ns;       // heads per sub-group (the last may have fewer)
  if ((reinterpret_cast<uintptr_t>(a.k_pool) | reinterpret_cast<uintptr_t>(a.v_pool)) & 15) return Status::Shape;
  const int64_t lists = int64_t(a.batch) * a.num_kv_heads;  // physical lists
  const int64_t nl64 = lists * ns;                           // sub-group (virtual) lists
  if (nl64 > INT_MAX / 2 || int64_t(a.batch) * a.num_q_heads > INT_MAX / 2) return Status::Shape;
  if (a.num_pages > 0 && a.num_pages * a.page_size / a.page_size != a.num_pages) return Status::Shape;

  int dev = 0;
  KVSQ_CUDA_TRY(cudaGetDevice(&dev));
  const DevInfo di = dev_info(dev);

  p.B = a.batch;
  p.Hq = a.num_q_heads;
  p.Hkv = a.num_kv_heads;
  p.g = g;
  p.gq = gq;
  p.ns = ns;
  p.D = a.head_dim;
  p.P = a.page_size;
  p.nl = int(nl64);
  p.nvr = nvr;
  p.row_bytes = int(row_bytes);
  p.qs = a.scale * cu::kLog2e;  // same rounding as the CPU twin
  p.q_dtype = a.q_dtype;
  p.q = a.q;
  p.o = a.o;
  p.k_pool = static_cast<const char*>(a.k_pool);
  p.v_pool = static_cast<const char*>(a.v_pool);
  p.page_indptr = a.page_indptr;
  p.page_ids = a.page_ids;
  p.kv_len = a.kv_len;
  p.sel_indptr = a.sel_indptr;
  p.sel_pages = a.sel_pages;
  if (a.sel_indptr && (a.sel_count < 0 || a.sel_count > INT_MAX)) return Status::Shape;
  p.sel_count = a.sel_indptr ? int(a.sel_count) : 0;
  p.score_pool = a.score_pool;
  p.reduce = int(a.reduce);
  p.lse = a.lse;
  const int optin = cu::smem_optin(dev);
  const int stages = attn_stages(a.kv_dtype, row_bytes, optin, attn_gs(a.kv_dtype, nvr, g));
  if (stages == 0) return Status::Shape;  // (row_check says why)
  AttnFn fn = a.kv_dtype == DType::F16    ? pick_16bit<__half>(p.nvr, g, stages)
              : a.kv_dtype == DType::BF16 ? pick_16bit<__nv_bfloat16>(p.nvr, g, stages)
                                          : pick_f32(p.nvr, g, stages);
  size_t smem = attn_smem(a.kv_dtype, row_bytes, stages);
  if (wp_rows(a.kv_dtype, a.head_dim, a.page_size, optin)) {
    fn = a.kv_dtype == DType::F16 ? wp_kernel<__half> : wp_kernel<__nv_bfloat16>;
    smem = wp_smem();
  }
  int bps = 1;
  if (Status o = attn_blocks_per_sm(dev, optin, fn, smem, &bps); o != Status::Ok) return o;
  // Whole waves: the plan makes at most target + nl items (each list's count
  // rounds up once), so target = waves * resident - nl fills the last wave
  // exactly instead of leaving a few items for a second, nearly empty one
  // (which doubled the kernel's time). Enough waves that target >= nl.
  const int64_t resident = int64_t(di.sms) * bps;
  const int64_t waves = std::max<int64_t>(1, (2 * nl64 + resident - 1) / resident);
  const int64_t items_max = waves * resident;
  if (items_max > INT_MAX / 2) return Status::Shape;
  p.target_items = int(items_max - nl64);
  p.min_chunk_pages = (kMinItemSlots + a.page_size - 1) / a.page_size;
  r.dev = dev;
  r.di = di;
  r.g = g;
  r.gq = gq;
  r.ns = ns;
  r.lists = lists;
  r.nl64 = nl64;
  r.items_max = items_max;
  r.fn = fn;
  r.smem = smem;
  return Status::Ok;
}

// The plan's arrays (items, n_items, the per-list counters, first[]), each
// on a 256-byte boundary: the head of the workspace, or a plan image made on
// the host (cuda_decode_plan), laid out alike.
struct PlanLayout {
  size_t items = 0, n_items = 0, counters = 0, first = 0, bytes = 0;
};
PlanLayout plan_layout(int64_t items_max, int64_t nl) {
  PlanLayout l;
  size_t off = 0;
  l.items = off; off = align256(off + size_t(items_max) * sizeof(Item));
  l.n_items = off; off = align256(off + sizeof(int));
  l.counters = off; off = align256(off + size_t(nl) * sizeof(int));
  l.first = off; off = align256(off + size_t(nl + 1) * sizeof(int));
  l.bytes = off;
  return l;
}

}  // namespace

// The host twin of plan_kernel for dense calls, on the host's kv_len: the
// same chunk, the same items (64-bit arithmetic, same rounding), counters
// zero. Not made (empty image) for Quest subsets (the plan depends on the
// union, device data) or when some list has nothing to attend (the plan
// kernel writes those lists' outputs).
Status cuda_decode_plan(const DecodeAttnArgs& a, DecodePlan* out) {
  out->image.clear();
  out->items = 0;
  out->lists = 0;
  if (a.sel_indptr || a.plan) return Status::Ok;
  Prep r;
  if (Status s = attn_prepare(a, &r); s != Status::Ok) return s;
  const Params& p = r.p;
  std::vector<long long> work(size_t(r.nl64));
  long long total = 0;
  for (int64_t v = 0; v < r.nl64; ++v) {
    work[v] = (a.kv_len[phys_list(p, int(v))] + (long long)p.P - 1) / p.P;
    if (work[v] <= 0) return Status::Ok;  // the plan kernel writes its outputs
    total += work[v];
  }
  long long chunk = (total + p.target_items - 1) / p.target_items;
  if (chunk < p.min_chunk_pages) chunk = p.min_chunk_pages;
  const PlanLayout L = plan_layout(r.items_max, r.nl64);
  try {
    out->image.assign(L.bytes, 0);
  } catch (const std::bad_alloc&) {
    return Status::OOM;
  }
  uint8_t* img = out->image.data();
  Item* items = reinterpret_cast<Item*>(img + L.items);
  int* first = reinterpret_cast<int*>(img + L.first);
  int x = 0;
  for (int64_t v = 0; v < r.nl64; ++v) {
    const int n = int((work[v] + chunk - 1) / chunk);
    first[v] = x;
    for (int i = 0; i < n; ++i, ++x) {
      Item& it = items[x];
      it.list = int(v);
      it.p0 = int(work[v] * i / n);
      it.p1 = int(work[v] * (i + 1) / n);
      it.first = first[v];
      it.count = n;
    }
  }
  first[r.nl64] = x;
  *reinterpret_cast<int*>(img + L.n_items) = x;
  out->items = int32_t(r.items_max);
  out->lists = int32_t(r.nl64);
  return Status::Ok;
}

Status cuda_decode_attention(const DecodeAttnArgs& a, void* stream) {
  Prep r;
  if (Status s = attn_prepare(a, &r); s != Status::Ok) return s;
  Params& p = r.p;
  const int g = r.g, gq = r.gq, ns = r.ns;
  const DevInfo& di = r.di;
  const int64_t lists = r.lists, nl64 = r.nl64, items_max = r.items_max;
  const AttnFn fn = r.fn;
  const size_t smem = r.smem;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  // A plan made on the host (cuda_decode_plan) for these lists on this
  // device: the workspace leaves out the plan's arrays and no plan kernel runs.
  const bool planned = a.plan != nullptr;
  if (planned && (a.sel_indptr || a.plan_items != items_max || a.plan_lists != nl64)) return Status::Shape;
  const PlanLayout L = plan_layout(items_max, nl64);

  // Workspace carve-up.
  size_t off = planned ? 0 : L.bytes;
  const size_t o_ms = off; off = align256(off + size_t(items_max) * kMaxGAll * 2 * sizeof(float));
  const size_t o_acc = off; off = align256(off + size_t(items_max) * g * a.head_dim * sizeof(float));
  const size_t o_lse2 = off; off = align256(off + size_t(nl64) * g * sizeof(float));
  const size_t o_logits = off;
  p.pool_slots = a.num_pages * a.page_size;
  if (a.score_pool) off = align256(off + size_t(p.pool_slots) * gq * sizeof(float));
  const bool parts = a.score_pool && ns > 1;
  const size_t o_part = off;
  if (parts) off = align256(off + size_t(p.pool_slots) * ns * sizeof(float));
  const bool subset = a.sel_indptr != nullptr;
  const size_t o_ucnt = off;
  if (subset) off = align256(off + size_t(nl64) * sizeof(int));
  const size_t o_upg = off;
  if (subset) off = align256(off + size_t(p.sel_count) * sizeof(int));
  const size_t o_umask = off;
  if (subset) off = align256(off + size_t(p.sel_count) * sizeof(unsigned));
  const size_t o_uid = off;
  if (subset) off = align256(off + size_t(p.sel_count) * sizeof(int));
  void* ws = nullptr;
  KVSQ_CUDA_TRY(cudaMallocAsync(&ws, off, st));
  char* w = static_cast<char*>(ws);
  char* plan = planned ? static_cast<char*>(a.plan) : w;
  p.items = reinterpret_cast<Item*>(plan + L.items);
  p.n_items = reinterpret_cast<int*>(plan + L.n_items);
  p.counters = reinterpret_cast<int*>(plan + L.counters);
  p.first = reinterpret_cast<int*>(plan + L.first);
  p.part_ms = reinterpret_cast<float*>(w + o_ms);
  p.part_acc = reinterpret_cast<float*>(w + o_acc);
  p.lse2 = reinterpret_cast<float*>(w + o_lse2);
  p.logits = a.score_pool ? reinterpret_cast<float*>(w + o_logits) : nullptr;
  p.score_part = parts ? reinterpret_cast<float*>(w + o_part) : nullptr;
  p.u_cnt = subset ? reinterpret_cast<int*>(w + o_ucnt) : nullptr;
  p.u_pg = subset ? reinterpret_cast<int*>(w + o_upg) : nullptr;
  p.u_mask = subset ? reinterpret_cast<unsigned*>(w + o_umask) : nullptr;
  p.u_id = subset ? reinterpret_cast<int*>(w + o_uid) : nullptr;

  // Every kernel of the step is a dependent launch (sm_90+): each may be
  // scheduled before the kernel ahead of it ends and waits for it in the
  // kernel (cu::pdl_wait), which hides the launch gaps of the step (with
  // Quest, the selection's last kernel -> union -> plan -> attention).
  Status s = Status::Ok;
  // grid-stride kernels over the pool slots: up to 8 blocks per SM
  auto slot_blocks = [&](int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, int64_t(di.sms) * 8))); };
  const unsigned fill_blocks = slot_blocks(p.pool_slots * ns);
  if (parts) s = cuda_status(cu::launch_pdl(di.pdl, part_fill_kernel, dim3(fill_blocks), dim3(256), 0, st, p));
  if (s == Status::Ok && subset) s = cuda_status(cu::launch_pdl(di.pdl, union_kernel, dim3(unsigned(nl64)), dim3(kUnionThreads), 0, st, p));
  if (s == Status::Ok && !planned) s = cuda_status(cu::launch_pdl(di.pdl, plan_kernel, dim3(1), dim3(1024), 0, st, p));
  if (s == Status::Ok) s = cuda_status(cu::launch_pdl(di.pdl, fn, dim3(unsigned(items_max)), dim3(kThreads), smem, st, p));
  // The before/after records are flat copies of the lists' pool rows, the
  // read_scores kernel's job, stream-ordered around the score pass.
  ReadScoresArgs rs;
  rs.lists = int32_t(lists);
  rs.page_size = a.page_size;
  rs.num_pages = a.num_pages;
  rs.score_pool = a.score_pool;
  rs.page_indptr = a.page_indptr;
  rs.page_ids = a.page_ids;
  rs.kv_len = a.kv_len;
  if (s == Status::Ok && a.score_before) {
    rs.out = a.score_before;
    s = cuda_read_scores(rs, st);
  }
  if (s == Status::Ok && a.score_pool) {
    s = cuda_status(cu::launch_pdl(di.pdl, g > kMaxG ? score_kernel<kMaxGMma> : score_kernel<kMaxG>, dim3(unsigned(items_max)), dim3(kScoreThreads), 0, st, p));
    if (s == Status::Ok && parts)
      s = cuda_status(cu::launch_pdl(di.pdl, score_combine_kernel, dim3(slot_blocks(p.pool_slots)), dim3(256), 0, st, p));
  }
  if (s == Status::Ok && a.score_after) {
    rs.out = a.score_after;
    s = cuda_read_scores(rs, st);
  }
  if (s == Status::Ok && a.evict_slot) {
    evict_kernel<<<int(lists), kEvictThreads, 0, st>>>(a);
    s = cuda_launch_status();
  }
  // Stream-ordered free: runs after the kernels above, whatever their status.
  const cudaError_t fe = cudaFreeAsync(ws, st);
  if (s == Status::Ok && fe != cudaSuccess) s = cuda_status(fe);
  return s;
}

}  // namespace kvsq
