// core/gguf_writer.h - building and writing GGUF files (v3 by default, little endian).
//
// Usage:
//   GGUFWriter w;
//   w.copy_metadata(src);                          // or w.set("general.name", GGUFMetaValue::str("x")) ...
//   w.set("general.file_type", GGUFMetaValue::u32(15));
//   w.add_tensor("a", DType::F32, {64, 2}, ptr, 512);          // data borrowed until write() returns
//   w.add_tensor("b", DType::Q8_0, {256, 4096}, [&](const GGUFWriter::Sink& out) {
//     for (...) out(row, row_bytes);                            // streamed: any chunking, exact total
//   });
//   w.write("out.gguf");                           // out.gguf.tmp-<pid>-<n>, then rename(2)
//
// Layout written (the same as llama.cpp's gguf-py and ggml writers, so rewriting a file they made gives
// identical bytes): header, metadata in insertion order, tensor infos in insertion order, zero padding to
// general.alignment (default 32), then each tensor's data followed by zero padding to the alignment
// (the last tensor is padded too). Tensor offsets are assigned in insertion order.
//
// Everything the reader (core/gguf.h) would refuse is refused here with a lokal::Error, so files written
// by this writer always read back: at most 4 dimensions, every dimension >= 1, rows a multiple of the type's
// block size, unique tensor names, general.alignment a UINT32 power of two, arrays nested at most 8 deep.
#pragma once
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/gguf.h"
#include "core/types.h"

namespace lokal {

// An owned metadata value: the writer's counterpart of GGUFValue (which points into a mapped file).
class GGUFMetaValue {
 public:
  GGUFMetaValue() = default;  // UINT8 0

  static GGUFMetaValue u8(uint8_t v) { return scalar(GGUFType::U8, v); }
  static GGUFMetaValue i8(int8_t v) { return scalar(GGUFType::I8, static_cast<uint8_t>(v)); }
  static GGUFMetaValue u16(uint16_t v) { return scalar(GGUFType::U16, v); }
  static GGUFMetaValue i16(int16_t v) { return scalar(GGUFType::I16, static_cast<uint16_t>(v)); }
  static GGUFMetaValue u32(uint32_t v) { return scalar(GGUFType::U32, v); }
  static GGUFMetaValue i32(int32_t v) { return scalar(GGUFType::I32, static_cast<uint32_t>(v)); }
  static GGUFMetaValue u64(uint64_t v) { return scalar(GGUFType::U64, v); }
  static GGUFMetaValue i64(int64_t v) { return scalar(GGUFType::I64, static_cast<uint64_t>(v)); }
  static GGUFMetaValue f32(float v);
  static GGUFMetaValue f64(double v);
  static GGUFMetaValue boolean(bool v) { return scalar(GGUFType::BOOL, v ? 1 : 0); }
  static GGUFMetaValue str(std::string v);

  // Array of numbers: T is one of uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, uint64_t,
  // int64_t, float, double.
  template <class T>
  static GGUFMetaValue array(const std::vector<T>& v) {
    return raw_array(elem_type<T>(), v.data(), v.size());
  }
  static GGUFMetaValue bool_array(const std::vector<bool>& v);
  static GGUFMetaValue str_array(std::vector<std::string> v);
  // Array whose elements are arrays (of any element types, each its own). Throws if an element is not an array.
  static GGUFMetaValue array_of_arrays(std::vector<GGUFMetaValue> elems);
  // Array of `n` elements of scalar type `elem` stored little endian at `data` (n * size bytes, copied).
  static GGUFMetaValue raw_array(GGUFType elem, const void* data, size_t n);
  // Deep copy of a value read from a file.
  static GGUFMetaValue from(const GGUFValue& v);

  GGUFType type() const { return type_; }
  // Scalars: the value's little-endian bits, zero-extended (F32: the float's bits; BOOL: 0/1).
  uint64_t bits() const { return bits_; }
  const std::string& str_value() const { return str_; }
  // Arrays
  GGUFType arr_type() const { return arr_type_; }
  uint64_t arr_size() const { return arr_n_; }
  const std::vector<uint8_t>& arr_raw() const { return raw_; }          // scalar element arrays
  const std::vector<std::string>& arr_str() const { return strs_; }     // STRING arrays
  const std::vector<GGUFMetaValue>& arr_nested() const { return nested_; }  // ARRAY arrays
  // Array nesting depth: 0 for a scalar or string, 1 for an array of scalars, 2 for an array of arrays...
  int depth() const;

  // Same type and same bytes when written (floats compare by bits, so NaN == NaN of the same bits).
  friend bool operator==(const GGUFMetaValue& a, const GGUFMetaValue& b);

