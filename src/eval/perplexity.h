// eval/perplexity.h - perplexity of a model on a text, computed the way llama.cpp's
// `llama-perplexity` does (c392e50, default settings, no stride), and the file format that
// stores a model's scored log-probabilities for later comparison (`--save-logits`, `compare`).
//
// Method (llama-perplexity's rules):
//   * The whole text is tokenized once, with BOS if the vocabulary adds one (special-token
//     text in it is NOT parsed as special tokens). A vocabulary that appends EOS is refused.
//   * The tokens are cut into consecutive chunks of n_ctx tokens; the number of chunks is
//     min(--chunks, n_tokens / n_ctx) (all when --chunks < 0). At least 2 * n_ctx tokens are needed.
//   * When the vocabulary adds BOS, the first token of every chunk is replaced by BOS.
//   * Each chunk is evaluated from an empty KV cache (micro-batches of n_batch tokens). Only the
//     second half is scored: the logits at positions first = n_ctx/2 .. n_ctx-2 predict the
//     tokens at first+1 .. n_ctx-1, i.e. n_ctx - 1 - n_ctx/2 tokens per chunk.
//   * Per scored token: nll = -log softmax(logits)[target], the log-softmax computed in double.
//     PPL = exp(mean nll). The running PPL after chunk i is exp(mean nll over chunks 1..i).
//   * The +/- error is llama.cpp's: with m = mean(nll) and m2 = mean(nll^2) over the N scored
//     tokens, sigma = sqrt((m2 - m^2) / (N - 1)) is the standard error of the mean nll, and the
//     error of the PPL is PPL * sigma (first-order propagation through exp).
//
// ------------------------------------------------------------------------------------------
// Log-probability file (".lpf"), version 1. All integers and floats little endian.
//
//   offset  size           field
//   0       8              magic "LOKALLPF"
//   8       4              u32 version = 1
//   12      4              u32 n_vocab
//   16      4              u32 n_ctx          tokens per chunk
//   20      4              u32 n_chunks
//   24      4              u32 first          first scored position in a chunk (= n_ctx / 2)
//   28      4              u32 n_scored       scored tokens per chunk (= n_ctx - 1 - first)
//   32      4              u32 flags          bit 0: the first token of each chunk was replaced by BOS
//   36      4              u32 reserved (0)
//   40      4*n_ctx*n_chunks  i32 tokens      the evaluated chunks, back to back, as evaluated
//                                             (after the BOS replacement)
//   then n_chunks * n_scored rows, chunk by chunk, in position order; row r of chunk c holds the
//   distribution predicted at position first + r (whose target is token first + r + 1):
//           4              f32 lo             log-probability of code 0
//           4              f32 step           nats per code (0 when every log-prob is equal)
//           4              i32 argmax         id of the largest logit (first one on ties)
//           4              f32 nll            -log p(target), from the exact (double) log-softmax
//           2*n_vocab      u16 code[n_vocab]  log p_i ~= lo + step * code_i
//
// Encoding of a row: the log-softmax lp_i is computed in double; hi = max lp_i,
// lo = max(min lp_i, hi - 30) (log-probs more than 30 nats below the top are clamped to lo:
// their total weight is < n_vocab * e^-30 ~ 1e-13 * n_vocab), step = (hi - lo) / 65535,
// code_i = round((lp_i - lo) / step). The error per entry is <= step / 2 <= 2.3e-4 nats.
// Decoding: lp'_i = lo + step * code_i, then renormalized in double (lp'_i - logsumexp(lp')).
// A row is 16 + 2 * n_vocab bytes: half of storing float logits.
//
// KL-divergence between two models is computed from two rows encoded this way (the base row from
// the file, the other model's row encoded by the same code), so two identical models give exactly
// 0; the encoding adds a noise floor of about 1e-8 nats to the mean KL.
// ------------------------------------------------------------------------------------------
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/safe_io.h"
#include "core/threadpool.h"
#include "model/model.h"

