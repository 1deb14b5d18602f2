// `lokal convert` / `lokal export-hf` (engine/convert.h) and the safetensors format (core/safetensors.h).
//
// Tolerance everywhere: byte-exact. Tensor data is compared byte for byte (name, type, shape, bytes);
// tokenizer metadata value for value (token ids >= n_vocab, i.e. "none", are ignored where noted).
//   * llama2.c -> GGUF: the test writes a llama2.c checkpoint and tokenizer .bin from stories260K.gguf itself (its
//     own writer below, following llama2.c's run.c layout), converts it, and must get stories260K.gguf's tensors
//     (and, as llama.cpp's converter wrote that file, the whole file).
//   * GGUF -> HF -> GGUF for real and synthetic models, SentencePiece and byte-level BPE vocabularies.
//   * HF -> GGUF -> HF: safetensors tensors byte-identical, tokenizer.json / config.json equal as JSON.
//   * bad input: one-line lokal::Error / CLI error, never a crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <tuple>

#include "core/error.h"
#include "core/fp16.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "tools/convert.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using namespace lokal;
using lokal::test::data_path;
using lokal::test::run_lokal;
using json = nlohmann::json;

namespace {

// A fresh folder per test, removed at the end (tests/support).
struct TempDir : lokal::test::TempDir {
  TempDir() : lokal::test::TempDir("lokal_conv") {}
};

std::string q(const std::string& s) { return "'" + s + "'"; }

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  o.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(o.good()) << path;
}

void expect_same_tensors(const GGUFFile& a, const GGUFFile& b) {
  ASSERT_EQ(a.tensors().size(), b.tensors().size()) << a.name() << " vs " << b.name();
  for (const auto& t : a.tensors()) {
    const GGUFTensorInfo* u = b.find_tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name << " missing in " << b.name();
    EXPECT_EQ(t.type, u->type) << t.name;
    EXPECT_EQ(t.n_dims, u->n_dims) << t.name;
    EXPECT_EQ(0, std::memcmp(t.ne, u->ne, sizeof t.ne)) << t.name << " " << t.shape_str() << " vs " << u->shape_str();
    ASSERT_EQ(t.nbytes, u->nbytes) << t.name;
    EXPECT_EQ(0, std::memcmp(t.data, u->data, t.nbytes)) << t.name << ": tensor bytes differ";
  }
}

// tokenizer.* keys (and the given others) equal; id keys whose value is not a token (>= n_vocab) count as absent.
void expect_same_keys(const GGUFFile& a, const GGUFFile& b, const std::vector<std::string>& extra = {}) {
  const int64_t n = static_cast<int64_t>(a.get_str_array("tokenizer.ggml.tokens").size());
  auto relevant = [&](const GGUFFile& f) {
    std::map<std::string, GGUFMetaValue> m;
    for (const auto& [k, v] : f.kv()) {
      bool want = k.rfind("tokenizer.", 0) == 0;
      for (const auto& e : extra) want = want || k == e;
      if (!want) continue;
      if (k.size() > 9 && k.compare(k.size() - 9, 9, "_token_id") == 0 && v.is_int() && (v.u >= static_cast<uint64_t>(n))) continue;
      m[k] = GGUFMetaValue::from(v);
    }
    return m;
  };
  auto ma = relevant(a), mb = relevant(b);
  for (const auto& [k, v] : ma) {
    auto it = mb.find(k);
    if (it == mb.end()) {
      ADD_FAILURE() << k << " missing in " << b.name();
      continue;
    }
    EXPECT_TRUE(v == it->second) << k << " differs: " << a.find(k)->to_string() << " vs " << b.find(k)->to_string();
  }
  for (const auto& [k, v] : mb) EXPECT_TRUE(ma.count(k)) << k << " only in " << b.name();
}

std::vector<std::string> hparams(const std::string& arch) {
  std::vector<std::string> v = {"general.architecture"};
  for (const char* k : {".context_length", ".embedding_length", ".block_count", ".feed_forward_length", ".attention.head_count",
                        ".attention.head_count_kv", ".attention.layer_norm_rms_epsilon", ".rope.freq_base"})
    v.push_back(arch + k);
  return v;
}

// ---- an independent llama2.c writer (run.c's layout) ----

void put_i32(std::string& o, int32_t v) { o.append(reinterpret_cast<const char*>(&v), 4); }
void put_f32(std::string& o, float v) { o.append(reinterpret_cast<const char*>(&v), 4); }
void put_tensor(std::string& o, const GGUFFile& g, const std::string& name) {
  const GGUFTensorInfo* t = g.find_tensor(name);
  ASSERT_NE(t, nullptr) << name;
  ASSERT_EQ(t->type, DType::F32) << name;
  o.append(reinterpret_cast<const char*>(t->data), t->nbytes);
}

