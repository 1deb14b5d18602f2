#include "runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"

namespace lokal {

namespace {
using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
int64_t pick_ctx(const Model& m, int64_t want) { return want > 0 ? want : std::min<int64_t>(m.config().n_ctx_train, 4096); }
}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::EndOfGeneration: return "eog";
    case FinishReason::StopString: return "stop";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::ContextFull: return "context_full";
    case FinishReason::Error: return "error";
  }
  return "?";
}

struct Scheduler::Seq {
  uint64_t id = 0;
  GenRequest req;
  std::string invalid;                 // why the request can never run (found at submit)
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<StreamDecoder> dec;
  KVPool::SeqId kv = -1;               // -1: holds no pages (queued)
  std::vector<int32_t> todo;           // tokens still to evaluate: the rest of the prompt, or the last sampled token
  size_t todo_pos = 0;                 // todo[0, todo_pos) are in the cache
  int64_t n_batched = 0;               // entries in the batch being built
  bool admitted_once = false;
  bool done = false;
  std::string text;                    // generated text so far (cut at a stop string)
  size_t emitted = 0;                  // text[0, emitted) went to on_text
  size_t max_stop = 0;                 // longest stop string
  Clock::time_point t_submit, t_admit, t_first;
  bool has_first = false;
  std::vector<double> emb_sum;         // embeddings: the sum of the pooled hidden states so far
  int64_t emb_n = 0;
  std::unique_ptr<SpecSeq> spec;       // speculative decoding: this sequence's drafters
  Draft draft;                         // drafted tokens in the batch being built (todo = [last token] + draft)
  // A verification pass being decided: recorded when it is decided, or by finish() when a token of it ends the
  // request (so the statistics count every pass).
  bool pass_open = false;
  int64_t pass_drafted = 0, pass_accepted = 0;
  double pass_seconds = 0;
  std::vector<int32_t> ctx;            // scratch: the context handed to the drafters
  GenResult res;
};

Scheduler::Scheduler(const Model& model, ThreadPool& pool, const SchedulerOptions& opt)
    : model_(model),
      pool_(pool),
      opt_([&] {
        SchedulerOptions o = opt;
        if (o.n_parallel < 1) throw Error("the number of parallel sequences must be at least 1, got " + std::to_string(o.n_parallel));
        if (o.n_batch < 1) throw Error("the batch size must be at least 1, got " + std::to_string(o.n_batch));
        o.n_ctx = pick_ctx(model, o.n_ctx);
        if (o.kv_tokens <= 0) o.kv_tokens = o.n_ctx * o.n_parallel;
        o.n_ctx = std::min(o.n_ctx, KVCache::pages_for(o.kv_tokens) * kKVPage);
        return o;
      }()),
      kv_(model.config(), opt_.kv_tokens, opt_.cache_type_k, opt_.cache_type_v, model.device()),
      fwd_(model, pool, std::max<int64_t>(opt_.n_batch, opt_.n_parallel), opt_.n_ctx),
      logits_(static_cast<size_t>(model.config().n_vocab) * static_cast<size_t>(opt_.n_parallel)) {}

Scheduler::~Scheduler() { stop(); }

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(stats_mu_);
  return stats_;
}

uint64_t Scheduler::submit(GenRequest req) {
  auto s = std::make_unique<Seq>();
  s->t_submit = Clock::now();
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  try {
    req.sampling.validate();
    if (n == 0) throw Error("the prompt is empty: nothing to condition on");
    for (int32_t t : req.prompt)
      if (t < 0 || t >= model_.config().n_vocab)
        throw Error("prompt token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                    std::to_string(model_.config().n_vocab - 1) + ")");
    if (n > opt_.n_ctx)
      throw Error("the prompt of " + std::to_string(n) + " tokens is longer than the sequence limit of " +
                  std::to_string(opt_.n_ctx) + " tokens");
    if (n > kv_.capacity_tokens())
      throw Error("the prompt of " + std::to_string(n) + " tokens is longer than the KV pool can ever hold (" +
                  std::to_string(kv_.capacity_tokens()) + " tokens)");
    for (const std::string& st : req.stop)
      if (st.empty()) throw Error("a stop string is empty");
  } catch (const Error& e) {
    s->invalid = e.what();
  }
  for (const std::string& st : req.stop) s->max_stop = std::max(s->max_stop, st.size());
  s->req = std::move(req);
  std::lock_guard<std::mutex> lk(mu_);
  s->id = next_id_++;
  s->res.id = s->id;
  const uint64_t id = s->id;
  submitted_.push_back(std::move(s));
  cv_.notify_all();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  cancels_.insert(id);
  cv_.notify_all();
}

