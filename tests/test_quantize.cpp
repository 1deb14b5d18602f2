// `lokal quantize` (engine/quantize.h): the per-tensor type mixes, tensor data and metadata must match the files
// llama.cpp's llama-quantize (c392e50) made from the same F32 models, the quantization error must not exceed
// llama.cpp's (golden/dequant-*.json), and the CLI must refuse bad requests with one clear line.
//
// Keys that differ from the input by design: general.file_type (the llama_ftype of TYPE) and
// general.quantization_version (2, added if absent); split.* keys are dropped. Compared with llama.cpp's files the
// metadata is equal as a set of keys and values (llama.cpp moves general.file_type to the end and sorts the
// tensors by layer and name; lokal keeps the input's order), and every tensor has the same type, shape and bytes.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/fp16.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/quant.h"
#include "tools/quantize.h"
#include "model/model.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using namespace lokal;

namespace {

// A fresh folder per test, removed at the end (tests/support).
struct TempDir : lokal::test::TempDir {
  TempDir() : lokal::test::TempDir("lokal_qz") {}
};

std::string synth(const std::string& t) { return test::data_path("models/synth/synth-llama-" + t + ".gguf"); }
std::string qwen(const std::string& t) { return test::data_path("models/synth/synth-qwen2-" + t + ".gguf"); }
std::string tinytales(const std::string& t) { return test::data_path("models/real/tinytales-4m-" + t + ".gguf"); }

QuantizeOptions options(const std::string& type, int threads = 2) {
  QuantizeOptions o;
  auto ft = find_quant_file_type(type);
  if (!ft) throw std::runtime_error("unknown type " + type);
  o.file_type = *ft;
  o.n_threads = threads;
  return o;
}

QuantizeResult quantize(const std::string& in, const std::string& out, const std::string& type, QuantizeOptions o = {}) {
  if (!o.file_type.name) o = options(type);
  return quantize_model(in, out, o);
}

GGUFMetaValue meta(const GGUFValue& v) { return GGUFMetaValue::from(v); }

int effective_dims(const GGUFTensorInfo& t) {
  for (int i = 3; i >= 1; --i)
    if (t.ne[i] > 1) return i + 1;
  return 1;
}

// Same tensors (names, types, shapes) and, if `bytes`, the same data; and the same metadata (as a set).
// Returns the number of tensors whose data differs.
int compare_with_reference(const std::string& ours_path, const std::string& ref_path, bool bytes = true) {
  auto ours = GGUFFile::open(ours_path);
  auto ref = GGUFFile::open(ref_path);
  EXPECT_EQ(ours->tensors().size(), ref->tensors().size());
  int differing = 0;
  for (const auto& r : ref->tensors()) {
    const GGUFTensorInfo* o = ours->find_tensor(r.name);
    if (!o) {
      ADD_FAILURE() << r.name << " missing from " << ours_path;
      continue;
    }
    EXPECT_EQ(type_name(o->type), std::string(type_name(r.type))) << r.name << " vs " << ref_path;
    EXPECT_EQ(o->n_dims, r.n_dims) << r.name;
    for (int d = 0; d < 4; ++d) EXPECT_EQ(o->ne[d], r.ne[d]) << r.name;
    if (bytes && o->type == r.type && o->nbytes == r.nbytes && std::memcmp(o->data, r.data, r.nbytes) != 0) {
      ++differing;
      ADD_FAILURE() << r.name << " (" << type_name(r.type) << "): tensor data differs from " << ref_path;
    }
  }
  // Metadata: the same keys with the same values (order aside).
  std::map<std::string, const GGUFValue*> a, b;
  for (const auto& [k, v] : ours->kv()) a[k] = &v;
  for (const auto& [k, v] : ref->kv()) b[k] = &v;
  for (const auto& [k, v] : b) {
    auto it = a.find(k);
    if (it == a.end()) {
      ADD_FAILURE() << "key " << k << " missing from " << ours_path;
      continue;
    }
    EXPECT_TRUE(meta(*it->second) == meta(*v)) << "key " << k << ": " << it->second->to_string() << " vs " << v->to_string();
  }
  for (const auto& [k, v] : a) EXPECT_TRUE(b.count(k)) << "extra key " << k << " in " << ours_path;
  EXPECT_EQ(ours->alignment(), ref->alignment());
  return differing;
}

// The output keeps the input's metadata, in order, except the documented keys; and the input's tensor order.
void expect_carried_over(const std::string& ours_path, const std::string& in_path, int ftype) {
  auto ours = GGUFFile::open(ours_path);
  auto in = GGUFFile::open(in_path);
  std::vector<std::string> expect_keys;
  for (const auto& [k, v] : in->kv()) expect_keys.push_back(k);
  if (!in->has("general.quantization_version")) expect_keys.push_back("general.quantization_version");
  if (!in->has("general.file_type")) expect_keys.push_back("general.file_type");
  std::vector<std::string> keys;
  for (const auto& [k, v] : ours->kv()) keys.push_back(k);
  EXPECT_EQ(keys, expect_keys);
  for (const auto& [k, v] : ours->kv()) {
    if (k == "general.file_type") {
      EXPECT_EQ(v.type, GGUFType::U32);
      EXPECT_EQ(ours->get_int(k), ftype);
    } else if (k == "general.quantization_version") {
      EXPECT_EQ(v.type, GGUFType::U32);
      EXPECT_EQ(ours->get_int(k), 2);
    } else {
      ASSERT_TRUE(in->find(k)) << k;
      EXPECT_TRUE(meta(v) == meta(*in->find(k))) << "key " << k << " changed";
    }
  }
  ASSERT_EQ(ours->tensors().size(), in->tensors().size());
  for (size_t i = 0; i < in->tensors().size(); ++i) {
    EXPECT_EQ(ours->tensors()[i].name, in->tensors()[i].name);
    EXPECT_EQ(ours->tensors()[i].offset % ours->alignment(), 0u);
  }
  EXPECT_EQ(ours->alignment(), in->alignment());
  EXPECT_EQ(ours->version(), 3u);
}

struct Rmse {
  double rmse = 0;
  uint64_t n = 0;
};

// Pooled RMSE over every matrix (2+ dims) of `q_path` against the F32 original.
Rmse rmse_all_matrices(const std::string& q_path, const std::string& f32_path) {
  auto q = GGUFFile::open(q_path);
  auto f = GGUFFile::open(f32_path);
  double sum = 0;
  uint64_t n = 0;
  std::vector<float> row;
  for (const auto& t : f->tensors()) {
    if (effective_dims(t) < 2) continue;
    const GGUFTensorInfo* o = q->find_tensor(t.name);
    if (!o) throw std::runtime_error("missing " + t.name);
    row.resize(static_cast<size_t>(t.ne[0]));
    const size_t rs = row_size(o->type, o->ne[0]);
    const auto* ref = reinterpret_cast<const float*>(t.data);
    for (int64_t r = 0; r < t.n_rows(); ++r) {
      dequantize_row(o->type, o->data + static_cast<size_t>(r) * rs, row.data(), t.ne[0]);
      for (int64_t j = 0; j < t.ne[0]; ++j) {
        const double d = static_cast<double>(row[j]) - ref[r * t.ne[0] + j];
        sum += d * d;
      }
    }
    n += static_cast<uint64_t>(t.n_elements());
  }
  return {std::sqrt(sum / static_cast<double>(n)), n};
}

std::map<std::string, std::string> types_of(const std::string& path) {
  std::map<std::string, std::string> m;
  auto f = GGUFFile::open(path);
  for (const auto& t : f->tensors()) m[t.name] = type_name(t.type);
  return m;
}

int ftype_of(const std::string& type) { return find_quant_file_type(type)->ftype; }

// ---------------------------------------------------------------------------------------------
// Runs of the lokal binary.

using lokal::test::CliResult;
using lokal::test::run_lokal;

std::string q(const std::string& s) { return "'" + s + "'"; }

using lokal::test::expect_one_line_error;

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(QuantizeTypes, NamesAliasesAndFileTypeNumbers) {
  const std::map<std::string, int> expected = {
      {"F32", 0}, {"F16", 1}, {"BF16", 32}, {"Q8_0", 7}, {"Q4_0", 2}, {"Q4_1", 3}, {"Q5_0", 8}, {"Q5_1", 9},
      {"Q2_K", 10}, {"Q3_K_S", 11}, {"Q3_K_M", 12}, {"Q3_K_L", 13}, {"Q4_K_S", 14}, {"Q4_K_M", 15},
      {"Q5_K_S", 16}, {"Q5_K_M", 17}, {"Q6_K", 18}};
  EXPECT_EQ(quant_file_types().size(), expected.size());
  for (const auto& [name, ft] : expected) {
    std::string lower = name;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto a = find_quant_file_type(name), b = find_quant_file_type(lower);
    ASSERT_TRUE(a && b) << name;
    EXPECT_EQ(a->ftype, ft) << name;
    EXPECT_EQ(b->ftype, ft) << name;
    EXPECT_NE(quant_file_type_list().find(name), std::string::npos);
  }
  EXPECT_EQ(find_quant_file_type("q4_k")->ftype, 15);
  EXPECT_EQ(find_quant_file_type("Q3_K")->ftype, 12);
  EXPECT_EQ(find_quant_file_type("Q5_K")->ftype, 17);
  EXPECT_FALSE(find_quant_file_type("Q4_X"));
  EXPECT_FALSE(find_quant_file_type("IQ4_NL"));
  EXPECT_FALSE(find_quant_file_type(""));
}

// --- synth-llama: mixes, bytes, metadata and RMSE against llama.cpp's files ---

class QuantizeSynthLlama : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizeSynthLlama, MatchesLlamaCpp) {
  const std::string t = GetParam();
  TempDir dir;
  const std::string out = dir.file("out.gguf");
  QuantizeResult r = quantize(synth("f32"), out, t);
  ASSERT_TRUE(r.written);
  EXPECT_EQ(r.plan.file_size_out, fs::file_size(out));
  // (1) + (2) + (3): llama.cpp's types, bytes and metadata.
  EXPECT_EQ(compare_with_reference(out, synth(t)), 0);
  EXPECT_EQ(fs::file_size(out), fs::file_size(synth(t)));
  expect_carried_over(out, synth("f32"), ftype_of(t));
  // (4) lokal loads it, and its error is no larger than llama.cpp's.
  EXPECT_NO_THROW(Model::load(out));
  auto g = nlohmann::json::parse(test::read_file(test::data_path("golden/dequant-" + t + ".json")));
  const double golden = g["rmse_all_matrices"].get<double>();
  Rmse e = rmse_all_matrices(out, synth("f32"));
  EXPECT_EQ(e.n, g["n_weights_all_matrices"].get<uint64_t>());
  EXPECT_LE(e.rmse, golden * (1 + 1e-6)) << t;
  EXPECT_GT(e.rmse, golden * (1 - 1e-6)) << t << " (identical bytes give identical error)";
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizeSynthLlama,
                         ::testing::Values("q2_k", "q3_k_m", "q4_0", "q4_1", "q4_k_m", "q5_0", "q5_1", "q5_k_m", "q6_k",
                                           "q8_0", "f16"));

