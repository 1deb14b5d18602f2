// Sampler: greedy, each filter on known distributions, penalties, seeding, statistics, edge cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "core/error.h"
#include "runtime/sampling.h"

using namespace lokal;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();


// No filters, temperature 1: plain softmax sampling.
SamplingParams plain(uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = seed;
  return p;
}

// Independent reference: softmax of logits / t over the listed ids (others get 0).
std::vector<double> softmax(const std::vector<float>& l, double t = 1.0, const std::vector<int>& keep = {}) {
  std::vector<int> ids = keep;
  if (ids.empty())
    for (size_t i = 0; i < l.size(); ++i) ids.push_back(static_cast<int>(i));
  double mx = -1e300;
  for (int i : ids) mx = std::max(mx, static_cast<double>(l[static_cast<size_t>(i)]));
  std::vector<double> p(l.size(), 0.0);
  double z = 0;
  for (int i : ids) z += p[static_cast<size_t>(i)] = std::exp((l[static_cast<size_t>(i)] - mx) / t);
  for (double& x : p) x /= z;
  return p;
}

// Distribution as a dense vector over the vocabulary.
std::vector<double> dense(const std::vector<std::pair<int32_t, double>>& d, size_t n) {
  std::vector<double> out(n, 0.0);
  for (auto [id, p] : d) out.at(static_cast<size_t>(id)) = p;
  return out;
}

std::vector<int32_t> kept_ids(const std::vector<std::pair<int32_t, double>>& d) {
  std::vector<int32_t> ids;
  for (auto [id, p] : d) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

void expect_near_vec(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], tol) << "token " << i;
}

// Logits whose softmax is exactly `probs` (up to rounding), placed at shuffled ids.
// Known distribution used by the filter tests: probabilities 0.4, 0.3, 0.15, 0.1, 0.05 at ids 3, 0, 4, 1, 2.
const std::vector<float> kKnown = {std::log(0.3f), std::log(0.1f), std::log(0.05f), std::log(0.4f), std::log(0.15f)};

}  // namespace

TEST(Sampling, ValidatesParameters) {
  auto expect_bad = [](auto set, const char* name) {
    SamplingParams p;
    set(p);
    try {
      p.validate();
      ADD_FAILURE() << name << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    EXPECT_THROW(Sampler{p}, Error) << name;
  };
  expect_bad([](SamplingParams& p) { p.temperature = kNaN; }, "temperature");
  expect_bad([](SamplingParams& p) { p.temperature = kInf; }, "temperature");
  expect_bad([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  expect_bad([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = -0.5f; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = 1.01f; }, "top_p");
  expect_bad([](SamplingParams& p) { p.top_p = kNaN; }, "top_p");
  expect_bad([](SamplingParams& p) { p.min_p = -0.01f; }, "min_p");
  expect_bad([](SamplingParams& p) { p.min_p = 1.5f; }, "min_p");
  expect_bad([](SamplingParams& p) { p.min_p = kNaN; }, "min_p");
  expect_bad([](SamplingParams& p) { p.repeat_penalty = 0.0f; }, "repeat_penalty");
  expect_bad([](SamplingParams& p) { p.repeat_penalty = -1.0f; }, "repeat_penalty");
  expect_bad([](SamplingParams& p) { p.repeat_penalty = kNaN; }, "repeat_penalty");
  expect_bad([](SamplingParams& p) { p.repeat_last_n = -1; }, "repeat_last_n");
  expect_bad([](SamplingParams& p) { p.presence_penalty = kNaN; }, "presence_penalty");
  expect_bad([](SamplingParams& p) { p.frequency_penalty = -kInf; }, "frequency_penalty");

  SamplingParams ok;
  EXPECT_NO_THROW(ok.validate());  // defaults
  ok.temperature = -1.0f;          // <= 0: greedy
  ok.top_p = 1.0f;
  ok.min_p = 1.0f;
  ok.top_k = 0;
  ok.repeat_last_n = 0;
  ok.presence_penalty = -2.0f;
  EXPECT_NO_THROW(ok.validate());
}

TEST(Sampling, GreedyIsArgmaxWithFirstMaximumOnTies) {
  std::mt19937_64 rng(5);
  for (float temp : {0.0f, -1.0f}) {
    SamplingParams p = plain();
    p.temperature = temp;
    p.top_k = 40;  // filters do not matter for greedy
    p.top_p = 0.5f;
    p.min_p = 0.2f;
    Sampler s(p);
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> l(1000);
      for (auto& x : l) x = static_cast<float>(rng() % 20000) / 1000.0f - 10.0f;  // many exact ties
      const auto expected = std::max_element(l.begin(), l.end()) - l.begin();  // first maximum
      ASSERT_EQ(s.sample(l.data(), static_cast<int>(l.size())), expected);
    }
    const std::vector<float> ties = {1, 3, 3, 2, 3};
    EXPECT_EQ(s.sample(ties.data(), 5), 1);
    const std::vector<float> all_equal(7, 0.5f);
    EXPECT_EQ(s.sample(all_equal.data(), 7), 0);
    const auto d = s.distribution(ties.data(), 5);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].first, 1);
    EXPECT_EQ(d[0].second, 1.0);
  }
}

