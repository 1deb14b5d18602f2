// Golden-logit tests: lokal's forward pass against llama.cpp c392e50 on every model and
// prompt in ../shared/golden/logits (F32 KV cache, one batch, as the goldens were made).
//
// Tolerances (max |lokal - llama.cpp| over every logit of every position):
//  * F32 models: 1e-3. The goldens are exact math to ~1e-5 (shared README); what remains is
//    float summation order in our kernels.
//  * F16/BF16 models: 2e-2. We round activations to F16 before F16 products as ggml does in
//    its per-token path, which makes position 0 (and single-token decoding) match to ~5e-5;
//    at later positions of a batched prompt llama.cpp's batched F16 kernels add another
//    ~1e-2 that we do not reproduce (measured: 1.16e-2 on stories260K-f16, 2.8e-3 on
//    synth-llama-f16; exact math is 1.21e-2 / 3.05e-3 away, shared README).
//  * Quantized models: 0.3. We quantize activations to Q8_0/Q8_1/Q8_K exactly as ggml does
//    and use the same integer dot products, so most model/prompt pairs match to ~5e-5. Where
//    llama.cpp's batched kernels sum floats in another order, a 1e-7 difference can flip the
//    rounding of one activation into the next layer's 8-bit quantization, and on these small
//    random/trained models that moves logits by up to 0.2 (measured max 0.199, synth-qwen2-q6_k
//    p1). That is the same size as llama.cpp's own change when only its KV cache type changes
//    (0.1-0.4, shared README), and far below its 0.08-0.56 distance from exact math. The argmax
//    must agree wherever llama.cpp's top-2 gap exceeds the tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/threadpool.h"
#include "model/model.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Golden {
  std::string file;
  json j;
};

// If the shared data is missing, one parameter "MISSING.json" makes the suite fail loudly.
std::vector<std::string> golden_files() {
  std::vector<std::string> out;
  try {
    lokal::test::test_data_dir();
  } catch (const std::exception&) {
    return {"MISSING.json"};
  }
  for (const auto& e : fs::directory_iterator(lokal::test::test_data_dir() + "/golden/logits"))
    if (e.path().extension() == ".json") out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

bool contains(const std::string& s, const char* sub) { return s.find(sub) != std::string::npos; }

double tolerance_for(const std::string& model) {
  if (contains(model, "f32")) return 1e-3;
  if (contains(model, "f16") || contains(model, "bf16")) return 2e-2;
  return 0.3;  // quantized
}

class GoldenLogits : public ::testing::TestWithParam<std::string> {};

std::shared_ptr<lokal::Model> load_cached(const std::string& path) {
  static std::map<std::string, std::shared_ptr<lokal::Model>> cache;
  auto it = cache.find(path);
  if (it != cache.end()) return it->second;
  std::shared_ptr<lokal::Model> m(lokal::Model::load(path));
  cache[path] = m;
  return m;
}

TEST_P(GoldenLogits, MatchesLlamaCpp) {
  const std::string name = GetParam();
  json g = json::parse(lokal::test::read_file(lokal::test::test_data_dir() + "/golden/logits/" + name));
  const std::string model_rel = g["model"];
  const std::string model_id = fs::path(model_rel).stem().string();
  auto model = load_cached(lokal::test::data_path(model_rel));
  const auto& cfg = model->config();
  ASSERT_EQ(cfg.n_vocab, g["n_vocab"].get<int64_t>());

  // Tokens: lokal's tokenizer must give llama.cpp's tokens.
  std::vector<int32_t> tokens = g["tokens"].get<std::vector<int32_t>>();
  EXPECT_EQ(model->vocab().tokenize(g["prompt"].get<std::string>(), true, false), tokens) << "tokenization differs";

  const int64_t n = static_cast<int64_t>(tokens.size());
  lokal::ThreadPool pool(2);
  lokal::Forward fwd(*model, n + 40, pool, n);
  std::vector<float> logits(static_cast<size_t>(n * cfg.n_vocab));
  fwd.eval(tokens.data(), n, 0, true, logits.data());

  const double tol = tolerance_for(model_id);
  const auto& positions = g["positions"];
  const auto& rows = g["logits"];
  double max_diff = 0;
  int argmax_checked = 0;
  for (size_t r = 0; r < positions.size(); ++r) {
    const int64_t pos = positions[r];
    const auto& ref = rows[r];
    ASSERT_EQ(static_cast<int64_t>(ref.size()), cfg.n_vocab);
    const float* got = logits.data() + pos * cfg.n_vocab;
    int ref_best = 0, got_best = 0;
    float ref_first = -1e30f, ref_second = -1e30f;
    for (int64_t v = 0; v < cfg.n_vocab; ++v) {
      const float rv = static_cast<float>(ref[static_cast<size_t>(v)].get<double>());
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(rv - got[v])));
      if (rv > ref_first) {
        ref_second = ref_first;
        ref_first = rv;
        ref_best = static_cast<int>(v);
      } else if (rv > ref_second) {
        ref_second = rv;
      }
      if (got[v] > got[got_best]) got_best = static_cast<int>(v);
    }
    if (ref_first - ref_second > tol) {
      ++argmax_checked;
      EXPECT_EQ(got_best, ref_best) << "argmax differs at position " << pos << " (llama.cpp top-2 gap "
                                    << ref_first - ref_second << ")";
    }
  }
  EXPECT_LE(max_diff, tol) << model_id << ": max |logit diff| over " << positions.size() << " positions";
  RecordProperty("max_abs_diff", std::to_string(max_diff));
  std::printf("[ %s ] max |diff| = %.3g (tolerance %.3g), argmax checked at %d/%zu positions\n", name.c_str(),
              max_diff, tol, argmax_checked, positions.size());
}

