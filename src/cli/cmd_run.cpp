// `lokal run`: generate text from a prompt, streaming it to stdout; timings on stderr.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/session.h"
#include "ops/vec_dot.h"

namespace lokal::cli {

namespace {
struct RunArgs {
  std::string model, prompt, prompt_file;
  int n_predict = 128;
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int repeat_last_n = 64;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int64_t seed = -1;
  int threads = 0;
  int64_t ctx = 0;
  int64_t batch = 256;
  bool no_mmap = false;
  bool mlock = false;
  bool verbose = false;
  std::string cache_type_k = "f16", cache_type_v = "f16";
};

DType parse_cache_type(const std::string& name, const char* flag) {
  auto t = type_from_name(name);
  if (!t || !kv_cache_type_supported(*t))
    throw Error(std::string(flag) + ": unsupported KV cache type '" + name + "' (supported: f32, f16, bf16, q8_0, q4_0)");
  return *t;
}

void run(const RunArgs& a) {
  if (!a.verbose) set_log_level(LogLevel::Warn);
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    std::ifstream f(a.prompt_file, std::ios::binary);
    if (!f) throw Error(a.prompt_file + ": cannot read prompt file");
    std::stringstream ss;
    ss << f.rdbuf();
    prompt = ss.str();
  }
  LoadOptions lo;
  lo.use_mmap = !a.no_mmap;
  lo.mlock = a.mlock;
  auto model = Model::load(a.model, lo);
  SessionOptions so;
  so.n_ctx = a.ctx;
  so.n_threads = a.threads;
  so.n_batch = a.batch;
  so.cache_type_k = parse_cache_type(a.cache_type_k, "--cache-type-k");
  so.cache_type_v = parse_cache_type(a.cache_type_v, "--cache-type-v");
  Session session(*model, so);

  SamplingParams sp;
  sp.temperature = a.temp;
  sp.top_k = a.top_k;
  sp.top_p = a.top_p;
  sp.min_p = a.min_p;
  sp.repeat_penalty = a.repeat_penalty;
  sp.repeat_last_n = a.repeat_last_n;
  sp.presence_penalty = a.presence_penalty;
  sp.frequency_penalty = a.frequency_penalty;
  sp.seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed) : std::random_device{}();

  // Refuse a prompt that cannot fit before printing anything else.
  const std::vector<int32_t> prompt_tokens = session.prepare_prompt(prompt);
  const int ft = model->config().file_type;
  std::fprintf(stderr, "model: %s (%s%s%s), %s, load %.1f ms\n", a.model.c_str(), model->config().arch.c_str(),
               ft >= 0 ? ", " : "", ft >= 0 ? file_type_name(ft).c_str() : "",
               format_bytes(static_cast<double>(model->weight_bytes())).c_str(), model->load_seconds() * 1e3);
  const ModelConfig& mc = model->config();
  const double mib = 1024.0 * 1024.0;
  const size_t kb = static_cast<size_t>(mc.n_layer * session.n_ctx()) * row_size(so.cache_type_k, mc.n_embd_k());
  const size_t vb = static_cast<size_t>(mc.n_layer * session.n_ctx()) * row_size(so.cache_type_v, mc.n_embd_v());
  std::fprintf(stderr, "kv cache: %.2f MiB (%lld cells, %lld layers, 1 seq), K (%s): %.2f MiB, V (%s): %.2f MiB\n",
               static_cast<double>(session.kv_bytes()) / mib, static_cast<long long>(session.n_ctx()),
               static_cast<long long>(mc.n_layer), type_name(so.cache_type_k), static_cast<double>(kb) / mib,
               type_name(so.cache_type_v), static_cast<double>(vb) / mib);
  std::fprintf(stderr, "memory: weights %.2f MiB (%s), kv cache %.2f MiB, compute %.2f MiB\n",
               static_cast<double>(model->weight_bytes()) / mib, lo.use_mmap ? "memory-mapped" : "read into RAM",
               static_cast<double>(session.kv_bytes()) / mib,
               static_cast<double>(session.scratch_bytes() + session.logits().size() * sizeof(float)) / mib);
  std::fprintf(stderr, "%d threads, kernels %s, seed %llu\n", session.n_threads(), vec_dot_isa(),
               static_cast<unsigned long long>(sp.seed));
  std::fflush(stderr);

  auto res = session.generate(prompt_tokens, a.n_predict, sp, [](const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputc('\n', stdout);
  std::fflush(stdout);
  std::fprintf(stderr, "\nprompt: %lld tokens in %.1f ms (%.2f tokens/s)\n", static_cast<long long>(res.n_prompt),
               res.prompt_seconds * 1e3, res.prompt_tps());
  std::fprintf(stderr, "generation: %zu tokens in %.1f ms (%.2f tokens/s), stop: %s\n", res.tokens.size(),
               res.gen_seconds * 1e3, res.gen_tps(), stop_reason_name(res.stop));
  if (res.stop == StopReason::ContextFull)
    std::fprintf(stderr, "warning: generation stopped because the context of %lld tokens is full (use -c)\n",
                 static_cast<long long>(session.n_ctx()));
}
}  // namespace

void register_run(CLI::App& app, int* rc) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text from a prompt");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required()->check(CLI::ExistingFile);
  auto* p = cmd->add_option("-p,--prompt", a->prompt, "Prompt text");
  auto* pf = cmd->add_option("-f,--file", a->prompt_file, "Read the prompt from a file")->check(CLI::ExistingFile);
  p->excludes(pf);
  cmd->add_option("-n,--n-predict", a->n_predict, "Tokens to generate (-1: until end of text or full context)")
      ->capture_default_str()->check(CLI::Range(-1, 1 << 30));
  cmd->add_option("--temp", a->temp, "Temperature (0: greedy)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", a->top_k, "Top-k (0: off)")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", a->top_p, "Top-p nucleus (1: off)")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--min-p", a->min_p, "Min-p relative to the top token (0: off)")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--repeat-penalty", a->repeat_penalty, "Repetition penalty (1: off)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--repeat-last-n", a->repeat_last_n, "Tokens considered by the penalties")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--presence-penalty", a->presence_penalty, "Presence penalty")->capture_default_str();
  cmd->add_option("--frequency-penalty", a->frequency_penalty, "Frequency penalty")->capture_default_str();
  cmd->add_option("-s,--seed", a->seed, "Random seed (-1: random)")->capture_default_str();
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("-c,--ctx-size", a->ctx, "Context size in tokens (0: model's, max 4096)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("-b,--batch-size", a->batch, "Prompt tokens per forward batch")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("--cache-type-k,--ctk", a->cache_type_k, "KV cache type for K: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->add_option("--cache-type-v,--ctv", a->cache_type_v, "KV cache type for V: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->add_flag("--no-mmap", a->no_mmap, "Read the model into memory instead of mapping it");
  cmd->add_flag("--mlock", a->mlock, "Lock the model in RAM");
  cmd->add_flag("-v,--verbose", a->verbose, "More logging");
  cmd->callback([a, rc] {
    run(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