TEST(Sampling, TopK1IsGreedy) {
  std::mt19937_64 rng(6);
  for (uint64_t seed = 0; seed < 50; ++seed) {
    SamplingParams p = plain(seed);
    p.top_k = 1;
    p.temperature = 5.0f;
    Sampler s(p);
    std::vector<float> l(5000);
    for (auto& x : l) x = static_cast<float>(rng() % 1000) / 100.0f;
    const auto expected = std::max_element(l.begin(), l.end()) - l.begin();
    for (int k = 0; k < 5; ++k) ASSERT_EQ(s.sample(l.data(), static_cast<int>(l.size())), expected);
  }
}

TEST(Sampling, NoFiltersIsSoftmaxAtTemperature) {
  const std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.25f, 0.0f, -7.0f, 1.0f};
  for (float t : {1.0f, 0.5f, 2.0f, 100.0f, 0.01f}) {
    SamplingParams p = plain();
    p.temperature = t;
    Sampler s(p);
    const auto d = s.distribution(l.data(), static_cast<int>(l.size()));
    EXPECT_EQ(d.size(), l.size());
    for (size_t i = 1; i < d.size(); ++i) EXPECT_GE(d[i - 1].second, d[i].second) << "sorted, most likely first";
    expect_near_vec(dense(d, l.size()), softmax(l, t), 1e-12);
  }
}

TEST(Sampling, TopKKeepsTheKLargest) {
  const std::vector<float> l = {0.1f, 5.0f, 2.0f, 4.0f, -3.0f, 4.5f, 1.0f};
  SamplingParams p = plain();
  p.top_k = 3;
  Sampler s(p);
  const auto d = s.distribution(l.data(), static_cast<int>(l.size()));
  EXPECT_EQ(kept_ids(d), (std::vector<int32_t>{1, 3, 5}));
  expect_near_vec(dense(d, l.size()), softmax(l, 1.0, {1, 3, 5}), 1e-12);
  p.top_k = 100;  // larger than the vocabulary: no-op
  Sampler all(p);
  EXPECT_EQ(all.distribution(l.data(), static_cast<int>(l.size())).size(), l.size());
  // Ties at the boundary: lower ids win.
  const std::vector<float> ties = {1, 2, 2, 2, 0};
  p.top_k = 2;
  Sampler t(p);
  EXPECT_EQ(kept_ids(t.distribution(ties.data(), 5)), (std::vector<int32_t>{1, 2}));
}

