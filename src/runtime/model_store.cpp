// runtime/model_store.cpp - the local model store (layout and rules in model_store.h).
#include "runtime/model_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <toml++/toml.h>

#include "core/error.h"
#include "core/gguf.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "model/config.h"

namespace fs = std::filesystem;

namespace lokal {

namespace {

constexpr size_t kMaxPart = 64;
constexpr uint64_t kMaxTemplateBytes = 1 << 20;
constexpr size_t kChunk = 4 << 20;

bool name_char(char c, bool upper_ok) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
         (upper_ok && c >= 'A' && c <= 'Z');
}

// Empty when `part` is a valid name part, else why not.
std::string check_part(const std::string& part, const char* what, bool upper_ok) {
  if (part.empty()) return std::string(what) + " is empty";
  if (part.size() > kMaxPart) return std::string(what) + " is longer than " + std::to_string(kMaxPart) + " characters";
  for (char c : part)
    if (!name_char(c, upper_ok))
      return std::string(what) + " may only hold " + (upper_ok ? "letters" : "lower-case letters") +
             ", digits, '.', '_' and '-'";
  if (part[0] == '.' || part[0] == '-' || part[0] == '_') return std::string(what) + " must start with a letter or digit";
  return {};
}

std::string why_bad_name(const std::string& s, StoreName& out) {
  std::string rest = s;
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos) {
    out.tag = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
    if (auto why = check_part(out.tag, "the tag", true); !why.empty()) return why;
  }
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    out.ns = rest.substr(0, slash);
    rest = rest.substr(slash + 1);
    if (rest.find('/') != std::string::npos) return "a name has at most one '/' (namespace/name)";
    if (auto why = check_part(out.ns, "the namespace", false); !why.empty()) return why;
  }
  out.name = rest;
  return check_part(out.name, "the name", false);
}

std::string hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) s[2 * i] = d[p[i] >> 4], s[2 * i + 1] = d[p[i] & 15];
  return s;
}

struct EvpDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) throw Error("sha256: OpenSSL init failed");
  }
  void update(const void* p, size_t n) {
    if (EVP_DigestUpdate(ctx_.get(), p, n) != 1) throw Error("sha256: OpenSSL update failed");
  }
  std::string hex_digest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), md, &n) != 1) throw Error("sha256: OpenSSL final failed");
    return hex(md, n);
  }

 private:
  std::unique_ptr<EVP_MD_CTX, EvpDeleter> ctx_;
};

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads `path` in pieces, calling `each(data, n)`; returns the file size.
template <class F>
uint64_t read_pieces(const std::string& path, const ModelStore::Progress& progress, F&& each) {
  Fd in;
  in.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in.fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st{};
  if (::fstat(in.fd, &st) != 0) throw Error(path + ": cannot stat: " + std::strerror(errno));
  const uint64_t total = static_cast<uint64_t>(st.st_size);
  std::vector<unsigned char> buf(kChunk);
  uint64_t done = 0;
  for (;;) {
    const ssize_t n = ::read(in.fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": read failed: " + std::strerror(errno));
    }
    if (n == 0) break;
    each(buf.data(), static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
    if (progress) progress(done, total);
  }
  return done;
}

void mkdirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the folder: " + ec.message());
}

template <class T>
std::optional<T> toml_get(const toml::table& t, const char* key, const char* what) {
  const toml::node* n = t.get(key);
  if (!n) return std::nullopt;
  if constexpr (std::is_same_v<T, double>) {
    if (auto v = n->value<double>()) return *v;
  } else {
    if (auto v = n->value_exact<T>()) return *v;
  }
  throw Error(std::string("preset: '") + key + "' must be " + what);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Names

std::string StoreName::str() const { return (ns == "library" ? "" : ns + "/") + name + ":" + tag; }

std::optional<StoreName> try_store_name(const std::string& s) {
  StoreName n;
  if (!why_bad_name(s, n).empty()) return std::nullopt;
  return n;
}

StoreName parse_store_name(const std::string& s) {
  StoreName n;
  const std::string why = why_bad_name(s, n);
  if (!why.empty()) throw Error("model name '" + printable(s) + "': " + why);
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Presets and manifests

bool ModelPreset::empty() const {
  return system.empty() && chat_template.empty() && cache_type_k.empty() && cache_type_v.empty() && draft.empty() &&
         ctx_size == 0 && !temperature && !top_p && !min_p && !repeat_penalty && !top_k && !seed;
}

nlohmann::ordered_json ModelPreset::to_json() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!system.empty()) j["system"] = system;
  if (!chat_template.empty()) j["template"] = chat_template;
  if (ctx_size > 0) j["ctx_size"] = ctx_size;
  if (!cache_type_k.empty()) j["cache_type_k"] = cache_type_k;
  if (!cache_type_v.empty()) j["cache_type_v"] = cache_type_v;
  if (!draft.empty()) j["draft"] = draft;
  nlohmann::ordered_json s = nlohmann::ordered_json::object();
  if (temperature) s["temperature"] = *temperature;
  if (top_k) s["top_k"] = *top_k;
  if (top_p) s["top_p"] = *top_p;
  if (min_p) s["min_p"] = *min_p;
  if (repeat_penalty) s["repeat_penalty"] = *repeat_penalty;
  if (seed) s["seed"] = *seed;
  if (!s.empty()) j["sampling"] = s;
  return j;
}

