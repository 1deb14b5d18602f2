// Speculative decoding (runtime/speculative.h) against decoding without it.
//
// What must hold, and how each test checks it:
//  * Greedy: the output is token-identical to a plain Session's (Sampler::verify accepts a drafted token exactly when
//    it is the target's argmax, and Forward's batch invariance makes every verified row bit-identical to one-token
//    decoding). The comparisons are therefore exact, with no tolerance: for every drafter (same-vocabulary draft,
//    different-vocabulary draft through the intersection and through text, n-gram lookup, n-gram + draft), fixed
//    draft lengths 1/4/8 with p_min 0 (so drafts really happen and really get rejected: rollback is exercised), the
//    adaptive defaults, penalties and logit bias, grammars, the end of the context (also with q8_0 KV caches),
//    context shifts, several turns in one Session, and the scheduler (against Session and against a scheduler
//    without speculation: tokens, text, stop strings, cancellation, preemption, and the logits given to on_token).
//  * Sampling: every output token has exactly the target's distribution. Checked statistically, at the unit level
//    (Sampler::verify on synthetic logits against the exact p of Sampler::distribution, Pearson chi-square) and end to
//    end (thousands of seeded generations, plain vs speculative, two-sample chi-square homogeneity test, through
//    Session and through the scheduler). Both tests are shown to have power: the deliberately wrong
//    VerifyRule::ResampleFromTarget must fail them. Every statistical test uses fixed seeds, so its outcome is
//    deterministic; the significance level 0.001 is what a correct implementation fails by bad luck for one seed in
//    a thousand.
//  * The parts: NgramDrafter's lookup, ModelDrafter's proposals (the draft model's own greedy continuation, after
//    rollbacks too; sampled proposals with their q), Speculator's drafter order / room / draft_min, PassCost,
//    vocabulary matching, statistics, and the errors of bad settings and unusable draft files.
// Models: tinytales-4m (target) with tinytales-draft-1m (same 2048 vocabulary) and tinytales-draft-v1024 (a
// different 1024 vocabulary); tinychat-4m with tinychat-draft-1m (ChatML prompts with special tokens), and with the
// tinytales draft (another vocabulary, without the chat's control tokens).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "chat/grammar.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "model/model.h"
#include "runtime/sampling.h"
#include "runtime/scheduler.h"
#include "runtime/session.h"
#include "runtime/speculative.h"
#include "support/test_data.h"
#include "tokenizer/vocab.h"

using namespace lokal;

namespace {

// ---------------------------------------------------------------------------------------------- statistics

// Regularized upper incomplete gamma function Q(a, x) (series below a + 1, Lentz's continued fraction above).
double gamma_q(double a, double x) {
  if (x <= 0) return 1.0;
  const double lead = -x + a * std::log(x) - std::lgamma(a);
  if (x < a + 1) {
    double ap = a, del = 1.0 / a, sum = del;
    for (int n = 0; n < 100000; ++n) {
      ap += 1;
      del *= x / ap;
      sum += del;
      if (std::fabs(del) < std::fabs(sum) * 1e-16) break;
    }
    return std::max(0.0, 1.0 - sum * std::exp(lead));
  }
  constexpr double kTiny = 1e-300;
  double b = x + 1 - a, c = 1 / kTiny, d = 1 / b, h = d;
  for (int i = 1; i < 100000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < 1e-16) break;
  }
  return std::exp(lead) * h;
}

// P(X >= chi2) for X ~ chi-square(df).
double chi2_pvalue(double chi2, int df) { return gamma_q(0.5 * df, 0.5 * chi2); }

// The `prob` quantile of chi-square(df), by bisection on the p-value.
double chi2_quantile(double prob, int df) {
  double lo = 0, hi = df + 100.0 * std::sqrt(static_cast<double>(df)) + 100;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (1 - chi2_pvalue(mid, df) < prob ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

struct Chi2 {
  double stat = 0;
  int df = 0;
  double p = 1;
  double q999 = 0;  // the 0.999 quantile for df
  std::string str() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "chi2 %.2f, df %d, 0.999 quantile %.2f, p-value %.3g", stat, df, q999, p);
    return buf;
  }
};

Chi2 make_chi2(double stat, int df) {
  Chi2 c;
  c.stat = stat;
  c.df = df;
  c.p = chi2_pvalue(stat, df);
  c.q999 = chi2_quantile(0.999, df);
  return c;
}

// Pearson goodness of fit of counts (by token) against exact probabilities; every category with p > 0 is one cell
// (callers make N large enough that N p >= 5 everywhere).
Chi2 goodness_of_fit(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double stat = 0;
  int cells = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    const double e = static_cast<double>(n) * p[i];
    EXPECT_GE(e, 5.0) << "cell " << i << " is too small for the chi-square approximation";
    stat += (static_cast<double>(counts[i]) - e) * (static_cast<double>(counts[i]) - e) / e;
    ++cells;
  }
  return make_chi2(stat, cells - 1);
}

// Two-sample chi-square homogeneity test of two samples of tokens. Cells whose expected count is below 5 in either
// sample are pooled into one "rare" cell (which joins the smallest regular cell when it is itself below 5).
Chi2 homogeneity(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::map<int32_t, std::pair<double, double>> cnt;
  for (int32_t t : a) cnt[t].first += 1;
  for (int32_t t : b) cnt[t].second += 1;
  const double na = static_cast<double>(a.size()), nb = static_cast<double>(b.size()), n = na + nb;
  std::vector<std::pair<double, double>> cells;
  std::pair<double, double> rare{0, 0};
  auto small = [&](const std::pair<double, double>& c) {
    const double tot = c.first + c.second;
    return tot * na / n < 5 || tot * nb / n < 5;
  };
  for (const auto& [tok, c] : cnt) {
    if (small(c)) {
      rare.first += c.first;
      rare.second += c.second;
    } else {
      cells.push_back(c);
    }
  }
  if (rare.first + rare.second > 0) {
    if (!small(rare) || cells.empty()) {
      cells.push_back(rare);
    } else {
      auto it = std::min_element(cells.begin(), cells.end(), [](const auto& x, const auto& y) {
        return x.first + x.second < y.first + y.second;
      });
      it->first += rare.first;
      it->second += rare.second;
    }
  }
  double stat = 0;
  for (const auto& [x, y] : cells) {
    const double tot = x + y;
    const double ea = tot * na / n, eb = tot * nb / n;
    stat += (x - ea) * (x - ea) / ea + (y - eb) * (y - eb) / eb;
  }
  return make_chi2(stat, std::max(1, static_cast<int>(cells.size()) - 1));
}

// ---------------------------------------------------------------------------------------------- models, sessions

// Two threads (the machine's cores) for the identity tests: verification passes of several rows are then split over
// threads, which must not change a bit. One thread for the thousands of tiny generations of the statistical tests,
// where a second spinning thread costs more than it gives (and the results do not depend on it).
ThreadPool& shared_pool() {
  static ThreadPool pool(2);
  return pool;
}

ThreadPool& single_pool() {
  static ThreadPool pool(1);
  return pool;
}

std::string model_path(const std::string& file) { return test::data_path("models/real/" + file); }

// Models are loaded once per process and shared by the tests (read only).
const Model& model(const std::string& file) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Model>> loaded;
  std::lock_guard<std::mutex> lk(mu);
  auto& m = loaded[file];
  if (!m) m = Model::load(model_path(file));
  return *m;
}

const char* kTarget = "tinytales-4m-f32.gguf";
const char* kDraft = "tinytales-draft-1m-q8_0.gguf";
const char* kDraftV1024 = "tinytales-draft-v1024-q8_0.gguf";
const char* kChat = "tinychat-4m-q8_0.gguf";
const char* kChatDraft = "tinychat-draft-1m-q8_0.gguf";

std::string book() {
  static const std::string text = test::read_file(test::data_path("golden/ppl-text-books.txt"));
  return text;
}

std::vector<int32_t> tok(const Model& m, const std::string& text) { return m.vocab().tokenize(text, true, true); }

// Story openings, a passage of a book (held-out text), and a repetitive prompt that quotes itself (where the n-gram
// lookup has long matches and drafts are long and mostly right).
std::vector<std::vector<int32_t>> tale_prompts(const Model& m) {
  std::vector<std::vector<int32_t>> p;
  p.push_back(tok(m, "Once upon a time there was a poor miller who had three sons."));
  p.push_back(tok(m, "The old king sat on his throne and said to the princess:"));
  std::vector<int32_t> b = tok(m, book().substr(4000, 600));
  b.resize(std::min<size_t>(b.size(), 60));
  p.push_back(b);
  p.push_back(tok(m, "\"Come here,\" said the wolf. \"Come here,\" said the wolf again. \"Come here,\" said the wolf, "
                     "and the little pig said: \"No, no, not by the hair of my chinny chin chin.\" \"Come here,\" said"));
  return p;
}

std::vector<std::vector<int32_t>> chat_prompts(const Model& m) {
  const std::string sys = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";
  auto user = [&](const std::string& s, const std::string& system = "") {
    return tok(m, (system.empty() ? sys : system) + "<|im_start|>user\n" + s + "<|im_end|>\n<|im_start|>assistant\n");
  };
  return {user("What is the capital of France?"), user("Tell me a short story about a cat."),
          user("Reply in JSON with the name and age of Anna, who is 31 years old."),
          user("How many legs does a spider have?",
               "<|im_start|>system\nThink step by step before you answer.<|im_end|>\n")};
}

SessionOptions session_opts(int64_t n_ctx, DType kv = DType::F16, ThreadPool* pool = nullptr) {
  SessionOptions so;
  so.n_ctx = n_ctx;
  so.pool = pool ? pool : &shared_pool();
  so.cache_type_k = kv;
  so.cache_type_v = kv;
  return so;
}

SamplingParams greedy() {
  SamplingParams sp;
  sp.temperature = 0;
  return sp;
}

GenerationResult run_plain(const Model& m, const std::vector<int32_t>& prompt, int n_predict, const SamplingParams& sp,
                           const SessionOptions& so) {
  Session s(m, so);
  return s.generate(prompt, n_predict, sp, nullptr);
}

// A fresh Session and fresh drafters (SpecSetup::make) for one generation.
GenerationResult run_spec(const Model& m, const SpecSetup& setup, const std::vector<int32_t>& prompt, int n_predict,
                          const SamplingParams& sp, const SessionOptions& so, const SpecOptions* opt = nullptr) {
  Session s(m, so);
  std::unique_ptr<SpecSeq> seq = setup.make(s.pool(), s.n_ctx(), nullptr, opt);
  EXPECT_TRUE(seq && seq->spec);
  s.set_speculator(seq->spec.get());
  GenerationResult r = s.generate(prompt, n_predict, sp, nullptr);
  s.set_speculator(nullptr);
  return r;
}

