// core/gguf.h - GGUF v2/v3 reader over a mapped file (or any memory buffer).
//
// Layout (little endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
// n_kv x {string key, u32 value type, value}, n_tensors x {string name, u32 n_dims,
// u64 ne[n_dims], u32 type, u64 offset}, padding to general.alignment, tensor data.
// A string is u64 length + bytes (no NUL). Arrays are u32 element type + u64 count + elements.
//
// Every structural problem throws lokal::Error("<file>: <what is wrong>"); parsing never
// allocates more than the input could describe, so hostile files cannot cause huge allocations.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/mmap.h"
#include "core/types.h"

namespace lokal {

enum class GGUFType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GGUFType t);

struct GGUFValue {
  GGUFType type = GGUFType::U8;
  // Scalars: exactly one of these is meaningful, by type.
  uint64_t u = 0;       // U8/U16/U32/U64/BOOL
  int64_t i = 0;        // I8/I16/I32/I64
  double f = 0;         // F32/F64
  std::string_view s;   // STRING (points into the file buffer)
  // Arrays
  GGUFType arr_type = GGUFType::U8;
  uint64_t arr_n = 0;
  const uint8_t* arr_data = nullptr;        // numeric arrays: raw little-endian elements
  std::vector<std::string_view> arr_str;    // string arrays
  std::vector<GGUFValue> arr_nested;        // arrays of arrays

  bool is_int() const;
  bool is_float() const { return type == GGUFType::F32 || type == GGUFType::F64; }
  // Human-readable short form ("<array of 512 STRING>", "\"llama\"", "10000").
  std::string to_string(size_t max_str = 64) const;
};

struct GGUFTensorInfo {
  std::string name;
  uint32_t n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] = row length (fastest dimension)
  DType type = DType::F32;
  uint64_t offset = 0;           // relative to the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr; // absolute pointer into the buffer
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  std::string shape_str() const;  // "[256, 512]"
};

class GGUFFile {
 public:
  // Open and parse a file (mmap by default).
  static std::unique_ptr<GGUFFile> open(const std::string& path, bool use_mmap = true);
  // Parse a buffer that the caller keeps alive (fuzzing, tests). `name` is used in messages.
  static std::unique_ptr<GGUFFile> parse(const uint8_t* data, size_t size, const std::string& name);

  const std::string& name() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }
  const uint8_t* buffer() const { return base_; }
  const MappedFile* mapped() const { return file_.get(); }
  MappedFile* mapped() { return file_.get(); }  // null for parse()d buffers

  // Metadata, in file order.
  const std::vector<std::pair<std::string, GGUFValue>>& kv() const { return kv_; }
  const GGUFValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Typed accessors. get_* throw a clear Error if the key is missing or has the wrong type;
  // opt_* return nullopt if missing (and throw on wrong type).
  std::string get_str(std::string_view key) const;
  std::optional<std::string> opt_str(std::string_view key) const;
  int64_t get_int(std::string_view key) const;           // any integer type
  std::optional<int64_t> opt_int(std::string_view key) const;
  double get_float(std::string_view key) const;          // F32/F64 (or integer)
  std::optional<double> opt_float(std::string_view key) const;
  std::optional<bool> opt_bool(std::string_view key) const;
  const std::vector<std::string_view>& get_str_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;     // F32/F64 arrays
  std::vector<int64_t> get_int_array(std::string_view key) const;   // any integer array

  // Tensors, in file order.
  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
  const GGUFTensorInfo* find_tensor(std::string_view name) const;

 private:
  GGUFFile() = default;
  void parse_all();
  [[noreturn]] void fail(const std::string& what) const;

  std::string name_;
  std::unique_ptr<MappedFile> file_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  size_t data_offset_ = 0;
  std::vector<std::pair<std::string, GGUFValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GGUFTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace lokal
