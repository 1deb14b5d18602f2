// server/rate_limit.h - per-subject request and token limits for `lokal serve`.
//
// Semantics: a sliding window of whole seconds. Time is cut into 1-second buckets (steady clock, floored);
// a request arriving in second t looks at the buckets t-60 .. t (61 buckets, i.e. every second that
// overlaps the last 60 seconds):
//   * requests_per_minute = N: the request is admitted only if fewer than N requests were admitted in those
//     buckets. Hence at most N requests are admitted in ANY 60-second interval (a real interval of 60 s
//     touches at most 61 buckets); a client may have to wait up to 61 s after a burst.
//   * tokens_per_minute = T: the request is refused while the tokens charged (add_tokens) in those buckets
//     sum to T or more. Tokens of a request already admitted are never refused, so a subject can overshoot
//     T by what its running requests generate; its next requests then wait until enough of them age out.
// Refused requests are not counted (hammering does not prolong the wait). The wait returned is exact for
// the bucket model: the number of seconds (>= 1, rounded up) until the oldest buckets have aged out
// enough for the request to pass, assuming nothing else is charged meanwhile; use it for Retry-After.
//
// Memory: per subject 61 request counters and 61 token counters (uint32, saturating) plus its name, about
// 0.6 KB; at most max_subjects subjects. A subject with no activity for 61 s has nothing left in its window
// and is dropped (during later admit/add_tokens calls); when max_subjects are tracked, the least recently
// seen subject is evicted (it forgets its history: only > max_subjects subjects active within a minute can
// make that matter). With both limits 0 nothing is tracked.
//
// Thread safety: all members may be called from any thread (one mutex).
#pragma once
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace lokal::server {

struct RateLimits {
  int64_t requests_per_minute = 0;  // 0: off
  int64_t tokens_per_minute = 0;    // 0: off
};

class RateLimiter {
 public:
  // Throws lokal::Error for negative limits or max_subjects == 0.
  explicit RateLimiter(RateLimits limits, size_t max_subjects = 100000);

  // Called when a request arrives: returns 0 when allowed (and counts it), else the seconds the client
  // should wait (>= 1, rounded up; for Retry-After).
  int64_t admit(const std::string& subject, std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());

  // Generated tokens to charge to the subject (as a request finishes or while it streams). n <= 0 is ignored.
  void add_tokens(const std::string& subject, int64_t n,
                  std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now());

  size_t subjects() const;  // subjects tracked now
  const RateLimits& limits() const { return limits_; }
  bool enabled() const { return limits_.requests_per_minute > 0 || limits_.tokens_per_minute > 0; }

 private:
  static constexpr int kBuckets = 61;
  struct Entry {
    std::string subject;
    int64_t head = 0;  // the second of the newest bucket
    std::array<uint32_t, kBuckets> requests{};
    std::array<uint32_t, kBuckets> tokens{};
  };
  using List = std::list<Entry>;

  Entry& touch(const std::string& subject, int64_t sec);  // find or create, advance its window, mark recent
  void drop_idle(int64_t sec);

  RateLimits limits_;
  size_t max_subjects_;
  mutable std::mutex mu_;
  List lru_;  // most recently seen first
  std::unordered_map<std::string_view, List::iterator> index_;  // keys view Entry::subject
};

}  // namespace lokal::server
