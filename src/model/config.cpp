#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/quant.h"
#include "core/types.h"
#include "tokenizer/vocab.h"

namespace lokal {

namespace {

bool supported_arch(const std::string& a) { return a == "llama" || a == "qwen2"; }

std::string num(double v) {
  char b[48];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

// Checks of one file; every failure is one line "FILE: what is wrong".
class Validator {
 public:
  explicit Validator(const GGUFFile& f) : f_(f) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(f_.name() + ": " + what); }

  // A required integer key in [1, max].
  int64_t positive(const std::string& key, int64_t max) const {
    const int64_t v = f_.get_int(key);
    check_int(key, v, max);
    return v;
  }
  // An optional integer key: when present it must lie in [1, max].
  std::optional<int64_t> opt_positive(const std::string& key, int64_t max) const {
    const auto v = f_.opt_int(key);
    if (v) check_int(key, *v, max);
    return v;
  }
  void check_int(const std::string& key, int64_t v, int64_t max) const {
    if (v <= 0) fail("metadata '" + key + "' = " + std::to_string(v) + " is invalid");
    if (v > max)
      fail("metadata '" + key + "' = " + std::to_string(v) + " is invalid (more than " + std::to_string(max) + ")");
  }
  // An optional float key that must be finite and > 0 (as a float, the precision lokal computes with).
  float positive_float(const std::string& key, double dflt) const {
    const auto v = f_.opt_float(key);
    if (!v) return static_cast<float>(dflt);
    const float x = static_cast<float>(*v);
    if (!std::isfinite(x) || !(x > 0.0f))
      fail("metadata '" + key + "' = " + num(*v) + " is invalid (must be a finite number > 0)");
    return x;
  }

  const GGUFTensorInfo& need(const std::string& name) const {
    const GGUFTensorInfo* t = f_.find_tensor(name);
    if (!t) fail("missing tensor '" + name + "'");
    return *t;
  }

  void check_type(const GGUFTensorInfo& t) const {
    const TypeInfo* ti = type_info(t.type);
    if (!ti || !ti->supported)
      fail("tensor '" + t.name + "' has type " + (ti ? ti->name : "unknown") +
           ", which lokal does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, "
           "Q5_K, Q6_K)");
  }

  // A weight matrix of `rows` rows of `cols` values (ne = [cols, rows]).
  void matrix(const std::string& name, int64_t cols, int64_t rows, bool required = true) const {
    const GGUFTensorInfo* t = f_.find_tensor(name);
    if (!t) {
      if (required) fail("missing tensor '" + name + "'");
      return;
    }
    if (t->n_dims != 2 || t->ne[0] != cols || t->ne[1] != rows)
      fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected [" + std::to_string(cols) + ", " +
           std::to_string(rows) + "]");
    check_type(*t);
  }

  // A vector of n values (norm weights, biases): shape, type, and every value finite (it is small: read it all).
  void vector(const std::string& name, int64_t n, bool required = true) {
    const GGUFTensorInfo* t = f_.find_tensor(name);
    if (!t) {
      if (required) fail("missing tensor '" + name + "'");
      return;
    }
    if (t->ne[0] != n || t->n_elements() != n)
      fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected [" + std::to_string(n) + "]");
    check_type(*t);
    const TypeInfo* ti = type_info(t->type);
    if (n % ti->block_size != 0)
      fail("tensor '" + name + "' has type " + ti->name + ", whose blocks of " + std::to_string(ti->block_size) +
           " do not divide its " + std::to_string(n) + " values");
    buf_.resize(static_cast<size_t>(n));
    dequantize_row(t->type, t->data, buf_.data(), n);
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(buf_[static_cast<size_t>(i)]))
        fail("tensor '" + name + "' holds a non-finite value (" + num(buf_[static_cast<size_t>(i)]) + " at index " +
             std::to_string(i) + ")");
  }

