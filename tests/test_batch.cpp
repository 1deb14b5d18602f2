// Many sequences at once: the batch API (Forward::eval_batch) against per-sequence evaluation, the paged KV pool's
// sequence operations (truncate, fork, release, prefix reuse) against fresh evaluation, and batch invariance.
//
// Tolerance: none. Every comparison is bit for bit (memcmp of the logits): a token's arithmetic must not depend on
// the batch it is in (matmul runs the same tile kernel for any token count, attention cuts each query's positions
// into fixed 256-position chunks, per-token ops are per row), on how its prompt was chunked, on the thread count, or
// on which pages hold its positions. Models: tinytales-4m (trained) in F32, F16, Q4_0, Q4_K_M and Q8_0, and the
// qwen2 synth fixture (biases, NeoX RoPE); KV caches F16 (the default), F32, BF16, Q8_0 and Q4_0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/threadpool.h"
#include "model/model.h"
#include "runtime/kv_pool.h"
#include "support/test_data.h"

using namespace lokal;

namespace {

std::vector<int32_t> random_tokens(int64_t n, int32_t n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(1, n_vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(rng);
  return t;
}

// Logits at every position of `tokens`, evaluated alone in a fresh single-sequence cache, in one call.
std::vector<float> alone(const Model& m, ThreadPool& pool, const std::vector<int32_t>& tokens, DType kt, DType kv) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  Forward f(m, n, pool, n, kt, kv);
  std::vector<float> out(static_cast<size_t>(n * m.config().n_vocab));
  f.eval(tokens.data(), n, 0, true, out.data());
  return out;
}

bool same_row(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, static_cast<size_t>(n) * sizeof(float)) == 0; }

struct Case {
  const char* file;
  DType kv;
  bool repack = true;  // false: quantized matrices stay in their canonical layout (the non-VNNI kernels)
};

class BatchInvariance : public ::testing::TestWithParam<Case> {};