// Fixed draft length, no confidence cut-off: every pass drafts as much as it may.
SpecConfig fixed_config(const std::string& draft, int draft_max, bool ngram = false,
                        VocabMode vocab = VocabMode::Auto) {
  SpecConfig c;
  c.draft = draft;
  c.ngram = ngram;
  c.spec.adaptive = false;
  c.spec.draft_max = draft_max;
  c.model.p_min = 0;
  c.model.vocab = vocab;
  return c;
}

// Passes account for every token: the first comes from the prompt's logits, every later pass gives 1 + (accepted)
// tokens. Holds when generation ended at a pass boundary (length limit or full context, not an end-of-generation
// token, whose pass produced a token that is not in the output).
void expect_pass_accounting(const GenerationResult& r) {
  EXPECT_LE(r.spec.accepted, r.spec.drafted);
  EXPECT_GE(r.spec.accepted, 0);
  if (r.stop == StopReason::Length || r.stop == StopReason::ContextFull) {
    EXPECT_EQ(static_cast<int64_t>(r.tokens.size()), 1 + r.spec.passes + r.spec.accepted + r.spec.plain_passes);
  }
}

struct Done {
  std::mutex mu;
  std::map<uint64_t, GenResult> res;
};

GenRequest make_request(const std::vector<int32_t>& prompt, int64_t max_tokens, const SamplingParams& sp, Done& d) {
  GenRequest r;
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.sampling = sp;
  r.on_done = [&d](const GenResult& g) {
    std::lock_guard<std::mutex> lk(d.mu);
    d.res[g.id] = g;
  };
  return r;
}

