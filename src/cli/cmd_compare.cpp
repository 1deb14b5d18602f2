// `lokal compare BASE OTHER...`: quality (PPL, KL-divergence, top-1 agreement) and speed of
// models against a base model on one text. A Markdown table (or --json) on stdout, progress on stderr.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "core/log.h"
#include "eval/compare.h"
#include "runtime/plan.h"

namespace lokal::cli {

namespace {
struct CompareArgs {
  std::vector<std::string> models;      // -m values and positionals in command-line order: the first is the base
  std::vector<std::string> flag_models, pos_models;
  std::string text_file;
  int64_t ctx = 0;
  int64_t chunks = -1;
  int64_t batch = kDefaultBatchSize;
  int threads = 0;
  bool json = false;
  bool allow_long_ctx = false;
  bool quiet = false;
  std::vector<std::string> kv;  // --kv: KV cache types, "T" (K and V) or "K/V"
};

std::pair<DType, DType> parse_kv_pair(const std::string& s) {
  const size_t slash = s.find('/');
  if (slash == std::string::npos) {
    const DType t = parse_kv_type(s, "--kv");
    return {t, t};
  }
  return {parse_kv_type(s.substr(0, slash), "--kv"), parse_kv_type(s.substr(slash + 1), "--kv")};
}

std::string kv_label(const CompareRow& r) {
  const std::string k = kv_type_label(r.cache_type_k), v = kv_type_label(r.cache_type_v);
  return k == v ? k : k + "/" + v;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// KL values span many decades: fixed point for the large ones, scientific below 0.001.
std::string fmt_kl(double v) {
  if (v == 0.0) return "0";
  return fmt(v < 1e-3 ? "%.2e" : "%.5f", v);
}

void print_markdown(const std::vector<CompareRow>& rows) {
  std::printf("| model | file type | KV cache | size (MiB) | bpw | PPL | ΔPPL | ΔPPL %% | KL mean | KL p99 | top-1 %% | prefill t/s | decode t/s |\n");
  std::printf("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const CompareRow& r = rows[i];
    const std::string name = std::filesystem::path(r.path).filename().string() + (i == 0 ? " (base)" : "");
    const bool base = i == 0;
    std::printf("| %s | %s | %s | %s | %s | %s ± %s | %s | %s | %s | %s | %s | %s | %s |\n", name.c_str(),
                r.file_type.c_str(), kv_label(r).c_str(),
                fmt("%.2f", static_cast<double>(r.file_bytes) / (1024.0 * 1024.0)).c_str(),
                fmt("%.2f", r.bits_per_weight).c_str(), fmt("%.4f", r.ppl).c_str(), fmt("%.4f", r.ppl_err).c_str(),
                base ? "-" : fmt("%+.4f", r.delta_ppl).c_str(), base ? "-" : fmt("%+.2f%%", r.delta_ppl_pct).c_str(),
                fmt_kl(r.kl_mean).c_str(), fmt_kl(r.kl_p99).c_str(), fmt("%.2f", r.top1_agreement).c_str(),
                fmt("%.1f", r.prefill_tps).c_str(), fmt("%.1f", r.decode_tps).c_str());
  }
}

void print_json(const std::vector<CompareRow>& rows) {
  nlohmann::json arr = nlohmann::json::array();
  for (size_t i = 0; i < rows.size(); ++i) {
    const CompareRow& r = rows[i];
    arr.push_back({{"model", r.path},
                   {"base", i == 0},
                   {"file_type", r.file_type},
                   {"cache_type_k", kv_type_label(r.cache_type_k)},
                   {"cache_type_v", kv_type_label(r.cache_type_v)},
                   {"file_bytes", r.file_bytes},
                   {"file_mib", static_cast<double>(r.file_bytes) / (1024.0 * 1024.0)},
                   {"n_params", r.n_params},
                   {"bits_per_weight", r.bits_per_weight},
                   {"ppl", r.ppl},
                   {"ppl_err", r.ppl_err},
                   {"delta_ppl", r.delta_ppl},
                   {"delta_ppl_pct", r.delta_ppl_pct},
                   {"kl_mean", r.kl_mean},
                   {"kl_p99", r.kl_p99},
                   {"kl_max", r.kl_max},
                   {"top1_agreement", r.top1_agreement},
                   {"n_scored_tokens", r.n_scored},
                   {"prefill_tps", r.prefill_tps},
                   {"decode_tps", r.decode_tps}});
  }
  std::printf("%s\n", arr.dump(2).c_str());
}

void compare(const CompareArgs& a) {
  set_log_level(LogLevel::Warn);
  if (a.models.size() < 2 && a.kv.size() < 2)
    throw Error("compare needs a base model and at least one other model (or one model and --kv with two or more types)");
  for (const auto& m : a.models) check_input_file(m, "GGUF model file");
  const std::string text = read_text_file(a.text_file);
  CompareOptions o;
  o.ppl.n_ctx = a.ctx;
  o.ppl.n_chunks = a.chunks;
  o.ppl.n_batch = a.batch;
  o.ppl.allow_long_ctx = a.allow_long_ctx;
  o.n_threads = a.threads;
  for (const auto& k : a.kv) o.kv_types.push_back(parse_kv_pair(k));
  if (o.kv_types.empty()) o.ppl.cache_type_k = o.ppl.cache_type_v = DType::F16;  // llama.cpp's default
  const bool quiet = a.quiet;
  auto rows = compare_models(a.models, text, a.text_file, o, [quiet](const std::string& msg) {
    if (quiet) return;
    std::fprintf(stderr, "%s\n", msg.c_str());
    std::fflush(stderr);
  });
  if (a.json) print_json(rows);
  else print_markdown(rows);
  std::fflush(stdout);
}
}  // namespace

void register_compare(CLI::App& app, int* rc) {
  auto a = std::make_shared<CompareArgs>();
  CLI::App* cmd = app.add_subcommand("compare", "Compare models with a base model: PPL, KL-divergence, top-1, speed");
  auto* mflag = cmd->add_option("-m,--model", a->flag_models, "A model, as -m or positional; the first given is the base");
  auto* mpos = cmd->add_option("models", a->pos_models, "BASE.gguf OTHER.gguf... (same vocabulary)")
                   ->type_name("[-m] BASE.gguf [-m] OTHER.gguf...");
  cmd->add_option("--kv", a->kv, "KV cache types to evaluate every model with, comma-separated, each T or K/V "
                                 "(e.g. f16,q8_0,q4_0); the base with the first is the reference (default: f16)")
      ->check(comma_list());
  cmd->add_option("-f,--file", a->text_file, "Text file to score")->required();
  cmd->add_option("-c,--ctx-size", a->ctx, "Tokens per chunk (0: min(512, base model's trained context))")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--chunks", a->chunks, "Chunks to score (-1: all)")
      ->capture_default_str()->check(CLI::Range(int64_t(-1), int64_t(1) << 40));
  cmd->add_option("-b,--batch-size", a->batch, "Tokens per forward batch")
      ->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_flag("--json", a->json, "Print a JSON array instead of a Markdown table");
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above a model's trained context");
  cmd->add_flag("-q,--quiet", a->quiet, "No progress on stderr");
  cmd->callback([a, rc, cmd, mflag, mpos] {
    // The models in command-line order, -m or positional alike (parse_order has one entry per value).
    a->models.clear();
    size_t nf = 0, np = 0;
    for (const CLI::Option* o : cmd->parse_order()) {
      if (o == mflag && nf < a->flag_models.size()) a->models.push_back(a->flag_models[nf++]);
      if (o == mpos && np < a->pos_models.size()) a->models.push_back(a->pos_models[np++]);
    }
    a->models.insert(a->models.end(), a->flag_models.begin() + static_cast<std::ptrdiff_t>(nf), a->flag_models.end());
    a->models.insert(a->models.end(), a->pos_models.begin() + static_cast<std::ptrdiff_t>(np), a->pos_models.end());
    if (a->models.empty())
      throw CLI::ParseError("compare: no model given: BASE.gguf OTHER.gguf... or -m BASE.gguf -m OTHER.gguf...", 2);
    a->kv = list_items(a->kv);
    compare(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
