// systemd integration: sd_notify datagrams through a real NOTIFY_SOCKET, the watchdog interval, the unit
// file (checked by `systemd-analyze verify`), `lokal service install`, and the files under packaging/.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <vector>
#include <toml++/toml.h>

#include "core/error.h"
#include "server/service.h"

using namespace lokal::server;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "lokal-svc-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// An AF_UNIX datagram socket standing in for systemd's notification socket.
struct NotifySocket {
  TempDir dir;
  std::string path;
  int fd = -1;
  NotifySocket() {
    path = dir.path + "/notify";
    fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind failed");
    timeval tv{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~NotifySocket() { ::close(fd); }
  // The next datagram, or "<none>" if nothing is waiting (wait: up to 1 s).
  std::string recv(bool wait = true) {
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, wait ? 0 : MSG_DONTWAIT);
    return n < 0 ? "<none>" : std::string(buf, static_cast<size_t>(n));
  }
};

struct EnvGuard {
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  void set(const std::string& k, const std::optional<std::string>& v) {
    const char* old = std::getenv(k.c_str());
    saved.emplace_back(k, old ? std::optional<std::string>(old) : std::nullopt);
    if (v) ::setenv(k.c_str(), v->c_str(), 1);
    else ::unsetenv(k.c_str());
  }
  ~EnvGuard() {
    for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
      if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else ::unsetenv(it->first.c_str());
    }
  }
};

bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l))
    if (l == line) return true;
  return false;
}

// stdout+stderr and exit status of a shell command.
std::pair<int, std::string> shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

UnitOptions packaged_options() {
  UnitOptions o;
  o.binary = "/usr/local/bin/lokal";
  o.config_path = "/etc/lokal/lokal.toml";
  return o;
}

const char* kSystemdAnalyze = "/usr/bin/systemd-analyze";

}  // namespace

// --- sd_notify ---

TEST(ServerService, NotifyThroughSocket) {
  NotifySocket sock;
  EnvGuard env;
  env.set("NOTIFY_SOCKET", sock.path);
  notify_ready("x");
  const std::string ready = sock.recv();
  EXPECT_TRUE(has_line(ready, "READY=1")) << ready;
  EXPECT_TRUE(has_line(ready, "STATUS=x")) << ready;
  notify_watchdog();
  EXPECT_EQ(sock.recv(), "WATCHDOG=1");
  notify_status("loading\nREADY=1");  // a newline cannot inject another assignment
  EXPECT_EQ(sock.recv(), "STATUS=loading READY=1");
  notify_stopping();
  EXPECT_EQ(sock.recv(), "STOPPING=1");
  notify_ready("");
  EXPECT_EQ(sock.recv(), "READY=1");
  EXPECT_EQ(sock.recv(false), "<none>");
}

TEST(ServerService, NotifyWithoutSocketDoesNothing) {
  NotifySocket sock;
  EnvGuard env;
  env.set("NOTIFY_SOCKET", std::nullopt);
  notify_ready("x");
  notify_status("y");
  notify_watchdog();
  notify_stopping();
  EXPECT_EQ(sock.recv(false), "<none>");
  // A socket path that does not exist: still no exception.
  env.set("NOTIFY_SOCKET", sock.dir.path + "/missing");
  EXPECT_NO_THROW(notify_ready("x"));
  EXPECT_NO_THROW(notify_watchdog());
}

TEST(ServerService, WatchdogInterval) {
  EnvGuard env;
  env.set("WATCHDOG_USEC", "2000000");
  env.set("WATCHDOG_PID", std::to_string(::getpid()));
  EXPECT_EQ(watchdog_interval(), std::chrono::seconds(2));
  env.set("WATCHDOG_PID", std::to_string(::getpid() + 1));  // meant for another process
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds(0));
  env.set("WATCHDOG_PID", std::nullopt);
  env.set("WATCHDOG_USEC", std::nullopt);
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds(0));
}

// --- unit text ---

