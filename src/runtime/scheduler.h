// runtime/scheduler.h - continuous batching: many generation requests share one forward pass per step.
//
// A request (prompt tokens, sampling parameters, stop conditions, a token limit) is queued by submit() from any
// thread. Each step() (on one thread: the caller's, or the background thread of start()):
//   1. admits queued requests while fewer than n_parallel run; each new sequence starts after the longest cached
//      prefix of its prompt (KVPool::attach_prefix: a system prompt, an earlier turn) instead of recomputing it;
//   2. packs one batch: the next token of every generating sequence first, then chunks of pending prompts, up to
//      n_batch tokens in all, so a long prompt is evaluated over several steps and never stalls running streams;
//   3. runs Forward::eval_batch once, commits the new positions, samples every sequence whose logits came out,
//      streams its text and checks its stop conditions.
// When the page pool cannot hold the next step, the most recently admitted other sequence is preempted: its pages
// are released (full ones stay in the prefix cache) and it goes back to the front of the queue, to be recomputed
// when pages are free; thanks to batch invariance it then continues with exactly the tokens it would have produced.
// Nothing is truncated silently: a sequence that reaches the per-sequence limit or cannot fit in the whole pool
// ends with FinishReason::ContextFull, a request that can never fit ends with an error, and GenResult records the
// reused prefix and the preemptions.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "core/threadpool.h"
#include "model/model.h"
#include "runtime/kv_pool.h"
#include "runtime/sampling.h"
#include "runtime/speculative.h"

namespace lokal {

enum class FinishReason { Length, EndOfGeneration, StopString, Cancelled, ContextFull, Error };
// "length", "eog", "stop", "cancelled", "context_full", "error".
const char* finish_reason_name(FinishReason r);

struct GenResult {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // generated tokens (an end-of-generation token is not included)
  std::string text;             // their text, cut before a stop string
  int64_t n_prompt = 0;
  int64_t n_reused = 0;         // prompt tokens taken from the prefix cache at admission
  int64_t n_preempted = 0;      // times the sequence was preempted and recomputed
  double queue_seconds = 0;     // submit -> first admission
  double prompt_seconds = 0;    // first admission -> first generated token
  double gen_seconds = 0;       // first generated token -> end
  FinishReason finish = FinishReason::Length;
  std::string error;            // FinishReason::Error: what went wrong
  std::vector<float> embedding; // GenRequest::pooling: the pooled, L2-normalized final hidden state (n_embd floats)
  SpecStats spec;               // speculative decoding (SchedulerOptions::spec): drafted, accepted, times
  double gen_tps() const {
    return gen_seconds > 0 && tokens.size() > 1 ? static_cast<double>(tokens.size() - 1) / gen_seconds : 0;
  }
};

// Embeddings: a request with pooling evaluates its prompt only (nothing is sampled or generated) and ends with
// FinishReason::EndOfGeneration and GenResult::embedding: the final hidden states (after the output norm) of all
// prompt tokens averaged (Mean), or of the last one (Last), then L2-normalized. Mean-pooled prompts do not reuse
// cached prefixes (every token's hidden state is needed).
enum class Pooling { None, Mean, Last };

struct GenRequest {
  std::vector<int32_t> prompt;          // tokens (BOS included when the model wants one)
  Pooling pooling = Pooling::None;      // not None: an embedding request (see above)
  SamplingParams sampling;
  int64_t max_tokens = -1;              // < 0: until end of generation or the sequence limit
  std::vector<std::string> stop;        // stop strings: generation ends before the first one (not included)
  bool ignore_eos = false;              // keep generating past end-of-generation tokens (benchmarks)
  // Speculative decoding (SchedulerOptions::spec): -1 the scheduler's settings, 0 off for this request, N > 0 at most
  // N drafted tokens per pass.
  int draft_max = -1;
  // Called on the scheduler's thread with text as soon as it is final (text that could begin a stop string is
  // held back). Returning false cancels the request.
  std::function<bool(const std::string&)> on_text;
  // Called on the scheduler's thread with each sampled token and the logits it was sampled from (n_vocab floats, as
  // the model computed them, before penalties and filters), before the token is checked or streamed: log-probabilities
  // for APIs that return them. Unset (the default) costs nothing.
  std::function<void(int32_t token, const float* logits, int64_t n_vocab)> on_token;
  // Called once on the scheduler's thread when the request ends, whatever the reason.
  std::function<void(const GenResult&)> on_done;
};

struct SchedulerOptions {
  int64_t kv_tokens = 0;       // positions in the shared page pool (all sequences together); 0: n_parallel * n_ctx
  int64_t n_ctx = 0;           // longest sequence (prompt + generated); 0: the model's trained context, at most 4096
  int n_parallel = 4;          // sequences evaluated together at most
  int64_t n_batch = kDefaultBatchSize;  // tokens per forward step (decode tokens + prompt chunks)
  DType cache_type_k = DType::F16;
  DType cache_type_v = DType::F16;
  // Speculative decoding for every generating sequence (borrowed; null: off). Each sequence gets its own drafters
  // (a draft model's cache of n_ctx positions per running sequence); its drafted tokens are verified in the same
  // batch as everything else, every drafted position with logits, and the rejected ones are rolled back with
  // KVPool::truncate. The output is exactly what the sequence gives without it (runtime/speculative.h).
  const SpecSetup* spec = nullptr;
};

struct SchedulerStats {
  int64_t steps = 0;
  int64_t tokens_evaluated = 0;  // batch entries
  int64_t prompt_tokens_reused = 0;
  int64_t preemptions = 0;
  int64_t running = 0, waiting = 0;
  int64_t kv_pages_used = 0, kv_pages_total = 0;  // pages held by sequences (cached-but-free ones count as free)
  SpecStats spec;  // speculative decoding, all finished sequences together
};

class Scheduler {
 public:
  // The pool is used for every forward pass; it must not be used by anything else while step() runs.
  Scheduler(const Model& model, ThreadPool& pool, const SchedulerOptions& opt);
  ~Scheduler();

