// libFuzzer target for the safetensors reader (core/safetensors.h).
//
// Every input must either parse or throw lokal::Error whose message starts with the file name; anything else
// (a crash, a sanitizer report, another exception, a tensor outside the buffer, overlapping tensors) is a finding.
// On success every byte of every tensor is read.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/safetensors.h"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_safetensors: %s\n", what.c_str());
  std::abort();
}

volatile uint64_t g_sink;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<lokal::SafeTensorsFile> f;
  try {
    f = lokal::SafeTensorsFile::parse(data, size, "fuzz.safetensors");
  } catch (const lokal::Error& e) {
    if (std::strncmp(e.what(), "fuzz.safetensors: ", 18) != 0) finding(std::string("error does not name the file: ") + e.what());
    return 0;
  }
  uint64_t sum = 0;
  const uint8_t* begin = data + f->data_offset();
  const uint8_t* end = data + size;
  const uint8_t* prev_end = begin;
  for (const auto& t : f->tensors()) {
    if (f->find(t.name) != &t) finding("find() does not return the tensor");
    if (t.data < begin || t.data > end || t.nbytes > static_cast<size_t>(end - t.data))
      finding("tensor '" + t.name + "' outside the buffer");
    if (t.nbytes && t.data < prev_end) finding("tensors overlap");
    if (t.nbytes) prev_end = t.data + t.nbytes;
    if (static_cast<uint64_t>(t.n_elements()) * lokal::safetensors_dtype_size(t.dtype) != t.nbytes) finding("size mismatch");
    for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
    sum += t.shape_str().size();
  }
  for (const auto& [k, v] : f->metadata()) sum += k.size() + v.size();
  g_sink = g_sink + sum;
  return 0;
}
