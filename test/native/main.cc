#include <chrono>
#include <cstdlib>
#include <cstring>

#include "harness.h"

namespace kvsqtest {
std::vector<Test>& registry() {
  static std::vector<Test> r;
  return r;
}
uint64_t seed() {
  static uint64_t s = [] {
    const char* env = std::getenv("KVSQ_SEED");
    if (env && *env) return uint64_t(std::strtoull(env, nullptr, 10));
    return uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  }();
  return s;
}
std::mt19937_64& rng() {
  static std::mt19937_64 g(seed());
  return g;
}
}  // namespace kvsqtest

int main(int argc, char** argv) {
  using namespace kvsqtest;
  // argv[1]: run only the tests whose name contains it; "-text": all but those
  const char* filter = argc > 1 ? argv[1] : nullptr;
  const bool exclude = filter && filter[0] == '-';
  if (exclude) ++filter;
  std::printf("kvsqueeze native suite, seed %llu (KVSQ_SEED to replay)\n", (unsigned long long)seed());
  int passed = 0, failed = 0, skipped = 0;
  for (const Test& t : registry()) {
    if (filter && (std::strstr(t.name, filter) != nullptr) == exclude) continue;
    rng().seed(seed() ^ std::hash<std::string>()(t.name));  // each test replayable alone
    try {
      t.fn();
      ++passed;
      std::printf("PASS %s\n", t.name);
    } catch (const Failure& f) {
      ++failed;
      std::printf("FAIL %s: %s\n", t.name, f.msg.c_str());
    } catch (const Skip& s) {
      ++skipped;
      std::printf("SKIP %s: %s\n", t.name, s.why.c_str());
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL %s: exception %s\n", t.name, e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}