  const SchedulerOptions& options() const { return opt_; }
  const KVPool& kv_pool() const { return kv_; }
  SchedulerStats stats() const;
  // Bytes of the page pool and of the forward pass's working memory.
  size_t kv_bytes() const { return kv_.cache().bytes(); }
  size_t scratch_bytes() const { return fwd_.scratch_bytes(); }
  uint64_t device_scratch_bytes() const { return fwd_.device_scratch_bytes(); }

  // Queues a request; thread-safe. Returns its id. A request that can never run (empty prompt, longer than the
  // sequence limit or the pool, bad sampling parameters) ends at the next step with FinishReason::Error.
  uint64_t submit(GenRequest req);
  // Ends a queued or running request at the next step (FinishReason::Cancelled); thread-safe; unknown ids are ignored.
  void cancel(uint64_t id);
  // One scheduling step (admission, one forward pass, sampling). Returns false when there was nothing to do.
  bool step();
  // Steps until no request is queued or running.
  void run_until_idle();
  // A background thread that steps whenever there is work, until stop() (or destruction).
  void start();
  void stop();
  // Seconds since the background thread last went round its loop (it does at least once a second when idle, and once
  // per step when busy); 0 before start(). A service watchdog pings only while this stays small.
  double seconds_since_heartbeat() const;

 private:
  struct Seq;
  bool step_inner();
  void publish_stats();  // running/waiting/KV-page counts after a step
  void take_submissions();
  void finish(Seq& s, FinishReason why, const std::string& error = {});
  void admit();
  bool preempt_one(const Seq* keep);
  // kv_len: the sequence's cache length before `tok` as plain decoding would have it (-1: the pool's; speculative
  // verification passes it while the cache still holds drafted positions).
  void accept_token(Seq& s, int32_t tok, int64_t kv_len = -1);
  void emit(Seq& s, bool final);
  // Speculative decoding: drafts for a generating sequence (todo becomes [last token] + draft) ...
  void draft_for(Seq& s, int64_t len, int64_t used, int64_t budget);
  // ... and decides the drafted tokens from the pass's rows (row0: its first), rolling back the rejected ones.
  void verify_drafts(Seq& s, int64_t n, int64_t row0, double pass_seconds);

  const Model& model_;
  ThreadPool& pool_;
  SchedulerOptions opt_;
  KVPool kv_;
  Forward fwd_;
  std::vector<float> logits_;
  std::vector<float> hidden_;  // final hidden states of embedding requests' entries
  PassCost pass_cost_;         // measured step times by batch size (speculative decoding's cost model)
  // Drafters of finished sequences, reused by the next ones (a draft model's cache is allocated once per slot, and
  // re-syncs to the next context by common prefix: a shared system prompt is not drafted again).
  std::vector<std::unique_ptr<SpecSeq>> spare_spec_;
  std::shared_ptr<const TokenIndex> token_index_;  // built when the first request with a grammar arrives

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Seq>> submitted_;  // guarded by mu_
  std::unordered_set<uint64_t> cancels_;       // guarded by mu_
  uint64_t next_id_ = 1;                        // guarded by mu_
  std::thread thread_;
  bool stop_ = false;                           // guarded by mu_
  std::atomic<int64_t> heartbeat_{0};           // Clock ticks of the thread's last loop

  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;   // in admission order
  SchedulerStats stats_;
  mutable std::mutex stats_mu_;
};

}  // namespace lokal
