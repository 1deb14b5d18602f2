// core/threadpool.h - persistent worker pool for data-parallel loops.
//
// parallel_for(n, fn) runs fn(i, thread_index) for i in [0, n) and returns when every index
// is done. The caller takes part as thread 0. Work is handed out in chunks claimed with one
// compare-and-swap on a (generation, next chunk) word, so:
//  * workers spin briefly, then yield, then sleep, between jobs: back-to-back ops (one per
//    matmul during decode) cost well under a microsecond when the cores are free;
//  * the caller never waits for a worker that has not started: if the OS has not scheduled
//    a worker (a loaded machine, more threads than free cores), the caller simply claims its
//    chunks itself; a late worker finds the generation changed and claims nothing.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
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
  void parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn, int64_t grain = 1);

  static int default_threads();  // hardware threads, at least 1

 private:
  void worker(int id);
  void run_chunks(uint64_t gen, int tid);

  int n_threads_;
  std::vector<std::thread> workers_;
  // Current job (valid while its generation is current and chunks remain).
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1, n_chunks_ = 0;
  std::atomic<uint64_t> state_{0};   // generation << 32 | next chunk index
  std::atomic<int64_t> done_{0};     // chunks completed in the current generation
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

}  // namespace lokal