void Scheduler::finish(Seq& s, FinishReason why, const std::string& error) {
  if (s.done) return;
  s.done = true;
  const auto now = Clock::now();
  if (why != FinishReason::StopString && why != FinishReason::Error && s.dec) {
    s.text += s.dec->flush();
    emit(s, true);
  }
  if (s.kv >= 0) {
    kv_.release(s.kv);
    s.kv = -1;
    // Published now, not only at the end of the step: whoever hears on_done below (a server that then reports the
    // KV pages in use) must not see this sequence's pages as still held.
    std::lock_guard<std::mutex> lk(stats_mu_);
    stats_.kv_pages_used = kv_.n_pages() - kv_.available_pages();
  }
  s.res.text = s.text;
  s.res.finish = why;
  if (s.spec && s.pass_open) {
    s.pass_open = false;
    s.spec->spec->record(s.pass_drafted, s.pass_accepted, 0, s.pass_seconds);
  }
  if (s.spec) {
    s.res.spec = s.spec->spec->stats();
    {
      std::lock_guard<std::mutex> lk(stats_mu_);
      stats_.spec.add(s.res.spec);
    }
    if (spare_spec_.size() < static_cast<size_t>(opt_.n_parallel)) spare_spec_.push_back(std::move(s.spec));
    s.spec.reset();
  }
  s.res.error = error;
  s.res.n_prompt = static_cast<int64_t>(s.req.prompt.size());
  if (!s.admitted_once) s.res.queue_seconds = secs(s.t_submit, now);
  if (s.admitted_once && !s.has_first) s.res.prompt_seconds = secs(s.t_admit, now);
  if (s.has_first) s.res.gen_seconds = secs(s.t_first, now);
  if (s.req.on_done) s.req.on_done(s.res);
}

void Scheduler::take_submissions() {
  std::deque<std::unique_ptr<Seq>> in;
  std::unordered_set<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lk(mu_);
    in.swap(submitted_);
    cancels.swap(cancels_);
  }
  for (auto& s : in) {
    if (!s->invalid.empty()) {
      finish(*s, FinishReason::Error, s->invalid);
      continue;
    }
    if (s->req.sampling.grammar && !token_index_) token_index_ = make_token_index(model_.vocab());
    try {
      s->sampler = std::make_unique<Sampler>(s->req.sampling, s->req.sampling.grammar ? token_index_ : nullptr);
    } catch (const Error& e) {
      finish(*s, FinishReason::Error, e.what());
      continue;
    }
    for (int32_t t : s->req.prompt) s->sampler->accept(t);
    s->dec = std::make_unique<StreamDecoder>(model_.vocab());
    waiting_.push_back(std::move(s));
  }
  if (cancels.empty()) return;
  for (auto& s : waiting_)
    if (cancels.count(s->id)) finish(*s, FinishReason::Cancelled);
  for (auto& s : running_)
    if (cancels.count(s->id)) finish(*s, FinishReason::Cancelled);
  // A cancel that arrives before its request is taken is kept for the next step.
  std::lock_guard<std::mutex> lk(mu_);
  for (uint64_t id : cancels) {
    bool seen = false;
    for (auto& s : waiting_) seen |= s->id == id;
    for (auto& s : running_) seen |= s->id == id;
    for (auto& s : submitted_) {
      if (s->id == id) {
        seen = true;
        cancels_.insert(id);
      }
    }
    (void)seen;
  }
}

void Scheduler::admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < opt_.n_parallel) {
    std::unique_ptr<Seq> s = std::move(waiting_.front());
    waiting_.pop_front();
    if (s->done) continue;
    // The tokens of the sequence so far: the prompt, then what it generated before a preemption.
    std::vector<int32_t> full = s->req.prompt;
    full.insert(full.end(), s->res.tokens.begin(), s->res.tokens.end());
    s->kv = kv_.create();
    const int64_t reused = s->req.pooling == Pooling::Mean ? 0 : kv_.attach_prefix(s->kv, full);
    s->emb_sum.assign(s->req.pooling != Pooling::None ? static_cast<size_t>(model_.config().n_embd) : 0, 0.0);
    s->emb_n = 0;
    s->todo.assign(full.begin() + reused, full.end());
    s->todo_pos = 0;
    s->draft.clear();
    if (!s->admitted_once) {
      s->admitted_once = true;
      s->t_admit = Clock::now();
      s->res.queue_seconds = secs(s->t_submit, s->t_admit);
      s->res.n_reused = reused;
      std::lock_guard<std::mutex> lk(stats_mu_);
      stats_.prompt_tokens_reused += reused;
    }
    running_.push_back(std::move(s));
  }
}

