// Index arrays of an op whose data tensors live on a CUDA device.
//
// The binding must read the index arrays (page tables, ids, lengths, slots,
// rows, selections, per-row k) on the host whatever device they are on: it
// checks indptr arrays, sums lengths and sizes outputs from them, and the CUDA
// twins do not range-check index contents at all (cuda/launchers.h: the caller
// validates them on the host before upload). So a device op:
//   1. reads each index tensor on the host: a CPU tensor in place, a device
//      tensor through a downloaded copy kept in the Staging (host_i32);
//   2. validates the host values exactly as the CPU twin would before it
//      writes anything (the validate_* checks of native/cpu/kernels.h: the same code), so
//      both devices reject the same inputs with the same error;
//   3. uploads the validated (possibly widened) host arrays into one fresh
//      device buffer (add + upload) and launches the CUDA twin on those.
// The kernel therefore sees exactly the values that were validated, even if
// the index tensor changes meanwhile.
//
// Cost: per call one stream-ordered allocation, one asynchronous
// host-to-device copy of the (pageable) block and, in the destructor, one
// stream-ordered free: none waits for the device (core/device.h), except that
// the driver may wait while it stages pageable memory; a pooled pinned
// staging buffer would rule that out. A device index tensor adds one
// device-to-host copy, which waits: keep index tensors on the host.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/ops.h"
#include "core/status.h"

namespace kvsq {
namespace napi {

class Staging {
 public:
  explicit Staging(int device) : device_(device) {}
  ~Staging();  // frees the device buffer (after the run, on success and failure)
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;

  int device() const { return device_; }

  // Host copy of `count` i32 values at device address `src` (on device()),
  // kept until this object dies; *out points at it (null when count is 0, as
  // an empty CPU tensor's data is). Status of the copy.
  Status download_i32(const void* src, int64_t count, const int32_t** out);

  // Queues `bytes` at host address `src` (which must stay valid until
  // upload(); may be null when bytes == 0) for the next upload; returns its slot.
  size_t add(const void* src, size_t bytes);
  bool empty() const { return pending_.empty(); }
  // One device_alloc for every queued array and one host-to-device copy.
  // Each array starts on a 256-byte boundary and gets at least 256 bytes, so
  // an empty array still has a valid, non-null address (the launchers treat a
  // null index pointer as a missing argument).
  Status upload();
  // Device address of a queued array (after a successful upload()).
  template <class T>
  const T* dev(size_t slot) const {
    return reinterpret_cast<const T*>(static_cast<const uint8_t*>(buf_) + offsets_[slot]);
  }

 private:
  int device_;
  // Host copies of device index tensors. The inner vectors' buffers do not
  // move when the outer vector grows, so pointers handed out stay valid.
  std::vector<std::vector<int32_t>> downloads_;
  struct Pending {
    const void* src;
    size_t bytes;
  };
  std::vector<Pending> pending_;
  std::vector<size_t> offsets_;
  void* buf_ = nullptr;
  std::vector<uint8_t> host_;  // the uploaded block, kept until the job ends
};


}  // namespace napi
}  // namespace kvsq
