#include "runtime/speculative.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <limits>
#include <unordered_map>

#include "core/error.h"
#include "model/offload.h"
#include "tokenizer/vocab.h"

namespace lokal {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Token kinds that must agree for two tokens to be "the same token".
int token_kind(const Vocab& v, int32_t id) { return (v.is_control(id) ? 1 : 0) | (v.is_user_defined(id) ? 2 : 0); }

uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

// ---------------------------------------------------------------------------------------------- n-gram lookup

NgramDrafter::NgramDrafter(int n_min, int n_max) : n_min_(n_min), n_max_(n_max) {
  if (n_min < 1 || n_max < n_min || n_max > 64)
    throw Error("n-gram drafting: the n-gram sizes must satisfy 1 <= min <= max <= 64 (got " + std::to_string(n_min) +
                " and " + std::to_string(n_max) + ")");
}

std::string NgramDrafter::describe() const {
  return "n-gram lookup in the context (n = " + std::to_string(n_max_) + " down to " + std::to_string(n_min_) + ")";
}

void NgramDrafter::propose(const std::vector<int32_t>& ctx, int n_max, const SamplingParams&, Draft& out) {
  out.clear();
  const int64_t len = static_cast<int64_t>(ctx.size());
  if (n_max <= 0) return;
  for (int n = std::min<int64_t>(n_max_, len - 1); n >= n_min_; --n) {
    const int32_t* key = ctx.data() + len - n;
    // The most recent earlier occurrence of the last n tokens (it must be followed by at least one token).
    for (int64_t j = len - n - 1; j >= 0; --j) {
      if (ctx[static_cast<size_t>(j)] != key[0] || !std::equal(key, key + n, ctx.data() + j)) continue;
      for (int64_t i = j + n; i < len && static_cast<int>(out.tokens.size()) < n_max; ++i)
        out.tokens.push_back(ctx[static_cast<size_t>(i)]);
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------- vocabularies

const char* vocab_bridge_name(VocabBridge b) {
  switch (b) {
    case VocabBridge::Same: return "same vocabulary";
    case VocabBridge::Intersect: return "vocabulary intersection";
    case VocabBridge::Text: return "text translation";
  }
  return "?";
}

VocabMatch match_vocabularies(const Vocab& t, const Vocab& d, std::vector<int32_t>* d2t) {
  VocabMatch m;
  std::unordered_map<std::string, int32_t> by_text;
  by_text.reserve(static_cast<size_t>(t.n_tokens()));
  for (int32_t i = 0; i < t.n_tokens(); ++i) by_text.emplace(t.token_text(i), i);
  if (d2t) d2t->assign(static_cast<size_t>(d.n_tokens()), -1);
  for (int32_t i = 0; i < d.n_tokens(); ++i) {
    auto it = by_text.find(d.token_text(i));
    if (it == by_text.end() || token_kind(t, it->second) != token_kind(d, i)) continue;
    ++m.shared;
    if (d2t) (*d2t)[static_cast<size_t>(i)] = it->second;
  }
  m.overlap = static_cast<double>(m.shared) / std::max<int32_t>(1, std::max(t.n_tokens(), d.n_tokens()));
  auto differ = [&](std::string why) {
    if (m.difference.empty()) m.difference = std::move(why);
  };
  if (t.type() != d.type()) differ("tokenizer " + t.model_name() + " vs " + d.model_name());
  if (t.n_tokens() != d.n_tokens())
    differ(std::to_string(t.n_tokens()) + " vs " + std::to_string(d.n_tokens()) + " tokens");
  if (m.difference.empty()) {
    for (int32_t i = 0; i < t.n_tokens(); ++i) {
      if (t.token_text(i) != d.token_text(i) || token_kind(t, i) != token_kind(d, i)) {
        differ("token " + std::to_string(i) + " differs");
        break;
      }
    }
  }
  if (t.bos() != d.bos() || t.eos() != d.eos() || t.eot() != d.eot() || t.add_bos() != d.add_bos())
    differ("special tokens differ (BOS/EOS/EOT)");
  if (m.difference.empty() && t.type() == VocabType::BPE && t.pre_name() != d.pre_name())
    differ("pre-tokenizer " + t.pre_name() + " vs " + d.pre_name());
  m.same = m.difference.empty();
  return m;
}

// ---------------------------------------------------------------------------------------------- draft model

namespace {
int64_t draft_ctx(const Model& m, int64_t want) {
  return want > 0 ? want : std::min<int64_t>(m.config().n_ctx_train > 0 ? m.config().n_ctx_train : 4096, 4096);
}
}  // namespace

std::shared_ptr<const DraftVocab> make_draft_vocab(const Model& target, const Model& draft, VocabMode mode) {
  auto dv = std::make_shared<DraftVocab>();
  const Vocab& tv = target.vocab();
  const Vocab& vv = draft.vocab();
  if (vv.type() == VocabType::WPM)
    throw Error("the draft's tokenizer is WordPiece (an encoder model's), not a text generator's");
  if (tv.type() == VocabType::WPM)
    throw Error("the target's tokenizer is WordPiece (an encoder model's): nothing can be drafted for it");
  std::vector<int32_t> shared;
  dv->match = match_vocabularies(tv, vv, &shared);
  const bool same_logits = draft.config().n_vocab == target.config().n_vocab;
  if (dv->match.same && same_logits && mode == VocabMode::Auto)
    dv->bridge = VocabBridge::Same;
  else if (mode == VocabMode::Intersect || (mode == VocabMode::Auto && dv->match.overlap >= kIntersectMinOverlap))
    dv->bridge = VocabBridge::Intersect;
  else
    dv->bridge = VocabBridge::Text;
  const int32_t nd = static_cast<int32_t>(draft.config().n_vocab);
  dv->d2t.assign(static_cast<size_t>(nd), -1);
  int64_t mapped = 0;
  for (int32_t i = 0; i < vv.n_tokens() && i < nd; ++i) {
    const int32_t t = shared[static_cast<size_t>(i)];
    if (t >= 0 && t < target.config().n_vocab) {
      dv->d2t[static_cast<size_t>(i)] = t;
      ++mapped;
    }
  }
  for (int32_t i = 0; i < nd; ++i)
    if (dv->d2t[static_cast<size_t>(i)] < 0) dv->unmapped.push_back(i);
  if (dv->bridge == VocabBridge::Intersect && mapped < std::max<int64_t>(16, vv.n_tokens() / 10))
    throw Error("the draft's vocabulary shares only " + std::to_string(mapped) + " of its " +
                std::to_string(vv.n_tokens()) +
                " tokens with the target's: an intersection cannot draft (use --draft-vocab text or auto)");
  return dv;
}

ModelDrafter::ModelDrafter(const Model& target, const Model& draft, ThreadPool& pool, const DraftModelOptions& opt,
                           std::shared_ptr<const DraftVocab> vocab)
    : target_(target),
      draft_(draft),
      opt_(opt),
      dv_(vocab ? std::move(vocab) : make_draft_vocab(target, draft, opt.vocab)),
      bridge_(dv_->bridge),
      fwd_(draft, draft_ctx(draft, opt.n_ctx), pool, std::min<int64_t>(64, draft_ctx(draft, opt.n_ctx)),
           opt.cache_type_k, opt.cache_type_v),
      logits_(static_cast<size_t>(draft.config().n_vocab)) {
  if (!(opt.p_min >= 0.0f && opt.p_min <= 1.0f))
    throw Error("--draft-p-min must be in [0, 1] (got " + std::to_string(opt.p_min) + ")");
  ckpt_.emplace_back(0, 0);
}

ModelDrafter::~ModelDrafter() = default;

size_t ModelDrafter::bytes() const { return fwd_.kv_bytes() + fwd_.scratch_bytes() + logits_.size() * sizeof(float); }

uint64_t ModelDrafter::device_bytes() const { return fwd_.kv().device_bytes() + fwd_.device_scratch_bytes(); }

std::string ModelDrafter::describe() const {
  std::string s = "draft model " + draft_.gguf().name() + ", " + vocab_bridge_name(bridge_);
  if (bridge_ != VocabBridge::Same) {
    char buf[160];
    std::snprintf(buf, sizeof buf, " (vocabularies differ: %s; %lld shared tokens, overlap %.1f%%)",
                  dv_->match.difference.c_str(), static_cast<long long>(dv_->match.shared), 100.0 * dv_->match.overlap);
    s += buf;
  }
  return s;
}

void ModelDrafter::feed(const int32_t* toks, int64_t n) {
  fwd_.eval(toks, n, static_cast<int64_t>(dhist_.size()), false, logits_.data());
  dhist_.insert(dhist_.end(), toks, toks + n);
}

void ModelDrafter::translate(const std::vector<int32_t>& ctx) {
  const Vocab& tv = target_.vocab();
  const Vocab& dv = draft_.vocab();
  // Common prefix with what was translated, minus a window of 2 target tokens whose text new tokens may merge with;
  // restart from the last checkpoint at or before that.
  size_t c = 0;
  while (c < tin_.size() && c < ctx.size() && tin_[c] == ctx[c]) ++c;
  const int64_t limit = std::max<int64_t>(0, static_cast<int64_t>(c) - 2);
  while (ckpt_.size() > 1 && ckpt_.back().first > limit) ckpt_.pop_back();
  tin_.resize(static_cast<size_t>(ckpt_.back().first));
  dctx_.resize(static_cast<size_t>(ckpt_.back().second));

  // Runs of text between special tokens are tokenized by the draft's tokenizer as one fragment each.
  std::string run;
  std::vector<size_t> t_end;  // byte end of each target token of the run
  auto flush = [&] {
    if (run.empty()) return;
    const size_t t0 = tin_.size() - t_end.size();
    const size_t d0 = dctx_.size();
    std::vector<int32_t> dt = dv.tokenize_fragment(run);
    dctx_.insert(dctx_.end(), dt.begin(), dt.end());
    // Checkpoints where a draft token and a target token end on the same byte.
    size_t pos = 0, ti = 0;
    for (size_t i = 0; i < dt.size(); ++i) {
      pos += dv.token_to_piece(dt[i]).size();
      while (ti < t_end.size() && t_end[ti] < pos) ++ti;
      if (ti < t_end.size() && t_end[ti] == pos && (ti + 1 < t_end.size() || i + 1 == dt.size()))
        ckpt_.emplace_back(static_cast<int64_t>(t0 + ti + 1), static_cast<int64_t>(d0 + i + 1));
    }
    run.clear();
    t_end.clear();
  };
  for (size_t i = tin_.size(); i < ctx.size(); ++i) {
    const int32_t t = ctx[i];
    tin_.push_back(t);
    if (tv.is_control(t)) {
      flush();
      // The same special token by text, else by role; otherwise it has no counterpart and is skipped.
      int32_t d = dv.find_token(tv.token_text(t));
      if (d >= 0 && !dv.is_control(d)) d = -1;
      if (d < 0 && t == tv.bos()) d = dv.bos();
      if (d < 0 && (t == tv.eos() || t == tv.eot())) d = dv.eot() >= 0 ? dv.eot() : dv.eos();
      if (d >= 0) dctx_.push_back(d);
      ckpt_.emplace_back(static_cast<int64_t>(tin_.size()), static_cast<int64_t>(dctx_.size()));
      continue;
    }
    run += tv.token_to_piece(t);
    t_end.push_back(run.size());
  }
  flush();
}

void ModelDrafter::propose(const std::vector<int32_t>& ctx, int n_max, const SamplingParams& sp, Draft& out) {
  out.clear();
  catchup_seconds_ = 0;
  if (n_max <= 0 || ctx.empty()) return;
  const std::vector<int32_t>* dctx = &ctx;
  if (bridge_ != VocabBridge::Same) {
    translate(ctx);
    dctx = &dctx_;
  }
  const int64_t len = static_cast<int64_t>(dctx->size());
  if (len == 0 || len >= fwd_.n_ctx()) return;  // nothing to condition on, or the draft's context is full
  // Draft tokens past the context cannot be evaluated; the last one needs no evaluation.
  int n = static_cast<int>(std::min<int64_t>(n_max, fwd_.n_ctx() - len + 1));
  // Sync the draft's cache: keep the common prefix (at least one token is evaluated, for its logits).
  size_t c = 0;
  while (c < dhist_.size() && c < dctx->size() && dhist_[c] == (*dctx)[c]) ++c;
  if (c == dctx->size()) --c;
  dhist_.resize(c);
  const auto tc = Clock::now();
  feed(dctx->data() + c, len - static_cast<int64_t>(c));
  catchup_seconds_ = since(tc);

  const bool greedy = sp.temperature <= 0.0f || bridge_ == VocabBridge::Text;
  std::unique_ptr<Sampler> sampler;
  if (!greedy) {
    SamplingParams dp;  // the same filters and temperature as the target's chain (penalties and grammar left out)
    dp.temperature = sp.temperature;
    dp.top_k = sp.top_k;
    dp.top_p = sp.top_p;
    dp.min_p = sp.min_p;
    dp.repeat_last_n = 0;
    dp.seed = mix(sp.seed ^ mix(++draws_));
    sampler = std::make_unique<Sampler>(dp);
  }
  const Vocab& dv = draft_.vocab();
  std::vector<int32_t> drafted;  // draft ids
  std::vector<std::pair<int32_t, float>> q;
  const int nv = static_cast<int>(logits_.size());
  for (int i = 0; i < n; ++i) {
    if (bridge_ != VocabBridge::Same)
      for (int32_t u : dv_->unmapped) logits_[static_cast<size_t>(u)] = kNegInf;
    // Confidence, as llama.cpp measures it for --draft-p-min: the most likely token's probability among the ten most
    // likely (softmax at temperature 1 over the top 10).
    std::array<float, 10> top;
    top.fill(kNegInf);
    int32_t best = 0;
    for (int j = 0; j < nv; ++j) {
      const float l = logits_[static_cast<size_t>(j)];
      if (!(l > top[9])) continue;
      if (l > top[0]) best = j;
      size_t at = 9;
      while (at > 0 && top[at - 1] < l) {
        top[at] = top[at - 1];
        --at;
      }
      top[at] = l;
    }
    const float mx = top[0];
    if (mx == kNegInf || !std::isfinite(mx)) break;
    double z = 0;
    for (float l : top) z += std::exp(static_cast<double>(l) - mx);
    const double confidence = 1.0 / z;
    int32_t tok = best;
    if (!greedy) tok = sampler->sample_with_distribution(logits_.data(), nv, q);
    drafted.push_back(tok);
    if (bridge_ != VocabBridge::Text) {
      out.tokens.push_back(dv_->d2t[static_cast<size_t>(tok)]);
      if (!greedy) {
        for (auto& [id, pr] : q) id = dv_->d2t[static_cast<size_t>(id)];  // masked ids never survive the chain
        out.q.push_back(q);
      }
    }
    // Like llama.cpp, the token is proposed and drafting stops after it when the draft was not confident.
    if (dv.is_eog(tok) || i + 1 == n || confidence < opt_.p_min) break;
    feed(&tok, 1);
  }
  if (bridge_ == VocabBridge::Text && !drafted.empty()) {
    std::string text;
    for (int32_t d : drafted) {
      if (dv.is_control(d)) break;
      text += dv.token_to_piece(d);
    }
    std::vector<int32_t> tt = target_.vocab().tokenize_fragment(text);
    if (tt.size() > 1) tt.pop_back();  // the last token may be the start of a longer one
    if (static_cast<int>(tt.size()) > n_max) tt.resize(static_cast<size_t>(n_max));
    out.tokens = std::move(tt);
  }
  if (!out.q.empty() && out.q.size() != out.tokens.size()) out.q.clear();
}

// ---------------------------------------------------------------------------------------------- control

void PassCost::observe(int64_t n, double s) {
  if (n <= 0 || !(s > 0)) return;
  if (t_.size() <= static_cast<size_t>(n)) {
    t_.resize(static_cast<size_t>(n) + 1, 0.0);
    n_.resize(static_cast<size_t>(n) + 1, 0);
  }
  double& t = t_[static_cast<size_t>(n)];
  t = t > 0 ? 0.8 * t + 0.2 * s : s;
  ++n_[static_cast<size_t>(n)];
}

int64_t PassCost::count(int64_t n) const { return n > 0 && static_cast<size_t>(n) < n_.size() ? n_[static_cast<size_t>(n)] : 0; }

bool PassCost::measured(int64_t n) const { return n > 0 && static_cast<size_t>(n) < t_.size() && t_[static_cast<size_t>(n)] > 0; }

double PassCost::estimate(int64_t n) const {
  if (measured(n)) return t_[static_cast<size_t>(n)];
  int64_t lo = -1, hi = -1, lo2 = -1;
  for (int64_t i = std::min<int64_t>(n, static_cast<int64_t>(t_.size()) - 1); i > 0; --i)
    if (t_[static_cast<size_t>(i)] > 0) {
      if (lo < 0) lo = i;
      else {
        lo2 = i;
        break;
      }
    }
  for (int64_t i = n + 1; i < static_cast<int64_t>(t_.size()); ++i)
    if (t_[static_cast<size_t>(i)] > 0) {
      hi = i;
      break;
    }
  auto at = [&](int64_t i) { return t_[static_cast<size_t>(i)]; };
  if (lo > 0 && hi > 0) return at(lo) + (at(hi) - at(lo)) * static_cast<double>(n - lo) / static_cast<double>(hi - lo);
  if (lo > 0 && lo2 > 0) {
    const double slope = std::max(0.0, (at(lo) - at(lo2)) / static_cast<double>(lo - lo2));
    return at(lo) + slope * static_cast<double>(n - lo);
  }
  // One point (or only larger ones): assume an extra token costs 5% of a pass until measured (optimistic, so the
  // first probe measures the real cost).
  if (lo > 0) return at(lo) * (1.0 + 0.05 * static_cast<double>(n - lo));
  if (hi > 0) return at(hi) * (1.0 - 0.05 * static_cast<double>(hi - n) / static_cast<double>(hi));
  return 0;
}

double SpecStats::speedup() const {
  if (single_pass_seconds <= 0 || passes == 0) return 0;
  const double took = draft_seconds + verify_seconds + plain_seconds;
  if (took <= 0) return 0;
  const double produced = static_cast<double>(passes + accepted + plain_passes);
  return produced * single_pass_seconds / took;
}

SpecStats SpecStats::since(const SpecStats& b) const {
  SpecStats d = *this;
  d.passes -= b.passes;
  d.plain_passes -= b.plain_passes;
  d.drafted -= b.drafted;
  d.accepted -= b.accepted;
  d.draft_seconds -= b.draft_seconds;
  d.verify_seconds -= b.verify_seconds;
  d.plain_seconds -= b.plain_seconds;
  return d;
}

void SpecStats::add(const SpecStats& o) {
  passes += o.passes;
  plain_passes += o.plain_passes;
  drafted += o.drafted;
  accepted += o.accepted;
  draft_seconds += o.draft_seconds;
  verify_seconds += o.verify_seconds;
  plain_seconds += o.plain_seconds;
  if (o.single_pass_seconds > 0) single_pass_seconds = o.single_pass_seconds;
}

Speculator::Speculator(std::vector<Drafter*> drafters, const SpecOptions& opt, PassCost* cost)
    : drafters_(std::move(drafters)), ctl_(drafters_.size()), opt_(opt), cost_(cost ? cost : &own_cost_) {
  if (opt.draft_max < 1 || opt.draft_max > 128)
    throw Error("--draft-max must be between 1 and 128 (got " + std::to_string(opt.draft_max) + ")");
  if (opt.draft_min < 0 || opt.draft_min > opt.draft_max)
    throw Error("--draft-min must be between 0 and --draft-max " + std::to_string(opt.draft_max) + " (got " +
                std::to_string(opt.draft_min) + ")");
}

void Speculator::restart(const SpecOptions& opt) {
  Speculator check({}, opt);  // validates
  opt_ = opt;
  ctl_.assign(drafters_.size(), Ctl{});
  stats_ = SpecStats{};
  since_plain_ = 0;
  drafted_ = false;
  drafted_before_ = true;
  last_ = -1;
}

std::string Speculator::describe() const {
  std::string s;
  for (const Drafter* d : drafters_) s += (s.empty() ? "" : ", then ") + d->describe();
  return s;
}

int Speculator::choose_k(Ctl& c, int64_t base, int64_t room) {
  const int kmax = static_cast<int>(std::min<int64_t>(opt_.draft_max, room));
  if (kmax <= 0) return 0;
  if (!opt_.adaptive) return kmax;
  if (c.paused > 0) {
    if (--c.paused == 0) c.probe = true;
    return 0;
  }
  const double t0 = cost_->estimate(base + 1);
  if (c.probe) {  // after a pause: a short draft, to measure the acceptance again
    c.probe = false;
    return std::min(kmax, std::max(opt_.draft_min, 4));
  }
  const double a = std::clamp(c.alpha, 0.0, 0.999);
  const double plain = 1.0 / t0;
  double best = plain * 1.02;  // speculation must beat plain decoding by more than noise
  int best_k = 0;
  double ak = 1.0;
  for (int k = 1; k <= kmax; ++k) {
    ak *= a;
    const double expect = 1.0 + a * (1.0 - ak) / (1.0 - a);
    const double rate = expect / (cost_->estimate(base + 1 + k) + k * c.t_token);
    if (rate > best && k >= opt_.draft_min) {
      best = rate;
      best_k = k;
    }
  }
  if (best_k == 0) {
    c.paused = c.backoff;
    c.backoff = std::min(256, c.backoff * 2);
  } else {
    c.backoff = 4;
  }
  return best_k;
}

void Speculator::draft(const std::vector<int32_t>& context, int64_t base, int64_t room, const SamplingParams& sp,
                       Draft& out) {
  out.clear();
  last_ = -1;
  // The first passes are plain: they measure what speculation has to beat (the very first one runs cold); every 32
  // passes two stay plain to keep that measurement current (only a plain pass after a plain pass is measured: right
  // after a draft model ran, the target's weights are partly out of the CPU caches, which is a cost of speculating).
  if (opt_.adaptive && (cost_->count(base + 1) < 3 || ++since_plain_ >= 32)) {
    if (since_plain_ >= 33) since_plain_ = 0;
    return;
  }
  for (size_t i = 0; i < drafters_.size(); ++i) {
    const int k = choose_k(ctl_[i], base, room);
    if (k <= 0) continue;
    drafted_ = true;
    const auto t0 = Clock::now();
    drafters_[i]->propose(context, k, sp, out);
    const double dt = since(t0);
    stats_.draft_seconds += dt;
    // The draft's cost per token, without catching up with the context (after a pause it evaluates everything
    // generated meanwhile in one batch: a cost of probing, not of each drafted token).
    const double work = std::max(0.0, dt - drafters_[i]->catchup_seconds());
    if (!out.tokens.empty()) {
      Ctl& c = ctl_[i];
      const double per = work / static_cast<double>(out.tokens.size());
      c.t_token = c.t_token > 0 ? 0.8 * c.t_token + 0.2 * per : per;
    }
    if (static_cast<int>(out.tokens.size()) >= std::max(1, opt_.draft_min)) {
      last_ = static_cast<int>(i);
      return;
    }
    if (out.tokens.empty() && std::string(drafters_[i]->kind()) == "draft") {
      // A draft model that declines (--draft-p-min) cost its time for nothing: count it as a rejected token.
      // A decline says little about the acceptance but costs a draft pass (and the catch-up of the context): halve
      // the estimate, so a draft that keeps declining pauses after a few tries.
      Ctl& c = ctl_[i];
      c.alpha = 0.5 * c.alpha;
      c.t_token = c.t_token > 0 ? 0.8 * c.t_token + 0.2 * work : work;
    }
    out.clear();
  }
}

void Speculator::record(int64_t n_drafted, int64_t n_accepted, int64_t pass_tokens, double seconds) {
  const bool after_draft = drafted_before_;
  drafted_before_ = drafted_;
  drafted_ = false;
  if (n_drafted > 0 || !after_draft) cost_->observe(pass_tokens, seconds);
  if (pass_tokens == 1 || n_drafted == 0) {
    if (cost_->measured(1)) stats_.single_pass_seconds = cost_->estimate(1);
  }
  if (n_drafted == 0 || last_ < 0) {
    ++stats_.plain_passes;
    stats_.plain_seconds += seconds;
    return;
  }
  ++stats_.passes;
  stats_.drafted += n_drafted;
  stats_.accepted += n_accepted;
  stats_.verify_seconds += seconds;
  // Acceptance per drafted token: accepted ones count as successes, the first rejection as a failure; positions
  // after it were never decided.
  Ctl& c = ctl_[static_cast<size_t>(last_)];
  const double decided = static_cast<double>(n_accepted + (n_accepted < n_drafted ? 1 : 0));
  if (decided > 0) {
    const double rate = static_cast<double>(n_accepted) / decided;
    const double w = std::min(0.5, 0.1 * decided);
    c.alpha = (1 - w) * c.alpha + w * rate;
  }
  last_ = -1;
}

// ---------------------------------------------------------------------------------------------- setup

SpecSetup::SpecSetup(const Model& target, const SpecConfig& cfg, const LoadOptions& load,
                     std::vector<std::string>* warnings)
    : target_(target), cfg_(cfg) {
  if (cfg.ngram) NgramDrafter check(cfg.ngram_min, cfg.ngram_max);  // validates the sizes
  Speculator check({}, cfg.spec);                                      // validates draft-max / draft-min
  if (!(cfg.model.p_min >= 0.0f && cfg.model.p_min <= 1.0f))
    throw Error("--draft-p-min must be in [0, 1] (got " + std::to_string(cfg.model.p_min) + ")");
  if (cfg.draft.empty()) return;
  try {
    LoadOptions dl = load;  // the target's, with the draft's own GPU offload where given
    if (cfg.draft_gpu_layers >= 0) dl.offload.n_gpu_layers = cfg.draft_gpu_layers;
    if (cfg.draft_device >= 0) dl.offload.device = static_cast<uint32_t>(cfg.draft_device);
    draft_ = Model::load(cfg.draft, dl);
    dv_ = make_draft_vocab(target, *draft_, cfg.model.vocab);
  } catch (const Error& e) {
    throw Error("draft model " + cfg.draft + ": " + e.what());
  }
  if (warnings) {
    if (draft_->weight_bytes() >= target.weight_bytes())
      warnings->push_back("the draft model (" + std::to_string(draft_->weight_bytes() >> 20) +
                          " MiB of weights) is not smaller than the target (" +
                          std::to_string(target.weight_bytes() >> 20) +
                          " MiB): drafting will cost about as much as it saves");
  }
}

RunSettings SpecConfig::draft_settings(const RunSettings& target) const {
  RunSettings d = target;
  if (draft_gpu_layers >= 0) d.n_gpu_layers = draft_gpu_layers;
  d.type_k = model.cache_type_k;
  d.type_v = model.cache_type_v;
  return d;
}

SpecSetup::~SpecSetup() = default;

SpecSeq::~SpecSeq() {
  if (!live) return;
  live->device_bytes -= device_bytes;
  --live->drafters;
}

uint64_t SpecSetup::draft_device_bytes() const {
  const DeviceModel* dm = draft_ ? draft_->device() : nullptr;
  return dm ? dm->weight_bytes() + live_.device_bytes.load() : 0;
}

uint32_t SpecSetup::draft_device() const {
  const DeviceModel* dm = draft_ ? draft_->device() : nullptr;
  return dm ? dm->info().index : 0;
}

std::string SpecSetup::describe() const {
  std::string s;
  if (cfg_.ngram)
    s = "n-gram lookup (n = " + std::to_string(cfg_.ngram_max) + " down to " + std::to_string(cfg_.ngram_min) + ")";
  if (draft_) {
    if (!s.empty()) s += ", then ";
    s += "draft model " + cfg_.draft + " with " + vocab_bridge_name(dv_->bridge);
    if (dv_->bridge != VocabBridge::Same) {
      char buf[200];
      std::snprintf(buf, sizeof buf, " (vocabularies differ: %s; %lld draft tokens shared, overlap %.1f%%)",
                    dv_->match.difference.c_str(), static_cast<long long>(dv_->match.shared), 100.0 * dv_->match.overlap);
      s += buf;
    }
  }
  s += "; draft-max " + std::to_string(cfg_.spec.draft_max) + (cfg_.spec.adaptive ? " (adaptive)" : " (fixed)");
  return s;
}

std::unique_ptr<SpecSeq> SpecSetup::make(ThreadPool& pool, int64_t n_ctx, PassCost* cost,
                                         const SpecOptions* override_opt) const {
  if (!cfg_.enabled()) return nullptr;
  auto s = std::make_unique<SpecSeq>();
  std::vector<Drafter*> ds;
  if (cfg_.ngram) {
    s->ngram = std::make_unique<NgramDrafter>(cfg_.ngram_min, cfg_.ngram_max);
    ds.push_back(s->ngram.get());
  }
  if (draft_) {
    DraftModelOptions mo = cfg_.model;
    mo.n_ctx = n_ctx;
    s->model = std::make_unique<ModelDrafter>(target_, *draft_, pool, mo, dv_);
    ds.push_back(s->model.get());
    s->device_bytes = s->model->device_bytes();
    s->live = &live_;
    live_.device_bytes += s->device_bytes;
    const int64_t now = ++live_.drafters;
    for (int64_t p = live_.peak.load(); now > p && !live_.peak.compare_exchange_weak(p, now);) {
    }
  }
  s->spec = std::make_unique<Speculator>(std::move(ds), override_opt ? *override_opt : cfg_.spec, cost);
  return s;
}

}  // namespace lokal
