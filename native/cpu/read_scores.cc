// Score read-back (and restore, with write_back): copies each list's accumulated scores (f32, slot order)
// into one flat array, so the policy layer reads a whole layer's scores with
// one call instead of copying the pool. Layout: native/core/ops.h. Exact copy.
#include <cstring>
#include <vector>

#include "../core/threadpool.h"
#include "kernels.h"

namespace kvsq {

// The argument checks of cpu_read_scores (host pointers; nothing is written):
// also run by the CUDA path's bindings before uploading the index arrays.
Status validate_read_scores(const ReadScoresArgs& a) {
  if (a.lists < 0 || a.page_size <= 0 || a.num_pages < 0) return Status::Shape;
  if (a.lists == 0) return Status::Ok;
  if (!a.score_pool || !a.page_indptr || !a.kv_len || (a.write_back ? !a.in : !a.out)) return Status::Shape;
  // page_ids may be null only when no page is listed (an empty vector's data()).
  if (!a.page_ids && a.page_indptr[a.lists] > a.page_indptr[0]) return Status::Shape;
  // Lengths within the list's pages, page ids in the pool.
  for (int32_t l = 0; l < a.lists; ++l) {
    const int64_t pages = int64_t(a.page_indptr[l + 1]) - a.page_indptr[l];
    const int64_t len = a.kv_len[l];
    if (pages < 0 || len < 0 || len > pages * a.page_size) return Status::Range;
    const int64_t used = (len + a.page_size - 1) / a.page_size;
    for (int64_t i = 0; i < used; ++i) {
      const int32_t p = a.page_ids[a.page_indptr[l] + i];
      if (p < 0 || p >= a.num_pages) return Status::Range;
    }
  }
  return Status::Ok;
}

Status cpu_read_scores(const ReadScoresArgs& a) {
  if (Status st = validate_read_scores(a); st != Status::Ok) return st;
  if (a.lists == 0) return Status::Ok;
  std::vector<int64_t> offset(size_t(a.lists) + 1, 0);
  for (int32_t l = 0; l < a.lists; ++l) offset[size_t(l) + 1] = offset[size_t(l)] + a.kv_len[l];
  parallel_for(a.lists, [&](int64_t b, int64_t e, int) {
    for (int64_t l = b; l < e; ++l) {
      const int64_t off = offset[size_t(l)];
      int64_t left = a.kv_len[l];
      for (int64_t i = 0; left > 0; ++i) {
        const int64_t n = left < a.page_size ? left : a.page_size;
        float* pool = const_cast<float*>(a.score_pool) + int64_t(a.page_ids[a.page_indptr[l] + i]) * a.page_size;
        if (a.write_back) std::memcpy(pool, a.in + off + i * a.page_size, size_t(n) * 4);
        else std::memcpy(a.out + off + i * a.page_size, pool, size_t(n) * 4);
        left -= n;
      }
    }
  }, 64);
  return Status::Ok;
}

}  // namespace kvsq
