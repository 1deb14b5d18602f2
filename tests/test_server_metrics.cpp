// Prometheus registry: exact text output, escaping, number formats, validation, concurrency.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "server/metrics.h"

using namespace lokal::server;

TEST(ServerMetrics, CounterAndGaugeText) {
  Registry reg;
  reg.counter("lokal_requests_total", "HTTP requests.", {{"route", "/v1/models"}}).inc();
  reg.counter("lokal_requests_total", "HTTP requests.", {{"route", "/health"}}).inc(3);
  Gauge& g = reg.gauge("lokal_slots_busy", "Busy slots.");
  g.set(5);
  g.dec(2);
  g.inc(0.5);
  EXPECT_EQ(reg.render(),
            "# HELP lokal_requests_total HTTP requests.\n"
            "# TYPE lokal_requests_total counter\n"
            "lokal_requests_total{route=\"/health\"} 3\n"
            "lokal_requests_total{route=\"/v1/models\"} 1\n"
            "# HELP lokal_slots_busy Busy slots.\n"
            "# TYPE lokal_slots_busy gauge\n"
            "lokal_slots_busy 3.5\n");
}

TEST(ServerMetrics, HistogramText) {
  Registry reg;
  Histogram& h = reg.histogram("lokal_latency_seconds", "Latency.", {0.1, 1, 10}, {{"route", "chat"}});
  h.observe(0.05);
  h.observe(0.1);  // le is inclusive
  h.observe(2);
  h.observe(100);
  EXPECT_EQ(reg.render(),
            "# HELP lokal_latency_seconds Latency.\n"
            "# TYPE lokal_latency_seconds histogram\n"
            "lokal_latency_seconds_bucket{route=\"chat\",le=\"0.1\"} 2\n"
            "lokal_latency_seconds_bucket{route=\"chat\",le=\"1\"} 2\n"
            "lokal_latency_seconds_bucket{route=\"chat\",le=\"10\"} 3\n"
            "lokal_latency_seconds_bucket{route=\"chat\",le=\"+Inf\"} 4\n"
            "lokal_latency_seconds_sum{route=\"chat\"} 102.15\n"
            "lokal_latency_seconds_count{route=\"chat\"} 4\n");
  // Without labels, and a trailing +Inf bound is accepted.
  Registry r2;
  r2.histogram("h", "x", {1, std::numeric_limits<double>::infinity()}).observe(1);
  EXPECT_EQ(r2.render(),
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n");
}

TEST(ServerMetrics, SameNameAndLabelsSameObject) {
  Registry reg;
  Counter& a = reg.counter("c_total", "c", {{"a", "1"}, {"b", "2"}});
  Counter& b = reg.counter("c_total", "c", {{"b", "2"}, {"a", "1"}});
  Counter& c = reg.counter("c_total", "c", {{"a", "1"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  Histogram& h1 = reg.histogram("h", "h", {1, 2});
  EXPECT_EQ(&h1, &reg.histogram("h", "h", {1, 2}));
  EXPECT_THROW(reg.histogram("h", "h", {1, 3}), lokal::Error);
  EXPECT_THROW(reg.gauge("c_total", "c"), lokal::Error);
  EXPECT_THROW(reg.counter("h", "h"), lokal::Error);
}

TEST(ServerMetrics, LabelAndHelpEscaping) {
  Registry reg;
  reg.gauge("g", "a \\ b\nc \"q\"", {{"path", "a\\b\"c\nd"}}).set(1);
  EXPECT_EQ(reg.render(),
            "# HELP g a \\\\ b\\nc \"q\"\n"
            "# TYPE g gauge\n"
            "g{path=\"a\\\\b\\\"c\\nd\"} 1\n");
  EXPECT_EQ(escape_label_value("plain ü"), "plain ü");
}

TEST(ServerMetrics, NumberFormat) {
  EXPECT_EQ(format_metric_value(0), "0");
  EXPECT_EQ(format_metric_value(-0.0), "0");
  EXPECT_EQ(format_metric_value(42), "42");
  EXPECT_EQ(format_metric_value(-3), "-3");
  EXPECT_EQ(format_metric_value(1e15), "1000000000000000");
  EXPECT_EQ(format_metric_value(0.25), "0.25");
  EXPECT_EQ(format_metric_value(0.1), "0.1");
  EXPECT_EQ(format_metric_value(1e300), "1e+300");
  EXPECT_EQ(format_metric_value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(format_metric_value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(format_metric_value(std::nan("")), "NaN");
  for (double v : {0.1, 1.0 / 3, 123456.789, 2.5e-7, 9007199254740993.0, 1e20})
    EXPECT_EQ(std::stod(format_metric_value(v)), v) << format_metric_value(v);
}

TEST(ServerMetrics, Validation) {
  Registry reg;
  EXPECT_THROW(reg.counter("", "x"), lokal::Error);
  EXPECT_THROW(reg.counter("9abc", "x"), lokal::Error);
  EXPECT_THROW(reg.counter("a-b", "x"), lokal::Error);
  EXPECT_NO_THROW(reg.counter("a:b_c9", "x"));
  EXPECT_NO_THROW(reg.counter("_x", "x"));
  EXPECT_THROW(reg.counter("x", "x", {{"bad-label", "v"}}), lokal::Error);
  EXPECT_THROW(reg.counter("x", "x", {{"__reserved", "v"}}), lokal::Error);
  EXPECT_THROW(reg.counter("x", "x", {{"a:b", "v"}}), lokal::Error);
  EXPECT_THROW(reg.histogram("hh", "x", {1}, {{"le", "1"}}), lokal::Error);
  EXPECT_THROW(reg.histogram("hh", "x", {}), lokal::Error);
  EXPECT_THROW(reg.histogram("hh", "x", {2, 1}), lokal::Error);
  EXPECT_THROW(reg.histogram("hh", "x", {1, 1}), lokal::Error);
  EXPECT_THROW(reg.histogram("hh", "x", {std::nan("")}), lokal::Error);
  try {
    reg.counter("bad name", "x");
    FAIL();
  } catch (const lokal::Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bad name"), std::string::npos);
  }
  // A counter never goes down.
  Counter& c = reg.counter("mono_total", "x");
  c.inc(2);
  c.inc(-1);
  c.inc(std::nan(""));
  EXPECT_EQ(c.value(), 2);
}

TEST(ServerMetrics, Buckets) {
  EXPECT_EQ(exponential_buckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_EQ(linear_buckets(0.5, 0.5, 3), (std::vector<double>{0.5, 1, 1.5}));
  EXPECT_THROW(exponential_buckets(0, 2, 3), lokal::Error);
  EXPECT_THROW(exponential_buckets(1, 1, 3), lokal::Error);
  EXPECT_THROW(exponential_buckets(1, 2, 0), lokal::Error);
  EXPECT_THROW(linear_buckets(0, 0, 3), lokal::Error);
}

TEST(ServerMetrics, ConcurrentUpdatesAndRendering) {
  Registry reg;
  constexpr int kThreads = 4, kIters = 50000;
  std::atomic<bool> stop{false};
  std::thread renderer([&] {
    while (!stop.load()) (void)reg.render();
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      Counter& c = reg.counter("n_total", "n");
      Gauge& g = reg.gauge("g", "g");
      Histogram& h = reg.histogram("h", "h", {10, 100});
      Counter& mine = reg.counter("per_thread_total", "p", {{"t", std::to_string(t)}});
      for (int i = 0; i < kIters; ++i) {
        c.inc();
        g.inc();
        g.dec(0.5);
        h.observe(i % 200);
        mine.inc(0.5);
      }
    });
  for (auto& t : ts) t.join();
  stop = true;
  renderer.join();
  EXPECT_EQ(reg.counter("n_total", "n").value(), kThreads * kIters);
  EXPECT_EQ(reg.gauge("g", "g").value(), kThreads * kIters * 0.5);
  const auto s = reg.histogram("h", "h", {10, 100}).snapshot();
  EXPECT_EQ(s.count, uint64_t(kThreads) * kIters);
  EXPECT_EQ(s.cumulative[0], uint64_t(kThreads) * (kIters / 200) * 11);  // 0..10
  double sum = 0;
  for (int i = 0; i < kIters; ++i) sum += i % 200;
  EXPECT_EQ(s.sum, sum * kThreads);
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(reg.counter("per_thread_total", "p", {{"t", std::to_string(t)}}).value(), kIters * 0.5);
}

// Every line is a comment (# HELP / # TYPE) or `name{labels} value` that Prometheus' parser accepts, and each
// family's HELP and TYPE come once, before its samples.
TEST(ServerMetrics, TextFormatParses) {
  Registry reg;
  reg.counter("a_total", "A.", {{"x", "q\"uo\\te\nd"}, {"y", ""}}).inc(7);
  reg.gauge("b", "B.").set(-0.125);
  reg.gauge("c", "C.").set(std::numeric_limits<double>::infinity());
  reg.gauge("d", "D.").set(std::nan(""));
  Histogram& h = reg.histogram("e_seconds", "E.", exponential_buckets(0.001, 4, 6), {{"m", "x"}});
  for (double v : {0.0005, 0.01, 0.3, 5.0}) h.observe(v);
  const std::string text = reg.render();
  ASSERT_FALSE(text.empty());
  ASSERT_EQ(text.back(), '\n');

  const std::string name = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const std::string label = "[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\\\n]|\\\\[\\\\\"n])*\"";
  const std::string number = "(?:[-+]?(?:[0-9]+(?:\\.[0-9]*)?(?:e[-+]?[0-9]+)?)|\\+Inf|-Inf|NaN)";
  const std::regex sample("^(" + name + ")(?:\\{" + label + "(?:," + label + ")*\\})? " + number + "$");
  const std::regex comment("^# (HELP|TYPE) (" + name + ") (.*)$");
  std::set<std::string> helped, typed;
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  std::string current;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, comment)) {
      auto& seen = m[1] == "HELP" ? helped : typed;
      EXPECT_TRUE(seen.insert(m[2]).second) << "repeated: " << line;
      current = m[2];
      if (m[1] == "TYPE") {
        EXPECT_TRUE(std::regex_match(std::string(m[3]), std::regex("counter|gauge|histogram")));
      }
      continue;
    }
    ASSERT_TRUE(std::regex_match(line, m, sample)) << "bad line: " << line;
    EXPECT_EQ(std::string(m[1]).rfind(current, 0), 0u) << "sample outside its family: " << line;
    ++samples;
  }
  EXPECT_EQ(helped.size(), 5u);
  EXPECT_EQ(typed.size(), 5u);
  EXPECT_EQ(samples, 4 + 7 + 2);
  EXPECT_NE(text.find("c +Inf\n"), std::string::npos);
  EXPECT_NE(text.find("d NaN\n"), std::string::npos);
  EXPECT_NE(text.find("b -0.125\n"), std::string::npos);
}
