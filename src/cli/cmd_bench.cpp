// `lokal bench`: prefill / decode speed, load time, peak memory and memory-bandwidth efficiency of a model.
// Markdown table (like llama-bench's) by default; --json prints llama-bench's JSON fields plus lokal's extras.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include "cli/commands.h"
#include "core/safe_io.h"
#include "core/error.h"
#include "core/log.h"
#include "eval/bench.h"
#include "ops/attention.h"

namespace lokal::cli {

namespace {
struct BenchArgs {
  std::string model;
  // Comma lists, as given (comma_list validates them; list_values converts).
  std::vector<std::string> n_prompt{"512"}, n_gen{"128"}, threads{"0"}, depth{"0"}, parallel;
  int reps = 5;
  int64_t batch = kDefaultBatchSize;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  bool json = false;
  bool no_mmap = false;
  OffloadOptions offload;
  bool no_bw = false;
  int bw_mib = 1024;
  bool quiet = false;
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}


std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

nlohmann::ordered_json to_json(const BenchReport& r, const BenchTest& t) {
  nlohmann::ordered_json j;
  // llama-bench's fields (same names and meanings; GPU fields fixed for a CPU-only runtime).
  j["build_commit"] = "lokal";
  j["build_number"] = 0;
  j["cpu_info"] = r.cpu_info;
  j["gpu_info"] = r.gpu;
  j["backends"] = r.gpu.empty() ? "CPU" : "Vulkan";
  j["model_filename"] = r.model_filename;
  j["model_type"] = r.model_type;
  j["model_size"] = r.model_size;
  j["model_n_params"] = r.model_n_params;
  j["n_batch"] = r.n_batch;
  j["n_ubatch"] = r.n_batch;
  j["n_threads"] = t.n_threads;
  j["cpu_mask"] = "0x0";
  j["cpu_strict"] = false;
  j["poll"] = 50;
  j["type_k"] = lower(type_name(r.cache_type_k));
  j["type_v"] = lower(type_name(r.cache_type_v));
  j["n_gpu_layers"] = r.n_gpu_layers;
  j["split_mode"] = "layer";
  j["main_gpu"] = r.gpu_device;  // llama-bench: the device that holds the model (0 on the CPU)
  j["no_kv_offload"] = false;
  j["flash_attn"] = false;
  j["tensor_split"] = "0.00";
  j["use_mmap"] = r.use_mmap;
  j["embeddings"] = false;
  j["n_prompt"] = t.n_prompt;
  j["n_gen"] = t.n_gen;
  j["n_depth"] = t.depth;
  j["n_parallel"] = t.n_parallel;
  j["test_time"] = t.test_time;
  j["avg_ns"] = static_cast<uint64_t>(std::llround(t.avg_ns));
  j["stddev_ns"] = static_cast<uint64_t>(std::llround(t.stddev_ns));
  j["avg_ts"] = t.avg_ts;
  j["stddev_ts"] = t.stddev_ts;
  nlohmann::ordered_json sns = nlohmann::ordered_json::array();
  for (double v : t.samples_ns) sns.push_back(static_cast<uint64_t>(std::llround(v)));
  j["samples_ns"] = sns;
  j["samples_ts"] = t.samples_ts;
  // lokal's extras.
  j["test"] = t.name;
  j["first_ns"] = static_cast<uint64_t>(std::llround(t.first_ns));
  j["first_ts"] = t.first_ts;
  j["load_ms"] = r.load_ms;
  j["peak_rss_bytes"] = r.peak_rss_bytes;
  j["decode_bytes_per_token"] = r.decode_bytes_per_token;
  j["decode_gbps"] = t.decode_gbps;
  j["mem_bw_gbps"] = t.mem_bw_gbps;
  j["mem_bw_pct"] = t.mem_bw_pct;
  j["kernels"] = r.kernels;
  j["gpu"] = r.gpu;
  if (!r.gpu.empty()) j["gpu_device"] = r.gpu_device;
  j["gpu_output"] = r.gpu_output;
  j["gpu_int8"] = r.gpu_int8;
  j["gpu_weight_bytes"] = r.gpu_bytes;
  j["gpu_submits"] = t.gpu_submits;
  j["gpu_reused_pct"] = t.gpu_reused_pct;
  j["gpu_dispatches"] = t.gpu_dispatches;
  j["gpu_host_us"] = t.gpu_host_us;
  j["gpu_device_us"] = t.gpu_device_us;
  j["file_type"] = r.file_type;  // model_file_type: the name info, plan and compare show
  return j;
}

std::string params_str(uint64_t n) {
  if (n >= 1000000000ULL) return fmt("%.2f B", static_cast<double>(n) * 1e-9);
  if (n >= 1000000ULL) return fmt("%.2f M", static_cast<double>(n) * 1e-6);
  return fmt("%.2f K", static_cast<double>(n) * 1e-3);
}

void print_markdown(const BenchReport& r) {
  struct Row {
    std::vector<std::string> cells;
  };
  const std::vector<std::string> head = {"model", "size", "params", "backend", "threads", "test", "t/s",
                                         "first t/s", "load ms", "peak RSS", "GB/s", "% mem bw"};
  const std::vector<bool> right = {false, true, true, false, true, true, true, true, true, true, true, true};
  std::vector<Row> rows;
  for (const BenchTest& t : r.tests) {
    Row row;
    row.cells = {r.model_type,
                 format_bytes(static_cast<double>(r.model_size)),
                 params_str(r.model_n_params),
                 r.gpu.empty() ? "CPU" : "Vulkan",
                 std::to_string(t.n_threads),
                 t.name,
                 fmt("%.2f", t.avg_ts) + " ± " + fmt("%.2f", t.stddev_ts),
                 fmt("%.2f", t.first_ts),
                 fmt("%.1f", r.load_ms),
                 fmt("%.0f MiB", static_cast<double>(r.peak_rss_bytes) / (1024.0 * 1024.0)),
                 t.n_gen > 0 ? fmt("%.2f", t.decode_gbps) : "-",
                 t.n_gen > 0 && t.mem_bw_gbps > 0 ? fmt("%.1f%%", t.mem_bw_pct) : "-"};
    rows.push_back(std::move(row));
  }
  // Display width (the ± sign is one column but two bytes).
  auto width = [](const std::string& s) {
    size_t w = 0;
    for (unsigned char ch : s) w += (ch & 0xC0) != 0x80;
    return w;
  };
  std::vector<size_t> w(head.size());
  for (size_t i = 0; i < head.size(); ++i) {
    w[i] = std::max<size_t>(width(head[i]), 3);
    for (const Row& row : rows) w[i] = std::max(w[i], width(row.cells[i]));
  }
  auto cell = [&](const std::string& s, size_t i) {
    const std::string pad(w[i] - width(s), ' ');
    return right[i] ? pad + s : s + pad;
  };
  std::string line = "|";
  for (size_t i = 0; i < head.size(); ++i) line.append(" ").append(cell(head[i], i)).append(" |");
  std::printf("%s\n", line.c_str());
  line = "|";
  for (size_t i = 0; i < head.size(); ++i) {
    std::string dashes(w[i], '-');
    if (right[i]) dashes.back() = ':';
    line.append(" ").append(dashes).append(" |");
  }
  std::printf("%s\n", line.c_str());
  for (const Row& row : rows) {
    line = "|";
    for (size_t i = 0; i < head.size(); ++i) line.append(" ").append(cell(row.cells[i], i)).append(" |");
    std::printf("%s\n", printable(line).c_str());  // cells quote file names and metadata
  }
  std::printf("\n");
  std::printf("decode reads %s of weights per token; ", format_bytes(static_cast<double>(r.decode_bytes_per_token)).c_str());
  if (r.mem_bw_gbps.empty()) {
    std::printf("memory bandwidth not measured\n");
  } else {
    std::string bw;
    for (const auto& [nt, gbps] : r.mem_bw_gbps)
      bw += (bw.empty() ? "" : ", ") + fmt("%.1f GB/s", gbps) + " with " + std::to_string(nt) + " threads";
    std::printf("measured memory read bandwidth: %s\n", bw.c_str());
  }
  std::printf("kernels: %s; cpu: %s; first t/s: the first (cold) run, not in the mean of the %zu warm runs\n",
              r.kernels.c_str(), r.cpu_info.empty() ? "unknown" : r.cpu_info.c_str(),
              r.tests.empty() ? size_t{0} : r.tests[0].samples_ts.size());
  if (!r.gpu.empty())
    std::printf("gpu: %lld layers%s on %s, device %u (%s of weights on the device, int8 decode path %s); the "
                "bandwidth figures above are the CPU's\n",
                static_cast<long long>(r.n_gpu_layers), r.gpu_output ? " and the output" : "", r.gpu.c_str(),
                r.gpu_device, format_bytes(static_cast<double>(r.gpu_bytes)).c_str(), r.gpu_int8 ? "on" : "off");
  for (const BenchTest& t : r.tests)
    if (t.gpu_submits > 0)
      std::printf("gpu %s: %.1f command buffers per run (%.0f%% reused), %.0f dispatches each; per command buffer "
                  "%.1f us of host recording, then %.1f us until the device was done\n",
                  t.name.c_str(), t.gpu_submits, t.gpu_reused_pct, t.gpu_dispatches, t.gpu_host_us, t.gpu_device_us);
}

void bench(const BenchArgs& a) {
  set_log_level(LogLevel::Warn);
  if (std::filesystem::is_directory(a.model)) throw Error(a.model + ": is a directory, not a model file");
  BenchOptions o;
  o.model = a.model;
  o.n_prompt = list_values<int>(a.n_prompt);
  o.n_gen = list_values<int>(a.n_gen);
  o.n_threads = list_values<int>(a.threads);
  o.depth = list_values<int64_t>(a.depth);
  o.n_parallel = list_values<int>(a.parallel);
  o.reps = a.reps;
  o.n_batch = a.batch;
  o.cache_type_k = parse_kv_type(a.cache_type_k, "--cache-type-k");
  o.cache_type_v = parse_kv_type(a.cache_type_v, "--cache-type-v");
  o.use_mmap = !a.no_mmap;
  o.offload = a.offload;
  o.measure_bandwidth = !a.no_bw;
  o.bandwidth_bytes = static_cast<size_t>(a.bw_mib) << 20;
  const bool tty = isatty(fileno(stderr));
  if (!a.quiet) {
    o.log = [tty](const std::string& s) {
      std::fprintf(stderr, tty ? "\r%-70s" : "%s\n", s.c_str());
      std::fflush(stderr);
    };
  }
  const BenchReport r = run_bench(o);
  if (!a.quiet && tty) std::fprintf(stderr, "\r%-70s\r", "");
  if (a.json) {
    nlohmann::ordered_json arr = nlohmann::ordered_json::array();
    for (const BenchTest& t : r.tests) arr.push_back(to_json(r, t));
    std::printf("%s\n", arr.dump(2).c_str());
  } else {
    print_markdown(r);
  }
}
}  // namespace

void register_bench(CLI::App& app, int* rc) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure prefill and decode speed (llama-bench style)");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens per prefill test (comma list; 0: none)")
      ->capture_default_str()->check(comma_list(CLI::Range(0, 1 << 20)));
  cmd->add_option("-n,--n-gen", a->n_gen, "Tokens per decode test (comma list; 0: none)")
      ->capture_default_str()->check(comma_list(CLI::Range(0, 1 << 20)));
  cmd->add_option("-r,--repetitions", a->reps, "Warm runs per test (after one first run)")
      ->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("-t,--threads", a->threads, "Threads (comma list; 0: all)")
      ->capture_default_str()->check(comma_list(CLI::Range(0, 1024)));
  cmd->add_option("-d,--depth", a->depth, "Tokens of context before each test (comma list)")
      ->capture_default_str()->check(comma_list(CLI::Range(int64_t(0), int64_t(1) << 22)));
  cmd->add_option("--parallel", a->parallel,
                  "Sequences evaluated together (comma list, like llama-batched-bench's -npl): per N, ppP xN evaluates "
                  "N prompts of P tokens together, tgN xN generates N tokens for each; t/s is the aggregate")
      ->check(comma_list(CLI::Range(1, 4096)));
  cmd->add_option("-b,--batch-size", a->batch, "Prompt tokens per forward micro-batch")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("--cache-type-k", a->cache_type_k, "KV cache type for K: f32, f16, bf16, q8_0, q4_0")
      ->capture_default_str();
  cmd->add_option("--cache-type-v", a->cache_type_v, "KV cache type for V: f32, f16, bf16, q8_0, q4_0")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "Print a JSON array of results (llama-bench's field names)");
  cmd->add_flag("--no-mmap", a->no_mmap, "Read the model into memory instead of mapping it");
  add_gpu_options(cmd, a->offload);
  cmd->add_flag("--no-mem-bw", a->no_bw, "Skip the memory bandwidth measurement");
  cmd->add_option("--mem-bw-mib", a->bw_mib, "Buffer size of the memory bandwidth measurement (MiB)")
      ->capture_default_str()->check(CLI::Range(16, 1 << 20));
  cmd->add_flag("-q,--quiet", a->quiet, "No progress lines on stderr");
  cmd->callback([a, rc] {
    bench(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
