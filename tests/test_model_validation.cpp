// One model validation (validate_model, model/config.h) for every subcommand that reads a model: malformed files
// built from a real model are refused by info, run, plan, quantize, export-hf, perplexity, compare, imatrix and bench
// with the same one-line error, and nothing is written and the input is left as it was. Non-finite results
// (NaN weights) stop run, perplexity, compare and imatrix with an error naming the position instead of "PPL = nan".
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "model/config.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using lokal::DType;
using lokal::Error;
using lokal::GGUFFile;
using lokal::GGUFMetaValue;
using lokal::GGUFTensorInfo;
using lokal::GGUFWriter;
using lokal::test::CliResult;
using lokal::test::data_path;
using lokal::test::expect_one_line_error;
using lokal::test::run_lokal;
using lokal::test::TempDir;

namespace {

const char* const kBase = "models/real/stories260K.gguf";  // llama, 5 layers, n_embd 64, 8 heads, 4 KV heads, F32
const char* const kText = "golden/ppl-text.txt";

std::string q(const std::string& s) { return "'" + s + "'"; }

// Builds a variant of the base model: metadata edited by `meta`, each tensor passed to `tensor` (which adds it,
// changed or not, or drops it; by default it is copied), then `extra` may add more.
struct Variant {
  std::function<void(GGUFWriter&)> meta;
  std::function<void(GGUFWriter&, const GGUFTensorInfo&)> tensor;
  std::function<void(GGUFWriter&, const GGUFFile&)> extra;
};

class ModelValidation : public ::testing::Test {
 protected:
  void SetUp() override { base_ = GGUFFile::open(data_path(kBase)); }

  std::string write(const std::string& name, const Variant& v) {
    GGUFWriter w;
    w.copy_metadata(*base_);
    if (v.meta) v.meta(w);
    for (const auto& t : base_->tensors()) {
      if (v.tensor) v.tensor(w, t);
      else w.add_tensor(t);
    }
    if (v.extra) v.extra(w, *base_);
    const std::string path = tmp_.file(name);
    w.write(path);
    return path;
  }

  // A copy of tensor `t` (F32) with value `x` at element `at`.
  void add_patched(GGUFWriter& w, const GGUFTensorInfo& t, int64_t at, float x) {
    const auto* src = reinterpret_cast<const float*>(t.data);
    store_.emplace_back(src, src + t.n_elements());
    store_.back()[static_cast<size_t>(at)] = x;
    w.add_tensor(t.name, t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), store_.back().data(),
                 store_.back().size() * sizeof(float));
  }

  // Every subcommand that reads a model refuses `path` with one line containing `msg`; no output file or folder
  // appears and the file is unchanged.
  void expect_refused_everywhere(const std::string& path, const std::string& msg) {
    SCOPED_TRACE(path);
    const std::string before = lokal::test::read_file(path);
    const std::string m = q(path), text = q(data_path(kText)), good = q(data_path(kBase));
    const std::string out = tmp_.file("out.gguf"), dir = tmp_.file("hf"), imat = tmp_.file("imatrix.dat");
    const std::vector<std::string> cmds = {
        "info " + m,
        "run -m " + m + " -p hi -n 2 -t 1",
        "plan -m " + m + " --ram 1GiB",
        "quantize " + m + " " + q(out) + " q8_0 -t 1",
        "quantize " + m + " " + q(out) + " q4_0 --dry-run",
        "export-hf " + m + " -q -o " + q(dir),
        "perplexity -m " + m + " -f " + text + " -c 64 --chunks 1 -t 1",
        "compare " + good + " " + m + " -f " + text + " -c 64 --chunks 1 -t 1 -q",
        "compare " + m + " " + good + " -f " + text + " -c 64 --chunks 1 -t 1 -q",
        "imatrix -m " + m + " -f " + text + " -c 64 --chunks 1 -t 1 -o " + q(imat),
        "bench -m " + m + " -p 8 -n 2 -r 1 -t 1 --no-mem-bw -q",
    };
    for (const auto& c : cmds) {
      SCOPED_TRACE(c);
      expect_one_line_error(run_lokal(c), msg, true);
      EXPECT_FALSE(fs::exists(out));
      EXPECT_FALSE(fs::exists(dir));
      EXPECT_FALSE(fs::exists(imat));
    }
    EXPECT_TRUE(lokal::test::read_file(path) == before) << "the input file changed";
    // The library entry point gives the same message (FILE: what is wrong).
    try {
      lokal::validate_model(*GGUFFile::open(path));
      ADD_FAILURE() << "validate_model accepted " << path;
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_EQ(w.rfind(path + ": ", 0), 0u) << w;
      EXPECT_NE(w.find(msg), std::string::npos) << w;
      EXPECT_EQ(w.find('\n'), std::string::npos) << w;
    }
  }