ModelPreset ModelPreset::from_json(const nlohmann::ordered_json& j) {
  ModelPreset p;
  p.system = j.value("system", "");
  p.chat_template = j.value("template", "");
  p.ctx_size = j.value("ctx_size", int64_t{0});
  p.cache_type_k = j.value("cache_type_k", "");
  p.cache_type_v = j.value("cache_type_v", "");
  p.draft = j.value("draft", "");
  if (auto it = j.find("sampling"); it != j.end() && it->is_object()) {
    const auto& s = *it;
    if (s.contains("temperature")) p.temperature = s["temperature"].get<double>();
    if (s.contains("top_k")) p.top_k = s["top_k"].get<int64_t>();
    if (s.contains("top_p")) p.top_p = s["top_p"].get<double>();
    if (s.contains("min_p")) p.min_p = s["min_p"].get<double>();
    if (s.contains("repeat_penalty")) p.repeat_penalty = s["repeat_penalty"].get<double>();
    if (s.contains("seed")) p.seed = s["seed"].get<int64_t>();
  }
  return p;
}

nlohmann::ordered_json ModelManifest::to_json() const {
  nlohmann::ordered_json j;
  j["schema"] = 1;
  j["name"] = name.str();
  j["digest"] = digest;
  j["size"] = size;
  j["architecture"] = arch;
  j["file_type"] = file_type;
  j["model_name"] = model_name;
  j["parameters"] = n_params;
  j["context_length"] = n_ctx_train;
  j["layers"] = n_layer;
  j["embedding_length"] = n_embd;
  j["chat_template"] = chat_template;
  j["source"] = source;
  j["created"] = created;
  if (!base.empty()) j["base"] = base;
  if (preset) j["preset"] = preset->to_json();
  return j;
}

