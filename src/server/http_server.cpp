#include "server/http_server.h"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <httplib.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <random>
#include <thread>

#include "chat/chat_parse.h"
#include "core/error.h"
#include "core/log.h"
#include "model/config.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/router.h"
#include "server/requests.h"
#include "server/webui.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace lokal::server {

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kVersion = "0.1.0";

enum class Style { OpenAI, Ollama };        // error shape
enum class Scope { Open, Inference, Admin };

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }

std::string iso_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  char out[96];
  std::snprintf(out, sizeof out, "%s.%06lldZ", buf, static_cast<long long>(us));
  return out;
}

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count()));
  static const char* hex = "0123456789abcdef";
  std::string s(n, '0');
  for (char& c : s) c = hex[rng() & 15];
  return s;
}

uint64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

const char* openai_type(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "unavailable_error";
    default: return "server_error";
  }
}

// Deterministic failures: the same request would fail again, so clients must not retry (OpenAI's SDKs read this).
bool deterministic(int status) { return status == 400 || status == 401 || status == 403 || status == 404 || status == 413; }

json error_json(Style style, int status, const std::string& message, const std::string& param, const std::string& code) {
  if (style == Style::Ollama) return json{{"error", message}};
  return json{{"error", {{"message", message}, {"type", openai_type(status)}, {"param", param.empty() ? json(nullptr) : json(param)},
                         {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

std::string finish_name(FinishReason f, bool tool_calls) {
  switch (f) {
    case FinishReason::EndOfGeneration:
    case FinishReason::StopString: return tool_calls ? "tool_calls" : "stop";
    default: return "length";
  }
}

json usage_json(const GenResult& r) {
  const int64_t n_gen = static_cast<int64_t>(r.tokens.size());
  return {{"prompt_tokens", r.n_prompt},
          {"completion_tokens", n_gen},
          {"total_tokens", r.n_prompt + n_gen},
          {"prompt_tokens_details", {{"cached_tokens", r.n_reused}}}};
}

json timings_json(const GenResult& r) {
  const double pn = static_cast<double>(std::max<int64_t>(1, r.n_prompt - r.n_reused));
  const double gn = static_cast<double>(r.tokens.size());
  const double pms = r.prompt_seconds * 1e3, gms = r.gen_seconds * 1e3;
  json t = {{"prompt_n", r.n_prompt - r.n_reused},
          {"prompt_ms", pms},
          {"prompt_per_token_ms", pms / pn},
          {"prompt_per_second", pms > 0 ? pn * 1e3 / pms : 0.0},
          {"predicted_n", r.tokens.size()},
          {"predicted_ms", gms},
          {"predicted_per_token_ms", gn > 1 ? gms / (gn - 1) : 0.0},
          {"predicted_per_second", r.gen_tps()},
          {"cache_n", r.n_reused}};
  if (r.spec.passes + r.spec.plain_passes > 0) {
    // llama-server's names, then lokal's details.
    t["draft_n"] = r.spec.drafted;
    t["draft_n_accepted"] = r.spec.accepted;
    t["draft_acceptance"] = r.spec.acceptance();
    t["draft_tokens_per_pass"] = r.spec.tokens_per_pass();
    t["draft_ms"] = r.spec.draft_seconds * 1e3;
    t["verify_ms"] = r.spec.verify_seconds * 1e3;
  }
  return t;
}

json bytes_json(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(c);
  return b;
}

// Token pieces may be parts of a UTF-8 character; JSON output must be valid UTF-8: each maximal ill-formed subpart
// (and an incomplete character at the end) becomes U+FFFD, as the tokenizer's StreamDecoder does.
std::string valid_utf8_or_replaced(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t bad = 1;
    const int n = unicode::utf8_sequence_length(std::string_view(s).substr(i), &bad);
    if (n > 0) {
      out.append(s, i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";
      i += n < 0 ? s.size() - i : std::max<size_t>(1, bad);
    }
  }
  return out;
}

json tool_calls_json(const std::vector<ToolCall>& calls, bool object_args) {
  json out = json::array();
  for (const ToolCall& c : calls) {
    json args = c.arguments;
    if (object_args) {
      try {
        args = json::parse(c.arguments);
      } catch (const json::exception&) {
      }
    }
    if (object_args) out.push_back({{"function", {{"name", c.name}, {"arguments", args}}}});
    else out.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", args}}}});
  }
  return out;
}

}  // namespace

bool is_loopback_host(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  in_addr a{};
  if (inet_pton(AF_INET, host.c_str(), &a) == 1) return (ntohl(a.s_addr) >> 24) == 127;
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
struct HttpServer::Impl {
  Router& router;
  ServerOptions opt;
  std::unique_ptr<httplib::Server> srv;
  std::unique_ptr<Authenticator> auth;
  std::unique_ptr<WebUi> webui;  // the web chat page (null with --no-webui)
  RateLimiter limiter;
  Registry reg;
  std::vector<std::string> warnings;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> active_streams{0};
  std::mutex log_mu;
  int port = 0;

  // Metrics (llama-server's names under llamacpp:, plus lokal's).
  Counter& m_prompt_tokens;
  Counter& m_gen_tokens;
  Counter& m_requests;
  Counter& m_errors;
  Histogram& m_ttft;
  Histogram& m_tpot;
  Histogram& m_duration;

  Impl(Router& r, ServerOptions o)
      : router(r),
        opt(std::move(o)),
        limiter(opt.limits),
        m_prompt_tokens(reg.counter("llamacpp:prompt_tokens_total", "Number of prompt tokens processed.")),
        m_gen_tokens(reg.counter("llamacpp:tokens_predicted_total", "Number of generation tokens processed.")),
        m_requests(reg.counter("lokal_requests_total", "HTTP requests answered.")),
        m_errors(reg.counter("lokal_request_errors_total", "HTTP requests answered with a status >= 400.")),
        m_ttft(reg.histogram("lokal_time_to_first_token_seconds", "Time from arrival to the first generated token.",
                             exponential_buckets(0.005, 2, 16))),
        m_tpot(reg.histogram("lokal_time_per_output_token_seconds", "Mean time per generated token after the first, per request.",
                             exponential_buckets(0.0005, 2, 16))),
        m_duration(reg.histogram("lokal_request_duration_seconds", "Generation requests from arrival to the last byte.",
                                 exponential_buckets(0.01, 2, 16))) {}

  void log_line(const json& j) {
    if (!opt.access_log) return;
    std::lock_guard<std::mutex> lk(log_mu);
    std::fprintf(stderr, "%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  }

  // ---- plumbing -------------------------------------------------------------------------------------------------
  struct Ctx {
    std::string request_id;
    Principal who;
    Style style = Style::OpenAI;
    Clock::time_point t0 = Clock::now();
    int64_t prompt_tokens = 0, gen_tokens = 0, cached_tokens = 0;
    std::shared_ptr<Router::Lease> lease;  // held while the request uses the model (a stream: until its last byte)
    Engine* eng = nullptr;                 // the lease's engine
    json body;                             // a POST's parsed body (routes that pick a model)
    std::optional<Residency::Duration> keep_alive;  // the body's keep_alive, parsed
  };

  void send_error(httplib::Response& res, const Ctx& c, int status, const std::string& message, const std::string& param = {},
                  const std::string& code = {}) {
    res.status = status;
    res.set_content(error_json(c.style, status, message, param, code).dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
    if (deterministic(status)) res.set_header("x-should-retry", "false");
  }

  void send_json(httplib::Response& res, const json& j, int status = 200) {
    res.status = status;
    res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
  }

  void cors(const httplib::Request& req, httplib::Response& res) {
    if (!req.has_header("Origin") || opt.cors_origins.empty()) return;
    const std::string origin = req.get_header_value("Origin");
    for (const std::string& o : opt.cors_origins)
      if (o == "*" || o == origin) {
        res.set_header("Access-Control-Allow-Origin", o == "*" ? "*" : origin);
        res.set_header("Vary", "Origin");
        res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, x-api-key");
        res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        res.set_header("Access-Control-Expose-Headers", "x-request-id, Retry-After");
        return;
      }
  }

  using Handler = std::function<void(const httplib::Request&, httplib::Response&, Ctx&)>;

  // What a route needs: nothing, its JSON body parsed (c.body), any model (tokenize, show, props), or a model that does the endpoint's task.
  enum class Needs { Nothing, Body, AnyModel, Chat, Completion, Embedding };
  static std::optional<Task> task_of(Needs n) {
    switch (n) {
      case Needs::Chat: return Task::Chat;
      case Needs::Completion: return Task::Completion;
      case Needs::Embedding: return Task::Embedding;
      default: return std::nullopt;
    }
  }

  // Wraps a handler: request id, CORS, authentication and scope, rate limit, readiness, errors, access log.
  httplib::Server::Handler wrap(const std::string& path, Scope scope, Style style, Needs needs, bool generation, Handler h) {
    return [this, path, scope, style, needs, generation, h](const httplib::Request& req, httplib::Response& res) {
      Ctx c;
      c.style = style;
      c.request_id = req.has_header("x-request-id") && req.get_header_value("x-request-id").size() <= 64
                         ? req.get_header_value("x-request-id")
                         : "req_" + random_hex(24);
      res.set_header("x-request-id", c.request_id);
      cors(req, res);
      try {
        if (scope != Scope::Open) {
          const auto r = auth->authenticate(req.get_header_value("Authorization"), req.get_header_value("x-api-key"));
          if (r.status != Authenticator::Status::Ok) {
            res.set_header("WWW-Authenticate", "Bearer");
            throw ApiError(401, r.message.empty() ? "a valid API key is required (Authorization: Bearer KEY)" : r.message, "", "invalid_api_key");
          }
          c.who = r.who;
          if ((scope == Scope::Inference && !c.who.inference) || (scope == Scope::Admin && !c.who.admin))
            throw ApiError(403, std::string("this key may not call ") + path + " (it needs the " +
                                    (scope == Scope::Admin ? "admin" : "inference") + " scope)", "", "insufficient_scope");
        } else {
          c.who.subject = "anonymous";
        }
        if (!auth->enabled()) c.who.subject = "ip:" + req.remote_addr;
        if (generation && (opt.limits.requests_per_minute > 0 || opt.limits.tokens_per_minute > 0)) {
          const int64_t wait = limiter.admit(c.who.subject);
          if (wait > 0) {
            res.set_header("Retry-After", std::to_string(wait));
            throw ApiError(429, "rate limit reached for " + c.who.subject + ": retry in " + std::to_string(wait) + " s", "", "rate_limit_exceeded");
          }
        }
        if (needs != Needs::Nothing) {
          if (draining.load()) {
            res.set_header("Retry-After", "5");
            throw ApiError(503, "the server is shutting down", "", "shutting_down");
          }
          if (req.method == "POST") c.body = parse_body(req.body);
          if (needs != Needs::Body) lease_model(req, res, c, task_of(needs));
        }
        h(req, res, c);
      } catch (const ApiError& e) {
        if (!res.is_chunked_content_provider_) c.lease.reset();
        if (e.retry_after > 0) res.set_header("Retry-After", std::to_string(e.retry_after));
        send_error(res, c, e.status, e.what(), e.param, e.code);
      } catch (const std::exception& e) {
        send_error(res, c, 500, std::string("internal error: ") + e.what(), "", "internal_error");
      }
      m_requests.inc();
      if (res.status >= 400) m_errors.inc();
      if (generation && c.gen_tokens > 0) limiter.add_tokens(c.who.subject, c.gen_tokens);
      // Streams log when they end (their handler returns before the body is written).
      if (!res.is_chunked_content_provider_) access_log(req, res.status, c);
    };
  }

  // The request's model, loaded and held in c.lease: the body's "model" (Ollama's show: "name") or ?model= on a GET,
  // resolved with the endpoint's task; the body's keep_alive applies from this request on.
  void lease_model(const httplib::Request& req, httplib::Response& res, Ctx& c, std::optional<Task> task) {
    std::string model = req.get_param_value("model");
    if (c.body.is_object()) {
      for (const char* k : {"model", "name"})
        if (c.body.contains(k) && c.body[k].is_string()) {
          model = c.body[k].get<std::string>();
          break;
        }
      if (c.body.contains("keep_alive") && !c.body["keep_alive"].is_null()) {
        const json& ka = c.body["keep_alive"];
        if (!ka.is_string() && !ka.is_number())
          throw ApiError(400, "keep_alive must be a duration string or a number of seconds", "keep_alive");
        try {
          c.keep_alive = parse_keep_alive(ka.is_string() ? ka.get<std::string>() : ka.dump());
        } catch (const Error& e) {
          throw ApiError(400, e.what(), "keep_alive");
        }
      }
    }
    c.lease = router.acquire(router.resolve(model, task));  // loads it when needed; a reload waits for this request
    if (c.keep_alive) c.lease->set_keep_alive(*c.keep_alive);
    c.eng = &c.lease->engine();
    if (c.eng->state() == Engine::State::Loading) {
      res.set_header("Retry-After", "2");
      throw ApiError(503, "the model is reloading", "", "model_loading");
    }
    if (c.eng->state() == Engine::State::Failed)
      throw ApiError(500, "the model failed to load: " + c.eng->error(), "", "model_load_failed");
  }

  void access_log(const httplib::Request& req, int status, const Ctx& c) {
    json j = {{"time", iso_now()}, {"request_id", c.request_id}, {"method", req.method}, {"path", req.path},
              {"status", status}, {"subject", c.who.subject}, {"remote", req.remote_addr},
              {"ms", std::chrono::duration<double, std::milli>(Clock::now() - c.t0).count()}};
    if (c.prompt_tokens || c.gen_tokens) {
      j["prompt_tokens"] = c.prompt_tokens;
      j["cached_tokens"] = c.cached_tokens;
      j["completion_tokens"] = c.gen_tokens;
    }
    log_line(j);
  }

  void add(const std::string& method, const std::string& path, Scope scope, Style style, Needs needs, bool generation,
           Handler h) {
    auto w = wrap(path, scope, style, needs, generation, std::move(h));
    if (method == "GET") srv->Get(path, w);
    else srv->Post(path, w);
  }

  // A 503 for a full queue, with a Retry-After from the running requests' average duration so far (at least 1 s).
  ApiError busy(const Engine& eng, ApiError e) {
    const auto& t = eng.totals();
    const double per = t.requests.load() > 0
                           ? static_cast<double>(t.prompt_ns.load() + t.gen_ns.load()) / 1e9 / static_cast<double>(t.requests.load())
                           : 1.0;
    e.retry_after = std::max(1, static_cast<int>(std::ceil(per)));
    return e;
  }

  // ---- generation -----------------------------------------------------------------------------------------------
  // One generation request: prepared, submitted, and turned into the API's response (whole or streamed).
  struct Gen {
    Impl* self = nullptr;
    TextRequest req;
    Prepared prep;
    std::shared_ptr<Job> job;
    std::unique_ptr<ChatOutputParser> parser;
    std::string id;
    int64_t created = 0;
    Clock::time_point t0;
    std::string model;
    Engine* eng = nullptr;             // the model it runs on (ctx.lease holds it)
    // Accumulated for the whole response.
    std::string text;                  // raw generated text (completions) / content (chat)
    bool sent_role = false, finished = false, timed_out = false, logged = false;
    Ctx ctx;
    std::string method, path, remote;  // for the access-log line a stream writes when it ends

    bool over_time() const {
      return std::chrono::duration<double>(Clock::now() - t0).count() > self->opt.request_timeout_s;
    }
  };

  std::shared_ptr<Gen> start(TextRequest&& r, const Ctx& c, const httplib::Request& hreq) {
    auto g = std::make_shared<Gen>();
    g->self = this;
    g->req = std::move(r);
    g->t0 = c.t0;
    g->ctx = c;
    g->method = hreq.method;
    g->path = hreq.path;
    g->remote = hreq.remote_addr;
    Engine& eng = *c.eng;
    g->eng = &eng;
    g->model = eng.model_id();
    g->created = unix_now();
    g->prep = prepare(eng, g->req);
    const SchedulerOptions& so = eng.scheduler().options();
    if (eng.in_flight() >= so.n_parallel + opt.queue_size) {
      throw busy(eng, ApiError(503, "the server is busy: " + std::to_string(eng.in_flight()) + " requests running or queued (-np " +
                              std::to_string(so.n_parallel) + " + --queue-size " + std::to_string(opt.queue_size) + ")",
                     "", "queue_full"));
    }
    GenRequest gr;
    gr.prompt = g->prep.prompt;
    gr.sampling = g->prep.sampling;
    gr.max_tokens = g->req.max_tokens;
    gr.stop = g->req.stop;
    gr.draft_max = g->req.draft_max;
    if (g->prep.parse_output) g->parser = std::make_unique<ChatOutputParser>(g->prep.parse);
    g->job = eng.submit(std::move(gr), g->req.logprobs ? g->req.top_logprobs : -1);
    switch (g->req.api) {
      case Api::OpenAIChat: g->id = "chatcmpl-" + random_hex(24); break;
      case Api::OpenAICompletion: g->id = "cmpl-" + random_hex(24); break;
      default: g->id = random_hex(16); break;
    }
    return g;
  }

  // Waits for the next piece; returns true when the job ended. Cancels it past the request timeout.
  bool next(Gen& g, std::string& text, std::vector<TokenLogprob>& lps, std::chrono::milliseconds wait) {
    const bool done = g.job->wait(text, lps, wait);
    if (!done && g.over_time() && !g.timed_out) {
      g.timed_out = true;
      g.eng->cancel(*g.job);
    }
    return done;
  }

  json logprobs_openai_chat(const Vocab& v, const std::vector<TokenLogprob>& lps) {
    json content = json::array();
    for (const TokenLogprob& t : lps) {
      const std::string piece = v.token_to_piece(t.token);
      json top = json::array();
      for (const auto& [id, lp] : t.top) {
        const std::string p = v.token_to_piece(id);
        top.push_back({{"token", valid_utf8_or_replaced(p)}, {"logprob", lp}, {"bytes", bytes_json(p)}});
      }
      content.push_back({{"token", valid_utf8_or_replaced(piece)}, {"logprob", t.logprob}, {"bytes", bytes_json(piece)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }

  json logprobs_openai_completion(const Vocab& v, const std::vector<TokenLogprob>& lps, size_t offset0) {
    json tokens = json::array(), token_lps = json::array(), top = json::array(), offsets = json::array();
    size_t off = offset0;
    for (const TokenLogprob& t : lps) {
      const std::string piece = v.token_to_piece(t.token);
      tokens.push_back(valid_utf8_or_replaced(piece));
      token_lps.push_back(t.logprob);
      json m = json::object();
      for (const auto& [id, lp] : t.top) m[valid_utf8_or_replaced(v.token_to_piece(id))] = lp;
      top.push_back(m);
      offsets.push_back(off);
      off += piece.size();
    }
    return {{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", top}, {"text_offset", offsets}};
  }

  json logprobs_llama(const Vocab& v, const std::vector<TokenLogprob>& lps) {
    json out = json::array();
    for (const TokenLogprob& t : lps) {
      const std::string piece = v.token_to_piece(t.token);
      json top = json::array();
      for (const auto& [id, lp] : t.top) {
        const std::string p = v.token_to_piece(id);
        top.push_back({{"id", id}, {"token", valid_utf8_or_replaced(p)}, {"logprob", lp}, {"bytes", bytes_json(p)}});
      }
      out.push_back({{"id", t.token}, {"token", valid_utf8_or_replaced(piece)}, {"logprob", t.logprob}, {"bytes", bytes_json(piece)}, {"top_logprobs", top}});
    }
    return out;
  }

  // The events of one piece of text, per API (streaming). `final`: the job ended; append the closing events.
  std::vector<json> events(Gen& g, const std::string& piece, const std::vector<TokenLogprob>& lps, bool final) {
    std::vector<json> out;
    ChatDelta d;
    if (g.parser) {
      if (!piece.empty()) d = g.parser->push(piece);
      if (final) {
        ChatDelta f = g.parser->finish();
        d.content += f.content;
        d.reasoning_content += f.reasoning_content;
        for (auto& t : f.tool_calls) d.tool_calls.push_back(std::move(t));
      }
    }
    const GenResult* r = final ? &g.job->result() : nullptr;
    switch (g.req.api) {
      case Api::OpenAIChat: {
        auto chunk = [&](json delta, json finish, json logprobs) {
          return json{{"id", g.id}, {"object", "chat.completion.chunk"}, {"created", g.created}, {"model", g.model},
                      {"system_fingerprint", "lokal"},
                      {"choices", json::array({{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish)}}})}};
        };
        if (!g.sent_role) {
          out.push_back(chunk({{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
          g.sent_role = true;
        }
        json lp = g.req.logprobs && !lps.empty() ? logprobs_openai_chat(g.eng->model().vocab(), lps) : json(nullptr);
        if (!d.reasoning_content.empty()) out.push_back(chunk({{"reasoning_content", d.reasoning_content}}, nullptr, nullptr));
        if (!d.content.empty() || !lp.is_null()) {
          out.push_back(chunk({{"content", d.content}}, nullptr, lp));
        }
        for (const auto& t : d.tool_calls) {
          json tc = {{"index", t.index}};
          if (!t.id.empty()) tc["id"] = t.id;
          tc["type"] = "function";
          json fn = json::object();
          if (!t.name.empty()) fn["name"] = t.name;
          fn["arguments"] = t.arguments_part;
          tc["function"] = fn;
          out.push_back(chunk({{"tool_calls", json::array({tc})}}, nullptr, nullptr));
        }
        if (final) {
          const bool calls = g.parser && !g.parser->message().tool_calls.empty();
          json last = chunk(json::object(), finish_name(r->finish, calls), nullptr);
          last["timings"] = timings_json(*r);  // as llama-server does: the web page shows speed and context from it
          out.push_back(std::move(last));
          if (g.req.include_usage)
            out.push_back({{"id", g.id}, {"object", "chat.completion.chunk"}, {"created", g.created}, {"model", g.model},
                           {"system_fingerprint", "lokal"}, {"choices", json::array()}, {"usage", usage_json(*r)}});
        }
        break;
      }
      case Api::OpenAICompletion: {
        const size_t off = g.text.size();
        g.text += piece;
        if (!piece.empty() || final) {
          json c = {{"id", g.id}, {"object", "text_completion"}, {"created", g.created}, {"model", g.model},
                    {"system_fingerprint", "lokal"},
                    {"choices", json::array({{{"text", piece}, {"index", 0},
                                             {"logprobs", g.req.logprobs ? logprobs_openai_completion(g.eng->model().vocab(), lps, off) : json(nullptr)},
                                             {"finish_reason", final ? json(finish_name(r->finish, false)) : json(nullptr)}}})}};
          out.push_back(c);
        }
        if (final && g.req.include_usage)
          out.push_back({{"id", g.id}, {"object", "text_completion"}, {"created", g.created}, {"model", g.model},
                         {"choices", json::array()}, {"usage", usage_json(*r)}});
        break;
      }
      case Api::LlamaCompletion: {
        g.text += piece;
        if (!piece.empty() && !final) {
          json c = {{"content", piece}, {"stop", false}, {"id_slot", -1}, {"index", 0}};
          if (g.req.logprobs) c["completion_probabilities"] = logprobs_llama(g.eng->model().vocab(), lps);
          out.push_back(c);
        } else if (final) {
          json c = llama_final(g, *r, piece);
          if (g.req.logprobs) c["completion_probabilities"] = logprobs_llama(g.eng->model().vocab(), lps);
          out.push_back(c);
        }
        break;
      }
      case Api::OllamaChat:
      case Api::OllamaGenerate: {
        const bool chat_api = g.req.api == Api::OllamaChat;
        std::string content = g.parser ? d.content : piece;
        if (!content.empty() || !d.reasoning_content.empty() || !d.tool_calls.empty()) {
          json j = {{"model", g.model}, {"created_at", iso_now()}};
          if (chat_api) {
            json msg = {{"role", "assistant"}, {"content", content}};
            if (!d.reasoning_content.empty()) msg["thinking"] = d.reasoning_content;
            if (!d.tool_calls.empty()) {
              std::vector<ToolCall> calls;
              for (const auto& t : d.tool_calls) calls.push_back({t.id, t.name, t.arguments_part});
              msg["tool_calls"] = tool_calls_json(calls, true);
            }
            j["message"] = msg;
          } else {
            j["response"] = content;
            if (!d.reasoning_content.empty()) j["thinking"] = d.reasoning_content;
          }
          j["done"] = false;
          out.push_back(j);
        }
        if (final) out.push_back(ollama_final(g, *r, "", true));
        break;
      }
    }
    return out;
  }

  json llama_final(const Gen& g, const GenResult& r, const std::string& last_piece) {
    const char* stop_type = r.finish == FinishReason::EndOfGeneration ? "eos"
                            : r.finish == FinishReason::StopString    ? "word"
                                                                      : "limit";
    const SamplingParams& sp = g.prep.sampling;
    return {{"content", last_piece},
            {"stop", true},
            {"id_slot", -1},
            {"index", 0},
            {"model", g.model},
            {"tokens_predicted", r.tokens.size()},
            {"tokens_evaluated", r.n_prompt},
            {"tokens_cached", r.n_reused},
            {"generation_settings", {{"n_ctx", g.eng->n_ctx()}, {"temperature", sp.temperature}, {"top_k", sp.top_k},
                                     {"top_p", sp.top_p}, {"min_p", sp.min_p}, {"repeat_penalty", sp.repeat_penalty},
                                     {"repeat_last_n", sp.repeat_last_n}, {"presence_penalty", sp.presence_penalty},
                                     {"frequency_penalty", sp.frequency_penalty}, {"seed", sp.seed},
                                     {"n_predict", g.req.max_tokens}, {"stop", g.req.stop}}},
            {"prompt", g.prep.prompt_text},
            {"has_new_line", g.text.find('\n') != std::string::npos},
            {"truncated", false},
            {"stop_type", stop_type},
            {"stopping_word", ""},
            {"timings", timings_json(r)}};
  }

  json ollama_final(const Gen& g, const GenResult& r, const std::string& content, bool stream) {
    const auto ns = [](double s) { return static_cast<int64_t>(s * 1e9); };
    json j = {{"model", g.model}, {"created_at", iso_now()}};
    if (g.req.api == Api::OllamaChat) {
      json msg = {{"role", "assistant"}, {"content", stream ? "" : content}};
      if (!stream && g.parser) {
        const ParsedMessage& m = g.parser->message();
        if (!m.reasoning_content.empty()) msg["thinking"] = m.reasoning_content;
        if (!m.tool_calls.empty()) msg["tool_calls"] = tool_calls_json(m.tool_calls, true);
      }
      j["message"] = msg;
    } else {
      j["response"] = stream ? "" : content;
      if (!stream && g.parser && !g.parser->message().reasoning_content.empty()) j["thinking"] = g.parser->message().reasoning_content;
    }
    j["done"] = true;
    j["done_reason"] = r.finish == FinishReason::EndOfGeneration || r.finish == FinishReason::StopString ? "stop" : "length";
    j["total_duration"] = ns(std::chrono::duration<double>(Clock::now() - g.t0).count());
    j["load_duration"] = 0;
    j["prompt_eval_count"] = r.n_prompt;
    j["prompt_eval_duration"] = ns(r.prompt_seconds);
    j["eval_count"] = r.tokens.size();
    j["eval_duration"] = ns(r.gen_seconds);
    return j;
  }

  // The whole (non-streamed) response.
  json whole(Gen& g) {
    std::string raw;
    std::vector<TokenLogprob> lps;
    while (!next(g, raw, lps, std::chrono::milliseconds(500))) {
    }
    const GenResult& r = g.job->result();
    if (r.finish == FinishReason::Error) throw ApiError(500, "generation failed: " + r.error, "", "generation_error");
    ParsedMessage msg;
    if (g.parser) {
      g.parser->push(raw);
      g.parser->finish();
      msg = g.parser->message();
    }
    note_result(g, r);
    switch (g.req.api) {
      case Api::OpenAIChat: {
        json m = {{"role", "assistant"}, {"content", msg.content}};
        if (!msg.reasoning_content.empty()) m["reasoning_content"] = msg.reasoning_content;
        if (!msg.tool_calls.empty()) {
          m["tool_calls"] = tool_calls_json(msg.tool_calls, false);
          if (msg.content.empty()) m["content"] = nullptr;
        }
        return {{"id", g.id}, {"object", "chat.completion"}, {"created", g.created}, {"model", g.model},
                {"system_fingerprint", "lokal"},
                {"choices", json::array({{{"index", 0}, {"message", m},
                                         {"logprobs", g.req.logprobs ? logprobs_openai_chat(g.eng->model().vocab(), lps) : json(nullptr)},
                                         {"finish_reason", finish_name(r.finish, !msg.tool_calls.empty())}}})},
                {"usage", usage_json(r)},
                {"timings", timings_json(r)}};
      }
      case Api::OpenAICompletion:
        return {{"id", g.id}, {"object", "text_completion"}, {"created", g.created}, {"model", g.model},
                {"system_fingerprint", "lokal"},
                {"choices", json::array({{{"text", raw}, {"index", 0},
                                         {"logprobs", g.req.logprobs ? logprobs_openai_completion(g.eng->model().vocab(), lps, 0) : json(nullptr)},
                                         {"finish_reason", finish_name(r.finish, false)}}})},
                {"usage", usage_json(r)}};
      case Api::LlamaCompletion: {
        g.text = raw;
        json j = llama_final(g, r, raw);
        if (g.req.logprobs) j["completion_probabilities"] = logprobs_llama(g.eng->model().vocab(), lps);
        return j;
      }
      case Api::OllamaChat:
      case Api::OllamaGenerate:
        return ollama_final(g, r, g.parser ? msg.content : raw, false);
    }
    return {};
  }

  void note_result(Gen& g, const GenResult& r) {
    g.ctx.prompt_tokens = r.n_prompt;
    g.ctx.cached_tokens = r.n_reused;
    g.ctx.gen_tokens = static_cast<int64_t>(r.tokens.size());
    m_prompt_tokens.inc(static_cast<double>(r.n_prompt - r.n_reused));
    m_gen_tokens.inc(static_cast<double>(r.tokens.size()));
    if (!r.tokens.empty()) m_ttft.observe(r.queue_seconds + r.prompt_seconds);
    if (r.tokens.size() > 1) m_tpot.observe(r.gen_seconds / static_cast<double>(r.tokens.size() - 1));
    m_duration.observe(std::chrono::duration<double>(Clock::now() - g.t0).count());
  }

  // Serves a generation request, whole or streamed.
  void generate(TextRequest&& tr, const httplib::Request& req, httplib::Response& res, Ctx& c) {
    const bool stream = tr.stream;
    auto g = start(std::move(tr), c, req);
    if (!stream) {
      json body;
      try {
        body = whole(*g);
      } catch (...) {
        c = g->ctx;
        throw;
      }
      c = g->ctx;
      send_json(res, body);
      return;
    }
    const bool sse = g->req.api != Api::OllamaChat && g->req.api != Api::OllamaGenerate;
    ++active_streams;
    res.set_header("Cache-Control", "no-cache");
    if (sse) res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        sse ? "text/event-stream" : "application/x-ndjson",
        [this, g, sse](size_t, httplib::DataSink& sink) { return pump(*g, sink, sse); },
        [this, g](bool) {
          if (!g->job->done()) {
            g->eng->cancel(*g->job);  // the client went away: free its sequence now
            // The cancel lands at the scheduler's next step: wait briefly so the tokens made so far are counted.
            std::string rest;
            std::vector<TokenLogprob> lps;
            for (int i = 0; i < 20 && !g->job->wait(rest, lps, std::chrono::milliseconds(50));) ++i;
            if (g->job->done()) note_result(*g, g->job->result());
          }
          --active_streams;
          if (g->ctx.gen_tokens > 0) limiter.add_tokens(g->ctx.who.subject, g->ctx.gen_tokens);
          if (!g->logged) {
            g->logged = true;
            httplib::Request r;
            r.method = g->method;
            r.path = g->path;
            r.remote_addr = g->remote;
            access_log(r, 200, g->ctx);
          }
        });
  }

  bool write(httplib::DataSink& sink, const std::string& s) { return sink.write(s.data(), s.size()); }

  std::string frame(const json& j, bool sse) {
    const std::string body = j.dump(-1, ' ', false, json::error_handler_t::replace);
    return sse ? "data: " + body + "\n\n" : body + "\n";
  }

  // Called repeatedly by cpp-httplib until sink.done(); returning false drops the connection.
  bool pump(Gen& g, httplib::DataSink& sink, bool sse) {
    if (g.finished) {
      sink.done();
      return true;
    }
    std::string piece;
    std::vector<TokenLogprob> lps;
    const bool done = next(g, piece, lps, std::chrono::milliseconds(1000));
    if (!done && piece.empty() && lps.empty()) {
      // A long prompt: keep the connection visibly alive (SSE comments are ignored by clients).
      if (sse && !g.job->started()) return write(sink, ": ping\n\n");
      return sink.is_writable();
    }
    if (done && g.job->result().finish == FinishReason::Error) {
      const std::string msg = "generation failed: " + g.job->result().error;
      g.finished = true;
      const json e = g.req.api == Api::OllamaChat || g.req.api == Api::OllamaGenerate
                         ? json{{"error", msg}}
                         : error_json(Style::OpenAI, 500, msg, "", "generation_error");
      if (!write(sink, frame(e, sse))) return false;
      sink.done();
      return true;
    }
    std::string out;
    for (const json& e : events(g, piece, lps, done)) out += frame(e, sse);
    if (done) {
      note_result(g, g.job->result());
      if (sse && g.req.api != Api::LlamaCompletion) out += "data: [DONE]\n\n";
      g.finished = true;
    }
    if (!out.empty() && !write(sink, out)) return false;
    if (done) sink.done();
    return true;
  }

  // ---- embeddings -----------------------------------------------------------------------------------------------
  static std::string base64_floats(const std::vector<float>& v) {
    static const char* tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string bytes(v.size() * sizeof(float), '\0');
    std::memcpy(bytes.data(), v.data(), bytes.size());  // little-endian float32 (x86-64, arm64)
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    for (size_t i = 0; i < bytes.size(); i += 3) {
      const uint32_t b0 = static_cast<unsigned char>(bytes[i]);
      const uint32_t b1 = i + 1 < bytes.size() ? static_cast<unsigned char>(bytes[i + 1]) : 0;
      const uint32_t b2 = i + 2 < bytes.size() ? static_cast<unsigned char>(bytes[i + 2]) : 0;
      const uint32_t w = (b0 << 16) | (b1 << 8) | b2;
      out += tab[(w >> 18) & 63];
      out += tab[(w >> 12) & 63];
      out += i + 1 < bytes.size() ? tab[(w >> 6) & 63] : '=';
      out += i + 2 < bytes.size() ? tab[w & 63] : '=';
    }
    return out;
  }

  void embed(EmbedRequest&& er, httplib::Response& res, Ctx& c) {
    Engine& eng = *c.eng;  // the router checked the name
    const Vocab& v = eng.model().vocab();
    const int64_t n_embd = eng.model().config().n_embd, n_ctx = eng.n_ctx();
    if (er.dimensions != 0 && er.dimensions != n_embd)
      throw ApiError(400, "'dimensions' must be " + std::to_string(n_embd) + " (this model's embedding size) or left out", "dimensions");
    const char* param = er.api == Api::OllamaGenerate ? "prompt" : "input";
    std::vector<std::vector<int32_t>> inputs = std::move(er.token_inputs);
    for (const std::string& t : er.texts) inputs.push_back(v.tokenize(t, true, true));
    for (size_t i = 0; i < inputs.size(); ++i) {
      auto& toks = inputs[i];
      for (int32_t t : toks)
        if (t >= v.n_tokens()) throw ApiError(400, "input " + std::to_string(i) + " holds token " + std::to_string(t) + ", outside the vocabulary", param);
      if (toks.empty()) throw ApiError(400, "input " + std::to_string(i) + " is empty and the model adds no BOS token", param);
      if (static_cast<int64_t>(toks.size()) > n_ctx) {
        if (!er.truncate)
          throw ApiError(400, "input " + std::to_string(i) + " is " + std::to_string(toks.size()) + " tokens but the context holds " +
                                  std::to_string(n_ctx) + " (the server's -c)" + (er.api == Api::OllamaChat ? "; send \"truncate\": true to cut it" : ""),
                         param, "context_length_exceeded");
        toks.resize(static_cast<size_t>(n_ctx));
      }
    }
    const SchedulerOptions& so = eng.scheduler().options();
    if (eng.in_flight() >= so.n_parallel + opt.queue_size)
      throw busy(eng, ApiError(503, "the server is busy: " + std::to_string(eng.in_flight()) + " requests running or queued", "", "queue_full"));
    std::vector<std::shared_ptr<Job>> jobs;
    for (auto& toks : inputs) {
      GenRequest gr;
      gr.prompt = toks;
      gr.pooling = eng.options().pooling;
      gr.max_tokens = 0;
      jobs.push_back(eng.submit(std::move(gr)));
    }
    std::vector<std::vector<float>> out;
    int64_t n_tokens = 0;
    bool timed_out = false;
    for (auto& j : jobs) {
      std::string t;
      std::vector<TokenLogprob> l;
      while (!j->wait(t, l, std::chrono::milliseconds(500))) {
        if (!timed_out && std::chrono::duration<double>(Clock::now() - c.t0).count() > opt.request_timeout_s) {
          timed_out = true;
          for (auto& k : jobs) eng.cancel(*k);
        }
      }
      const GenResult& r = j->result();
      if (r.finish == FinishReason::Cancelled) throw ApiError(503, "the embedding request took longer than --timeout", "", "timeout");
      if (r.finish != FinishReason::EndOfGeneration || r.embedding.empty())
        throw ApiError(500, "embedding failed: " + (r.error.empty() ? std::string(finish_reason_name(r.finish)) : r.error), "", "embedding_error");
      n_tokens += r.n_prompt;
      out.push_back(r.embedding);
    }
    c.prompt_tokens = n_tokens;
    m_prompt_tokens.inc(static_cast<double>(n_tokens));
    if (er.api == Api::OpenAIChat) {
      json data = json::array();
      for (size_t i = 0; i < out.size(); ++i)
        data.push_back({{"object", "embedding"}, {"index", i}, {"embedding", er.base64 ? json(base64_floats(out[i])) : json(out[i])}});
      send_json(res, {{"object", "list"}, {"data", data}, {"model", eng.model_id()}, {"usage", {{"prompt_tokens", n_tokens}, {"total_tokens", n_tokens}}}});
    } else if (er.api == Api::OllamaChat) {
      const auto ns = static_cast<int64_t>(std::chrono::duration<double>(Clock::now() - c.t0).count() * 1e9);
      send_json(res, {{"model", eng.model_id()}, {"embeddings", out}, {"total_duration", ns}, {"load_duration", 0}, {"prompt_eval_count", n_tokens}});
    } else {
      send_json(res, {{"embedding", out[0]}});
    }
  }

  // ---- the endpoints --------------------------------------------------------------------------------------------
  static json model_details(const ModelFacts& f) {
    const ModelConfig& cfg = f.cfg;
    char params[32];
    const double n = static_cast<double>(f.n_params);
    if (n >= 1e9) std::snprintf(params, sizeof params, "%.1fB", n / 1e9);
    else std::snprintf(params, sizeof params, "%.1fM", n / 1e6);
    return {{"parent_model", ""}, {"format", "gguf"}, {"family", cfg.arch}, {"families", json::array({cfg.arch})},
            {"parameter_size", params}, {"quantization_level", f.type_label}};
  }

  // Whether the request's keep_alive says "unload now" (Ollama's unload idiom).
  static bool unloads(const Ctx& c) { return c.keep_alive && c.keep_alive->count() == 0; }

  void routes() {
    const auto J = [](const Ctx& c) { return c.body; };  // parsed in wrap()
    // A generation request's body with the model's request defaults (--temp, --system, a preset's) filled in.
    const auto JD = [](const Ctx& c, Api api) { return apply_defaults(c.body, api, c.eng->options().defaults); };

    if (opt.webui) {
      // The web chat page (docs/WEBUI.md): open like /health, since it holds no data; the API calls it makes need
      // a key when the server does, and the page asks for one.
      webui = std::make_unique<WebUi>();
      auto page = [this](const httplib::Request& req, httplib::Response& res, Ctx&) {
        const WebResponse w = webui->get(req.path, req.get_param_value("v"), req.get_header_value("Accept-Encoding"),
                                         req.get_header_value("If-None-Match"));
        if (w.status == 404) throw ApiError(404, "no such file of the web page: " + req.path, "", "not_found");
        res.status = w.status;
        res.set_header("Content-Security-Policy", WebUi::content_security_policy());
        res.set_header("X-Content-Type-Options", "nosniff");
        res.set_header("Referrer-Policy", "no-referrer");
        res.set_header("X-Frame-Options", "DENY");
        res.set_header("ETag", w.etag);
        res.set_header("Cache-Control", w.cache_control);
        res.set_header("Vary", "Accept-Encoding");
        if (w.status != 200) return;
        if (!w.content_encoding.empty()) res.set_header("Content-Encoding", w.content_encoding);
        // A content provider with a length: httplib sends the bytes as they are (its own compression would run per
        // request, and brotli at its default level costs seconds for highlight.js).
        const std::string_view body = w.body;
        res.set_content_provider(body.size(), w.content_type, [body](size_t off, size_t len, httplib::DataSink& sink) {
          return sink.write(body.data() + off, std::min(len, body.size() - off));
        });
      };
      // `/` is the page for browsers (they ask for text/html) and Ollama's "is running" text for scripts that probe it.
      add("GET", "/", Scope::Open, Style::OpenAI, Needs::Nothing, false, [page](const httplib::Request& req, httplib::Response& res, Ctx& c) {
        if (req.get_header_value("Accept").find("text/html") == std::string::npos) res.set_content("lokal is running", "text/plain");
        else page(req, res, c);
      });
      add("GET", "/index.html", Scope::Open, Style::OpenAI, Needs::Nothing, false, page);
      add("GET", R"(/ui/[A-Za-z0-9_./-]+)", Scope::Open, Style::OpenAI, Needs::Nothing, false, page);
    } else {
      add("GET", "/", Scope::Open, Style::Ollama, Needs::Nothing, false, [](auto&, auto& res, auto&) {
        res.set_content("lokal is running", "text/plain");
      });
    }
    // /health: the process is up and can answer. One model: its state (503 while it loads at start, 500 when that
    // failed). Several: ok as soon as the server listens (models load on demand), with each model's state.
    auto health = [this](const httplib::Request&, httplib::Response& res, Ctx&) {
      json j = {{"memory", {{"rss_bytes", rss_bytes()}, {"predicted_bytes", router.predicted_bytes()}}}};
      const std::vector<ModelStatus> all = router.status();
      int status = draining.load() ? 503 : 200;
      j["status"] = draining.load() ? "draining" : "ok";
      if (all.size() == 1) {
        j["model"] = all[0].name;
        // Not loaded: loading now, or about to (a pinned model loads at start), or failed; a model loaded on first
        // use (one [models.NAME] table, not pinned) is ready to be asked for while unloaded.
        const bool on_first_use = all[0].state == "unloaded" && !all[0].pinned && all[0].last_error.empty();
        if (on_first_use) j["model_state"] = all[0].state;
        if (all[0].state != "loaded" && !on_first_use) {
          if (!all[0].last_error.empty()) {
            j["status"] = "error";
            j["error"] = all[0].last_error;
            send_json(res, j, 500);
            return;
          }
          j["status"] = "loading model";
          res.set_header("Retry-After", "2");
          send_json(res, j, 503);
          return;
        }
      } else {
        json models = json::array();
        for (const ModelStatus& m : all) models.push_back({{"name", m.name}, {"state", m.state}, {"in_flight", m.in_flight}});
        j["models"] = models;
      }
      bool reloading = false;
      int64_t parallel = 0, in_flight = 0;
      router.for_each_loaded([&](size_t, Engine& e) {
        if (e.state() != Engine::State::Ready) {
          reloading = true;
          return;
        }
        parallel += e.scheduler().options().n_parallel;
        in_flight += e.in_flight();
      });
      if (all.size() == 1 && reloading) {
        j["status"] = "loading model";
        res.set_header("Retry-After", "2");
        send_json(res, j, 503);
        return;
      }
      j["slots"] = {{"parallel", parallel}, {"in_flight", in_flight}};
      send_json(res, j, status);
    };
    add("GET", "/health", Scope::Open, Style::OpenAI, Needs::Nothing, false, health);
    add("GET", "/v1/health", Scope::Open, Style::OpenAI, Needs::Nothing, false, health);

    // OpenAI: every model the server can serve, loaded or not, with what it does and its state.
    auto by_device = [](const DeviceBytes& d) {  // {"0": bytes, "1": bytes}
      json j = json::object();
      for (const auto& [dev, b] : d) j[std::to_string(dev)] = b;
      return j;
    };
    auto models = [this, by_device](const httplib::Request&, httplib::Response& res, Ctx&) {
      json data = json::array();
      for (const ModelStatus& m : router.status()) {
        json tasks = json::array();
        for (Task t : m.tasks) tasks.push_back(task_name(t));
        data.push_back({{"id", m.name}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "lokal"},
                        {"status", {{"value", m.state}}}, {"tasks", tasks}, {"aliases", m.aliases},
                        {"meta", {{"n_ctx", m.n_ctx}, {"n_ctx_train", m.facts.cfg.n_ctx_train}, {"n_vocab", m.facts.n_tokens},
                                  {"n_params", m.facts.n_params}, {"size", m.facts.file_bytes},
                                  {"memory_bytes", m.predicted_bytes}, {"vram_bytes", m.predicted_vram_bytes},
                                  {"vram_by_device", by_device(m.predicted_device_bytes)},
                                  {"quantization", m.facts.type_label},
                                  {"loads", m.loads}, {"pinned", m.pinned}}}});
        for (const std::string& a : m.aliases)
          data.push_back({{"id", a}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "lokal"}, {"alias_of", m.name}});
      }
      send_json(res, {{"object", "list"}, {"data", data}});
    };
    add("GET", "/v1/models", Scope::Inference, Style::OpenAI, Needs::Nothing, false, models);
    add("GET", "/models", Scope::Inference, Style::OpenAI, Needs::Nothing, false, models);
    // llama-server's router: load / unload a model by name (admin).
    auto admin_model = [this](bool load_it) {
      return [this, load_it](const httplib::Request&, httplib::Response& res, Ctx& c) {
        const std::string name = c.body.is_object() && c.body.contains("model") && c.body["model"].is_string()
                                     ? c.body["model"].get<std::string>() : "";
        if (name.empty()) throw ApiError(400, "'model' must name a model of this server", "model");
        const size_t i = router.resolve(name, std::nullopt);
        const auto t0 = Clock::now();
        if (load_it) router.load(i);
        else router.unload(i);
        log_line({{"time", iso_now()}, {"event", load_it ? "loaded" : "unloaded"}, {"model", router.spec(i).name}, {"subject", c.who.subject}});
        send_json(res, {{"success", true}, {"model", router.spec(i).name}, {"state", router.status(i).state},
                        {"seconds", std::chrono::duration<double>(Clock::now() - t0).count()}});
      };
    };
    add("POST", "/models/load", Scope::Admin, Style::OpenAI, Needs::Body, false, admin_model(true));
    add("POST", "/models/unload", Scope::Admin, Style::OpenAI, Needs::Body, false, admin_model(false));
    for (const char* p : {"/v1/chat/completions", "/chat/completions"})
      add("POST", p, Scope::Inference, Style::OpenAI, Needs::Chat, true,
          [this, JD](auto& req, auto& res, Ctx& c) { generate(parse_openai_chat(JD(c, Api::OpenAIChat)), req, res, c); });
    for (const char* p : {"/v1/completions", "/completions"})
      add("POST", p, Scope::Inference, Style::OpenAI, Needs::Completion, true,
          [this, JD](auto& req, auto& res, Ctx& c) { generate(parse_openai_completion(JD(c, Api::OpenAICompletion)), req, res, c); });

    for (const char* p : {"/v1/embeddings", "/embeddings"})
      add("POST", p, Scope::Inference, Style::OpenAI, Needs::Embedding, true,
          [this, J](auto&, auto& res, Ctx& c) { embed(parse_openai_embeddings(J(c)), res, c); });
    add("POST", "/api/embed", Scope::Inference, Style::Ollama, Needs::Embedding, true,
        [this, J](auto&, auto& res, Ctx& c) { embed(parse_ollama_embed(J(c)), res, c); });
    add("POST", "/api/embeddings", Scope::Inference, Style::Ollama, Needs::Embedding, true,
        [this, J](auto&, auto& res, Ctx& c) { embed(parse_ollama_embeddings(J(c)), res, c); });

    // llama-server.
    add("POST", "/completion", Scope::Inference, Style::OpenAI, Needs::Completion, true,
        [this, JD](auto& req, auto& res, Ctx& c) { generate(parse_llama_completion(JD(c, Api::LlamaCompletion)), req, res, c); });
    add("POST", "/tokenize", Scope::Inference, Style::OpenAI, Needs::AnyModel, false, [this, J](auto&, auto& res, Ctx& c) {
      Engine& eng = *c.eng;
      const json b = J(c);
      if (!b.contains("content") || !b["content"].is_string()) throw ApiError(400, "'content' must be a string", "content");
      const bool add_special = b.value("add_special", false);
      const bool with_pieces = b.value("with_pieces", false);
      const Vocab& v = eng.model().vocab();
      const auto toks = v.tokenize(b["content"].get<std::string>(), add_special, b.value("parse_special", true));
      json out = json::array();
      for (int32_t t : toks) {
        if (with_pieces) out.push_back({{"id", t}, {"piece", valid_utf8_or_replaced(v.token_to_piece(t, true))}});
        else out.push_back(t);
      }
      send_json(res, {{"tokens", out}});
    });
    add("POST", "/detokenize", Scope::Inference, Style::OpenAI, Needs::AnyModel, false, [this, J](auto&, auto& res, Ctx& c) {
      Engine& eng = *c.eng;
      const json b = J(c);
      if (!b.contains("tokens") || !b["tokens"].is_array()) throw ApiError(400, "'tokens' must be an array of token ids", "tokens");
      const Vocab& v = eng.model().vocab();
      std::vector<int32_t> ids;
      for (const json& t : b["tokens"]) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= v.n_tokens())
          throw ApiError(400, "'tokens' holds " + t.dump() + ", not a token id of this model (0.." + std::to_string(v.n_tokens() - 1) + ")", "tokens");
        ids.push_back(t.get<int32_t>());
      }
      send_json(res, {{"content", valid_utf8_or_replaced(v.detokenize(ids, true))}});
    });
    add("POST", "/apply-template", Scope::Inference, Style::OpenAI, Needs::Chat, false, [this, JD](auto&, auto& res, Ctx& c) {
      TextRequest r = parse_openai_chat(JD(c, Api::OpenAIChat));
      send_json(res, {{"prompt", render_chat(*c.eng, r)}});
    });
    add("GET", "/props", Scope::Inference, Style::OpenAI, Needs::AnyModel, false, [this](auto&, auto& res, Ctx& c) {
      Engine& eng = *c.eng;
      const ChatTemplate* t = eng.chat_template();
      const SamplingParams sp;
      send_json(res, {{"default_generation_settings", {{"n_ctx", eng.n_ctx()}, {"temperature", sp.temperature}, {"top_k", sp.top_k},
                                                       {"top_p", sp.top_p}, {"min_p", sp.min_p}, {"n_predict", -1}}},
                      {"total_slots", eng.scheduler().options().n_parallel},
                      {"model_path", eng.options().load.path},
                      {"model_alias", eng.model_id()},
                      {"chat_template", t ? t->source() : ""},
                      {"chat_template_name", t ? t->name() : ""},
                      {"tool_call_format", t ? format_name(t->tool_format()) : "none"},
                      {"build_info", std::string("lokal ") + kVersion}});
    });
    add("GET", "/slots", Scope::Admin, Style::OpenAI, Needs::AnyModel, false, [this](auto&, auto& res, Ctx& c) {
      Engine& eng = *c.eng;
      const SchedulerStats st = eng.scheduler().stats();
      json slots = json::array();
      for (int i = 0; i < eng.scheduler().options().n_parallel; ++i)
        slots.push_back({{"id", i}, {"n_ctx", eng.n_ctx()}, {"is_processing", i < st.running}});
      send_json(res, slots);
    });
    if (opt.metrics) {
      add("GET", "/metrics", Scope::Inference, Style::OpenAI, Needs::Nothing, false, [this](auto&, auto& res, Ctx&) {
        // Summed over the loaded models (one model: its own numbers, as before).
        SchedulerStats st{};
        int64_t prompt_tokens = 0, cached_tokens = 0, generated = 0, prompt_ns = 0, gen_ns = 0;
        int loaded = 0;
        router.for_each_loaded([&](size_t, Engine& eng) {
          if (eng.state() != Engine::State::Ready) return;
          ++loaded;
          const SchedulerStats s1 = eng.scheduler().stats();
          st.running += s1.running;
          st.waiting += s1.waiting;
          st.kv_pages_used += s1.kv_pages_used;
          st.kv_pages_total += s1.kv_pages_total;
          st.prompt_tokens_reused += s1.prompt_tokens_reused;
          st.preemptions += s1.preemptions;
          const auto& t = eng.totals();
          prompt_tokens += t.prompt_tokens.load();
          cached_tokens += t.cached_tokens.load();
          generated += t.generated_tokens.load();
          prompt_ns += t.prompt_ns.load();
          gen_ns += t.gen_ns.load();
        });
        reg.gauge("llamacpp:requests_processing", "Number of requests processing.").set(static_cast<double>(st.running));
        reg.gauge("llamacpp:requests_deferred", "Number of requests deferred (queued).").set(static_cast<double>(st.waiting));
        reg.gauge("lokal_kv_pages_used", "KV-cache pages (64 positions each) held by sequences.").set(static_cast<double>(st.kv_pages_used));
        reg.gauge("lokal_kv_pages_total", "KV-cache pages in the pool.").set(static_cast<double>(st.kv_pages_total));
        reg.gauge("llamacpp:kv_cache_usage_ratio", "KV-cache use (1 = full).")
            .set(static_cast<double>(st.kv_pages_used) / std::max<double>(1.0, static_cast<double>(st.kv_pages_total)));
        reg.gauge("lokal_prefix_cache_hit_tokens", "Prompt tokens taken from the prefix cache since start.").set(static_cast<double>(st.prompt_tokens_reused));
        reg.gauge("lokal_preemptions", "Sequences preempted for lack of KV pages since start.").set(static_cast<double>(st.preemptions));
        reg.gauge("lokal_resident_memory_bytes", "Resident memory of the server process.").set(static_cast<double>(rss_bytes()));
        reg.gauge("lokal_predicted_memory_bytes", "Memory the loaded models and the process are predicted to hold.")
            .set(static_cast<double>(router.predicted_bytes()));
        reg.gauge("lokal_models_loaded", "Models loaded now.").set(loaded);
        for (const auto& [d, b] : router.predicted_device_bytes())  // every GPU a model may use (0: none loaded there)
          reg.gauge("lokal_predicted_device_memory_bytes", "Device memory the loaded models are predicted to hold on "
                    "this GPU (--vram budgets it).", {{"device", std::to_string(d)}})
              .set(static_cast<double>(b));
        const double gen_s = static_cast<double>(gen_ns) / 1e9, prompt_s = static_cast<double>(prompt_ns) / 1e9;
        reg.gauge("llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.")
            .set(prompt_s > 0 ? static_cast<double>(prompt_tokens - cached_tokens) / prompt_s : 0);
        reg.gauge("llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s.")
            .set(gen_s > 0 ? static_cast<double>(generated) / gen_s : 0);
        res.set_content(reg.render(), "text/plain; version=0.0.4");
      });
    }

    // Ollama.
    add("GET", "/api/version", Scope::Open, Style::Ollama, Needs::Nothing, false,
        [this](auto&, auto& res, Ctx&) { send_json(res, {{"version", kVersion}}); });
    // Ollama's listings: /api/tags every model (with its state), /api/ps the loaded ones with when they unload.
    auto tag = [this, by_device](const ModelStatus& m, bool ps) {
      json tasks = json::array();
      for (Task t : m.tasks) tasks.push_back(task_name(t));
      json j = {{"name", m.name}, {"model", m.name}, {"size", ps ? m.predicted_bytes : m.facts.file_bytes},
                {"digest", ""}, {"details", model_details(m.facts)}, {"state", m.state}, {"tasks", tasks}};
      if (ps) {
        j["expires_at"] = m.expires_at ? iso_utc(std::chrono::system_clock::to_time_t(*m.expires_at))
                                       : std::string("2318-01-01T00:00:00Z");  // never (pinned, busy, or keep_alive < 0)
        j["size_vram"] = m.vram_bytes;  // device memory with GPU offload (-ngl / gpu_layers; its draft's too)
        j["vram_by_device"] = by_device(m.device_bytes);  // the same by GPU ("0", "1", ...)
        j["gpu_layers"] = m.gpu_layers;
        j["context_length"] = m.n_ctx;
        j["in_flight"] = m.in_flight;
        j["pinned"] = m.pinned;
      } else {
        struct stat st {};
        j["modified_at"] = ::stat(m.facts.path.c_str(), &st) == 0 ? iso_utc(st.st_mtime) : iso_now();
      }
      return j;
    };
    add("GET", "/api/tags", Scope::Inference, Style::Ollama, Needs::Nothing, false, [this, tag](auto&, auto& res, Ctx&) {
      json out = json::array();
      for (const ModelStatus& m : router.status()) out.push_back(tag(m, false));
      send_json(res, {{"models", out}});
    });
    add("GET", "/api/ps", Scope::Inference, Style::Ollama, Needs::Nothing, false, [this, tag, by_device](auto&, auto& res, Ctx&) {
      json out = json::array();
      for (const ModelStatus& m : router.status())
        if (m.state == "loaded") out.push_back(tag(m, true));
      // Device memory by GPU ("0", "1", ...): the loaded models' prediction and each device's --vram budget (0: none).
      const VramBudget& vb = router.options().vram_budget;
      send_json(res, {{"models", out}, {"memory", {{"predicted_bytes", router.predicted_bytes()}, {"rss_bytes", rss_bytes()},
                                                   {"budget_bytes", router.options().budget_bytes},
                                                   {"vram_budget_bytes", vb.every},
                                                   {"vram_device_budget_bytes", by_device(vb.device)},
                                                   {"vram_predicted_bytes", by_device(router.predicted_device_bytes())}}}});
    });
    add("POST", "/api/show", Scope::Inference, Style::Ollama, Needs::AnyModel, false, [this](auto&, auto& res, Ctx& c) {
      Engine& eng = *c.eng;
      const ModelConfig& cfg = eng.model().config();
      const ChatTemplate* t = eng.chat_template();
      json caps = json::array({"completion"});
      if (t && t->supports_tools()) caps.push_back("tools");
      // Thinking: the template opens or mentions <think>, or the vocabulary has it as one token (a model trained to
      // think when asked, like tinychat and the DeepSeek-R1 distills).
      if (t && (t->opens_reasoning() || t->source().find("<think>") != std::string::npos ||
                eng.model().vocab().find_token("<think>") >= 0))
        caps.push_back("thinking");
      send_json(res, {{"modelfile", "FROM " + eng.options().load.path + "\n"},
                      {"parameters", ""},
                      {"template", t ? t->source() : ""},
                      {"details", model_details(eng.loaded().facts)},
                      {"model_info", {{"general.architecture", cfg.arch},
                                      {"general.parameter_count", eng.loaded().facts.n_params},
                                      {cfg.arch + ".context_length", cfg.n_ctx_train},
                                      {cfg.arch + ".embedding_length", cfg.n_embd},
                                      {cfg.arch + ".block_count", cfg.n_layer}}},
                      {"capabilities", caps}});
    });
    add("POST", "/api/chat", Scope::Inference, Style::Ollama, Needs::Chat, true, [this, JD](auto& req, auto& res, Ctx& c) {
      const bool no_messages = c.body.is_object() && !c.body.contains("message") &&
                               (!c.body.contains("messages") || (c.body["messages"].is_array() && c.body["messages"].empty()));
      if (no_messages) {  // Ollama: no messages loads the model (keep_alive 0: unloads it)
        send_json(res, {{"model", c.eng->model_id()}, {"created_at", iso_now()}, {"message", {{"role", "assistant"}, {"content", ""}}},
                        {"done", true}, {"done_reason", unloads(c) ? "unload" : "load"}});
        return;
      }
      generate(parse_ollama_chat(JD(c, Api::OllamaChat)), req, res, c);
    });
    add("POST", "/api/generate", Scope::Inference, Style::Ollama, Needs::Completion, true, [this, JD](auto& req, auto& res, Ctx& c) {
      TextRequest r = parse_ollama_generate(JD(c, Api::OllamaGenerate));
      if (r.prompt.empty() && r.messages.size() <= 1 && !r.raw) {  // Ollama: an empty prompt loads the model (keep_alive 0: unloads)
        send_json(res, {{"model", c.eng->model_id()}, {"created_at", iso_now()}, {"response", ""}, {"done", true},
                        {"done_reason", unloads(c) ? "unload" : "load"}});
        return;
      }
      generate(std::move(r), req, res, c);
    });

    // lokal's simple API.
    add("POST", "/api/debug/reload", Scope::Admin, Style::Ollama, Needs::Nothing, false, [this](const httplib::Request& req, auto& res, Ctx&) {
      // Reloads a loaded model's file (?model=NAME; default: the first model) without a restart.
      const size_t index = router.resolve(req.get_param_value("model"), std::nullopt);
      if (router.status(index).state != "loaded")
        throw ApiError(409, "the model '" + router.spec(index).name + "' is not loaded", "", "not_loaded");
      auto lease = router.acquire(index);  // keeps it loaded; its use lock is dropped, or the reload would wait for it
      lease->drop_use();
      Engine& eng = lease->engine();
      if (eng.state() == Engine::State::Loading) throw ApiError(409, "the model is loading already", "", "loading");
      const auto t0 = Clock::now();
      try {
        eng.reload(std::chrono::milliseconds(static_cast<int64_t>(opt.drain_timeout_s * 1000)));
      } catch (const std::exception& e) {
        throw ApiError(500, std::string("reload failed: ") + e.what(), "", "reload_failed");
      }
      log_line({{"time", iso_now()}, {"event", "reloaded"}, {"model", eng.options().load.path}, {"seconds", eng.load_seconds()}});
      send_json(res, {{"status", "reloaded"}, {"model", eng.model_id()}, {"load_seconds", eng.load_seconds()},
                      {"seconds", std::chrono::duration<double>(Clock::now() - t0).count()}});
    });
    add("GET", "/api/model/info", Scope::Inference, Style::Ollama, Needs::AnyModel, false, [this](auto&, auto& res, Ctx& c) {
      Engine& eng = *c.eng;
      const LoadedModel& l = eng.loaded();
      const ModelConfig& cfg = eng.model().config();
      const auto& t = eng.totals();
      const double gen_s = static_cast<double>(t.gen_ns.load()) / 1e9, prompt_s = static_cast<double>(t.prompt_ns.load()) / 1e9;
      json spec = nullptr;
      if (const SpecSetup* sp = eng.spec()) {
        const SpecStats st = eng.scheduler().stats().spec;
        spec = {{"method", sp->describe()},
                {"draft", sp->config().draft},
                {"draft_bytes", sp->draft_model() ? sp->draft_model()->gguf().file_size() : 0},
                {"drafted", st.drafted},
                {"accepted", st.accepted},
                {"acceptance", st.acceptance()},
                {"tokens_per_pass", st.tokens_per_pass()}};
      }
      send_json(res, {{"file", eng.options().load.path},
                      {"id", eng.model_id()},
                      {"architecture", cfg.arch},
                      {"quantization", l.facts.type_label},
                      {"parameters", l.facts.n_params},
                      {"file_bytes", l.facts.file_bytes},
                      {"context", eng.n_ctx()},
                      {"context_train", cfg.n_ctx_train},
                      {"parallel", eng.scheduler().options().n_parallel},
                      {"threads", eng.n_threads()},
                      {"kv_cache", {{"type_k", type_name(l.settings.type_k)}, {"type_v", type_name(l.settings.type_v)},
                                    {"bytes", eng.scheduler().kv_bytes()}}},
                      {"memory_bytes", {{"weights", l.estimate.weights_bytes}, {"kv_cache", l.estimate.kv_bytes},
                                        {"compute", l.estimate.compute_bytes}, {"overhead", l.estimate.overhead_bytes},
                                        {"total_predicted", l.estimate.total_bytes}, {"resident_now", rss_bytes()}}},
                      {"load_seconds", eng.load_seconds()},
                      {"chat_template", eng.chat_template() ? eng.chat_template()->name() : ""},
                      {"speculative", spec},
                      {"speeds", {{"requests", t.requests.load()},
                                  {"prompt_tokens_per_second", prompt_s > 0 ? static_cast<double>(t.prompt_tokens.load() - t.cached_tokens.load()) / prompt_s : 0},
                                  {"generated_tokens_per_second", gen_s > 0 ? static_cast<double>(t.generated_tokens.load()) / gen_s : 0}}}});
    });

    // CORS preflight.
    srv->Options(R"(/.*)", [this](const httplib::Request& req, httplib::Response& res) {
      cors(req, res);
      res.status = 204;
    });
  }
};

HttpServer::HttpServer(Router& router, ServerOptions opt) : impl_(std::make_unique<Impl>(router, std::move(opt))) {}
HttpServer::~HttpServer() = default;
const std::vector<std::string>& HttpServer::warnings() const { return impl_->warnings; }
bool HttpServer::draining() const { return impl_->draining.load(); }

int HttpServer::bind() {
  Impl& m = *impl_;
  m.auth = std::make_unique<Authenticator>(m.opt.auth);
  for (const std::string& w : m.auth->warnings()) m.warnings.push_back(w);
  if (!is_loopback_host(m.opt.host) && !m.auth->enabled()) {
    if (!m.opt.no_auth)
      throw Error("refusing to listen on " + m.opt.host + " without authentication: anyone who can reach this address could use "
                  "the model. Give --api-key KEY or --api-key-file FILE, or --no-auth if this network is trusted");
    m.warnings.push_back("listening on " + m.opt.host + " WITHOUT authentication (--no-auth): anyone who can reach it can use the model");
  }
  if (!m.opt.ssl_cert_file.empty() || !m.opt.ssl_key_file.empty()) {
    if (m.opt.ssl_cert_file.empty() || m.opt.ssl_key_file.empty()) throw Error("TLS needs both --ssl-cert-file and --ssl-key-file");
    auto s = std::make_unique<httplib::SSLServer>(m.opt.ssl_cert_file.c_str(), m.opt.ssl_key_file.c_str());
    if (!s->is_valid()) throw Error("TLS: cannot use " + m.opt.ssl_cert_file + " / " + m.opt.ssl_key_file + " (not a readable PEM certificate and key pair?)");
    m.srv = std::move(s);
  } else {
    m.srv = std::make_unique<httplib::Server>();
  }
  int threads = m.opt.http_threads;
  // One thread per connection (streams and idle keep-alive ones hold theirs): the running and queued generations plus
  // a few for health checks and idle connections. Connections beyond wait in cpp-httplib's queue. Not more: every
  // thread that ever served a request keeps its stack and malloc arena resident (measured: 272 threads grew the
  // peak RSS of a 6-client soak by 3.5 MiB over a minute; 28 stay flat).
  if (threads <= 0) {
    int parallel = 0;
    for (size_t i = 0; i < m.router.size(); ++i) parallel += m.router.spec(i).engine.load.n_parallel;
    threads = std::clamp(parallel + m.opt.queue_size + 8, 16, 256);
  }
  m.srv->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  m.srv->set_payload_max_length(m.opt.max_body_bytes);
  m.srv->set_read_timeout(m.opt.read_timeout_s, 0);
  m.srv->set_write_timeout(m.opt.read_timeout_s, 0);
  m.srv->set_keep_alive_timeout(m.opt.idle_timeout_s);
  m.srv->set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
    Impl::Ctx c;
    c.style = req.path.rfind("/api/", 0) == 0 ? Style::Ollama : Style::OpenAI;
    std::string msg;
    if (res.status == 404) msg = "no such endpoint: " + req.method + " " + req.path + " (see docs/SERVER.md)";
    else if (res.status == 413) msg = "the request body is larger than the server accepts (--max-body " + std::to_string(impl_->opt.max_body_bytes) + " bytes)";
    else if (res.status == 405) msg = "method not allowed: " + req.method + " " + req.path;
    else msg = "HTTP error " + std::to_string(res.status);
    impl_->send_error(res, c, res.status, msg);
    return httplib::Server::HandlerResponse::Handled;
  }));
  m.routes();
  if (m.opt.port == 0) {
    m.port = m.srv->bind_to_any_port(m.opt.host);
  } else {
    m.port = m.srv->bind_to_port(m.opt.host, m.opt.port) ? m.opt.port : -1;
  }
  if (m.port <= 0)
    throw Error("cannot listen on " + m.opt.host + ":" + std::to_string(m.opt.port) + " (address in use, or not an address of this machine?)");
  return m.port;
}

void HttpServer::listen() { impl_->srv->listen_after_bind(); }

void HttpServer::stop() {
  Impl& m = *impl_;
  if (m.draining.exchange(true)) return;
  const auto t0 = Clock::now();
  m.router.close();  // new requests: 503; those in flight may finish
  while (m.router.in_flight() > 0 &&
         std::chrono::duration<double>(Clock::now() - t0).count() < m.opt.drain_timeout_s)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  m.srv->stop();
}

}  // namespace lokal::server
