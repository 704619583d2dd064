#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace kvsq {

namespace {
CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  // F16C has no __builtin_cpu_supports name on older gcc; read CPUID leaf 1 ECX bit 29.
  unsigned a, b, c, d;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
  f.f16c = (c >> 29) & 1u;
  // __builtin_cpu_supports also checks that the OS saves the zmm registers (XCR0).
  f.avx512f = __builtin_cpu_supports("avx512f") && f.avx2 && f.fma && f.f16c;
#endif
  const char* no512 = std::getenv("KVSQ_NO_AVX512");
  if (no512 && std::strcmp(no512, "0") != 0 && *no512) f.avx512f = false;
  const char* env = std::getenv("KVSQ_NO_SIMD");
  if (env && std::strcmp(env, "0") != 0 && *env) f = CpuFeatures{};
  return f;
}
CpuFeatures g_detected = detect();
CpuFeatures g_active = g_detected;
}  // namespace

const CpuFeatures& cpu_features() { return g_active; }

void cpu_features_force(int mode) {
  if (mode == 0) g_active = CpuFeatures{};
  else g_active = g_detected;
}

}  // namespace kvsq
