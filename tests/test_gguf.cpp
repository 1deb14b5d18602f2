// GGUF reader and writer: every shared model against golden/model-info.json, writer round trips,
// byte-identical rewrites, and hostile input (each must fail with a clear lokal::Error, never crash,
// hang or allocate hugely). All hostile files are generated here; none are committed.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using namespace lokal;

// ---------------------------------------------------------------------------------------------
// Allocation tracking: the largest single operator-new request while tracking is on, to prove that
// hostile counts and lengths never turn into huge allocations.
namespace {
std::atomic<bool> g_track{false};
std::atomic<size_t> g_max_alloc{0};
}  // namespace

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) {
  if (g_track.load(std::memory_order_relaxed)) {
    size_t cur = g_max_alloc.load(std::memory_order_relaxed);
    while (n > cur && !g_max_alloc.compare_exchange_weak(cur, n)) {
    }
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

struct AllocTracker {
  AllocTracker() {
    g_max_alloc = 0;
    g_track = true;
  }
  ~AllocTracker() { g_track = false; }
  size_t max() const { return g_max_alloc.load(); }
};

// ---------------------------------------------------------------------------------------------
// Helpers

using Bytes = std::vector<uint8_t>;

Bytes read_bytes(const std::string& path) {
  std::string s = lokal::test::read_file(path);
  return Bytes(s.begin(), s.end());
}

// Relative paths ("models/real/x.gguf") of every model in the shared folder, sorted.
std::vector<std::string> all_models() {
  const std::string root = lokal::test::test_data_dir();
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root + "/models"))
    if (e.is_regular_file() && e.path().extension() == ".gguf")
      out.push_back(fs::relative(e.path(), root).generic_string());
  std::sort(out.begin(), out.end());
  return out;
}

// Reads every metadata value through every accessor that applies and every tensor's first and last
// byte; returns a checksum so nothing is optimized away.
uint64_t touch_all(const GGUFFile& f) {
  uint64_t sum = 0;
  for (const auto& [k, v] : f.kv()) {
    sum += v.to_string().size();
    EXPECT_EQ(f.find(k), &v);
    try {
      switch (v.type) {
        case GGUFType::STRING: sum += f.get_str(k).size(); break;
        case GGUFType::BOOL: sum += *f.opt_bool(k); break;
        case GGUFType::F32: case GGUFType::F64: sum += static_cast<uint64_t>(f.get_float(k) != 0); break;
        case GGUFType::ARRAY:
          if (v.arr_type == GGUFType::STRING) {
            for (auto s : f.get_str_array(k)) sum += s.size();
          } else if (v.arr_type == GGUFType::F32 || v.arr_type == GGUFType::F64) {
            sum += f.get_f32_array(k).size();
          } else if (v.arr_type != GGUFType::ARRAY && v.arr_type != GGUFType::BOOL) {
            for (int64_t x : f.get_int_array(k)) sum += static_cast<uint64_t>(x);
          }
          break;
        default: sum += static_cast<uint64_t>(f.get_int(k)); break;
      }
    } catch (const Error&) {
      // e.g. a UINT64 above INT64_MAX read through get_int: a clean error is fine.
    }
  }
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(f.find_tensor(t.name), &t);
    EXPECT_GE(t.data, f.buffer() + f.data_offset());
    EXPECT_LE(t.data + t.nbytes, f.buffer() + f.file_size());
    if (t.nbytes) sum += t.data[0] + t.data[t.nbytes - 1];
    sum += static_cast<uint64_t>(t.n_elements());
  }
  return sum;
}

// Parses `size` bytes from a fresh heap block of exactly that size (so AddressSanitizer flags any read
// past the end). Returns "" on success (after touching everything), else the lokal::Error message.
// Any other exception is a test failure.
std::string try_parse(const uint8_t* data, size_t size, const std::string& name) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[size ? size : 1]);
  if (size) std::memcpy(copy.get(), data, size);
  try {
    auto f = GGUFFile::parse(copy.get(), size, name);
    touch_all(*f);
    return "";
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.empty()) return "(empty message)";
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << name << ": non-lokal exception " << typeid(e).name() << ": " << e.what();
    return "(foreign exception)";
  }
}
std::string try_parse(const Bytes& b, const std::string& name) { return try_parse(b.data(), b.size(), name); }

// Expects a lokal::Error that names the file and contains every needle.
void expect_fail(const Bytes& b, const std::string& name, std::initializer_list<const char*> needles) {
  const std::string msg = try_parse(b, name);
  ASSERT_FALSE(msg.empty()) << name << ": parsed, but should have been refused";
  EXPECT_NE(msg.find(name), std::string::npos) << "message does not name the file: " << msg;
  for (const char* n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "expected '" << n << "' in: " << msg;
}

template <class T>
void put(Bytes& b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof v, b.size());
  std::memcpy(b.data() + pos, &v, sizeof v);
}
template <class T>
T get(const Bytes& b, size_t pos) {
  T v;
  std::memcpy(&v, b.data() + pos, sizeof v);
  return v;
}

// Hand-made GGUF bytes, for files the writer (rightly) refuses to produce.
struct Raw {
  Bytes b;
  Raw& u8(uint8_t v) { b.push_back(v); return *this; }
  Raw& u32(uint32_t v) { return raw(&v, 4); }
  Raw& u64(uint64_t v) { return raw(&v, 8); }
  Raw& raw(const void* p, size_t n) {
    b.insert(b.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return *this;
  }
  Raw& str(std::string_view s) { u64(s.size()); return raw(s.data(), s.size()); }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    raw("GGUF", 4);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Raw& kv_u32(std::string_view k, uint32_t v) { str(k); u32(4); return u32(v); }
  Raw& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t off) {
    str(name);
    u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    u32(type);
    return u64(off);
  }
  Raw& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Raw& zeros(size_t n) { b.insert(b.end(), n, 0); return *this; }
};

// A writer holding every metadata value type (nested arrays included) and tensors of odd sizes.
struct AllTypes {
  GGUFWriter w;
  std::vector<Bytes> data;  // tensor bytes (kept alive for the borrowed pointers)

