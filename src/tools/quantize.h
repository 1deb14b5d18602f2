// tools/quantize.h - `lokal quantize`: rewrite a GGUF model with its weight matrices in another
// type, using the per-tensor type mixes of llama.cpp's llama-quantize (c392e50).
//
// What a file type name stands for (ftype = the llama_ftype number written to general.file_type):
//
//   F32 0, F16 1, BF16 32      every weight matrix in that float type (no mix)
//   Q4_0 2, Q4_1 3, Q5_0 8, Q5_1 9, Q8_0 7
//                              base type for every matrix; the output matrix (or, with tied
//                              embeddings, token_embd) gets Q6_K (Q8_0 stays Q8_0)
//   Q2_K 10                    base Q2_K; attn_v Q3_K (Q4_K when n_head/n_head_kv >= 4), attn_output and
//                              ffn_down Q3_K, output Q6_K
//   Q3_K_S 11 / _M 12 / _L 13  base Q3_K; _M: attn_v Q5_K in the first 2 layers else Q4_K, ffn_down Q5_K in the
//                              first n_layer/16 layers else Q4_K, attn_output Q4_K; _L: attn_v, attn_output and
//                              ffn_down Q5_K; output Q6_K
//   Q4_K_S 14 / _M 15          base Q4_K; _S: attn_v Q5_K in the first 4 layers, ffn_down Q5_K in the first n_layer/8;
//                              _M: attn_v and ffn_down Q6_K in the "more bits" layers (the first and last eighth and
//                              every third layer between); output Q6_K
//   Q5_K_S 16 / _M 17          base Q5_K; _M like Q4_K_M; output Q6_K
//   Q6_K 18                    every matrix Q6_K
//   (aliases, as llama-quantize: Q3_K = Q3_K_M, Q4_K = Q4_K_M, Q5_K = Q5_K_M)
// plus the rarer rules of llama.cpp (70B-class models, 8-expert models, falcon, fused attn_qkv). The layer index
// of attn_v / ffn_down rules is the position of the tensor among its kind when the tensors are sorted the way
// llama.cpp's loader sorts them (by blk number, then name), so the mix is llama.cpp's whatever the file order.
//
// Which tensors are converted ("weight matrices"): names ending in "weight" with at least 2 dimensions (trailing
// 1s not counted), except *_norm.weight, ffn_gate_inp, position_embd, token_types, ssm_conv1d, time_mix_* and
// attn_rel_b tensors. Everything else (norms, biases, 1-D tensors) is copied unchanged, in its own type.
//
// Fallbacks, when a matrix's row length is not a multiple of its chosen type's block size: Q2_K/Q3_K -> Q4_0
// (llama.cpp uses IQ4_NL, which lokal does not implement), Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; then, if the
// row still does not divide, F16 (where llama.cpp gives up). The output matrix goes straight to Q8_0 in that case,
// as in llama.cpp. Every fallback is listed in QuantizePlan::notes.
//
// The output file: the input's metadata, in the input's order, unchanged except general.file_type (set in place,
// UINT32) and general.quantization_version (UINT32 2, appended if absent); split.* keys are dropped. Tensors keep
// the input's names, shapes and order; general.alignment is kept. (llama.cpp instead moves general.file_type to
// the end and writes the tensors sorted by layer and name; tensor data is identical.)
//
// Quantization uses the reference round-to-nearest quantizers of core/quant.h, which produce the same bytes as
// llama.cpp's without an importance matrix, so for the same mix the output's tensor data is byte-identical to
// llama-quantize's. With an importance matrix (QuantizeOptions::importance, eval/imatrix.h) the matrices that
// have an entry go through the importance-weighted quantizers (core/quant.h, quantize_row_weighted; their bytes
// are lokal's own, in the standard block layouts), and the quantize.imatrix.* keys are added.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/gguf.h"
#include "core/types.h"

