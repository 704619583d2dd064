#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace kvsq {

namespace {

int default_threads() {
  const char* env = std::getenv("KVSQ_THREADS");
  if (env) {
    int n = std::atoi(env);
    if (n > 0) return std::min(n, 256);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(std::min(hc, 256u)) : 1;
}

// Spin-then-sleep. A condition-variable wake-up costs 60-80 us on the 2-vCPU
// build VM (measured: 58-66 us per parallel_for of trivial work, the
// hypervisor's IPI to a halted vCPU), and a decode step makes several
// parallel_for calls with a little JavaScript between them, so after a job
// the workers poll the job counter for up to spin_us() before sleeping, and
// the caller polls for completion as long before sleeping. Idle workers thus
// burn at most spin_us() of CPU per job. KVSQ_SPIN_US sets the window
// (0: sleep at once, the old behaviour).
int64_t spin_us() {
  static const int64_t us = [] {
    const char* env = std::getenv("KVSQ_SPIN_US");
    if (env && *env) return int64_t(std::max(0, std::min(std::atoi(env), 100000)));
    return int64_t(300);
  }();
  return us;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls pred() for up to `us` microseconds; true as soon as it holds.
template <class Pred>
bool spin_for(int64_t us, Pred pred) {
  if (us <= 0) return pred();
  const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (int i = 0;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= end) return pred();
  }
}

class Pool {
 public:
  explicit Pool(int n) : nthreads_(std::max(1, std::min(n, 256))) {  // parts travel in 16 bits of word_
    for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true, std::memory_order_relaxed);
      word_.store(next_word(1), std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return nthreads_; }

  void run(int64_t n, int parts, const std::function<void(int64_t, int64_t, int)>& fn) {
    std::lock_guard<std::mutex> job(job_mu_);
    // fn_ and n_ are plain data, published by the release store of word_
    // and read only by the job's participants, whom run() waits for before
    // the next job overwrites them. The part count travels in word_ itself:
    // a worker outside a job may see the next job's word late, never a
    // generation with another job's part count.
    fn_ = &fn;
    n_ = n;
    pending_.store(parts - 1, std::memory_order_relaxed);
    {
      // Under mu_ so a worker between its last poll and its wait either sees
      // the new word in its wait predicate or is counted in sleepers_.
      std::lock_guard<std::mutex> lk(mu_);
      word_.store(next_word(parts), std::memory_order_release);
      if (sleepers_ > 0) cv_.notify_all();
    }
    in_job() = true;
    chunk(0, parts);
    in_job() = false;
    auto done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_for(spin_us(), done)) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, done);
    }
    fn_ = nullptr;
  }

  static bool& in_job() {
    static thread_local bool flag = false;
    return flag;
  }

 private:
  // word_: (job counter << 16) | parts of that job (parts <= 256).
  uint64_t next_word(int parts) const {
    return (((word_.load(std::memory_order_relaxed) >> 16) + 1) << 16) | uint64_t(parts);
  }
  void chunk(int part, int parts) {
    int64_t b = n_ * part / parts, e = n_ * (part + 1) / parts;
    if (b < e) (*fn_)(b, e, part);
  }
  void loop(int index) {
    in_job() = true;  // nested parallel_for inside a worker runs inline
    uint64_t seen = 0;  // counter of the last job word seen
    for (;;) {
      uint64_t w = 0;
      auto fresh = [&] { return ((w = word_.load(std::memory_order_acquire)) >> 16) != seen; };
      if (!spin_for(spin_us(), fresh)) {
        std::unique_lock<std::mutex> lk(mu_);
        ++sleepers_;
        cv_.wait(lk, fresh);
        --sleepers_;
      }
      seen = w >> 16;
      if (stop_.load(std::memory_order_relaxed)) return;
      const int parts = int(w & 0xffff);
      if (index < parts) {
        chunk(index, parts);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          // the last part: wake the caller if it stopped polling (taking mu_
          // orders this after its predicate check, so the wake is not lost)
          std::lock_guard<std::mutex> lk(mu_);
          done_cv_.notify_one();
        }
      }
    }
  }

  int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;      // sleeping and waking only
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> word_{0};
  int sleepers_ = 0;  // guarded by mu_
  std::atomic<bool> stop_{false};
};

// The current pool, shared: every parallel_for holds a reference while it
// runs, so set_pool_threads (JavaScript's backend.setThreads, possibly while
// Async ops run on libuv's threads) only swaps in a new pool, and the old one
// is destroyed (its workers joined) by whoever drops the last reference, after
// its last job. Deleting it under a running job left parts undone and the
// caller waiting forever on a destroyed condition variable.
std::mutex g_pool_mu;
// Intentionally leaked at exit: joining threads in static destructors can hang.
std::shared_ptr<Pool>& g_pool = *new std::shared_ptr<Pool>();
int g_requested = 0;

std::shared_ptr<Pool> pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool) g_pool = std::make_shared<Pool>(g_requested > 0 ? g_requested : default_threads());
  return g_pool;
}

}  // namespace

int pool_threads() { return pool()->size(); }

void set_pool_threads(int n) {
  std::shared_ptr<Pool> old;  // released after the lock: its destructor joins threads
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    if (g_pool && g_pool->size() == (n > 0 ? n : default_threads())) return;
    old.swap(g_pool);
    g_requested = n;
  }
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                  int64_t min_per_thread) {
  if (n <= 0) return;
  // Inside a job (a pool worker, or the caller running its own part) a nested
  // call runs inline, before touching the pool: a worker must never hold the
  // last reference to its own pool.
  if (Pool::in_job()) {
    fn(0, n, 0);
    return;
  }
  const std::shared_ptr<Pool> p = pool();
  int64_t parts = std::min<int64_t>(p->size(), std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread)));
  if (parts <= 1) {
    fn(0, n, 0);
    return;
  }
  p->run(n, int(parts), fn);
}

}  // namespace kvsq
