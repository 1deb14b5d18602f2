// Memory planning (engine/plan.h, `lokal plan`, `lokal run --ram`), the byte accounting it relies on, predicted vs
// measured peak RSS, and the context-overflow policies of Session.
#include <gtest/gtest.h>

#include <fstream>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "runtime/plan.h"
#include "runtime/session.h"
#include "tools/synth.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using namespace lokal;
using lokal::test::data_path;
using lokal::test::run_lokal;

namespace {

constexpr uint64_t MiB = 1024 * 1024;

ModelFacts facts(const std::string& rel) { return ModelFacts::read(data_path(rel)); }

// A model with made-up shapes, for pure planning tests (no file).
ModelFacts fake_model(const std::string& name, int64_t n_params, double bpw, int64_t n_ctx_train = 4096) {
  ModelFacts m;
  m.path = name;
  m.cfg.arch = "llama";
  m.cfg.n_vocab = 32000;
  m.cfg.n_embd = 2048;
  m.cfg.n_layer = 22;
  m.cfg.n_head = 32;
  m.cfg.n_head_kv = 4;
  m.cfg.head_dim = m.cfg.head_dim_v = 64;
  m.cfg.n_ff = 5632;
  m.cfg.n_ctx_train = n_ctx_train;
  m.n_params = n_params;
  m.tensor_bytes = static_cast<uint64_t>(static_cast<double>(n_params) * bpw / 8.0);
  m.file_bytes = m.tensor_bytes + 2 * MiB;
  m.n_tokens = 32000;
  m.token_text_bytes = 200000;
  m.max_act_row_bytes = 5984;
  m.type_label = name;
  return m;
}

}  // namespace

TEST(Plan, ParseByteSize) {
  EXPECT_EQ(parse_byte_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_byte_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_byte_size("2 gb"), 2000000000ull);
  EXPECT_EQ(parse_byte_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("1.5MiB"), 3ull << 19);
  EXPECT_EQ(parse_byte_size("800000000"), 800000000ull);
  EXPECT_EQ(parse_byte_size("12KB"), 12000ull);
  for (const char* bad : {"", "GiB", "-1G", "2XB", "1..5G", "1e9", "two"}) EXPECT_THROW(parse_byte_size(bad), Error) << bad;
}

// The estimate's parts are the same functions the loader and the forward pass allocate with: KV exactly
// KVCache::bytes_for, compute exactly what a Forward of these settings holds.
TEST(Plan, EstimateMatchesWhatIsAllocated) {
  for (const char* rel : {"models/real/tinytales-4m-q4_k_m.gguf", "models/real/stories260K.gguf",
                          "models/synth/synth-qwen2-q8_0.gguf"}) {
    const ModelFacts f = facts(rel);
    auto model = Model::load(data_path(rel));
    EXPECT_EQ(f.max_act_row_bytes, model->max_act_row_bytes()) << rel;
    for (auto kv : {std::pair{DType::F16, DType::F16}, std::pair{DType::Q8_0, DType::Q4_0}}) {
      if (model->config().head_dim % 32 != 0 && kv.first != DType::F16) continue;
      SessionOptions so;
      so.n_ctx = 128;
      so.n_threads = 2;
      so.n_batch = 64;
      so.cache_type_k = kv.first;
      so.cache_type_v = kv.second;
      Session s(*model, so);
      s.feed(model->vocab().tokenize("Once upon a time there was a cat", true, false));
      RunSettings rs{128, kv.first, kv.second, 64, 2};
      const MemoryEstimate e = estimate_memory(f, rs);
      EXPECT_EQ(e.kv_bytes, s.kv().bytes()) << rel;
      EXPECT_EQ(e.kv_k_bytes, s.kv().bytes_k()) << rel;
      EXPECT_EQ(e.kv_k_bytes, KVCache::bytes_for(model->config(), 128, kv.first, DType::F32) -
                                  KVCache::bytes_for(model->config(), 128, DType::F32, DType::F32) / 2)
          << rel;
      EXPECT_EQ(e.compute_bytes, s.scratch_bytes() + s.logits().size() * sizeof(float)) << rel;
      EXPECT_EQ(e.weights_bytes, fs::file_size(data_path(rel))) << rel;  // these files keep every norm in F32
      EXPECT_EQ(e.total_bytes, e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes);
    }
  }
}

