// tests/support/serve_process.h - a real `lokal serve` process for tests: started on 127.0.0.1 (any free port) with the
// given flags, found ready through /health, stopped with SIGTERM (or killed when the test ends); never outlives the
// test (PR_SET_PDEATHSIG). Used by test_server.cpp and test_router.cpp.
#pragma once
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/test_data.h"

namespace lokal::test {

constexpr int kStartSeconds = lokal::test::kAddressSanitizer ? 120 : 30;

// A `lokal serve` process: started with the given flags (plus --port 0), ready when /health says ok.
class Server {
 public:
  explicit Server(const std::vector<std::string>& flags, bool wait_ready = true) {
    log_ = "/tmp/lokal-test-serve-" + std::to_string(::getpid()) + "-" + std::to_string(++count_) + ".log";
    std::vector<std::string> args = {lokal::test::binary_dir() + "/src/lokal", "serve", "--port", "0", "-t", "2"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
      FILE* f = std::freopen(log_.c_str(), "w", stderr);
      FILE* o = std::freopen("/dev/null", "w", stdout);
      (void)f;
      (void)o;
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    // The port from "listening on http://127.0.0.1:PORT".
    const auto t0 = std::chrono::steady_clock::now();
    const std::regex rx("listening on (https?)://127\\.0\\.0\\.1:(\\d+)");
    while (port_ == 0) {
      std::smatch m;
      const std::string text = log();
      if (std::regex_search(text, m, rx)) {
        port_ = std::stoi(m[2]);
        tls_ = m[1] == "https";
      }
      else if (exited() || std::chrono::steady_clock::now() - t0 > std::chrono::seconds(kStartSeconds)) break;
      else std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (port_ == 0) return;
    if (!wait_ready) return;
    while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(kStartSeconds)) {
      auto r = client().Get("/health");
      if (r && r->status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "server never became ready:\n" << log();
  }
  ~Server() {
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::remove(log_.c_str());
  }
  int port() const { return port_; }
  bool tls() const { return tls_; }
  pid_t pid() const { return pid_; }
  httplib::Client client(int timeout_s = 60) const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(timeout_s, 0);
    c.set_connection_timeout(5, 0);
    return c;
  }
  std::string log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  bool exited() {
    if (waited_) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      waited_ = true;
      status_ = st;
    }
    return waited_;
  }
  // SIGTERM, then the exit status (-1 when it did not exit within 30 s).
  int stop() {
    ::kill(pid_, SIGTERM);
    const auto t0 = std::chrono::steady_clock::now();
    while (!exited() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!waited_) return -1;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }
  int exit_status() const { return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool tls_ = false;
  bool waited_ = false;
  int status_ = 0;
  std::string log_;
  static inline int count_ = 0;
};

inline nlohmann::ordered_json post(httplib::Client& c, const std::string& path, const nlohmann::ordered_json& body, int* status = nullptr,
          httplib::Headers headers = {}) {
  auto r = c.Post(path, headers, body.dump(), "application/json");
  if (!r) throw std::runtime_error("no response from " + path);
  if (status) *status = r->status;
  return nlohmann::ordered_json::parse(r->body);
}

}  // namespace lokal::test
