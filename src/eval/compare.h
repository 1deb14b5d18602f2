// eval/compare.h - quality and speed of several models (e.g. quantizations) against a base model.
//
// The base model's perplexity run writes its scored log-probabilities to a temporary file (the
// format of eval/perplexity.h, the same code as `perplexity --save-logits`). Each other model is
// then loaded and evaluated on the same chunks, one model at a time, streaming the base rows back
// from that file, so memory stays at one model plus one micro-batch of rows.
//
// Per model: file size, bits per weight (8 * tensor bytes / parameters), PPL +/- err, delta PPL vs
// base, mean and 99th percentile of the per-token KL(base || model) (computed in double from the
// full distributions, both encoded as in the log-probability file), top-1 agreement (argmax of the
// model's logits == argmax of the base's), prefill speed (tokens/s of the chunk evaluations) and
// decode speed (greedy single-token steps after a short prompt).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/perplexity.h"

namespace lokal {

struct CompareOptions {
  PerplexityOptions ppl;     // n_ctx, n_chunks, n_batch, allow_long_ctx
  int n_threads = 0;         // 0: all hardware threads
  int decode_prompt = 16;    // tokens of the text used as the decode prompt
  int decode_tokens = 32;    // greedy tokens generated for the decode speed
  std::string temp_dir;      // where the base log-probs go ("" = the system temp folder)
  // KV cache types (K, V) to evaluate every model with: one row per model and pair, the base model with the first
  // pair being the reference. Empty: one row per model with ppl.cache_type_k/v.
  std::vector<std::pair<DType, DType>> kv_types;
};

struct CompareRow {
  std::string path;
  std::string file_type;       // model_file_type (model/config.h): "Q4_K - Medium", or the dominant tensor type
  DType cache_type_k = DType::F32, cache_type_v = DType::F32;  // KV cache types of the evaluation
  uint64_t file_bytes = 0;
  int64_t n_params = 0;
  double bits_per_weight = 0;
  double ppl = 0, ppl_err = 0;
  double delta_ppl = 0;        // ppl - base ppl
  double delta_ppl_pct = 0;    // 100 * (ppl / base ppl - 1)
  double kl_mean = 0, kl_p99 = 0, kl_max = 0;
  double top1_agreement = 0;   // percent of scored tokens
  double prefill_tps = 0, decode_tps = 0;
  int64_t n_scored = 0;
};

// Human-readable progress ("model 2/4: x.gguf", chunk updates).
using CompareProgress = std::function<void(const std::string&)>;

// paths[0] is the base (with the first of opt.kv_types, if given). Every model must have the base's vocabulary (same size and token texts);
// otherwise lokal::Error names the file. Throws lokal::Error for unreadable files or a short text.
std::vector<CompareRow> compare_models(const std::vector<std::string>& paths, const std::string& text,
                                       const std::string& text_name, const CompareOptions& opt,
                                       const CompareProgress& progress = {});

// KL(p || q) for two normalized log-probability rows of n entries.
double kl_divergence(const double* logp, const double* logq, int64_t n);

// The q-quantile (0..1) of `v` with linear interpolation between order statistics (v is reordered).
double quantile(std::vector<double>& v, double q);

}  // namespace lokal