// version 0 (legacy) or 1 ("ak42"); shared classifier unless `unshared`.
std::string llama2c_checkpoint(const GGUFFile& g, int version, bool unshared = false) {
  const int32_t dim = static_cast<int32_t>(g.get_int("llama.embedding_length"));
  const int32_t hidden = static_cast<int32_t>(g.get_int("llama.feed_forward_length"));
  const int32_t L = static_cast<int32_t>(g.get_int("llama.block_count"));
  const int32_t H = static_cast<int32_t>(g.get_int("llama.attention.head_count"));
  const int32_t KV = static_cast<int32_t>(g.get_int("llama.attention.head_count_kv"));
  const int32_t V = static_cast<int32_t>(g.find_tensor("token_embd.weight")->ne[1]);
  const int32_t seq = static_cast<int32_t>(g.get_int("llama.context_length"));
  std::string o;
  auto layers = [&](const char* n) {
    for (int l = 0; l < L; ++l) put_tensor(o, g, "blk." + std::to_string(l) + "." + n);
  };
  if (version == 0) {
    for (int32_t v : {dim, hidden, L, H, KV, unshared ? -V : V, seq}) put_i32(o, v);
    put_tensor(o, g, "token_embd.weight");
    layers("attn_norm.weight");
    layers("attn_q.weight");
    layers("attn_k.weight");
    layers("attn_v.weight");
    layers("attn_output.weight");
    layers("ffn_norm.weight");
    layers("ffn_gate.weight");
    layers("ffn_down.weight");
    layers("ffn_up.weight");
    put_tensor(o, g, "output_norm.weight");
    for (int i = 0; i < seq * (dim / H); ++i) put_f32(o, 0.5f);  // freq_cis_real, freq_cis_imag
  } else {
    put_i32(o, 0x616b3432);
    put_i32(o, 1);
    for (int32_t v : {dim, hidden, L, H, KV, V, seq}) put_i32(o, v);
    o += static_cast<char>(unshared ? 0 : 1);
    o.resize(256, '\0');
    layers("attn_norm.weight");
    layers("ffn_norm.weight");
    put_tensor(o, g, "output_norm.weight");
    put_tensor(o, g, "token_embd.weight");
    layers("attn_q.weight");
    layers("attn_k.weight");
    layers("attn_v.weight");
    layers("attn_output.weight");
    layers("ffn_gate.weight");
    layers("ffn_down.weight");
    layers("ffn_up.weight");
  }
  if (unshared) put_tensor(o, g, "output.weight");
  return o;
}

// llama2.c tokenizer.bin: max_token_length, then per token: score, length, bytes (U+2581 stored as ' ',
// BOS/EOS as "\n<s>\n" / "\n</s>\n", as llama2.c's tokenizer export writes them).
std::string llama2c_tokenizer(const GGUFFile& g) {
  const auto& toks = g.get_str_array("tokenizer.ggml.tokens");
  const auto scores = g.get_f32_array("tokenizer.ggml.scores");
  std::vector<std::string> texts;
  int32_t maxlen = 0;
  for (size_t i = 0; i < toks.size(); ++i) {
    std::string t(toks[i]);
    if (i == 1) t = "\n<s>\n";
    if (i == 2) t = "\n</s>\n";
    std::string s;
    for (size_t k = 0; k < t.size();) {
      if (t.compare(k, 3, "\xe2\x96\x81") == 0) {
        s += ' ';
        k += 3;
      } else {
        s += t[k++];
      }
    }
    maxlen = std::max<int32_t>(maxlen, static_cast<int32_t>(s.size()));
    texts.push_back(s);
  }
  std::string o;
  put_i32(o, maxlen);
  for (size_t i = 0; i < texts.size(); ++i) {
    put_f32(o, scores[i]);
    put_i32(o, static_cast<int32_t>(texts[i].size()));
    o += texts[i];
  }
  return o;
}

std::string run_text(const std::string& model, const std::string& prompt) {
  auto r = run_lokal("run -m " + q(model) + " -p " + q(prompt) + " -n 24 --temp 0 -t 1");
  EXPECT_EQ(r.rc, 0) << r.err;
  return r.out;
}

// GGUF -> HF -> GGUF through the CLI; returns the converted path.
std::string round_trip(const TempDir& tmp, const std::string& src, const std::string& extra_export = "") {
  const std::string dir = tmp.file("hf"), out = tmp.file("back.gguf");
  auto e = run_lokal("export-hf " + q(src) + " -o " + q(dir) + " -q " + extra_export);
  EXPECT_EQ(e.rc, 0) << e.err;
  auto c = run_lokal("convert " + q(dir) + " -o " + q(out));
  EXPECT_EQ(c.rc, 0) << c.err;
  return out;
}

json read_json_file(const std::string& p) { return json::parse(lokal::test::read_file(p)); }

std::string cli_error(const std::string& args) {
  auto r = run_lokal(args);
  EXPECT_NE(r.rc, 0) << args;
  EXPECT_NE(r.rc, 128) << "crashed: " << args;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not one line: " << r.err;
  return r.err;
}

}  // namespace

// ============================================================ llama2.c

