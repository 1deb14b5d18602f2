// tools/convert.cpp - Hugging Face / llama2.c -> GGUF and GGUF -> Hugging Face (rules in convert.h).
#include "tools/convert.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/safe_io.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/mmap.h"
#include "core/quant.h"
#include "model/config.h"
#include "core/safetensors.h"

namespace lokal {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

// GGUF / SentencePiece token types (the same numbers in both).
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;

// ---------------------------------------------------------------- small helpers

struct Notes {
  const std::function<void(const std::string&)>* cb = nullptr;
  std::vector<std::string>* list = nullptr;
  void operator()(const std::string& s) const {
    if (list) list->push_back(s);
    if (cb && *cb) (*cb)(s);
  }
};

bool is_file(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return ss.str();
}

json read_json(const std::string& path) {
  const std::string text = read_all(path);
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(path + ": malformed JSON");
  if (!j.is_object()) throw Error(path + ": expected a JSON object");
  return j;
}

// Atomic (core/safe_io.h): a temporary file renamed into place, never a half-written or truncated file.
void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text); }

std::string dump_json(const json& j, const std::string& path) {
  try {
    return j.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw Error(path + ": cannot write JSON (a string is not valid UTF-8?): " + e.what());
  }
}
std::string dump_json(const ojson& j, const std::string& path) {
  try {
    return j.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw Error(path + ": cannot write JSON (a string is not valid UTF-8?): " + e.what());
  }
}

int64_t cfg_int(const json& c, const char* key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) throw Error(where + ": missing \"" + key + "\"");
  if (!it->is_number_integer() && !it->is_number_unsigned()) throw Error(where + ": \"" + key + "\" is not an integer");
  const int64_t v = it->get<int64_t>();
  if (v <= 0 || v > (int64_t{1} << 40)) throw Error(where + ": \"" + key + "\" = " + std::to_string(v) + " is out of range");
  return v;
}
std::optional<int64_t> cfg_opt_int(const json& c, const char* key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return std::nullopt;
  return cfg_int(c, key, where);
}
std::optional<double> cfg_opt_float(const json& c, const char* key, const std::string& where) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw Error(where + ": \"" + key + "\" is not a number");
  return it->get<double>();
}

std::string ne_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// ---------------------------------------------------------------- element conversion

void row_to_f32(DType st, const uint8_t* src, float* dst, int64_t n) {
  switch (st) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_fp32(h);
      }
      return;
    default: dequantize_row(st, src, dst, n);
  }
}

void row_from_f32(const float* src, DType to, uint8_t* dst, int64_t n) {
  switch (to) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    default: throw Error(std::string("internal: cannot convert to ") + type_name(to));
  }
}

size_t src_row_bytes(DType st, int64_t row_len) {
  if (st == DType::F64) return static_cast<size_t>(row_len) * 8;
  return row_size(st, row_len);
}

// One tensor to copy: rows of `row_len` elements, read from `src` (row r of the output comes from source row
// perm(r)), converted from `st` to `to`.
struct RowCopy {
  const uint8_t* src = nullptr;
  DType st = DType::F32;
  DType to = DType::F32;
  int64_t row_len = 0, n_rows = 0;
  int64_t perm_heads = 0;   // > 0: rotary row permutation over this many heads
  bool to_hf = false;       // direction of the permutation
};

// Row permutation between HF rotate-half order and GGUF's interleaved (GPT-J style) order, per head of hd rows:
// GGUF row 2j+s  <->  HF row s*hd/2+j.
int64_t perm_row(const RowCopy& c, int64_t r) {
  if (c.perm_heads <= 0) return r;
  const int64_t hd = c.n_rows / c.perm_heads, half = hd / 2;
  const int64_t h = r / hd, k = r % hd;
  if (!c.to_hf) return h * hd + (k % 2) * half + k / 2;  // output GGUF row k=2j+s <- HF row s*half+j
  return h * hd + 2 * (k % half) + k / half;               // output HF row k=s*half+j <- GGUF row 2j+s
}

void copy_rows(const RowCopy& c, const GGUFWriter::Sink& out) {
  const size_t in_bytes = src_row_bytes(c.st, c.row_len);
  const size_t out_bytes = row_size(c.to, c.row_len);
  const bool same = c.st == c.to;
  const int64_t rows_per_chunk = std::max<int64_t>(1, static_cast<int64_t>((4u << 20) / std::max<size_t>(out_bytes, 1)));
  std::vector<uint8_t> buf;
  std::vector<float> tmp(same ? 0 : static_cast<size_t>(c.row_len));
  for (int64_t r0 = 0; r0 < c.n_rows; r0 += rows_per_chunk) {
    const int64_t r1 = std::min(c.n_rows, r0 + rows_per_chunk);
    if (same && c.perm_heads <= 0) {
      out(c.src + static_cast<size_t>(r0) * in_bytes, static_cast<size_t>(r1 - r0) * in_bytes);
      continue;
    }
    buf.resize(static_cast<size_t>(r1 - r0) * out_bytes);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* s = c.src + static_cast<size_t>(perm_row(c, r)) * in_bytes;
      uint8_t* d = buf.data() + static_cast<size_t>(r - r0) * out_bytes;
      if (same) {
        std::memcpy(d, s, out_bytes);
      } else {
        row_to_f32(c.st, s, tmp.data(), c.row_len);
        row_from_f32(tmp.data(), c.to, d, c.row_len);
      }
    }
    out(buf.data(), buf.size());
  }
}

std::optional<DType> st_dtype(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "F64") return DType::F64;
  return std::nullopt;
}

const char* st_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    default: return type_name(t);
  }
}

// Output type of a tensor: 1-D tensors F32; others the requested type, else the stored one (F64 -> F32).
DType out_type(DType stored, size_t n_dims, const std::optional<DType>& outtype) {
  if (n_dims <= 1) return DType::F32;
  if (outtype) return *outtype;
  return stored == DType::F64 ? DType::F32 : stored;
}

uint32_t file_type_of(const std::vector<DType>& types) {
  bool f16 = false, bf16 = false;
  for (DType t : types) {
    f16 = f16 || t == DType::F16;
    bf16 = bf16 || t == DType::BF16;
  }
  return bf16 ? 32u : f16 ? 1u : 0u;
}

// Adds a tensor to the writer that streams `c` and reports progress.
struct TensorAdder {
  GGUFWriter& w;
  const ConvertOptions& opt;
  size_t count = 0;
  size_t next = 0;
  void add(const std::string& name, std::vector<int64_t> ne, RowCopy c) {
    const size_t index = next++;
    const size_t bytes = GGUFWriter::tensor_size(c.to, ne, name);
    ConvertTensorProgress pr;
    pr.index = index;
    pr.count = count;
    pr.name = name;
    pr.from = st_name(c.st);
    pr.to = c.to;
    pr.ne = ne;
    pr.bytes = bytes;
    const auto* cb = &opt.on_tensor;
    w.add_tensor(name, c.to, std::move(ne), [c, pr, cb](const GGUFWriter::Sink& out) {
      copy_rows(c, out);
      if (*cb) (*cb)(pr);
    });
  }
};

// ---------------------------------------------------------------- SentencePiece model protobuf (subset)

struct SpPiece {
  std::string piece;
  float score = 0;
  int32_t type = kNormal;
};

struct PbReader {
  const uint8_t* p;
  const uint8_t* end;
  const std::string& name;
  [[noreturn]] void bad() const { throw Error(name + ": malformed SentencePiece model (protobuf)"); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) bad();
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    bad();
  }
  // Skips a field of wire type `wt`; returns [begin, end) for length-delimited ones.
  std::pair<const uint8_t*, const uint8_t*> field(uint32_t wt) {
    switch (wt) {
      case 0: varint(); return {nullptr, nullptr};
      case 1:
        if (end - p < 8) bad();
        p += 8;
        return {p - 8, p};
      case 5:
        if (end - p < 4) bad();
        p += 4;
        return {p - 4, p};
      case 2: {
        const uint64_t n = varint();
        if (n > static_cast<uint64_t>(end - p)) bad();
        p += n;
        return {p - n, p};
      }
      default: bad();
    }
  }
};

std::vector<SpPiece> read_sp_model(const std::string& path) {
  MappedFile f(path, true);
  PbReader r{f.data(), f.data() + f.size(), path};
  std::vector<SpPiece> pieces;
  while (r.p < r.end) {
    const uint64_t key = r.varint();
    const uint32_t wt = key & 7;
    auto [b, e] = r.field(wt);
    if ((key >> 3) != 1 || wt != 2) continue;
    PbReader s{b, e, path};
    SpPiece sp;
    while (s.p < s.end) {
      const uint64_t k = s.varint();
      const uint32_t w = k & 7;
      const uint8_t* at = s.p;
      if ((k >> 3) == 3 && w == 0) {
        sp.type = static_cast<int32_t>(s.varint());
        continue;
      }
      auto [fb, fe] = s.field(w);
      if ((k >> 3) == 1 && w == 2) sp.piece.assign(reinterpret_cast<const char*>(fb), static_cast<size_t>(fe - fb));
      if ((k >> 3) == 2 && w == 5) std::memcpy(&sp.score, at, 4);
    }
    if (sp.type < 1 || sp.type > 6) throw Error(path + ": piece " + std::to_string(pieces.size()) + " has an unknown type");
    pieces.push_back(std::move(sp));
  }
  if (pieces.empty()) throw Error(path + ": SentencePiece model has no pieces");
  return pieces;
}

