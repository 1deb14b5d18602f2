// server/router.cpp - routing requests to models and keeping them loaded within a budget (rules in router.h).
#include "server/router.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/gguf.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "model/config.h"
#include "runtime/load.h"

namespace lokal::server {

namespace {
using Clock = std::chrono::steady_clock;

bool has_task(const std::vector<Task>& tasks, Task t) { return std::find(tasks.begin(), tasks.end(), t) != tasks.end(); }

// Whether a model with `tasks` can serve an endpoint of task `t`: a reasoning model chats (it thinks first).
bool can_do(const std::vector<Task>& tasks, Task t) {
  if (has_task(tasks, t)) return true;
  return t == Task::Chat && has_task(tasks, Task::Reasoning);
}

std::string tasks_str(const std::vector<Task>& tasks) {
  std::string s;
  for (Task t : tasks) s += (s.empty() ? "" : ", ") + std::string(task_name(t));
  return s.empty() ? "nothing" : s;
}

}  // namespace

const char* task_name(Task t) {
  switch (t) {
    case Task::Chat: return "chat";
    case Task::Completion: return "completion";
    case Task::Reasoning: return "reasoning";
    case Task::Embedding: return "embedding";
    case Task::Vision: return "vision";
  }
  return "?";
}

std::optional<Task> parse_task(const std::string& s) {
  for (Task t : kAllTasks)
    if (s == task_name(t)) return t;
  if (s == "completions" || s == "generate") return Task::Completion;
  if (s == "embeddings" || s == "embed") return Task::Embedding;
  return std::nullopt;
}

std::vector<Task> infer_tasks(const GGUFFile& f, bool has_template_override) {
  std::vector<Task> tasks;
  const auto tpl = f.opt_str("tokenizer.chat_template");
  if (tpl || has_template_override) tasks.push_back(Task::Chat);
  tasks.push_back(Task::Completion);
  bool think = tpl && tpl->find("<think>") != std::string::npos;
  if (!think && f.has("tokenizer.ggml.tokens"))
    for (std::string_view t : f.get_str_array("tokenizer.ggml.tokens"))
      if (t == "<think>") {
        think = true;
        break;
      }
  if (think && !tasks.empty() && tasks.front() == Task::Chat) tasks.push_back(Task::Reasoning);
  tasks.push_back(Task::Embedding);
  return tasks;
}

// ---------------------------------------------------------------------------------------------------------------
Router::Router(std::vector<ModelSpec> models, RouterOptions opt)
    : opt_(std::move(opt)),
      residency_(opt_.budget_bytes > fixed_bytes() ? opt_.budget_bytes - fixed_bytes() : (opt_.budget_bytes ? 1 : 0),
                 opt_.max_loaded, opt_.vram_budget) {
  if (models.empty()) throw Error("serve: no model to serve (give -m FILE, [models.NAME] tables in --config, or --all-models)");
  models_.resize(models.size());
  for (size_t i = 0; i < models.size(); ++i) {
    Slot& s = models_[i];
    s.spec = std::move(models[i]);
    const std::string where = "model '" + s.spec.name + "'";
    // The engine's id (the "model" of responses) is the router's name for it.
    auto& al = s.spec.engine.aliases;
    al.erase(std::remove(al.begin(), al.end(), s.spec.name), al.end());
    al.insert(al.begin(), s.spec.name);
    check_input_file(s.spec.engine.load.path, ("GGUF model file of " + where).c_str());
    {  // the header once: facts and what the model can do
      const auto file = GGUFFile::open(s.spec.engine.load.path, true);
      validate_model(*file);  // what ModelFacts::read checks: a file lokal cannot run is refused at start
      s.facts = ModelFacts::from_gguf(*file, s.spec.engine.load.path);
      if (s.spec.tasks.empty()) s.spec.tasks = infer_tasks(*file, !s.spec.engine.chat_template.empty());
    }
    s.settings = run_settings(s.spec.engine.load, s.facts);
    MemoryEstimate e;
    try {
      e = estimate_memory(s.facts, s.settings);
    } catch (const Error& err) {  // settings it cannot run with (a KV type the GPU lacks)
      throw Error(where + ": " + err.what());
    }
    s.bytes = e.total_bytes - std::min(e.total_bytes, process_base_bytes()) + kPerModelServingBytes;
    const uint32_t device = s.spec.engine.load.load.offload.device;
    if (e.gpu_total_bytes > 0) s.device_bytes[device] = e.gpu_total_bytes;
    if (!s.spec.engine.spec.draft.empty()) {  // the draft sits beside it with the same context and sequences
      const ModelFacts df = ModelFacts::read(s.spec.engine.spec.draft);
      MemoryEstimate de;  // a cache per sequence
      try {
        de = estimate_draft_memory(df, s.spec.engine.spec.draft_settings(s.settings));
      } catch (const Error& err) {
        throw Error(where + ", its draft: " + err.what());
      }
      s.bytes += de.total_bytes;
      const int dd = s.spec.engine.spec.draft_device;  // -1: the target's
      if (de.gpu_total_bytes > 0) s.device_bytes[dd >= 0 ? static_cast<uint32_t>(dd) : device] += de.gpu_total_bytes;
    }
    for (const std::string& n : s.spec.engine.aliases) {
      if (n.empty()) throw Error(where + ": an empty name or alias");
      const auto [it, fresh] = names_.emplace(n, i);
      if (!fresh && it->second != i)
        throw Error("the name '" + n + "' is given to two models ('" + models_[it->second].spec.name + "' and '" +
                    s.spec.name + "')");
    }
    if (opt_.budget_bytes > 0 && s.bytes + fixed_bytes() > opt_.budget_bytes)
      throw Error(where + " (" + s.spec.engine.load.path + ") needs " + format_bytes(static_cast<double>(s.bytes)) +
                  " with its settings (context " + std::to_string(s.settings.n_ctx) + " x " +
                  std::to_string(s.settings.n_parallel) + " sequences) plus " +
                  format_bytes(static_cast<double>(fixed_bytes())) + " for the server process: more than --ram " +
                  opt_.budget_text + " on its own; give it a smaller ctx_size or parallel, or a larger --ram");
    if (const auto dev = opt_.vram_budget.over({}, s.device_bytes))
      throw Error(where + " (" + s.spec.engine.load.path + ") needs " +
                  format_bytes(static_cast<double>(s.device_bytes.at(*dev))) + " of device memory on GPU " +
                  std::to_string(*dev) + " with " + std::to_string(s.settings.n_gpu_layers) + " GPU layers (context " +
                  std::to_string(s.settings.n_ctx) + " x " + std::to_string(s.settings.n_parallel) +
                  " sequences): more than --vram " + opt_.vram_budget_text + " gives that device (" +
                  format_bytes(static_cast<double>(opt_.vram_budget.of(*dev))) +
                  ") on its own; give it fewer gpu_layers or a larger --vram");
  }
  // Clients may also name a model by its file (llama-server's habit): its path, file name, or file name without
  // ".gguf", where that names no other model.
  for (size_t i = 0; i < models_.size(); ++i) {
    const std::string& path = models_[i].spec.engine.load.path;
    std::string file = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
    std::vector<std::string> extra = {path, file};
    if (file.size() > 5 && file.compare(file.size() - 5, 5, ".gguf") == 0) extra.push_back(file.substr(0, file.size() - 5));
    for (const std::string& n : extra) file_names_.emplace(n, i);
  }
  for (const auto& [key, target] : opt_.routes) {
    const auto it = names_.find(target);
    if (it == names_.end()) throw Error("[routes] " + key + " = \"" + target + "\": no model of that name is configured");
    if (const auto t = parse_task(key); t && !can_do(models_[it->second].spec.tasks, *t))
      throw Error("[routes] " + key + " = \"" + target + "\": that model does " + tasks_str(models_[it->second].spec.tasks) +
                  ", not " + key + " (give it tasks = [\"" + key + "\", ...] if it can)");
    if (names_.count(key) && names_.at(key) != it->second)
      throw Error("[routes] " + key + ": that is already the name of model '" + models_[names_.at(key)].spec.name + "'");
  }
  reaper_ = std::thread([this] { reaper(); });
}

Router::~Router() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = closed_ = true;
  }
  cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  for (Slot& s : models_) s.engine.reset();
}

