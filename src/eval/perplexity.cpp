#include "eval/perplexity.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace lokal {

static_assert(std::endian::native == std::endian::little, "the log-probability file is written in native order");

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr char kMagic[8] = {'L', 'O', 'K', 'A', 'L', 'L', 'P', 'F'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 40;
constexpr size_t kRowHeaderBytes = 16;
constexpr double kClampNats = 30.0;   // log-probs further below the top are stored as `lo`
constexpr double kCodes = 65535.0;

// -log softmax(logits)[target], in double.
double nll_of(const float* logits, int64_t n_vocab, int32_t target) {
  float mx = logits[0];
  for (int64_t i = 1; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return -(static_cast<double>(logits[target]) - mx - std::log(sum));
}

void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put_f32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }
uint32_t get_u32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
float get_f32(const uint8_t* p) { float v; std::memcpy(&v, p, 4); return v; }

uint32_t to_u32(int64_t v, const char* what) {
  if (v < 0 || v > static_cast<int64_t>(std::numeric_limits<uint32_t>::max()))
    throw Error(std::string("log-probability file: ") + what + " out of range");
  return static_cast<uint32_t>(v);
}

}  // namespace

// ---- planning -----------------------------------------------------------------------------

void check_plan_fits(const Model& model, const std::string& model_name, const PerplexityPlan& plan,
                     bool allow_long_ctx) {
  const ModelConfig& c = model.config();
  if (c.n_vocab != plan.n_vocab)
    throw Error(model_name + ": vocabulary of " + std::to_string(c.n_vocab) + " tokens, expected " +
                std::to_string(plan.n_vocab));
  if (!allow_long_ctx && c.n_ctx_train > 0 && plan.n_ctx > c.n_ctx_train)
    throw Error(model_name + ": a context of " + std::to_string(plan.n_ctx) +
                " tokens exceeds the model's trained context of " + std::to_string(c.n_ctx_train) +
                " tokens (use a smaller -c, or --allow-long-ctx to evaluate it anyway)");
}

PerplexityPlan plan_perplexity(const Model& model, const std::string& text, const std::string& text_name,
                               const PerplexityOptions& opt) {
  const Vocab& v = model.vocab();
  const ModelConfig& c = model.config();
  if (v.add_eos())
    throw Error("the vocabulary appends an EOS token to every text; perplexity (like llama-perplexity) "
                "needs one that does not");
  PerplexityPlan p;
  p.n_vocab = c.n_vocab;
  p.n_ctx = opt.n_ctx > 0 ? opt.n_ctx : (c.n_ctx_train > 0 ? std::min<int64_t>(512, c.n_ctx_train) : 512);
  if (p.n_ctx < 4) throw Error("a perplexity context must be at least 4 tokens (got " + std::to_string(p.n_ctx) + ")");
  if (opt.n_chunks == 0) throw Error("the number of chunks must be positive (or negative for all)");
  p.first = p.n_ctx / 2;
  p.n_scored = p.n_ctx - 1 - p.first;

  check_plan_fits(model, model.gguf().name(), p, opt.allow_long_ctx);

  std::vector<int32_t> toks = v.tokenize(text, true, false);
  p.n_text_tokens = static_cast<int64_t>(toks.size());
  if (p.n_text_tokens < 2 * p.n_ctx)
    throw Error(text_name + ": the text has " + std::to_string(p.n_text_tokens) +
                " tokens; perplexity with a context of " + std::to_string(p.n_ctx) + " needs at least " +
                std::to_string(2 * p.n_ctx) + " (use a longer text or a smaller -c)");

  const int64_t max_chunks = p.n_text_tokens / p.n_ctx;
  p.n_chunks = opt.n_chunks < 0 ? max_chunks : std::min(opt.n_chunks, max_chunks);
  p.bos_replaced = v.add_bos() && v.bos() >= 0;
  p.tokens.assign(toks.begin(), toks.begin() + p.n_chunks * p.n_ctx);
  if (p.bos_replaced)
    for (int64_t ch = 0; ch < p.n_chunks; ++ch) p.tokens[static_cast<size_t>(ch * p.n_ctx)] = v.bos();
  p.cache_type_k = opt.cache_type_k;
  p.cache_type_v = opt.cache_type_v;
  return p;
}

// ---- evaluation ---------------------------------------------------------------------------

