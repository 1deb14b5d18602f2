// tokenizer/vocab.cpp - loading a vocabulary from GGUF, special-token handling, detokenization.
#include "tokenizer/vocab.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <initializer_list>

#include "core/error.h"
#include "core/gguf.h"
#include "core/log.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab_data.h"

namespace lokal {

namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type) -> attributes.
uint16_t attr_from_type(int64_t type) {
  switch (type) {
    case 1: return kAttrNormal;
    case 2: return kAttrUnknown;
    case 3: return kAttrControl;
    case 4: return kAttrUserDefined;
    case 5: return kAttrUnused;
    case 6: return kAttrByte;
    default: return 0;  // undefined
  }
}

std::string to_lower_ascii(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

// Printable form of bytes for log messages.
std::string escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const auto b = static_cast<unsigned char>(ch);
    if (b >= 0x20 && b < 0x7F) {
      out += ch;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", b);
      out += buf;
    }
  }
  return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  s = std::move(out);
}

// --- loading ----------------------------------------------------------------------------------

void load_tokens(VocabData& d, const GGUFFile& f) {
  const auto& texts = f.get_str_array("tokenizer.ggml.tokens");
  if (texts.empty()) throw Error(d.file + ": tokenizer.ggml.tokens is empty");
  if (texts.size() > static_cast<size_t>(INT32_MAX)) throw Error(d.file + ": too many tokens");
  const size_t n = texts.size();

  std::vector<float> scores;
  if (f.has("tokenizer.ggml.scores")) {
    scores = f.get_f32_array("tokenizer.ggml.scores");
    if (scores.size() != n)
      throw Error(d.file + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) + " entries for " +
                  std::to_string(n) + " tokens");
  }
  std::vector<int64_t> types;
  if (f.has("tokenizer.ggml.token_type")) {
    types = f.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n)
      throw Error(d.file + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) + " entries for " +
                  std::to_string(n) + " tokens");
  }

  d.scores.assign(n, 0.0f);
  d.attrs.assign(n, kAttrNormal);
  d.symbols.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    std::string text(texts[i]);
    if (text.empty()) {
      LOKAL_WARN("%s: token %zu has empty text", d.file.c_str(), i);
      text = "[EMPTY_" + std::to_string(i) + "]";
    }
    d.max_token_len = std::max(d.max_token_len, text.size());
    d.symbols.add(std::move(text));
    if (!scores.empty()) d.scores[i] = scores[i];
    if (!types.empty()) d.attrs[i] = attr_from_type(types[i]);
  }
}

// Reads a special-token id; keeps `id` (the default) if the key is absent or out of range.
void read_special(VocabData& d, const GGUFFile& f, const char* key, int32_t& id) {
  const auto v = f.opt_int(key);
  if (!v) return;
  if (*v >= 0 && *v < d.n_tokens()) {
    id = static_cast<int32_t>(*v);
  } else if (*v == -1 || *v == 0xFFFFFFFFll) {  // converters write -1 for "none"
    LOKAL_DEBUG("%s: %s is unset (%lld), keeping %d", d.file.c_str(), key, static_cast<long long>(*v), id);
  } else {
    LOKAL_WARN("%s: bad special token %s = %lld, keeping %d", d.file.c_str(), key, static_cast<long long>(*v), id);
  }
}

// A token found by its text becomes CONTROL (llama.cpp does the same for end-of-turn, FIM and
// end-of-generation tokens whose type says otherwise).
void make_control(VocabData& d, int32_t id) {
  if (!(d.attrs[id] & kAttrControl)) {
    LOKAL_WARN("%s: token %d '%s' looks like a control token; treating it as one", d.file.c_str(), id,
               escape(d.text(id)).c_str());
    d.attrs[id] = kAttrControl;
  }
}

