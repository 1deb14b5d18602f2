// Stress tests for core/threadpool and its users (issue 13: a rare hang of Synth.EveryTypeAsRequested).
//
// Many short parallel_for jobs of varying sizes on pools of 1..8 threads (oversubscribed on small machines),
// pools created and destroyed rapidly, jobs whose fn throws, and the pool's users (synth, quantize, a decoding
// Session) many times with their bytes / logits checked. Every test runs under an in-process watchdog, and
// OneCoreUnderWatchdog runs them again in a child process pinned to a single CPU (what `taskset -c 0` does) with
// a watchdog that, when a run takes more than 10x its usual time, prints every thread's stack (gdb) and fails.
// A hang, a wrong count or a wrong byte fails the test.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/gguf.h"
#include "core/threadpool.h"
#include "tools/quantize.h"
#include "runtime/session.h"
#include "tools/synth.h"
#include "model/model.h"
#include "support/test_data.h"

using namespace lokal;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kChildEnv = "LOKAL_STRESS_CHILD";  // set in the pinned child process

// Iteration counts are multiplied by this: smaller under ASan (everything ~10x slower) and in the pinned child.
double scale() {
  double s = lokal::test::kAddressSanitizer ? 0.3 : 1.0;
  if (const char* e = std::getenv(kChildEnv)) s *= std::atof(e) > 0 ? std::atof(e) : 1.0;
  return s;
}
int scaled(int n) { return std::max(1, static_cast<int>(n * scale())); }

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Every thread's stack of process `pid`, from gdb (empty-handed if gdb cannot attach).
std::string thread_stacks(pid_t pid) {
  const std::string cmd = "timeout 120 gdb -p " + std::to_string(pid) +
                          " -batch -nx -ex 'set pagination off' -ex 'thread apply all bt' 2>&1";
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  return out.empty() ? "(gdb printed nothing)\n" : out;
}

// Limit for a test that usually takes `usual_s`: 10x, but never below a floor that CI noise cannot reach.
double limit_for(double usual_s) { return std::max(10.0 * usual_s, lokal::test::kAddressSanitizer ? 600.0 : 120.0); }

