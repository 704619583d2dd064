#include "tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "addon_data.h"
#include "core/device.h"
#include "errors.h"

namespace kvsq {
namespace napi {

namespace {
constexpr int kMaxRank = 8;
constexpr int64_t kMaxDim = int64_t(1) << 31;   // per-dimension limit (int32 indices in kernels)
constexpr int64_t kMaxBytes = int64_t(1) << 40; // 1 TiB: beyond, the request is surely a bug

std::vector<int64_t> parse_shape(Napi::Env env, Napi::Value v) {
  if (!v.IsArray()) throw_error(env, "KVSQ_SHAPE", "shape must be an array of non-negative integers");
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > uint32_t(kMaxRank))
    throw_error(env, "KVSQ_SHAPE", "shape has " + std::to_string(a.Length()) + " dimensions; at most 8 are supported");
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value d = a.Get(i);
    if (!d.IsNumber()) throw_error(env, "KVSQ_SHAPE", "shape[" + std::to_string(i) + "] is not a number");
    double x = d.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(x) || x < 0 || x != std::floor(x) || x >= double(kMaxDim))
      throw_error(env, "KVSQ_SHAPE", "shape[" + std::to_string(i) + "] = " + std::to_string(x) +
                                         ": expected an integer in [0, 2^31)");
    shape.push_back(int64_t(x));
  }
  return shape;
}
}  // namespace

DType parse_dtype(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsString()) throw_error(env, "KVSQ_DTYPE", what + ": dtype must be one of 'f32', 'f16', 'bf16', 'i32'");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  if (s == "i32") return DType::I32;
  throw_error(env, "KVSQ_DTYPE", what + ": unknown dtype '" + s + "' (expected 'f32', 'f16', 'bf16' or 'i32')");
}

int parse_device(Napi::Env env, Napi::Value v, const std::string& what) {
  if (v.IsUndefined()) return kCpu;
  if (!v.IsString()) throw_error(env, "KVSQ_DEVICE", what + ": device must be 'cpu' or 'cuda:N'");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == "cpu") return kCpu;
  int idx = -1;
  if (s == "cuda") idx = 0;
  else if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() <= 7) {
    idx = 0;
    for (size_t i = 5; i < s.size(); ++i) {
      if (s[i] < '0' || s[i] > '9') { idx = -1; break; }
      idx = idx * 10 + (s[i] - '0');
    }
  }
  if (idx < 0) throw_error(env, "KVSQ_DEVICE", what + ": unknown device '" + s + "' (expected 'cpu' or 'cuda:N')");
  int count = cuda_device_count();
  if (idx >= count) {
    CudaInfo ci = cuda_info();
    std::string why = ci.available ? "there are " + std::to_string(count) + " CUDA devices" : ci.reason;
    throw_error(env, "KVSQ_DEVICE", what + ": device '" + s + "' is not available: " + why);
  }
  return idx;
}

Status storage_alloc(Storage& s) {
  s.data = nullptr;
  if (s.nbytes == 0) return Status::Ok;
  if (s.device == kCpu) {
    size_t padded = (s.nbytes + 63) & ~size_t(63);
    s.data = std::aligned_alloc(64, padded);
    if (!s.data) return Status::OOM;
    std::memset(s.data, 0, padded);
    return Status::Ok;
  }
  Status st = device_alloc(s.device, s.nbytes, &s.data);
  if (st != Status::Ok) {
    s.data = nullptr;
    return st;
  }
  st = device_memset(s.device, s.data, 0, s.nbytes);
  if (st != Status::Ok) {
    device_free(s.device, s.data);
    s.data = nullptr;
  }
  return st;
}

void storage_free(Storage& s) {
  if (s.data) {
    if (s.device == kCpu) std::free(s.data);
    else device_free(s.device, s.data);  // errors ignored: nothing useful to do in a free
  }
  s.data = nullptr;
}

