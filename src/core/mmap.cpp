#include "core/mmap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"

namespace lokal {

MappedFile::MappedFile(const std::string& path, bool use_mmap) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
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
    throw Error(path + ": not a regular file");
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
    ::close(fd);
    data_ = static_cast<const uint8_t*>(p);
    mapped_ = true;
  } else {
    buffer_.resize(size_);
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
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t start = offset / page * page;
  uint8_t* base = const_cast<uint8_t*>(data_) + start;
  if (len > 0 && ::mprotect(base, offset + len - start, PROT_READ | PROT_WRITE) != 0)
    throw Error(path_ + ": cannot make the mapping writable: " + std::strerror(errno));
  // Fault the pages in as this process's private copies in one call: copying each page on its first
  // write instead would replace a read-only mapping per page (a TLB flush across threads each time).
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux >= 5.14
#endif
  if (len > 0) (void)::madvise(base, offset + len - start, MADV_POPULATE_WRITE);
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
