// runtime/residency.cpp - keep-alive, pinning and LRU eviction under a memory budget (rules in residency.h).
#include "runtime/residency.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/safe_io.h"
#include "runtime/load.h"
#include "runtime/plan.h"

namespace lokal {

std::optional<Residency::Clock::time_point> Residency::Entry::expires_at() const {
  if (in_flight > 0) return std::nullopt;
  if (unload_now) return last_used;
  if (pinned || keep_alive.count() < 0) return std::nullopt;
  return last_used + keep_alive;
}

uint64_t Residency::used_bytes() const {
  uint64_t sum = 0;
  for (const auto& [name, e] : models_) sum += e.bytes;
  return sum;
}

DeviceBytes Residency::used_device_bytes() const {
  DeviceBytes sum;
  for (const auto& [name, e] : models_)
    for (const auto& [dev, b] : e.device_bytes) sum[dev] += b;
  return sum;
}

uint64_t VramBudget::of(uint32_t dev) const {
  const auto it = device.find(dev);
  return it != device.end() ? it->second : every;
}

std::optional<uint32_t> VramBudget::over(const DeviceBytes& held, const DeviceBytes& need) const {
  for (const auto& [dev, b] : need) {
    const auto h = held.find(dev);
    if (const uint64_t cap = of(dev); cap > 0 && (h != held.end() ? h->second : 0) + b > cap) return dev;
  }
  return std::nullopt;
}

VramBudget VramBudget::parse(const std::string& text) {
  VramBudget v;
  bool have_every = false;
  size_t start = 0;
  const auto trim = [](std::string s) {
    s.erase(0, std::min(s.size(), s.find_first_not_of(' ')));
    s.erase(s.find_last_not_of(' ') + 1);
    return s;
  };
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = trim(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    const auto bad = [&](const std::string& why) {
      return Error("'" + printable(text) + "': " + why + " (a size for every GPU, e.g. 11GiB, and/or DEVICE=SIZE for "
                   "one, e.g. 1=6GiB; devices as 'lokal info --devices' numbers them)");
    };
    if (item.empty()) throw bad("an empty entry");
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      if (have_every) throw bad("two sizes for every device");
      have_every = true;
      v.every = parse_byte_size(item);
    } else {
      const std::string dev = trim(item.substr(0, eq));
      if (dev.empty() || dev.size() > 3 || dev.find_first_not_of("0123456789") != std::string::npos || std::stoi(dev) > 255)
        throw bad("'" + printable(dev) + "' is not a device number (0-255)");
      const uint32_t d = static_cast<uint32_t>(std::stoi(dev));
      const uint64_t bytes = parse_byte_size(trim(item.substr(eq + 1)));
      if (bytes == 0) throw bad("device " + dev + " is given no memory (leave it out for no limit)");
      if (!v.device.emplace(d, bytes).second) throw bad("device " + dev + " is given twice");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return v;
}

namespace {
std::string device_name(uint32_t dev) { return "GPU " + std::to_string(dev); }
}  // namespace

Residency::Decision Residency::plan_load(const std::string& name, uint64_t bytes, const DeviceBytes& device_bytes) const {
  Decision d;
  if (models_.count(name)) {
    d.kind = Decision::Kind::Ready;
    return d;
  }
  if (budget_ > 0 && bytes > budget_) {
    d.kind = Decision::Kind::Impossible;
    d.why = "'" + name + "' needs " + format_bytes(static_cast<double>(bytes)) + ", more than the whole budget of " +
            format_bytes(static_cast<double>(budget_));
    return d;
  }
  if (const auto dev = vram_budget_.over({}, device_bytes)) {
    d.kind = Decision::Kind::Impossible;
    d.why = "'" + name + "' needs " + format_bytes(static_cast<double>(device_bytes.at(*dev))) +
            " of device memory on " + device_name(*dev) + ", more than its whole --vram budget of " +
            format_bytes(static_cast<double>(vram_budget_.of(*dev)));
    return d;
  }
  uint64_t used = used_bytes();
  DeviceBytes used_dev = used_device_bytes();
  size_t count = models_.size();
  auto ram_or_count_short = [&] {
    return (budget_ > 0 && used + bytes > budget_) || (max_loaded_ > 0 && count >= static_cast<size_t>(max_loaded_));
  };
  auto fits = [&] { return !ram_or_count_short() && !vram_budget_.over(used_dev, device_bytes); };
  auto drop = [&](const Entry& e) {
    used -= e.bytes;
    for (const auto& [dev, b] : e.device_bytes) used_dev[dev] -= b;
    --count;
  };
  if (fits()) return d;
  // Idle, unpinned models, least recently used first (ties by name, so the choice is deterministic). A model that
  // holds nothing on a GPU short of room (one without a budget, or one the new model does not use, is never short)
  // is still evicted when RAM or the count is short; for device memory alone it would not help, so it is skipped
  // then.
  std::vector<std::pair<Clock::time_point, std::string>> idle;
  for (const auto& [n, e] : models_)
    if (!e.pinned && e.in_flight == 0) idle.emplace_back(e.last_used, n);
  std::sort(idle.begin(), idle.end());
  auto helps = [&](const Entry& e) {
    if (ram_or_count_short()) return true;
    for (const auto& [dev, b] : e.device_bytes) {
      const auto need = device_bytes.find(dev);
      if (b > 0 && need != device_bytes.end() && vram_budget_.over(used_dev, {{dev, need->second}})) return true;
    }
    return false;
  };
  for (const auto& [t, n] : idle) {
    const Entry& e = models_.at(n);
    if (!helps(e)) continue;
    d.evict.push_back(n);
    drop(e);
    if (fits()) return d;
  }
  // Not enough idle room. If unloading the busy unpinned models too would do, their requests will end: wait.
  used = used_bytes();
  used_dev = used_device_bytes();
  count = models_.size();
  std::vector<std::string> busy;  // those whose unloading would help, for the message
  for (const auto& [n, e] : models_)
    if (!e.pinned && e.in_flight > 0 && helps(e)) busy.push_back(n);
  for (const auto& [n, e] : models_)
    if (!e.pinned) drop(e);
  d.evict.clear();
  if (fits()) {
    d.kind = Decision::Kind::Wait;
    std::string names;
    for (const std::string& n : busy) names += (names.empty() ? "'" : ", '") + n + "'";
    d.why = "'" + name + "' (" + format_bytes(static_cast<double>(bytes)) + ") fits once requests to " + names + " end";
    return d;
  }
  d.kind = Decision::Kind::Impossible;
  uint64_t pinned_bytes = 0;
  DeviceBytes pinned_dev;
  size_t n_pinned = 0;
  for (const auto& [n, e] : models_)
    if (e.pinned) {
      pinned_bytes += e.bytes;
      for (const auto& [dev, b] : e.device_bytes) pinned_dev[dev] += b;
      ++n_pinned;
    }
  const auto short_dev = vram_budget_.over(pinned_dev, device_bytes);
  if (max_loaded_ > 0 && n_pinned >= static_cast<size_t>(max_loaded_))
    d.why = "'" + name + "' cannot load: " + std::to_string(n_pinned) + " pinned models already fill the maximum of " +
            std::to_string(max_loaded_) + " loaded models";
  else if (short_dev)
    d.why = "'" + name + "' needs " + format_bytes(static_cast<double>(device_bytes.at(*short_dev))) +
            " of device memory on " + device_name(*short_dev) + " but pinned models hold " +
            format_bytes(static_cast<double>(pinned_dev[*short_dev])) + " of its " +
            format_bytes(static_cast<double>(vram_budget_.of(*short_dev))) + " --vram budget";
  else
    d.why = "'" + name + "' needs " + format_bytes(static_cast<double>(bytes)) + " but pinned models hold " +
            format_bytes(static_cast<double>(pinned_bytes)) + " of the " + format_bytes(static_cast<double>(budget_)) +
            " budget";
  return d;
}

void Residency::loaded(const std::string& name, uint64_t bytes, bool pinned, Duration keep_alive,
                       Clock::time_point now, DeviceBytes device_bytes) {
  Entry e;
  e.bytes = bytes;
  e.device_bytes = std::move(device_bytes);
  e.pinned = pinned;
  e.keep_alive = keep_alive;
  e.last_used = now;
  models_[name] = e;
}

void Residency::unloaded(const std::string& name) { models_.erase(name); }

void Residency::begin(const std::string& name, Clock::time_point now) {
  auto it = models_.find(name);
  if (it == models_.end()) throw Error("residency: '" + name + "' is not loaded");
  ++it->second.in_flight;
  it->second.last_used = now;
  it->second.unload_now = false;
}

void Residency::end(const std::string& name, Clock::time_point now, std::optional<Duration> keep_alive) {
  auto it = models_.find(name);
  if (it == models_.end()) throw Error("residency: '" + name + "' is not loaded");
  Entry& e = it->second;
  if (e.in_flight > 0) --e.in_flight;
  e.last_used = now;
  if (keep_alive) {
    e.keep_alive = *keep_alive;
    e.unload_now = keep_alive->count() == 0;
  }
}

void Residency::set_pinned(const std::string& name, bool pinned) {
  auto it = models_.find(name);
  if (it == models_.end()) throw Error("residency: '" + name + "' is not loaded");
  it->second.pinned = pinned;
}

std::vector<std::string> Residency::expired(Clock::time_point now) const {
  std::vector<std::string> out;
  for (const auto& [n, e] : models_) {
    const auto at = e.expires_at();
    if (at && *at <= now) out.push_back(n);
  }
  return out;
}

std::optional<Residency::Clock::time_point> Residency::next_expiry() const {
  std::optional<Clock::time_point> best;
  for (const auto& [n, e] : models_) {
    const auto at = e.expires_at();
    if (at && (!best || *at < *best)) best = at;
  }
  return best;
}

Residency::Duration parse_keep_alive(const std::string& text) {
  auto bad = [&]() -> Error {
    return Error("keep_alive '" + printable(text) + "' is not a duration (e.g. \"5m\", \"1h30m\", \"300\" seconds, "
                 "0 to unload at once, -1 to keep the model loaded)");
  };
  if (text.empty() || text.size() > 64) throw bad();
  size_t i = 0;
  bool neg = false;
  if (text[i] == '+' || text[i] == '-') neg = text[i++] == '-';
  if (i == text.size() || !((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) throw bad();
  // A plain number: seconds.
  char* end = nullptr;
  const double secs = std::strtod(text.c_str() + i, &end);
  if (end == text.c_str() + text.size()) {
    if (!std::isfinite(secs)) throw bad();
    if (neg && secs > 0) return Residency::kForever;
    return Residency::Duration(static_cast<int64_t>(std::min(secs, 1e10) * 1000.0));
  }
  // Go's duration syntax: one or more NUMBER UNIT pairs.
  double ms = 0;
  while (i < text.size()) {
    const char* start = text.c_str() + i;
    const double v = std::strtod(start, &end);
    if (!((*start >= '0' && *start <= '9') || *start == '.') || end == start || !std::isfinite(v)) throw bad();
    i = static_cast<size_t>(end - text.c_str());
    size_t u = i;
    while (u < text.size() && ((text[u] >= 'a' && text[u] <= 'z') || static_cast<unsigned char>(text[u]) >= 0x80)) ++u;
    const std::string unit = text.substr(i, u - i);
    double scale;
    if (unit == "h") scale = 3600e3;
    else if (unit == "m") scale = 60e3;
    else if (unit == "s") scale = 1e3;
    else if (unit == "ms") scale = 1;
    else if (unit == "us" || unit == "\xC2\xB5s" || unit == "\xCE\xBCs") scale = 1e-3;
    else if (unit == "ns") scale = 1e-6;
    else throw bad();
    ms += v * scale;
    i = u;
  }
  if (neg && ms > 0) return Residency::kForever;
  return Residency::Duration(static_cast<int64_t>(std::min(ms, 1e13)));
}

}  // namespace lokal