TEST(Plan, PrefersQualityThenContextThenKvType) {
  PlanRequest r;
  r.models = {fake_model("q4", 1'100'000'000, 4.5), fake_model("q8", 1'100'000'000, 8.5)};
  r.n_threads = 2;
  const RunSettings s4k{4096, DType::F16, DType::F16, kDefaultBatchSize, 2};  // the first batch tried
  const uint64_t q8_4k = estimate_memory(r.models[1], s4k).total_bytes;
  const uint64_t q4_4k = estimate_memory(r.models[0], s4k).total_bytes;

  r.ram_bytes = q8_4k;  // exactly enough for the best option
  Plan p = make_plan(r);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.chosen.model, 1u);  // more bits per weight first, whatever the order given
  EXPECT_EQ(p.chosen.settings.n_ctx, 4096);
  EXPECT_EQ(p.chosen.settings.type_k, DType::F16);
  EXPECT_EQ(p.tried.size(), 1u);

  // One byte less: a smaller prompt batch first (only the compute buffers shrink), at the full context and f16.
  r.ram_bytes = q8_4k - 1;
  p = make_plan(r);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.chosen.model, 1u);
  EXPECT_EQ(p.chosen.settings.n_ctx, 4096);
  EXPECT_EQ(p.chosen.settings.type_k, DType::F16);
  EXPECT_EQ(p.chosen.settings.n_batch, kDefaultBatchSize / 2);
  EXPECT_LE(p.chosen.total_bytes, r.ram_bytes);
  EXPECT_FALSE(p.tried.front().fits);

  // Less than the smallest f16 batch can make up for: a q8_0 cache at the full context, batch 256 (the largest that
  // fits after the default 512).
  r.ram_bytes = estimate_memory(r.models[1], RunSettings{4096, DType::Q8_0, DType::Q8_0, 256, 2}).total_bytes;
  ASSERT_LT(r.ram_bytes, estimate_memory(r.models[1], RunSettings{4096, DType::F16, DType::F16, 32, 2}).total_bytes);
  p = make_plan(r);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.chosen.model, 1u);
  EXPECT_EQ(p.chosen.settings.n_ctx, 4096);
  EXPECT_EQ(p.chosen.settings.type_k, DType::Q8_0);
  EXPECT_EQ(p.chosen.settings.type_v, DType::Q8_0);
  EXPECT_EQ(p.chosen.settings.n_batch, 256);

  // Between the two: the q4 model at full context and f16 cache beats the q8 model at a context below 2048.
  const uint64_t q8_2k_q4kv =
      estimate_memory(r.models[1], RunSettings{2048, DType::Q4_0, DType::Q4_0, 32, 2}).total_bytes;
  ASSERT_GT(q8_2k_q4kv, q4_4k) << "the fake shapes no longer separate the tiers";
  r.ram_bytes = q4_4k;
  p = make_plan(r);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.chosen.model, 0u);
  EXPECT_EQ(p.chosen.settings.n_ctx, 4096);
  EXPECT_EQ(p.chosen.settings.type_k, DType::F16);
  for (const auto& c : p.tried) {
    if (c.model == 1) {
      EXPECT_GE(c.settings.n_ctx, 2048) << "tier 1 must not shrink the context below 2048";
    }
    EXPECT_EQ(c.fits, c.total_bytes <= r.ram_bytes);
  }
  // The same request gives the same plan (pure).
  const Plan again = make_plan(r);
  EXPECT_EQ(again.chosen.total_bytes, p.chosen.total_bytes);
  EXPECT_EQ(again.tried.size(), p.tried.size());
  EXPECT_EQ(again.reason, p.reason);
}