Residency::Duration Router::keep_alive_of(const Slot& s) const { return s.spec.keep_alive.value_or(opt_.keep_alive); }

std::optional<size_t> Router::index_of(const std::string& name) const {
  const auto it = names_.find(name);
  if (it != names_.end()) return it->second;
  return std::nullopt;
}

size_t Router::resolve(const std::string& model, std::optional<Task> task) const {
  std::optional<size_t> idx;
  std::string via;
  if (!model.empty()) {
    idx = index_of(model);
    if (!idx) {
      if (const auto r = opt_.routes.find(model); r != opt_.routes.end()) {
        idx = index_of(r->second);
        via = " (routed from '" + model + "')";
      }
    }
    if (!idx)
      if (const auto f = file_names_.find(model); f != file_names_.end()) idx = f->second;
    if (!idx) {
      std::string names;
      for (const Slot& s : models_) names += (names.empty() ? "'" : ", '") + s.spec.name + "'";
      throw ApiError(404, "the model '" + model + "' is not served here (this server serves " + names + ")", "model",
                     "model_not_found");
    }
  } else if (task) {
    if (const auto r = opt_.routes.find(task_name(*task)); r != opt_.routes.end()) {
      idx = index_of(r->second);
      via = " (the route for " + std::string(task_name(*task)) + ")";
    } else {
      for (size_t i = 0; i < models_.size() && !idx; ++i)
        if (can_do(models_[i].spec.tasks, *task)) idx = i;
      if (!idx)
        throw ApiError(400, std::string("no model here can do ") + task_name(*task) + " (see GET /v1/models for what each does)",
                       "model", "unsupported_task");
    }
  } else {
    if (const auto r = opt_.routes.find("default"); r != opt_.routes.end()) idx = index_of(r->second);
    if (!idx) idx = 0;
  }
  const Slot& s = models_[*idx];
  // One model whose tasks were not configured: its own errors say more (no chat template: give --chat-template).
  const bool check = models_.size() > 1 || s.spec.tasks_explicit;
  if (check && task && !can_do(s.spec.tasks, *task))
    throw ApiError(400, "the model '" + s.spec.name + "'" + via + " does " + tasks_str(s.spec.tasks) + ", not " +
                            task_name(*task) + " (this endpoint's task)",
                   "model", "unsupported_task");
  return *idx;
}