  static Variant set_u32(const std::string& key, uint32_t v) {
    return {[=](GGUFWriter& w) { w.set_u32(key, v); }, nullptr, nullptr};
  }
  static Variant set_f32(const std::string& key, float v) {
    return {[=](GGUFWriter& w) { w.set_f32(key, v); }, nullptr, nullptr};
  }
  static Variant drop(const std::function<bool(const std::string&)>& gone) {
    return {nullptr, [=](GGUFWriter& w, const GGUFTensorInfo& t) {
              if (!gone(t.name)) w.add_tensor(t);
            },
            nullptr};
  }

  TempDir tmp_;
  std::unique_ptr<GGUFFile> base_;
  std::vector<std::vector<float>> store_;
};

// ---------------------------------------------------------------- hyperparameters

TEST_F(ModelValidation, ZeroHeadsAreRefusedEverywhere) {
  expect_refused_everywhere(write("heads0.gguf", set_u32("llama.attention.head_count", 0)),
                            "metadata 'llama.attention.head_count' = 0 is invalid");
  expect_refused_everywhere(write("kv0.gguf", set_u32("llama.attention.head_count_kv", 0)),
                            "metadata 'llama.attention.head_count_kv' = 0 is invalid");
}

TEST_F(ModelValidation, InconsistentHeadCountsAreRefused) {
  expect_refused_everywhere(write("kv3.gguf", set_u32("llama.attention.head_count_kv", 3)),
                            "metadata 'llama.attention.head_count' = 8 is not a multiple of "
                            "'llama.attention.head_count_kv' = 3");
  // 64 / 12 is no whole head dimension (and there is no key_length to give one).
  Variant v{[](GGUFWriter& w) {
              w.set_u32("llama.attention.head_count", 12);
              w.set_u32("llama.attention.head_count_kv", 4);
            },
            nullptr, nullptr};
  expect_refused_everywhere(write("heads12.gguf", v),
                            "metadata 'llama.embedding_length' = 64 is not a multiple of 'llama.attention.head_count' = 12");
}

TEST_F(ModelValidation, UnknownArchitectureIsRefused) {
  Variant v{[](GGUFWriter& w) { w.set_str("general.architecture", "gptxx"); }, nullptr, nullptr};
  expect_refused_everywhere(write("arch.gguf", v), "unsupported model architecture 'gptxx' (supported: llama, qwen2)");
}

TEST_F(ModelValidation, NonFiniteOrNegativeEpsilonAndRopeBaseAreRefused) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::string eps = "metadata 'llama.attention.layer_norm_rms_epsilon' = ";
  expect_refused_everywhere(write("eps-nan.gguf", set_f32("llama.attention.layer_norm_rms_epsilon", nan)),
                            eps + "nan is invalid (must be a finite number > 0)");
  expect_refused_everywhere(write("eps-inf.gguf", set_f32("llama.attention.layer_norm_rms_epsilon", inf)),
                            eps + "inf is invalid");
  expect_refused_everywhere(write("eps-neg.gguf", set_f32("llama.attention.layer_norm_rms_epsilon", -1e-5f)),
                            eps + "-1e-05 is invalid");
  expect_refused_everywhere(write("rope-nan.gguf", set_f32("llama.rope.freq_base", nan)),
                            "metadata 'llama.rope.freq_base' = nan is invalid");
}

TEST_F(ModelValidation, TokenizerProblemsAreRefusedEverywhere) {
  Variant model{[](GGUFWriter& w) { w.set_str("tokenizer.ggml.model", "foo"); }, nullptr, nullptr};
  expect_refused_everywhere(write("tok-model.gguf", model), "unsupported tokenizer model 'foo'");
  Variant fewer{[this](GGUFWriter& w) {
                  std::vector<std::string> toks;
                  for (auto t : base_->get_str_array("tokenizer.ggml.tokens")) toks.emplace_back(t);
                  toks.pop_back();
                  w.set("tokenizer.ggml.tokens", GGUFMetaValue::str_array(toks));
                },
                nullptr, nullptr};
  expect_refused_everywhere(write("tok-count.gguf", fewer), "tokenizer has 511 tokens but token_embd has 512 rows");
}

// ---------------------------------------------------------------- tensors