namespace {

// A scored row whose log-probability is NaN or infinite: the logits were not finite (NaN or Inf in the weights,
// or an overflow). Refused rather than averaged into "PPL = nan".
Error non_finite_error(const Model& model, int64_t chunk, int64_t n_chunks, int64_t pos, double nll) {
  return Error(model.gguf().name() + ": non-finite log-probability (" + (std::isnan(nll) ? "nan" : "inf") +
               ") in chunk " + std::to_string(chunk + 1) + "/" + std::to_string(n_chunks) + " at position " +
               std::to_string(pos) + ": the model's logits are not finite (NaN or Inf in its weights?)");
}

}  // namespace

void ppl_from_sums(double sum_nll, double sum_nll2, int64_t n, double* ppl, double* ppl_err, double* nll_mean,
                   double* nll_stderr) {
  const double m = n > 0 ? sum_nll / static_cast<double>(n) : 0.0;
  const double m2 = n > 0 ? sum_nll2 / static_cast<double>(n) : 0.0;
  const double var = m2 - m * m;
  const double se = (var > 0 && n > 1) ? std::sqrt(var / static_cast<double>(n - 1)) : 0.0;
  const double p = std::exp(m);
  if (ppl) *ppl = p;
  if (ppl_err) *ppl_err = p * se;
  if (nll_mean) *nll_mean = m;
  if (nll_stderr) *nll_stderr = se;
}

PerplexityResult run_perplexity(const Model& model, const PerplexityPlan& plan, ThreadPool& pool, int64_t n_batch,
                                const std::vector<ScoredRowSink*>& sinks, const PerplexityProgress& progress,
                                const MatmulObserver& observer) {
  const int64_t n_vocab = model.config().n_vocab;
  if (n_vocab != plan.n_vocab) throw Error("perplexity plan made for another vocabulary size");
  const int64_t n_ctx = plan.n_ctx;
  const int64_t B = std::clamp<int64_t>(n_batch, 1, n_ctx);
  const auto t_start = Clock::now();

  Forward fwd(model, n_ctx, pool, B, plan.cache_type_k, plan.cache_type_v);
  if (observer) fwd.set_matmul_observer(observer);
  std::vector<float> logits(static_cast<size_t>(B * n_vocab));
  std::vector<double> nll(static_cast<size_t>(B));
  std::vector<int32_t> targets(static_cast<size_t>(B));

  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.n_chunks = plan.n_chunks;
  double sum = 0.0, sum2 = 0.0;
  int64_t count = 0;
  for (int64_t ch = 0; ch < plan.n_chunks; ++ch) {
    const int32_t* toks = plan.chunk(ch);
    for (int64_t done = 0; done < n_ctx; done += B) {
      const int64_t nb = std::min(B, n_ctx - done);
      const auto t0 = Clock::now();
      fwd.eval(toks + done, nb, done, true, logits.data());  // pos0 = 0 starts from an empty cache
      r.eval_seconds += since(t0);
      r.n_evaluated += nb;
      // Scored positions: [first, n_ctx - 2] intersected with this micro-batch.
      const int64_t lo = std::max(done, plan.first), hi = std::min(done + nb, n_ctx - 1);
      if (lo >= hi) continue;
      const int64_t n = hi - lo;
      const float* rows = logits.data() + (lo - done) * n_vocab;
      for (int64_t i = 0; i < n; ++i) targets[static_cast<size_t>(i)] = toks[lo + i + 1];
      pool.parallel_for(n, [&](int64_t i, int) {
        nll[static_cast<size_t>(i)] = nll_of(rows + i * n_vocab, n_vocab, targets[static_cast<size_t>(i)]);
      });
      for (int64_t i = 0; i < n; ++i) {
        const double v = nll[static_cast<size_t>(i)];
        if (!std::isfinite(v)) throw non_finite_error(model, ch, plan.n_chunks, lo + i, v);
        sum += v;
        sum2 += v * v;
      }
      count += n;
      ScoredRows sr;
      sr.index = ch * plan.n_scored + (lo - plan.first);
      sr.n = n;
      sr.n_vocab = n_vocab;
      sr.logits = rows;
      sr.targets = targets.data();
      sr.nll = nll.data();
      for (ScoredRowSink* s : sinks) s->consume(sr, pool);
    }
    r.running_ppl.push_back(std::exp(sum / static_cast<double>(count)));
    if (progress) progress(ch + 1, plan.n_chunks, r.running_ppl.back());
  }
  r.n_scored = count;
  ppl_from_sums(sum, sum2, count, &r.ppl, &r.ppl_err, &r.nll_mean, &r.nll_stderr);
  if (!std::isfinite(r.ppl) || !std::isfinite(r.ppl_err))
    throw Error(model.gguf().name() + ": the perplexity overflows (mean negative log-likelihood " +
                std::to_string(r.nll_mean) + " nats over " + std::to_string(count) + " tokens)");
  r.total_seconds = since(t_start);
  return r;
}

