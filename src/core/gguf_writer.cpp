#include "core/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/safe_io.h"

namespace lokal {

static_assert(std::endian::native == std::endian::little, "the GGUF writer assumes a little-endian host");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;        // core/gguf.cpp refuses deeper nesting
constexpr size_t kMaxDims = 4;
const char* const kAlignmentKey = "general.alignment";

size_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::U8: case GGUFType::I8: case GGUFType::BOOL: return 1;
    case GGUFType::U16: case GGUFType::I16: return 2;
    case GGUFType::U32: case GGUFType::I32: case GGUFType::F32: return 4;
    case GGUFType::U64: case GGUFType::I64: case GGUFType::F64: return 8;
    default: return 0;  // STRING, ARRAY, unknown
  }
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

[[noreturn]] void writer_error(const std::string& what) { throw Error("GGUF writer: " + what); }

// Size of a value as stored (without its type tag).
uint64_t value_size(const GGUFMetaValue& v) {
  switch (v.type()) {
    case GGUFType::STRING: return 8 + v.str_value().size();
    case GGUFType::ARRAY: {
      uint64_t n = 4 + 8;
      if (v.arr_type() == GGUFType::STRING) {
        for (const auto& s : v.arr_str()) n += 8 + s.size();
      } else if (v.arr_type() == GGUFType::ARRAY) {
        for (const auto& e : v.arr_nested()) n += value_size(e);
      } else {
        n += v.arr_raw().size();
      }
      return n;
    }
    default: return scalar_size(v.type());
  }
}