void Tensor::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(
      env, "NativeTensor",
      {InstanceAccessor<&Tensor::Shape>("shape"), InstanceAccessor<&Tensor::DTypeName>("dtype"),
       InstanceAccessor<&Tensor::Device>("device"), InstanceAccessor<&Tensor::NBytes>("nbytes"),
       InstanceAccessor<&Tensor::Disposed>("disposed"), InstanceMethod<&Tensor::ToArray>("toArray"),
       InstanceMethod<&Tensor::ToFloat32>("toFloat32"), InstanceMethod<&Tensor::Write>("write"), InstanceMethod<&Tensor::To>("to"),
       InstanceMethod<&Tensor::Dispose>("dispose")});
  addon_data(env)->tensor_ctor = Napi::Persistent(ctor);
  exports.Set("NativeTensor", ctor);
}

Tensor* Tensor::From(Napi::Env env, Napi::Value v, const std::string& what) {
  AddonData* d = addon_data(env);
  if (!v.IsObject() || d->tensor_ctor.IsEmpty() || !v.As<Napi::Object>().InstanceOf(d->tensor_ctor.Value()))
    throw_error(env, "KVSQ_ARG", what + ": expected a Tensor");
  Tensor* t = Napi::ObjectWrap<Tensor>::Unwrap(v.As<Napi::Object>());
  if (!t) throw_error(env, "KVSQ_ARG", what + ": expected a Tensor");
  t->check_live(env);
  return t;
}

Napi::Object Tensor::Wrap(Napi::Env env, Storage&& s) {
  // The constructor called with an External adopts the storage.
  Storage* heap = new Storage(std::move(s));
  Napi::External<Storage> ext = Napi::External<Storage>::New(env, heap);
  Napi::Object o;
  try {
    o = addon_data(env)->tensor_ctor.New({ext});
  } catch (...) {
    if (heap->data) storage_free(*heap);  // not adopted
    delete heap;
    throw;
  }
  return o;
}

Tensor::Tensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tensor>(info) {
  Napi::Env env = info.Env();
  if (info.Length() == 1 && info[0].IsExternal()) {
    Storage* heap = info[0].As<Napi::External<Storage>>().Data();
    s_ = std::move(*heap);
    heap->data = nullptr;
    delete heap;
  } else {
    // new NativeTensor(data | null, shape, dtype, device)
    if (info.Length() < 3) throw_error(env, "KVSQ_ARG", "NativeTensor(data, shape, dtype, device?): too few arguments");
    s_.shape = parse_shape(env, info[1]);
    s_.dtype = parse_dtype(env, info[2], "Tensor");
    s_.device = parse_device(env, info.Length() > 3 ? info[3] : env.Undefined(), "Tensor");
    const int64_t n = s_.numel();
    const size_t esize = dtype_size(s_.dtype);
    if (n > kMaxBytes / int64_t(esize))
      throw_error(env, "KVSQ_SHAPE", "Tensor of " + std::to_string(n) + " elements is larger than 1 TiB");
    s_.nbytes = size_t(n) * esize;

    // Check the source before allocating anything.
    Napi::Value src = info[0];
    const void* raw = nullptr;           // bytes to copy as they are
    const float* from_f32 = nullptr;     // floats to convert
    if (!src.IsNull() && !src.IsUndefined()) {
      if (!src.IsTypedArray())
        throw_error(env, "KVSQ_ARG", "Tensor data must be a Float32Array, Uint16Array (f16/bf16 bits), Int32Array or null");
      Napi::TypedArray ta = src.As<Napi::TypedArray>();
      napi_typedarray_type tt = ta.TypedArrayType();
      if (int64_t(ta.ElementLength()) != n)
        throw_error(env, "KVSQ_SHAPE", "Tensor data has " + std::to_string(ta.ElementLength()) +
                                           " elements but the shape needs " + std::to_string(n));
      void* p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      if (tt == napi_float32_array && is_float_dtype(s_.dtype)) {
        if (s_.dtype == DType::F32) raw = p; else from_f32 = static_cast<const float*>(p);
      } else if (tt == napi_uint16_array && (s_.dtype == DType::F16 || s_.dtype == DType::BF16)) {
        raw = p;
      } else if (tt == napi_int32_array && s_.dtype == DType::I32) {
        raw = p;
      } else {
        throw_error(env, "KVSQ_DTYPE",
                    std::string("Tensor: dtype '") + dtype_name(s_.dtype) +
                        "' takes a Float32Array (f32/f16/bf16), a Uint16Array of raw bits (f16/bf16) or an Int32Array (i32)");
      }
    }

    Status st = storage_alloc(s_);
    if (st != Status::Ok) throw_status(env, st, "Tensor allocation of " + std::to_string(s_.nbytes) + " bytes on " + s_.device_name());
    if (s_.nbytes && (raw || from_f32)) {
      if (s_.device == kCpu) {
        if (raw) std::memcpy(s_.data, raw, s_.nbytes);
        else convert_from_f32(s_.dtype, from_f32, s_.data, size_t(n));
      } else {
        std::vector<uint8_t> staging;
        if (from_f32) {
          staging.resize(s_.nbytes);
          convert_from_f32(s_.dtype, from_f32, staging.data(), size_t(n));
          raw = staging.data();
        }
        st = copy_host_to_device(s_.device, s_.data, raw, s_.nbytes);
        if (st != Status::Ok) {
          storage_free(s_);
          throw_status(env, st, "Tensor upload to " + s_.device_name());
        }
      }
    }
  }
  if (s_.device == kCpu && s_.nbytes) {
    external_ = int64_t(s_.nbytes);
    Napi::MemoryManagement::AdjustExternalMemory(env, external_);
  }
}

