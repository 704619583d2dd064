// Gather / compact and page metadata recomputation (core/ops.h GatherArgs,
// PageMetaArgs).
//
// cpu_gather: for i < count, row src_row[i] of k_src/v_src (row r at
// src + r * D) is copied bit for bit into slot dst_slot[i] of k_pool/v_pool;
// with score_src, score_pool[dst_slot[i]] = score_src[src_row[i]]. The source is
// a contiguous tensor (prefill: [Hkv, L, D], row j * L + t) or the pools
// themselves (k_src == k_pool or v_src == v_pool: row = slot); then no
// destination slot may also be a source slot, so the copies are order-free and
// run in parallel.
//
// cpu_page_meta: kmin/kmax of page page_ids[i] over its rows 0 .. fill[i]-1,
// computed as append does it (reset to row 0, widen by rows 1, 2, ... with the
// shared detail::meta_widen rule), so a page filled by appends and one rebuilt
// here have bit-identical metadata.
//
// Tolerance: exact (bit copies; min/max select stored values).
//
// Validation first, nothing written on failure: float dtype (DType); sizes > 0,
// non-null buffers, score_src given iff score_pool given, a pool source not
// larger than the pool (Shape); src rows in [0, src_rows), slots in
// [0, num_pages * P), destination slots distinct and disjoint from pool source
// slots, page ids in [0, num_pages) and distinct, fill in [1, P] (Range).
//
// Speed: row memcpy; split over the pool once a call moves more than ~256 KB.
#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "../core/cpu_features.h"
#include "../core/threadpool.h"
#include "kernels.h"

namespace kvsq {
namespace detail {
void meta_widen(DType t, void* meta, const void* key, int D, bool simd);  // append.cc
Status check_distinct(const int64_t* v, int64_t n, const int64_t* probe, int64_t np);  // append.cc
}  // namespace detail

namespace {
constexpr size_t kParallelBytes = size_t(1) << 18;
}

// The argument checks of cpu_gather (host pointers; nothing is written):
// also run by the CUDA path's bindings before uploading the index arrays.
Status validate_gather(const GatherArgs& a) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0 || a.src_rows <= 0)
    return Status::Shape;
  if (!a.k_src || !a.v_src || !a.src_row || !a.k_pool || !a.v_pool || !a.dst_slot) return Status::Shape;
  if (!a.score_src != !a.score_pool) return Status::Shape;
  const int64_t nslots = a.num_pages * a.page_size;
  if (nslots / a.page_size != a.num_pages) return Status::Shape;
  const bool from_pool = a.k_src == a.k_pool || a.v_src == a.v_pool;
  if (from_pool && a.src_rows > nslots) return Status::Shape;
  for (int32_t i = 0; i < a.count; ++i) {
    if (a.src_row[i] < 0 || a.src_row[i] >= a.src_rows) return Status::Range;
    if (a.dst_slot[i] < 0 || a.dst_slot[i] >= nslots) return Status::Range;
  }
  if (Status s = detail::check_distinct(a.dst_slot, a.count, from_pool ? a.src_row : nullptr,
                                        from_pool ? a.count : 0);
      s != Status::Ok)
    return s;
  return Status::Ok;
}

Status cpu_gather(const GatherArgs& a) {
  if (Status st = validate_gather(a); st != Status::Ok) return st;

  const size_t row = size_t(a.head_dim) * dtype_size(a.dtype);
  const char* ks = static_cast<const char*>(a.k_src);
  const char* vs = static_cast<const char*>(a.v_src);
  char* kp = static_cast<char*>(a.k_pool);
  char* vp = static_cast<char*>(a.v_pool);
  const int64_t min_rows = std::max<int64_t>(1, int64_t(kParallelBytes / (2 * row)));
  parallel_for(
      a.count,
      [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t s = a.src_row[i], d = a.dst_slot[i];
          std::memcpy(kp + size_t(d) * row, ks + size_t(s) * row, row);
          std::memcpy(vp + size_t(d) * row, vs + size_t(s) * row, row);
          if (a.score_pool) a.score_pool[d] = a.score_src[s];
        }
      },
      min_rows);
  return Status::Ok;
}

// The argument checks of cpu_page_meta (host pointers; nothing is written):
// also run by the CUDA path's bindings before uploading the index arrays.
Status validate_page_meta(const PageMetaArgs& a) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0) return Status::Shape;
  if (!a.k_pool || !a.meta_pool || !a.page_ids || !a.fill) return Status::Shape;
  for (int32_t i = 0; i < a.count; ++i) {
    if (a.page_ids[i] < 0 || a.page_ids[i] >= a.num_pages) return Status::Range;
    if (a.fill[i] < 1 || a.fill[i] > a.page_size) return Status::Range;
  }
  // Distinct pages: two writers of one page's meta would race. The ids are int32;
  // widen in chunks through a small buffer to reuse the int64 check.
  {
    constexpr int64_t kStack = 1024;
    if (a.count <= kStack) {
      int64_t ids[kStack];
      for (int32_t i = 0; i < a.count; ++i) ids[i] = a.page_ids[i];
      if (Status s = detail::check_distinct(ids, a.count, nullptr, 0); s != Status::Ok) return s;
    } else {
      std::vector<int64_t> ids;
      try {
        ids.assign(a.page_ids, a.page_ids + a.count);
      } catch (const std::bad_alloc&) {
        return Status::OOM;
      }
      if (Status s = detail::check_distinct(ids.data(), a.count, nullptr, 0); s != Status::Ok) return s;
    }
  }
  return Status::Ok;
}

Status cpu_page_meta(const PageMetaArgs& a) {
  if (Status st = validate_page_meta(a); st != Status::Ok) return st;


  const int D = a.head_dim;
  const size_t row = size_t(D) * dtype_size(a.dtype);
  const bool simd = cpu_features().simd();
  const char* kp = static_cast<const char*>(a.k_pool);
  char* mp = static_cast<char*>(a.meta_pool);
  const int64_t min_pages =
      std::max<int64_t>(1, int64_t(kParallelBytes / (row * size_t(a.page_size))));
  parallel_for(
      a.count,
      [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t p = a.page_ids[i];
          const char* k = kp + size_t(p) * a.page_size * row;
          char* meta = mp + size_t(p) * 2 * row;
          std::memcpy(meta, k, row);
          std::memcpy(meta + row, k, row);
          for (int r = 1; r < a.fill[i]; ++r) detail::meta_widen(a.dtype, meta, k + size_t(r) * row, D, simd);
        }
      },
      min_pages);
  return Status::Ok;
}

}  // namespace kvsq