// In-process watchdog: if the scope is still running after `limit_s`, prints every thread's stack and aborts,
// so a hang fails with the stacks instead of running into ctest's timeout. Off in the pinned child, whose
// parent watches it (two gdbs cannot attach to one process).
class Watchdog {
 public:
  Watchdog(std::string what, double limit_s) : what_(std::move(what)) {
    if (std::getenv(kChildEnv)) return;
    th_ = std::thread([this, limit_s] {
      std::unique_lock<std::mutex> lk(mu_);
      if (cv_.wait_for(lk, std::chrono::duration<double>(limit_s), [this] { return done_; })) return;
      std::fprintf(stderr, "\n*** watchdog: %s still running after %.0f s; thread stacks:\n%s\n", what_.c_str(), limit_s,
                   thread_stacks(::getpid()).c_str());
      std::fflush(stderr);
      std::abort();
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (th_.joinable()) th_.join();
  }

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread th_;
};

// Runs one parallel_for of n indices and checks: every index exactly once, thread ids in range and never
// running two items at once, the sum of fn's results. Returns false (with a gtest failure) on any mismatch.
struct Checker {
  explicit Checker(int n_threads) : busy(static_cast<size_t>(n_threads)) {}
  std::vector<std::atomic<int>> hits;
  std::vector<std::atomic<int>> busy;
  std::atomic<int64_t> sum{0};
  std::atomic<int> bad_tid{0}, overlap{0};

  bool run(ThreadPool& pool, int64_t n, int64_t grain, int slow_every) {
    if (hits.size() < static_cast<size_t>(n)) hits = std::vector<std::atomic<int>>(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) hits[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
    sum.store(0);
    pool.parallel_for(n, [&](int64_t i, int tid) {
      if (tid < 0 || tid >= pool.size()) {
        bad_tid.fetch_add(1);
        return;
      }
      if (busy[static_cast<size_t>(tid)].fetch_add(1) != 0) overlap.fetch_add(1);
      hits[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
      if (slow_every && i % slow_every == 0) {
        const auto t0 = Clock::now();  // a slow item: lets other threads be preempted mid-job
        while (Clock::now() - t0 < std::chrono::microseconds(20)) {
        }
      }
      sum.fetch_add(i + 1, std::memory_order_relaxed);
      busy[static_cast<size_t>(tid)].fetch_sub(1);
    }, grain);
    // Everything must be finished when parallel_for returns: checked right away, with no waiting.
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) wrong += hits[static_cast<size_t>(i)].load(std::memory_order_relaxed) != 1;
    const int64_t want = n * (n + 1) / 2;
    EXPECT_EQ(wrong, 0) << "indices not run exactly once (n=" << n << " grain=" << grain << " threads=" << pool.size() << ")";
    EXPECT_EQ(sum.load(), want) << "n=" << n << " grain=" << grain << " threads=" << pool.size();
    EXPECT_EQ(bad_tid.load(), 0);
    EXPECT_EQ(overlap.load(), 0) << "one thread id ran two items at once";
    return wrong == 0 && sum.load() == want && bad_tid.load() == 0 && overlap.load() == 0;
  }
};

// Tiny model shapes (as in test_synth_bench): a few hundred parallel_for jobs per file.
SynthOptions tiny_synth(const std::string& arch, const std::string& type, int n_threads) {
  SynthPreset p;
  p.name = "tiny-" + arch;
  p.model = "tiny stress model";
  p.arch = arch;
  p.n_embd = arch == "qwen2" ? 320 : 256;
  p.n_layer = 2;
  p.n_head = arch == "qwen2" ? 5 : 4;
  p.n_head_kv = 1;
  p.n_ff = 512;
  p.n_vocab = 512;
  p.n_ctx = 256;
  p.tied = arch == "qwen2";
  p.qkv_bias = arch == "qwen2";
  p.vocab = arch == "qwen2" ? SynthVocab::BPE_Qwen2 : SynthVocab::SPM;
  SynthOptions o;
  o.preset = p;
  o.type = type;
  o.n_threads = n_threads;
  return o;
}

}  // namespace

// Many short jobs of varying sizes and grains (the next job bigger or smaller than the last: a late worker
// of one job must never claim a chunk of the next), on every pool size from 1 to 8 threads.
TEST(ThreadPoolStress, ShortJobsEveryPoolSize) {
  Watchdog wd("ShortJobsEveryPoolSize", limit_for(5));
  std::mt19937_64 rng(1234);
  const int jobs = scaled(4000), stress_jobs = scaled(300);
  const char* env = std::getenv("LOKAL_POOL_STRESS");
  const std::string saved = env ? env : "";
  for (int stress = 0; stress < 2; ++stress) {
    // Second round: pools that yield at their racy points (LOKAL_POOL_STRESS=1, read when a pool is made).
    if (stress) ::setenv("LOKAL_POOL_STRESS", "1", 1);
    for (int nt = 1; nt <= 8; ++nt) {
      ThreadPool pool(nt);
      ASSERT_EQ(pool.size(), nt);
      Checker c(nt);
      for (int j = 0; j < (stress ? stress_jobs : jobs); ++j) {
        // Alternate tiny and larger jobs; grains from 1 to 8; now and then slow items.
        const int64_t n = (j % 2) ? 1 + static_cast<int64_t>(rng() % 8) : 1 + static_cast<int64_t>(rng() % 300);
        const int64_t grain = 1 + static_cast<int64_t>(rng() % 8);
        const int slow = (j % 97 == 0) ? 7 : 0;
        if (!c.run(pool, n, grain, slow)) FAIL() << "job " << j << " on " << nt << " threads, stress " << stress;
      }
    }
    if (env) ::setenv("LOKAL_POOL_STRESS", saved.c_str(), 1);
    else ::unsetenv("LOKAL_POOL_STRESS");
  }
}

// Pools created and destroyed rapidly, some before their workers have even started, some after a job or two.
TEST(ThreadPoolStress, CreateDestroy) {
  Watchdog wd("CreateDestroy", limit_for(3));
  const int rounds = scaled(1500);
  for (int r = 0; r < rounds; ++r) {
    const int nt = 1 + r % 8;
    ThreadPool pool(nt);
    Checker c(nt);
    for (int j = 0; j < r % 3; ++j)
      if (!c.run(pool, 1 + (r * 7 + j * 13) % 64, 1 + j, 0)) FAIL() << "round " << r;
  }
}

// An exception thrown by fn (on the caller's thread or a worker's) comes out of parallel_for once every
// claimed chunk has finished; no index runs twice; the pool works normally afterwards.
TEST(ThreadPoolStress, ExceptionsPropagate) {
  Watchdog wd("ExceptionsPropagate", limit_for(3));
  std::mt19937_64 rng(99);
  const int rounds = scaled(1500);
  for (int nt = 1; nt <= 8; ++nt) {
    ThreadPool pool(nt);
    Checker c(nt);
    for (int r = 0; r < rounds / 8 + 1; ++r) {
      const int64_t n = 1 + static_cast<int64_t>(rng() % 200);
      const int64_t grain = 1 + static_cast<int64_t>(rng() % 4);
      const int64_t bad = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
      const int mode = r % 3;  // 0: index `bad` throws; 1: every index on the caller's thread; 2: on any worker
      std::vector<std::atomic<int>> ran(static_cast<size_t>(n));
      std::atomic<int> thrown{0}, in_flight{0};
      std::atomic<bool> finished_late{false};
      bool caught = false;
      try {
        pool.parallel_for(n, [&](int64_t i, int tid) {
          in_flight.fetch_add(1);
          ran[static_cast<size_t>(i)].fetch_add(1);
          const bool boom = mode == 0 ? i == bad : mode == 1 ? tid == 0 : tid != 0;
          if (i % 5 == 0) std::this_thread::yield();
          if (boom) {
            thrown.fetch_add(1);
            in_flight.fetch_sub(1);
            throw std::runtime_error("boom " + std::to_string(i));
          }
          in_flight.fetch_sub(1);
        }, grain);
      } catch (const std::runtime_error& e) {
        caught = true;
        EXPECT_EQ(std::string(e.what()).rfind("boom ", 0), 0u) << e.what();
        // Every claimed chunk has finished before the exception is rethrown.
        if (in_flight.load() != 0) finished_late.store(true);
      }
      EXPECT_EQ(caught, thrown.load() > 0) << "n=" << n << " mode=" << mode << " threads=" << nt;
      EXPECT_FALSE(finished_late.load()) << "parallel_for threw while items were still running";
      for (int64_t i = 0; i < n; ++i) ASSERT_LE(ran[static_cast<size_t>(i)].load(), 1) << "index " << i << " ran twice";
      if (!caught) {
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(ran[static_cast<size_t>(i)].load(), 1) << "index " << i;
      }
      // The pool is usable afterwards.
      if (!c.run(pool, 1 + static_cast<int64_t>(rng() % 100), 1, 0)) FAIL() << "after an exception, round " << r;
    }
  }
}

// The pool's users, many times: synth (row-parallel producer streaming into the GGUF writer), quantize
// (TensorConverter) and a decoding Session (matmul, attention); the same bytes / logits every time.
TEST(ThreadPoolStress, UsersRepeatedly) {
  Watchdog wd("UsersRepeatedly", limit_for(8));
  lokal::test::TempDir dir("tp_stress");
  // References: one thread.
  const std::string ref_q = dir.file("ref-q.gguf"), ref_f = dir.file("ref-f32.gguf");
  synth_model(tiny_synth("qwen2", "Q4_K_M", 1), ref_q);
  synth_model(tiny_synth("llama", "F32", 1), ref_f);
  const std::string want_q = lokal::test::read_file(ref_q);
  QuantizeOptions qo;
  qo.file_type = *find_quant_file_type("Q5_K_M");
  qo.n_threads = 1;
  const std::string ref_qq = dir.file("ref-qq.gguf");
  quantize_model(ref_f, ref_qq, qo);
  const std::string want_qq = lokal::test::read_file(ref_qq);

  const int rounds = scaled(16);
  for (int r = 0; r < rounds; ++r) {
    const int nt = 2 + r % 7;  // 2..8
    SCOPED_TRACE("round " + std::to_string(r) + ", " + std::to_string(nt) + " threads");
    const std::string out = dir.file("q-" + std::to_string(r) + ".gguf");
    synth_model(tiny_synth("qwen2", "Q4_K_M", nt), out);
    ASSERT_TRUE(lokal::test::read_file(out) == want_q) << "synth bytes differ";
    std::filesystem::remove(out);
    qo.n_threads = nt;
    const std::string qq = dir.file("qq-" + std::to_string(r) + ".gguf");
    quantize_model(ref_f, qq, qo);
    ASSERT_TRUE(lokal::test::read_file(qq) == want_qq) << "quantize bytes differ";
    std::filesystem::remove(qq);
  }

  // Decoding: the same logits on every run with the same thread count.
  auto m = Model::load(ref_q);
  for (int nt : {3, 8}) {
    std::vector<float> first;
    for (int r = 0; r < scaled(6); ++r) {
      SessionOptions so;
      so.n_ctx = 64;
      so.n_threads = nt;
      Session s(*m, so);
      s.feed({1, 5, 9, 13, 17, 21, 25});
      for (int32_t t = 30; t < 40; ++t) s.feed({t});
      if (first.empty()) first = s.logits();
      ASSERT_TRUE(s.logits() == first) << "logits differ between runs with " << nt << " threads";
    }
  }
}

// The tests above again (at a tenth of the counts), in a child process pinned to one CPU (sched_setaffinity, as
// `taskset -c N` does) with LOKAL_POOL_STRESS=1, so that threads are preempted often and at the pool's racy points
// (the pre-fix pool hung there within a few jobs). Watchdog: a run taking over 10x the first run's time, and never
// less than 60 s (600 s under ASan; a run usually takes ~4 s), gets every thread's stack printed by gdb, is killed
// and fails the test.
TEST(ThreadPoolStress, OneCoreUnderWatchdog) {
  if (std::getenv(kChildEnv)) GTEST_SKIP() << "already the child";
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string log = (std::filesystem::temp_directory_path() /
                           ("lokal_tp_stress_" + std::to_string(::getpid()) + ".log")).string();
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  ASSERT_EQ(::sched_getaffinity(0, sizeof allowed, &allowed), 0);
  int cpu = 0;
  while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &allowed)) ++cpu;
  ASSERT_LT(cpu, CPU_SETSIZE);

