#include "staging.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "core/device.h"

namespace kvsq {

namespace napi {

namespace {
constexpr size_t kAlign = 256;  // cudaMalloc's own alignment: every array keeps it
size_t padded(size_t bytes) { return std::max(kAlign, (bytes + kAlign - 1) / kAlign * kAlign); }
}  // namespace

Staging::~Staging() {
  // Stream-ordered: the arrays are released after the kernels that read them.
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
  // An asynchronous copy on the legacy default stream, ordered before the
  // kernels launched next on it. The host block is kept with the staging
  // (until the job ends) although the driver has staged pageable memory by
  // the time the call returns.
  host_ = std::move(host);
  return copy_host_to_device_async(device_, buf_, host_.data(), total);
}

}  // namespace napi
}  // namespace kvsq