void pb_varint(std::string& o, uint64_t v) {
  while (v >= 0x80) {
    o += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  o += static_cast<char>(v);
}
void pb_len(std::string& o, uint32_t field, const std::string& bytes) {
  pb_varint(o, (field << 3) | 2);
  pb_varint(o, bytes.size());
  o += bytes;
}

std::string write_sp_model(const std::vector<std::string>& tokens, const std::vector<float>& scores,
                           const std::vector<int32_t>& types, bool add_dummy_prefix) {
  std::string o;
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string p;
    pb_len(p, 1, tokens[i]);
    pb_varint(p, (2 << 3) | 5);
    const float s = i < scores.size() ? scores[i] : 0.0f;
    char b[4];
    std::memcpy(b, &s, 4);
    p.append(b, 4);
    const int32_t t = i < types.size() ? types[i] : kNormal;
    if (t != kNormal) {
      pb_varint(p, 3 << 3);
      pb_varint(p, static_cast<uint64_t>(t));
    }
    pb_len(o, 1, p);
  }
  std::string trainer;  // model_type = BPE, vocab_size, byte_fallback
  pb_varint(trainer, 3 << 3);
  pb_varint(trainer, 2);
  pb_varint(trainer, 4 << 3);
  pb_varint(trainer, tokens.size());
  pb_varint(trainer, 35 << 3);
  pb_varint(trainer, 1);
  pb_len(o, 2, trainer);
  std::string norm;  // name "identity", add_dummy_prefix, remove_extra_whitespaces = false
  pb_len(norm, 1, "identity");
  pb_varint(norm, 3 << 3);
  pb_varint(norm, add_dummy_prefix ? 1 : 0);
  pb_varint(norm, 4 << 3);
  pb_varint(norm, 0);
  pb_len(o, 3, norm);
  return o;
}

bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

// ---------------------------------------------------------------- tokenizer: HF -> GGUF metadata

struct VocabOut {
  std::vector<std::pair<std::string, GGUFMetaValue>> kv;  // in order
  int64_t n_tokens = 0;
  void set(const std::string& k, GGUFMetaValue v) {
    for (auto& [key, val] : kv)
      if (key == k) {
        val = std::move(v);
        return;
      }
    kv.emplace_back(k, std::move(v));
  }
};

const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Collects the Split regexes and ByteLevel use_regex flags of a pre_tokenizer (possibly a Sequence).
void scan_pre(const json& p, std::vector<std::string>& regexes, bool& byte_level_regex, bool& digits) {
  if (!p.is_object()) return;
  const std::string type = p.value("type", "");
  if (type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (const auto& q : p["pretokenizers"]) scan_pre(q, regexes, byte_level_regex, digits);
  } else if (type == "Split" && p.contains("pattern") && p["pattern"].is_object()) {
    const auto& pat = p["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) regexes.push_back(pat["Regex"].get<std::string>());
  } else if (type == "ByteLevel") {
    if (!p.contains("use_regex") || (p["use_regex"].is_boolean() && p["use_regex"].get<bool>())) byte_level_regex = true;
  } else if (type == "Digits") {
    digits = true;
  }
}

std::string detect_pre(const json& tok, const Notes& note) {
  std::vector<std::string> regexes;
  bool byte_level = false, digits = false;
  if (tok.contains("pre_tokenizer")) scan_pre(tok["pre_tokenizer"], regexes, byte_level, digits);
  if (regexes.size() == 1 && !byte_level && !digits) {
    const std::string& r = regexes[0];
    if (r.find("\\p{N}{1,3}") != std::string::npos && r.find("\\p{L}+") != std::string::npos) return "llama-bpe";
    if (r.find("|\\p{N}|") != std::string::npos && r.find("\\p{L}+") != std::string::npos) return "qwen2";
  }
  if (regexes.empty() && byte_level && !digits) return "gpt-2";
  if (regexes.empty() && byte_level && digits) return "starcoder";
  note("warning: unrecognized pre-tokenizer in tokenizer.json; tokenizer.ggml.pre = \"default\" (tokenization may differ)");
  return "default";
}

std::string token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

VocabOut hf_vocab(const std::string& dir, const json& config, int64_t n_embd_rows, const Notes& note) {
  const std::string tj_path = dir + "/tokenizer.json";
  const std::string sp_path = dir + "/tokenizer.model";
  const std::string tc_path = dir + "/tokenizer_config.json";
  const std::string gc_path = dir + "/generation_config.json";
  const bool has_tj = is_file(tj_path), has_sp = is_file(sp_path);
  if (!has_tj && !has_sp)
    throw Error(dir + ": no tokenizer.json or tokenizer.model (use --vocab-from VOCAB.gguf to take another model's)");
  json tok = has_tj ? read_json(tj_path) : json::object();
  json tcfg = is_file(tc_path) ? read_json(tc_path) : json::object();
  json gcfg = is_file(gc_path) ? read_json(gc_path) : json::object();
  const json model = tok.value("model", json::object());
  const std::string mtype = model.is_object() ? model.value("type", "") : "";
  const bool byte_fallback = model.is_object() && model.value("byte_fallback", false);

  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::string ggml_model, pre;
  std::map<std::string, int64_t> text_to_id;

  auto added = tok.contains("added_tokens") && tok["added_tokens"].is_array() ? tok["added_tokens"] : json::array();
  auto put = [&](int64_t id, const std::string& text, int32_t type, float score) {
    if (id < 0 || id > (int64_t{1} << 24)) throw Error(tj_path + ": token id " + std::to_string(id) + " out of range");
    if (static_cast<size_t>(id) >= tokens.size()) {
      tokens.resize(static_cast<size_t>(id) + 1);
      scores.resize(static_cast<size_t>(id) + 1, 0.0f);
      types.resize(static_cast<size_t>(id) + 1, 0);
    }
    tokens[id] = text;
    scores[id] = score;
    types[id] = type;
  };
  auto read_merges = [&]() {
    if (!model.contains("merges") || !model["merges"].is_array()) return;
    for (const auto& m : model["merges"]) {
      if (m.is_string()) merges.push_back(m.get<std::string>());
      else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
        merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      else throw Error(tj_path + ": malformed merge entry");
    }
  };

  if (has_sp) {
    ggml_model = "llama";
    auto pieces = read_sp_model(sp_path);
    for (size_t i = 0; i < pieces.size(); ++i) put(static_cast<int64_t>(i), pieces[i].piece, pieces[i].type, pieces[i].score);
    for (const auto& a : added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer()) throw Error(tj_path + ": malformed added_tokens entry");
      const int64_t id = a["id"].get<int64_t>();
      const bool special = a.value("special", false);
      const std::string text = token_text(a);
      if (id >= 0 && static_cast<size_t>(id) < pieces.size()) {
        if (types[id] == kNormal) types[id] = special ? kControl : kUserDefined;
      } else {
        put(id, text, special ? kControl : kUserDefined, 0.0f);
      }
    }
  } else if (mtype == "BPE" || mtype == "Unigram" || mtype == "WordPiece") {
    if (mtype == "WordPiece") throw Error(tj_path + ": WordPiece tokenizers are not supported (BPE and SentencePiece only)");
    const json& vocab = model.contains("vocab") ? model["vocab"] : json();
    const bool spm = byte_fallback || mtype == "Unigram";
    ggml_model = spm ? "llama" : "gpt2";
    if (mtype == "Unigram") {
      if (!vocab.is_array()) throw Error(tj_path + ": Unigram vocab is not an array");
      for (size_t i = 0; i < vocab.size(); ++i) {
        if (!vocab[i].is_array() || vocab[i].size() != 2 || !vocab[i][0].is_string() || !vocab[i][1].is_number())
          throw Error(tj_path + ": malformed Unigram vocab entry " + std::to_string(i));
        put(static_cast<int64_t>(i), vocab[i][0].get<std::string>(), kNormal, vocab[i][1].get<float>());
      }
    } else {
      if (!vocab.is_object()) throw Error(tj_path + ": BPE vocab is not an object");
      for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        if (!it.value().is_number_integer()) throw Error(tj_path + ": vocab id of '" + it.key() + "' is not an integer");
        const int64_t id = it.value().get<int64_t>();
        put(id, it.key(), kNormal, spm ? -static_cast<float>(id) : 0.0f);
      }
      read_merges();
      if (spm) note("warning: no tokenizer.model; token scores derived from ids (score = -id)");
    }
    if (spm) {
      const std::string unk = model.value("unk_token", json()).is_string() ? model["unk_token"].get<std::string>() : "";
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (types[i] != kNormal) continue;
        if (is_byte_token(tokens[i])) types[i] = kByte;
        else if (!unk.empty() && tokens[i] == unk) types[i] = kUnknown;
      }
    }
    for (const auto& a : added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer()) throw Error(tj_path + ": malformed added_tokens entry");
      const int64_t id = a["id"].get<int64_t>();
      const bool special = a.value("special", false);
      if (id >= 0 && static_cast<size_t>(id) < types.size() && types[id] == kUnknown) continue;
      put(id, token_text(a), special ? kControl : kUserDefined, id >= 0 && static_cast<size_t>(id) < scores.size() ? scores[id] : 0.0f);
    }
    if (!spm) pre = detect_pre(tok, note);
  } else {
    throw Error(tj_path + ": unsupported tokenizer model type '" + mtype + "' (BPE, Unigram, or a tokenizer.model)");
  }

  // Fill the embedding's rows: ids no token has.
  const int64_t n_vocab = std::max<int64_t>(n_embd_rows, static_cast<int64_t>(tokens.size()));
  if (static_cast<int64_t>(tokens.size()) > n_embd_rows)
    throw Error(dir + ": the tokenizer has " + std::to_string(tokens.size()) + " tokens but the embedding only " +
                std::to_string(n_embd_rows) + " rows");
  tokens.resize(static_cast<size_t>(n_vocab));
  scores.resize(static_cast<size_t>(n_vocab), 0.0f);
  types.resize(static_cast<size_t>(n_vocab), 0);
  int64_t n_pad = 0;
  for (int64_t i = 0; i < n_vocab; ++i)
    if (types[i] == 0) {
      tokens[i] = "[PAD" + std::to_string(i) + "]";
      types[i] = kUnused;
      ++n_pad;
    }
  if (n_pad) note("note: " + std::to_string(n_pad) + " ids without a token became [PAD<id>] (UNUSED)");
  for (int64_t i = 0; i < n_vocab; ++i) text_to_id.emplace(tokens[i], i);

  VocabOut v;
  v.n_tokens = n_vocab;
  v.set("tokenizer.ggml.model", GGUFMetaValue::str(ggml_model));
  if (!pre.empty()) v.set("tokenizer.ggml.pre", GGUFMetaValue::str(pre));
  v.set("tokenizer.ggml.tokens", GGUFMetaValue::str_array(tokens));
  if (ggml_model == "llama") v.set("tokenizer.ggml.scores", GGUFMetaValue::array(scores));
  v.set("tokenizer.ggml.token_type", GGUFMetaValue::array(types));
  if (ggml_model == "gpt2") v.set("tokenizer.ggml.merges", GGUFMetaValue::str_array(merges));

  // Special tokens: tokenizer_config texts first, then config.json ids.
  std::optional<int64_t> eos_id;
  static const std::pair<const char*, const char*> kSpecial[] = {
      {"bos", "bos"}, {"eos", "eos"}, {"unk", "unknown"}, {"sep", "seperator"}, {"pad", "padding"}};
  for (const auto& [kind, gname] : kSpecial) {
    std::optional<int64_t> id;
    const std::string tk = std::string(kind) + "_token";
    if (tcfg.contains(tk)) {
      const std::string text = token_text(tcfg[tk]);
      auto it = text_to_id.find(text);
      if (!text.empty() && it != text_to_id.end()) id = it->second;
    }
    const std::string ik = std::string(kind) + "_token_id";
    if (!id && config.contains(ik) && config[ik].is_number_integer()) id = config[ik].get<int64_t>();
    if (!id && std::string(kind) == "unk" && ggml_model == "llama")
      for (int64_t i = 0; i < n_vocab && !id; ++i)
        if (types[i] == kUnknown) id = i;
    if (id && *id >= 0 && *id < n_vocab) {
      v.set(std::string("tokenizer.ggml.") + gname + "_token_id", GGUFMetaValue::u32(static_cast<uint32_t>(*id)));
      if (std::string(kind) == "eos") eos_id = *id;
    }
  }
  // generation_config.json: an eos list names the end-of-turn token.
  if (gcfg.contains("eos_token_id") && gcfg["eos_token_id"].is_array()) {
    for (const auto& e : gcfg["eos_token_id"])
      if (e.is_number_integer() && (!eos_id || e.get<int64_t>() != *eos_id) && e.get<int64_t>() >= 0 && e.get<int64_t>() < n_vocab) {
        v.set("tokenizer.ggml.eot_token_id", GGUFMetaValue::u32(static_cast<uint32_t>(e.get<int64_t>())));
        break;
      }
  }
  for (const char* flag : {"add_bos_token", "add_eos_token"})
    if (tcfg.contains(flag) && tcfg[flag].is_boolean()) v.set(std::string("tokenizer.ggml.") + flag, GGUFMetaValue::boolean(tcfg[flag].get<bool>()));
  if (tcfg.contains("chat_template")) {
    const json& ct = tcfg["chat_template"];
    if (ct.is_string()) {
      v.set("tokenizer.chat_template", GGUFMetaValue::str(ct.get<std::string>()));
    } else if (ct.is_array()) {
      for (const auto& e : ct)
        if (e.is_object() && e.contains("name") && e.contains("template") && e["template"].is_string()) {
          const std::string n = e["name"].is_string() ? e["name"].get<std::string>() : "";
          v.set(n == "default" ? "tokenizer.chat_template" : "tokenizer.chat_template." + n,
                GGUFMetaValue::str(e["template"].get<std::string>()));
        }
    }
  }
  // lokal's own record of the GGUF's scalar tokenizer keys (written by export_hf): exact values win.
  if (tcfg.contains("gguf_tokenizer") && tcfg["gguf_tokenizer"].is_object()) {
    for (auto it = tcfg["gguf_tokenizer"].begin(); it != tcfg["gguf_tokenizer"].end(); ++it) {
      const std::string key = "tokenizer.ggml." + it.key();
      const json& val = it.value();
      if (val.is_boolean()) v.set(key, GGUFMetaValue::boolean(val.get<bool>()));
      else if (val.is_number_unsigned() && val.get<uint64_t>() <= 0xffffffffull) v.set(key, GGUFMetaValue::u32(static_cast<uint32_t>(val.get<uint64_t>())));
      else if (val.is_number_integer()) v.set(key, GGUFMetaValue::i32(static_cast<int32_t>(val.get<int64_t>())));
      else if (val.is_number_float()) v.set(key, GGUFMetaValue::f32(val.get<float>()));
      else if (val.is_string()) v.set(key, GGUFMetaValue::str(val.get<std::string>()));
    }
  }
  return v;
}

