#include "errors.h"

#include "addon_data.h"

#include "core/device.h"

namespace kvsq {
namespace napi {


Napi::Error make_error(Napi::Env env, const char* code, const std::string& msg) {
  AddonData* d = addon_data(env);
  auto it = d->error_classes.find(code);
  if (it != d->error_classes.end() && !it->second.IsEmpty()) {
    Napi::Value v = it->second.New({Napi::String::New(env, msg)});
    if (v.IsObject()) {
      Napi::Object o = v.As<Napi::Object>();
      o.Set("code", Napi::String::New(env, code));
      return Napi::Error(env, o);
    }
  }
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

void throw_error(Napi::Env env, const char* code, const std::string& msg) {
  throw make_error(env, code, msg);
}

const char* status_code(Status s) {
  switch (s) {
    case Status::Ok: return "KVSQ_OK";
    case Status::Shape: return "KVSQ_SHAPE";
    case Status::DType: return "KVSQ_DTYPE";
    case Status::Range: return "KVSQ_RANGE";
    case Status::NaN: return "KVSQ_NAN";
    case Status::OOM: return "KVSQ_OOM";
    case Status::Cuda: return "KVSQ_CUDA";
    case Status::Device: return "KVSQ_DEVICE";
    case Status::Unsupported: return "KVSQ_UNSUPPORTED";
  }
  return "KVSQ_INTERNAL";
}

std::string status_message(Status s, const std::string& what) {
  std::string m = what + ": ";
  switch (s) {
    case Status::Shape: m += "sizes are inconsistent or out of the supported range"; break;
    case Status::DType: m += "unsupported dtype"; break;
    case Status::Range: m += "an index (page, slot, position or k) is out of range"; break;
    case Status::NaN: m += "NaN in the input where the contract forbids it"; break;
    case Status::OOM: m += "out of memory"; break;
    case Status::Cuda: m += "CUDA error " + last_cuda_error(); break;
    case Status::Device: m += "the device is not available"; break;
    case Status::Unsupported: m += "not supported by this build (compiled without CUDA?)"; break;
    default: m += status_name(s);
  }
  return m;
}

void throw_status(Napi::Env env, Status s, const std::string& what) {
  throw_error(env, status_code(s), status_message(s, what));
}

Napi::Value SetErrorClasses(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw_error(env, "KVSQ_ARG", "setErrorClasses(map): expected an object");
  Napi::Object map = info[0].As<Napi::Object>();
  Napi::Array keys = map.GetPropertyNames();
  AddonData* d = addon_data(env);
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    Napi::Value k = keys.Get(i);
    Napi::Value v = map.Get(k);
    if (!k.IsString() || !v.IsFunction()) continue;
    d->error_classes[k.As<Napi::String>().Utf8Value()] = Napi::Persistent(v.As<Napi::Function>());
  }
  return env.Undefined();
}

}  // namespace napi
}  // namespace kvsq
