// server/metrics.cpp - Prometheus registry and text exposition (see metrics.h).
#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace lokal::server {

namespace {

bool valid_metric_name(const std::string& s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool valid_label_name(const std::string& s) {
  if (s.empty() || s.rfind("__", 0) == 0) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// HELP text: backslash and newline escaped (quotes are literal there).
std::string escape_help(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

// Adds with a compare-exchange loop (std::atomic<double>::fetch_add is the same thing, spelled portably).
void atomic_add(std::atomic<double>& a, double v) noexcept {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed, std::memory_order_relaxed)) {
  }
}

// `{a="x",b="y"}` (plus an optional trailing le label), or "" without labels.
std::string label_text(const Labels& labels, const std::string* le = nullptr) {
  if (labels.empty() && !le) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    out += escape_label_value(v);
    out += '"';
  }
  if (le) {
    if (!first) out += ',';
    out += "le=\"";
    out += *le;
    out += '"';
  }
  out += '}';
  return out;
}

const char* type_name(int t) {
  switch (t) {
    case 0: return "counter";
    case 1: return "gauge";
    default: return "histogram";
  }
}

std::vector<double> checked_bounds(std::vector<double> b) {
  if (!b.empty() && std::isinf(b.back()) && b.back() > 0) b.pop_back();
  if (b.empty()) throw Error("histogram needs at least one finite bucket bound");
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(b[i])) throw Error("histogram bucket bound " + format_metric_value(b[i]) + " is not finite");
    if (i > 0 && !(b[i] > b[i - 1]))
      throw Error("histogram bucket bounds must be strictly increasing (" + format_metric_value(b[i - 1]) +
                  " then " + format_metric_value(b[i]) + ")");
  }
  return b;
}

}  // namespace

// --- values ---

void Counter::inc(double v) noexcept {
  if (!(v >= 0)) return;  // negative or NaN: a counter never goes down
  atomic_add(v_, v);
}

void Gauge::inc(double v) noexcept { atomic_add(v_, v); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(checked_bounds(std::move(bounds))),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) noexcept {
  // First bound >= v (le is inclusive); NaN and values above every bound land in +Inf.
  const size_t i = std::isnan(v) ? bounds_.size()
                                 : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, v);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = total;
  }
  s.count = total;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  if (!(start > 0) || !std::isfinite(start)) throw Error("exponential_buckets: start must be > 0");
  if (!(factor > 1) || !std::isfinite(factor)) throw Error("exponential_buckets: factor must be > 1");
  if (count < 1) throw Error("exponential_buckets: count must be >= 1");
  std::vector<double> b;
  b.reserve(static_cast<size_t>(count));
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

std::vector<double> linear_buckets(double start, double width, int count) {
  if (!std::isfinite(start)) throw Error("linear_buckets: start must be finite");
  if (!(width > 0) || !std::isfinite(width)) throw Error("linear_buckets: width must be > 0");
  if (count < 1) throw Error("linear_buckets: count must be >= 1");
  std::vector<double> b;
  b.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) b.push_back(start + width * i);
  return b;
}

// --- text ---

std::string format_metric_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  constexpr double kExact = 9007199254740992.0;  // 2^53: every integer below is exact
  if (v == std::trunc(v) && std::fabs(v) < kExact) return std::to_string(static_cast<long long>(v));
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
  return std::string(buf, r.ptr);
}

std::string escape_label_value(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

// --- registry ---

Registry::Family& Registry::family(const std::string& name, const std::string& help, Type type, const Labels& labels) {
  if (!valid_metric_name(name))
    throw Error("invalid metric name '" + name + "' (allowed: [a-zA-Z_:][a-zA-Z0-9_:]*)");
  for (const auto& [k, v] : labels) {
    if (!valid_label_name(k))
      throw Error("metric " + name + ": invalid label name '" + k + "' (allowed: [a-zA-Z_][a-zA-Z0-9_]*, not starting with __)");
    if (type == Type::Histogram && k == "le") throw Error("metric " + name + ": the label 'le' is reserved for histogram buckets");
  }
  auto it = families_.find(name);
  if (it == families_.end()) {
    Family f{type, help, {}, {}, {}, {}};
    it = families_.emplace(name, std::move(f)).first;
  } else if (it->second.type != type) {
    throw Error("metric " + name + " is already registered as a " + type_name(static_cast<int>(it->second.type)) +
                ", not a " + type_name(static_cast<int>(type)));
  }
  return it->second;
}

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = family(name, help, Type::Counter, labels).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = family(name, help, Type::Gauge, labels).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                               const Labels& labels) {
  bounds = checked_bounds(std::move(bounds));
  std::lock_guard lock(mu_);
  Family& f = family(name, help, Type::Histogram, labels);
  if (f.bounds.empty()) {
    f.bounds = bounds;
  } else if (f.bounds != bounds) {
    throw Error("histogram " + name + " is already registered with other bucket bounds");
  }
  auto& slot = f.histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(std::move(bounds));
  return *slot;
}

std::string Registry::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + ' ' + escape_help(f.help) + '\n';
    out += "# TYPE " + name + ' ' + type_name(static_cast<int>(f.type)) + '\n';
    switch (f.type) {
      case Type::Counter:
        for (const auto& [labels, c] : f.counters)
          out += name + label_text(labels) + ' ' + format_metric_value(c->value()) + '\n';
        break;
      case Type::Gauge:
        for (const auto& [labels, g] : f.gauges)
          out += name + label_text(labels) + ' ' + format_metric_value(g->value()) + '\n';
        break;
      case Type::Histogram:
        for (const auto& [labels, h] : f.histograms) {
          const Histogram::Snapshot s = h->snapshot();
          for (size_t i = 0; i < s.cumulative.size(); ++i) {
            const std::string le = i < h->bounds().size() ? format_metric_value(h->bounds()[i]) : "+Inf";
            out += name + "_bucket" + label_text(labels, &le) + ' ' + std::to_string(s.cumulative[i]) + '\n';
          }
          out += name + "_sum" + label_text(labels) + ' ' + format_metric_value(s.sum) + '\n';
          out += name + "_count" + label_text(labels) + ' ' + std::to_string(s.count) + '\n';
        }
        break;
    }
  }
  return out;
}

}  // namespace lokal::server
