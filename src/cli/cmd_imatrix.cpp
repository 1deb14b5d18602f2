// `lokal imatrix -m MODEL -f TEXT -o FILE`: collects an importance matrix (mean squared activation per input
// column of every weight matrix, eval/imatrix.h) over a text, chunked like `lokal perplexity`, and writes it in
// llama.cpp's imatrix .dat format. Progress on stderr; a one-line summary on stdout.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/log.h"
#include "eval/imatrix.h"

namespace lokal::cli {

namespace {

struct ImatrixArgs {
  std::string model, text_file, output = "imatrix.dat";
  int64_t ctx = 0;
  int64_t chunks = -1;
  int64_t batch = kDefaultBatchSize;  // model/config.h: one default for every subcommand
  int threads = 0;
  bool process_output = false;
  bool allow_long_ctx = false;
  bool covariance = false;
};

void run_imatrix(const ImatrixArgs& a) {
  set_log_level(LogLevel::Warn);
  const auto t0 = std::chrono::steady_clock::now();
  check_input_file(a.model, "GGUF model file");
  check_output_file(a.output, {a.model, a.text_file});  // before the (possibly long) computation
  if (a.covariance) check_output_file(a.output + ".cov", {a.model, a.text_file});
  const std::string text = read_text_file(a.text_file);
  auto model = Model::load(a.model);
  ImatrixOptions o;
  o.ppl.n_ctx = a.ctx;
  o.ppl.n_chunks = a.chunks;
  o.ppl.n_batch = a.batch;
  o.ppl.allow_long_ctx = a.allow_long_ctx;
  o.n_threads = a.threads;
  o.process_output = a.process_output;
  o.covariance = a.covariance;
  std::fprintf(stderr, "imatrix: %s on %s%s\n", a.model.c_str(), a.text_file.c_str(),
               a.process_output ? " (with output.weight)" : "");
  std::fflush(stderr);
  ImatrixResult r = compute_imatrix(*model, text, a.text_file, o, [](int64_t c, int64_t n, double ppl) {
    std::fprintf(stderr, "[%lld/%lld] chunk done, PPL = %.4f\n", static_cast<long long>(c), static_cast<long long>(n), ppl);
    std::fflush(stderr);
  });
  write_imatrix(a.output, r.matrix);
  if (a.covariance) {
    write_covariance(a.output + ".cov", r.cov);
    std::fprintf(stderr, "wrote %s.cov: input covariance of %zu matrices\n", a.output.c_str(), r.cov.entries.size());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %zu entries from %lld chunks of %lld tokens (%lld tokens), PPL = %.4f +/- %.5f, %.2f s\n",
              a.output.c_str(), r.matrix.entries.size(), static_cast<long long>(r.ppl.n_chunks),
              static_cast<long long>(r.ppl.n_ctx), static_cast<long long>(r.n_tokens), r.ppl.ppl, r.ppl.ppl_err, secs);
  std::fflush(stdout);
}

}  // namespace

void register_imatrix(CLI::App& app, int* rc) {
  auto a = std::make_shared<ImatrixArgs>();
  CLI::App* cmd = app.add_subcommand("imatrix", "Compute an importance matrix for quantize --imatrix (llama.cpp's .dat format)");
  cmd->add_option("-m,--model", a->model, "GGUF model file (ideally F32/F16)")->required();
  cmd->add_option("-f,--file", a->text_file, "Text to run the model on")->required();
  cmd->add_option("-o,--output", a->output, "Importance matrix file to write")->capture_default_str();
  cmd->add_option("-c,--ctx-size", a->ctx, "Tokens per chunk (0: min(512, model's trained context))")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--chunks", a->chunks, "Chunks to process (-1: all)")
      ->capture_default_str()->check(CLI::Range(int64_t(-1), int64_t(1) << 40));
  cmd->add_option("-b,--batch-size", a->batch, "Tokens per forward batch")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_flag("--process-output", a->process_output, "Also collect output.weight (off by default, as in llama.cpp)");
  cmd->add_flag("--covariance", a->covariance,
                "Also write OUTPUT.cov: the full input covariance of each matrix (for quantize's GPTQ method)");
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above the model's trained context");
  cmd->callback([a, rc] {
    run_imatrix(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
