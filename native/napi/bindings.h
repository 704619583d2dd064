// The op bindings (native/napi/ops.cc): argument conversion and checks,
// dispatch by device to the CPU kernel or its CUDA twin, sync and async forms.
#pragma once
#include <napi.h>

namespace kvsq {
namespace napi {

void register_ops(Napi::Env env, Napi::Object exports);

}  // namespace napi
}  // namespace kvsq
