// tools/convert_tokenizer.cpp - tokenizers between Hugging Face files and GGUF metadata (rules in convert.h): the
// SentencePiece model protobuf (the subset read and written), tokenizer.json / tokenizer.model ->
// tokenizer.ggml.* keys, and a vocabulary taken from another GGUF.
#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/mmap.h"
#include "tools/convert_internal.h"

namespace lokal::convert_detail {

// ---------------------------------------------------------------- SentencePiece model protobuf (subset)

namespace {

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
}  // namespace

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

const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

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

}  // namespace

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

}  // namespace lokal::convert_detail
