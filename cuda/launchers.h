// The CUDA twins of the CPU kernels (native/cpu/kernels.h): same argument
// structs (native/core/ops.h), every pointer a device pointer, a cudaStream_t
// passed as void* so this header needs no CUDA include and the N-API layer
// can call it from plain C++. Each launcher checks sizes, launches, checks
// the launch, and returns a Status; it never synchronises the stream unless
// its comment says so. Index contents (page ids, slots, lengths) are
// validated by the caller on the host before they are uploaded.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../native/core/ops.h"

namespace kvsq {

Status cuda_decode_attention(const DecodeAttnArgs& a, void* stream);
// The work plan of a dense cuda_decode_attention call made on the host, for
// callers that hold the lists' lengths there (the bindings read every index
// array on the host to validate it): a.kv_len (and only it) a host pointer,
// the other arguments as for the call, its device current. The image goes
// to device memory with the call's other index arrays (one copy, any
// 256-byte aligned address) and the call takes it through a.plan /
// a.plan_items / a.plan_lists instead of launching the plan kernel: one
// kernel and its latency fewer per step (the plan kernel: ~7 us on an
// H200). An empty image (Quest subsets, whose plan depends on device data,
// or a list with nothing to attend) means: call without one. Same items,
// same results as the plan kernel's.
struct DecodePlan {
  std::vector<uint8_t> image;
  int32_t items = 0;  // capacity the call must find (its items_max)
  int32_t lists = 0;  // sub-group lists it was made for
};
Status cuda_decode_plan(const DecodeAttnArgs& a, DecodePlan* out);
// "" when cuda_decode_attention takes K/V rows of head_dim elements of
// kv_dtype on `device`, else why not (what a cache on that device checks
// when it is made): rows of whole 16-byte vectors up to 512 bytes, or f32
// rows up to 1024 bytes where the device has the shared memory for them.
std::string cuda_decode_row_check(int device, DType kv_dtype, int64_t head_dim);
Status cuda_window_scores(const WindowScoresArgs& a, void* stream);
Status cuda_pool1d(const Pool1dArgs& a, void* stream);
Status cuda_chunk_scores(const ChunkScoresArgs& a, void* stream);
// Synchronises the stream at the end: NaN detection reads a device flag.
Status cuda_topk(const TopkArgs& a, void* stream);
// cuda_topk without the final sync: error bits OR'ed into the device word
// *flag (zeroed by the caller; outputs written only while it is 0), read with
// topk_flag_status once the stream reaches them. For fused callers.
Status cuda_topk_enqueue(const TopkArgs& a, unsigned* flag, void* stream);
Status topk_flag_status(unsigned host_flag);
// Tests and benchmarks: false makes cuda_topk skip its sampled one-pass
// kernel and radix-select every row (same results; default true).
void cuda_topk_set_filter(bool on);
// Tests and benchmarks: true runs decode attention over f16/bf16 K/V of
// head dim 128 in pages of 16 on the warp-page kernel (each warp owns whole
// pages; no block barriers in its loop) instead of the tile kernel (same
// results within the stated tolerance; default false until a card has
// timed the two: BENCH decode_warp_pages; KVSQ_DECODE_WARP_PAGES=1 in the
// environment starts the process with it on).
void cuda_decode_set_warp_pages(bool on);
bool cuda_decode_warp_pages();
// Benchmarks: false launches every kernel in the ordinary way, without
// programmatic dependent launch (sm_90+; same results; default true).
void cuda_set_dependent_launch(bool on);
// Tests and benchmarks: false keeps kernels off their wgmma (sm_90a) paths
// and on mma.sync (same results within the stated tolerance; default true;
// the wgmma paths run only on a compute capability 9.0 device with a build
// that has 90a code, once the device passed the layout check below, see
// cu::wgmma_usable).
void cuda_set_wgmma(bool on);
// The wgmma layout check (cuda/wgmma_check.cu). cuda_wgmma_product: the
// check's kernel on any inputs (D[64][32] = A[64][32] . B[32][32]^T, 16-bit
// f16 or bf16 words, f32 out; tests). cuda_wgmma_check_state: "unchecked"
// until a kernel first asked on that device, then "ok" or "failed: <what>"
// (the device then stays on mma.sync). Tests: cuda_wgmma_run_check runs the
// check on the current device now ("" when it passes; flawed_b uploads B
// transposed, which must fail); cuda_wgmma_check_reset sets the verdict,
// 0 unchecked, 1 ok, 2 failed with `why`.
Status cuda_wgmma_product(const uint16_t* A, const uint16_t* B, float* D, bool f16, void* stream);
std::string cuda_wgmma_check_state(int device);
std::string cuda_wgmma_run_check(bool flawed_b);
void cuda_wgmma_check_reset(int device, int state, const char* why);
// Benchmarks: the CTAs per SM that window scores splits the keys over
// (1..64; anything else restores the default, 4). Same results.
void cuda_window_scores_set_ctas_per_sm(int n);
Status cuda_quest_bounds(const QuestBoundsArgs& a, void* stream);
// Bounds, top-k and the selection on the device (no host copy of the bounds);
// unless a.q_checked, synchronises the stream at the end to report a
// non-finite q (Status::NaN); with q_checked it neither reads back nor waits.
Status cuda_quest_select(const QuestSelectArgs& a, void* stream);
Status cuda_append(const AppendArgs& a, void* stream);
Status cuda_gather(const GatherArgs& a, void* stream);
Status cuda_page_meta(const PageMetaArgs& a, void* stream);
Status cuda_read_scores(const ReadScoresArgs& a, void* stream);
Status cuda_count_nonfinite(const NonFiniteArgs& a, void* stream);

}  // namespace kvsq