// If `id` is unset, the first of `texts` that is a token; marks it CONTROL.
void detect_by_text(VocabData& d, int32_t& id, std::initializer_list<std::string_view> texts) {
  if (id >= 0) return;
  for (std::string_view t : texts) {
    const int32_t found = d.find(t);
    if (found >= 0) {
      id = found;
      make_control(d, found);
      return;
    }
  }
}

void load_special_tokens(VocabData& d, const GGUFFile& f) {
  // Defaults by model, as llama.cpp (an id past the vocabulary means none).
  switch (d.type) {
    case VocabType::SPM: d.bos = 1, d.eos = 2, d.unk = 0; break;
    case VocabType::BPE: d.bos = 11, d.eos = 11; break;
    case VocabType::WPM: d.bos = 101, d.unk = 100, d.sep = 102, d.pad = 0, d.mask = 103; break;
  }
  for (int32_t* id : {&d.bos, &d.eos, &d.unk, &d.sep, &d.pad, &d.mask})
    if (*id >= d.n_tokens()) *id = -1;

  read_special(d, f, "tokenizer.ggml.bos_token_id", d.bos);
  read_special(d, f, "tokenizer.ggml.eos_token_id", d.eos);
  read_special(d, f, "tokenizer.ggml.eot_token_id", d.eot);
  read_special(d, f, "tokenizer.ggml.eom_token_id", d.eom);
  read_special(d, f, "tokenizer.ggml.unknown_token_id", d.unk);
  read_special(d, f, "tokenizer.ggml.seperator_token_id", d.sep);  // sic: the GGUF key is misspelled
  read_special(d, f, "tokenizer.ggml.padding_token_id", d.pad);
  read_special(d, f, "tokenizer.ggml.mask_token_id", d.mask);
  read_special(d, f, "tokenizer.ggml.fim_pre_token_id", d.fim_pre);
  read_special(d, f, "tokenizer.ggml.fim_suf_token_id", d.fim_suf);
  read_special(d, f, "tokenizer.ggml.fim_mid_token_id", d.fim_mid);
  read_special(d, f, "tokenizer.ggml.fim_pad_token_id", d.fim_pad);
  read_special(d, f, "tokenizer.ggml.fim_rep_token_id", d.fim_rep);
  read_special(d, f, "tokenizer.ggml.fim_sep_token_id", d.fim_sep);
  read_special(d, f, "tokenizer.ggml.prefix_token_id", d.fim_pre);  // older names of the FIM keys
  read_special(d, f, "tokenizer.ggml.suffix_token_id", d.fim_suf);
  read_special(d, f, "tokenizer.ggml.middle_token_id", d.fim_mid);

  if (auto b = f.opt_bool("tokenizer.ggml.add_bos_token")) d.add_bos = *b;
  if (auto b = f.opt_bool("tokenizer.ggml.add_eos_token")) d.add_eos = *b;

  // Tokens llama.cpp recognizes by their text when the file does not name them.
  detect_by_text(d, d.eot, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
                            "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"});
  detect_by_text(d, d.eom, {"<|eom_id|>"});
  detect_by_text(d, d.fim_pre, {"<|fim_prefix|>", "<fim-prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>"});
  detect_by_text(d, d.fim_suf, {"<|fim_suffix|>", "<fim-suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>"});
  detect_by_text(d, d.fim_mid, {"<|fim_middle|>", "<fim-middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>"});
  detect_by_text(d, d.fim_pad, {"<|fim_pad|>", "<fim-pad>", "<PAD>"});
  detect_by_text(d, d.fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>"});
  detect_by_text(d, d.fim_sep, {"<|file_sep|>"});

  // End of generation.
  for (int32_t id : {d.fim_pad, d.fim_rep, d.fim_sep, d.eos, d.eot, d.eom})
    if (id >= 0) d.eog.push_back(id);
  for (std::string_view t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>"}) {
    const int32_t id = d.find(t);
    if (id >= 0) {
      d.eog.push_back(id);
      make_control(d, id);
    }
  }
  std::sort(d.eog.begin(), d.eog.end());
  d.eog.erase(std::unique(d.eog.begin(), d.eog.end()), d.eog.end());

  // Adding BOS/EOS needs the token.
  if (d.add_bos && d.bos < 0 && d.type != VocabType::WPM) {
    LOKAL_WARN("%s: add_bos is set but there is no BOS token; not adding it", d.file.c_str());
    d.add_bos = false;
  }
  if (d.add_eos && d.eos < 0 && d.type != VocabType::WPM) {
    LOKAL_WARN("%s: add_eos is set but there is no EOS token; not adding it", d.file.c_str());
    d.add_eos = false;
  }

  // Tokens cut out of the text before tokenizing, longest first (std::sort as llama.cpp, so that
  // equally long tokens come in the same order).
  for (int32_t id = 0; id < d.n_tokens(); ++id)
    if (d.attrs[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) d.special_tokens.push_back(id);
  std::sort(d.special_tokens.begin(), d.special_tokens.end(),
            [&](int32_t a, int32_t b) { return d.text(a).size() > d.text(b).size(); });

  // Per-model attributes llama.cpp sets by name.
  auto set_attr = [&](std::string_view text, uint16_t attr, bool on) {
    const int32_t id = d.find(text);
    if (id < 0) return;
    uint16_t& a = d.attrs[id];
    a = on ? (a | attr) : (a & ~attr);
  };
  const std::string name = to_lower_ascii(f.opt_str("general.name").value_or(""));
  if (d.pre_name == "jina-v2-de" || d.pre_name == "jina-v2-es" || d.pre_name == "jina-v2-code") {
    set_attr("<mask>", kAttrLstrip, true);
  } else if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (int32_t id : d.special_tokens) d.attrs[id] |= kAttrRstrip;
    set_attr("</s>", kAttrRstrip, true);
    for (std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) set_attr(t, kAttrRstrip, false);
  }
}

