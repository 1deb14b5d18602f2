// The continuous-batching scheduler (runtime/scheduler.h) against sequences generated alone by Session.
//
// Because a sequence's logits are bit-identical alone or batched (tests/test_batch.cpp), every request must produce
// exactly the tokens it produces alone - greedy or seeded sampling - whatever the other requests, the chunking of
// its prompt (n_batch 16), its arrival time, preemption and recomputation when the pool runs out, or prefix reuse.
// The comparisons are therefore exact (token ids and text). Model: tinytales-4m F16 (float products everywhere).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "core/fp16.h"
#include "core/threadpool.h"
#include "model/model.h"
#include "runtime/scheduler.h"
#include "runtime/session.h"
#include "support/test_data.h"

using namespace lokal;

namespace {

std::string book() {
  std::ifstream f(test::data_path("golden/ppl-text-books.txt"));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model = Model::load(test::data_path("models/real/tinytales-4m-f16.gguf")).release();
    text = new std::string(book());
  }
  static void TearDownTestSuite() {
    delete model;
    delete text;
  }
  // A prompt of about n tokens, from offset `at` of the book.
  static std::vector<int32_t> prompt(size_t at, int64_t n) {
    auto t = model->vocab().tokenize(text->substr(at, static_cast<size_t>(n) * 8), true, false);
    t.resize(static_cast<size_t>(std::min<int64_t>(n, static_cast<int64_t>(t.size()))));
    return t;
  }
  // The tokens Session generates alone.
  static GenerationResult alone(const std::vector<int32_t>& p, int n_predict, const SamplingParams& sp,
                                int64_t n_ctx = 512) {
    SessionOptions so;
    so.n_ctx = n_ctx;
    so.n_threads = 2;
    Session s(*model, so);
    return s.generate(p, n_predict, sp, nullptr);
  }
  static SamplingParams greedy() {
    SamplingParams sp;
    sp.temperature = 0;
    return sp;
  }
  static Model* model;
  static std::string* text;
};
Model* SchedulerTest::model = nullptr;
std::string* SchedulerTest::text = nullptr;

struct Collected {
  std::mutex mu;
  std::map<uint64_t, GenResult> done;
  std::map<uint64_t, std::string> streamed;
};

GenRequest request(const std::vector<int32_t>& p, int64_t max_tokens, const SamplingParams& sp, Collected& c,
                   std::shared_ptr<uint64_t> id) {
  GenRequest r;
  r.prompt = p;
  r.max_tokens = max_tokens;
  r.sampling = sp;
  r.on_text = [&c, id](const std::string& t) {
    std::lock_guard<std::mutex> lk(c.mu);
    c.streamed[*id] += t;
    return true;
  };
  r.on_done = [&c](const GenResult& g) {
    std::lock_guard<std::mutex> lk(c.mu);
    c.done[g.id] = g;
  };
  return r;
}

// Six requests, three at a time, prompts in chunks of 16 tokens mixed with the others' decode tokens: each gets the
// tokens it gets alone, greedy and with seeded sampling, and the streamed text is the result's text.
TEST_F(SchedulerTest, BatchedRequestsEqualAlone) {
  for (bool sample : {false, true}) {
    SCOPED_TRACE(sample ? "seeded sampling" : "greedy");
    ThreadPool pool(2);
    SchedulerOptions so;
    so.n_parallel = 3;
    so.n_batch = 16;
    so.n_ctx = 512;
    Scheduler sch(*model, pool, so);
    Collected c;
    std::vector<std::vector<int32_t>> prompts;
    std::vector<SamplingParams> sps;
    std::vector<uint64_t> ids;
    for (int i = 0; i < 6; ++i) {
      prompts.push_back(prompt(static_cast<size_t>(i) * 997, 20 + 37 * i));
      SamplingParams sp = greedy();
      if (sample) {
        sp = SamplingParams{};
        sp.temperature = 0.9f;
        sp.seed = static_cast<uint64_t>(i) + 1;
      }
      sps.push_back(sp);
      auto id = std::make_shared<uint64_t>(0);
      *id = sch.submit(request(prompts.back(), 24, sp, c, id));
      ids.push_back(*id);
    }
    sch.run_until_idle();
    ASSERT_EQ(c.done.size(), 6u);
    for (int i = 0; i < 6; ++i) {
      const GenResult& g = c.done[ids[static_cast<size_t>(i)]];
      const GenerationResult a = alone(prompts[static_cast<size_t>(i)], 24, sps[static_cast<size_t>(i)]);
      EXPECT_EQ(g.tokens, a.tokens) << "request " << i;
      EXPECT_EQ(g.finish, a.stop == StopReason::EndOfGeneration ? FinishReason::EndOfGeneration : FinishReason::Length);
      EXPECT_EQ(c.streamed[g.id], g.text);
      EXPECT_EQ(g.n_prompt, static_cast<int64_t>(prompts[static_cast<size_t>(i)].size()));
    }
    EXPECT_EQ(sch.kv_pool().available_pages(), sch.kv_pool().n_pages()) << "every page is back";
    sch.kv_pool().check_invariants();
  }
}

