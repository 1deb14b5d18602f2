// Writes a seed corpus for fuzz_gguf into a folder: small synthetic GGUF files covering every value type,
// and shrunk copies of real models (arrays cut to 16 elements, at most 8 tensors of one block each).
// Usage: fuzz_gguf_seeds OUT_DIR [MODEL.gguf ...]
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"

using namespace lokal;

namespace {

GGUFMetaValue shrink(const GGUFValue& v, size_t max_n) {
  if (v.type != GGUFType::ARRAY || v.arr_n <= max_n) return GGUFMetaValue::from(v);
  if (v.arr_type == GGUFType::STRING)
    return GGUFMetaValue::str_array(std::vector<std::string>(v.arr_str.begin(), v.arr_str.begin() + max_n));
  if (v.arr_type == GGUFType::ARRAY) {
    std::vector<GGUFMetaValue> e;
    for (size_t k = 0; k < max_n; ++k) e.push_back(shrink(v.arr_nested[k], max_n));
    return GGUFMetaValue::array_of_arrays(std::move(e));
  }
  return GGUFMetaValue::raw_array(v.arr_type, v.arr_data, max_n);
}

void synthetic(const std::string& dir) {
  static const std::vector<uint8_t> bytes(4096, 0x3c);
  {
    GGUFWriter w;
    w.set("general.architecture", GGUFMetaValue::str("llama"));
    w.set("u8", GGUFMetaValue::u8(1));
    w.set("i8", GGUFMetaValue::i8(-1));
    w.set("u16", GGUFMetaValue::u16(2));
    w.set("i16", GGUFMetaValue::i16(-2));
    w.set("u32", GGUFMetaValue::u32(3));
    w.set("i32", GGUFMetaValue::i32(-3));
    w.set("u64", GGUFMetaValue::u64(4));
    w.set("i64", GGUFMetaValue::i64(-4));
    w.set("f32", GGUFMetaValue::f32(0.5f));
    w.set("f64", GGUFMetaValue::f64(0.25));
    w.set("bool", GGUFMetaValue::boolean(true));
    w.set("a_str", GGUFMetaValue::str_array({"a", "", "bc"}));
    w.set("a_i32", GGUFMetaValue::array(std::vector<int32_t>{1, -2, 3}));
    w.set("a_f32", GGUFMetaValue::array(std::vector<float>{1.5f, -2.0f}));
    w.set("a_u64", GGUFMetaValue::array(std::vector<uint64_t>{7}));
    w.set("a_bool", GGUFMetaValue::bool_array({true, false}));
    w.set("nested", GGUFMetaValue::array_of_arrays({GGUFMetaValue::array(std::vector<uint8_t>{1, 2}),
                                                    GGUFMetaValue::str_array({"x"}),
                                                    GGUFMetaValue::array_of_arrays({})}));
    w.add_tensor("f32", DType::F32, {3, 2}, bytes.data(), 24);
    w.add_tensor("f16", DType::F16, {5}, bytes.data(), 10);
    w.add_tensor("q8_0", DType::Q8_0, {32, 2}, bytes.data(), 68);
    w.add_tensor("q4_k", DType::Q4_K, {256}, bytes.data(), 144);
    w.add_tensor("scalar", DType::I32, {}, bytes.data(), 4);
    w.write(dir + "/synth-all-types.gguf");
  }
  {
    GGUFWriter w;
    w.set_version(2);
    w.set_alignment(8);
    w.set("general.name", GGUFMetaValue::str("aligned"));
    w.add_tensor("a", DType::I8, {3}, bytes.data(), 3);
    w.add_tensor("b", DType::Q4_0, {32, 1, 2}, bytes.data(), 36);
    w.write(dir + "/synth-align8-v2.gguf");
  }
  {
    GGUFWriter w;
    w.set("only", GGUFMetaValue::u32(1));
    w.write(dir + "/synth-no-tensors.gguf");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [MODEL.gguf ...]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  try {
    synthetic(dir);
    for (int i = 2; i < argc; ++i) {
      auto f = GGUFFile::open(argv[i]);
      GGUFWriter w;
      w.set_version(f->version());
      for (const auto& [k, v] : f->kv()) w.set(k, shrink(v, 16));
      size_t n = 0;
      for (const auto& t : f->tensors()) {
        if (n++ == 8) break;
        const TypeInfo* ti = type_info(t.type);
        w.add_tensor(t.name, t.type, {ti->block_size}, t.data, ti->type_size);
      }
      std::string base = argv[i];
      base = base.substr(base.find_last_of('/') + 1);
      w.write(dir + "/shrunk-" + base);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz_gguf_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