  explicit AllTypes(uint32_t alignment = 0) {
    if (alignment) w.set_alignment(alignment);
    w.set("t.u8", GGUFMetaValue::u8(255));
    w.set("t.i8", GGUFMetaValue::i8(-128));
    w.set("t.u16", GGUFMetaValue::u16(65535));
    w.set("t.i16", GGUFMetaValue::i16(-32768));
    w.set("t.u32", GGUFMetaValue::u32(0xffffffffu));
    w.set("t.i32", GGUFMetaValue::i32(std::numeric_limits<int32_t>::min()));
    w.set("t.u64", GGUFMetaValue::u64(std::numeric_limits<uint64_t>::max()));
    w.set("t.i64", GGUFMetaValue::i64(std::numeric_limits<int64_t>::min()));
    w.set("t.f32", GGUFMetaValue::f32(-1.5e-38f));
    w.set("t.f32_inf", GGUFMetaValue::f32(std::numeric_limits<float>::infinity()));
    w.set("t.f32_negzero", GGUFMetaValue::f32(-0.0f));
    w.set("t.f64", GGUFMetaValue::f64(3.141592653589793));
    w.set("t.bool_true", GGUFMetaValue::boolean(true));
    w.set("t.bool_false", GGUFMetaValue::boolean(false));
    w.set("t.str", GGUFMetaValue::str(std::string("h\xC3\xA9llo\0world\n", 13)));
    w.set("t.str_empty", GGUFMetaValue::str(""));
    w.set("", GGUFMetaValue::str("empty key"));
    w.set("t.a_u8", GGUFMetaValue::array(std::vector<uint8_t>{0, 1, 255}));
    w.set("t.a_i8", GGUFMetaValue::array(std::vector<int8_t>{-128, 0, 127}));
    w.set("t.a_u16", GGUFMetaValue::array(std::vector<uint16_t>{1, 65535}));
    w.set("t.a_i16", GGUFMetaValue::array(std::vector<int16_t>{-32768, 32767, 5}));
    w.set("t.a_u32", GGUFMetaValue::array(std::vector<uint32_t>{4294967295u}));
    w.set("t.a_i32", GGUFMetaValue::array(std::vector<int32_t>{-1, 2, -3, 4, -5}));
    w.set("t.a_u64", GGUFMetaValue::array(std::vector<uint64_t>{0, 1ull << 40}));
    w.set("t.a_i64", GGUFMetaValue::array(std::vector<int64_t>{-(1ll << 50), 7}));
    w.set("t.a_f32", GGUFMetaValue::array(std::vector<float>{0.5f, -2.25f, 1e30f}));
    w.set("t.a_f64", GGUFMetaValue::array(std::vector<double>{1e-300, -0.125}));
    w.set("t.a_bool", GGUFMetaValue::bool_array({true, false, true}));
    w.set("t.a_str", GGUFMetaValue::str_array({"", "a", std::string("b\0c", 3), "\xE2\x82\xAC"}));
    w.set("t.a_empty_i32", GGUFMetaValue::array(std::vector<int32_t>{}));
    w.set("t.a_empty_str", GGUFMetaValue::str_array({}));
    // [[1, 2, 3], [], [4]] as INT32 arrays
    w.set("t.nested", GGUFMetaValue::array_of_arrays({GGUFMetaValue::array(std::vector<int32_t>{1, 2, 3}),
                                                      GGUFMetaValue::array(std::vector<int32_t>{}),
                                                      GGUFMetaValue::array(std::vector<int32_t>{4})}));
    // Elements of different element types, and three levels: [[["x"], []], [[0.5]], ["y", "z"]]
    w.set("t.nested_mixed",
          GGUFMetaValue::array_of_arrays(
              {GGUFMetaValue::array_of_arrays({GGUFMetaValue::str_array({"x"}), GGUFMetaValue::str_array({})}),
               GGUFMetaValue::array_of_arrays({GGUFMetaValue::array(std::vector<double>{0.5})}),
               GGUFMetaValue::str_array({"y", "z"})}));
    w.set("t.nested_empty", GGUFMetaValue::array_of_arrays({}));
    w.set("t.nested_max", deep(8));  // the deepest nesting the reader accepts

    struct T {
      const char* name;
      DType type;
      std::vector<int64_t> ne;
    };
    const T ts[] = {
        {"f32_scalar", DType::F32, {}},      {"f32_3", DType::F32, {3}},         {"f16_5", DType::F16, {5}},
        {"i8_7", DType::I8, {7}},            {"q8_0", DType::Q8_0, {32, 3}},     {"q4_k", DType::Q4_K, {256}},
        {"i32_4d", DType::I32, {2, 3, 4, 5}}, {"bf16", DType::BF16, {1, 1, 1, 1}}, {"q4_0", DType::Q4_0, {64, 1, 3}},
    };
    std::mt19937_64 rng(1234);
    for (const T& t : ts) {
      const size_t n = GGUFWriter::tensor_size(t.type, t.ne);
      Bytes d(n);
      for (auto& x : d) x = static_cast<uint8_t>(rng() >> 56);
      data.push_back(std::move(d));
    }
    for (size_t i = 0; i < std::size(ts); ++i) w.add_tensor(ts[i].name, ts[i].type, ts[i].ne, data[i].data(), data[i].size());
  }

  static GGUFMetaValue deep(int levels) {
    GGUFMetaValue v = GGUFMetaValue::array(std::vector<uint16_t>{7});
    for (int k = 1; k < levels; ++k) v = GGUFMetaValue::array_of_arrays({v});
    return v;
  }
};

}  // namespace

// =============================================================================================
// Shared models against golden/model-info.json

namespace {

void expect_golden_value(const GGUFValue& v, const nlohmann::ordered_json& g) {
  switch (v.type) {
    case GGUFType::ARRAY:
      ASSERT_TRUE(g.is_string()) << g.dump();
      EXPECT_EQ(g.get<std::string>(), "<array of " + std::to_string(v.arr_n) + ">");
      break;
    case GGUFType::STRING:
      ASSERT_TRUE(g.is_string()) << g.dump();
      EXPECT_EQ(g.get<std::string>(), std::string(v.s));
      break;
    case GGUFType::BOOL:
      ASSERT_TRUE(g.is_boolean()) << g.dump();
      EXPECT_EQ(g.get<bool>(), v.u != 0);
      break;
    case GGUFType::F32:
      ASSERT_TRUE(g.is_number()) << g.dump();
      EXPECT_EQ(static_cast<float>(g.get<double>()), static_cast<float>(v.f));
      break;
    case GGUFType::F64:
      ASSERT_TRUE(g.is_number()) << g.dump();
      EXPECT_EQ(g.get<double>(), v.f);
      break;
    case GGUFType::I8: case GGUFType::I16: case GGUFType::I32: case GGUFType::I64:
      ASSERT_TRUE(g.is_number_integer()) << g.dump();
      EXPECT_EQ(g.get<int64_t>(), v.i);
      break;
    default:  // unsigned integers
      ASSERT_TRUE(g.is_number_integer()) << g.dump();
      EXPECT_EQ(g.get<uint64_t>(), v.u);
      break;
  }
}

}  // namespace

