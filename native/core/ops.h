// The kernel catalogue: one argument struct per kernel, shared by the CPU
// kernels (native/cpu/<op>.cc, `Status cpu_<op>(const XArgs&)`) and their CUDA
// twins (cuda/<op>.cu, `Status cuda_<op>(const XArgs&, void* stream)`).
// Plain pointers and sizes only: no framework types, no allocation policy.
// Every pointer is to memory on the device the kernel runs on.
//
// Semantics: docs/methods.md is the contract; the comments here
// say how its quantities are laid out.
//
// Paged head-wise KV layout
// -------------------------
// A pool of pages; page p holds P = page_size slots, each slot a row of D
// elements: K row of slot r of page p at k_pool + (p * P + r) * D.
// A "list" is the pages of one (sequence, layer, KV head), in slot order:
// physical pages page_ids[page_indptr[l] .. page_indptr[l+1]). Slot s of list
// l lives in physical page page_ids[page_indptr[l] + s / P], row s % P; the
// first kv_len[l] slots are valid. Lists of a decode batch are indexed
// b * Hkv + j. Which position a slot holds is the policy's business: kernels
// see slots only.
//
// Quest metadata pool: meta_pool + p * 2 * D holds kmin[D] then kmax[D] of
// page p's valid keys, in the K dtype (min/max of representable values are
// representable, so no rounding enters the bound).
// Score pool (H2O/ShotKV accumulation): f32 [num_pages, P], same addressing
// as the K pool.
#pragma once
#include <cstddef>
#include <cstdint>

#include "dtype.h"
#include "status.h"

