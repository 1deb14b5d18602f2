// lokal serve: an OpenAI-, llama-server- and Ollama-compatible HTTP server (server/, docs/SERVER.md).
// lokal service install: a hardened systemd unit and a starter config.
//
// Settings come from, highest first: command-line flags, LOKAL_* environment variables (LOKAL_ + the long flag name
// in capitals with '_' for '-': LOKAL_PORT, LOKAL_API_KEY_FILE), the TOML file of --config (keys: the long flag
// names with '_' for '-': port = 8080, api_key_file = "..."), the defaults. --print-config shows the result.
#include <algorithm>
#include <csignal>
#include <set>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sys/stat.h>
#include <thread>
#include <toml++/toml.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "gpu/gpu.h"
#include "runtime/model_store.h"
#include "runtime/plan.h"
#include "runtime/residency.h"
#include "server/engine.h"
#include "server/http_server.h"
#include "server/router.h"
#include "server/service.h"

namespace lokal::cli {

namespace {

struct ServeArgs {
  std::string model;
  int64_t ctx = 0;
  int n_parallel = 4;
  int threads = 0;
  int64_t batch = kDefaultBatchSize;
  int64_t kv_tokens = 0;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  std::string ram;
  std::string vram;  // --vram: the device memory budget of the models' GPU layers
  bool allow_long_ctx = false, no_mmap = false, jinja = true;
  OffloadOptions offload;
  std::string chat_template;
  std::string pooling = "mean";
  std::vector<std::string> aliases;
  // Request defaults (what a request leaves out), llama-server's flags; unset: the sampler's defaults.
  double temp = 0, top_p = 0, min_p = 0, repeat_penalty = 0;
  int top_k = 0;
  int64_t seed = -1;
  std::string system;
  SpecArgs spec;
  server::ServerOptions srv;
  std::vector<std::string> api_keys, admin_api_keys;
  std::string api_key_file, jwt_secret_file, jwt_public_key_file, jwt_issuer, jwt_audience;
  bool metrics = false, no_access_log = false, no_webui = false, print_config = false, verbose = false;
  std::string config;
  // Several models (docs/MODELS.md): the config file's [models.NAME] tables and [routes], or the whole store.
  bool all_models = false;
  int max_loaded = 0;
  std::string keep_alive = "5m";
  double load_timeout = 120;
  toml::table models_tbl, routes_tbl;
};

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal.store(sig); }

// Fills options not given on the command line from LOKAL_* variables, then from the config file.
void apply_env_and_config(CLI::App* cmd, const std::string& config_path, ServeArgs& a) {
  toml::table tbl;
  if (!config_path.empty()) {
    check_input_file(config_path, "config file");
    try {
      tbl = toml::parse_file(config_path);
    } catch (const toml::parse_error& e) {
      const auto& where = e.source().begin;
      throw Error(config_path + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) + ": " +
                  std::string(e.description()));
    }
    // Unknown keys are errors (a typo must not silently leave the default).
    for (const auto& [k, v] : tbl) {
      if (k.str() == "models" || k.str() == "routes") {
        if (!v.is_table())
          throw Error(config_path + ": '" + std::string(k.str()) + "' must be a table ([" + std::string(k.str()) + "] or [" +
                      std::string(k.str()) + ".NAME])");
        (k.str() == "models" ? a.models_tbl : a.routes_tbl) = *v.as_table();
        continue;
      }
      const std::string name = "--" + std::string(k.str());
      std::string flag = name;
      for (char& ch : flag) if (ch == '_') ch = '-';
      if (flag == "--config" || flag == "--print-config" || !cmd->get_option_no_throw(flag))
        throw Error(config_path + ": unknown key '" + std::string(k.str()) + "' (keys are serve's long option names with _ for -)");
    }
  }
  for (CLI::Option* opt : cmd->get_options()) {
    if (opt->get_lnames().empty() || opt->count() > 0) continue;
    const std::string lname = opt->get_lnames().front();
    if (lname == "help" || lname == "config" || lname == "print-config") continue;
    std::string key = lname;
    for (char& ch : key) if (ch == '-') ch = '_';
    std::string env = "LOKAL_" + key;
    for (char& ch : env) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    std::vector<std::string> values;
    std::string source;
    if (const char* e = std::getenv(env.c_str()); e && *e) {
      values.push_back(e);
      source = "environment variable " + env;
    } else if (auto node = tbl.get(key)) {
      source = config_path + ": " + key;
      auto one = [&](const toml::node& n) {
        if (auto s = n.value<std::string>()) values.push_back(*s);
        else if (auto b = n.value_exact<bool>()) values.push_back(*b ? "true" : "false");
        else if (auto i = n.value_exact<int64_t>()) values.push_back(std::to_string(*i));
        else if (auto d = n.value_exact<double>()) values.push_back(std::to_string(*d));
        else throw Error(source + ": unsupported value type");
      };
      if (auto arr = node->as_array()) for (const auto& n : *arr) one(n);
      else one(*node);
    }
    if (values.empty()) continue;
    try {
      for (const std::string& v : values) {
        if (opt->get_type_size() == 0) {  // a flag
          if (v == "true" || v == "1" || v == "yes" || v == "on") opt->add_result(std::string("true"));
          else if (v == "false" || v == "0" || v == "no" || v == "off") { /* leave it off */ }
          else throw Error(source + ": expected true or false, got '" + v + "'");
        } else {
          opt->add_result(v);
        }
      }
      if (opt->count() > 0) opt->run_callback();
    } catch (const CLI::Error& e) {
      throw Error(source + ": " + e.what());
    }
  }
}

