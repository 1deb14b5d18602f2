// `lokal run`: generate text from a prompt, streaming it to stdout; timings on stderr.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/log.h"
#include "eval/bench.h"
#include "runtime/load.h"
#include "runtime/plan.h"
#include "runtime/session.h"
#include "ops/vec_dot.h"

namespace lokal::cli {

namespace {
struct RunArgs {
  std::string model, prompt, prompt_file;
  int n_predict = 128;
  SamplingArgs sampling;
  SpecArgs spec;
  std::string grammar_file, json_schema;
  bool no_parse_special = false;
  int threads = 0;
  int64_t ctx = 0;
  int64_t batch = kDefaultBatchSize;  // model/config.h: one default for every subcommand
  bool no_mmap = false;
  bool mlock = false;
  OffloadOptions offload;
  bool verbose = false;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  bool ctk_given = false, ctv_given = false, ctx_given = false, batch_given = false;
  std::string ram;            // --ram: plan the settings for this budget (runtime/plan.h)
  bool context_shift = false;
  int64_t n_keep = 0;
  bool allow_long_ctx = false;
};

void run(const RunArgs& a) {
  if (!a.verbose) set_log_level(LogLevel::Warn);
  check_input_file(a.model, "GGUF model file");
  if (!a.prompt_file.empty() && !std::filesystem::exists(a.prompt_file)) throw Error(a.prompt_file + ": no such file");
  // runtime/load.h: --ram plans the settings not given (a model that cannot fit is refused with the numbers), -c
  // above the trained context needs --allow-long-ctx, the rest is checked against MemAvailable; then the model is
  // loaded from the header opened once.
  LoadRequest req;
  req.path = a.model;
  req.n_ctx = a.ctx_given ? a.ctx : 0;
  req.allow_long_ctx = a.allow_long_ctx;
  req.ram = a.ram;
  if (a.ctk_given) req.type_k = parse_kv_type(a.cache_type_k, "--cache-type-k");
  if (a.ctv_given) req.type_v = parse_kv_type(a.cache_type_v, "--cache-type-v");
  req.n_batch = a.batch_given ? a.batch : 0;
  req.n_threads = a.threads;
  req.load.use_mmap = !a.no_mmap;
  req.load.mlock = a.mlock;
  req.load.offload = a.offload;
  req.on_plan = [](const Plan& plan) {
    std::fprintf(stderr, "plan: %s\n", plan.reason.c_str());
    for (const auto& n : plan.notes) std::fprintf(stderr, "plan: note: %s\n", n.c_str());
  };
  LoadedModel loaded = load_model_planned(req);
  const LoadOptions& lo = req.load;
  std::unique_ptr<Model>& model = loaded.model;
  SessionOptions so = loaded.session;
  so.overflow = a.context_shift ? SessionOptions::Overflow::Shift : SessionOptions::Overflow::Stop;
  so.n_keep = a.n_keep;
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    // Never more than the context could ever hold: n_ctx tokens of the longest token text in the vocabulary.
    const int64_t n_ctx = so.n_ctx > 0 ? so.n_ctx : std::min<int64_t>(model->config().n_ctx_train, 4096);
    size_t longest = 1;
    for (int32_t i = 0; i < model->vocab().n_tokens(); ++i) longest = std::max(longest, model->vocab().token_text(i).size());
    const uint64_t cap = static_cast<uint64_t>(n_ctx) * longest + 4096;
    prompt = read_text_input(a.prompt_file, cap,
                             "more than a " + std::to_string(n_ctx) + "-token context could ever hold; the prompt must fit in the context");
  }
  const SpecConfig spec_cfg = a.spec.config();
  Session session(*model, so);
  std::vector<std::string> spec_warnings;
  std::unique_ptr<SpecSetup> spec_setup;
  std::unique_ptr<SpecSeq> spec_seq;
  if (spec_cfg.enabled()) {
    spec_setup = std::make_unique<SpecSetup>(*model, spec_cfg, lo, &spec_warnings);
    spec_seq = spec_setup->make(session.pool(), session.n_ctx());
    session.set_speculator(spec_seq->spec.get());
  }
  // What lokal plan predicts for exactly these settings (checked against the measured peak at the end).
  // load_model_planned's, for the settings the session runs with; a draft adds its file (mapped) and its cache.
  MemoryEstimate predicted = loaded.estimate;
  if (spec_seq && spec_seq->model)
    predicted.total_bytes += spec_setup->draft_model()->gguf().file_size() + spec_seq->model->bytes();

