// core/mmap.h - read-only file mapping (or an anonymous copy with --no-mmap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lokal {

// Zero-filled anonymous memory in 2 MiB huge pages where the kernel allows (huge_pages_enabled). With
// `populate`, every page is faulted in at construction so the resident size is known from the start.
// For big buffers streamed over and over (the KV cache, --no-mmap weights): with 4 KiB pages each
// 4 KiB read costs a TLB miss.
class AnonBuffer {
 public:
  AnonBuffer() = default;
  explicit AnonBuffer(size_t n, bool populate = true);  // throws lokal::Error if the memory cannot be had
  ~AnonBuffer();
  AnonBuffer(AnonBuffer&& o) noexcept : p_(o.p_), n_(o.n_), mapped_(o.mapped_) { o.p_ = nullptr, o.n_ = o.mapped_ = 0; }
  AnonBuffer& operator=(AnonBuffer&& o) noexcept;
  AnonBuffer(const AnonBuffer&) = delete;
  AnonBuffer& operator=(const AnonBuffer&) = delete;
  uint8_t* data() { return p_; }
  const uint8_t* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;       // bytes asked for
  size_t mapped_ = 0;  // bytes mapped (n_ rounded up to the page size)
};

class MappedFile {
 public:
  // Maps `path` read-only (private mapping). With use_mmap=false the file is read into memory instead.
  // Throws lokal::Error naming the file on any failure (missing, directory, unreadable).
  explicit MappedFile(const std::string& path, bool use_mmap = true);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool is_mapped() const { return mapped_; }

  // Read [offset, offset+len) ahead and map its pages into this process (no-op without mmap).
  void prefetch(size_t offset, size_t len) const;
  // Drops the whole pages inside [offset, offset+len) from this process's memory (they are read from the file again
  // if ever touched): for weights that live elsewhere, e.g. on a GPU. No-op without mmap and for ranges writable()
  // copied (their bytes exist only in memory).
  void release(size_t offset, size_t len) const;
  // Writable pointer to [offset, offset+len) for rewriting weights in place (the model loader's
  // repacking). The range becomes this process's own anonymous copy of the file's bytes (in 2 MiB huge
  // pages where the kernel allows, see huge_pages_enabled), the file on disk never changes. Resident
  // memory does not grow: the copy is read from the file (pread, page cache), and ranges made writable
  // before are copied from memory, keeping their writes. Not thread-safe; call it before handing the
  // range to threads. Throws lokal::Error if no memory can be had for the copy.
  uint8_t* writable(size_t offset, size_t len);
  // Try to lock the pages in RAM; returns false (with errno text in *why) if refused.
  bool lock(std::string* why);

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  int fd_ = -1;        // mmap: kept open, writable() reads the file's bytes with pread
  std::vector<std::pair<size_t, size_t>> copied_;  // [begin, end) made private by writable()
  AnonBuffer buffer_;  // --no-mmap: the file's bytes
};

// Whether weights copied into anonymous memory (--no-mmap, repacked weights) are advised as huge
// pages: on unless the environment sets LOKAL_HUGEPAGES=0. Decode streams every weight once per token,
// and with 4 KiB pages each 4 KiB costs a TLB miss (a two-level page walk in a VM): huge pages decode
// ~15-20% faster here. The price is paid at load: a fresh huge page may have to be backed by the
// hypervisor (~1-2 s per GiB on the development VM, ~0.1 s on bare metal).
bool huge_pages_enabled();

}  // namespace lokal
