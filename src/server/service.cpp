// server/service.cpp - sd_notify wrappers, the hardened unit file and `lokal service install` (see service.h).
#include "server/service.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/safe_io.h"

namespace lokal::server {

namespace fs = std::filesystem;

// --- sd_notify ---

namespace {

// Status text on one line: a newline would start another NAME=value assignment.
std::string one_line(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

void notify(const char* msg) noexcept {
  // sd_notify is a no-op returning 0 when NOTIFY_SOCKET is unset; errors are not worth failing over.
  (void)sd_notify(0, msg);
}

}  // namespace

void notify_ready(const std::string& status) noexcept {
  try {
    std::string msg = "READY=1";
    if (!status.empty()) msg += "\nSTATUS=" + one_line(status);
    notify(msg.c_str());
  } catch (...) {  // allocation failure: skip the status, still report readiness
    notify("READY=1");
  }
}

void notify_status(const std::string& status) noexcept {
  try {
    notify(("STATUS=" + one_line(status)).c_str());
  } catch (...) {
  }
}

void notify_stopping() noexcept { notify("STOPPING=1"); }

void notify_watchdog() noexcept { notify("WATCHDOG=1"); }

std::chrono::microseconds watchdog_interval() noexcept {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(static_cast<int64_t>(usec));
}

// --- unit file ---

namespace {

void check_path(const std::string& p, const char* what) {
  if (p.empty()) throw Error(std::string("service: the ") + what + " path is empty");
  if (p[0] != '/') throw Error(std::string("service: the ") + what + " path must be absolute: " + printable(p));
  for (unsigned char c : p)
    if (c < 0x20 || c == 0x7f) throw Error(std::string("service: the ") + what + " path contains control characters: " + printable(p));
}

void check_user_name(const std::string& u) {
  // What systemd accepts as User= without complaint: [a-zA-Z_][a-zA-Z0-9_.-]*, at most 31 characters.
  bool ok = !u.empty() && u.size() <= 31;
  for (size_t i = 0; ok && i < u.size(); ++i) {
    const char c = u[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    ok = alpha || (i > 0 && ((c >= '0' && c <= '9') || c == '.' || c == '-'));
  }
  if (!ok) throw Error("service: invalid user name '" + printable(u) + "' (allowed: [a-zA-Z_][a-zA-Z0-9_.-]*, up to 31 characters)");
}

// One word of a unit setting. Specifiers (%) are doubled everywhere; in command-line arguments `$` starts a
// variable and is doubled too. Words with other special characters are double-quoted with C escapes.
std::string unit_word(const std::string& s, bool command_line) {
  std::string body;
  bool quote = false;
  for (char c : s) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       std::strchr("/_.,:+@=-", c) != nullptr || (static_cast<unsigned char>(c) >= 0x80);
    if (c == '%') body += "%%";
    else if (c == '$' && command_line) body += "$$";
    else if (c == '\\' || c == '"') {
      body += '\\';
      body += c;
      quote = true;
    } else {
      body += c;
      if (!plain && c != '$') quote = true;
    }
  }
  return quote ? '"' + body + '"' : body;
}

}  // namespace

std::string unit_file_text(const UnitOptions& o) {
  check_path(o.binary, "lokal binary");
  check_path(o.config_path, "config file");
  if (!o.models_dir.empty()) check_path(o.models_dir, "models folder");
  if (o.user && !o.user_name.empty())
    throw Error("service: a user unit runs as the user who installs it; a user name applies to system units only");
  if (!o.user_name.empty()) check_user_name(o.user_name);
  const bool sys = !o.user;

  std::string t;
  auto line = [&t](const std::string& s) { t += s + '\n'; };
  line(std::string("# lokal.service - runs `lokal serve` as a hardened systemd ") + (sys ? "system" : "user") + " service.");
  line("# Written by `lokal service install`. Server settings belong in the config file; for local changes to");
  line(std::string("# this unit use `systemctl ") + (sys ? "" : "--user ") + "edit lokal` (a drop-in survives a reinstall).");
  line("[Unit]");
  line("Description=lokal LLM inference server");
  if (sys) {
    line("After=network-online.target");
    line("Wants=network-online.target");
  }
  line("");
  line("[Service]");
  line("Type=notify");
  line("NotifyAccess=main");
  // systemd expands $VARIABLES in the arguments but not in the executable's path.
  line("ExecStart=" + unit_word(o.binary, false) + " serve --config " + unit_word(o.config_path, true));
  line("# lokal pings the watchdog every WatchdogSec/2; a server that stops responding is killed and restarted.");
  line("WatchdogSec=30");
  line("Restart=on-failure");
  line("RestartSec=5");
  line("# Loading a large model from a slow disk can take minutes before the server reports ready.");
  line("TimeoutStartSec=300");
  line("TimeoutStopSec=30");
  line(std::string("# Writable state: ") + (sys ? "/var/lib/lokal" : "~/.local/state/lokal") + ", passed as $STATE_DIRECTORY.");
  line("StateDirectory=lokal");
  line("UMask=0077");
  line("");
  line("# --- sandbox ---");
  if (sys) {
    if (o.user_name.empty()) {
      line("# A user allocated for each run: the config and the model files must be readable by any user.");
      line("DynamicUser=yes");
    } else {
      line("User=" + o.user_name);
    }
  } else {
    line("# The sandboxing below needs user namespaces (on by default in Debian and Ubuntu). If the service fails");
    line("# with status=226/NAMESPACE, remove PrivateUsers= and the Protect*/Private* lines with a drop-in.");
    line("PrivateUsers=yes");
  }
  line("# The whole file system is read-only except the state directory (and a private /tmp).");
  line("ProtectSystem=strict");
  line("# /home stays visible read-only, for models kept there (the service user still needs read access).");
  line("ProtectHome=read-only");
  if (!o.models_dir.empty()) line("ReadOnlyPaths=" + unit_word("-" + o.models_dir, false));
  line("PrivateTmp=yes");
  line("# No device nodes. A GPU backend will need /dev/dri (and /dev/nvidia* for CUDA): set PrivateDevices=no");
  line("# and add DeviceAllow= lines for those devices then.");
  line("PrivateDevices=yes");
  line("NoNewPrivileges=yes");
  line("ProtectKernelTunables=yes");
  line("ProtectKernelModules=yes");
  line("ProtectKernelLogs=yes");
  if (sys) line("ProtectControlGroups=yes");
  line("ProtectClock=yes");
  line("ProtectHostname=yes");
  line("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6");
  line("RestrictNamespaces=yes");
  line("RestrictSUIDSGID=yes");
  line("RestrictRealtime=yes");
  line("LockPersonality=yes");
  line("# No writable+executable memory: where PCRE2's regex JIT cannot get any, the tokenizer uses the interpreter.");
  line("MemoryDenyWriteExecute=yes");
  if (sys) line("RemoveIPC=yes");
  line("SystemCallArchitectures=native");
  line("SystemCallFilter=@system-service");
  line("SystemCallErrorNumber=EPERM");
  if (sys) {
    line("# No capabilities. A port below 1024 needs CAP_NET_BIND_SERVICE in both lines (or a reverse proxy).");
    line("CapabilityBoundingSet=");
    line("AmbientCapabilities=");
  }
  line("");
  line("[Install]");
  line(std::string("WantedBy=") + (sys ? "multi-user.target" : "default.target"));
  return t;
}

namespace {

std::string user_config_home() {
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  if (xdg && xdg[0] == '/') return xdg;
  const char* home = std::getenv("HOME");
  if (!home || home[0] != '/') throw Error("service: neither XDG_CONFIG_HOME nor HOME is set to an absolute path");
  return std::string(home) + "/.config";
}

}  // namespace

std::string default_unit_dir(bool user) {
  return user ? user_config_home() + "/systemd/user" : "/etc/systemd/system";
}

std::string default_config_path(bool user) {
  return user ? user_config_home() + "/lokal/lokal.toml" : "/etc/lokal/lokal.toml";
}

// --- install ---

namespace {

std::string errstr(int e) { return std::strerror(e); }

void make_dirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create folder: " + ec.message());
  if (!fs::is_directory(dir)) throw Error(dir + ": not a folder");
}

// Writes `text` to a temporary file beside `path` (mode 0644 whatever the umask: the service user reads the
// config), fsyncs it and moves it into place. Without `replace` an existing target is never touched (the move
// fails with "already exists"). Returns false in that case, true when written.
bool write_atomic(const std::string& path, const std::string& text, bool replace) {
  static std::atomic<unsigned> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && (errno != EEXIST || attempt >= 100))
      throw Error(path + ": cannot create temporary file: " + errstr(errno));
  }
  const int slot = register_temp_path(tmp);
  auto fail = [&](const std::string& what, int e) {
    ::close(fd);
    ::unlink(tmp.c_str());
    unregister_temp_path(slot);
    throw Error(path + ": " + what + ": " + errstr(e));
  };
  size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("write failed", errno);
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0) fail("chmod failed", errno);
  if (::fsync(fd) != 0) fail("fsync failed", errno);
  if (::close(fd) != 0) {
    fd = -1;
    const int e = errno;
    ::unlink(tmp.c_str());
    unregister_temp_path(slot);
    throw Error(path + ": close failed: " + errstr(e));
  }
  int rc;
  if (replace) {
    rc = ::rename(tmp.c_str(), path.c_str());
  } else {
    rc = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE);
    if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {  // a file system without RENAME_NOREPLACE
      rc = ::link(tmp.c_str(), path.c_str());
      if (rc == 0) ::unlink(tmp.c_str());
    }
  }
  const int e = errno;
  if (rc != 0) {
    ::unlink(tmp.c_str());
    unregister_temp_path(slot);
    if (!replace && e == EEXIST) return false;
    throw Error(path + ": cannot move the new file into place: " + errstr(e));
  }
  unregister_temp_path(slot);
  // Make the rename durable.
  const std::string dir = fs::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

