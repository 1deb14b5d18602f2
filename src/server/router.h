// server/router.h - the models behind one `lokal serve`: which model a request goes to (by name, alias, route or
// task) and which models are loaded, within a memory budget (docs/MODELS.md "Several models in one server").
//
// Every model the server can serve is a ModelSpec (from `-m` alone, the `[models.NAME]` tables of the config file, or
// the whole store with --all-models). The router reads each file's header at start (its facts, what it can do, and
// the memory `lokal plan` predicts for its settings: context x parallel sequences, KV types, batch, draft), and then:
//   resolve()  a request's "model" and the endpoint's task -> one model: an exact name or alias first, then a
//              `[routes]` entry (a task name such as "reasoning", or any virtual name), then, for an empty "model",
//              the route of the endpoint's task, else the first model that does the task. A model that cannot do the
//              endpoint's task is a 400 (never a silent fallback); an unknown name a 404.
//   acquire()  the model loaded and held for one request: loads it on the calling thread when it is not (other
//              models keep answering meanwhile), after unloading idle unpinned models, least recently used first, that
//              runtime/residency.h says must go to make room; waits (up to load_wait) while room will come when
//              other requests end, or while another request is loading it; 503 with Retry-After past that.
//   A Lease ends when its request's last byte is sent: the model's keep_alive (the request's when it gave one) starts
//   counting then, and a reaper thread unloads models whose keep_alive ran out.
// Thread-safe. Engines are created, loaded and destroyed only here.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/gguf.h"
#include "runtime/plan.h"
#include "runtime/residency.h"
#include "server/engine.h"

namespace lokal::server {

enum class Task { Chat, Completion, Reasoning, Embedding, Vision };
const char* task_name(Task t);
std::optional<Task> parse_task(const std::string& s);
constexpr Task kAllTasks[] = {Task::Chat, Task::Completion, Task::Reasoning, Task::Embedding, Task::Vision};

struct ModelSpec {
  std::string name;                 // the id clients see (unique): the [models.NAME] key, store name, or file stem
  EngineOptions engine;             // how to load and serve it (engine.aliases: further names)
  std::vector<Task> tasks;          // empty: what the file can do (chat with a template, completion, embedding,
                                    // reasoning when it has a <think> token or its template opens one)
  bool tasks_explicit = false;      // tasks came from the configuration (else inferred)
  bool pinned = false;              // never unloaded to make room for another model
  std::optional<Residency::Duration> keep_alive;  // unset: RouterOptions::keep_alive
};

// What serving adds to the planner's estimate of `lokal run` (runtime/plan.h), measured on this project's Release build
// (x86-64, Debian 12's glibc; RSS of `lokal serve` minus the prediction, tests/test_router.cpp holds the sum to 5%):
//   the HTTP server: its listener, connection threads' stacks and malloc arenas, buffers     ~1.7 MiB -> 2 MiB
//   the web chat page: its gzip copies built at start                                          ~0.7 MiB
//   each loaded model: its scheduler thread and thread pool arenas, the parsed chat template  ~0.6-0.8 MiB
constexpr uint64_t kServerBaseBytes = 2u << 20;
constexpr uint64_t kWebPageBytes = 768u << 10;
constexpr uint64_t kPerModelServingBytes = 768u << 10;

struct RouterOptions {
  uint64_t budget_bytes = 0;        // --ram: all loaded models' predictions + the process together (0: no limit)
  std::string budget_text;          // as the user wrote it, for messages
  VramBudget vram_budget;           // --vram: loaded models' predicted device memory on each GPU (none: no limit)
  std::string vram_budget_text;
  int max_loaded = 0;               // --max-loaded (0: no limit)
  Residency::Duration keep_alive = std::chrono::minutes(5);  // --keep-alive: default of each model
  std::map<std::string, std::string> routes;  // [routes]: task or virtual name -> model name
  double load_wait_s = 120;         // --load-timeout: how long a request waits for room or a load before 503
  uint64_t server_bytes = kServerBaseBytes;  // the HTTP side's own memory (+ kWebPageBytes with the web page)
};

// What listings show of one model (a snapshot; the model may change state right after).
struct ModelStatus {
  std::string name;
  std::vector<std::string> aliases;
  std::string state;                // "loaded", "loading", "unloaded"
  std::string last_error;           // why the last load failed ("" : it did not)
  std::vector<Task> tasks;
  bool pinned = false;
  uint64_t predicted_bytes = 0;     // this model's share of the budget (with kPerModelServingBytes)
  uint64_t predicted_vram_bytes = 0;  // its share of the --vram budgets, all GPUs together (0 without -ngl)
  DeviceBytes predicted_device_bytes; //   by GPU (a draft may sit on another one)
  ModelFacts facts;
  int64_t n_ctx = 0;                // the context it runs with
  int n_parallel = 1;
  int in_flight = 0;                // requests holding it now
  std::optional<std::chrono::system_clock::time_point> expires_at;  // loaded and idle: when keep_alive unloads it
  double load_seconds = 0;
  int64_t loads = 0;                // times it was loaded since start
  int64_t gpu_layers = 0;           // loaded with GPU offload: its layers on the device (-ngl), and the device bytes
  uint64_t vram_bytes = 0;          //   of its weights, KV cache and scratch (its draft's included), all GPUs
  DeviceBytes device_bytes;         //   by GPU
};

class Router {
 public:
  // Reads every model's facts and checks the configuration: names unique (aliases included), routes naming models
  // (and tasks they can do), no model predicted above the budget on its own. Throws lokal::Error.
  Router(std::vector<ModelSpec> models, RouterOptions opt);
  ~Router();  // stops the reaper; unloads every model (requests must have ended)

