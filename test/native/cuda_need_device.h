// need_device(): the first call of every CUDA test. On a machine without a
// CUDA device the test SKIPs (it never counts as passed). Under the CPU
// emulator (KVSQ_CUDA_EMU) the device is always there, and the emulator's
// thread order (cuda_emu.h "Order") is seeded from the test's own generator,
// so a failure under a shuffled order replays with the suite's KVSQ_SEED.
// Anonymous namespace: the emulated and the real copy of a test file are
// both linked into the suite, each with its own need_device.
#pragma once
#include <string>

#include "core/device.h"
#include "harness.h"

namespace {
inline void need_device() {
#ifdef KVSQ_CUDA_EMU
  cuda_emu::schedule_seed(kvsqtest::rng()());
#else
  if (kvsq::cuda_device_count() == 0) {
    const kvsq::CudaInfo ci = kvsq::cuda_info();
    SKIP("no CUDA device: " + (ci.reason.empty() ? std::string("none found") : ci.reason));
  }
#endif
}
}  // namespace