namespace lokal {

// A file type name of llama-quantize.
struct QuantFileType {
  const char* name;      // "Q4_K_M"
  int ftype;             // llama_ftype number (general.file_type)
  DType base;            // the type most matrices get
  const char* desc;      // one-line description for help output
};

// The accepted names, in display order (aliases excluded).
const std::vector<QuantFileType>& quant_file_types();
// Case-insensitive lookup of a name or alias ("q4_k_m", "Q4_K"); nullopt if unknown.
std::optional<QuantFileType> find_quant_file_type(std::string_view name);
// "F32, F16, BF16, Q8_0, ..." for error messages.
std::string quant_file_type_list();

// Importance of each column of a matrix (an importance matrix, "imatrix", eval/imatrix.h): for a tensor of
// shape [ne0, ne1, ne2], ne0 * ne2 floats (one row of ne0 weights per ne2 slice), or {nullptr, 0} for none.
// The data must stay valid until quantize_model returns. Any other size is an error (lokal::Error).
struct ImportanceView {
  const float* data = nullptr;
  size_t size = 0;
};
using ImportanceFn = std::function<ImportanceView(const GGUFTensorInfo& tensor)>;

// The input covariance H = E[x x^T] of a matrix (n = ne0; n x n floats, row-major), or {nullptr, 0} for none.
// The data must stay valid until the next call of the function (quantize_model asks for each matrix's covariance
// once to check it and once more when it quantizes that matrix, so only one expanded matrix need be in memory).
struct CovarianceView {
  const float* data = nullptr;
  int64_t n = 0;
};
using CovarianceFn = std::function<CovarianceView(const GGUFTensorInfo& tensor)>;

// How block-quantized matrices are rounded (`lokal quantize --quant-method`):
//   rtn     the reference round-to-nearest quantizers and llama.cpp's no-imatrix mix (its bytes); statistics unused
//   search  the importance-weighted per-block search (core/quant.h, quantize_row_weighted); needs importance
//   gptq    error feedback along each row with the input covariance (core/quant_gptq.h); needs a covariance
//   auto    per matrix: gptq where the matrix has a covariance, else search where it has importance, else rtn
//           (a .dat alone therefore gives exactly the search's bytes, as before the covariance existed)
enum class QuantMethod { Auto, Gptq, Search, Rtn };
const char* quant_method_name(QuantMethod m);
// "auto", "gptq", "search", "rtn" (case-insensitive); nullopt otherwise.
std::optional<QuantMethod> parse_quant_method(std::string_view s);

// Where an importance matrix came from, recorded in the output's metadata like llama-quantize does:
// quantize.imatrix.file (string), .dataset (string, if non-empty), .entries_count (i32), .chunks_count (i32, if > 0).
struct ImatrixMetadata {
  std::string file, dataset;
  int32_t entries = 0, chunks = 0;
};

// Quantizes `nrows` rows of `n_per_row` floats into `dst` (nrows * row_size(type, n_per_row) bytes).
// `importance` (n_per_row floats, may be null) weights each column's rounding error: the importance-weighted
// quantizers of core/quant.h (quantize_row_weighted; Q8_0 and float types ignore it). Without importance this is
// the reference quantizer of core/quant.h (llama.cpp's bytes).
void quantize_rows(DType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* importance);

// ---- per-tensor type mix (llama-quantize's llama_tensor_get_type) --------------------------------------------

// Model facts the mix rules depend on.
struct MixModelInfo {
  std::string arch;          // general.architecture ("llama", "qwen2", "falcon", ...)
  int n_layer = 0;
  int64_t n_head = 0, n_head_kv = 0;
  int n_expert = 0;
  int n_attention_wv = 0;    // number of tensors named *attn_v.weight / *attn_qkv.weight / *attn_kv_b.weight
  bool has_output = true;    // an output.weight tensor exists (false: tied embeddings, token_embd is the output)
  bool has_imatrix = false;  // an importance matrix is used (changes the Q4_0/Q5_0 ffn_down rule)
};

// The facts of a GGUF model file.
MixModelInfo mix_model_info(const GGUFFile& f, bool has_imatrix);

// The type of one weight matrix `name` (row length ne0) of a model quantized to file type `ft`: the mix rule,
// then the fallback for rows the type's blocks do not divide (`why`, if given, receives the reason for a
// fallback). `kind_index` is the tensor's position among the tensors of its kind (attn_v, ffn_down, ffn_gate,
// ffn_up) in llama.cpp's order (by layer, then name): for a dense model, its layer number. `pure`: no mix, only
// the fallback. Float file types return their type. Throws lokal::Error for a mixture-of-experts tensor whose
// name has no valid layer number.
DType mix_tensor_type(const QuantFileType& ft, const MixModelInfo& m, const std::string& name, int64_t ne0,
                      int kind_index, bool pure = false, std::string* why = nullptr);

struct TensorPlan {
  std::string name;
  std::vector<int64_t> ne;   // the tensor's shape (ne[0] = row length)
  DType from = DType::F32;   // type in the input
  DType to = DType::F32;     // type in the output
  bool matrix = false;       // a weight matrix (subject to conversion); false: copied as-is
  bool requantize = false;   // `from` is block-quantized and to != from: dequantized, then quantized again
  std::string fallback;      // non-empty: why `to` is a fallback type
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  bool converted() const { return to != from; }
};

struct QuantizePlan {
  QuantFileType file_type{};
  std::vector<TensorPlan> tensors;   // in file order
  uint64_t bytes_in = 0;             // tensor data of the input (without padding)
  uint64_t bytes_out = 0;            // tensor data of the output (without padding)
  uint64_t n_elements = 0;           // all tensors
  uint64_t file_size_in = 0;
  uint64_t file_size_out = 0;        // the exact size of the file that is (or would be) written
  int n_requantize = 0;
  int n_fallback = 0;
  std::vector<std::string> notes;    // one line each: fallbacks, requantization
  std::map<DType, int> count_in, count_out;  // tensors per type
  double bpw_in() const { return n_elements ? 8.0 * static_cast<double>(bytes_in) / static_cast<double>(n_elements) : 0; }
  double bpw_out() const { return n_elements ? 8.0 * static_cast<double>(bytes_out) / static_cast<double>(n_elements) : 0; }
};

struct TensorProgress {
  size_t index = 0;          // 0-based, in file order
  size_t count = 0;
  const TensorPlan* tensor = nullptr;
  double seconds = 0;        // time spent on this tensor
};

struct QuantizeOptions {
  QuantFileType file_type{};      // required (from find_quant_file_type)
  int n_threads = 0;              // 0: all hardware threads
  bool allow_requantize = false;  // accept block-quantized input matrices (dequantize, then quantize again)
  bool keep_output_f16 = false;   // the output matrix (token_embd when tied) becomes / stays F16
  bool pure = false;              // no mix: every matrix gets the base type (fallbacks still apply)
  bool dry_run = false;           // plan only; nothing is written
  ImportanceFn importance;        // optional per-tensor importance (see quantize_rows); also selects llama.cpp's
                                  // imatrix variant of the mix (Q4_0/Q5_0: the first n_layer/8 ffn_down get Q4_1/Q5_1)
  CovarianceFn covariance;        // optional per-tensor input covariance (for QuantMethod gptq / auto)
  QuantMethod method = QuantMethod::Auto;
  float gptq_damp = 0.01f;        // GPTQ damping, relative to the mean of diag H
  ImatrixMetadata imatrix_meta;   // written to the output when `importance` is set and imatrix_meta.file is non-empty
  // Called once the plan is made and every check has passed, before any data is converted or written.
  std::function<void(const QuantizePlan&)> on_plan;
  std::function<void(const TensorProgress&)> on_tensor;    // after each tensor is written
};

struct QuantizeResult {
  QuantizePlan plan;
  double seconds = 0;     // wall time of the whole run (0 for a dry run)
  bool written = false;
};

// The per-tensor types for `in` (no data is touched). Throws lokal::Error for an unsupported input
// (already quantized without allow_requantize, a type that cannot be dequantized, split files...).
QuantizePlan plan_quantization(const GGUFFile& in, const QuantizeOptions& opt);

// Quantizes in_path into out_path (or only plans with opt.dry_run). One tensor at a time, rows split across
// opt.n_threads threads, streamed to the output file (written to a temporary file beside it, renamed into place
// only when complete). Throws lokal::Error with a one-line message on any failure; out_path is then untouched.
QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeOptions& opt);

}  // namespace lokal
