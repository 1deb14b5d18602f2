#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "chat/grammar.h"
#include "core/error.h"
#include "tokenizer/vocab.h"

namespace lokal {

void SamplingParams::validate() const {
  auto bad = [](const char* name, double v, const char* rule) {
    throw Error(std::string("invalid sampling parameter ") + name + " = " + std::to_string(v) + ": " + rule);
  };
  if (!std::isfinite(temperature)) bad("temperature", temperature, "must be a finite number (<= 0 means greedy)");
  if (top_k < 0) bad("top_k", top_k, "must be >= 0 (0 turns top-k off)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p", top_p, "must be in (0, 1] (1 turns top-p off)");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p", min_p, "must be in [0, 1] (0 turns min-p off)");
  if (!(std::isfinite(repeat_penalty) && repeat_penalty > 0.0f))
    bad("repeat_penalty", repeat_penalty, "must be a finite number > 0 (1 turns it off)");
  if (repeat_last_n < 0) bad("repeat_last_n", repeat_last_n, "must be >= 0 (0 turns penalties off)");
  if (!std::isfinite(presence_penalty)) bad("presence_penalty", presence_penalty, "must be a finite number");
  if (!std::isfinite(frequency_penalty)) bad("frequency_penalty", frequency_penalty, "must be a finite number");
  for (const auto& [tok, bias] : logit_bias) {
    if (tok < 0) bad("logit_bias token", tok, "must be a token id >= 0");
    if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity())
      bad("logit_bias", bias, "must be a finite number or -inf (bans the token)");
  }
}

namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

}  // namespace

std::shared_ptr<const TokenIndex> make_token_index(const Vocab& vocab) { return TokenIndex::from_vocab(vocab); }

Sampler::Sampler(const SamplingParams& p, std::shared_ptr<const TokenIndex> index) : p_(p) {
  p_.validate();
  if (p_.grammar) {
    if (!index) throw Error("sampling: a grammar needs the model's token index");
    grammar_ = std::make_unique<GrammarMatcher>(p_.grammar, std::move(index));
  }
  reset();
}

Sampler::~Sampler() = default;
Sampler::Sampler(Sampler&&) noexcept = default;

void SamplingParams::ban_end_of_generation(const Vocab& vocab) {
  for (int32_t i = 0; i < vocab.n_tokens(); ++i)
    if (vocab.is_eog(i)) logit_bias.emplace_back(i, -std::numeric_limits<float>::infinity());
}

void Sampler::reset() {
  uint64_t s = p_.seed;
  for (auto& r : rng_) r = splitmix64(s);  // never all zero: splitmix64 is a bijection of distinct inputs
  history_.clear();
  counts_.clear();
  if (grammar_) grammar_->reset();
}

void Sampler::accept_generated(int32_t token) {
  accept(token);
  if (grammar_ && !grammar_->accept_token(token))
    throw Error("sampling: token " + std::to_string(token) + " is not allowed by the grammar here");
}

bool Sampler::grammar_complete() const { return !grammar_ || grammar_->is_complete(); }

