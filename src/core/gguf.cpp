#include "core/gguf.h"

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace lokal {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little endian
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;
// Counts read from the file are only checked against the bytes left, which for a multi-GB model still
// allows claims worth many gigabytes of parsed structures (152 bytes per claimed 13-byte key/value, 120
// per 12-byte nested array, 104 per 24-byte tensor info, 16 per 8-byte string). So never reserve more
// than this many elements up front; vectors grow with what is actually parsed.
constexpr uint64_t kMaxReserve = 4096;
size_t reserve_count(uint64_t n) { return static_cast<size_t>(std::min(n, kMaxReserve)); }

size_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::U8: case GGUFType::I8: case GGUFType::BOOL: return 1;
    case GGUFType::U16: case GGUFType::I16: return 2;
    case GGUFType::U32: case GGUFType::I32: case GGUFType::F32: return 4;
    case GGUFType::U64: case GGUFType::I64: case GGUFType::F64: return 8;
    default: return 0;
  }
}

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GGUFType::F64); }

// Bounds-checked little-endian cursor. Errors are reported with the byte offset.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size, const std::string& name) : base_(base), size_(size), name_(name) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(name_ + ": invalid GGUF: " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  void need(size_t n, const char* what) {
    if (n > remaining())
      fail(std::string("file truncated while reading ") + what + " (need " + std::to_string(n) + " bytes, " +
           std::to_string(remaining()) + " left)");
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string_view read_str(const char* what) {
    uint64_t n = read<uint64_t>(what);
    if (n > remaining())
      fail(std::string(what) + " has length " + std::to_string(n) + " but only " + std::to_string(remaining()) +
           " bytes remain");
    std::string_view s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  const uint8_t* ptr() const { return base_ + pos_; }
  void skip(size_t n, const char* what) {
    need(n, what);
    pos_ += n;
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

GGUFValue read_value(Cursor& c, GGUFType type, int depth, const std::string& key) {
  GGUFValue v;
  v.type = type;
  switch (type) {
    case GGUFType::U8: v.u = c.read<uint8_t>("value"); break;
    case GGUFType::I8: v.i = c.read<int8_t>("value"); break;
    case GGUFType::U16: v.u = c.read<uint16_t>("value"); break;
    case GGUFType::I16: v.i = c.read<int16_t>("value"); break;
    case GGUFType::U32: v.u = c.read<uint32_t>("value"); break;
    case GGUFType::I32: v.i = c.read<int32_t>("value"); break;
    case GGUFType::U64: v.u = c.read<uint64_t>("value"); break;
    case GGUFType::I64: v.i = c.read<int64_t>("value"); break;
    case GGUFType::F32: v.f = c.read<float>("value"); break;
    case GGUFType::F64: v.f = c.read<double>("value"); break;
    case GGUFType::BOOL: {
      uint8_t b = c.read<uint8_t>("value");
      if (b > 1) c.fail("key '" + key + "': bool value " + std::to_string(b) + " is not 0 or 1");
      v.u = b;
      break;
    }
    case GGUFType::STRING: v.s = c.read_str("string value"); break;
    case GGUFType::ARRAY: {
      if (depth >= kMaxArrayDepth) c.fail("key '" + key + "': arrays nested deeper than " + std::to_string(kMaxArrayDepth));
      uint32_t et = c.read<uint32_t>("array element type");
      if (!valid_type(et)) c.fail("key '" + key + "': unknown array element type " + std::to_string(et));
      v.arr_type = static_cast<GGUFType>(et);
      v.arr_n = c.read<uint64_t>("array length");
      size_t min_elem = v.arr_type == GGUFType::STRING ? 8 : v.arr_type == GGUFType::ARRAY ? 12 : scalar_size(v.arr_type);
      if (v.arr_n > c.remaining() / min_elem)
        c.fail("key '" + key + "': array length " + std::to_string(v.arr_n) + " exceeds the rest of the file");
      if (v.arr_type == GGUFType::STRING) {
        v.arr_str.reserve(reserve_count(v.arr_n));
        for (uint64_t k = 0; k < v.arr_n; ++k) v.arr_str.push_back(c.read_str("string array element"));
      } else if (v.arr_type == GGUFType::ARRAY) {
        v.arr_nested.reserve(reserve_count(v.arr_n));
        for (uint64_t k = 0; k < v.arr_n; ++k) v.arr_nested.push_back(read_value(c, GGUFType::ARRAY, depth + 1, key));
      } else {
        v.arr_data = c.ptr();
        c.skip(static_cast<size_t>(v.arr_n) * min_elem, "array data");
        if (v.arr_type == GGUFType::BOOL) {
          for (uint64_t k = 0; k < v.arr_n; ++k)
            if (v.arr_data[k] > 1) c.fail("key '" + key + "': bool array element is not 0 or 1");
        }
      }
      break;
    }
  }
  return v;
}

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

double numeric_elem(GGUFType t, const uint8_t* p) {
  switch (t) {
    case GGUFType::U8: case GGUFType::BOOL: return *p;
    case GGUFType::I8: return static_cast<int8_t>(*p);
    case GGUFType::U16: return load<uint16_t>(p);
    case GGUFType::I16: return load<int16_t>(p);
    case GGUFType::U32: return load<uint32_t>(p);
    case GGUFType::I32: return load<int32_t>(p);
    case GGUFType::U64: return static_cast<double>(load<uint64_t>(p));
    case GGUFType::I64: return static_cast<double>(load<int64_t>(p));
    case GGUFType::F32: return load<float>(p);
    case GGUFType::F64: return load<double>(p);
    default: return 0;
  }
}

}  // namespace

const char* gguf_type_name(GGUFType t) {
  static const char* names[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
  auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "UNKNOWN";
}

bool GGUFValue::is_int() const {
  switch (type) {
    case GGUFType::U8: case GGUFType::I8: case GGUFType::U16: case GGUFType::I16: case GGUFType::U32:
    case GGUFType::I32: case GGUFType::U64: case GGUFType::I64: return true;
    default: return false;
  }
}

std::string GGUFValue::to_string(size_t max_str) const {
  switch (type) {
    case GGUFType::STRING: {
      std::string out = "\"";
      for (size_t k = 0; k < s.size() && k < max_str; ++k) {
        unsigned char ch = static_cast<unsigned char>(s[k]);
        if (ch == '\n') out += "\\n";
        else if (ch < 0x20) out += '?';
        else out += static_cast<char>(ch);
      }
      if (s.size() > max_str) out += "...";
      return out + "\"";
    }
    case GGUFType::ARRAY:
      return "<array of " + std::to_string(arr_n) + " " + gguf_type_name(arr_type) + ">";
    case GGUFType::BOOL: return u ? "true" : "false";
    case GGUFType::F32: case GGUFType::F64: {
      char buf[64];
      snprintf(buf, sizeof buf, "%g", f);
      return buf;
    }
    case GGUFType::I8: case GGUFType::I16: case GGUFType::I32: case GGUFType::I64: return std::to_string(i);
    default: return std::to_string(u);
  }
}

std::string GGUFTensorInfo::shape_str() const {
  std::string s = "[";
  for (uint32_t d = 0; d < std::max<uint32_t>(n_dims, 1); ++d) {
    if (d) s += ", ";
    s += std::to_string(ne[d]);
  }
  return s + "]";
}

std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path, bool use_mmap) {
  std::unique_ptr<GGUFFile> f(new GGUFFile());
  f->name_ = path;
  f->file_ = std::make_unique<MappedFile>(path, use_mmap);
  f->base_ = f->file_->data();
  f->size_ = f->file_->size();
  f->parse_all();
  return f;
}

std::unique_ptr<GGUFFile> GGUFFile::parse(const uint8_t* data, size_t size, const std::string& name) {
  std::unique_ptr<GGUFFile> f(new GGUFFile());
  f->name_ = name;
  f->base_ = data;
  f->size_ = size;
  f->parse_all();
  return f;
}

void GGUFFile::fail(const std::string& what) const { throw Error(name_ + ": invalid GGUF: " + what); }

void GGUFFile::parse_all() {
  Cursor c(base_, size_, name_);
  if (size_ < 4) fail("file is " + std::to_string(size_) + " bytes, too small to be GGUF");
  uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) {
    char m[5] = {};
    std::memcpy(m, base_, 4);
    for (char& ch : m)
      if (ch && (ch < 0x20 || ch > 0x7e)) ch = '?';
    fail(std::string("bad magic '") + m + "' (expected 'GGUF'); not a GGUF file");
  }
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) fail("GGUF version 1 is not supported (re-convert the model; versions 2 and 3 are)");
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffffu) == 0 && (version_ >> 16) != 0)
      fail("big-endian GGUF (version field " + std::to_string(version_) + ") is not supported");
    fail("unsupported GGUF version " + std::to_string(version_) + " (supported: 2, 3)");
  }
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each key/value needs >= 13 bytes (8 key length + 4 type + 1 value); each tensor info >= 24.
  if (n_kv > c.remaining() / 13)
    c.fail("metadata count " + std::to_string(n_kv) + " is larger than the file could hold");
  if (n_tensors > c.remaining() / 24)
    c.fail("tensor count " + std::to_string(n_tensors) + " is larger than the file could hold");

  kv_.reserve(reserve_count(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key(c.read_str("metadata key"));
    uint32_t t = c.read<uint32_t>("metadata value type");
    if (!valid_type(t)) c.fail("key '" + key + "' has unknown value type " + std::to_string(t));
    GGUFValue v = read_value(c, static_cast<GGUFType>(t), 0, key);
    if (kv_index_.count(key)) c.fail("duplicate metadata key '" + key + "'");
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GGUFValue* a = find("general.alignment")) {
    if (a->type != GGUFType::U32) fail("general.alignment must be UINT32, got " + std::string(gguf_type_name(a->type)));
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) fail("general.alignment " + std::to_string(a->u) + " is not a power of two");
    alignment_ = static_cast<uint32_t>(a->u);
  }

  tensors_.reserve(reserve_count(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GGUFTensorInfo ti;
    ti.name = std::string(c.read_str("tensor name"));
    ti.n_dims = c.read<uint32_t>("tensor dimension count");
    if (ti.n_dims > kMaxDims)
      c.fail("tensor '" + ti.name + "' has " + std::to_string(ti.n_dims) + " dimensions (max " + std::to_string(kMaxDims) + ")");
    int64_t n_el = 1;
    for (uint32_t d = 0; d < ti.n_dims; ++d) {
      uint64_t ne = c.read<uint64_t>("tensor dimension");
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        c.fail("tensor '" + ti.name + "' has invalid dimension " + std::to_string(ne));
      if (static_cast<int64_t>(ne) > std::numeric_limits<int64_t>::max() / n_el)
        c.fail("tensor '" + ti.name + "': element count overflows");
      n_el *= static_cast<int64_t>(ne);
      ti.ne[d] = static_cast<int64_t>(ne);
    }
    uint32_t type = c.read<uint32_t>("tensor type");
    const TypeInfo* info = type_info(type);
    if (!info) c.fail("tensor '" + ti.name + "' has unknown type id " + std::to_string(type));
    ti.type = static_cast<DType>(type);
    ti.offset = c.read<uint64_t>("tensor data offset");
    if (ti.ne[0] % info->block_size != 0)
      c.fail("tensor '" + ti.name + "': row length " + std::to_string(ti.ne[0]) + " is not a multiple of the " +
             info->name + " block size " + std::to_string(info->block_size));
    // n_el is < 2^63 so blocks * type_size can only overflow for absurd sizes; check anyway.
    uint64_t blocks = static_cast<uint64_t>(n_el / info->block_size);
    if (blocks > std::numeric_limits<uint64_t>::max() / info->type_size)
      c.fail("tensor '" + ti.name + "': byte size overflows");
    ti.nbytes = static_cast<size_t>(blocks * info->type_size);
    if (tensor_index_.count(ti.name)) c.fail("duplicate tensor name '" + ti.name + "'");
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  // Data section starts at the next multiple of the alignment.
  size_t pos = c.pos();
  size_t pad = (alignment_ - pos % alignment_) % alignment_;
  data_offset_ = pos + pad;
  if (!tensors_.empty() && data_offset_ > size_) fail("file truncated before the tensor data section");
  const size_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;

  std::vector<const GGUFTensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (auto& ti : tensors_) {
    if (ti.offset % alignment_ != 0)
      fail("tensor '" + ti.name + "' data offset " + std::to_string(ti.offset) + " is not aligned to " +
           std::to_string(alignment_));
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
      fail("tensor '" + ti.name + "' data [" + std::to_string(ti.offset) + ", +" + std::to_string(ti.nbytes) +
           ") lies outside the file's data section of " + std::to_string(data_size) + " bytes (truncated file?)");
    ti.data = base_ + data_offset_ + ti.offset;
    by_offset.push_back(&ti);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GGUFTensorInfo* a, const GGUFTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GGUFTensorInfo* a = by_offset[k - 1];
    const GGUFTensorInfo* b = by_offset[k];
    if (a->offset + a->nbytes > b->offset)
      fail("tensor data of '" + a->name + "' and '" + b->name + "' overlap");
  }
}

const GGUFValue* GGUFFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GGUFTensorInfo* GGUFFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
[[noreturn]] void wrong_type(const std::string& file, std::string_view key, const char* want, GGUFType got) {
  throw Error(file + ": metadata key '" + std::string(key) + "' should be " + want + " but is " + gguf_type_name(got));
}
}  // namespace