TEST(ServerService, SystemUnitHardening) {
  const std::string t = unit_file_text(packaged_options());
  for (const char* l :
       {"[Unit]", "[Service]", "[Install]", "Type=notify", "NotifyAccess=main",
        "ExecStart=/usr/local/bin/lokal serve --config /etc/lokal/lokal.toml", "WatchdogSec=30", "Restart=on-failure",
        "TimeoutStopSec=30", "DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=read-only", "PrivateTmp=yes",
        "PrivateDevices=yes", "NoNewPrivileges=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "RestrictRealtime=yes",
        "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "CapabilityBoundingSet=",
        "StateDirectory=lokal", "WantedBy=multi-user.target"})
    EXPECT_TRUE(has_line(t, l)) << "missing: " << l << "\n" << t;
  EXPECT_FALSE(has_line(t, "PrivateUsers=yes"));
  EXPECT_EQ(t.find("ReadOnlyPaths="), std::string::npos);
  EXPECT_EQ(t.find("\nUser="), std::string::npos);
  EXPECT_EQ(t.find("ExecReload"), std::string::npos);
  EXPECT_NE(t.find("/dev/dri"), std::string::npos);  // the GPU note

  UnitOptions o = packaged_options();
  o.user_name = "lokal";
  o.models_dir = "/srv/models";
  const std::string u = unit_file_text(o);
  EXPECT_TRUE(has_line(u, "User=lokal"));
  EXPECT_FALSE(has_line(u, "DynamicUser=yes"));
  EXPECT_TRUE(has_line(u, "ReadOnlyPaths=-/srv/models"));
}

TEST(ServerService, UserUnitDifferences) {
  UnitOptions o = packaged_options();
  o.user = true;
  o.config_path = "/home/me/.config/lokal/lokal.toml";
  const std::string t = unit_file_text(o);
  for (const char* l : {"Type=notify", "WatchdogSec=30", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateUsers=yes",
                        "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes", "WantedBy=default.target",
                        "ExecStart=/usr/local/bin/lokal serve --config /home/me/.config/lokal/lokal.toml"})
    EXPECT_TRUE(has_line(t, l)) << "missing: " << l << "\n" << t;
  for (const char* bad : {"DynamicUser=", "User=", "CapabilityBoundingSet=", "AmbientCapabilities=", "RemoveIPC=",
                          "ProtectControlGroups=", "multi-user.target", "network-online.target"})
    EXPECT_EQ(t.find(std::string("\n") + bad), std::string::npos) << bad;
  EXPECT_EQ(t.find("multi-user.target"), std::string::npos);
  o.user_name = "someone";
  EXPECT_THROW(unit_file_text(o), lokal::Error);
}

TEST(ServerService, UnitQuotingAndValidation) {
  UnitOptions o = packaged_options();
  o.binary = "/opt/my apps/$lokal";
  o.config_path = "/etc/lokal/100%$HOME\"q\".toml";
  o.models_dir = "/srv/my models/50%";
  const std::string t = unit_file_text(o);
  EXPECT_TRUE(has_line(t, "ExecStart=\"/opt/my apps/$lokal\" serve --config \"/etc/lokal/100%%$$HOME\\\"q\\\".toml\"")) << t;
  EXPECT_TRUE(has_line(t, "ReadOnlyPaths=\"-/srv/my models/50%%\"")) << t;

  auto bad = [](UnitOptions x) { EXPECT_THROW(unit_file_text(x), lokal::Error); };
  UnitOptions x = packaged_options();
  x.binary = "lokal";
  bad(x);
  x = packaged_options();
  x.binary = "";
  bad(x);
  x = packaged_options();
  x.config_path = "lokal.toml";
  bad(x);
  x = packaged_options();
  x.config_path = "/etc/a\nb.toml";
  bad(x);
  x = packaged_options();
  x.models_dir = "models";
  bad(x);
  x = packaged_options();
  x.user_name = "bad user";
  bad(x);
  x = packaged_options();
  x.user_name = "-x";
  bad(x);
}

