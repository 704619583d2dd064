// Module entry. Registers the Tensor class, backend queries and the op
// bindings. Nothing here touches CUDA: the device layer initialises the
// runtime on first use, so the addon loads on machines without a GPU/driver.
#include <napi.h>

#include <thread>

#include "addon_data.h"
#include "bindings.h"
#include "core/cpu_features.h"
#include "core/device.h"
#include "core/threadpool.h"
#include "cpu/roofline.h"
#include "errors.h"
#include "tensor.h"
#ifdef KVSQ_WITH_CUDA
#include "../../cuda/launchers.h"
#endif

namespace kvsq {
namespace napi {

namespace {

Napi::Value BackendInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);

  Napi::Object cpu = Napi::Object::New(env);
  const CpuFeatures& f = cpu_features();
  cpu.Set("threads", pool_threads());
  cpu.Set("hardwareThreads", double(std::thread::hardware_concurrency()));
  cpu.Set("avx2", f.avx2);
  cpu.Set("fma", f.fma);
  cpu.Set("f16c", f.f16c);
  cpu.Set("avx512f", f.avx512f);
  cpu.Set("simd", !f.simd() ? "portable" : f.avx512f ? "avx512f+avx2+fma+f16c" : "avx2+fma+f16c");
  out.Set("cpu", cpu);

  CudaInfo ci = cuda_info();
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("compiled", ci.compiled);
  cuda.Set("available", ci.available);
  cuda.Set("reason", ci.available ? env.Null() : Napi::String::New(env, ci.reason));
  cuda.Set("runtimeVersion", ci.runtime_version);
  cuda.Set("driverVersion", ci.driver_version);
  cuda.Set("archs", ci.archs);
  Napi::Array devs = Napi::Array::New(env, ci.devices.size());
  for (size_t i = 0; i < ci.devices.size(); ++i) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", ci.devices[i].name);
    d.Set("computeCapability", std::to_string(ci.devices[i].cc_major) + "." + std::to_string(ci.devices[i].cc_minor));
    d.Set("memoryBytes", double(ci.devices[i].memory_bytes));
    d.Set("runnable", ci.devices[i].runnable);
    if (!ci.devices[i].runnable) d.Set("why", ci.devices[i].why);
    d.Set("wgmma", ci.devices[i].wgmma);
    devs.Set(uint32_t(i), d);
  }
  cuda.Set("devices", devs);
  out.Set("cuda", cuda);

  Napi::Object build = Napi::Object::New(env);
#ifdef KVSQ_WITH_CUDA
  build.Set("cuda", true);
  build.Set("cudaArchs", KVSQ_CUDA_ARCHS);
#else
  build.Set("cuda", false);
  build.Set("cudaArchs", "");
#endif
  build.Set("napiVersion", NAPI_VERSION);
#if defined(__clang__)
  build.Set("compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  build.Set("compiler", "gcc " __VERSION__);
#endif
  out.Set("build", build);
  return out;
}

// decodeRowCheck(device, dtype, headDim) -> null when the CUDA decode
// kernels take K/V rows of headDim elements of dtype on device `device`
// (an index), else why not (the cache checks it when it is made).
Napi::Value DecodeRowCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[2].IsNumber())
    throw_error(env, "KVSQ_ARG", "decodeRowCheck(device, dtype, headDim): device and headDim must be numbers");
  const double dev = info[0].As<Napi::Number>().DoubleValue(), hd = info[2].As<Napi::Number>().DoubleValue();
  const DType dt = parse_dtype(env, info[1], "decodeRowCheck: dtype");
  if (dt != DType::F32 && dt != DType::F16 && dt != DType::BF16)
    throw_error(env, "KVSQ_DTYPE", "decodeRowCheck: K/V dtype must be 'f32', 'f16' or 'bf16'");
  if (!(dev >= 0 && dev < 64 && dev == double(int(dev))) || !(hd >= 1 && hd <= 1e9 && hd == double(int64_t(hd))))
    throw_error(env, "KVSQ_RANGE", "decodeRowCheck: device must be an integer in [0, 64) and headDim a positive integer");
#ifdef KVSQ_WITH_CUDA
  const std::string why = cuda_decode_row_check(int(dev), dt, int64_t(hd));
#else
  (void)dt;
  const std::string why = "this build has no CUDA kernels";
#endif
  return why.empty() ? env.Null() : Napi::String::New(env, why);
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw_error(env, "KVSQ_ARG", "setThreads(n): n must be a number");
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (!(n >= 0 && n <= 256) || n != double(int(n))) throw_error(env, "KVSQ_RANGE", "setThreads(n): n must be an integer in [0, 256] (0 = default)");
  set_pool_threads(int(n));
  return Napi::Number::New(env, pool_threads());
}

// measureRoofline({ millis?, bytes? }) -> { fmaGflops, copyGbps, readGbps, threads, simd }
Napi::Value MeasureRoofline(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int millis = 300;
  double bytes = 256.0 * (1 << 20);
  if (info.Length() > 0 && info[0].IsObject()) {
    Napi::Object o = info[0].As<Napi::Object>();
    if (o.Get("millis").IsNumber()) millis = o.Get("millis").As<Napi::Number>().Int32Value();
    if (o.Get("bytes").IsNumber()) bytes = o.Get("bytes").As<Napi::Number>().DoubleValue();
  }
  if (millis < 10 || millis > 60000) throw_error(env, "KVSQ_RANGE", "measureRoofline: millis must be in [10, 60000]");
  if (!(bytes >= double(1 << 20) && bytes <= double(1ull << 34))) throw_error(env, "KVSQ_RANGE", "measureRoofline: bytes must be in [1 MiB, 16 GiB]");
  Roofline r = measure_roofline(millis, size_t(bytes));
  Napi::Object out = Napi::Object::New(env);
  out.Set("fmaGflops", r.fma_gflops);
  out.Set("copyGbps", r.copy_gbps);
  out.Set("readGbps", r.read_gbps);
  out.Set("threads", r.threads);
  out.Set("simd", r.simd);
  return out;
}

Napi::Value ForceSimd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw_error(env, "KVSQ_ARG", "forceSimd(mode): mode must be -1, 0 or 1");
  int m = info[0].As<Napi::Number>().Int32Value();
  if (m < -1 || m > 1) throw_error(env, "KVSQ_RANGE", "forceSimd(mode): mode must be -1, 0 or 1");
  cpu_features_force(m);
  return env.Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  addon_data(env);
  Tensor::Init(env, exports);
  exports.Set("setErrorClasses", Napi::Function::New(env, SetErrorClasses, "setErrorClasses"));
  exports.Set("backendInfo", Napi::Function::New(env, BackendInfo, "backendInfo"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("decodeRowCheck", Napi::Function::New(env, DecodeRowCheck, "decodeRowCheck"));
  exports.Set("forceSimd", Napi::Function::New(env, ForceSimd, "forceSimd"));
  exports.Set("measureRoofline", Napi::Function::New(env, MeasureRoofline, "measureRoofline"));
  register_ops(env, exports);
  return exports;
}

}  // namespace napi
}  // namespace kvsq

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return kvsq::napi::Init(env, exports); }
NODE_API_MODULE(kvsqueeze, InitModule)