  SamplingParams sp = a.sampling.params(model->vocab());
  sp.grammar = grammar_from_args(a.grammar_file, a.json_schema);

  // Refuse a prompt that cannot fit before printing anything else.
  const std::vector<int32_t> prompt_tokens = session.prepare_prompt(prompt, !a.no_parse_special);
  std::fprintf(stderr, "model: %s (%s, %s), %s, load %.1f ms\n", a.model.c_str(), model->config().arch.c_str(),
               model_file_type(model->gguf()).c_str(),  // the file type name every subcommand shows
               format_bytes(static_cast<double>(model->weight_bytes())).c_str(), model->load_seconds() * 1e3);
  if (model->packed_tensors() > 0)
    std::fprintf(stderr, "weights: %lld matrices (%s) repacked at load for the %s kernels (LOKAL_REPACK=0: off)\n",
                 static_cast<long long>(model->packed_tensors()),
                 format_bytes(static_cast<double>(model->packed_bytes())).c_str(), vec_dot_isa());
  const ModelConfig& mc = model->config();
  const KVCache& kv = session.kv();
  std::fprintf(stderr, "kv cache: %.2f MiB (%lld cells, %lld layers, 1 seq), K (%s): %.2f MiB, V (%s): %.2f MiB\n",
               static_cast<double>(kv.bytes()) / (1024.0 * 1024.0), static_cast<long long>(session.n_ctx()),
               static_cast<long long>(mc.n_layer), kv_type_label(kv.type_k()).c_str(),
               static_cast<double>(kv.bytes_k()) / (1024.0 * 1024.0), kv_type_label(kv.type_v()).c_str(),
               static_cast<double>(kv.bytes_v()) / (1024.0 * 1024.0));
  if (const DeviceModel* dm = model->device()) {
    const uint64_t w = dm->weight_bytes(), k = kv.device_bytes(), s = session.device_scratch_bytes();
    std::fprintf(stderr, "%s, int8 decode path %s\n", gpu_placement(*model).c_str(), dm->int8() ? "on" : "off");
    std::fprintf(stderr, "gpu memory: weights %s + kv cache %s + compute %s = %s used, %s predicted (lokal plan)\n",
                 format_bytes(w).c_str(), format_bytes(k).c_str(), format_bytes(s).c_str(), mib_bytes(w + k + s).c_str(),
                 mib_bytes(loaded.estimate.gpu_total_bytes).c_str());
  }
  const char* how = !lo.use_mmap ? "read into RAM" : model->mlocked() ? "memory-mapped, locked" : "memory-mapped, paged in";
  std::fprintf(stderr, "memory: weights %s, %s\n", mib_bytes(model->gguf().file_size()).c_str(), how);
  std::fprintf(stderr, "memory: kv cache %s\n", mib_bytes(kv.bytes()).c_str());
  std::fprintf(stderr, "memory: compute  %s (batch %lld)\n",
               mib_bytes(session.scratch_bytes() + session.logits().size() * sizeof(float)).c_str(),
               static_cast<long long>(so.n_batch));
  std::fprintf(stderr, "memory: total    %s predicted peak (lokal plan; incl. %.2f MiB runtime overhead)\n",
               mib_bytes(predicted.total_bytes).c_str(),
               static_cast<double>(predicted.overhead_bytes) / (1024.0 * 1024.0));
  std::fprintf(stderr, "%d threads, kernels %s, seed %llu\n", session.n_threads(), vec_dot_isa(),
               static_cast<unsigned long long>(sp.seed));
  if (spec_setup) {
    std::fprintf(stderr, "speculative: %s\n", spec_setup->describe().c_str());
    if (spec_seq->model)
      std::fprintf(stderr, "memory: draft    %s weights + %s cache and scratch\n",
                   mib_bytes(spec_setup->draft_model()->gguf().file_size()).c_str(),
                   mib_bytes(spec_seq->model->bytes()).c_str());
    if (const DeviceModel* dd = spec_setup->draft_model() ? spec_setup->draft_model()->device() : nullptr) {
      std::fprintf(stderr, "%s\n", gpu_placement(*spec_setup->draft_model(), "draft ").c_str());
      RunSettings ds = spec_cfg.draft_settings(loaded.settings);  // one sequence of the session's context
      ds.n_ctx = session.n_ctx();
      ds.n_parallel = 1;
      const uint64_t dw = dd->weight_bytes(), used = spec_setup->draft_device_bytes();
      std::fprintf(stderr, "gpu memory: draft weights %s + kv cache and compute %s = %s used, %s predicted (lokal plan)\n",
                   format_bytes(dw).c_str(), format_bytes(used - dw).c_str(), mib_bytes(used).c_str(),
                   mib_bytes(estimate_draft_memory(ModelFacts::read(spec_cfg.draft), ds).gpu_total_bytes).c_str());
    }
    for (const auto& w : spec_warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  }
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
  if (spec_setup) std::fprintf(stderr, "%s\n", spec_stats_line(spec_method(*spec_setup), res.spec).c_str());
  if (session.n_shifts() > 0)
    std::fprintf(stderr, "context: shifted %lld times (kept the first %lld tokens, dropped the older half of the rest)\n",
                 static_cast<long long>(session.n_shifts()), static_cast<long long>(a.n_keep));
  if (const uint64_t peak = peak_rss_bytes()) {
    std::fprintf(stderr, "memory: peak RSS %s measured (VmHWM), %s predicted (%+.1f%%)\n", mib_bytes(peak).c_str(),
                 mib_bytes(predicted.total_bytes).c_str(),
                 100.0 * (static_cast<double>(predicted.total_bytes) / static_cast<double>(peak) - 1.0));
    if (const DeviceModel* dm = model->device())
      std::fprintf(stderr, "memory: with -ngl the RSS also holds the Vulkan driver%s, which the prediction leaves out\n",
                   (dm->info().type == "cpu" ? " and, on this CPU driver (" + dm->info().name + "), the device memory"
                                             : std::string()).c_str());
  }
  if (res.stop == StopReason::ContextFull)
    std::fprintf(stderr, "warning: generation stopped because the context of %lld tokens is full (use -c, or --context-shift)\n",
                 static_cast<long long>(session.n_ctx()));
}
}  // namespace

void register_run(CLI::App& app, int* rc) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text from a prompt");
  cmd->add_option("-m,--model", a->model, "GGUF model file")->required();
  auto* p = cmd->add_option("-p,--prompt", a->prompt, "Prompt text");
  auto* pf = cmd->add_option("-f,--file", a->prompt_file, "Read the prompt from a file");
  p->excludes(pf);
  cmd->add_option("-n,--n-predict", a->n_predict, "Tokens to generate (-1: until end of text or full context)")
      ->capture_default_str()->check(CLI::Range(-1, 1 << 30));
  add_sampling_options(cmd, a->sampling);
  add_spec_options(cmd, a->spec);
  cmd->add_option("--grammar-file", a->grammar_file, "Constrain the output to a GBNF grammar (llama.cpp's syntax)");
  cmd->add_option("--json-schema", a->json_schema, "Constrain the output to JSON matching this schema (a file or inline JSON)");
  cmd->add_flag("--no-parse-special", a->no_parse_special, "Tokenize special-token text in the prompt (<|im_start|>) as "
                                                           "plain text instead of the tokens it names");
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("-c,--ctx-size", a->ctx, "Context size in tokens (0: model's, max 4096)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("-b,--batch-size", a->batch, "Prompt tokens per forward batch")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  auto* ctk = cmd->add_option("--cache-type-k", a->cache_type_k, "KV cache type for K: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  auto* ctv = cmd->add_option("--cache-type-v", a->cache_type_v, "KV cache type for V: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->add_option("--ram", a->ram, "Fit the run into this much RAM (e.g. 2GiB): context, KV types and batch not given "
                                   "are planned (lokal plan); refused with the numbers if it cannot fit");
  auto* shift = cmd->add_flag("--context-shift", a->context_shift, "When the context is full, drop the older half (after --keep "
                                                     "tokens) and go on, instead of stopping");
  cmd->add_option("--keep", a->n_keep, "Tokens at the start kept by --context-shift (BOS is always kept)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24))
      ->needs(shift);  // without --context-shift it would do nothing: refused ("--keep requires --context-shift")
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above the model's trained context");
  cmd->add_flag("--no-mmap", a->no_mmap, "Read the model into memory instead of mapping it");
  cmd->add_flag("--mlock", a->mlock, "Lock the model in RAM");
  add_gpu_options(cmd, a->offload);
  cmd->add_flag("-v,--verbose", a->verbose, "More logging");
  cmd->callback([a, rc, cmd, ctk, ctv] {
    a->ctk_given = ctk->count() > 0;
    a->ctv_given = ctv->count() > 0;
    a->ctx_given = cmd->get_option("--ctx-size")->count() > 0;
    a->batch_given = cmd->get_option("--batch-size")->count() > 0;
    run(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