bool Scheduler::preempt_one(const Seq* keep) {
  // The most recently admitted sequence that has nothing in the batch being built.
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Seq& v = **it;
    if (&v == keep || v.done || v.n_batched > 0 || v.kv < 0) continue;
    kv_.release(v.kv);  // its full pages stay in the prefix cache: recomputing may find them
    v.kv = -1;
    ++v.res.n_preempted;
    {
      std::lock_guard<std::mutex> lk(stats_mu_);
      ++stats_.preemptions;
    }
    std::unique_ptr<Seq> moved = std::move(*it);
    running_.erase(std::next(it).base());
    waiting_.push_front(std::move(moved));
    return true;
  }
  return false;
}

void Scheduler::emit(Seq& s, bool final) {
  size_t safe = s.text.size();
  if (!final && s.max_stop > 1) {
    // Hold back what could be the start of a stop string, on a UTF-8 character boundary.
    safe = s.text.size() >= s.max_stop - 1 ? s.text.size() - (s.max_stop - 1) : 0;
    while (safe > s.emitted && (static_cast<unsigned char>(s.text[safe]) & 0xC0) == 0x80) --safe;
  }
  if (safe <= s.emitted) return;
  const std::string piece = s.text.substr(s.emitted, safe - s.emitted);
  s.emitted = safe;
  if (s.req.on_text && !s.req.on_text(piece) && !s.done) finish(s, FinishReason::Cancelled);
}

void Scheduler::accept_token(Seq& s, int32_t tok, int64_t kv_len) {
  if (kv_len < 0) kv_len = kv_.length(s.kv);
  s.sampler->accept_generated(tok);
  if (!s.has_first) {
    s.has_first = true;
    s.t_first = Clock::now();
    s.res.prompt_seconds = secs(s.t_admit, s.t_first);
  }
  if (model_.vocab().is_eog(tok) && !s.req.ignore_eos) return finish(s, FinishReason::EndOfGeneration);
  s.res.tokens.push_back(tok);
  const size_t before = s.text.size();
  s.text += s.dec->push(tok);
  if (!s.req.stop.empty() && s.text.size() > before) {
    size_t cut = std::string::npos;
    for (const std::string& st : s.req.stop) {
      const size_t from = before >= st.size() - 1 ? before - (st.size() - 1) : 0;
      const size_t at = s.text.find(st, from);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      s.text.resize(std::max(cut, s.emitted));
      emit(s, true);
      return finish(s, FinishReason::StopString);
    }
  }
  emit(s, false);
  if (s.done) return;
  if (s.req.max_tokens >= 0 && static_cast<int64_t>(s.res.tokens.size()) >= s.req.max_tokens)
    return finish(s, FinishReason::Length);
  if (kv_len + 1 > opt_.n_ctx) return finish(s, FinishReason::ContextFull);
  s.todo.assign(1, tok);
  s.todo_pos = 0;
}

void Scheduler::draft_for(Seq& s, int64_t len, int64_t used, int64_t budget) {
  if (!s.draft.tokens.empty()) {  // a draft of a step in which the sequence found no room: forget it
    s.todo.resize(s.todo.size() - s.draft.tokens.size());
    s.draft.clear();
  }
  if (!opt_.spec || s.req.draft_max == 0 || s.req.pooling != Pooling::None || s.todo.size() != 1 || s.todo_pos != 0)
    return;
  if (!s.spec) {
    SpecOptions o = opt_.spec->config().spec;
    if (s.req.draft_max > 0) {
      o.draft_max = s.req.draft_max;
      o.draft_min = std::min(o.draft_min, o.draft_max);
    }
    try {
      if (!spare_spec_.empty()) {
        s.spec = std::move(spare_spec_.back());
        spare_spec_.pop_back();
        s.spec->spec->restart(o);
      } else {
        s.spec = opt_.spec->make(pool_, opt_.n_ctx, &pass_cost_, &o);
      }
    } catch (const Error&) {
      s.spec.reset();
    }
    if (!s.spec) {
      s.req.draft_max = 0;  // nothing to draft with (a setup with nothing enabled, no memory for a draft cache)
      return;
    }
  }
  // Every generating sequence still to be packed gets its one token first: drafts use what is left of the batch.
  int64_t later = 0;
  for (const auto& o : running_)
    if (o.get() != &s && !o->done && o->kv >= 0 && o->has_first && o->n_batched == 0) ++later;
  int64_t room = std::min<int64_t>(opt_.n_ctx - len - 1, budget - used - 1 - later);
  if (s.req.max_tokens >= 0) room = std::min<int64_t>(room, s.req.max_tokens - static_cast<int64_t>(s.res.tokens.size()) - 1);
  if (room <= 0) return;
  const std::vector<int32_t>& have = kv_.tokens(s.kv);
  s.ctx.assign(have.begin(), have.end());
  s.ctx.push_back(s.todo[0]);
  s.spec->spec->draft(s.ctx, used, room, s.req.sampling, s.draft);
  if (s.draft.tokens.empty()) return;
  // Drafted positions need pages too; without free ones (no preemption for a guess) the pass is plain.
  const int64_t k = static_cast<int64_t>(s.draft.tokens.size());
  if (kv_.pages_needed(s.kv, len + 1 + k) > kv_.available_pages()) {
    s.draft.clear();
    return;
  }
  s.todo.insert(s.todo.end(), s.draft.tokens.begin(), s.draft.tokens.end());
}