void vocab_from_gguf(VocabOut& v, const std::string& path) {
  auto f = GGUFFile::open(path);
  const GGUFValue* toks = f->find("tokenizer.ggml.tokens");
  if (!toks || toks->type != GGUFType::ARRAY || toks->arr_type != GGUFType::STRING)
    throw Error(path + ": not a vocabulary: no tokenizer.ggml.tokens string array");
  for (const auto& [key, val] : f->kv())
    if (key.rfind("tokenizer.", 0) == 0) v.set(key, GGUFMetaValue::from(val));
  v.n_tokens = static_cast<int64_t>(toks->arr_n);
}

// ---------------------------------------------------------------- HF -> GGUF

struct HfArch {
  const char* hf;
  const char* gguf;
  bool permute_qk;
  bool qkv_bias;
};
constexpr HfArch kArchs[] = {
    {"LlamaForCausalLM", "llama", true, false},
    {"MistralForCausalLM", "llama", true, false},
    {"Qwen2ForCausalLM", "qwen2", false, true},
};

struct SourceTensor {
  const SafeTensorInfo* info;
  std::string file;
};

}  // namespace

uint64_t parse_size(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    throw Error("invalid size '" + s + "' (e.g. 2GB, 500MB, 1GiB)");
  }
  std::string unit = s.substr(pos);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KB") mul = 1e3;
  else if (unit == "M" || unit == "MB") mul = 1e6;
  else if (unit == "G" || unit == "GB") mul = 1e9;
  else if (unit == "T" || unit == "TB") mul = 1e12;
  else if (unit == "KIB") mul = 1024.0;
  else if (unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "GIB") mul = 1024.0 * 1024 * 1024;
  if (mul == 0 || !(v > 0) || v * mul > 9e18) throw Error("invalid size '" + s + "' (e.g. 2GB, 500MB, 1GiB)");
  return static_cast<uint64_t>(v * mul);
}

