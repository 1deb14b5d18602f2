#include "eval/bench.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/log.h"
#include "core/threadpool.h"
#include "runtime/kv_pool.h"
#include "runtime/session.h"
#include "ops/vec_dot.h"

namespace lokal {

namespace {

using Clock = std::chrono::steady_clock;

double now_ns() {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) {
        size_t b = line.find_first_not_of(" \t", c + 1);
        return b == std::string::npos ? "" : line.substr(b);
      }
    }
  }
  return "";
}

// "1.1B", "494M": the parameter count, as a size label.
std::string size_label(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ULL) std::snprintf(buf, sizeof buf, "%.1fB", static_cast<double>(n) * 1e-9);
  else if (n >= 1000000ULL) std::snprintf(buf, sizeof buf, "%.0fM", static_cast<double>(n) * 1e-6);
  else std::snprintf(buf, sizeof buf, "%.0fK", static_cast<double>(n) * 1e-3);
  return buf;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
double stddev(const std::vector<double>& v) {  // sample standard deviation, as llama-bench
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// Bytes of weights one decoded token reads.
uint64_t decode_bytes(const Model& m) {
  const ModelConfig& c = m.config();
  auto mat = [](const WeightView& w) { return static_cast<uint64_t>(w.row_bytes) * static_cast<uint64_t>(w.rows); };
  uint64_t b = m.tok_embd.row_bytes + mat(m.output) + static_cast<uint64_t>(c.n_embd) * 4;  // + output_norm
  for (const LayerWeights& L : m.layers) {
    b += mat(L.wq) + mat(L.wk) + mat(L.wv) + mat(L.wo) + mat(L.w_gate) + mat(L.w_up) + mat(L.w_down);
    b += static_cast<uint64_t>(2 * c.n_embd) * 4;                                                   // norms
    if (L.bq) b += static_cast<uint64_t>(c.n_embd_q() + c.n_embd_k() + c.n_embd_v()) * 4;          // biases
  }
  return b;
}

// Sums of a word range, for the bandwidth test: wide loads where the CPU has them (checked at run time; the
// attribute compiles just these functions for the ISA), so the reading core is never the bottleneck.
uint64_t sum_words_scalar(const uint64_t* b, size_t lo, size_t hi) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  size_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    a0 += b[i];
    a1 += b[i + 1];
    a2 += b[i + 2];
    a3 += b[i + 3];
    a4 += b[i + 4];
    a5 += b[i + 5];
    a6 += b[i + 6];
    a7 += b[i + 7];
  }
  for (; i < hi; ++i) a0 += b[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t sum_words_avx2(const uint64_t* b, size_t lo, size_t hi) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = lo;
  for (; i + 16 <= hi; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i + 12)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return t[0] + t[1] + t[2] + t[3] + sum_words_scalar(b, i, hi);
}

__attribute__((target("avx512f"))) uint64_t sum_words_avx512(const uint64_t* b, size_t lo, size_t hi) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = lo;
  for (; i + 32 <= hi; i += 32) {
    a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(b + i));
    a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(b + i + 8));
    a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(b + i + 16));
    a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(b + i + 24));
  }
  const __m512i s = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
  alignas(64) uint64_t t[8];
  _mm512_store_si512(t, s);
  uint64_t r = 0;
  for (uint64_t x : t) r += x;
  return r + sum_words_scalar(b, i, hi);
}
#endif

using SumFn = uint64_t (*)(const uint64_t*, size_t, size_t);
SumFn pick_sum_words() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return sum_words_avx512;
  if (__builtin_cpu_supports("avx2")) return sum_words_avx2;
#endif
  return sum_words_scalar;
}

}  // namespace

uint64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024ULL;
  }
  return 0;
}