TEST(Sampling, TopPKeepsTheSmallestSetReachingP) {
  // Probabilities 0.4 (id 3), 0.3 (id 0), 0.15 (id 4), 0.1 (id 1), 0.05 (id 2).
  const int n = static_cast<int>(kKnown.size());
  struct Case {
    float top_p;
    std::vector<int32_t> kept;
  };
  for (const Case& c : {Case{0.3f, {3}}, Case{0.39f, {3}}, Case{0.41f, {0, 3}}, Case{0.65f, {0, 3}},
                        Case{0.71f, {0, 3, 4}}, Case{0.9f, {0, 1, 3, 4}}, Case{0.96f, {0, 1, 2, 3, 4}},
                        Case{1.0f, {0, 1, 2, 3, 4}}}) {
    SamplingParams p = plain();
    p.top_p = c.top_p;
    Sampler s(p);
    const auto d = s.distribution(kKnown.data(), n);
    EXPECT_EQ(kept_ids(d), c.kept) << "top_p " << c.top_p;
    std::vector<int> keep(c.kept.begin(), c.kept.end());
    expect_near_vec(dense(d, kKnown.size()), softmax(kKnown, 1.0, keep), 1e-6);
  }
  // top-p measures mass after top-k (renormalized): with top_k = 2 the best token alone has 4/7 > 0.5.
  SamplingParams p = plain();
  p.top_p = 0.5f;
  EXPECT_EQ(kept_ids(Sampler(p).distribution(kKnown.data(), n)), (std::vector<int32_t>{0, 3}));
  p.top_k = 2;
  EXPECT_EQ(kept_ids(Sampler(p).distribution(kKnown.data(), n)), (std::vector<int32_t>{3}));
  // ... and before temperature: a low temperature does not change which tokens survive.
  p.top_k = 0;
  p.top_p = 0.65f;
  p.temperature = 0.1f;
  const auto d = Sampler(p).distribution(kKnown.data(), n);
  EXPECT_EQ(kept_ids(d), (std::vector<int32_t>{0, 3}));
  expect_near_vec(dense(d, kKnown.size()), softmax(kKnown, p.temperature, {0, 3}), 1e-9);
}

TEST(Sampling, MinPCutsRelativeToTheMostLikely) {
  const int n = static_cast<int>(kKnown.size());
  struct Case {
    float min_p;
    std::vector<int32_t> kept;
  };
  // p_max = 0.4: cut-offs 0.4 * min_p.
  for (const Case& c : {Case{0.1f, {0, 1, 2, 3, 4}}, Case{0.2f, {0, 1, 3, 4}}, Case{0.3f, {0, 3, 4}},
                        Case{0.5f, {0, 3}}, Case{0.8f, {3}}, Case{1.0f, {3}}}) {
    SamplingParams p = plain();
    p.min_p = c.min_p;
    p.temperature = 0.7f;
    Sampler s(p);
    const auto d = s.distribution(kKnown.data(), n);
    EXPECT_EQ(kept_ids(d), c.kept) << "min_p " << c.min_p;
    std::vector<int> keep(c.kept.begin(), c.kept.end());
    expect_near_vec(dense(d, kKnown.size()), softmax(kKnown, 0.7, keep), 1e-6);
  }
  // With top-p: the smaller of the two sets.
  SamplingParams p = plain();
  p.min_p = 0.2f;   // keeps 4
  p.top_p = 0.71f;  // keeps 3
  EXPECT_EQ(kept_ids(Sampler(p).distribution(kKnown.data(), n)), (std::vector<int32_t>{0, 3, 4}));
  p.min_p = 0.5f;  // keeps 2
  EXPECT_EQ(kept_ids(Sampler(p).distribution(kKnown.data(), n)), (std::vector<int32_t>{0, 3}));
}