std::string toml_quote(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

void print_config(CLI::App* cmd) {
  std::printf("# lokal serve: effective settings (flags > LOKAL_* environment > --config file > defaults)\n");
  for (CLI::Option* opt : cmd->get_options()) {
    if (opt->get_lnames().empty()) continue;
    const std::string lname = opt->get_lnames().front();
    if (lname == "help" || lname == "config" || lname == "print-config") continue;
    std::string key = lname;
    for (char& ch : key) if (ch == '-') ch = '_';
    const bool secret = key == "api_key" || key == "admin_api_key";
    std::vector<std::string> vals = opt->results();
    if (opt->get_type_size() == 0) {
      std::printf("%s = %s\n", key.c_str(), opt->count() > 0 ? "true" : "false");
      continue;
    }
    if (vals.empty()) {
      const std::string def = opt->get_default_str();
      if (def.empty()) std::printf("# %s = (not set)\n", key.c_str());
      else std::printf("%s = %s\n", key.c_str(), std::all_of(def.begin(), def.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-'; }) ? def.c_str() : toml_quote(def).c_str());
      continue;
    }
    if (opt->get_expected_max() > 1) {
      std::printf("%s = [", key.c_str());
      for (size_t i = 0; i < vals.size(); ++i) std::printf("%s%s", i ? ", " : "", secret ? "\"(redacted)\"" : toml_quote(vals[i]).c_str());
      std::printf("]\n");
    } else {
      const std::string& v = vals.back();
      const bool num = !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-'; });
      std::printf("%s = %s\n", key.c_str(), secret ? "\"(redacted)\"" : num ? v.c_str() : toml_quote(v).c_str());
    }
  }
}

// The model (path or store name, and for a preset its settings) of `arg`; `what` names it in errors.
ResolvedModel resolve_serve_model(const std::string& arg, const std::string& what) {
  struct stat st{};
  if (::stat(arg.c_str(), &st) == 0) return ResolvedModel{arg, "", std::nullopt};
  std::optional<ResolvedModel> r;
  try {
    r = resolve_model_arg(arg, ModelStore(ModelStore::default_root()));
  } catch (const Error&) {
  }
  if (!r) {
    check_input_file(arg, what.c_str());  // the usual "no such file" error
    return ResolvedModel{arg, "", std::nullopt};
  }
  return *r;
}

// A preset's settings, where the model's own settings leave them open.
void apply_preset(const ModelPreset& p, server::EngineOptions& eo, bool ctx_given, bool draft_given) {
  if (p.ctx_size > 0 && !ctx_given) eo.load.n_ctx = p.ctx_size;
  if (!p.cache_type_k.empty() && !eo.load.type_k) eo.load.type_k = parse_kv_type(p.cache_type_k, "cache_type_k");
  if (!p.cache_type_v.empty() && !eo.load.type_v) eo.load.type_v = parse_kv_type(p.cache_type_v, "cache_type_v");
  if (!p.system.empty() && eo.defaults.system.empty()) eo.defaults.system = p.system;
  if (!p.chat_template.empty() && eo.chat_template.empty()) eo.chat_template = p.chat_template;
  if (!p.draft.empty() && !draft_given) eo.spec.draft = resolve_serve_model(p.draft, "draft model of a preset").path;
  auto& sm = eo.defaults.sampling;
  if (p.temperature && !sm.contains("temperature")) sm["temperature"] = *p.temperature;
  if (p.top_k && !sm.contains("top_k")) sm["top_k"] = *p.top_k;
  if (p.top_p && !sm.contains("top_p")) sm["top_p"] = *p.top_p;
  if (p.min_p && !sm.contains("min_p")) sm["min_p"] = *p.min_p;
  if (p.repeat_penalty && !sm.contains("repeat_penalty")) sm["repeat_penalty"] = *p.repeat_penalty;
  if (p.seed && !sm.contains("seed")) sm["seed"] = *p.seed;
}

// One [models.NAME] table: the serve-wide settings in `base`, overridden by the table's keys.
server::ModelSpec model_from_table(const std::string& name, const toml::table& t, const server::EngineOptions& base,
                                   const std::string& where) {
  server::ModelSpec m;
  m.name = name;
  m.engine = base;
  m.engine.aliases.clear();
  m.engine.defaults = base.defaults;
  const std::string at = where + ": [models." + name + "]";
  auto str = [&](const std::string& k) -> std::optional<std::string> {
    const auto* n = t.get(k);
    if (!n) return std::nullopt;
    if (auto v = n->value_exact<std::string>()) return *v;
    throw Error(at + " " + k + ": expected a string");
  };
  auto integer = [&](const std::string& k, int64_t lo, int64_t hi) -> std::optional<int64_t> {
    const auto* n = t.get(k);
    if (!n) return std::nullopt;
    const auto v = n->value_exact<int64_t>();
    if (!v || *v < lo || *v > hi)
      throw Error(at + " " + k + ": expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
    return *v;
  };
  auto number = [&](const std::string& k, double lo, double hi) -> std::optional<double> {
    const auto* n = t.get(k);
    if (!n) return std::nullopt;
    std::optional<double> v = n->value<double>();
    if (!v || !(*v >= lo && *v <= hi))
      throw Error(at + " " + k + ": expected a number from " + std::to_string(lo) + " to " + std::to_string(hi));
    return *v;
  };
  auto strings = [&](const std::string& k) -> std::optional<std::vector<std::string>> {
    const auto* n = t.get(k);
    if (!n) return std::nullopt;
    std::vector<std::string> out;
    if (auto v = n->value_exact<std::string>()) out.push_back(*v);
    else if (const auto* arr = n->as_array()) {
      for (const auto& e : *arr) {
        const auto v2 = e.value_exact<std::string>();
        if (!v2) throw Error(at + " " + k + ": expected strings");
        out.push_back(*v2);
      }
    } else {
      throw Error(at + " " + k + ": expected a string or an array of strings");
    }
    return out;
  };
  static const std::set<std::string> keys = {
      "model", "alias", "aliases", "tasks", "pinned", "keep_alive", "ctx_size", "parallel", "batch_size", "kv_tokens",
      "threads", "cache_type_k", "cache_type_v", "chat_template", "pooling", "system", "temp", "top_k", "top_p",
      "min_p", "repeat_penalty", "seed", "draft", "model_draft", "gpu_layers", "device",
      "draft_gpu_layers", "draft_device"};
  for (const auto& [k, v] : t)
    if (!keys.count(std::string(k.str())))
      throw Error(at + ": unknown key '" + std::string(k.str()) + "' (see docs/MODELS.md for a model's keys)");
  const auto model = str("model");
  if (!model || model->empty()) throw Error(at + ": give the model file or store name: model = \"...\"");
  const ResolvedModel r = resolve_serve_model(*model, "GGUF model file of " + at);
  m.engine.load.path = r.path;
  for (const char* k : {"alias", "aliases"})
    if (auto v = strings(k)) m.engine.aliases.insert(m.engine.aliases.end(), v->begin(), v->end());
  if (auto v = strings("tasks")) {
    for (const std::string& s : *v) {
      const auto task = server::parse_task(s);
      if (!task) throw Error(at + " tasks: '" + s + "' is not a task (chat, completion, reasoning, embedding, vision)");
      m.tasks.push_back(*task);
    }
    if (m.tasks.empty()) throw Error(at + " tasks: empty (leave it out to infer them from the file)");
    m.tasks_explicit = true;
  }
  if (const auto* n = t.get("pinned")) {
    const auto b = n->value_exact<bool>();
    if (!b) throw Error(at + " pinned: expected true or false");
    m.pinned = *b;
  }
  if (const auto* n = t.get("keep_alive")) {
    std::string text;
    if (auto s = n->value_exact<std::string>()) text = *s;
    else if (auto i = n->value_exact<int64_t>()) text = std::to_string(*i);
    else throw Error(at + " keep_alive: expected a duration (\"5m\", \"-1\", 0)");
    try {
      m.keep_alive = parse_keep_alive(text);
    } catch (const Error& e) {
      throw Error(at + ": " + e.what());
    }
  }
  const auto ctx = integer("ctx_size", 0, int64_t(1) << 24);
  if (ctx) m.engine.load.n_ctx = *ctx;
  if (auto v = integer("parallel", 1, 1024)) m.engine.load.n_parallel = static_cast<int>(*v);
  if (auto v = integer("batch_size", 1, int64_t(1) << 16)) m.engine.load.n_batch = *v;
  if (auto v = integer("kv_tokens", 0, int64_t(1) << 30)) m.engine.load.kv_tokens = *v;
  if (auto v = integer("threads", 0, 1024)) m.engine.load.n_threads = static_cast<int>(*v);
  if (auto v = integer("gpu_layers", 0, 100000)) m.engine.load.load.offload.n_gpu_layers = static_cast<int>(*v);
  if (auto v = integer("device", 0, 255)) m.engine.load.load.offload.device = static_cast<uint32_t>(*v);
  if (auto v = integer("draft_gpu_layers", 0, 100000)) m.engine.spec.draft_gpu_layers = static_cast<int>(*v);
  if (auto v = integer("draft_device", 0, 255)) m.engine.spec.draft_device = static_cast<int>(*v);
  if (auto v = str("cache_type_k")) m.engine.load.type_k = parse_kv_type(*v, "cache_type_k");
  if (auto v = str("cache_type_v")) m.engine.load.type_v = parse_kv_type(*v, "cache_type_v");
  if (auto v = str("chat_template")) m.engine.chat_template = *v;
  if (auto v = str("pooling")) {
    if (*v == "mean") m.engine.pooling = Pooling::Mean;
    else if (*v == "last") m.engine.pooling = Pooling::Last;
    else throw Error(at + " pooling: expected mean or last");
  }
  if (auto v = str("system")) m.engine.defaults.system = *v;
  auto& sm = m.engine.defaults.sampling;
  if (auto v = number("temp", 0, 100)) sm["temperature"] = *v;
  if (auto v = integer("top_k", 0, 1 << 30)) sm["top_k"] = *v;
  if (auto v = number("top_p", 0, 1)) sm["top_p"] = *v;
  if (auto v = number("min_p", 0, 1)) sm["min_p"] = *v;
  if (auto v = number("repeat_penalty", 1e-3, 100)) sm["repeat_penalty"] = *v;
  if (auto v = integer("seed", -1, INT64_MAX); v && *v >= 0) sm["seed"] = *v;
  bool draft_given = false;
  for (const char* k : {"draft", "model_draft"})
    if (auto v = str(k)) {
      draft_given = true;
      m.engine.spec.draft = v->empty() ? "" : resolve_serve_model(*v, "draft model of " + at).path;
    }
  if (r.preset) apply_preset(*r.preset, m.engine, ctx.has_value(), draft_given);
  return m;
}

// The machine's GPUs, listed once at start and only when needed (listing loads the Vulkan driver: tens of MiB).
struct StartGpus {
  std::optional<std::vector<gpu::DeviceInfo>> devs;
  std::string why;  // why there are none
  const std::vector<gpu::DeviceInfo>& get() {
    if (!devs) devs = gpu::list_devices(&why);
    return *devs;
  }
};

// --vram above a device's memory, or naming a device this machine does not have: a warning, not an error (the
// budget is what the user allows; models are loaded on first use), so that a load failing for device memory later
// is not a surprise.
void warn_vram_beyond_devices(const VramBudget& vb, const std::string& text, StartGpus& gpus) {
  const std::vector<gpu::DeviceInfo>& devs = gpus.get();
  for (const gpu::DeviceInfo& d : devs)
    if (const uint64_t cap = vb.of(d.index); d.device_local_bytes > 0 && cap > d.device_local_bytes)
      std::fprintf(stderr, "warning: --vram %s gives GPU %u (%s) %s, more than its %s of device memory: loads past "
                   "that fail\n", text.c_str(), d.index, printable(d.name).c_str(),
                   format_bytes(static_cast<double>(cap)).c_str(),
                   format_bytes(static_cast<double>(d.device_local_bytes)).c_str());
  for (const auto& [dev, b] : vb.device)
    if (dev >= devs.size())
      std::fprintf(stderr, "warning: --vram %s names GPU %u, but %s\n", text.c_str(), dev,
                   devs.empty() ? "no Vulkan device was found ('lokal info --devices')"
                                : ("the highest device number here is " + std::to_string(devs.size() - 1) +
                                   " ('lokal info --devices')").c_str());
}

// A model whose layers (or its draft's) are put on a GPU this machine lacks is refused at start, as `run -ngl` refuses
// it, rather than failing on its first request.
void refuse_models_on_missing_gpus(const server::Router& router, StartGpus& gpus) {
  for (const server::ModelStatus& m : router.status())
    for (const auto& [dev, bytes] : m.predicted_device_bytes) {
      if (bytes == 0) continue;
      const std::string why = gpus.get().empty() ? gpus.why : gpu::missing_device_reason(dev, gpus.get().size());
      if (!why.empty())
        throw Error("model '" + m.name + "' puts layers on GPU " + std::to_string(dev) + ": no GPU to offload to: " +
                    why + " (gpu_layers = 0 or -ngl 0 keeps it on the CPU; 'lokal info --devices' lists the GPUs)");
    }
}

int serve(ServeArgs& a, CLI::App* cmd) {
  if (!a.verbose) set_log_level(LogLevel::Warn);
  if (a.print_config) {
    print_config(cmd);
    return 0;
  }
  const bool multi = !a.models_tbl.empty() || a.all_models;
  if (a.model.empty() && !multi)
    throw Error("serve: give the model with -m FILE.gguf (or `model = \"...\"` in --config; several models: [models.NAME] "
                "tables in --config, or --all-models to serve the whole store; see docs/MODELS.md)");
  // A store name from the config file or LOKAL_MODEL (names on the command line were resolved in main).
  for (std::string* m : {&a.model, &a.spec.draft}) {
    struct stat st{};
    if (m->empty() || ::stat(m->c_str(), &st) == 0) continue;
    if (const auto r = resolve_model_arg(*m, ModelStore(ModelStore::default_root())); r && !r->name.empty()) {
      if (m == &a.model && a.aliases.empty()) a.aliases.push_back(r->name);
      *m = r->path;
    }
  }
  if (!a.model.empty()) check_input_file(a.model, "GGUF model file");

  server::EngineOptions eo;
  eo.load.path = a.model;
  eo.load.n_ctx = a.ctx;
  eo.load.allow_long_ctx = a.allow_long_ctx;
  if (!multi) eo.load.ram = a.ram;  // one model: the planner fits its settings; several: --ram is the shared budget
  if (cmd->get_option("--cache-type-k")->count() > 0 || !multi) eo.load.type_k = parse_kv_type(a.cache_type_k, "--cache-type-k");
  if (cmd->get_option("--cache-type-v")->count() > 0 || !multi) eo.load.type_v = parse_kv_type(a.cache_type_v, "--cache-type-v");
  eo.load.n_batch = a.batch;
  eo.load.n_threads = a.threads;
  eo.load.n_parallel = a.n_parallel;
  eo.load.kv_tokens = a.kv_tokens;
  eo.load.load.use_mmap = !a.no_mmap;
  eo.load.load.offload = a.offload;
  eo.chat_template = a.chat_template;
  eo.aliases = a.aliases;
  eo.spec = a.spec.config();
  auto given = [&](const char* name) { return cmd->get_option(name)->count() > 0; };
  if (given("--temp")) eo.defaults.sampling["temperature"] = a.temp;
  if (given("--top-k")) eo.defaults.sampling["top_k"] = a.top_k;
  if (given("--top-p")) eo.defaults.sampling["top_p"] = a.top_p;
  if (given("--min-p")) eo.defaults.sampling["min_p"] = a.min_p;
  if (given("--repeat-penalty")) eo.defaults.sampling["repeat_penalty"] = a.repeat_penalty;
  if (given("--seed") && a.seed >= 0) eo.defaults.sampling["seed"] = a.seed;
  eo.defaults.system = a.system;
  if (a.pooling == "mean") eo.pooling = Pooling::Mean;
  else if (a.pooling == "last") eo.pooling = Pooling::Last;
  else throw Error("--pooling " + a.pooling + ": expected mean or last");

  // The models and the router's settings.
  server::RouterOptions ro;
  ro.max_loaded = a.max_loaded;
  ro.load_wait_s = a.load_timeout;
  try {
    ro.keep_alive = parse_keep_alive(a.keep_alive);
  } catch (const Error& e) {
    throw Error(std::string("--keep-alive: ") + e.what());
  }
  std::vector<server::ModelSpec> specs;
  if (!a.model.empty()) {
    server::ModelSpec m;
    m.engine = eo;
    m.name = server::model_id_for(eo);
    if (!multi) {
      // One model: loaded at start and kept (llama-server's way), unless --keep-alive says otherwise.
      m.pinned = !given("--keep-alive");
      m.keep_alive = given("--keep-alive") ? ro.keep_alive : Residency::kForever;
    }
    specs.push_back(std::move(m));
  }
  if (!a.vram.empty()) {  // one model or several: their device memory on each GPU (a model over it is refused)
    try {
      ro.vram_budget = VramBudget::parse(a.vram);
    } catch (const Error& e) {
      throw Error(std::string("--vram ") + e.what());
    }
    ro.vram_budget_text = a.vram;
  }
  if (multi) {
    if (!a.ram.empty()) {
      ro.budget_bytes = parse_byte_size(a.ram);
      ro.budget_text = a.ram;
    }
    server::EngineOptions base = eo;
    base.aliases.clear();
    // In the file's order (the first model that does a task serves it when [routes] names none).
    std::vector<std::pair<toml::source_position, std::string>> order;
    for (const auto& [k, v] : a.models_tbl) {
      if (!v.is_table()) throw Error(a.config + ": models." + std::string(k.str()) + " must be a table: [models." + std::string(k.str()) + "]");
      order.emplace_back(k.source().begin, std::string(k.str()));  // (a copied table keeps its keys' positions only)
    }
    std::sort(order.begin(), order.end(), [](const auto& x, const auto& y) {
      return x.first.line != y.first.line ? x.first.line < y.first.line : x.first.column < y.first.column;
    });
    for (const auto& [pos, name] : order) specs.push_back(model_from_table(name, *a.models_tbl.get(name)->as_table(), base, a.config));
    if (a.all_models) {
      const ModelStore store(ModelStore::default_root());
      for (const ModelManifest& man : store.list()) {
        const std::string name = man.name.str();
        if (std::any_of(specs.begin(), specs.end(), [&](const server::ModelSpec& s) { return s.name == name; })) continue;
        server::ModelSpec m;
        m.name = name;
        m.engine = base;
        const auto r = resolve_model_arg(name, store);
        if (!r) continue;
        m.engine.load.path = r->path;
        // Ollama's convention: "name" means "name:latest".
        if (man.name.tag == "latest") m.engine.aliases = {name.substr(0, name.size() - 7)};
        if (r->preset) apply_preset(*r->preset, m.engine, given("--ctx-size"), given("--model-draft"));
        specs.push_back(std::move(m));
      }
      if (specs.empty()) throw Error("--all-models: the store (" + store.root() + ") holds no model; import one with `lokal models import FILE.gguf`");
    }
  }
  for (const auto& [k, v] : a.routes_tbl) {  // one model may have routes too (virtual names for it)
    const auto target = v.value_exact<std::string>();
    if (!target) throw Error(a.config + ": [routes] " + std::string(k.str()) + ": expected a model name (a string)");
    ro.routes[std::string(k.str())] = *target;
  }
  ro.server_bytes = server::kServerBaseBytes + (a.no_webui ? 0 : server::kWebPageBytes);
  StartGpus gpus;
  if (ro.vram_budget.limited()) warn_vram_beyond_devices(ro.vram_budget, ro.vram_budget_text, gpus);
  server::Router router(std::move(specs), ro);
  refuse_models_on_missing_gpus(router, gpus);

  server::ServerOptions so = a.srv;
  so.auth.api_keys = a.api_keys;
  so.auth.admin_api_keys = a.admin_api_keys;
  so.auth.api_key_file = a.api_key_file;
  if (!a.jwt_secret_file.empty()) {
    check_input_file(a.jwt_secret_file, "JWT secret file");
    std::string s = read_text_input(a.jwt_secret_file, 1 << 16, "a JWT secret is a few dozen bytes");
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    so.auth.jwt_secret = s;
  }
  so.auth.jwt_public_key_file = a.jwt_public_key_file;
  so.auth.jwt_issuer = a.jwt_issuer;
  so.auth.jwt_audience = a.jwt_audience;
  so.metrics = a.metrics;
  so.access_log = !a.no_access_log;
  so.webui = !a.no_webui;

  server::HttpServer http(router, so);
  const int port = http.bind();  // refuses an unsafe bind before the model is loaded
  for (const std::string& w : http.warnings()) std::fprintf(stderr, "warning: %s\n", w.c_str());
  const char* scheme = so.ssl_cert_file.empty() ? "http" : "https";
  const std::string host = so.host.find(':') != std::string::npos ? "[" + so.host + "]" : so.host;  // IPv6 in brackets
  if (multi) {
    std::string names;
    for (const server::ModelStatus& m : router.status()) {
      std::string tasks;
      for (server::Task t : m.tasks) tasks += (tasks.empty() ? "" : ",") + std::string(server::task_name(t));
      names += "\n  " + m.name + " (" + tasks + (m.pinned ? ", pinned" : "") + "): " + m.facts.path + ", " +
               format_bytes(static_cast<double>(m.predicted_bytes)) +
               (m.predicted_vram_bytes ? " + " + format_bytes(static_cast<double>(m.predicted_vram_bytes)) + " of device memory" : "");
    }
    std::fprintf(stderr, "lokal serve: listening on %s://%s:%d, %zu models (loaded on first use%s%s):%s\n", scheme, host.c_str(),
                 port, router.size(),
                 ((ro.budget_bytes ? ", budget --ram " + ro.budget_text : std::string()) +
                  (ro.vram_budget.limited() ? ", --vram " + ro.vram_budget_text : std::string())).c_str(),
                 ro.max_loaded ? (", at most " + std::to_string(ro.max_loaded) + " loaded").c_str() : "", names.c_str());
  } else {
    std::fprintf(stderr, "lokal serve: listening on %s://%s:%d (loading %s)\n", scheme, host.c_str(), port, a.model.c_str());
  }
  if (so.webui) {
    const bool any = so.host == "0.0.0.0" || so.host == "::";  // a browser on this machine reaches it on loopback
    std::fprintf(stderr, "lokal serve: chat in a browser at %s://%s:%d/ (--no-webui turns the page off)\n", scheme,
                 any ? "127.0.0.1" : host.c_str(), port);
  }
  std::fflush(stderr);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  std::thread listener([&] { http.listen(); });
  std::atomic<bool> load_failed{false};
  std::string load_error;
  std::thread loader([&] {
    // Pinned models load at start (one model: always); the others on their first request.
    for (size_t i = 0; i < router.size(); ++i) {
      if (!router.spec(i).pinned) continue;
      try {
        router.load(i);
      } catch (const std::exception& e) {
        const std::string why = router.status(i).last_error;
        load_error = multi ? "model '" + router.spec(i).name + "': " + (why.empty() ? e.what() : why) : (why.empty() ? e.what() : why);
        load_failed.store(true);
        return;
      }
      if (!multi) {
        router.for_each_loaded([&](size_t, server::Engine& engine) {
          std::fprintf(stderr, "lokal serve: ready: %s, context %lld tokens x %d sequences, KV cache %s, %d threads, load %.2f s\n",
                       engine.model_id().c_str(), static_cast<long long>(engine.n_ctx()), a.n_parallel,
                       format_bytes(static_cast<double>(engine.scheduler().kv_bytes())).c_str(), engine.n_threads(), engine.load_seconds());
          if (engine.model().device())
            std::fprintf(stderr, "lokal serve: %s, device memory %s\n", gpu_placement(engine.model()).c_str(),
                         format_bytes(static_cast<double>(engine.model_device_bytes())).c_str());
          if (const SpecSetup* sp = engine.spec(); sp && sp->draft_device_bytes() > 0)
            std::fprintf(stderr, "lokal serve: %s, device memory %s (its weights; each sequence's draft cache is "
                         "allocated when it first drafts)\n", gpu_placement(*sp->draft_model(), "draft ").c_str(),
                         format_bytes(static_cast<double>(sp->draft_device_bytes())).c_str());
          if (!engine.template_error().empty())
            std::fprintf(stderr, "warning: %s: chat endpoints answer 400 (give --chat-template)\n", engine.template_error().c_str());
        });
      } else {
        std::fprintf(stderr, "lokal serve: loaded pinned model '%s'\n", router.spec(i).name.c_str());
      }
      std::fflush(stderr);
    }
    if (multi) std::fprintf(stderr, "lokal serve: ready\n");
    std::fflush(stderr);
    server::notify_ready(multi ? "serving " + std::to_string(router.size()) + " models on port " + std::to_string(port)
                               : "serving " + router.spec(0).name + " on port " + std::to_string(port));
  });

  const auto wd = server::watchdog_interval();
  auto last_ping = std::chrono::steady_clock::now();
  while (g_signal.load() == 0 && !load_failed.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (wd.count() > 0 && std::chrono::steady_clock::now() - last_ping >= wd / 2) {
      // WATCHDOG=1 only while every loaded model's scheduler loop goes round: a loop stuck for 10 minutes (a
      // deadlock: one step of a big model's 512-token prompt chunk on a slow CPU can legitimately take a minute)
      // stops the pings, and systemd restarts the service. While loading there is no loop yet.
      double stuck = 0;
      router.for_each_loaded([&](size_t, server::Engine& e) { stuck = std::max(stuck, e.scheduler_stuck_seconds()); });
      if (stuck < 600) server::notify_watchdog();
      last_ping = std::chrono::steady_clock::now();
    }
  }
  loader.join();
  server::notify_stopping();
  if (g_signal.load() != 0) std::fprintf(stderr, "lokal serve: stopping (signal %d): finishing %lld in-flight requests\n", g_signal.load(),
                                         static_cast<long long>(router.in_flight()));
  http.stop();
  listener.join();
  if (load_failed.load()) throw Error(load_error);
  std::fprintf(stderr, "lokal serve: stopped\n");
  return 0;
}

}  // namespace

void register_serve(CLI::App& app, int* rc) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve a model over HTTP: OpenAI, llama-server and Ollama APIs on one port");
  cmd->add_option("-m,--model", a->model, "GGUF model file");
  cmd->add_option("--host", a->srv.host, "Address to listen on (not loopback: needs --api-key/--api-key-file or --no-auth)")->capture_default_str();
  cmd->add_option("--port", a->srv.port, "Port (0: any free port, printed at start)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("-c,--ctx-size", a->ctx, "Longest sequence, prompt + answer (0: model's, max 4096)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--parallel", a->n_parallel, "Sequences generated together (slots)")->capture_default_str()->check(CLI::Range(1, 1024));
  cmd->add_option("-t,--threads", a->threads, "Threads (0: all)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("-b,--batch-size", a->batch, "Tokens per forward step")->capture_default_str()->check(CLI::Range(int64_t(1), int64_t(1) << 16));
  cmd->add_option("--kv-tokens", a->kv_tokens, "Positions of the shared KV cache (0: ctx-size x parallel)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_option("--cache-type-k", a->cache_type_k, "KV cache type for K: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->add_option("--cache-type-v", a->cache_type_v, "KV cache type for V: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  cmd->add_option("--ram", a->ram, "Fit into this much RAM (e.g. 2GiB); several models: all of them together");
  cmd->add_option("--vram", a->vram, "Device memory the models' GPU layers may use on each GPU (e.g. 11GiB), or on "
                  "one (1=6GiB; combine with commas): a model over it is refused, idle ones are unloaded to make room");
  cmd->add_flag("--allow-long-ctx", a->allow_long_ctx, "Accept -c above the model's trained context");
  cmd->add_flag("--no-mmap", a->no_mmap, "Read the model into memory instead of mapping it");
  add_gpu_options(cmd, a->offload);
  cmd->add_flag("--jinja", a->jinja, "Use the model's Jinja chat template (always on; accepted for llama-server compatibility)");
  cmd->add_option("--chat-template", a->chat_template, "Chat template: a built-in name, a .jinja file or tokenizer_config.json");
  cmd->add_option("--pooling", a->pooling, "Embeddings: mean or last of the final hidden states (L2-normalized)")->capture_default_str();
  cmd->add_option("-a,--alias", a->aliases, "Model name clients use (repeatable; the first is the id shown)");
  cmd->add_option("--temp", a->temp, "Default temperature of requests that give none")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", a->top_k, "Default top-k (0: off)")->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--top-p", a->top_p, "Default top-p")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", a->min_p, "Default min-p")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--repeat-penalty", a->repeat_penalty, "Default repeat penalty (1: off)")->check(CLI::Range(1e-3, 100.0));
  cmd->add_option("-s,--seed", a->seed, "Default seed of requests that give none (-1: random per request)");
  cmd->add_option("--system", a->system, "System prompt of chats that bring none");
  add_spec_options(cmd, a->spec);
  cmd->add_option("--api-key", a->api_keys, "API key for inference endpoints (repeatable, or comma-separated)");
  cmd->add_option("--admin-api-key", a->admin_api_keys, "API key with the admin scope too (reload, slots)");
  cmd->add_option("--api-key-file", a->api_key_file, "File of keys: one `KEY [inference|admin] [NAME]` per line");
  cmd->add_option("--jwt-secret-file", a->jwt_secret_file, "Accept HS256 JWT bearer tokens signed with this secret");
  cmd->add_option("--jwt-public-key-file", a->jwt_public_key_file, "Accept RS256/ES256 JWT bearer tokens verified with this PEM key");
  cmd->add_option("--jwt-issuer", a->jwt_issuer, "Required JWT issuer (iss)");
  cmd->add_option("--jwt-audience", a->jwt_audience, "Required JWT audience (aud)");
  cmd->add_flag("--no-auth", a->srv.no_auth, "Allow listening on a non-loopback address without keys (warned)");
  cmd->add_option("--rate-limit-rpm", a->srv.limits.requests_per_minute, "Generation requests per minute per key or client (0: off)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_option("--rate-limit-tpm", a->srv.limits.tokens_per_minute, "Generated tokens per minute per key or client (0: off)")->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 40));
  cmd->add_option("--threads-http", a->srv.http_threads, "Connection threads (0: parallel + queue-size + 8, from 16 to 256)")->capture_default_str()->check(CLI::Range(0, 4096));
  cmd->add_option("--queue-size", a->srv.queue_size, "Requests waiting beyond the running ones before 503")->capture_default_str()->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--max-body", a->srv.max_body_bytes, "Largest request body in bytes (413 above)")->capture_default_str()->check(CLI::Range(uint64_t(1024), uint64_t(1) << 32));
  cmd->add_option("--timeout", a->srv.request_timeout_s, "Seconds a generation may run before it is cut off")->capture_default_str()->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--cors", a->srv.cors_origins, "Allowed browser Origin (repeatable; * for any; default: same-origin only)");
  cmd->add_option("--ssl-key-file", a->srv.ssl_key_file, "TLS private key (PEM)");
  cmd->add_option("--ssl-cert-file", a->srv.ssl_cert_file, "TLS certificate (PEM)");
  cmd->add_flag("--metrics", a->metrics, "Serve Prometheus metrics at /metrics");
  cmd->add_flag("--no-access-log", a->no_access_log, "No JSON access-log line per request on stderr");
  cmd->add_flag("--no-webui", a->no_webui, "No web chat page at / (the APIs only)");
  cmd->add_option("--drain-timeout", a->srv.drain_timeout_s, "Seconds in-flight requests may finish after SIGTERM")->capture_default_str();
  cmd->add_flag("--all-models", a->all_models, "Serve every model of the store (--models-dir), loaded on first use");
  cmd->add_option("--max-loaded", a->max_loaded, "Several models: at most this many loaded at once (0: as --ram allows)")->capture_default_str()->check(CLI::Range(0, 1024));
  cmd->add_option("--keep-alive", a->keep_alive, "Several models: how long an idle model stays loaded (5m, 1h, 0, -1: forever)")->capture_default_str();
  cmd->add_option("--load-timeout", a->load_timeout, "Seconds a request waits for its model to load or for room before 503")->capture_default_str()->check(CLI::Range(0.0, 86400.0));
  cmd->add_option("--config", a->config, "TOML config file (keys: these long option names with _ for -)");
  cmd->add_flag("--print-config", a->print_config, "Print the effective settings as TOML and exit");
  cmd->add_flag("-v,--verbose", a->verbose, "More logging");
  cmd->callback([a, rc, cmd] {
    apply_env_and_config(cmd, a->config, *a);
    *rc = serve(*a, cmd);
  });

  auto svc = std::make_shared<server::UnitOptions>();
  auto force = std::make_shared<bool>(false);
  auto unit_dir = std::make_shared<std::string>();
  auto model = std::make_shared<std::string>();
  auto port = std::make_shared<int>(8080);
  CLI::App* service = app.add_subcommand("service", "Run lokal serve as a systemd service");
  CLI::App* install = service->add_subcommand("install", "Write a hardened systemd unit and a starter config");
  service->require_subcommand(1);
  install->add_option("-m,--model", *model, "GGUF model the service serves (written into a new config)");
  install->add_option("--port", *port, "Port written into a new config")->capture_default_str();
  install->add_flag("--user", svc->user, "A user unit (systemctl --user) instead of a system unit");
  install->add_option("--run-as", svc->user_name, "System unit: run as this existing user (default: DynamicUser)");
  install->add_option("--config", svc->config_path, "Config path (default: /etc/lokal/lokal.toml, or ~/.config/lokal/lokal.toml with --user)");
  install->add_option("--unit-dir", *unit_dir, "Where the unit goes (default: /etc/systemd/system or ~/.config/systemd/user)");
  install->add_flag("--force", *force, "Replace an existing unit file");
  install->callback([svc, force, unit_dir, model, port, rc] {
    server::UnitOptions o = *svc;
    o.binary = std::filesystem::canonical("/proc/self/exe").string();
    if (o.config_path.empty()) o.config_path = server::default_config_path(o.user);
    o.config_path = std::filesystem::absolute(o.config_path).string();
    std::string cfg;
    if (!model->empty()) {
      check_input_file(*model, "GGUF model file");
      const std::string abs = std::filesystem::absolute(*model).string();
      o.models_dir = std::filesystem::path(abs).parent_path().string();
      cfg = "# lokal serve settings (keys: `lokal serve --help` long names with _ for -; see docs/SERVER.md)\n"
            "model = " + toml_quote(abs) + "\nhost = \"127.0.0.1\"\nport = " + std::to_string(*port) +
            "\nmetrics = true\n# api_key_file = \"/etc/lokal/keys\"  # needed to listen beyond 127.0.0.1\n";
    }
    const auto r = server::install_service(o, unit_dir->empty() ? server::default_unit_dir(o.user) : *unit_dir, cfg, *force);
    std::printf("wrote %s\n", r.unit_path.c_str());
    if (r.config_written) std::printf("wrote %s\n", r.config_path.c_str());
    else std::printf("kept %s%s\n", r.config_path.c_str(), cfg.empty() ? " (no -m given: no config written)" : " (it exists)");
    std::printf("next:\n");
    for (const std::string& s : r.next_steps) std::printf("  %s\n", s.c_str());
    *rc = 0;
  });
}

}  // namespace lokal::cli
