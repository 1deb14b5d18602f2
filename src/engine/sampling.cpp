#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"

namespace lokal {

void SamplingParams::validate() const {
  auto bad = [](const std::string& what) { throw Error("invalid sampling parameter: " + what); };
  if (!std::isfinite(temperature) || temperature < 0) bad("temperature must be >= 0");
  if (top_k < 0) bad("top_k must be >= 0");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p must be in [0, 1]");
  if (!std::isfinite(repeat_penalty) || repeat_penalty <= 0) bad("repeat_penalty must be > 0");
  if (repeat_last_n < 0) bad("repeat_last_n must be >= 0");
  if (!std::isfinite(presence_penalty) || !std::isfinite(frequency_penalty)) bad("penalties must be finite");
}

namespace {
uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Sampler::Sampler(const SamplingParams& p) : p_(p) {
  p_.validate();
  reset();
}

void Sampler::reset() {
  uint64_t s = p_.seed;
  for (auto& r : rng_) r = splitmix64(s);
  history_.clear();
  counts_.clear();
}

double Sampler::next_uniform() {  // xoshiro256** step
  const uint64_t result = rotl(rng_[1] * 5, 7) * 9;
  const uint64_t t = rng_[1] << 17;
  rng_[2] ^= rng_[0];
  rng_[3] ^= rng_[1];
  rng_[1] ^= rng_[2];
  rng_[0] ^= rng_[3];
  rng_[2] ^= t;
  rng_[3] = rotl(rng_[3], 45);
  return static_cast<double>(result >> 11) * 0x1.0p-53;
}

void Sampler::accept(int32_t token) {
  if (p_.repeat_last_n == 0) return;
  history_.push_back(token);
  counts_[token]++;
  while (static_cast<int>(history_.size()) > p_.repeat_last_n) {
    int32_t old = history_.front();
    history_.pop_front();
    if (--counts_[old] == 0) counts_.erase(old);
  }
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  if (n_vocab <= 0) throw Error("cannot sample from an empty vocabulary");
  const float ninf = -std::numeric_limits<float>::infinity();
  cand_.resize(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) cand_[static_cast<size_t>(i)] = {i, std::isnan(logits[i]) ? ninf : logits[i], 0.0f};

  // Penalties on tokens seen in the window (llama.cpp semantics for repeat_penalty; OpenAI's
  // presence/frequency: logit -= presence + count * frequency).
  for (const auto& [tok, cnt] : counts_) {
    if (tok < 0 || tok >= n_vocab) continue;
    float& l = cand_[static_cast<size_t>(tok)].logit;
    if (p_.repeat_penalty != 1.0f) l = l <= 0 ? l * p_.repeat_penalty : l / p_.repeat_penalty;
    l -= p_.presence_penalty + static_cast<float>(cnt) * p_.frequency_penalty;
  }

  if (p_.temperature <= 0.0f) {  // greedy: first maximum
    int32_t best = 0;
    for (int i = 1; i < n_vocab; ++i)
      if (cand_[static_cast<size_t>(i)].logit > cand_[static_cast<size_t>(best)].logit) best = i;
    if (cand_[static_cast<size_t>(best)].logit == ninf) throw Error("all logits are -inf or NaN; cannot sample");
    return best;
  }

  auto by_logit = [](const Cand& a, const Cand& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  size_t n = cand_.size();
  // top-k: partial sort keeps only the k best, sorted.
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    n = static_cast<size_t>(p_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  while (n > 0 && cand_[n - 1].logit == ninf) --n;
  if (n == 0) throw Error("all logits are -inf or NaN; cannot sample");

  // Probabilities (softmax at temperature 1) of the survivors, for top-p and min-p.
  auto normalize = [&](float temp) {
    const float mx = cand_[0].logit;
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      cand_[i].p = std::exp((cand_[i].logit - mx) / temp);
      sum += cand_[i].p;
    }
    for (size_t i = 0; i < n; ++i) cand_[i].p = static_cast<float>(cand_[i].p / sum);
  };
  normalize(1.0f);
  if (p_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += cand_[i].p;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (p_.min_p > 0.0f) {  // drop tokens whose probability is below min_p * p(best)
    const float cut = cand_[0].p * p_.min_p;
    size_t keep = 1;
    while (keep < n && cand_[keep].p >= cut) ++keep;
    n = keep;
  }
  normalize(p_.temperature);
  double r = next_uniform(), cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += cand_[i].p;
    if (r < cum) return cand_[i].id;
  }
  return cand_[n - 1].id;
}

}  // namespace lokal