// --- tinytales-4m (real trained weights, 4 layers): mixes and bytes ---

class QuantizeTinytales : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizeTinytales, MatchesLlamaCpp) {
  const std::string t = GetParam();
  TempDir dir;
  const std::string out = dir.file("out.gguf");
  quantize(tinytales("f32"), out, t);
  EXPECT_EQ(compare_with_reference(out, tinytales(t)), 0);
  EXPECT_EQ(fs::file_size(out), fs::file_size(tinytales(t)));
  expect_carried_over(out, tinytales("f32"), ftype_of(t));
  EXPECT_NO_THROW(Model::load(out));
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizeTinytales,
                         ::testing::Values("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k", "f16"));

// --- synth-qwen2: tied embeddings (no output.weight: token_embd gets the output's type) ---

class QuantizeSynthQwen2 : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizeSynthQwen2, TiedEmbeddingsMatchLlamaCpp) {
  const std::string t = GetParam();
  TempDir dir;
  const std::string out = dir.file("out.gguf");
  quantize(qwen("f32"), out, t);
  EXPECT_EQ(compare_with_reference(out, qwen(t)), 0);
  expect_carried_over(out, qwen("f32"), ftype_of(t));
  EXPECT_NO_THROW(Model::load(out));
  auto types = types_of(out);
  EXPECT_EQ(types.count("output.weight"), 0u);
  EXPECT_EQ(types["token_embd.weight"], t == "q8_0" ? "Q8_0" : "Q6_K");
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizeSynthQwen2, ::testing::Values("q4_k_m", "q6_k", "q8_0"));