ConvertResult convert_hf(const std::string& dir, const std::string& out_gguf, const ConvertOptions& opt) {
  ConvertResult res;
  res.source_kind = "hf";
  Notes note{&opt.on_note, &res.notes};
  const std::string cfg_path = dir + "/config.json";
  if (!is_file(cfg_path)) throw Error(dir + ": no config.json (not a Hugging Face model folder)");
  const json config = read_json(cfg_path);

  // Architecture.
  std::string hf_arch;
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
      config["architectures"][0].is_string())
    hf_arch = config["architectures"][0].get<std::string>();
  const HfArch* arch = nullptr;
  for (const auto& a : kArchs)
    if (hf_arch == a.hf) arch = &a;
  if (!arch) {
    std::string list;
    for (const auto& a : kArchs) list += (list.empty() ? "" : ", ") + std::string(a.hf);
    throw Error(cfg_path + ": unsupported architecture '" + (hf_arch.empty() ? config.value("model_type", std::string("?")) : hf_arch) +
                "' (supported: " + list + ")");
  }
  res.arch = arch->gguf;
  const std::string A = arch->gguf;

  // Hyperparameters.
  const int64_t n_embd = cfg_int(config, "hidden_size", cfg_path);
  const int64_t n_ff = cfg_int(config, "intermediate_size", cfg_path);
  const int64_t n_layer = cfg_int(config, "num_hidden_layers", cfg_path);
  const int64_t n_head = cfg_int(config, "num_attention_heads", cfg_path);
  const int64_t n_head_kv = cfg_opt_int(config, "num_key_value_heads", cfg_path).value_or(n_head);
  const int64_t n_vocab_cfg = cfg_int(config, "vocab_size", cfg_path);
  const int64_t n_ctx = cfg_opt_int(config, "max_position_embeddings", cfg_path).value_or(2048);
  const auto hd_opt = cfg_opt_int(config, "head_dim", cfg_path);
  if (!hd_opt && n_embd % n_head) throw Error(cfg_path + ": hidden_size is not a multiple of num_attention_heads");
  const int64_t head_dim = hd_opt.value_or(n_embd / n_head);
  if (n_head % n_head_kv) throw Error(cfg_path + ": num_attention_heads is not a multiple of num_key_value_heads");
  if (arch->permute_qk && head_dim % 2) throw Error(cfg_path + ": head dimension " + std::to_string(head_dim) + " is odd");
  const auto eps = cfg_opt_float(config, "rms_norm_eps", cfg_path);
  const auto theta = cfg_opt_float(config, "rope_theta", cfg_path);
  bool tied = false;
  if (config.contains("tie_word_embeddings") && config["tie_word_embeddings"].is_boolean()) tied = config["tie_word_embeddings"].get<bool>();
  std::string scaling_type;
  double scaling_factor = 0;
  if (config.contains("rope_scaling") && !config["rope_scaling"].is_null()) {
    const json& rs = config["rope_scaling"];
    if (!rs.is_object()) throw Error(cfg_path + ": rope_scaling is not an object");
    std::string t = rs.value("type", rs.value("rope_type", std::string()));
    if (t == "linear") {
      if (!rs.contains("factor") || !rs["factor"].is_number()) throw Error(cfg_path + ": rope_scaling linear without a factor");
      scaling_type = t;
      scaling_factor = rs["factor"].get<double>();
    } else if (t != "default" && !t.empty()) {
      throw Error(cfg_path + ": rope_scaling type '" + t + "' is not supported (only linear)");
    }
  }

  // Weights.
  if (is_file(dir + "/pytorch_model.bin") || is_file(dir + "/pytorch_model.bin.index.json") || is_file(dir + "/consolidated.00.pth"))
    if (!is_file(dir + "/model.safetensors") && !is_file(dir + "/model.safetensors.index.json"))
      throw Error(dir + ": only safetensors weights are supported (found PyTorch pickle weights, e.g. pytorch_model.bin; "
                        "re-save the model with safe_serialization=True)");
  std::vector<std::unique_ptr<SafeTensorsFile>> files;
  std::map<std::string, SourceTensor> by_name;
  std::vector<std::string> order;  // tensor names: file order, data-offset order within a file
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (is_file(index_path)) {
    const json idx = read_json(index_path);
    if (!idx.contains("weight_map") || !idx["weight_map"].is_object()) throw Error(index_path + ": no \"weight_map\" object");
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw Error(index_path + ": weight_map entry '" + it.key() + "' is not a file name");
      const std::string f = it.value().get<std::string>();
      if (f.find('/') != std::string::npos || f == ".." || f.empty()) throw Error(index_path + ": invalid shard name '" + f + "'");
      weight_map[it.key()] = f;
      if (std::find(shard_names.begin(), shard_names.end(), f) == shard_names.end()) shard_names.push_back(f);
    }
    std::sort(shard_names.begin(), shard_names.end());
    for (const auto& f : shard_names)
      if (!is_file(dir + "/" + f)) {
        std::string tname;
        for (const auto& [k, v] : weight_map)
          if (v == f) { tname = k; break; }
        throw Error(index_path + ": shard '" + f + "' (holding tensor '" + tname + "') is missing");
      }
  } else if (is_file(dir + "/model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json (only safetensors weights are supported)");
  }
  for (const auto& f : shard_names) {
    files.push_back(SafeTensorsFile::open(dir + "/" + f));
    for (const auto& t : files.back()->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end() || it->second != f) continue;  // the index decides where a tensor lives
      }
      if (by_name.count(t.name)) throw Error(dir + "/" + f + ": tensor '" + t.name + "' appears twice");
      by_name[t.name] = SourceTensor{&t, dir + "/" + f};
      order.push_back(t.name);
    }
  }
  for (const auto& [k, f] : weight_map)
    if (!by_name.count(k)) throw Error(index_path + ": tensor '" + k + "' is not in its shard '" + f + "'");

  // Name mapping and shape checks.
  struct Planned {
    std::string gguf;
    std::vector<int64_t> hf_shape;  // expected
    int64_t perm_heads = 0;
  };
  auto plan_for = [&](const std::string& n) -> std::optional<Planned> {
    if (n == "model.embed_tokens.weight") return Planned{"token_embd.weight", {n_vocab_cfg, n_embd}};
    if (n == "model.norm.weight") return Planned{"output_norm.weight", {n_embd}};
    if (n == "lm_head.weight") return Planned{"output.weight", {n_vocab_cfg, n_embd}};
    const std::string pfx = "model.layers.";
    if (n.rfind(pfx, 0) != 0) return std::nullopt;
    size_t p = pfx.size(), q = p;
    while (q < n.size() && std::isdigit(static_cast<unsigned char>(n[q]))) ++q;
    if (q == p || q >= n.size() || n[q] != '.' || q - p > 6) return std::nullopt;
    const int64_t il = std::stoll(n.substr(p, q - p));
    if (il >= n_layer) throw Error(dir + ": tensor '" + n + "' belongs to layer " + std::to_string(il) + " but num_hidden_layers is " + std::to_string(n_layer));
    const std::string rest = n.substr(q + 1), b = "blk." + std::to_string(il) + ".";
    const int64_t nq = n_head * head_dim, nkv = n_head_kv * head_dim;
    const int64_t pq = arch->permute_qk ? n_head : 0, pk = arch->permute_qk ? n_head_kv : 0;
    if (rest == "input_layernorm.weight") return Planned{b + "attn_norm.weight", {n_embd}};
    if (rest == "post_attention_layernorm.weight") return Planned{b + "ffn_norm.weight", {n_embd}};
    if (rest == "self_attn.q_proj.weight") return Planned{b + "attn_q.weight", {nq, n_embd}, pq};
    if (rest == "self_attn.k_proj.weight") return Planned{b + "attn_k.weight", {nkv, n_embd}, pk};
    if (rest == "self_attn.v_proj.weight") return Planned{b + "attn_v.weight", {nkv, n_embd}};
    if (rest == "self_attn.o_proj.weight") return Planned{b + "attn_output.weight", {n_embd, nq}};
    if (rest == "self_attn.q_proj.bias") return Planned{b + "attn_q.bias", {nq}, pq};
    if (rest == "self_attn.k_proj.bias") return Planned{b + "attn_k.bias", {nkv}, pk};
    if (rest == "self_attn.v_proj.bias") return Planned{b + "attn_v.bias", {nkv}};
    if (rest == "mlp.gate_proj.weight") return Planned{b + "ffn_gate.weight", {n_ff, n_embd}};
    if (rest == "mlp.up_proj.weight") return Planned{b + "ffn_up.weight", {n_ff, n_embd}};
    if (rest == "mlp.down_proj.weight") return Planned{b + "ffn_down.weight", {n_embd, n_ff}};
    return std::nullopt;
  };

  struct Job {
    std::string gguf;
    std::vector<int64_t> ne;
    RowCopy copy;
  };
  std::vector<Job> jobs;
  std::set<std::string> have;
  std::vector<DType> out_types;
  for (const auto& n : order) {
    const SourceTensor& s = by_name[n];
    if (n.find("rotary_emb.inv_freq") != std::string::npos) continue;
    auto p = plan_for(n);
    if (!p) throw Error(s.file + ": unexpected tensor '" + n + "' for " + hf_arch);
    if (s.info->shape != p->hf_shape)
      throw Error(s.file + ": tensor '" + n + "' has shape " + s.info->shape_str() + " but config.json implies " + ne_str(p->hf_shape));
    auto st = st_dtype(s.info->dtype);
    if (!st) throw Error(s.file + ": tensor '" + n + "' has dtype " + s.info->dtype + " (supported: F32, F16, BF16, F64)");
    Job j;
    j.gguf = p->gguf;
    j.ne.assign(p->hf_shape.rbegin(), p->hf_shape.rend());
    j.copy.src = s.info->data;
    j.copy.st = *st;
    j.copy.to = out_type(*st, j.ne.size(), opt.outtype);
    j.copy.row_len = j.ne[0];
    j.copy.n_rows = j.ne.size() > 1 ? j.ne[1] : 1;
    if (p->perm_heads > 0) {
      j.copy.perm_heads = p->perm_heads;
      if (j.ne.size() == 1) {  // a bias: permute its elements as rows of one element
        j.copy.row_len = 1;
        j.copy.n_rows = j.ne[0];
      }
    }
    if (j.ne.size() > 1) out_types.push_back(j.copy.to);
    have.insert(j.gguf);
    jobs.push_back(std::move(j));
  }
  auto require = [&](const std::string& g, const std::string& hf) {
    if (!have.count(g)) throw Error(dir + ": tensor '" + hf + "' is missing");
  };
  require("token_embd.weight", "model.embed_tokens.weight");
  require("output_norm.weight", "model.norm.weight");
  for (int64_t il = 0; il < n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".", h = "model.layers." + std::to_string(il) + ".";
    require(b + "attn_norm.weight", h + "input_layernorm.weight");
    require(b + "ffn_norm.weight", h + "post_attention_layernorm.weight");
    require(b + "attn_q.weight", h + "self_attn.q_proj.weight");
    require(b + "attn_k.weight", h + "self_attn.k_proj.weight");
    require(b + "attn_v.weight", h + "self_attn.v_proj.weight");
    require(b + "attn_output.weight", h + "self_attn.o_proj.weight");
    require(b + "ffn_gate.weight", h + "mlp.gate_proj.weight");
    require(b + "ffn_up.weight", h + "mlp.up_proj.weight");
    require(b + "ffn_down.weight", h + "mlp.down_proj.weight");
    if (arch->qkv_bias) {
      require(b + "attn_q.bias", h + "self_attn.q_proj.bias");
      require(b + "attn_k.bias", h + "self_attn.k_proj.bias");
      require(b + "attn_v.bias", h + "self_attn.v_proj.bias");
    }
  }
  if (!have.count("output.weight") && !tied)
    throw Error(dir + ": tensor 'lm_head.weight' is missing (and tie_word_embeddings is not true)");

  // Tokenizer.
  VocabOut vocab;
  if (!opt.vocab_from.empty()) vocab_from_gguf(vocab, opt.vocab_from);
  else vocab = hf_vocab(dir, config, n_vocab_cfg, note);
  if (vocab.n_tokens != n_vocab_cfg)
    throw Error(dir + ": the vocabulary has " + std::to_string(vocab.n_tokens) + " tokens but vocab_size is " + std::to_string(n_vocab_cfg));

  // Metadata.
  GGUFWriter w;
  std::string name = opt.name;
  if (name.empty() && config.contains("_name_or_path") && config["_name_or_path"].is_string()) {
    name = config["_name_or_path"].get<std::string>();
    if (auto sl = name.find_last_of('/'); sl != std::string::npos) name = name.substr(sl + 1);
  }
  if (name.empty()) name = fs::path(dir).lexically_normal().filename().string();
  if (name.empty() || name == ".") name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  w.set_str("general.architecture", A);
  w.set_str("general.name", name);
  w.set_u32(A + ".block_count", static_cast<uint32_t>(n_layer));
  w.set_u32(A + ".context_length", static_cast<uint32_t>(n_ctx));
  w.set_u32(A + ".embedding_length", static_cast<uint32_t>(n_embd));
  w.set_u32(A + ".feed_forward_length", static_cast<uint32_t>(n_ff));
  w.set_u32(A + ".attention.head_count", static_cast<uint32_t>(n_head));
  w.set_u32(A + ".attention.head_count_kv", static_cast<uint32_t>(n_head_kv));
  if (theta) w.set_f32(A + ".rope.freq_base", static_cast<float>(*theta));
  if (eps) w.set_f32(A + ".attention.layer_norm_rms_epsilon", static_cast<float>(*eps));
  if (head_dim * n_head != n_embd) {
    w.set_u32(A + ".attention.key_length", static_cast<uint32_t>(head_dim));
    w.set_u32(A + ".attention.value_length", static_cast<uint32_t>(head_dim));
  }
  w.set_u32("general.file_type", file_type_of(out_types));
  if (A == "llama") {
    w.set_u32(A + ".vocab_size", static_cast<uint32_t>(n_vocab_cfg));
    w.set_u32(A + ".rope.dimension_count", static_cast<uint32_t>(head_dim));
  }
  if (!scaling_type.empty()) {
    w.set_str(A + ".rope.scaling.type", scaling_type);
    w.set_f32(A + ".rope.scaling.factor", static_cast<float>(scaling_factor));
  }
  for (auto& [k, v] : vocab.kv) w.set(k, std::move(v));

  TensorAdder adder{w, opt, jobs.size()};
  for (auto& j : jobs) adder.add(j.gguf, j.ne, j.copy);
  w.write(out_gguf);
  res.n_tensors = jobs.size();
  res.file_size = w.file_size();
  return res;
}

