// runtime/speculative.h - speculative decoding: cheap guesses of the next tokens, verified by the target model in one
// batched pass, so that several tokens can come out of one pass over the target's weights.
//
// Exactness. The target evaluates [last token, d1 .. dk] in one pass (Forward's batch invariance makes every row
// bit-identical to one-token decoding) and its sampler decides the drafted tokens in order (Sampler::verify): greedy
// accepts d_i exactly when it is the argmax, so the text is token-identical to decoding without a draft; sampling
// accepts with probability min(1, p/q) and otherwise draws from max(0, p - q), so every output token has exactly the
// target's distribution (p after the full sampling chain; q the distribution the draft drew from, or a point mass for
// deterministic proposals). The first rejected position yields the target's own token, and the pass's last row yields
// one more token when everything was accepted: each pass gives 1 + (accepted) tokens. Rejected positions are rolled
// back in the target's cache (Session::rewind, KVPool::truncate) and in the draft's (the drafter re-syncs to the
// context by common prefix on its next call).
//
// Drafters (all propose target token ids):
//   * NgramDrafter: prompt lookup. The last n tokens (n from n_max down to n_min) are searched for earlier in the
//     context (the prompt and what was generated); the tokens that followed the most recent match are proposed.
//     Free, and very good for output that quotes or edits its input (code, documents, JSON).
//   * ModelDrafter: a small model. With the same vocabulary (decided by content: tokenizer type, every token's text and
//     kind, the special tokens) ids pass through. Otherwise the context is translated to the draft's tokens through
//     text (the target tokens' bytes, tokenized again by the draft's tokenizer, re-tokenizing only a short window at
//     the end as the context grows), and the proposals come back one of two ways:
//       - Intersect (when the vocabularies share most of their tokens): draft tokens whose text the target has are
//         mapped to the target's ids, the others are masked out of the draft's logits before its sampling chain, so
//         the proposals keep their q and sampling stays lossless;
//       - Text: the drafted tokens' text is tokenized by the target's tokenizer (exact for greedy and for sampling,
//         as a deterministic proposal).
//
// Adaptive control (Speculator): the draft length k maximizes the expected tokens per second,
//     (1 + a (1 - a^k) / (1 - a)) / (T(n + k) + k t_draft)   against   1 / T(n)
// with a the measured acceptance per drafted token (moving average), T(m) the measured time of a target pass of m
// tokens (PassCost) and t_draft the measured draft time per token. When no k beats plain decoding, speculation pauses
// and probes again after 4, 8, ... 256 passes; so a draft that is too slow or too often wrong costs little.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/threadpool.h"
#include "model/model.h"
#include "runtime/plan.h"
#include "runtime/sampling.h"

namespace lokal {

class Vocab;

// A proposal: target token ids, and for each the distribution it was drawn from (q empty: deterministic proposals).
struct Draft {
  std::vector<int32_t> tokens;
  std::vector<std::vector<std::pair<int32_t, float>>> q;
  void clear() {
    tokens.clear();
    q.clear();
  }
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual const char* kind() const = 0;      // "ngram" or "draft"
  virtual std::string describe() const = 0;  // one line for the user
  // Proposes up to n_max tokens to follow `context` (target ids: everything the target has seen plus the token it
  // evaluates next). sp: the request's sampling (temperature <= 0: greedy proposals).
  virtual void propose(const std::vector<int32_t>& context, int n_max, const SamplingParams& sp, Draft& out) = 0;
  virtual size_t bytes() const { return 0; }  // memory the drafter holds (a draft model's cache and scratch)
  // Device memory it holds (a draft model offloaded to a GPU: its cache and scratch there; the weights are the
  // draft model's, counted once by SpecSetup::draft_device_bytes).
  virtual uint64_t device_bytes() const { return 0; }
  // Seconds the last propose() spent catching up with the context (evaluating tokens the drafter had not seen).
  virtual double catchup_seconds() const { return 0; }
};

class NgramDrafter : public Drafter {
 public:
  explicit NgramDrafter(int n_min = 1, int n_max = 4);
  const char* kind() const override { return "ngram"; }
  std::string describe() const override;
  void propose(const std::vector<int32_t>& context, int n_max, const SamplingParams& sp, Draft& out) override;

