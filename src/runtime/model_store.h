// runtime/model_store.h - the local model store: GGUF files kept under names, like `ollama list` but offline.
//
// Layout under the root (--models-dir, else $LOKAL_MODELS, else $XDG_DATA_HOME/lokal/models, else
// ~/.local/share/lokal/models):
//   blobs/sha256-<64 hex>            the GGUF bytes, named by their SHA-256, read-only (0444); one copy however many
//                                    names point at it (import copies the file, or hard-links it with --link)
//   manifests/<ns>/<name>/<tag>.json one per name: the blob's digest and size, facts read from the GGUF header
//                                    (architecture, file type, parameters, trained context, chat template) and, for a
//                                    preset, its settings (see ModelPreset)
// Names are `[namespace/]name[:tag]`: lower-case letters, digits, '.', '_' and '-' (a name and a namespace start
// with a letter or digit, at most 64 characters each); tags may also hold upper-case letters and default to
// "latest"; the namespace defaults to "library" (Ollama's convention) and is not shown. Every write goes through a
// temporary file renamed into place, so an interrupted import leaves the store as it was; a blob no manifest names
// any more is deleted by `rm`. Nothing here touches the network: importing a file is the only way in.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lokal {

struct StoreName {
  std::string ns = "library", name, tag = "latest";
  // "name:tag", or "ns/name:tag" outside the default namespace.
  std::string str() const;
  // The manifest's path under manifests/.
  std::string rel_path() const { return ns + "/" + name + "/" + tag + ".json"; }
  bool operator==(const StoreName&) const = default;
};

// Parses "[ns/]name[:tag]"; throws lokal::Error naming what is wrong ("model name 'A b': ...").
StoreName parse_store_name(const std::string& s);
// The same without throwing.
std::optional<StoreName> try_store_name(const std::string& s);

// A preset: a base model with default settings (the role of Ollama's Modelfile). Written as TOML:
//   from = "tinychat"               # a store name or a GGUF path (required)
//   system = "You are terse."       # system prompt (chat)
//   template_file = "x.jinja"       # or template = "..." : a chat template replacing the GGUF's
//   ctx_size = 4096
//   cache_type_k = "q8_0"           # cache_type_v likewise
//   draft = "tinychat-draft"        # a draft model for speculative decoding: store name or GGUF path
//   [sampling]
//   temperature = 0.7               # top_k, top_p, min_p, repeat_penalty, seed
// Unknown keys are errors (a typo must not be ignored silently).
struct ModelPreset {
  // chat_template: the path of the template's copy in the store (templates/<sha256>.jinja).
  std::string system, chat_template, cache_type_k, cache_type_v, draft;
  int64_t ctx_size = 0;
  std::optional<double> temperature, top_p, min_p, repeat_penalty;
  std::optional<int64_t> top_k, seed;
  bool empty() const;
  nlohmann::ordered_json to_json() const;
  static ModelPreset from_json(const nlohmann::ordered_json& j);
};

struct ModelManifest {
  StoreName name;
  std::string digest;  // "sha256:<hex>"
  uint64_t size = 0;
  // Facts from the GGUF header.
  std::string arch, file_type, model_name;
  int64_t n_params = 0, n_ctx_train = 0, n_layer = 0, n_embd = 0;
  bool chat_template = false;
  // Where it came from: the imported file, or the preset's base name.
  std::string source;
  std::string created;  // UTC, ISO 8601
  std::optional<ModelPreset> preset;
  std::string base;  // a preset's base model name ("" for an imported file)

  nlohmann::ordered_json to_json() const;
  static ModelManifest from_json(const nlohmann::ordered_json& j, const std::string& where);
};

class ModelStore {
 public:
  explicit ModelStore(std::string root);
  // --models-dir if given, else $LOKAL_MODELS, else $XDG_DATA_HOME/lokal/models, else $HOME/.local/share/lokal/models.
  static std::string default_root();
  const std::string& root() const { return root_; }

  using Progress = std::function<void(uint64_t done, uint64_t total)>;
  // Checks that `file` is a GGUF model lokal can run (validate_model), hashes it, copies (or hard-links) it into
  // blobs/ unless that blob is there already, and writes the manifest. An existing name is replaced only with
  // `force` (else an error). Returns the manifest written.
  ModelManifest import_file(const std::string& file, const StoreName& name, bool link, bool force,
                            const Progress& progress = {});
  // A preset from TOML text (see ModelPreset); `dir` resolves relative paths in it (template_file, from, draft).
  ModelManifest create_preset(const std::string& toml_text, const std::string& dir, const StoreName& name,
                              bool force);
  // A second name for the same model (a manifest copy).
  ModelManifest copy(const StoreName& from, const StoreName& to, bool force);
  // Removes a name; deletes its blob when no other manifest uses it. Returns whether the blob was deleted.
  bool remove(const StoreName& name);

  std::vector<ModelManifest> list() const;  // sorted by name
  std::optional<ModelManifest> find(const StoreName& name) const;
  ModelManifest get(const StoreName& name) const;  // throws "model 'x' is not in the store (ROOT); see lokal models list"
  std::string blob_path(const std::string& digest) const;
  // Re-hashes the blob: "" when it matches, else what is wrong.
  std::string verify(const ModelManifest& m, const Progress& progress = {}) const;

 private:
  std::string manifest_path(const StoreName& n) const;
  void write_manifest(const ModelManifest& m) const;
  std::string root_;
};

// What a model argument (-m NAME) resolves to: a GGUF path and, for a preset, its settings.
struct ResolvedModel {
  std::string path;
  std::string name;  // the store name ("" when `arg` was a path)
  std::optional<ModelPreset> preset;
};
// `arg` as a path when such a file exists, else as a store name found in `store`; nullopt when neither.
std::optional<ResolvedModel> resolve_model_arg(const std::string& arg, const ModelStore& store);

// SHA-256 of a file as 64 lower-case hex digits, read in 4 MiB pieces.
std::string sha256_file(const std::string& path, const ModelStore::Progress& progress = {});

}  // namespace lokal
