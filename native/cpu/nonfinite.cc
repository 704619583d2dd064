// Non-finite count: NaN and +-Inf are the values whose exponent bits are all
// ones (f32: 0x7f800000, bf16: 0x7f80, f16: 0x7c00). Integer tests on the
// raw bits: exact, and simple enough for the compiler to vectorise; the scan
// is memory-bound. Tolerance: exact.
#include <atomic>
#include <cstring>

#include "../core/threadpool.h"
#include "kernels.h"

namespace kvsq {

namespace {
template <class U>
int64_t count_bits(const U* x, int64_t b, int64_t e, U mask) {
  int64_t c = 0;
  for (int64_t i = b; i < e; ++i) c += (x[i] & mask) == mask;
  return c;
}
}  // namespace

Status cpu_count_nonfinite(const NonFiniteArgs& a) {
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.n < 0 || !a.count || (a.n > 0 && !a.x)) return Status::Shape;
  std::atomic<int64_t> total{0};
  parallel_for(a.n, [&](int64_t b, int64_t e, int) {
    int64_t c;
    if (a.dtype == DType::F32) c = count_bits(static_cast<const uint32_t*>(a.x), b, e, uint32_t(0x7f800000u));
    else if (a.dtype == DType::BF16) c = count_bits(static_cast<const uint16_t*>(a.x), b, e, uint16_t(0x7f80u));
    else c = count_bits(static_cast<const uint16_t*>(a.x), b, e, uint16_t(0x7c00u));
    total += c;
  }, 1 << 16);
  *a.count = total;
  return Status::Ok;
}

}  // namespace kvsq