// ---------------------------------------------------------------- llama2.c -> GGUF

ConvertResult convert_llama2c(const std::string& path, const std::string& out_gguf, const ConvertOptions& opt) {
  ConvertResult res;
  res.source_kind = "llama2c";
  res.arch = "llama";
  MappedFile f(path, true);
  const uint8_t* d = f.data();
  const size_t size = f.size();
  auto rd_i32 = [&](size_t off) {
    int32_t v;
    std::memcpy(&v, d + off, 4);
    return v;
  };
  if (size < 28) throw Error(path + ": too short for a llama2.c checkpoint (" + std::to_string(size) + " bytes)");
  int version = 0;
  size_t hdr = 28, pos = 0;
  uint32_t magic;
  std::memcpy(&magic, d, 4);
  if (magic == 0x616b3432u) {  // "ak42"
    if (size < 256) throw Error(path + ": truncated llama2.c version-1 header");
    version = rd_i32(4);
    if (version != 1)
      throw Error(path + ": llama2.c checkpoint version " + std::to_string(version) + " is not supported (only 0 = legacy and 1 = float32)");
    pos = 8;
    hdr = 256;
  }
  const int64_t dim = rd_i32(pos), hidden = rd_i32(pos + 4), n_layer = rd_i32(pos + 8), n_head = rd_i32(pos + 12),
                n_head_kv = rd_i32(pos + 16), seq_len = rd_i32(pos + 24);
  int64_t vocab = rd_i32(pos + 20);
  bool shared = vocab > 0;
  if (version == 1) shared = d[pos + 28] != 0;
  vocab = std::llabs(vocab);
  auto bad = [&](const std::string& why) -> Error {
    return Error(path + ": not a llama2.c checkpoint (" + why + ")");
  };
  for (int64_t v : {dim, hidden, n_layer, n_head, n_head_kv, vocab, seq_len})
    if (v <= 0 || v > (int64_t{1} << 24)) throw bad("header value " + std::to_string(v) + " out of range");
  if (dim % n_head || n_head % n_head_kv || (dim / n_head) % 2) throw bad("inconsistent head counts");
  const int64_t head = dim / n_head, kv_dim = head * n_head_kv;
  // Expected size (float counts).
  const uint64_t L = static_cast<uint64_t>(n_layer);
  // 128-bit: header values up to 2^24 each cannot overflow it.
  using u128 = unsigned __int128;
  u128 floats128 = static_cast<u128>(vocab) * dim + static_cast<u128>(L) * dim * 2 + static_cast<u128>(L) * dim * dim * 2 +
                   static_cast<u128>(L) * kv_dim * dim * 2 + static_cast<u128>(L) * hidden * dim * 3 + dim;
  if (version == 0) floats128 += static_cast<u128>(seq_len) * head;  // freq_cis_real + imag
  if (!shared) floats128 += static_cast<u128>(vocab) * dim;
  const u128 expect128 = hdr + floats128 * 4;
  if (expect128 > (static_cast<u128>(1) << 62)) throw bad("the header describes " + std::to_string(static_cast<double>(expect128)) + " bytes");
  const uint64_t expect = static_cast<uint64_t>(expect128);
  if (size != expect)
    throw Error(path + ": " + (size < expect ? "truncated" : "unexpected size for a") + " llama2.c checkpoint: dim=" + std::to_string(dim) +
                " hidden_dim=" + std::to_string(hidden) + " n_layers=" + std::to_string(n_layer) + " n_heads=" + std::to_string(n_head) +
                " n_kv_heads=" + std::to_string(n_head_kv) + " vocab_size=" + std::to_string(vocab) + " seq_len=" + std::to_string(seq_len) +
                " needs " + std::to_string(expect) + " bytes, the file has " + std::to_string(size));

  // Weight pointers.
  const float* base = reinterpret_cast<const float*>(d + hdr);
  size_t at = 0;  // in floats
  auto take = [&](uint64_t n) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(base + at);
    at += n;
    return p;
  };
  const uint8_t *tok = nullptr, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls = nullptr;
  if (version == 0) {
    tok = take(vocab * dim);
    rms_att = take(L * dim);
    wq = take(L * dim * dim);
    wk = take(L * kv_dim * dim);
    wv = take(L * kv_dim * dim);
    wo = take(L * dim * dim);
    rms_ffn = take(L * dim);
    w1 = take(L * hidden * dim);
    w2 = take(L * dim * hidden);
    w3 = take(L * hidden * dim);
    rms_final = take(dim);
    take(seq_len * head);
  } else {
    rms_att = take(L * dim);
    rms_ffn = take(L * dim);
    rms_final = take(dim);
    tok = take(vocab * dim);
    wq = take(L * dim * dim);
    wk = take(L * kv_dim * dim);
    wv = take(L * kv_dim * dim);
    wo = take(L * dim * dim);
    w1 = take(L * hidden * dim);
    w2 = take(L * dim * hidden);
    w3 = take(L * hidden * dim);
  }
  wcls = shared ? tok : take(vocab * dim);

  // Vocabulary.
  VocabOut v;
  std::unique_ptr<MappedFile> tf;
  if (!opt.vocab_from.empty()) {
    vocab_from_gguf(v, opt.vocab_from);
  } else if (!opt.tokenizer.empty()) {
    tf = std::make_unique<MappedFile>(opt.tokenizer, true);
    const uint8_t* t = tf->data();
    const size_t tsz = tf->size();
    size_t p = 4;
    if (tsz < 4) throw Error(opt.tokenizer + ": truncated llama2.c tokenizer");
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int64_t i = 0; i < vocab; ++i) {
      if (tsz - p < 8) throw Error(opt.tokenizer + ": truncated llama2.c tokenizer at token " + std::to_string(i) + " of " + std::to_string(vocab));
      float score;
      int32_t len;
      std::memcpy(&score, t + p, 4);
      std::memcpy(&len, t + p + 4, 4);
      p += 8;
      if (len < 0 || static_cast<size_t>(len) > tsz - p)
        throw Error(opt.tokenizer + ": token " + std::to_string(i) + " has a bad length " + std::to_string(len));
      std::string text(reinterpret_cast<const char*>(t + p), static_cast<size_t>(len));
      p += static_cast<size_t>(len);
      int32_t type = kNormal;
      if (i == 0) {
        text = "<unk>";
        type = kUnknown;
      } else if (i == 1 || i == 2) {
        text = i == 1 ? "<s>" : "</s>";
        type = kControl;
      } else if (text.empty()) {
        type = kControl;
      } else if (is_byte_token(text)) {
        type = kByte;
      }
      std::string esc;  // llama2.c stores SentencePiece's U+2581 as a space
      for (char c : text) esc += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
      tokens.push_back(std::move(esc));
      scores.push_back(score);
      types.push_back(type);
    }
    if (p != tsz)
      throw Error(opt.tokenizer + ": " + std::to_string(tsz - p) + " bytes left after " + std::to_string(vocab) +
                  " tokens (tokenizer of another vocabulary size?)");
    v.set("tokenizer.ggml.tokens", GGUFMetaValue::str_array(std::move(tokens)));
    v.set("tokenizer.ggml.scores", GGUFMetaValue::array(scores));
    v.set("tokenizer.ggml.token_type", GGUFMetaValue::array(types));
    v.set("tokenizer.ggml.model", GGUFMetaValue::str("llama"));
    v.n_tokens = vocab;
  } else {
    throw Error(path + ": a llama2.c checkpoint needs its tokenizer: --tokenizer TOKENIZER.bin or --vocab-from VOCAB.gguf");
  }
  if (v.n_tokens != vocab)
    throw Error(path + ": the checkpoint has " + std::to_string(vocab) + " tokens but the vocabulary " + std::to_string(v.n_tokens));

  GGUFWriter w;
  const bool own_vocab = opt.vocab_from.empty();
  for (auto& [k, val] : v.kv) w.set(k, val);
  w.set_str("general.architecture", "llama");
  w.set_str("general.name", opt.name.empty() ? "llama" : opt.name);
  if (own_vocab) {
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_u32("tokenizer.ggml.seperator_token_id", 0xffffffffu);
    w.set_u32("tokenizer.ggml.padding_token_id", 0xffffffffu);
  }
  w.set_u32("llama.context_length", static_cast<uint32_t>(seq_len));
  w.set_u32("llama.embedding_length", static_cast<uint32_t>(dim));
  w.set_u32("llama.feed_forward_length", static_cast<uint32_t>(hidden));
  w.set_u32("llama.attention.head_count", static_cast<uint32_t>(n_head));
  w.set_u32("llama.attention.head_count_kv", static_cast<uint32_t>(n_head_kv));
  w.set_u32("llama.block_count", static_cast<uint32_t>(n_layer));
  w.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(head));
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  const DType mat = out_type(DType::F32, 2, opt.outtype);
  if (mat != DType::F32) w.set_u32("general.file_type", file_type_of({mat}));

  // Tensors in llama.cpp's convert-llama2c-to-ggml order.
  size_t count = 3 + static_cast<size_t>(n_layer) * 9;
  TensorAdder adder{w, opt, count};
  auto mat2 = [&](const std::string& name, const uint8_t* src, int64_t cols, int64_t rows) {
    RowCopy c;
    c.src = src;
    c.to = mat;
    c.row_len = cols;
    c.n_rows = rows;
    adder.add(name, {cols, rows}, c);
  };
  auto vec1 = [&](const std::string& name, const uint8_t* src, int64_t n) {
    RowCopy c;
    c.src = src;
    c.row_len = n;
    c.n_rows = 1;
    adder.add(name, {n}, c);
  };
  const auto F = [](const uint8_t* p, uint64_t floats) { return p + floats * 4; };
  mat2("token_embd.weight", tok, dim, vocab);
  vec1("output_norm.weight", rms_final, dim);
  mat2("output.weight", wcls, dim, vocab);
  for (int64_t il = 0; il < n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    const uint64_t l = static_cast<uint64_t>(il);
    mat2(b + "attn_q.weight", F(wq, l * dim * dim), dim, dim);
    mat2(b + "attn_k.weight", F(wk, l * kv_dim * dim), dim, kv_dim);
    mat2(b + "attn_v.weight", F(wv, l * kv_dim * dim), dim, kv_dim);
    mat2(b + "attn_output.weight", F(wo, l * dim * dim), dim, dim);
    vec1(b + "attn_norm.weight", F(rms_att, l * dim), dim);
    mat2(b + "ffn_gate.weight", F(w1, l * hidden * dim), dim, hidden);
    mat2(b + "ffn_down.weight", F(w2, l * dim * hidden), hidden, dim);
    mat2(b + "ffn_up.weight", F(w3, l * hidden * dim), dim, hidden);
    vec1(b + "ffn_norm.weight", F(rms_ffn, l * dim), dim);
  }
  w.write(out_gguf);
  res.n_tensors = count;
  res.file_size = w.file_size();
  return res;
}