// Three sequences (70, 150 and 300 tokens: partial pages, several pages, more than one 256-position attention
// chunk) evaluated together in one pool: prompts in uneven chunks, interleaved with the other sequences' tokens,
// in different micro-batch sizes and thread counts. Every logit row equals the row of the sequence evaluated alone.
TEST_P(BatchInvariance, LogitsBitIdenticalAloneOrBatched) {
  const Case c = GetParam();
  LoadOptions lo;
  lo.repack = c.repack;
  auto m = Model::load(test::data_path(c.file), lo);
  const int64_t V = m->config().n_vocab;
  const std::vector<int64_t> lens = {70, 150, 300};
  std::vector<std::vector<int32_t>> toks;
  for (size_t i = 0; i < lens.size(); ++i) toks.push_back(random_tokens(lens[i], static_cast<int32_t>(V), 100 + static_cast<uint32_t>(i)));
  ThreadPool pool1(1);
  std::vector<std::vector<float>> ref;
  for (auto& t : toks) ref.push_back(alone(*m, pool1, t, c.kv, c.kv));

  for (int threads : {2, 1}) {
    for (int64_t max_batch : {int64_t{512}, int64_t{7}}) {
      SCOPED_TRACE("threads " + std::to_string(threads) + " max_batch " + std::to_string(max_batch));
      ThreadPool pool(threads);
      KVPool kvp(m->config(), 600, c.kv, c.kv);
      Forward f(*m, pool, max_batch, 512);
      std::vector<KVPool::SeqId> ids;
      for (size_t i = 0; i < toks.size(); ++i) ids.push_back(kvp.create());
      // Step s: sequence i contributes a chunk whose size cycles through these.
      const std::vector<int64_t> chunk = {1, 37, 64, 5, 100, 3};
      std::vector<int64_t> done(toks.size(), 0);
      int step = 0;
      while (true) {
        std::vector<BatchEntry> e;
        std::vector<SeqPages> tables(toks.size());
        std::vector<std::pair<size_t, int64_t>> rows;  // (sequence, position) of each logits row
        std::vector<int64_t> n_of(toks.size(), 0);
        for (size_t i = 0; i < toks.size(); ++i) {
          const int64_t n = std::min(chunk[(step + i) % chunk.size()], lens[i] - done[i]);
          if (n <= 0) continue;
          ASSERT_TRUE(kvp.reserve(ids[i], done[i] + n));
          n_of[i] = n;
        }
        // Entries of different sequences interleaved (round robin), not grouped.
        for (int64_t j = 0; j < 100; ++j)
          for (size_t i = 0; i < toks.size(); ++i)
            if (j < n_of[i]) {
              const int64_t pos = done[i] + j;
              e.push_back(BatchEntry{toks[i][static_cast<size_t>(pos)], static_cast<int32_t>(i), pos, true});
              rows.emplace_back(i, pos);
            }
        if (e.empty()) break;
        for (size_t i = 0; i < toks.size(); ++i) tables[i] = kvp.page_table(ids[i]);
        std::vector<float> out(rows.size() * static_cast<size_t>(V));
        f.eval_batch(e.data(), static_cast<int64_t>(e.size()), tables.data(), static_cast<int64_t>(tables.size()),
                     kvp.cache(), out.data());
        for (size_t r = 0; r < rows.size(); ++r)
          ASSERT_TRUE(same_row(out.data() + r * static_cast<size_t>(V),
                               ref[rows[r].first].data() + rows[r].second * V, V))
              << "sequence " << rows[r].first << " position " << rows[r].second << " step " << step;
        for (size_t i = 0; i < toks.size(); ++i) {
          kvp.commit(ids[i], toks[i].data() + done[i], n_of[i]);
          done[i] += n_of[i];
        }
        ++step;
      }
      for (auto id : ids) kvp.release(id);
      kvp.check_invariants();
      EXPECT_EQ(kvp.available_pages(), kvp.n_pages());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BatchInvariance,
                         ::testing::Values(Case{"models/real/tinytales-4m-f32.gguf", DType::F16},
                                           Case{"models/real/tinytales-4m-f16.gguf", DType::F16},
                                           Case{"models/real/tinytales-4m-q4_0.gguf", DType::F16},
                                           Case{"models/real/tinytales-4m-q4_k_m.gguf", DType::F16},
                                           Case{"models/real/tinytales-4m-q8_0.gguf", DType::F16},
                                           Case{"models/real/tinytales-4m-q8_0.gguf", DType::F32},
                                           Case{"models/real/tinytales-4m-q8_0.gguf", DType::BF16},
                                           Case{"models/real/tinytales-4m-q4_k_m.gguf", DType::Q8_0},
                                           Case{"models/real/tinytales-4m-q4_k_m.gguf", DType::Q4_0},
                                           Case{"models/real/tinytales-4m-q4_0.gguf", DType::F16, false},
                                           Case{"models/real/tinytales-4m-q4_k_m.gguf", DType::F16, false},
                                           Case{"models/real/tinytales-4m-q8_0.gguf", DType::F16, false},
                                           Case{"models/synth/synth-qwen2-q8_0.gguf", DType::F16},
                                           Case{"models/synth/synth-qwen2-f32.gguf", DType::F16}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           std::string s = i.param.file;
                           s = s.substr(s.rfind('/') + 1);
                           s = s.substr(0, s.find(".gguf")) + "_kv_" + type_name(i.param.kv) +
                               (i.param.repack ? "" : "_canonical");
                           for (char& ch : s)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// Evaluates tokens[from, to) of sequence `id` (reserve, one eval_batch, commit) and returns their logits.
std::vector<float> feed(Forward& f, KVPool& kvp, KVPool::SeqId id, const std::vector<int32_t>& tokens, int64_t from,
                        int64_t to, int64_t V) {
  EXPECT_TRUE(kvp.reserve(id, to));
  std::vector<BatchEntry> e;
  for (int64_t p = from; p < to; ++p) e.push_back(BatchEntry{tokens[static_cast<size_t>(p)], 0, p, true});
  const SeqPages t = kvp.page_table(id);
  std::vector<float> out(static_cast<size_t>((to - from) * V));
  f.eval_batch(e.data(), static_cast<int64_t>(e.size()), &t, 1, kvp.cache(), out.data());
  kvp.commit(id, tokens.data() + from, to - from);
  return out;
}

class SequenceOps : public ::testing::Test {
 protected:
  void SetUp() override {
    // F16 weights: float products, where any change of summation order would show.
    m = Model::load(test::data_path("models/real/tinytales-4m-f16.gguf"));
    V = m->config().n_vocab;
  }
  std::unique_ptr<Model> m;
  int64_t V = 0;
  ThreadPool pool{2};
};

// truncate(seq, n) then new tokens: the logits equal a fresh evaluation of the new token list; at a page boundary,
// in the middle of a page, and back into a page that is in the prefix cache (written in place after leaving it).
TEST_F(SequenceOps, TruncateIsExactRollback) {
  Forward f(*m, pool, 512, 512);
  for (int64_t cut : {int64_t{100}, int64_t{128}, int64_t{64}, int64_t{3}, int64_t{0}}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    KVPool kvp(m->config(), 512, DType::F16, DType::F16);
    const auto a = random_tokens(180, static_cast<int32_t>(V), 1);
    auto b = a;
    const auto tail = random_tokens(180, static_cast<int32_t>(V), 2);
    std::copy(tail.begin() + cut, tail.end(), b.begin() + cut);
    const auto ref = alone(*m, pool, b, DType::F16, DType::F16);
    const auto s = kvp.create();
    feed(f, kvp, s, a, 0, 180, V);
    kvp.truncate(s, cut);
    EXPECT_EQ(kvp.length(s), cut);
    const auto got = feed(f, kvp, s, b, cut, 180, V);
    for (int64_t p = cut; p < 180; ++p)
      ASSERT_TRUE(same_row(got.data() + (p - cut) * V, ref.data() + p * V, V)) << "position " << p;
    kvp.check_invariants();
    kvp.release(s);
    EXPECT_EQ(kvp.available_pages(), kvp.n_pages());
  }
}

// fork shares the parent's pages; both continue with different tokens (the shared partial page is copied on
// write) and each equals a fresh evaluation; the parent's earlier logits are unaffected by the child's writes.
TEST_F(SequenceOps, ForkSharesPagesAndCopiesOnWrite) {
  Forward f(*m, pool, 512, 512);
  KVPool kvp(m->config(), 1024, DType::F16, DType::F16);
  const auto base = random_tokens(100, static_cast<int32_t>(V), 3);
  auto a = base, b = base;
  const auto ta = random_tokens(60, static_cast<int32_t>(V), 4), tb = random_tokens(60, static_cast<int32_t>(V), 5);
  a.insert(a.end(), ta.begin(), ta.end());
  b.insert(b.end(), tb.begin(), tb.end());
  const auto ra = alone(*m, pool, a, DType::F16, DType::F16), rb = alone(*m, pool, b, DType::F16, DType::F16);
  const auto p = kvp.create();
  feed(f, kvp, p, base, 0, 100, V);
  const int64_t before = kvp.available_pages();
  const auto c = kvp.fork(p);
  EXPECT_EQ(kvp.available_pages(), before) << "a fork takes no pages until it writes";
  EXPECT_EQ(kvp.pages(c), kvp.pages(p));
  const auto gc = feed(f, kvp, c, b, 100, 160, V);
  const auto gp = feed(f, kvp, p, a, 100, 160, V);
  EXPECT_NE(kvp.pages(c)[1], kvp.pages(p)[1]) << "the partial page was copied";
  EXPECT_EQ(kvp.pages(c)[0], kvp.pages(p)[0]) << "the full page stays shared";
  for (int64_t q = 100; q < 160; ++q) {
    ASSERT_TRUE(same_row(gc.data() + (q - 100) * V, rb.data() + q * V, V)) << "child position " << q;
    ASSERT_TRUE(same_row(gp.data() + (q - 100) * V, ra.data() + q * V, V)) << "parent position " << q;
  }
  kvp.check_invariants();
  kvp.release(p);
  kvp.release(c);
  kvp.check_invariants();
  EXPECT_EQ(kvp.available_pages(), kvp.n_pages());
}

// A released sequence's full pages stay cached: a new sequence whose prompt starts with the same tokens reuses them
// (whole pages, at least one token left to evaluate) and its logits equal a fresh evaluation.
TEST_F(SequenceOps, PrefixReuseEqualsFreshEvaluation) {
  Forward f(*m, pool, 512, 512);
  KVPool kvp(m->config(), 1024, DType::F16, DType::F16);
  const auto first = random_tokens(200, static_cast<int32_t>(V), 6);
  const auto s1 = kvp.create();
  EXPECT_EQ(kvp.attach_prefix(s1, first), 0);
  feed(f, kvp, s1, first, 0, 200, V);
  kvp.release(s1);
  EXPECT_EQ(kvp.cached_pages(), 3) << "positions 0-191 are three full pages";
  // Same first 150 tokens, then different ones: two pages (128 positions) are reused.
  auto second = first;
  const auto tail = random_tokens(100, static_cast<int32_t>(V), 7);
  second.resize(150);
  second.insert(second.end(), tail.begin(), tail.end());
  const auto ref = alone(*m, pool, second, DType::F16, DType::F16);
  const auto s2 = kvp.create();
  const int64_t reused = kvp.attach_prefix(s2, second);
  EXPECT_EQ(reused, 128);
  const auto got = feed(f, kvp, s2, second, reused, 250, V);
  for (int64_t p = reused; p < 250; ++p)
    ASSERT_TRUE(same_row(got.data() + (p - reused) * V, ref.data() + p * V, V)) << "position " << p;
  // The whole prompt of exactly 192 cached tokens: 128 reused (one token must be evaluated for its logits).
  const auto s3 = kvp.create();
  EXPECT_EQ(kvp.attach_prefix(s3, std::vector<int32_t>(first.begin(), first.begin() + 192)), 128);
  // A different first token: nothing reused.
  auto other = first;
  other[0] = (other[0] + 1) % static_cast<int32_t>(V);
  const auto s4 = kvp.create();
  EXPECT_EQ(kvp.attach_prefix(s4, other), 0);
  kvp.check_invariants();
  for (auto s : {s2, s3, s4}) kvp.release(s);
  EXPECT_EQ(kvp.available_pages(), kvp.n_pages());
}

// When free pages run out, unheld cached pages are evicted, least recently used first; held pages never are, and a
// reservation the pool cannot satisfy fails without changing the sequence.
TEST_F(SequenceOps, ExhaustionAndLruEviction) {
  KVPool kvp(m->config(), 4 * 64, DType::F16, DType::F16);
  ASSERT_EQ(kvp.n_pages(), 4);
  auto fill = [&](KVPool::SeqId s, uint32_t seed, int64_t n) {
    const auto t = random_tokens(n, static_cast<int32_t>(V), seed);
    EXPECT_TRUE(kvp.reserve(s, n));
    kvp.commit(s, t.data(), n);  // contents are not computed here: only the bookkeeping is tested
    return t;
  };
  const auto a = kvp.create();
  const auto ta = fill(a, 10, 128);  // pages registered: 2
  kvp.release(a);
  const auto b = kvp.create();
  const auto tb = fill(b, 11, 64);
  kvp.release(b);
  EXPECT_EQ(kvp.cached_pages(), 3);
  EXPECT_EQ(kvp.available_pages(), 4);
  // Hold b's page again (most recently used), then need 3 pages: 1 free + the 2 of a (least recently used).
  const auto b2 = kvp.create();
  auto tb1 = tb;
  tb1.push_back(1);
  EXPECT_EQ(kvp.attach_prefix(b2, tb1), 64);
  const auto c = kvp.create();
  EXPECT_TRUE(kvp.reserve(c, 3 * 64));
  EXPECT_EQ(kvp.evictions(), 2);
  EXPECT_EQ(kvp.attach_prefix(kvp.create(), ta), 0) << "a's pages were evicted";
  // Nothing left: a reservation fails and leaves the sequence as it was.
  const auto pages_before = kvp.pages(b2);
  EXPECT_FALSE(kvp.reserve(b2, 65 + 64));
  EXPECT_EQ(kvp.pages(b2), pages_before);
  EXPECT_EQ(kvp.length(b2), 64);
  kvp.check_invariants();
}

// Random operations (create, reserve+commit, truncate, fork, release, attach_prefix) on a small pool: the
// bookkeeping stays consistent after each, and the pool is whole again when every sequence is released.
TEST_F(SequenceOps, RandomOperationsKeepThePoolConsistent) {
  KVPool kvp(m->config(), 12 * 64, DType::F16, DType::F16);
  std::mt19937 rng(42);
  std::vector<KVPool::SeqId> live;
  std::vector<std::vector<int32_t>> history;  // prompts seen, so attach_prefix finds something
  for (int it = 0; it < 3000; ++it) {
    const int op = static_cast<int>(rng() % 6);
    if (op == 0 || live.empty()) {
      const auto s = kvp.create();
      if (!history.empty() && rng() % 2) {
        auto t = history[rng() % history.size()];
        const size_t cut = rng() % 70;
        t.resize(t.size() > cut + 1 ? t.size() - cut : 1);
        kvp.attach_prefix(s, t);
      }
      live.push_back(s);
    } else {
      const size_t i = rng() % live.size();
      const auto s = live[i];
      if (op == 1 || op == 2) {
        const int64_t n = 1 + static_cast<int64_t>(rng() % 90);
        std::vector<int32_t> t(static_cast<size_t>(n));
        for (auto& x : t) x = static_cast<int32_t>(rng() % 4);  // few distinct tokens: prefixes repeat
        if (kvp.reserve(s, kvp.length(s) + n)) {
          kvp.commit(s, t.data(), n);
          history.push_back(kvp.tokens(s));
        }
      } else if (op == 3) {
        kvp.truncate(s, static_cast<int64_t>(rng() % (kvp.length(s) + 1)));
      } else if (op == 4) {
        live.push_back(kvp.fork(s));
      } else {
        kvp.release(s);
        live.erase(live.begin() + static_cast<long>(i));
      }
    }
    ASSERT_NO_THROW(kvp.check_invariants()) << "after operation " << it;
    if (history.size() > 50) history.erase(history.begin());
  }
  for (auto s : live) kvp.release(s);
  kvp.check_invariants();
  EXPECT_EQ(kvp.available_pages(), kvp.n_pages());
}

}  // namespace
