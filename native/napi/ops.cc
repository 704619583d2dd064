#include "bindings.h"

namespace kvsq {
namespace napi {

void register_ops(Napi::Env env, Napi::Object exports) {}

}  // namespace napi
}  // namespace kvsq
