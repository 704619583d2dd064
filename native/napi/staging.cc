#include "staging.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "core/device.h"

namespace kvsq {
namespace detail {
// native/cpu/append.cc: Range if v[0..n) repeats a value or shares one with
// probe[0..np). Reused so both devices reject exactly the same slot sets.
Status check_distinct(const int64_t* v, int64_t n, const int64_t* probe, int64_t np);
}  // namespace detail

namespace napi {

namespace {
constexpr size_t kAlign = 256;  // cudaMalloc's own alignment: every array keeps it
size_t padded(size_t bytes) { return std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign); }
}  // namespace

Staging::~Staging() {
  // device_free waits for the device (cudaFree synchronises), so a kernel
  // still reading the arrays after a failed launch sequence is done first.
  if (buf_) device_free(device_, buf_);
}

Status Staging::download_i32(const void* src, int64_t count, const int32_t** out) {
  // An empty tensor reads as null, as an empty CPU tensor's data pointer does,
  // so the host checks see what the CPU twin would see.
  *out = nullptr;
  if (count <= 0) return Status::Ok;
  try {
    downloads_.emplace_back(size_t(count));
  } catch (const std::bad_alloc&) {
    return Status::OOM;
  }
  std::vector<int32_t>& h = downloads_.back();
  Status s = copy_device_to_host(device_, h.data(), src, size_t(count) * sizeof(int32_t));
  if (s != Status::Ok) return s;
  *out = h.data();
  return Status::Ok;
}

size_t Staging::add(const void* src, size_t bytes) {
  pending_.push_back({src, bytes});
  return pending_.size() - 1;
}

Status Staging::upload() {
  if (buf_) {  // not expected (one upload per run); keep the object reusable anyway
    device_free(device_, buf_);
    buf_ = nullptr;
  }
  offsets_.clear();
  size_t total = 0;
  for (const Pending& p : pending_) {
    offsets_.push_back(total);
    total += padded(p.bytes);
  }
  if (total == 0) return Status::Ok;
  std::vector<uint8_t> host;
  try {
    host.assign(total, 0);
  } catch (const std::bad_alloc&) {
    return Status::OOM;
  }
  for (size_t i = 0; i < pending_.size(); ++i)
    if (pending_[i].bytes) std::memcpy(host.data() + offsets_[i], pending_[i].src, pending_[i].bytes);
  Status s = device_alloc(device_, total, &buf_);
  if (s != Status::Ok) {
    buf_ = nullptr;
    return s;
  }
  // A synchronous copy on the legacy default stream: complete (and ordered
  // before the kernels launched next on that stream) when it returns.
  return copy_host_to_device(device_, buf_, host.data(), total);
}

// ------------------------------------------------------------------ index checks
// Each mirrors the validation at the top of its CPU twin (same order, same
// Status), see the file named in its comment.

// native/cpu/decode_attention.cc validate()
Status check_decode_attention_indices(const DecodeAttnArgs& a) {
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0 || a.num_pages < 0) return Status::Shape;
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  if (!a.q || !a.o || !a.page_indptr || !a.kv_len) return Status::Shape;
  if ((!a.k_pool || !a.v_pool) && a.num_pages > 0) return Status::Shape;
  if (a.score_pool && a.reduce != Reduce::Mean && a.reduce != Reduce::Sum && a.reduce != Reduce::Max)
    return Status::Shape;
  const int64_t nl = int64_t(a.batch) * a.num_kv_heads;
  const int g = a.num_q_heads / a.num_kv_heads;
  const int64_t P = a.page_size;
  if (a.page_indptr[0] < 0) return Status::Shape;
  for (int64_t l = 0; l < nl; ++l)
    if (a.page_indptr[l + 1] < a.page_indptr[l]) return Status::Shape;
  if (!a.page_ids && a.page_indptr[nl] > a.page_indptr[0]) return Status::Shape;
  for (int64_t i = a.page_indptr[0]; i < a.page_indptr[nl]; ++i)
    if (a.page_ids[i] < 0 || a.page_ids[i] >= a.num_pages) return Status::Range;
  for (int64_t l = 0; l < nl; ++l) {
    const int64_t cap = int64_t(a.page_indptr[l + 1] - a.page_indptr[l]) * P;
    if (a.kv_len[l] < 0 || a.kv_len[l] > cap) return Status::Range;
  }
  if (a.sel_indptr) {
    const int64_t nq = int64_t(a.batch) * a.num_q_heads;
    if (a.sel_indptr[0] < 0) return Status::Shape;
    for (int64_t r = 0; r < nq; ++r)
      if (a.sel_indptr[r + 1] < a.sel_indptr[r]) return Status::Shape;
    if (!a.sel_pages && a.sel_indptr[nq] > a.sel_indptr[0]) return Status::Shape;
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t b = r / a.num_q_heads, h = r % a.num_q_heads;
      const int64_t len = a.kv_len[b * a.num_kv_heads + h / g];
      const int64_t np = (len + P - 1) / P;
      int64_t prev = -1;
      for (int64_t i = a.sel_indptr[r]; i < a.sel_indptr[r + 1]; ++i) {
        const int64_t p = a.sel_pages[i];
        if (p < 0 || p >= np || p <= prev) return Status::Range;
        prev = p;
      }
    }
  }
  return Status::Ok;
}

