// Which GPUs a build's CUDA architectures can run on (pure string logic, so
// every build, CPU-only included, tests it).
//
// `archs` is the list CMake was given, comma- or semicolon-separated, as the
// build records it (KVSQ_CUDA_ARCHS): "90" (SASS + PTX), "80-real" (SASS
// only), "90-virtual" (PTX only); an arch-specific suffix ("90a") makes the
// code run on exactly that compute capability. The rules are CUDA's:
// SASS for sm_XY runs on compute capability X.z with z >= Y (same major);
// PTX for compute_XY is compiled by the driver for any capability >= X.Y.
#pragma once
#include <string>

namespace kvsq {

// True when code built for `archs` runs on a device of capability
// major.minor; otherwise false with *why saying so (why may be null).
bool cuda_archs_run_on(const std::string& archs, int major, int minor, std::string* why);

}  // namespace kvsq
