#include "tools/synth.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <unordered_set>

#include "core/error.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/quant.h"
#include "core/threadpool.h"
#include "tools/quantize.h"

namespace lokal {

// ---------------------------------------------------------------------------------------------
// Presets. The numbers are those of each model's published config.json (Hugging Face):
//
// | preset         | model (config.json)                  | arch  | n_embd | layers | heads | kv | head_dim | n_ff  | vocab  | ctx    | rope base | rms eps | tied | qkv bias |
// |----------------|--------------------------------------|-------|--------|--------|-------|----|----------|-------|--------|--------|-----------|---------|------|----------|
// | tinyllama-1.1b | TinyLlama/TinyLlama-1.1B-Chat-v1.0   | llama | 2048   | 22     | 32    | 4  | 64       | 5632  | 32000  | 2048   | 10000     | 1e-5    | no   | no       |
// | qwen2.5-0.5b   | Qwen/Qwen2.5-0.5B-Instruct           | qwen2 | 896    | 24     | 14    | 2  | 64       | 4864  | 151936 | 32768  | 1e6       | 1e-6    | yes  | yes      |
// | qwen2.5-1.5b   | Qwen/Qwen2.5-1.5B-Instruct           | qwen2 | 1536   | 28     | 12    | 2  | 128      | 8960  | 151936 | 32768  | 1e6       | 1e-6    | yes  | yes      |
// | llama-3.2-1b   | meta-llama/Llama-3.2-1B-Instruct     | llama | 2048   | 16     | 32    | 8  | 64       | 8192  | 128256 | 131072 | 500000    | 1e-5    | yes  | no       |
// | mistral-7b     | mistralai/Mistral-7B-Instruct-v0.2   | llama | 4096   | 32     | 32    | 8  | 128      | 14336 | 32000  | 32768  | 1e6       | 1e-5    | no   | no       |
// | qwen2.5-7b     | Qwen/Qwen2.5-7B-Instruct             | qwen2 | 3584   | 28     | 28    | 4  | 128      | 18944 | 152064 | 32768  | 1e6       | 1e-6    | no   | yes      |
//
// Notes: the Qwen2.5 base (non-Instruct) 1.5B/7B configs say max_position_embeddings 131072; the Instruct value
// (32768) is what their usual GGUFs carry. Qwen2.5 vocabularies: 151643 BPE tokens + 22 special tokens, the
// embedding padded to 151936 (152064 for 7B). Llama 3.2: 128000 BPE tokens + 256 special tokens; rope scaling
// "llama3" with factor 32, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192 (GGUF:
// the rope_freqs.weight tensor). Mistral-7B v0.2 (not v0.1: rope base 10000, sliding window; not v0.3: vocab 32768).
// Mistral is a "llama" architecture model in GGUF.
const std::vector<SynthPreset>& synth_presets() {
  static const std::vector<SynthPreset> presets = [] {
    std::vector<SynthPreset> v;
    auto add = [&](SynthPreset p) { v.push_back(std::move(p)); };
    SynthPreset p;

    p = {};
    p.name = "tinyllama-1.1b"; p.model = "TinyLlama-1.1B-Chat-v1.0"; p.arch = "llama";
    p.n_embd = 2048; p.n_layer = 22; p.n_head = 32; p.n_head_kv = 4; p.n_ff = 5632; p.n_vocab = 32000;
    p.n_ctx = 2048; p.rope_base = 10000.0f; p.rms_eps = 1e-5f; p.tied = false; p.qkv_bias = false;
    p.vocab = SynthVocab::SPM;
    add(p);

    p = {};
    p.name = "qwen2.5-0.5b"; p.model = "Qwen2.5-0.5B-Instruct"; p.arch = "qwen2";
    p.n_embd = 896; p.n_layer = 24; p.n_head = 14; p.n_head_kv = 2; p.n_ff = 4864; p.n_vocab = 151936;
    p.n_ctx = 32768; p.rope_base = 1000000.0f; p.rms_eps = 1e-6f; p.tied = true; p.qkv_bias = true;
    p.vocab = SynthVocab::BPE_Qwen2; p.n_vocab_text = 151643; p.vocab_pad = true;
    add(p);

    p = {};
    p.name = "qwen2.5-1.5b"; p.model = "Qwen2.5-1.5B-Instruct"; p.arch = "qwen2";
    p.n_embd = 1536; p.n_layer = 28; p.n_head = 12; p.n_head_kv = 2; p.n_ff = 8960; p.n_vocab = 151936;
    p.n_ctx = 32768; p.rope_base = 1000000.0f; p.rms_eps = 1e-6f; p.tied = true; p.qkv_bias = true;
    p.vocab = SynthVocab::BPE_Qwen2; p.n_vocab_text = 151643; p.vocab_pad = true;
    add(p);

    p = {};
    p.name = "llama-3.2-1b"; p.model = "Llama-3.2-1B-Instruct"; p.arch = "llama";
    p.n_embd = 2048; p.n_layer = 16; p.n_head = 32; p.n_head_kv = 8; p.n_ff = 8192; p.n_vocab = 128256;
    p.n_ctx = 131072; p.rope_base = 500000.0f; p.rms_eps = 1e-5f; p.tied = true; p.qkv_bias = false;
    p.vocab = SynthVocab::BPE_Llama3; p.n_vocab_text = 128000;
    p.rope_scale_factor = 32.0f; p.rope_low_freq = 1.0f; p.rope_high_freq = 4.0f; p.rope_orig_ctx = 8192;
    add(p);

    p = {};
    p.name = "mistral-7b"; p.model = "Mistral-7B-Instruct-v0.2"; p.arch = "llama";
    p.n_embd = 4096; p.n_layer = 32; p.n_head = 32; p.n_head_kv = 8; p.n_ff = 14336; p.n_vocab = 32000;
    p.n_ctx = 32768; p.rope_base = 1000000.0f; p.rms_eps = 1e-5f; p.tied = false; p.qkv_bias = false;
    p.vocab = SynthVocab::SPM;
    add(p);

    p = {};
    p.name = "qwen2.5-7b"; p.model = "Qwen2.5-7B-Instruct"; p.arch = "qwen2";
    p.n_embd = 3584; p.n_layer = 28; p.n_head = 28; p.n_head_kv = 4; p.n_ff = 18944; p.n_vocab = 152064;
    p.n_ctx = 32768; p.rope_base = 1000000.0f; p.rms_eps = 1e-6f; p.tied = false; p.qkv_bias = true;
    p.vocab = SynthVocab::BPE_Qwen2; p.n_vocab_text = 151643; p.vocab_pad = true;
    add(p);
    return v;
  }();
  return presets;
}

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

}  // namespace

