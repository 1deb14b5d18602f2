// server/engine.h - one loaded model behind `lokal serve` (server/router.h holds one Engine per loaded model): the model, its chat template, one Scheduler (continuous
// batching over n_parallel sequences, prefix reuse) running on its own thread, and Jobs — one per HTTP request — that
// carry a generation's text and token log-probabilities from the scheduler's thread to the request's thread.
//
// The router loads an engine on the thread of the request that needs it (or at start, for a pinned model: the socket
// is bound first, so /health answers 503 "loading" meanwhile); state() says where it is. Everything here is thread-safe.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "core/threadpool.h"
#include "runtime/load.h"
#include "runtime/residency.h"
#include "runtime/scheduler.h"
#include "server/requests.h"

namespace lokal {
class TokenIndex;
}

namespace lokal::server {

struct EngineOptions {
  LoadRequest load;                 // path, context, KV types, batch, threads, n_parallel, RAM budget
  std::string chat_template;        // --chat-template NAME|FILE ("" : the model's own)
  std::vector<std::string> aliases; // -a/--alias: the names clients use in "model" (first: the id shown)
  Pooling pooling = Pooling::Mean;  // --pooling: how embeddings pool the final hidden states
  SpecConfig spec;                  // speculative decoding (--draft, --draft-ngram, ...): every slot
  RequestDefaults defaults;         // --temp, --top-k, ..., --system: what requests leave out
};

// The id clients see for a model served with `opt`: the first alias, else the file's name without ".gguf".
std::string model_id_for(const EngineOptions& opt);

// A token's log-probability and its most likely alternatives (OpenAI's logprobs, llama-server's n_probs).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

// One generation in flight: filled on the scheduler's thread, drained by the request's thread.
class Job {
 public:
  uint64_t id = 0;  // the scheduler's request id
  int64_t n_prompt = 0;
  std::chrono::steady_clock::time_point t_submit;

  // Waits until new text, new log-probabilities or the end are available, or until `timeout`. Moves what is pending
  // into the arguments (appending); returns true when the job has ended (then `result()` is final).
  bool wait(std::string& text, std::vector<TokenLogprob>& lps, std::chrono::milliseconds timeout);
  bool done() const;
  bool started() const { return first_token_.load(); }  // a token was generated (prompt done)
  const GenResult& result() const { return result_; }   // valid once wait() returned true

 private:
  friend class Engine;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  std::vector<TokenLogprob> lps_;
  bool done_ = false;
  std::atomic<bool> first_token_{false};
  GenResult result_;
};

class Engine {
 public:
  explicit Engine(EngineOptions opt);
  ~Engine();

  // Loads the model and starts the scheduler (blocking; call on a background thread). Throws lokal::Error.
  void load();
  // Reloads the model from disk (the file may have been replaced): new requests get state() Loading (503) at once,
  // requests in flight may finish for up to `drain` and are cancelled after it, then the model is loaded again with
  // the same options. Throws lokal::Error when loading fails (state() is then Failed).
  void reload(std::chrono::milliseconds drain);
  // Held (shared) by every request that uses the model, from before its state check until its last byte; reload()
  // takes it exclusively.
  using Use = std::shared_ptr<std::shared_lock<std::shared_timed_mutex>>;
  Use use() { return std::make_shared<std::shared_lock<std::shared_timed_mutex>>(use_mu_); }
  int64_t reloads() const { return reloads_.load(); }
  // Seconds since the scheduler's loop last went round; 0 while loading or reloading (no loop to watch).
  double scheduler_stuck_seconds();
  enum class State { Loading, Ready, Failed };
  State state() const { return state_.load(); }
  std::string error() const;  // why loading failed

  // Valid once Ready.
  const Model& model() const { return *loaded_.model; }
  const LoadedModel& loaded() const { return loaded_; }
  const ChatTemplate* chat_template() const { return tpl_ ? &*tpl_ : nullptr; }
  const std::string& template_error() const { return template_error_; }  // why chat_template() is null
  Scheduler& scheduler() { return *sched_; }
  const SpecSetup* spec() const { return spec_.get(); }  // speculative decoding (null: off)
  const Scheduler& scheduler() const { return *sched_; }
  std::shared_ptr<const TokenIndex> token_index();  // built on first use (grammars)
  double load_seconds() const { return load_seconds_; }
  // GPU offload: device memory by GPU, now: the target's weights, KV cache and the scheduler's scratch on its device,
  // the draft's weights and its drafters' caches and scratch on the draft's (empty without -ngl).
  DeviceBytes device_bytes() const;
  uint64_t model_device_bytes() const;  // the target's part of it (on its --device)
  int64_t n_ctx() const { return sched_->options().n_ctx; }
  int n_threads() const { return pool_ ? pool_->size() : 0; }

  // The id clients see ("model" of responses): model_id_for(options()).
  const std::string& model_id() const { return id_; }
  const EngineOptions& options() const { return opt_; }

  // Queues a generation. top_logprobs < 0: no log-probabilities; >= 0: each token's log-probability and that many
  // alternatives. The request's on_text/on_done/on_token are set here (anything given is replaced).
  std::shared_ptr<Job> submit(GenRequest req, int top_logprobs = -1);
  void cancel(const Job& job) { sched_->cancel(job.id); }

  // Totals since start (for /metrics and /api/model/info).
  struct Totals {
    std::atomic<int64_t> requests{0}, prompt_tokens{0}, generated_tokens{0}, cached_tokens{0};
    std::atomic<int64_t> prompt_ns{0}, gen_ns{0};
  };
  const Totals& totals() const { return totals_; }
  int64_t in_flight() const { return in_flight_.load(); }

 private:
  EngineOptions opt_;
  std::atomic<State> state_{State::Loading};
  mutable std::mutex err_mu_;
  std::string error_;
  LoadedModel loaded_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<SpecSetup> spec_;  // before sched_: the scheduler borrows it
  std::unique_ptr<Scheduler> sched_;
  std::optional<ChatTemplate> tpl_;
  std::string template_error_;
  std::mutex index_mu_;
  std::shared_ptr<const TokenIndex> index_;
  double load_seconds_ = 0;
  std::string id_;
  Totals totals_;
  std::atomic<int64_t> in_flight_{0};
  std::shared_timed_mutex use_mu_;
  std::mutex jobs_mu_;
  std::set<uint64_t> job_ids_;  // in flight (for reload's cancel)
  std::atomic<int64_t> reloads_{0};
};

// log-softmax of the logits at `token` and the `top` most likely tokens (ties by id).
TokenLogprob token_logprob(int32_t token, const float* logits, int64_t n_vocab, int top);

}  // namespace lokal::server