TEST(ConvertLlama2c, Stories260KGivesTheSameFile) {
  TempDir tmp;
  const std::string ref = data_path("models/real/stories260K.gguf");
  auto g = GGUFFile::open(ref);
  write_bytes(tmp.file("stories260K.bin"), llama2c_checkpoint(*g, 0));
  write_bytes(tmp.file("tok512.bin"), llama2c_tokenizer(*g));
  auto r = run_lokal("convert " + q(tmp.file("stories260K.bin")) + " --tokenizer " + q(tmp.file("tok512.bin")) + " -o " +
                     q(tmp.file("out.gguf")));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("[48/48]"), std::string::npos) << "progress lines expected: " << r.err;
  auto c = GGUFFile::open(tmp.file("out.gguf"));
  expect_same_tensors(*g, *c);
  expect_same_keys(*g, *c, hparams("llama"));
  EXPECT_EQ(c->get_int("llama.rope.dimension_count"), 8);
  // llama.cpp's convert-llama2c-to-ggml wrote stories260K.gguf: the same keys, order and layout give the same bytes.
  EXPECT_TRUE(lokal::test::read_file(ref) == lokal::test::read_file(tmp.file("out.gguf"))) << "whole file differs";
  EXPECT_EQ(run_text(tmp.file("out.gguf"), "Once upon a time"), run_text(ref, "Once upon a time"));
}

TEST(ConvertLlama2c, Version1AndUnsharedClassifierAndBabyLlama) {
  TempDir tmp;
  for (const char* m : {"models/real/stories260K.gguf", "models/real/babyllama-936K-f32.gguf"}) {
    auto g = GGUFFile::open(data_path(m));
    write_bytes(tmp.file("tok.bin"), llama2c_tokenizer(*g));
    for (int version : {0, 1}) {
      for (bool unshared : {false, true}) {
        SCOPED_TRACE(std::string(m) + " version " + std::to_string(version) + (unshared ? " unshared" : " shared"));
        write_bytes(tmp.file("m.bin"), llama2c_checkpoint(*g, version, unshared));
        ConvertOptions opt;
        opt.tokenizer = tmp.file("tok.bin");
        auto res = convert_model(tmp.file("m.bin"), tmp.file("out.gguf"), opt);
        EXPECT_EQ(res.source_kind, "llama2c");
        auto c = GGUFFile::open(tmp.file("out.gguf"));
        expect_same_tensors(*g, *c);
        expect_same_keys(*g, *c, hparams("llama"));
      }
    }
  }
}

TEST(ConvertLlama2c, F16MatchesLlamaCppF16File) {
  TempDir tmp;
  auto g = GGUFFile::open(data_path("models/real/stories260K.gguf"));
  auto ref16 = GGUFFile::open(data_path("models/real/stories260K-f16.gguf"));
  write_bytes(tmp.file("m.bin"), llama2c_checkpoint(*g, 0));
  write_bytes(tmp.file("tok.bin"), llama2c_tokenizer(*g));
  auto r = run_lokal("convert " + q(tmp.file("m.bin")) + " --tokenizer " + q(tmp.file("tok.bin")) + " --outtype f16 -q -o " +
                     q(tmp.file("f16.gguf")));
  ASSERT_EQ(r.rc, 0) << r.err;
  auto c = GGUFFile::open(tmp.file("f16.gguf"));
  expect_same_tensors(*ref16, *c);  // 2-D tensors F16 (llama-quantize's rounding), norms F32
  EXPECT_EQ(c->get_int("general.file_type"), 1);
  // BF16: every 2-D tensor is fp32_to_bf16 of the F32 one.
  ConvertOptions opt;
  opt.tokenizer = tmp.file("tok.bin");
  opt.outtype = DType::BF16;
  convert_model(tmp.file("m.bin"), tmp.file("bf16.gguf"), opt);
  auto b = GGUFFile::open(tmp.file("bf16.gguf"));
  for (const auto& t : g->tensors()) {
    const GGUFTensorInfo* u = b->find_tensor(t.name);
    ASSERT_NE(u, nullptr);
    if (t.n_dims == 1) {
      EXPECT_EQ(u->type, DType::F32);
      continue;
    }
    ASSERT_EQ(u->type, DType::BF16) << t.name;
    const float* f = reinterpret_cast<const float*>(t.data);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(u->data);
    for (int64_t i = 0; i < t.n_elements(); ++i) ASSERT_EQ(h[i], fp32_to_bf16(f[i])) << t.name << " element " << i;
  }
}

