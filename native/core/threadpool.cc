#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
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

class Pool {
 public:
  explicit Pool(int n) : nthreads_(n) {
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return nthreads_; }

  void run(int64_t n, int parts, const std::function<void(int64_t, int64_t, int)>& fn) {
    std::lock_guard<std::mutex> job(job_mu_);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_;
    }
    cv_.notify_all();
    in_job() = true;
    chunk(0);
    in_job() = false;
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

  static bool& in_job() {
    static thread_local bool flag = false;
    return flag;
  }

 private:
  void chunk(int part) {
    int64_t b = n_ * part / parts_, e = n_ * (part + 1) / parts_;
    if (b < e) (*fn_)(b, e, part);
  }
  void loop(int index) {
    in_job() = true;  // nested parallel_for inside a worker runs inline
    uint64_t seen = 0;
    for (;;) {
      int parts;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
        parts = parts_;
      }
      if (index < parts) {
        chunk(index);
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 1;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

std::mutex g_pool_mu;
Pool* g_pool = nullptr;  // intentionally leaked at exit: joining threads in static destructors can hang
int g_requested = 0;

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool) g_pool = new Pool(g_requested > 0 ? g_requested : default_threads());
  return *g_pool;
}

}  // namespace

int pool_threads() { return pool().size(); }

void set_pool_threads(int n) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (g_pool && g_pool->size() == (n > 0 ? n : default_threads())) return;
  delete g_pool;  // waits for its workers; no job is running (callers serialise)
  g_pool = nullptr;
  g_requested = n;
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                  int64_t min_per_thread) {
  if (n <= 0) return;
  Pool& p = pool();
  int64_t parts = std::min<int64_t>(p.size(), std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread)));
  if (parts <= 1 || Pool::in_job()) {
    fn(0, n, 0);
    return;
  }
  p.run(n, int(parts), fn);
}

}  // namespace kvsq
