// core/safetensors.cpp - safetensors reader and writer (format notes in the header).
#include "core/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safe_io.h"

namespace lokal {

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit (100 MB)

struct DtypeSize {
  const char* name;
  size_t size;
};
constexpr DtypeSize kDtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
    {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

}  // namespace

size_t safetensors_dtype_size(std::string_view dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.name) return d.size;
  return 0;
}

int64_t SafeTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string SafeTensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void SafeTensorsFile::fail(const std::string& what) const { throw Error(name_ + ": " + what); }

std::unique_ptr<SafeTensorsFile> SafeTensorsFile::open(const std::string& path) {
  std::unique_ptr<SafeTensorsFile> f(new SafeTensorsFile());
  f->name_ = path;
  f->file_ = std::make_unique<MappedFile>(path, true);
  f->parse_all(f->file_->data(), f->file_->size());
  return f;
}

std::unique_ptr<SafeTensorsFile> SafeTensorsFile::parse(const uint8_t* data, size_t size, const std::string& name) {
  std::unique_ptr<SafeTensorsFile> f(new SafeTensorsFile());
  f->name_ = name;
  f->parse_all(data, size);
  return f;
}

const SafeTensorInfo* SafeTensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafeTensorsFile::parse_all(const uint8_t* data, size_t size) {
  using nlohmann::json;
  if (size < 8) fail("not a safetensors file: " + std::to_string(size) + " bytes, too short for the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeader) fail("not a safetensors file: header length " + std::to_string(n) + " exceeds 100 MB");
  if (n > size - 8)
    fail("truncated safetensors file: header length " + std::to_string(n) + " but only " + std::to_string(size - 8) +
         " bytes follow");
  if (n < 2) fail("not a safetensors file: header of " + std::to_string(n) + " bytes");
  data_offset_ = 8 + static_cast<size_t>(n);
  const std::string_view text(reinterpret_cast<const char*>(data) + 8, static_cast<size_t>(n));
  json h = json::parse(text.begin(), text.end(), nullptr, false);
  if (h.is_discarded()) fail("safetensors header is not valid JSON");
  if (!h.is_object()) fail("safetensors header is not a JSON object");
  const uint64_t data_size = size - data_offset_;

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail("__metadata__ value '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + key + "'";
    if (!v.is_object()) fail(where + ": entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail(where + ": missing or non-string \"dtype\"");
    if (sh == v.end() || !sh->is_array()) fail(where + ": missing or non-array \"shape\"");
    if (off == v.end() || !off->is_array() || off->size() != 2) fail(where + ": \"data_offsets\" is not [begin, end]");
    SafeTensorInfo t;
    t.name = key;
    t.dtype = dt->get<std::string>();
    const size_t esize = safetensors_dtype_size(t.dtype);
    if (esize == 0) fail(where + ": unknown dtype '" + t.dtype + "'");
    if (sh->size() > 8) fail(where + ": " + std::to_string(sh->size()) + " dimensions");
    uint64_t count = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        fail(where + ": shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (1ull << 62) || __builtin_mul_overflow(count, dim, &count) || count > (1ull << 62))
        fail(where + ": shape too large");
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const json& o : *off)
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        fail(where + ": data_offsets must be non-negative integers");
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.end < t.begin) fail(where + ": data_offsets end before they begin");
    uint64_t want = 0;
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(esize), &want) || want != t.end - t.begin)
      fail(where + ": " + t.dtype + " " + t.shape_str() + " needs " + std::to_string(count) + " x " +
           std::to_string(esize) + " bytes but data_offsets span " + std::to_string(t.end - t.begin));
    if (t.end > data_size)
      fail(where + ": data [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ") lies beyond the end of the file (" +
           std::to_string(data_size) + " data bytes; truncated?)");
    t.data = data + data_offset_ + t.begin;
    t.nbytes = static_cast<size_t>(want);
    tensors_.push_back(std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const SafeTensorInfo& a, const SafeTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < tensors_.size(); ++i)
    if (tensors_[i].begin < tensors_[i - 1].end && tensors_[i].nbytes && tensors_[i - 1].nbytes)
      fail("tensors '" + tensors_[i - 1].name + "' and '" + tensors_[i].name + "' overlap");
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

// --- writer ---

void SafeTensorsWriter::add(std::string name, std::string dtype, std::vector<int64_t> shape, Producer produce) {
  const size_t esize = safetensors_dtype_size(dtype);
  if (esize == 0) throw Error("safetensors: tensor '" + name + "': unknown dtype '" + dtype + "'");
  if (name == "__metadata__" || name.empty()) throw Error("safetensors: invalid tensor name '" + name + "'");
  for (const auto& e : tensors_)
    if (e.name == name) throw Error("safetensors: duplicate tensor '" + name + "'");
  size_t n = esize;
  for (int64_t d : shape) {
    if (d < 0) throw Error("safetensors: tensor '" + name + "': negative dimension");
    n *= static_cast<size_t>(d);
  }
  Entry e{std::move(name), std::move(dtype), std::move(shape), data_size_, n, std::move(produce)};
  data_size_ += n;
  tensors_.push_back(std::move(e));
}

std::string SafeTensorsWriter::header() const {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
    h["__metadata__"] = m;
  }
  for (const auto& e : tensors_) {
    nlohmann::ordered_json t = nlohmann::ordered_json::object();
    t["dtype"] = e.dtype;
    t["shape"] = e.shape;
    t["data_offsets"] = {e.begin, e.begin + e.nbytes};
    h[e.name] = t;
  }
  std::string s = h.dump();
  while ((8 + s.size()) % 8) s += ' ';
  return s;
}

void SafeTensorsWriter::write(const std::string& path) const {
  AtomicFile f(path);  // temporary file beside `path`, removed on failure or a fatal signal
  const std::string h = header();
  uint8_t len[8];
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  f.write(len, 8);
  f.write(h);
  for (const auto& e : tensors_) {
    size_t got = 0;
    e.produce([&](const void* p, size_t k) {
      if (got + k > e.nbytes) throw Error(path + ": tensor '" + e.name + "': producer gave too many bytes");
      f.write(p, k);
      got += k;
    });
    if (got != e.nbytes)
      throw Error(path + ": tensor '" + e.name + "': producer gave " + std::to_string(got) + " of " +
                  std::to_string(e.nbytes) + " bytes");
  }
  f.commit();
}

}  // namespace lokal