void load_byte_tokens(VocabData& d) {
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
    int32_t id = d.find(std::string_view(name, sizeof(name)));
    if (id < 0) {
      const char one = static_cast<char>(b);
      id = d.find(std::string_view(&one, 1));
    }
    d.byte_token[b] = id;
  }
}

// --- special-token partitioning ----------------------------------------------------------------

// A piece of the input: either plain text (token < 0) or a special token.
struct Fragment {
  int32_t token;
  size_t off, len;  // the text, when token < 0
};

// Cuts the text of special tokens out of `text`, as llama.cpp's tokenizer_st_partition: for each
// token (longest first) every text fragment is split at each occurrence, left to right.
std::vector<Fragment> partition(const VocabData& d, std::string_view text, bool parse_special) {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (int32_t id : d.special_tokens) {
    const uint16_t attr = d.attrs[id];
    if (!parse_special && (attr & (kAttrControl | kAttrUnknown))) continue;
    const std::string_view t = d.text(id);
    if (text.find(t) == std::string_view::npos) continue;
    next.clear();
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        next.push_back(fr);
        continue;
      }
      size_t off = fr.off, len = fr.len;
      while (len > 0) {
        const size_t hit = text.substr(off, len).find(t);
        if (hit == std::string_view::npos) break;
        size_t left_len = hit;
        if (attr & kAttrLstrip)
          while (left_len > 0 && is_ascii_space(text[off + left_len - 1])) --left_len;
        if (left_len > 0) next.push_back({-1, off, left_len});
        next.push_back({id, 0, 0});
        off += hit + t.size();
        len -= hit + t.size();
        if (attr & kAttrRstrip)
          while (len > 0 && is_ascii_space(text[off])) ++off, --len;
      }
      if (len > 0) next.push_back({-1, off, len});
    }
    frags.swap(next);
  }
  return frags;
}

}  // namespace

void VocabData::warn_unknown(std::string_view what) const {
  if (!warned_unknown.exchange(true))
    LOKAL_WARN("%s: the vocabulary cannot represent '%s'; using the unknown token (warned once)", file.c_str(),
               escape(what).c_str());
}