TEST(GGUFModels, EveryModelParsesAndMatchesGolden) {
  const auto golden =
      nlohmann::ordered_json::parse(lokal::test::read_file(lokal::test::data_path("golden/model-info.json")));
  const auto models = all_models();
  ASSERT_GE(models.size(), 35u);
  size_t compared = 0;
  for (const auto& rel : models) {
    SCOPED_TRACE(rel);
    std::unique_ptr<GGUFFile> f;
    ASSERT_NO_THROW(f = GGUFFile::open(lokal::test::data_path(rel)));
    touch_all(*f);
    EXPECT_EQ(f->version(), 3u);
    EXPECT_EQ(f->alignment(), 32u);
    EXPECT_EQ(f->data_offset() % 32, 0u);
    EXPECT_FALSE(f->tensors().empty());
    if (!golden.contains(rel)) continue;  // files added after model-info.json was made (tinytales)
    ++compared;
    const auto& g = golden[rel];
    EXPECT_EQ(f->file_size(), g["bytes"].get<size_t>());
    EXPECT_EQ(f->version(), g["gguf_version"].get<uint32_t>());

    const auto& gm = g["metadata"];
    ASSERT_EQ(f->kv().size(), gm.size());
    size_t i = 0;
    for (auto it = gm.begin(); it != gm.end(); ++it, ++i) {
      const auto& [key, v] = f->kv()[i];
      EXPECT_EQ(key, it.key()) << "metadata key " << i << " differs (order matters)";
      SCOPED_TRACE(key);
      expect_golden_value(v, it.value());
    }

    const auto& gt = g["tensors"];
    ASSERT_EQ(f->tensors().size(), gt.size());
    int64_t n_params = 0;
    for (size_t k = 0; k < gt.size(); ++k) {
      const GGUFTensorInfo& t = f->tensors()[k];
      SCOPED_TRACE(t.name);
      EXPECT_EQ(t.name, gt[k]["name"].get<std::string>());
      EXPECT_STREQ(type_name(t.type), gt[k]["type"].get<std::string>().c_str());
      const auto ne = gt[k]["ne"].get<std::vector<int64_t>>();
      ASSERT_EQ(t.n_dims, ne.size());
      for (size_t d = 0; d < 4; ++d) EXPECT_EQ(t.ne[d], d < ne.size() ? ne[d] : 1);
      // model-info.json gives absolute file offsets (gguf-py's data_offset).
      EXPECT_EQ(f->data_offset() + t.offset, gt[k]["offset"].get<uint64_t>());
      n_params += t.n_elements();
    }
    EXPECT_EQ(n_params, g["n_params"].get<int64_t>());
  }
  for (auto it = golden.begin(); it != golden.end(); ++it)
    EXPECT_TRUE(std::find(models.begin(), models.end(), it.key()) != models.end()) << "missing model " << it.key();
  EXPECT_EQ(compared, golden.size());
}

TEST(GGUFModels, OpenWithoutMmapGivesTheSameResult) {
  const std::string path = lokal::test::data_path("models/real/stories260K.gguf");
  auto a = GGUFFile::open(path, true);
  auto b = GGUFFile::open(path, false);
  EXPECT_EQ(a->kv().size(), b->kv().size());
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  for (size_t i = 0; i < a->tensors().size(); ++i) {
    EXPECT_EQ(a->tensors()[i].offset, b->tensors()[i].offset);
    EXPECT_EQ(0, std::memcmp(a->tensors()[i].data, b->tensors()[i].data, a->tensors()[i].nbytes));
  }
}

