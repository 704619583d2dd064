// Device layer of a CUDA build (see native/core/device.h).
//
// The runtime is linked statically and is first touched by the first call
// here, never at load. cudaErrorInsufficientDriver (35) and cudaErrorNoDevice
// (100) mean "zero devices" with a reason, not a failure. Sticky errors
// (illegal address, launch failure, ...) poison the context for the rest of
// the process: we remember the first one per device and fail fast after it
// with that reason, instead of failing at random later.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "common.cuh"
#include "core/cuda_archs.h"
#include "launchers.h"
#include "core/device.h"

namespace kvsq {

namespace {

thread_local std::string t_last_error;
std::mutex g_mu;
std::string g_poison[64];
std::atomic<bool> g_any_poison{false};

bool is_sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
      return true;
    default:
      return false;
  }
}

Status record(int device, cudaError_t e) {
  if (e == cudaSuccess) return Status::Ok;
  t_last_error = std::string(cudaGetErrorName(e)) + " (" + std::to_string(int(e)) + "): " + cudaGetErrorString(e);
  if (is_sticky(e) && device >= 0 && device < 64) {
    std::lock_guard<std::mutex> lk(g_mu);
    if (g_poison[device].empty()) g_poison[device] = t_last_error;
    g_any_poison = true;
  }
  cudaGetLastError();  // clear the non-sticky error state
  if (e == cudaErrorMemoryAllocation) return Status::OOM;
  if (e == cudaErrorInvalidDevice || e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) return Status::Device;
  return Status::Cuda;
}

// The architectures this binary holds code for ("" when the build did not say).
const char* built_archs() {
#ifdef KVSQ_CUDA_ARCHS
  return KVSQ_CUDA_ARCHS;
#else
  return "";
#endif
}

// Per device, once: "" when this build's code runs on it, else why not
// (naming the device). enter() and cuda_info() both read it.
const std::string& unrunnable_reason(int device) {
  static std::once_flag once;
  static std::string why[64];
  std::call_once(once, [] {
    const int n = cuda_device_count();
    for (int i = 0; i < n && i < 64; ++i) {
      cudaDeviceProp p;
      if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      std::string w;
      // (a build that did not record its architectures gets the benefit of the doubt)
      if (*built_archs() && !cuda_archs_run_on(built_archs(), p.major, p.minor, &w)) why[i] = std::string(p.name) + ": " + w;
    }
  });
  static const std::string none;
  return device >= 0 && device < 64 ? why[device] : none;
}

// Every call: refuse a poisoned device or one this build has no code for
// (its first launch would fail with "no kernel image"; better to say why
// before anything is allocated), then select it (each async worker thread
// must set the device itself).
Status enter(int device) {
  if (g_any_poison) {
    std::string why;
    if (device_poisoned(device, &why)) {
      t_last_error = "device unusable after an earlier sticky error: " + why;
      return Status::Cuda;
    }
  }
  int count = cuda_device_count();
  if (device < 0 || device >= count) return Status::Device;
  if (const std::string& why = unrunnable_reason(device); !why.empty()) {
    t_last_error = why;
    return Status::Cuda;
  }
  return record(device, cudaSetDevice(device));
}

}  // namespace

// Kernel launchers (cuda/common.cuh) report their errors through here, so
// last_cuda_error() names them and sticky errors poison the device.
Status cuda_record_error(cudaError_t e) {
  int dev = -1;
  cudaGetDevice(&dev);
  return record(dev, e);
}

int cuda_device_count() {
  static std::once_flag once;
  static int count = 0;
  std::call_once(once, [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    cudaGetLastError();
    count = n;
  });
  return count;
}

CudaInfo cuda_info() {
  CudaInfo info;
  info.compiled = true;
  info.archs = built_archs();
  cudaRuntimeGetVersion(&info.runtime_version);
  int drv = 0;
  if (cudaDriverGetVersion(&drv) == cudaSuccess) info.driver_version = drv;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();
  if (e == cudaErrorInsufficientDriver) {
    info.reason = info.driver_version == 0 ? "driver not installed (cudaErrorInsufficientDriver, 35)"
                                           : "driver too old for this build (cudaErrorInsufficientDriver, 35)";
    return info;
  }
  if (e == cudaErrorNoDevice) {
    info.reason = "no CUDA device (cudaErrorNoDevice, 100)";
    return info;
  }
  if (e != cudaSuccess) {
    info.reason = std::string(cudaGetErrorName(e)) + " (" + std::to_string(int(e)) + ")";
    return info;
  }
  if (n == 0) {
    info.reason = "no CUDA device";
    return info;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) { cudaGetLastError(); continue; }
    DeviceInfo d;
    d.name = p.name;
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    d.memory_bytes = p.totalGlobalMem;
    d.why = unrunnable_reason(i);
    d.runnable = d.why.empty();
    if (d.runnable && cu::wgmma_supported_cc(p.major, p.minor)) d.wgmma = cuda_wgmma_check_state(i);
    info.devices.push_back(d);
  }
  for (const DeviceInfo& d : info.devices) info.available = info.available || d.runnable;
  if (info.devices.empty()) info.reason = "devices present but none could be queried";
  else if (!info.available) info.reason = info.devices[0].why;
  return info;
}

namespace {
// The device's default memory pool keeps up to 256 MiB of freed memory
// instead of returning it to the driver at every synchronisation, so the
// per-step tensors of a decode loop reuse it (raised once, never lowered).
void keep_pool_memory(int device) {
  static std::once_flag once[64];
  if (device < 0 || device >= 64) return;
  std::call_once(once[device], [device] {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
      uint64_t cur = 0, want = uint64_t(256) << 20;
      if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &cur) == cudaSuccess && cur < want)
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &want);
    }
    cudaGetLastError();  // best effort
  });
}
}  // namespace

// Stream-ordered on the legacy default stream, where every kernel of this
// library runs: neither call blocks the host, and a free takes effect after
// the work launched before it (a tensor disposed right after the op that
// reads it is safe).
Status device_alloc(int device, size_t bytes, void** ptr) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  keep_pool_memory(device);
  return record(device, cudaMallocAsync(ptr, bytes, nullptr));
}

Status device_free(int device, void* ptr) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaFreeAsync(ptr, nullptr));
}

Status device_select(int device) { return enter(device); }

Status copy_host_to_device(int device, void* dst, const void* src, size_t bytes) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

Status copy_host_to_device_async(int device, void* dst, const void* src, size_t bytes) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, nullptr));
}

Status copy_device_to_host(int device, void* dst, const void* src, size_t bytes) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

Status copy_device_to_device(int device, void* dst, const void* src, size_t bytes) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

Status device_memset(int device, void* dst, int value, size_t bytes) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaMemsetAsync(dst, value, bytes, nullptr));
}

Status device_synchronize(int device) {
  Status s = enter(device);
  if (s != Status::Ok) return s;
  return record(device, cudaDeviceSynchronize());
}

std::string last_cuda_error() { return t_last_error; }

bool device_poisoned(int device, std::string* why) {
  if (!g_any_poison || device < 0 || device >= 64) return false;
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_poison[device].empty()) return false;
  if (why) *why = g_poison[device];
  return true;
}

}  // namespace kvsq