  // A model held for one request: it stays loaded until the lease is destroyed.
  class Lease {
   public:
    ~Lease();
    Engine& engine() const { return *engine_; }
    const std::string& name() const { return name_; }
    double load_seconds() const { return load_seconds_; }  // > 0: this request waited for the model to load
    void set_keep_alive(Residency::Duration d) { keep_alive_ = d; }  // the request's own keep_alive
    void drop_use() { use_.reset(); }  // keep the model loaded without holding off Engine::reload

   private:
    friend class Router;
    Router* router_ = nullptr;
    size_t index_ = 0;
    Engine* engine_ = nullptr;
    Engine::Use use_;
    std::string name_;
    double load_seconds_ = 0;
    std::optional<Residency::Duration> keep_alive_;
  };

  // The model for a request (see the top of this file). `task` null: any model (tokenize, show, props...).
  // Throws ApiError 404 (unknown name) or 400 (the model cannot do the task).
  size_t resolve(const std::string& model, std::optional<Task> task) const;
  // Loads (if needed) and holds model `index`; throws ApiError 503 (no room in time, still loading, shutting down,
  // it can never fit beside the pinned models) or 500 (the load failed: the file's error).
  std::shared_ptr<Lease> acquire(size_t index);

  // Admin: load now (held for nothing: its keep_alive starts at once) / unload now (refused while requests use it
  // unless `force`, which waits for them). Throw ApiError like acquire().
  void load(size_t index);
  void unload(size_t index);

  size_t size() const { return models_.size(); }
  const ModelSpec& spec(size_t i) const { return models_[i].spec; }
  std::vector<ModelStatus> status() const;
  ModelStatus status(size_t index) const;
  // Runs fn on every loaded model's engine while none can be unloaded (keep fn short: metrics, health).
  void for_each_loaded(const std::function<void(size_t, Engine&)>& fn) const;
  // Requests in flight over all models.
  int64_t in_flight() const;
  // Refuse new leases from now on (shutdown).
  void close();
  const RouterOptions& options() const { return opt_; }
  // The bytes the budget is compared with: every loaded model's prediction + the process's and the server's own.
  uint64_t predicted_bytes() const;
  // The loaded models' predicted device memory by GPU (what each device's --vram budget is compared with), with 0
  // for every other GPU a configured model may use.
  DeviceBytes predicted_device_bytes() const;
  // The part that does not depend on the models: process + server (RouterOptions::server_bytes).
  uint64_t fixed_bytes() const;

 private:
  struct Slot {
    ModelSpec spec;
    ModelFacts facts;
    RunSettings settings;
    uint64_t bytes = 0;  // predicted, without the process base
    DeviceBytes device_bytes;  // predicted device memory by GPU (-ngl: the target's and the draft's)
    enum class State { Unloaded, Loading, Loaded } state = State::Unloaded;
    std::unique_ptr<Engine> engine;
    std::string last_error;
    double load_seconds = 0;
    int64_t loads = 0;  // successful loads since start
    int64_t attempts = 0;  // loads started (a failed one is not retried by the requests that waited for it)
  };
  void release(size_t index, std::optional<Residency::Duration> keep_alive);
  // With mu_ held: take the engines of `names` out (state Unloaded) for destruction after unlocking.
  void take_out(const std::vector<std::string>& names, std::vector<std::unique_ptr<Engine>>& out);
  std::optional<size_t> index_of(const std::string& name) const;
  Residency::Duration keep_alive_of(const Slot& s) const;
  void reaper();

  RouterOptions opt_;
  std::vector<Slot> models_;
  std::map<std::string, size_t> names_;  // names and aliases
  std::map<std::string, size_t> file_names_;  // each model's path, file name and file stem (first model wins)
  mutable std::mutex mu_;
  std::condition_variable cv_;  // a model loaded or unloaded, a request ended, closing
  Residency residency_;
  bool closed_ = false, stop_ = false;
  std::thread reaper_;
};

// What a GGUF file can do, read from its header: chat when it has a chat template (or `has_template_override`),
// completion and embedding always, reasoning when its vocabulary has a "<think>" token or its template opens one.
std::vector<Task> infer_tasks(const GGUFFile& file, bool has_template_override);

}  // namespace lokal::server