// ---- log-probability rows -----------------------------------------------------------------

void encode_logprob_row(const float* logits, int64_t n_vocab, int32_t target, LogProbRow* out) {
  float mx = logits[0], mn = logits[0];
  int32_t am = 0;
  for (int64_t i = 1; i < n_vocab; ++i) {
    if (logits[i] > mx) {
      mx = logits[i];
      am = static_cast<int32_t>(i);
    }
    mn = std::min(mn, logits[i]);
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double log_z = mx + std::log(sum);
  const double hi = mx - log_z;
  const double lo = std::max(static_cast<double>(mn) - log_z, hi - kClampNats);
  out->lo = static_cast<float>(lo);
  out->step = static_cast<float>((hi - static_cast<double>(out->lo)) / kCodes);
  if (!(out->step > 0.0f)) out->step = 0.0f;
  out->argmax = am;
  out->nll = static_cast<float>(log_z - static_cast<double>(logits[target]));
  out->code.resize(static_cast<size_t>(n_vocab));
  const double base = out->lo, inv = out->step > 0 ? 1.0 / static_cast<double>(out->step) : 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) {
    const double q = std::nearbyint((static_cast<double>(logits[i]) - log_z - base) * inv);
    out->code[static_cast<size_t>(i)] = static_cast<uint16_t>(std::clamp(q, 0.0, kCodes));
  }
}

void decode_logprob_row(const LogProbRow& row, double* logp) {
  const size_t n = row.code.size();
  const double lo = row.lo, step = row.step;
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) {
    logp[i] = lo + step * row.code[i];
    mx = std::max(mx, logp[i]);
  }
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(logp[i] - mx);
  const double lse = mx + std::log(sum);
  for (size_t i = 0; i < n; ++i) logp[i] -= lse;
}

// ---- writer -------------------------------------------------------------------------------

LogProbWriter::LogProbWriter(const std::string& path, const PerplexityPlan& plan)
    : path_(path), n_vocab_(plan.n_vocab), expected_(plan.total_scored()) {
  uint8_t h[kHeaderBytes] = {};
  std::memcpy(h, kMagic, 8);
  put_u32(h + 8, kVersion);
  put_u32(h + 12, to_u32(plan.n_vocab, "n_vocab"));
  put_u32(h + 16, to_u32(plan.n_ctx, "n_ctx"));
  put_u32(h + 20, to_u32(plan.n_chunks, "n_chunks"));
  put_u32(h + 24, to_u32(plan.first, "first"));
  put_u32(h + 28, to_u32(plan.n_scored, "n_scored"));
  put_u32(h + 32, plan.bos_replaced ? 1u : 0u);
  f_ = std::make_unique<AtomicFile>(path);
  f_->write(h, sizeof h);
  f_->write(plan.tokens.data(), sizeof(int32_t) * plan.tokens.size());
}

void LogProbWriter::consume(const ScoredRows& rows, ThreadPool& pool) {
  if (!f_) throw Error(path_ + ": log-probability file already closed");
  if (rows.n_vocab != n_vocab_ || rows.index != written_ || written_ + rows.n > expected_)
    throw Error(path_ + ": rows out of order");
  if (enc_.size() < static_cast<size_t>(rows.n)) enc_.resize(static_cast<size_t>(rows.n));
  pool.parallel_for(rows.n, [&](int64_t i, int) {
    encode_logprob_row(rows.logits + i * rows.n_vocab, rows.n_vocab, rows.targets[i], &enc_[static_cast<size_t>(i)]);
  });
  const size_t row_bytes = kRowHeaderBytes + 2 * static_cast<size_t>(n_vocab_);
  buf_.resize(row_bytes);
  for (int64_t i = 0; i < rows.n; ++i) {
    const LogProbRow& e = enc_[static_cast<size_t>(i)];
    put_f32(buf_.data(), e.lo);
    put_f32(buf_.data() + 4, e.step);
    put_u32(buf_.data() + 8, static_cast<uint32_t>(e.argmax));
    put_f32(buf_.data() + 12, e.nll);
    std::memcpy(buf_.data() + kRowHeaderBytes, e.code.data(), 2 * e.code.size());
    f_->write(buf_.data(), row_bytes);
  }
  written_ += rows.n;
}