// Little-endian serialization into a byte vector (the header part of the file).
struct Bytes {
  std::vector<uint8_t> b;
  void raw(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(std::string_view s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void value(const GGUFMetaValue& v) {
    switch (v.type()) {
      case GGUFType::STRING: str(v.str_value()); break;
      case GGUFType::ARRAY:
        u32(static_cast<uint32_t>(v.arr_type()));
        u64(v.arr_size());
        if (v.arr_type() == GGUFType::STRING) {
          for (const auto& s : v.arr_str()) str(s);
        } else if (v.arr_type() == GGUFType::ARRAY) {
          for (const auto& e : v.arr_nested()) value(e);
        } else {
          raw(v.arr_raw().data(), v.arr_raw().size());
        }
        break;
      default: {
        const uint64_t bits = v.bits();
        raw(&bits, scalar_size(v.type()));  // low bytes first (little-endian host)
        break;
      }
    }
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// GGUFMetaValue

GGUFMetaValue GGUFMetaValue::f32(float v) { return scalar(GGUFType::F32, std::bit_cast<uint32_t>(v)); }
GGUFMetaValue GGUFMetaValue::f64(double v) { return scalar(GGUFType::F64, std::bit_cast<uint64_t>(v)); }

GGUFMetaValue GGUFMetaValue::str(std::string v) {
  GGUFMetaValue r;
  r.type_ = GGUFType::STRING;
  r.str_ = std::move(v);
  return r;
}

GGUFMetaValue GGUFMetaValue::raw_array(GGUFType elem, const void* data, size_t n) {
  const size_t es = scalar_size(elem);
  if (es == 0) writer_error(std::string("raw_array: element type ") + gguf_type_name(elem) + " is not a scalar type");
  GGUFMetaValue r;
  r.type_ = GGUFType::ARRAY;
  r.arr_type_ = elem;
  r.arr_n_ = n;
  if (n) {
    const auto* p = static_cast<const uint8_t*>(data);
    r.raw_.assign(p, p + n * es);
  }
  if (elem == GGUFType::BOOL)
    for (uint8_t b : r.raw_)
      if (b > 1) writer_error("bool array element " + std::to_string(b) + " is not 0 or 1");
  return r;
}

GGUFMetaValue GGUFMetaValue::bool_array(const std::vector<bool>& v) {
  std::vector<uint8_t> bytes(v.begin(), v.end());
  return raw_array(GGUFType::BOOL, bytes.data(), bytes.size());
}

GGUFMetaValue GGUFMetaValue::str_array(std::vector<std::string> v) {
  GGUFMetaValue r;
  r.type_ = GGUFType::ARRAY;
  r.arr_type_ = GGUFType::STRING;
  r.arr_n_ = v.size();
  r.strs_ = std::move(v);
  return r;
}

GGUFMetaValue GGUFMetaValue::array_of_arrays(std::vector<GGUFMetaValue> elems) {
  for (size_t k = 0; k < elems.size(); ++k)
    if (elems[k].type() != GGUFType::ARRAY)
      writer_error("array_of_arrays: element " + std::to_string(k) + " is a " + gguf_type_name(elems[k].type()) +
                   ", not an array");
  GGUFMetaValue r;
  r.type_ = GGUFType::ARRAY;
  r.arr_type_ = GGUFType::ARRAY;
  r.arr_n_ = elems.size();
  r.nested_ = std::move(elems);
  return r;
}

GGUFMetaValue GGUFMetaValue::from(const GGUFValue& v) {
  switch (v.type) {
    case GGUFType::U8: return u8(static_cast<uint8_t>(v.u));
    case GGUFType::I8: return i8(static_cast<int8_t>(v.i));
    case GGUFType::U16: return u16(static_cast<uint16_t>(v.u));
    case GGUFType::I16: return i16(static_cast<int16_t>(v.i));
    case GGUFType::U32: return u32(static_cast<uint32_t>(v.u));
    case GGUFType::I32: return i32(static_cast<int32_t>(v.i));
    case GGUFType::U64: return u64(v.u);
    case GGUFType::I64: return i64(v.i);
    case GGUFType::F32: return f32(static_cast<float>(v.f));  // exact: the reader widened a float
    case GGUFType::F64: return f64(v.f);
    case GGUFType::BOOL: return boolean(v.u != 0);
    case GGUFType::STRING: return str(std::string(v.s));
    case GGUFType::ARRAY:
      if (v.arr_type == GGUFType::STRING) return str_array(std::vector<std::string>(v.arr_str.begin(), v.arr_str.end()));
      if (v.arr_type == GGUFType::ARRAY) {
        std::vector<GGUFMetaValue> elems;
        elems.reserve(v.arr_nested.size());
        for (const auto& e : v.arr_nested) elems.push_back(from(e));
        return array_of_arrays(std::move(elems));
      }
      return raw_array(v.arr_type, v.arr_data, static_cast<size_t>(v.arr_n));
  }
  writer_error("cannot copy a value of unknown type " + std::to_string(static_cast<uint32_t>(v.type)));
}

int GGUFMetaValue::depth() const {
  if (type_ != GGUFType::ARRAY) return 0;
  int d = 0;
  for (const auto& e : nested_) d = std::max(d, e.depth());
  return 1 + d;
}

bool operator==(const GGUFMetaValue& a, const GGUFMetaValue& b) {
  return a.type_ == b.type_ && a.bits_ == b.bits_ && a.str_ == b.str_ && a.arr_type_ == b.arr_type_ &&
         a.arr_n_ == b.arr_n_ && a.raw_ == b.raw_ && a.strs_ == b.strs_ && a.nested_ == b.nested_;
}

// ---------------------------------------------------------------------------------------------
// Output

namespace {

void write_zeros(const GGUFWriter::Sink& out, uint64_t n) {
  static const uint8_t kZero[4096] = {};
  while (n) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof kZero));
    out(kZero, k);
    n -= k;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GGUFWriter: metadata

void GGUFWriter::set(std::string_view key, GGUFMetaValue v) {
  for (auto& [k, old] : kv_)
    if (k == key) {
      old = std::move(v);
      return;
    }
  kv_.emplace_back(std::string(key), std::move(v));
}

bool GGUFWriter::remove(std::string_view key) {
  auto it = std::find_if(kv_.begin(), kv_.end(), [&](const auto& p) { return p.first == key; });
  if (it == kv_.end()) return false;
  kv_.erase(it);
  return true;
}

const GGUFMetaValue* GGUFWriter::find(std::string_view key) const {
  for (const auto& [k, v] : kv_)
    if (k == key) return &v;
  return nullptr;
}

void GGUFWriter::copy_metadata(const GGUFFile& f) {
  for (const auto& [k, v] : f.kv()) set(k, GGUFMetaValue::from(v));
}

void GGUFWriter::set_alignment(uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    writer_error("alignment " + std::to_string(alignment) + " is not a power of two");
  set(kAlignmentKey, GGUFMetaValue::u32(alignment));
}

uint32_t GGUFWriter::alignment() const {
  const GGUFMetaValue* a = find(kAlignmentKey);
  if (!a) return kDefaultAlignment;
  if (a->type() != GGUFType::U32)
    writer_error(std::string(kAlignmentKey) + " must be UINT32, not " + gguf_type_name(a->type()));
  const uint64_t v = a->bits();
  if (v == 0 || (v & (v - 1)) != 0) writer_error(std::string(kAlignmentKey) + " " + std::to_string(v) + " is not a power of two");
  return static_cast<uint32_t>(v);
}

void GGUFWriter::set_version(uint32_t version) {
  if (version != 2 && version != 3) writer_error("can only write GGUF version 2 or 3, not " + std::to_string(version));
  version_ = version;
}

// ---------------------------------------------------------------------------------------------
// GGUFWriter: tensors

size_t GGUFWriter::tensor_size(DType type, const std::vector<int64_t>& ne, const std::string& name) {
  const TypeInfo* info = type_info(type);
  if (!info) writer_error("tensor '" + name + "' has unknown type id " + std::to_string(static_cast<uint32_t>(type)));
  if (ne.size() > kMaxDims)
    writer_error("tensor '" + name + "' has " + std::to_string(ne.size()) + " dimensions (max " + std::to_string(kMaxDims) + ")");
  int64_t n_el = 1;
  for (int64_t d : ne) {
    if (d <= 0) writer_error("tensor '" + name + "' has invalid dimension " + std::to_string(d));
    if (d > std::numeric_limits<int64_t>::max() / n_el) writer_error("tensor '" + name + "': element count overflows");
    n_el *= d;
  }
  const int64_t ne0 = ne.empty() ? 1 : ne[0];
  if (ne0 % info->block_size != 0)
    writer_error("tensor '" + name + "': row length " + std::to_string(ne0) + " is not a multiple of the " + info->name +
                 " block size " + std::to_string(info->block_size));
  const uint64_t blocks = static_cast<uint64_t>(n_el / info->block_size);
  if (blocks > std::numeric_limits<size_t>::max() / info->type_size) writer_error("tensor '" + name + "': byte size overflows");
  return static_cast<size_t>(blocks * info->type_size);
}

void GGUFWriter::add(Tensor t) {
  if (tensor_names_.count(t.name)) writer_error("duplicate tensor name '" + t.name + "'");
  tensor_names_.insert(t.name);
  tensors_.push_back(std::move(t));
}

void GGUFWriter::add_tensor(std::string name, DType type, std::vector<int64_t> ne, const void* data, size_t nbytes) {
  Tensor t;
  t.nbytes = tensor_size(type, ne, name);
  if (nbytes != t.nbytes)
    writer_error("tensor '" + name + "': " + std::to_string(nbytes) + " bytes of data given, but a " + type_name(type) +
                 " tensor of this shape has " + std::to_string(t.nbytes));
  if (!data && nbytes) writer_error("tensor '" + name + "': no data");
  t.name = std::move(name);
  t.type = type;
  t.ne = std::move(ne);
  t.data = data;
  add(std::move(t));
}

void GGUFWriter::add_tensor(std::string name, DType type, std::vector<int64_t> ne, Producer produce) {
  if (!produce) writer_error("tensor '" + name + "': empty producer");
  Tensor t;
  t.nbytes = tensor_size(type, ne, name);
  t.name = std::move(name);
  t.type = type;
  t.ne = std::move(ne);
  t.produce = std::move(produce);
  add(std::move(t));
}

void GGUFWriter::add_tensor(const GGUFTensorInfo& t) {
  add_tensor(t.name, t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.nbytes);
}

// ---------------------------------------------------------------------------------------------
// GGUFWriter: layout and output

void GGUFWriter::validate() const {
  (void)alignment();  // throws if general.alignment is malformed
  for (const auto& [k, v] : kv_)
    if (v.depth() > kMaxArrayDepth)
      writer_error("key '" + k + "': arrays nested " + std::to_string(v.depth()) + " deep (max " +
                   std::to_string(kMaxArrayDepth) + ")");
}

uint64_t GGUFWriter::data_offset() const {
  uint64_t n = 4 + 4 + 8 + 8;
  for (const auto& [k, v] : kv_) n += 8 + k.size() + 4 + value_size(v);
  for (const auto& t : tensors_) n += 8 + t.name.size() + 4 + 8 * t.ne.size() + 4 + 8;
  return align_up(n, alignment());
}

uint64_t GGUFWriter::tensor_offset(size_t i) const {
  const uint32_t a = alignment();
  uint64_t off = 0;
  for (size_t k = 0; k < i && k < tensors_.size(); ++k) off += align_up(tensors_[k].nbytes, a);
  return off;
}

uint64_t GGUFWriter::file_size() const { return data_offset() + tensor_offset(tensors_.size()); }

void GGUFWriter::write_all(const Sink& out, const std::string& name) const {
  validate();
  const uint32_t align = alignment();

  Bytes h;
  h.u32(kMagic);
  h.u32(version_);
  h.u64(tensors_.size());
  h.u64(kv_.size());
  for (const auto& [k, v] : kv_) {
    h.str(k);
    h.u32(static_cast<uint32_t>(v.type()));
    h.value(v);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    h.str(t.name);
    h.u32(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) h.u64(static_cast<uint64_t>(d));
    h.u32(static_cast<uint32_t>(t.type));
    h.u64(offset);
    offset += align_up(t.nbytes, align);
  }
  if (align_up(h.b.size(), align) != data_offset())
    writer_error("internal error: header size does not match the computed layout");
  out(h.b.data(), h.b.size());
  write_zeros(out, align_up(h.b.size(), align) - h.b.size());

  for (const auto& t : tensors_) {
    if (t.produce) {
      uint64_t got = 0;
      const Sink sink = [&](const void* p, size_t n) {
        if (n > t.nbytes - got)
 throw Error(name + ": tensor '" + t.name + "': producer delivered more than the tensor's " +
                      std::to_string(t.nbytes) + " bytes");
        if (n) out(p, n);
        got += n;
      };
      t.produce(sink);
      if (got != t.nbytes)
        throw Error(name + ": tensor '" + t.name + "': producer delivered " + std::to_string(got) + " of " +
                    std::to_string(t.nbytes) + " bytes");
    } else if (t.nbytes) {
      out(t.data, t.nbytes);
    }
    write_zeros(out, align_up(t.nbytes, align) - t.nbytes);
  }
}

std::vector<uint8_t> GGUFWriter::write_to_memory() const {
  std::vector<uint8_t> v;
  v.reserve(static_cast<size_t>(file_size()));
  write_all([&v](const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    v.insert(v.end(), c, c + n);
  }, "<memory>");
  return v;
}

void GGUFWriter::write(const std::string& path) const {
  validate();  // refuse before touching the file system
  AtomicFile out(path);  // temporary file beside `path`, removed on failure or a fatal signal
  write_all([&out](const void* p, size_t n) { out.write(p, n); }, path);
  out.commit();
}

}  // namespace lokal