const SynthPreset* find_synth_preset(std::string_view name) {
  for (const auto& p : synth_presets())
    if (iequals(p.name, name)) return &p;
  return nullptr;
}

std::string synth_preset_list() {
  std::string s;
  for (const auto& p : synth_presets()) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

std::vector<float> llama3_rope_factors(const SynthPreset& p) {
  const int64_t dim = p.head_dim();
  std::vector<float> f(static_cast<size_t>(dim / 2), 1.0f);
  if (p.rope_scale_factor <= 0) return f;
  const double two_pi = 2.0 * 3.14159265358979323846;
  const double low_wavelen = static_cast<double>(p.rope_orig_ctx) / p.rope_low_freq;
  const double high_wavelen = static_cast<double>(p.rope_orig_ctx) / p.rope_high_freq;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double freq = 1.0 / std::pow(static_cast<double>(p.rope_base), static_cast<double>(2 * i) / static_cast<double>(dim));
    const double wavelen = two_pi / freq;
    double factor;
    if (wavelen < high_wavelen) {
      factor = 1.0;                           // high frequencies: unchanged
    } else if (wavelen > low_wavelen) {
      factor = p.rope_scale_factor;           // low frequencies: divided by the scale factor
    } else {                                  // in between: interpolate smoothly
      const double smooth = (static_cast<double>(p.rope_orig_ctx) / wavelen - p.rope_low_freq) /
                            (p.rope_high_freq - p.rope_low_freq);
      factor = 1.0 / ((1.0 - smooth) / p.rope_scale_factor + smooth);
    }
    f[static_cast<size_t>(i)] = static_cast<float>(factor);
  }
  return f;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Tensor types: llama-quantize's per-tensor mixes, from tools/quantize (mix_tensor_type).

MixModelInfo mix_info(const SynthPreset& p) {
  MixModelInfo m;
  m.arch = p.arch;
  m.n_layer = static_cast<int>(p.n_layer);
  m.n_head = p.n_head;
  m.n_head_kv = p.n_head_kv;
  m.n_attention_wv = static_cast<int>(p.n_layer);  // one attn_v per layer
  m.has_output = !p.tied;
  return m;
}

uint64_t tensor_bytes(DType t, const std::vector<int64_t>& ne) {
  int64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  return static_cast<uint64_t>(row_size(t, ne[0])) * static_cast<uint64_t>(rows);
}

// ---------------------------------------------------------------------------------------------
// Random numbers: counter based, so every row is independent of the others and of the thread that makes it.

inline uint64_t mix64(uint64_t z) {  // splitmix64 finalizer
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t hash_str(std::string_view s) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// n values ~ mean + std * N(0,1) (approximately: the sum of four 16-bit uniforms, Irwin-Hall n = 4).
void fill_normal(float* dst, int64_t n, uint64_t key, float mean, float std) {
  const float scale = std / (65536.0f / std::sqrt(3.0f));
  const float offset = 2.0f * 65535.0f;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = mix64(key + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ULL);
    const uint32_t s = static_cast<uint32_t>(r & 0xffff) + static_cast<uint32_t>((r >> 16) & 0xffff) +
                       static_cast<uint32_t>((r >> 32) & 0xffff) + static_cast<uint32_t>(r >> 48);
    dst[i] = mean + (static_cast<float>(s) - offset) * scale;
  }
}

// A small deterministic generator for the vocabulary.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() { return mix64(s += 0x9e3779b97f4a7c15ULL); }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  // An index in [0, n) that favours small ones (early, short pieces are picked more often).
  size_t skewed(size_t n) {
    const double u = uniform();
    return std::min(n - 1, static_cast<size_t>(static_cast<double>(n) * u * u * u));
  }
};

