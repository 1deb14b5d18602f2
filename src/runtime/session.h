// runtime/session.h - one conversation with a model: its own single-sequence KV cache, position, sampling loop.
// (Many sequences sharing one cache and one forward pass: runtime/scheduler.h.)
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "model/model.h"
#include "runtime/sampling.h"
#include "runtime/speculative.h"

namespace lokal {

struct SessionOptions {
  int64_t n_ctx = 0;     // 0: the model's trained context, capped at 4096
  int n_threads = 0;     // 0: all hardware threads (ignored with `pool`)
  // The process's thread pool to evaluate on (one per process: a draft and a target model, or a session and a
  // scheduler, must not spin against each other). Null: the session makes its own of n_threads threads.
  ThreadPool* pool = nullptr;
  int64_t n_batch = kDefaultBatchSize; // prompt tokens per forward micro-batch (model/config.h: 512)
  DType cache_type_k = DType::F16;  // KV cache element types (f32 or f16; f16 like llama.cpp)
  DType cache_type_v = DType::F16;
  // What generate() does when the context is full:
  //   stop  (default) end with StopReason::ContextFull;
  //   shift keep the first n_keep tokens (the BOS token is always kept), drop the older half of the rest, and
  //         re-evaluate what is kept (a full prefill of at most n_ctx/2 + n_keep tokens; exact, no RoPE
  //         re-rotation of cached keys), then continue. The dropped text is forgotten by the model.
  enum class Overflow { Stop, Shift } overflow = Overflow::Stop;
  int64_t n_keep = 0;
};

enum class StopReason { Length, EndOfGeneration, ContextFull, Stopped };
const char* stop_reason_name(StopReason r);

struct GenerationResult {
  std::vector<int32_t> tokens;   // generated tokens
  int64_t n_prompt = 0;
  double prompt_seconds = 0;     // time to process the prompt (first token logits)
  double gen_seconds = 0;        // time for the generated tokens after the first
  StopReason stop = StopReason::Length;
  SpecStats spec;                // speculative decoding during this call (zero without a speculator)
  double prompt_tps() const { return prompt_seconds > 0 ? n_prompt / prompt_seconds : 0; }
  double gen_tps() const {
    return gen_seconds > 0 && tokens.size() > 1 ? static_cast<double>(tokens.size() - 1) / gen_seconds : 0;
  }
};

class Session {
 public:
  Session(const Model& model, const SessionOptions& opt);

  const Model& model() const { return model_; }
  int64_t n_ctx() const { return fwd_.n_ctx(); }
  int64_t n_past() const { return n_past_; }
  int n_threads() const { return pool_.size(); }
  size_t kv_bytes() const { return fwd_.kv_bytes(); }
  size_t scratch_bytes() const { return fwd_.scratch_bytes(); }
  uint64_t device_scratch_bytes() const { return fwd_.device_scratch_bytes(); }
  const KVCache& kv() const { return fwd_.kv(); }

  // Append tokens to the context and compute the logits of the last one.
  // Throws lokal::Error with the numbers if they do not fit in the context.
  void feed(const std::vector<int32_t>& tokens);
  const std::vector<float>& logits() const { return logits_; }
  void reset() {
    n_past_ = 0;
    history_.clear();
  }
  // Forgets every position from n on (0 <= n <= n_past()): the cache keeps the first n tokens, so a prompt that
  // starts with them (the earlier turns of a chat) is evaluated from there. Throws lokal::Error otherwise.
  void rewind(int64_t n);
  const std::vector<int32_t>& tokens() const { return history_; }  // the tokens in the cache, in order
  // How many leading tokens of `prompt` the cache already holds (its common prefix with tokens()).
  int64_t common_prefix(const std::vector<int32_t>& prompt) const;
  int64_t n_shifts() const { return n_shifts_; }  // context shifts done by generate()

  // Speculative decoding (runtime/speculative.h): generate() drafts with `spec` and verifies the drafts in batched
  // passes; the output is what generate() gives without it (token-identical when greedy, identically distributed when
  // sampling). Null: off. Borrowed; its drafters must use this session's thread pool.
  void set_speculator(Speculator* spec) { spec_ = spec; }
  Speculator* speculator() const { return spec_; }
  ThreadPool& pool() { return pool_; }

  // Tokenizes a prompt (BOS per the vocabulary) and checks it fits the free context; throws
  // lokal::Error with the numbers otherwise. parse_special: text naming a special token (<|im_start|>) becomes
  // that token, as llama.cpp does for prompts; false keeps it as plain text.
  std::vector<int32_t> prepare_prompt(const std::string& prompt, bool parse_special = true) const;
  // The per-vocabulary index for grammars (built on first use, then shared).
  std::shared_ptr<const TokenIndex> token_index();
  // Run the prompt (after the tokens already in the cache), then sample up to n_predict tokens (n_predict < 0: no limit). on_text receives decoded UTF-8
  // text as soon as it is complete; returning false stops generation. Stops at an end-of-generation token, or when
  // the context is full (unless SessionOptions::overflow is Shift). The string form tokenizes with prepare_prompt.
  GenerationResult generate(const std::vector<int32_t>& prompt_tokens, int n_predict, const SamplingParams& sp,
                            const std::function<bool(const std::string&)>& on_text);
  GenerationResult generate(const std::string& prompt, int n_predict, const SamplingParams& sp,
                            const std::function<bool(const std::string&)>& on_text);

 private:
  // Throws lokal::Error naming the position when the current logits hold NaN or Inf (generate() calls it before
  // sampling, so a broken model stops with an error instead of sampling garbage).
  void check_logits() const { check_row(logits_.data()); }
  void check_row(const float* row) const;

  const Model& model_;
  SessionOptions opt_;
  std::unique_ptr<ThreadPool> own_pool_;
  ThreadPool& pool_;
  Forward fwd_;
  // Drops the older half of the context after the first n_keep tokens and re-evaluates the rest.
  void shift_context();

  int64_t n_past_ = 0;
  int64_t n_shifts_ = 0;
  std::vector<int32_t> history_;  // the tokens in the KV cache, in order
  std::vector<float> logits_;
  std::shared_ptr<const TokenIndex> token_index_;
  Speculator* spec_ = nullptr;
  std::vector<float> rows_;  // logits of every position of a verification pass
};

}  // namespace lokal
