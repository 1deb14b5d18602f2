// server/service.h - running `lokal serve` under systemd: readiness/watchdog notifications and
// `lokal service install` (a hardened unit file plus a starter config).
//
// The unit is Type=notify: the server calls notify_ready() once it listens and the model is loaded, pings
// notify_watchdog() every watchdog_interval()/2, and calls notify_stopping() when a shutdown begins.
// Outside systemd (NOTIFY_SOCKET unset) every notify_* call does nothing.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace lokal::server {

// --- sd_notify ---

// "READY=1" plus "STATUS=<status>" (status may be empty: then only READY=1).
void notify_ready(const std::string& status) noexcept;
// "STATUS=<status>", shown by `systemctl status lokal`. Newlines in a status become spaces.
void notify_status(const std::string& status) noexcept;
// "STOPPING=1".
void notify_stopping() noexcept;
// "WATCHDOG=1".
void notify_watchdog() noexcept;
// The watchdog timeout systemd expects pings within (WatchdogSec=), or 0 when the watchdog is off for this
// process. Ping at half of it.
std::chrono::microseconds watchdog_interval() noexcept;

// --- unit file ---

struct UnitOptions {
  std::string binary;       // absolute path of the lokal executable
  std::string config_path;  // absolute path of the TOML config (`lokal serve --config <it>`)
  bool user = false;        // a systemd --user unit (runs as the installing user) instead of a system unit
  std::string user_name;    // system units: run as this existing user; empty: DynamicUser=yes
  std::string models_dir;   // optional absolute folder holding the models: mounted read-only for the service
};

// The unit file text. Paths are quoted/escaped for systemd (spaces, %, $). Throws lokal::Error for a
// relative or empty path, control characters in a path, a bad user name, or user_name on a user unit.
std::string unit_file_text(const UnitOptions& o);

// /etc/systemd/system, or for user units $XDG_CONFIG_HOME/systemd/user (else ~/.config/systemd/user).
std::string default_unit_dir(bool user);
// /etc/lokal/lokal.toml, or for user units $XDG_CONFIG_HOME/lokal/lokal.toml (else ~/.config/lokal/lokal.toml).
std::string default_config_path(bool user);

struct InstallResult {
  std::string unit_path, config_path;
  bool config_written = false;          // false: a config already existed (kept as is) or config_text was empty
  std::vector<std::string> next_steps;  // shell commands to run next, in order
};

// Writes <unit_dir>/lokal.service (creating folders) and o.config_path with `config_text` unless that file
// already exists (an existing config is never replaced; empty config_text writes none). Both are written
// atomically (temporary file + rename in the same folder) with mode 0644, so the service user can read the
// config. An existing unit is replaced only with `force`; otherwise lokal::Error "... already exists".
// next_steps: `systemctl [--user] daemon-reload`, `systemctl [--user] enable --now lokal`, and for user
// units `loginctl enable-linger` (keeps the service running while the user is logged out).
InstallResult install_service(const UnitOptions& o, const std::string& unit_dir, const std::string& config_text,
                              bool force);

}  // namespace lokal::server
