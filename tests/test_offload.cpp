// GPU offload (model/offload.h, -ngl) against the CPU and against llama.cpp's golden logits, on whatever Vulkan
// device the machine has (Mesa's lavapipe where there is no GPU; scripts/setup.sh installs it). Without a device these
// tests fail, like test_vulkan's; LOKAL_TEST_NO_GPU=1 skips them.
//
// What differs between the device and the CPU, and so the tolerances:
//  * Weights: the device dequantizes every weight bit-identically to the CPU (test_vulkan), but multiplies by f32
//    activations, where the CPU (like llama.cpp) rounds activations to F16 before F16 products and quantizes them to
//    Q8_0 / Q8_K before quantized products. So for F32 models both are exact math up to f32 summation order; for F16
//    models the device is exact F16->F32 math, which the shared README measures at 1.2e-2 from llama.cpp (2e-2 is the
//    CPU's tolerance too); for quantized models the device is "exact dequantized math", which the README measures at
//    0.08-0.56 from llama.cpp's logits (synth-qwen2-q6_k: 0.558), so 0.6 there. Argmaxes are compared where the
//    golden top-2 gap exceeds the tolerance.
//  * RMS norm sums squares in f32 on the device (double on the CPU); attention sums in f32 in another order. Both are
//    ~1e-6 relative, far inside 1e-3 on logits of magnitude ~10.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <fstream>
#include <regex>
#include <sstream>

#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/quant.h"
#include "core/threadpool.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "model/model.h"
#include "runtime/kv_pool.h"
#include "support/gpu_test.h"
#include "support/serve_process.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace lokal;

namespace {


std::unique_ptr<Model> load(const std::string& rel, int ngl) {
  LoadOptions lo;
  lo.offload.n_gpu_layers = ngl;
  return Model::load(test::data_path(rel), lo);
}

// Logits of every position of `tokens` evaluated in micro-batches of `batch` from position 0, then `n_dec`
// single-token decode steps (their logits appended), with the given KV type. The decoded tokens are the argmax of the
// previous row (greedy) or, to compare two engines whose near-ties may choose apart, fixed ones from `tokens`.
std::vector<float> run(const Model& m, const std::vector<int32_t>& tokens, int n_dec, DType kv, int64_t batch = 0,
                       bool greedy = false) {
  const int64_t V = m.config().n_vocab, n = static_cast<int64_t>(tokens.size());
  ThreadPool pool(2);
  Forward f(m, n + n_dec + 8, pool, batch ? batch : n, kv, kv);
  std::vector<float> out(static_cast<size_t>((n + n_dec) * V));
  f.eval(tokens.data(), n, 0, true, out.data());
  for (int i = 0; i < n_dec; ++i) {
    const float* last = out.data() + (n - 1 + i) * V;
    const int32_t next = greedy ? static_cast<int32_t>(std::max_element(last, last + V) - last)
                                : tokens[static_cast<size_t>((7 * i + 3) % n)];
    f.eval(&next, 1, n + i, true, out.data() + (n + i) * V);
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
  return d;
}

std::vector<int32_t> story_tokens(const Model& m, int n) {
  std::vector<int32_t> t = m.vocab().tokenize(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
      "One day, she saw a big red ball under a tree and ran to get it.",
      true, false);
  t.resize(std::min<size_t>(t.size(), static_cast<size_t>(n)));
  return t;
}

// ---- golden logits with every layer and the output on the device ----

std::vector<std::string> golden_files() {
  std::vector<std::string> out;
  try {
    test::test_data_dir();
  } catch (const std::exception&) {
    return {"MISSING.json"};
  }
  for (const auto& e : fs::directory_iterator(test::test_data_dir() + "/golden/logits"))
    if (e.path().extension() == ".json") out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

bool contains(const std::string& s, const char* sub) { return s.find(sub) != std::string::npos; }

double gpu_tolerance(const std::string& model) {
  if (contains(model, "f32") || model == "stories260K") return 1e-3;
  if (contains(model, "f16") || contains(model, "bf16")) return 2e-2;
  return 0.6;  // quantized: exact dequantized math is up to 0.558 from llama.cpp (see the top)
}

// The logits of golden file `name` (every position of its prompt) against llama.cpp's: at most `tol` apart, and the
// same argmax wherever llama.cpp's best two logits are more than `tol` apart.
void check_golden(const std::string& name, const json& g, const std::vector<float>& logits, int64_t V, double tol,
                  const char* what) {
  double max_diff = 0;
  int checked = 0;
  const auto& positions = g["positions"];
  for (size_t r = 0; r < positions.size(); ++r) {
    const int64_t pos = positions[r];
    const auto& ref = g["logits"][r];
    const float* got = logits.data() + pos * V;
    int ref_best = 0, got_best = 0;
    float first = -1e30f, second = -1e30f;
    for (int64_t v = 0; v < V; ++v) {
      const float rv = static_cast<float>(ref[static_cast<size_t>(v)].get<double>());
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(rv - got[v])));
      if (rv > first) {
        second = first;
        first = rv;
        ref_best = static_cast<int>(v);
      } else if (rv > second) {
        second = rv;
      }
      if (got[v] > got[got_best]) got_best = static_cast<int>(v);
    }
    if (first - second > tol) {
      ++checked;
      EXPECT_EQ(got_best, ref_best) << "argmax differs at position " << pos;
    }
  }
  EXPECT_LE(max_diff, tol) << name;
  std::printf("[ %s ] %s: max |diff| = %.3g (tolerance %.3g), argmax checked at %d/%zu positions\n", name.c_str(),
              what, max_diff, tol, checked, positions.size());
}

class GpuGoldenLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuGoldenLogits, AllLayersOnTheDeviceMatchLlamaCpp) {
  LOKAL_NEED_GPU();
  const std::string name = GetParam();
  json g = json::parse(test::read_file(test::test_data_dir() + "/golden/logits/" + name));
  const std::string model_rel = g["model"];
  const std::string model_id = fs::path(model_rel).stem().string();
  static std::map<std::string, std::shared_ptr<Model>> cache;  // three prompts per model: load it once
  std::shared_ptr<Model>& model = cache[model_rel];
  if (!model) model = load(model_rel, 99);
  ASSERT_NE(model->device(), nullptr);
  ASSERT_EQ(model->device()->n_layers(), model->config().n_layer);
  ASSERT_TRUE(model->device()->output_on_device());
  std::vector<int32_t> tokens = g["tokens"].get<std::vector<int32_t>>();
  const std::vector<float> logits = run(*model, tokens, 0, DType::F32);  // the goldens use an F32 KV cache
  check_golden(name, g, logits, model->config().n_vocab, gpu_tolerance(model_id), "-ngl 99");
}