namespace lokal {

struct FileCloser {
  void operator()(std::FILE* f) const { if (f) std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

struct PerplexityOptions {
  int64_t n_ctx = 0;           // tokens per chunk; 0: min(512, the model's trained context)
  int64_t n_chunks = -1;       // < 0: every full chunk of the text
  int64_t n_batch = kDefaultBatchSize;  // tokens per forward micro-batch (capped at n_ctx)
  bool allow_long_ctx = false; // accept n_ctx above the model's trained context
  DType cache_type_k = DType::F32;  // KV cache types of the evaluation (F32: no rounding; llama.cpp's
  DType cache_type_v = DType::F32;  // perplexity uses f16, which moves its figures by < 0.1%)
};

// What will be evaluated: the chunks of tokens (BOS already substituted) and their geometry.
struct PerplexityPlan {
  int64_t n_vocab = 0;
  int64_t n_ctx = 0;
  DType cache_type_k = DType::F32;   // from PerplexityOptions
  DType cache_type_v = DType::F32;
  int64_t n_chunks = 0;
  int64_t first = 0;             // first scored position in a chunk
  int64_t n_scored = 0;          // scored tokens per chunk
  int64_t n_text_tokens = 0;     // tokens of the whole text (BOS included)
  bool bos_replaced = false;
  std::vector<int32_t> tokens;   // n_chunks * n_ctx

  int64_t total_scored() const { return n_chunks * n_scored; }
  const int32_t* chunk(int64_t c) const { return tokens.data() + c * n_ctx; }
};

// Tokenizes `text` with `model`'s vocabulary and cuts it into chunks. Throws lokal::Error (naming
// `text_name`) when the text is too short, the context is invalid or above the trained context
// (unless allowed), or the vocabulary appends EOS.
PerplexityPlan plan_perplexity(const Model& model, const std::string& text, const std::string& text_name,
                               const PerplexityOptions& opt);

// Throws lokal::Error when `model` cannot be evaluated with `plan` (other vocabulary size,
// n_ctx above its trained context without allow_long_ctx).
void check_plan_fits(const Model& model, const std::string& model_name, const PerplexityPlan& plan,
                     bool allow_long_ctx);

// A block of consecutive scored rows, handed to sinks as soon as they are computed.
struct ScoredRows {
  int64_t index = 0;           // global index of the first row (0 .. plan.total_scored()-1)
  int64_t n = 0;               // rows in this block
  int64_t n_vocab = 0;
  const float* logits = nullptr;   // n rows of n_vocab logits
  const int32_t* targets = nullptr; // n target tokens
  const double* nll = nullptr;      // n exact negative log-likelihoods
};

// Receives every scored row in order (e.g. to save log-probs or compare with a base model).
class ScoredRowSink {
 public:
  virtual ~ScoredRowSink() = default;
  virtual void consume(const ScoredRows& rows, ThreadPool& pool) = 0;
};

struct PerplexityResult {
  int64_t n_ctx = 0, n_chunks = 0, n_scored = 0;  // n_scored: all chunks together
  int64_t n_evaluated = 0;                         // tokens run through the model
  double ppl = 0, ppl_err = 0;
  double nll_mean = 0, nll_stderr = 0;
  std::vector<double> running_ppl;                 // after each chunk
  double eval_seconds = 0;                         // forward passes only
  double total_seconds = 0;                        // forward + scoring + sinks
  double prefill_tps() const { return eval_seconds > 0 ? static_cast<double>(n_evaluated) / eval_seconds : 0; }
};

// progress(chunk_done (1-based), n_chunks, running_ppl)
using PerplexityProgress = std::function<void(int64_t, int64_t, double)>;

// Evaluates every chunk of `plan` and returns the perplexity. `sinks` (may be empty) see every
// scored row. n_batch: forward micro-batch (capped at n_ctx). `observer` (optional) sees the input of every
// weight-matrix product (`lokal imatrix`).
PerplexityResult run_perplexity(const Model& model, const PerplexityPlan& plan, ThreadPool& pool, int64_t n_batch,
                                const std::vector<ScoredRowSink*>& sinks = {},
                                const PerplexityProgress& progress = {}, const MatmulObserver& observer = {});

// exp(mean) and llama.cpp's +/- from the sums of nll and nll^2 over n tokens.
void ppl_from_sums(double sum_nll, double sum_nll2, int64_t n, double* ppl, double* ppl_err, double* nll_mean,
                   double* nll_stderr);

// ---- log-probability rows -----------------------------------------------------------------

// One encoded row (see the format above).
struct LogProbRow {
  float lo = 0, step = 0;
  int32_t argmax = 0;
  float nll = 0;
  std::vector<uint16_t> code;   // n_vocab
};

// Encodes one row of logits (n_vocab floats) predicting `target`.
void encode_logprob_row(const float* logits, int64_t n_vocab, int32_t target, LogProbRow* out);
// Decodes a row into normalized log-probabilities (n_vocab doubles, logsumexp = 0).
void decode_logprob_row(const LogProbRow& row, double* logp);

// Writes a log-probability file while perplexity runs (use it as a sink).
class LogProbWriter : public ScoredRowSink {
 public:
  // Starts `path` (an AtomicFile: a temporary file beside it until finish()) with the header and tokens.
  // Throws lokal::Error if it cannot.
  LogProbWriter(const std::string& path, const PerplexityPlan& plan);
  void consume(const ScoredRows& rows, ThreadPool& pool) override;
  // Flushes, closes and renames into place; throws lokal::Error on a write error or if rows are missing.
  // Without finish() (an error, an interruption) nothing is left behind.
  void finish();

 private:
  std::string path_;
  std::unique_ptr<AtomicFile> f_;
  int64_t n_vocab_ = 0, expected_ = 0, written_ = 0;
  std::vector<LogProbRow> enc_;
  std::vector<uint8_t> buf_;
};

// Reads a log-probability file row by row. Every structural problem throws lokal::Error naming the file.
class LogProbReader {
 public:
  explicit LogProbReader(const std::string& path);
  LogProbReader(const LogProbReader&) = delete;
  LogProbReader& operator=(const LogProbReader&) = delete;

  const PerplexityPlan& plan() const { return plan_; }   // geometry and tokens from the header
  int64_t rows_left() const { return plan_.total_scored() - read_; }
  // Reads the next row; throws lokal::Error at the end or on a short file.
  void next(LogProbRow* row);

 private:
  std::string path_;
  FilePtr f_;
  PerplexityPlan plan_;
  int64_t read_ = 0;
  std::vector<uint8_t> buf_;
};

}  // namespace lokal