TEST(ConvertLlama2c, BadInput) {
  TempDir tmp;
  auto g = GGUFFile::open(data_path("models/real/stories260K.gguf"));
  std::string ck = llama2c_checkpoint(*g, 0);
  write_bytes(tmp.file("tok.bin"), llama2c_tokenizer(*g));
  write_bytes(tmp.file("trunc.bin"), ck.substr(0, ck.size() - 100));
  EXPECT_NE(cli_error("convert " + q(tmp.file("trunc.bin")) + " --tokenizer " + q(tmp.file("tok.bin")) + " -o " + q(tmp.file("o.gguf")))
                .find("truncated llama2.c checkpoint"),
            std::string::npos);
  write_bytes(tmp.file("ok.bin"), ck);
  EXPECT_NE(cli_error("convert " + q(tmp.file("ok.bin")) + " -o " + q(tmp.file("o.gguf"))).find("--tokenizer"), std::string::npos);
  std::string tok = llama2c_tokenizer(*g);
  write_bytes(tmp.file("badtok.bin"), tok.substr(0, tok.size() / 2));
  EXPECT_NE(cli_error("convert " + q(tmp.file("ok.bin")) + " --tokenizer " + q(tmp.file("badtok.bin")) + " -o " + q(tmp.file("o.gguf")))
                .find("tokenizer"),
            std::string::npos);
  std::string bad = ck;
  int32_t neg = -5;
  std::memcpy(bad.data(), &neg, 4);
  write_bytes(tmp.file("bad.bin"), bad);
  EXPECT_NE(cli_error("convert " + q(tmp.file("bad.bin")) + " --tokenizer " + q(tmp.file("tok.bin")) + " -o " + q(tmp.file("o.gguf")))
                .find("not a llama2.c checkpoint"),
            std::string::npos);
  write_bytes(tmp.file("pytorch_model.bin"), std::string("PK\x03\x04", 4) + std::string(100, 'x'));
  EXPECT_NE(cli_error("convert " + q(tmp.file("pytorch_model.bin")) + " -o " + q(tmp.file("o.gguf"))).find("only safetensors"),
            std::string::npos);
  EXPECT_NE(cli_error("convert " + q(data_path("models/real/stories260K.gguf")) + " -o " + q(tmp.file("o.gguf"))).find("already a GGUF"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(tmp.file("o.gguf")));
}

// ============================================================ GGUF -> HF -> GGUF

TEST(ConvertHF, RoundTripIsExact) {
  for (const char* m : {"models/real/stories260K.gguf", "models/real/tinytales-4m-f32.gguf", "models/real/tinytales-4m-f16.gguf",
                        "models/synth/synth-llama-f32.gguf", "models/synth/synth-qwen2-f32.gguf",
                        "models/real/babyllama-936K-f32.gguf", "models/real/llama-2-tiny-random-f16.gguf"}) {
    SCOPED_TRACE(m);
    TempDir tmp;
    auto g = GGUFFile::open(data_path(m));
    const std::string out = round_trip(tmp, data_path(m));
    auto c = GGUFFile::open(out);
    expect_same_tensors(*g, *c);
    const std::string arch = g->get_str("general.architecture");
    expect_same_keys(*g, *c, hparams(arch));
    // The HF folder holds what a Hugging Face loader needs.
    for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
      EXPECT_TRUE(fs::exists(tmp.file(std::string("hf/") + f))) << f;
    const json cfg = read_json_file(tmp.file("hf/config.json"));
    EXPECT_EQ(cfg["architectures"][0], arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
    EXPECT_EQ(cfg["tie_word_embeddings"].get<bool>(), g->find_tensor("output.weight") == nullptr);
  }
}

TEST(ConvertHF, ConvertedModelsGenerateTheSameText) {
  for (const char* m : {"models/real/stories260K.gguf", "models/real/tinytales-4m-f16.gguf", "models/synth/synth-qwen2-f32.gguf"}) {
    SCOPED_TRACE(m);
    TempDir tmp;
    const std::string out = round_trip(tmp, data_path(m));
    EXPECT_EQ(run_text(out, "Once upon a time"), run_text(data_path(m), "Once upon a time"));
  }
}

TEST(ConvertHF, HfToGgufToHfIsExact) {
  TempDir tmp;
  for (const char* m : {"models/real/stories260K.gguf", "models/synth/synth-qwen2-f32.gguf"}) {
    SCOPED_TRACE(m);
    ASSERT_EQ(run_lokal("export-hf " + q(data_path(m)) + " -q -o " + q(tmp.file("a"))).rc, 0);
    ASSERT_EQ(run_lokal("convert " + q(tmp.file("a")) + " -q -o " + q(tmp.file("a.gguf"))).rc, 0);
    ASSERT_EQ(run_lokal("export-hf " + q(tmp.file("a.gguf")) + " -q -o " + q(tmp.file("b"))).rc, 0);
    auto sa = SafeTensorsFile::open(tmp.file("a/model.safetensors"));
    auto sb = SafeTensorsFile::open(tmp.file("b/model.safetensors"));
    ASSERT_EQ(sa->tensors().size(), sb->tensors().size());
    for (const auto& t : sa->tensors()) {
      const SafeTensorInfo* u = sb->find(t.name);
      ASSERT_NE(u, nullptr) << t.name;
      EXPECT_EQ(t.dtype, u->dtype);
      EXPECT_EQ(t.shape, u->shape);
      ASSERT_EQ(t.nbytes, u->nbytes);
      EXPECT_EQ(0, std::memcmp(t.data, u->data, t.nbytes)) << t.name;
    }
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"})
      EXPECT_EQ(read_json_file(tmp.file(std::string("a/") + f)), read_json_file(tmp.file(std::string("b/") + f))) << f;
    if (fs::exists(tmp.file("a/tokenizer.model"))) {
      EXPECT_EQ(lokal::test::read_file(tmp.file("a/tokenizer.model")), lokal::test::read_file(tmp.file("b/tokenizer.model")));
    }
    fs::remove_all(tmp.file("a"));
    fs::remove_all(tmp.file("b"));
  }
}

TEST(ConvertHF, HuggingFaceLayoutOfLlamaQK) {
  // HF q_proj/k_proj rows are in rotate-half order: HF row s*hd/2+j of a head is GGUF row 2j+s; v is not permuted.
  TempDir tmp;
  auto g = GGUFFile::open(data_path("models/real/stories260K.gguf"));
  ExportOptions eo;
  export_hf(data_path("models/real/stories260K.gguf"), tmp.file("hf"), eo);
  auto s = SafeTensorsFile::open(tmp.file("hf/model.safetensors"));
  const int64_t hd = 8, row = 64 * 4;
  for (const auto& [gn, hn, heads] : std::vector<std::tuple<std::string, std::string, int64_t>>{
           {"blk.2.attn_q.weight", "model.layers.2.self_attn.q_proj.weight", 8},
           {"blk.2.attn_k.weight", "model.layers.2.self_attn.k_proj.weight", 4}}) {
    const GGUFTensorInfo* t = g->find_tensor(gn);
    const SafeTensorInfo* h = s->find(hn);
    ASSERT_TRUE(t && h);
    EXPECT_EQ(h->shape, (std::vector<int64_t>{heads * hd, 64}));
    for (int64_t head = 0; head < heads; ++head)
      for (int64_t sidx = 0; sidx < 2; ++sidx)
        for (int64_t j = 0; j < hd / 2; ++j)
          EXPECT_EQ(0, std::memcmp(h->data + (head * hd + sidx * hd / 2 + j) * row, t->data + (head * hd + 2 * j + sidx) * row, row));
  }
  const GGUFTensorInfo* v = g->find_tensor("blk.2.attn_v.weight");
  EXPECT_EQ(0, std::memcmp(s->find("model.layers.2.self_attn.v_proj.weight")->data, v->data, v->nbytes));
}

TEST(ConvertHF, ShardedExportAndConvert) {
  TempDir tmp;
  const std::string m = data_path("models/real/tinytales-4m-f32.gguf");
  auto g = GGUFFile::open(m);
  const std::string out = round_trip(tmp, m, "--shard-size 2MB");
  ASSERT_TRUE(fs::exists(tmp.file("hf/model.safetensors.index.json")));
  EXPECT_FALSE(fs::exists(tmp.file("hf/model.safetensors")));
  const json idx = read_json_file(tmp.file("hf/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) shards.insert(it.value().get<std::string>());
  EXPECT_GT(shards.size(), 2u);
  uint64_t total = 0;
  for (const auto& s : shards) {
    auto f = SafeTensorsFile::open(tmp.file("hf/" + s));
    uint64_t bytes = 0;
    for (const auto& t : f->tensors()) bytes += t.nbytes;
    total += bytes;
    EXPECT_TRUE(bytes <= 2000000 || f->tensors().size() == 1) << s;
  }
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), total);
  auto c = GGUFFile::open(out);
  expect_same_tensors(*g, *c);
  expect_same_keys(*g, *c, hparams("llama"));
}

TEST(ConvertHF, OuttypeF16AndBF16) {
  TempDir tmp;
  const std::string m = data_path("models/synth/synth-qwen2-f32.gguf");
  auto g = GGUFFile::open(m);
  ASSERT_EQ(run_lokal("export-hf " + q(m) + " -q -o " + q(tmp.file("hf"))).rc, 0);
  for (const char* type : {"f16", "bf16"}) {
    auto r = run_lokal(std::string("convert ") + q(tmp.file("hf")) + " -q --outtype " + type + " -o " + q(tmp.file("o.gguf")));
    ASSERT_EQ(r.rc, 0) << r.err;
    auto c = GGUFFile::open(tmp.file("o.gguf"));
    const bool bf = std::string(type) == "bf16";
    EXPECT_EQ(c->get_int("general.file_type"), bf ? 32 : 1);
    for (const auto& t : g->tensors()) {
      const GGUFTensorInfo* u = c->find_tensor(t.name);
      ASSERT_NE(u, nullptr);
      if (t.n_dims == 1) {
        ASSERT_EQ(u->type, DType::F32);
        EXPECT_EQ(0, std::memcmp(t.data, u->data, t.nbytes));
        continue;
      }
      ASSERT_EQ(u->type, bf ? DType::BF16 : DType::F16) << t.name;
      const float* f = reinterpret_cast<const float*>(t.data);
      const uint16_t* h = reinterpret_cast<const uint16_t*>(u->data);
      for (int64_t i = 0; i < t.n_elements(); ++i)
        ASSERT_EQ(h[i], bf ? fp32_to_bf16(f[i]) : fp32_to_fp16(f[i])) << t.name << " element " << i;
    }
  }
  // F16 -> HF (F16 safetensors) -> GGUF keeps F16; --outtype f32 widens exactly.
  const std::string m16 = data_path("models/real/tinytales-4m-f16.gguf");
  ASSERT_EQ(run_lokal("export-hf " + q(m16) + " -q -o " + q(tmp.file("hf16"))).rc, 0);
  auto s = SafeTensorsFile::open(tmp.file("hf16/model.safetensors"));
  EXPECT_EQ(s->find("model.embed_tokens.weight")->dtype, "F16");
  EXPECT_EQ(read_json_file(tmp.file("hf16/config.json"))["torch_dtype"], "float16");
  ASSERT_EQ(run_lokal("convert " + q(tmp.file("hf16")) + " -q --outtype f32 -o " + q(tmp.file("w.gguf"))).rc, 0);
  auto g16 = GGUFFile::open(m16);
  auto w = GGUFFile::open(tmp.file("w.gguf"));
  const GGUFTensorInfo* a = g16->find_tensor("blk.1.ffn_up.weight");
  const GGUFTensorInfo* b = w->find_tensor("blk.1.ffn_up.weight");
  ASSERT_EQ(b->type, DType::F32);
  for (int64_t i = 0; i < a->n_elements(); ++i)
    ASSERT_EQ(fp16_to_fp32(reinterpret_cast<const uint16_t*>(a->data)[i]), reinterpret_cast<const float*>(b->data)[i]);
}

TEST(ConvertHF, ChatTemplateAndForeignTokenizerRules) {
  // A folder without lokal's "gguf_tokenizer" record goes through the Hugging Face rules: the pre-tokenizer from its
  // regex, special tokens from tokenizer_config.json, end-of-turn from generation_config.json's eos list.
  TempDir tmp;
  auto g = GGUFFile::open(data_path("models/synth/synth-qwen2-f32.gguf"));
  GGUFWriter w;
  w.copy_metadata(*g);
  const std::string tmpl = lokal::test::read_file(data_path("chat-templates/" + std::string(fs::directory_iterator(data_path("chat-templates"))->path().filename())));
  w.set_str("tokenizer.chat_template", tmpl);
  w.set_u32("tokenizer.ggml.eot_token_id", 1025);
  for (const auto& t : g->tensors()) w.add_tensor(t);
  w.write(tmp.file("in.gguf"));
  ASSERT_EQ(run_lokal("export-hf " + q(tmp.file("in.gguf")) + " -q -o " + q(tmp.file("hf"))).rc, 0);
  json tc = read_json_file(tmp.file("hf/tokenizer_config.json"));
  EXPECT_EQ(tc["chat_template"], tmpl);
  tc.erase("gguf_tokenizer");
  std::ofstream(tmp.file("hf/tokenizer_config.json")) << tc.dump(1);
  ASSERT_EQ(run_lokal("convert " + q(tmp.file("hf")) + " -q -o " + q(tmp.file("o.gguf"))).rc, 0);
  auto c = GGUFFile::open(tmp.file("o.gguf"));
  EXPECT_EQ(c->get_str("tokenizer.ggml.pre"), "qwen2");
  EXPECT_EQ(c->get_str("tokenizer.chat_template"), tmpl);
  EXPECT_EQ(c->get_int("tokenizer.ggml.eot_token_id"), 1025);
  for (const char* k : {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.model"})
    EXPECT_TRUE(GGUFMetaValue::from(*g->find(k)) == GGUFMetaValue::from(*c->find(k))) << k;

  // SentencePiece vocabulary without tokenizer.model: tokens and types from tokenizer.json, scores derived.
  ASSERT_EQ(run_lokal("export-hf " + q(data_path("models/real/stories260K.gguf")) + " -q -o " + q(tmp.file("spm"))).rc, 0);
  fs::remove(tmp.file("spm/tokenizer.model"));
  json tc2 = read_json_file(tmp.file("spm/tokenizer_config.json"));
  tc2.erase("gguf_tokenizer");
  std::ofstream(tmp.file("spm/tokenizer_config.json")) << tc2.dump(1);
  auto r = run_lokal("convert " + q(tmp.file("spm")) + " -q -o " + q(tmp.file("spm.gguf")));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("scores"), std::string::npos) << "a warning about derived scores expected";
  auto s = GGUFFile::open(tmp.file("spm.gguf"));
  auto ref = GGUFFile::open(data_path("models/real/stories260K.gguf"));
  for (const char* k : {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.model"})
    EXPECT_TRUE(GGUFMetaValue::from(*ref->find(k)) == GGUFMetaValue::from(*s->find(k))) << k;
}

TEST(ConvertHF, ByteLevelBpeVocabRoundTrip) {
  // A tiny random llama model carrying the full Llama 3 vocabulary (128256 tokens, 280k merges).
  TempDir tmp;
  for (const char* vname : {"ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"}) {
    SCOPED_TRACE(vname);
    auto v = GGUFFile::open(lokal::test::vocab_dir() + "/" + vname);
    const int64_t n_vocab = static_cast<int64_t>(v->get_str_array("tokenizer.ggml.tokens").size());
    const int64_t E = 16, F = 32;
    GGUFWriter w;
    w.set_str("general.architecture", "llama");
    w.set_str("general.name", "tiny-bpe");
    w.set_u32("llama.context_length", 64);
    w.set_u32("llama.embedding_length", E);
    w.set_u32("llama.block_count", 1);
    w.set_u32("llama.feed_forward_length", F);
    w.set_u32("llama.attention.head_count", 2);
    w.set_u32("llama.attention.head_count_kv", 1);
    w.set_f32("llama.rope.freq_base", 500000.0f);
    w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.set_u32("llama.rope.dimension_count", 8);
    for (const auto& [k, val] : v->kv())
      if (k.rfind("tokenizer.", 0) == 0) w.set(k, GGUFMetaValue::from(val));
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    std::vector<std::vector<float>> store;
    auto add = [&](const std::string& n, std::vector<int64_t> ne) {
      int64_t c = 1;
      for (auto x : ne) c *= x;
      store.emplace_back(static_cast<size_t>(c));
      for (auto& x : store.back()) x = nd(rng);
      w.add_tensor(n, DType::F32, ne, store.back().data(), store.back().size() * 4);
    };
    add("token_embd.weight", {E, n_vocab});
    add("blk.0.attn_norm.weight", {E});
    add("blk.0.attn_q.weight", {E, E});
    add("blk.0.attn_k.weight", {E, 8});
    add("blk.0.attn_v.weight", {E, 8});
    add("blk.0.attn_output.weight", {E, E});
    add("blk.0.ffn_norm.weight", {E});
    add("blk.0.ffn_gate.weight", {E, F});
    add("blk.0.ffn_up.weight", {E, F});
    add("blk.0.ffn_down.weight", {F, E});
    add("output_norm.weight", {E});
    w.write(tmp.file("in.gguf"));
    auto g = GGUFFile::open(tmp.file("in.gguf"));
    const std::string out = round_trip(tmp, tmp.file("in.gguf"));
    auto c = GGUFFile::open(out);
    expect_same_tensors(*g, *c);
    expect_same_keys(*g, *c, hparams("llama"));
    fs::remove_all(tmp.file("hf"));
  }
}

// ============================================================ bad Hugging Face folders

class ConvertBadHF : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = std::make_unique<TempDir>();
    dir_ = tmp_->file("hf");
    ExportOptions eo;
    eo.shard_size = 400000;  // 4 shards
    export_hf(data_path("models/real/stories260K.gguf"), dir_, eo);
  }
  std::string convert_error() {
    try {
      convert_model(dir_, tmp_->file("o.gguf"), ConvertOptions{});
    } catch (const Error& e) {
      EXPECT_FALSE(fs::exists(tmp_->file("o.gguf")));
      const std::string msg = e.what();
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      return msg;
    }
    ADD_FAILURE() << "no error";
    return {};
  }
  void edit_json(const std::string& file, const std::function<void(json&)>& f) {
    json j = read_json_file(dir_ + "/" + file);
    f(j);
    std::ofstream(dir_ + "/" + file) << j.dump(1);
  }
  std::unique_ptr<TempDir> tmp_;
  std::string dir_;
};

TEST_F(ConvertBadHF, ValidFolderConverts) { EXPECT_NO_THROW(convert_model(dir_, tmp_->file("o.gguf"), ConvertOptions{})); }

TEST_F(ConvertBadHF, MissingShard) {
  fs::remove(dir_ + "/model-00002-of-00004.safetensors");
  EXPECT_NE(convert_error().find("shard 'model-00002-of-00004.safetensors'"), std::string::npos);
}

TEST_F(ConvertBadHF, IndexNamesAbsentTensor) {
  edit_json("model.safetensors.index.json", [](json& j) { j["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001-of-00004.safetensors"; });
  EXPECT_NE(convert_error().find("'model.layers.0.mlp.extra.weight' is not in its shard"), std::string::npos);
}

TEST_F(ConvertBadHF, ShapeMismatch) {
  edit_json("config.json", [](json& j) { j["intermediate_size"] = 100; });
  const std::string e = convert_error();
  EXPECT_NE(e.find("has shape [172, 64] but config.json implies [100, 64]"), std::string::npos) << e;
}

TEST_F(ConvertBadHF, UnknownArchitecture) {
  edit_json("config.json", [](json& j) { j["architectures"] = {"GPTNeoXForCausalLM"}; });
  EXPECT_NE(convert_error().find("unsupported architecture 'GPTNeoXForCausalLM'"), std::string::npos);
}

TEST_F(ConvertBadHF, PyTorchWeights) {
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.path().string().find(".safetensors") != std::string::npos) fs::remove(e.path());
  write_bytes(dir_ + "/pytorch_model.bin", std::string("PK\x03\x04", 4));
  EXPECT_NE(convert_error().find("only safetensors"), std::string::npos);
}

TEST_F(ConvertBadHF, TruncatedSafetensors) {
  const std::string shard = dir_ + "/model-00001-of-00004.safetensors";
  std::string b = lokal::test::read_file(shard);
  write_bytes(shard, b.substr(0, 20));
  EXPECT_NE(convert_error().find("truncated safetensors"), std::string::npos);
  write_bytes(shard, b.substr(0, b.size() - 10));
  EXPECT_NE(convert_error().find("beyond the end of the file"), std::string::npos);
}

TEST_F(ConvertBadHF, MalformedJson) {
  write_bytes(dir_ + "/config.json", "{\"hidden_size\": 64,");
  EXPECT_NE(convert_error().find("config.json: malformed JSON"), std::string::npos);
}

TEST_F(ConvertBadHF, MalformedTokenizerJson) {
  fs::remove(dir_ + "/tokenizer.model");
  write_bytes(dir_ + "/tokenizer.json", "[1, 2");
  EXPECT_NE(convert_error().find("tokenizer.json: malformed JSON"), std::string::npos);
}

TEST_F(ConvertBadHF, MissingTensorAndUnsupportedRopeScaling) {
  edit_json("config.json", [](json& j) { j["num_hidden_layers"] = 6; });
  EXPECT_NE(convert_error().find("'model.layers.5.input_layernorm.weight' is missing"), std::string::npos);
  edit_json("config.json", [](json& j) {
    j["num_hidden_layers"] = 5;
    j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  });
  EXPECT_NE(convert_error().find("rope_scaling type 'yarn' is not supported"), std::string::npos);
}

TEST_F(ConvertBadHF, CliReportsOneLine) {
  fs::remove(dir_ + "/config.json");
  EXPECT_NE(cli_error("convert " + q(dir_) + " -o " + q(tmp_->file("o.gguf"))).find("no config.json"), std::string::npos);
  EXPECT_NE(cli_error("convert " + q(dir_) + " --outtype q4_0 -o " + q(tmp_->file("o.gguf"))).find("--outtype"), std::string::npos);
  EXPECT_NE(cli_error("export-hf " + q(data_path("models/real/stories260K.gguf")) + " --shard-size 12XB -o " + q(tmp_->file("x")))
                .find("invalid size"),
            std::string::npos);
}

// ============================================================ safetensors format

namespace {
std::string st_bytes(const std::string& header, const std::string& data) {
  std::string o;
  uint64_t n = header.size();
  o.append(reinterpret_cast<const char*>(&n), 8);
  return o + header + data;
}
std::string st_parse_error(const std::string& bytes) {
  try {
    SafeTensorsFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "x.safetensors");
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("x.safetensors: ", 0), 0u) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "accepted";
  return {};
}
}  // namespace

TEST(Safetensors, ParsesAndWrites) {
  TempDir tmp;
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> b = {0x3c00, 0xbc00};
  w.add("a", "F32", {2, 3}, [&](const SafeTensorsWriter::Sink& out) { out(a.data(), 24); });
  w.add("b", "BF16", {2}, [&](const SafeTensorsWriter::Sink& out) { out(b.data(), 4); });
  EXPECT_EQ((8 + w.header().size()) % 8, 0u);
  w.write(tmp.file("t.safetensors"));
  auto f = SafeTensorsFile::open(tmp.file("t.safetensors"));
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const SafeTensorInfo* ta = f->find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(0, std::memcmp(ta->data, a.data(), 24));
  EXPECT_EQ(f->find("b")->dtype, "BF16");
  // A producer that gives the wrong number of bytes is an error, and nothing is left behind.
  SafeTensorsWriter bad;
  bad.add("a", "F32", {2}, [&](const SafeTensorsWriter::Sink& out) { out(a.data(), 4); });
  EXPECT_THROW(bad.write(tmp.file("bad.safetensors")), Error);
  EXPECT_FALSE(fs::exists(tmp.file("bad.safetensors")));
}

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_NO_THROW(SafeTensorsFile::parse(reinterpret_cast<const uint8_t*>(st_bytes(ok, std::string(8, '\0')).data()), 8 + ok.size() + 8, "x"));
  EXPECT_NE(st_parse_error("abc").find("too short"), std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(ok, "").substr(0, 20)).find("truncated"), std::string::npos);
  EXPECT_NE(st_parse_error(std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8) + "{}").find("exceeds"), std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes("{\"a\":", "")).find("not valid JSON"), std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes("[1,2]", "")).find("not a JSON object"), std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(ok, std::string(4, '\0'))).find("beyond the end"), std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'))).find("needs 3 x 4"),
            std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'))).find("unknown dtype"),
            std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'))).find("non-negative"),
            std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", "")).find("too large"),
            std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                    std::string(12, '\0')))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(st_parse_error(st_bytes(R"({"__metadata__":{"a":1}})", "")).find("not a string"), std::string::npos);
}