void Router::take_out(const std::vector<std::string>& names, std::vector<std::unique_ptr<Engine>>& out) {
  for (const std::string& n : names) {
    const auto i = index_of(n);
    if (!i) continue;
    Slot& s = models_[*i];
    if (s.engine) out.push_back(std::move(s.engine));
    s.state = Slot::State::Unloaded;
    residency_.unloaded(n);
    LOKAL_INFO("unloaded model '%s'", n.c_str());
  }
}

std::shared_ptr<Router::Lease> Router::acquire(size_t index) {
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::milliseconds(static_cast<int64_t>(opt_.load_wait_s * 1000));
  std::vector<std::unique_ptr<Engine>> evicted;  // destroyed outside the lock
  std::unique_lock<std::mutex> lk(mu_);
  Slot& s = models_[index];
  const std::string& name = s.spec.name;
  auto retry_after = [&] { return std::max(1, static_cast<int>(std::ceil(std::max(1.0, s.load_seconds)))); };
  auto timeout = [&](const std::string& why) {
    ApiError e(503, why, "model", "model_not_ready");
    e.retry_after = retry_after();
    return e;
  };
  bool waited = false;
  for (;;) {
    if (closed_) {
      ApiError e(503, "the server is shutting down", "", "shutting_down");
      e.retry_after = 5;
      throw e;
    }
    if (s.state == Slot::State::Loaded) {
      residency_.begin(name, Clock::now());
      auto lease = std::make_shared<Lease>();
      lease->router_ = this;
      lease->index_ = index;
      lease->engine_ = s.engine.get();
      lease->name_ = name;
      if (waited) lease->load_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
      lk.unlock();
      lease->use_ = lease->engine_->use();
      return lease;
    }
    if (s.state == Slot::State::Loading) {
      waited = true;
      const int64_t attempt = s.attempts;
      while (s.state == Slot::State::Loading && !closed_)
        if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && s.state == Slot::State::Loading)
          throw timeout("the model '" + name + "' is still loading; retry shortly");
      // The load this request waited for failed: the same error (not a second try per waiting request).
      if (s.state == Slot::State::Unloaded && s.attempts == attempt && !s.last_error.empty())
        throw ApiError(500, "the model '" + name + "' failed to load: " + s.last_error, "model", "model_load_failed");
      continue;
    }
    const Residency::Decision d = residency_.plan_load(name, s.bytes, s.device_bytes);
    if (d.kind == Residency::Decision::Kind::Impossible)
      throw ApiError(503, "cannot load the model: " + d.why + " (unload a pinned model with POST /models/unload, or "
                     "raise --ram / --vram / --max-loaded)", "model", "insufficient_memory");
    if (d.kind == Residency::Decision::Kind::Wait) {
      waited = true;
      if (cv_.wait_until(lk, deadline) == std::cv_status::timeout) {
        const Residency::Decision again = residency_.plan_load(name, s.bytes, s.device_bytes);
        if (again.kind == Residency::Decision::Kind::Wait)
          throw timeout("no room to load the model '" + name + "' yet: " + d.why + "; retry shortly");
      }
      continue;
    }
    // Load it here, on this request's thread: unload what must go, reserve its room, and hold it (in_flight 1) so
    // that nothing evicts it between the load and this request's use.
    take_out(d.evict, evicted);
    s.state = Slot::State::Loading;
    s.last_error.clear();
    ++s.attempts;
    residency_.loaded(name, s.bytes, s.spec.pinned, keep_alive_of(s), Clock::now(), s.device_bytes);
    residency_.begin(name, Clock::now());
    s.engine = std::make_unique<Engine>(s.spec.engine);
    Engine* eng = s.engine.get();
    lk.unlock();
    evicted.clear();  // the evicted engines' memory goes back before this one's comes
    LOKAL_INFO("loading model '%s' (%s)", name.c_str(), s.spec.engine.load.path.c_str());
    std::string error;
    try {
      eng->load();
    } catch (const std::exception& e) {
      error = e.what();
    }
    lk.lock();
    if (!error.empty()) {
      s.last_error = error;
      s.state = Slot::State::Unloaded;
      evicted.push_back(std::move(s.engine));
      residency_.unloaded(name);
      cv_.notify_all();
      lk.unlock();
      evicted.clear();
      throw ApiError(500, "the model '" + name + "' failed to load: " + error, "model", "model_load_failed");
    }
    s.state = Slot::State::Loaded;
    s.load_seconds = eng->load_seconds();
    ++s.loads;
    cv_.notify_all();
    auto lease = std::make_shared<Lease>();  // begin() was counted above
    lease->router_ = this;
    lease->index_ = index;
    lease->engine_ = eng;
    lease->name_ = name;
    lease->load_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
    lk.unlock();
    lease->use_ = eng->use();
    return lease;
  }
}

