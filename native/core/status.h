// Status codes returned by every kernel (CPU and CUDA) and by the core.
// Kernels never throw and never abort: they validate what they can cheaply
// and return a code; native/napi maps each code to a JS error class.
#pragma once
#include <cstdint>

namespace kvsq {

enum class Status : int32_t {
  Ok = 0,
  Shape = 1,        // sizes inconsistent or out of the supported range
  DType = 2,        // unsupported dtype for this kernel
  Range = 3,        // an index (page id, slot, position, k) out of range
  NaN = 4,          // NaN where the contract forbids it (top-k scores)
  OOM = 5,          // host or device allocation failed
  Cuda = 6,         // a CUDA runtime error (see last_cuda_error())
  Device = 7,       // the operation needs a device that is not there
  Unsupported = 8,  // valid input, path not built (e.g. CUDA op in a CPU-only build)
};

inline const char* status_name(Status s) {
  switch (s) {
    case Status::Ok: return "ok";
    case Status::Shape: return "shape";
    case Status::DType: return "dtype";
    case Status::Range: return "range";
    case Status::NaN: return "nan";
    case Status::OOM: return "oom";
    case Status::Cuda: return "cuda";
    case Status::Device: return "device";
    case Status::Unsupported: return "unsupported";
  }
  return "unknown";
}

}  // namespace kvsq
