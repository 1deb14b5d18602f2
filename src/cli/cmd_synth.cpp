// `lokal synth`: write a random-weight GGUF with the shapes and tokenizer of a popular model.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include <unistd.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/log.h"
#include "tools/synth.h"

namespace lokal::cli {

namespace {
struct SynthArgs {
  std::string preset, type = "Q8_0", out, vocab;
  uint64_t seed = 42;
  int64_t layers = 0;
  int threads = 0;
  bool pure = false;
  bool pad_vocab = false;
  bool no_rope_freqs = false;
  bool dry_run = false;
  bool quiet = false;
};

std::string type_counts(const std::map<DType, int>& c) {
  std::string s;
  for (const auto& [t, n] : c) s += (s.empty() ? "" : ", ") + std::string(type_name(t)) + " " + std::to_string(n);
  return s;
}

void synth(const SynthArgs& a) {
  set_log_level(LogLevel::Warn);
  const SynthPreset* preset = find_synth_preset(a.preset);
  if (!preset) throw Error("unknown preset '" + a.preset + "' (presets: " + synth_preset_list() + ")");
  if (!a.vocab.empty()) check_input_file(a.vocab, "vocabulary GGUF file");
  if (!a.dry_run) check_output_file(a.out, {a.vocab});  // never the vocabulary file, a device, a FIFO or a folder
  SynthOptions o;
  o.preset = *preset;
  o.type = a.type;
  o.pure = a.pure;
  o.vocab_file = a.vocab;
  o.pad_vocab = a.pad_vocab;
  o.seed = a.seed;
  o.n_layer = a.layers;
  o.rope_freqs = !a.no_rope_freqs;
  o.n_threads = a.threads;
  const SynthPlan plan = synth_plan(o);
  const SynthPreset& p = plan.preset;
  std::fprintf(stderr, "synth: %s (%s shapes: %s, %lld layers, n_embd %lld, %lld/%lld heads, n_ff %lld, vocab %lld), %s%s\n",
               p.name.c_str(), p.model.c_str(), p.arch.c_str(), static_cast<long long>(p.n_layer),
               static_cast<long long>(p.n_embd), static_cast<long long>(p.n_head), static_cast<long long>(p.n_head_kv),
               static_cast<long long>(p.n_ff), static_cast<long long>(p.n_vocab), plan.type_name.c_str(),
               a.pure ? " (pure)" : "");
  std::fprintf(stderr, "synth: %zu tensors (%s), %.3f B parameters, %s of weights\n", plan.tensors.size(),
               type_counts(plan.count).c_str(), static_cast<double>(plan.n_params) * 1e-9,
               format_bytes(static_cast<double>(plan.bytes)).c_str());
  if (a.dry_run) {
    for (const auto& t : plan.tensors) {
      std::string shape;
      for (int64_t d : t.ne) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
      std::printf("%-28s %-5s [%s]\n", t.name.c_str(), type_name(t.type), shape.c_str());
    }
    return;
  }

  double last = -1;
  const bool tty = isatty(fileno(stderr));
  auto on_progress = [&](const SynthProgress& pr) {
    if (a.quiet) return;
    const bool done = pr.bytes_done == pr.bytes_total;
    if (!done && pr.seconds - last < (tty ? 0.2 : 5.0)) return;
    last = pr.seconds;
    const double frac = pr.bytes_total ? static_cast<double>(pr.bytes_done) / static_cast<double>(pr.bytes_total) : 1.0;
    const double eta = frac > 0.01 ? pr.seconds * (1.0 - frac) / frac : 0.0;
    std::fprintf(stderr, "%ssynth: %5.1f%%  %s / %s  %-26s  %.0f s, eta %.0f s%s", tty ? "\r" : "", frac * 100.0,
                 format_bytes(static_cast<double>(pr.bytes_done)).c_str(),
                 format_bytes(static_cast<double>(pr.bytes_total)).c_str(),
                 pr.tensor_name ? pr.tensor_name->c_str() : "", pr.seconds, eta, tty ? "   " : "\n");
    std::fflush(stderr);
  };
  const SynthResult r = synth_model(o, a.out, on_progress);
  if (tty && !a.quiet) std::fputc('\n', stderr);
  std::fprintf(stderr, "synth: wrote %s (%s, %lld-token vocabulary) in %.1f s\n", a.out.c_str(),
               format_bytes(static_cast<double>(r.file_size)).c_str(), static_cast<long long>(r.n_vocab), r.seconds);
}
}  // namespace

void register_synth(CLI::App& app, int* rc) {
  auto a = std::make_shared<SynthArgs>();
  CLI::App* cmd = app.add_subcommand("synth", "Write a random-weight GGUF with the shapes of a popular model");
  cmd->add_option("--preset", a->preset, "Model shapes: " + synth_preset_list())->required();
  cmd->add_option("--type", a->type,
                  "Weight type or llama-quantize mix: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, "
                  "Q4_K_S/M, Q5_K_S/M, Q6_K (Q3_K/Q4_K/Q5_K = the _M mix)")
      ->capture_default_str();
  auto* out = cmd->add_option("-o,--output", a->out, "Output GGUF file")->type_name("OUT.gguf");
  auto* vocab = cmd->add_option("--vocab", a->vocab, "Copy the tokenizer (tokenizer.* keys) from this vocab GGUF; its token count "
                                                     "must be the preset's");
  auto* pad = cmd->add_flag("--pad-vocab", a->pad_vocab, "Accept a smaller --vocab for a preset whose embedding is padded "
                                                        "(Qwen2.5) and pad it with [PADn] tokens as llama.cpp does");
  pad->needs(vocab);
  cmd->add_option("--seed", a->seed, "Random seed of the weights")->capture_default_str();
  cmd->add_option("--layers", a->layers, "Number of layers (default: the preset's)")->check(CLI::Range(int64_t(1), int64_t(4096)));
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_flag("--pure", a->pure, "Every matrix in the given type (no mix; output not bumped to Q6_K)");
  cmd->add_flag("--no-rope-freqs", a->no_rope_freqs, "Leave out rope_freqs.weight (Llama 3 rope scaling factors)");
  auto* dry = cmd->add_flag("--dry-run", a->dry_run, "Print the tensors and types; write nothing");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress line");
  out->excludes(dry);
  cmd->callback([a, rc] {
    if (a->out.empty() && !a->dry_run) throw Error("synth: an output file is required: -o FILE (or --dry-run)");
    synth(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
