// runtime/residency.h - which models stay loaded when several share one memory budget (the bookkeeping behind a
// multi-model `lokal serve`): Ollama's keep-alive semantics, pinning, a maximum number of loaded models, and
// least-recently-used eviction of idle models to make room, with the memory of each model as `lokal plan` predicts
// it for its configured context, parallel sequences and draft.
//
// Pure bookkeeping: no threads, no clock of its own (every call takes `now`), no loading. The caller (the server's
// router) asks plan_load() before loading, unloads what it says, and reports loads, unloads and requests back.
//
//   keep_alive  how long a model stays loaded after its last request ended: a duration; 0 = unload as soon as no
//               request uses it; negative = until evicted for room or unloaded by hand (Ollama's semantics). Set
//               per model (its default) and per request (then it holds from that request on).
//   pinned      never evicted for another model (still unloaded by hand, or by keep_alive 0 on a request).
//   budget      bytes every loaded model's prediction must fit in together; 0 = no memory limit.
//   vram budget the same for device memory (the offloaded layers' weights, KV caches and scratch), per GPU: each
//               device's loaded models must fit its own budget (VramBudget); 0 = no limit.
//   max_loaded  models loaded at once; 0 = no limit.
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lokal {

// Predicted device memory of one model by GPU (its index in `lokal info --devices`): the target's layers on its
// device, a draft's on its own (which may be another).
using DeviceBytes = std::map<uint32_t, uint64_t>;

// serve --vram: how much device memory the loaded models may use on each GPU. "SIZE" gives every device SIZE (the
// usual case: one GPU, or several alike); "DEV=SIZE" one device; combined with commas, a device's own entry wins
// ("10GiB,1=6GiB": 6 GiB on device 1, 10 GiB on every other). No entry for a device (and no SIZE): no limit there.
struct VramBudget {
  uint64_t every = 0;                    // every device without an entry of its own; 0: no limit
  std::map<uint32_t, uint64_t> device;   // device -> bytes (never 0)
  VramBudget() = default;
  VramBudget(uint64_t every_device) : every(every_device) {}  // NOLINT: a plain size is the common budget
  uint64_t of(uint32_t dev) const;       // 0: no limit on that device
  bool limited() const { return every > 0 || !device.empty(); }
  // The first device where `held` plus `need` exceeds its budget (devices of `need` only), or nullopt.
  std::optional<uint32_t> over(const DeviceBytes& held, const DeviceBytes& need) const;
  // Throws lokal::Error naming the bad part ("--vram" or the config key is the caller's prefix).
  static VramBudget parse(const std::string& text);
};

class Residency {
 public:
  using Clock = std::chrono::steady_clock;
  using Duration = std::chrono::milliseconds;
  static constexpr Duration kForever{-1};

  Residency(uint64_t budget_bytes, int max_loaded, VramBudget vram_budget = {})
      : budget_(budget_bytes), vram_budget_(std::move(vram_budget)), max_loaded_(max_loaded) {}

  struct Decision {
    enum class Kind {
      Ready,       // already loaded: use it
      Load,        // load it now, after unloading `evict` (least recently used first)
      Wait,        // room will come when requests to other models end (or their keep_alive runs out): retry then
      Impossible,  // it cannot fit even with every unpinned model unloaded: `why` says by how much
    };
    Kind kind = Kind::Load;
    std::vector<std::string> evict;
    std::string why;
  };
  // What it takes to load `name`, predicted to need `bytes` of RAM and `device_bytes` of device memory (by GPU).
  Decision plan_load(const std::string& name, uint64_t bytes, const DeviceBytes& device_bytes = {}) const;

  // Bookkeeping. loaded(): the model is resident (its prediction counted), idle since `now`. unloaded(): gone.
  void loaded(const std::string& name, uint64_t bytes, bool pinned, Duration keep_alive, Clock::time_point now,
              DeviceBytes device_bytes = {});
  void unloaded(const std::string& name);
  // A request starts using the model (it is then never evicted) / ends (its keep_alive starts counting). A request's
  // own keep_alive, when it gives one, replaces the model's from then on.
  void begin(const std::string& name, Clock::time_point now);
  void end(const std::string& name, Clock::time_point now, std::optional<Duration> keep_alive = std::nullopt);
  void set_pinned(const std::string& name, bool pinned);

  // Idle models whose keep_alive ran out by `now` (unload them and call unloaded()).
  std::vector<std::string> expired(Clock::time_point now) const;
  // When the next keep_alive runs out (nullopt: none will), for a timer.
  std::optional<Clock::time_point> next_expiry() const;

  struct Entry {
    uint64_t bytes = 0;
    DeviceBytes device_bytes;
    bool pinned = false;
    int in_flight = 0;
    Duration keep_alive{0};
    Clock::time_point last_used{};
    bool unload_now = false;  // a request ended with keep_alive 0
    std::optional<Clock::time_point> expires_at() const;  // nullopt: never (busy, or keep_alive forever)
  };
  const std::map<std::string, Entry>& entries() const { return models_; }
  bool is_loaded(const std::string& name) const { return models_.count(name) != 0; }
  uint64_t used_bytes() const;
  DeviceBytes used_device_bytes() const;  // by GPU, of the loaded models
  uint64_t budget() const { return budget_; }
  const VramBudget& vram_budget() const { return vram_budget_; }
  int max_loaded() const { return max_loaded_; }

 private:
  uint64_t budget_;
  VramBudget vram_budget_;
  int max_loaded_;
  std::map<std::string, Entry> models_;
};

// Ollama's keep_alive values: a number of seconds ("300", 300, -1), or a duration with units ("5m", "1h30m", "250ms",
// "-1m"): "0" unloads at once, a negative one keeps the model forever. Throws lokal::Error for anything else.
Residency::Duration parse_keep_alive(const std::string& text);

}  // namespace lokal