std::string show(const Model& m, const std::vector<int32_t>& t) {
  std::string s = m.vocab().detokenize(t);
  for (char& c : s)
    if (c == '\n') c = '|';
  return s.size() > 100 ? s.substr(0, 100) + "..." : s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- the chi-square helper

// The p-values and quantiles the statistical tests rely on, against tabulated values (to 3-4 significant digits).
TEST(SpecStatistics, ChiSquareHelperMatchesTables) {
  EXPECT_NEAR(chi2_quantile(0.999, 1), 10.828, 0.01);
  EXPECT_NEAR(chi2_quantile(0.999, 7), 24.322, 0.01);
  EXPECT_NEAR(chi2_quantile(0.999, 10), 29.588, 0.01);
  EXPECT_NEAR(chi2_quantile(0.999, 50), 86.661, 0.02);
  EXPECT_NEAR(chi2_quantile(0.95, 3), 7.815, 0.01);
  EXPECT_NEAR(chi2_pvalue(3.841, 1), 0.05, 1e-4);
  EXPECT_NEAR(chi2_pvalue(18.307, 10), 0.05, 1e-4);
  EXPECT_NEAR(chi2_pvalue(0.0, 4), 1.0, 1e-12);
  // Homogeneity of two identical samples is 0; of disjoint ones, large.
  std::vector<int32_t> a, b;
  for (int i = 0; i < 1000; ++i) a.push_back(i % 4);
  EXPECT_NEAR(homogeneity(a, a).stat, 0.0, 1e-12);
  for (int i = 0; i < 1000; ++i) b.push_back(4 + i % 4);
  EXPECT_GT(homogeneity(a, b).stat, 1000.0);
}

// ---------------------------------------------------------------------------------------------- 1. greedy identity

namespace {

struct Mode {
  std::string name;
  const Model* target;
  SpecConfig cfg;
  const std::vector<std::vector<int32_t>>* prompts;
  const std::vector<GenerationResult>* plain;
  VocabBridge want_bridge;  // of the draft model, when there is one
  bool check_bridge;
};

}  // namespace

// Every drafter, draft lengths 1, 4 and 8 with p_min 0 (drafting on every pass, rejections and rollbacks in every
// generation): the generated ids and the stop reason equal the plain Session's exactly.
TEST(SpecGreedy, TokenIdenticalForEveryDrafter) {
  const Model& tt = model(kTarget);
  const Model& tc = model(kChat);
  const int n_predict = 96;
  const auto tp = tale_prompts(tt);
  const auto cp = chat_prompts(tc);
  std::vector<GenerationResult> tplain, cplain;
  for (const auto& p : tp) tplain.push_back(run_plain(tt, p, n_predict, greedy(), session_opts(256)));
  for (const auto& p : cp) cplain.push_back(run_plain(tc, p, n_predict, greedy(), session_opts(512)));
  for (size_t i = 0; i < cp.size(); ++i) {
    // The chat model answers and ends its turn: at least a few tokens, so that something is drafted.
    EXPECT_GE(cplain[i].tokens.size(), 4u) << show(tc, cplain[i].tokens);
    std::printf("[chat %zu] %s (%s)\n", i, show(tc, cplain[i].tokens).c_str(), stop_reason_name(cplain[i].stop));
  }

  std::vector<Mode> modes = {
      {"same vocabulary (tinytales)", &tt, fixed_config(model_path(kDraft), 4), &tp, &tplain, VocabBridge::Same, true},
      {"same vocabulary (tinychat, ChatML)", &tc, fixed_config(model_path(kChatDraft), 4), &cp, &cplain,
       VocabBridge::Same, true},
      {"v1024 forced intersection", &tt, fixed_config(model_path(kDraftV1024), 4, false, VocabMode::Intersect), &tp,
       &tplain, VocabBridge::Intersect, true},
      {"v1024 forced text", &tt, fixed_config(model_path(kDraftV1024), 4, false, VocabMode::Text), &tp, &tplain,
       VocabBridge::Text, true},
      {"v1024 auto", &tt, fixed_config(model_path(kDraftV1024), 4), &tp, &tplain, VocabBridge::Text, false},
      {"n-gram only", &tt, fixed_config("", 4, true), &tp, &tplain, VocabBridge::Same, false},
      {"n-gram then draft", &tt, fixed_config(model_path(kDraft), 4, true), &tp, &tplain, VocabBridge::Same, true},
      {"n-gram then draft (tinychat)", &tc, fixed_config(model_path(kChatDraft), 4, true), &cp, &cplain,
       VocabBridge::Same, true},
      // A chat target with a draft of another vocabulary that has none of its control tokens (<|im_start|> ...):
      // they are skipped in the translation.
      {"tinychat with tinytales draft, auto", &tc, fixed_config(model_path(kDraft), 4), &cp, &cplain,
       VocabBridge::Text, false},
      {"tinychat with tinytales draft, forced intersection", &tc,
       fixed_config(model_path(kDraft), 4, false, VocabMode::Intersect), &cp, &cplain, VocabBridge::Intersect, true},
  };
  for (const Mode& mode : modes) {
    SCOPED_TRACE(mode.name);
    std::vector<std::string> warnings;
    SpecSetup setup(*mode.target, mode.cfg, LoadOptions{}, &warnings);
    std::printf("[%s] %s\n", mode.name.c_str(), setup.describe().c_str());
    if (setup.draft_vocab()) {
      const VocabBridge b = setup.draft_vocab()->bridge;
      if (mode.check_bridge) {
        EXPECT_EQ(b, mode.want_bridge) << vocab_bridge_name(b);
      } else {
        // Auto between two different vocabularies: one of the two bridges (which one depends on the overlap).
        EXPECT_TRUE(b == VocabBridge::Intersect || b == VocabBridge::Text) << vocab_bridge_name(b);
        std::printf("[%s] auto picked: %s (overlap %.3f)\n", mode.name.c_str(), vocab_bridge_name(b),
                    setup.draft_vocab()->match.overlap);
        EXPECT_EQ(b, setup.draft_vocab()->match.overlap >= kIntersectMinOverlap ? VocabBridge::Intersect
                                                                               : VocabBridge::Text);
      }
    }
    int64_t drafted = 0, accepted = 0;
    for (int dm : {1, 4, 8}) {
      SpecOptions o = mode.cfg.spec;
      o.draft_max = dm;
      for (size_t i = 0; i < mode.prompts->size(); ++i) {
        SCOPED_TRACE("draft_max " + std::to_string(dm) + ", prompt " + std::to_string(i));
        const GenerationResult& want = (*mode.plain)[i];
        const GenerationResult got = run_spec(*mode.target, setup, (*mode.prompts)[i], n_predict, greedy(),
                                              session_opts(mode.target == &tt ? 256 : 512), &o);
        EXPECT_EQ(got.tokens, want.tokens) << "plain:       " << show(*mode.target, want.tokens)
                                           << "\nspeculative: " << show(*mode.target, got.tokens);
        EXPECT_EQ(got.stop, want.stop);
        EXPECT_GT(got.spec.drafted, 0) << "nothing was drafted";
        EXPECT_GT(got.spec.passes, 0);
        expect_pass_accounting(got);
        drafted += got.spec.drafted;
        accepted += got.spec.accepted;
      }
    }
    std::printf("[%s] drafted %lld, accepted %lld (%.1f%%)\n", mode.name.c_str(), static_cast<long long>(drafted),
                static_cast<long long>(accepted), drafted ? 100.0 * accepted / drafted : 0.0);
    EXPECT_GT(drafted - accepted, 0) << "no draft was ever rejected: rollback was not exercised";
    EXPECT_GT(accepted, 0) << "no draft was ever accepted: multi-token passes were not exercised";
  }
}

// The adaptive defaults (draft-max 16, p_min 0.75, the cost model deciding k and pausing): still identical.
TEST(SpecGreedy, TokenIdenticalWithAdaptiveDefaults) {
  const Model& tt = model(kTarget);
  const auto tp = tale_prompts(tt);
  const int n_predict = 96;
  std::vector<SpecConfig> cfgs(3);
  cfgs[0].draft = model_path(kDraft);
  cfgs[1].draft = model_path(kDraftV1024);
  cfgs[2].ngram = true;
  cfgs[2].draft = model_path(kDraft);
  for (const SpecConfig& cfg : cfgs) {
    SpecSetup setup(tt, cfg, LoadOptions{}, nullptr);
    SCOPED_TRACE(setup.describe());
    ASSERT_TRUE(setup.config().spec.adaptive);
    for (size_t i = 0; i < tp.size(); ++i) {
      const GenerationResult want = run_plain(tt, tp[i], n_predict, greedy(), session_opts(256));
      const GenerationResult got = run_spec(tt, setup, tp[i], n_predict, greedy(), session_opts(256));
      EXPECT_EQ(got.tokens, want.tokens) << "prompt " << i;
      EXPECT_EQ(got.stop, want.stop);
      expect_pass_accounting(got);
    }
  }
}

// The target's chain may differ from the drafter's (penalties, logit bias): greedy output is still the target's.
TEST(SpecGreedy, TokenIdenticalWithPenaltiesAndLogitBias) {
  const Model& tt = model(kTarget);
  const auto tp = tale_prompts(tt);
  SamplingParams sp = greedy();
  sp.repeat_penalty = 1.3f;
  sp.repeat_last_n = 32;
  sp.frequency_penalty = 0.2f;
  const std::vector<int32_t> the = tt.vocab().tokenize(" the", false, false);
  ASSERT_FALSE(the.empty());
  sp.logit_bias.emplace_back(the[0], -5.0f);
  SpecSetup setup(tt, fixed_config(model_path(kDraft), 6, true), LoadOptions{}, nullptr);
  int64_t rejected = 0;
  for (size_t i = 0; i < tp.size(); ++i) {
    const GenerationResult want = run_plain(tt, tp[i], 80, sp, session_opts(256));
    const GenerationResult got = run_spec(tt, setup, tp[i], 80, sp, session_opts(256));
    EXPECT_EQ(got.tokens, want.tokens) << "prompt " << i;
    EXPECT_GT(got.spec.drafted, 0);
    rejected += got.spec.drafted - got.spec.accepted;
  }
  EXPECT_GT(rejected, 0);
}

// ---------------------------------------------------------------------------------------------- 2. end of context

// A 64-token context with a 40-token prompt and no token limit (end-of-generation banned, so generation must run
// into the end of the context): drafts are cut to the room left and the last pass ends exactly where plain decoding
// ends. With f16 and with q8_0 KV caches (the plain reference uses the same cache types).
TEST(SpecGreedy, EndOfContextIdentical) {
  const Model& tt = model(kTarget);
  std::vector<int32_t> prompt = tok(tt, book().substr(9000, 600));
  ASSERT_GE(prompt.size(), 40u);
  prompt.resize(40);
  SamplingParams sp = greedy();
  sp.ban_end_of_generation(tt.vocab());
  std::vector<std::pair<std::string, SpecConfig>> cfgs = {
      {"same vocabulary, draft-max 4", fixed_config(model_path(kDraft), 4)},
      {"same vocabulary, draft-max 8", fixed_config(model_path(kDraft), 8)},
      {"n-gram, draft-max 8", fixed_config("", 8, true)},
      {"v1024 text, draft-max 8", fixed_config(model_path(kDraftV1024), 8, false, VocabMode::Text)},
      {"v1024 intersection, draft-max 5", fixed_config(model_path(kDraftV1024), 5, false, VocabMode::Intersect)},
      {"n-gram then draft, draft-max 7", fixed_config(model_path(kDraft), 7, true)},
  };
  for (DType kv : {DType::F16, DType::Q8_0}) {
    SCOPED_TRACE(kv == DType::F16 ? "f16 KV" : "q8_0 KV");
    const GenerationResult want = run_plain(tt, prompt, -1, sp, session_opts(64, kv));
    ASSERT_EQ(want.stop, StopReason::ContextFull);
    // Plain decoding fills the context: the prompt, then one token per position left, plus the last sampled one.
    EXPECT_EQ(want.tokens.size(), 64u - 40u + 1u);
    for (const auto& [name, cfg] : cfgs) {
      SCOPED_TRACE(name);
      SpecSetup setup(tt, cfg, LoadOptions{}, nullptr);
      const GenerationResult got = run_spec(tt, setup, prompt, -1, sp, session_opts(64, kv));
      EXPECT_EQ(got.tokens, want.tokens) << "plain:       " << show(tt, want.tokens)
                                         << "\nspeculative: " << show(tt, got.tokens);
      EXPECT_EQ(got.stop, StopReason::ContextFull);
      EXPECT_GT(got.spec.drafted, 0);
      expect_pass_accounting(got);
    }
  }
}

// Context shift (SessionOptions::Overflow::Shift): the context is cut and re-evaluated several times during the
// generation; the drafters re-sync to the shifted context. Identical to plain decoding with the same setting.
TEST(SpecGreedy, ContextShiftIdentical) {
  const Model& tt = model(kTarget);
  std::vector<int32_t> prompt = tok(tt, book().substr(15000, 400));
  prompt.resize(24);
  SamplingParams sp = greedy();
  sp.ban_end_of_generation(tt.vocab());
  SessionOptions so = session_opts(64);
  so.overflow = SessionOptions::Overflow::Shift;
  so.n_keep = 4;
  Session plain(tt, so);
  const GenerationResult want = plain.generate(prompt, 150, sp, nullptr);
  ASSERT_GE(plain.n_shifts(), 2);
  ASSERT_EQ(want.tokens.size(), 150u);
  for (const SpecConfig& cfg : {fixed_config(model_path(kDraft), 8), fixed_config(model_path(kDraft), 5, true),
                                fixed_config(model_path(kDraftV1024), 6, false, VocabMode::Text)}) {
    SpecSetup setup(tt, cfg, LoadOptions{}, nullptr);
    SCOPED_TRACE(setup.describe());
    Session s(tt, so);
    auto seq = setup.make(s.pool(), s.n_ctx());
    s.set_speculator(seq->spec.get());
    const GenerationResult got = s.generate(prompt, 150, sp, nullptr);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(s.n_shifts(), plain.n_shifts());
    EXPECT_GT(got.spec.drafted, 0);
    expect_pass_accounting(got);
  }
}

// One Session over several turns (the drafters keep their caches and re-sync by common prefix), the first turn
// stopped by the text callback in the middle of a verified pass: every turn equals plain decoding's turn.
TEST(SpecGreedy, MultiTurnAndCallbackStopIdentical) {
  const Model& tt = model(kTarget);
  const std::vector<int32_t> p1 = tok(tt, "Once upon a time there was a poor miller who had three sons.");
  const std::vector<int32_t> p2 = tt.vocab().tokenize(" Then the youngest son said to his father:", false, false);
  const std::vector<int32_t> p3 = tt.vocab().tokenize(" \"Go away,\" said the old woman, and", false, false);
  auto turns = [&](Session& s) {
    std::vector<GenerationResult> out;
    int pieces = 0;
    out.push_back(s.generate(p1, 60, greedy(), [&](const std::string&) { return ++pieces < 23; }));
    out.push_back(s.generate(p2, 40, greedy(), nullptr));
    out.push_back(s.generate(p3, 40, greedy(), nullptr));
    return out;
  };
  Session plain(tt, session_opts(256));
  const auto want = turns(plain);
  ASSERT_EQ(want[0].stop, StopReason::Stopped);
  for (const SpecConfig& cfg : {fixed_config(model_path(kDraft), 7), fixed_config(model_path(kDraft), 4, true),
                                fixed_config(model_path(kDraftV1024), 5, false, VocabMode::Text),
                                fixed_config(model_path(kDraftV1024), 5, false, VocabMode::Intersect)}) {
    SpecSetup setup(tt, cfg, LoadOptions{}, nullptr);
    SCOPED_TRACE(setup.describe());
    Session s(tt, session_opts(256));
    auto seq = setup.make(s.pool(), s.n_ctx());
    s.set_speculator(seq->spec.get());
    const auto got = turns(s);
    for (size_t t = 0; t < want.size(); ++t) {
      EXPECT_EQ(got[t].tokens, want[t].tokens) << "turn " << t;
      EXPECT_EQ(got[t].stop, want[t].stop) << "turn " << t;
      EXPECT_GT(got[t].spec.drafted, 0) << "turn " << t;
    }
    EXPECT_EQ(s.tokens(), plain.tokens());  // the same cache contents afterwards
  }
}

// A grammar (constrained decoding) with speculation: drafts the grammar forbids are rejected by the target's
// masked chain; the output equals plain constrained decoding's.
TEST(SpecGreedy, GrammarConstrainedIdentical) {
  const Model& tc = model(kChat);
  const Model& tt = model(kTarget);
  struct Case {
    const Model* m;
    std::string draft;
    std::vector<int32_t> prompt;
    std::string gbnf;
  };
  const std::vector<Case> cases = {
      {&tc, model_path(kChatDraft), chat_prompts(tc)[2],
       R"(root ::= "{" ws "\"name\"" ws ":" ws str ws "," ws "\"age\"" ws ":" ws [0-9]+ ws "}"
str ::= "\"" [a-zA-Z ]* "\""
ws ::= " "?)"},
      {&tc, model_path(kChatDraft), chat_prompts(tc)[0], R"(root ::= [A-Z] [a-z ]+ "." ([ ] [A-Z] [a-z ]+ ".")*)"},
      {&tt, model_path(kDraft), tale_prompts(tt)[0], R"(root ::= ([a-z ,]+ "." )+)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.gbnf);
    SamplingParams sp = greedy();
    sp.grammar = Grammar::parse(c.gbnf);
    const GenerationResult want = run_plain(*c.m, c.prompt, 48, sp, session_opts(512));
    std::printf("[grammar] %s (%s)\n", show(*c.m, want.tokens).c_str(), stop_reason_name(want.stop));
    for (int dm : {3, 8}) {
      SpecSetup setup(*c.m, fixed_config(c.draft, dm, true), LoadOptions{}, nullptr);
      const GenerationResult got = run_spec(*c.m, setup, c.prompt, 48, sp, session_opts(512));
      EXPECT_EQ(got.tokens, want.tokens) << "plain:       " << show(*c.m, want.tokens)
                                         << "\nspeculative: " << show(*c.m, got.tokens);
      EXPECT_EQ(got.stop, want.stop);
      EXPECT_GT(got.spec.drafted, 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------- 3. verify, unit level

namespace {

SamplingParams plain_chain(uint64_t seed) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = seed;
  return p;
}

struct VerifyCase {
  std::string name;
  std::vector<float> target, draft;  // logits
  SamplingParams tp, dp;             // the target's chain, the draft's chain
  int fixed = -1;                    // >= 0: a deterministic proposal of this token (q = null)
};

// Runs `trials` verifications of drafted tokens; returns the histogram of the tokens verify() returned and the
// acceptance rate.
std::vector<int64_t> run_verify(const VerifyCase& c, int trials, Sampler::VerifyRule rule, double* acceptance) {
  const int n = static_cast<int>(c.target.size());
  Sampler target(c.tp), draft(c.dp);
  std::vector<int64_t> hist(static_cast<size_t>(n), 0);
  std::vector<std::pair<int32_t, float>> q;
  int64_t acc = 0;
  for (int t = 0; t < trials; ++t) {
    bool ok = false;
    int32_t y;
    if (c.fixed >= 0) {
      y = target.verify(c.target.data(), n, c.fixed, nullptr, &ok, rule);
    } else {
      const int32_t x = draft.sample_with_distribution(c.draft.data(), n, q);
      y = target.verify(c.target.data(), n, x, &q, &ok, rule);
      if (ok) {
        EXPECT_EQ(y, x);
      }
    }
    if (ok && c.fixed >= 0) {
      EXPECT_EQ(y, c.fixed);
    }
    acc += ok;
    hist.at(static_cast<size_t>(y))++;
  }
  *acceptance = static_cast<double>(acc) / trials;
  return hist;
}

std::vector<double> exact_p(const VerifyCase& c) {
  Sampler s(c.tp);
  std::vector<double> p(c.target.size(), 0.0);
  for (auto [id, pr] : s.distribution(c.target.data(), static_cast<int>(c.target.size()))) p.at(static_cast<size_t>(id)) = pr;
  return p;
}

std::vector<VerifyCase> verify_cases() {
  const std::vector<float> lt = {2.0f, 1.5f, 1.0f, 0.6f, 0.2f, -0.3f, -1.0f, -1.5f};
  const std::vector<float> ld = {-0.5f, 0.8f, 2.2f, -1.0f, 0.4f, 1.6f, 0.0f, 1.0f};
  std::vector<VerifyCase> v;
  v.push_back({"full softmax, draft q differs", lt, ld, plain_chain(101), plain_chain(202)});
  // Different supports: the target keeps its 5 best tokens (temperature 0.8), the draft proposes among its top 4,
  // two of which the target never gives (they must never come out, and the residual must cover what q misses).
  VerifyCase f{"top-k 5 / top-k 4, temperatures 0.8 / 1.3", lt, ld, plain_chain(303), plain_chain(404)};
  f.tp.top_k = 5;
  f.tp.temperature = 0.8f;
  f.dp.top_k = 4;
  f.dp.temperature = 1.3f;
  v.push_back(f);
  VerifyCase d{"deterministic proposal of token 2 (q = null)", lt, ld, plain_chain(505), plain_chain(606)};
  d.fixed = 2;
  v.push_back(d);
  VerifyCase d0{"deterministic proposal of the most likely token", lt, ld, plain_chain(707), plain_chain(808)};
  d0.fixed = 0;
  v.push_back(d0);
  VerifyCase dz{"deterministic proposal of a token the target's top-k excludes", lt, ld, plain_chain(909),
                plain_chain(1010)};
  dz.tp.top_k = 4;
  dz.fixed = 6;
  v.push_back(dz);
  return v;
}

}  // namespace

// verify() with the exact rule: the returned tokens follow p (Pearson chi-square below its 0.999 quantile; fixed
// seeds, 200k trials, every cell expected >= 5).
TEST(SpecVerify, ExactRuleIsLossless) {
  const int trials = 200000;
  for (const VerifyCase& c : verify_cases()) {
    SCOPED_TRACE(c.name);
    double acc = 0;
    const std::vector<int64_t> hist = run_verify(c, trials, Sampler::VerifyRule::Exact, &acc);
    const std::vector<double> p = exact_p(c);
    for (size_t i = 0; i < p.size(); ++i)
      if (p[i] == 0) {
        EXPECT_EQ(hist[i], 0) << "token " << i << " has p = 0 but was returned";
      }
    const Chi2 x = goodness_of_fit(hist, p);
    std::printf("[exact rule] %-70s acceptance %.3f, %s\n", c.name.c_str(), acc, x.str().c_str());
    EXPECT_LT(x.stat, x.q999) << x.str();
  }
}

// The deliberately wrong rule (on rejection, draw from p instead of max(0, p - q)) over-represents drafted tokens:
// the same test must reject it, by far (chi-square above 10x its 0.999 quantile), for every case where rejection
// happens with a q that differs from p.
TEST(SpecVerify, WrongRuleIsDetected) {
  const int trials = 200000;
  for (const VerifyCase& c : verify_cases()) {
    if (c.name.find("excludes") != std::string::npos) continue;  // p(x) = 0: both rules draw from p, no bias
    SCOPED_TRACE(c.name);
    double acc = 0;
    const std::vector<int64_t> hist = run_verify(c, trials, Sampler::VerifyRule::ResampleFromTarget, &acc);
    const Chi2 x = goodness_of_fit(hist, exact_p(c));
    std::printf("[wrong rule] %-70s acceptance %.3f, %s\n", c.name.c_str(), acc, x.str().c_str());
    EXPECT_GT(x.stat, 10 * x.q999) << x.str();
  }
}

// Greedy: verify() returns the argmax whatever was drafted (with or without q) and accepts exactly the argmax; it
// consumes no randomness (the same verifier gives the same answers in any order).
TEST(SpecVerify, GreedyAcceptsExactlyTheArgmax) {
  const std::vector<float> l = {0.1f, 0.3f, 2.5f, 2.5f, -1.0f, 1.0f, 0.0f, 2.4f};  // tie 2/3: the lower id wins
  SamplingParams sp = greedy();
  Sampler s(sp);
  const std::vector<std::pair<int32_t, float>> q = {{0, 0.5f}, {3, 0.25f}, {7, 0.25f}};
  for (int rep = 0; rep < 2; ++rep) {
    for (int32_t d = 0; d < static_cast<int32_t>(l.size()); ++d) {
      for (const auto* qp : {static_cast<const std::vector<std::pair<int32_t, float>>*>(nullptr), &q}) {
        bool ok = !(d == 2);  // the opposite of the answer, to see that it is set
        const int32_t y = s.verify(l.data(), static_cast<int>(l.size()), d, qp, &ok);
        EXPECT_EQ(y, 2) << "drafted " << d;
        EXPECT_EQ(ok, d == 2) << "drafted " << d;
      }
    }
  }
  // A greedy chain with a logit bias: the argmax of the biased logits.
  sp.logit_bias.emplace_back(2, -10.0f);
  Sampler b(sp);
  bool ok = false;
  EXPECT_EQ(b.verify(l.data(), static_cast<int>(l.size()), 2, nullptr, &ok), 3);
  EXPECT_FALSE(ok);
  EXPECT_EQ(b.verify(l.data(), static_cast<int>(l.size()), 3, nullptr, &ok), 3);
  EXPECT_TRUE(ok);
}

// sample_with_distribution draws exactly like sample() (same seed, same tokens) and reports the chain's
// distribution.
TEST(SpecVerify, SampleWithDistributionMatchesSample) {
  const std::vector<float> l = {2.0f, 1.5f, 1.0f, 0.6f, 0.2f, -0.3f, -1.0f, -1.5f};
  SamplingParams sp = plain_chain(77);
  sp.top_k = 6;
  sp.temperature = 0.7f;
  Sampler a(sp), b(sp), c(sp);
  std::vector<std::pair<int32_t, float>> q;
  const auto dist = c.distribution(l.data(), 8);
  for (int i = 0; i < 1000; ++i) {
    const int32_t x = a.sample(l.data(), 8);
    const int32_t y = b.sample_with_distribution(l.data(), 8, q);
    ASSERT_EQ(x, y) << "draw " << i;
    ASSERT_EQ(q.size(), dist.size());
    for (auto [id, pr] : dist) {
      auto it = std::find_if(q.begin(), q.end(), [&](const auto& e) { return e.first == id; });
      ASSERT_NE(it, q.end());
      EXPECT_NEAR(it->second, pr, 1e-6);
    }
  }
}

// ---------------------------------------------------------------------------------------------- 4. end to end sampling

namespace {

// `n` generations of n_predict tokens after `prompt`, seeds seed0, seed0 + 1, ...: the same Session throughout (the
// prompt stays in the cache; each generation rewinds to before its last token and generates from there), the same
// drafters (they re-sync to the context by common prefix, as between the turns of a chat).
std::vector<std::vector<int32_t>> sample_many(const Model& m, const std::vector<int32_t>& prompt, const SpecSetup* setup,
                                              const SpecOptions* opt, const SamplingParams& sp, uint64_t seed0, int n,
                                              int n_predict, SpecStats* stats) {
  Session s(m, session_opts(64, DType::F16, &single_pool()));
  std::unique_ptr<SpecSeq> seq;
  if (setup) {
    seq = setup->make(s.pool(), s.n_ctx(), nullptr, opt);
    s.set_speculator(seq->spec.get());
  }
  s.feed(std::vector<int32_t>(prompt.begin(), prompt.end() - 1));
  const std::vector<int32_t> last(1, prompt.back());
  std::vector<std::vector<int32_t>> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    s.rewind(static_cast<int64_t>(prompt.size()) - 1);
    SamplingParams p = sp;
    p.seed = seed0 + static_cast<uint64_t>(i);
    GenerationResult r = s.generate(last, n_predict, p, nullptr);
    if (stats) stats->add(r.spec);
    out.push_back(std::move(r.tokens));
  }
  return out;
}

// The same through a scheduler (its own verification path, Scheduler::verify_drafts): n requests, 16 at a time.
std::vector<std::vector<int32_t>> sample_scheduler(const Model& m, const std::vector<int32_t>& prompt,
                                                   const SpecSetup& setup, const SamplingParams& sp, uint64_t seed0,
                                                   int n, int n_predict, SpecStats* stats) {
  SchedulerOptions so;
  so.n_parallel = 16;
  so.n_ctx = 64;
  so.spec = &setup;
  Scheduler sch(m, single_pool(), so);
  Done done;
  std::vector<uint64_t> ids;
  for (int i = 0; i < n; ++i) {
    SamplingParams p = sp;
    p.seed = seed0 + static_cast<uint64_t>(i);
    ids.push_back(sch.submit(make_request(prompt, n_predict, p, done)));
  }
  sch.run_until_idle();
  std::vector<std::vector<int32_t>> out;
  for (uint64_t id : ids) {
    const GenResult& g = done.res.at(id);
    EXPECT_TRUE(g.finish == FinishReason::Length || g.finish == FinishReason::EndOfGeneration) << g.error;
    if (stats) stats->add(g.spec);
    out.push_back(g.tokens);
  }
  return out;
}

// Tokens at position `pos` of every generation that got that far (an end-of-generation token ends one early).
std::vector<int32_t> at(const std::vector<std::vector<int32_t>>& runs, size_t pos) {
  std::vector<int32_t> v;
  for (const auto& r : runs)
    if (r.size() > pos) v.push_back(r[pos]);
  return v;
}

}  // namespace

// Thousands of seeded generations of 4 tokens at temperature 1 with the default chain (top-k 40, top-p 0.95, min-p
// 0.05: the supports of p and of the draft's q differ, which is where a wrong residual shows most), plain and
// speculative (fixed draft-max 4, p_min 0). The first token comes from the prompt's logits (a sanity check of the
// test itself); the 2nd and 3rd are decided by verification (the first pass drafts 2 tokens: room = n_predict - 1 -
// 1; a rejection at the 2nd leaves room for one more drafted token, so the 3rd is verified either way, as the 2nd of
// a chain or the 1st of a new draft); the 4th comes from a pass's last row or a verification. Each position's
// distribution must equal plain decoding's: two-sample chi-square homogeneity test at the 0.001 level (p-value >
// 0.001), cells with expected counts below 5 pooled. Drafters: the same-vocabulary draft (q from its sampling
// chain), the 1024-vocabulary draft through the intersection (q over mapped ids, unmapped ids masked), n-gram then
// the 1024-vocabulary draft through text (deterministic proposals, q = null). The wrong rule (ResampleFromTarget)
// with the same-vocabulary draft must be rejected at the same level at the 2nd and 3rd tokens (it is, by far: p-values
// around 1e-17 at this N; with the full distribution, top-k 0 / top-p 1 / min-p 0, they were only 1e-8 and 3e-5).
// The samples' seeds are disjoint (independent samples, as the test assumes).
TEST(SpecSampling, EndToEndDistributionEqualsPlain) {
  const Model& tt = model(kTarget);
  const auto t0 = std::chrono::steady_clock::now();
  // Under AddressSanitizer the same paths run on 150 seeds without the statistical verdicts (3000 seeds would take
  // longer than the test timeout there; the statistics are the same code in the Release run).
  const bool stats_on = !lokal::test::kAddressSanitizer;
  const int n = stats_on ? 3000 : 150, n_predict = 4;
  const std::vector<int32_t> prompt = tok(tt, "Once upon a time there was a little girl. She went into the forest and");
  SamplingParams sp;  // the defaults: top-k 40, top-p 0.95, min-p 0.05, no penalties
  sp.temperature = 1.0f;
  SpecSetup same(tt, fixed_config(model_path("tinytales-draft-1m-f32.gguf"), 4), LoadOptions{}, nullptr);
  SpecSetup inter(tt, fixed_config(model_path(kDraftV1024), 4, false, VocabMode::Intersect), LoadOptions{}, nullptr);
  SpecSetup text(tt, fixed_config(model_path(kDraftV1024), 4, true, VocabMode::Text), LoadOptions{}, nullptr);
  SpecOptions wrong = same.config().spec;
  wrong.rule = Sampler::VerifyRule::ResampleFromTarget;

  const auto plain = sample_many(tt, prompt, nullptr, nullptr, sp, 1, n, n_predict, nullptr);
  struct Variant {
    std::string name;
    const SpecSetup* setup;
    const SpecOptions* opt;
    bool lossless;
    uint64_t seed0;
    bool scheduler;
  };
  const std::vector<Variant> variants = {
      {"same vocabulary, exact rule", &same, nullptr, true, 1000001, false},
      {"same vocabulary, WRONG rule", &same, &wrong, false, 2000001, false},
      {"v1024 intersection, exact rule", &inter, nullptr, true, 3000001, false},
      {"n-gram then v1024 text, exact rule", &text, nullptr, true, 4000001, false},
      {"scheduler, same vocabulary, exact rule", &same, nullptr, true, 5000001, true},
  };
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    SpecStats st;
    const auto t1 = std::chrono::steady_clock::now();
    const auto runs = v.scheduler ? sample_scheduler(tt, prompt, *v.setup, sp, v.seed0, n, n_predict, &st)
                                  : sample_many(tt, prompt, v.setup, v.opt, sp, v.seed0, n, n_predict, &st);
    std::printf("[end to end] %s: %.1f s\n", v.name.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
    std::printf("[end to end] %s: drafted %lld, accepted %lld (%.1f%%)\n", v.name.c_str(),
                static_cast<long long>(st.drafted), static_cast<long long>(st.accepted), 100.0 * st.acceptance());
    EXPECT_GT(st.drafted, n / 2);  // most generations verified drafted tokens
    EXPECT_GT(st.drafted - st.accepted, n / 10);  // and rejections (the residual draws) are frequent
    for (size_t pos = 0; pos < static_cast<size_t>(n_predict); ++pos) {
      SCOPED_TRACE("token " + std::to_string(pos + 1));
      const Chi2 x = homogeneity(at(plain, pos), at(runs, pos));
      std::printf("[end to end]   token %zu: %s\n", pos + 1, x.str().c_str());
      if (!stats_on) continue;
      if (v.lossless) {
        EXPECT_GT(x.p, 0.001) << x.str();
      } else if (pos == 1 || pos == 2) {
        EXPECT_LT(x.p, 0.001) << x.str();
      }
    }
  }
  std::printf("[end to end] %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// ---------------------------------------------------------------------------------------------- 5. drafters, vocabularies

TEST(SpecNgram, ProposesTheContinuationOfTheMostRecentLongestMatch) {
  SamplingParams sp;
  Draft d;
  NgramDrafter ng(1, 4);
  // [7 1] occurs at 0 and 3: the most recent earlier occurrence (3) is followed by 9 7 1.
  ng.propose({7, 1, 8, 7, 1, 9, 7, 1}, 8, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{9, 7, 1}));
  EXPECT_TRUE(d.q.empty());  // deterministic proposals
  // The longest match wins over a more recent shorter one: [5 6 7] at 0 (followed by 100) beats [7] at 5.
  ng.propose({5, 6, 7, 100, 9, 7, 200, 5, 6, 7}, 8, sp, d);
  ASSERT_FALSE(d.tokens.empty());
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{100, 9, 7, 200, 5, 6, 7}));
  // n_max caps the proposal.
  ng.propose({5, 6, 7, 100, 9, 7, 200, 5, 6, 7}, 3, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{100, 9, 7}));
  ng.propose({5, 6, 7, 100, 9, 7, 200, 5, 6, 7}, 1, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{100}));
  ng.propose({5, 6, 7, 100, 9, 7, 200, 5, 6, 7}, 0, sp, d);
  EXPECT_TRUE(d.tokens.empty());
  // The n-gram size is capped by the drafter's n_max: with n <= 2, [2 3] matches at 5 (followed by 60); with n <= 4,
  // the longer [1 2 3] matches at 0 (followed by 50).
  const std::vector<int32_t> c = {1, 2, 3, 50, 9, 2, 3, 60, 1, 2, 3};
  NgramDrafter n2(1, 2), n4(1, 4);
  n2.propose(c, 1, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{60}));
  n4.propose(c, 1, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{50}));
  // The proposal may run into the key itself, up to the end of the context.
  ng.propose({4, 4, 4, 4}, 8, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{4}));
  // A proposal replaces what `out` held.
  d.tokens = {1, 2, 3};
  d.q.assign(3, {});
  ng.propose({1, 2, 3, 4}, 4, sp, d);
  EXPECT_TRUE(d.tokens.empty());
  EXPECT_TRUE(d.q.empty());
}

