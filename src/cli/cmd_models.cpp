// `lokal models`: the local model store (runtime/model_store.h) - import, create (presets), list, show, cp, rm - and
// the resolution of store names wherever a command takes a model (-m NAME, --draft NAME).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/safe_io.h"
#include "runtime/model_store.h"

namespace lokal::cli {

namespace {

struct ModelsArgs {
  std::string dir;
  std::string file, name, name2, preset_file;
  bool link = false, force = false, json = false, verify = false, quiet = false;
};

std::string store_root(const ModelsArgs& a) { return a.dir.empty() ? ModelStore::default_root() : a.dir; }

// "4.1M", "1.5B": parameters like `ollama list`.
std::string short_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.1fB", n / 1e9);
  else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

// A progress line on stderr for long reads (import, verify): "importing: 1.23 GiB / 4.00 GiB (30%)".
ModelStore::Progress progress_line(const char* what, bool quiet) {
  if (quiet) return {};
  auto last = std::make_shared<int>(-1);
  return [what, last](uint64_t done, uint64_t total) {
    const int pct = total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
    if (pct == *last) return;
    *last = pct;
    std::fprintf(stderr, "\r%s: %s / %s (%d%%)%s", what, format_bytes(static_cast<double>(done)).c_str(),
                 format_bytes(static_cast<double>(total)).c_str(), pct, done >= total ? "\n" : "");
    std::fflush(stderr);
  };
}

void print_manifest(const ModelManifest& m) {
  std::printf("name:            %s\n", m.name.str().c_str());
  if (!m.base.empty()) std::printf("preset of:       %s\n", m.base.c_str());
  std::printf("digest:          %s\n", m.digest.c_str());
  std::printf("size:            %s (%llu bytes)\n", format_bytes(static_cast<double>(m.size)).c_str(),
              static_cast<unsigned long long>(m.size));
  std::printf("architecture:    %s\n", printable(m.arch).c_str());
  if (!m.model_name.empty()) std::printf("model name:      %s\n", printable(m.model_name).c_str());
  std::printf("file type:       %s\n", m.file_type.c_str());
  std::printf("parameters:      %lld (%s)\n", static_cast<long long>(m.n_params), short_count(m.n_params).c_str());
  std::printf("context length:  %lld\n", static_cast<long long>(m.n_ctx_train));
  std::printf("layers:          %lld, width %lld\n", static_cast<long long>(m.n_layer), static_cast<long long>(m.n_embd));
  std::printf("chat template:   %s\n", m.chat_template ? "yes" : "no");
  std::printf("source:          %s\n", printable(m.source).c_str());
  std::printf("created:         %s\n", m.created.c_str());
  if (m.preset && !m.preset->empty()) std::printf("preset:          %s\n", m.preset->to_json().dump().c_str());
}

void models_list(const ModelsArgs& a) {
  ModelStore store(store_root(a));
  const auto all = store.list();
  if (a.json) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const auto& m : all) j.push_back(m.to_json());
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  if (all.empty()) {
    std::printf("no models in %s (add one: lokal models import FILE.gguf NAME)\n", store.root().c_str());
    return;
  }
  std::printf("%-32s %-14s %10s  %-10s %-16s %8s  %s\n", "NAME", "ID", "SIZE", "PARAMS", "QUANTIZATION", "CONTEXT",
              "MODIFIED");
  for (const auto& m : all)
    std::printf("%-32s %-14s %10s  %-10s %-16s %8lld  %s\n", m.name.str().c_str(), m.digest.substr(7, 12).c_str(),
                format_bytes(static_cast<double>(m.size)).c_str(), short_count(m.n_params).c_str(),
                m.file_type.c_str(), static_cast<long long>(m.n_ctx_train), m.created.c_str());
}

}  // namespace

