// CPU kernels: one function per kernel of native/core/ops.h, implemented in
// native/cpu/<op>.cc. Each validates its arguments (sizes, ranges, dtypes),
// returns a Status, and uses the persistent thread pool.
#pragma once
#include "../core/ops.h"

namespace kvsq {

Status cpu_decode_attention(const DecodeAttnArgs& a);
Status cpu_window_scores(const WindowScoresArgs& a);
Status cpu_pool1d(const Pool1dArgs& a);
Status cpu_chunk_scores(const ChunkScoresArgs& a);
Status cpu_topk(const TopkArgs& a);
Status cpu_quest_bounds(const QuestBoundsArgs& a);
Status cpu_quest_select(const QuestSelectArgs& a);
Status cpu_append(const AppendArgs& a);
Status cpu_gather(const GatherArgs& a);
Status cpu_page_meta(const PageMetaArgs& a);
Status cpu_read_scores(const ReadScoresArgs& a);
Status cpu_count_nonfinite(const NonFiniteArgs& a);

// The argument checks the kernels above run first (host pointers; nothing is
// written; same Status). The CUDA path runs them on host copies of the index
// arrays before uploading them, so both devices reject the same inputs alike.
Status validate_decode_attention(const DecodeAttnArgs& a);
Status validate_quest_bounds(const QuestBoundsArgs& a);
Status validate_quest_select(const QuestSelectArgs& a);
Status validate_append(const AppendArgs& a);
Status validate_gather(const GatherArgs& a);
Status validate_page_meta(const PageMetaArgs& a);
Status validate_read_scores(const ReadScoresArgs& a);

}  // namespace kvsq