ConvertResult convert_model(const std::string& input, const std::string& out_gguf, const ConvertOptions& opt) {
  std::error_code ec;
  // Every file the conversion may read (for a folder: everything in it) is protected from the output path,
  // and the output is checked before any work starts.
  std::vector<std::string> inputs{input, opt.tokenizer, opt.vocab_from};
  if (!opt.tokenizer.empty()) check_input_file(opt.tokenizer, "llama2.c tokenizer file");
  if (!opt.vocab_from.empty()) check_input_file(opt.vocab_from, "GGUF vocabulary file");
  if (fs::is_directory(input, ec)) {
    for (const auto& e : fs::directory_iterator(input, ec)) inputs.push_back(e.path().string());
    check_output_file(out_gguf, inputs);
    return convert_hf(input, out_gguf, opt);
  }
  check_input_file(input, "Hugging Face model folder or llama2.c checkpoint");
  check_output_file(out_gguf, inputs);
  MappedFile f(input, true);
  const uint8_t* d = f.data();
  if (f.size() >= 4 && std::memcmp(d, "GGUF", 4) == 0) throw Error(input + ": already a GGUF file");
  if (f.size() >= 4 && std::memcmp(d, "PK\x03\x04", 4) == 0)
    throw Error(input + ": a PyTorch (zip/pickle) checkpoint; only safetensors (a Hugging Face folder) and llama2.c .bin checkpoints are supported");
  if (f.size() >= 2 && d[0] == 0x80 && d[1] >= 2 && d[1] <= 5)
    throw Error(input + ": a pickle file; only safetensors (a Hugging Face folder) and llama2.c .bin checkpoints are supported");
  const std::string ext = fs::path(input).extension().string();
  if (ext == ".safetensors" || ext == ".json")
    throw Error(input + ": give the Hugging Face model folder (with config.json and the tokenizer), not one of its files");
  return convert_llama2c(input, out_gguf, opt);
}

// ---------------------------------------------------------------- GGUF -> HF