TEST_F(ModelValidation, MissingTensorIsNamed) {
  expect_refused_everywhere(write("missing.gguf", drop([](const std::string& n) { return n == "blk.2.ffn_up.weight"; })),
                            "missing tensor 'blk.2.ffn_up.weight'");
  expect_refused_everywhere(write("no-norm.gguf", drop([](const std::string& n) { return n == "output_norm.weight"; })),
                            "missing tensor 'output_norm.weight'");
}

TEST_F(ModelValidation, WrongShapeIsNamed) {
  // blk.1.attn_k.weight with attn_q's shape [64, 64] instead of [64, 32] (4 KV heads of 8).
  Variant v{nullptr,
            [this](GGUFWriter& w, const GGUFTensorInfo& t) {
              if (t.name != "blk.1.attn_k.weight") return w.add_tensor(t);
              const GGUFTensorInfo* qt = base_->find_tensor("blk.1.attn_q.weight");
              w.add_tensor(t.name, qt->type, {qt->ne[0], qt->ne[1]}, qt->data, qt->nbytes);
            },
            nullptr};
  expect_refused_everywhere(write("shape.gguf", v), "tensor 'blk.1.attn_k.weight' has shape [64, 64], expected [64, 32]");
}

TEST_F(ModelValidation, LayerTensorsMustMatchBlockCount) {
  // A sixth layer's tensor in a 5-layer file.
  Variant extra{nullptr, nullptr, [](GGUFWriter& w, const GGUFFile& f) {
                  const GGUFTensorInfo* t = f.find_tensor("blk.0.attn_norm.weight");
                  w.add_tensor("blk.5.attn_norm.weight", t->type, {t->ne[0]}, t->data, t->nbytes);
                }};
  expect_refused_everywhere(write("blk5.gguf", extra),
                            "tensor 'blk.5.attn_norm.weight' belongs to layer 5, but metadata 'llama.block_count' = 5");
  // block_count 1000 with the tensors of one layer (export-hf used to write num_hidden_layers 1000).
  Variant one{[](GGUFWriter& w) { w.set_u32("llama.block_count", 1000); },
              [](GGUFWriter& w, const GGUFTensorInfo& t) {
                if (t.name.rfind("blk.", 0) != 0 || t.name.rfind("blk.0.", 0) == 0) w.add_tensor(t);
              },
              nullptr};
  expect_refused_everywhere(write("1000.gguf", one),
                            "metadata 'llama.block_count' = 1000, but the file holds tensors of 1 layer (blk.0 to blk.0)");
  // block_count 1 with five layers' tensors.
  expect_refused_everywhere(write("bc1.gguf", set_u32("llama.block_count", 1)),
                            "belongs to layer 1, but metadata 'llama.block_count' = 1");
}

TEST_F(ModelValidation, ZeroTensorsIsRefused) {
  expect_refused_everywhere(write("empty.gguf", drop([](const std::string&) { return true; })),
                            "the file holds no tensors");
}

TEST_F(ModelValidation, NonFiniteNormWeightIsRefusedAtLoad) {
  Variant v{nullptr,
            [this](GGUFWriter& w, const GGUFTensorInfo& t) {
              if (t.name == "blk.3.ffn_norm.weight") add_patched(w, t, 7, std::numeric_limits<float>::quiet_NaN());
              else w.add_tensor(t);
            },
            nullptr};
  expect_refused_everywhere(write("norm-nan.gguf", v),
                            "tensor 'blk.3.ffn_norm.weight' holds a non-finite value (nan at index 7)");
  Variant u{nullptr,
            [this](GGUFWriter& w, const GGUFTensorInfo& t) {
              if (t.name == "output_norm.weight") add_patched(w, t, 2, -std::numeric_limits<float>::infinity());
              else w.add_tensor(t);
            },
            nullptr};
  expect_refused_everywhere(write("norm-inf.gguf", u),
                            "tensor 'output_norm.weight' holds a non-finite value (-inf at index 2)");
}

// ---------------------------------------------------------------- non-finite results

