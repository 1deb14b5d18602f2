#include "core/log.h"

#include <atomic>
#include <cstdio>

#include "core/safe_io.h"

namespace lokal {

static std::atomic<int> g_level{static_cast<int>(LogLevel::Info)};

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

void log_msg(LogLevel level, const char* fmt, ...) {
  if (static_cast<int>(level) < g_level.load()) return;
  const char* prefix = level == LogLevel::Warn ? "warning: " : level == LogLevel::Error ? "error: " : "";
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  // Messages quote file contents (token texts, metadata): control characters are escaped (core/safe_io.h).
  fprintf(stderr, "%s%s\n", prefix, printable(buf).c_str());
}

std::string iso_utc(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace lokal
