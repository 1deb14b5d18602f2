// server/rate_limit.cpp - sliding window of 1-second buckets per subject (see rate_limit.h).
#include "server/rate_limit.h"

#include <algorithm>

#include "core/error.h"

namespace lokal::server {

namespace {

constexpr int kN = 61;

int slot(int64_t sec) { return int(((sec % kN) + kN) % kN); }

int64_t to_sec(std::chrono::steady_clock::time_point t) {
  return std::chrono::floor<std::chrono::seconds>(t.time_since_epoch()).count();
}

uint64_t window_sum(const std::array<uint32_t, kN>& ring) {
  uint64_t s = 0;
  for (uint32_t v : ring) s += v;
  return s;
}

// Seconds until the buckets head-60 .. head, aging out oldest first, sum to less than `limit`.
int64_t wait_below(const std::array<uint32_t, kN>& ring, int64_t head, uint64_t limit) {
  uint64_t sum = window_sum(ring);
  for (int k = 1; k <= kN; ++k) {
    sum -= ring[slot(head - (kN - 1) + (k - 1))];
    if (sum < limit) return k;
  }
  return kN;
}

}  // namespace

RateLimiter::RateLimiter(RateLimits limits, size_t max_subjects) : limits_(limits), max_subjects_(max_subjects) {
  if (limits.requests_per_minute < 0 || limits.tokens_per_minute < 0)
    throw Error("rate limits must be >= 0 (0 turns a limit off)");
  if (max_subjects == 0) throw Error("the rate limiter needs room for at least one subject");
}

void RateLimiter::drop_idle(int64_t sec) {
  while (!lru_.empty() && sec - lru_.back().head >= kN) {
    index_.erase(std::string_view(lru_.back().subject));
    lru_.pop_back();
  }
}

RateLimiter::Entry& RateLimiter::touch(const std::string& subject, int64_t sec) {
  drop_idle(sec);
  auto it = index_.find(std::string_view(subject));
  if (it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
  } else {
    if (lru_.size() >= max_subjects_) {
      index_.erase(std::string_view(lru_.back().subject));
      lru_.pop_back();
    }
    lru_.emplace_front();
    lru_.front().subject = subject;
    lru_.front().head = sec;
    index_.emplace(std::string_view(lru_.front().subject), lru_.begin());
  }
  Entry& e = lru_.front();
  if (sec > e.head) {  // advance the window, clearing the seconds that passed (time never moves it back)
    if (sec - e.head >= kN) {
      e.requests.fill(0);
      e.tokens.fill(0);
    } else {
      for (int64_t s = e.head + 1; s <= sec; ++s) {
        e.requests[slot(s)] = 0;
        e.tokens[slot(s)] = 0;
      }
    }
    e.head = sec;
  }
  return e;
}

int64_t RateLimiter::admit(const std::string& subject, std::chrono::steady_clock::time_point now) {
  if (!enabled()) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = touch(subject, to_sec(now));
  int64_t wait = 0;
  if (limits_.requests_per_minute > 0) {
    uint64_t limit = uint64_t(limits_.requests_per_minute);
    if (window_sum(e.requests) >= limit) wait = std::max(wait, wait_below(e.requests, e.head, limit));
  }
  if (limits_.tokens_per_minute > 0) {
    uint64_t limit = uint64_t(limits_.tokens_per_minute);
    if (window_sum(e.tokens) >= limit) wait = std::max(wait, wait_below(e.tokens, e.head, limit));
  }
  if (wait == 0) {
    uint32_t& c = e.requests[slot(e.head)];
    if (c != UINT32_MAX) ++c;
  }
  return wait;
}

void RateLimiter::add_tokens(const std::string& subject, int64_t n, std::chrono::steady_clock::time_point now) {
  if (limits_.tokens_per_minute <= 0 || n <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = touch(subject, to_sec(now));
  uint32_t& c = e.tokens[slot(e.head)];
  c = uint32_t(std::min<uint64_t>(uint64_t(c) + uint64_t(n), UINT32_MAX));
}

size_t RateLimiter::subjects() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

}  // namespace lokal::server
