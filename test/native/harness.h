// A small test harness for the native suite (no third-party test framework:
// the suite must build from a clean clone with the compilers alone).
//
//   KVSQ_TEST(name) { CHECK(cond); CHECK_NEAR(a, b, tol); SKIP("why"); }
//
// Inputs are random and fresh each run: rng() is seeded from the clock unless
// KVSQ_SEED is set; the seed is printed so a failure can be replayed.
// The run ends with the line "N passed, N failed, N skipped"; skipped tests
// (e.g. CUDA tests without a device) never count as passed.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace kvsqtest {

struct Failure {
  std::string msg;
};
struct Skip {
  std::string why;
};

struct Test {
  const char* name;
  void (*fn)();
};
std::vector<Test>& registry();
std::mt19937_64& rng();
uint64_t seed();

struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

inline float uniform(float lo = -1.f, float hi = 1.f) {
  return std::uniform_real_distribution<float>(lo, hi)(rng());
}
inline int randint(int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(rng());
}
inline float normal() { return std::normal_distribution<float>(0.f, 1.f)(rng()); }

}  // namespace kvsqtest

#define KVSQ_CAT2(a, b) a##b
#define KVSQ_CAT(a, b) KVSQ_CAT2(a, b)
#define KVSQ_TEST(name)                                                      \
  static void name();                                                       \
  static ::kvsqtest::Registrar KVSQ_CAT(kvsq_reg_, name)(#name, &name);     \
  static void name()

#define KVSQ_FAIL(stream_expr)                                                  \
  do {                                                                          \
    std::ostringstream kvsq_os_;                                                \
    kvsq_os_ << __FILE__ << ":" << __LINE__ << ": " << stream_expr;             \
    throw ::kvsqtest::Failure{kvsq_os_.str()};                                  \
  } while (0)

#define CHECK(cond) \
  do { if (!(cond)) KVSQ_FAIL("CHECK(" #cond ") failed"); } while (0)
#define CHECK_MSG(cond, msg) \
  do { if (!(cond)) KVSQ_FAIL("CHECK(" #cond ") failed: " << msg); } while (0)
#define CHECK_EQ(a, b)                                                              \
  do {                                                                              \
    auto kvsq_a_ = (a);                                                             \
    auto kvsq_b_ = (b);                                                             \
    if (!(kvsq_a_ == kvsq_b_)) KVSQ_FAIL(#a " == " #b ": " << kvsq_a_ << " vs " << kvsq_b_); \
  } while (0)
// |a - b| <= atol + rtol * |b|
#define CHECK_CLOSE(a, b, atol, rtol)                                                    \
  do {                                                                                   \
    double kvsq_a_ = double(a), kvsq_b_ = double(b);                                     \
    if (!(std::fabs(kvsq_a_ - kvsq_b_) <= (atol) + (rtol) * std::fabs(kvsq_b_)))          \
      KVSQ_FAIL(#a " ~ " #b ": " << kvsq_a_ << " vs " << kvsq_b_);                       \
  } while (0)
#define SKIP(why) throw ::kvsqtest::Skip{why}
