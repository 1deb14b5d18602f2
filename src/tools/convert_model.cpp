// tools/convert_model.cpp - convert_model: the entry point of `lokal convert` (rules in convert.h). Checks the
// output against every input before any work, refuses the formats it cannot read, and dispatches: a folder to
// convert_hf, a file to convert_llama2c.
#include <cstring>

#include "core/error.h"
#include "core/mmap.h"
#include "core/safe_io.h"
#include "tools/convert_internal.h"

namespace lokal {

using namespace convert_detail;

ConvertResult convert_model(const std::string& input, const std::string& out_gguf, const ConvertOptions& opt) {
  std::error_code ec;
  // Every file the conversion may read (for a folder: everything in it) is protected from the output path,
  // and the output is checked before any work starts.
  std::vector<std::string> inputs{input, opt.tokenizer, opt.vocab_from};
  if (!opt.tokenizer.empty()) check_input_file(opt.tokenizer, "llama2.c tokenizer file");
  if (!opt.vocab_from.empty()) check_input_file(opt.vocab_from, "GGUF vocabulary file");
  if (fs::is_directory(input, ec)) {
    for (const auto& e : fs::directory_iterator(input, ec)) inputs.push_back(e.path().string());
    check_output_file(out_gguf, inputs);
    return convert_hf(input, out_gguf, opt);
  }
  check_input_file(input, "Hugging Face model folder or llama2.c checkpoint");
  check_output_file(out_gguf, inputs);
  MappedFile f(input, true);
  const uint8_t* d = f.data();
  if (f.size() >= 4 && std::memcmp(d, "GGUF", 4) == 0) throw Error(input + ": already a GGUF file");
  if (f.size() >= 4 && std::memcmp(d, "PK\x03\x04", 4) == 0)
    throw Error(input + ": a PyTorch (zip/pickle) checkpoint; only safetensors (a Hugging Face folder) and llama2.c .bin checkpoints are supported");
  if (f.size() >= 2 && d[0] == 0x80 && d[1] >= 2 && d[1] <= 5)
    throw Error(input + ": a pickle file; only safetensors (a Hugging Face folder) and llama2.c .bin checkpoints are supported");
  const std::string ext = fs::path(input).extension().string();
  if (ext == ".safetensors" || ext == ".json")
    throw Error(input + ": give the Hugging Face model folder (with config.json and the tokenizer), not one of its files");
  return convert_llama2c(input, out_gguf, opt);
}

}  // namespace lokal