TEST(SpecNgram, NothingWithoutAMatch) {
  SamplingParams sp;
  Draft d;
  NgramDrafter ng(1, 4);
  ng.propose({1, 2, 3, 4, 5}, 8, sp, d);
  EXPECT_TRUE(d.tokens.empty());
  ng.propose({1}, 8, sp, d);
  EXPECT_TRUE(d.tokens.empty());
  ng.propose({}, 8, sp, d);
  EXPECT_TRUE(d.tokens.empty());
  // The last token occurs earlier, but n_min 2 needs a 2-gram match: [3 1] does not occur earlier.
  NgramDrafter ng2(2, 4);
  ng2.propose({1, 2, 3, 1}, 8, sp, d);
  EXPECT_TRUE(d.tokens.empty());
  ng.propose({1, 2, 3, 1}, 8, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{2, 3, 1}));
}

TEST(SpecNgram, InvalidSizesThrow) {
  EXPECT_THROW(NgramDrafter(0, 4), Error);
  EXPECT_THROW(NgramDrafter(3, 2), Error);
  EXPECT_THROW(NgramDrafter(1, 65), Error);
  EXPECT_NO_THROW(NgramDrafter(1, 64));
  EXPECT_NO_THROW(NgramDrafter(2, 2));
}

// A same-vocabulary ModelDrafter with p_min 0 proposes, greedily, exactly the draft model's own greedy
// continuation (a plain Session of the draft model), also after the context was rolled back or diverged (its cache
// re-syncs by common prefix: stale positions would change the proposals).
TEST(SpecDrafter, ModelDrafterProposesTheDraftsGreedyContinuation) {
  const Model& tt = model(kTarget);
  const Model& d1 = model(kDraft);
  DraftModelOptions mo;
  mo.n_ctx = 256;
  mo.p_min = 0;
  ModelDrafter md(tt, d1, shared_pool(), mo);
  EXPECT_EQ(md.bridge(), VocabBridge::Same);
  EXPECT_TRUE(md.match().same);
  EXPECT_GT(md.bytes(), 0u);
  EXPECT_EQ(md.n_ctx(), 256);
  auto reference = [&](const std::vector<int32_t>& ctx, int n) {
    return run_plain(d1, ctx, n, greedy(), session_opts(256)).tokens;
  };
  const std::vector<int32_t> base = tok(tt, book().substr(60000, 500));
  std::vector<std::vector<int32_t>> ctxs;
  ctxs.emplace_back(base.begin(), base.begin() + 30);  // fresh
  ctxs.emplace_back(base.begin(), base.begin() + 40);  // grown
  ctxs.emplace_back(base.begin(), base.begin() + 20);  // rolled back
  std::vector<int32_t> diverged(base.begin(), base.begin() + 25);
  diverged.insert(diverged.end(), {tt.vocab().bos(), 100, 200, 300});  // diverged from position 25
  ctxs.push_back(diverged);
  ctxs.emplace_back(base.begin(), base.begin() + 45);  // back on the first path, past the divergence
  Draft d;
  for (size_t i = 0; i < ctxs.size(); ++i) {
    SCOPED_TRACE("context " + std::to_string(i));
    for (int n : {1, 6}) {
      md.propose(ctxs[i], n, greedy(), d);
      const std::vector<int32_t> want = reference(ctxs[i], n);
      ASSERT_EQ(d.tokens.size(), static_cast<size_t>(n));
      EXPECT_TRUE(d.q.empty());  // greedy proposals are deterministic
      EXPECT_EQ(d.tokens, want);
    }
  }
  // Confidence cut-off (llama.cpp's rule): a token is proposed, and drafting stops after it when its probability
  // among the draft's top 10 is below p_min; with p_min 1 no token is confident enough, so exactly one is proposed.
  mo.p_min = 1.0f;
  ModelDrafter picky(tt, d1, shared_pool(), mo);
  picky.propose(ctxs[0], 6, greedy(), d);
  EXPECT_EQ(d.tokens, reference(ctxs[0], 1));
  // The end of the draft's context: nothing is proposed past it.
  mo.p_min = 0;
  mo.n_ctx = 32;
  ModelDrafter small(tt, d1, shared_pool(), mo);
  small.propose(ctxs[0], 8, greedy(), d);  // 30 tokens in a 32-token cache: 3 proposals at most
  EXPECT_LE(d.tokens.size(), 3u);
  EXPECT_GE(d.tokens.size(), 1u);
  small.propose(ctxs[1], 8, greedy(), d);  // 40 tokens: nothing
  EXPECT_TRUE(d.tokens.empty());
}