// Requests arrive from another thread at random times while the background loop runs, some are cancelled, and the
// pool (4 pages = 256 positions) is far smaller than the requests together: sequences are preempted and recomputed.
// Every request ends; the ones not cancelled have exactly their alone tokens; no page leaks.
TEST_F(SchedulerTest, RandomArrivalCancellationAndPoolExhaustion) {
  ThreadPool pool(2);
  SchedulerOptions so;
  so.n_parallel = 4;
  so.n_batch = 32;
  so.kv_tokens = 256;
  Scheduler sch(*model, pool, so);
  ASSERT_EQ(sch.options().n_ctx, 256);
  Collected c;
  std::mt19937 rng(7);
  const int n_req = 10;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n_req; ++i) prompts.push_back(prompt(static_cast<size_t>(i) * 1500 + 100, 40 + static_cast<int64_t>(rng() % 80)));
  std::vector<uint64_t> ids(n_req);
  std::vector<bool> cancelled(n_req, false);
  sch.start();
  std::thread client([&] {
    for (int i = 0; i < n_req; ++i) {
      auto id = std::make_shared<uint64_t>(0);
      {
        std::lock_guard<std::mutex> lk(c.mu);  // on_text may run before *id is set otherwise
        *id = sch.submit(request(prompts[static_cast<size_t>(i)], 60, greedy(), c, id));
      }
      ids[static_cast<size_t>(i)] = *id;
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 30));
      if (i % 4 == 1) {
        sch.cancel(*id);
        cancelled[static_cast<size_t>(i)] = true;
      }
    }
  });
  client.join();
  for (int wait = 0; wait < 6000; ++wait) {
    {
      std::lock_guard<std::mutex> lk(c.mu);
      if (c.done.size() == static_cast<size_t>(n_req)) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  sch.stop();
  ASSERT_EQ(c.done.size(), static_cast<size_t>(n_req)) << "every request ends";
  int64_t preempted = 0;
  for (int i = 0; i < n_req; ++i) {
    const GenResult& g = c.done[ids[static_cast<size_t>(i)]];
    preempted += g.n_preempted;
    if (cancelled[static_cast<size_t>(i)]) {
      EXPECT_TRUE(g.finish == FinishReason::Cancelled || g.finish == FinishReason::Length ||
                  g.finish == FinishReason::EndOfGeneration) << finish_reason_name(g.finish);
      continue;
    }
    const GenerationResult a = alone(prompts[static_cast<size_t>(i)], 60, greedy(), 256);
    EXPECT_EQ(g.tokens, a.tokens) << "request " << i << " (preempted " << g.n_preempted << " times)";
  }
  EXPECT_GT(preempted, 0) << "the pool was too small for all at once: someone must have been preempted";
  EXPECT_EQ(sch.stats().preemptions, preempted);
  EXPECT_EQ(sch.kv_pool().available_pages(), sch.kv_pool().n_pages());
  sch.kv_pool().check_invariants();
}

// A second request whose prompt starts with the first one's reuses its full pages, reports it, and still produces
// its alone tokens.
TEST_F(SchedulerTest, PrefixReuseIsReportedAndExact) {
  ThreadPool pool(2);
  SchedulerOptions so;
  so.n_parallel = 2;
  so.n_ctx = 512;
  Scheduler sch(*model, pool, so);
  Collected c;
  const auto p1 = prompt(5000, 200);
  ASSERT_EQ(p1.size(), 200u);
  auto p2 = p1;
  const auto more = prompt(9000, 30);
  p2.insert(p2.end(), more.begin() + 1, more.end());  // without its BOS
  auto id1 = std::make_shared<uint64_t>(0);
  *id1 = sch.submit(request(p1, 10, greedy(), c, id1));
  sch.run_until_idle();
  auto id2 = std::make_shared<uint64_t>(0);
  *id2 = sch.submit(request(p2, 10, greedy(), c, id2));
  sch.run_until_idle();
  EXPECT_EQ(c.done[*id1].n_reused, 0);
  EXPECT_EQ(c.done[*id2].n_reused, 192) << "three full pages of the first prompt";
  EXPECT_EQ(sch.stats().prompt_tokens_reused, 192);
  EXPECT_EQ(c.done[*id2].tokens, alone(p2, 10, greedy()).tokens);
}

// Stop strings cut the text before the first occurrence (also when it spans tokens), nothing of it is streamed, and
// the finish reason says so; the sequence limit ends generation with context_full exactly where Session stops.
TEST_F(SchedulerTest, StopStringsAndSequenceLimit) {
  ThreadPool pool(2);
  const auto p = prompt(20000, 50);
  const GenerationResult a = alone(p, 40, greedy());
  std::string full;
  {
    StreamDecoder d(model->vocab());
    for (int32_t t : a.tokens) full += d.push(t);
    full += d.flush();
  }
  ASSERT_GT(full.size(), 20u);
  const std::string stop = full.substr(full.size() / 2, 3);
  const size_t cut = full.find(stop);
  {
    SchedulerOptions so;
    so.n_ctx = 512;
    Scheduler sch(*model, pool, so);
    Collected c;
    auto id = std::make_shared<uint64_t>(0);
    GenRequest r = request(p, 40, greedy(), c, id);
    r.stop = {"this string never appears \x01", stop};
    *id = sch.submit(std::move(r));
    sch.run_until_idle();
    const GenResult& g = c.done[*id];
    EXPECT_EQ(g.finish, FinishReason::StopString);
    EXPECT_EQ(g.text, full.substr(0, cut));
    EXPECT_EQ(c.streamed[*id], g.text);
  }
  {
    SchedulerOptions so;
    so.n_ctx = 64;
    Scheduler sch(*model, pool, so);
    Collected c;
    auto id = std::make_shared<uint64_t>(0);
    *id = sch.submit(request(p, 100, greedy(), c, id));
    sch.run_until_idle();
    const GenerationResult lim = alone(p, 100, greedy(), 64);
    const GenResult& g = c.done[*id];
    EXPECT_EQ(g.tokens, lim.tokens);
    if (lim.stop == StopReason::ContextFull) {
      EXPECT_EQ(g.finish, FinishReason::ContextFull);
    }
  }
}

// Requests that can never run end with an error that says why; the others are not disturbed.
TEST_F(SchedulerTest, BadRequestsEndWithClearErrors) {
  ThreadPool pool(2);
  SchedulerOptions so;
  so.kv_tokens = 128;
  so.n_ctx = 128;
  Scheduler sch(*model, pool, so);
  Collected c;
  auto submit = [&](std::vector<int32_t> p, SamplingParams sp = greedy()) {
    auto id = std::make_shared<uint64_t>(0);
    *id = sch.submit(request(p, 5, sp, c, id));
    return *id;
  };
  const uint64_t empty = submit({});
  const uint64_t longp = submit(prompt(0, 200));
  SamplingParams bad = greedy();
  bad.top_p = 2;
  const uint64_t badsp = submit(prompt(0, 10), bad);
  const uint64_t badtok = submit({1, -5, 3});
  const uint64_t ok = submit(prompt(0, 10));
  sch.run_until_idle();
  EXPECT_EQ(c.done[empty].finish, FinishReason::Error);
  EXPECT_NE(c.done[empty].error.find("empty"), std::string::npos) << c.done[empty].error;
  EXPECT_EQ(c.done[longp].finish, FinishReason::Error);
  EXPECT_NE(c.done[longp].error.find("128 tokens"), std::string::npos) << c.done[longp].error;
  EXPECT_EQ(c.done[badsp].finish, FinishReason::Error);
  EXPECT_NE(c.done[badsp].error.find("top_p"), std::string::npos) << c.done[badsp].error;
  EXPECT_EQ(c.done[badtok].finish, FinishReason::Error);
  EXPECT_NE(c.done[badtok].error.find("-5"), std::string::npos) << c.done[badtok].error;
  EXPECT_EQ(c.done[ok].finish, FinishReason::Length);
  EXPECT_EQ(c.done[ok].tokens.size(), 5u);
}

}  // namespace

