// Machine rooflines measured in the same run as a benchmark, on the kernels'
// own thread pool: the FMA peak (a register-resident AVX2 FMA loop, portable
// fallback) and the memory bandwidths (a streaming copy and a streaming read
// over buffers far larger than the caches).
#pragma once
#include <cstddef>

namespace kvsq {

struct Roofline {
  double fma_gflops = 0;   // 2 flops per FMA lane, all pool threads
  double copy_gbps = 0;    // bytes read + bytes written per second
  double read_gbps = 0;    // bytes read per second
  int threads = 0;
  bool simd = false;
};

// Runs for roughly `millis` per measurement; `bytes` per buffer (default 256 MB).
Roofline measure_roofline(int millis, size_t bytes);

}  // namespace kvsq
