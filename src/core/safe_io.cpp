#include "core/safe_io.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"

namespace lokal {

namespace fs = std::filesystem;

namespace {

// What a non-regular file is, for messages.
const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISLNK(m)) return "a symbolic link";
  return "not a regular file";
}

std::string dir_of(const std::string& path) {
  const fs::path p(path);
  return p.parent_path().empty() ? std::string(".") : p.parent_path().string();
}

// The path writes really go to: a symbolic link to a regular file is followed (the link stays, its target is
// replaced), anything else is the path itself.
std::string write_target(const std::string& path) {
  struct stat lst {}, st {};
  if (::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode) && ::stat(path.c_str(), &st) == 0 &&
      S_ISREG(st.st_mode)) {
    std::error_code ec;
    const fs::path c = fs::canonical(path, ec);
    if (!ec) return c.string();
  }
  return path;
}

// --- the table of temporary files removed on a fatal signal ---
constexpr int kSlots = 64;
constexpr size_t kPathMax = 4096;
struct Slot {
  std::atomic<int> state{0};  // 0 free, 1 being filled, 2 registered
  char path[kPathMax];
};
Slot g_slots[kSlots];

extern "C" void cleanup_and_die(int sig) {
  const int saved = errno;
  for (Slot& s : g_slots)
    if (s.state.load(std::memory_order_acquire) == 2) ::unlink(s.path);
  errno = saved;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

}  // namespace

// --- inputs ---

// stat(2) of an input, with the one message for a missing file.
static struct stat stat_input(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) throw Error(path + ": no such file");
    throw Error(path + ": cannot open: " + std::strerror(e));
  }
  return st;
}

void check_input_file(const std::string& path, const char* what) {
  if (path.empty()) throw Error(std::string("no ") + what + " given");
  const struct stat st = stat_input(path);
  if (!S_ISREG(st.st_mode))
    throw Error(path + ": is " + kind_of(st.st_mode) + ", not a regular file (expected a " + what + ")");
}

void check_input_dir(const std::string& path, const char* what) {
  if (path.empty()) throw Error(std::string("no ") + what + " given");
  const struct stat st = stat_input(path);
  if (!S_ISDIR(st.st_mode)) throw Error(path + ": is " + kind_of(st.st_mode) + ", expected a " + what);
}

std::string read_text_input(const std::string& path, uint64_t max_bytes, const std::string& why) {
  const struct stat st = stat_input(path);
  if (S_ISDIR(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISBLK(st.st_mode))
    throw Error(path + ": is " + kind_of(st.st_mode) + ", expected a text file");
  const std::string too_big = path + ": larger than " + std::to_string(max_bytes) + " bytes (" + why + ")";
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes) throw Error(too_big);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      throw Error(path + ": read failed: " + std::strerror(e));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      ::close(fd);
      throw Error(too_big);
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// --- outputs ---

bool same_file(const std::string& a, const std::string& b) {
  if (a.empty() || b.empty()) return false;
  struct stat sa {}, sb {};
  if (::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0)
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  std::error_code ec1, ec2;
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec1), ec1);
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec2), ec2);
  return !ec1 && !ec2 && ca == cb;
}

void check_output_file(const std::string& out, const std::vector<std::string>& inputs) {
  if (out.empty()) throw Error("no output file given");
  for (const auto& in : inputs)
    if (same_file(out, in))
      throw Error(out + ": is the input file " + (in == out ? std::string("itself") : "'" + in + "'") +
                  "; refusing to overwrite an input (choose another output path)");
  struct stat lst {}, st {};
  const bool exists = ::lstat(out.c_str(), &lst) == 0;
  if (exists) {
    if (::stat(out.c_str(), &st) != 0) throw Error(out + ": is a symbolic link to nothing; refusing to replace it");
    if (S_ISDIR(st.st_mode)) throw Error(out + ": is a directory, expected an output file path");
    if (!S_ISREG(st.st_mode))
      throw Error(out + ": is " + kind_of(st.st_mode) + "; refusing to replace it (the output must be a regular file)");
  }
  const std::string dir = dir_of(write_target(out));
  struct stat dst {};
  if (::stat(dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode))
    throw Error(out + ": cannot write the output: directory '" + dir + "' does not exist");
  if (::access(dir.c_str(), W_OK) != 0)
    throw Error(out + ": cannot write the output: directory '" + dir + "' is not writable (" + std::strerror(errno) + ")");
}

void check_output_dir(const std::string& dir, const std::vector<std::string>& files, const std::vector<std::string>& inputs) {
  if (dir.empty()) throw Error("no output folder given");
  for (const auto& in : inputs)
    if (same_file(dir, in)) throw Error(dir + ": is the input file '" + in + "'; choose another output folder");
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) throw Error(dir + ": is " + kind_of(st.st_mode) + ", expected an output folder");
    if (::access(dir.c_str(), W_OK) != 0)
      throw Error(dir + ": cannot write the output folder: " + std::strerror(errno));
    for (const auto& f : files) check_output_file((fs::path(dir) / f).string(), inputs);
    return;
  }
  // Created on write: the nearest existing ancestor must be a writable directory.
  std::error_code ec;
  fs::path p = fs::absolute(dir, ec).parent_path();
  while (!p.empty() && !fs::exists(p, ec) && p != p.root_path()) p = p.parent_path();
  struct stat pst {};
  if (p.empty() || ::stat(p.c_str(), &pst) != 0 || !S_ISDIR(pst.st_mode))
    throw Error(dir + ": cannot create the output folder: '" + p.string() + "' is not a directory");
  if (::access(p.c_str(), W_OK) != 0)
    throw Error(dir + ": cannot create the output folder: '" + p.string() + "' is not writable (" + std::strerror(errno) + ")");
}