TEST(Plan, FixedSettingsAreNeverChangedAndRefusalGivesNumbers) {
  PlanRequest r;
  r.models = {fake_model("q4", 1'100'000'000, 4.5)};
  r.n_threads = 2;
  r.n_ctx = 8192;
  r.type_k = DType::Q8_0;
  r.type_v = DType::Q8_0;
  r.ram_bytes = 64ull << 30;
  Plan p = make_plan(r);
  ASSERT_TRUE(p.fits);
  EXPECT_EQ(p.chosen.settings.n_ctx, 8192);
  EXPECT_EQ(p.chosen.settings.type_v, DType::Q8_0);
  EXPECT_FALSE(p.notes.empty());  // 8192 > the trained 4096: said so

  r.ram_bytes = 300 * MiB;  // the weights alone are ~590 MiB
  p = make_plan(r);
  EXPECT_FALSE(p.fits);
  for (const auto& c : p.tried) {
    EXPECT_EQ(c.settings.n_ctx, 8192);
    EXPECT_EQ(c.settings.type_k, DType::Q8_0);
    EXPECT_EQ(c.settings.type_v, DType::Q8_0);
  }
  EXPECT_NE(p.reason.find("nothing fits in 300.0 MiB"), std::string::npos) << p.reason;
  EXPECT_NE(p.reason.find("needs"), std::string::npos) << p.reason;

  // Invalid fixed settings are errors, not silent substitutions.
  PlanRequest bad = r;
  bad.models[0].cfg.head_dim = bad.models[0].cfg.head_dim_v = 16;
  EXPECT_THROW(make_plan(bad), Error);
  EXPECT_THROW(make_plan(PlanRequest{}), Error);
}

TEST(Plan, DraftAndVramAndMlockAreAccounted) {
  PlanRequest r;
  r.models = {fake_model("target", 1'100'000'000, 4.5)};
  r.draft = fake_model("draft", 100'000'000, 8.5);
  r.n_threads = 2;
  r.n_ctx = 2048;
  r.ram_bytes = 64ull << 30;
  r.vram_bytes = 12ull << 30;
  r.mlock = true;
  r.mlock_limit_bytes = 8 * MiB;
  const Plan p = make_plan(r);
  ASSERT_TRUE(p.fits);
  // The draft as speculative decoding runs it (runtime/speculative.h: ModelDrafter): the chosen context, one cache per
  // sequence, micro-batches of at most 64 tokens; its weights once.
  RunSettings one = p.chosen.settings;
  one.n_batch = 64;
  const MemoryEstimate d = estimate_memory(*r.draft, one);
  EXPECT_EQ(p.chosen.draft_mem.weights_bytes, d.weights_bytes);
  EXPECT_EQ(p.chosen.draft_mem.kv_bytes, d.kv_bytes);
  EXPECT_EQ(p.chosen.draft_mem.compute_bytes, d.compute_bytes);
  EXPECT_EQ(p.chosen.draft_mem.gpu_total_bytes, d.gpu_total_bytes);
  EXPECT_EQ(p.chosen.total_bytes, p.chosen.mem.total_bytes + d.weights_bytes + d.kv_bytes + d.compute_bytes +
                                      p.chosen.draft_mem.overhead_bytes);
  EXPECT_LT(p.chosen.draft_mem.overhead_bytes, d.overhead_bytes);  // one process: no second process base
  EXPECT_EQ(p.chosen.gpu_bytes, p.chosen.mem.gpu_total_bytes + d.gpu_total_bytes);
  // Three sequences: three caches and three sets of buffers (each sequence drafts with its own), one set of weights.
  RunSettings three = p.chosen.settings;
  three.n_parallel = 3;
  const MemoryEstimate d3 = estimate_draft_memory(*r.draft, three);
  EXPECT_EQ(d3.weights_bytes, d.weights_bytes);
  EXPECT_EQ(d3.gpu_weights_bytes, d.gpu_weights_bytes);
  EXPECT_EQ(d3.kv_bytes, 3 * d.kv_bytes);
  EXPECT_EQ(d3.compute_bytes, 3 * d.compute_bytes);
  EXPECT_EQ(d3.gpu_kv_bytes, 3 * d.gpu_kv_bytes);
  EXPECT_EQ(d3.gpu_compute_bytes, 3 * d.gpu_compute_bytes);
  EXPECT_GT(d3.gpu_kv_bytes, 0u);
  std::string notes;
  for (const auto& n : p.notes) notes += n + "\n";
  // The VRAM budget holds everything: every layer and the output go to the GPU, and the RAM total shrinks by them.
  EXPECT_NE(notes.find("GPU: 22 of 22 layers and the output (-ngl 22)"), std::string::npos) << notes;
  EXPECT_EQ(p.chosen.settings.n_gpu_layers, 22);
  EXPECT_GT(p.chosen.gpu_bytes, 0u);
  EXPECT_LE(p.chosen.gpu_bytes, r.vram_bytes);
  EXPECT_NE(notes.find("--mlock would be refused"), std::string::npos) << notes;
}

// A model of given shapes at a given size per weight, for planning tests (no file): every layer's matrices equal in
// size, the token embedding and output matrix as large as the vocabulary makes them.
ModelFacts shaped(const std::string& name, ModelConfig c, double bpw, bool tied) {
  ModelFacts m;
  m.path = name;
  m.cfg = c;
  const uint64_t per_layer_params = static_cast<uint64_t>(
      c.n_embd * (c.n_embd_q() + c.n_embd_k() + c.n_embd_v()) + c.n_head * c.head_dim_v * c.n_embd + 3 * c.n_embd * c.n_ff);
  const uint64_t embd_params = static_cast<uint64_t>(c.n_vocab * c.n_embd);
  m.n_params = static_cast<int64_t>(per_layer_params * c.n_layer + embd_params * (tied ? 1 : 2));
  const auto bytes = [&](uint64_t params) { return static_cast<uint64_t>(static_cast<double>(params) * bpw / 8.0); };
  m.layer_matrix_bytes.assign(static_cast<size_t>(c.n_layer), bytes(per_layer_params));
  m.layer_gpu_bytes.assign(static_cast<size_t>(c.n_layer), bytes(per_layer_params) + 2 * c.n_embd * 4);
  m.output_matrix_bytes = bytes(embd_params);
  m.output_gpu_bytes = m.output_matrix_bytes + c.n_embd * 4;
  m.output_tied = tied;
  m.tensor_bytes = bytes(static_cast<uint64_t>(m.n_params));
  m.file_bytes = m.tensor_bytes + 8 * MiB;
  m.n_tokens = c.n_vocab;
  m.token_text_bytes = static_cast<uint64_t>(c.n_vocab) * 7;
  m.max_act_row_bytes = static_cast<uint64_t>(c.n_ff) * 9 / 8;
  m.type_label = name;
  return m;
}

// The typical 12 GB case of the GPU issue: a 12B model (Mistral-Nemo's shapes) in Q5_K_M (~5.7 bits per weight) with
// a q8_0 KV cache at 8k context, plus a 0.5B draft (Qwen2.5-0.5B's shapes, Q8_0), in 12 GiB of VRAM; then in 8 GiB,
// where only some layers fit: the plan takes the most that do (one more would not), and RAM holds the rest.
// With -ngl the device holds f32, f16 and q8_0 caches only: a plan under a tight RAM budget never offers (or
// aborts on) a q4_0 cache then, a q4_0 cache fixed by the user is a clear error, and so is one given to the estimate.
TEST(Plan, GpuLayersNeverGetACacheTypeTheDeviceLacks) {
  PlanRequest r;
  r.models = {fake_model("m", 1'100'000'000, 4.5)};
  r.n_threads = 2;
  r.n_ctx = 4096;
  r.n_gpu_layers = 4;
  // One byte less RAM than the smallest q8_0 option with 4 layers on the GPU: only a q4_0 cache (for the layers left
  // on the CPU) would fit, which the device cannot hold: nothing fits, and the plan says so instead of failing.
  RunSettings q8{4096, DType::Q8_0, DType::Q8_0, 32, 2};
  q8.n_gpu_layers = 4;
  r.ram_bytes = estimate_memory(r.models[0], q8).total_bytes - 1;
  Plan p;
  ASSERT_NO_THROW(p = make_plan(r));
  EXPECT_FALSE(p.fits) << p.reason;
  bool tried_q4 = false;
  for (const PlanCandidate& c : p.tried)
    if (c.settings.type_k == DType::Q4_0 || c.settings.type_v == DType::Q4_0) {
      tried_q4 = true;
      EXPECT_FALSE(c.fits);
    }
  EXPECT_TRUE(tried_q4);
  // With room for q8_0, that is chosen.
  r.ram_bytes += 1;
  p = make_plan(r);
  ASSERT_TRUE(p.fits) << p.reason;
  EXPECT_EQ(p.chosen.settings.type_k, DType::Q8_0);
  EXPECT_EQ(p.chosen.settings.n_gpu_layers, 4);
  // Fixed by the user: the error says what to do.
  r.type_v = DType::Q4_0;
  try {
    make_plan(r);
    ADD_FAILURE() << "a q4_0 cache with -ngl was planned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("-ngl 4: a q4_0 KV cache cannot go on the GPU"), std::string::npos)
        << e.what();
  }
  RunSettings q4{4096, DType::Q4_0, DType::Q4_0, 32, 2};
  q4.n_gpu_layers = 4;
  EXPECT_THROW(estimate_memory(r.models[0], q4), Error);
}

TEST(Plan, VramChoosesHowManyLayersGoToTheGpu) {
  ModelConfig big;
  big.arch = "llama";
  big.n_vocab = 131072;
  big.n_embd = 5120;
  big.n_layer = 40;
  big.n_head = 32;
  big.n_head_kv = 8;
  big.head_dim = big.head_dim_v = 128;
  big.n_ff = 14336;
  big.n_ctx_train = 131072;
  ModelConfig small;
  small.arch = "qwen2";
  small.n_vocab = 151936;
  small.n_embd = 896;
  small.n_layer = 24;
  small.n_head = 14;
  small.n_head_kv = 2;
  small.head_dim = small.head_dim_v = 64;
  small.n_ff = 4864;
  small.n_ctx_train = 32768;
  PlanRequest r;
  r.models = {shaped("nemo-12b-q5_k_m", big, 5.7, false)};
  r.draft = shaped("qwen2.5-0.5b-q8_0", small, 8.5, true);
  r.n_ctx = 8192;
  r.type_k = r.type_v = DType::Q8_0;
  r.n_threads = 8;
  r.ram_bytes = 32ull << 30;
  r.vram_bytes = 12ull << 30;
  Plan p = make_plan(r);
  ASSERT_TRUE(p.fits) << p.reason;
  EXPECT_EQ(p.chosen.settings.n_gpu_layers, 40);
  EXPECT_TRUE(p.chosen.mem.gpu_output);
  EXPECT_EQ(p.chosen.draft_mem.gpu_layers, 24);
  EXPECT_LE(p.chosen.gpu_bytes, r.vram_bytes);
  // Device bytes: weights, KV (40 layers x 8192 positions x 1024 K and V elements at 36 bytes per 32), compute.
  EXPECT_EQ(p.chosen.mem.gpu_kv_bytes, 40ull * 8192 * 2 * (1024 + 1024 / 32 * 4));
  std::printf("12 GiB: -ngl %d, GPU %.2f GiB (model %.2f + draft %.2f), RAM %.2f GiB\n", p.chosen.settings.n_gpu_layers,
              p.chosen.gpu_bytes / double(1 << 30), p.chosen.mem.gpu_total_bytes / double(1 << 30),
              p.chosen.draft_mem.gpu_total_bytes / double(1 << 30), p.chosen.total_bytes / double(1 << 30));
  const uint64_t ram_all = p.chosen.total_bytes;

  r.vram_bytes = 8ull << 30;
  p = make_plan(r);
  ASSERT_TRUE(p.fits) << p.reason;
  const int n = p.chosen.settings.n_gpu_layers;
  EXPECT_GT(n, 0);
  EXPECT_LT(n, 40);
  EXPECT_FALSE(p.chosen.mem.gpu_output);
  EXPECT_LE(p.chosen.gpu_bytes, r.vram_bytes);
  EXPECT_GT(p.chosen.total_bytes, ram_all);  // the CPU's layers are in RAM now
  RunSettings more = p.chosen.settings;
  more.n_gpu_layers = n + 1;
  EXPECT_GT(estimate_memory(r.models[0], more).gpu_total_bytes + estimate_memory(*r.draft, more).gpu_total_bytes,
            r.vram_bytes);
  std::printf("8 GiB: -ngl %d, GPU %.2f GiB, RAM %.2f GiB\n", n, p.chosen.gpu_bytes / double(1 << 30),
              p.chosen.total_bytes / double(1 << 30));

  // A KV type the GPU does not hold: no layer is offloaded, and the note says why.
  r.type_k = r.type_v = DType::Q4_0;
  p = make_plan(r);
  EXPECT_EQ(p.chosen.settings.n_gpu_layers, 0);
  std::string notes;
  for (const auto& s : p.notes) notes += s + "\n";
  EXPECT_NE(notes.find("f32, f16 and q8_0 KV caches only"), std::string::npos) << notes;
}

TEST(PlanCli, JsonBreakdownAndTiers) {
  const std::string f32 = data_path("models/real/tinytales-4m-f32.gguf");
  const std::string q8 = data_path("models/real/tinytales-4m-q8_0.gguf");
  const std::string q4 = data_path("models/real/tinytales-4m-q4_k_m.gguf");
  auto r = run_lokal("plan -m " + f32 + " -m " + q8 + " -m " + q4 + " --ram 64MiB --json -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"weights_bytes", "kv_bytes", "compute_bytes", "overhead_bytes", "total_bytes"})
    ASSERT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), j["weights_bytes"].get<uint64_t>() + j["kv_bytes"].get<uint64_t>() +
                                                  j["compute_bytes"].get<uint64_t>() +
                                                  j["overhead_bytes"].get<uint64_t>());
  EXPECT_EQ(j["model"], f32);
  EXPECT_TRUE(j["fits"].get<bool>());
  EXPECT_EQ(j["settings"]["cache_type_k"], "f16");

  // Tiers from one call: each budget gets its own plan, smaller budgets smaller files.
  r = run_lokal("plan -m " + f32 + " -m " + q8 + " -m " + q4 + " --ram 64MiB,26MiB,17MiB --json -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0]["model"], f32);
  EXPECT_EQ(j[1]["model"], q8);
  EXPECT_EQ(j[2]["model"], q4);
  for (const auto& p : j) EXPECT_LE(p["total_bytes"].get<uint64_t>(), p["ram_bytes"].get<uint64_t>());

  // Too small: exit status 1 and the numbers.
  r = run_lokal("plan -m " + q4 + " --ram 4MiB");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.out.find("refused: nothing fits in 4.0 MiB"), std::string::npos) << r.out;
  r = run_lokal("plan -m " + q4 + " --ram 4XB");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("unknown size unit"), std::string::npos) << r.err;
}

TEST(PlanCli, RunRamAppliesThePlanOrRefuses) {
  const std::string m = data_path("models/real/tinytales-4m-q8_0.gguf");
  auto r = run_lokal("run -m " + m + " --ram 4MiB -p 'Once upon a time' -n 4 --temp 0");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--ram 4MiB: nothing fits in 4.0 MiB"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << "nothing may be generated when the plan refuses";

  r = run_lokal("run -m " + m + " --ram 64MiB -p 'Once upon a time' -n 4 --temp 0 -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("plan: "), std::string::npos) << r.err;
  // A fixed context too large for the budget is refused, never shrunk.
  r = run_lokal("run -m " + m + " --ram 12MiB -c 256 --ctk f16 --ctv f16 -b 256 -p 'Once' -n 4 --temp 0 -t 2");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("ctx 256, KV f16/f16, batch 256"), std::string::npos) << r.err;
}

// Predicted peak RSS (lokal plan) vs measured (VmHWM of `lokal run`), within 5%. The process is short-lived and does
// the whole load and a prompt in one micro-batch, as a real run does.
namespace {
struct RssCase {
  std::string model, args;
};

// batch_file: run `lokal batch` on this JSONL file instead of `lokal run` (c.args then hold -np/--kv-tokens too).
void check_rss(const RssCase& c, const std::string& batch_file = "") {
  SCOPED_TRACE(c.model + " " + c.args);
  auto p = run_lokal("plan --json -t 2 --ram 64GiB -m " + c.model + " " + c.args);
  ASSERT_EQ(p.rc, 0) << p.err;
  const auto j = nlohmann::json::parse(p.out);
  const double predicted = j["total_bytes"].get<double>();
  // --allow-long-ctx: some cases go past the model's trained context on purpose (plan only notes it).
  auto r = batch_file.empty()
               ? run_lokal("run -t 2 --allow-long-ctx -m " + c.model + " " + c.args +
                           " -p 'Once upon a time, there was a little girl who lived in a village near the forest.' "
                           "-n 8 --temp 0")
               : run_lokal("batch -t 2 --allow-long-ctx -m " + c.model + " " + c.args + " -f " + batch_file +
                           " --temp 0");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::smatch mm;
  ASSERT_TRUE(std::regex_search(r.err, mm, std::regex(R"(peak RSS [0-9.]+ MiB \(([0-9]+) bytes\) measured)"))) << r.err;
  const double measured = std::stod(mm[1]);
  std::smatch pm;
  ASSERT_TRUE(std::regex_search(r.err, pm, std::regex(R"(MiB \(([0-9]+) bytes\) predicted peak)"))) << r.err;
  EXPECT_EQ(std::stod(pm[1]), predicted) << "run and plan must predict the same total";
  std::printf("[ rss      ] %s %s: predicted %.2f MiB, measured %.2f MiB (%+.2f%%)\n", c.model.c_str(), c.args.c_str(),
              predicted / MiB, measured / MiB, 100.0 * (predicted / measured - 1.0));
  EXPECT_NEAR(predicted / measured, 1.0, 0.05);
}
}  // namespace

TEST(PlanRss, PredictedPeakWithinFivePercentOfMeasured) {
  if (lokal::test::kAddressSanitizer)
    GTEST_SKIP() << "AddressSanitizer adds shadow memory and redzones to the RSS; this is checked in the Release run";
  // A TinyLlama-1.1B-shaped model (random weights, Q4_0) at context 8192 with a q8_0 cache.
  const std::string big = (fs::temp_directory_path() / ("lokal_plan_" + std::to_string(::getpid()) + "_tl.gguf")).string();
  struct Remove {
    std::string p;
    ~Remove() {
      std::error_code ec;
      fs::remove(p, ec);
    }
  } remove{big};
  SynthOptions o;
  o.preset = *find_synth_preset("tinyllama-1.1b");
  o.type = "Q4_0";
  o.n_threads = 2;
  synth_model(o, big);
  check_rss({big, "-c 8192 --ctk q8_0 --ctv q8_0 -b 256"});
  check_rss({big, "-c 2048 --ctk f16 --ctv q4_0 -b 128 --no-mmap"});
  check_rss({data_path("models/real/tinytales-4m-f32.gguf"), "-c 256 --ctk f16 --ctv f16 -b 256"});
  check_rss({data_path("models/real/llama-2-tiny-random-f16.gguf"), "-c 1024 --ctk bf16 --ctv f16 -b 64"});
  // Eight sequences at once sharing one page pool (lokal batch): 16 prompts of ~100 tokens, 24 tokens each.
  const std::string jsonl = big + ".jsonl";
  struct RemoveJ {
    std::string p;
    ~RemoveJ() { std::remove(p.c_str()); }
  } remove_j{jsonl};
  {
    std::ofstream f(jsonl);
    for (int i = 0; i < 16; ++i) {
      std::string prompt = "Request " + std::to_string(i) + ":";
      for (int w = 0; w < 40; ++w) prompt += " word" + std::to_string((i * 7 + w) % 50);
      f << nlohmann::json({{"prompt", prompt}, {"max_tokens", 24}}).dump() << "\n";
    }
  }
  check_rss({big, "-c 2048 -np 8 --kv-tokens 8192 -ctk q8_0 -ctv q8_0 -b 256"}, jsonl);
  check_rss({data_path("models/real/tinytales-4m-f32.gguf"), "-c 256 -np 8 -b 64"}, jsonl);
  // With a draft model: its weights and one cache and set of buffers per sequence (runtime/plan.h
  // estimate_draft_memory), which plan and batch both count.
  check_rss({data_path("models/real/tinytales-4m-f32.gguf"),
             "-c 256 -np 8 -b 64 --draft " + data_path("models/real/tinytales-draft-1m-f32.gguf")},
            jsonl);
}

// Context overflow: stop with a reason by default; with the shift policy, generation goes on past the context and
// the state after a shift is exactly a fresh evaluation of the kept tokens.
TEST(ContextOverflow, StopIsReportedAndShiftContinues) {
  auto model = Model::load(data_path("models/real/stories260K.gguf"));
  SamplingParams sp;
  sp.temperature = 0;
  SessionOptions so;
  so.n_ctx = 32;
  so.n_threads = 2;
  {
    Session s(*model, so);
    auto res = s.generate("Once upon a time", 100, sp, {});
    EXPECT_EQ(res.stop, StopReason::ContextFull);
    EXPECT_EQ(s.n_past(), 32);
    EXPECT_EQ(res.n_prompt + static_cast<int64_t>(res.tokens.size()), 33);  // the last sampled token is not fed
  }
  so.overflow = SessionOptions::Overflow::Shift;
  so.n_keep = 4;
  Session s(*model, so);
  const std::vector<int32_t> prompt = s.prepare_prompt("Once upon a time");
  auto res = s.generate(prompt, 100, sp, {});
  EXPECT_EQ(res.stop, StopReason::Length);
  EXPECT_EQ(res.tokens.size(), 100u);
  EXPECT_GE(s.n_shifts(), 3);
  EXPECT_LE(s.n_past(), 32);

  // Replay: the shifted session's next-token logits equal a fresh session fed the tokens it kept. Generation feeds
  // each sampled token but the last; before a token that does not fit, the first 4 are kept and the older half of
  // the rest is dropped.
  std::vector<int32_t> ctx(prompt);
  for (size_t i = 0; i + 1 < res.tokens.size(); ++i) {
    if (static_cast<int64_t>(ctx.size()) >= 32) {
      const int64_t drop = (static_cast<int64_t>(ctx.size()) - 4) / 2;
      ctx.erase(ctx.begin() + 4, ctx.begin() + 4 + drop);
    }
    ctx.push_back(res.tokens[i]);
  }
  ASSERT_EQ(static_cast<int64_t>(ctx.size()), s.n_past());
  SessionOptions fresh_opt = so;
  fresh_opt.overflow = SessionOptions::Overflow::Stop;
  Session fresh(*model, fresh_opt);
  fresh.feed(ctx);
  ASSERT_EQ(fresh.logits().size(), s.logits().size());
  float max_diff = 0;
  for (size_t i = 0; i < fresh.logits().size(); ++i) max_diff = std::max(max_diff, std::fabs(fresh.logits()[i] - s.logits()[i]));
  // The shifted session evaluated the same tokens at the same positions, partly in a batch and partly one by one:
  // only float summation order differs (F32 model, f16 cache).
  EXPECT_LT(max_diff, 1e-3f);
}

TEST(ContextOverflow, CliSaysWhyItStoppedAndShiftRuns) {
  const std::string m = data_path("models/real/stories260K.gguf");
  auto r = run_lokal("run -m " + m + " -c 24 -n 100 -p 'Once upon a time' --temp 0");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("stop: context full"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--context-shift"), std::string::npos) << r.err;
  r = run_lokal("run -m " + m + " -c 24 -n 60 -p 'Once upon a time' --temp 0 --context-shift --keep 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("generation: 60 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("context: shifted"), std::string::npos) << r.err;
}
