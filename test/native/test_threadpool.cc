// The worker pool (native/core/threadpool.cc): every index of [0, n) is
// visited exactly once per parallel_for, whatever the part count (workers
// outside a job), the gaps between jobs (shorter and longer than the 300 us
// polling window, so workers are found both polling and asleep), nested calls and
// two caller threads at once (serialised).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "../../native/core/threadpool.h"
#include "harness.h"

using namespace kvsq;

KVSQ_TEST(threadpool_each_index_once) {
  for (int threads : {2, 5}) {
    set_pool_threads(threads);
    CHECK(pool_threads() == threads);
    std::atomic<long> bad{0}, calls{0};
    auto one = [&](int64_t n, int64_t minp) {
      std::vector<std::atomic<int>> hit(static_cast<size_t>(n));
      for (auto& h : hit) h.store(0);
      parallel_for(n, [&](int64_t b, int64_t e, int part) {
        if (part < 0 || part >= threads) bad++;
        for (int64_t i = b; i < e; ++i) hit[size_t(i)]++;
        // nested: inline inside a pool job (a single-part outer call runs on
        // the caller without being a job, so its nested call may split)
        std::atomic<int64_t> covered{0};
        parallel_for(3, [&](int64_t b2, int64_t e2, int) { covered += e2 - b2; });
        if (covered.load() != 3) bad++;
      }, minp);
      for (auto& h : hit) bad += h.load() != 1;
      calls++;
    };
    const uint64_t seeds[2] = {kvsqtest::rng()(), kvsqtest::rng()()};  // rng() is not shared across threads
    std::vector<std::thread> callers;
    for (int t = 0; t < 2; ++t)
      callers.emplace_back([&, t] {
        uint64_t x = seeds[t];
        for (int i = 0; i < 400; ++i) {
          x = x * 6364136223846793005ull + 1442695040888963407ull;
          one(1 + int64_t((x >> 33) % 40), 1 + int64_t((x >> 50) % 4));
          if ((x >> 20) % 50 == 0) std::this_thread::sleep_for(std::chrono::microseconds((x >> 40) % 1500));
        }
      });
    for (auto& c : callers) c.join();
    CHECK(calls.load() == 800);
    CHECK_MSG(bad.load() == 0, bad.load() << " wrong visits with " << threads << " threads");
  }
  set_pool_threads(0);
}

// Resizing the pool while other threads are inside parallel_for (backend.setThreads
// from JavaScript while Async ops run on libuv's threads): every job still
// visits each index once and returns; the old pool goes away after its last
// job. The pool used to be deleted under a running job: its workers left
// their parts undone and the caller waited forever on a destroyed condition
// variable (found by the fuzzer as a hang). A watchdog turns a hang into a
// failure with a message rather than a stuck suite.
KVSQ_TEST(threadpool_resize_while_running) {
  std::atomic<long> bad{0}, jobs{0};
  std::atomic<bool> stop{false}, finished{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 600 && !finished.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!finished.load()) {
      std::fprintf(stderr, "FAIL threadpool_resize_while_running: no progress in 60 s (deadlock)\n");
      std::_Exit(3);
    }
  });
  std::vector<std::thread> callers;
  for (int t = 0; t < 2; ++t)
    callers.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        const int64_t n = 50 + (i * 37 + t * 11) % 400;
        std::vector<std::atomic<int>> hit(static_cast<size_t>(n));
        for (auto& h : hit) h.store(0);
        parallel_for(n, [&](int64_t b, int64_t e, int) {
          for (int64_t k = b; k < e; ++k) hit[size_t(k)]++;
          if ((b & 7) == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));  // keep jobs in flight
        });
        for (auto& h : hit) bad += h.load() != 1;
        jobs++;
      }
    });
  for (int r = 0; r < 300; ++r) {
    set_pool_threads(2 + r % 4);
    std::this_thread::sleep_for(std::chrono::microseconds(200 + (r * 53) % 700));
  }
  stop = true;
  for (auto& c : callers) c.join();
  finished = true;
  watchdog.join();
  set_pool_threads(0);
  CHECK(jobs.load() > 0);
  CHECK_MSG(bad.load() == 0, bad.load() << " indexes visited other than once");
}