ModelManifest ModelManifest::from_json(const nlohmann::ordered_json& j, const std::string& where) {
  try {
    ModelManifest m;
    m.name = parse_store_name(j.at("name").get<std::string>());
    m.digest = j.at("digest").get<std::string>();
    if (m.digest.size() != 71 || m.digest.rfind("sha256:", 0) != 0 ||
        m.digest.find_first_not_of("0123456789abcdef", 7) != std::string::npos)
      throw Error("bad digest '" + printable(m.digest) + "'");
    m.size = j.at("size").get<uint64_t>();
    m.arch = j.value("architecture", "");
    m.file_type = j.value("file_type", "");
    m.model_name = j.value("model_name", "");
    m.n_params = j.value("parameters", int64_t{0});
    m.n_ctx_train = j.value("context_length", int64_t{0});
    m.n_layer = j.value("layers", int64_t{0});
    m.n_embd = j.value("embedding_length", int64_t{0});
    m.chat_template = j.value("chat_template", false);
    m.source = j.value("source", "");
    m.created = j.value("created", "");
    m.base = j.value("base", "");
    if (auto it = j.find("preset"); it != j.end()) m.preset = ModelPreset::from_json(*it);
    return m;
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  } catch (const std::exception& e) {
    throw Error(where + ": not a model manifest (" + e.what() + ")");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The store

ModelStore::ModelStore(std::string root) : root_(std::move(root)) {
  if (root_.empty()) throw Error("model store: empty folder name");
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
}

std::string ModelStore::default_root() {
  if (const char* e = std::getenv("LOKAL_MODELS"); e && *e) return e;
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && x[0] == '/') return std::string(x) + "/lokal/models";
  const char* home = std::getenv("HOME");
  if (!home || home[0] != '/')
    throw Error("model store: set --models-dir or LOKAL_MODELS (HOME is not an absolute path)");
  return std::string(home) + "/.local/share/lokal/models";
}

std::string ModelStore::manifest_path(const StoreName& n) const { return root_ + "/manifests/" + n.rel_path(); }

std::string ModelStore::blob_path(const std::string& digest) const {
  return root_ + "/blobs/sha256-" + (digest.rfind("sha256:", 0) == 0 ? digest.substr(7) : digest);
}

void ModelStore::write_manifest(const ModelManifest& m) const {
  const std::string path = manifest_path(m.name);
  mkdirs(fs::path(path).parent_path().string());
  write_file_atomic(path, m.to_json().dump(2) + "\n");
}

std::string sha256_file(const std::string& path, const ModelStore::Progress& progress) {
  Sha256 h;
  read_pieces(path, progress, [&](const unsigned char* p, size_t n) { h.update(p, n); });
  return h.hex_digest();
}

ModelManifest ModelStore::import_file(const std::string& file, const StoreName& name, bool link, bool force,
                                      const Progress& progress) {
  check_input_file(file, "model file");
  if (!force && find(name)) throw Error("model '" + name.str() + "' is already in the store (--force replaces it)");
  // Only a model lokal can run gets in: the header, hyperparameters, tensors and tokenizer are checked first.
  ModelManifest m;
  {
    auto f = GGUFFile::open(file, true);
    const ModelConfig c = validate_model(*f);
    m.arch = c.arch;
    m.model_name = c.name;
    m.n_ctx_train = c.n_ctx_train;
    m.n_layer = c.n_layer;
    m.n_embd = c.n_embd;
    m.file_type = model_file_type(*f);
    m.chat_template = f->has("tokenizer.chat_template");
    for (const auto& t : f->tensors()) m.n_params += t.n_elements();
  }
  mkdirs(root_ + "/blobs");
  std::string digest;
  if (link) {
    digest = sha256_file(file, progress);
    const std::string blob = blob_path(digest);
    if (!fs::exists(blob) && ::link(file.c_str(), blob.c_str()) != 0) {
      const int err = errno;
      if (err == EXDEV)
        throw Error(file + ": --link needs the model store (" + root_ + ") on the same filesystem; import without --link to copy");
      throw Error(file + ": cannot hard-link into " + root_ + "/blobs: " + std::strerror(err));
    }
  } else {
    // Copy and hash in one pass into a temporary file in blobs/ (removed on failure or a fatal signal), then
    // rename it to its digest; an identical blob already there makes the copy unneeded (it is dropped).
    AtomicFile copy(root_ + "/blobs/import");
    Sha256 h;
    read_pieces(file, progress, [&](const unsigned char* p, size_t n) {
      h.update(p, n);
      copy.write(p, n);
    });
    digest = h.hex_digest();
    const std::string blob = blob_path(digest);
    if (!fs::exists(blob)) {
      copy.commit_to(blob);
      ::chmod(blob.c_str(), 0444);
    }
  }
  m.name = name;
  m.digest = "sha256:" + digest;
  m.size = static_cast<uint64_t>(fs::file_size(blob_path(digest)));
  m.source = fs::absolute(file).lexically_normal().string();
  m.created = iso_utc();
  write_manifest(m);
  return m;
}

ModelManifest ModelStore::create_preset(const std::string& toml_text, const std::string& dir, const StoreName& name,
                                        bool force) {
  toml::table t;
  try {
    t = toml::parse(toml_text);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << "preset: " << e.description() << " (line " << e.source().begin.line << ")";
    throw Error(os.str());
  }
  static const char* kTop[] = {"from", "system", "template", "template_file", "ctx_size", "cache_type_k",
                               "cache_type_v", "draft", "sampling"};
  static const char* kSampling[] = {"temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed"};
  for (const auto& [k, v] : t) {
    (void)v;
    if (std::find_if(std::begin(kTop), std::end(kTop), [&](const char* s) { return k.str() == s; }) == std::end(kTop))
      throw Error("preset: unknown key '" + printable(std::string(k.str())) +
                  "' (known: from, system, template, template_file, ctx_size, cache_type_k, cache_type_v, draft, "
                  "[sampling])");
  }
  const auto from = toml_get<std::string>(t, "from", "a model name");
  if (!from) throw Error("preset: 'from' (the base model's name in the store) is required");
  const ModelManifest base = get(parse_store_name(*from));
  ModelPreset p;
  p.system = toml_get<std::string>(t, "system", "a string").value_or("");
  const auto tmpl = toml_get<std::string>(t, "template", "a string");
  const auto tmpl_file = toml_get<std::string>(t, "template_file", "a file name");
  if (tmpl && tmpl_file) throw Error("preset: give 'template' or 'template_file', not both");
  if (tmpl) p.chat_template = *tmpl;
  if (tmpl_file) {
    const std::string path = fs::path(*tmpl_file).is_absolute() ? *tmpl_file : dir + "/" + *tmpl_file;
    p.chat_template = read_text_input(path, kMaxTemplateBytes, "the most a chat template may have");
  }
  if (!p.chat_template.empty()) {
    // Kept as a file (content-addressed, templates/<sha256>.jinja) so commands take it as --chat-template FILE.
    Sha256 h;
    h.update(p.chat_template.data(), p.chat_template.size());
    const std::string path = root_ + "/templates/" + h.hex_digest() + ".jinja";
    mkdirs(root_ + "/templates");
    if (!fs::exists(path)) write_file_atomic(path, p.chat_template);
    p.chat_template = path;
  }
  if (const auto c = toml_get<int64_t>(t, "ctx_size", "an integer")) {
    if (*c < 1 || *c > (int64_t{1} << 24)) throw Error("preset: 'ctx_size' must be 1..16777216");
    p.ctx_size = *c;
  }
  for (const char* key : {"cache_type_k", "cache_type_v"}) {
    const auto v = toml_get<std::string>(t, key, "a cache type");
    if (!v) continue;
    if (*v != "f32" && *v != "f16" && *v != "bf16" && *v != "q8_0" && *v != "q4_0")
      throw Error(std::string("preset: '") + key + "' must be f32, f16, bf16, q8_0 or q4_0");
    (std::string(key) == "cache_type_k" ? p.cache_type_k : p.cache_type_v) = *v;
  }
  if (const auto d = toml_get<std::string>(t, "draft", "a model name or GGUF path")) {
    if (try_store_name(*d) && find(*try_store_name(*d))) p.draft = *d;
    else {
      const std::string path = fs::path(*d).is_absolute() ? *d : dir + "/" + *d;
      check_input_file(path, "draft model");
      p.draft = fs::absolute(path).lexically_normal().string();
    }
  }
  if (const toml::node* sn = t.get("sampling")) {
    const toml::table* s = sn->as_table();
    if (!s) throw Error("preset: 'sampling' must be a table ([sampling])");
    for (const auto& [k, v] : *s) {
      (void)v;
      if (std::find_if(std::begin(kSampling), std::end(kSampling), [&](const char* x) { return k.str() == x; }) ==
          std::end(kSampling))
        throw Error("preset: unknown key 'sampling." + printable(std::string(k.str())) +
                    "' (known: temperature, top_k, top_p, min_p, repeat_penalty, seed)");
    }
    p.temperature = toml_get<double>(*s, "temperature", "a number");
    p.top_k = toml_get<int64_t>(*s, "top_k", "an integer");
    p.top_p = toml_get<double>(*s, "top_p", "a number");
    p.min_p = toml_get<double>(*s, "min_p", "a number");
    p.repeat_penalty = toml_get<double>(*s, "repeat_penalty", "a number");
    p.seed = toml_get<int64_t>(*s, "seed", "an integer");
    if (p.temperature && !(*p.temperature >= 0 && *p.temperature <= 100)) throw Error("preset: 'sampling.temperature' must be 0..100");
    if (p.top_p && !(*p.top_p >= 0 && *p.top_p <= 1)) throw Error("preset: 'sampling.top_p' must be 0..1");
    if (p.min_p && !(*p.min_p >= 0 && *p.min_p <= 1)) throw Error("preset: 'sampling.min_p' must be 0..1");
    if (p.top_k && *p.top_k < 0) throw Error("preset: 'sampling.top_k' must be >= 0");
    if (p.repeat_penalty && !(*p.repeat_penalty > 0 && *p.repeat_penalty <= 100))
      throw Error("preset: 'sampling.repeat_penalty' must be > 0");
  }
  if (!force && find(name)) throw Error("model '" + name.str() + "' is already in the store (--force replaces it)");
  ModelManifest m = base;
  m.name = name;
  m.base = base.name.str();
  m.source = base.preset ? base.source : base.name.str();
  if (base.preset) {
    // A preset of a preset: the settings of the newer one win, the rest are inherited.
    ModelPreset merged = *base.preset;
    nlohmann::ordered_json a = merged.to_json(), b = p.to_json();
    a.merge_patch(b);
    p = ModelPreset::from_json(a);
  }
  m.preset = p;
  m.created = iso_utc();
  write_manifest(m);
  return m;
}

ModelManifest ModelStore::copy(const StoreName& from, const StoreName& to, bool force) {
  ModelManifest m = get(from);
  if (from == to) throw Error("model '" + from.str() + "': source and destination are the same name");
  if (!force && find(to)) throw Error("model '" + to.str() + "' is already in the store (--force replaces it)");
  m.name = to;
  m.created = iso_utc();
  write_manifest(m);
  return m;
}

bool ModelStore::remove(const StoreName& name) {
  const ModelManifest m = get(name);
  const std::string path = manifest_path(name);
  if (::unlink(path.c_str()) != 0) throw Error(path + ": cannot remove: " + std::strerror(errno));
  std::error_code ec;
  // Empty name and namespace folders go too.
  fs::path dir = fs::path(path).parent_path();
  for (int i = 0; i < 2 && fs::is_empty(dir, ec) && !ec; ++i) {
    fs::remove(dir, ec);
    dir = dir.parent_path();
  }
  for (const ModelManifest& other : list())
    if (other.digest == m.digest) return false;
  const std::string blob = blob_path(m.digest);
  if (::unlink(blob.c_str()) != 0 && errno != ENOENT) throw Error(blob + ": cannot remove: " + std::strerror(errno));
  return true;
}

std::vector<ModelManifest> ModelStore::list() const {
  std::vector<ModelManifest> out;
  const fs::path dir = root_ + "/manifests";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (!it->is_regular_file() || it->path().extension() != ".json") continue;
    try {
      const std::string text = read_text_input(it->path().string(), 16 << 20, "the most a manifest may have");
      const auto j = nlohmann::ordered_json::parse(text);
      ModelManifest m = ModelManifest::from_json(j, it->path().string());
      if (manifest_path(m.name) != it->path().string())
        throw Error(it->path().string() + ": names '" + m.name.str() + "', which belongs elsewhere");
      out.push_back(std::move(m));
    } catch (const std::exception& e) {
      log_msg(LogLevel::Warn, "model store: skipping %s", printable(e.what()).c_str());
    }
  }
  std::sort(out.begin(), out.end(), [](const ModelManifest& a, const ModelManifest& b) { return a.name.str() < b.name.str(); });
  return out;
}

