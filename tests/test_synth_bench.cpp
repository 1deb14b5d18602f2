// `lokal synth` (random-weight GGUFs with real models' shapes) and `lokal bench`.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/gguf.h"
#include "tools/quantize.h"
#include "runtime/session.h"
#include "tools/synth.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using namespace lokal;

namespace {

using Result = lokal::test::CliResult;
using lokal::test::run_lokal;

using lokal::test::expect_one_line_error;

// A temporary file removed when the test ends.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name)
      : path((fs::temp_directory_path() / ("lokal_synth_" + std::to_string(::getpid()) + "_" + name)).string()) {}
  ~TempFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

std::vector<int64_t> shape(const GGUFTensorInfo& t) { return std::vector<int64_t>(t.ne, t.ne + t.n_dims); }

void expect_shape(const GGUFFile& f, const std::string& name, std::vector<int64_t> ne) {
  const GGUFTensorInfo* t = f.find_tensor(name);
  ASSERT_NE(t, nullptr) << "missing tensor " << name;
  EXPECT_EQ(shape(*t), ne) << name;
}

// Generates n tokens greedily after `prompt`; every logit must be finite.
std::vector<int32_t> greedy(const Model& m, const std::string& prompt, int n) {
  SessionOptions so;
  so.n_ctx = 64;
  so.n_threads = 2;
  Session s(m, so);
  std::vector<int32_t> toks = m.vocab().tokenize(prompt, true, false);
  if (toks.empty()) toks.push_back(0);
  s.feed(toks);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const auto& lg = s.logits();
    for (float x : lg)
      if (!std::isfinite(x)) throw std::runtime_error("non-finite logit");
    const int32_t best = static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin());
    out.push_back(best);
    s.feed({best});
  }
  return out;
}

// Small shapes (not a real model) for the per-type tests.
SynthPreset tiny_preset(const std::string& arch) {
  SynthPreset p;
  p.name = "tiny-" + arch;
  p.model = "tiny test model";
  p.arch = arch;
  p.n_embd = arch == "qwen2" ? 320 : 256;  // 320: rows that 256-element K-quant blocks do not divide
  p.n_layer = 8;                           // enough layers for the "more bits" pattern of the _M mixes
  p.n_head = arch == "qwen2" ? 5 : 4;
  p.n_head_kv = 1;
  p.n_ff = 512;
  p.n_vocab = 512;
  p.n_ctx = 256;
  p.rope_base = 10000.0f;
  p.rms_eps = 1e-5f;
  p.tied = arch == "qwen2";
  p.qkv_bias = arch == "qwen2";
  p.vocab = arch == "qwen2" ? SynthVocab::BPE_Qwen2 : SynthVocab::SPM;
  return p;
}

// ---------------------------------------------------------------------------------------------

