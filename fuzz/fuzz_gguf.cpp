// libFuzzer target for the GGUF reader (and, on inputs it accepts, the writer).
//
// Every input must either parse or throw lokal::Error whose message starts with the file name; anything
// else (a crash, a sanitizer report, another exception, an out-of-range tensor pointer) is a finding.
// On success: every metadata accessor that applies, every byte of every array and tensor, and a rewrite
// with GGUFWriter, which must parse back to the same metadata and tensors and rewrite to identical bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gguf.h"
#include "core/gguf_writer.h"

namespace {

const char* const kName = "fuzz.gguf";

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_gguf: %s\n", what.c_str());
  std::abort();
}

volatile uint64_t g_sink;

uint64_t touch_value(const lokal::GGUFValue& v) {
  uint64_t sum = v.to_string().size() + v.u + static_cast<uint64_t>(v.i);
  for (char c : v.s) sum += static_cast<uint8_t>(c);
  if (v.type == lokal::GGUFType::ARRAY) {
    if (v.arr_type == lokal::GGUFType::STRING) {
      if (v.arr_str.size() != v.arr_n) finding("string array size mismatch");
      for (auto s : v.arr_str)
        for (char c : s) sum += static_cast<uint8_t>(c);
    } else if (v.arr_type == lokal::GGUFType::ARRAY) {
      if (v.arr_nested.size() != v.arr_n) finding("nested array size mismatch");
      for (const auto& e : v.arr_nested) sum += touch_value(e);
    } else {
      const lokal::GGUFMetaValue copy = lokal::GGUFMetaValue::from(v);  // reads every element byte
      for (uint8_t b : copy.arr_raw()) sum += b;
    }
  }
  return sum;
}

uint64_t touch(const lokal::GGUFFile& f) {
  uint64_t sum = 0;
  for (const auto& [k, v] : f.kv()) {
    if (f.find(k) != &v) finding("find() does not return the key's value");
    sum += touch_value(v);
    // Every accessor, whatever the type: they must return or throw lokal::Error.
    try { sum += f.get_str(k).size(); } catch (const lokal::Error&) {}
    try { sum += static_cast<uint64_t>(f.get_int(k)); } catch (const lokal::Error&) {}
    try { sum += static_cast<uint64_t>(f.get_float(k) != 0); } catch (const lokal::Error&) {}
    try { sum += f.opt_bool(k).value_or(false); } catch (const lokal::Error&) {}
    try { sum += f.get_str_array(k).size(); } catch (const lokal::Error&) {}
    try { sum += f.get_f32_array(k).size(); } catch (const lokal::Error&) {}
    try { for (int64_t x : f.get_int_array(k)) sum += static_cast<uint64_t>(x); } catch (const lokal::Error&) {}
  }
  const uint8_t* begin = f.buffer() + f.data_offset();
  const uint8_t* end = f.buffer() + f.file_size();
  for (const auto& t : f.tensors()) {
    if (f.find_tensor(t.name) != &t) finding("find_tensor() does not return the tensor");
    if (t.data < begin || t.data > end || t.nbytes > static_cast<size_t>(end - t.data))
      finding("tensor '" + t.name + "' data outside the buffer");
    sum += static_cast<uint64_t>(t.n_elements()) + t.shape_str().size();
    for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
  }
  return sum;
}

std::vector<uint8_t> rewrite(const lokal::GGUFFile& f) {
  lokal::GGUFWriter w;
  w.set_version(f.version());
  w.copy_metadata(f);
  for (const auto& t : f.tensors()) w.add_tensor(t);
  return w.write_to_memory();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<lokal::GGUFFile> f;
  try {
    f = lokal::GGUFFile::parse(data, size, kName);
  } catch (const lokal::Error& e) {
    if (std::strncmp(e.what(), "fuzz.gguf: ", 11) != 0) finding(std::string("error does not name the file: ") + e.what());
    return 0;
  }
  g_sink = g_sink + touch(*f);

  // Writer round trip: whatever the reader accepts, the writer must write, and that must read back the same.
  std::vector<uint8_t> a, b;
  try {
    a = rewrite(*f);
    auto g = lokal::GGUFFile::parse(a.data(), a.size(), "rewrite.gguf");
    if (g->kv().size() != f->kv().size() || g->tensors().size() != f->tensors().size())
      finding("rewrite changed the number of keys or tensors");
    for (size_t i = 0; i < f->kv().size(); ++i)
      if (g->kv()[i].first != f->kv()[i].first ||
          !(lokal::GGUFMetaValue::from(g->kv()[i].second) == lokal::GGUFMetaValue::from(f->kv()[i].second)))
        finding("rewrite changed key " + f->kv()[i].first);
    for (size_t i = 0; i < f->tensors().size(); ++i) {
      const auto& x = f->tensors()[i];
      const auto& y = g->tensors()[i];
      if (x.name != y.name || x.type != y.type || x.n_dims != y.n_dims || x.nbytes != y.nbytes ||
          std::memcmp(x.ne, y.ne, sizeof x.ne) != 0 || std::memcmp(x.data, y.data, x.nbytes) != 0)
        finding("rewrite changed tensor " + x.name);
    }
    b = rewrite(*g);
  } catch (const lokal::Error& e) {
    finding(std::string("the writer refused what the reader accepted: ") + e.what());
  }
  if (a != b) finding("rewriting is not idempotent");
  return 0;
}
