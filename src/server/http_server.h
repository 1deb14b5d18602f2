// server/http_server.h - the HTTP side of `lokal serve`: one port speaking OpenAI's API, llama-server's and
// Ollama's (docs/SERVER.md lists every endpoint), with authentication, rate limits, size limits, CORS, request ids,
// access logs and Prometheus metrics. Built on cpp-httplib (Debian's libcpp-httplib, thread per connection).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "server/auth.h"
#include "server/rate_limit.h"

namespace lokal::server {

class Router;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                    // 0: any free port (printed at start)
  AuthConfig auth;
  bool no_auth = false;               // allow a non-loopback bind without keys (warned)
  RateLimits limits;                  // per subject (key name, JWT sub, or client address without auth)
  uint64_t max_body_bytes = 8u << 20;
  int request_timeout_s = 600;        // a generation running longer is cancelled (finish_reason "length")
  int read_timeout_s = 30;            // reading a request
  int idle_timeout_s = 5;             // keep-alive idle connections
  int queue_size = 16;                // generations waiting beyond the running ones; more: 503 + Retry-After
  int http_threads = 0;               // connection threads; 0: n_parallel + queue_size + 8, in [16, 256]
  std::vector<std::string> cors_origins;  // allowed Origins ("*": any); none: same-origin only
  bool metrics = true;                // GET /metrics
  bool webui = true;                  // the web chat page at / (docs/WEBUI.md); false: / answers plain text
  std::string ssl_key_file, ssl_cert_file;
  bool access_log = true;             // one JSON line per request on stderr
  double drain_timeout_s = 30;        // on SIGTERM: in-flight generations may finish this long
};

class HttpServer {
 public:
  HttpServer(Router& router, ServerOptions opt);
  ~HttpServer();
  // Checks the options (a non-loopback host without keys is refused unless no_auth) and binds; returns the port.
  // Throws lokal::Error.
  int bind();
  // Serves until stop(); blocks.
  void listen();
  // Stops accepting, lets in-flight generations finish for up to drain_timeout_s, then cancels them. Thread-safe,
  // callable from a signal-watching thread.
  void stop();
  bool draining() const;
  const std::vector<std::string>& warnings() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

bool is_loopback_host(const std::string& host);

}  // namespace lokal::server
