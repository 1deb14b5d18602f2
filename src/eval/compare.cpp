#include "eval/compare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>

#include "core/safe_io.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace lokal {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int32_t argmax_of(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

// Removes the temporary file on every exit path.
// Compares each scored row with the next row of the base file.
class KLSink : public ScoredRowSink {
 public:
  KLSink(LogProbReader& base, int64_t n_vocab, int n_threads) : base_(base), n_vocab_(n_vocab) {
    scratch_p_.resize(static_cast<size_t>(n_threads));
    scratch_q_.resize(static_cast<size_t>(n_threads));
    enc_.resize(static_cast<size_t>(n_threads));
    kl_.reserve(static_cast<size_t>(base.plan().total_scored()));
  }

  void consume(const ScoredRows& rows, ThreadPool& pool) override {
    if (rows.n_vocab != n_vocab_) throw Error("compare: vocabulary size changed");
    if (base_rows_.size() < static_cast<size_t>(rows.n)) base_rows_.resize(static_cast<size_t>(rows.n));
    for (int64_t i = 0; i < rows.n; ++i) base_.next(&base_rows_[static_cast<size_t>(i)]);
    const size_t k0 = kl_.size();
    kl_.resize(k0 + static_cast<size_t>(rows.n));
    agree_.resize(static_cast<size_t>(rows.n));
    pool.parallel_for(rows.n, [&](int64_t i, int tid) {
      auto& p = scratch_p_[static_cast<size_t>(tid)];
      auto& q = scratch_q_[static_cast<size_t>(tid)];
      auto& e = enc_[static_cast<size_t>(tid)];
      p.resize(static_cast<size_t>(n_vocab_));
      q.resize(static_cast<size_t>(n_vocab_));
      const LogProbRow& b = base_rows_[static_cast<size_t>(i)];
      const float* lg = rows.logits + i * n_vocab_;
      encode_logprob_row(lg, n_vocab_, rows.targets[i], &e);
      decode_logprob_row(b, p.data());
      decode_logprob_row(e, q.data());
      kl_[k0 + static_cast<size_t>(i)] = kl_divergence(p.data(), q.data(), n_vocab_);
      agree_[static_cast<size_t>(i)] = argmax_of(lg, n_vocab_) == b.argmax ? 1 : 0;
    });
    for (int64_t i = 0; i < rows.n; ++i) n_agree_ += agree_[static_cast<size_t>(i)];
  }

  std::vector<double>& kl() { return kl_; }
  int64_t n_agree() const { return n_agree_; }

 private:
  LogProbReader& base_;
  int64_t n_vocab_;
  std::vector<LogProbRow> base_rows_;
  std::vector<std::vector<double>> scratch_p_, scratch_q_;
  std::vector<LogProbRow> enc_;
  std::vector<double> kl_;
  std::vector<uint8_t> agree_;
  int64_t n_agree_ = 0;
};

// Greedy decoding speed: run a short prompt, then time n single-token steps.
double decode_speed(const Model& m, ThreadPool& pool, const std::vector<int32_t>& prompt, int n, DType type_k,
                    DType type_v) {
  if (n <= 0 || prompt.empty()) return 0;
  const int64_t np = static_cast<int64_t>(prompt.size());
  Forward fwd(m, np + n, pool, np, type_k, type_v);
  std::vector<float> logits(static_cast<size_t>(m.config().n_vocab));
  fwd.eval(prompt.data(), np, 0, false, logits.data());
  int32_t tok = argmax_of(logits.data(), m.config().n_vocab);
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    fwd.eval(&tok, 1, np + i, false, logits.data());
    tok = argmax_of(logits.data(), m.config().n_vocab);
  }
  const double s = since(t0);
  return s > 0 ? n / s : 0;
}

