// A persistent pool of worker threads for the CPU kernels.
//
// parallel_for(n, fn) splits [0, n) into contiguous ranges, one per thread
// (the caller's thread takes part), and returns when all are done. Threads
// are created once, on first use, and sleep between jobs, so a decode step
// pays a wake-up (microseconds), not a thread creation.
//
// Jobs from different caller threads (async workers on libuv's pool) are
// serialised: a kernel already uses every core, so running two at once would
// only thrash the caches. A parallel_for called from inside a job runs inline.
#pragma once
#include <cstdint>
#include <functional>

namespace kvsq {

int pool_threads();                 // threads a job uses (KVSQ_THREADS or hardware cores)
// 0 = default. Safe at any time, also while other threads are inside
// parallel_for: running jobs finish on the old pool, which goes away after them.
void set_pool_threads(int n);
// fn(begin, end, thread_index)
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                  int64_t min_per_thread = 1);

}  // namespace kvsq