void Scheduler::verify_drafts(Seq& s, int64_t n, int64_t row0, double pass_seconds) {
  // The pass evaluated [last token, d1 .. dk] (all committed); row j holds the logits after entry j.
  const int64_t n_vocab = model_.config().n_vocab;
  const int64_t k = n - 1;
  const int64_t len0 = kv_.length(s.kv) - n;  // where the last token went
  int64_t accepted = 0;
  s.pass_open = true;
  s.pass_drafted = k;
  s.pass_accepted = 0;
  s.pass_seconds = pass_seconds;
  for (int64_t j = 0; j <= k && !s.done; ++j) {
    const float* lg = logits_.data() + (row0 + j) * n_vocab;
    bool finite = true;
    for (int64_t i = 0; i < n_vocab && finite; ++i) finite = std::isfinite(lg[i]);
    if (!finite) {
      finish(s, FinishReason::Error,
             model_.gguf().name() + ": non-finite logits at position " + std::to_string(len0 + j) +
                 " (NaN or Inf in the model's weights?)");
      break;
    }
    bool ok = false;
    int32_t tok;
    try {
      if (j < k)
        tok = s.sampler->verify(lg, static_cast<int>(n_vocab), s.draft.tokens[static_cast<size_t>(j)],
                                s.draft.q.empty() ? nullptr : &s.draft.q[static_cast<size_t>(j)], &ok,
                                s.spec->spec->options().rule);
      else
        tok = s.sampler->sample(lg, static_cast<int>(n_vocab));
      if (s.req.on_token) s.req.on_token(tok, lg, n_vocab);
      if (ok) s.pass_accepted = ++accepted;
      // Positions after this one hold drafted tokens that are not (or no longer) part of the text.
      if (!ok && j < k) kv_.truncate(s.kv, len0 + j + 1);
      accept_token(s, tok, len0 + j + 1);  // the cache as plain decoding would hold it (before this token)
    } catch (const Error& e) {
      finish(s, FinishReason::Error, e.what());
      break;
    }
    if (!ok) break;
  }
  if (s.done && s.kv >= 0) kv_.truncate(s.kv, std::min(kv_.length(s.kv), len0 + accepted + 1));
  if (s.spec && s.pass_open) s.spec->spec->record(k, accepted, 0, pass_seconds);
  s.pass_open = false;
  s.draft.clear();
}

bool Scheduler::step() {
  // Whatever way the step ends (also when a cancellation released the last sequence and there was nothing to
  // evaluate), the published counts are those after it.
  struct Publish {
    Scheduler* s;
    ~Publish() { s->publish_stats(); }
  } publish{this};
  return step_inner();
}