 private:
  static GGUFMetaValue scalar(GGUFType t, uint64_t bits) {
    GGUFMetaValue v;
    v.type_ = t;
    v.bits_ = bits;
    return v;
  }
  template <class T>
  static constexpr GGUFType elem_type() {
    if constexpr (std::is_same_v<T, uint8_t>) return GGUFType::U8;
    else if constexpr (std::is_same_v<T, int8_t>) return GGUFType::I8;
    else if constexpr (std::is_same_v<T, uint16_t>) return GGUFType::U16;
    else if constexpr (std::is_same_v<T, int16_t>) return GGUFType::I16;
    else if constexpr (std::is_same_v<T, uint32_t>) return GGUFType::U32;
    else if constexpr (std::is_same_v<T, int32_t>) return GGUFType::I32;
    else if constexpr (std::is_same_v<T, uint64_t>) return GGUFType::U64;
    else if constexpr (std::is_same_v<T, int64_t>) return GGUFType::I64;
    else if constexpr (std::is_same_v<T, float>) return GGUFType::F32;
    else if constexpr (std::is_same_v<T, double>) return GGUFType::F64;
    else static_assert(sizeof(T) == 0, "GGUFMetaValue::array: unsupported element type");
  }

  GGUFType type_ = GGUFType::U8;
  uint64_t bits_ = 0;
  std::string str_;
  GGUFType arr_type_ = GGUFType::U8;
  uint64_t arr_n_ = 0;
  std::vector<uint8_t> raw_;
  std::vector<std::string> strs_;
  std::vector<GGUFMetaValue> nested_;
};

class GGUFWriter {
 public:
  // Receives a tensor's bytes during write(); call it any number of times with consecutive chunks.
  using Sink = std::function<void(const void* data, size_t n)>;
  // Produces a tensor's data by calling the sink; must deliver exactly the tensor's size in total.
  // Called once per write(), in tensor order; an exception it throws aborts the write (and propagates).
  using Producer = std::function<void(const Sink& out)>;

  struct Tensor {
    std::string name;
    DType type = DType::F32;
    std::vector<int64_t> ne;          // ne[0] = row length; 0 to 4 dimensions
    size_t nbytes = 0;                // from type and shape
    const void* data = nullptr;       // borrowed memory, or
    Producer produce;                 // a producer (exactly one of the two is set)
  };

  GGUFWriter() = default;

  // --- metadata (kept in insertion order) ---
  // Adds a key, or replaces the value of an existing key in place (its position is kept).
  void set(std::string_view key, GGUFMetaValue v);
  void set_str(std::string_view key, std::string v) { set(key, GGUFMetaValue::str(std::move(v))); }
  void set_u32(std::string_view key, uint32_t v) { set(key, GGUFMetaValue::u32(v)); }
  void set_i32(std::string_view key, int32_t v) { set(key, GGUFMetaValue::i32(v)); }
  void set_u64(std::string_view key, uint64_t v) { set(key, GGUFMetaValue::u64(v)); }
  void set_f32(std::string_view key, float v) { set(key, GGUFMetaValue::f32(v)); }
  void set_bool(std::string_view key, bool v) { set(key, GGUFMetaValue::boolean(v)); }
  bool remove(std::string_view key);  // false if absent
  const GGUFMetaValue* find(std::string_view key) const;
  const std::vector<std::pair<std::string, GGUFMetaValue>>& kv() const { return kv_; }
  // Copies every key of `f` in file order (keys already set are replaced in place), general.alignment included.
  void copy_metadata(const GGUFFile& f);

  // general.alignment as UINT32 (must be a power of two). Without the key the alignment is 32.
  void set_alignment(uint32_t alignment);
  uint32_t alignment() const;  // throws if general.alignment is present but malformed
  void set_version(uint32_t version);  // 2 or 3 (default 3; the two differ only in the version field)
  uint32_t version() const { return version_; }

  // --- tensors (written in the order added) ---
  // Borrowed data: `data` must hold exactly the tensor's size in bytes (checked against nbytes) and stay
  // valid until write() returns.
  void add_tensor(std::string name, DType type, std::vector<int64_t> ne, const void* data, size_t nbytes);
  // Streamed data.
  void add_tensor(std::string name, DType type, std::vector<int64_t> ne, Producer produce);
  // A tensor of a parsed file, data borrowed from it (the GGUFFile must outlive write()).
  void add_tensor(const GGUFTensorInfo& t);
  const std::vector<Tensor>& tensors() const { return tensors_; }
  // Bytes of a tensor of this type and shape; throws lokal::Error (naming `name`) if the writer would refuse it.
  static size_t tensor_size(DType type, const std::vector<int64_t>& ne, const std::string& name = "(unnamed)");

  // --- layout (valid once all metadata and tensors are added) ---
  uint64_t data_offset() const;           // start of the tensor data section
  uint64_t tensor_offset(size_t i) const; // relative to data_offset(), as stored in the file
  uint64_t file_size() const;

  // Writes to `path` atomically: the bytes go to a temporary file beside it which is fsync'ed and renamed
  // over `path` only when everything succeeded. On failure the temporary file is removed, `path` is left
  // as it was, and a lokal::Error names the file and the reason (or the producer's exception propagates).
  void write(const std::string& path) const;
  // The same bytes in memory (tests, small files).
  std::vector<uint8_t> write_to_memory() const;

 private:
  // Streams the whole file to `out`; `name` (the path) is used in error messages.
  void write_all(const Sink& out, const std::string& name) const;
  void validate() const;
  void add(Tensor t);

  uint32_t version_ = 3;
  std::vector<std::pair<std::string, GGUFMetaValue>> kv_;
  std::vector<Tensor> tensors_;
  std::set<std::string, std::less<>> tensor_names_;
};

}  // namespace lokal