// --- AtomicFile ---

AtomicFile::AtomicFile(std::string path) : path_(write_target(path)) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(path_ + ": is " + kind_of(st.st_mode) + "; refusing to replace it (the output must be a regular file)");
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; fd_ < 0; ++attempt) {
    tmp_ = path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    slot_ = register_temp_path(tmp_);  // before it exists: a signal in between unlinks nothing
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0) {
      const int e = errno;
      unregister_temp_path(slot_);
      slot_ = -1;
      if (e != EEXIST || attempt >= 100)
        throw Error(path_ + ": cannot create temporary file '" + tmp_ + "': " + std::strerror(e));
    }
  }
  buf_.reserve(size_t{1} << 20);
}

AtomicFile::~AtomicFile() {
  if (!committed_) abandon();
}

void AtomicFile::abandon() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  unregister_temp_path(slot_);
  slot_ = -1;
}

void AtomicFile::fail(const char* what, int err) {
  throw Error(path_ + ": " + what + ": " + std::strerror(err));
}

void AtomicFile::flush() {
  const uint8_t* p = buf_.data();
  size_t n = buf_.size();
  while (n) {
    const ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("write failed", w == 0 ? EIO : errno);
    p += w;
    n -= static_cast<size_t>(w);
  }
  buf_.clear();
}

void AtomicFile::write(const void* p, size_t n) {
  if (committed_ || fd_ < 0) throw Error(path_ + ": write after the file was closed");
  const auto* c = static_cast<const uint8_t*>(p);
  while (n) {
    const size_t room = buf_.capacity() - buf_.size();
    const size_t k = std::min(room, n);
    buf_.insert(buf_.end(), c, c + k);
    c += k;
    n -= k;
    written_ += k;
    if (buf_.size() == buf_.capacity()) flush();
  }
}

void AtomicFile::commit_to(const std::string& path) {
  if (dir_of(path) != dir_of(path_)) throw Error(path + ": not in the folder of '" + path_ + "' (a rename would copy)");
  path_ = path;
  commit();
}

void AtomicFile::commit() {
  if (committed_) return;
  flush();
  if (::fsync(fd_) != 0) fail("cannot sync to disk", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("cannot close", errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    throw Error(path_ + ": cannot rename '" + tmp_ + "' into place: " + std::strerror(e));
  }
  committed_ = true;
  unregister_temp_path(slot_);
  slot_ = -1;
  // Make the rename durable (best effort: some file systems refuse fsync on a directory).
  const int dfd = ::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

// --- signals ---

void install_signal_cleanup() {
  static std::atomic<bool> done{false};
  if (done.exchange(true)) return;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction sa {};
    sa.sa_handler = cleanup_and_die;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    ::sigaction(sig, &sa, nullptr);
  }
}

int register_temp_path(const std::string& path) {
  if (path.size() >= kPathMax) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int free_state = 0;
    if (!g_slots[i].state.compare_exchange_strong(free_state, 1, std::memory_order_acq_rel)) continue;
    std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
    g_slots[i].state.store(2, std::memory_order_release);
    return i;
  }
  return -1;
}

void unregister_temp_path(int slot) {
  if (slot >= 0 && slot < kSlots) g_slots[slot].state.store(0, std::memory_order_release);
}

ScratchPath::ScratchPath(const std::string& dir, const std::string& prefix, const std::string& suffix) {
  std::error_code ec;
  fs::path base = dir.empty() ? fs::temp_directory_path(ec) : fs::path(dir);
  if (ec) base = "/tmp";
  std::random_device rd;
  const uint64_t tag = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char name[32];
  std::snprintf(name, sizeof name, "%016llx", static_cast<unsigned long long>(tag));
  path_ = (base / (prefix + name + suffix)).string();
  slot_ = register_temp_path(path_);
}

ScratchPath::~ScratchPath() {
  ::unlink(path_.c_str());
  unregister_temp_path(slot_);
}

// --- printable ---

std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  auto esc_byte = [&](unsigned char c) {
    out += "\\x";
    out += hex[c >> 4];
    out += hex[c & 15];
  };
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x20 || c == 0x7f) {
      switch (c) {
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        case '\r': out += "\\r"; break;
        case 0x1b: out += "\\e"; break;
        default: esc_byte(c);
      }
      ++i;
      continue;
    }
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    // A UTF-8 sequence: length from the lead byte, continuation bytes, no overlongs or surrogates.
    size_t len = 0;
    uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) ok = false;
      else cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok && ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff))))
      ok = false;
    if (!ok) {
      esc_byte(c);
      ++i;
      continue;
    }
    if (cp >= 0x80 && cp <= 0x9f) {
      out += "\\u00";
      out += hex[cp >> 4];
      out += hex[cp & 15];
    } else {
      out.append(reinterpret_cast<const char*>(p + i), len);
    }
    i += len;
  }
  return out;
}

}  // namespace lokal