 private:
  const GGUFFile& f_;
  std::vector<float> buf_;
};

// Sanity bounds: far above any real model, low enough that no product of them overflows an int64.
constexpr int64_t kMaxWidth = int64_t(1) << 20;     // n_embd, head dims
constexpr int64_t kMaxHeads = int64_t(1) << 16;
constexpr int64_t kMaxLayers = int64_t(1) << 16;
constexpr int64_t kMaxFF = int64_t(1) << 24;
constexpr int64_t kMaxCtx = int64_t(INT32_MAX);

// Layer number of a "blk.N.*" tensor name, or -1 when the name has no such prefix.
int64_t layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  int64_t n = 0;
  size_t i = 4;
  for (; i < name.size() && i < 14 && name[i] >= '0' && name[i] <= '9'; ++i) n = n * 10 + (name[i] - '0');
  if (i == 4 || i >= name.size() || name[i] != '.') return -1;
  return n;
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GGUFFile& f) {
  Validator v(f);
  ModelConfig c;
  c.arch = f.get_str("general.architecture");
  if (!supported_arch(c.arch))
    v.fail("unsupported model architecture '" + c.arch + "' (supported: llama, qwen2)");
  c.name = f.opt_str("general.name").value_or("");
  const std::string a = c.arch + ".";

  // --- hyperparameters
  c.n_embd = v.positive(a + "embedding_length", kMaxWidth);
  c.n_layer = v.positive(a + "block_count", kMaxLayers);
  c.n_head = v.positive(a + "attention.head_count", kMaxHeads);
  c.n_head_kv = v.opt_positive(a + "attention.head_count_kv", kMaxHeads).value_or(c.n_head);
  if (c.n_head % c.n_head_kv != 0)
    v.fail("metadata '" + a + "attention.head_count' = " + std::to_string(c.n_head) + " is not a multiple of '" + a +
           "attention.head_count_kv' = " + std::to_string(c.n_head_kv));
  c.n_ff = v.positive(a + "feed_forward_length", kMaxFF);
  c.n_ctx_train = v.opt_positive(a + "context_length", kMaxCtx).value_or(2048);
  if (auto kl = v.opt_positive(a + "attention.key_length", kMaxWidth)) {
    c.head_dim = *kl;
  } else {
    if (c.n_embd % c.n_head != 0)
      v.fail("metadata '" + a + "embedding_length' = " + std::to_string(c.n_embd) + " is not a multiple of '" + a +
             "attention.head_count' = " + std::to_string(c.n_head) + " (and '" + a + "attention.key_length' is not set)");
    c.head_dim = c.n_embd / c.n_head;
  }
  if (c.head_dim % 2 != 0)
    v.fail("the head dimension " + std::to_string(c.head_dim) + " is odd (" + a +
           "attention.key_length, or embedding_length / head_count); rotary embeddings need an even one");
  c.head_dim_v = v.opt_positive(a + "attention.value_length", kMaxWidth).value_or(c.head_dim);
  c.rms_eps = v.positive_float(a + "attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_freq_base = v.positive_float(a + "rope.freq_base", 10000.0);
  c.rope_dim = v.opt_positive(a + "rope.dimension_count", kMaxWidth).value_or(c.head_dim);
  if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0)
    v.fail("metadata '" + a + "rope.dimension_count' = " + std::to_string(c.rope_dim) +
           " is invalid (must be even and at most the head dimension " + std::to_string(c.head_dim) + ")");
  // Linear rope scaling: freq_scale = 1/factor (llama.cpp: rope.scaling.factor or the older rope.scale_linear;
  // 0 means not set).
  std::string scaling = f.opt_str(a + "rope.scaling.type").value_or("");
  if (!scaling.empty() && scaling != "none" && scaling != "linear")
    v.fail("rope scaling type '" + scaling + "' is not supported (supported: none, linear)");
  double factor = 0.0;
  for (const char* k : {"rope.scaling.factor", "rope.scale_linear"}) {
    const auto x = f.opt_float(a + k);
    if (!x) continue;
    if (!std::isfinite(static_cast<float>(*x)) || *x < 0.0)
      v.fail("metadata '" + a + k + "' = " + num(*x) + " is invalid (must be a finite number >= 0)");
    if (factor == 0.0) factor = *x;
  }
  if (scaling != "none" && factor > 0.0) c.rope_freq_scale = static_cast<float>(1.0 / factor);
  if (!std::isfinite(c.rope_freq_scale) || !(c.rope_freq_scale > 0.0f))
    v.fail("rope scaling factor " + num(factor) + " is invalid");
  c.rope_style = c.arch == "qwen2" ? RopeStyle::Neox : RopeStyle::Norm;
  c.file_type = static_cast<int>(f.opt_int("general.file_type").value_or(-1));

  // --- tensors
  if (f.tensors().empty()) v.fail("the file holds no tensors (a vocabulary-only GGUF is not a model)");
  const GGUFTensorInfo& emb = v.need("token_embd.weight");
  c.n_vocab = emb.ne[1];  // the vocabulary size: from the token embedding (authoritative for shapes)
  v.matrix("token_embd.weight", c.n_embd, c.n_vocab);

  // The tokenizer must describe every row of the embedding.
  f.get_str("tokenizer.ggml.model");
  const GGUFValue* toks = f.find("tokenizer.ggml.tokens");
  if (!toks) v.fail("missing metadata key 'tokenizer.ggml.tokens'");
  if (toks->type != GGUFType::ARRAY || toks->arr_type != GGUFType::STRING)
    v.fail("metadata 'tokenizer.ggml.tokens' is not an array of strings");
  if (static_cast<int64_t>(toks->arr_n) != c.n_vocab)
    v.fail("tokenizer has " + std::to_string(toks->arr_n) + " tokens but token_embd has " + std::to_string(c.n_vocab) +
           " rows");

  // Layers: blk.N tensors exactly for N in [0, block_count).
  int64_t top = -1;
  for (const auto& t : f.tensors()) {
    if (t.name.find("_exps.") != std::string::npos)
      v.fail("mixture-of-experts tensor '" + t.name + "' found; MoE models are not supported yet");
    const int64_t l = layer_of(t.name);
    if (l >= c.n_layer)
      v.fail("tensor '" + t.name + "' belongs to layer " + std::to_string(l) + ", but metadata '" + a +
             "block_count' = " + std::to_string(c.n_layer) + " (layers 0 to " + std::to_string(c.n_layer - 1) + ")");
    top = std::max(top, l);
  }
  if (top + 1 < c.n_layer)
    v.fail("metadata '" + a + "block_count' = " + std::to_string(c.n_layer) + ", but the file holds tensors of " +
           (top < 0 ? std::string("no layer") : std::to_string(top + 1) + " layer" + (top ? "s" : "") + " (blk.0 to blk." +
                                                     std::to_string(top) + ")"));

  v.vector("output_norm.weight", c.n_embd);
  v.matrix("output.weight", c.n_embd, c.n_vocab, false);
  v.vector("rope_freqs.weight", c.rope_dim / 2, false);
  const bool need_bias = c.arch == "qwen2";
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    v.vector(p + "attn_norm.weight", c.n_embd);
    v.matrix(p + "attn_q.weight", c.n_embd, c.n_embd_q());
    v.matrix(p + "attn_k.weight", c.n_embd, c.n_embd_k());
    v.matrix(p + "attn_v.weight", c.n_embd, c.n_embd_v());
    v.matrix(p + "attn_output.weight", c.n_head * c.head_dim_v, c.n_embd);
    v.vector(p + "attn_q.bias", c.n_embd_q(), need_bias);
    v.vector(p + "attn_k.bias", c.n_embd_k(), need_bias);
    v.vector(p + "attn_v.bias", c.n_embd_v(), need_bias);
    v.vector(p + "ffn_norm.weight", c.n_embd);
    v.matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff);
    v.matrix(p + "ffn_up.weight", c.n_embd, c.n_ff);
    v.matrix(p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
  return c;
}