void Sampler::apply_grammar(bool greedy) {
  const GrammarMatcher& g = *grammar_;
  auto better = [](const Cand& a, const Cand& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  auto full_mask = [&] {
    ++full_masks_;
    g.fill_bitmask(mask_);
    const size_t n_bits = mask_.size() * 64;
    size_t k = 0;
    for (const Cand& c : cand_) {
      const size_t id = static_cast<size_t>(c.id);
      if (id < n_bits && (mask_[id >> 6] >> (id & 63) & 1) && c.logit != kNegInf) cand_[k++] = c;
    }
    cand_.resize(k);
  };
  auto none_left = [&] {
    if (cand_.empty())
      throw Error(g.is_dead() ? "sampling: the grammar cannot continue (no token can extend the text)"
                              : "sampling: the grammar allows no token of this vocabulary here");
  };
  if (greedy) {
    // The argmax alone, if the grammar allows it: then it is the argmax of the masked logits too.
    size_t best = 0;
    for (size_t i = 1; i < cand_.size(); ++i)
      if (better(cand_[i], cand_[best])) best = i;
    if (cand_[best].logit != kNegInf && g.allowed(cand_[best].id)) {
      cand_[0] = cand_[best];
      cand_.resize(1);
      return;
    }
    full_mask();
    none_left();
    return;  // the caller's greedy scan picks the best survivor
  }
  if (p_.top_k > 0) {
    // The best-ranked candidates only: select the top M = 4 (k + 1) by logit (one pass, as cheap as the
    // unconstrained top-k), then check them in rank order until k + 1 allowed ones are found. One more than k is
    // looked for so that the candidates end in the order the unconstrained chain would leave them on masked logits
    // (rank order when more than k survive), so even the floating-point sums agree to the last bit. When fewer are
    // allowed among the M (a narrow grammar state), the full mask decides — the matcher caches it per state.
    const size_t k = static_cast<size_t>(p_.top_k);
    const size_t m = std::min(cand_.size(), 4 * (k + 1));
    // The top m by rank, selected with a small heap (worst ranked on top) so cand_ keeps its id order for the
    // full-mask fallback: one pass over the vocabulary, few heap operations.
    auto worse = [&](const Cand& a, const Cand& b) { return better(a, b); };  // heap order: the worst at front
    kept_.clear();
    for (const Cand& c : cand_) {
      if (c.logit == kNegInf) continue;
      if (kept_.size() < m) {
        kept_.push_back(c);
        std::push_heap(kept_.begin(), kept_.end(), worse);
      } else if (better(c, kept_.front())) {
        std::pop_heap(kept_.begin(), kept_.end(), worse);
        kept_.back() = c;
        std::push_heap(kept_.begin(), kept_.end(), worse);
      }
    }
    std::sort(kept_.begin(), kept_.end(), better);
    size_t n_ok = 0;
    for (size_t i = 0; i < kept_.size() && n_ok <= k; ++i)
      if (g.allowed(kept_[i].id)) kept_[n_ok++] = kept_[i];
    if (n_ok > k) {  // more than k allowed: the best k, in rank order
      cand_.assign(kept_.begin(), kept_.begin() + static_cast<ptrdiff_t>(k));
      return;
    }
    // Otherwise the full mask below, which compacts cand_ in id order, as the unconstrained chain leaves the
    // candidates when no more than k survive.
  }
  full_mask();
  none_left();
}

uint64_t Sampler::next_u64() {  // xoshiro256**
  const uint64_t result = rotl(rng_[1] * 5, 7) * 9;
  const uint64_t t = rng_[1] << 17;
  rng_[2] ^= rng_[0];
  rng_[3] ^= rng_[1];
  rng_[1] ^= rng_[2];
  rng_[0] ^= rng_[3];
  rng_[2] ^= t;
  rng_[3] = rotl(rng_[3], 45);
  return result;
}

double Sampler::next_uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

void Sampler::accept(int32_t token) {
  if (p_.repeat_last_n == 0) return;
  history_.push_back(token);
  counts_[token]++;
  while (history_.size() > static_cast<size_t>(p_.repeat_last_n)) {
    const int32_t old = history_.front();
    history_.pop_front();
    if (--counts_[old] == 0) counts_.erase(old);
  }
}

double Sampler::prepare(const float* logits, int n_vocab) {
  if (n_vocab <= 0) throw Error("sampling: the vocabulary is empty (n_vocab = " + std::to_string(n_vocab) + ")");
  if (!logits) throw Error("sampling: no logits");
  const size_t nv = static_cast<size_t>(n_vocab);

  // Candidates indexed by token id; NaN counts as -inf.
  cand_.resize(nv);
  for (size_t i = 0; i < nv; ++i) {
    const float l = logits[i];
    cand_[i] = {static_cast<int32_t>(i), std::isnan(l) ? kNegInf : l, 0.0};
  }

  // 0. Logit biases (-inf bans a token; -inf + finite stays -inf).
  for (const auto& [tok, bias] : p_.logit_bias)
    if (tok >= 0 && tok < n_vocab) cand_[static_cast<size_t>(tok)].logit += bias;

  // 1. Penalties on the tokens of the history window.
  const bool penalize = p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f;
  if (penalize) {
    for (const auto& [tok, cnt] : counts_) {
      if (tok < 0 || tok >= n_vocab) continue;
      float& l = cand_[static_cast<size_t>(tok)].logit;
      if (l == kNegInf) continue;
      l = l <= 0.0f ? l * p_.repeat_penalty : l / p_.repeat_penalty;
      l -= p_.presence_penalty + static_cast<float>(cnt) * p_.frequency_penalty;
      if (std::isnan(l)) l = kNegInf;  // inf - inf
    }
  }

  // Constrained decoding: the grammar's mask, before any filter (see the header).
  if (grammar_) apply_grammar(p_.temperature <= 0.0f);

  // Greedy: first maximum of the penalized logits.
  if (p_.temperature <= 0.0f) {
    size_t best = 0;
    for (size_t i = 1; i < cand_.size(); ++i)
      if (cand_[i].logit > cand_[best].logit) best = i;
    if (cand_[best].logit == kNegInf) throw Error("sampling: every logit is -inf or NaN; no token can be chosen");
    const Cand pick = cand_[best];
    cand_[0] = pick;
    cand_[0].w = 1.0;
    cand_.resize(1);
    return 1.0;
  }

  // Drop impossible tokens (stable, so the order stays by id). If any logit is +inf, only those remain,
  // equally likely.
  float mx = kNegInf;
  for (const Cand& c : cand_) mx = std::max(mx, c.logit);
  if (mx == kNegInf) throw Error("sampling: every logit is -inf or NaN; no token can be chosen");
  size_t n = 0;
  const size_t n_in = cand_.size();  // nv, or fewer after the grammar
  for (size_t i = 0; i < n_in; ++i) {
    Cand c = cand_[i];
    if (c.logit == kNegInf || (mx == kPosInf && c.logit != kPosInf)) continue;
    if (mx == kPosInf) c.logit = 0.0f;
    cand_[n++] = c;
  }
  cand_.resize(n);
  if (mx == kPosInf) mx = 0.0f;

  // Ranking: larger logit first, then lower id. A strict total order, so every sort agrees.
  auto better = [](const Cand& a, const Cand& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  size_t sorted = 0;  // cand_[0, sorted) is sorted and ranks above everything after it

  // 2. top-k.
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < n) {
    n = static_cast<size_t>(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + static_cast<ptrdiff_t>(n), cand_.end(), better);
    cand_.resize(n);
    sorted = n;
  }

  // 3. top-p needs the softmax normalizer (temperature 1) over what top-k kept.
  double z = 0.0;
  if (p_.top_p < 1.0f)
    for (const Cand& c : cand_) z += std::exp(static_cast<double>(c.logit) - mx);

  // 4. min-p, done before top-p: both keep a prefix of the same ranking, so the result is the shorter
  // prefix whichever runs first, and this way top-p sorts fewer candidates.
  // p >= min_p * p_max  <=>  logit >= max_logit + log(min_p).
  if (p_.min_p > 0.0f) {
    const double cut = static_cast<double>(mx) + std::log(static_cast<double>(p_.min_p));
    size_t k = 0;
    for (size_t i = 0; i < n; ++i)
      if (static_cast<double>(cand_[i].logit) >= cut) cand_[k++] = cand_[i];
    n = k;  // the maximum always survives
    cand_.resize(n);
    sorted = std::min(sorted, n);  // a sorted set stays sorted (stable compaction)
  }

  // top-p on the (lazily) sorted ranking: the smallest prefix whose mass reaches top_p.
  if (p_.top_p < 1.0f) {
    const double target = static_cast<double>(p_.top_p) * z;
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      if (i >= sorted) {  // rank the next chunk (geometric growth): select it in O(rest), then sort it
        const size_t upto = std::min(n, std::max<size_t>(64, 4 * sorted));
        const auto first = cand_.begin() + static_cast<ptrdiff_t>(sorted);
        const auto mid = cand_.begin() + static_cast<ptrdiff_t>(upto);
        if (upto < n) std::nth_element(first, mid, cand_.begin() + static_cast<ptrdiff_t>(n), better);
        std::sort(first, mid, better);
        sorted = upto;
      }
      cum += std::exp(static_cast<double>(cand_[i].logit) - mx);
      if (cum >= target) {
        n = i + 1;
        break;
      }
    }
    cand_.resize(n);
  }

  // 5. Temperature.
  const double inv_t = 1.0 / static_cast<double>(p_.temperature);
  double total = 0.0;
  for (Cand& c : cand_) {
    c.w = std::exp((static_cast<double>(c.logit) - mx) * inv_t);
    total += c.w;
  }
  return total;  // >= 1: the maximum has weight exp(0)
}

