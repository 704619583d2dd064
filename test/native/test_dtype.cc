// dtype conversions: scalar routines against double-precision references
// (exhaustive over all 65536 half/bf16 patterns), SIMD bulk paths against the
// scalar ones. Tolerance: exact (bit-equal except NaN payloads).
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "harness.h"

using namespace kvsq;

namespace {
double f16_value(uint16_t h) {  // reference decode in double
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = std::ldexp(double(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(double(1024 + m), e - 25);
  return s ? -v : v;
}
// Reference round-to-nearest-even to f16 by search over all finite values.
uint16_t f16_round_ref(float x, const std::vector<double>& table) {
  if (std::isnan(x)) return 0x7e00;
  double ax = std::fabs(double(x));
  uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (ax >= 65520.0) return sign | 0x7c00;
  // binary search over the monotone positive table [0 .. 0x7bff]
  int lo = 0, hi = 0x7bff;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (table[mid] <= ax) lo = mid; else hi = mid - 1;
  }
  int best = lo;
  if (lo < 0x7bff) {
    double d0 = ax - table[lo], d1 = table[lo + 1] - ax;
    if (d1 < d0 || (d1 == d0 && (lo & 1))) best = lo + 1;
  }
  return sign | uint16_t(best);
}
}  // namespace

KVSQ_TEST(dtype_f16_decode_exhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    double ref = f16_value(uint16_t(h));
    float got = f16_to_f32(uint16_t(h));
    if (std::isnan(ref)) CHECK(std::isnan(got));
    else CHECK_MSG(double(got) == ref && std::signbit(got) == bool(h & 0x8000), "h=" << h);
  }
}

KVSQ_TEST(dtype_f16_encode_round_trip_and_rne) {
  std::vector<double> table(0x7c00);
  for (int i = 0; i < 0x7c00; ++i) table[i] = f16_value(uint16_t(i));
  for (uint32_t h = 0; h < 65536; ++h) {  // every half survives a round trip
    float f = f16_to_f32(uint16_t(h));
    uint16_t back = f32_to_f16(f);
    if (std::isnan(f)) CHECK(std::isnan(f16_to_f32(back)));
    else CHECK_EQ(back, uint16_t(h));
  }
  for (int i = 0; i < 200000; ++i) {  // random floats over the whole range, and halfway cases
    float x;
    if (i % 3 == 0) {
      uint32_t u = uint32_t(kvsqtest::rng()());
      std::memcpy(&x, &u, 4);
    } else if (i % 3 == 1) {
      x = std::ldexp(kvsqtest::uniform(-1.f, 1.f), kvsqtest::randint(-26, 17));
    } else {
      int a = kvsqtest::randint(0, 0x7bfe);
      x = float((table[a] + table[a + 1]) / 2);  // exact tie (representable in f32)
      if (i & 8) x = -x;
    }
    uint16_t got = f32_to_f16(x), ref = f16_round_ref(x, table);
    if (std::isnan(x)) CHECK(std::isnan(f16_to_f32(got)));
    else CHECK_MSG(got == ref, "x=" << x << " got " << got << " ref " << ref);
  }
}

KVSQ_TEST(dtype_bf16_rne_nan_inf) {
  for (int i = 0; i < 200000; ++i) {
    uint32_t u = uint32_t(kvsqtest::rng()());
    float x;
    std::memcpy(&x, &u, 4);
    uint16_t got = f32_to_bf16(x);
    if (std::isnan(x)) { CHECK(std::isnan(bf16_to_f32(got))); continue; }
    // reference: nearest of the two bf16 neighbours in double, ties to even
    uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);
    double dx = x, dlo = bf16_to_f32(lo), dhi = bf16_to_f32(hi);
    uint16_t ref;
    if (std::isinf(dhi) && !std::isinf(dx)) {
      // overflow boundary: the halfway point to Inf is 2^128 - 2^119 (sign aside)
      double half = std::ldexp(1.0, 128) - std::ldexp(1.0, 119);
      ref = std::fabs(dx) >= half && !(std::fabs(dx) == half && !(lo & 1)) ? hi : lo;
    } else {
      double d0 = std::fabs(dx - dlo), d1 = std::fabs(dhi - dx);
      ref = d1 < d0 || (d1 == d0 && (lo & 1)) ? hi : lo;
    }
    CHECK_MSG(got == ref, "u=" << u);
  }
  CHECK(std::isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
  CHECK(std::isinf(f16_to_f32(f32_to_f16(-INFINITY))));
  CHECK(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
}

KVSQ_TEST(dtype_bulk_simd_matches_scalar) {
  for (int n : {1, 7, 17, 1000, 4097}) {
    std::vector<float> src(n), a(n), b(n);
    for (auto& x : src) x = std::ldexp(kvsqtest::uniform(), kvsqtest::randint(-20, 16));
    src[0] = NAN;
    for (DType t : {DType::F16, DType::BF16}) {
      std::vector<uint16_t> h1(n), h2(n);
      cpu_features_force(1);
      convert_from_f32(t, src.data(), h1.data(), n);
      convert_to_f32(t, h1.data(), a.data(), n);
      cpu_features_force(0);
      convert_from_f32(t, src.data(), h2.data(), n);
      convert_to_f32(t, h2.data(), b.data(), n);
      cpu_features_force(-1);
      for (int i = 0; i < n; ++i) {
        if (std::isnan(src[i])) { CHECK(std::isnan(a[i]) && std::isnan(b[i])); continue; }
        CHECK_EQ(h1[i], h2[i]);
        CHECK_EQ(f32_bits(a[i]), f32_bits(b[i]));
      }
    }
  }
}
