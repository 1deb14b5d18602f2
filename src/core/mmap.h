// core/mmap.h - read-only file mapping (or a heap copy with --no-mmap).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lokal {

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
  // Writable pointer to [offset, offset+len) for rewriting weights in place (the model loader's
  // repacking). The mapping is private: written pages become this process's own copies, the file
  // on disk never changes. Throws lokal::Error if the pages cannot be made writable.
  uint8_t* writable(size_t offset, size_t len);
  // Try to lock the pages in RAM; returns false (with errno text in *why) if refused.
  bool lock(std::string* why);

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> buffer_;
};

}  // namespace lokal
