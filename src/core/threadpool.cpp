#include "core/threadpool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

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
constexpr uint64_t kLeftMask = 0xffffffffu;  // low half of state_: chunks left to claim
constexpr int64_t kMaxChunks = 0xffffffff;
inline uint32_t gen_of(uint64_t s) { return static_cast<uint32_t>(s >> 32); }
inline uint64_t make_state(uint32_t gen, uint64_t left) { return uint64_t(gen) << 32 | left; }
}  // namespace

int ThreadPool::default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  const char* e = std::getenv("LOKAL_POOL_STRESS");
  stress_ = e && std::strcmp(e, "1") == 0;
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
    // A new generation with no chunk to claim: wakes the spinning workers, gives late ones nothing.
    state_.store(make_state(gen_of(state_.load()) + 1, 0));
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

int64_t ThreadPool::fail(uint32_t gen) {
  if (!failed_.exchange(true, std::memory_order_acq_rel)) error_ = std::current_exception();
  // Take every chunk nobody has started: they are skipped, and counted done by this thread.
  uint64_t s = state_.load(std::memory_order_acquire);
  while (gen_of(s) == gen && (s & kLeftMask) != 0)
    if (state_.compare_exchange_weak(s, s & ~kLeftMask, std::memory_order_acq_rel, std::memory_order_acquire))
      return static_cast<int64_t>(s & kLeftMask);
  return 0;
}

void ThreadPool::run_chunks(uint32_t gen, int tid) {
  uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (stress_) std::this_thread::yield();  // between reading the word and acting on it
    if (gen_of(s) != gen) return;
    const uint64_t left = s & kLeftMask;
    if (left == 0) return;
    if (!state_.compare_exchange_weak(s, s - 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // Claimed: the job cannot finish (nor change) before this chunk is counted done, so only now
    // are its fields read (a claim that failed or found no chunk left must not look at them: the
    // caller may be writing the next job's).
    const int64_t chunk = n_chunks_ - static_cast<int64_t>(left);
    const int64_t start = chunk * grain_, end = std::min(n_, start + grain_);
    int64_t finished = 1;
    try {
      for (int64_t i = start; i < end; ++i) (*fn_)(i, tid);
    } catch (...) {
      finished += fail(gen);
    }
    done_.fetch_add(finished, std::memory_order_acq_rel);
    s = state_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(int id) {
  uint32_t seen = gen_of(state_.load(std::memory_order_acquire));
  for (;;) {
    int spins = 0;
    uint32_t g = gen_of(state_.load(std::memory_order_acquire));
    while (g == seen && spins < kSpinIters + kYieldIters && !stop_.load(std::memory_order_relaxed)) {
      backoff(spins);
      g = gen_of(state_.load(std::memory_order_acquire));
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      // seq_cst, as the caller's publishing store and its sleepers_ load: either the caller sees
      // this sleeper and notifies, or the check below sees the new generation.
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      // stop_ too: a worker that starts after the destructor bumped the generation has never
      // seen the old one and would otherwise wait forever.
      cv_.wait(lk, [&] { return stop_.load() || gen_of(state_.load(std::memory_order_seq_cst)) != seen; });
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
  if ((n - 1) / grain + 1 > kMaxChunks) grain = (n - 1) / kMaxChunks + 1;  // the count fits state_'s low half
  // No chunk of the previous job can be claimed any more (none left) and every claimed one is done,
  // so nobody reads these now.
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  n_chunks_ = (n - 1) / grain + 1;
  done_.store(0, std::memory_order_relaxed);
  if (stress_) std::this_thread::yield();
  const uint32_t gen = gen_of(state_.load(std::memory_order_relaxed)) + 1;
  // Publish (seq_cst: paired with a sleeping worker's sleepers_ increment and state_ check).
  state_.store(make_state(gen, static_cast<uint64_t>(n_chunks_)), std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
  }
  run_chunks(gen, 0);
  int spins = 0;
  while (done_.load(std::memory_order_acquire) < n_chunks_) backoff(spins);
  if (failed_.load(std::memory_order_relaxed)) {
    std::exception_ptr e = std::move(error_);
    error_ = nullptr;
    failed_.store(false, std::memory_order_relaxed);
    std::rethrow_exception(e);
  }
}

}  // namespace lokal