Router::Lease::~Lease() {
  use_.reset();
  if (router_) router_->release(index_, keep_alive_);
}

void Router::release(size_t index, std::optional<Residency::Duration> keep_alive) {
  std::vector<std::unique_ptr<Engine>> gone;
  {
    std::lock_guard<std::mutex> lk(mu_);
    const std::string& name = models_[index].spec.name;
    if (!residency_.is_loaded(name)) return;
    residency_.end(name, Clock::now(), keep_alive);
    take_out(residency_.expired(Clock::now()), gone);  // keep_alive 0: at once
  }
  cv_.notify_all();
  gone.clear();
}

void Router::load(size_t index) {
  auto lease = acquire(index);  // released at once: its keep_alive starts now
}

void Router::unload(size_t index) {
  std::vector<std::unique_ptr<Engine>> gone;
  {
    std::unique_lock<std::mutex> lk(mu_);
    Slot& s = models_[index];
    if (s.state == Slot::State::Unloaded) return;
    if (s.state == Slot::State::Loading) throw ApiError(409, "the model '" + s.spec.name + "' is loading; unload it after", "model", "loading");
    const auto& e = residency_.entries().at(s.spec.name);
    if (e.in_flight > 0)
      throw ApiError(409, "the model '" + s.spec.name + "' is answering " + std::to_string(e.in_flight) +
                              " requests; it unloads when they end if you send keep_alive 0 with the last", "model", "model_busy");
    take_out({s.spec.name}, gone);
  }
  cv_.notify_all();
  gone.clear();
}