void describe(const Model& m, const std::string& path, CompareRow* row) {
  row->path = path;
  std::error_code ec;
  row->file_bytes = static_cast<uint64_t>(fs::file_size(path, ec));
  if (ec) row->file_bytes = m.gguf().file_size();
  for (const auto& t : m.gguf().tensors()) row->n_params += t.n_elements();
  row->bits_per_weight =
      row->n_params > 0 ? 8.0 * static_cast<double>(m.weight_bytes()) / static_cast<double>(row->n_params) : 0;
  row->file_type = model_file_type(m.gguf());  // model/config.h: the name info, bench and plan show
}

std::string file_name(const std::string& path) { return fs::path(path).filename().string(); }

void check_same_vocab(const Vocab& base, const std::string& base_path, const Vocab& v, const std::string& path) {
  if (v.n_tokens() != base.n_tokens())
    throw Error(path + ": its vocabulary has " + std::to_string(v.n_tokens()) + " tokens, the base model " +
                file_name(base_path) + " has " + std::to_string(base.n_tokens()) +
                "; compare needs models with the same vocabulary");
  for (int32_t i = 0; i < v.n_tokens(); ++i)
    if (v.token_text(i) != base.token_text(i))
      throw Error(path + ": its vocabulary differs from the base model " + file_name(base_path) + " at token " +
                  std::to_string(i) + "; compare needs models with the same vocabulary");
}

}  // namespace

double kl_divergence(const double* logp, const double* logq, int64_t n) {
  double kl = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = std::exp(logp[i]);
    kl += p * (logp[i] - logq[i]);
  }
  return std::max(kl, 0.0);  // exact math is >= 0; only rounding can dip below
}

double quantile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(v.size() - 1);
  const size_t i = static_cast<size_t>(std::floor(pos));
  const double frac = pos - static_cast<double>(i);
  if (i + 1 >= v.size()) return v.back();
  return v[i] + frac * (v[i + 1] - v[i]);
}

