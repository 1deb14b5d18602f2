// serve_load - a small load generator for OpenAI-/llama-server-compatible servers (lokal serve, llama-server).
//
//   serve_load --url http://127.0.0.1:8080 --clients 8 --requests 64 --n-predict 128 [--json]
//
// Each of --clients threads sends its share of --requests streaming requests, one after another, to llama-server's
// native POST /completion (both servers speak it): a prompt from a fixed list (the same shared instruction and a
// different question per request), `n_predict` tokens with end-of-generation ignored, temperature 0.8 and a per-request
// seed, so every server does the same amount of work. Per request it records the time to the first streamed content
// (TTFT) and the generated tokens (the final chunk's tokens_predicted). It reports aggregate generated tokens/s (all
// tokens / wall time from the first request to the last byte), TTFT p50/p99, and errors (HTTP status, malformed
// stream, missing final chunk). Numbers compare only between runs on the same machine and model (bench/serve_compare.sh
// runs both servers side by side).
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

const char* kQuestions[] = {
    "Tell me a short story about a cat who learns to swim.",
    "Tell me a short story about a dog and a lost red ball.",
    "Tell me a short story about a girl who finds a tiny dragon.",
    "Tell me a short story about a boy who builds a boat.",
    "Tell me a short story about a bird that cannot sing.",
    "Tell me a short story about two friends and a big storm.",
    "Tell me a short story about a mouse in a library.",
    "Tell me a short story about a snowman in summer.",
};

struct Result {
  double ttft = -1, total = 0;
  int64_t tokens = 0;
  bool ok = false;
  std::string error;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(idx);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}

}  // namespace

int main(int argc, char** argv) {
  std::string url = "http://127.0.0.1:8080", key;
  int clients = 4, requests = 32, n_predict = 128;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "serve_load: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--url") url = val();
    else if (a == "--clients") clients = std::atoi(val().c_str());
    else if (a == "--requests") requests = std::atoi(val().c_str());
    else if (a == "--n-predict") n_predict = std::atoi(val().c_str());
    else if (a == "--api-key") key = val();
    else if (a == "--json") as_json = true;
    else {
      std::fprintf(stderr, "usage: serve_load [--url URL] [--clients N] [--requests N] [--n-predict N] [--api-key K] [--json]\n");
      return 2;
    }
  }
  if (clients < 1 || requests < 1 || n_predict < 1) {
    std::fprintf(stderr, "serve_load: --clients, --requests and --n-predict must be >= 1\n");
    return 2;
  }
  const std::string prefix = "You are a storyteller for children. Use simple words and a happy ending.\n\n";

  std::vector<Result> results(static_cast<size_t>(requests));
  std::atomic<int> next{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> th;
  for (int c = 0; c < clients; ++c) {
    th.emplace_back([&] {
      httplib::Client cli(url);
      cli.set_read_timeout(600, 0);
      cli.set_connection_timeout(10, 0);
      httplib::Headers headers;
      if (!key.empty()) headers.emplace("Authorization", "Bearer " + key);
      for (int r = next++; r < requests; r = next++) {
        Result& res = results[static_cast<size_t>(r)];
        const json body = {{"prompt", prefix + kQuestions[r % 8] + "\n"}, {"n_predict", n_predict}, {"stream", true},
                           {"ignore_eos", true}, {"temperature", 0.8}, {"seed", r}, {"cache_prompt", true}};
        httplib::Request req;
        req.method = "POST";
        req.path = "/completion";
        req.headers = headers;
        req.body = body.dump();
        req.set_header("Content-Type", "application/json");
        std::string buf;
        bool final_seen = false, bad = false;
        const auto ts = Clock::now();
        req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
          buf.append(d, n);
          size_t pos;
          while ((pos = buf.find("\n\n")) != std::string::npos) {
            const std::string ev = buf.substr(0, pos);
            buf.erase(0, pos + 2);
            if (ev.empty() || ev[0] == ':') continue;
            if (ev.rfind("data: ", 0) != 0) {
              bad = true;
              continue;
            }
            json j;
            try {
              j = json::parse(ev.substr(6));
            } catch (const json::exception&) {
              bad = true;
              continue;
            }
            if (res.ttft < 0 && j.value("content", "") != "") res.ttft = std::chrono::duration<double>(Clock::now() - ts).count();
            if (j.value("stop", false)) {
              final_seen = true;
              res.tokens = j.value("tokens_predicted", int64_t{0});
            }
          }
          return true;
        };
        httplib::Response hres;
        httplib::Error err = httplib::Error::Success;
        const bool sent = cli.send(req, hres, err);
        res.total = std::chrono::duration<double>(Clock::now() - ts).count();
        if (!sent) res.error = "transport: " + httplib::to_string(err);
        else if (hres.status != 200) res.error = "HTTP " + std::to_string(hres.status);
        else if (bad) res.error = "malformed stream";
        else if (!final_seen) res.error = "no final chunk";
        else res.ok = true;
      }
    });
  }
  for (auto& t : th) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();

  int64_t tokens = 0;
  int errors = 0;
  std::vector<double> ttft, lat;
  std::string first_error;
  for (const Result& r : results) {
    if (!r.ok) {
      ++errors;
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    tokens += r.tokens;
    if (r.ttft >= 0) ttft.push_back(r.ttft);
    lat.push_back(r.total);
  }
  const double tps = wall > 0 ? static_cast<double>(tokens) / wall : 0;
  if (as_json) {
    std::printf("%s\n", json{{"url", url}, {"clients", clients}, {"requests", requests}, {"n_predict", n_predict},
                             {"errors", errors}, {"first_error", first_error}, {"generated_tokens", tokens},
                             {"wall_s", wall}, {"tokens_per_s", tps}, {"ttft_p50_ms", pct(ttft, 0.5) * 1e3},
                             {"ttft_p99_ms", pct(ttft, 0.99) * 1e3}, {"latency_p50_s", pct(lat, 0.5)}}
                            .dump()
                            .c_str());
  } else {
    std::printf("%s: %d clients, %d requests x %d tokens: %.1f generated tokens/s, TTFT p50 %.1f ms p99 %.1f ms, %d errors%s%s\n",
                url.c_str(), clients, requests, n_predict, tps, pct(ttft, 0.5) * 1e3, pct(ttft, 0.99) * 1e3, errors,
                errors ? ", first: " : "", first_error.c_str());
  }
  return errors == 0 ? 0 : 1;
}