INSTANTIATE_TEST_SUITE_P(Golden, GpuGoldenLogits, ::testing::ValuesIn(golden_files()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param.substr(0, i.param.size() - 5);
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

// ---- the int8 path (gpu/kernels.h: quantize_q8 + matmul_q8) in the engine ----
// Forced on with LOKAL_GPU_INT8=1 (lavapipe runs it, not accelerated, so it is off there by default), the longest
// prompt of every golden model of a quantized type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K and the K-quant mixes;
// their F32/F16 tensors take the f32 path). The activations are quantized as the CPU and llama.cpp's CPU backend
// quantize them for each weight type (Q8_0 blocks of 32 for Q4_0..Q8_0, Q8_K superblocks of 256 for the K-quants)
// and the integer sums are theirs, so the path is held to the CPU's own golden tolerance for quantized models, 0.3
// (tests/test_golden_logits.cpp: most files match to ~5e-5; where a float summed in another order flips one
// activation code, logits move by up to ~0.2), not the f32 path's 0.6. Measured: ~5e-5 on 7 of the 22 files in one
// batch, at most 0.226 (synth-qwen2-q4_k_m, exactly the CPU's own distance there).

std::vector<std::string> int8_golden_files() {
  std::vector<std::string> out;
  for (const std::string& f : golden_files()) {
    if (f.find(".p64.") == std::string::npos) continue;
    for (const char* t : {"-q4_0", "-q4_1", "-q5_0", "-q5_1", "-q8_0", "-q2_k", "-q3_k_m", "-q4_k_m", "-q5_k_m", "-q6_k"})
      if (f.find(t) != std::string::npos) {
        out.push_back(f);
        break;
      }
  }
  if (out.empty()) out.push_back("MISSING.json");  // fails (no such file) rather than instantiating nothing
  return out;
}

class GpuInt8GoldenLogits : public ::testing::TestWithParam<std::string> {};

// The golden prompt in 8-token micro-batches (the int8 decode kernel, mvq_TYPE) and in one batch (the int8 tiles,
// mmq_TYPE), each within the tolerance of the f32 path.
TEST_P(GpuInt8GoldenLogits, DecodeAndPromptBatchesMatchLlamaCpp) {
  LOKAL_NEED_GPU();
  const std::string name = GetParam();
  json g = json::parse(test::read_file(test::test_data_dir() + "/golden/logits/" + name));
  const std::string model_rel = g["model"];
  setenv("LOKAL_GPU_INT8", "1", 1);
  std::unique_ptr<Model> model = load(model_rel, 99);
  unsetenv("LOKAL_GPU_INT8");
  ASSERT_NE(model->device(), nullptr);
  ASSERT_TRUE(model->device()->kernels().int8()) << model->device()->device().info().name;
  std::vector<int32_t> tokens = g["tokens"].get<std::vector<int32_t>>();
  const double tol = 0.3;  // the CPU's (above)
  const std::vector<float> few = run(*model, tokens, 0, DType::F32, gpu::Kernels::kFewTokens);
  check_golden(name, g, few, model->config().n_vocab, tol, "-ngl 99, int8 path, 8-token batches");
  const std::vector<float> tiled = run(*model, tokens, 0, DType::F32, 0);
  check_golden(name, g, tiled, model->config().n_vocab, tol, "-ngl 99, int8 path, one batch");
}

INSTANTIATE_TEST_SUITE_P(Golden, GpuInt8GoldenLogits, ::testing::ValuesIn(int8_golden_files()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param.substr(0, i.param.size() - 5);
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

// ---- every split point equals the CPU ----

struct SplitCase {
  const char* model;
  DType kv;
  double tol;
  bool int8 = false;  // the device's int8 path forced on (LOKAL_GPU_INT8=1)
};

// F32 models with an F32 cache: both sides are exact math up to f32 summation order (1e-3 as against the goldens).
// With an F16 cache the stored K/V are bit-identical on both sides (test_vulkan_attn), but the CPU rounds the query
// to F16 for its dot products with F16 keys and the device does not: a relative 2^-11 on each score, measured
// below 5e-3 on these logits; 2e-2 (the README's effect of an F16 cache itself) bounds it. A Q8_0 cache: the CPU
// also quantizes the query to Q8_0 (~0.4% per element) for its dot products with Q8_0 keys, the device keeps it f32;
// 5e-2 (a quarter of the README's measured effect of a Q8_0 instead of an F32 cache on these models). A quantized
// model: the CPU quantizes every activation to Q8_0/Q8_K (as llama.cpp) and the device does not, the difference the
// golden tolerance 0.3 of the CPU covers (README: 0.08-0.56 between the two kinds of arithmetic). The same models with
// the device's int8 path forced on and an F32 cache: the device quantizes activations as the CPU does (the same codes,
// test_vulkan's QuantizeMeetsItsSpecification) and its integer sums are the CPU's, so only float summation order
// differs; still, where that flips one activation code the logits move from that position on, which 0.3 covers as
// for the CPU against llama.cpp. Measured: Q4_K_M <= 8.6e-6 at every split point; Q4_0 4e-6 up to -ngl 3 and 0.07
// from position 24 on with -ngl 4 and 5 (one flipped code).
class SplitPoints : public ::testing::TestWithParam<SplitCase> {};

TEST_P(SplitPoints, EveryNumberOfGpuLayersEqualsTheCpu) {
  LOKAL_NEED_GPU();
  const SplitCase sc = GetParam();
  auto cpu = load(sc.model, 0);
  const ModelConfig& c = cpu->config();
  const std::vector<int32_t> tokens = story_tokens(*cpu, 40);
  ASSERT_GE(tokens.size(), 20u);
  // A batch of 16: the 40-token prompt takes three micro-batches (the second and third attend over earlier ones).
  const std::vector<float> ref = run(*cpu, tokens, 6, sc.kv, 16);
  for (int ngl = 1; ngl <= c.n_layer + 1; ++ngl) {
    if (sc.int8) setenv("LOKAL_GPU_INT8", "1", 1);
    auto m = load(sc.model, ngl);
    unsetenv("LOKAL_GPU_INT8");
    ASSERT_NE(m->device(), nullptr);
    EXPECT_EQ(m->device()->int8(), sc.int8 || gpu::Kernels::int8_by_default(m->device()->device().info()));
    EXPECT_EQ(m->device()->n_layers(), std::min<int64_t>(ngl, c.n_layer));
    EXPECT_EQ(m->first_device_layer(), c.n_layer - std::min<int64_t>(ngl, c.n_layer));
    EXPECT_EQ(m->device()->output_on_device(), ngl >= c.n_layer);
    const std::vector<float> got = run(*m, tokens, 6, sc.kv, 16);
    const double d = max_abs_diff(ref, got);
    EXPECT_LE(d, sc.tol) << sc.model << " -ngl " << ngl;
    std::printf("[ %s %s ] -ngl %d: max |diff| vs CPU %.3g\n", sc.model, type_name(sc.kv), ngl, d);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, SplitPoints,
    ::testing::Values(SplitCase{"models/real/stories260K.gguf", DType::F32, 1e-3},
                      SplitCase{"models/synth/synth-qwen2-f32.gguf", DType::F32, 1e-3},  // biases, neox rope
                      SplitCase{"models/real/tinytales-4m-f32.gguf", DType::F16, 2e-2},
                      SplitCase{"models/real/tinytales-4m-f32.gguf", DType::Q8_0, 5e-2},
                      SplitCase{"models/real/tinytales-4m-q4_k_m.gguf", DType::F16, 0.3},
                      SplitCase{"models/real/tinytales-4m-q4_k_m.gguf", DType::F32, 0.3, true},
                      SplitCase{"models/real/tinytales-4m-q4_0.gguf", DType::F32, 0.3, true}),
    [](const ::testing::TestParamInfo<SplitCase>& i) {
      std::string s = fs::path(i.param.model).stem().string() + "_" + type_name(i.param.kv) + (i.param.int8 ? "_int8" : "");
      for (char& c : s)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      return s;
    });

// ---- one input, readers of both activation scalings ----

// The int8 path quantizes a matrix input once per activation scaling among its readers (Q8_0-style blocks for
// Q4_0..Q8_0, Q8_K-style superblocks for the K-quants): no quantized file mixes them within one input's readers, so
// this test writes tinytales-4m F32 with each layer's q/k/v and gate/up in types of both families (wq Q8_0, wk Q4_K,
// wv Q4_1, gate Q5_K, up Q5_0, down Q6_K, wo Q4_0) and checks the int8 path with -ngl 99 against the CPU on the same
// file: the CPU quantizes each matrix's activations in its own scaling, so a reader handed the other family's codes
// (or codes overwritten by the next quantization) is far off (every reader given the Q8_0-style codes: 40.9), while
// the right codes give the CPU's integer sums (measured: ~1e-5 at positions 0-3 of the 40-token prompt in batches
// of 16, then 0.01-0.057 from position 4 on, where one activation code flips and the KV cache carries it). Tolerance
// 0.3 as the other int8 comparisons (one flipped code moves later logits by up to ~0.2).
TEST(GpuOffload, Int8PathQuantizesOncePerActivationScaling) {
  LOKAL_NEED_GPU();
  test::TempDir tmp("int8-mixed");
  const std::string path = tmp.file("tinytales-mixed.gguf");
  {
    auto f = GGUFFile::open(test::data_path("models/real/tinytales-4m-f32.gguf"));
    const std::map<std::string, DType> types = {{"attn_q", DType::Q8_0},   {"attn_k", DType::Q4_K},
                                                {"attn_v", DType::Q4_1},   {"ffn_gate", DType::Q5_K},
                                                {"ffn_up", DType::Q5_0},   {"ffn_down", DType::Q6_K},
                                                {"attn_output", DType::Q4_0}};
    GGUFWriter w;
    w.copy_metadata(*f);
    std::vector<std::vector<uint8_t>> store;
    store.reserve(f->tensors().size());
    int converted = 0;
    for (const GGUFTensorInfo& t : f->tensors()) {
      DType to = t.type;
      for (const auto& [part, ty] : types)
        if (t.name.find("." + part + ".") != std::string::npos) to = ty;
      if (to == t.type) {
        w.add_tensor(t);
        continue;
      }
      ASSERT_EQ(t.type, DType::F32) << t.name;
      store.emplace_back(row_size(to, t.ne[0]) * static_cast<size_t>(t.n_rows()));
      for (int64_t r = 0; r < t.n_rows(); ++r)
        quantize_row(to, reinterpret_cast<const float*>(t.data) + r * t.ne[0],
                     store.back().data() + r * row_size(to, t.ne[0]), t.ne[0]);
      w.add_tensor(t.name, to, std::vector<int64_t>(t.ne, t.ne + t.n_dims), store.back().data(), store.back().size());
      ++converted;
    }
    ASSERT_EQ(converted, 7 * 4);
    w.write(path);
  }
  LoadOptions lo;
  auto cpu = Model::load(path, lo);
  setenv("LOKAL_GPU_INT8", "1", 1);
  lo.offload.n_gpu_layers = 99;
  auto gpu = Model::load(path, lo);
  unsetenv("LOKAL_GPU_INT8");
  ASSERT_NE(gpu->device(), nullptr);
  ASSERT_TRUE(gpu->device()->int8());
  const std::vector<int32_t> tokens = story_tokens(*cpu, 40);
  const std::vector<float> ref = run(*cpu, tokens, 6, DType::F32, 16);
  const std::vector<float> got = run(*gpu, tokens, 6, DType::F32, 16);
  const double d = max_abs_diff(ref, got);
  EXPECT_LE(d, 0.3);
  std::printf("[ mixed scalings ] int8 path -ngl 99: max |diff| vs CPU %.3g\n", d);
}

// ---- greedy text identical to the CPU on the real F32/F16 models ----

// A long context: decode steps at positions ~700 split their attention into chunks (Kernels::attention_split;
// tinytales-4m has 4 heads, so one token is 4 (token, head) pairs) merged on the device. F32 weights and an F32
// cache: both sides are exact math up to f32 summation order, the 1e-3 of the F32 golden tolerance.
TEST(GpuOffload, LongContextSplitAttentionEqualsTheCpu) {
  LOKAL_NEED_GPU();
  const char* rel = "models/real/tinytales-4m-f32.gguf";
  auto cpu = load(rel, 0);
  auto gpu = load(rel, 99);
  const std::vector<int32_t> story = story_tokens(*cpu, 1000);
  std::vector<int32_t> prompt;
  while (prompt.size() < 700) prompt.insert(prompt.end(), story.begin() + (prompt.empty() ? 0 : 1), story.end());
  prompt.resize(700);
  const ModelConfig& c = cpu->config();
  gpu::Kernels::AttnShape as;
  as.n_head = c.n_head;
  as.n_head_kv = c.n_head_kv;
  as.head_dim = c.head_dim;
  as.head_dim_v = c.head_dim_v;
  ASSERT_GT(gpu::Kernels::attention_split(as, 1, 700).splits, 1) << "the decode steps must split";
  const std::vector<float> a = run(*cpu, prompt, 6, DType::F32, 128);
  const std::vector<float> b = run(*gpu, prompt, 6, DType::F32, 128);
  const double d = max_abs_diff(a, b);
  EXPECT_LE(d, 1e-3);
  std::printf("[ %s ] 700 positions + 6 split decode steps: max |diff| = %.3g\n", rel, d);
}

// Decode steps submit again the command buffer an earlier step built (gpu::CommandCache, the forward pass's in
// DeviceScratch) when they record the same commands: the logits are the bits of a run that builds every command
// buffer anew (LOKAL_GPU_REUSE=0), and every decode step after the first reused one. The int8 path forced and a
// 300-token context (split attention: its partial-sum scratch and merge are in the reused commands too).
TEST(GpuOffload, ReusedCommandBuffersGiveTheSameLogits) {
  LOKAL_NEED_GPU();
  const char* rel = "models/real/tinytales-4m-q4_k_m.gguf";
  setenv("LOKAL_GPU_INT8", "1", 1);
  auto gpu = load(rel, 99);
  unsetenv("LOKAL_GPU_INT8");
  ASSERT_TRUE(gpu->device() && gpu->device()->int8());
  const std::vector<int32_t> story = story_tokens(*gpu, 1000);
  std::vector<int32_t> prompt;
  while (prompt.size() < 300) prompt.insert(prompt.end(), story.begin() + (prompt.empty() ? 0 : 1), story.end());
  prompt.resize(300);
  const int n_dec = 12;
  setenv("LOKAL_GPU_REUSE", "0", 1);
  const auto s0 = gpu->device()->submit_stats();
  const std::vector<float> built = run(*gpu, prompt, n_dec, DType::F16, 128);
  unsetenv("LOKAL_GPU_REUSE");
  const auto s1 = gpu->device()->submit_stats();
  const std::vector<float> reused = run(*gpu, prompt, n_dec, DType::F16, 128);
  const auto s2 = gpu->device()->submit_stats();
  EXPECT_EQ(s1.reused, s0.reused);
  EXPECT_EQ(s2.reused - s1.reused, static_cast<uint64_t>(n_dec - 1));
  ASSERT_EQ(built.size(), reused.size());
  EXPECT_EQ(std::memcmp(built.data(), reused.data(), built.size() * sizeof(float)), 0);
  std::printf("[ %s ] %d decode steps: %llu command buffers reused, the logits bit-identical\n", rel, n_dec,
              static_cast<unsigned long long>(s2.reused - s1.reused));
}

// Matrices larger than one shader binding are cut into parts of rows (DeviceModel::Matrix), each multiplied into its
// slice of the output. LOKAL_GPU_MAX_BINDING lowers lavapipe's 128 MiB to 256 KiB: tinytales-4m's 2 MiB output
// becomes 8 parts, ffn_down (256 rows of 3 KiB) 4 parts of 80, 80, 80, 16 rows; the golden logits stay within the F32
// tolerance. Its Q8_0 file with the int8 path forced: the parts go through matmul_q8. `lokal run` with 1 MiB: the same
// text as the CPU and device bytes used = predicted (the parts' allocations add up to the whole matrix's).
TEST(GpuOffload, MatricesLargerThanABindingAreCutIntoParts) {
  LOKAL_NEED_GPU();
  struct EnvGuard {
    ~EnvGuard() {
      unsetenv("LOKAL_GPU_MAX_BINDING");
      unsetenv("LOKAL_GPU_INT8");
    }
  } guard;
  setenv("LOKAL_GPU_MAX_BINDING", "262144", 1);
  for (const char* which : {"f32", "q8_0"}) {
    SCOPED_TRACE(which);
    const std::string golden = std::string("tinytales-4m-") + which + ".p64.json";
    json g = json::parse(test::read_file(test::test_data_dir() + "/golden/logits/" + golden));
    if (std::string(which) == "q8_0") setenv("LOKAL_GPU_INT8", "1", 1);
    std::unique_ptr<Model> model = load(g["model"], 99);
    ASSERT_NE(model->device(), nullptr);
    EXPECT_EQ(model->device()->info().max_storage_buffer_bytes, 262144u);
    ASSERT_TRUE(model->device()->output_on_device());
    const DeviceModel::Matrix& out = model->device()->output();
    const DeviceModel::Matrix& down = model->device()->layer(0).w_down;
    if (std::string(which) == "f32") {
      EXPECT_EQ(out.parts.size(), 8u);
      EXPECT_EQ(down.parts.size(), 4u);
      EXPECT_EQ(down.part_rows, 80);
    } else {
      EXPECT_TRUE(model->device()->int8());
      EXPECT_EQ(out.parts.size(), 3u);  // 2048 rows of 272 bytes: 960 per part
    }
    std::vector<int32_t> tokens = g["tokens"].get<std::vector<int32_t>>();
    const int64_t batch = std::string(which) == "f32" ? 0 : gpu::Kernels::kFewTokens;
    const std::vector<float> logits = run(*model, tokens, 0, DType::F32, batch);
    check_golden(golden, g, logits, model->config().n_vocab, gpu_tolerance(std::string("tinytales-4m-") + which),
                 "-ngl 99, 256 KiB bindings");
  }
  unsetenv("LOKAL_GPU_INT8");
  setenv("LOKAL_GPU_MAX_BINDING", "1048576", 1);
  const std::string model = test::data_path("models/real/tinytales-4m-f32.gguf");
  const test::CliResult cpu = test::run_lokal("run -m " + model + " -p 'Once upon a time' -n 24 --temp 0");
  const test::CliResult gpu = test::run_lokal("run -m " + model + " -p 'Once upon a time' -n 24 --temp 0 -b 64 -ngl 99");
  ASSERT_EQ(cpu.rc, 0) << cpu.err;
  ASSERT_EQ(gpu.rc, 0) << gpu.err;
  EXPECT_EQ(gpu.out, cpu.out);
  EXPECT_NE(gpu.err.find("(output on the GPU)"), std::string::npos) << gpu.err;
  std::smatch mt;
  ASSERT_TRUE(std::regex_search(gpu.err, mt, std::regex(R"(\((\d+) bytes\) used, [0-9.]+ MiB \((\d+) bytes\) predicted)")))
      << gpu.err;
  EXPECT_EQ(mt[1].str(), mt[2].str()) << gpu.err;
}

TEST(GpuOffload, GreedyTextIdenticalToTheCpuOnRealModels) {
  LOKAL_NEED_GPU();
  for (const char* rel : {"models/real/stories260K.gguf", "models/real/stories260K-f16.gguf",
                          "models/real/tinytales-4m-f32.gguf", "models/real/tinytales-4m-f16.gguf",
                          "models/real/babyllama-936K-f32.gguf"}) {
    auto cpu = load(rel, 0);
    auto gpu = load(rel, 99);
    const std::vector<int32_t> prompt = story_tokens(*cpu, 12);
    const int n_gen = 40;
    const int64_t V = cpu->config().n_vocab;
    const std::vector<float> a = run(*cpu, prompt, n_gen, DType::F16, 0, true);
    const std::vector<float> b = run(*gpu, prompt, n_gen, DType::F16, 0, true);
    // The tokens each side chose (argmax of the previous row), and the CPU's top-2 gap at the first difference.
    const int64_t n = static_cast<int64_t>(prompt.size());
    for (int i = 0; i < n_gen; ++i) {
      const float* ra = a.data() + (n - 1 + i) * V;
      const float* rb = b.data() + (n - 1 + i) * V;
      const int64_t ta = std::max_element(ra, ra + V) - ra, tb = std::max_element(rb, rb + V) - rb;
      if (ta != tb) {
        std::vector<float> s(ra, ra + V);
        std::nth_element(s.begin(), s.begin() + 1, s.end(), std::greater<float>());
        // Allowed only at a near-tie (below the F16 tolerance), where the two summation orders may choose apart.
        EXPECT_LT(s[0] - s[1], 2e-2) << rel << ": greedy differs at step " << i;
        break;
      }
    }
  }
}

// ---- many sequences over a shared paged cache, copy-on-write pages ----

TEST(GpuOffload, ManySequencesAndCopiedPagesMatchTheCpu) {
  LOKAL_NEED_GPU();
  const char* rel = "models/real/tinytales-4m-f32.gguf";
  auto cpu = load(rel, 0);
  auto gpu = load(rel, 3);  // a split: CPU layers and device layers both hold part of every page
  ASSERT_LT(gpu->first_device_layer(), gpu->config().n_layer);
  ASSERT_GT(gpu->first_device_layer(), 0);
  const int64_t V = cpu->config().n_vocab;
  const std::vector<int32_t> toks = story_tokens(*cpu, 48);

  // Three sequences with different prompts and page tables (pages out of order), evaluated together; then sequence
  // 2's first page is copied to a free page (copy-on-write) and a fourth sequence continues from the copy.
  auto eval = [&](const Model& m) {
    ThreadPool pool(2);
    Forward f(m, pool, 64, 256);
    KVCache kv(m.config(), 12, DType::F16, DType::F16, m.device());
    std::vector<std::vector<int32_t>> pages = {{5, 1}, {0, 7}, {3, 9}, {11, 2}};
    std::vector<SeqPages> seqs;
    for (auto& p : pages) seqs.push_back({p.data(), static_cast<int64_t>(p.size())});
    std::vector<BatchEntry> e;
    for (int s = 0; s < 3; ++s)
      for (int i = 0; i < 30 + 5 * s; ++i)
        e.push_back({toks[static_cast<size_t>((i + 7 * s) % toks.size())], s, i, i % 9 == 0 || i == 29 + 5 * s});
    const int64_t n_logits = std::count_if(e.begin(), e.end(), [](const BatchEntry& b) { return b.logits; });
    std::vector<float> out(static_cast<size_t>((n_logits + 3) * V));
    f.eval_batch(e.data(), static_cast<int64_t>(e.size()), seqs.data(), 4, kv, out.data());
    kv.copy_page(11, 3);  // sequence 3 = a copy of sequence 2's first 40 positions... its first page (64 slots)
    std::vector<BatchEntry> more;
    for (int i = 0; i < 3; ++i) more.push_back({toks[static_cast<size_t>(i)], 3, 35 + i, true});
    // Sequence 3's positions 0..34 are page 11 = sequence 2's page 3 (the 35 positions sequence 2 wrote).
    f.eval_batch(more.data(), 3, seqs.data(), 4, kv, out.data() + n_logits * V);
    return out;
  };
  const std::vector<float> a = eval(*cpu), b = eval(*gpu);
  const double d = max_abs_diff(a, b);
  EXPECT_LE(d, 2e-2) << "F16 cache: see SplitPoints";
  std::printf("many sequences, -ngl 3 of %lld: max |diff| vs CPU %.3g\n",
              static_cast<long long>(cpu->config().n_layer), d);
}

// ---- the scheduler (lokal batch: several sequences sharing one paged cache, a shared prompt prefix) and speculative
// decoding with the draft on either side ----

TEST(GpuOffload, BatchAndSpeculativeDecodingGiveTheCpuText) {
  LOKAL_NEED_GPU();
  test::TempDir dir;
  const std::string model = test::data_path("models/real/tinytales-4m-f32.gguf");
  const std::string prompts = (dir.path() / "p.jsonl").string();
  {
    std::ofstream f(prompts);
    // Common prefixes: the pool shares their pages between sequences (and copies one when a sequence writes to it).
    for (const char* p : {"Once upon a time", "Once upon a time there was", "The king said", "Once upon a time",
                          "In the morning the little", "The king said to the queen"})
      f << json{{"prompt", p}, {"max_tokens", 20}, {"temperature", 0}}.dump() << "\n";
  }
  auto texts = [&](const std::string& extra) {
    const test::CliResult r = test::run_lokal("batch -m " + model + " -f " + prompts + " -np 4 -c 128 " + extra);
    EXPECT_EQ(r.rc, 0) << r.err;
    std::vector<std::string> out;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(json::parse(line)["text"].get<std::string>());
    return out;
  };
  const std::vector<std::string> cpu = texts("");
  ASSERT_EQ(cpu.size(), 6u);
  EXPECT_EQ(texts("-ngl 99"), cpu);
  EXPECT_EQ(texts("-ngl 2"), cpu);

  // Speculative decoding (greedy output equals plain decoding): target split, draft on the device; target on the
  // device, draft (another vocabulary) on the CPU.
  const std::string draft = test::data_path("models/real/tinytales-draft-v1024-f32.gguf");
  auto run = [&](const std::string& extra) {
    const test::CliResult r = test::run_lokal("run -m " + model + " -p 'Once upon a time' -n 40 --temp 0 " + extra);
    EXPECT_EQ(r.rc, 0) << r.err;
    return r;
  };
  const std::string plain = run("").out;
  const test::CliResult a = run("-md " + draft + " -ngl 2 -ngld 99");
  EXPECT_EQ(a.out, plain);
  EXPECT_NE(a.err.find("gpu: draft 2 of 2 layers"), std::string::npos) << a.err;
  const test::CliResult b = run("-md " + draft + " -ngl 99 -ngld 0");
  EXPECT_EQ(b.out, plain);
  EXPECT_EQ(b.err.find("gpu: draft"), std::string::npos) << b.err;
}

// ---- lokal serve: a model offloaded by its [models.NAME] table beside one on the CPU ----

TEST(GpuOffload, ServeOffloadsPerModelAndAnswersAsTheCpu) {
  LOKAL_NEED_GPU();
  test::TempDir dir;
  const std::string model = test::data_path("models/real/tinytales-4m-f32.gguf");
  const std::string cfg = dir.file("serve.toml");
  std::ofstream(cfg) << "[models.gpu]\nmodel = \"" << model << "\"\ngpu_layers = 99\npinned = true\n"
                     << "[models.cpu]\nmodel = \"" << model << "\"\npinned = true\n";
  test::Server s({"--config", cfg, "--parallel", "2"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client(120);
  std::map<std::string, std::string> text;
  for (const char* m : {"gpu", "cpu"}) {
    int st = 0;
    const auto r = test::post(c, "/v1/completions",
                        {{"model", m}, {"prompt", "Once upon a time"}, {"max_tokens", 16}, {"temperature", 0}}, &st);
    ASSERT_EQ(st, 200) << r.dump();
    text[m] = r["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text["gpu"], text["cpu"]);
  // Ollama's /api/ps: the device bytes (size_vram) and layers of the offloaded model; none for the other.
  auto r = c.Get("/api/ps");
  ASSERT_TRUE(r);
  const json ps = json::parse(r->body);
  for (const json& m : ps["models"]) {
    if (m["name"] == "gpu") {
      EXPECT_EQ(m["gpu_layers"], 4) << m.dump();
      EXPECT_GT(m["size_vram"].get<uint64_t>(), 14u << 20) << m.dump();  // 14 MiB of weights + KV + scratch
    } else {
      EXPECT_EQ(m["size_vram"], 0) << m.dump();
    }
  }
  EXPECT_EQ(ps["models"].size(), 2u) << ps.dump();
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// ---- errors ----

// serve --vram: the models' predicted device memory shares one budget beside --ram. Three offloaded models of which
// any two fit the budget: the third evicts the least recently used idle one (as the RAM budget does); the
// prediction is what each loaded model then really uses on the device (/api/ps size_vram); a model over the whole
// budget is refused at start.
TEST(GpuOffload, ServeVramBudgetEvictsToMakeRoom) {
  LOKAL_NEED_GPU();
  test::TempDir dir;
  const std::string a = test::data_path("models/real/tinytales-4m-f32.gguf");
  const std::string b = test::data_path("models/real/tinytales-4m-f16.gguf");
  const std::string c3 = test::data_path("models/real/tinychat-4m-f32.gguf");
  auto config = [&](const std::string& head) {
    const std::string cfg = dir.file("vram-" + std::to_string(head.size()) + ".toml");
    std::ofstream(cfg) << head << "[models.a]\nmodel = \"" << a << "\"\ngpu_layers = 99\n"
                       << "[models.b]\nmodel = \"" << b << "\"\ngpu_layers = 99\n"
                       << "[models.c]\nmodel = \"" << c3 << "\"\ngpu_layers = 99\n";
    return cfg;
  };
  // The predictions, from a server without a budget.
  std::map<std::string, uint64_t> vram;
  {
    test::Server s({"--config", config("")});
    ASSERT_GT(s.port(), 0) << s.log();
    auto c = s.client(60);
    auto r = c.Get("/v1/models");
    ASSERT_TRUE(r);
    const json models = json::parse(r->body);
    for (const json& m : models["data"])
      if (!m.contains("alias_of")) vram[m["id"].get<std::string>()] = m["meta"]["vram_bytes"].get<uint64_t>();
    ASSERT_EQ(vram.size(), 3u) << r->body;
    EXPECT_EQ(s.stop(), 0) << s.log();
  }
  ASSERT_EQ(vram.size(), 3u);
  const uint64_t budget = std::max({vram["a"] + vram["b"], vram["a"] + vram["c"], vram["b"] + vram["c"]});
  ASSERT_LT(budget, vram["a"] + vram["b"] + vram["c"]);
  test::Server s({"--config", config("vram = \"" + std::to_string(budget) + "\"\n"), "--metrics"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client(120);
  auto state = [&] {
    std::map<std::string, uint64_t> loaded;  // name -> size_vram
    auto r = c.Get("/api/ps");
    const json ps = r ? json::parse(r->body) : json::object();
    if (r)
      for (const json& m : ps["models"]) loaded[m["name"].get<std::string>()] = m["size_vram"].get<uint64_t>();
    return loaded;
  };
  int st = 0;
  for (const char* m : {"a", "b", "a", "c"}) {
    test::post(c, "/v1/completions", {{"model", m}, {"prompt", "Once upon a time"}, {"max_tokens", 4}}, &st);
    EXPECT_EQ(st, 200) << m;
  }
  const auto loaded = state();  // c needed room: b, the least recently used, went
  EXPECT_EQ(loaded.size(), 2u);
  EXPECT_EQ(loaded.count("b"), 0u);
  for (const auto& [name, bytes] : loaded) EXPECT_EQ(bytes, vram[name]) << name << ": used = predicted";
  auto r = c.Get("/api/ps");
  ASSERT_TRUE(r);
  const json mem = json::parse(r->body)["memory"];
  EXPECT_EQ(mem["vram_budget_bytes"].get<uint64_t>(), budget);  // a plain size: every device's budget
  EXPECT_EQ(mem["vram_device_budget_bytes"], json::object());
  uint64_t sum = 0;
  for (const auto& [name, bytes] : loaded) sum += vram[name];
  EXPECT_EQ(mem["vram_predicted_bytes"], json({{"0", sum}})) << mem.dump();  // all on device 0
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("lokal_predicted_device_memory_bytes{device=\"0\"} " + std::to_string(sum) + "\n"),
            std::string::npos) << metrics->body;
  EXPECT_EQ(s.stop(), 0) << s.log();
  // One model over the whole budget: refused at start, with the numbers.
  const test::CliResult bad = test::run_lokal("serve --config " + config("vram = \"1MiB\"\n") + " --port 0", 60);
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("more than --vram 1MiB"), std::string::npos) << bad.err;
}

// serve --vram per GPU (each GPU its own budget, a draft on the other GPU, evictions by GPU) is tested with two real
// devices in test_multi_gpu.cpp. Here: a malformed per-GPU budget is a clear error.
TEST(GpuOffload, MalformedVramBudgetIsAClearError) {
  LOKAL_NEED_GPU();
  test::TempDir dir;
  const std::string cfg = dir.file("bad.toml");
  std::ofstream(cfg) << "vram = \"1=2GiB,1=3GiB\"\n[models.a]\nmodel = \""
                     << test::data_path("models/real/tinytales-4m-f32.gguf") << "\"\ngpu_layers = 99\n";
  const test::CliResult r = test::run_lokal("serve --config " + cfg + " --port 0", 60);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("device 1 is given twice"), std::string::npos) << r.err;
}

TEST(GpuOffload, KvTypeWithoutAGpuKernelIsAClearError) {
  LOKAL_NEED_GPU();
  auto m = load("models/real/tinytales-4m-f32.gguf", 2);
  ThreadPool pool(1);
  for (DType t : {DType::Q4_0, DType::BF16}) {  // the CPU has these cache types, the device does not
    try {
      Forward f(*m, 64, pool, 8, t, t);
      ADD_FAILURE() << "a " << type_name(t) << " cache on the device was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("is not supported on the GPU (use f32, f16 or q8_0)"), std::string::npos)
          << e.what();
    }
  }
  // From the command line the planner says it before anything loads: run, plan, and serve naming the model.
  const std::string model = test::data_path("models/real/tinytales-4m-f32.gguf");
  test::expect_one_line_error(test::run_lokal("run -m " + model + " -p hi -n 2 -ngl 99 -ctk q4_0", 60),
                              "-ngl 99: a q4_0 KV cache cannot go on the GPU", true);
  test::expect_one_line_error(test::run_lokal("plan -m " + model + " -ngl 2 -ctv q4_0 --ram 1GiB", 60),
                              "-ngl 2: a q4_0 KV cache cannot go on the GPU", true);
  test::TempDir dir;
  const std::string cfg = dir.file("q4.toml");
  std::ofstream(cfg) << "[models.a]\nmodel = \"" << model << "\"\ngpu_layers = 99\ncache_type_k = \"q4_0\"\n"
                     << "[models.b]\nmodel = \"" << model << "\"\n";
  test::expect_one_line_error(test::run_lokal("serve --config " + cfg + " --port 0", 60),
                              "model 'a': -ngl 99: a q4_0 KV cache cannot go on the GPU", true);
}

// A cache the device cannot hold (one layer's K above what one shader binding may see on lavapipe, 128 MiB; a real
// GPU's limit is usually 4 GiB) is refused with the numbers, before any generation, not a crash.
TEST(GpuOffload, TooLargeForTheDeviceIsAClearError) {
  LOKAL_NEED_GPU();
  const auto devs = gpu::list_devices();
  ASSERT_FALSE(devs.empty());
  const uint64_t limit = devs[0].max_storage_buffer_bytes;
  // tinytales: 2 KV heads x 64 = 128 elements per position and layer, f32: 512 bytes.
  const int64_t ctx = static_cast<int64_t>(limit / 512 + 4096);
  if (ctx > (int64_t(1) << 24)) GTEST_SKIP() << "this device's binding limit is beyond any context lokal accepts";
  const test::CliResult r = test::run_lokal("run -m " + test::data_path("models/real/tinytales-4m-f32.gguf") +
                                            " -p hi -n 2 -ngl 99 -ctk f32 -ctv f32 --allow-long-ctx -c " +
                                            std::to_string(ctx));
  test::expect_one_line_error(r, "is more than one shader binding of", true);
  EXPECT_NE(r.err.find("use a shorter context or a smaller KV type"), std::string::npos) << r.err;
}

TEST(GpuOffload, NoDeviceIsAClearErrorAndCpuStillWorks) {
  test::TempDir dir;
  const std::string model = test::data_path("models/real/stories260K.gguf");
  // No Vulkan loader at all: -ngl says so; without -ngl the same command runs on the CPU.
  setenv("LOKAL_VULKAN_LOADER", (dir.path().string() + "/none.so").c_str(), 1);
  const test::CliResult bad = test::run_lokal("run -m " + model + " -p 'Once upon' -n 4 -ngl 99 --temp 0");
  const test::CliResult cpu = test::run_lokal("run -m " + model + " -p 'Once upon' -n 4 --temp 0");
  unsetenv("LOKAL_VULKAN_LOADER");
  test::expect_one_line_error(bad, "no GPU to offload to", true);
  EXPECT_NE(bad.err.find("-ngl 99"), std::string::npos) << bad.err;
  EXPECT_EQ(cpu.rc, 0) << cpu.err;
  // serve refuses it at start too (not at the first request).
  setenv("LOKAL_VULKAN_LOADER", (dir.path().string() + "/none.so").c_str(), 1);
  const test::CliResult srv = test::run_lokal("serve -m " + model + " -ngl 99 --port 0", 60);
  unsetenv("LOKAL_VULKAN_LOADER");
  test::expect_one_line_error(srv, "puts layers on GPU 0: no GPU to offload to", true);
}

TEST(GpuOffload, RunReportsTheDeviceAndPrintsTheCpuText) {
  LOKAL_NEED_GPU();
  const std::string model = test::data_path("models/real/tinytales-4m-f32.gguf");
  const test::CliResult cpu = test::run_lokal("run -m " + model + " -p 'Once upon a time' -n 24 --temp 0");
  const test::CliResult gpu = test::run_lokal("run -m " + model + " -p 'Once upon a time' -n 24 --temp 0 -ngl 99");
  ASSERT_EQ(cpu.rc, 0) << cpu.err;
  ASSERT_EQ(gpu.rc, 0) << gpu.err;
  EXPECT_EQ(gpu.out, cpu.out);
  EXPECT_NE(gpu.err.find(" layers on "), std::string::npos) << gpu.err;
  EXPECT_NE(gpu.err.find("(output on the GPU)"), std::string::npos) << gpu.err;
  EXPECT_NE(gpu.err.find("gpu memory: weights"), std::string::npos) << gpu.err;
  EXPECT_EQ(cpu.err.find("gpu:"), std::string::npos) << cpu.err;
  // The device memory used equals lokal plan's prediction to the byte (whole and split).
  for (const char* ngl : {"99", "2"}) {
    const test::CliResult r = test::run_lokal("run -m " + model + " -p 'Once upon a time' -n 4 --temp 0 -ngl " + ngl);
    ASSERT_EQ(r.rc, 0) << r.err;
    std::smatch mt;
    ASSERT_TRUE(std::regex_search(r.err, mt, std::regex(R"(\((\d+) bytes\) used, [0-9.]+ MiB \((\d+) bytes\) predicted)")))
        << r.err;
    EXPECT_EQ(mt[1].str(), mt[2].str()) << "-ngl " << ngl << ": " << r.err;
  }
  // lokal plan --vram picks the layers that fit: all of them with room, two with room for two.
  const test::CliResult all = test::run_lokal("plan -m " + model + " --ram 1GiB --vram 1GiB -c 256 --json");
  ASSERT_EQ(all.rc, 0) << all.err;
  const json ja = json::parse(all.out);
  EXPECT_EQ(ja["settings"]["n_gpu_layers"], 4);
  EXPECT_TRUE(ja["gpu_output"].get<bool>());
  const uint64_t two = [&] {
    const test::CliResult r = test::run_lokal("plan -m " + model + " --ram 1GiB -ngl 2 -c 256 --json");
    EXPECT_EQ(r.rc, 0) << r.err;
    return json::parse(r.out)["gpu_total_bytes"].get<uint64_t>();
  }();
  const test::CliResult some = test::run_lokal("plan -m " + model + " --ram 1GiB --vram " + std::to_string(two) +
                                               " -c 256 --json");
  ASSERT_EQ(some.rc, 0) << some.err;
  EXPECT_EQ(json::parse(some.out)["settings"]["n_gpu_layers"], 2);
  EXPECT_LT(json::parse(some.out)["gpu_total_bytes"].get<uint64_t>(), ja["gpu_total_bytes"].get<uint64_t>());
}

}  // namespace