TEST(Convert, ParseSize) {
  EXPECT_EQ(parse_size("2GB"), 2000000000u);
  EXPECT_EQ(parse_size("500M"), 500000000u);
  EXPECT_EQ(parse_size("1GiB"), 1073741824u);
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_THROW(parse_size("lots"), Error);
  EXPECT_THROW(parse_size("-1GB"), Error);
}

TEST(ConvertHF, QuantizedGgufExportsDequantizedF32) {
  // export-hf dequantizes quantized tensors (core/quant's reference dequantization) and keeps F32 ones as they are;
  // converting back gives exactly those F32 values (with the q/k permutation undone).
  TempDir tmp;
  const std::string m = data_path("models/synth/synth-llama-q8_0.gguf");
  auto g = GGUFFile::open(m);
  const std::string out = round_trip(tmp, m);
  auto c = GGUFFile::open(out);
  ASSERT_EQ(g->tensors().size(), c->tensors().size());
  for (const auto& t : g->tensors()) {
    const GGUFTensorInfo* u = c->find_tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    ASSERT_EQ(u->type, DType::F32) << t.name;
    std::vector<float> want(static_cast<size_t>(t.n_elements()));
    dequantize_row(t.type, t.data, want.data(), t.n_elements());
    ASSERT_EQ(u->nbytes, want.size() * 4);
    EXPECT_EQ(0, std::memcmp(u->data, want.data(), u->nbytes)) << t.name;
  }
}
