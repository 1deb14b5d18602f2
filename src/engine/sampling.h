// engine/sampling.h - turning logits into the next token.
//
// Chain, in llama.cpp's default order: repetition/presence/frequency penalties -> top-k ->
// top-p -> min-p -> temperature -> draw. temperature <= 0 is greedy (argmax; the first
// maximum on ties, like llama.cpp). The random draw uses our own splitmix64/xoshiro-style
// generator and arithmetic, so the same seed gives the same tokens on every platform.
#pragma once
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

namespace lokal {

struct SamplingParams {
  float temperature = 0.8f;
  int top_k = 40;              // 0: off
  float top_p = 0.95f;         // 1: off
  float min_p = 0.05f;         // 0: off
  float repeat_penalty = 1.0f; // 1: off; > 1 discourages tokens seen in the last repeat_last_n
  int repeat_last_n = 64;      // 0: penalties off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;

  // Throws lokal::Error naming the bad parameter.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);

  // Picks a token from n_vocab logits (not modified). NaN logits are treated as -inf; if no
  // finite logit remains, throws lokal::Error.
  int32_t sample(const float* logits, int n_vocab);
  // Records a token (prompt or generated) for the penalties.
  void accept(int32_t token);
  void reset();

  const SamplingParams& params() const { return p_; }

 private:
  double next_uniform();  // [0, 1), 53 bits

  SamplingParams p_;
  uint64_t rng_[4];
  std::deque<int32_t> history_;
  std::unordered_map<int32_t, int> counts_;  // occurrences within history_
  struct Cand {
    int32_t id;
    float logit;
    float p;
  };
  std::vector<Cand> cand_;
};

}  // namespace lokal