bool Scheduler::step_inner() {
  take_submissions();
  admit();
  // Drop what ended (cancelled before running).
  std::erase_if(running_, [](const std::unique_ptr<Seq>& s) { return s->done; });
  std::erase_if(waiting_, [](const std::unique_ptr<Seq>& s) { return s->done; });
  if (running_.empty()) return !waiting_.empty();

  // Build the batch: generating sequences first (one token each), then prompt chunks, in admission order.
  const int64_t budget = std::max<int64_t>(opt_.n_batch, static_cast<int64_t>(running_.size()));
  int64_t used = 0;
  std::vector<Seq*> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size(); ++i) {
      Seq* s = running_[i].get();
      if (s->done || s->kv < 0 || s->n_batched > 0 || (pass == 0) != s->has_first) continue;
      const int64_t len = kv_.length(s->kv);
      if (pass == 0) draft_for(*s, len, used, budget);
      const int64_t remaining = static_cast<int64_t>(s->todo.size() - s->todo_pos);
      int64_t n = std::min(remaining, budget - used);
      if (n <= 0) continue;
      if (!kv_.reserve(s->kv, len + n)) {
        // A prompt chunk first shrinks to what fits.
        if (pass == 1) {
          while (n > 0 && kv_.pages_needed(s->kv, len + n) > kv_.available_pages()) n = std::max<int64_t>(0, ((len + n - 1) / kKVPage) * kKVPage - len);
        }
        bool ok = n > 0 && kv_.reserve(s->kv, len + n);
        while (!ok && preempt_one(s)) ok = kv_.reserve(s->kv, len + n);
        if (!ok) {
          if (running_.size() == 1)
            finish(*s, FinishReason::ContextFull);  // alone and still no room: the sequence fills the whole pool
          continue;
        }
        // preempt_one may have moved running_ entries: restart the scan of this pass at the same sequence.
        i = static_cast<size_t>(std::find_if(running_.begin(), running_.end(),
                                             [&](const std::unique_ptr<Seq>& p) { return p.get() == s; }) -
                                running_.begin());
      }
      s->n_batched = n;
      used += n;
      order.push_back(s);
    }
  }
  if (order.empty()) {
    std::erase_if(running_, [](const std::unique_ptr<Seq>& s) { return s->done; });
    return !running_.empty() || !waiting_.empty();
  }

  std::vector<BatchEntry> entries;
  entries.reserve(static_cast<size_t>(used));
  std::vector<SeqPages> tables;
  int64_t n_out = 0, n_hidden = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    Seq* s = order[k];
    tables.push_back(kv_.page_table(s->kv));
    const int64_t len = kv_.length(s->kv);
    const Pooling pool = s->req.pooling;
    for (int64_t j = 0; j < s->n_batched; ++j) {
      const size_t ti = s->todo_pos + static_cast<size_t>(j);
      const bool last = ti + 1 == s->todo.size();
      BatchEntry be{s->todo[ti], static_cast<int32_t>(k), len + j,
                    (last || !s->draft.tokens.empty()) && pool == Pooling::None};
      be.hidden = pool == Pooling::Mean || (pool == Pooling::Last && last);
      entries.push_back(be);
      n_out += be.logits;
      n_hidden += be.hidden;
    }
  }
  if (static_cast<size_t>(n_out) * static_cast<size_t>(model_.config().n_vocab) > logits_.size())
    logits_.resize(static_cast<size_t>(n_out) * static_cast<size_t>(model_.config().n_vocab));
  if (static_cast<size_t>(n_hidden) * static_cast<size_t>(model_.config().n_embd) > hidden_.size())
    hidden_.resize(static_cast<size_t>(n_hidden) * static_cast<size_t>(model_.config().n_embd));
  const auto t_pass = Clock::now();
  try {
    fwd_.eval_batch(entries.data(), static_cast<int64_t>(entries.size()), tables.data(),
                    static_cast<int64_t>(tables.size()), kv_.cache(), logits_.data(),
                    n_hidden > 0 ? hidden_.data() : nullptr);
  } catch (const Error& e) {
    for (Seq* s : order) {
      s->n_batched = 0;
      finish(*s, FinishReason::Error, e.what());
    }
    std::erase_if(running_, [](const std::unique_ptr<Seq>& s) { return s->done; });
    return true;
  }
  const double pass_seconds = secs(t_pass, Clock::now());
  if (opt_.spec) pass_cost_.observe(static_cast<int64_t>(entries.size()), pass_seconds);
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    ++stats_.steps;
    stats_.tokens_evaluated += static_cast<int64_t>(entries.size());
  }

  const int64_t n_vocab = model_.config().n_vocab;
  const int64_t n_embd = model_.config().n_embd;
  int64_t row = 0, hrow = 0;
  for (Seq* s : order) {
    const int64_t n = s->n_batched;
    s->n_batched = 0;
    kv_.commit(s->kv, s->todo.data() + s->todo_pos, n);
    s->todo_pos += static_cast<size_t>(n);
    if (s->req.pooling != Pooling::None) {
      // Embeddings: add this chunk's hidden states; the whole prompt evaluated ends the request.
      const bool complete = s->todo_pos >= s->todo.size();
      const int64_t rows = s->req.pooling == Pooling::Mean ? n : complete ? 1 : 0;
      for (int64_t r = 0; r < rows; ++r, ++hrow) {
        const float* h = hidden_.data() + hrow * n_embd;
        for (int64_t i = 0; i < n_embd; ++i) s->emb_sum[static_cast<size_t>(i)] += h[i];
        ++s->emb_n;
      }
      if (complete && !s->done) {
        double norm = 0;
        for (double v : s->emb_sum) norm += v * v;
        norm = std::sqrt(norm);
        s->res.embedding.resize(s->emb_sum.size());
        for (size_t i = 0; i < s->emb_sum.size(); ++i)
          s->res.embedding[i] = static_cast<float>(norm > 0 ? s->emb_sum[i] / norm : 0.0);
        s->has_first = true;
        s->t_first = Clock::now();
        s->res.prompt_seconds = secs(s->t_admit, s->t_first);
        finish(*s, FinishReason::EndOfGeneration);
      }
      continue;
    }
    if (s->todo_pos < s->todo.size()) continue;
    if (!s->draft.tokens.empty()) {
      verify_drafts(*s, n, row, pass_seconds);
      row += n;
      continue;
    }
    const float* lg = logits_.data() + row * n_vocab;
    ++row;
    if (s->spec && s->has_first) s->spec->spec->record(0, 0, 0, pass_seconds);
    if (s->done) continue;  // cancelled from a callback meanwhile
    bool finite = true;
    for (int64_t i = 0; i < n_vocab && finite; ++i) finite = std::isfinite(lg[i]);
    if (!finite) {
      finish(*s, FinishReason::Error,
             model_.gguf().name() + ": non-finite logits at position " + std::to_string(kv_.length(s->kv) - 1) +
                 " (NaN or Inf in the model's weights?)");
      continue;
    }
    try {
      const int32_t tok = s->sampler->sample(lg, static_cast<int>(n_vocab));
      if (s->req.on_token) s->req.on_token(tok, lg, n_vocab);
      accept_token(*s, tok);
    } catch (const Error& e) {
      finish(*s, FinishReason::Error, e.what());
    }
  }
  std::erase_if(running_, [](const std::unique_ptr<Seq>& s) { return s->done; });
  return true;
}