  const double floor_s = lokal::test::kAddressSanitizer ? 600.0 : 60.0;  // usually ~4 s (Release)
  double usual = 0;
  const int runs = 2;
  for (int run = 0; run < runs; ++run) {
    const double limit = std::max(floor_s, 10 * usual);
    const auto t0 = Clock::now();
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      if (::sched_setaffinity(0, sizeof one, &one) != 0) ::_exit(3);
      if (!std::freopen(log.c_str(), "w", stdout) || !std::freopen(log.c_str(), "a", stderr)) ::_exit(4);
      ::setenv(kChildEnv, "0.1", 1);
      ::setenv("LOKAL_POOL_STRESS", "1", 1);  // yields at the pool's racy points (core/threadpool.h)
      ::execl(self.c_str(), self.c_str(), "--gtest_filter=ThreadPoolStress.*-ThreadPoolStress.OneCoreUnderWatchdog",
              static_cast<char*>(nullptr));
      ::_exit(5);
    }
    int status = 0;
    bool hung = false;
    for (;;) {
      const pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w == pid) break;
      if (seconds_since(t0) > limit) {
        hung = true;
        const std::string stacks = thread_stacks(pid);
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        ADD_FAILURE() << "pinned run " << run << " still running after " << limit << " s (usual " << usual
                      << " s); its threads:\n" << stacks;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const double took = seconds_since(t0);
    std::ostringstream child_out;
    child_out << std::ifstream(log).rdbuf();
    std::filesystem::remove(log);
    if (hung) {
      ADD_FAILURE() << "its output:\n" << child_out.str();
      return;
    }
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "pinned run " << run << " failed (status " << status << "):\n" << child_out.str();
    std::printf("pinned run %d on cpu %d: %.2f s\n", run, cpu, took);
    if (usual == 0) usual = took;
  }
}