// The finalizer runs only when no JS reference is left; an async op holds a
// reference to each pinned tensor, so a pinned tensor is never finalized.
Tensor::~Tensor() { release(nullptr); }

void Tensor::release(Napi::Env* env) {
  storage_free(s_);
  s_.disposed = true;
  if (external_ && env) Napi::MemoryManagement::AdjustExternalMemory(*env, -external_);
  external_ = 0;  // in the finalizer V8 is tearing the object down; no adjustment there
}

void Tensor::check_live(Napi::Env env) const {
  if (s_.disposed) throw_error(env, "KVSQ_DISPOSED", "the Tensor was disposed");
}

Napi::Value Tensor::Shape(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env(), s_.shape.size());
  for (size_t i = 0; i < s_.shape.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(info.Env(), double(s_.shape[i])));
  return a;
}
Napi::Value Tensor::DTypeName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtype_name(s_.dtype)); }
Napi::Value Tensor::Device(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), s_.device_name()); }
Napi::Value Tensor::NBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(s_.disposed ? 0 : s_.nbytes)); }
Napi::Value Tensor::Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), s_.disposed); }

namespace {
// Host copy of a tensor's bytes (a view for cpu tensors, a download otherwise).
const void* host_bytes(Napi::Env env, const Storage& s, std::vector<uint8_t>& staging) {
  if (s.device == kCpu || s.nbytes == 0) return s.data;
  staging.resize(s.nbytes);
  Status st = copy_device_to_host(s.device, staging.data(), s.data, s.nbytes);
  if (st != Status::Ok) throw_status(env, st, "Tensor download from " + s.device_name());
  return staging.data();
}
}  // namespace

Napi::Value Tensor::ToArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_live(env);
  std::vector<uint8_t> staging;
  const void* src = host_bytes(env, s_, staging);
  const size_t n = size_t(s_.numel());
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, s_.nbytes);
  if (s_.nbytes) std::memcpy(ab.Data(), src, s_.nbytes);
  switch (s_.dtype) {
    case DType::F32: return Napi::Float32Array::New(env, n, ab, 0);
    case DType::I32: return Napi::Int32Array::New(env, n, ab, 0);
    default: return Napi::Uint16Array::New(env, n, ab, 0);
  }
}

Napi::Value Tensor::ToFloat32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_live(env);
  std::vector<uint8_t> staging;
  const void* src = host_bytes(env, s_, staging);
  const size_t n = size_t(s_.numel());
  // toFloat32(dst): into a caller's Float32Array (a loop that reads the same
  // tensor every step allocates nothing); its first n values are written.
  if (info.Length() && !info[0].IsUndefined()) {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw_error(env, "KVSQ_ARG", "toFloat32: the destination must be a Float32Array");
    Napi::Float32Array dst = info[0].As<Napi::Float32Array>();
    if (dst.ElementLength() < n)
      throw_error(env, "KVSQ_SHAPE", "toFloat32: the destination holds " + std::to_string(dst.ElementLength()) + " values; the tensor has " + std::to_string(n));
    if (n) convert_to_f32(s_.dtype, src, dst.Data(), n);
    return dst;
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, n);
  if (n) convert_to_f32(s_.dtype, src, out.Data(), n);
  return out;
}