namespace {
// One thread pool per process: a Session given the process's pool evaluates on it (no pool of its own), and a
// scheduler on the same pool, used in turn, produces the same tokens.
TEST_F(SchedulerTest, SessionAndSchedulerShareOneThreadPool) {
  ThreadPool pool(2);
  SessionOptions so;
  so.n_ctx = 256;
  so.pool = &pool;
  so.n_threads = 7;  // ignored: the given pool decides
  Session s(*model, so);
  EXPECT_EQ(s.n_threads(), 2);
  const auto p = prompt(300, 40);
  const auto a = s.generate(p, 12, greedy(), nullptr);
  SchedulerOptions opt;
  opt.n_ctx = 256;
  Scheduler sch(*model, pool, opt);
  Collected c;
  auto id = std::make_shared<uint64_t>(0);
  *id = sch.submit(request(p, 12, greedy(), c, id));
  sch.run_until_idle();
  EXPECT_EQ(c.done[*id].tokens, a.tokens);
}
}  // namespace

namespace {
// Embeddings through the scheduler. Last pooling is checked against the logits: the output matrix applied to the
// (normalized) last hidden state must give the last position's logits up to one positive scale factor (the hidden
// state's norm) — correlation 1 within float rounding (|r - 1| < 1e-5: F16 weights, float sums over 256 features).
// Mean pooling: unit length, the same vector alone and batched with generating requests (batch invariance: equal
// bit for bit), and different prompts give different vectors.
TEST_F(SchedulerTest, EmbeddingsArePooledFinalHiddenStates) {
  ThreadPool pool(2);
  SchedulerOptions opt;
  opt.n_ctx = 256;
  opt.n_batch = 16;  // prompts in several chunks
  Scheduler sch(*model, pool, opt);
  const int64_t n_embd = model->config().n_embd, n_vocab = model->config().n_vocab;
  auto embed = [&](const std::vector<int32_t>& p, Pooling how, std::vector<std::vector<int32_t>> busy = {}) {
    Collected c;
    std::vector<std::shared_ptr<uint64_t>> ids;
    for (const auto& b : busy) {
      ids.push_back(std::make_shared<uint64_t>(0));
      *ids.back() = sch.submit(request(b, 20, greedy(), c, ids.back()));
    }
    auto id = std::make_shared<uint64_t>(0);
    GenRequest r = request(p, 0, greedy(), c, id);
    r.pooling = how;
    *id = sch.submit(std::move(r));
    sch.run_until_idle();
    const GenResult& g = c.done[*id];
    EXPECT_EQ(g.finish, FinishReason::EndOfGeneration) << g.error;
    EXPECT_TRUE(g.tokens.empty());
    return g.embedding;
  };
  const auto p = prompt(1000, 40);
  const std::vector<float> last = embed(p, Pooling::Last);
  ASSERT_EQ(static_cast<int64_t>(last.size()), n_embd);

  // Logits of the last position from a plain forward pass.
  Forward f(*model, 256, pool);
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  f.eval(p.data(), static_cast<int64_t>(p.size()), 0, false, logits.data());
  ASSERT_EQ(model->output.type, DType::F16);
  std::vector<double> proj(static_cast<size_t>(n_vocab));
  for (int64_t r = 0; r < n_vocab; ++r) {
    const uint16_t* w = reinterpret_cast<const uint16_t*>(model->output.row(r));
    double acc = 0;
    for (int64_t i = 0; i < n_embd; ++i) acc += static_cast<double>(fp16_to_fp32(w[i])) * last[static_cast<size_t>(i)];
    proj[static_cast<size_t>(r)] = acc;
  }
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  for (int64_t r = 0; r < n_vocab; ++r) {
    const double x = proj[static_cast<size_t>(r)], y = logits[static_cast<size_t>(r)];
    sx += x, sy += y, sxx += x * x, syy += y * y, sxy += x * y;
  }
  const double n = static_cast<double>(n_vocab);
  const double corr = (sxy - sx * sy / n) / std::sqrt((sxx - sx * sx / n) * (syy - sy * sy / n));
  EXPECT_NEAR(corr, 1.0, 1e-5);
  EXPECT_GT(sxy, 0.0);

  const std::vector<float> mean = embed(p, Pooling::Mean);
  double norm = 0;
  for (float v : mean) norm += static_cast<double>(v) * v;
  EXPECT_NEAR(norm, 1.0, 1e-5);
  const std::vector<float> mean_busy = embed(p, Pooling::Mean, {prompt(50, 30), prompt(500, 60)});
  EXPECT_EQ(mean, mean_busy);
  const std::vector<float> other = embed(prompt(2000, 40), Pooling::Mean);
  double dot = 0;
  for (size_t i = 0; i < mean.size(); ++i) dot += static_cast<double>(mean[i]) * other[i];
  EXPECT_LT(dot, 0.9999);
  EXPECT_NE(mean, last);
}
}  // namespace
