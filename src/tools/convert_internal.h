// tools/convert_internal.h - private to the convert_*.cpp files: what the conversions share. The rules are in
// tools/convert.h; the pieces live in
//   convert_common.cpp     file and JSON helpers, config.json values, element conversion, the row copy, parse_size
//   convert_tokenizer.cpp  the SentencePiece protobuf subset, tokenizer.json/tokenizer.model -> GGUF metadata
//   convert_hf.cpp         Hugging Face folder -> GGUF (architectures, hyperparameters, tensor names and shapes)
//   convert_llama2c.cpp    llama2.c checkpoint -> GGUF
//   convert_model.cpp      convert_model: input/output checks, dispatch on the input
//   convert_export.cpp     GGUF -> Hugging Face folder (safetensors, config and tokenizer files)
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/gguf.h"
#include "core/gguf_writer.h"
#include "core/types.h"
#include "tools/convert.h"

namespace lokal::convert_detail {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// GGUF / SentencePiece token types (the same numbers in both).
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;

// ---------------------------------------------------------------- small helpers

struct Notes {
  const std::function<void(const std::string&)>* cb = nullptr;
  std::vector<std::string>* list = nullptr;
  void operator()(const std::string& s) const {
    if (list) list->push_back(s);
    if (cb && *cb) (*cb)(s);
  }
};

bool is_file(const std::string& p);
json read_json(const std::string& path);
// Atomic (core/safe_io.h): a temporary file renamed into place, never a half-written or truncated file.
void write_text(const std::string& path, const std::string& text);
std::string dump_json(const json& j, const std::string& path);
std::string dump_json(const ojson& j, const std::string& path);
int64_t cfg_int(const json& c, const char* key, const std::string& where);
std::optional<int64_t> cfg_opt_int(const json& c, const char* key, const std::string& where);
std::optional<double> cfg_opt_float(const json& c, const char* key, const std::string& where);
std::string ne_str(const std::vector<int64_t>& ne);

// ---------------------------------------------------------------- element conversion

// One tensor to copy: rows of `row_len` elements, read from `src` (row r of the output comes from source row
// perm(r)), converted from `st` to `to`.
struct RowCopy {
  const uint8_t* src = nullptr;
  DType st = DType::F32;
  DType to = DType::F32;
  int64_t row_len = 0, n_rows = 0;
  int64_t perm_heads = 0;   // > 0: rotary row permutation over this many heads
  bool to_hf = false;       // direction of the permutation
};

void copy_rows(const RowCopy& c, const GGUFWriter::Sink& out);
std::optional<DType> st_dtype(const std::string& s);
const char* st_name(DType t);
// Output type of a tensor: 1-D tensors F32; others the requested type, else the stored one (F64 -> F32).
DType out_type(DType stored, size_t n_dims, const std::optional<DType>& outtype);
uint32_t file_type_of(const std::vector<DType>& types);

// Adds a tensor to the writer that streams `c` and reports progress.
struct TensorAdder {
  GGUFWriter& w;
  const ConvertOptions& opt;
  size_t count = 0;
  size_t next = 0;
  void add(const std::string& name, std::vector<int64_t> ne, RowCopy c) {
    const size_t index = next++;
    const size_t bytes = GGUFWriter::tensor_size(c.to, ne, name);
    ConvertTensorProgress pr;
    pr.index = index;
    pr.count = count;
    pr.name = name;
    pr.from = st_name(c.st);
    pr.to = c.to;
    pr.ne = ne;
    pr.bytes = bytes;
    const auto* cb = &opt.on_tensor;
    w.add_tensor(name, c.to, std::move(ne), [c, pr, cb](const GGUFWriter::Sink& out) {
      copy_rows(c, out);
      if (*cb) (*cb)(pr);
    });
  }
};

// ---------------------------------------------------------------- SentencePiece model protobuf (subset)

std::string write_sp_model(const std::vector<std::string>& tokens, const std::vector<float>& scores,
                           const std::vector<int32_t>& types, bool add_dummy_prefix);
bool is_byte_token(const std::string& t);

// ---------------------------------------------------------------- tokenizer: HF -> GGUF metadata

struct VocabOut {
  std::vector<std::pair<std::string, GGUFMetaValue>> kv;  // in order
  int64_t n_tokens = 0;
  void set(const std::string& k, GGUFMetaValue v) {
    for (auto& [key, val] : kv)
      if (key == k) {
        val = std::move(v);
        return;
      }
    kv.emplace_back(k, std::move(v));
  }
};

extern const char* kLlama3Regex;
extern const char* kQwen2Regex;

VocabOut hf_vocab(const std::string& dir, const json& config, int64_t n_embd_rows, const Notes& note);
void vocab_from_gguf(VocabOut& v, const std::string& path);

}  // namespace lokal::convert_detail