// The generated units pass `systemd-analyze verify` without a single warning (unknown keys, bad values).
TEST(ServerService, SystemdAnalyzeVerify) {
  if (::access(kSystemdAnalyze, X_OK) != 0) GTEST_SKIP() << "systemd-analyze is not installed";
  TempDir d;
  // A binary path that needs quoting and escaping; verify checks that ExecStart's binary exists.
  const std::string bin = d.path + "/my bin%$x";
  fs::create_symlink("/bin/true", bin);
  fs::create_directories(d.path + "/models dir");

  UnitOptions sys;
  sys.binary = bin;
  sys.config_path = d.path + "/conf dir/lokal.toml";
  sys.models_dir = d.path + "/models dir";
  const auto r1 = install_service(sys, d.path + "/system", "", false);
  auto [rc1, out1] = shell(std::string(kSystemdAnalyze) + " verify " + shell_quote(r1.unit_path));
  EXPECT_EQ(rc1, 0) << out1;
  EXPECT_EQ(out1, "") << slurp(r1.unit_path);

  sys.user_name = "root";
  const auto r2 = install_service(sys, d.path + "/system2", "", false);
  auto [rc2, out2] = shell(std::string(kSystemdAnalyze) + " verify " + shell_quote(r2.unit_path));
  EXPECT_EQ(rc2, 0) << out2;
  EXPECT_EQ(out2, "") << slurp(r2.unit_path);

  UnitOptions usr = sys;
  usr.user = true;
  usr.user_name.clear();
  const auto r3 = install_service(usr, d.path + "/user", "", false);
  fs::create_directories(d.path + "/runtime");
  fs::permissions(d.path + "/runtime", fs::perms::owner_all);
  auto [rc3, out3] = shell("XDG_RUNTIME_DIR=" + shell_quote(d.path + "/runtime") + " " + kSystemdAnalyze +
                           " --user verify " + shell_quote(r3.unit_path));
  EXPECT_EQ(rc3, 0) << out3;
  EXPECT_EQ(out3, "") << slurp(r3.unit_path);
}

// --- install ---

TEST(ServerService, InstallWritesRefusesAndKeepsConfig) {
  TempDir d;
  UnitOptions o = packaged_options();
  o.config_path = d.path + "/etc/lokal/lokal.toml";
  const std::string unit_dir = d.path + "/units/nested";
  const mode_t old_mask = ::umask(077);  // files must still come out 0644: the service user reads the config

  const InstallResult r = install_service(o, unit_dir, "port = 8080\n", false);
  EXPECT_EQ(r.unit_path, unit_dir + "/lokal.service");
  EXPECT_EQ(r.config_path, o.config_path);
  EXPECT_TRUE(r.config_written);
  EXPECT_EQ(slurp(r.unit_path), unit_file_text(o));
  EXPECT_EQ(slurp(r.config_path), "port = 8080\n");
  EXPECT_EQ(r.next_steps, (std::vector<std::string>{"systemctl daemon-reload", "systemctl enable --now lokal"}));
  for (const auto& p : {r.unit_path, r.config_path}) {
    struct stat st {};
    ASSERT_EQ(::stat(p.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u) << p;
  }

  // Again without force: refused, nothing changes.
  UnitOptions o2 = o;
  o2.models_dir = "/srv/models";
  try {
    install_service(o2, unit_dir, "port = 9999\n", false);
    ADD_FAILURE() << "no error";
  } catch (const lokal::Error& e) {
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos) << e.what();
  }
  EXPECT_EQ(slurp(r.unit_path), unit_file_text(o));

  // With force: the unit is replaced, the existing config is kept.
  const InstallResult r2 = install_service(o2, unit_dir, "port = 9999\n", true);
  EXPECT_FALSE(r2.config_written);
  EXPECT_EQ(slurp(r2.unit_path), unit_file_text(o2));
  EXPECT_EQ(slurp(r2.config_path), "port = 8080\n");
  ::umask(old_mask);

  // No temporary files are left behind.
  for (const auto& dir : {unit_dir, d.path + "/etc/lokal"})
    for (const auto& e : fs::directory_iterator(dir))
      EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();

  // User units: --user commands and lingering.
  UnitOptions u = o;
  u.user = true;
  const InstallResult r3 = install_service(u, d.path + "/user-units", "", false);
  EXPECT_FALSE(r3.config_written);
  EXPECT_EQ(r3.next_steps, (std::vector<std::string>{"systemctl --user daemon-reload", "systemctl --user enable --now lokal",
                                                      "loginctl enable-linger"}));

  // Bad options write nothing.
  UnitOptions bad = o;
  bad.binary = "relative";
  EXPECT_THROW(install_service(bad, d.path + "/never", "x", false), lokal::Error);
  EXPECT_FALSE(fs::exists(d.path + "/never"));
  // A unit folder that cannot be created.
  std::ofstream(d.path + "/afile") << "x";
  EXPECT_THROW(install_service(o, d.path + "/afile/sub", "", false), lokal::Error);
}

