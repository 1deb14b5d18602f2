// core/log.h - minimal leveled logging to stderr.
#pragma once
#include <cstdarg>
#include <ctime>
#include <string>

namespace lokal {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3, Silent = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_msg(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// "2026-12-06T21:34:45Z": a time (seconds since the epoch; default: now) in UTC, ISO 8601.
std::string iso_utc(std::time_t t = std::time(nullptr));

#define LOKAL_INFO(...) ::lokal::log_msg(::lokal::LogLevel::Info, __VA_ARGS__)
#define LOKAL_WARN(...) ::lokal::log_msg(::lokal::LogLevel::Warn, __VA_ARGS__)
#define LOKAL_DEBUG(...) ::lokal::log_msg(::lokal::LogLevel::Debug, __VA_ARGS__)

}  // namespace lokal
