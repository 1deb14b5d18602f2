#include "runtime/session.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"

namespace lokal {

namespace {
int64_t pick_ctx(const Model& m, int64_t want) {
  if (want > 0) return want;
  return std::min<int64_t>(m.config().n_ctx_train, 4096);
}
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Length: return "length";
    case StopReason::EndOfGeneration: return "eog";
    case StopReason::ContextFull: return "context full";
    case StopReason::Stopped: return "stopped";
  }
  return "?";
}

Session::Session(const Model& model, const SessionOptions& opt)
    : model_(model),
      opt_(opt),
      own_pool_(opt.pool ? nullptr
                         : std::make_unique<ThreadPool>(opt.n_threads > 0 ? opt.n_threads : ThreadPool::default_threads())),
      pool_(opt.pool ? *opt.pool : *own_pool_),
      fwd_(model, pick_ctx(model, opt.n_ctx), pool_,
           std::clamp<int64_t>(opt.n_batch, 1, pick_ctx(model, opt.n_ctx)), opt.cache_type_k,
           opt.cache_type_v),
      logits_(static_cast<size_t>(model.config().n_vocab)) {}

void Session::feed(const std::vector<int32_t>& tokens) {
  if (tokens.empty()) return;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n_past_ + n > n_ctx())
    throw Error("context full: " + std::to_string(n_past_) + " tokens in context + " + std::to_string(n) +
                " new tokens exceed the context size of " + std::to_string(n_ctx()) + " (use -c to enlarge it)");
  fwd_.eval(tokens.data(), n, n_past_, false, logits_.data());
  n_past_ += n;
  history_.insert(history_.end(), tokens.begin(), tokens.end());
}

void Session::shift_context() {
  const bool bos = model_.vocab().add_bos() && !history_.empty() && history_[0] == model_.vocab().bos();
  const int64_t keep = std::min<int64_t>(std::max<int64_t>(opt_.n_keep, bos ? 1 : 0), n_past_ - 1);
  const int64_t n_discard = (n_past_ - keep) / 2;
  if (keep < 0 || n_discard <= 0)
    throw Error("context full and nothing can be dropped (n_keep " + std::to_string(opt_.n_keep) + ", context " +
                std::to_string(n_ctx()) + " tokens)");
  std::vector<int32_t> kept(history_.begin(), history_.begin() + keep);
  kept.insert(kept.end(), history_.begin() + keep + n_discard, history_.end());
  reset();
  feed(kept);
  ++n_shifts_;
}

void Session::check_row(const float* row) const {
  // One pass over a row of n_vocab floats per sampled token: nothing next to the forward pass that made it.
  for (size_t i = 0; i < logits_.size(); ++i)
    if (!std::isfinite(row[i]))
      throw Error(model_.gguf().name() + ": non-finite logits (" + (std::isnan(row[i]) ? "nan" : "inf") +
                  " for token " + std::to_string(i) + ") at position " + std::to_string(n_past_ - 1) +
                  ": the model's output is not finite (NaN or Inf in its weights?)");
}

void Session::rewind(int64_t n) {
  if (n < 0 || n > n_past_)
    throw Error("rewind to " + std::to_string(n) + " tokens: the cache holds " + std::to_string(n_past_));
  n_past_ = n;
  history_.resize(static_cast<size_t>(n));
}

int64_t Session::common_prefix(const std::vector<int32_t>& prompt) const {
  size_t i = 0;
  while (i < prompt.size() && i < history_.size() && prompt[i] == history_[i]) ++i;
  return static_cast<int64_t>(i);
}

std::shared_ptr<const TokenIndex> Session::token_index() {
  if (!token_index_) token_index_ = make_token_index(model_.vocab());
  return token_index_;
}

std::vector<int32_t> Session::prepare_prompt(const std::string& prompt, bool parse_special) const {
  std::vector<int32_t> toks = model_.vocab().tokenize(prompt, true, parse_special);
  if (toks.empty()) throw Error("the prompt is empty and the model adds no BOS token; nothing to condition on");
  const int64_t n = static_cast<int64_t>(toks.size());
  if (n_past_ + n > n_ctx())
    throw Error("prompt of " + std::to_string(n) + " tokens does not fit in the context of " + std::to_string(n_ctx()) +
                " tokens (" + std::to_string(n_past_) + " already used); use -c to enlarge it");
  return toks;
}

GenerationResult Session::generate(const std::string& prompt, int n_predict, const SamplingParams& sp,
                                   const std::function<bool(const std::string&)>& on_text) {
  return generate(prepare_prompt(prompt), n_predict, sp, on_text);
}