void register_models(CLI::App& app, int* rc) {
  auto a = std::make_shared<ModelsArgs>();
  CLI::App* cmd = app.add_subcommand("models", "Keep GGUF models under names: import, create presets, list, show, cp, rm");
  cmd->require_subcommand(1);
  auto dir_opt = [&](CLI::App* c) {
    c->add_option("--models-dir", a->dir, "The store's folder (default: $LOKAL_MODELS, else ~/.local/share/lokal/models)")
        ->type_name("DIR");
  };

  CLI::App* imp = cmd->add_subcommand("import", "Copy (or hard-link) a GGUF file into the store under a name");
  imp->add_option("file", a->file, "The GGUF model file")->required()->type_name("FILE.gguf");
  imp->add_option("name", a->name, "[namespace/]name[:tag] (default: the file's name without .gguf)")->type_name("NAME");
  imp->add_flag("--link", a->link, "Hard-link instead of copying (same filesystem; the file is then shared, not copied)");
  imp->add_flag("-f,--force", a->force, "Replace an existing name");
  imp->add_flag("-q,--quiet", a->quiet, "No progress");
  dir_opt(imp);
  imp->callback([a, rc] {
    ModelStore store(store_root(*a));
    std::string name = a->name;
    if (name.empty()) {
      name = std::filesystem::path(a->file).stem().string();
      for (char& c : name) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
    const StoreName n = parse_store_name(name);
    const auto m = store.import_file(a->file, n, a->link, a->force, progress_line("importing", a->quiet || !isatty(2)));
    std::printf("imported %s as %s (%s, %s, %s)\n", printable(a->file).c_str(), m.name.str().c_str(),
                m.digest.substr(0, 19).c_str(), format_bytes(static_cast<double>(m.size)).c_str(), m.file_type.c_str());
    *rc = 0;
  });

  CLI::App* cre = cmd->add_subcommand("create", "Make a preset: a stored model with default settings from a TOML file");
  cre->add_option("name", a->name, "[namespace/]name[:tag] of the preset")->required()->type_name("NAME");
  cre->add_option("-f,--file", a->preset_file, "The preset (TOML: from, system, template_file, ctx_size, cache_type_k, "
                                               "cache_type_v, draft, [sampling]; see docs/MODELS.md)")
      ->required()->type_name("PRESET.toml");
  cre->add_flag("--force", a->force, "Replace an existing name");
  dir_opt(cre);
  cre->callback([a, rc] {
    ModelStore store(store_root(*a));
    const std::string text = read_text_input(a->preset_file, 1 << 20, "the most a preset may have");
    const std::string dir = std::filesystem::absolute(a->preset_file).parent_path().string();
    const auto m = store.create_preset(text, dir, parse_store_name(a->name), a->force);
    std::printf("created %s from %s: %s\n", m.name.str().c_str(), m.base.c_str(), m.preset->to_json().dump().c_str());
    *rc = 0;
  });

  CLI::App* ls = cmd->add_subcommand("list", "The stored models: name, id, size, parameters, quantization, context");
  ls->alias("ls");
  ls->add_flag("--json", a->json, "JSON: every manifest");
  dir_opt(ls);
  ls->callback([a, rc] {
    models_list(*a);
    *rc = 0;
  });

  CLI::App* show = cmd->add_subcommand("show", "One model's manifest; --verify re-hashes its file");
  show->add_option("name", a->name, "The model's name")->required()->type_name("NAME");
  show->add_flag("--json", a->json, "JSON");
  show->add_flag("--verify", a->verify, "Check the stored file against its SHA-256 digest");
  dir_opt(show);
  show->callback([a, rc] {
    ModelStore store(store_root(*a));
    const auto m = store.get(parse_store_name(a->name));
    if (a->json) {
      auto j = m.to_json();
      j["path"] = store.blob_path(m.digest);
      std::printf("%s\n", j.dump(2).c_str());
    } else {
      print_manifest(m);
      std::printf("path:            %s\n", store.blob_path(m.digest).c_str());
    }
    *rc = 0;
    if (a->verify) {
      const std::string why = store.verify(m, progress_line("verifying", !isatty(2)));
      if (why.empty()) {
        std::printf("verify:          ok (sha256 matches)\n");
      } else {
        std::fprintf(stderr, "error: %s\n", why.c_str());
        *rc = 1;
      }
    }
  });

  CLI::App* cp = cmd->add_subcommand("cp", "Give a stored model a second name (no copy of the file)");
  cp->add_option("from", a->name, "Existing name")->required()->type_name("NAME");
  cp->add_option("to", a->name2, "New name")->required()->type_name("NAME");
  cp->add_flag("--force", a->force, "Replace an existing name");
  dir_opt(cp);
  cp->callback([a, rc] {
    ModelStore store(store_root(*a));
    const auto m = store.copy(parse_store_name(a->name), parse_store_name(a->name2), a->force);
    std::printf("copied %s to %s\n", parse_store_name(a->name).str().c_str(), m.name.str().c_str());
    *rc = 0;
  });

  CLI::App* rm = cmd->add_subcommand("rm", "Remove a name; its file goes when no other name uses it");
  rm->add_option("name", a->name, "The model's name")->required()->type_name("NAME");
  dir_opt(rm);
  rm->callback([a, rc] {
    ModelStore store(store_root(*a));
    const StoreName n = parse_store_name(a->name);
    const auto m = store.get(n);
    const bool freed = store.remove(n);
    std::printf("removed %s%s\n", n.str().c_str(),
                freed ? (" (deleted its file, " + format_bytes(static_cast<double>(m.size)) + ")").c_str()
                      : " (its file is still used by another name)");
    *rc = 0;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Store names on the command line

namespace {

// Whether args[from..] (up to a "--") give option `o` in any of its spellings.
bool given(const std::vector<std::string>& args, size_t from, const CLI::Option* o) {
  for (size_t i = from; i < args.size() && args[i] != "--"; ++i) {
    const std::string& s = args[i];
    for (const std::string& l : o->get_lnames())
      if (s == "--" + l || s.rfind("--" + l + "=", 0) == 0) return true;
    for (const std::string& sn : o->get_snames())
      if (s.size() >= 2 && s[0] == '-' && s[1] != '-' && s.substr(1, sn.size()) == sn) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> resolve_store_models(std::vector<std::string> args, const CLI::App& app) {
  if (args.size() < 2 || args[1].empty() || args[1][0] == '-') return args;
  const CLI::App* sub = nullptr;
  for (const CLI::App* s : app.get_subcommands({}))
    if (s->check_name(args[1])) sub = s;
  if (!sub || sub->get_name() == "models") return args;
  // --models-dir DIR works with every command: it is taken out here (the commands themselves do not declare it) and
  // becomes $LOKAL_MODELS for the rest of the process, so a store name found later (serve's config file) uses it too.
  std::optional<std::string> dir;
  for (size_t i = 2; i < args.size() && args[i] != "--"; ++i) {
    if (args[i] == "--models-dir" && i + 1 < args.size()) {
      dir = args[i + 1];
      args.erase(args.begin() + static_cast<ptrdiff_t>(i), args.begin() + static_cast<ptrdiff_t>(i) + 2);
      --i;
    } else if (args[i].rfind("--models-dir=", 0) == 0) {
      dir = args[i].substr(13);
      args.erase(args.begin() + static_cast<ptrdiff_t>(i));
      --i;
    }
  }
  if (dir) {
    if (dir->empty()) throw Error("--models-dir: empty folder name");
    ::setenv("LOKAL_MODELS", dir->c_str(), 1);
  }
  std::unique_ptr<ModelStore> store;
  try {
    store = std::make_unique<ModelStore>(ModelStore::default_root());
  } catch (const Error&) {
    return args;  // no HOME and no --models-dir / LOKAL_MODELS: paths only
  }
  const size_t first = 2;
  std::vector<std::string> extra;
  std::optional<ResolvedModel> main_model;
  for (size_t i = first; i < args.size() && args[i] != "--"; ++i) {
    const std::string& s = args[i];
    const bool model_flag = s == "-m" || s == "--model";
    const bool draft_flag = s == "--draft" || s == "--model-draft" || s == "-md";
    std::string* value = nullptr;
    std::string inline_prefix;
    if ((model_flag || draft_flag) && i + 1 < args.size()) {
      value = &args[i + 1];
    } else {
      for (const char* p : {"--model=", "--draft=", "--model-draft="})
        if (s.rfind(p, 0) == 0) {
          inline_prefix = p;
          break;
        }
    }
    std::string v = value ? *value : inline_prefix.empty() ? std::string() : s.substr(inline_prefix.size());
    if (v.empty()) continue;
    const auto r = resolve_model_arg(v, *store);
    if (!r || r->name.empty()) continue;
    if (value) *value = r->path;
    else args[i] = inline_prefix + r->path;
    if ((model_flag || inline_prefix == "--model=") && !main_model) main_model = r;
    if (value) ++i;
  }
  if (!main_model) return args;
  // The served model's id is its store name, not the blob's file name.
  auto add = [&](const char* name, const std::string& value) {
    const CLI::Option* o = sub->get_option_no_throw(name);
    if (!o || given(args, first, o)) return;
    extra.push_back(name);
    extra.push_back(value);
  };
  if (sub->get_name() == "serve") add("--alias", main_model->name);
  if (main_model->preset) {
    const ModelPreset& p = *main_model->preset;
    auto num = [](double d) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.9g", d);
      return std::string(buf);
    };
    if (p.ctx_size > 0) add("--ctx-size", std::to_string(p.ctx_size));
    if (!p.cache_type_k.empty()) add("--cache-type-k", p.cache_type_k);
    if (!p.cache_type_v.empty()) add("--cache-type-v", p.cache_type_v);
    if (!p.system.empty()) add("--system", p.system);
    if (!p.chat_template.empty()) add("--chat-template", p.chat_template);
    if (!p.draft.empty()) {
      const auto d = resolve_model_arg(p.draft, *store);
      add("--model-draft", d ? d->path : p.draft);
    }
    if (p.temperature) add("--temp", num(*p.temperature));
    if (p.top_k) add("--top-k", std::to_string(*p.top_k));
    if (p.top_p) add("--top-p", num(*p.top_p));
    if (p.min_p) add("--min-p", num(*p.min_p));
    if (p.repeat_penalty) add("--repeat-penalty", num(*p.repeat_penalty));
    if (p.seed) add("--seed", std::to_string(*p.seed));
  }
  // Right after the subcommand, so that a user's "--" and positionals stay where they were.
  args.insert(args.begin() + 2, extra.begin(), extra.end());
  return args;
}

}  // namespace lokal::cli
