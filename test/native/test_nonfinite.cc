// count_nonfinite against a plain count with std::isfinite on the decoded
// values, for every float dtype and awkward sizes. Tolerance: exact.
#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "cpu/kernels.h"
#include "harness.h"

using namespace kvsq;

KVSQ_TEST(count_nonfinite_vs_reference) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int n : {0, 1, 17, 1000, 4097, 300001}) {
      std::vector<float> x(size_t(n) + 1);
      for (auto& v : x) {
        const int r = kvsqtest::randint(0, 99);
        v = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : r == 3 ? 1e6f : kvsqtest::uniform(-3, 3);
      }
      std::vector<uint8_t> buf(x.size() * 4);
      convert_from_f32(t, x.data(), buf.data(), x.size());
      std::vector<float> back(x.size());
      convert_to_f32(t, buf.data(), back.data(), x.size());
      int64_t ref = 0;
      for (int i = 0; i < n; ++i) ref += !std::isfinite(back[i]);  // 1e6 is Inf in f16
      int64_t got = -1;
      NonFiniteArgs a;
      a.dtype = t;
      a.x = buf.data();
      a.n = n;
      a.count = &got;
      CHECK(cpu_count_nonfinite(a) == Status::Ok);
      CHECK_EQ(got, ref);
    }
}

KVSQ_TEST(count_nonfinite_invalid_args) {
  int64_t c = 7;
  float x = 1;
  NonFiniteArgs a;
  a.dtype = DType::I32;
  a.x = &x;
  a.n = 1;
  a.count = &c;
  CHECK(cpu_count_nonfinite(a) == Status::DType);
  a.dtype = DType::F32;
  a.n = -1;
  CHECK(cpu_count_nonfinite(a) == Status::Shape);
  a.n = 1;
  a.count = nullptr;
  CHECK(cpu_count_nonfinite(a) == Status::Shape);
  CHECK_EQ(c, int64_t(7));
}
