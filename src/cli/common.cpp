// Helpers shared by several subcommands.
#include "cli/commands.h"
#include "core/error.h"
#include "model/offload.h"
#include "ops/attention.h"

namespace lokal::cli {

DType parse_kv_type(const std::string& name, const char* flag) {
  auto t = type_from_name(name);
  if (!t || !kv_cache_type_supported(*t))
    throw Error(std::string(flag) + ": unsupported KV cache type '" + name + "' (supported: f32, f16, bf16, q8_0, q4_0)");
  return *t;
}

void add_gpu_options(CLI::App* cmd, OffloadOptions& o) {
  cmd->add_option("--gpu-layers,--n-gpu-layers", o.n_gpu_layers,
                  "Layers to run on the GPU (Vulkan): the last N; 99: all of them and the output (0: CPU only)")
      ->capture_default_str()->check(CLI::Range(0, 100000));
  cmd->add_option("--device", o.device, "GPU for -ngl: its index in 'lokal info --devices'")
      ->capture_default_str()->check(CLI::Range(0, 255));
}

std::string gpu_placement(const Model& m, const char* who) {
  const DeviceModel* dm = m.device();
  if (!dm) return "";
  return std::string("gpu: ") + who + std::to_string(dm->n_layers()) + " of " + std::to_string(m.config().n_layer) +
         " layers on " + dm->info().name + " (output on the " + (dm->output_on_device() ? "GPU" : "CPU") +
         "), device " + std::to_string(dm->info().index);
}

std::string one_model(const std::string& cmd, const std::string& from_flag, const std::string& positional) {
  if (!from_flag.empty() && !positional.empty())
    throw CLI::ParseError(cmd + ": the model is given twice (-m " + from_flag + " and " + positional + "): give it once", 2);
  if (from_flag.empty() && positional.empty())
    throw CLI::ParseError(cmd + ": no model given: MODEL.gguf or -m MODEL.gguf", 2);
  return from_flag.empty() ? positional : from_flag;
}

namespace {
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t end = s.find(',', start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}
}  // namespace

CLI::Validator comma_list(const CLI::Validator& item) {
  return CLI::Validator(
      [item](std::string& s) -> std::string {
        for (std::string part : split_commas(s)) {
          if (part.empty()) return "empty item in the comma list '" + s + "' (separate items with single commas)";
          std::string err = item(part);
          if (!err.empty()) return err;
        }
        return std::string();
      },
      "comma list");
}

std::vector<std::string> list_items(const std::vector<std::string>& raw) {
  std::vector<std::string> out;
  for (const std::string& s : raw)
    for (std::string& part : split_commas(s)) out.push_back(std::move(part));
  return out;
}

// ---------------------------------------------------------------- option spellings

namespace {
// Spellings rewritten before CLI11 parses: llama.cpp's multi-letter single-dash options (CLI11 only takes one-letter
// short names) and lokal's older spellings, kept working but no longer shown (--ctk, --ctv).
struct Spelling {
  const char* given;
  const char* canonical;  // a long option name, with its dashes
  bool shown;             // --help and `lokal usage` show it in front of the long name
};
constexpr Spelling kSpellings[] = {
    {"-ctk", "--cache-type-k", true},
    {"-ctv", "--cache-type-v", true},
    {"-np", "--parallel", true},
    {"-md", "--model-draft", true},
    {"-ctkd", "--cache-type-k-draft", true},
    {"-ctvd", "--cache-type-v-draft", true},
    {"-ngl", "--gpu-layers", true},
    {"-ngld", "--gpu-layers-draft", true},
    {"--ngl", "--gpu-layers", false},
    {"--ctk", "--cache-type-k", false},
    {"--ctv", "--cache-type-v", false},
};
}  // namespace

std::vector<std::string> canonical_args(std::vector<std::string> args) {
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;  // what follows is positional
    const size_t eq = a.find('=');
    const std::string name = a.substr(0, eq);
    for (const Spelling& s : kSpellings)
      if (name == s.given) {
        a = s.canonical + (eq == std::string::npos ? std::string() : a.substr(eq));
        break;
      }
  }
  return args;
}

std::string llama_short_name(const std::string& long_name) {
  for (const Spelling& s : kSpellings)
    if (s.shown && long_name == s.canonical + 2) return s.given;
  return {};
}

namespace {
// CLI11's help, with the llama.cpp spelling in front of the long name: "-ctk,--cache-type-k TEXT=f16".
class Formatter : public CLI::Formatter {
 public:
  std::string make_option_name(const CLI::Option* opt, bool is_positional) const override {
    std::string name = CLI::Formatter::make_option_name(opt, is_positional);
    if (is_positional || opt->get_lnames().empty()) return name;
    const std::string short_name = llama_short_name(opt->get_lnames().front());
    return short_name.empty() ? name : short_name + "," + name;
  }
};
}  // namespace

std::shared_ptr<CLI::Formatter> make_formatter() { return std::make_shared<Formatter>(); }

std::string mib_bytes(uint64_t b) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f MiB (%llu bytes)", static_cast<double>(b) / (1024.0 * 1024.0),
                static_cast<unsigned long long>(b));
  return buf;
}

}  // namespace lokal::cli