// Sampled proposals carry the distribution they were drawn from, over target ids: one q per token, summing to 1,
// giving the drafted token a positive probability; with the intersection, only target ids of mapped draft tokens.
TEST(SpecDrafter, SampledProposalsCarryTheirDistribution) {
  const Model& tt = model(kTarget);
  const std::vector<int32_t> ctx = tok(tt, "Once upon a time there was a poor miller who had three sons.");
  SamplingParams sp;  // the default chain at temperature 0.9
  sp.temperature = 0.9f;
  for (const std::string& draft : {std::string(kDraft), std::string(kDraftV1024)}) {
    SCOPED_TRACE(draft);
    DraftModelOptions mo;
    mo.p_min = 0;
    mo.n_ctx = 128;
    mo.vocab = draft == kDraft ? VocabMode::Auto : VocabMode::Intersect;
    const Model& dm = model(draft);
    ModelDrafter md(tt, dm, shared_pool(), mo);
    std::set<int32_t> mapped;
    if (md.bridge() == VocabBridge::Intersect) {
      auto dv = make_draft_vocab(tt, dm, VocabMode::Intersect);
      for (int32_t t : dv->d2t)
        if (t >= 0) mapped.insert(t);
    }
    Draft d;
    for (int rep = 0; rep < 20; ++rep) {
      sp.seed = 1000 + static_cast<uint64_t>(rep);
      md.propose(ctx, 5, sp, d);
      ASSERT_EQ(d.tokens.size(), 5u);
      ASSERT_EQ(d.q.size(), d.tokens.size());
      for (size_t j = 0; j < d.tokens.size(); ++j) {
        double sum = 0, qx = 0;
        for (auto [id, pr] : d.q[j]) {
          EXPECT_GE(id, 0);
          EXPECT_LT(id, tt.config().n_vocab);
          if (!mapped.empty()) {
            EXPECT_TRUE(mapped.count(id)) << id;
          }
          sum += pr;
          if (id == d.tokens[j]) qx = pr;
        }
        EXPECT_NEAR(sum, 1.0, 1e-4);
        EXPECT_GT(qx, 0.0) << "the drafted token is not in its q";
      }
    }
  }
}