double measure_read_bandwidth(int n_threads, size_t bytes, int runs) {
  n_threads = std::max(1, n_threads);
  runs = std::max(1, runs);
  const size_t n_words = std::max<size_t>(bytes / 8, 1024) / 64 * 64;
  void* mem = ::mmap(nullptr, n_words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw Error("memory bandwidth test: cannot allocate " + std::to_string(n_words * 8) + " bytes");
  uint64_t* buf = static_cast<uint64_t*>(mem);
  // Real pages (not the shared zero page), written in parallel so first touch is spread like the reads.
  {
    std::vector<std::thread> th;
    for (int t = 0; t < n_threads; ++t)
      th.emplace_back([=] {
        const size_t lo = n_words * t / n_threads, hi = n_words * (t + 1) / n_threads;
        for (size_t i = lo; i < hi; ++i) buf[i] = i * 0x9e3779b97f4a7c15ULL;
      });
    for (auto& x : th) x.join();
  }
  // The caller reads slice 0 itself (no thread spins idly while the others read); helpers read the rest.
  std::atomic<int> ready{0}, done{0};
  std::atomic<int> go{-1};
  std::atomic<uint64_t> sink{0};
  const SumFn sum_words = pick_sum_words();
  auto read_slice = [&](int t) {
    const size_t lo = n_words * t / n_threads / 8 * 8;
    const size_t hi = t + 1 == n_threads ? n_words : n_words * (t + 1) / n_threads / 8 * 8;
    sink.fetch_add(sum_words(buf, lo, hi), std::memory_order_relaxed);
  };
  auto helper = [&](int t) {
    for (int r = 0; r < runs; ++r) {
      ready.fetch_add(1);
      while (go.load(std::memory_order_acquire) != r) std::this_thread::yield();
      read_slice(t);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  };
  std::vector<std::thread> th;
  for (int t = 1; t < n_threads; ++t) th.emplace_back(helper, t);
  double best = 0;
  for (int r = 0; r < runs; ++r) {
    while (ready.load() < (n_threads - 1) * (r + 1)) std::this_thread::yield();
    const double t0 = now_ns();
    go.store(r, std::memory_order_release);
    read_slice(0);
    while (done.load(std::memory_order_acquire) < (n_threads - 1) * (r + 1)) std::this_thread::yield();
    const double dt = now_ns() - t0;
    best = std::max(best, static_cast<double>(n_words * 8) / dt);  // bytes per ns = GB/s
  }
  for (auto& x : th) x.join();
  ::munmap(mem, n_words * 8);
  if (sink.load() == 42) std::fputc(' ', stderr);  // keep the sums alive
  return best;
}

namespace {
void finish_bandwidth(const BenchOptions& opt, const std::function<void(const std::string&)>& log, BenchReport& rep);

// The device's submission counters over the timed parts of a test's warm runs (BenchTest::gpu_*).
struct GpuCounter {
  const Model& model;
  gpu::Device::SubmitStats at{}, sum{};
  void begin() {
    if (const DeviceModel* dm = model.device()) at = dm->submit_stats();
  }
  void end() {
    const DeviceModel* dm = model.device();
    if (!dm) return;
    const gpu::Device::SubmitStats now = dm->submit_stats();
    sum.submits += now.submits - at.submits;
    sum.reused += now.reused - at.reused;
    sum.dispatches += now.dispatches - at.dispatches;
    sum.host_s += now.host_s - at.host_s;
    sum.wait_s += now.wait_s - at.wait_s;
  }
  void finish(BenchTest& t, int runs) const {
    if (sum.submits == 0 || runs <= 0) return;
    const double n = static_cast<double>(sum.submits);
    t.gpu_submits = n / runs;
    t.gpu_reused_pct = 100.0 * static_cast<double>(sum.reused) / n;
    t.gpu_dispatches = static_cast<double>(sum.dispatches) / n;
    t.gpu_host_us = sum.host_s * 1e6 / n;
    t.gpu_device_us = sum.wait_s * 1e6 / n;
  }
};

// One ppP xN and one tgG xN test (llama-batched-bench's PP/TG with -npl N): N sequences in a fresh pool of
// N * (P + G) positions; the N prompts are evaluated in one eval_batch (only each prompt's last row of logits),
// then G steps of N entries. Token ids are random; nothing is sampled (like llama-batched-bench).
template <typename RandomTokens, typename Log>
void run_parallel_test(const Model& model, ThreadPool& pool, const BenchOptions& opt, int P, int G, int N, int nt,
                       RandomTokens& random_tokens, Log& log, BenchReport& rep) {
  const ModelConfig& c = model.config();
  const int64_t len = static_cast<int64_t>(P) + G;
  if (len < 1) return;
  Forward fwd(model, pool, std::max<int64_t>(opt.n_batch, N), std::max<int64_t>(1, len));
  KVPool kv(c, N * KVCache::pages_for(len) * kKVPage, opt.cache_type_k, opt.cache_type_v, model.device());  // whole pages per sequence
  std::vector<float> logits(static_cast<size_t>(N) * static_cast<size_t>(c.n_vocab));
  BenchTest pp, tg;
  pp.n_prompt = P;
  tg.n_gen = G;
  pp.n_parallel = tg.n_parallel = N;
  pp.n_threads = tg.n_threads = nt;
  pp.name = "pp" + std::to_string(P) + " x" + std::to_string(N);
  tg.name = "tg" + std::to_string(G) + " x" + std::to_string(N);
  pp.test_time = tg.test_time = iso_utc();
  GpuCounter gpp{model}, gtg{model};
  for (int r = 0; r <= opt.reps; ++r) {
    log("bench: " + std::to_string(N) + " sequences, " + std::to_string(nt) + " threads, " +
        (r == 0 ? std::string("first run") : "run " + std::to_string(r) + "/" + std::to_string(opt.reps)));
    std::vector<KVPool::SeqId> ids;
    std::vector<SeqPages> tables;
    for (int i = 0; i < N; ++i) {
      ids.push_back(kv.create());
      if (!kv.reserve(ids.back(), len)) throw Error("bench: the KV pool is too small");  // sized above: cannot happen
    }
    for (int i = 0; i < N; ++i) tables.push_back(kv.page_table(ids[static_cast<size_t>(i)]));
    std::vector<BatchEntry> e;
    if (P > 0) {
      for (int i = 0; i < N; ++i) {
        const std::vector<int32_t> toks = random_tokens(P);
        for (int j = 0; j < P; ++j) e.push_back(BatchEntry{toks[static_cast<size_t>(j)], i, j, j == P - 1});
      }
      if (r > 0) gpp.begin();
      const double t0 = now_ns();
      fwd.eval_batch(e.data(), static_cast<int64_t>(e.size()), tables.data(), N, kv.cache(), logits.data());
      const double ns = now_ns() - t0;
      if (r > 0) gpp.end();
      const double ts = static_cast<double>(P) * N * 1e9 / ns;
      if (r == 0) pp.first_ns = ns, pp.first_ts = ts;
      else pp.samples_ns.push_back(ns), pp.samples_ts.push_back(ts);
    }
    if (G > 0) {
      const std::vector<int32_t> toks = random_tokens(static_cast<int64_t>(G) * N);
      e.resize(static_cast<size_t>(N));
      if (r > 0) gtg.begin();
      const double t0 = now_ns();
      for (int g = 0; g < G; ++g) {
        for (int i = 0; i < N; ++i) e[static_cast<size_t>(i)] = BatchEntry{toks[static_cast<size_t>(g * N + i)], i, P + g, true};
        fwd.eval_batch(e.data(), N, tables.data(), N, kv.cache(), logits.data());
      }
      const double ns = now_ns() - t0;
      if (r > 0) gtg.end();
      const double ts = static_cast<double>(G) * N * 1e9 / ns;
      if (r == 0) tg.first_ns = ns, tg.first_ts = ts;
      else tg.samples_ns.push_back(ns), tg.samples_ts.push_back(ts);
    }
    for (auto id : ids) kv.release(id);
  }
  for (BenchTest* t : {&pp, &tg}) {
    if ((t == &pp && P == 0) || (t == &tg && G == 0)) continue;
    t->avg_ns = mean(t->samples_ns);
    t->stddev_ns = stddev(t->samples_ns);
    t->avg_ts = mean(t->samples_ts);
    t->stddev_ts = stddev(t->samples_ts);
    // Weights are read once per step for all N sequences.
    if (t == &tg) t->decode_gbps = static_cast<double>(rep.decode_bytes_per_token) * t->avg_ts / N * 1e-9;
    (t == &pp ? gpp : gtg).finish(*t, opt.reps);
    rep.tests.push_back(*t);
  }
}
}  // namespace

BenchReport run_bench(const BenchOptions& opt) {
  if (opt.reps < 1) throw Error("bench: repetitions (-r) must be at least 1, got " + std::to_string(opt.reps));
  bool any = false;
  for (int p : opt.n_prompt) {
    if (p < 0) throw Error("bench: prompt length (-p) must not be negative, got " + std::to_string(p));
    any = any || p > 0;
  }
  for (int n : opt.n_gen) {
    if (n < 0) throw Error("bench: generation length (-n) must not be negative, got " + std::to_string(n));
    any = any || n > 0;
  }
  if (!any) throw Error("bench: nothing to measure: both -p and -n are 0");
  for (int64_t d : opt.depth)
    if (d < 0) throw Error("bench: depth (--depth) must not be negative, got " + std::to_string(d));
  for (int t : opt.n_threads)
    if (t < 0) throw Error("bench: thread count (-t) must not be negative, got " + std::to_string(t));
  if (opt.n_batch < 1) throw Error("bench: batch size (-b) must be at least 1");
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };

  BenchReport rep;
  LoadOptions lo;
  lo.use_mmap = opt.use_mmap;
  lo.offload = opt.offload;
  auto model = Model::load(opt.model, lo);
  const ModelConfig& c = model->config();
  rep.model_filename = opt.model;
  rep.arch = c.arch;
  rep.file_type = model_file_type(model->gguf());  // model/config.h: the name info, plan and compare show
  rep.load_ms = model->load_seconds() * 1e3;
  rep.model_size = model->weight_bytes();
  for (const auto& t : model->gguf().tensors()) rep.model_n_params += static_cast<uint64_t>(t.n_elements());
  rep.model_type = c.arch + " " + size_label(rep.model_n_params) + " " + rep.file_type;
  rep.decode_bytes_per_token = decode_bytes(*model);
  rep.cpu_info = cpu_model_name();
  rep.kernels = vec_dot_isa();
  rep.n_batch = opt.n_batch;
  rep.cache_type_k = opt.cache_type_k;
  rep.cache_type_v = opt.cache_type_v;
  rep.use_mmap = opt.use_mmap;
  if (const DeviceModel* dm = model->device()) {
    rep.n_gpu_layers = dm->n_layers();
    rep.gpu_output = dm->output_on_device();
    rep.gpu = dm->info().name;
    rep.gpu_device = dm->info().index;
    rep.gpu_int8 = dm->int8();
    rep.gpu_bytes = dm->weight_bytes();
  }

  int64_t max_depth = 0, max_len = 1;
  for (int64_t d : opt.depth) max_depth = std::max(max_depth, d);
  for (int p : opt.n_prompt) max_len = std::max<int64_t>(max_len, p);
  for (int n : opt.n_gen) max_len = std::max<int64_t>(max_len, n);
  const int64_t n_ctx = max_depth + max_len;

  std::mt19937_64 rng(opt.seed);
  const int32_t n_vocab = static_cast<int32_t>(c.n_vocab);
  auto random_tokens = [&](int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(n_vocab));
    return v;
  };

  for (int np : opt.n_parallel)
    if (np < 1) throw Error("bench: the number of parallel sequences (--parallel) must be at least 1, got " + std::to_string(np));
  if (!opt.n_parallel.empty()) {
    for (int64_t d : opt.depth)
      if (d != 0) throw Error("bench: --depth does not combine with --parallel");
    for (int threads_opt : opt.n_threads) {
      ThreadPool pool(threads_opt > 0 ? threads_opt : ThreadPool::default_threads());
      const int nt = pool.size();
      for (int P : opt.n_prompt)
        for (int G : opt.n_gen)
          for (int N : opt.n_parallel)
            run_parallel_test(*model, pool, opt, P, G, N, nt, random_tokens, log, rep);
    }
    rep.peak_rss_bytes = peak_rss_bytes();
    finish_bandwidth(opt, log, rep);
    return rep;
  }

  for (int threads_opt : opt.n_threads) {
    SessionOptions so;
    so.n_ctx = n_ctx;
    so.n_threads = threads_opt;
    so.n_batch = opt.n_batch;
    so.cache_type_k = opt.cache_type_k;
    so.cache_type_v = opt.cache_type_v;
    Session session(*model, so);
    const int nt = session.n_threads();
    struct Spec {
      int p, n;
      int64_t d;
    };
    std::vector<Spec> specs;
    for (int64_t d : opt.depth) {
      for (int p : opt.n_prompt)
        if (p > 0) specs.push_back({p, 0, d});
      for (int n : opt.n_gen)
        if (n > 0) specs.push_back({0, n, d});
    }
    for (const Spec& s : specs) {
      BenchTest t;
      t.n_prompt = s.p;
      t.n_gen = s.n;
      t.depth = s.d;
      t.n_threads = nt;
      t.name = s.p > 0 ? "pp" + std::to_string(s.p) : "tg" + std::to_string(s.n);
      if (s.d > 0) t.name += " @ d" + std::to_string(s.d);
      t.test_time = iso_utc();
      GpuCounter gc{*model};
      for (int r = 0; r <= opt.reps; ++r) {
        log("bench: " + t.name + ", " + std::to_string(nt) + " threads, " +
            (r == 0 ? std::string("first run") : "run " + std::to_string(r) + "/" + std::to_string(opt.reps)));
        session.reset();
        if (s.d > 0) session.feed(random_tokens(s.d));
        double ns;
        if (r > 0) gc.begin();
        if (s.p > 0) {
          const std::vector<int32_t> toks = random_tokens(s.p);
          const double t0 = now_ns();
          session.feed(toks);
          ns = now_ns() - t0;
        } else {
          const std::vector<int32_t> toks = random_tokens(s.n);
          const double t0 = now_ns();
          for (int i = 0; i < s.n; ++i) session.feed({toks[static_cast<size_t>(i)]});
          ns = now_ns() - t0;
        }
        if (r > 0) gc.end();
        const double ts = static_cast<double>(s.p + s.n) * 1e9 / ns;
        if (r == 0) {
          t.first_ns = ns;
          t.first_ts = ts;
        } else {
          t.samples_ns.push_back(ns);
          t.samples_ts.push_back(ts);
        }
      }
      t.avg_ns = mean(t.samples_ns);
      t.stddev_ns = stddev(t.samples_ns);
      t.avg_ts = mean(t.samples_ts);
      t.stddev_ts = stddev(t.samples_ts);
      if (s.n > 0) t.decode_gbps = static_cast<double>(rep.decode_bytes_per_token) * t.avg_ts * 1e-9;
      gc.finish(t, opt.reps);
      rep.tests.push_back(std::move(t));
    }
  }
  // Before the bandwidth test, whose buffer would otherwise count in the peak.
  rep.peak_rss_bytes = peak_rss_bytes();
  finish_bandwidth(opt, log, rep);
  return rep;
}

namespace {
void finish_bandwidth(const BenchOptions& opt, const std::function<void(const std::string&)>& log, BenchReport& rep) {
  if (opt.measure_bandwidth) {
    for (BenchTest& t : rep.tests) {
      if (!rep.mem_bw_gbps.count(t.n_threads)) {
        log("bench: memory read bandwidth, " + std::to_string(t.n_threads) + " threads");
        rep.mem_bw_gbps[t.n_threads] = measure_read_bandwidth(t.n_threads, opt.bandwidth_bytes, opt.bandwidth_runs);
      }
      t.mem_bw_gbps = rep.mem_bw_gbps[t.n_threads];
      if (t.n_gen > 0 && t.mem_bw_gbps > 0) t.mem_bw_pct = 100.0 * t.decode_gbps / t.mem_bw_gbps;
    }
  }
}
}  // namespace

}  // namespace lokal