void Scheduler::publish_stats() {
  std::lock_guard<std::mutex> lk(stats_mu_);
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size());
  stats_.kv_pages_total = kv_.n_pages();
  stats_.kv_pages_used = kv_.n_pages() - kv_.available_pages();
}

void Scheduler::run_until_idle() {
  for (;;) {
    if (step()) continue;
    std::lock_guard<std::mutex> lk(mu_);
    if (submitted_.empty() && cancels_.empty()) return;
  }
}

double Scheduler::seconds_since_heartbeat() const {
  const int64_t hb = heartbeat_.load(std::memory_order_relaxed);
  if (hb == 0) return 0;
  return std::chrono::duration<double>(Clock::now().time_since_epoch() - Clock::duration(hb)).count();
}

void Scheduler::start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] {
    for (;;) {
      heartbeat_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      bool busy = false;
      try {
        busy = step();
      } catch (const std::exception& e) {
        // A scheduling bug must not kill the process silently: end everything with the error.
        for (auto& s : running_) finish(*s, FinishReason::Error, e.what());
        for (auto& s : waiting_) finish(*s, FinishReason::Error, e.what());
        running_.clear();
        waiting_.clear();
      }
      std::unique_lock<std::mutex> lk(mu_);
      if (stop_) break;
      // Idle: wake at least once a second so the heartbeat shows the loop is alive (a service watchdog reads it).
      if (!busy) cv_.wait_for(lk, std::chrono::seconds(1), [&] { return stop_ || !submitted_.empty() || !cancels_.empty(); });
      if (stop_) break;
    }
  });
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  // Whatever is left ends as cancelled, so every caller waiting on on_done hears back.
  std::deque<std::unique_ptr<Seq>> in;
  {
    std::lock_guard<std::mutex> lk(mu_);
    in.swap(submitted_);
  }
  for (auto& s : in) finish(*s, s->invalid.empty() ? FinishReason::Cancelled : FinishReason::Error, s->invalid);
  for (auto& s : running_) finish(*s, FinishReason::Cancelled);
  for (auto& s : waiting_) finish(*s, FinishReason::Cancelled);
  running_.clear();
  waiting_.clear();
}

}  // namespace lokal
