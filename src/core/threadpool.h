// core/threadpool.h - persistent worker pool for data-parallel loops.
//
// parallel_for(n, fn) runs fn(i, thread_index) for i in [0, n) and returns when every index
// is done. The caller takes part as thread 0. Work is handed out in chunks claimed with one
// compare-and-swap on a (generation, chunks left) word, so:
//  * workers spin briefly, then yield, then sleep, between jobs: back-to-back ops (one per
//    matmul during decode) cost well under a microsecond when the cores are free;
//  * the caller never waits for a worker that has not started: if the OS has not scheduled
//    a worker (a loaded machine, more threads than free cores), the caller simply claims its
//    chunks itself; a late worker finds the generation changed, or no chunk left, and claims
//    nothing. Whether a chunk can be claimed depends on that word alone: the job's fields (fn, n,
//    grain, chunk count) are read only after a successful claim, when the job can neither end nor
//    be replaced before that chunk is counted done. (A late worker that compared the word's chunk
//    index with the next job's chunk count, while the caller was writing it, could claim a chunk
//    that did not exist and count it into the next job: issue 13's hang.)
// LOKAL_POOL_STRESS=1 (read when a pool is made) yields at the racy points (between writing a job
// and publishing it; between reading the state word and acting on it), so that stress tests
// (tests/test_threadpool_stress.cpp) see threads preempted there often.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lokal {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // fn(index, thread_id) for every index in [0, n); indices are claimed in chunks of `grain`.
  // thread_id is in [0, size()) and unique among concurrently running calls, so it can index
  // per-thread scratch. Not reentrant: fn must not call parallel_for on the same pool.
  // If fn throws (on any thread), the chunks nobody has started are skipped, parallel_for waits
  // for the chunks already running and then rethrows the first exception in the caller.
  void parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn, int64_t grain = 1);

  static int default_threads();  // hardware threads, at least 1

 private:
  void worker(int id);
  void run_chunks(uint32_t gen, int tid);
  int64_t fail(uint32_t gen);  // records the current exception; returns the chunks it took off the job

  int n_threads_;
  bool stress_ = false;  // LOKAL_POOL_STRESS=1
  std::vector<std::thread> workers_;
  // Current job: written by the caller only while no chunk of it can be claimed (before it is
  // published, after every chunk is counted done); read by a worker only after it claimed a chunk.
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1, n_chunks_ = 0;
  std::atomic<uint64_t> state_{0};   // generation << 32 | chunks left to claim (chunk = n_chunks_ - left)
  std::atomic<int64_t> done_{0};     // chunks completed (or skipped after an exception) in the current job
  std::atomic<bool> failed_{false};  // fn threw in the current job; error_ holds the first exception
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

}  // namespace lokal
