// Device layer of a CPU-only build: no device, every device call answers
// Unsupported so the JS side can say "this build has no CUDA".
#include "device.h"

#ifndef KVSQ_WITH_CUDA
namespace kvsq {

CudaInfo cuda_info() {
  CudaInfo i;
  i.compiled = false;
  i.available = false;
  i.reason = "built without CUDA (nvcc was not found when the addon was compiled)";
  return i;
}
int cuda_device_count() { return 0; }
Status device_alloc(int, size_t, void**) { return Status::Unsupported; }
Status device_free(int, void*) { return Status::Unsupported; }
Status device_select(int) { return Status::Unsupported; }
Status copy_host_to_device(int, void*, const void*, size_t) { return Status::Unsupported; }
Status copy_host_to_device_async(int, void*, const void*, size_t) { return Status::Unsupported; }
Status copy_device_to_host(int, void*, const void*, size_t) { return Status::Unsupported; }
Status copy_device_to_device(int, void*, const void*, size_t) { return Status::Unsupported; }
Status device_memset(int, void*, int, size_t) { return Status::Unsupported; }
Status device_synchronize(int) { return Status::Unsupported; }
std::string last_cuda_error() { return ""; }
bool device_poisoned(int, std::string*) { return false; }

}  // namespace kvsq
#endif
