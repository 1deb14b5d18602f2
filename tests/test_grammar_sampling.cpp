// Constrained sampling (runtime/sampling.h with a grammar): the sampler with a grammar must draw from exactly the
// distribution of the unconstrained sampler run on the logits with every disallowed token at -inf, whatever path it
// takes (greedy argmax check, lazy top-k walk, full mask). Compared exactly: both sides do the same arithmetic on the
// same surviving candidates, so the probabilities are equal to the last bit.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "core/error.h"
#include "runtime/sampling.h"

using namespace lokal;

namespace {

// A small vocabulary with the shapes that matter: single characters, multi-character pieces, pieces that cross
// grammar boundaries, an empty control token and an end-of-generation token.
std::shared_ptr<const TokenIndex> small_vocab() {
  std::vector<std::string> pieces = {"",  "a",   "b",   "c",  "ab", "abc", "0",  "1",  "12", "9",   "{",    "}",
                                     "\"", "\":", "x",   "y",  " ",  ", ",  "\n", "ba", "ca", "0a",  "true", "tr",
                                     "ue", "null", "\"a", "a\"", "[", "]",  ",",  "-",  ".",  "e",   "fals", "e}"};
  std::vector<bool> eog(pieces.size(), false);
  eog[0] = true;  // token 0: the end-of-generation control token
  return std::make_shared<const TokenIndex>(pieces, eog);
}

std::vector<float> masked(const std::vector<float>& logits, const GrammarMatcher& g) {
  std::vector<uint8_t> mask;
  g.fill_mask(mask);
  std::vector<float> out = logits;
  for (size_t i = 0; i < out.size(); ++i)
    if (!mask[i]) out[i] = -std::numeric_limits<float>::infinity();
  return out;
}

}  // namespace

TEST(GrammarSampling, DistributionEqualsTheMaskedDistribution) {
  auto idx = small_vocab();
  const char* grammars[] = {
      R"(root ::= "a" [bc]* "1")",
      R"(root ::= ("ab" | "abc" | "ca")+ "0")",
      R"(root ::= "{" "\"a\":" ("true" | "null" | [0-9]+) "}")",
      R"(root ::= [0-9] [0-9]? )",
  };
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  struct P {
    float temp;
    int top_k;
    float top_p, min_p;
  };
  const P params[] = {{0.0f, 40, 0.95f, 0.05f}, {1.0f, 0, 1.0f, 0.0f}, {0.8f, 3, 1.0f, 0.0f}, {0.8f, 1, 0.9f, 0.1f},
                      {1.5f, 0, 0.7f, 0.0f},    {0.7f, 40, 0.95f, 0.05f}, {1.0f, 5, 0.5f, 0.2f}};
  int checked = 0;
  for (const char* text : grammars) {
    auto gram = Grammar::parse(text);
    for (const P& p : params) {
      SamplingParams sp;
      sp.temperature = p.temp;
      sp.top_k = p.top_k;
      sp.top_p = p.top_p;
      sp.min_p = p.min_p;
      sp.grammar = gram;
      SamplingParams plain = sp;
      plain.grammar = nullptr;
      Sampler constrained(sp, idx);
      Sampler reference(plain);
      GrammarMatcher state(gram, idx);  // walks the same tokens as `constrained`
      for (int step = 0; step < 12; ++step) {
        std::vector<float> logits(static_cast<size_t>(idx->n_tokens()));
        for (float& l : logits) l = nd(rng);
        const std::vector<float> ref_logits = masked(logits, state);
        bool any = false;
        for (float l : ref_logits) any = any || std::isfinite(l);
        if (!any) break;  // complete with no EOG allowed... cannot happen with token 0 as EOG, but be safe
        const auto got = constrained.distribution(logits.data(), static_cast<int>(logits.size()));
        const auto want = reference.distribution(ref_logits.data(), static_cast<int>(ref_logits.size()));
        ASSERT_EQ(got, want) << text << " temp " << p.temp << " top_k " << p.top_k << " step " << step;
        ++checked;
        const int32_t tok = constrained.sample(logits.data(), static_cast<int>(logits.size()));
        ASSERT_TRUE(state.allowed(tok)) << tok;
        if (idx->is_eog(tok)) {
          ASSERT_TRUE(constrained.grammar_complete());
          break;
        }
        constrained.accept_generated(tok);
        ASSERT_TRUE(state.accept_token(tok));
      }
    }
  }
  EXPECT_GT(checked, 100);
}

TEST(GrammarSampling, GreedyAndTopKRarelyNeedTheFullMask) {
  // A grammar that allows almost everything: the argmax and the top-k walk settle it without a full mask.
  auto idx = small_vocab();
  auto gram = Grammar::parse(R"(root ::= [^\x00]* )");
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (float temp : {0.0f, 0.8f}) {
    SamplingParams sp;
    sp.temperature = temp;
    sp.top_k = 5;
    sp.grammar = gram;
    Sampler s(sp, idx);
    for (int i = 0; i < 50; ++i) {
      std::vector<float> logits(static_cast<size_t>(idx->n_tokens()));
      for (float& l : logits) l = nd(rng);
      logits[0] = -100.0f;  // keep EOG out of the way
      const int32_t tok = s.sample(logits.data(), static_cast<int>(logits.size()));
      s.accept_generated(tok);
    }
    EXPECT_EQ(s.grammar_full_masks(), 0) << "temp " << temp;
  }
  // A narrow grammar: greedy falls back to the mask when the argmax is refused, and still picks the best allowed.
  SamplingParams sp;
  sp.temperature = 0.0f;
  sp.grammar = Grammar::parse(R"(root ::= "9")");
  Sampler s(sp, idx);
  std::vector<float> logits(static_cast<size_t>(idx->n_tokens()), 0.0f);
  logits[1] = 10.0f;  // "a", refused
  logits[9] = -5.0f;  // "9", the only choice
  EXPECT_EQ(s.sample(logits.data(), static_cast<int>(logits.size())), 9);
  EXPECT_EQ(s.grammar_full_masks(), 1);
  s.accept_generated(9);
  EXPECT_TRUE(s.grammar_complete());
  EXPECT_EQ(s.sample(logits.data(), static_cast<int>(logits.size())), 0);  // only end of generation remains
  EXPECT_THROW(s.accept_generated(1), Error);
}

TEST(GrammarSampling, NeedsTheTokenIndex) {
  SamplingParams sp;
  sp.grammar = Grammar::parse(R"(root ::= "a")");
  EXPECT_THROW(Sampler s(sp), Error);
}
