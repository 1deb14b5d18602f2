// server/metrics.h - a small Prometheus metrics registry for `lokal serve` (GET /metrics).
//
// Metrics are registered once by name (+ label values) and updated from any thread without locks:
//   Registry reg;
//   Counter& req = reg.counter("lokal_requests_total", "HTTP requests.", {{"route", "/v1/chat/completions"}});
//   req.inc();
//   Histogram& lat = reg.histogram("lokal_request_seconds", "Request latency.", exponential_buckets(0.01, 2, 12));
//   lat.observe(0.25);
//   std::string body = reg.render();   // served with content type kPrometheusContentType
//
// The same name + labels always returns the same object; references stay valid as long as the Registry.
// A family (one name) has one type and one help text (the first registration's); registering a name again
// with another type, or a histogram with other bucket bounds, throws lokal::Error.
// render() writes the text exposition format 0.0.4: families sorted by name, samples by labels.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace lokal::server {

inline constexpr const char* kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

// Label name -> value. Names must match [a-zA-Z_][a-zA-Z0-9_]* and must not start with "__"; values are any
// text (escaped on output). Sorted by name, so {a,b} and {b,a} are the same series.
using Labels = std::map<std::string, std::string>;

// A value that only goes up (requests, tokens). inc() of a negative or NaN amount is ignored.
class Counter {
 public:
  void inc(double v = 1.0) noexcept;
  double value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0.0};
};

// A value that goes up and down (queue depth, active slots, KV pages in use).
class Gauge {
 public:
  void set(double v) noexcept { v_.store(v, std::memory_order_relaxed); }
  void inc(double v = 1.0) noexcept;
  void dec(double v = 1.0) noexcept { inc(-v); }
  double value() const noexcept { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0.0};
};

// Observations counted into buckets by upper bound (le, inclusive), plus a +Inf bucket, a sum and a count.
class Histogram {
 public:
  // `bounds`: finite, strictly increasing upper bounds (a trailing +Inf is accepted and dropped); at least
  // one. Throws lokal::Error otherwise.
  explicit Histogram(std::vector<double> bounds);
  void observe(double v) noexcept;

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // bounds().size() + 1 entries; the last is the +Inf bucket == count
    double sum = 0;
    uint64_t count = 0;
  };
  // A consistent-enough view while other threads observe: count always equals the +Inf bucket; the sum may
  // include an observation the buckets do not yet (or the other way round).
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bucket, not cumulative; bounds_.size() + 1
  std::atomic<double> sum_{0.0};
};

// `count` bounds start, start*factor, start*factor^2, ...; start > 0, factor > 1, count >= 1.
std::vector<double> exponential_buckets(double start, double factor, int count);
// `count` bounds start, start+width, ...; width > 0, count >= 1.
std::vector<double> linear_buckets(double start, double width, int count);

// Prometheus number text: integers that are exact in a double without exponent ("42", "-3"), other values in
// the shortest form that reads back to the same double ("0.25", "1e+300"), "+Inf", "-Inf", "NaN".
std::string format_metric_value(double v);
// A label value escaped for the text format: backslash, double quote and newline as \\, \" and \n.
std::string escape_label_value(const std::string& v);

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Name: [a-zA-Z_:][a-zA-Z0-9_:]*. Throws lokal::Error for a bad name or label name, or a type clash.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // The label "le" is reserved for histograms.
  Histogram& histogram(const std::string& name, const std::string& help, std::vector<double> bounds,
                       const Labels& labels = {});

  // The whole registry in text format 0.0.4 (ends with a newline unless empty). Safe while other threads
  // register and update metrics.
  std::string render() const;

 private:
  enum class Type { Counter, Gauge, Histogram };
  struct Family {
    Type type;
    std::string help;
    std::vector<double> bounds;  // histograms
    std::map<Labels, std::unique_ptr<Counter>> counters;
    std::map<Labels, std::unique_ptr<Gauge>> gauges;
    std::map<Labels, std::unique_ptr<Histogram>> histograms;
  };
  Family& family(const std::string& name, const std::string& help, Type type, const Labels& labels);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

}  // namespace lokal::server