TEST(ServerService, DefaultDirs) {
  EnvGuard env;
  EXPECT_EQ(default_unit_dir(false), "/etc/systemd/system");
  EXPECT_EQ(default_config_path(false), "/etc/lokal/lokal.toml");
  env.set("XDG_CONFIG_HOME", "/xdg");
  EXPECT_EQ(default_unit_dir(true), "/xdg/systemd/user");
  EXPECT_EQ(default_config_path(true), "/xdg/lokal/lokal.toml");
  env.set("XDG_CONFIG_HOME", std::nullopt);
  env.set("HOME", "/home/me");
  EXPECT_EQ(default_unit_dir(true), "/home/me/.config/systemd/user");
  EXPECT_EQ(default_config_path(true), "/home/me/.config/lokal/lokal.toml");
}

// --- packaging/ ---

TEST(ServerService, PackagedUnitMatchesGenerated) {
  const std::string path = std::string(LOKAL_SOURCE_DIR) + "/packaging/lokal.service";
  ASSERT_TRUE(fs::exists(path)) << path;
  EXPECT_EQ(slurp(path), unit_file_text(packaged_options()))
      << "regenerate packaging/lokal.service from unit_file_text({/usr/local/bin/lokal, /etc/lokal/lokal.toml})";
}

// Every documented key appears as a commented example; uncommented, the examples form valid TOML.
TEST(ServerService, PackagedConfigExample) {
  const std::string path = std::string(LOKAL_SOURCE_DIR) + "/packaging/lokal.toml";
  const std::string text = slurp(path);
  ASSERT_FALSE(text.empty()) << path;
  std::string uncommented;
  std::istringstream in(text);
  std::string line;
  const std::regex example("^# ?([a-z_]+ = .*)$");
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, example)) uncommented += std::string(m[1]) + "\n";
  }
  toml::table t;
  try {
    t = toml::parse(uncommented);
  } catch (const toml::parse_error& e) {
    FAIL() << e.what() << "\n" << uncommented;
  }
  for (const char* key : {"model", "host", "port", "ctx_size", "parallel", "threads", "batch_size", "api_key_file", "alias",
                          "cache_type_k", "cache_type_v", "metrics", "cors", "max_body", "timeout",
                          "rate_limit_rpm", "rate_limit_tpm", "queue_size", "chat_template"})
    EXPECT_TRUE(t.contains(key)) << key;
  EXPECT_EQ(t["host"].value_or(std::string()), "127.0.0.1");
  EXPECT_EQ(t["port"].value_or(0), 8080);
  EXPECT_TRUE(t["metrics"].is_boolean());
  EXPECT_TRUE(t["cors"].is_array());
  // As shipped (everything commented out) it parses too.
  EXPECT_NO_THROW(toml::parse(text));
}