// ---------------------------------------------------------------------------------------------
// Vocabularies

constexpr int32_t kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeUserDefined = 4, kTypeUnused = 5,
                  kTypeByte = 6;

struct VocabOut {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;       // SPM only
  std::vector<std::string> merges; // BPE only
};

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Characters that common text uses, most frequent first (they are picked more often when pieces are joined).
const char* const kFrequentAscii =
    "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,'-\"():;!?/_=*&%$#@+<>[]{}|\\^~`";

// SentencePiece-style vocabulary of n tokens.
VocabOut make_spm_vocab(int64_t n) {
  VocabOut v;
  std::unordered_set<std::string> used;
  auto push = [&](std::string s, int32_t type, float score) {
    used.insert(s);
    v.tokens.push_back(std::move(s));
    v.types.push_back(type);
    v.scores.push_back(score);
  };
  push("<unk>", kTypeUnknown, 0.0f);
  push("<s>", kTypeControl, 0.0f);
  push("</s>", kTypeControl, 0.0f);
  static const char* hex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) push(std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">", kTypeByte, 0.0f);

  const std::string space = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  std::vector<std::string> chars = {space};
  for (const char* c = kFrequentAscii; *c; ++c) chars.emplace_back(1, *c);
  for (const auto& c : chars) used.insert(c);
  const int64_t n_pieces = n - static_cast<int64_t>(v.tokens.size()) - static_cast<int64_t>(chars.size());
  if (n_pieces < 0) throw Error("a generated SentencePiece vocabulary needs at least " +
                                std::to_string(v.tokens.size() + chars.size()) + " tokens, not " + std::to_string(n));

  // Pieces: each joins two earlier pieces (or characters); the space symbol only at the start of a piece.
  std::vector<std::string> pool = chars;  // what joins pick from: characters first, then pieces in creation order
  std::vector<std::string> pieces;
  pieces.reserve(static_cast<size_t>(n_pieces));
  Rng rng(0x5350u);
  while (static_cast<int64_t>(pieces.size()) < n_pieces) {
    const std::string& a = pool[rng.skewed(pool.size())];
    const std::string& b = pool[rng.skewed(pool.size())];
    if (b.compare(0, space.size(), space) == 0) continue;
    std::string s = a + b;
    if (s.size() > 48 || !used.insert(s).second) continue;
    pieces.push_back(s);
    pool.push_back(std::move(s));
  }
  for (auto& s : pieces) push(std::move(s), kTypeNormal, 0.0f);
  for (const auto& c : chars) push(c, kTypeNormal, 0.0f);
  for (size_t i = 259; i < v.scores.size(); ++i) v.scores[i] = -static_cast<float>(i - 259);
  return v;
}

