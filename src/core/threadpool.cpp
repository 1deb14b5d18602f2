#include "core/threadpool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LOKAL_PAUSE() _mm_pause()
#else
#define LOKAL_PAUSE() ((void)0)
#endif

namespace lokal {

namespace {
// Workers poll for new work this many times (with a pause, then yielding the core) before
// sleeping on the condition variable. The waiting caller yields too: on a loaded 2-core
// machine a pure spin would burn the time slice the worker needs.
constexpr int kSpinIters = 1 << 12;
constexpr int kYieldIters = 1 << 10;

inline void backoff(int& spins) {
  if (++spins < kSpinIters) {
    LOKAL_PAUSE();
  } else {
    std::this_thread::yield();
  }
}
}  // namespace

int ThreadPool::default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int id) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g = generation_.load(std::memory_order_acquire);
    int spins = 0;
    while (g == seen && spins < kSpinIters + kYieldIters) {
      backoff(spins);
      g = generation_.load(std::memory_order_acquire);
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      sleepers_.fetch_sub(1);
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_.load()) return;
    (*job_)(id);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::dispatch(const std::function<void(int)>& job) {
  if (n_threads_ == 1) {
    job(0);
    return;
  }
  job_ = &job;
  pending_.store(n_threads_ - 1, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
  }
  job(0);
  int spins = 0;
  while (pending_.load(std::memory_order_acquire) != 0) backoff(spins);
  job_ = nullptr;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || n <= grain) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  std::function<void(int)> job = [&](int tid) {
    for (;;) {
      int64_t start = next.fetch_add(grain, std::memory_order_relaxed);
      if (start >= n) break;
      int64_t end = std::min(n, start + grain);
      for (int64_t i = start; i < end; ++i) fn(i, tid);
    }
  };
  dispatch(job);
}

void ThreadPool::run_on_all(const std::function<void(int, int)>& fn) {
  std::function<void(int)> job = [&](int tid) { fn(tid, n_threads_); };
  dispatch(job);
}

}  // namespace lokal