std::optional<ModelManifest> ModelStore::find(const StoreName& name) const {
  const std::string path = manifest_path(name);
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  const std::string text = read_text_input(path, 16 << 20, "the most a manifest may have");
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const std::exception& e) {
    throw Error(path + ": not a model manifest (" + e.what() + ")");
  }
  return ModelManifest::from_json(j, path);
}

ModelManifest ModelStore::get(const StoreName& name) const {
  auto m = find(name);
  if (!m) throw Error("model '" + name.str() + "' is not in the store (" + root_ + "); see lokal models list");
  return *m;
}

std::string ModelStore::verify(const ModelManifest& m, const Progress& progress) const {
  const std::string blob = blob_path(m.digest);
  struct stat st{};
  if (::stat(blob.c_str(), &st) != 0) return blob + ": missing";
  if (static_cast<uint64_t>(st.st_size) != m.size)
    return blob + ": " + std::to_string(st.st_size) + " bytes, the manifest says " + std::to_string(m.size);
  const std::string d = "sha256:" + sha256_file(blob, progress);
  if (d != m.digest) return blob + ": content changed (sha256 " + d.substr(7, 12) + "..., expected " + m.digest.substr(7, 12) + "...)";
  return {};
}

std::optional<ResolvedModel> resolve_model_arg(const std::string& arg, const ModelStore& store) {
  struct stat st{};
  if (::stat(arg.c_str(), &st) == 0) return ResolvedModel{arg, "", std::nullopt};
  const auto n = try_store_name(arg);
  if (!n) return std::nullopt;
  const auto m = store.find(*n);
  if (!m) return std::nullopt;
  return ResolvedModel{store.blob_path(m->digest), m->name.str(), m->preset};
}

}  // namespace lokal