int32_t Sampler::sample(const float* logits, int n_vocab) {
  const double total = prepare(logits, n_vocab);
  if (cand_.size() == 1) return cand_[0].id;
  // 6. Draw: the first candidate whose cumulative weight exceeds u * total.
  return draw(total);
}

int32_t Sampler::draw(double total) {
  const double r = next_uniform() * total;
  double cum = 0.0;
  for (const Cand& c : cand_) {
    cum += c.w;
    if (r < cum) return c.id;
  }
  // Rounding left r at the very top: the last candidate with any weight.
  for (size_t i = cand_.size(); i-- > 0;)
    if (cand_[i].w > 0.0) return cand_[i].id;
  return cand_[0].id;
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits, int n_vocab) {
  const double total = prepare(logits, n_vocab);
  std::vector<std::pair<int32_t, double>> out;
  out.reserve(cand_.size());
  for (const Cand& c : cand_) out.emplace_back(c.id, c.w / total);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  });
  return out;
}

int32_t Sampler::sample_with_distribution(const float* logits, int n_vocab,
                                          std::vector<std::pair<int32_t, float>>& q) {
  const double total = prepare(logits, n_vocab);
  q.clear();
  q.reserve(cand_.size());
  for (const Cand& c : cand_) q.emplace_back(c.id, static_cast<float>(c.w / total));
  if (cand_.size() == 1) return cand_[0].id;
  return draw(total);  // the same draw as sample()
}