namespace {

// A drafter that proposes a fixed number of tokens (1, 2, 3, ...) and records what it was asked for.
class StubDrafter : public Drafter {
 public:
  explicit StubDrafter(int n) : n_(n) {}
  const char* kind() const override { return "ngram"; }
  std::string describe() const override { return "stub " + std::to_string(n_); }
  void propose(const std::vector<int32_t>&, int n_max, const SamplingParams&, Draft& out) override {
    out.clear();
    asked.push_back(n_max);
    for (int i = 0; i < std::min(n_, n_max); ++i) out.tokens.push_back(i + 1);
  }
  std::vector<int> asked;

 private:
  int n_;
};

}  // namespace

// Speculator (fixed draft length): drafters in order, the first that proposes at least draft_min tokens wins; the
// draft length is capped by the room left; statistics add up.
TEST(SpecSpeculator, OrderRoomDraftMinAndStatistics) {
  SamplingParams sp = greedy();
  StubDrafter none(0), two(2), many(100);
  SpecOptions o;
  o.adaptive = false;
  o.draft_max = 5;
  Speculator s({&none, &two, &many}, o);
  EXPECT_TRUE(s.enabled());
  EXPECT_EQ(s.describe(), "stub 0, then stub 2, then stub 100");
  Draft d;
  s.draft({1, 2, 3}, 0, 100, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{1, 2}));  // `two` wins: `none` proposed nothing
  EXPECT_EQ(none.asked, (std::vector<int>{5}));
  EXPECT_EQ(two.asked, (std::vector<int>{5}));
  EXPECT_TRUE(many.asked.empty());
  s.record(2, 1, 3, 0.01);
  s.draft({1, 2, 3}, 0, 1, sp, d);  // room for one drafted token
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{1}));
  EXPECT_EQ(two.asked.back(), 1);
  s.record(1, 1, 2, 0.01);
  s.draft({1, 2, 3}, 0, 0, sp, d);  // no room: a plain pass, nobody asked
  EXPECT_TRUE(d.tokens.empty());
  EXPECT_EQ(two.asked.size(), 2u);
  s.record(0, 0, 1, 0.005);
  EXPECT_EQ(s.stats().passes, 2);
  EXPECT_EQ(s.stats().plain_passes, 1);
  EXPECT_EQ(s.stats().drafted, 3);
  EXPECT_EQ(s.stats().accepted, 2);
  EXPECT_DOUBLE_EQ(s.stats().acceptance(), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.stats().tokens_per_pass(), 2.0);  // (2 passes + 2 accepted) / 2 passes

  // draft_min 3: `two` is not enough, `many` wins with draft_max tokens.
  o.draft_min = 3;
  Speculator m({&none, &two, &many}, o);
  m.draft({1}, 0, 100, sp, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{1, 2, 3, 4, 5}));
  // With less room than draft_min, no drafter's proposal is long enough: a plain pass.
  m.draft({1}, 0, 2, sp, d);
  EXPECT_TRUE(d.tokens.empty());
}

TEST(SpecSpeculator, PassCostInterpolates) {
  PassCost c;
  EXPECT_EQ(c.estimate(4), 0.0);
  c.observe(1, 1.0);
  EXPECT_TRUE(c.measured(1));
  EXPECT_FALSE(c.measured(2));
  EXPECT_DOUBLE_EQ(c.estimate(1), 1.0);
  EXPECT_NEAR(c.estimate(3), 1.1, 1e-12);  // one point: +5% per extra token
  c.observe(5, 2.0);
  EXPECT_NEAR(c.estimate(3), 1.5, 1e-12);  // between two points: linear
  EXPECT_NEAR(c.estimate(7), 2.5, 1e-12);  // past the last two: their slope
  c.observe(5, 3.0);                       // moving average 0.8 old + 0.2 new
  EXPECT_NEAR(c.estimate(5), 2.2, 1e-12);
  EXPECT_EQ(c.count(5), 2);
  c.observe(0, 1.0);  // ignored
  c.observe(2, 0.0);  // ignored
  EXPECT_FALSE(c.measured(2));
}

TEST(SpecVocab, MatchVocabularies) {
  const Model& tt = model(kTarget);
  const Model& d1 = model(kDraft);
  const Model& v1024 = model(kDraftV1024);
  const VocabMatch same = match_vocabularies(tt.vocab(), d1.vocab());
  EXPECT_TRUE(same.same) << same.difference;
  EXPECT_TRUE(same.difference.empty());
  EXPECT_EQ(same.shared, tt.vocab().n_tokens());
  EXPECT_DOUBLE_EQ(same.overlap, 1.0);

  const VocabMatch diff = match_vocabularies(tt.vocab(), v1024.vocab());
  std::printf("[vocab] tinytales-4m vs draft-v1024: same %d, shared %lld, overlap %.4f, difference \"%s\"\n", diff.same,
              static_cast<long long>(diff.shared), diff.overlap, diff.difference.c_str());
  EXPECT_FALSE(diff.same);
  EXPECT_FALSE(diff.difference.empty());
  EXPECT_GT(diff.shared, 256);  // both are SentencePiece BPE with byte fallback over the same kind of text
  EXPECT_LE(diff.shared, v1024.vocab().n_tokens());
  EXPECT_NEAR(diff.overlap,
              static_cast<double>(diff.shared) / std::max(tt.vocab().n_tokens(), v1024.vocab().n_tokens()), 1e-12);
  EXPECT_GT(diff.overlap, 0.0);
  EXPECT_LE(diff.overlap, 0.5);  // at most 1024 of 2048

  // The tables of the bridge: every mapped draft token has the target token of the same text.
  auto dv = make_draft_vocab(tt, v1024, VocabMode::Intersect);
  EXPECT_EQ(dv->bridge, VocabBridge::Intersect);
  ASSERT_EQ(dv->d2t.size(), static_cast<size_t>(v1024.config().n_vocab));
  int64_t mapped = 0;
  std::set<int32_t> targets;
  for (size_t i = 0; i < dv->d2t.size(); ++i) {
    const int32_t t = dv->d2t[i];
    if (t < 0) continue;
    ++mapped;
    EXPECT_EQ(tt.vocab().token_text(t), v1024.vocab().token_text(static_cast<int32_t>(i)));
    EXPECT_TRUE(targets.insert(t).second) << "two draft tokens map to target token " << t;
  }
  EXPECT_EQ(mapped + static_cast<int64_t>(dv->unmapped.size()), v1024.config().n_vocab);
  EXPECT_EQ(mapped, diff.shared);
  EXPECT_EQ(make_draft_vocab(tt, v1024, VocabMode::Text)->bridge, VocabBridge::Text);
  EXPECT_EQ(make_draft_vocab(tt, d1, VocabMode::Auto)->bridge, VocabBridge::Same);

  // tinychat's vocabulary is another 2048-token one.
  const VocabMatch chat = match_vocabularies(tt.vocab(), model(kChat).vocab());
  std::printf("[vocab] tinytales-4m vs tinychat-4m: same %d, shared %lld, overlap %.4f, difference \"%s\"\n", chat.same,
              static_cast<long long>(chat.shared), chat.overlap, chat.difference.c_str());
  EXPECT_FALSE(chat.same);
  EXPECT_TRUE(match_vocabularies(model(kChat).vocab(), model(kChatDraft).vocab()).same);
}

// ---------------------------------------------------------------------------------------------- 6. scheduler


// Six greedy requests (four at a time, prompts of 12..67 tokens in chunks of 24 mixed with the other sequences'
// drafts, one request with speculation off, one with its own draft-max) and three seeded sampling requests through
// a scheduler with speculation: each greedy request gets exactly the tokens a plain Session gives it. Sampled ones
// consume randomness differently with speculation, so they are only checked to finish with valid tokens.
TEST(SpecScheduler, GreedyRequestsEqualPlainSession) {
  const Model& tt = model(kTarget);
  SpecSetup setup(tt, fixed_config(model_path(kDraft), 4), LoadOptions{}, nullptr);
  SchedulerOptions so;
  so.n_parallel = 4;
  so.n_ctx = 256;
  so.n_batch = 24;
  so.spec = &setup;
  Scheduler sch(tt, shared_pool(), so);
  Done done;
  const int64_t max_tokens = 64;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = tok(tt, book().substr(20000 + 1500 * static_cast<size_t>(i), 800));
    p.resize(std::min<size_t>(p.size(), 12 + 11 * static_cast<size_t>(i)));
    prompts.push_back(p);
  }
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) {
    GenRequest r = make_request(prompts[static_cast<size_t>(i)], max_tokens, greedy(), done);
    if (i == 2) r.draft_max = 0;  // speculation off for this one
    if (i == 4) r.draft_max = 2;  // its own draft length
    ids.push_back(sch.submit(std::move(r)));
  }
  std::vector<uint64_t> sampled;
  for (int i = 0; i < 3; ++i) {
    SamplingParams sp;
    sp.temperature = 0.9f;
    sp.seed = 17 + static_cast<uint64_t>(i);
    sampled.push_back(sch.submit(make_request(prompts[static_cast<size_t>(i)], 40, sp, done)));
  }
  sch.run_until_idle();
  sch.kv_pool().check_invariants();
  ASSERT_EQ(done.res.size(), 9u);
  int64_t rejected = 0;
  for (int i = 0; i < 6; ++i) {
    SCOPED_TRACE("greedy request " + std::to_string(i));
    const GenResult& g = done.res.at(ids[static_cast<size_t>(i)]);
    const GenerationResult want = run_plain(tt, prompts[static_cast<size_t>(i)], static_cast<int>(max_tokens), greedy(),
                                            session_opts(256));
    EXPECT_EQ(g.tokens, want.tokens) << "plain:     " << show(tt, want.tokens) << "\nscheduler: " << show(tt, g.tokens);
    EXPECT_EQ(g.finish, want.stop == StopReason::EndOfGeneration ? FinishReason::EndOfGeneration : FinishReason::Length);
    EXPECT_EQ(g.text, tt.vocab().detokenize(g.tokens));
    if (i == 2) {
      EXPECT_EQ(g.spec.drafted, 0);
      EXPECT_EQ(g.spec.passes, 0);
    } else {
      EXPECT_GT(g.spec.drafted, 0);
      EXPECT_LE(g.spec.accepted, g.spec.drafted);
      rejected += g.spec.drafted - g.spec.accepted;
    }
  }
  EXPECT_GT(rejected, 0);
  for (uint64_t id : sampled) {
    const GenResult& g = done.res.at(id);
    EXPECT_TRUE(g.finish == FinishReason::Length || g.finish == FinishReason::EndOfGeneration)
        << finish_reason_name(g.finish) << " " << g.error;
    EXPECT_FALSE(g.tokens.empty());
    EXPECT_LE(g.tokens.size(), 40u);
    if (g.finish == FinishReason::Length) {
      EXPECT_EQ(g.tokens.size(), 40u);
    }
    for (int32_t t : g.tokens) {
      EXPECT_GE(t, 0);
      EXPECT_LT(t, tt.config().n_vocab);
    }
    EXPECT_GT(g.spec.drafted, 0);
  }
  const SchedulerStats st = sch.stats();
  EXPECT_GT(st.spec.drafted, 0);
  EXPECT_GE(st.spec.drafted, st.spec.accepted);
}