namespace {

std::string hf_name(const std::string& g, bool& ok) {
  ok = true;
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (g.rfind("blk.", 0) == 0) {
    const size_t dot = g.find('.', 4);
    if (dot != std::string::npos) {
      const std::string il = g.substr(4, dot - 4), rest = g.substr(dot + 1), h = "model.layers." + il + ".";
      static const std::pair<const char*, const char*> m[] = {
          {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
          {"attn_q.weight", "self_attn.q_proj.weight"},   {"attn_k.weight", "self_attn.k_proj.weight"},
          {"attn_v.weight", "self_attn.v_proj.weight"},   {"attn_output.weight", "self_attn.o_proj.weight"},
          {"attn_q.bias", "self_attn.q_proj.bias"},       {"attn_k.bias", "self_attn.k_proj.bias"},
          {"attn_v.bias", "self_attn.v_proj.bias"},       {"ffn_gate.weight", "mlp.gate_proj.weight"},
          {"ffn_up.weight", "mlp.up_proj.weight"},        {"ffn_down.weight", "mlp.down_proj.weight"},
      };
      for (const auto& [a, b] : m)
        if (rest == a) return h + b;
    }
  }
  ok = false;
  return {};
}

// Writes tokenizer files for the GGUF's vocabulary. Returns the files written.
std::vector<std::string> export_tokenizer(const GGUFFile& g, const std::string& dir, ojson& tcfg, const Notes& note) {
  std::vector<std::string> written;
  const std::string model = g.opt_str("tokenizer.ggml.model").value_or("");
  if (model.empty()) {
    note("warning: the GGUF has no tokenizer; no tokenizer files written");
    return written;
  }
  if (model != "llama" && model != "gpt2")
    throw Error(g.name() + ": tokenizer model '" + model + "' cannot be exported (llama and gpt2 only)");
  std::vector<std::string> tokens;
  for (auto s : g.get_str_array("tokenizer.ggml.tokens")) tokens.emplace_back(s);
  const size_t n = tokens.size();
  std::vector<float> scores(n, 0.0f);
  if (g.has("tokenizer.ggml.scores")) scores = g.get_f32_array("tokenizer.ggml.scores");
  std::vector<int32_t> types(n, kNormal);
  if (g.has("tokenizer.ggml.token_type")) {
    auto t = g.get_int_array("tokenizer.ggml.token_type");
    for (size_t i = 0; i < t.size() && i < n; ++i) types[i] = static_cast<int32_t>(t[i]);
  }
  if (scores.size() != n) throw Error(g.name() + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) + " entries for " + std::to_string(n) + " tokens");
  auto id_key = [&](const char* k) -> std::optional<int64_t> {
    auto v = g.opt_int(std::string("tokenizer.ggml.") + k);
    if (v && *v >= 0 && *v < static_cast<int64_t>(n)) return v;
    return std::nullopt;
  };

  json tj = json::object();
  tj["version"] = "1.0";
  tj["truncation"] = nullptr;
  tj["padding"] = nullptr;
  json added = json::array();
  json vocab = json::object();
  json merges = json::array();
  std::unordered_map<std::string, int64_t> idx;
  for (size_t i = 0; i < n; ++i) idx.emplace(tokens[i], static_cast<int64_t>(i));
  auto added_entry = [&](size_t i, bool special) {
    json a = json::object();
    a["id"] = i;
    a["content"] = tokens[i];
    a["single_word"] = false;
    a["lstrip"] = false;
    a["rstrip"] = false;
    a["normalized"] = !special;
    a["special"] = special;
    added.push_back(a);
  };

  if (model == "llama") {
    const bool add_space = g.opt_bool("tokenizer.ggml.add_space_prefix").value_or(true);
    const std::string sp = write_sp_model(tokens, scores, types, add_space);
    write_text(dir + "/tokenizer.model", sp);
    written.push_back("tokenizer.model");
    for (size_t i = 0; i < n; ++i) {
      vocab[tokens[i]] = i;
      if (types[i] == kControl || types[i] == kUnknown || types[i] == kUserDefined) added_entry(i, types[i] != kUserDefined);
    }
    // Merges from the scores: every split of a token into two tokens, best-scored result first.
    struct M {
      float score;
      int64_t id, l, r;
    };
    std::vector<M> ms;
    for (size_t i = 0; i < n; ++i) {
      if (types[i] != kNormal) continue;
      const std::string& t = tokens[i];
      for (size_t k = 1; k < t.size(); ++k) {
        if ((static_cast<unsigned char>(t[k]) & 0xc0) == 0x80) continue;  // inside a UTF-8 character
        auto a = idx.find(t.substr(0, k)), b = idx.find(t.substr(k));
        if (a != idx.end() && b != idx.end()) ms.push_back({scores[i], static_cast<int64_t>(i), a->second, b->second});
      }
    }
    std::sort(ms.begin(), ms.end(), [](const M& a, const M& b) {
      if (a.score != b.score) return a.score > b.score;
      if (a.id != b.id) return a.id < b.id;
      return a.l < b.l;
    });
    for (const auto& m : ms) merges.push_back(json::array({tokens[m.l], tokens[m.r]}));
    const std::string unk = id_key("unknown_token_id") ? tokens[*id_key("unknown_token_id")] : std::string("<unk>");
    tj["normalizer"] = {{"type", "Sequence"},
                        {"normalizers", json::array({json{{"type", "Prepend"}, {"prepend", "\xe2\x96\x81"}},
                                                     json{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xe2\x96\x81"}}})}};
    tj["pre_tokenizer"] = nullptr;
    tj["post_processor"] = nullptr;
    tj["decoder"] = {{"type", "Sequence"},
                     {"decoders", json::array({json{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}}, {"content", " "}},
                                               json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}},
                                               json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
    tj["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", unk}, {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", true}, {"ignore_merges", false},
                   {"vocab", vocab}, {"merges", merges}};
  } else {
    size_t n_pad = 0;
    for (size_t i = 0; i < n; ++i) {
      const int32_t t = types[i];
      if (t == kControl) added_entry(i, true);
      else if (t == kUserDefined) added_entry(i, false);
      else if (t == kUnused && tokens[i] == "[PAD" + std::to_string(i) + "]") ++n_pad;
      else {
        if (t != kNormal) note("warning: token " + std::to_string(i) + " has type " + std::to_string(t) + ", exported as a normal token");
        if (vocab.contains(tokens[i])) throw Error(g.name() + ": token text of id " + std::to_string(i) + " appears twice; cannot write tokenizer.json");
        vocab[tokens[i]] = i;
      }
    }
    if (n_pad) note("note: " + std::to_string(n_pad) + " [PAD<id>] tokens left out of tokenizer.json (vocab_size keeps them)");
    if (g.has("tokenizer.ggml.merges"))
      for (auto m : g.get_str_array("tokenizer.ggml.merges")) merges.push_back(std::string(m));
    const std::string pre = g.opt_str("tokenizer.ggml.pre").value_or("default");
    json bl = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    if (pre == "llama-bpe" || pre == "llama3" || pre == "qwen2") {
      json split = {{"type", "Split"}, {"pattern", {{"Regex", pre == "qwen2" ? kQwen2Regex : kLlama3Regex}}}, {"behavior", "Isolated"}, {"invert", false}};
      bl["use_regex"] = false;
      tj["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({split, bl})}};
    } else if (pre == "starcoder") {
      json digits = {{"type", "Digits"}, {"individual_digits", true}};
      tj["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({digits, bl})}};
    } else {
      tj["pre_tokenizer"] = bl;
    }
    tj["normalizer"] = nullptr;
    tj["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
    tj["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    tj["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                   {"vocab", vocab}, {"merges", merges}};
  }
  tj["added_tokens"] = added;
  write_text(dir + "/tokenizer.json", dump_json(tj, dir + "/tokenizer.json"));
  written.push_back("tokenizer.json");

  // tokenizer_config.json
  static const std::pair<const char*, const char*> special[] = {
      {"bos_token", "bos_token_id"}, {"eos_token", "eos_token_id"}, {"unk_token", "unknown_token_id"},
      {"pad_token", "padding_token_id"}, {"sep_token", "seperator_token_id"}};
  for (const auto& [hf, gg] : special)
    if (auto id = id_key(gg)) tcfg[hf] = tokens[*id];
  for (const char* flag : {"add_bos_token", "add_eos_token"})
    if (auto b = g.opt_bool(std::string("tokenizer.ggml.") + flag)) tcfg[flag] = *b;
  if (auto ct = g.opt_str("tokenizer.chat_template")) tcfg["chat_template"] = *ct;
  tcfg["tokenizer_class"] = model == "llama" ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast";
  ojson extra = ojson::object();
  for (const auto& [key, val] : g.kv()) {
    if (key.rfind("tokenizer.ggml.", 0) != 0 || val.type == GGUFType::ARRAY || key == "tokenizer.ggml.model") continue;
    const std::string k = key.substr(15);
    switch (val.type) {
      case GGUFType::BOOL: extra[k] = val.u != 0; break;
      case GGUFType::STRING: extra[k] = std::string(val.s); break;
      case GGUFType::F32: case GGUFType::F64: extra[k] = val.f; break;
      default:
        if (val.is_int()) {
          if (val.type == GGUFType::I8 || val.type == GGUFType::I16 || val.type == GGUFType::I32 || val.type == GGUFType::I64) extra[k] = val.i;
          else extra[k] = val.u;
        }
    }
  }
  tcfg["gguf_tokenizer"] = extra;
  return written;
}

}  // namespace

ExportResult export_hf(const std::string& gguf_path, const std::string& dir, const ExportOptions& opt) {
  ExportResult res;
  {
    // Everything this may write in `dir` is checked against the input before any work starts.
    check_input_file(gguf_path, "GGUF model file");
    std::vector<std::string> outs{"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                  "tokenizer.model", "model.safetensors", "model.safetensors.index.json"};
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("model-", 0) == 0 && n.find(".safetensors") != std::string::npos) outs.push_back(n);
    }
    check_output_dir(dir, outs, {gguf_path});
  }
  std::vector<std::string> notes;
  Notes note{&opt.on_note, &notes};
  auto g = GGUFFile::open(gguf_path);
  // model/config.h: the same checks as every other subcommand (hyperparameters, tensor shapes, layer count), so the
  // config written below describes exactly the tensors written.
  const ModelConfig mc = validate_model(*g);
  const std::string A = mc.arch;
  res.arch = A;
  const int64_t n_embd = mc.n_embd;
  const int64_t n_head = mc.n_head;
  const int64_t n_head_kv = mc.n_head_kv;
  const int64_t n_layer = mc.n_layer;
  const int64_t n_ff = mc.n_ff;
  const int64_t n_vocab = mc.n_vocab;
  const int64_t head_dim = mc.head_dim;
  if (mc.head_dim_v != head_dim)
    throw Error(gguf_path + ": value head dimension " + std::to_string(mc.head_dim_v) + " != key head dimension " +
                std::to_string(head_dim) + " cannot be expressed in a Hugging Face config");
  if (A == "llama" && mc.rope_dim != head_dim)
    throw Error(gguf_path + ": partial rotary embedding (rope.dimension_count " + std::to_string(mc.rope_dim) +
                " != head dim) cannot be expressed in a LlamaForCausalLM config");
  if (auto rs = g->opt_str(A + ".rope.scaling.type"); rs && *rs != "none" && *rs != "linear")
    throw Error(gguf_path + ": rope scaling '" + *rs + "' cannot be exported");

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) throw Error(dir + ": cannot create folder" + (ec ? ": " + ec.message() : ""));

  // Tensors.
  struct Job {
    std::string name, dtype;
    std::vector<int64_t> shape;
    RowCopy copy;
    size_t bytes;
  };
  std::vector<Job> jobs;
  std::vector<DType> mats;
  bool has_output = false;
  for (const auto& t : g->tensors()) {
    bool ok;
    const std::string hn = hf_name(t.name, ok);
    if (!ok) throw Error(gguf_path + ": tensor '" + t.name + "' has no Hugging Face " + (A == "llama" ? "Llama" : "Qwen2") + " equivalent");
    if (t.n_dims > 2) throw Error(gguf_path + ": tensor '" + t.name + "' has " + std::to_string(t.n_dims) + " dimensions");
    has_output = has_output || t.name == "output.weight";
    Job j;
    j.name = hn;
    for (int i = static_cast<int>(t.n_dims) - 1; i >= 0; --i) j.shape.push_back(t.ne[i]);
    const TypeInfo* ti = type_info(t.type);
    DType to = t.type;
    if (t.type != DType::F32 && t.type != DType::F16 && t.type != DType::BF16) {
      if (!ti || !ti->supported) throw Error(gguf_path + ": tensor '" + t.name + "' has unsupported type " + type_name(t.type));
      to = DType::F32;
      note("note: " + t.name + " (" + type_name(t.type) + ") dequantized to F32");
    }
    j.dtype = st_name(to);
    j.copy.src = t.data;
    j.copy.st = t.type;
    j.copy.to = to;
    j.copy.row_len = t.ne[0];
    j.copy.n_rows = t.n_rows();
    const bool perm = A == "llama" && (t.name.find(".attn_q.") != std::string::npos || t.name.find(".attn_k.") != std::string::npos);
    if (perm) {
      j.copy.perm_heads = t.name.find(".attn_q.") != std::string::npos ? n_head : n_head_kv;
      j.copy.to_hf = true;
      if (t.n_dims == 1) {
        if (to != t.type) throw Error(gguf_path + ": quantized bias");
        j.copy.row_len = 1;
        j.copy.n_rows = t.ne[0];
      }
      if (j.copy.n_rows % j.copy.perm_heads || (j.copy.n_rows / j.copy.perm_heads) % 2)
        throw Error(gguf_path + ": tensor '" + t.name + "' rows do not split into heads of even size");
    }
    j.bytes = row_size(to, t.ne[0]) * static_cast<size_t>(t.n_rows());
    if (t.n_dims > 1) mats.push_back(to);
    jobs.push_back(std::move(j));
  }

  // Shards.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t cur = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (opt.shard_size && cur > 0 && cur + jobs[i].bytes > opt.shard_size) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += jobs[i].bytes;
    res.data_bytes += jobs[i].bytes;
  }
  const size_t ns = shards.size();
  auto shard_file = [&](size_t s) {
    if (ns == 1) return std::string("model.safetensors");
    char b[64];
    std::snprintf(b, sizeof b, "model-%05zu-of-%05zu.safetensors", s + 1, ns);
    return std::string(b);
  };
  ojson weight_map = ojson::object();
  size_t done = 0;
  for (size_t s = 0; s < ns; ++s) {
    SafeTensorsWriter w;
    w.set_metadata("format", "pt");
    for (size_t i : shards[s]) {
      const Job& j = jobs[i];
      ConvertTensorProgress pr;
      pr.index = done++;
      pr.count = jobs.size();
      pr.name = j.name;
      pr.from = st_name(j.copy.st);
      pr.to = j.copy.to;
      pr.ne = j.shape;
      pr.bytes = j.bytes;
      const auto* cb = &opt.on_tensor;
      const RowCopy c = j.copy;
      w.add(j.name, j.dtype, j.shape, [c, pr, cb](const SafeTensorsWriter::Sink& out) {
        copy_rows(c, out);
        if (*cb) (*cb)(pr);
      });
      weight_map[j.name] = shard_file(s);
    }
    w.write(dir + "/" + shard_file(s));
    res.files.push_back(shard_file(s));
  }
  if (ns > 1) {
    ojson idx = {{"metadata", {{"total_size", res.data_bytes}}}, {"weight_map", weight_map}};
    write_text(dir + "/model.safetensors.index.json", dump_json(idx, "model.safetensors.index.json"));
    res.files.push_back("model.safetensors.index.json");
  } else {
    std::remove((dir + "/model.safetensors.index.json").c_str());
  }
  res.n_shards = ns;
  res.n_tensors = jobs.size();

  // config.json
  const uint32_t ft = file_type_of(mats);
  ojson cfg = ojson::object();
  cfg["architectures"] = {A == "llama" ? "LlamaForCausalLM" : "Qwen2ForCausalLM"};
  cfg["model_type"] = A;
  if (auto nm = g->opt_str("general.name")) cfg["_name_or_path"] = *nm;
  cfg["hidden_size"] = n_embd;
  cfg["intermediate_size"] = n_ff;
  cfg["num_hidden_layers"] = n_layer;
  cfg["num_attention_heads"] = n_head;
  cfg["num_key_value_heads"] = n_head_kv;
  if (head_dim * n_head != n_embd) cfg["head_dim"] = head_dim;
  cfg["hidden_act"] = "silu";
  cfg["max_position_embeddings"] = mc.n_ctx_train;
  if (auto e = g->opt_float(A + ".attention.layer_norm_rms_epsilon")) cfg["rms_norm_eps"] = *e;
  if (auto th = g->opt_float(A + ".rope.freq_base")) cfg["rope_theta"] = *th;
  if (auto rs = g->opt_str(A + ".rope.scaling.type"); (rs && *rs == "linear") || mc.rope_freq_scale != 1.0f) {
    double factor = 1.0;  // the key the engine used (validate_model): rope.scaling.factor, else rope.scale_linear
    for (const char* k : {".rope.scaling.factor", ".rope.scale_linear"})
      if (auto x = g->opt_float(A + k); x && *x > 0.0 && mc.rope_freq_scale != 1.0f) {
        factor = *x;
        break;
      }
    cfg["rope_scaling"] = {{"type", "linear"}, {"factor", factor}};
  }
  cfg["vocab_size"] = n_vocab;
  cfg["tie_word_embeddings"] = !has_output;
  cfg["torch_dtype"] = ft == 32 ? "bfloat16" : ft == 1 ? "float16" : "float32";
  if (A == "qwen2") cfg["use_sliding_window"] = false;
  const auto bos = g->opt_int("tokenizer.ggml.bos_token_id"), eos = g->opt_int("tokenizer.ggml.eos_token_id");
  if (bos && *bos >= 0 && *bos < n_vocab) cfg["bos_token_id"] = *bos;
  if (eos && *eos >= 0 && *eos < n_vocab) cfg["eos_token_id"] = *eos;
  write_text(dir + "/config.json", dump_json(cfg, "config.json"));
  res.files.push_back("config.json");

  ojson gen = ojson::object();
  if (cfg.contains("bos_token_id")) gen["bos_token_id"] = cfg["bos_token_id"];
  const auto eot = g->opt_int("tokenizer.ggml.eot_token_id");
  if (eos && *eos >= 0 && *eos < n_vocab) {
    if (eot && *eot != *eos && *eot >= 0 && *eot < n_vocab) gen["eos_token_id"] = {*eos, *eot};
    else gen["eos_token_id"] = *eos;
  }
  write_text(dir + "/generation_config.json", dump_json(gen, "generation_config.json"));
  res.files.push_back("generation_config.json");

  ojson tcfg = ojson::object();
  auto tok_files = export_tokenizer(*g, dir, tcfg, note);
  res.files.insert(res.files.end(), tok_files.begin(), tok_files.end());
  write_text(dir + "/tokenizer_config.json", dump_json(tcfg, "tokenizer_config.json"));
  res.files.push_back("tokenizer_config.json");
  return res;
}

}  // namespace lokal
