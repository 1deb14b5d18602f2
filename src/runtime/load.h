// runtime/load.h - plan, check and load a model for generation in one call: what `lokal run` does before its first
// token, and what a server does the same way for each model it serves.
//
// load_model_planned(request):
//   1. checks the file (core/safe_io.h: a regular file) and opens its GGUF header once (mapped, nothing read);
//   2. with a RAM budget (`ram`), plans the settings the request left free (runtime/plan.h: context, KV-cache types,
//      batch; those it fixed are kept) and refuses with the plan's numbers when nothing fits;
//   3. refuses a context above the model's trained context unless allow_long_ctx, and, without a budget, settings
//      whose predicted peak memory (estimate_memory) exceeds MemAvailable, with the numbers;
//   4. loads the model from the header already open (Model::load(std::unique_ptr<GGUFFile>, ...)): parsing the file
//      twice, or building a second tokenizer, would raise the peak RSS that the plan predicts.
// Every refusal is a lokal::Error whose message names the flag to change (-c, --allow-long-ctx, --ram, ...).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/types.h"
#include "model/model.h"
#include "runtime/plan.h"
#include "runtime/session.h"

namespace lokal {

struct LoadRequest {
  std::string path;                      // GGUF model file
  int64_t n_ctx = 0;                     // 0: free (the model's trained context, at most 4096; with `ram`: planned)
  bool allow_long_ctx = false;           // accept n_ctx above the model's trained context
  std::string ram;                       // RAM budget as the user wrote it ("2GiB"; parse_byte_size), echoed in
                                         // messages; empty: no budget, the settings are checked against MemAvailable
  std::optional<DType> type_k, type_v;   // KV-cache types; unset: f16 (with `ram`: planned)
  int64_t n_batch = 0;                   // prompt batch; 0: kDefaultBatchSize (with `ram`: planned)
  int n_threads = 0;                     // 0: ThreadPool::default_threads()
  int n_parallel = 1;                    // sequences served together (runtime/scheduler.h)
  int64_t kv_tokens = 0;                 // their shared KV pool in positions; 0: n_ctx * n_parallel
  LoadOptions load;                      // mmap, mlock, prefetch, repack
  // Called with the plan (when there is a budget and it fits) before the weights are loaded: e.g. to report it.
  std::function<void(const Plan&)> on_plan;
};

struct LoadedModel {
  std::unique_ptr<Model> model;
  ModelFacts facts;                      // what planning read from the header
  // The settings to run with: n_ctx (0: as Session picks it), cache types, n_batch, n_threads; the rest of
  // SessionOptions (overflow, n_keep) is the caller's.
  SessionOptions session;
  RunSettings settings;                  // the settings checked (n_ctx resolved as Session resolves it)
  MemoryEstimate estimate;               // estimate_memory(facts, settings)
  std::optional<Plan> plan;              // with a budget: the plan that chose the settings
};

// Steps 1-4 above; throws lokal::Error (the file, a budget that cannot fit, a context or memory refusal).
LoadedModel load_model_planned(const LoadRequest& req);

// The settings `req` runs with when nothing is planned (no budget, or the plan's choices already in `req`): n_ctx 0
// resolved as Session resolves it (the trained context, at most 4096), f16 KV unless given, the default batch
// (clamped to the context) and thread count. What load_model_planned checks and a server predicts its memory from.
RunSettings run_settings(const LoadRequest& req, const ModelFacts& facts);

// "1.23 MiB" / "512 B": byte counts in messages (these refusals, the CLI's reports).
std::string format_bytes(double bytes);

}  // namespace lokal