// native/cpu/quest_bounds.cc cpu_quest_bounds()
Status check_quest_bounds_indices(const QuestBoundsArgs& a) {
  if (!is_float_dtype(a.q_dtype) || !is_float_dtype(a.kv_dtype)) return Status::DType;
  if (a.batch <= 0 || a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.page_size <= 0 ||
      a.num_pages <= 0 || a.out_stride <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0) return Status::Shape;
  if (!a.q || !a.meta_pool || !a.page_indptr || !a.page_ids || !a.kv_len || !a.out) return Status::Shape;
  const int64_t L = int64_t(a.batch) * a.num_kv_heads;
  if (a.page_indptr[0] < 0) return Status::Range;
  int64_t max_m = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t s = a.page_indptr[l], e = a.page_indptr[l + 1];
    if (e < s) return Status::Range;
    for (int64_t i = s; i < e; ++i)
      if (a.page_ids[i] < 0 || a.page_ids[i] >= a.num_pages) return Status::Range;
    const int64_t kv = a.kv_len[l];
    if (kv < 0 || kv > (e - s) * int64_t(a.page_size)) return Status::Range;
    max_m = std::max(max_m, (kv + a.page_size - 1) / a.page_size - 1);
  }
  if (a.out_stride < max_m) return Status::Shape;
  return Status::Ok;
}

// native/cpu/append.cc cpu_append()
Status check_append_indices(const AppendArgs& a) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0) return Status::Shape;
  if (!a.k_new || !a.v_new || !a.dst_slot || !a.k_pool || !a.v_pool) return Status::Shape;
  const int64_t P = a.page_size, nslots = a.num_pages * P;
  if (nslots / P != a.num_pages) return Status::Shape;
  for (int32_t i = 0; i < a.count; ++i)
    if (a.dst_slot[i] < 0 || a.dst_slot[i] >= nslots) return Status::Range;
  return detail::check_distinct(a.dst_slot, a.count, nullptr, 0);
}

// native/cpu/gather.cc cpu_gather()
Status check_gather_indices(const GatherArgs& a) {
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
  return detail::check_distinct(a.dst_slot, a.count, from_pool ? a.src_row : nullptr, from_pool ? a.count : 0);
}

// native/cpu/gather.cc cpu_page_meta()
Status check_page_meta_indices(const PageMetaArgs& a) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.count <= 0 || a.head_dim <= 0 || a.page_size <= 0 || a.num_pages <= 0) return Status::Shape;
  if (!a.k_pool || !a.meta_pool || !a.page_ids || !a.fill) return Status::Shape;
  for (int32_t i = 0; i < a.count; ++i) {
    if (a.page_ids[i] < 0 || a.page_ids[i] >= a.num_pages) return Status::Range;
    if (a.fill[i] < 1 || a.fill[i] > a.page_size) return Status::Range;
  }
  std::vector<int64_t> ids;
  try {
    ids.assign(a.page_ids, a.page_ids + a.count);
  } catch (const std::bad_alloc&) {
    return Status::OOM;
  }
  return detail::check_distinct(ids.data(), a.count, nullptr, 0);
}

// native/cpu/read_scores.cc cpu_read_scores()
Status check_read_scores_indices(const ReadScoresArgs& a) {
  if (a.lists < 0 || a.page_size <= 0 || a.num_pages < 0) return Status::Shape;
  if (a.lists == 0) return Status::Ok;
  if (!a.score_pool || !a.page_indptr || !a.page_ids || !a.kv_len || (a.write_back ? !a.in : !a.out)) return Status::Shape;
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

}  // namespace napi
}  // namespace kvsq