// --- file types llama.cpp made no reference file for: the mix by llama.cpp's rules ---
// synth-llama: 2 layers, 4 heads, 2 KV heads (GQA 2), every row a multiple of 256.

TEST(QuantizeMixes, TypesWithoutReferenceFiles) {
  TempDir dir;
  const std::vector<std::string> mats = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  auto expect = [&](const std::string& t, const std::string& base, std::map<std::string, std::string> special,
                    const std::string& output) {
    SCOPED_TRACE(t);
    const std::string out = dir.file(t + ".gguf");
    quantize(synth("f32"), out, t);
    auto types = types_of(out);
    EXPECT_EQ(types["output.weight"], output);
    EXPECT_EQ(types["token_embd.weight"], base);
    EXPECT_EQ(types["output_norm.weight"], "F32");
    for (int l = 0; l < 2; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      EXPECT_EQ(types[p + "attn_norm.weight"], "F32");
      EXPECT_EQ(types[p + "ffn_norm.weight"], "F32");
      for (const auto& m : mats) {
        const std::string want = special.count(m) ? special[m] : base;
        EXPECT_EQ(types[p + m + ".weight"], want) << p + m;
      }
    }
    expect_carried_over(out, synth("f32"), ftype_of(t));
    EXPECT_NO_THROW(Model::load(out));
    return rmse_all_matrices(out, synth("f32")).rmse;
  };
  const double q3s = expect("Q3_K_S", "Q3_K", {}, "Q6_K");
  const double q3l = expect("Q3_K_L", "Q3_K", {{"attn_v", "Q5_K"}, {"attn_output", "Q5_K"}, {"ffn_down", "Q5_K"}}, "Q6_K");
  const double q4s = expect("Q4_K_S", "Q4_K", {{"attn_v", "Q5_K"}}, "Q6_K");  // attn_v of the first 4 layers
  const double q5s = expect("Q5_K_S", "Q5_K", {}, "Q6_K");
  const double bf16 = expect("BF16", "BF16", {}, "BF16");
  const double f32 = expect("F32", "F32", {}, "F32");
  EXPECT_GT(q3s, q3l);
  EXPECT_GT(q3l, q4s);
  EXPECT_GT(q4s, q5s);
  EXPECT_GT(q5s, bf16);
  EXPECT_EQ(f32, 0.0);
  // Where they sit among llama.cpp's measured errors: Q2_K > Q3_K_S > Q3_K_M > Q4_K_S > Q4_K_M > Q5_K_S.
  auto golden = [](const char* t) {
    return nlohmann::json::parse(test::read_file(test::data_path(std::string("golden/dequant-") + t + ".json")))["rmse_all_matrices"]
        .get<double>();
  };
  EXPECT_LT(q3s, golden("q2_k"));
  EXPECT_GT(q3s, golden("q3_k_m"));
  EXPECT_GT(q4s, golden("q4_k_m"));
  EXPECT_LT(q4s, golden("q3_k_m"));
  EXPECT_LT(q5s, golden("q4_k_m"));
  // F32 is a copy; BF16 is round-to-nearest-even of every weight.
  auto in = GGUFFile::open(synth("f32"));
  auto o32 = GGUFFile::open(dir.file("F32.gguf"));
  auto o16 = GGUFFile::open(dir.file("BF16.gguf"));
  for (const auto& t : in->tensors()) {
    const GGUFTensorInfo* a = o32->find_tensor(t.name);
    ASSERT_TRUE(a);
    EXPECT_EQ(std::memcmp(a->data, t.data, t.nbytes), 0) << t.name;
    if (effective_dims(t) < 2) continue;
    const GGUFTensorInfo* b = o16->find_tensor(t.name);
    const auto* x = reinterpret_cast<const float*>(t.data);
    const auto* h = reinterpret_cast<const uint16_t*>(b->data);
    for (int64_t i = 0; i < t.n_elements(); ++i) ASSERT_EQ(h[i], fp32_to_bf16(x[i])) << t.name << " " << i;
  }
}