 private:
  int n_min_, n_max_;
};

enum class VocabBridge { Same, Intersect, Text };
const char* vocab_bridge_name(VocabBridge b);  // "same vocabulary", "vocabulary intersection", "text translation"

struct VocabMatch {
  bool same = false;     // identical by content
  int64_t shared = 0;    // draft tokens whose text the target vocabulary has (same text and kind)
  double overlap = 0;    // shared / max(target tokens, draft tokens)
  std::string difference;  // the first difference found (empty when same)
};
// d2t (optional): for each draft token, the target token with the same text and kind (-1: none).
VocabMatch match_vocabularies(const Vocab& target, const Vocab& draft, std::vector<int32_t>* d2t = nullptr);

enum class VocabMode { Auto, Intersect, Text };  // --draft-vocab auto|intersect|text
// Overlap from which Auto picks Intersect for different vocabularies.
constexpr double kIntersectMinOverlap = 0.9;

// How a draft's vocabulary serves a target's: computed once per pair, shared by every sequence's drafter.
struct DraftVocab {
  VocabMatch match;
  VocabBridge bridge = VocabBridge::Same;
  std::vector<int32_t> d2t;       // draft id -> target id (-1: none)
  std::vector<int32_t> unmapped;  // draft ids with no target id (masked for Intersect)
};
// Throws lokal::Error naming the reason when the draft cannot serve the target (a WordPiece tokenizer, an
// intersection forced with too few shared tokens).
std::shared_ptr<const DraftVocab> make_draft_vocab(const Model& target, const Model& draft, VocabMode mode);

struct DraftModelOptions {
  int64_t n_ctx = 0;        // the draft's cache; 0: the draft's trained context, at most 4096
  DType cache_type_k = DType::F16;
  DType cache_type_v = DType::F16;
  VocabMode vocab = VocabMode::Auto;
  // Stop drafting after a token whose probability among the draft's ten most likely is below this (llama.cpp's
  // --draft-p-min, the same measure and default).
  float p_min = 0.75f;
};

class ModelDrafter : public Drafter {
 public:
  // Throws lokal::Error naming the reason when the draft cannot serve the target (vocabulary forced to intersect
  // with too few shared tokens, a draft without tokens of text in common...).
  ModelDrafter(const Model& target, const Model& draft, ThreadPool& pool, const DraftModelOptions& opt,
               std::shared_ptr<const DraftVocab> vocab = nullptr);
  ~ModelDrafter() override;
  const char* kind() const override { return "draft"; }
  std::string describe() const override;
  void propose(const std::vector<int32_t>& context, int n_max, const SamplingParams& sp, Draft& out) override;
  size_t bytes() const override;
  uint64_t device_bytes() const override;
  double catchup_seconds() const override { return catchup_seconds_; }
  VocabBridge bridge() const { return bridge_; }
  const VocabMatch& match() const { return dv_->match; }
  int64_t n_ctx() const { return fwd_.n_ctx(); }

 private:
  // Brings dctx_ up to date with `context` (Intersect/Text), re-tokenizing only from a checkpoint near the end.
  void translate(const std::vector<int32_t>& context);
  void feed(const int32_t* toks, int64_t n);

  const Model& target_;
  const Model& draft_;
  DraftModelOptions opt_;
  std::shared_ptr<const DraftVocab> dv_;
  VocabBridge bridge_ = VocabBridge::Same;
  Forward fwd_;
  std::vector<float> logits_;
  std::vector<int32_t> dhist_;  // draft tokens in the draft's cache
  // Translation state (Intersect/Text).
  std::vector<int32_t> tin_;    // target tokens translated
  std::vector<int32_t> dctx_;   // their draft tokens
  std::vector<std::pair<int64_t, int64_t>> ckpt_;  // (target count, draft count) where both end on the same byte
  uint64_t draws_ = 0;
  double catchup_seconds_ = 0;
};

// Measured time of a target pass by its number of tokens (moving averages), with interpolation where unmeasured.
class PassCost {
 public:
  void observe(int64_t n_tokens, double seconds);
  double estimate(int64_t n_tokens) const;  // 0 when nothing was measured
  bool measured(int64_t n_tokens) const;
  int64_t count(int64_t n_tokens) const;

