#include "model/config.h"

#include "core/error.h"

namespace lokal {

namespace {
bool supported_arch(const std::string& a) { return a == "llama" || a == "qwen2"; }
}  // namespace

ModelConfig ModelConfig::from_gguf(const GGUFFile& f) {
  ModelConfig c;
  c.arch = f.get_str("general.architecture");
  if (!supported_arch(c.arch))
    throw Error(f.name() + ": unsupported model architecture '" + c.arch + "' (supported: llama, qwen2)");
  c.name = f.opt_str("general.name").value_or("");
  const std::string a = c.arch + ".";
  auto need_pos = [&](const std::string& key) {
    int64_t v = f.get_int(key);
    if (v <= 0 || v > (int64_t(1) << 40)) throw Error(f.name() + ": metadata '" + key + "' = " + std::to_string(v) + " is invalid");
    return v;
  };
  c.n_embd = need_pos(a + "embedding_length");
  c.n_layer = need_pos(a + "block_count");
  c.n_head = need_pos(a + "attention.head_count");
  c.n_head_kv = f.opt_int(a + "attention.head_count_kv").value_or(c.n_head);
  if (c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
    throw Error(f.name() + ": head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
                std::to_string(c.n_head_kv));
  c.n_ff = need_pos(a + "feed_forward_length");
  c.n_ctx_train = f.opt_int(a + "context_length").value_or(2048);
  if (c.n_ctx_train <= 0) c.n_ctx_train = 2048;
  c.head_dim = f.opt_int(a + "attention.key_length").value_or(c.n_embd / c.n_head);
  c.head_dim_v = f.opt_int(a + "attention.value_length").value_or(c.head_dim);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0 || c.head_dim_v <= 0)
    throw Error(f.name() + ": invalid head dimension " + std::to_string(c.head_dim));
  c.rms_eps = static_cast<float>(f.opt_float(a + "attention.layer_norm_rms_epsilon").value_or(1e-5));
  c.rope_freq_base = static_cast<float>(f.opt_float(a + "rope.freq_base").value_or(10000.0));
  c.rope_dim = f.opt_int(a + "rope.dimension_count").value_or(c.head_dim);
  if (c.rope_dim <= 0 || c.rope_dim > c.head_dim || c.rope_dim % 2 != 0)
    throw Error(f.name() + ": invalid rope.dimension_count " + std::to_string(c.rope_dim));
  // Linear rope scaling: freq_scale = 1/factor (llama.cpp: rope.scaling.factor or the older rope.scale_linear).
  std::string scaling = f.opt_str(a + "rope.scaling.type").value_or("");
  double factor = f.opt_float(a + "rope.scaling.factor").value_or(0.0);
  if (factor == 0.0) factor = f.opt_float(a + "rope.scale_linear").value_or(0.0);
  if (!scaling.empty() && scaling != "none" && scaling != "linear")
    throw Error(f.name() + ": rope scaling type '" + scaling + "' is not supported (supported: none, linear)");
  if (scaling != "none" && factor > 0.0) c.rope_freq_scale = static_cast<float>(1.0 / factor);
  c.rope_style = c.arch == "qwen2" ? RopeStyle::Neox : RopeStyle::Norm;
  c.file_type = static_cast<int>(f.opt_int("general.file_type").value_or(-1));

  // Vocabulary size: from the token embedding (authoritative for shapes).
  const GGUFTensorInfo* emb = f.find_tensor("token_embd.weight");
  if (!emb) throw Error(f.name() + ": missing tensor 'token_embd.weight'");
  c.n_vocab = emb->ne[1];
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

}  // namespace lokal