// write(src): copies a typed array of the tensor's storage type (Float32Array
// for f32, Uint16Array bits for f16/bf16, Int32Array for i32) over the first
// src.length elements, in place, on whatever device the tensor lives: a
// buffer the caller refills every step (the cache's slot positions) is
// reused instead of allocated. A tensor pinned by a running async op is not
// writable (KVSQ_STATE): the op may be reading it.
Napi::Value Tensor::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_live(env);
  if (pins_ > 0) throw_error(env, "KVSQ_STATE", "Tensor.write: the tensor is in use by a running async op");
  if (!info.Length() || !info[0].IsTypedArray()) throw_error(env, "KVSQ_ARG", "Tensor.write: expected a typed array");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  const napi_typedarray_type want = s_.dtype == DType::F32 ? napi_float32_array : s_.dtype == DType::I32 ? napi_int32_array : napi_uint16_array;
  if (ta.TypedArrayType() != want)
    throw_error(env, "KVSQ_DTYPE", std::string("Tensor.write: a ") + dtype_name(s_.dtype) + " tensor takes " +
                                       (want == napi_float32_array ? "a Float32Array" : want == napi_int32_array ? "an Int32Array" : "a Uint16Array (bits)"));
  const size_t n = ta.ElementLength();
  if (n > size_t(s_.numel()))
    throw_error(env, "KVSQ_SHAPE", "Tensor.write: " + std::to_string(n) + " values for a tensor of " + std::to_string(s_.numel()));
  if (n == 0) return info.This();
  s_.selection.reset();  // no longer what questSelect made
  const void* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  const size_t bytes = n * dtype_size(s_.dtype);
  if (s_.device == kCpu) {
    std::memcpy(s_.data, src, bytes);
  } else {
    Status st = copy_host_to_device(s_.device, s_.data, src, bytes);
    if (st != Status::Ok) throw_status(env, st, "Tensor.write to " + s_.device_name());
  }
  return info.This();
}

Napi::Value Tensor::To(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_live(env);
  int dev = parse_device(env, info.Length() ? info[0] : env.Undefined(), "Tensor.to");
  Storage out;
  out.dtype = s_.dtype;
  out.shape = s_.shape;
  out.device = dev;
  out.nbytes = s_.nbytes;
  Status st = storage_alloc(out);
  if (st != Status::Ok) throw_status(env, st, "Tensor.to(" + out.device_name() + ") allocation");
  if (s_.nbytes) {
    if (s_.device == kCpu && dev == kCpu) std::memcpy(out.data, s_.data, s_.nbytes);
    else if (s_.device == kCpu) st = copy_host_to_device(dev, out.data, s_.data, s_.nbytes);
    else if (dev == kCpu) st = copy_device_to_host(s_.device, out.data, s_.data, s_.nbytes);
    else if (dev == s_.device) st = copy_device_to_device(dev, out.data, s_.data, s_.nbytes);
    else {
      std::vector<uint8_t> staging(s_.nbytes);
      st = copy_device_to_host(s_.device, staging.data(), s_.data, s_.nbytes);
      if (st == Status::Ok) st = copy_host_to_device(dev, out.data, staging.data(), s_.nbytes);
    }
  }
  if (st != Status::Ok) {
    storage_free(out);
    throw_status(env, st, "Tensor.to(" + out.device_name() + ") copy");
  }
  return Wrap(env, std::move(out));
}

Napi::Value Tensor::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (s_.disposed) return env.Undefined();  // idempotent: a second dispose is a no-op
  if (pins_ > 0) {
    s_.disposed = true;  // unusable from now on; memory freed by the last unpin
    free_pending_ = true;
  } else {
    release(&env);
  }
  return env.Undefined();
}

void Tensor::unpin(Napi::Env env) {
  if (pins_ > 0 && --pins_ == 0 && free_pending_) {
    free_pending_ = false;
    release(&env);
  }
}

}  // namespace napi
}  // namespace kvsq
