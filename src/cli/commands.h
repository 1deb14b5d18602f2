// cli/commands.h - subcommands of the `lokal` binary.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/types.h"
#include "runtime/load.h"
#include "runtime/sampling.h"
#include "runtime/speculative.h"

namespace lokal {
class Grammar;
class Vocab;
}

namespace lokal::cli {

// Each register_* adds a subcommand to `app`; its callback runs the command and stores the
// process exit code in *rc.
void register_run(CLI::App& app, int* rc);
void register_info(CLI::App& app, int* rc);
void register_perplexity(CLI::App& app, int* rc);
void register_compare(CLI::App& app, int* rc);
void register_quantize(CLI::App& app, int* rc);
void register_imatrix(CLI::App& app, int* rc);
void register_synth(CLI::App& app, int* rc);
void register_bench(CLI::App& app, int* rc);
void register_convert(CLI::App& app, int* rc);
void register_export_hf(CLI::App& app, int* rc);
void register_plan(CLI::App& app, int* rc);
void register_batch(CLI::App& app, int* rc);
void register_serve(CLI::App& app, int* rc);
void register_template(CLI::App& app, int* rc);
void register_chat(CLI::App& app, int* rc);
void register_models(CLI::App& app, int* rc);

// Store names as models (cli/cmd_models.cpp): in the arguments of any command but `models`, the value of
// -m/--model/--draft/--model-draft that is not an existing file but a name in the model store (--models-dir DIR,
// taken out of the arguments here, else $LOKAL_MODELS, else ~/.local/share/lokal/models) becomes the stored file's
// path. For the first such model, serve gets --alias NAME, and a preset's settings become options (ctx size, KV types,
// system prompt, chat template, draft, sampling) where the command has them and the user did not give them.
std::vector<std::string> resolve_store_models(std::vector<std::string> args, const CLI::App& app);

// The most bytes a text input (perplexity, imatrix, compare) may have: 1 GiB (~250 M tokens).
inline constexpr uint64_t kMaxTextBytes = uint64_t{1} << 30;
// The whole text file (or pipe) as bytes, at most kMaxTextBytes; throws lokal::Error naming it otherwise.
std::string read_text_file(const std::string& path);

// GPU offload (model/offload.h): -ngl/--gpu-layers/--n-gpu-layers N (-ngl via canonical_args) (the last N layers on the GPU; 99: all, with the
// output) and --device I (a Vulkan device of `lokal info --devices`).
void add_gpu_options(CLI::App* cmd, OffloadOptions& o);
// "gpu: N of L layers on NAME (output on the GPU|CPU), device I" for a model with GPU offload (`who`: "" or
// "draft "), else "".
std::string gpu_placement(const Model& m, const char* who = "");

// A KV cache type name (f32, f16, bf16, q8_0, q4_0); throws lokal::Error naming `flag` otherwise.
DType parse_kv_type(const std::string& name, const char* flag);

// "1.23 MiB" / "512 B": lokal::format_bytes (runtime/load.h), the same figures as load_model_planned's messages.
using lokal::format_bytes;
// "12.34 MiB (12939428 bytes)": the memory lines of run and batch (exact bytes, for scripts and the RSS tests).
std::string mib_bytes(uint64_t bytes);

// The model of a subcommand that takes it both as -m/--model and as a positional (info, export-hf, quantize):
// exactly one of the two. Neither or both is a parse error (exit status 2) like a missing required option:
// "info: no model given: MODEL.gguf or -m MODEL.gguf", "info: the model is given twice (-m A and B): give it once".
std::string one_model(const std::string& cmd, const std::string& from_flag, const std::string& positional);

// A comma-list option ("-p 128,512"; repeating the flag adds items). CLI11's delimiter drops empty items silently,
// so these options take the raw strings and this validator checks them: an empty item (8,,16, a leading or trailing
// comma, an empty argument) is refused naming the flag, and every item must pass `item` (e.g. CLI::Range(0, 1024)).
CLI::Validator comma_list(const CLI::Validator& item = CLI::Validator());
// The items of a comma-list option's raw strings, in order.
std::vector<std::string> list_items(const std::vector<std::string>& raw);
// The same, converted (after comma_list validated them, so they convert).
template <class T>
std::vector<T> list_values(const std::vector<std::string>& raw) {
  std::vector<T> out;
  for (const std::string& s : list_items(raw)) {
    T v{};
    CLI::detail::lexical_cast(s, v);
    out.push_back(v);
  }
  return out;
}

// Option names are llama.cpp's, one set for every subcommand: -m/--model, -c/--ctx-size, -b/--batch-size,
// -t/--threads, -n/--n-predict, -ctk/--cache-type-k, -ctv/--cache-type-v (-np/--parallel). CLI11 declares the long
// names (and one-letter short ones); llama.cpp's multi-letter single-dash names (-ctk, -ctv, -np) and lokal's older
// hidden spellings (--ctk, --ctv) are rewritten to the long names before parsing, also in the NAME=VALUE form, up
// to a "--" argument. args[0] is the program name.
std::vector<std::string> canonical_args(std::vector<std::string> args);
// The multi-letter single-dash name shown for a long option name without dashes ("cache-type-k" -> "-ctk"), or "".
std::string llama_short_name(const std::string& long_name);
// CLI11's help formatter showing those names too ("-ctk,--cache-type-k TEXT"); subcommands inherit it from the app.
std::shared_ptr<CLI::Formatter> make_formatter();

// `lokal usage`: the synopsis of every subcommand in README.md's style, generated from the CLI11 definitions
// (README's "## Usage" block is this output: scripts/update-readme-usage.sh). Hidden from --help.
void register_usage(CLI::App& app, int* rc);
// That synopsis: one entry per visible subcommand, lines wrapped at `width` columns.
std::string usage_text(const CLI::App& app, size_t width = 118);

// The sampling options shared by chat (and the same names as run and batch): --temp, --top-k, --top-p, --min-p,
// --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty, -s/--seed (-1: random), --ignore-eos,
// -l/--logit-bias.
struct SamplingArgs {
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int repeat_last_n = 64;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int64_t seed = -1;
  bool ignore_eos = false;              // --ignore-eos: end-of-generation tokens banned (logit bias -inf)
  std::vector<std::string> logit_bias;  // --logit-bias TOKEN_ID(+|-)BIAS, repeatable (llama.cpp's syntax)
  // A random seed is drawn here when seed < 0. Throws lokal::Error for a bias naming a token outside `vocab`.
  SamplingParams params(const Vocab& vocab) const;
};
void add_sampling_options(CLI::App* cmd, SamplingArgs& s);

// The speculative-decoding options shared by run, chat, batch and serve (llama.cpp's names where it has them):
// --draft FILE (-md), --draft-max N, --draft-min N, --draft-p-min P, --draft-ngram, --draft-vocab auto|intersect|text,
// --draft-fixed (no adaptation: always --draft-max), -ctkd/-ctvd (the draft's KV cache types).
struct SpecArgs {
  std::string draft;
  int draft_max = 16;
  int draft_min = 0;
  float p_min = 0.75f;
  bool ngram = false;
  std::string vocab = "auto";
  bool fixed = false;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  int gpu_layers = -1, device = -1;  // -ngld, --device-draft (-1: as the target)
  SpecConfig config() const;  // throws lokal::Error for a bad value, naming the flag
};
void add_spec_options(CLI::App* cmd, SpecArgs& s);
// The speculative statistics line of run and chat ("speculative: ..."), without a newline.
std::string spec_stats_line(const std::string& method, const SpecStats& st);
// {"drafted", "accepted", "acceptance", "tokens_per_pass", "draft_ms", "verify_ms", "passes", "plain_passes",
// "est_speedup"}: the JSON form (batch lines, the server's timings).
nlohmann::ordered_json spec_json(const SpecStats& st);
// "ngram", "draft (same vocabulary)", "ngram+draft (text translation)".
std::string spec_method(const SpecSetup& s);

// A JSON argument given inline (it starts with '{' or '[') or as a file (at most 16 MiB); throws lokal::Error naming
// the flag and the parse error.
nlohmann::ordered_json read_json_arg(const std::string& value, const char* flag);
// The grammar of --grammar-file FILE (GBNF) or --json-schema FILE|JSON (compiled to GBNF); null when neither is
// given. Throws lokal::Error naming the file and the problem (syntax, undefined rule, unsupported keyword).
std::shared_ptr<const Grammar> grammar_from_args(const std::string& grammar_file, const std::string& json_schema);

}  // namespace lokal::cli