namespace kvsq {

// Group reduce over the g query heads of a KV head (methods.md).
enum class Reduce : int32_t { Mean = 0, Sum = 1, Max = 2 };
enum class PoolMode : int32_t { Max = 0, Avg = 1 };

// ---------------------------------------------------------------- decode attention
// o[b, h] = sum_s softmax_s(scale * q[b,h] . k_s) v_s over the valid slots of
// list b*Hkv + h/g (or, with a subset, over the slots of the selected pages).
// With score_pool: after computing this step's probabilities p_h[s], adds
// reduce_{h in group}(p_h[s]) to score_pool at slot s (H2O accumulation).
// Slots outside the subset get nothing added (their probability is 0).
struct DecodeAttnArgs {
  int32_t batch = 0;         // B sequences
  int32_t num_q_heads = 0;   // Hq (multiple of Hkv)
  int32_t num_kv_heads = 0;  // Hkv
  int32_t head_dim = 0;      // D
  int32_t page_size = 0;     // P
  DType q_dtype = DType::F32;   // dtype of q and o
  DType kv_dtype = DType::F32;  // dtype of the K/V pools
  float scale = 0.f;         // softmax scale (callers pass 1/sqrt(D) by default)
  const void* q = nullptr;   // [B, Hq, D]
  void* o = nullptr;         // [B, Hq, D]
  const void* k_pool = nullptr;  // [num_pages, P, D]
  const void* v_pool = nullptr;
  int64_t num_pages = 0;
  const int32_t* page_indptr = nullptr;  // [B*Hkv + 1]
  const int32_t* page_ids = nullptr;     // [page_indptr[B*Hkv]]
  const int32_t* kv_len = nullptr;       // [B*Hkv]; kv_len[l] <= P * pages of l
  // Optional Quest subset: logical page indices (into the list), ascending,
  // per query head b*Hq + h. Null = dense.
  const int32_t* sel_indptr = nullptr;   // [B*Hq + 1]
  const int32_t* sel_pages = nullptr;
  int64_t sel_count = 0;                 // elements of sel_pages (the CUDA twin's workspace size)
  // Optional accumulation (see above). Null = none.
  float* score_pool = nullptr;           // [num_pages, P]
  Reduce reduce = Reduce::Mean;
  // Optional, with score_pool only: the pool values of every valid slot of
  // every list (slot order, list l at offset sum_{l'<l} kv_len[l'], as
  // ReadScoresArgs), before and after this step's add. A decode step takes
  // its eviction view from score_after and its undo record from
  // score_before, without separate read passes. Null = not written.
  float* score_before = nullptr;         // [sum kv_len]
  float* score_after = nullptr;          // [sum kv_len]
  // Optional, with score_pool, all three or none: each list's eviction
  // candidate after the add (H2O's rule, the threshold chosen by the policy):
  // the slot s with the lowest score among the slots with evict_pos[s] <=
  // evict_max_pos[l] (ties: the lower position), or -1 when none is eligible
  // (evict_max_pos[l] = INT32_MIN: no eviction for l). A NaN score is never
  // the lowest. evict_pos is flat per slot, as score_after.
  const int32_t* evict_pos = nullptr;      // [sum kv_len]
  const int32_t* evict_max_pos = nullptr;  // [B*Hkv]
  int32_t* evict_slot = nullptr;           // [B*Hkv]
  // Optional log-sum-exp of the scaled logits per (b, h), natural log. Null = none.
  float* lse = nullptr;                  // [B, Hq]
  // CUDA twin only (the CPU twin ignores them): the split of the lists into
  // work items made on the host by cuda_decode_plan (cuda/launchers.h) for
  // exactly these arguments on this device, copied to device memory, which
  // the call writes (its per-list counters). Null: a plan kernel makes it on
  // the device from the device's kv_len.
  void* plan = nullptr;
  int32_t plan_items = 0;  // DecodePlan::items
  int32_t plan_lists = 0;  // DecodePlan::lists
};

// ---------------------------------------------------------------- window scores
// For query head h, window row i (position p = L - w + i), t in [0, L):
//   z[t] = scale * q[h, q_rows - w + i] . k[h/g, t] for t <= p, masked for t > p
//   A_h[t] = sum_i softmax(z)[t]
//   out[j, t] = reduce over the g heads of group j of A_h[t]
// w = L gives H2O's full causal column sums. Memory O(Hkv * L): the [Hq, w, L]
// probabilities are never stored.
struct WindowScoresArgs {
  int32_t num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  int32_t seq_len = 0;   // L
  int32_t window = 0;    // w, 1..L
  int32_t q_rows = 0;    // rows per head in q (>= w): the last w are used
  DType dtype = DType::F32;  // of q and k
  float scale = 0.f;
  const void* q = nullptr;   // [Hq, q_rows, D]
  const void* k = nullptr;   // [Hkv, L, D]
  Reduce reduce = Reduce::Mean;
  float* out = nullptr;      // [Hkv, L] f32
};

// ---------------------------------------------------------------- pool1d
// out[r, t] for t in [0, n): over in[r, t - k/2 .. t + k/2] restricted to the
// prefix [0, n): max of in-range values (Max), or their sum / k (Avg: zero
// padding, always divided by k).
struct Pool1dArgs {
  int32_t rows = 0;
  int32_t n = 0;          // prefix length (L - w)
  int64_t in_stride = 0;  // elements between rows of in (>= n)
  int32_t kernel = 1;     // odd, >= 1
  PoolMode mode = PoolMode::Max;
  const float* in = nullptr;
  float* out = nullptr;   // [rows, n]
};

// ---------------------------------------------------------------- chunk scores
// out[c] = sum over rows r and t in [c*chunk, min(n, (c+1)*chunk)) of in[r, t],
// c in [0, ceil(n / chunk)).
struct ChunkScoresArgs {
  int32_t rows = 0;
  int32_t n = 0;
  int64_t in_stride = 0;
  int32_t chunk = 1;
  const float* in = nullptr;
  float* out = nullptr;
};

// ---------------------------------------------------------------- top-k
// Per row r: the min(k[r], len[r]) largest of scores[r, 0 .. len[r]) (ties: the
// lower index wins), written as indices in ascending order to out[r, ...], the
// rest of the row's out_stride entries set to -1; count[r] = number written.
// NaN in a scanned range -> Status::NaN. k[r] < 0 or len[r] < 0 or
// len[r] > row_stride -> Status::Range.
struct TopkArgs {
  int32_t rows = 0;
  int64_t row_stride = 0;          // elements between rows of scores
  const float* scores = nullptr;
  const int32_t* lengths = nullptr;  // [rows]; null = row_stride for every row
  const int32_t* k = nullptr;        // [rows]
  int32_t out_stride = 0;            // >= max_r min(k[r], len[r])
  int32_t* out = nullptr;            // [rows, out_stride]
  int32_t* count = nullptr;          // [rows], may be null
};

// ---------------------------------------------------------------- Quest page bounds
// For list l = b*Hkv + j with n = ceil(kv_len[l] / P) pages and query head h of
// group j: u[p] = sum_d max(q_d * kmax[p][d], q_d * kmin[p][d]) for logical page
// p < n - 1 (the last page is always attended and gets -inf). With share, one
// row per KV head: max over the group's query heads. Entries p >= n - 1 of the
// out_stride are -inf. For a query head whose q is finite a bound is never NaN:
// f32 products of finite values can overflow to +-inf, and a sum that meets
// both (inf - inf) is +inf (an overflowed upper bound is unbounded; the page
// stays eligible). A non-finite q propagates as IEEE arithmetic gives it.
struct QuestBoundsArgs {
  int32_t batch = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0, page_size = 0;
  DType q_dtype = DType::F32, kv_dtype = DType::F32;
  const void* q = nullptr;         // [B, Hq, D]
  const void* meta_pool = nullptr; // [num_pages, 2, D]
  int64_t num_pages = 0;
  const int32_t* page_indptr = nullptr;
  const int32_t* page_ids = nullptr;
  const int32_t* kv_len = nullptr;
  bool share = false;
  int32_t out_stride = 0;          // >= max pages - 1 (>= 1)
  float* out = nullptr;            // [B, share ? Hkv : Hq, out_stride]
};

// ---------------------------------------------------------------- Quest page selection
// Quest's page choice for a decode step, fused: the bounds above (into
// internal scratch), then per query head row r = b*Hq + h of list l with
// n = ceil(kv_len[l] / P) pages:
//   n <= budget_pages: every page 0 .. n-1 (dense);
//   else: the budget_pages - 1 pages of [0, n-1) with the largest bound (ties:
//         the lower page; with share, the bound row of the KV head, so the g
//         heads of a group get the same pages), ascending, then page n-1.
// sel_indptr[r+1] - sel_indptr[r] = min(n, budget_pages) (written by the kernel;
// the caller sizes sel_pages from the lengths). q must be finite: a NaN or
// infinite q -> Status::NaN with nothing written. With finite q and finite
// metadata (all the cache ever stores) no bound is NaN, see above, so nothing
// else can fail on the data; NaN metadata -> Status::NaN. bounds.out /
// bounds.out_stride are ignored (scratch).
struct QuestSelectArgs {
  QuestBoundsArgs bounds;
  int32_t budget_pages = 0;         // >= 1
  // At least max_l ceil(kv_len[l] / P): the CUDA launcher sizes its scratch
  // with it (the lengths are on the device); the CPU kernel checks it.
  int32_t max_pages = 0;
  int32_t* sel_indptr = nullptr;    // [B*Hq + 1]
  int32_t* sel_pages = nullptr;     // [sum_r min(n_r, budget_pages)]
  // The caller has already checked that q is finite (the cache does, for the
  // whole step, before anything changes). The CUDA twin then skips its check
  // and never waits for the device: a decode step's selection has no host
  // round trip. The CPU twin checks anyway (a pass over B*Hq*D values).
  bool q_checked = false;
};

// ---------------------------------------------------------------- append
// Writes row i of k_new/v_new into physical slot dst_slot[i] (page * P + row)
// of the pools. With meta_pool: if reset_meta[i] (or, when reset_meta is null,
// if the slot is row 0 of its page) the page's kmin/kmax become the new key,
// otherwise they widen to include it. With score_pool the slot's score is set
// to 0. Rows must target distinct slots.
struct AppendArgs {
  int32_t count = 0;
  int32_t head_dim = 0, page_size = 0;
  DType dtype = DType::F32;           // of k_new, v_new and the pools
  const void* k_new = nullptr;        // [count, D]
  const void* v_new = nullptr;
  const int64_t* dst_slot = nullptr;  // [count]
  const uint8_t* reset_meta = nullptr;
  int64_t num_pages = 0;
  void* k_pool = nullptr;
  void* v_pool = nullptr;
  void* meta_pool = nullptr;          // optional
  float* score_pool = nullptr;        // optional
};

// ---------------------------------------------------------------- gather / compact
// Copies row src_row[i] of k_src/v_src (row r at k_src + r * D) into physical
// slot dst_slot[i] of the pools; with scores, score_src[src_row[i]] into
// score_pool[dst_slot[i]]. The source may be a contiguous prefill tensor
// [Hkv, L, D] (row = j * L + t) or the pools themselves (row = slot), in which
// case the destination slots must not overlap the source slots.
struct GatherArgs {
  int32_t count = 0;
  int32_t head_dim = 0;
  DType dtype = DType::F32;
  const void* k_src = nullptr;
  const void* v_src = nullptr;
  int64_t src_rows = 0;               // rows available in the source
  const int64_t* src_row = nullptr;   // [count]
  const float* score_src = nullptr;   // optional
  int64_t num_pages = 0;
  int32_t page_size = 0;
  void* k_pool = nullptr;
  void* v_pool = nullptr;
  float* score_pool = nullptr;        // required iff score_src
  const int64_t* dst_slot = nullptr;  // [count]
};

// Recomputes kmin/kmax of pages page_ids[i] over their first fill[i] rows
// (after a gather). fill[i] in [1, P].
struct PageMetaArgs {
  int32_t count = 0;
  int32_t head_dim = 0, page_size = 0;
  DType dtype = DType::F32;
  int64_t num_pages = 0;
  const void* k_pool = nullptr;
  void* meta_pool = nullptr;
  const int32_t* page_ids = nullptr;  // [count]
  const int32_t* fill = nullptr;      // [count]
};

// ---------------------------------------------------------------- score read-back
// out[o_l + s] = score_pool[slot s of list l] for s < kv_len[l], lists in
// order, o_l = sum of kv_len of the lists before l. The policy layer reads a
// layer's accumulated scores in one call to pick evictions. With write_back
// the copy goes the other way (score_pool[slot] = in[o_l + s]): a failed
// decode step restores the scores it had read before attention.
struct ReadScoresArgs {
  int32_t lists = 0;
  int32_t page_size = 0;
  int64_t num_pages = 0;
  const float* score_pool = nullptr;   // [num_pages, P]
  const int32_t* page_indptr = nullptr;
  const int32_t* page_ids = nullptr;
  const int32_t* kv_len = nullptr;
  float* out = nullptr;                // [sum kv_len]
  bool write_back = false;
  const float* in = nullptr;           // [sum kv_len], with write_back
};

// ---------------------------------------------------------------- non-finite count
// *count = number of NaN or +-Inf elements of x[0..n) (f32/f16/bf16, by their
// exponent bits). The cache refuses non-finite Q/K/V before it changes
// anything; this is the one read that decides it.
struct NonFiniteArgs {
  DType dtype = DType::F32;
  const void* x = nullptr;
  int64_t n = 0;
  int64_t* count = nullptr;  // host pointer (CPU) / device pointer (CUDA)
};

}  // namespace kvsq