// --- rows that do not divide the block size: fallbacks (stories260K: n_embd 64, n_ff 172) ---

TEST(Quantize, FallbacksForRowsThatDoNotDivide) {
  TempDir dir;
  const std::string in = test::data_path("models/real/stories260K.gguf");
  {
    const std::string out = dir.file("q4km.gguf");
    QuantizeResult r = quantize(in, out, "Q4_K_M");
    auto types = types_of(out);
    EXPECT_EQ(types["output.weight"], "Q8_0");        // output: straight to Q8_0 (llama.cpp's rule)
    EXPECT_EQ(types["token_embd.weight"], "Q5_0");    // Q4_K -> Q5_0
    EXPECT_EQ(types["blk.0.attn_q.weight"], "Q5_0");
    EXPECT_EQ(types["blk.4.attn_v.weight"], "Q8_0");  // Q6_K (more bits, last layer) -> Q8_0
    EXPECT_EQ(types["blk.0.ffn_down.weight"], "F16"); // rows of 172: no block type divides them
    EXPECT_EQ(types["blk.1.ffn_down.weight"], "F16");
    EXPECT_EQ(types["blk.0.ffn_norm.weight"], "F32");
    EXPECT_GT(r.plan.n_fallback, 30);
    bool noted = false;
    for (const auto& n : r.plan.notes) noted = noted || n.find("blk.0.ffn_down.weight: row length 172") != std::string::npos;
    EXPECT_TRUE(noted);
    EXPECT_NO_THROW(Model::load(out));
  }
  {
    const std::string out = dir.file("q2k.gguf");
    quantize(in, out, "Q2_K");
    auto types = types_of(out);
    EXPECT_EQ(types["token_embd.weight"], "Q4_0");    // Q2_K -> Q4_0 (llama.cpp: IQ4_NL)
    EXPECT_EQ(types["blk.0.attn_v.weight"], "Q4_0");  // Q3_K -> Q4_0
    EXPECT_EQ(types["blk.2.ffn_down.weight"], "F16");
    EXPECT_NO_THROW(Model::load(out));
  }
  {
    const std::string out = dir.file("q8.gguf");  // Q8_0 on rows of 172: F16 (llama.cpp would stop)
    quantize(in, out, "Q8_0");
    auto types = types_of(out);
    EXPECT_EQ(types["blk.3.ffn_down.weight"], "F16");
    EXPECT_EQ(types["blk.3.ffn_up.weight"], "Q8_0");
  }
}

