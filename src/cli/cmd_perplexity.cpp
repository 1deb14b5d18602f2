// `lokal perplexity`: perplexity of a model on a text file, as llama-perplexity computes it.
// Progress goes to stderr; the result line ("PPL = X +/- Y ...") to stdout.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/log.h"
#include "eval/perplexity.h"
#include "ops/vec_dot.h"

namespace lokal::cli {

std::string read_text_file(const std::string& path) {
  return read_text_input(path, kMaxTextBytes,
                         "the most lokal reads as a text to score; cut it, or use --chunks on a shorter part");
}

namespace {
struct PplArgs {
  std::string model, text_file, save_logits;
  int64_t ctx = 0;
  int64_t chunks = -1;
  int64_t batch = kDefaultBatchSize;  // model/config.h: one default for every subcommand
  int threads = 0;
  bool allow_long_ctx = false;
  bool verbose = false;
  OffloadOptions offload;
};

void perplexity(const PplArgs& a) {
  if (!a.verbose) set_log_level(LogLevel::Warn);
  const auto t_start = std::chrono::steady_clock::now();
  check_input_file(a.model, "GGUF model file");
  if (!a.save_logits.empty()) check_output_file(a.save_logits, {a.model, a.text_file});  // before any work
  const std::string text = read_text_file(a.text_file);
  LoadOptions lo;
  lo.offload = a.offload;
  auto model = Model::load(a.model, lo);
  PerplexityOptions po;
  po.n_ctx = a.ctx;
  po.n_chunks = a.chunks;
  po.n_batch = a.batch;
  po.allow_long_ctx = a.allow_long_ctx;
  const PerplexityPlan plan = plan_perplexity(*model, text, a.text_file, po);
  std::unique_ptr<LogProbWriter> writer;  // before any output: a bad path is the only error line
  std::vector<ScoredRowSink*> sinks;
  if (!a.save_logits.empty()) {
    writer = std::make_unique<LogProbWriter>(a.save_logits, plan);
    sinks.push_back(writer.get());
  }
  ThreadPool pool(a.threads > 0 ? a.threads : ThreadPool::default_threads());

  std::fprintf(stderr, "model: %s (%s), load %.1f ms, kernels %s, %d threads\n", a.model.c_str(),
               model->config().arch.c_str(), model->load_seconds() * 1e3, vec_dot_isa(), pool.size());
  std::fprintf(stderr, "text: %s, %lld tokens; %lld chunks of %lld tokens, scoring the last %lld of each%s\n",
               a.text_file.c_str(), static_cast<long long>(plan.n_text_tokens), static_cast<long long>(plan.n_chunks),
               static_cast<long long>(plan.n_ctx), static_cast<long long>(plan.n_scored),
               plan.bos_replaced ? " (first token = BOS)" : "");
  if (const std::string g = gpu_placement(*model); !g.empty()) std::fprintf(stderr, "%s\n", g.c_str());
  std::fflush(stderr);

  PerplexityResult r = run_perplexity(*model, plan, pool, a.batch, sinks, [](int64_t c, int64_t n, double ppl) {
    std::fprintf(stderr, "[%lld/%lld] PPL = %.4f\n", static_cast<long long>(c), static_cast<long long>(n), ppl);
    std::fflush(stderr);
  });
  if (writer) {
    writer->finish();
    std::fprintf(stderr, "saved log-probabilities of %lld tokens to %s\n", static_cast<long long>(r.n_scored),
                 a.save_logits.c_str());
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("PPL = %.4f +/- %.5f over %lld scored tokens (%lld chunks of %lld); %lld tokens evaluated in %.2f s "
              "(%.1f tokens/s), %.2f s in all\n",
              r.ppl, r.ppl_err, static_cast<long long>(r.n_scored), static_cast<long long>(r.n_chunks),
              static_cast<long long>(r.n_ctx), static_cast<long long>(r.n_evaluated), r.eval_seconds, r.prefill_tps(),
              total);
  std::fflush(stdout);
}
}  // namespace

void register_perplexity(CLI::App& app, int* rc) {
  auto a = std::make_shared<PplArgs>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a model on a text (llama-perplexity's method)");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  cmd->add_option("-f,--file", a->text_file, "Text file to score")->required();
  cmd->add_option("-c,--ctx-size", a->ctx, "Tokens per chunk (0: min(512, model's trained context))")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--chunks", a->chunks, "Chunks to score (-1: all)")
      ->capture_default_str()->check(CLI::Range(int64_t(-1), int64_t(1) << 40));
  cmd->add_option("-b,--batch-size", a->batch, "Tokens per forward batch")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("--save-logits", a->save_logits, "Write the scored log-probabilities to FILE (see eval/perplexity.h)");
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above the model's trained context");
  cmd->add_flag("-v,--verbose", a->verbose, "More logging");
  add_gpu_options(cmd, a->offload);
  cmd->callback([a, rc] {
    perplexity(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