 private:
  std::vector<double> t_;  // by n (0: unmeasured)
  std::vector<int64_t> n_;
};

struct SpecOptions {
  int draft_max = 16;   // most tokens drafted for one target pass
  int draft_min = 0;    // a draft shorter than this is not verified (plain decoding instead)
  bool adaptive = true; // false: always draft_max (benchmarks of the raw mechanism)
  // Sampler::VerifyRule::ResampleFromTarget only in the test that shows a wrong acceptance rule is detected.
  Sampler::VerifyRule rule = Sampler::VerifyRule::Exact;
};

struct SpecStats {
  int64_t passes = 0;        // target passes that verified drafted tokens
  int64_t plain_passes = 0;  // target passes without (speculation paused, nothing proposed)
  int64_t drafted = 0, accepted = 0;
  double draft_seconds = 0, verify_seconds = 0, plain_seconds = 0;
  double single_pass_seconds = 0;  // measured one-token target pass (0: never measured)
  double acceptance() const { return drafted > 0 ? static_cast<double>(accepted) / drafted : 0; }
  // Tokens produced per target pass over the passes that verified a draft.
  double tokens_per_pass() const { return passes > 0 ? static_cast<double>(passes + accepted) / passes : 0; }
  // Estimated speed-up over plain decoding: the time plain decoding would have taken for the tokens these passes
  // produced (one single-token pass each) over the time they took.
  double speedup() const;
  void add(const SpecStats& o);
  // The counts and times accumulated since `before` (a snapshot of the same statistics).
  SpecStats since(const SpecStats& before) const;
};

// One sequence's speculation: its drafters (tried in order; the first that proposes at least draft_min tokens wins),
// the adaptive draft length per drafter, statistics.
class Speculator {
 public:
  // Drafters are borrowed; cost: the target's pass times (shared by the sequences of one scheduler), or null for an
  // own one.
  Speculator(std::vector<Drafter*> drafters, const SpecOptions& opt, PassCost* cost = nullptr);
  // Proposes tokens for the target pass that evaluates context.back() (and `base` tokens of other sequences); at
  // most `room` tokens (what the context has left). Empty: a plain pass.
  void draft(const std::vector<int32_t>& context, int64_t base, int64_t room, const SamplingParams& sp, Draft& out);
  // After the pass: how many of the drafted tokens were accepted; pass_tokens and seconds: the whole pass.
  void record(int64_t n_drafted, int64_t n_accepted, int64_t pass_tokens, double seconds);
  const SpecStats& stats() const { return stats_; }
  const SpecOptions& options() const { return opt_; }
  std::string describe() const;  // the drafters, one line
  bool enabled() const { return !drafters_.empty(); }
  // For another sequence (a scheduler reuses its drafters, whose caches re-sync by common prefix): new options,
  // statistics and adaptive state from scratch. Throws lokal::Error for bad options, like the constructor.
  void restart(const SpecOptions& opt);

 private:
  struct Ctl {
    double alpha = 0.7;    // acceptance per drafted token (moving average; optimistic start)
    double t_token = 0;    // draft seconds per drafted token
    int paused = 0;        // plain passes left before a probe
    int backoff = 4;
    bool probe = false;
  };
  int64_t since_plain_ = 0;  // speculative passes since the last plain ones (two plain passes every 32 re-measure T(1))
  bool drafted_ = false;         // a drafter ran for the pending pass
  bool drafted_before_ = true;   // ... for the pass before it (the first pass follows the prompt: not measured)
  int choose_k(Ctl& c, int64_t base, int64_t room);