struct Greedy {
  std::vector<int32_t> tokens;
  std::vector<float> gaps;  // our top-2 logit gap at each step
};

// Greedy continuation like llama.cpp's: one batch for the prompt, then single-token decodes.
Greedy run_greedy(const lokal::Model& model, const std::vector<int32_t>& prompt, size_t n_gen, lokal::DType cache) {
  const int64_t V = model.config().n_vocab;
  const int64_t n = static_cast<int64_t>(prompt.size());
  lokal::ThreadPool pool(2);
  lokal::Forward fwd(model, n + static_cast<int64_t>(n_gen) + 8, pool, n, cache, cache);
  std::vector<float> logits(static_cast<size_t>(V));
  fwd.eval(prompt.data(), n, 0, false, logits.data());
  Greedy g;
  for (size_t i = 0; i < n_gen; ++i) {
    int32_t best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    float second = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
      if (v != best) second = std::max(second, logits[static_cast<size_t>(v)]);
    g.gaps.push_back(logits[static_cast<size_t>(best)] - second);
    g.tokens.push_back(best);
    if (i + 1 < n_gen) fwd.eval(&best, 1, n + static_cast<int64_t>(i), false, logits.data());
  }
  return g;
}

// Real trained F32/F16 models must give llama.cpp's greedy text token for token. The one
// allowed exception is a step whose top-2 gap is below the logit tolerance of the model's type,
// where llama.cpp's own choice depends on its build: stories260K-f16 p2 step 17 has a gap of
// 0.0038, and a scalar (non-AVX) build of llama.cpp picks the same token as lokal there, its
// AVX-512 build the other. After such a step the contexts differ, so comparison stops there.
// Random and quantized models are only reported (near-ties are common there; the logit test
// covers them).
void check_greedy(const std::string& name, const std::string& model_id, const Greedy& got,
                  const std::vector<int32_t>& expect, double tol) {
  size_t same = 0;
  while (same < got.tokens.size() && got.tokens[same] == expect[same]) ++same;
  std::printf("[ %s ] greedy: %zu/%zu tokens identical%s\n", name.c_str(), same, expect.size(),
              same < got.tokens.size() ? (" (diverges where our top-2 gap is " + std::to_string(got.gaps[same]) + ")").c_str() : "");
  const bool must_match = model_id.rfind("stories260K", 0) == 0 || model_id == "babyllama-936K-f32" ||
                          (model_id.rfind("tinytales", 0) == 0 && (contains(model_id, "f32") || contains(model_id, "f16")));
  if (must_match && same < got.tokens.size()) {
    EXPECT_LT(got.gaps[same], tol) << "greedy continuation differs from llama.cpp at step " << same
                                   << " although the top-2 gap there is " << got.gaps[same];
  }
}

TEST_P(GoldenLogits, GreedyContinuation) {
  const std::string name = GetParam();
  json g = json::parse(lokal::test::read_file(lokal::test::test_data_dir() + "/golden/logits/" + name));
  const std::string model_rel = g["model"];
  const std::string model_id = fs::path(model_rel).stem().string();
  auto model = load_cached(lokal::test::data_path(model_rel));
  std::vector<int32_t> expect = g["greedy"]["tokens"].get<std::vector<int32_t>>();
  Greedy got = run_greedy(*model, g["tokens"].get<std::vector<int32_t>>(), expect.size(), lokal::DType::F32);
  check_greedy(name, model_id, got, expect, tolerance_for(model_id));
}

// With an F16 KV cache (llama.cpp's default) the continuation must match llama.cpp's
// `greedy_f16_kv`. F16 K/V moves logits by up to ~2.6e-2 (shared README), so near-ties below
// 3e-2 may go either way; F32 models only (quantized/random ones are reported).
TEST_P(GoldenLogits, GreedyContinuationF16Cache) {
  const std::string name = GetParam();
  json g = json::parse(lokal::test::read_file(lokal::test::test_data_dir() + "/golden/logits/" + name));
  const std::string model_rel = g["model"];
  const std::string model_id = fs::path(model_rel).stem().string();
  auto model = load_cached(lokal::test::data_path(model_rel));
  std::vector<int32_t> expect = g["greedy_f16_kv"]["tokens"].get<std::vector<int32_t>>();
  Greedy got = run_greedy(*model, g["tokens"].get<std::vector<int32_t>>(), expect.size(), lokal::DType::F16);
  check_greedy(name + " f16 kv", model_id, got, expect, std::max(3e-2, tolerance_for(model_id)));
}

INSTANTIATE_TEST_SUITE_P(All, GoldenLogits, ::testing::ValuesIn(golden_files()),
                         [](const testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param.substr(0, i.param.size() - 5);
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

}  // namespace