// The 256 byte-level symbols of GPT-2 style BPE, in vocabulary order: the printable bytes (which stand for
// themselves) in byte order, then the other bytes, mapped to U+0100 onwards in byte order.
std::vector<std::string> byte_level_symbols() {
  std::vector<std::string> out;
  auto printable = [](int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); };
  for (int b = 0; b < 256; ++b)
    if (printable(b)) {
      std::string s;
      append_utf8(s, static_cast<uint32_t>(b));
      out.push_back(s);
    }
  int k = 0;
  for (int b = 0; b < 256; ++b)
    if (!printable(b)) {
      std::string s;
      append_utf8(s, static_cast<uint32_t>(256 + k++));
      out.push_back(s);
    }
  return out;
}

std::vector<std::pair<std::string, int32_t>> special_tokens(SynthVocab kind) {
  std::vector<std::pair<std::string, int32_t>> s;
  if (kind == SynthVocab::BPE_Qwen2) {
    for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                          "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                          "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"})
      s.emplace_back(t, kTypeControl);
    s.emplace_back("<tool_call>", kTypeUserDefined);
    s.emplace_back("</tool_call>", kTypeUserDefined);
    for (const char* t : {"<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"})
      s.emplace_back(t, kTypeControl);
  } else if (kind == SynthVocab::BPE_Llama3) {
    for (const char* t : {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                          "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                          "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"})
      s.emplace_back(t, kTypeControl);
    for (int i = 3; i <= 247; ++i) s.emplace_back("<|reserved_special_token_" + std::to_string(i) + "|>", kTypeControl);
  }
  return s;
}

// Byte-level BPE vocabulary: n_text tokens (256 byte symbols + one per merge), the specials, padding to n.
VocabOut make_bpe_vocab(SynthVocab kind, int64_t n, int64_t n_text) {
  VocabOut v;
  const auto specials = special_tokens(kind);
  if (n_text <= 0) n_text = n - static_cast<int64_t>(specials.size());
  if (n_text < 256 || n_text + static_cast<int64_t>(specials.size()) > n)
    throw Error("a generated BPE vocabulary of " + std::to_string(n) + " tokens cannot hold the 256 byte symbols and " +
                std::to_string(specials.size()) + " special tokens");
  std::unordered_set<std::string> used;
  for (const auto& sp : specials) used.insert(sp.first);
  for (int64_t i = n_text + static_cast<int64_t>(specials.size()); i < n; ++i) used.insert("[PAD" + std::to_string(i) + "]");

  const std::vector<std::string> bytes = byte_level_symbols();
  for (const auto& b : bytes) {
    used.insert(b);
    v.tokens.push_back(b);
    v.types.push_back(kTypeNormal);
  }
  // The join pool: the space symbol (U+0120) and frequent characters first.
  std::vector<std::string> pool;
  pool.push_back("\xC4\xA0");  // U+0120 'Ġ' = byte 0x20
  for (const char* c = kFrequentAscii; *c; ++c) pool.emplace_back(1, *c);
  pool.push_back("\xC4\x8A");  // U+010A 'Ċ' = '\n'
  {
    std::unordered_set<std::string> in_pool(pool.begin(), pool.end());
    for (const auto& b : bytes)
      if (!in_pool.count(b)) pool.push_back(b);
  }
  const std::string space = "\xC4\xA0";
  v.merges.reserve(static_cast<size_t>(n_text - 256));
  Rng rng(0x425045u);
  while (static_cast<int64_t>(v.tokens.size()) < n_text) {
    const std::string& a = pool[rng.skewed(pool.size())];
    const std::string& b = pool[rng.skewed(pool.size())];
    if (b.compare(0, space.size(), space) == 0) continue;  // the space symbol starts a word, never follows
    std::string s = a + b;
    if (s.size() > 48 || !used.insert(s).second) continue;
    v.merges.push_back(a + " " + b);
    v.tokens.push_back(s);
    v.types.push_back(kTypeNormal);
    pool.push_back(std::move(s));
  }
  for (const auto& sp : specials) {
    v.tokens.push_back(sp.first);
    v.types.push_back(sp.second);
  }
  while (static_cast<int64_t>(v.tokens.size()) < n) {
    v.tokens.push_back("[PAD" + std::to_string(v.tokens.size()) + "]");
    v.types.push_back(kTypeUnused);
  }
  return v;
}

// Writes the tokenizer.* keys of a generated vocabulary; returns its size.
int64_t write_generated_vocab(GGUFWriter& w, const SynthPreset& p) {
  if (p.vocab == SynthVocab::SPM) {
    VocabOut v = make_spm_vocab(p.n_vocab);
    w.set_str("tokenizer.ggml.model", "llama");
    w.set_str("tokenizer.ggml.pre", "default");
    w.set("tokenizer.ggml.tokens", GGUFMetaValue::str_array(std::move(v.tokens)));
    w.set("tokenizer.ggml.scores", GGUFMetaValue::array(v.scores));
    w.set("tokenizer.ggml.token_type", GGUFMetaValue::array(v.types));
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_bool("tokenizer.ggml.add_eos_token", false);
    return p.n_vocab;
  }
  VocabOut v = make_bpe_vocab(p.vocab, p.n_vocab, p.n_vocab_text);
  const int64_t n_text = static_cast<int64_t>(v.merges.size()) + 256;
  w.set_str("tokenizer.ggml.model", "gpt2");
  w.set_str("tokenizer.ggml.pre", p.vocab == SynthVocab::BPE_Qwen2 ? "qwen2" : "llama-bpe");
  w.set("tokenizer.ggml.tokens", GGUFMetaValue::str_array(std::move(v.tokens)));
  w.set("tokenizer.ggml.token_type", GGUFMetaValue::array(v.types));
  w.set("tokenizer.ggml.merges", GGUFMetaValue::str_array(std::move(v.merges)));
  const uint32_t first = static_cast<uint32_t>(n_text);  // id of the first special token
  if (p.vocab == SynthVocab::BPE_Qwen2) {
    w.set_u32("tokenizer.ggml.bos_token_id", first);       // <|endoftext|>
    w.set_u32("tokenizer.ggml.eos_token_id", first + 2);   // <|im_end|>
    w.set_u32("tokenizer.ggml.padding_token_id", first);
    w.set_u32("tokenizer.ggml.eot_token_id", first + 2);
    w.set_bool("tokenizer.ggml.add_bos_token", false);
  } else {
    w.set_u32("tokenizer.ggml.bos_token_id", first);       // <|begin_of_text|>
    w.set_u32("tokenizer.ggml.eos_token_id", first + 1);   // <|end_of_text|>
    w.set_u32("tokenizer.ggml.eot_token_id", first + 9);   // <|eot_id|>
    w.set_bool("tokenizer.ggml.add_bos_token", true);
  }
  return p.n_vocab;
}

// The token count of a vocab GGUF, which must be the preset's; with `pad` (--pad-vocab) a smaller one is accepted
// when the preset allows padding. Checked by synth_plan too, so nothing is printed or written before a refusal.
int64_t checked_vocab_size(const GGUFFile& f, const SynthPreset& p, const std::string& path, bool pad) {
  const GGUFValue* toks = f.find("tokenizer.ggml.tokens");
  if (!toks || toks->type != GGUFType::ARRAY || toks->arr_type != GGUFType::STRING)
    throw Error(path + ": not a vocabulary: no tokenizer.ggml.tokens string array");
  const int64_t n = static_cast<int64_t>(toks->arr_n);
  const bool can_pad = p.vocab_pad && n < p.n_vocab;
  if (n != p.n_vocab && !(pad && can_pad))
    throw Error(path + ": the vocabulary has " + std::to_string(n) + " tokens, but preset '" + p.name + "' needs " +
                std::to_string(p.n_vocab) + " (rows of token_embd)" +
                (can_pad ? "; --pad-vocab pads it with [PADn] tokens as llama.cpp's converter does" : ""));
  return n;
}

// Copies every tokenizer.* key of a vocab GGUF (checked_vocab_size), padded when asked. Returns its size.
int64_t write_copied_vocab(GGUFWriter& w, const SynthPreset& p, const std::string& path, bool pad) {
  auto f = GGUFFile::open(path);
  const int64_t n = checked_vocab_size(*f, p, path, pad);
  for (const auto& [key, val] : f->kv()) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    GGUFMetaValue mv = GGUFMetaValue::from(val);
    if (n < p.n_vocab && val.type == GGUFType::ARRAY) {
      // Pad the per-token arrays as llama.cpp's converter does for embeddings larger than the tokenizer.
      if (key == "tokenizer.ggml.tokens") {
        std::vector<std::string> t = mv.arr_str();
        for (int64_t i = n; i < p.n_vocab; ++i) t.push_back("[PAD" + std::to_string(i) + "]");
        mv = GGUFMetaValue::str_array(std::move(t));
      } else if (key == "tokenizer.ggml.token_type" && val.arr_n == static_cast<uint64_t>(n)) {
        std::vector<int32_t> t;
        for (int64_t v : f->get_int_array(key)) t.push_back(static_cast<int32_t>(v));
        t.resize(static_cast<size_t>(p.n_vocab), kTypeUnused);
        mv = GGUFMetaValue::array(t);
      } else if (key == "tokenizer.ggml.scores" && val.arr_n == static_cast<uint64_t>(n)) {
        std::vector<float> s = f->get_f32_array(key);
        s.resize(static_cast<size_t>(p.n_vocab), 0.0f);
        mv = GGUFMetaValue::array(s);
      }
    }
    w.set(key, std::move(mv));
  }
  return p.n_vocab;
}

QuantFileType parse_type(const std::string& name) {
  auto ft = find_quant_file_type(name);
  if (!ft) throw Error("unknown type '" + name + "' (supported: " + quant_file_type_list() + ")");
  return *ft;
}

void check_preset(const SynthPreset& p) {
  auto bad = [&](const std::string& what) { throw Error("preset '" + p.name + "': " + what); };
  if (p.arch != "llama" && p.arch != "qwen2") bad("architecture '" + p.arch + "' is not supported (llama, qwen2)");
  if (p.n_embd <= 0 || p.n_layer <= 0 || p.n_head <= 0 || p.n_head_kv <= 0 || p.n_ff <= 0 || p.n_vocab <= 0 || p.n_ctx <= 0)
    bad("every dimension must be positive");
  if (p.n_embd % p.n_head != 0 || p.n_head % p.n_head_kv != 0 || p.head_dim() % 2 != 0)
    bad("n_embd must divide into n_head heads of even size, and n_head into n_head_kv groups");
}

}  // namespace