int32_t Sampler::verify(const float* logits, int n_vocab, int32_t drafted,
                        const std::vector<std::pair<int32_t, float>>* q, bool* accepted, VerifyRule rule) {
  const double total = prepare(logits, n_vocab);
  if (p_.temperature <= 0.0f || cand_.size() == 1) {  // one candidate: p is a point mass
    *accepted = cand_[0].id == drafted;
    return cand_[0].id;
  }
  // p(drafted) and q(drafted).
  double px = 0.0;
  for (const Cand& c : cand_)
    if (c.id == drafted) px = c.w / total;
  double qx = 1.0;
  if (q) {
    qx = 0.0;
    for (const auto& [id, pr] : *q)
      if (id == drafted) qx = pr;
  }
  const double u = next_uniform();
  if (px > 0.0 && (qx <= 0.0 || u * qx < px)) {  // u < p/q; a token q could not give is accepted iff p has it
    *accepted = true;
    return drafted;
  }
  *accepted = false;
  // Residual max(0, p - q) over p's candidates (where p is 0 the residual is 0 too).
  if (qdense_.size() < static_cast<size_t>(n_vocab)) qdense_.assign(static_cast<size_t>(n_vocab), 0.0f);
  if (rule == VerifyRule::Exact) {
    if (q) {
      for (const auto& [id, pr] : *q)
        if (id >= 0 && id < n_vocab) qdense_[static_cast<size_t>(id)] += pr;
    } else if (drafted >= 0 && drafted < n_vocab) {
      qdense_[static_cast<size_t>(drafted)] = 1.0f;
    }
  }
  auto residual = [&](const Cand& c) {
    return std::max(0.0, c.w / total - static_cast<double>(qdense_[static_cast<size_t>(c.id)]));
  };
  double rtotal = 0.0;
  for (const Cand& c : cand_) rtotal += residual(c);
  if (rtotal > 0.0) {
    for (Cand& c : cand_) c.w = residual(c);
  } else {
    rtotal = total;  // p <= q everywhere (p == q up to rounding): rejection had probability ~0; draw from p
  }
  if (rule == VerifyRule::Exact) {  // clear the scratch for the next call
    if (q) {
      for (const auto& [id, pr] : *q)
        if (id >= 0 && id < n_vocab) qdense_[static_cast<size_t>(id)] = 0.0f;
    } else if (drafted >= 0 && drafted < n_vocab) {
      qdense_[static_cast<size_t>(drafted)] = 0.0f;
    }
  }
  return draw(rtotal);
}

}  // namespace lokal
