// Per-environment state of the addon (each worker thread loads its own copy).
#pragma once
#include <napi.h>

#include <map>
#include <string>

namespace kvsq {
namespace napi {

struct AddonData {
  std::map<std::string, Napi::FunctionReference> error_classes;
  Napi::FunctionReference tensor_ctor;
};

// Created on first use; node-addon-api deletes it when the environment ends.
inline AddonData* addon_data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) {
    d = new AddonData();
    env.SetInstanceData(d);
  }
  return d;
}

}  // namespace napi
}  // namespace kvsq
