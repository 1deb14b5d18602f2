#include "core/mmap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "core/error.h"

namespace lokal {

bool huge_pages_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("LOKAL_HUGEPAGES");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

namespace {
constexpr size_t kHugePage = size_t{2} << 20;

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}
size_t page_round(size_t n) { return (n + page_size() - 1) / page_size() * page_size(); }

// n bytes (a multiple of the page size) of anonymous read-write memory at an address congruent to
// `like` modulo 2 MiB, advised as huge pages (huge_pages_enabled). nullptr if the kernel refuses.
uint8_t* map_anonymous(size_t n, uintptr_t like) {
  const size_t total = n + kHugePage;
  void* raw = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t a = r + (like % kHugePage + kHugePage - r % kHugePage) % kHugePage;
  if (a > r) ::munmap(raw, a - r);
  if (r + total > a + n) ::munmap(reinterpret_cast<void*>(a + n), r + total - (a + n));
  if (huge_pages_enabled()) (void)::madvise(reinterpret_cast<void*>(a), n, MADV_HUGEPAGE);
  return reinterpret_cast<uint8_t*>(a);
}
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux >= 5.14
#endif
}  // namespace

AnonBuffer::AnonBuffer(size_t n, bool populate) : n_(n), mapped_(page_round(n)) {
  if (n == 0) return;
  p_ = map_anonymous(mapped_, 0);
  if (!p_) throw Error("cannot allocate " + std::to_string(n) + " bytes: " + std::strerror(errno));
  if (populate && ::madvise(p_, mapped_, MADV_POPULATE_WRITE) != 0) {  // older kernels: touch one byte per page
    volatile uint8_t* v = p_;
    for (size_t o = 0; o < mapped_; o += page_size()) v[o] = 0;
  }
}

AnonBuffer::~AnonBuffer() {
  if (p_) ::munmap(p_, mapped_);
}

AnonBuffer& AnonBuffer::operator=(AnonBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) ::munmap(p_, mapped_);
    p_ = o.p_, n_ = o.n_, mapped_ = o.mapped_;
    o.p_ = nullptr, o.n_ = o.mapped_ = 0;
  }
  return *this;
}

MappedFile::MappedFile(const std::string& path, bool use_mmap) : path_(path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below); no effect on regular files.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) throw Error(path + ": no such file");
    throw Error(path + ": cannot open: " + std::strerror(e));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": is a directory, expected a GGUF file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": is " + (S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)" : S_ISCHR(st.st_mode) ? "a character device"
                                  : S_ISBLK(st.st_mode) ? "a block device" : S_ISSOCK(st.st_mode) ? "a socket" : "special") +
                ", not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    data_ = nullptr;
    return;
  }
  if (use_mmap) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw Error(path + ": mmap failed: " + std::strerror(e));
    }
    fd_ = fd;
    data_ = static_cast<const uint8_t*>(p);
    mapped_ = true;
  } else {
    try {
      buffer_ = AnonBuffer(size_, /*populate=*/false);  // read() below faults the pages in
    } catch (const Error& e) {
      ::close(fd);
      throw Error(path + ": " + e.what() + " (to read the file into)");
    }
    size_t got = 0;
    while (got < size_) {
      ssize_t r = ::read(fd, buffer_.data() + got, size_ - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        int e = errno;
        ::close(fd);
        throw Error(path + ": read failed: " + (r == 0 ? std::string("unexpected end of file") : std::strerror(e)));
      }
      got += static_cast<size_t>(r);
    }
    ::close(fd);
    data_ = buffer_.data();
  }
}

