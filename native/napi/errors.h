// JS errors with stable codes. lib/errors.ts registers its KvsqError
// subclasses at load (setErrorClasses); every error thrown from native code
// is constructed from the class registered for its code, so `instanceof`
// works across the boundary. Before registration, a plain Error with .code.
#pragma once
#include <napi.h>

#include <string>

#include "core/status.h"

namespace kvsq {
namespace napi {

// Codes are the strings of lib/errors.ts (KVSQ_SHAPE, KVSQ_DTYPE, ...).
Napi::Error make_error(Napi::Env env, const char* code, const std::string& msg);
[[noreturn]] void throw_error(Napi::Env env, const char* code, const std::string& msg);
// Maps a kernel/device status to its code; `what` names the operation.
[[noreturn]] void throw_status(Napi::Env env, Status s, const std::string& what);
const char* status_code(Status s);
// The message for a status (adds the CUDA error name for Status::Cuda).
std::string status_message(Status s, const std::string& what);

Napi::Value SetErrorClasses(const Napi::CallbackInfo& info);

}  // namespace napi
}  // namespace kvsq