TEST(Sampling, LargeVocabularyMatchesABruteForceReference) {
  // 150k logits with many ties; the reference sorts everything, the sampler must not need to.
  const int n = 151936;
  std::mt19937_64 rng(8);
  std::vector<float> l(static_cast<size_t>(n));
  for (auto& x : l) x = static_cast<float>(rng() % 4000) / 400.0f;
  struct Case {
    int top_k;
    float top_p, min_p, temp;
  };
  for (const Case& c : {Case{40, 0.95f, 0.05f, 0.8f}, Case{0, 0.9f, 0.0f, 1.0f}, Case{0, 0.2f, 0.0f, 1.0f},
                        Case{0, 1.0f, 0.5f, 1.5f}, Case{1000, 0.99f, 0.01f, 0.5f}, Case{0, 0.999f, 0.0f, 1.0f}}) {
    SCOPED_TRACE("top_k " + std::to_string(c.top_k) + " top_p " + std::to_string(c.top_p) + " min_p " +
                 std::to_string(c.min_p));
    // Reference: full ranking, then each filter in llama.cpp's order.
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      return l[static_cast<size_t>(a)] > l[static_cast<size_t>(b)] || (l[static_cast<size_t>(a)] == l[static_cast<size_t>(b)] && a < b);
    });
    if (c.top_k > 0) order.resize(static_cast<size_t>(c.top_k));
    const double mx = l[static_cast<size_t>(order[0])];
    double z = 0;
    for (int i : order) z += std::exp(l[static_cast<size_t>(i)] - mx);
    if (c.top_p < 1.0f) {
      double cum = 0;
      for (size_t k = 0; k < order.size(); ++k) {
        cum += std::exp(l[static_cast<size_t>(order[k])] - mx) / z;
        if (cum >= c.top_p) {
          order.resize(k + 1);
          break;
        }
      }
    }
    if (c.min_p > 0.0f) {
      size_t k = 1;
      while (k < order.size() && std::exp(l[static_cast<size_t>(order[k])] - mx) >= c.min_p) ++k;
      order.resize(k);
    }
    SamplingParams p = plain();
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.temperature = c.temp;
    Sampler s(p);
    const auto d = s.distribution(l.data(), n);
    std::vector<int32_t> ref(order.begin(), order.end());
    std::sort(ref.begin(), ref.end());
    EXPECT_EQ(kept_ids(d), ref);
    for (int k = 0; k < 5; ++k) {
      const int32_t tok = s.sample(l.data(), n);
      ASSERT_TRUE(std::binary_search(ref.begin(), ref.end(), tok));
    }
  }
}