MappedFile::~MappedFile() {
  if (mapped_ && data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::release(size_t offset, size_t len) const {
  if (!mapped_ || offset >= size_) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t start = (offset + page - 1) / page * page;
  const size_t end = std::min(size_, offset + len) / page * page;
  if (start >= end) return;
  for (const auto& [b, e] : copied_)
    if (b < end && start < e) return;
  ::madvise(const_cast<uint8_t*>(data_) + start, end - start, MADV_DONTNEED);
}

void MappedFile::prefetch(size_t offset, size_t len) const {
  if (!mapped_ || offset >= size_) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t start = offset / page * page;
  size_t end = std::min(size_, offset + len);
  uint8_t* base = const_cast<uint8_t*>(data_) + start;
  ::madvise(base, end - start, MADV_WILLNEED);
  // Map every page now (read it from disk if needed), so the first tokens take no page faults and the
  // process's resident size is known from the start (what `lokal plan` predicts).
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux >= 5.14
#endif
  if (::madvise(base, end - start, MADV_POPULATE_READ) == 0) return;
  volatile uint8_t sink = 0;  // older kernels: touch one byte per page
  for (size_t o = start; o < end; o += page) sink = static_cast<uint8_t>(sink ^ data_[o]);
  (void)sink;
}

uint8_t* MappedFile::writable(size_t offset, size_t len) {
  if (offset > size_ || len > size_ - offset)
    throw Error(path_ + ": writable range [" + std::to_string(offset) + ", +" + std::to_string(len) + ") is outside the file");
  if (!mapped_) return buffer_.data() + offset;
  if (len == 0) return const_cast<uint8_t*>(data_) + offset;
  const size_t start = offset / page_size() * page_size();
  const size_t n = std::min(page_round(offset + len), page_round(size_)) - start;
  uint8_t* dst = const_cast<uint8_t*>(data_) + start;
  // Copy the range into anonymous memory at the same address modulo 2 MiB (so its whole 2 MiB
  // stretches can be huge pages; copy-on-write of the file mapping would give 4 KiB pages only), then
  // move the copy over the mapping with mremap. A chunk is read from the file with pread (the page
  // cache: its pages never enter this process, so resident memory does not grow while copying), unless
  // it overlaps a range made private before, whose rewritten bytes exist only in memory. Pages of the
  // mapping already faulted in are dropped chunk by chunk. Chunks go to up to 4 threads: faulting in
  // fresh huge pages is most of the time in a VM (~2 s per GiB on one thread here, about half on two).
  uint8_t* copy = map_anonymous(n, reinterpret_cast<uintptr_t>(dst));
  if (!copy) throw Error(path_ + ": cannot allocate " + std::to_string(n) + " bytes for the repacked weights: " + std::strerror(errno));
  constexpr size_t kChunk = size_t{64} << 20;
  const size_t n_chunks = (n + kChunk - 1) / kChunk;
  auto read_file = [&](uint8_t* to, size_t len, size_t file_off) {
    for (size_t got = 0; got < len;) {
      const ssize_t r = ::pread(fd_, to + got, len - got, static_cast<off_t>(file_off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  };
  std::atomic<size_t> next{0};
  auto copy_chunks = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n_chunks;) {
      const size_t c = i * kChunk, m = std::min(kChunk, n - c);
      const size_t b = start + c, e = b + m;
      const bool in_memory = std::any_of(copied_.begin(), copied_.end(), [&](const auto& r) { return r.first < e && b < r.second; });
      // (Past the end of the file the last page stays zero, as in the mapping; on a read error the
      // mapping still has the bytes.)
      if (in_memory || !read_file(copy + c, std::min(m, size_ - std::min(size_, b)), b)) std::memcpy(copy + c, dst + c, m);
      (void)::madvise(dst + c, m, MADV_DONTNEED);
    }
  };
  {
    const size_t nth = std::min<size_t>({4, n_chunks, std::max(1u, std::thread::hardware_concurrency())});
    std::vector<std::thread> helpers;
    try {
      for (size_t t = 1; t < nth; ++t) helpers.emplace_back(copy_chunks);
    } catch (const std::system_error&) {  // no more threads: the ones started (and this one) do the rest
    }
    copy_chunks();
    for (auto& t : helpers) t.join();
  }
  if (::mremap(copy, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == MAP_FAILED) {
    const int e = errno;
    ::munmap(copy, n);
    throw Error(path_ + ": cannot place the repacked weights in the mapping: " + std::strerror(e));
  }
  copied_.emplace_back(start, start + n);
  return const_cast<uint8_t*>(data_) + offset;
}

bool MappedFile::lock(std::string* why) {
  if (!data_) return true;
  if (::mlock(data_, size_) != 0) {
    if (why) *why = std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace lokal