void Router::reaper() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    const auto next = residency_.next_expiry();
    if (next) cv_.wait_until(lk, *next);
    else cv_.wait(lk);
    if (stop_) break;
    const auto names = residency_.expired(Clock::now());
    if (names.empty()) continue;
    std::vector<std::unique_ptr<Engine>> gone;
    take_out(names, gone);
    lk.unlock();
    gone.clear();
    cv_.notify_all();
    lk.lock();
  }
}

ModelStatus Router::status(size_t i) const {
  std::lock_guard<std::mutex> lk(mu_);
  const Slot& s = models_[i];
  ModelStatus m;
  m.name = s.spec.name;
  m.aliases.assign(s.spec.engine.aliases.begin() + 1, s.spec.engine.aliases.end());  // [0] is the name
  m.state = s.state == Slot::State::Loaded ? "loaded" : s.state == Slot::State::Loading ? "loading" : "unloaded";
  m.last_error = s.last_error;
  m.tasks = s.spec.tasks;
  m.pinned = s.spec.pinned;
  m.predicted_bytes = s.bytes;
  for (const auto& [dev, b] : s.device_bytes) m.predicted_vram_bytes += b;
  m.predicted_device_bytes = s.device_bytes;
  m.facts = s.facts;
  m.n_ctx = s.settings.n_ctx;
  m.n_parallel = s.settings.n_parallel;
  m.load_seconds = s.load_seconds;
  m.loads = s.loads;
  if (s.state == Slot::State::Loaded && s.engine) {
    if (const DeviceModel* dm = s.engine->model().device()) m.gpu_layers = dm->n_layers();
    m.device_bytes = s.engine->device_bytes();
    for (const auto& [dev, b] : m.device_bytes) m.vram_bytes += b;
  }
  if (const auto it = residency_.entries().find(s.spec.name); it != residency_.entries().end()) {
    m.in_flight = it->second.in_flight;
    if (s.state == Slot::State::Loaded) {
      if (const auto at = it->second.expires_at())
        m.expires_at = std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::system_clock::duration>(*at - Clock::now());
    }
  }
  return m;
}

std::vector<ModelStatus> Router::status() const {
  std::vector<ModelStatus> out;
  for (size_t i = 0; i < models_.size(); ++i) out.push_back(status(i));
  return out;
}

void Router::for_each_loaded(const std::function<void(size_t, Engine&)>& fn) const {
  std::lock_guard<std::mutex> lk(mu_);
  for (size_t i = 0; i < models_.size(); ++i)
    if (models_[i].state == Slot::State::Loaded && models_[i].engine) fn(i, *models_[i].engine);
}

int64_t Router::in_flight() const {
  int64_t n = 0;
  for_each_loaded([&](size_t, Engine& e) { n += e.in_flight(); });
  return n;
}

void Router::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

uint64_t Router::predicted_bytes() const {
  std::lock_guard<std::mutex> lk(mu_);
  return residency_.used_bytes() + fixed_bytes();
}

DeviceBytes Router::predicted_device_bytes() const {
  std::lock_guard<std::mutex> lk(mu_);
  DeviceBytes out = residency_.used_device_bytes();
  for (const Slot& s : models_)
    for (const auto& [dev, b] : s.device_bytes) out.emplace(dev, 0);
  return out;
}

uint64_t Router::fixed_bytes() const { return process_base_bytes() + opt_.server_bytes; }

}  // namespace lokal::server