TEST(Sampling, TopKDoesNotSortTheWholeVocabulary) {
  // Relative timing (robust on a loaded machine and under sanitizers): one sample with the default chain
  // (top-k 40) must cost well under one full sort of the vocabulary, which it would include otherwise.
  const int n = 151936;
  std::mt19937_64 rng(10);
  std::vector<float> l(static_cast<size_t>(n));
  for (auto& x : l) x = static_cast<float>(rng() % 100000) / 5000.0f;
  std::vector<std::pair<float, int32_t>> pairs(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) pairs[static_cast<size_t>(i)] = {l[static_cast<size_t>(i)], i};
  auto min_ms = [](auto&& fn) {
    double best = 1e300;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const double sort_ms = min_ms([&] {
    auto v = pairs;
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  });
  Sampler s(SamplingParams{});
  int32_t sink = 0;
  const double sample_ms = min_ms([&] { sink += s.sample(l.data(), n); });
  EXPECT_GE(sink, 0);
  EXPECT_LT(sample_ms * 3, sort_ms) << "sample " << sample_ms << " ms, full sort " << sort_ms << " ms";
}

TEST(Sampling, PenaltiesChangeExactlyTheSeenTokens) {
  const std::vector<float> l = {2.0f, -1.0f, 0.0f, 3.0f, 1.5f, -0.5f, 0.25f, 4.0f};
  SamplingParams p = plain();
  p.repeat_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.25f;
  p.repeat_last_n = 5;
  Sampler s(p);
  // Accept 7 tokens; only the last 5 count: 0 (x2), 1, 2, 5. Token 3 falls out of the window.
  for (int32_t t : {3, 3, 0, 1, 0, 2, 5}) s.accept(t);
  s.accept(-1);      // out of range ids are kept in the window but never touch a logit
  s.accept(100000);  // (the window now holds 0, 2, 5, -1, 100000)
  std::map<int, int> counts = {{0, 1}, {2, 1}, {5, 1}};
  std::vector<float> expect = l;
  for (auto [tok, cnt] : counts) {
    float& x = expect[static_cast<size_t>(tok)];
    x = x <= 0 ? x * p.repeat_penalty : x / p.repeat_penalty;
    x -= p.presence_penalty + static_cast<float>(cnt) * p.frequency_penalty;
  }
  const auto d = s.distribution(l.data(), static_cast<int>(l.size()));
  expect_near_vec(dense(d, l.size()), softmax(expect), 1e-6);

  // Unseen tokens keep their relative odds; seen ones move down.
  const auto base = softmax(l);
  const auto got = dense(d, l.size());
  for (int i : {1, 3, 4, 6}) EXPECT_NEAR(got[static_cast<size_t>(i)] / got[7], base[static_cast<size_t>(i)] / base[7], 1e-9);
  for (int i : {0, 2, 5}) EXPECT_LT(got[static_cast<size_t>(i)] / got[7], base[static_cast<size_t>(i)] / base[7]);

  // Counts: token 4 accepted 3 times within the window -> frequency penalty times 3.
  Sampler f(p);
  for (int32_t t : {4, 4, 4}) f.accept(t);
  std::vector<float> e2 = l;
  e2[4] = l[4] / p.repeat_penalty - p.presence_penalty - 3 * p.frequency_penalty;
  expect_near_vec(dense(f.distribution(l.data(), 8), 8), softmax(e2), 1e-6);

  // Repetition penalty alone: positive logits divided, negative ones multiplied (both less likely).
  SamplingParams r = plain();
  r.repeat_penalty = 2.0f;
  Sampler rs(r);
  for (int32_t t : {0, 1}) rs.accept(t);
  std::vector<float> e3 = l;
  e3[0] = 1.0f;   // 2 / 2
  e3[1] = -2.0f;  // -1 * 2
  expect_near_vec(dense(rs.distribution(l.data(), 8), 8), softmax(e3), 1e-6);

  // Greedy sees the penalized logits: token 7 (logit 4) is seen, 4 / 2 = 2 < 3 (token 3).
  r.temperature = 0.0f;
  Sampler g(r);
  g.accept(7);
  EXPECT_EQ(g.sample(l.data(), 8), 3);
  g.reset();  // forgets the history
  EXPECT_EQ(g.sample(l.data(), 8), 7);

  // repeat_last_n = 0 turns penalties off.
  r.repeat_last_n = 0;
  Sampler off(r);
  off.accept(7);
  EXPECT_EQ(off.sample(l.data(), 8), 7);
}

TEST(Sampling, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> l(100);
  std::mt19937_64 rng(3);
  for (auto& x : l) x = static_cast<float>(rng() % 100) / 50.0f;
  auto run = [&](uint64_t seed) {
    SamplingParams p;  // defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int k = 0; k < 1000; ++k) out.push_back(s.sample(l.data(), 100));
    return out;
  };
  const auto a = run(42);
  EXPECT_EQ(a, run(42));
  for (uint64_t other : {43ull, 0ull, ~0ull}) {
    const auto b = run(other);
    int diff = 0;
    for (size_t k = 0; k < a.size(); ++k) diff += a[k] != b[k];
    EXPECT_GT(diff, 800) << "seed " << other;  // ~30 candidates: sequences should rarely agree
  }
  // reset() restarts the generator.
  SamplingParams p;
  p.seed = 42;
  Sampler s(p);
  std::vector<int32_t> first, second;
  for (int k = 0; k < 100; ++k) first.push_back(s.sample(l.data(), 100));
  s.reset();
  for (int k = 0; k < 100; ++k) second.push_back(s.sample(l.data(), 100));
  EXPECT_EQ(first, second);
  // distribution() does not consume random numbers.
  Sampler t(p);
  t.distribution(l.data(), 100);
  EXPECT_EQ(t.sample(l.data(), 100), first[0]);
}

TEST(Sampling, DrawsArePlatformIndependent) {
  // Uniform logits over 1000 tokens: the token is floor(u * 1000) of our own generator's uniform
  // numbers, exactly. These values (computed independently from the published xoshiro256** and
  // splitmix64 definitions) are fixed: a change means seeded runs are no longer reproducible.
  const std::vector<float> flat(1000, 0.0f);
  Sampler s(plain(42));
  std::vector<int32_t> got;
  for (int k = 0; k < 12; ++k) got.push_back(s.sample(flat.data(), 1000));
  const std::vector<int32_t> expected = {83, 378, 680, 924, 991, 769, 719, 850, 761, 583, 682, 290};
  EXPECT_EQ(got, expected);
}

TEST(Sampling, EmpiricalFrequenciesMatchTheDistribution) {
  // 20000 draws; chi-square against the independently computed target distribution. With these bin
  // counts the statistic exceeds the bound with probability < 1e-6 for a correct sampler, and each bin
  // must also be within 5 sigma of its expectation.
  struct Case {
    SamplingParams p;
    std::vector<int> keep;  // survivors of the filters (empty: all)
    double chi2_bound;      // chi-square quantile at 1 - 1e-6 for (survivors - 1) degrees of freedom
  };
  // Probabilities at T = 1, ranked: id 3 .299, 4 .222, 8 .135, 0 .110, 7 .100, 1 .050, 5 .041, 2 .025, ...
  const std::vector<float> l = {1.0f, 0.2f, -0.5f, 2.0f, 1.7f, 0.0f, -1.0f, 0.9f, 1.2f, -2.0f};
  std::vector<Case> cases;
  {
    SamplingParams p = plain(11);
    p.temperature = 0.7f;
    cases.push_back({p, {}, 44.81});  // 9 dof
  }
  {
    SamplingParams p = plain(12);
    p.top_k = 5;
    p.temperature = 1.3f;
    cases.push_back({p, {3, 4, 8, 0, 7}, 33.38});  // 4 dof
  }
  {
    SamplingParams p = plain(13);
    p.top_p = 0.7f;   // cumulative .299, .521, .655, .766: keeps 3, 4, 8, 0
    p.min_p = 0.3f;   // exp(l - 2) >= 0.3 would keep 3, 4, 8, 0, 7
    p.temperature = 0.9f;
    cases.push_back({p, {3, 4, 8, 0}, 30.66});  // 3 dof
  }
  for (auto& c : cases) {
    Sampler s(c.p);
    std::vector<double> target;
    if (!c.keep.empty()) {
      std::vector<int32_t> want(c.keep.begin(), c.keep.end());
      std::sort(want.begin(), want.end());
      EXPECT_EQ(kept_ids(s.distribution(l.data(), 10)), want);
    }
    target = softmax(l, c.p.temperature, c.keep);
    const int draws = 20000;
    std::vector<int> hist(l.size(), 0);
    for (int k = 0; k < draws; ++k) hist[static_cast<size_t>(s.sample(l.data(), 10))]++;
    double chi2 = 0;
    for (size_t i = 0; i < l.size(); ++i) {
      const double e = target[i] * draws;
      if (e == 0) {
        EXPECT_EQ(hist[i], 0) << "token " << i << " was filtered out but drawn";
        continue;
      }
      chi2 += (hist[i] - e) * (hist[i] - e) / e;
      const double sigma = std::sqrt(draws * target[i] * (1 - target[i]));
      EXPECT_LT(std::abs(hist[i] - e), 5 * sigma) << "token " << i;
    }
    EXPECT_LT(chi2, c.chi2_bound);
  }
}

TEST(Sampling, EdgeCases) {
  Sampler s(plain(9));
  // One finite logit among -inf: always it.
  std::vector<float> one(50, -kInf);
  one[17] = -3.0f;
  for (int k = 0; k < 100; ++k) ASSERT_EQ(s.sample(one.data(), 50), 17);
  // n_vocab 1.
  const float single = 0.3f;
  EXPECT_EQ(s.sample(&single, 1), 0);
  // NaN logits are ignored (treated as -inf), in greedy and sampling mode.
  const std::vector<float> with_nan = {kNaN, 1.0f, kNaN, 0.0f};
  std::vector<int> hist(4, 0);
  for (int k = 0; k < 2000; ++k) hist[static_cast<size_t>(s.sample(with_nan.data(), 4))]++;
  EXPECT_EQ(hist[0] + hist[2], 0);
  EXPECT_GT(hist[1], hist[3]);
  EXPECT_GT(hist[3], 0);
  SamplingParams gp = plain();
  gp.temperature = 0.0f;
  Sampler greedy(gp);
  EXPECT_EQ(greedy.sample(with_nan.data(), 4), 1);
  // +inf logits: uniform among them.
  const std::vector<float> with_inf = {1.0f, kInf, 3.0f, kInf};
  std::fill(hist.begin(), hist.end(), 0);
  for (int k = 0; k < 2000; ++k) hist[static_cast<size_t>(s.sample(with_inf.data(), 4))]++;
  EXPECT_EQ(hist[0] + hist[2], 0);
  EXPECT_GT(hist[1], 850);
  EXPECT_GT(hist[3], 850);
  EXPECT_EQ(greedy.sample(with_inf.data(), 4), 1);
  // Huge magnitudes do not overflow.
  const std::vector<float> huge = {-3e38f, 3e38f, 1e38f};
  EXPECT_EQ(s.sample(huge.data(), 3), 1);
  // Nothing to sample: clear errors.
  const std::vector<float> none = {-kInf, kNaN, -kInf};
  EXPECT_THROW(s.sample(none.data(), 3), Error);
  EXPECT_THROW(greedy.sample(none.data(), 3), Error);
  EXPECT_THROW(s.sample(none.data(), 0), Error);
  EXPECT_THROW(s.sample(nullptr, 3), Error);
  // Logits are not modified.
  std::vector<float> l = {0.5f, 2.0f, -1.0f};
  const std::vector<float> copy = l;
  SamplingParams pp = plain();
  pp.repeat_penalty = 1.5f;
  pp.top_k = 2;
  Sampler ps(pp);
  ps.accept(1);
  ps.sample(l.data(), 3);
  EXPECT_EQ(l, copy);
}

TEST(Sampling, LogitBiasShiftsAndBans) {
  const std::vector<float> l = {1.0f, 2.0f, 0.5f, 1.5f};
  // Greedy: +1.5 on token 0 makes it the argmax (2.5 > 2.0); -inf on token 1 bans the former argmax.
  SamplingParams g;
  g.temperature = 0.0f;
  g.logit_bias = {{0, 1.5f}};
  EXPECT_EQ(Sampler(g).sample(l.data(), 4), 0);
  g.logit_bias = {{1, -kInf}};
  EXPECT_EQ(Sampler(g).sample(l.data(), 4), 3);
  // The distribution is the softmax of the biased logits (bias applied before the chain); ids past n_vocab are
  // ignored; the logits themselves are not modified.
  SamplingParams p = plain();
  p.logit_bias = {{2, 1.0f}, {1, -kInf}, {99, 5.0f}};
  const auto d = Sampler(p).distribution(l.data(), 4);
  const auto ref = softmax({1.0f, -kInf, 1.5f, 1.5f});
  ASSERT_EQ(d.size(), 3u);
  std::map<int32_t, double> got(d.begin(), d.end());
  EXPECT_EQ(got.count(1), 0u);
  for (int i : {0, 2, 3}) EXPECT_NEAR(got[i], ref[static_cast<size_t>(i)], 1e-12) << i;
  EXPECT_EQ(l[1], 2.0f);
  // Banning every token is the usual "nothing can be chosen" error; bad biases are refused by validate().
  p.logit_bias = {{0, -kInf}, {1, -kInf}, {2, -kInf}, {3, -kInf}};
  EXPECT_THROW(Sampler(p).sample(l.data(), 4), Error);
  p.logit_bias = {{-1, 1.0f}};
  EXPECT_THROW(p.validate(), Error);
  p.logit_bias = {{0, kInf}};
  EXPECT_THROW(p.validate(), Error);
  p.logit_bias = {{0, kNaN}};
  EXPECT_THROW(p.validate(), Error);
}