TEST(SynthPresets, TableHasThePublishedShapes) {
  struct Want {
    const char* name;
    const char* arch;
    int64_t embd, layers, heads, kv, ff, vocab, ctx;
    bool tied, bias;
  };
  const Want want[] = {
      {"tinyllama-1.1b", "llama", 2048, 22, 32, 4, 5632, 32000, 2048, false, false},
      {"qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 4864, 151936, 32768, true, true},
      {"qwen2.5-1.5b", "qwen2", 1536, 28, 12, 2, 8960, 151936, 32768, true, true},
      {"llama-3.2-1b", "llama", 2048, 16, 32, 8, 8192, 128256, 131072, true, false},
      {"mistral-7b", "llama", 4096, 32, 32, 8, 14336, 32000, 32768, false, false},
      {"qwen2.5-7b", "qwen2", 3584, 28, 28, 4, 18944, 152064, 32768, false, true},
  };
  for (const Want& w : want) {
    const SynthPreset* p = find_synth_preset(w.name);
    ASSERT_NE(p, nullptr) << w.name;
    EXPECT_EQ(p->arch, w.arch);
    EXPECT_EQ(p->n_embd, w.embd) << w.name;
    EXPECT_EQ(p->n_layer, w.layers) << w.name;
    EXPECT_EQ(p->n_head, w.heads) << w.name;
    EXPECT_EQ(p->n_head_kv, w.kv) << w.name;
    EXPECT_EQ(p->n_ff, w.ff) << w.name;
    EXPECT_EQ(p->n_vocab, w.vocab) << w.name;
    EXPECT_EQ(p->n_ctx, w.ctx) << w.name;
    EXPECT_EQ(p->tied, w.tied) << w.name;
    EXPECT_EQ(p->qkv_bias, w.bias) << w.name;
  }
  EXPECT_NE(find_synth_preset("QWEN2.5-0.5B"), nullptr);
  EXPECT_EQ(find_synth_preset("gpt-5"), nullptr);
  // Llama 3 rope factors: high frequencies unchanged, low ones divided by the factor 32.
  const std::vector<float> f = llama3_rope_factors(*find_synth_preset("llama-3.2-1b"));
  ASSERT_EQ(f.size(), 32u);
  EXPECT_FLOAT_EQ(f.front(), 1.0f);
  EXPECT_FLOAT_EQ(f.back(), 32.0f);
  for (size_t i = 1; i < f.size(); ++i) EXPECT_GE(f[i], f[i - 1]);
}

TEST(Synth, Qwen05OneLayerGeneratedVocab) {
  TempFile out("qwen05.gguf");
  SynthOptions o;
  o.preset = *find_synth_preset("qwen2.5-0.5b");
  o.n_layer = 1;
  o.type = "Q8_0";
  const SynthResult r = synth_model(o, out.path);
  EXPECT_EQ(r.file_size, fs::file_size(out.path));
  EXPECT_EQ(r.n_vocab, 151936);

  auto f = GGUFFile::open(out.path);
  EXPECT_EQ(f->get_str("general.architecture"), "qwen2");
  EXPECT_EQ(f->get_int("qwen2.embedding_length"), 896);
  EXPECT_EQ(f->get_int("qwen2.block_count"), 1);
  EXPECT_EQ(f->get_int("qwen2.attention.head_count"), 14);
  EXPECT_EQ(f->get_int("qwen2.attention.head_count_kv"), 2);
  EXPECT_EQ(f->get_int("qwen2.feed_forward_length"), 4864);
  EXPECT_EQ(f->get_int("qwen2.context_length"), 32768);
  EXPECT_FLOAT_EQ(static_cast<float>(f->get_float("qwen2.rope.freq_base")), 1e6f);
  EXPECT_FLOAT_EQ(static_cast<float>(f->get_float("qwen2.attention.layer_norm_rms_epsilon")), 1e-6f);
  EXPECT_EQ(f->get_int("general.file_type"), 7);  // Q8_0
  EXPECT_EQ(f->get_str("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f->get_str("tokenizer.ggml.pre"), "qwen2");
  const auto& toks = f->get_str_array("tokenizer.ggml.tokens");
  ASSERT_EQ(toks.size(), 151936u);
  EXPECT_EQ(f->get_str_array("tokenizer.ggml.merges").size(), 151643u - 256u);
  EXPECT_EQ(toks[151643], "<|endoftext|>");
  EXPECT_EQ(toks[151644], "<|im_start|>");
  EXPECT_EQ(toks[151645], "<|im_end|>");
  EXPECT_EQ(f->get_int("tokenizer.ggml.eos_token_id"), 151645);

  // Tied embeddings, q/k/v biases, head_dim 64.
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);
  expect_shape(*f, "token_embd.weight", {896, 151936});
  expect_shape(*f, "blk.0.attn_q.weight", {896, 896});
  expect_shape(*f, "blk.0.attn_k.weight", {896, 128});
  expect_shape(*f, "blk.0.attn_v.weight", {896, 128});
  expect_shape(*f, "blk.0.attn_q.bias", {896});
  expect_shape(*f, "blk.0.attn_k.bias", {128});
  expect_shape(*f, "blk.0.attn_v.bias", {128});
  expect_shape(*f, "blk.0.attn_output.weight", {896, 896});
  expect_shape(*f, "blk.0.ffn_gate.weight", {896, 4864});
  expect_shape(*f, "blk.0.ffn_up.weight", {896, 4864});
  expect_shape(*f, "blk.0.ffn_down.weight", {4864, 896});
  expect_shape(*f, "output_norm.weight", {896});
  EXPECT_EQ(f->tensors().size(), 2u + 12u);
  for (const auto& t : f->tensors()) EXPECT_EQ(t.type, t.n_dims == 2 ? DType::Q8_0 : DType::F32) << t.name;

  auto m = Model::load(out.path);
  const ModelConfig& c = m->config();
  EXPECT_EQ(c.n_embd, 896);
  EXPECT_EQ(c.n_head, 14);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_ff, 4864);
  EXPECT_EQ(c.n_vocab, 151936);
  EXPECT_TRUE(m->tied_output);
  ASSERT_NE(m->layers[0].bq, nullptr);
  // The generated byte-level BPE vocabulary round-trips any text.
  const std::string text = "Hello world, hi. The quick brown fox 123 jumps!\n\tüñí €";
  const auto ids = m->vocab().tokenize(text, false, false);
  EXPECT_FALSE(ids.empty());
  EXPECT_LT(ids.size(), text.size());  // merges do merge
  EXPECT_EQ(m->vocab().detokenize(ids), text);
  EXPECT_EQ(greedy(*m, "hi", 4).size(), 4u);
}

TEST(Synth, TinyllamaOneLayerWithVocabFile) {
  const std::string vocab = lokal::test::vocab_dir() + "/ggml-vocab-llama-spm.gguf";
  TempFile out("tinyllama.gguf");
  SynthOptions o;
  o.preset = *find_synth_preset("tinyllama-1.1b");
  o.n_layer = 1;
  o.type = "Q8_0";
  o.vocab_file = vocab;
  synth_model(o, out.path);

  auto f = GGUFFile::open(out.path);
  auto v = GGUFFile::open(vocab);
  EXPECT_EQ(f->get_str("general.architecture"), "llama");
  EXPECT_EQ(f->get_int("llama.embedding_length"), 2048);
  EXPECT_EQ(f->get_int("llama.block_count"), 1);
  EXPECT_EQ(f->get_int("llama.attention.head_count"), 32);
  EXPECT_EQ(f->get_int("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(f->get_int("llama.feed_forward_length"), 5632);
  EXPECT_EQ(f->get_int("llama.context_length"), 2048);
  EXPECT_EQ(f->get_int("llama.rope.dimension_count"), 64);
  EXPECT_EQ(f->get_int("llama.vocab_size"), 32000);
  EXPECT_EQ(f->get_int("general.file_type"), 7);
  // Every tokenizer key of the vocab file, unchanged; nothing else of it.
  int n_tok_keys = 0;
  for (const auto& [key, val] : v->kv()) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    ++n_tok_keys;
    const GGUFValue* got = f->find(key);
    ASSERT_NE(got, nullptr) << key;
    EXPECT_EQ(got->to_string(1 << 20), val.to_string(1 << 20)) << key;
  }
  EXPECT_GT(n_tok_keys, 5);
  EXPECT_EQ(f->get_str_array("tokenizer.ggml.tokens"), v->get_str_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(f->get_str("general.name").find("llama-spm"), std::string::npos);

  expect_shape(*f, "token_embd.weight", {2048, 32000});
  expect_shape(*f, "output.weight", {2048, 32000});
  expect_shape(*f, "blk.0.attn_q.weight", {2048, 2048});
  expect_shape(*f, "blk.0.attn_k.weight", {2048, 256});
  expect_shape(*f, "blk.0.attn_v.weight", {2048, 256});
  expect_shape(*f, "blk.0.ffn_down.weight", {5632, 2048});
  EXPECT_EQ(f->find_tensor("blk.0.attn_q.bias"), nullptr);
  EXPECT_EQ(f->find_tensor("rope_freqs.weight"), nullptr);

  auto m = Model::load(out.path);
  EXPECT_FALSE(m->tied_output);
  EXPECT_EQ(m->config().n_head_kv, 4);
  EXPECT_EQ(m->vocab().tokenize("Hello world", true, false),
            (std::vector<int32_t>{1, 15043, 3186}));  // the real Llama SentencePiece ids
  EXPECT_EQ(greedy(*m, "Hello", 4).size(), 4u);

  // A vocabulary of another size is refused (tinyllama's embedding has exactly 32000 rows).
  SynthOptions bad = o;
  bad.vocab_file = lokal::test::vocab_dir() + "/ggml-vocab-llama-bpe.gguf";
  TempFile out2("bad.gguf");
  try {
    synth_model(bad, out2.path);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("128256 tokens"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out2.path));
}

TEST(Synth, PaddedVocabFile) {
  // Qwen2.5-7B's embedding has 152064 rows; the Qwen2 tokenizer has fewer: padded with [PADn] as llama.cpp does.
  SynthPreset p = *find_synth_preset("qwen2.5-7b");
  p.n_embd = 128;
  p.n_head = 2;
  p.n_head_kv = 1;
  p.n_ff = 256;
  TempFile out("padded.gguf");
  SynthOptions o;
  o.preset = p;
  o.n_layer = 1;
  o.type = "F16";
  o.vocab_file = lokal::test::vocab_dir() + "/ggml-vocab-qwen2.gguf";
  // Only when asked (--pad-vocab): by default a vocabulary of another size is refused, as README says.
  try {
    synth_model(o, out.path);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--pad-vocab"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out.path));
  o.pad_vocab = true;
  synth_model(o, out.path);
  auto f = GGUFFile::open(out.path);
  const auto& toks = f->get_str_array("tokenizer.ggml.tokens");
  ASSERT_EQ(toks.size(), 152064u);
  EXPECT_EQ(toks.back(), "[PAD152063]");
  EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type").back(), 5);
  auto m = Model::load(out.path);
  EXPECT_EQ(m->vocab().n_tokens(), 152064);
  EXPECT_EQ(greedy(*m, "Hello", 2).size(), 2u);
}

TEST(Synth, EveryTypeAsRequested) {
  for (const std::string arch : {"llama", "qwen2"}) {
    SynthOptions base;
    base.preset = tiny_preset(arch);
    base.type = "F32";
    TempFile f32("f32-" + arch + ".gguf");
    synth_model(base, f32.path);
    auto in = GGUFFile::open(f32.path);

    for (const QuantFileType& ft : quant_file_types()) {
      SCOPED_TRACE(arch + " " + ft.name);
      // --pure: every matrix in the type (or its fallback for rows its blocks do not divide).
      SynthOptions o = base;
      o.type = ft.name;
      o.pure = true;
      const SynthPlan pure = synth_plan(o);
      for (const auto& t : pure.tensors) {
        if (t.ne.size() == 1) {
          EXPECT_EQ(t.type, DType::F32) << t.name;
        } else if (t.ne[0] % type_info(ft.base)->block_size == 0) {
          EXPECT_EQ(t.type, ft.base) << t.name;
        }
      }
      // The mix: the same per-tensor types as `lokal quantize` (llama-quantize's rules) gives the F32 file.
      o.pure = false;
      const SynthPlan mix = synth_plan(o);
      QuantizeOptions qo;
      qo.file_type = ft;
      const QuantizePlan qp = plan_quantization(*in, qo);
      ASSERT_EQ(qp.tensors.size(), mix.tensors.size());
      for (size_t i = 0; i < mix.tensors.size(); ++i) {
        EXPECT_EQ(qp.tensors[i].name, mix.tensors[i].name);
        EXPECT_EQ(type_name(qp.tensors[i].to), std::string(type_name(mix.tensors[i].type))) << mix.tensors[i].name;
      }
      // The written file has exactly the planned types and loads and runs in lokal.
      TempFile out(arch + "-" + ft.name + ".gguf");
      synth_model(o, out.path);
      auto f = GGUFFile::open(out.path);
      EXPECT_EQ(f->get_int("general.file_type"), ft.ftype);
      ASSERT_EQ(f->tensors().size(), mix.tensors.size());
      for (size_t i = 0; i < mix.tensors.size(); ++i) {
        EXPECT_EQ(f->tensors()[i].name, mix.tensors[i].name);
        EXPECT_EQ(f->tensors()[i].type, mix.tensors[i].type) << mix.tensors[i].name;
        EXPECT_EQ(shape(f->tensors()[i]), mix.tensors[i].ne) << mix.tensors[i].name;
      }
      auto m = Model::load(out.path);
      EXPECT_NO_THROW(greedy(*m, "Hello", 2));
    }
  }
  // The K-quant mixes really mix (Q4_K_M: some attn_v/ffn_down Q6_K, output Q6_K).
  SynthOptions o;
  o.preset = tiny_preset("llama");
  o.type = "Q4_K_M";
  const SynthPlan p = synth_plan(o);
  EXPECT_EQ(p.count.at(DType::Q6_K), 1 + 2 * 4);  // output + attn_v/ffn_down of layers 0, 3, 6, 7
  EXPECT_THROW(synth_plan([&] { auto b = o; b.type = "Q7_X"; return b; }()), Error);
}

TEST(Synth, DeterministicBytes) {
  SynthOptions o;
  o.preset = tiny_preset("qwen2");
  o.type = "Q4_K_M";
  o.seed = 7;
  TempFile a("det-a.gguf"), b("det-b.gguf"), c("det-c.gguf");
  o.n_threads = 2;
  synth_model(o, a.path);
  o.n_threads = 1;
  synth_model(o, b.path);
  o.seed = 8;
  synth_model(o, c.path);
  const std::string ba = lokal::test::read_file(a.path), bb = lokal::test::read_file(b.path), bc = lokal::test::read_file(c.path);
  EXPECT_EQ(ba, bb);  // same seed: identical, whatever the thread count
  EXPECT_EQ(ba.size(), bc.size());
  EXPECT_NE(ba, bc);  // another seed: other weights
}

TEST(SynthCli, WritesLlama32WithRopeFactorsThatLokalRuns) {
  TempFile out("cli-l32.gguf");
  Result r = run_lokal("synth --preset llama-3.2-1b --type Q8_0 --layers 1 --seed 3 -o '" + out.path + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("wrote"), std::string::npos) << r.err;
  auto f = GGUFFile::open(out.path);
  EXPECT_EQ(f->get_str("tokenizer.ggml.pre"), "llama-bpe");
  EXPECT_EQ(f->get_int("llama.rope.dimension_count"), 64);
  EXPECT_FLOAT_EQ(static_cast<float>(f->get_float("llama.rope.freq_base")), 500000.0f);
  EXPECT_EQ(f->get_str_array("tokenizer.ggml.tokens")[128009], "<|eot_id|>");
  expect_shape(*f, "rope_freqs.weight", {32});
  expect_shape(*f, "blk.0.attn_k.weight", {2048, 512});
  expect_shape(*f, "blk.0.ffn_up.weight", {2048, 8192});
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);
  Result run = run_lokal("run -m '" + out.path + "' -p hi -n 8 -t 2");
  EXPECT_EQ(run.rc, 0) << run.err;
  EXPECT_NE(run.err.find("generation: 8 tokens"), std::string::npos) << run.err;
}

TEST(SynthCli, DryRunAndBadArguments) {
  Result r = run_lokal("synth --preset mistral-7b --type Q4_K_M --dry-run");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("blk.31.ffn_down.weight"), std::string::npos);
  EXPECT_NE(r.out.find("output.weight                Q6_K  [4096, 32000]"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("7.242 B parameters"), std::string::npos) << r.err;

  const std::string out = (fs::temp_directory_path() / "lokal_synth_never.gguf").string();
  expect_one_line_error(run_lokal("synth --preset gpt-9 -o '" + out + "'"), "unknown preset 'gpt-9'");
  expect_one_line_error(run_lokal("synth --preset tinyllama-1.1b --type Q9_9 -o '" + out + "'"), "unknown type 'Q9_9'");
  expect_one_line_error(run_lokal("synth --preset tinyllama-1.1b"), "-o");
  expect_one_line_error(run_lokal("synth --preset tinyllama-1.1b --layers 0 -o '" + out + "'"), "layers");
  expect_one_line_error(run_lokal("synth --preset tinyllama-1.1b -o /nonexistent-dir/x.gguf"), "nonexistent-dir");
  expect_one_line_error(run_lokal("synth --preset tinyllama-1.1b --vocab /nonexistent.gguf -o '" + out + "'"), "nonexistent.gguf");
  EXPECT_FALSE(fs::exists(out));
}

// ---------------------------------------------------------------------------------------------

TEST(BenchCli, JsonHasLlamaBenchFields) {
  const std::string model = lokal::test::data_path("models/real/stories260K.gguf");
  Result r = run_lokal("bench -m '" + model + "' -p 16 -n 8 -r 2 -t 2 --json --mem-bw-mib 64");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  for (const auto& t : j) {
    for (const char* k : {"model_size", "model_n_params", "n_threads", "avg_ns", "avg_ts", "load_ms", "peak_rss_bytes",
                          "mem_bw_gbps", "first_ts", "decode_bytes_per_token"}) {
      ASSERT_TRUE(t.contains(k)) << k;
      EXPECT_GT(t[k].get<double>(), 0.0) << k;
    }
    for (const char* k : {"stddev_ns", "stddev_ts", "n_depth", "n_prompt", "n_gen"}) {
      ASSERT_TRUE(t.contains(k)) << k;
      EXPECT_GE(t[k].get<double>(), 0.0) << k;
    }
    EXPECT_EQ(t["model_filename"], model);
    EXPECT_EQ(t["model_type"].get<std::string>().rfind("llama ", 0), 0u) << t["model_type"];
    EXPECT_EQ(t["n_threads"], 2);
    EXPECT_FALSE(t["test_time"].get<std::string>().empty());
    ASSERT_EQ(t["samples_ns"].size(), 2u);
    ASSERT_EQ(t["samples_ts"].size(), 2u);
    for (const auto& s : t["samples_ts"]) EXPECT_GT(s.get<double>(), 0.0);
  }
  EXPECT_EQ(j[0]["n_prompt"], 16);
  EXPECT_EQ(j[0]["n_gen"], 0);
  EXPECT_EQ(j[0]["test"], "pp16");
  EXPECT_EQ(j[1]["n_prompt"], 0);
  EXPECT_EQ(j[1]["n_gen"], 8);
  EXPECT_EQ(j[1]["test"], "tg8");
  EXPECT_GT(j[1]["decode_gbps"].get<double>(), 0.0);
  EXPECT_GT(j[1]["mem_bw_pct"].get<double>(), 0.0);
}

TEST(BenchCli, MarkdownTableAndDepth) {
  const std::string model = lokal::test::data_path("models/real/stories260K.gguf");
  Result r = run_lokal("bench -m '" + model + "' -p 8 -n 4 -r 1 -t 1 --depth 16 --no-mem-bw -q");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  for (const char* s : {"| model", " size |", "t/s", "pp8 @ d16", "tg4 @ d16", "± ", "llama 293K", "not measured"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
}

TEST(BenchCli, BadArgumentsGiveOneClearLine) {
  const std::string model = "'" + lokal::test::data_path("models/real/stories260K.gguf") + "'";
  expect_one_line_error(run_lokal("bench -m /nonexistent.gguf"), "nonexistent.gguf");
  expect_one_line_error(run_lokal("bench -m " + model + " -r 0"), "repetitions");
  expect_one_line_error(run_lokal("bench -m " + model + " -p 0 -n 0"), "nothing to measure");
  expect_one_line_error(run_lokal("bench -m " + model + " -p abc"), "n-prompt");
  expect_one_line_error(run_lokal("bench -m '" + lokal::test::data_path("golden/prompts.json") + "'"), "not a GGUF file");
}

}  // namespace
