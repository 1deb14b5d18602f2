// runtime/sampling.h - turning logits into the next token.
//
// The chain, in llama.cpp's default order:
//   penalties -> top-k -> top-p -> min-p -> temperature -> random draw.
// * logit_bias first: each listed token's logit gets its bias added (-inf: banned).
// * penalties, on tokens seen among the last repeat_last_n accepted tokens: repetition penalty as in
//   llama.cpp (a positive logit is divided by repeat_penalty, a negative or zero one multiplied by it),
//   then OpenAI's presence/frequency penalties: logit -= presence_penalty + count * frequency_penalty.
// * top-k keeps the k largest logits (0: off). top-p keeps the smallest set of most likely tokens whose
//   probability (softmax at temperature 1 over what top-k left) reaches top_p (1: off). min-p keeps
//   tokens whose probability is at least min_p times the most likely one's (0: off). Every filter keeps
//   at least the most likely token. Ties are ranked by token id (lower id first), so results do not
//   depend on the sort implementation.
// * temperature <= 0 is greedy: the argmax of the penalized logits, the first (lowest id) maximum on ties.
//   Otherwise p(token) ~ exp(logit / temperature) over the survivors, and one draw picks the token.
// * Logits are not modified. NaN logits are ignored (treated as -inf: never sampled). If some logits
//   are +inf, the draw is uniform among those. If no token has a logit above -inf, sample() throws
//   lokal::Error.
// * The generator is our own xoshiro256** seeded through splitmix64, and the draw is our own arithmetic
//   (no std:: distributions), so a seed gives the same tokens on every platform and standard library
//   (up to last-bit differences of std::exp between math libraries).
// * Constrained decoding (set_grammar, chat/grammar.h): the grammar acts first, as a mask — the chain then runs on
//   the logits with every token the grammar does not allow at -inf, exactly. It is cheap: greedy checks the argmax
//   alone and builds the full mask only when the grammar rejects it; with top-k the ranking is walked lazily and
//   only the best-ranked tokens are checked until k allowed ones are found (falling back to the full mask, which
//   the matcher caches per grammar state, when most are rejected). End-of-generation tokens are allowed only where
//   the grammar is complete.
// * Cost: O(n_vocab) per token plus O(n_vocab log k) for top-k. top-p without top-k sorts only the
//   prefix it needs (growing geometrically), and min-p is applied before any sorting (the kept set is
//   the same as applying it after top-p: both keep a prefix of the same ranking).
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

namespace lokal {

class Grammar;
class GrammarMatcher;
class TokenIndex;
class Vocab;

// The per-vocabulary index grammar matchers need (each token's bytes, which tokens end generation). Built once per
// model (O(n_vocab)); immutable and shared by every sequence.
std::shared_ptr<const TokenIndex> make_token_index(const Vocab& vocab);

struct SamplingParams {
  float temperature = 0.8f;     // <= 0: greedy; must be finite
  int top_k = 40;               // 0: off; must be >= 0
  float top_p = 0.95f;          // 1: off; must be in (0, 1]
  float min_p = 0.05f;          // 0: off; must be in [0, 1]
  float repeat_penalty = 1.0f;  // 1: off; > 1 discourages recently seen tokens; must be > 0
  int repeat_last_n = 64;       // how many accepted tokens the penalties look at (0: penalties off)
  float presence_penalty = 0.0f;   // 0: off
  float frequency_penalty = 0.0f;  // 0: off
  uint64_t seed = 0;            // every value is valid; same seed, same draws
  // Added to a token's logit before everything else (OpenAI's logit_bias, llama.cpp's --logit-bias); -inf bans the
  // token (--ignore-eos bans the end-of-generation tokens this way). Ids outside the vocabulary are ignored by the
  // sampler (callers that know the vocabulary reject them with a clear error first).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Constrained decoding: only text this grammar accepts can be generated (chat/grammar.h; JSON schemas compile to
  // one). Null: unconstrained. The sampler needs the model's TokenIndex to use it.
  std::shared_ptr<const Grammar> grammar;