// Sequences of 64 positions with 40-token prompts and end-of-generation banned: each ends with context_full after
// exactly the tokens plain decoding gives.
TEST(SpecScheduler, ContextFullEqualsPlainSession) {
  const Model& tt = model(kTarget);
  for (int dm : {3, 8}) {
    SCOPED_TRACE("draft-max " + std::to_string(dm));
    SpecSetup setup(tt, fixed_config(model_path(kDraft), dm, dm == 8), LoadOptions{}, nullptr);
    SchedulerOptions so;
    so.n_parallel = 2;
    so.n_ctx = 64;
    so.spec = &setup;
    Scheduler sch(tt, shared_pool(), so);
    Done done;
    SamplingParams sp = greedy();
    sp.ban_end_of_generation(tt.vocab());
    std::vector<std::vector<int32_t>> prompts;
    std::vector<uint64_t> ids;
    for (int i = 0; i < 3; ++i) {
      std::vector<int32_t> p = tok(tt, book().substr(31000 + 2000 * static_cast<size_t>(i), 600));
      p.resize(40);
      prompts.push_back(p);
      ids.push_back(sch.submit(make_request(p, -1, sp, done)));
    }
    sch.run_until_idle();
    sch.kv_pool().check_invariants();
    for (int i = 0; i < 3; ++i) {
      const GenResult& g = done.res.at(ids[static_cast<size_t>(i)]);
      const GenerationResult want = run_plain(tt, prompts[static_cast<size_t>(i)], -1, sp, session_opts(64));
      ASSERT_EQ(want.stop, StopReason::ContextFull);
      EXPECT_EQ(g.finish, FinishReason::ContextFull) << finish_reason_name(g.finish) << " " << g.error;
      EXPECT_EQ(g.tokens, want.tokens) << "request " << i;
      EXPECT_GT(g.spec.drafted, 0);
    }
  }
}

namespace {

// What a request showed through every callback: the streamed text, and each sampled token with a checksum of the
// exact bits of the logits row it was sampled from.
struct Observed {
  std::string streamed;
  std::vector<std::pair<int32_t, uint64_t>> tokens;
};

uint64_t fnv(const float* x, int64_t n) {
  uint64_t h = 1469598103934665603ULL;
  const auto* b = reinterpret_cast<const unsigned char*>(x);
  for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(float)); ++i) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

// Runs `reqs` through a scheduler (speculation from `spec`, or none) and returns each request's result and
// observations, in submission order.
// cancel_after[i] > 0: request i's text callback cancels it at its cancel_after[i]-th piece.
std::vector<std::pair<GenResult, Observed>> run_scheduler(const Model& m, SchedulerOptions so, const SpecSetup* spec,
                                                          const std::vector<GenRequest>& reqs,
                                                          const std::vector<int>& cancel_after) {
  so.spec = spec;
  Scheduler sch(m, shared_pool(), so);
  Done done;
  std::vector<Observed> obs(reqs.size());
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < reqs.size(); ++i) {
    GenRequest r = reqs[i];
    Observed* o = &obs[i];
    const int stop_at = cancel_after.at(i);
    r.on_text = [o, stop_at, pieces = 0](const std::string& t) mutable {
      o->streamed += t;
      return stop_at <= 0 || ++pieces < stop_at;
    };
    r.on_token = [o](int32_t tok, const float* logits, int64_t nv) { o->tokens.emplace_back(tok, fnv(logits, nv)); };
    r.on_done = [&done](const GenResult& g) {
      std::lock_guard<std::mutex> lk(done.mu);
      done.res[g.id] = g;
    };
    ids.push_back(sch.submit(std::move(r)));
  }
  sch.run_until_idle();
  sch.kv_pool().check_invariants();
  std::vector<std::pair<GenResult, Observed>> out;
  for (size_t i = 0; i < reqs.size(); ++i) out.emplace_back(done.res.at(ids[i]), obs[i]);
  return out;
}

}  // namespace

// Greedy requests with stop strings, token limits, ignore_eos, a cancellation from the text callback and a page pool too small for all of them (preemption
// and recomputation), through a scheduler without speculation and with it (fixed draft-max 6 with n-gram lookup;
// the adaptive defaults): the same tokens, text, streamed text, finish reasons, and the same logits (bit for bit)
// reported to on_token for every token.
TEST(SpecScheduler, EqualsPlainSchedulerWithStopsPreemptionAndLogits) {
  const Model& tt = model(kTarget);
  std::vector<GenRequest> reqs;
  for (int i = 0; i < 7; ++i) {
    GenRequest r;
    r.prompt = tok(tt, book().substr(40000 + 1300 * static_cast<size_t>(i), 700));
    r.prompt.resize(std::min<size_t>(r.prompt.size(), 10 + 9 * static_cast<size_t>(i)));
    r.sampling = greedy();
    r.max_tokens = 40 + 10 * i;
    if (i % 3 == 0) r.stop = {"the", "\n"};
    if (i == 1) r.stop = {"ing "};
    if (i == 5) r.ignore_eos = true;
    reqs.push_back(r);
  }
  SchedulerOptions so;
  so.n_parallel = 4;
  so.n_ctx = 256;
  so.n_batch = 32;
  so.kv_tokens = 4 * 64;  // four pages for up to four sequences of up to ~130 tokens: preemption
  std::vector<int> cancel_after(reqs.size(), 0);
  cancel_after[4] = 17;  // cancelled from its text callback
  const auto want = run_scheduler(tt, so, nullptr, reqs, cancel_after);
  SpecConfig adaptive;
  adaptive.draft = model_path(kDraft);
  adaptive.ngram = true;
  for (const SpecConfig& cfg : {fixed_config(model_path(kDraft), 6, true), adaptive}) {
    SpecSetup setup(tt, cfg, LoadOptions{}, nullptr);
    SCOPED_TRACE(setup.describe());
    const auto got = run_scheduler(tt, so, &setup, reqs, cancel_after);
    int64_t drafted = 0, preempted = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      SCOPED_TRACE("request " + std::to_string(i));
      const GenResult& a = want[i].first;
      const GenResult& b = got[i].first;
      EXPECT_EQ(b.tokens, a.tokens);
      EXPECT_EQ(b.text, a.text);
      EXPECT_EQ(b.finish, a.finish) << finish_reason_name(b.finish) << " " << b.error;
      EXPECT_EQ(got[i].second.streamed, want[i].second.streamed);
      EXPECT_EQ(got[i].second.tokens, want[i].second.tokens) << "tokens or logits reported to on_token differ";
      drafted += b.spec.drafted;
      preempted += b.n_preempted;
    }
    std::printf("[scheduler] %s: drafted %lld, preemptions %lld\n", setup.describe().c_str(),
                static_cast<long long>(drafted), static_cast<long long>(preempted));
    EXPECT_GT(drafted, 0);
    // Never more draft caches alive than sequences that run at once, preemptions included (the memory plan counts
    // n_parallel of them: runtime/plan.h estimate_draft_memory).
    EXPECT_GT(preempted, 0);
    EXPECT_LE(setup.peak_drafters(), so.n_parallel);
    EXPECT_GT(setup.peak_drafters(), 1);
  }
  int64_t preempted_plain = 0, stopped = 0;
  for (const auto& w : want) {
    preempted_plain += w.first.n_preempted;
    stopped += w.first.finish == FinishReason::StopString;
  }
  EXPECT_GT(preempted_plain, 0) << "the pool was large enough: preemption was not exercised";
  EXPECT_GT(stopped, 0) << "no stop string was hit";
  EXPECT_EQ(want[4].first.finish, FinishReason::Cancelled);
}

// Drafted positions that fill a page (64 positions) register it in the prefix cache before the rejected ones are
// rolled back (the sequence then writes a copy). A later request that continues the first one's text (a chat's next
// turn) reuses the cached pages and gets exactly the tokens a plain Session gives it.
TEST(SpecScheduler, PrefixCacheAcrossDraftedPages) {
  const Model& tt = model(kTarget);
  SpecSetup setup(tt, fixed_config(model_path(kDraft), 8, true), LoadOptions{}, nullptr);
  SchedulerOptions so;
  so.n_parallel = 2;
  so.n_ctx = 256;
  so.spec = &setup;
  Scheduler sch(tt, shared_pool(), so);
  std::vector<int32_t> p1 = tok(tt, book().substr(80000, 800));
  p1.resize(58);  // drafts of up to 8 tokens cross position 64 in the first passes
  Done d1;
  const uint64_t id1 = sch.submit(make_request(p1, 40, greedy(), d1));
  sch.run_until_idle();
  const GenResult& g1 = d1.res.at(id1);
  EXPECT_EQ(g1.tokens, run_plain(tt, p1, 40, greedy(), session_opts(256)).tokens);
  EXPECT_GT(g1.spec.drafted, g1.spec.accepted);
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), g1.tokens.begin(), g1.tokens.end());
  const std::vector<int32_t> more = tt.vocab().tokenize(" And then the old man said:", false, false);
  p2.insert(p2.end(), more.begin(), more.end());
  Done d2;
  const uint64_t id2 = sch.submit(make_request(p2, 40, greedy(), d2));
  sch.run_until_idle();
  sch.kv_pool().check_invariants();
  const GenResult& g2 = d2.res.at(id2);
  EXPECT_GE(g2.n_reused, 64) << "the first request's full pages were not reused";
  EXPECT_EQ(g2.tokens, run_plain(tt, p2, 40, greedy(), session_opts(256)).tokens);
  EXPECT_GT(g2.spec.drafted, 0);
}

