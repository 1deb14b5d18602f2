// tools/convert_export.cpp - GGUF -> a Hugging Face model folder (rules in convert.h): safetensors (optionally
// sharded), config.json, generation_config.json, tokenizer.json, tokenizer_config.json and tokenizer.model.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "core/error.h"
#include "core/safe_io.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "tools/convert_internal.h"

namespace lokal {

using namespace convert_detail;

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