TEST(GGUFModels, OpenErrorsNameTheFile) {
  const std::string dir = lokal::test::binary_dir() + "/test-gguf-open";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const std::string& p : {dir + "/does-not-exist.gguf", dir}) {
    try {
      GGUFFile::open(p);
      ADD_FAILURE() << p << " opened";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
  const std::string empty = dir + "/empty.gguf";
  std::ofstream(empty).close();
  try {
    GGUFFile::open(empty);
    ADD_FAILURE() << "empty file opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(empty), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("too small"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// =============================================================================================
// Writer

TEST(GGUFWriter, RoundTripEveryValueTypeAndAlignment) {
  for (uint32_t align : {0u, 1u, 8u, 32u, 64u, 4096u}) {
    SCOPED_TRACE("alignment " + std::to_string(align));
    AllTypes at(align);
    const uint32_t a = align ? align : 32;
    EXPECT_EQ(at.w.alignment(), a);
    const Bytes bytes = at.w.write_to_memory();
    EXPECT_EQ(bytes.size(), at.w.file_size());
    EXPECT_EQ(bytes.size() % a, 0u);
    EXPECT_EQ(0, std::memcmp(bytes.data(), "GGUF", 4));
    EXPECT_EQ(get<uint32_t>(bytes, 4), 3u);

    auto f = GGUFFile::parse(bytes.data(), bytes.size(), "roundtrip.gguf");
    touch_all(*f);
    EXPECT_EQ(f->version(), 3u);
    EXPECT_EQ(f->alignment(), a);
    EXPECT_EQ(f->data_offset(), at.w.data_offset());
    EXPECT_EQ(f->data_offset() % a, 0u);

    ASSERT_EQ(f->kv().size(), at.w.kv().size());
    for (size_t i = 0; i < f->kv().size(); ++i) {
      EXPECT_EQ(f->kv()[i].first, at.w.kv()[i].first);
      EXPECT_TRUE(GGUFMetaValue::from(f->kv()[i].second) == at.w.kv()[i].second) << "value of " << f->kv()[i].first;
    }

    ASSERT_EQ(f->tensors().size(), at.w.tensors().size());
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const GGUFTensorInfo& t = f->tensors()[i];
      const GGUFWriter::Tensor& wt = at.w.tensors()[i];
      SCOPED_TRACE(t.name);
      EXPECT_EQ(t.name, wt.name);
      EXPECT_EQ(t.type, wt.type);
      ASSERT_EQ(t.n_dims, wt.ne.size());
      for (size_t d = 0; d < wt.ne.size(); ++d) EXPECT_EQ(t.ne[d], wt.ne[d]);
      EXPECT_EQ(t.offset, at.w.tensor_offset(i));
      EXPECT_EQ(t.offset % a, 0u);
      ASSERT_EQ(t.nbytes, at.data[i].size());
      EXPECT_EQ(0, std::memcmp(t.data, at.data[i].data(), t.nbytes));
      // Padding after the data is zero.
      const size_t end = f->data_offset() + t.offset + t.nbytes;
      const size_t next = i + 1 < f->tensors().size() ? f->data_offset() + f->tensors()[i + 1].offset : bytes.size();
      EXPECT_EQ(next - end, (a - t.nbytes % a) % a);
      for (size_t p = end; p < next; ++p) ASSERT_EQ(bytes[p], 0) << "padding byte " << p;
    }
  }
}

TEST(GGUFWriter, TypedAccessorsReadWhatWasWritten) {
  AllTypes at;
  const Bytes bytes = at.w.write_to_memory();
  auto f = GGUFFile::parse(bytes.data(), bytes.size(), "accessors.gguf");
  EXPECT_EQ(f->get_int("t.u8"), 255);
  EXPECT_EQ(f->get_int("t.i8"), -128);
  EXPECT_EQ(f->get_int("t.u16"), 65535);
  EXPECT_EQ(f->get_int("t.i16"), -32768);
  EXPECT_EQ(f->get_int("t.u32"), 4294967295ll);
  EXPECT_EQ(f->get_int("t.i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(f->find("t.u64")->u, std::numeric_limits<uint64_t>::max());
  EXPECT_THROW(f->get_int("t.u64"), Error);  // does not fit int64
  EXPECT_EQ(f->get_int("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(static_cast<float>(f->get_float("t.f32")), -1.5e-38f);
  EXPECT_EQ(f->get_float("t.f32_inf"), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::signbit(f->get_float("t.f32_negzero")));
  EXPECT_EQ(f->get_float("t.f64"), 3.141592653589793);
  EXPECT_EQ(f->opt_bool("t.bool_true"), true);
  EXPECT_EQ(f->opt_bool("t.bool_false"), false);
  EXPECT_EQ(f->get_str("t.str"), std::string("h\xC3\xA9llo\0world\n", 13));
  EXPECT_EQ(f->get_str("t.str_empty"), "");
  EXPECT_EQ(f->get_str(""), "empty key");
  EXPECT_EQ(f->get_int_array("t.a_u8"), (std::vector<int64_t>{0, 1, 255}));
  EXPECT_EQ(f->get_int_array("t.a_i8"), (std::vector<int64_t>{-128, 0, 127}));
  EXPECT_EQ(f->get_int_array("t.a_u16"), (std::vector<int64_t>{1, 65535}));
  EXPECT_EQ(f->get_int_array("t.a_i16"), (std::vector<int64_t>{-32768, 32767, 5}));
  EXPECT_EQ(f->get_int_array("t.a_u32"), (std::vector<int64_t>{4294967295ll}));
  EXPECT_EQ(f->get_int_array("t.a_i32"), (std::vector<int64_t>{-1, 2, -3, 4, -5}));
  EXPECT_EQ(f->get_int_array("t.a_u64"), (std::vector<int64_t>{0, 1ll << 40}));
  EXPECT_EQ(f->get_int_array("t.a_i64"), (std::vector<int64_t>{-(1ll << 50), 7}));
  EXPECT_EQ(f->get_f32_array("t.a_f32"), (std::vector<float>{0.5f, -2.25f, 1e30f}));
  EXPECT_EQ(f->get_f32_array("t.a_f64"), (std::vector<float>{static_cast<float>(1e-300), -0.125f}));
  EXPECT_EQ(f->find("t.a_bool")->arr_n, 3u);
  EXPECT_EQ(f->find("t.a_bool")->arr_data[0], 1);
  EXPECT_EQ(f->find("t.a_bool")->arr_data[1], 0);
  const auto& sa = f->get_str_array("t.a_str");
  ASSERT_EQ(sa.size(), 4u);
  EXPECT_EQ(sa[0], "");
  EXPECT_EQ(sa[2], std::string_view("b\0c", 3));
  EXPECT_EQ(sa[3], "\xE2\x82\xAC");
  EXPECT_TRUE(f->get_int_array("t.a_empty_i32").empty());
  EXPECT_TRUE(f->get_str_array("t.a_empty_str").empty());
  EXPECT_THROW(f->get_str("t.u8"), Error);
  EXPECT_THROW(f->get_int("t.str"), Error);
  EXPECT_THROW(f->get_str_array("t.a_i32"), Error);

  const GGUFValue* n = f->find("t.nested");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->to_string(), "<array of 3 ARRAY>");
  ASSERT_EQ(n->arr_nested.size(), 3u);
  EXPECT_EQ(n->arr_nested[0].arr_n, 3u);
  EXPECT_EQ(n->arr_nested[1].arr_n, 0u);
  EXPECT_EQ(n->arr_nested[2].arr_type, GGUFType::I32);
  int32_t four;
  std::memcpy(&four, n->arr_nested[2].arr_data, 4);
  EXPECT_EQ(four, 4);
  const GGUFValue* m = f->find("t.nested_mixed");
  ASSERT_EQ(m->arr_nested.size(), 3u);
  EXPECT_EQ(m->arr_nested[0].arr_nested[0].arr_str.at(0), "x");
  EXPECT_EQ(m->arr_nested[2].arr_str.at(1), "z");
  const GGUFValue* deep = f->find("t.nested_max");
  int levels = 1;
  while (deep->arr_type == GGUFType::ARRAY) deep = &deep->arr_nested.at(0), ++levels;
  EXPECT_EQ(levels, 8);
}

TEST(GGUFWriter, Version2AndHeaderLayout) {
  GGUFWriter w;
  w.set_version(2);
  w.set_str("general.architecture", "llama");
  const float x[3] = {1, 2, 3};
  w.add_tensor("x", DType::F32, {3}, x, sizeof x);
  const Bytes b = w.write_to_memory();
  EXPECT_EQ(get<uint32_t>(b, 4), 2u);
  EXPECT_EQ(get<uint64_t>(b, 8), 1u);   // tensors
  EXPECT_EQ(get<uint64_t>(b, 16), 1u);  // metadata
  auto f = GGUFFile::parse(b.data(), b.size(), "v2.gguf");
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->get_str("general.architecture"), "llama");
  EXPECT_THROW(w.set_version(1), Error);
  EXPECT_THROW(w.set_version(4), Error);

  GGUFWriter empty;  // no metadata, no tensors: just the 24-byte header, padded
  const Bytes e = empty.write_to_memory();
  EXPECT_EQ(e.size(), 32u);
  auto fe = GGUFFile::parse(e.data(), e.size(), "empty.gguf");
  EXPECT_TRUE(fe->kv().empty());
  EXPECT_TRUE(fe->tensors().empty());
}

TEST(GGUFWriter, MetadataEditing) {
  auto src = GGUFFile::open(lokal::test::data_path("models/real/stories260K.gguf"));
  GGUFWriter w;
  w.set_str("general.name", "first");
  w.copy_metadata(*src);
  ASSERT_EQ(w.kv().size(), src->kv().size());
  EXPECT_EQ(w.kv()[0].first, "general.name");  // was set first; copy replaced it in place
  EXPECT_EQ(w.find("general.name")->str_value(), "llama");
  const size_t pos = 4;
  const std::string key = w.kv()[pos].first;
  w.set(key, GGUFMetaValue::u64(123));
  EXPECT_EQ(w.kv()[pos].first, key);
  EXPECT_EQ(w.kv()[pos].second.bits(), 123u);
  EXPECT_TRUE(w.remove(key));
  EXPECT_FALSE(w.remove(key));
  EXPECT_EQ(w.find(key), nullptr);
  EXPECT_EQ(w.kv().size(), src->kv().size() - 1);
}

TEST(GGUFWriter, RefusesWhatTheReaderWouldRefuse) {
  auto expect_err = [](auto&& fn, const char* needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Bytes buf(1024);
  GGUFWriter w;
  w.add_tensor("a", DType::F32, {4}, buf.data(), 16);
  expect_err([&] { w.add_tensor("a", DType::F32, {4}, buf.data(), 16); }, "duplicate tensor name 'a'");
  expect_err([&] { w.add_tensor("b", DType::F32, {3}, buf.data(), 11); }, "12");
  expect_err([&] { w.add_tensor("c", DType::Q4_0, {31}, buf.data(), 18); }, "block size");
  expect_err([&] { w.add_tensor("d", DType::F32, {1, 1, 1, 1, 1}, buf.data(), 4); }, "5 dimensions");
  expect_err([&] { w.add_tensor("e", DType::F32, {0}, buf.data(), 0); }, "invalid dimension 0");
  expect_err([&] { w.add_tensor("f", DType::F32, {-2}, buf.data(), 0); }, "invalid dimension -2");
  expect_err([&] { w.add_tensor("g", static_cast<DType>(4), {32}, buf.data(), 18); }, "unknown type id 4");
  expect_err([&] { w.add_tensor("h", DType::F32, {1ll << 32, 1ll << 32}, buf.data(), 4); }, "overflows");
  expect_err([&] { w.add_tensor("i", DType::F32, {4}, GGUFWriter::Producer{}); }, "empty producer");
  expect_err([&] { w.set_alignment(48); }, "not a power of two");
  expect_err([&] { w.set_alignment(0); }, "not a power of two");
  expect_err([&] { GGUFMetaValue::array_of_arrays({GGUFMetaValue::u8(1)}); }, "not an array");
  expect_err([&] { GGUFMetaValue::raw_array(GGUFType::STRING, buf.data(), 1); }, "not a scalar type");
  const uint8_t two = 2;
  expect_err([&] { GGUFMetaValue::raw_array(GGUFType::BOOL, &two, 1); }, "not 0 or 1");
  EXPECT_EQ(w.tensors().size(), 1u);  // nothing refused was added

  GGUFWriter bad_align;
  bad_align.set("general.alignment", GGUFMetaValue::u64(32));
  expect_err([&] { bad_align.write_to_memory(); }, "must be UINT32");
  GGUFWriter bad_align2;
  bad_align2.set("general.alignment", GGUFMetaValue::u32(24));
  expect_err([&] { bad_align2.write_to_memory(); }, "not a power of two");
  GGUFWriter too_deep;
  too_deep.set("k", AllTypes::deep(9));
  expect_err([&] { too_deep.write_to_memory(); }, "nested 9 deep");
}

namespace {

// A fresh, empty scratch folder under the build directory.
std::string scratch_dir(const std::string& name) {
  const std::string d = lokal::test::binary_dir() + "/test-gguf-" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
std::vector<std::string> dir_entries(const std::string& d) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(d)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(GGUFWriter, StreamedDataIsWrittenExactly) {
  // Big enough to cross the writer's 1 MiB buffer, odd sizes and odd chunking.
  std::mt19937_64 rng(7);
  Bytes big(4 * 300001), q(static_cast<size_t>(GGUFWriter::tensor_size(DType::Q8_0, {4096, 64})));
  for (auto& x : big) x = static_cast<uint8_t>(rng());
  for (auto& x : q) x = static_cast<uint8_t>(rng());

  GGUFWriter streamed, borrowed;
  for (GGUFWriter* w : {&streamed, &borrowed}) {
    w->set_alignment(64);
    w->set_str("general.name", "stream");
  }
  streamed.add_tensor("big", DType::F32, {300001}, [&](const GGUFWriter::Sink& out) {
    size_t pos = 0, chunk = 1;
    while (pos < big.size()) {
      const size_t n = std::min(chunk, big.size() - pos);
      out(big.data() + pos, n);
      pos += n;
      chunk = chunk * 3 + 1;  // 1, 4, 13, ... up to multi-MiB
    }
  });
  streamed.add_tensor("q", DType::Q8_0, {4096, 64}, [&](const GGUFWriter::Sink& out) {
    const size_t row = q.size() / 64;
    for (size_t r = 0; r < 64; ++r) {
      out(q.data() + r * row, 5);
      out(q.data() + r * row + 5, 0);
      out(q.data() + r * row + 5, row - 5);
    }
  });
  borrowed.add_tensor("big", DType::F32, {300001}, big.data(), big.size());
  borrowed.add_tensor("q", DType::Q8_0, {4096, 64}, q.data(), q.size());

  const Bytes mem = borrowed.write_to_memory();
  EXPECT_EQ(streamed.write_to_memory(), mem);
  const std::string dir = scratch_dir("stream");
  const std::string path = dir + "/out.gguf";
  streamed.write(path);
  EXPECT_EQ(read_bytes(path), mem);
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"out.gguf"});  // no temporary file left
  auto f = GGUFFile::open(path);
  EXPECT_EQ(0, std::memcmp(f->find_tensor("big")->data, big.data(), big.size()));
  EXPECT_EQ(0, std::memcmp(f->find_tensor("q")->data, q.data(), q.size()));
  fs::remove_all(dir);
}

TEST(GGUFWriter, FailedWritesLeaveTheOldFileAndNoTemporary) {
  const std::string dir = scratch_dir("fail");
  const std::string path = dir + "/model.gguf";
  const float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  GGUFWriter good;
  good.set_str("general.name", "good");
  good.add_tensor("x", DType::F32, {8}, x, sizeof x);
  good.write(path);
  const Bytes original = read_bytes(path);
  EXPECT_EQ(original, good.write_to_memory());

  auto expect_unchanged = [&] {
    EXPECT_EQ(read_bytes(path), original);
    EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"model.gguf"});
  };
  auto expect_err = [&](const GGUFWriter& w, const std::string& target, std::initializer_list<const char*> needles) {
    try {
      w.write(target);
      ADD_FAILURE() << "write succeeded";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(target), std::string::npos) << msg;
      for (const char* n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "expected '" << n << "' in " << msg;
    }
  };

  GGUFWriter too_much;
  too_much.add_tensor("t", DType::F32, {8}, [&](const GGUFWriter::Sink& out) { out(x, 36); });
  expect_err(too_much, path, {"tensor 't'", "more than", "32 bytes"});
  expect_unchanged();

  GGUFWriter too_little;
  too_little.add_tensor("t", DType::F32, {8}, [&](const GGUFWriter::Sink& out) { out(x, 28); });
  expect_err(too_little, path, {"tensor 't'", "delivered 28 of 32 bytes"});
  expect_unchanged();

  GGUFWriter throws;
  throws.add_tensor("t", DType::F32, {8}, [&](const GGUFWriter::Sink& out) {
    out(x, 16);
    throw std::runtime_error("producer failed");
  });
  EXPECT_THROW(throws.write(path), std::runtime_error);
  expect_unchanged();

  expect_err(good, dir + "/no/such/dir/x.gguf", {"cannot create temporary file", "No such file or directory"});
  expect_unchanged();

  fs::create_directories(dir + "/sub/inner");
  expect_err(good, dir + "/sub", {"is a directory", "refusing to replace it"});  // refused before anything is written
  EXPECT_EQ(dir_entries(dir + "/sub"), std::vector<std::string>{"inner"});
  fs::remove_all(dir + "/sub");
  expect_unchanged();

  // A real I/O error in the middle of the data: the file size limit (EFBIG).
  {
    Bytes big(4 << 20, 0x5a);
    GGUFWriter w;
    w.add_tensor("big", DType::I8, {static_cast<int64_t>(big.size())}, big.data(), big.size());
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    rlimit lim = old;
    lim.rlim_cur = 256 << 10;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    std::string msg;
    try {
      w.write(path);
    } catch (const Error& e) {
      msg = e.what();
    }
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("write failed"), std::string::npos) << msg;
    EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
    expect_unchanged();
  }

  // And a successful write replaces the file.
  GGUFWriter other;
  other.set_str("general.name", "other");
  other.write(path);
  EXPECT_EQ(GGUFFile::open(path)->get_str("general.name"), "other");
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"model.gguf"});
  fs::remove_all(dir);
}

