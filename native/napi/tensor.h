// Tensor: an owned buffer with dtype, shape and device, wrapped for JS.
//
// Host buffers are 64-byte aligned (the SIMD kernels load whole rows);
// device buffers come from the device layer (cudaMalloc). dispose() frees at
// once; the finalizer frees what was never disposed (safety net only: V8
// does not see device memory). A disposed tensor used again throws
// KVSQ_DISPOSED.
#pragma once
#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace kvsq {
namespace napi {

constexpr int kCpu = -1;

// What a Quest selection (questSelect's selIndptr / selPages) was built for:
// decode attention may then use it on the device without reading it back to
// check it. Set only by questSelect on its outputs; cleared by any write.
struct SelectionTag {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, page_size = 0;
  std::vector<int64_t> pages;  // per list: ceil(kv_len / P) at selection time
};

struct Storage {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int device = kCpu;  // -1 = cpu, N = cuda:N
  void* data = nullptr;
  size_t nbytes = 0;
  bool disposed = false;
  std::shared_ptr<const SelectionTag> selection;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::string device_name() const { return device == kCpu ? "cpu" : "cuda:" + std::to_string(device); }
};

// Allocates (zeroed) storage on a device; frees it. Status::OOM on failure.
Status storage_alloc(Storage& s);
void storage_free(Storage& s);

class Tensor : public Napi::ObjectWrap<Tensor> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  // The Tensor behind a JS value; throws KVSQ_ARG if it is not one and
  // KVSQ_DISPOSED if it was disposed. `what` names the argument in messages.
  static Tensor* From(Napi::Env env, Napi::Value v, const std::string& what);
  // A new JS tensor taking ownership of `s`.
  static Napi::Object Wrap(Napi::Env env, Storage&& s);

  explicit Tensor(const Napi::CallbackInfo& info);
  ~Tensor() override;

  Storage& storage() { return s_; }
  const Storage& storage() const { return s_; }

  // An async op pins its tensors while a worker thread uses their memory; a
  // dispose() meanwhile marks the tensor disposed at once and frees the
  // memory at the last unpin().
  void pin() { ++pins_; }
  void unpin(Napi::Env env);

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value DTypeName(const Napi::CallbackInfo& info);
  Napi::Value Device(const Napi::CallbackInfo& info);
  Napi::Value NBytes(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value ToArray(const Napi::CallbackInfo& info);
  Napi::Value ToFloat32(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value To(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  void release(Napi::Env* env);
  void check_live(Napi::Env env) const;

  Storage s_;
  int64_t external_ = 0;  // host bytes reported to V8
  int pins_ = 0;
  bool free_pending_ = false;
};

// Parsing shared by the op bindings.
DType parse_dtype(Napi::Env env, Napi::Value v, const std::string& what);
int parse_device(Napi::Env env, Napi::Value v, const std::string& what);

}  // namespace napi
}  // namespace kvsq