// The last stderr line is the one "error: " line (progress lines may come before it).
void expect_final_error(const CliResult& r, const std::string& msg) {
  EXPECT_NE(r.rc, 0);
  std::istringstream in(r.err);
  std::string line, last;
  int n_err = 0;
  while (std::getline(in, line)) {
    if (line.rfind("error: ", 0) == 0) ++n_err;
    last = line;
  }
  EXPECT_EQ(n_err, 1) << r.err;
  EXPECT_EQ(last.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(last.find(msg), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("nan"), std::string::npos) << r.out;
}

TEST_F(ModelValidation, NaNInAWeightMatrixStopsEvaluationWithAnError) {
  // A NaN in a big matrix is not looked for at load (that would read every byte of a 20 GB file) ...
  Variant v{nullptr,
            [this](GGUFWriter& w, const GGUFTensorInfo& t) {
              if (t.name == "blk.0.ffn_down.weight") add_patched(w, t, 5, std::numeric_limits<float>::quiet_NaN());
              else w.add_tensor(t);
            },
            nullptr};
  const std::string path = write("w-nan.gguf", v);
  const std::string before = lokal::test::read_file(path);
  const std::string m = q(path), text = q(data_path(kText)), good = q(data_path(kBase));
  CliResult info = run_lokal("info " + m);
  EXPECT_EQ(info.rc, 0) << info.err;

  // ... but every result computed from it is checked: no "PPL = nan" with exit status 0.
  const std::string file_msg = path + ": non-finite ";
  CliResult r = run_lokal("perplexity -m " + m + " -f " + text + " -c 64 --chunks 2 -t 1");
  expect_final_error(r, file_msg + "log-probability (nan) in chunk 1/2 at position 32");
  EXPECT_EQ(r.out, "");
  r = run_lokal("compare " + good + " " + m + " -f " + text + " -c 64 --chunks 2 -t 1 -q");
  expect_final_error(r, file_msg + "log-probability (nan) in chunk 1/2 at position 32");
  r = run_lokal("compare " + m + " " + good + " -f " + text + " -c 64 --chunks 2 -t 1 -q");
  expect_final_error(r, file_msg + "log-probability (nan) in chunk 1/2 at position 32");
  r = run_lokal("imatrix -m " + m + " -f " + text + " -c 64 --chunks 2 -t 1 -o " + q(tmp_.file("i.dat")));
  expect_final_error(r, file_msg + "log-probability (nan) in chunk 1/2 at position 32");
  EXPECT_FALSE(fs::exists(tmp_.file("i.dat")));
  // run: the prompt's logits are checked before the first token is sampled; nothing is generated.
  r = run_lokal("run -m " + m + " -p 'Once upon a time' -n 8 --temp 0 -t 1");
  expect_final_error(r, file_msg + "logits (nan for token 0) at position 4");
  EXPECT_EQ(r.out.find_first_not_of('\n'), std::string::npos) << r.out;
  // quantize refuses the NaN itself (naming the tensor) and writes nothing.
  r = run_lokal("quantize " + m + " " + q(tmp_.file("o.gguf")) + " q8_0 -t 1");
  expect_final_error(r, "blk.0.ffn_down.weight");
  EXPECT_FALSE(fs::exists(tmp_.file("o.gguf")));
  EXPECT_TRUE(lokal::test::read_file(path) == before) << "the input file changed";
}

// ---------------------------------------------------------------- valid files

TEST_F(ModelValidation, EverySharedModelPasses) {
  int n = 0;
  for (const char* sub : {"models/real", "models/synth"})
    for (const auto& e : fs::directory_iterator(data_path(sub))) {
      if (e.path().extension() != ".gguf") continue;
      SCOPED_TRACE(e.path().string());
      auto f = GGUFFile::open(e.path().string());
      lokal::ModelConfig c;
      EXPECT_NO_THROW(c = lokal::validate_model(*f));
      EXPECT_GT(c.n_layer, 0);
      ++n;
    }
  EXPECT_GE(n, 20);
}

TEST_F(ModelValidation, ExportedConfigMatchesTheTensors) {
  // A valid 1-layer cut of the model: export-hf writes num_hidden_layers 1, and the round trip converts.
  Variant one{[](GGUFWriter& w) { w.set_u32("llama.block_count", 1); },
              [](GGUFWriter& w, const GGUFTensorInfo& t) {
                if (t.name.rfind("blk.", 0) != 0 || t.name.rfind("blk.0.", 0) == 0) w.add_tensor(t);
              },
              nullptr};
  const std::string path = write("one-layer.gguf", one);
  CliResult r = run_lokal("export-hf " + q(path) + " -q -o " + q(tmp_.file("hf")));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string cfg = lokal::test::read_file(tmp_.file("hf/config.json"));
  EXPECT_NE(cfg.find("\"num_hidden_layers\": 1"), std::string::npos) << cfg;
  r = run_lokal("convert " + q(tmp_.file("hf")) + " -q -o " + q(tmp_.file("back.gguf")));
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_lokal("info " + q(tmp_.file("back.gguf")));
  EXPECT_EQ(r.rc, 0) << r.err;
}

}  // namespace
