// eval/bench.h - `lokal bench`: prefill and decode speed of a model, llama-bench style.
//
// For every thread count, every depth D and every test (ppP: prefill of P tokens; tgN: decode of N tokens one
// at a time), one first run and `reps` warm runs, each from a reset context: D tokens of context are fed first
// (not timed), then the timed part. Token ids are random (seeded), so any vocabulary works. Speeds are tokens
// per second per run; the warm runs give mean and standard deviation (llama-bench's avg_ts/stddev_ts), the first
// run is reported on its own.
//
// Multi-sequence tests (BenchOptions::n_parallel) run through the runtime's KV pool and Forward::eval_batch: the
// prompts of all N sequences in one batch (micro-batches of n_batch), then per step one token of each sequence.
//
// Decode efficiency: the bytes of weights one decoded token reads (every layer matrix, norms and biases, the
// output matrix, one row of the token embedding) times the decode speed gives the achieved GB/s, compared with
// the machine's memory read bandwidth, measured here: threads streaming over a buffer much larger than the last
// level cache, best of a few runs, with the same thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/types.h"
#include "model/config.h"
#include "model/offload.h"

namespace lokal {

struct BenchOptions {
  std::string model;
  std::vector<int> n_prompt{512};    // prefill tests (0: none)
  std::vector<int> n_gen{128};       // decode tests (0: none)
  std::vector<int> n_threads{0};     // 0: all hardware threads
  std::vector<int64_t> depth{0};     // tokens already in the context
  // Multi-sequence tests (llama-batched-bench's -npl): for each N, N sequences each get a prompt of P tokens
  // (evaluated together, "ppP xN"), then generate n tokens each, one batch of N tokens per step ("tgn xN"); speeds
  // are aggregate tokens/s over all sequences. Non-empty: only these tests run.
  std::vector<int> n_parallel;
  int reps = 5;                      // warm runs per test (after one first run)
  int64_t n_batch = kDefaultBatchSize;  // prompt tokens per forward micro-batch
  DType cache_type_k = DType::F16;   // KV cache element types (as `lokal run`, and llama-bench's default f16)
  DType cache_type_v = DType::F16;
  bool use_mmap = true;
  OffloadOptions offload;            // GPU offload (-ngl, --device)
  bool measure_bandwidth = true;
  size_t bandwidth_bytes = size_t{1} << 30;
  int bandwidth_runs = 5;
  uint64_t seed = 1234;
  std::function<void(const std::string&)> log;  // progress lines (no newline)
};

struct BenchTest {
  std::string name;         // "pp512", "tg128", "tg128 @ d2048"
  int n_prompt = 0, n_gen = 0;
  int64_t depth = 0;
  int n_threads = 0;
  int n_parallel = 1;       // sequences evaluated together (avg_ts is their aggregate speed)
  std::string test_time;    // ISO 8601 UTC, when the test started
  double first_ns = 0, first_ts = 0;
  std::vector<double> samples_ns, samples_ts;  // warm runs
  double avg_ns = 0, stddev_ns = 0, avg_ts = 0, stddev_ts = 0;
  double decode_gbps = 0;   // tg: weight bytes per token * avg_ts / 1e9
  double mem_bw_gbps = 0;   // measured read bandwidth at this thread count (0: not measured)
  double mem_bw_pct = 0;    // decode_gbps as % of mem_bw_gbps
  // GPU runs, over the warm runs (gpu::Device::SubmitStats): command buffers submitted per run, the % of them
  // reused (gpu::CommandCache), dispatches per submission, and per submission the host's time recording and
  // building it and the time until the device was done. All 0 on the CPU.
  double gpu_submits = 0, gpu_reused_pct = 0, gpu_dispatches = 0, gpu_host_us = 0, gpu_device_us = 0;
};

struct BenchReport {
  std::string model_filename;
  std::string model_type;   // "llama 1.1B Q4_0"
  std::string arch, file_type;
  uint64_t model_size = 0;  // bytes of tensor data
  uint64_t model_n_params = 0;
  uint64_t decode_bytes_per_token = 0;
  double load_ms = 0;
  uint64_t peak_rss_bytes = 0;
  std::map<int, double> mem_bw_gbps;  // by thread count
  std::string cpu_info;
  std::string kernels;      // SIMD level of the dot products
  int64_t n_batch = 0;
  DType cache_type_k = DType::F16, cache_type_v = DType::F16;
  bool use_mmap = true;
  int64_t n_gpu_layers = 0;  // layers offloaded (0: CPU only)
  bool gpu_output = false;   // the output matrix on the GPU too
  std::string gpu;           // the device's name (empty: CPU only)
  uint32_t gpu_device = 0;   // its index (lokal info --devices)
  bool gpu_int8 = false;     // decode's products of int8 weight types dot int8 activations (gpu/kernels.h)
  uint64_t gpu_bytes = 0;    // device memory of the weights
  std::vector<BenchTest> tests;
};

// Loads the model and runs every test. Throws lokal::Error for bad options or a bad model.
BenchReport run_bench(const BenchOptions& opt);

// Memory read bandwidth in GB/s (1e9 bytes/s): n_threads threads each summing its slice of a `bytes` buffer,
// best of `runs` passes.
double measure_read_bandwidth(int n_threads, size_t bytes, int runs);

// The process's peak resident set size (VmHWM of /proc/self/status), 0 if unavailable.
uint64_t peak_rss_bytes();

}  // namespace lokal