// --- options ---

TEST(Quantize, PureAndKeepOutputF16) {
  TempDir dir;
  QuantizeOptions o = options("Q4_K_M");
  o.pure = true;
  quantize(synth("f32"), dir.file("pure.gguf"), "", o);
  for (const auto& [name, type] : types_of(dir.file("pure.gguf")))
    EXPECT_EQ(type, name.find("norm") != std::string::npos ? "F32" : "Q4_K") << name;

  o = options("Q4_K_M");
  o.keep_output_f16 = true;
  quantize(synth("f32"), dir.file("keep.gguf"), "", o);
  auto types = types_of(dir.file("keep.gguf"));
  EXPECT_EQ(types["output.weight"], "F16");
  EXPECT_EQ(types["token_embd.weight"], "Q4_K");
  EXPECT_EQ(types["blk.1.ffn_down.weight"], "Q6_K");  // the rest of the mix is unchanged
  EXPECT_NO_THROW(Model::load(dir.file("keep.gguf")));

  // Tied embeddings: token_embd is the output.
  quantize(qwen("f32"), dir.file("qkeep.gguf"), "", o);
  EXPECT_EQ(types_of(dir.file("qkeep.gguf"))["token_embd.weight"], "F16");
}

TEST(Quantize, SameBytesWithAnyThreadCount) {
  TempDir dir;
  quantize(tinytales("f32"), dir.file("t1.gguf"), "", options("Q4_K_M", 1));
  quantize(tinytales("f32"), dir.file("t3.gguf"), "", options("Q4_K_M", 3));
  EXPECT_TRUE(test::read_file(dir.file("t1.gguf")) == test::read_file(dir.file("t3.gguf")));
}

