#include "server/engine.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "model/offload.h"
#include "runtime/sampling.h"

namespace lokal::server {

namespace {
using Clock = std::chrono::steady_clock;
int64_t ns_of(double seconds) { return static_cast<int64_t>(seconds * 1e9); }
}  // namespace

bool Job::wait(std::string& text, std::vector<TokenLogprob>& lps, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return done_ || !text_.empty() || !lps_.empty(); });
  text += text_;
  text_.clear();
  for (auto& l : lps_) lps.push_back(std::move(l));
  lps_.clear();
  return done_;
}

bool Job::done() const {
  std::lock_guard<std::mutex> lk(mu_);
  return done_;
}

TokenLogprob token_logprob(int32_t token, const float* logits, int64_t n_vocab, int top) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n_vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double z = 0;
  for (int64_t i = 0; i < n_vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - mx);
  const double lz = mx + std::log(z);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<float>(static_cast<double>(logits[token]) - lz);
  if (top > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
    for (int64_t i = 0; i < n_vocab; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    const size_t k = std::min<size_t>(static_cast<size_t>(top), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + static_cast<ptrdiff_t>(k), ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (size_t i = 0; i < k; ++i)
      out.top.emplace_back(ids[i], static_cast<float>(static_cast<double>(logits[ids[i]]) - lz));
  }
  return out;
}

std::string model_id_for(const EngineOptions& opt) {
  if (!opt.aliases.empty()) return opt.aliases.front();
  std::string id = std::filesystem::path(opt.load.path).filename().string();
  if (id.size() > 5 && id.substr(id.size() - 5) == ".gguf") id.resize(id.size() - 5);
  return id;
}

Engine::Engine(EngineOptions opt) : opt_(std::move(opt)), id_(model_id_for(opt_)) {}

Engine::~Engine() {
  if (sched_) sched_->stop();
}

uint64_t Engine::model_device_bytes() const {
  const DeviceModel* dm = model().device();
  return dm ? dm->weight_bytes() + sched_->kv_pool().cache().device_bytes() + sched_->device_scratch_bytes() : 0;
}

DeviceBytes Engine::device_bytes() const {
  DeviceBytes out;
  if (const DeviceModel* dm = model().device()) out[dm->info().index] = model_device_bytes();
  if (spec_)
    if (const uint64_t d = spec_->draft_device_bytes()) out[spec_->draft_device()] += d;
  return out;
}

std::string Engine::error() const {
  std::lock_guard<std::mutex> lk(err_mu_);
  return error_;
}

void Engine::load() {
  const auto t0 = Clock::now();
  try {
    loaded_ = load_model_planned(opt_.load);
    pool_ = std::make_unique<ThreadPool>(loaded_.session.n_threads > 0 ? loaded_.session.n_threads
                                                                       : ThreadPool::default_threads());
    SchedulerOptions so;
    so.n_parallel = opt_.load.n_parallel;
    so.kv_tokens = opt_.load.kv_tokens;
    so.n_ctx = loaded_.settings.n_ctx;
    so.n_batch = loaded_.settings.n_batch;
    so.cache_type_k = loaded_.settings.type_k;
    so.cache_type_v = loaded_.settings.type_v;
    if (opt_.spec.enabled()) {
      std::vector<std::string> warnings;
      spec_ = std::make_unique<SpecSetup>(*loaded_.model, opt_.spec, opt_.load.load, &warnings);
      for (const auto& w : warnings) LOKAL_WARN("%s", w.c_str());
      so.spec = spec_.get();
    }
    sched_ = std::make_unique<Scheduler>(*loaded_.model, *pool_, so);
    try {
      tpl_.emplace(ChatTemplate::for_model(opt_.chat_template, loaded_.model->gguf(), loaded_.model->vocab()));
    } catch (const Error& e) {
      if (!opt_.chat_template.empty()) throw;  // an override that does not load is the user's error: refuse to start
      template_error_ = e.what();              // a model without a template still serves completions
    }
    sched_->start();
    load_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
    state_.store(State::Ready);
  } catch (const std::exception& e) {
    {
      std::lock_guard<std::mutex> lk(err_mu_);
      error_ = e.what();
    }
    state_.store(State::Failed);
    throw;
  }
}

void Engine::reload(std::chrono::milliseconds drain) {
  std::unique_lock<std::shared_timed_mutex> lk(use_mu_, std::defer_lock);
  state_.store(State::Loading);  // new requests: 503 from here on
  if (!lk.try_lock_for(drain)) {
    {
      std::lock_guard<std::mutex> jl(jobs_mu_);
      for (uint64_t id : job_ids_) sched_->cancel(id);
    }
    lk.lock();  // the cancelled requests end at the scheduler's next step and release their use
  }
  if (sched_) sched_->stop();
  sched_.reset();
  spec_.reset();
  tpl_.reset();
  template_error_.clear();
  {
    std::lock_guard<std::mutex> il(index_mu_);
    index_.reset();
  }
  loaded_ = LoadedModel{};
  pool_.reset();
  ++reloads_;
  load();
}

double Engine::scheduler_stuck_seconds() {
  std::shared_lock<std::shared_timed_mutex> lk(use_mu_, std::try_to_lock);  // a reload holds it: nothing to watch
  if (!lk.owns_lock() || state_.load() != State::Ready || !sched_) return 0;
  return sched_->seconds_since_heartbeat();
}

std::shared_ptr<const TokenIndex> Engine::token_index() {
  std::lock_guard<std::mutex> lk(index_mu_);
  if (!index_) index_ = make_token_index(loaded_.model->vocab());
  return index_;
}

std::shared_ptr<Job> Engine::submit(GenRequest req, int top_logprobs) {
  auto job = std::make_shared<Job>();
  job->n_prompt = static_cast<int64_t>(req.prompt.size());
  job->t_submit = Clock::now();
  std::weak_ptr<Job> weak = job;  // the scheduler may outlive a request whose client went away
  req.on_text = [weak](const std::string& text) {
    auto j = weak.lock();
    if (!j) return false;
    {
      std::lock_guard<std::mutex> lk(j->mu_);
      j->text_ += text;
    }
    j->cv_.notify_all();
    return true;
  };
  if (top_logprobs >= 0) {
    req.on_token = [weak, top_logprobs](int32_t tok, const float* logits, int64_t n_vocab) {
      auto j = weak.lock();
      if (!j) return;
      j->first_token_.store(true);
      TokenLogprob lp = token_logprob(tok, logits, n_vocab, top_logprobs);
      std::lock_guard<std::mutex> lk(j->mu_);
      j->lps_.push_back(std::move(lp));
    };
  } else {
    req.on_token = [weak](int32_t, const float*, int64_t) {
      if (auto j = weak.lock()) j->first_token_.store(true);
    };
  }
  ++in_flight_;
  req.on_done = [weak, this](const GenResult& r) {
    --in_flight_;
    {
      std::lock_guard<std::mutex> lk(jobs_mu_);
      job_ids_.erase(r.id);
    }
    ++totals_.requests;
    totals_.prompt_tokens += r.n_prompt;
    totals_.cached_tokens += r.n_reused;
    totals_.generated_tokens += static_cast<int64_t>(r.tokens.size());
    totals_.prompt_ns += ns_of(r.prompt_seconds);
    totals_.gen_ns += ns_of(r.gen_seconds);
    auto j = weak.lock();
    if (!j) return;
    {
      std::lock_guard<std::mutex> lk(j->mu_);
      j->result_ = r;
      j->done_ = true;
    }
    j->cv_.notify_all();
  };
  {
    std::lock_guard<std::mutex> lk(jobs_mu_);  // held across submit: on_done (which erases) cannot run before the insert
    job->id = sched_->submit(std::move(req));
    job_ids_.insert(job->id);
  }
  return job;
}

}  // namespace lokal::server