bool exists_no_follow(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

}  // namespace

InstallResult install_service(const UnitOptions& o, const std::string& unit_dir, const std::string& config_text,
                              bool force) {
  const std::string text = unit_file_text(o);  // validates the options before anything is written
  if (unit_dir.empty()) throw Error("service: the unit folder is empty");
  InstallResult r;
  r.unit_path = (fs::path(unit_dir) / "lokal.service").string();
  r.config_path = o.config_path;

  if (!force && exists_no_follow(r.unit_path))
    throw Error(r.unit_path + ": already exists (use --force to replace it)");
  if (exists_no_follow(r.unit_path) && !fs::is_regular_file(r.unit_path))
    throw Error(r.unit_path + ": exists and is not a regular file; refusing to replace it");
  make_dirs(unit_dir);

  // The config first: a failure there leaves no unit pointing at a missing config.
  if (!config_text.empty() && !exists_no_follow(o.config_path)) {
    make_dirs(fs::path(o.config_path).parent_path().string());
    r.config_written = write_atomic(o.config_path, config_text, false);
  }
  if (!write_atomic(r.unit_path, text, force))
    throw Error(r.unit_path + ": already exists (use --force to replace it)");

  const std::string sc = o.user ? "systemctl --user " : "systemctl ";
  r.next_steps.push_back(sc + "daemon-reload");
  r.next_steps.push_back(sc + "enable --now lokal");
  if (o.user) r.next_steps.push_back("loginctl enable-linger");
  return r;
}

}  // namespace lokal::server
