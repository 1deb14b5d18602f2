// runtime/load.cpp - plan, check and load a model for generation (see load.h).
#include "runtime/load.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "core/gguf.h"
#include "core/safe_io.h"
#include "core/threadpool.h"

namespace lokal {

std::string format_bytes(double b) {
  char buf[64];
  if (b >= 1024.0 * 1024 * 1024) snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024) snprintf(buf, sizeof buf, "%.2f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0) snprintf(buf, sizeof buf, "%.2f KiB", b / 1024.0);
  else snprintf(buf, sizeof buf, "%.0f B", b);
  return buf;
}

namespace {

// Refuses a context above the trained context without allow_long_ctx, and a run whose planned peak memory exceeds
// what the machine has available, with the numbers, before anything is allocated.
// Fills *estimate (estimate_memory for rs) once the context passed.
void check_context_and_memory(const LoadRequest& req, const ModelFacts& facts, const RunSettings& rs,
                              MemoryEstimate* estimate) {
  const int64_t train = facts.cfg.n_ctx_train;
  if (req.n_ctx > train && !req.allow_long_ctx)
    throw Error("-c " + std::to_string(req.n_ctx) + " is above the " + std::to_string(train) +
                "-token context the model was trained on (it would not work well past it); use -c " +
                std::to_string(train) + " or less, or --allow-long-ctx");
  *estimate = estimate_memory(facts, rs);
  if (!req.ram.empty()) return;  // a budget: the plan already fitted everything into what the user gave
  const uint64_t avail = available_ram_bytes();
  const MemoryEstimate& m = *estimate;
  if (avail == 0 || m.total_bytes <= avail) return;
  throw Error("this run needs " + format_bytes(static_cast<double>(m.total_bytes)) + " (weights " +
              format_bytes(static_cast<double>(m.weights_bytes)) + ", KV cache " +
              format_bytes(static_cast<double>(m.kv_bytes)) + " for " + std::to_string(rs.pool_tokens()) +
              " tokens, compute " + format_bytes(static_cast<double>(m.compute_bytes)) + ") but only " +
              format_bytes(static_cast<double>(avail)) +
              " of memory is available (MemAvailable); use a smaller -c, a quantized KV cache (-ctk q8_0 -ctv q8_0), "
              "or --ram SIZE to plan the settings");
}

}  // namespace

RunSettings run_settings(const LoadRequest& req, const ModelFacts& facts) {
  RunSettings s;
  s.n_ctx = req.n_ctx > 0 ? req.n_ctx : std::min<int64_t>(facts.cfg.n_ctx_train, 4096);  // as Session picks it
  s.type_k = req.type_k.value_or(DType::F16);
  s.type_v = req.type_v.value_or(DType::F16);
  s.n_batch = std::clamp<int64_t>(req.n_batch > 0 ? req.n_batch : kDefaultBatchSize, 1, s.n_ctx);
  s.n_threads = req.n_threads > 0 ? req.n_threads : ThreadPool::default_threads();
  s.n_parallel = std::max(1, req.n_parallel);
  s.kv_tokens = req.kv_tokens;
  s.n_gpu_layers = req.load.offload.n_gpu_layers;
  return s;
}

LoadedModel load_model_planned(const LoadRequest& req) {
  check_input_file(req.path, "GGUF model file");
  // The header only (mapped, nothing read), kept open for Model::load: parsing the file twice, or building a second
  // tokenizer, would raise the peak RSS that plan predicts.
  std::unique_ptr<GGUFFile> file = GGUFFile::open(req.path, true);
  LoadedModel out;
  out.facts = ModelFacts::from_gguf(*file, req.path);
  const ModelFacts& facts = out.facts;
  SessionOptions& so = out.session;
  so.n_ctx = req.n_ctx;
  so.n_threads = req.n_threads > 0 ? req.n_threads : ThreadPool::default_threads();
  so.n_batch = req.n_batch > 0 ? req.n_batch : kDefaultBatchSize;
  so.cache_type_k = req.type_k.value_or(DType::F16);
  so.cache_type_v = req.type_v.value_or(DType::F16);

  // A budget: plan before loading. Settings the request fixed stay fixed; the others are chosen to fit, and a model
  // that cannot fit is refused with the numbers.
  if (!req.ram.empty()) {
    PlanRequest pr;
    pr.models.push_back(facts);
    pr.ram_bytes = parse_byte_size(req.ram);
    pr.n_ctx = req.n_ctx;
    pr.type_k = req.type_k;
    pr.type_v = req.type_v;
    pr.n_batch = req.n_batch;
    pr.n_threads = so.n_threads;
    pr.n_parallel = req.n_parallel;
    pr.kv_tokens = req.kv_tokens;
    if (req.load.offload.n_gpu_layers > 0) pr.n_gpu_layers = req.load.offload.n_gpu_layers;
    pr.mlock = req.load.mlock;
    pr.mlock_limit_bytes = mlock_limit_bytes();
    Plan plan = make_plan(pr);
    if (!plan.fits) throw Error("--ram " + req.ram + ": " + plan.reason);
    so.n_ctx = plan.chosen.settings.n_ctx;
    so.cache_type_k = plan.chosen.settings.type_k;
    so.cache_type_v = plan.chosen.settings.type_v;
    so.n_batch = plan.chosen.settings.n_batch;
    if (req.on_plan) req.on_plan(plan);
    out.plan = std::move(plan);
  }

  LoadRequest chosen = req;  // with the plan's choices, if any
  chosen.n_ctx = so.n_ctx;
  chosen.type_k = so.cache_type_k;
  chosen.type_v = so.cache_type_v;
  chosen.n_batch = so.n_batch;
  chosen.n_threads = so.n_threads;
  RunSettings& want = out.settings;
  want = run_settings(chosen, facts);
  check_context_and_memory(req, facts, want, &out.estimate);

  out.model = Model::load(std::move(file), req.load);
  return out;
}

}  // namespace lokal