// The scheduler packs "the next token of every generating sequence first" (runtime/scheduler.h): a sequence's
// drafted tokens are guesses and must not take the batch room that another generating sequence's next token needs.
// Two sequences whose prompts are evaluated in the same step, a batch of 8 tokens, draft-max 8: each must get at
// least one token in every step while both are generating, as without speculation.
TEST(SpecScheduler, DraftsDoNotCrowdOutOtherSequences) {
  const Model& tt = model(kTarget);
  SpecSetup setup(tt, fixed_config(model_path(kDraft), 8), LoadOptions{}, nullptr);
  std::vector<std::vector<int32_t>> results[2];
  for (bool spec : {false, true}) {
    SCOPED_TRACE(spec ? "with speculation" : "without speculation");
    SchedulerOptions so;
    so.n_parallel = 2;
    so.n_ctx = 128;
    so.n_batch = 8;
    so.spec = spec ? &setup : nullptr;
    Scheduler sch(tt, shared_pool(), so);
    Done done;
    int step = 0;
    std::vector<std::vector<int>> steps(2);
    for (int i = 0; i < 2; ++i) {
      std::vector<int32_t> p = tok(tt, book().substr(50000 + 3000 * static_cast<size_t>(i), 200));
      p.resize(4);
      GenRequest r = make_request(p, 32, greedy(), done);
      r.on_token = [&steps, &step, i](int32_t, const float*, int64_t) { steps[static_cast<size_t>(i)].push_back(step); };
      sch.submit(std::move(r));
    }
    while (sch.step()) ++step;
    ASSERT_EQ(done.res.size(), 2u);
    for (auto& [id, g] : done.res) results[spec ? 1 : 0].push_back(g.tokens);
    ASSERT_FALSE(steps[0].empty());
    ASSERT_FALSE(steps[1].empty());
    std::printf("[fairness] %s: request 0 tokens in steps %d..%d, request 1 in steps %d..%d, %d steps\n",
                spec ? "speculative" : "plain", steps[0].front(), steps[0].back(), steps[1].front(), steps[1].back(),
                step);
    // Both got their first token from the prompt pass of step 0.
    EXPECT_EQ(steps[0].front(), 0);
    EXPECT_EQ(steps[1].front(), 0);
    const int both_until = std::min(steps[0].back(), steps[1].back());
    std::string missed;
    for (int st = 0; st <= both_until; ++st)
      for (size_t i = 0; i < 2; ++i)
        if (std::find(steps[i].begin(), steps[i].end(), st) == steps[i].end())
          missed += " request " + std::to_string(i) + "/step " + std::to_string(st);
    EXPECT_TRUE(missed.empty()) << "steps in which a generating sequence got no token while the other was generating:"
                                << missed;
  }
  EXPECT_EQ(results[1], results[0]);  // the batch's room limits the drafts (7 here), never the output
}

// GenResult::spec counts every verification pass of the request: with a fixed draft length and greedy decoding the
// scheduler drafts exactly what a Session drafts for the same request (same context, same room), so drafted,
// accepted, passes and plain passes must be equal, and they must account for every generated token. The scheduler's
// totals (SchedulerStats::spec) are the sum of its requests'.
TEST(SpecScheduler, StatisticsCountEveryPass) {
  const Model& tt = model(kTarget);
  SpecSetup setup(tt, fixed_config(model_path(kDraft), 4), LoadOptions{}, nullptr);
  SchedulerOptions so;
  so.n_parallel = 4;
  so.n_ctx = 256;
  so.spec = &setup;
  Scheduler sch(tt, shared_pool(), so);
  Done done;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p = tok(tt, book().substr(70000 + 2100 * static_cast<size_t>(i), 500));
    p.resize(20);
    prompts.push_back(p);
    GenRequest r = make_request(p, 30 + 7 * i, greedy(), done);
    r.ignore_eos = true;
    ids.push_back(sch.submit(std::move(r)));
  }
  sch.run_until_idle();
  SpecStats sum;
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const GenResult& g = done.res.at(ids[static_cast<size_t>(i)]);
    SamplingParams sp = greedy();
    sp.ban_end_of_generation(tt.vocab());
    const GenerationResult want = run_spec(tt, setup, prompts[static_cast<size_t>(i)], 30 + 7 * i, sp,
                                           session_opts(256));
    ASSERT_EQ(g.finish, FinishReason::Length);
    ASSERT_EQ(g.tokens, want.tokens);
    EXPECT_EQ(static_cast<int64_t>(want.tokens.size()),
              1 + want.spec.passes + want.spec.accepted + want.spec.plain_passes);
    EXPECT_EQ(static_cast<int64_t>(g.tokens.size()), 1 + g.spec.passes + g.spec.accepted + g.spec.plain_passes)
        << "passes " << g.spec.passes << ", accepted " << g.spec.accepted << ", plain " << g.spec.plain_passes;
    EXPECT_EQ(g.spec.drafted, want.spec.drafted);
    EXPECT_EQ(g.spec.accepted, want.spec.accepted);
    EXPECT_EQ(g.spec.passes, want.spec.passes);
    EXPECT_EQ(g.spec.plain_passes, want.spec.plain_passes);
    sum.add(g.spec);
  }
  const SchedulerStats st = sch.stats();
  EXPECT_EQ(st.spec.drafted, sum.drafted);
  EXPECT_EQ(st.spec.accepted, sum.accepted);
  EXPECT_EQ(st.spec.passes, sum.passes);
}

// A SpecSetup with nothing enabled (no draft file, no n-gram lookup) handed to a scheduler: SpecSetup::make returns
// null for it, and the scheduler must then decode plainly. Run in a child process (a death test's machinery), so that
// a crash fails this test only.
TEST(SpecScheduler, DisabledSetupMeansPlainDecoding) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const Model& tt = model(kTarget);
        SpecConfig off;  // no draft, no n-gram
        if (off.enabled()) std::exit(2);
        SpecSetup setup(tt, off, LoadOptions{}, nullptr);
        SchedulerOptions so;
        so.n_ctx = 128;
        so.spec = &setup;
        Scheduler sch(tt, shared_pool(), so);
        Done done;
        const std::vector<int32_t> p = tok(tt, "Once upon a time");
        sch.submit(make_request(p, 8, greedy(), done));
        sch.run_until_idle();
        const bool same = done.res.size() == 1 &&
                          done.res.begin()->second.tokens == run_plain(tt, p, 8, greedy(), session_opts(128)).tokens;
        std::exit(same ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

// ---------------------------------------------------------------------------------------------- 7. bad input

namespace {

// Runs f, which must throw lokal::Error; returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a lokal::Error: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no error";
  return "";
}

}  // namespace

TEST(SpecSetupErrors, BadOptionsNameTheFlag) {
  const Model& tt = model(kTarget);
  auto setup_with = [&](auto edit) {
    SpecConfig c = fixed_config(model_path(kDraft), 4);
    edit(c);
    return error_of([&] { SpecSetup s(tt, c, LoadOptions{}, nullptr); });
  };
  std::string m;
  m = setup_with([](SpecConfig& c) { c.spec.draft_max = 0; });
  EXPECT_NE(m.find("--draft-max"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) { c.spec.draft_max = 200; });
  EXPECT_NE(m.find("--draft-max"), std::string::npos) << m;
  EXPECT_NE(m.find("200"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) { c.spec.draft_max = -3; });
  EXPECT_NE(m.find("--draft-max"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) {
    c.spec.draft_max = 4;
    c.spec.draft_min = 5;
  });
  EXPECT_NE(m.find("--draft-min"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) { c.spec.draft_min = -1; });
  EXPECT_NE(m.find("--draft-min"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) { c.model.p_min = 1.5f; });
  EXPECT_NE(m.find("--draft-p-min"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) { c.model.p_min = -0.1f; });
  EXPECT_NE(m.find("--draft-p-min"), std::string::npos) << m;
  m = setup_with([](SpecConfig& c) { c.model.p_min = std::nanf(""); });
  EXPECT_NE(m.find("--draft-p-min"), std::string::npos) << m;
  // n-gram sizes (checked when n-gram drafting is on, with or without a draft model).
  for (const std::pair<int, int>& sizes : std::vector<std::pair<int, int>>{{0, 4}, {3, 2}, {1, 65}}) {
    const int lo = sizes.first, hi = sizes.second;
    m = setup_with([&](SpecConfig& c) {
      c.ngram = true;
      c.ngram_min = lo;
      c.ngram_max = hi;
    });
    EXPECT_NE(m.find("n-gram"), std::string::npos) << m;
    m = setup_with([&](SpecConfig& c) {
      c.draft.clear();
      c.ngram = true;
      c.ngram_min = lo;
      c.ngram_max = hi;
    });
    EXPECT_NE(m.find("n-gram"), std::string::npos) << m;
  }
  // Valid edges.
  EXPECT_NO_THROW({ SpecSetup s(tt, fixed_config(model_path(kDraft), 1), LoadOptions{}, nullptr); });
  EXPECT_NO_THROW({ SpecSetup s(tt, fixed_config(model_path(kDraft), 128), LoadOptions{}, nullptr); });
  // A Speculator checks its options too (the override of SpecSetup::make bypasses the setup's checks).
  SpecSetup ok(tt, fixed_config(model_path(kDraft), 4), LoadOptions{}, nullptr);
  SpecOptions bad;
  bad.draft_max = 0;
  m = error_of([&] { ok.make(shared_pool(), 64, nullptr, &bad); });
  EXPECT_NE(m.find("--draft-max"), std::string::npos) << m;
}

TEST(SpecSetupErrors, UnusableDraftFileNamesTheFile) {
  const Model& tt = model(kTarget);
  // A vocabulary-only GGUF (a tokenizer, no weights).
  const std::string vocab_only = test::vocab_dir() + "/ggml-vocab-llama-spm.gguf";
  std::string m = error_of([&] { SpecSetup s(tt, fixed_config(vocab_only, 4), LoadOptions{}, nullptr); });
  EXPECT_EQ(m.rfind("draft model ", 0), 0u) << m;
  EXPECT_NE(m.find(vocab_only), std::string::npos) << m;
  std::printf("[errors] %s\n", m.c_str());
  // A file that does not exist.
  const std::string missing = test::binary_dir() + "/no-such-draft.gguf";
  m = error_of([&] { SpecSetup s(tt, fixed_config(missing, 4), LoadOptions{}, nullptr); });
  EXPECT_EQ(m.rfind("draft model ", 0), 0u) << m;
  EXPECT_NE(m.find(missing), std::string::npos) << m;
  std::printf("[errors] %s\n", m.c_str());
  // A text file.
  test::TempDir dir("spec");
  const std::string junk = dir.file("junk.gguf");
  std::ofstream(junk) << "not a gguf file\n";
  m = error_of([&] { SpecSetup s(tt, fixed_config(junk, 4), LoadOptions{}, nullptr); });
  EXPECT_EQ(m.rfind("draft model ", 0), 0u) << m;
  EXPECT_NE(m.find(junk), std::string::npos) << m;
}