SynthPlan synth_plan(const SynthOptions& opt) {
  SynthPlan plan;
  plan.preset = opt.preset;
  SynthPreset& p = plan.preset;
  if (opt.n_layer < 0) throw Error("--layers must be positive, got " + std::to_string(opt.n_layer));
  if (opt.n_layer > 0) p.n_layer = opt.n_layer;
  check_preset(p);
  if (!opt.vocab_file.empty()) checked_vocab_size(*GGUFFile::open(opt.vocab_file), p, opt.vocab_file, opt.pad_vocab);
  const QuantFileType ft = parse_type(opt.type);
  plan.type_name = ft.name;
  plan.file_type = ft.ftype;

  const int64_t hd = p.head_dim();
  const int64_t n_q = p.n_head * hd, n_kv = p.n_head_kv * hd;
  auto add = [&](std::string name, std::vector<int64_t> ne, DType type, SynthTensorPlan::Init init) {
    SynthTensorPlan t;
    t.name = std::move(name);
    t.ne = std::move(ne);
    t.type = type;
    t.init = init;
    t.bytes = tensor_bytes(type, t.ne);
    plan.bytes += t.bytes;
    uint64_t el = 1;
    for (int64_t d : t.ne) el *= static_cast<uint64_t>(d);
    plan.n_params += el;
    plan.count[type]++;
    plan.tensors.push_back(std::move(t));
  };
  using I = SynthTensorPlan::Init;
  const MixModelInfo mix = mix_info(p);
  // layer: the tensor's layer (its index among the tensors of its kind), -1 outside the blocks.
  auto mat = [&](std::string name, int64_t cols, int64_t rows, int64_t layer) {
    const DType type = mix_tensor_type(ft, mix, name, cols, static_cast<int>(std::max<int64_t>(layer, 0)), opt.pure);
    add(std::move(name), {cols, rows}, type, I::Normal);
  };
  if (p.rope_scale_factor > 0 && opt.rope_freqs) add("rope_freqs.weight", {hd / 2}, DType::F32, I::RopeFreqs);
  mat("token_embd.weight", p.n_embd, p.n_vocab, -1);
  for (int64_t l = 0; l < p.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_norm.weight", {p.n_embd}, DType::F32, I::Norm);
    mat(b + "attn_q.weight", p.n_embd, n_q, l);
    if (p.qkv_bias) add(b + "attn_q.bias", {n_q}, DType::F32, I::Normal);
    mat(b + "attn_k.weight", p.n_embd, n_kv, l);
    if (p.qkv_bias) add(b + "attn_k.bias", {n_kv}, DType::F32, I::Normal);
    mat(b + "attn_v.weight", p.n_embd, n_kv, l);
    if (p.qkv_bias) add(b + "attn_v.bias", {n_kv}, DType::F32, I::Normal);
    mat(b + "attn_output.weight", n_q, p.n_embd, l);
    add(b + "ffn_norm.weight", {p.n_embd}, DType::F32, I::Norm);
    mat(b + "ffn_gate.weight", p.n_embd, p.n_ff, l);
    mat(b + "ffn_up.weight", p.n_embd, p.n_ff, l);
    mat(b + "ffn_down.weight", p.n_ff, p.n_embd, l);
  }
  add("output_norm.weight", {p.n_embd}, DType::F32, I::Norm);
  if (!p.tied) mat("output.weight", p.n_embd, p.n_vocab, -1);
  return plan;
}

