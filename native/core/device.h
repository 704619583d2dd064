// The device layer: everything the rest of the native code needs from CUDA,
// behind plain functions. Implemented by cuda/device.cu when the build has
// CUDA, by native/core/device_none.cc otherwise. Nothing here runs at load
// time: the first call initialises the runtime.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace kvsq {

struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0;
  uint64_t memory_bytes = 0;
  // Whether this build's CUDA code runs on it (core/cuda_archs.h); why not,
  // naming the device.
  bool runnable = true;
  std::string why;
  // The sm_90a tensor-core (wgmma) paths on it: "off" (not a 9.0 device, a
  // build without 90a code, or KVSQ_NO_WGMMA), "unchecked" until a kernel
  // first asks, then "ok" or "failed: <what differed>" (cuda/wgmma_check.cu;
  // the kernels then stay on mma.sync).
  std::string wgmma = "off";
};

struct CudaInfo {
  bool compiled = false;       // built with CUDA
  bool available = false;      // at least one usable device (present and runnable)
  std::string reason;          // why not available ("" when available)
  int runtime_version = 0;     // e.g. 13000
  int driver_version = 0;      // 0 when no driver
  std::string archs;           // architectures compiled in, e.g. "80;86;89;90"
  std::vector<DeviceInfo> devices;
};

// Queries the runtime (first call initialises it). Error 35 (no driver) and
// 100 (no device) mean zero devices, with the reason set; never a failure.
CudaInfo cuda_info();
int cuda_device_count();

// Device memory. Return Status::Cuda with last_cuda_error() set on failure,
// Status::OOM when the device is out of memory, Status::Device when the
// device index is invalid, Status::Unsupported in a CPU-only build.
// Everything is ordered on the device's legacy default stream, where every
// kernel of the library runs: device_alloc / device_free are stream-ordered
// (a free takes effect after the work launched before it; neither blocks the
// host), device_memset and copy_host_to_device_async are asynchronous (the
// host buffer may be reused when the call returns: pageable memory is staged
// by the driver), copy_host_to_device / copy_device_to_host / _to_device wait
// for the copy. Kernel errors therefore surface at the next waiting call.
Status device_alloc(int device, size_t bytes, void** ptr);
Status device_free(int device, void* ptr);
// Makes `device` current on this thread, failing fast if it is unusable.
Status device_select(int device);
Status copy_host_to_device(int device, void* dst, const void* src, size_t bytes);
Status copy_host_to_device_async(int device, void* dst, const void* src, size_t bytes);
Status copy_device_to_host(int device, void* dst, const void* src, size_t bytes);
Status copy_device_to_device(int device, void* dst, const void* src, size_t bytes);
Status device_memset(int device, void* dst, int value, size_t bytes);
Status device_synchronize(int device);

// Name and text of the last CUDA error seen on this thread ("" if none).
std::string last_cuda_error();
// True once a sticky error (illegal address, launch failure) poisoned the
// context: every later device call fails fast with this reason.
bool device_poisoned(int device, std::string* why);

}  // namespace kvsq