TEST(GGUFWriter, RewritingEverySharedModelGivesIdenticalBytes) {
  const auto models = all_models();
  ASSERT_GE(models.size(), 35u);
  for (const auto& rel : models) {
    SCOPED_TRACE(rel);
    auto f = GGUFFile::open(lokal::test::data_path(rel));
    GGUFWriter w;
    w.copy_metadata(*f);
    for (const auto& t : f->tensors()) w.add_tensor(t);
    EXPECT_EQ(w.data_offset(), f->data_offset());
    EXPECT_EQ(w.file_size(), f->file_size());
    const Bytes out = w.write_to_memory();
    ASSERT_EQ(out.size(), f->file_size());
    if (std::memcmp(out.data(), f->buffer(), out.size()) != 0) {
      size_t i = 0;
      while (out[i] == f->buffer()[i]) ++i;
      ADD_FAILURE() << "first differing byte at " << i << " (data section starts at " << f->data_offset() << ")";
    }
  }
  // Once through the file system too.
  const std::string dir = scratch_dir("rewrite");
  auto f = GGUFFile::open(lokal::test::data_path("models/real/stories260K-f16.gguf"));
  GGUFWriter w;
  w.copy_metadata(*f);
  for (const auto& t : f->tensors()) w.add_tensor(t);
  w.write(dir + "/copy.gguf");
  const Bytes copy = read_bytes(dir + "/copy.gguf");
  ASSERT_EQ(copy.size(), f->file_size());
  EXPECT_EQ(0, std::memcmp(copy.data(), f->buffer(), copy.size()));
  fs::remove_all(dir);
}