ModelConfig validate_model(const GGUFFile& f) {
  ModelConfig c = ModelConfig::from_gguf(f);
  Vocab::from_gguf(f);  // the tokenizer, as Model::load builds it (same checks, same order)
  return c;
}

std::string file_type_name(int ft) {
  switch (ft) {
    case 0: return "all F32";
    case 1: return "mostly F16";
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 7: return "Q8_0";
    case 8: return "Q5_0";
    case 9: return "Q5_1";
    case 10: return "Q2_K - Medium";
    case 11: return "Q3_K - Small";
    case 12: return "Q3_K - Medium";
    case 13: return "Q3_K - Large";
    case 14: return "Q4_K - Small";
    case 15: return "Q4_K - Medium";
    case 16: return "Q5_K - Small";
    case 17: return "Q5_K - Medium";
    case 18: return "Q6_K";
    case 21: return "Q2_K - Small";
    case 32: return "BF16";
    case -1: return "unknown";
    default: return "ftype " + std::to_string(ft);
  }
}

std::string model_file_type(const GGUFFile& f) {
  if (const auto ft = f.opt_int("general.file_type")) return file_type_name(static_cast<int>(*ft));
  std::map<DType, uint64_t> bytes;
  for (const auto& t : f.tensors())
    if (t.n_dims >= 2) bytes[t.type] += t.nbytes;
  DType best = DType::F32;
  uint64_t most = 0;
  for (const auto& [t, b] : bytes)
    if (b > most) most = b, best = t;
  return type_name(best);
}

}  // namespace lokal