// --- Vocab ------------------------------------------------------------------------------------

Vocab::Vocab(std::unique_ptr<VocabData> d) : d_(std::move(d)) {}
Vocab::~Vocab() = default;

std::unique_ptr<Vocab> Vocab::from_gguf(const GGUFFile& f) {
  auto d = std::make_unique<VocabData>();
  d->file = f.name();
  d->model_name = f.get_str("tokenizer.ggml.model");
  d->pre_name = f.opt_str("tokenizer.ggml.pre").value_or("");

  if (d->model_name == "llama") {
    d->type = VocabType::SPM;
    d->add_space_prefix = true;
    d->add_bos = true;
  } else if (d->model_name == "gpt2") {
    d->type = VocabType::BPE;
    const auto cfg = bpe_pre_config(d->pre_name);
    if (!cfg) throw Error(d->file + ": unsupported pre-tokenizer '" + d->pre_name + "' (tokenizer.ggml.pre)");
    if (d->pre_name.empty())
      LOKAL_WARN("%s: no tokenizer.ggml.pre; using the default pre-tokenizer (quality may suffer)", d->file.c_str());
    d->splitter = std::make_unique<RegexSplitter>(cfg->regexes);
    d->ignore_merges = cfg->ignore_merges;
    d->add_bos = cfg->add_bos;
  } else if (d->model_name == "bert") {
    d->type = VocabType::WPM;
    d->add_bos = true;
  } else {
    throw Error(d->file + ": unsupported tokenizer model '" + d->model_name + "' (tokenizer.ggml.model)");
  }
  if (auto b = f.opt_bool("tokenizer.ggml.add_space_prefix")) d->add_space_prefix = *b;

  load_tokens(*d, f);
  if (d->type == VocabType::BPE) d->merges.build(f.get_str_array("tokenizer.ggml.merges"));
  if (d->type == VocabType::SPM) load_byte_tokens(*d);
  load_special_tokens(*d, f);
  return std::unique_ptr<Vocab>(new Vocab(std::move(d)));
}

VocabType Vocab::type() const { return d_->type; }
std::string Vocab::model_name() const { return d_->model_name; }
std::string Vocab::pre_name() const { return d_->pre_name; }
int32_t Vocab::n_tokens() const { return d_->n_tokens(); }
size_t Vocab::n_merges() const { return d_->merges.size(); }
int32_t Vocab::bos() const { return d_->bos; }
int32_t Vocab::eos() const { return d_->eos; }
int32_t Vocab::eot() const { return d_->eot; }
int32_t Vocab::unk() const { return d_->unk; }
int32_t Vocab::pad() const { return d_->pad; }
int32_t Vocab::sep() const { return d_->sep; }
bool Vocab::add_bos() const { return d_->add_bos; }
bool Vocab::add_eos() const { return d_->add_eos; }
int32_t Vocab::find_token(std::string_view text) const { return d_->find(text); }

bool Vocab::is_eog(int32_t id) const { return std::binary_search(d_->eog.begin(), d_->eog.end(), id); }
bool Vocab::is_control(int32_t id) const {
  return id >= 0 && id < n_tokens() && (d_->attrs[id] & kAttrControl);
}
bool Vocab::is_user_defined(int32_t id) const {
  return id >= 0 && id < n_tokens() && (d_->attrs[id] & kAttrUserDefined);
}

const std::string& Vocab::token_text(int32_t id) const {
  if (id < 0 || id >= n_tokens())
    throw Error("token id " + std::to_string(id) + " is out of range (vocabulary of " + std::to_string(n_tokens()) + ")");
  return d_->text(id);
}
float Vocab::token_score(int32_t id) const {
  token_text(id);  // range check
  return d_->scores[id];
}

std::vector<int32_t> Vocab::tokenize(std::string_view text, bool add_special, bool parse_special) const {
  return tokenize_impl(text, add_special, parse_special, true);
}