// =============================================================================================
// Hostile input

namespace {

const char* const kFixture = "models/synth/synth-llama-q4_0.gguf";  // every value type the models use, BOOL too

Bytes fixture() { return read_bytes(lokal::test::data_path(kFixture)); }

// End of the last tensor's data (a cut at or after it leaves every tensor intact).
size_t data_end(const Bytes& b) {
  auto f = GGUFFile::parse(b.data(), b.size(), "fixture");
  size_t end = f->data_offset();
  for (const auto& t : f->tensors()) end = std::max(end, f->data_offset() + t.offset + t.nbytes);
  return end;
}

}  // namespace

TEST(GGUFHostile, HeaderFields) {
  const Bytes orig = fixture();
  ASSERT_EQ(try_parse(orig, "ok.gguf"), "");
  {
    Bytes b = orig;
    std::memcpy(b.data(), "GGML", 4);
    expect_fail(b, "magic.gguf", {"bad magic 'GGML'", "not a GGUF file"});
    std::memcpy(b.data(), "\x01\xff\n\0", 4);
    expect_fail(b, "magic2.gguf", {"bad magic"});
  }
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    Bytes b = orig;
    put<uint32_t>(b, 4, v);
    expect_fail(b, "version" + std::to_string(v) + ".gguf", {"version", std::to_string(v).c_str()});
  }
  {
    Bytes b = orig;
    put<uint32_t>(b, 4, 1);
    expect_fail(b, "v1.gguf", {"version 1 is not supported"});
    put<uint32_t>(b, 4, 4);
    expect_fail(b, "v4.gguf", {"unsupported GGUF version 4"});
  }
  {  // Big-endian: every header number byte-swapped ("GGUF" stays as is).
    Bytes b = orig;
    put<uint32_t>(b, 4, __builtin_bswap32(3));
    put<uint64_t>(b, 8, __builtin_bswap64(get<uint64_t>(orig, 8)));
    put<uint64_t>(b, 16, __builtin_bswap64(get<uint64_t>(orig, 16)));
    expect_fail(b, "bigendian.gguf", {"big-endian"});
  }
  for (uint64_t n : std::vector<uint64_t>{1ull << 63, 1ull << 40, ~0ull, orig.size()}) {
    Bytes b = orig;
    put<uint64_t>(b, 8, n);
    expect_fail(b, "tensors.gguf", {"tensor count"});
    b = orig;
    put<uint64_t>(b, 16, n);
    expect_fail(b, "kvs.gguf", {"metadata count"});
  }
  for (uint64_t n : std::vector<uint64_t>{1ull << 63, ~0ull, orig.size()}) {
    Bytes b = orig;
    put<uint64_t>(b, 24, n);  // length of the first key
    expect_fail(b, "keylen.gguf", {"metadata key has length", std::to_string(n).c_str()});
  }
  expect_fail(Bytes{}, "empty.gguf", {"too small"});
  expect_fail(Bytes{'G', 'G', 'U'}, "three.gguf", {"too small"});
  expect_fail(Bytes{'G', 'G', 'U', 'F'}, "four.gguf", {"truncated"});
}