std::optional<std::string> GGUFFile::opt_str(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GGUFType::STRING) wrong_type(name_, key, "a string", v->type);
  return std::string(v->s);
}
std::string GGUFFile::get_str(std::string_view key) const {
  auto v = opt_str(key);
  if (!v) throw Error(name_ + ": missing metadata key '" + std::string(key) + "'");
  return *v;
}
std::optional<int64_t> GGUFFile::opt_int(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_int()) wrong_type(name_, key, "an integer", v->type);
  switch (v->type) {
    case GGUFType::I8: case GGUFType::I16: case GGUFType::I32: case GGUFType::I64: return v->i;
    default:
      if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw Error(name_ + ": metadata key '" + std::string(key) + "' value is out of range");
      return static_cast<int64_t>(v->u);
  }
}
int64_t GGUFFile::get_int(std::string_view key) const {
  auto v = opt_int(key);
  if (!v) throw Error(name_ + ": missing metadata key '" + std::string(key) + "'");
  return *v;
}
std::optional<double> GGUFFile::opt_float(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_float()) return v->f;
  if (v->is_int()) return static_cast<double>(*opt_int(key));
  wrong_type(name_, key, "a number", v->type);
}
double GGUFFile::get_float(std::string_view key) const {
  auto v = opt_float(key);
  if (!v) throw Error(name_ + ": missing metadata key '" + std::string(key) + "'");
  return *v;
}
std::optional<bool> GGUFFile::opt_bool(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GGUFType::BOOL) wrong_type(name_, key, "a bool", v->type);
  return v->u != 0;
}
const std::vector<std::string_view>& GGUFFile::get_str_array(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) throw Error(name_ + ": missing metadata key '" + std::string(key) + "'");
  if (v->type != GGUFType::ARRAY || v->arr_type != GGUFType::STRING)
    wrong_type(name_, key, "an array of strings", v->type);
  return v->arr_str;
}
std::vector<float> GGUFFile::get_f32_array(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) throw Error(name_ + ": missing metadata key '" + std::string(key) + "'");
  if (v->type != GGUFType::ARRAY || (v->arr_type != GGUFType::F32 && v->arr_type != GGUFType::F64))
    wrong_type(name_, key, "an array of floats", v->type);
  std::vector<float> out(static_cast<size_t>(v->arr_n));
  size_t es = scalar_size(v->arr_type);
  for (size_t k = 0; k < out.size(); ++k) out[k] = static_cast<float>(numeric_elem(v->arr_type, v->arr_data + k * es));
  return out;
}
std::vector<int64_t> GGUFFile::get_int_array(std::string_view key) const {
  const GGUFValue* v = find(key);
  if (!v) throw Error(name_ + ": missing metadata key '" + std::string(key) + "'");
  GGUFValue probe;
  probe.type = v->arr_type;
  if (v->type != GGUFType::ARRAY || !probe.is_int()) wrong_type(name_, key, "an array of integers", v->type);
  std::vector<int64_t> out(static_cast<size_t>(v->arr_n));
  size_t es = scalar_size(v->arr_type);
  for (size_t k = 0; k < out.size(); ++k) {
    const uint8_t* p = v->arr_data + k * es;
    out[k] = v->arr_type == GGUFType::U64 ? static_cast<int64_t>(load<uint64_t>(p))
             : v->arr_type == GGUFType::I64 ? load<int64_t>(p)
                                            : static_cast<int64_t>(numeric_elem(v->arr_type, p));
  }
  return out;
}

}  // namespace lokal