  // Throws lokal::Error naming the bad parameter and its value.
  void validate() const;
  // Bans every end-of-generation token of `vocab` (logit bias -inf): llama.cpp's --ignore-eos.
  void ban_end_of_generation(const Vocab& vocab);
};

class Sampler {
 public:
  // Validates p. With p.grammar, `index` (make_token_index of the model's vocabulary) is required.
  explicit Sampler(const SamplingParams& p, std::shared_ptr<const TokenIndex> index = nullptr);
  ~Sampler();
  Sampler(Sampler&&) noexcept;

  // Picks a token from n_vocab logits (read only). Throws lokal::Error if n_vocab <= 0 or if every logit
  // is -inf or NaN.
  int32_t sample(const float* logits, int n_vocab);
  // The distribution sample() would draw from (after penalties, filters and temperature): (token,
  // probability) pairs summing to 1, most likely first (ties by id); greedy gives one pair. For tests and
  // inspection (it sorts what survives); does not advance the random generator.
  std::vector<std::pair<int32_t, double>> distribution(const float* logits, int n_vocab);

  // Speculative decoding (runtime/speculative.h).
  // A draw exactly like sample(), which also returns in `q` the distribution it drew from: (token, probability) of
  // every candidate that survived the chain, in no particular order; greedy gives the argmax with probability 1.
  int32_t sample_with_distribution(const float* logits, int n_vocab, std::vector<std::pair<int32_t, float>>& q);
  // Decides a drafted token with these logits (the target model's at the drafted position), so that the token
  // returned is distributed exactly as sample() would draw it (lossless speculative sampling, Leviathan et al. 2023):
  //   p = this chain's distribution; q = the distribution the draft drew `drafted` from (null: a deterministic
  //   proposal, q = 1 for `drafted`: greedy drafts, n-gram lookups, text translated from a draft);
  //   accept with probability min(1, p(drafted) / q(drafted)); otherwise draw from max(0, p - q), normalized.
  // Greedy: accepted exactly when `drafted` is the argmax, which is returned either way (token-identical output).
  // Sets *accepted; the caller then accept_generated()s the returned token. `q` must be over the same token ids.
  // VerifyRule::ResampleFromTarget is a deliberately wrong rule (on rejection it draws from p, biasing the output
  // towards drafted tokens) that exists only so a test can show the statistical test detects a wrong rule.
  enum class VerifyRule { Exact, ResampleFromTarget };
  int32_t verify(const float* logits, int n_vocab, int32_t drafted, const std::vector<std::pair<int32_t, float>>* q,
                 bool* accepted, VerifyRule rule = VerifyRule::Exact);

  // Records a token (prompt or generated) for the penalties.
  void accept(int32_t token);
  // Records a generated token: accept(), and advances the grammar (throws lokal::Error if the grammar does not
  // allow it, which sample() never returns).
  void accept_generated(int32_t token);
  // The grammar's state: true when the text generated so far is a complete sentence of it (no grammar: true).
  bool grammar_complete() const;
  bool has_grammar() const { return grammar_ != nullptr; }
  // Full-mask computations so far (for tests and benchmarks of the lazy path).
  int64_t grammar_full_masks() const { return full_masks_; }
  // Forgets the history, restarts the generator from the seed and the grammar from its start.
  void reset();

  const SamplingParams& params() const { return p_; }

 private:
  struct Cand {
    int32_t id;
    float logit;
    double w;  // unnormalized probability after temperature
  };
  // Fills cand_[0, n) with the surviving candidates and their weights; returns their total weight.
  double prepare(const float* logits, int n_vocab);
  // Keeps in cand_[0, n) only what the grammar allows (see the header); greedy: the best allowed token only.
  void apply_grammar(bool greedy);
  // One draw from cand_ by weight (total: their sum).
  int32_t draw(double total);
  uint64_t next_u64();
  double next_uniform();  // [0, 1), 53 random bits

  SamplingParams p_;
  uint64_t rng_[4];
  std::deque<int32_t> history_;
  std::unordered_map<int32_t, int> counts_;  // occurrences within history_
  std::vector<Cand> cand_;
  std::unique_ptr<GrammarMatcher> grammar_;
  std::vector<uint64_t> mask_;  // the grammar's bitmask
  std::vector<Cand> kept_;  // apply_grammar's scratch
  std::vector<float> qdense_;  // verify()'s scratch: q by token id (zero outside q)
  int64_t full_masks_ = 0;
};

}  // namespace lokal
