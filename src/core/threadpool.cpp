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
constexpr int kSpinIters = 1 << 12;   // pause-spins before yielding
constexpr int kYieldIters = 1 << 10;  // yields before sleeping (workers only)

inline void backoff(int& spins) {
  if (++spins < kSpinIters) LOKAL_PAUSE();
  else std::this_thread::yield();
}
inline uint64_t gen_of(uint64_t s) { return s >> 32; }
}  // namespace

int ThreadPool::default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
    state_.fetch_add(uint64_t(1) << 32);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks(uint64_t gen, int tid) {
  uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (gen_of(s) != gen) return;
    const int64_t chunk = static_cast<int64_t>(s & 0xffffffffu);
    if (chunk >= n_chunks_) return;
    if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // Claimed: the job cannot finish (nor change) before this chunk is counted done.
    const int64_t start = chunk * grain_, end = std::min(n_, start + grain_);
    for (int64_t i = start; i < end; ++i) (*fn_)(i, tid);
    done_.fetch_add(1, std::memory_order_acq_rel);
    s = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(int id) {
  uint64_t seen = gen_of(state_.load(std::memory_order_acquire));
  for (;;) {
    int spins = 0;
    uint64_t g = gen_of(state_.load(std::memory_order_acquire));
    while (g == seen && spins < kSpinIters + kYieldIters && !stop_.load(std::memory_order_relaxed)) {
      backoff(spins);
      g = gen_of(state_.load(std::memory_order_acquire));
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      // stop_ too: a worker that starts after the destructor bumped the generation has never
      // seen the old one and would otherwise wait forever.
      cv_.wait(lk, [&] { return stop_.load() || gen_of(state_.load(std::memory_order_acquire)) != seen; });
      sleepers_.fetch_sub(1);
      g = gen_of(state_.load(std::memory_order_acquire));
    }
    seen = g;
    if (stop_.load()) return;
    run_chunks(g, id);
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || n <= grain) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  n_chunks_ = (n + grain - 1) / grain;
  done_.store(0, std::memory_order_relaxed);
  const uint64_t gen = gen_of(state_.load(std::memory_order_relaxed)) + 1;
  state_.store(gen << 32, std::memory_order_release);  // publish: chunk 0 of a new generation
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
  }
  run_chunks(gen, 0);
  int spins = 0;
  while (done_.load(std::memory_order_acquire) != n_chunks_) backoff(spins);
}

}  // namespace lokal