TEST(Quantize, DryRunPlansTheExactSizeAndWritesNothing) {
  TempDir dir;
  QuantizeOptions o = options("Q5_K_M");
  o.dry_run = true;
  bool planned = false;
  int tensors = 0;
  o.on_plan = [&](const QuantizePlan&) { planned = true; };
  o.on_tensor = [&](const TensorProgress&) { ++tensors; };
  QuantizeResult r = quantize_model(tinytales("f32"), dir.file("dry.gguf"), o);
  EXPECT_TRUE(planned);
  EXPECT_EQ(tensors, 0);
  EXPECT_FALSE(r.written);
  EXPECT_EQ(dir.n_files(), 0u);
  EXPECT_EQ(r.plan.file_size_out, fs::file_size(tinytales("q5_k_m")));
  EXPECT_EQ(r.plan.count_out, (std::map<DType, int>{{DType::F32, 9}, {DType::Q5_K, 25}, {DType::Q6_K, 5}}))
      << "tinytales-4m: 4 layers, attn_v and ffn_down of layers 2 and 3 and the output get Q6_K";
  EXPECT_NEAR(r.plan.bpw_in(), 32.0, 1e-9);
}

TEST(Quantize, RequantizingNeedsTheFlag) {
  TempDir dir;
  const std::string out = dir.file("re.gguf");
  try {
    quantize(synth("q8_0"), out, "Q4_0");
    FAIL() << "an already-quantized input was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already quantized (Q8_0 16)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--allow-requantize"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  QuantizeOptions o = options("Q4_0");
  o.allow_requantize = true;
  QuantizeResult r = quantize_model(synth("q8_0"), out, o);
  EXPECT_EQ(r.plan.n_requantize, 16);
  ASSERT_FALSE(r.plan.notes.empty());
  EXPECT_NE(r.plan.notes.back().find("requantizing 16 tensor(s)"), std::string::npos);
  EXPECT_EQ(types_of(out), types_of(synth("q4_0")));  // the same mix as from F32
  // Error vs the F32 original: a little above a direct Q4_0 quantization.
  const double direct = nlohmann::json::parse(test::read_file(test::data_path("golden/dequant-q4_0.json")))["rmse_all_matrices"].get<double>();
  const double re = rmse_all_matrices(out, synth("f32")).rmse;
  EXPECT_GT(re, direct);
  EXPECT_LT(re, direct * 1.1);
  // Quantizing a Q8_0 model to Q8_0 copies the Q8_0 tensors unchanged (nothing is requantized).
  QuantizeOptions same = options("Q8_0");
  same.allow_requantize = true;
  r = quantize_model(synth("q8_0"), dir.file("same.gguf"), same);
  EXPECT_EQ(r.plan.n_requantize, 0);
  EXPECT_EQ(compare_with_reference(dir.file("same.gguf"), synth("q8_0")), 0);
}

TEST(Quantize, ImportanceHookWeightsTheQuantizersAndNullImportanceIsTheReference) {
  TempDir dir;
  std::vector<float> ones(4096, 1.0f);
  QuantizeOptions o = options("Q4_K_M");
  // A wrong size for the tensor is refused before anything is written.
  o.importance = [&](const GGUFTensorInfo&) -> ImportanceView { return {ones.data(), 7}; };
  EXPECT_THROW(quantize_model(synth("f32"), dir.file("imp.gguf"), o), Error);
  EXPECT_EQ(dir.n_files(), 0u);
  o.importance = [&](const GGUFTensorInfo& t) -> ImportanceView {
    return {ones.data(), static_cast<size_t>(t.ne[0] * t.ne[2])};
  };
  EXPECT_NO_THROW(quantize_model(synth("f32"), dir.file("imp.gguf"), o));
  // quantize_rows without importance is the reference quantizer; with importance, the weighted one.
  std::vector<float> x(512);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(static_cast<float>(i));
  std::vector<uint8_t> a(row_size(DType::Q4_K, 256) * 2), b(a.size());
  quantize_rows(DType::Q4_K, x.data(), a.data(), 2, 256, nullptr);
  quantize_row(DType::Q4_K, x.data(), b.data(), 256);
  quantize_row(DType::Q4_K, x.data() + 256, b.data() + row_size(DType::Q4_K, 256), 256);
  EXPECT_EQ(a, b);
  quantize_rows(DType::Q4_K, x.data(), a.data(), 2, 256, ones.data());
  quantize_row_weighted(DType::Q4_K, x.data(), b.data(), 256, ones.data());
  quantize_row_weighted(DType::Q4_K, x.data() + 256, b.data() + row_size(DType::Q4_K, 256), 256, ones.data());
  EXPECT_EQ(a, b);
}

TEST(Quantize, NonFiniteWeightsAreRefusedAndNothingIsWritten) {
  TempDir dir;
  auto in = GGUFFile::open(synth("f32"));
  const GGUFTensorInfo* t = in->find_tensor("blk.1.ffn_up.weight");
  std::vector<float> bad(reinterpret_cast<const float*>(t->data), reinterpret_cast<const float*>(t->data) + t->n_elements());
  bad[1000] = std::numeric_limits<float>::quiet_NaN();
  GGUFWriter w;
  w.copy_metadata(*in);
  for (const auto& x : in->tensors()) {
    if (x.name == t->name) w.add_tensor(x.name, x.type, {x.ne[0], x.ne[1]}, bad.data(), bad.size() * 4);
    else w.add_tensor(x);
  }
  w.write(dir.file("nan.gguf"));
  try {
    quantize(dir.file("nan.gguf"), dir.file("out.gguf"), "Q4_0");
    FAIL() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.1.ffn_up.weight"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.n_files(), 1u);  // only the input: no output, no temporary file left behind
}

// --- the CLI ---

TEST(QuantizeCli, QuantizesWithProgressAndSummary) {
  TempDir dir;
  const std::string out = dir.file("cli.gguf");
  CliResult r = run_lokal("quantize " + q(synth("f32")) + " " + q(out) + " q4_k_m -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(test::read_file(out).size(), fs::file_size(synth("q4_k_m")));
  EXPECT_EQ(compare_with_reference(out, synth("q4_k_m")), 0);
  // one progress line per tensor on stderr
  EXPECT_NE(r.err.find("[ 1/21] token_embd.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("blk.1.ffn_down.weight     F32 -> Q6_K"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("[21/21] output.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("768.00 KiB -> 157.50 KiB"), std::string::npos) << r.err;
  // summary on stdout
  EXPECT_NE(r.out.find("7.00 MiB -> 1.08 MiB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bits/weight   32.00 -> 4.92"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("F32 21 -> F32 5, Q4_K 13, Q6_K 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("time"), std::string::npos) << r.out;
}

TEST(QuantizeCli, RefusesQuantizedInputWithoutTheFlag) {
  TempDir dir;
  const std::string out = dir.file("re.gguf");
  CliResult r = run_lokal("quantize " + q(synth("q4_0")) + " " + q(out) + " Q4_K_M");
  expect_one_line_error(r, "--allow-requantize");
  EXPECT_NE(r.err.find("already quantized"), std::string::npos);
  EXPECT_FALSE(fs::exists(out));
  r = run_lokal("quantize " + q(synth("q4_0")) + " " + q(out) + " Q4_K_M --allow-requantize");
  ASSERT_EQ(r.rc, 0) << r.err;
  // output.weight is Q6_K already: copied; the 15 Q4_0 matrices are requantized.
  EXPECT_NE(r.err.find("requantizing 15 tensor(s) that are already quantized (Q4_0 15)"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("requantized   15"), std::string::npos) << r.out;
  EXPECT_EQ(types_of(out), types_of(synth("q4_k_m")));
}

TEST(QuantizeCli, UnknownTypeListsTheValidOnes) {
  TempDir dir;
  CliResult r = run_lokal("quantize " + q(synth("f32")) + " " + q(dir.file("x.gguf")) + " Q4_K_X");
  expect_one_line_error(r, "unknown quantization type 'Q4_K_X'");
  EXPECT_NE(r.err.find("F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, "
                       "Q5_K_S, Q5_K_M, Q6_K"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(dir.n_files(), 0u);
}

TEST(QuantizeCli, DryRunWritesNothing) {
  TempDir dir;
  const std::string out = dir.file("dry.gguf");
  CliResult r = run_lokal("quantize " + q(synth("f32")) + " " + q(out) + " Q2_K --dry-run");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(dir.n_files(), 0u);
  EXPECT_NE(r.out.find("blk.0.attn_v.weight       F32 -> Q3_K"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("would be 726.91 KiB; nothing was written"), std::string::npos) << r.out;  // 744352 bytes
  EXPECT_NE(r.out.find("F32 5, Q2_K 9, Q3_K 6, Q6_K 1"), std::string::npos) << r.out;
}

TEST(QuantizeCli, BadPathsGiveOneClearLine) {
  TempDir dir;
  const std::string in = synth("f32");
  expect_one_line_error(run_lokal("quantize " + q(dir.file("missing.gguf")) + " " + q(dir.file("o.gguf")) + " Q4_0"),
                        "missing.gguf");
  expect_one_line_error(run_lokal("quantize " + q(in) + " " + q(dir.file("no/such/dir/o.gguf")) + " Q4_0"),
                        "does not exist");
  expect_one_line_error(run_lokal("quantize " + q(in) + " " + q(in) + " Q4_0"), "is the input file");
  // a non-GGUF input
  std::ofstream(dir.file("junk.gguf")) << "not a model";
  CliResult r = run_lokal("quantize " + q(dir.file("junk.gguf")) + " " + q(dir.file("o.gguf")) + " Q4_0");
  expect_one_line_error(r, "junk.gguf");
  EXPECT_FALSE(fs::exists(dir.file("o.gguf")));
  // missing arguments are a usage error
  r = run_lokal("quantize " + q(in));
  EXPECT_NE(r.rc, 0);
}
