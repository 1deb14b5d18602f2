// tools/convert_hf.cpp - a Hugging Face model folder -> GGUF (rules in convert.h): the supported architectures,
// config.json's hyperparameters, the safetensors shards, the tensor name and shape mapping, metadata.
#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <set>

#include "core/error.h"
#include "core/safetensors.h"
#include "tools/convert_internal.h"

namespace lokal {

using namespace convert_detail;

// ---------------------------------------------------------------- HF -> GGUF

namespace {

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

}  // namespace lokal