TEST(GGUFHostile, StructuralErrors) {
  struct Case {
    const char* name;
    Bytes bytes;
    std::vector<const char*> needles;
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, const Raw& r, std::vector<const char*> needles) {
    cases.push_back({name, r.b, std::move(needles)});
  };
  // A valid one-tensor file as a control, then variations.
  add("control", Raw().header(1, 0).tensor("w", {8}, 0, 0).pad().zeros(32), {});
  add("ndims5", Raw().header(1, 0).tensor("w", {1, 1, 1, 1, 1}, 0, 0).pad().zeros(32), {"'w' has 5 dimensions"});
  add("ndims_huge", Raw().header(1, 0).str("w").u32(0xffffffffu).pad().zeros(64), {"'w' has 4294967295 dimensions"});
  add("dims_overflow", Raw().header(1, 0).tensor("w", {1ull << 32, 1ull << 32}, 0, 0).pad().zeros(32),
      {"'w'", "element count overflows"});
  add("dims_overflow3", Raw().header(1, 0).tensor("w", {1ull << 21, 1ull << 21, 1ull << 21}, 0, 0).pad().zeros(32),
      {"element count overflows"});
  add("dim_above_int64", Raw().header(1, 0).tensor("w", {1ull << 63}, 0, 0).pad().zeros(32),
      {"invalid dimension 9223372036854775808"});
  add("dim_zero", Raw().header(1, 0).tensor("w", {8, 0}, 0, 0).pad().zeros(32), {"invalid dimension 0"});
  add("bytes_overflow", Raw().header(1, 0).tensor("w", {1ull << 62}, 0 /*F32*/, 0).pad().zeros(32),
      {"byte size overflows"});
  add("bytes_huge", Raw().header(1, 0).tensor("w", {1ull << 40, 3}, 0 /*F32*/, 0).pad().zeros(32),
      {"outside the file's data section"});
  add("unknown_tensor_type4", Raw().header(1, 0).tensor("w", {32}, 4, 0).pad().zeros(32), {"unknown type id 4"});
  add("unknown_tensor_type", Raw().header(1, 0).tensor("w", {32}, 1000, 0).pad().zeros(32), {"unknown type id 1000"});
  add("block_size", Raw().header(1, 0).tensor("w", {16}, 2 /*Q4_0*/, 0).pad().zeros(32), {"block size 32"});
  add("unknown_value_type", Raw().header(0, 1).str("k").u32(13).u32(0), {"key 'k'", "unknown value type 13"});
  add("unknown_value_type_big", Raw().header(0, 1).str("k").u32(0x80000000u).u32(0), {"unknown value type 2147483648"});
  add("unknown_array_type", Raw().header(0, 1).str("k").u32(9).u32(99).u64(0), {"unknown array element type 99"});
  add("duplicate_key", Raw().header(0, 2).kv_u32("a.b", 1).kv_u32("a.b", 2), {"duplicate metadata key 'a.b'"});
  add("duplicate_tensor", Raw().header(2, 0).tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32).pad().zeros(64),
      {"duplicate tensor name 'w'"});
  add("out_of_range", Raw().header(1, 0).tensor("w", {8}, 0, 64).pad().zeros(64), {"'w'", "outside"});
  add("out_of_range_huge", Raw().header(1, 0).tensor("w", {8}, 0, 1ull << 63).pad().zeros(64), {"outside"});
  add("out_of_range_end", Raw().header(1, 0).tensor("w", {8}, 0, 0).pad().zeros(31), {"outside"});
  add("no_data_section", Raw().header(1, 0).tensor("w", {8}, 0, 0), {"truncated"});
  add("overlap", Raw().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().zeros(64),
      {"'a' and 'b' overlap"});
  add("overlap_same", Raw().header(2, 0).tensor("a", {8}, 0, 0).tensor("b", {8}, 0, 0).pad().zeros(64), {"overlap"});
  add("misaligned", Raw().header(1, 0).tensor("w", {8}, 0, 4).pad().zeros(64), {"offset 4 is not aligned to 32"});
  add("align_48", Raw().header(1, 1).kv_u32("general.alignment", 48).tensor("w", {8}, 0, 0).pad(16).zeros(48),
      {"general.alignment 48 is not a power of two"});
  add("align_0", Raw().header(0, 1).kv_u32("general.alignment", 0), {"general.alignment 0 is not a power of two"});
  add("align_u64", Raw().header(0, 1).str("general.alignment").u32(10).u64(32), {"general.alignment must be UINT32"});
  add("align_str", Raw().header(0, 1).str("general.alignment").u32(8).str("32"), {"general.alignment must be UINT32"});
  add("bool_2", Raw().header(0, 1).str("k").u32(7).u8(2), {"key 'k'", "bool value 2 is not 0 or 1"});
  add("bool_255", Raw().header(0, 1).str("k").u32(7).u8(255), {"bool value 255"});
  add("bool_array", Raw().header(0, 1).str("k").u32(9).u32(7).u64(3).u8(1).u8(0).u8(3), {"bool array element"});
  add("string_len", Raw().header(0, 1).str("k").u32(8).u64(1ull << 63), {"length 9223372036854775808"});
  add("string_len_short", Raw().header(0, 1).str("k").u32(8).u64(5).raw("abcd", 4), {"length 5", "4 bytes remain"});
  add("tensor_name_len", Raw().header(1, 0).u64(~0ull).zeros(64), {"tensor name has length"});
  add("array_count", Raw().header(0, 1).str("k").u32(9).u32(4).u64(1ull << 62).zeros(16),
      {"array length 4611686018427387904 exceeds the rest of the file"});
  add("str_array_count", Raw().header(0, 1).str("k").u32(9).u32(8).u64(~0ull).zeros(16), {"exceeds the rest"});
  add("nested_array_count", Raw().header(0, 1).str("k").u32(9).u32(9).u64(1ull << 61).zeros(16), {"exceeds the rest"});
  add("str_array_elem_len", Raw().header(0, 1).str("k").u32(9).u32(8).u64(2).str("ok").u64(1ull << 63),
      {"string array element has length"});
  {
    Raw r = Raw().header(0, 1).str("k").u32(9);
    for (int k = 0; k < 8; ++k) r.u32(9).u64(1);  // 9 levels of arrays
    r.u32(0).u64(0);
    add("nested_9", r, {"key 'k'", "nested deeper than 8"});
    Raw ok = Raw().header(0, 1).str("k").u32(9);
    for (int k = 0; k < 7; ++k) ok.u32(9).u64(1);  // 8 levels: accepted
    ok.u32(0).u64(0);
    add("control_nested_8", ok, {});
    Raw deep = Raw().header(0, 1).str("k").u32(9);
    for (int k = 0; k < 100000; ++k) deep.u32(9).u64(1);  // no stack overflow either
    add("nested_100000", deep, {"nested deeper than 8"});
  }

  for (const Case& c : cases) {
    const std::string name = std::string("hostile-") + c.name + ".gguf";
    SCOPED_TRACE(name);
    if (c.needles.empty()) {
      EXPECT_EQ(try_parse(c.bytes, name), "");
      continue;
    }
    const std::string msg = try_parse(c.bytes, name);
    ASSERT_FALSE(msg.empty()) << "parsed, but should have been refused";
    EXPECT_EQ(msg.rfind(name + ": ", 0), 0u) << "message does not start with the file name: " << msg;
    EXPECT_NE(msg.find("invalid GGUF"), std::string::npos) << msg;
    for (const char* n : c.needles) EXPECT_NE(msg.find(n), std::string::npos) << "expected '" << n << "' in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message should be one line: " << msg;
  }

  // Through the file system as well: the message names the path.
  const std::string dir = scratch_dir("hostile");
  const std::string path = dir + "/dup.gguf";
  const Case& dup = *std::find_if(cases.begin(), cases.end(), [](const Case& c) { return c.name == std::string("duplicate_key"); });
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(dup.bytes.data()),
                                              static_cast<std::streamsize>(dup.bytes.size()));
  try {
    GGUFFile::open(path);
    ADD_FAILURE() << "opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("duplicate metadata key"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(GGUFHostile, TruncationAtEveryHeaderByte) {
  // A real model and a writer-made file with every value type and nested arrays.
  AllTypes at;
  const std::pair<std::string, Bytes> files[] = {{"fixture", fixture()}, {"alltypes", at.w.write_to_memory()}};
  for (const auto& [label, b] : files) {
    SCOPED_TRACE(label);
    auto f = GGUFFile::parse(b.data(), b.size(), label);
    const size_t header_end = f->data_offset();
    const size_t end = data_end(b);
    ASSERT_GT(header_end, 1000u);
    size_t failures = 0;
    for (size_t cut = 0; cut <= header_end; ++cut) {
      const std::string name = label + "-cut" + std::to_string(cut) + ".gguf";
      const std::string msg = try_parse(b.data(), cut, name);
      if (msg.empty() || msg.rfind(name + ": invalid GGUF: ", 0) != 0) {
        if (++failures <= 5) ADD_FAILURE() << "cut at " << cut << ": '" << msg << "'";
      }
    }
    EXPECT_EQ(failures, 0u);
    // A few hundred cuts in the data section: refused until the last tensor is complete.
    std::mt19937_64 rng(99);
    std::vector<size_t> cuts = {header_end + 1, end - 1, end, b.size() - 1};
    for (int k = 0; k < 300; ++k) cuts.push_back(header_end + rng() % (b.size() - header_end));
    for (size_t cut : cuts) {
      const std::string name = label + "-datacut" + std::to_string(cut) + ".gguf";
      const std::string msg = try_parse(b.data(), cut, name);
      if (cut < end) {
        EXPECT_NE(msg.find(name), std::string::npos) << "cut at " << cut << ": " << msg;
        EXPECT_NE(msg.find("truncated file?"), std::string::npos) << msg;
      } else {
        EXPECT_EQ(msg, "") << "cut at " << cut << " keeps every tensor";
      }
    }
  }
}