void LogProbWriter::finish() {
  if (!f_) return;
  if (written_ != expected_)
    throw Error(path_ + ": incomplete log-probability file (" + std::to_string(written_) + " of " +
                std::to_string(expected_) + " rows)");
  f_->commit();
  f_.reset();
}

// ---- reader -------------------------------------------------------------------------------

LogProbReader::LogProbReader(const std::string& path) : path_(path) {
  f_.reset(std::fopen(path.c_str(), "rb"));
  if (!f_) throw Error(path + ": cannot open the log-probability file");
  std::FILE* f = f_.get();
  auto fail = [&](const std::string& what) -> Error { return Error(path + ": " + what); };
  uint8_t h[kHeaderBytes];
  if (std::fread(h, 1, sizeof h, f) != sizeof h) throw fail("too short for a log-probability file");
  if (std::memcmp(h, kMagic, 8) != 0) throw fail("not a lokal log-probability file (bad magic)");
  const uint32_t version = get_u32(h + 8);
  if (version != kVersion) throw fail("unsupported log-probability file version " + std::to_string(version));
  plan_.n_vocab = get_u32(h + 12);
  plan_.n_ctx = get_u32(h + 16);
  plan_.n_chunks = get_u32(h + 20);
  plan_.first = get_u32(h + 24);
  plan_.n_scored = get_u32(h + 28);
  plan_.bos_replaced = (get_u32(h + 32) & 1u) != 0;
  if (plan_.n_vocab < 1 || plan_.n_vocab > (int64_t(1) << 28) || plan_.n_ctx < 4 || plan_.n_ctx > (int64_t(1) << 24) ||
      plan_.n_chunks < 1 || plan_.first != plan_.n_ctx / 2 || plan_.n_scored != plan_.n_ctx - 1 - plan_.first)
    throw fail("inconsistent log-probability file header");
  // Exact size check before allocating anything from the header's numbers.
  const long double expect = static_cast<long double>(kHeaderBytes) +
                             4.0L * plan_.n_ctx * plan_.n_chunks +
                             static_cast<long double>(plan_.n_chunks) * plan_.n_scored *
                                 (kRowHeaderBytes + 2.0L * plan_.n_vocab);
  if (std::fseek(f, 0, SEEK_END) != 0) throw fail("cannot seek");
  const long size = std::ftell(f);
  if (size < 0 || static_cast<long double>(size) != expect)
    throw fail("size " + std::to_string(size) + " bytes does not match its header (truncated or corrupt)");
  if (std::fseek(f, static_cast<long>(kHeaderBytes), SEEK_SET) != 0) throw fail("cannot seek");
  plan_.tokens.resize(static_cast<size_t>(plan_.n_ctx * plan_.n_chunks));
  if (std::fread(plan_.tokens.data(), sizeof(int32_t), plan_.tokens.size(), f) != plan_.tokens.size())
    throw fail("short read");
  for (int32_t t : plan_.tokens)
    if (t < 0 || t >= plan_.n_vocab) throw fail("token id " + std::to_string(t) + " outside the vocabulary");
  plan_.n_text_tokens = static_cast<int64_t>(plan_.tokens.size());
}

void LogProbReader::next(LogProbRow* row) {
  if (read_ >= plan_.total_scored()) throw Error(path_ + ": no more rows");
  const size_t row_bytes = kRowHeaderBytes + 2 * static_cast<size_t>(plan_.n_vocab);
  buf_.resize(row_bytes);
  if (std::fread(buf_.data(), 1, row_bytes, f_.get()) != row_bytes) throw Error(path_ + ": short read");
  row->lo = get_f32(buf_.data());
  row->step = get_f32(buf_.data() + 4);
  row->argmax = static_cast<int32_t>(get_u32(buf_.data() + 8));
  row->nll = get_f32(buf_.data() + 12);
  if (!std::isfinite(row->lo) || !std::isfinite(row->step) || row->step < 0 || !std::isfinite(row->nll) ||
      row->argmax < 0 || row->argmax >= plan_.n_vocab)
    throw Error(path_ + ": corrupt row " + std::to_string(read_));
  row->code.resize(static_cast<size_t>(plan_.n_vocab));
  std::memcpy(row->code.data(), buf_.data() + kRowHeaderBytes, 2 * row->code.size());
  ++read_;
}

}  // namespace lokal