SynthResult synth_model(const SynthOptions& opt, const std::string& path,
                        const std::function<void(const SynthProgress&)>& progress) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  SynthResult res;
  res.plan = synth_plan(opt);
  const SynthPlan& plan = res.plan;
  const SynthPreset& p = plan.preset;
  const std::string a = p.arch + ".";
  const bool quantized = type_info(parse_type(opt.type).base)->quantized;

  GGUFWriter w;
  w.set_str("general.architecture", p.arch);
  w.set_str("general.type", "model");
  w.set_str("general.name", p.model + " (random weights)");
  w.set_str("general.description",
            "lokal synth: random weights (seed " + std::to_string(opt.seed) + ") with the shapes of " + p.model +
                " (preset " + p.name + ", " + std::to_string(p.n_layer) + " layers); not a trained model");
  w.set_u32(a + "block_count", static_cast<uint32_t>(p.n_layer));
  w.set_u32(a + "context_length", static_cast<uint32_t>(p.n_ctx));
  w.set_u32(a + "embedding_length", static_cast<uint32_t>(p.n_embd));
  w.set_u32(a + "feed_forward_length", static_cast<uint32_t>(p.n_ff));
  w.set_u32(a + "attention.head_count", static_cast<uint32_t>(p.n_head));
  w.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(p.n_head_kv));
  w.set_f32(a + "rope.freq_base", p.rope_base);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", p.rms_eps);
  w.set_u32("general.file_type", static_cast<uint32_t>(plan.file_type));
  w.set_u32(a + "vocab_size", static_cast<uint32_t>(p.n_vocab));
  w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(p.head_dim()));
  res.n_vocab = opt.vocab_file.empty() ? write_generated_vocab(w, p) : write_copied_vocab(w, p, opt.vocab_file, opt.pad_vocab);
  if (quantized) w.set_u32("general.quantization_version", 2);

  ThreadPool pool(opt.n_threads > 0 ? opt.n_threads : ThreadPool::default_threads());
  const int nt = pool.size();
  std::vector<std::vector<float>> scratch(static_cast<size_t>(nt));
  std::vector<uint8_t> chunk;
  SynthProgress prog;
  prog.bytes_total = plan.bytes;
  prog.n_tensors = plan.tensors.size();
  const uint64_t seed_key = mix64(opt.seed ^ 0x6c6f6b616cULL);
  const std::vector<float> rope_factors = llama3_rope_factors(p);

  for (size_t ti = 0; ti < plan.tensors.size(); ++ti) {
    const SynthTensorPlan& t = plan.tensors[ti];
    w.add_tensor(t.name, t.type, t.ne, [&, ti](const GGUFWriter::Sink& out) {
      const SynthTensorPlan& T = plan.tensors[ti];
      prog.tensor = ti;
      prog.tensor_name = &T.name;
      const uint64_t key = mix64(seed_key ^ hash_str(T.name));
      const int64_t ne0 = T.ne[0];
      int64_t rows = 1;
      for (size_t i = 1; i < T.ne.size(); ++i) rows *= T.ne[i];
      const size_t rb = row_size(T.type, ne0);
      auto make_row = [&](int64_t r, uint8_t* dst, std::vector<float>& buf) {
        buf.resize(static_cast<size_t>(ne0));
        const uint64_t row_key = mix64(key + static_cast<uint64_t>(r) * 0xd1b54a32d192ed03ULL);
        switch (T.init) {
          case SynthTensorPlan::Init::Normal: fill_normal(buf.data(), ne0, row_key, 0.0f, 0.02f); break;
          case SynthTensorPlan::Init::Norm: fill_normal(buf.data(), ne0, row_key, 1.0f, 0.02f); break;
          case SynthTensorPlan::Init::RopeFreqs:
            for (int64_t i = 0; i < ne0; ++i)
              buf[static_cast<size_t>(i)] = i < static_cast<int64_t>(rope_factors.size()) ? rope_factors[static_cast<size_t>(i)] : 1.0f;
            break;
        }
        quantize_row(T.type, buf.data(), dst, ne0);
      };
      const int64_t rows_per_chunk = std::clamp<int64_t>(static_cast<int64_t>((size_t{8} << 20) / rb), 1, rows);
      chunk.resize(static_cast<size_t>(rows_per_chunk) * rb);
      for (int64_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        const int64_t nr = std::min(rows_per_chunk, rows - r0);
        const int64_t grain = std::max<int64_t>(1, nr / (4 * nt));
        pool.parallel_for(nr, [&](int64_t i, int tid) {
          make_row(r0 + i, chunk.data() + static_cast<size_t>(i) * rb, scratch[static_cast<size_t>(tid)]);
        }, grain);
        out(chunk.data(), static_cast<size_t>(nr) * rb);
        prog.bytes_done += static_cast<uint64_t>(nr) * rb;
        if (progress) {
          prog.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
          progress(prog);
        }
      }
    });
  }
  w.write(path);
  res.file_size = w.file_size();
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

}  // namespace lokal