TEST(GGUFHostile, RandomByteFlips) {
  // Seeded corruption of the header/metadata/tensor-info region (mostly) and of anything (sometimes).
  // Each result must be a clean parse or a lokal::Error naming the file: never a crash or foreign exception.
  AllTypes at;
  const std::pair<std::string, Bytes> files[] = {{"fixture", fixture()}, {"alltypes", at.w.write_to_memory()}};
  for (const auto& [label, orig] : files) {
    SCOPED_TRACE(label);
    const size_t header_end = GGUFFile::parse(orig.data(), orig.size(), label)->data_offset();
    Bytes b = orig;
    std::mt19937_64 rng(label == "fixture" ? 1 : 2);
    int parsed = 0, refused = 0;
    for (int iter = 0; iter < 4000; ++iter) {
      const int n_flips = 1 + static_cast<int>(rng() % 4);
      std::vector<size_t> pos;
      for (int k = 0; k < n_flips; ++k) {
        size_t p = rng() % 10 < 9 ? rng() % header_end : rng() % b.size();
        pos.push_back(p);
        switch (rng() % 3) {
          case 0: b[p] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;  // one bit
          case 1: b[p] = static_cast<uint8_t>(rng()); break;                // random byte
          default: b[p] = (rng() & 1) ? 0xff : 0x00; break;                 // extremes
        }
      }
      const std::string name = label + "-flip" + std::to_string(iter) + ".gguf";
      // In place (no copy): the buffer is exactly the file's size, so over-reads still show under ASan.
      try {
        auto f = GGUFFile::parse(b.data(), b.size(), name);
        touch_all(*f);
        ++parsed;
      } catch (const Error& e) {
        ++refused;
        ASSERT_EQ(std::string(e.what()).rfind(name + ": ", 0), 0u) << e.what();
      }
      for (size_t p : pos) b[p] = orig[p];
    }
    EXPECT_EQ(b, orig);
    EXPECT_GT(refused, 1000) << "parsed " << parsed;
    EXPECT_GT(parsed, 10) << "refused " << refused;
  }
}

TEST(GGUFHostile, HugeCountsDoNotAllocateHugely) {
  // The biggest fixture (16 MB): counts just small enough to pass the "could the file hold it" checks
  // must not turn into allocations proportional to the claim.
  const Bytes orig = read_bytes(lokal::test::data_path("models/real/tinytales-4m-f32.gguf"));
  ASSERT_GT(orig.size(), 16u << 20);
  const size_t limit = 2u << 20;  // largest single allocation allowed while parsing (the legit max is ~32 KB)
  auto check = [&](const Bytes& b, const std::string& name, const char* problem) {
    std::string msg;
    size_t biggest;
    {
      AllocTracker track;
      try {
        GGUFFile::parse(b.data(), b.size(), name);
      } catch (const Error& e) {
        msg = e.what();
      }
      biggest = track.max();
    }
    EXPECT_LT(biggest, limit) << name << ": allocated " << biggest << " bytes at once";
    EXPECT_NE(msg.find(name), std::string::npos) << name << ": " << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << name << ": " << msg;
  };
  {
    Bytes b = orig;
    put<uint64_t>(b, 16, (b.size() - 24) / 13);  // metadata count
    check(b, "kv-count.gguf", "invalid GGUF");
  }
  {
    Bytes b = orig;
    put<uint64_t>(b, 8, (b.size() - 24) / 24);  // tensor count
    check(b, "tensor-count.gguf", "invalid GGUF");
  }
  {
    // The first array in the file: its count as large as the rest of the file allows.
    auto f = GGUFFile::parse(orig.data(), orig.size(), "x");
    const GGUFValue* tokens = f->find("tokenizer.ggml.tokens");
    ASSERT_NE(tokens, nullptr);
    const size_t count_pos = static_cast<size_t>(reinterpret_cast<const uint8_t*>(tokens->arr_str[0].data()) -
                                                 orig.data()) - 8 - 8;
    ASSERT_EQ(get<uint64_t>(orig, count_pos), tokens->arr_n);
    Bytes b = orig;
    put<uint64_t>(b, count_pos, (b.size() - count_pos) / 8 - 1);
    check(b, "string-array-count.gguf", "invalid GGUF");
  }
  {
    // Arrays of arrays, each level claiming as many elements as the rest of a 16 MB file could hold.
    const size_t total = 16u << 20;
    Raw r = Raw().header(0, 1).str("k").u32(9);
    for (int k = 0; k < 7; ++k) r.u32(9).u64((total - r.b.size() - 12) / 12);
    r.b.resize(total, 0xff);
    check(r.b, "nested-count.gguf", "unknown array element type 4294967295");
  }
}
