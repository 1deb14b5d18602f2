// core/safetensors.h - the Hugging Face safetensors format: reader (mmap) and writer.
//
// Layout: u64 little-endian N, then N bytes of UTF-8 JSON (may end in spaces), then the data section.
// The JSON object maps each tensor name to {"dtype": "F32", "shape": [rows, cols], "data_offsets": [b, e]}
// (byte offsets relative to the data section, e - b = element count x element size) and may hold
// "__metadata__": {string: string}. Shapes are numpy order (the last dimension is the fastest), the
// reverse of GGUF's ne. Tensors must not overlap and must lie inside the file.
//
// Every structural problem throws lokal::Error("<file>: <what is wrong>"); nothing in the header is trusted
// (sizes are checked against the file before anything is allocated from them).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mmap.h"

namespace lokal {

// Element size in bytes of a safetensors dtype ("F32" 4, "BF16" 2, "I64" 8, "BOOL" 1...), 0 if unknown.
size_t safetensors_dtype_size(std::string_view dtype);

struct SafeTensorInfo {
  std::string name;
  std::string dtype;            // "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;   // numpy order
  uint64_t begin = 0, end = 0;  // relative to the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t n_elements() const;
  std::string shape_str() const;  // "[512, 64]"
};

class SafeTensorsFile {
 public:
  static std::unique_ptr<SafeTensorsFile> open(const std::string& path);
  // Parses a buffer the caller keeps alive (fuzzing, tests); `name` is used in messages.
  static std::unique_ptr<SafeTensorsFile> parse(const uint8_t* data, size_t size, const std::string& name);

  const std::string& name() const { return name_; }
  // Tensors in data-offset order.
  const std::vector<SafeTensorInfo>& tensors() const { return tensors_; }
  const SafeTensorInfo* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t data_offset() const { return data_offset_; }

 private:
  SafeTensorsFile() = default;
  void parse_all(const uint8_t* data, size_t size);
  [[noreturn]] void fail(const std::string& what) const;

  std::string name_;
  std::unique_ptr<MappedFile> file_;
  std::vector<SafeTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
  size_t data_offset_ = 0;
};

// Writes one safetensors file: tensors in the order added, each one's bytes right after the previous one
// (no padding between tensors); the header is padded with spaces to a multiple of 8 bytes.
class SafeTensorsWriter {
 public:
  using Sink = std::function<void(const void* data, size_t n)>;
  using Producer = std::function<void(const Sink& out)>;

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // `produce` must deliver exactly product(shape) x dtype size bytes (checked).
  void add(std::string name, std::string dtype, std::vector<int64_t> shape, Producer produce);
  size_t data_size() const { return data_size_; }
  size_t n_tensors() const { return tensors_.size(); }
  // The JSON header as written (padded).
  std::string header() const;
  // Atomic: a temporary file beside `path`, renamed when complete. Throws lokal::Error naming the file.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name, dtype;
    std::vector<int64_t> shape;
    size_t begin = 0, nbytes = 0;
    Producer produce;
  };
  std::vector<Entry> tensors_;
  std::map<std::string, std::string> metadata_;
  size_t data_size_ = 0;
};

}  // namespace lokal