GenerationResult Session::generate(const std::vector<int32_t>& toks, int n_predict, const SamplingParams& sp,
                                   const std::function<bool(const std::string&)>& on_text) {
  const Vocab& vocab = model_.vocab();
  GenerationResult res;
  res.n_prompt = static_cast<int64_t>(toks.size());

  Sampler sampler(sp, sp.grammar ? token_index() : nullptr);
  for (int32_t t : history_) sampler.accept(t);  // the earlier context counts for the penalties too
  for (int32_t t : toks) sampler.accept(t);
  StreamDecoder dec(vocab);

  auto t0 = Clock::now();
  feed(toks);
  res.prompt_seconds = since(t0);
  auto t1 = Clock::now();
  const SpecStats spec0 = spec_ ? spec_->stats() : SpecStats{};

  // Takes a token the sampler decided; false when generation ends with it.
  auto take = [&](int32_t tok) {
    sampler.accept_generated(tok);
    if (vocab.is_eog(tok)) {
      res.stop = StopReason::EndOfGeneration;
      return false;
    }
    res.tokens.push_back(tok);
    if (res.tokens.size() == 1) t1 = Clock::now();  // generation speed excludes the first token (prompt logits)
    const std::string text = dec.push(tok);
    if (!text.empty() && on_text && !on_text(text)) {
      res.stop = StopReason::Stopped;
      return false;
    }
    return n_predict < 0 || static_cast<int64_t>(res.tokens.size()) < n_predict;
  };

  const int nv = static_cast<int>(logits_.size());
  bool go = n_predict != 0;
  int32_t pending = -1;  // the last token taken, not yet in the cache
  if (go) {
    check_logits();
    pending = sampler.sample(logits_.data(), nv);
    go = take(pending);
  }
  Draft draft;
  while (go) {
    if (n_past_ >= n_ctx()) {
      if (opt_.overflow != SessionOptions::Overflow::Shift) {
        res.stop = StopReason::ContextFull;
        break;
      }
      shift_context();
    }
    // Draft (speculative decoding): at most what fits in the context and what is still wanted after this pass.
    draft.clear();
    if (spec_) {
      int64_t room = n_ctx() - n_past_ - 1;
      if (n_predict >= 0) room = std::min<int64_t>(room, n_predict - static_cast<int64_t>(res.tokens.size()) - 1);
      if (room > 0) {
        history_.push_back(pending);
        spec_->draft(history_, 0, room, sp, draft);
        history_.pop_back();
      }
    }
    const int64_t k = static_cast<int64_t>(draft.tokens.size());
    const int64_t base = n_past_;
    const auto tp = Clock::now();
    const float* rows = logits_.data();
    if (k == 0) {
      feed({pending});
    } else {
      std::vector<int32_t> batch(1, pending);
      batch.insert(batch.end(), draft.tokens.begin(), draft.tokens.end());
      rows_.resize(static_cast<size_t>(k + 1) * static_cast<size_t>(nv));
      fwd_.eval(batch.data(), k + 1, n_past_, true, rows_.data());
      n_past_ += k + 1;
      history_.insert(history_.end(), batch.begin(), batch.end());
      rows = rows_.data();
    }
    const double secs = since(tp);
    // Decide the drafted tokens in order, then (all accepted) one more from the last row.
    int64_t accepted = 0;
    for (int64_t j = 0; j <= k; ++j) {
      const float* row = rows + j * nv;
      check_row(row);
      int32_t y;
      bool ok = false;
      if (j < k)
        y = sampler.verify(row, nv, draft.tokens[static_cast<size_t>(j)],
                           draft.q.empty() ? nullptr : &draft.q[static_cast<size_t>(j)], &ok,
                           spec_->options().rule);
      else
        y = sampler.sample(row, nv);
      if (ok) ++accepted;
      go = take(y);
      if (!go || !ok || j == k) {
        if (j < k) {  // rows past j were computed for tokens that are not part of the text: roll them back
          rewind(base + j + 1);
          if (row != logits_.data()) std::copy(row, row + nv, logits_.begin());
        } else if (k > 0) {
          std::copy(row, row + nv, logits_.begin());
        }
        pending = y;
        break;
      }
    }
    if (spec_) spec_->record(k, accepted, k + 1, secs);
  }
  if (spec_) res.spec = spec_->stats().since(spec0);
  res.gen_seconds = since(t1);
  const std::string rest = dec.flush();
  if (!rest.empty() && on_text) on_text(rest);
  return res;
}

}  // namespace lokal