  std::vector<Drafter*> drafters_;
  std::vector<Ctl> ctl_;
  SpecOptions opt_;
  PassCost own_cost_;
  PassCost* cost_;
  int last_ = -1;  // drafter of the pending pass
  SpecStats stats_;
};

// What a command line or a server configuration asks for.
struct SpecConfig {
  std::string draft;         // --draft FILE (empty: no draft model)
  bool ngram = false;        // --draft-ngram: prompt lookup (tried before the draft model when both are on)
  int ngram_min = 1, ngram_max = 4;
  SpecOptions spec;          // --draft-max, --draft-min, --draft-fixed
  DraftModelOptions model;   // --draft-p-min, --draft-vocab
  int draft_gpu_layers = -1; // --gpu-layers-draft (-ngld): the draft's GPU layers; -1: the target's -ngl
  int draft_device = -1;     // --device-draft: the draft's GPU; -1: the target's --device
  bool enabled() const { return !draft.empty() || ngram; }
  // What the draft runs with beside a target run with `target`: the target's context, sequences and threads; its
  // own GPU layers (-ngld, else the target's -ngl) and cache types (estimate_draft_memory's input).
  RunSettings draft_settings(const RunSettings& target) const;
};

// What the draft-model drafters a SpecSetup made hold while they live (each SpecSeq gives its part back when
// destroyed): how many, the most at once, and their device bytes.
struct SpecLive {
  std::atomic<int64_t> drafters{0}, peak{0};
  std::atomic<uint64_t> device_bytes{0};
};

// One sequence's speculation: its drafters and the speculator that drives them.
struct SpecSeq {
  SpecSeq() = default;
  SpecSeq(const SpecSeq&) = delete;
  SpecSeq& operator=(const SpecSeq&) = delete;
  ~SpecSeq();  // gives its draft model's share back to `live`
  std::unique_ptr<NgramDrafter> ngram;
  std::unique_ptr<ModelDrafter> model;
  std::unique_ptr<Speculator> spec;
  SpecLive* live = nullptr;   // its SpecSetup's count (set with `model`)
  uint64_t device_bytes = 0;  // what `model` added to it
};

// The draft model of a process (loaded once, next to the target) and the way to make each sequence's drafters.
class SpecSetup {
 public:
  // Loads the draft (cfg.draft) and checks it against the target; throws lokal::Error naming the file and the reason
  // when it cannot be used. Warnings (a draft not smaller than the target, a context longer than the draft's) go to
  // *warnings.
  SpecSetup(const Model& target, const SpecConfig& cfg, const LoadOptions& load, std::vector<std::string>* warnings);
  ~SpecSetup();
  const SpecConfig& config() const { return cfg_; }
  const Model* draft_model() const { return draft_.get(); }
  const DraftVocab* draft_vocab() const { return dv_.get(); }
  // A sequence's drafters over a context of n_ctx tokens (the draft's cache is that long), evaluating on `pool`.
  // cost: the target's pass times (shared by a scheduler's sequences), or null.
  std::unique_ptr<SpecSeq> make(ThreadPool& pool, int64_t n_ctx, PassCost* cost = nullptr,
                                const SpecOptions* override_opt = nullptr) const;
  std::string describe() const;
  // Device memory of the draft: its offloaded weights and the caches and scratch of the drafters made by make() that
  // are alive now (0 when the draft runs on the CPU); the GPU it is on.
  uint64_t draft_device_bytes() const;
  uint32_t draft_device() const;
  // The most draft-model drafters alive at once so far (a scheduler keeps at most n_parallel).
  int64_t peak_drafters() const { return live_.peak.load(); }

 private:
  const Model& target_;
  SpecConfig cfg_;
  std::unique_ptr<Model> draft_;
  std::shared_ptr<const DraftVocab> dv_;
  mutable SpecLive live_;  // of the SpecSeqs alive (they outlive no SpecSetup)
};

}  // namespace lokal