std::vector<CompareRow> compare_models(const std::vector<std::string>& paths, const std::string& text,
                                       const std::string& text_name, const CompareOptions& opt,
                                       const CompareProgress& progress) {
  if (paths.empty()) throw Error("compare needs a base model");
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  std::vector<CompareRow> out;
  const int n_models = static_cast<int>(paths.size());
  auto chunk_progress = [&](int64_t c, int64_t n, double p) {
    char b[96];
    std::snprintf(b, sizeof b, "  chunk %lld/%lld: PPL %.4f", static_cast<long long>(c), static_cast<long long>(n), p);
    say(b);
  };

  // Check everything that can be checked from the files (vocabulary, context) before any output
  // or evaluation, so a bad model list fails at once with one message.
  auto base = Model::load(paths[0]);
  PerplexityPlan plan = plan_perplexity(*base, text, text_name, opt.ppl);
  for (int i = 1; i < n_models; ++i) {
    const std::string& path = paths[static_cast<size_t>(i)];
    auto f = GGUFFile::open(path);
    const ModelConfig c = ModelConfig::from_gguf(*f);  // model/config.h: the checks of Model::load, in its order
    auto v = Vocab::from_gguf(*f);
    check_same_vocab(base->vocab(), paths[0], *v, path);
    if (!opt.ppl.allow_long_ctx && c.n_ctx_train > 0 && plan.n_ctx > c.n_ctx_train)
      throw Error(path + ": a context of " + std::to_string(plan.n_ctx) + " tokens exceeds the model's trained context of " +
                  std::to_string(c.n_ctx_train) + " tokens (use a smaller -c, or --allow-long-ctx to evaluate it anyway)");
  }

  // One row per (model, KV types); the first is the base.
  struct Entry {
    std::string path;
    DType k, v;
  };
  std::vector<std::pair<DType, DType>> kvs = opt.kv_types;
  if (kvs.empty()) kvs.emplace_back(opt.ppl.cache_type_k, opt.ppl.cache_type_v);
  std::vector<Entry> entries;
  for (const auto& p : paths)
    for (const auto& kv : kvs) entries.push_back({p, kv.first, kv.second});
  const int n_rows = static_cast<int>(entries.size());
  auto label = [&](int i) {
    const Entry& e = entries[static_cast<size_t>(i)];
    std::string l = "model " + std::to_string(i + 1) + "/" + std::to_string(n_rows) + (i == 0 ? " (base): " : ": ") + e.path;
    if (opt.kv_types.size() > 0) l += std::string(", KV ") + type_name(e.k) + "/" + type_name(e.v);
    return l;
  };

  // Base: perplexity, log-probs to a temporary file, decode speed.
  // The base's log-probabilities: removed when done, on an error, or on SIGINT/SIGTERM.
  ScratchPath tmp(opt.temp_dir, "lokal-compare-", ".lpf");
  auto writer = std::make_unique<LogProbWriter>(tmp.path(), plan);
  ThreadPool pool(opt.n_threads > 0 ? opt.n_threads : ThreadPool::default_threads());
  std::vector<int32_t> prompt;
  {
    say(label(0));
    prompt.assign(plan.tokens.begin(), plan.tokens.begin() + std::clamp<int64_t>(opt.decode_prompt, 1, plan.n_ctx));
    std::vector<ScoredRowSink*> sinks{writer.get()};
    plan.cache_type_k = entries[0].k;
    plan.cache_type_v = entries[0].v;
    PerplexityResult r = run_perplexity(*base, plan, pool, opt.ppl.n_batch, sinks, chunk_progress);
    writer->finish();
    writer.reset();
    CompareRow row;
    describe(*base, paths[0], &row);
    row.cache_type_k = entries[0].k;
    row.cache_type_v = entries[0].v;
    row.ppl = r.ppl;
    row.ppl_err = r.ppl_err;
    row.kl_mean = row.kl_p99 = row.kl_max = 0.0;  // KL(base || base) = 0 by definition
    row.top1_agreement = 100.0;
    row.n_scored = r.n_scored;
    row.prefill_tps = r.prefill_tps();
    row.decode_tps = decode_speed(*base, pool, prompt, opt.decode_tokens, entries[0].k, entries[0].v);
    out.push_back(row);
    base.reset();  // one model in memory at a time
  }

  std::unique_ptr<Model> m;
  std::string loaded;
  for (int mi = 1; mi < n_rows; ++mi) {
    const Entry& e = entries[static_cast<size_t>(mi)];
    const std::string& path = e.path;
    say(label(mi));
    if (!m || loaded != path) {
      m.reset();
      m = Model::load(path);
      loaded = path;
    }
    check_plan_fits(*m, path, plan, opt.ppl.allow_long_ctx);
    plan.cache_type_k = e.k;
    plan.cache_type_v = e.v;

    LogProbReader reader(tmp.path());
    KLSink kl(reader, plan.n_vocab, pool.size());
    std::vector<ScoredRowSink*> sinks{&kl};
    PerplexityResult r = run_perplexity(*m, plan, pool, opt.ppl.n_batch, sinks, chunk_progress);
    CompareRow row;
    describe(*m, path, &row);
    row.cache_type_k = e.k;
    row.cache_type_v = e.v;
    row.ppl = r.ppl;
    row.ppl_err = r.ppl_err;
    row.delta_ppl = r.ppl - out[0].ppl;
    row.delta_ppl_pct = out[0].ppl > 0 ? 100.0 * (r.ppl / out[0].ppl - 1.0) : 0.0;
    std::vector<double>& kls = kl.kl();
    double sum = 0;
    for (double x : kls) sum += x;
    row.kl_mean = kls.empty() ? 0 : sum / static_cast<double>(kls.size());
    row.kl_max = kls.empty() ? 0 : *std::max_element(kls.begin(), kls.end());
    row.kl_p99 = quantile(kls, 0.99);
    row.top1_agreement = r.n_scored > 0 ? 100.0 * static_cast<double>(kl.n_agree()) / static_cast<double>(r.n_scored) : 0;
    row.n_scored = r.n_scored;
    row.prefill_tps = r.prefill_tps();
    row.decode_tps = decode_speed(*m, pool, prompt, opt.decode_tokens, e.k, e.v);
    out.push_back(row);
  }
  return out;
}

}  // namespace lokal