std::vector<int32_t> Vocab::tokenize_fragment(std::string_view text) const {
  return tokenize_impl(text, false, false, false);
}

std::vector<int32_t> Vocab::tokenize_impl(std::string_view text, bool add_special, bool parse_special,
                                          bool dummy_space) const {
  const VocabData& d = *d_;
  std::vector<int32_t> out;
  const std::vector<Fragment> frags = partition(d, text, parse_special);
  const bool bos = add_special && (d.type == VocabType::WPM ? d.bos >= 0 : d.add_bos);
  const bool eos = add_special && (d.type == VocabType::WPM ? d.sep >= 0 : d.add_eos);
  if (bos) out.push_back(d.bos);

  bool prev_special = dummy_space;  // SPM: the dummy space goes before the text and after each special token
  for (const Fragment& fr : frags) {
    if (fr.token >= 0) {
      out.push_back(fr.token);
      prev_special = dummy_space;
      continue;
    }
    const std::string_view piece = text.substr(fr.off, fr.len);
    switch (d.type) {
      case VocabType::SPM: {
        std::string s = d.add_space_prefix && prev_special ? " " : "";
        s += piece;
        replace_all(s, " ", kSpaceMarker);
        tokenize_spm(d, s, out);
        break;
      }
      case VocabType::BPE: tokenize_bpe(d, piece, out); break;
      case VocabType::WPM: tokenize_wpm(d, piece, out); break;
    }
    prev_special = false;
  }

  if (bos && d.type != VocabType::WPM && out.size() >= 2 && out[1] == d.bos)
    LOKAL_WARN("%s: the prompt starts with BOS and another BOS was added in front of it", d.file.c_str());
  if (eos) out.push_back(d.type == VocabType::WPM ? d.sep : d.eos);
  return out;
}

std::string Vocab::token_to_piece(int32_t id, bool render_special) const {
  if (id < 0 || id >= n_tokens()) return {};
  const uint16_t attr = d_->attrs[id];
  const std::string& text = d_->text(id);
  if (attr & (kAttrControl | kAttrUnknown)) return render_special ? text : std::string();
  if (attr & kAttrUserDefined) return text;
  if (d_->type == VocabType::BPE) {
    if (!(attr & kAttrNormal)) return {};
    // Byte-level characters back to bytes; a character that stands for no byte is kept as is.
    std::string out;
    for (uint32_t cp : unicode::decode_lenient(text)) {
      const int b = unicode::bpe_cp_to_byte(cp);
      if (b >= 0) out.push_back(static_cast<char>(b));
      else unicode::append_utf8(out, cp);
    }
    return out;
  }
  if (attr & kAttrNormal) {
    std::string out = text;
    replace_all(out, kSpaceMarker, " ");
    return out;
  }
  if ((attr & kAttrByte) && text.size() == 6) {  // "<0xNN>"
    const int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
    if (hi >= 0 && lo >= 0) return std::string(1, static_cast<char>(hi * 16 + lo));
  }
  return {};
}

std::string Vocab::detokenize(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) out += token_to_piece(id, render_special);
  return out;
}

// --- StreamDecoder ------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Vocab& v, bool render_special) : vocab_(v), render_special_(render_special) {}

std::string StreamDecoder::push(int32_t id) {
  pending_ += vocab_.token_to_piece(id, render_special_);
  return drain(false);
}

std::string StreamDecoder::flush() { return drain(true); }

std::string StreamDecoder::drain(bool final) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    size_t bad = 0;
    const int n = unicode::utf8_sequence_length(std::string_view(pending_).substr(i), &bad);
    if (n > 0) {
      out.append(pending_, i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
    } else if (n == 0) {
      out += kReplacement;
      i += bad;
    } else if (final) {  // a character cut off by the end of the stream
      out += kReplacement;
      i = pending_.size();
    } else {
      break;  // wait for the rest of the character
    }
  }
  pending_.erase(0, i);
  return out;
}

}  // namespace lokal
