#include "tools/quantize.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <system_error>

#include "core/safe_io.h"
#include "core/error.h"
#include "core/gguf_writer.h"
#include "core/quant.h"
#include "core/quant_gptq.h"
#include "core/threadpool.h"
#include "model/config.h"

namespace lokal {

namespace {

namespace fs = std::filesystem;

// llama_ftype numbers (llama.h).
enum FType : int {
  FT_F32 = 0, FT_F16 = 1, FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9, FT_Q2_K = 10,
  FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14, FT_Q4_K_M = 15, FT_Q5_K_S = 16, FT_Q5_K_M = 17,
  FT_Q6_K = 18, FT_BF16 = 32,
};

const std::vector<QuantFileType> kFileTypes = {
    {"F32", FT_F32, DType::F32, "32-bit float, no quantization (32 bpw)"},
    {"F16", FT_F16, DType::F16, "IEEE half (16 bpw)"},
    {"BF16", FT_BF16, DType::BF16, "bfloat16 (16 bpw)"},
    {"Q8_0", FT_Q8_0, DType::Q8_0, "8-bit, blocks of 32 (8.5 bpw)"},
    {"Q4_0", FT_Q4_0, DType::Q4_0, "4-bit, blocks of 32 (4.5 bpw), output Q6_K"},
    {"Q4_1", FT_Q4_1, DType::Q4_1, "4-bit with offset (5.0 bpw), output Q6_K"},
    {"Q5_0", FT_Q5_0, DType::Q5_0, "5-bit (5.5 bpw), output Q6_K"},
    {"Q5_1", FT_Q5_1, DType::Q5_1, "5-bit with offset (6.0 bpw), output Q6_K"},
    {"Q2_K", FT_Q2_K, DType::Q2_K, "2-bit K-quant mix (attn_v/attn_output/ffn_down Q3_K)"},
    {"Q3_K_S", FT_Q3_K_S, DType::Q3_K, "3-bit K-quant, small"},
    {"Q3_K_M", FT_Q3_K_M, DType::Q3_K, "3-bit K-quant mix, medium"},
    {"Q3_K_L", FT_Q3_K_L, DType::Q3_K, "3-bit K-quant mix, large"},
    {"Q4_K_S", FT_Q4_K_S, DType::Q4_K, "4-bit K-quant, small"},
    {"Q4_K_M", FT_Q4_K_M, DType::Q4_K, "4-bit K-quant mix, medium (some attn_v/ffn_down Q6_K)"},
    {"Q5_K_S", FT_Q5_K_S, DType::Q5_K, "5-bit K-quant, small"},
    {"Q5_K_M", FT_Q5_K_M, DType::Q5_K, "5-bit K-quant mix, medium (some attn_v/ffn_down Q6_K)"},
    {"Q6_K", FT_Q6_K, DType::Q6_K, "6-bit K-quant (6.56 bpw)"},
};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(a[i])) != std::toupper(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_block_quantized(DType t) {
  const TypeInfo* ti = type_info(t);
  return ti && ti->quantized;
}
bool is_float_type(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }
int64_t block_size(DType t) { return type_info(t)->block_size; }

// Dimensions not counting trailing 1s (ggml_n_dims).
int effective_dims(const GGUFTensorInfo& t) {
  for (int i = 3; i >= 1; --i)
    if (t.ne[i] > 1) return i + 1;
  return 1;
}

// The layer number of a "blk.N." name, or nullopt.
std::optional<int> layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return std::nullopt;
  size_t i = 4;
  bool neg = false;
  if (i < name.size() && (name[i] == '-' || name[i] == '+')) neg = name[i++] == '-';
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return std::nullopt;
  long long v = 0;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i) {
    v = v * 10 + (name[i] - '0');
    if (v > (1LL << 30)) return std::nullopt;
  }
  return static_cast<int>(neg ? -v : v);
}

// Tensors converted by quantization (the rest is copied as-is). Same rules as llama-quantize.
bool is_weight_matrix(const GGUFTensorInfo& t) {
  const std::string& n = t.name;
  if (!ends_with(n, "weight") || effective_dims(t) < 2) return false;
  static const char* const kSkip[] = {
      "_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d.weight", "time_mix_first.weight", "time_mix_w1.weight",
      "time_mix_w2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
      "attn_rel_b.weight"};
  for (const char* s : kSkip)
    if (contains(n, s)) return false;
  return n != "position_embd.weight" && n != "token_types.weight";
}

using ModelFacts = MixModelInfo;

// llama.cpp's LLM_TYPE_70B (80 layers, not 8 experts; llama with GQA, or one of a few architectures).
bool is_70b(const ModelFacts& m) {
  if (m.n_layer != 80 || m.n_expert == 8) return false;
  if (m.arch == "llama") return m.n_head != m.n_head_kv;
  return m.arch == "deci" || m.arch == "qwen2" || m.arch == "qwen2vl" || m.arch == "olmo";
}
int64_t n_gqa(const ModelFacts& m) { return m.n_head_kv > 0 ? m.n_head / m.n_head_kv : 0; }

// First value of an integer key that may also be a per-layer integer array.
std::optional<int64_t> first_int(const GGUFFile& f, const std::string& key) {
  const GGUFValue* v = f.find(key);
  if (!v) return std::nullopt;
  if (v->type == GGUFType::ARRAY) {
    const auto a = f.get_int_array(key);
    if (a.empty()) return std::nullopt;
    return a[0];
  }
  return f.opt_int(key);
}

// Position of a tensor among the tensors of its kind, counted in llama.cpp's processing order.
struct MixCounters {
  int i_attention_wv = 0, i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
};

// "More bits" layers of the _M mixes: the first and last eighth, and every third layer between.
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

// The layer index a rule uses: the running counter, or (mixture-of-experts models, whose expert tensors are not
// in layer order) the number in the tensor's name.
int rule_layer(const ModelFacts& m, int counter, const std::string& name) {
  if (m.n_expert <= 1) return counter;
  auto l = layer_of(name);
  if (!l) throw Error("cannot determine the layer of tensor '" + name + "'");
  if (*l < 0 || *l >= m.n_layer)
    throw Error("tensor '" + name + "' names layer " + std::to_string(*l) + ", but the model has " +
                std::to_string(m.n_layer) + " layers");
  return *l;
}

bool is_output_tensor(const ModelFacts& m, const std::string& name) {
  return name == "output.weight" || (!m.has_output && name == "token_embd.weight");
}

// A type whose block size divides a row of ne0 elements, for a type whose block size does not.
DType fallback_type(DType t, int64_t ne0, std::string* why) {
  if (ne0 % block_size(t) == 0) return t;
  DType f;
  switch (t) {
    case DType::Q2_K: case DType::Q3_K: f = DType::Q4_0; break;  // llama.cpp: IQ4_NL (not implemented here)
    case DType::Q4_K: f = DType::Q5_0; break;
    case DType::Q5_K: f = DType::Q5_1; break;
    case DType::Q6_K: f = DType::Q8_0; break;
    default: f = DType::F16; break;
  }
  if (ne0 % block_size(f) != 0) f = DType::F16;
  *why = "row length " + std::to_string(ne0) + " is not a multiple of the " + type_name(t) + " block size " +
         std::to_string(block_size(t)) + "; using " + type_name(f);
  return f;
}

// llama.cpp's llama_tensor_get_type, for the file types above: the type of one weight matrix in the mix
// (before the fallback for rows that the type's blocks do not divide).
DType mix_type(const ModelFacts& m, MixCounters& c, const GGUFTensorInfo& t, DType type, int ft, std::string* why) {
  const std::string& name = t.name;
  const bool falcon = m.arch == "falcon";
  if (is_output_tensor(m, name)) {
    if (falcon) {
      type = DType::Q8_0;
    } else if (t.ne[0] % block_size(type) != 0) {
      *why = "row length " + std::to_string(t.ne[0]) + " is not a multiple of the " + type_name(type) +
             " block size " + std::to_string(block_size(type)) + "; using Q8_0";
      type = DType::Q8_0;
    } else if (type != DType::Q8_0) {
      type = DType::Q6_K;
    }
  } else if (name == "token_embd.weight") {
    // no rule for these file types
  } else if (contains(name, "attn_v.weight")) {
    const int i = c.i_attention_wv;
    if (ft == FT_Q2_K) type = n_gqa(m) >= 4 ? DType::Q4_K : DType::Q3_K;
    else if (ft == FT_Q3_K_M) type = i < 2 ? DType::Q5_K : DType::Q4_K;
    else if (ft == FT_Q3_K_L) type = DType::Q5_K;
    else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && use_more_bits(i, m.n_attention_wv)) type = DType::Q6_K;
    else if (ft == FT_Q4_K_S && i < 4) type = DType::Q5_K;
    // 70B-class models share each attn_v among 8 heads: it is small, so more bits are cheap.
    if (is_70b(m) && (type == DType::Q3_K || type == DType::Q4_K)) type = DType::Q5_K;
    if (m.n_expert == 8) type = DType::Q8_0;
    ++c.i_attention_wv;
  } else if (contains(name, "attn_k.weight")) {
    if (m.n_expert == 8) type = DType::Q8_0;
  } else if (contains(name, "attn_q.weight")) {
    // no rule for these file types
  } else if (contains(name, "ffn_down")) {
    const int i = rule_layer(m, c.i_ffn_down, name), n = m.n_layer;
    const bool more = use_more_bits(i, n);
    if (ft == FT_Q2_K) type = DType::Q3_K;
    else if (ft == FT_Q3_K_M) type = i < n / 16 ? DType::Q5_K : (!falcon || more) ? DType::Q4_K : DType::Q3_K;
    else if (ft == FT_Q3_K_L) type = falcon ? DType::Q4_K : DType::Q5_K;
    else if (ft == FT_Q4_K_M) {
      if (falcon) type = i < n / 16 ? DType::Q6_K : more ? DType::Q5_K : DType::Q4_K;
      else if (more) type = DType::Q6_K;
    } else if (ft == FT_Q5_K_M && more) type = DType::Q6_K;
    else if (ft == FT_Q4_K_S && !falcon && i < n / 8) type = DType::Q5_K;
    else if ((ft == FT_Q4_0 || ft == FT_Q5_0) && m.has_imatrix && i < n / 8)
      type = ft == FT_Q4_0 ? DType::Q4_1 : DType::Q5_1;  // guard the first ffn_down layers (imatrix only)
    ++c.i_ffn_down;
  } else if (contains(name, "attn_output.weight")) {
    if (!falcon) {
      if (m.n_expert == 8) {
        if (ft == FT_Q2_K || ft == FT_Q3_K_S || ft == FT_Q3_K_M || ft == FT_Q4_K_S || ft == FT_Q4_K_M) type = DType::Q5_K;
      } else {
        if (ft == FT_Q2_K) type = DType::Q3_K;
        else if (ft == FT_Q3_K_M) type = DType::Q4_K;
        else if (ft == FT_Q3_K_L) type = DType::Q5_K;
      }
    } else if (ft == FT_Q3_K_L) {
      type = DType::Q4_K;
    }
  } else if (contains(name, "attn_qkv.weight")) {
    if (ft == FT_Q3_K_M || ft == FT_Q3_K_L) type = DType::Q4_K;
    else if (ft == FT_Q4_K_M) type = DType::Q5_K;
    else if (ft == FT_Q5_K_M) type = DType::Q6_K;
  } else if (contains(name, "ffn_gate")) {
    (void)rule_layer(m, c.i_ffn_gate, name);  // no rule for these file types; checks the name like llama.cpp
    ++c.i_ffn_gate;
  } else if (contains(name, "ffn_up")) {
    (void)rule_layer(m, c.i_ffn_up, name);
    ++c.i_ffn_up;
  }
  return type;
}

// llama.cpp's loader order: tensors outside blocks first, then by block number; by name within each group.
std::vector<size_t> llama_cpp_order(const GGUFFile& f) {
  const auto& ts = f.tensors();
  std::vector<size_t> idx(ts.size());
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::vector<int> layer(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) layer[i] = layer_of(ts[i].name).value_or(-1);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    if (layer[a] != layer[b]) return layer[a] < layer[b];
    return ts[a].name < ts[b].name;
  });
  return idx;
}

std::string type_counts(const std::map<DType, int>& counts) {
  std::string s;
  for (const auto& [t, n] : counts) s += (s.empty() ? "" : ", ") + std::string(type_name(t)) + " " + std::to_string(n);
  return s;
}


using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Refuses an output path that is the input, a directory, or in a directory that does not exist / cannot be written.
void check_paths(const std::string& in_path, const std::string& out_path, const QuantizeOptions& opt) {
  check_input_file(in_path, "GGUF model file");
  if (out_path.empty()) throw Error("no output file given");
  const std::vector<std::string> inputs{in_path, opt.imatrix_meta.file};
  if (opt.dry_run) {
    for (const auto& in : inputs)
      if (same_file(in, out_path)) throw Error(out_path + ": is the input file; choose another output path");
    return;
  }
  check_output_file(out_path, inputs);  // core/safe_io.h: never an input, a device, a FIFO or a directory
}

// Tells the kernel that a mapped input range is no longer needed (keeps the resident set at about one tensor).
void release_pages(const GGUFFile& f, const GGUFTensorInfo& t) {
  const MappedFile* mf = f.mapped();
  if (!mf || !mf->is_mapped() || t.nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(t.data) + page - 1) / page * page;
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes) / page * page;
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

// Converts one tensor and streams it to `out` in chunks of rows; rows are split across the pool.
class TensorConverter {
 public:
  explicit TensorConverter(int n_threads) : pool_(n_threads), tmp_(static_cast<size_t>(pool_.size())) {}
  int threads() const { return pool_.size(); }

  // `gptq` (may be null): the matrix's GPTQ factor (then every row goes through quantize_row_gptq).
  void convert(const GGUFTensorInfo& t, DType to, const float* importance, const GGUFWriter::Sink& out,
               QuantMethod method = QuantMethod::Search, const GptqFactor* gptq = nullptr) {
    const int64_t ne0 = t.ne[0], ne1 = t.ne[1], nrows = t.n_rows();
    const DType from = t.type;
    const size_t in_row = row_size(from, ne0), out_row = row_size(to, ne0);
    // About 16 M elements (64 MiB as F32) per chunk: bounded memory whatever the tensor's size.
    const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 24) / ne0, 1, nrows);
    buf_.resize(static_cast<size_t>(chunk) * out_row);
    for (auto& v : tmp_) v.resize(static_cast<size_t>(ne0));
    const int64_t grain = std::max<int64_t>(1, (gptq ? 1024 : 16384) / ne0);
    if (gptq) {
      gptq_diag_.resize(static_cast<size_t>(gptq->n));
      for (int64_t j = 0; j < gptq->n; ++j) gptq_diag_[static_cast<size_t>(j)] = std::max(0.0f, gptq->H[static_cast<size_t>(j * (gptq->n + 1))]);
    }
    for (int64_t r0 = 0; r0 < nrows; r0 += chunk) {
      const int64_t n = std::min(chunk, nrows - r0);
      failed_.store(false);
      pool_.parallel_for(n, [&](int64_t k, int tid) {
        if (failed_.load(std::memory_order_relaxed)) return;
        try {
          const int64_t r = r0 + k;
          const uint8_t* src = t.data + static_cast<size_t>(r) * in_row;
          const float* x;
          float* scratch = tmp_[static_cast<size_t>(tid)].data();
          if (from == DType::F32 && reinterpret_cast<uintptr_t>(src) % alignof(float) == 0) {
            x = reinterpret_cast<const float*>(src);
          } else {
            dequantize_row(from, src, scratch, ne0);
            x = scratch;
          }
          for (int64_t j = 0; j < ne0; ++j)
            if (!std::isfinite(x[j]))
              throw Error("tensor '" + t.name + "' has a non-finite value (" + std::to_string(x[j]) + ") in row " +
                          std::to_string(r) + "; refusing to quantize it");
          const float* imp = importance ? importance + (r / ne1) * ne0 : nullptr;
          uint8_t* dst = buf_.data() + static_cast<size_t>(k) * out_row;
          if (method == QuantMethod::Rtn) {
            quantize_row(to, x, dst, ne0);
          } else if (gptq) {
            quantize_row_gptq(to, x, dst, ne0, gptq_diag_.data(), *gptq);
          } else {
            quantize_rows(to, x, dst, 1, ne0, imp);
          }
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lk(mu_);
          if (!failed_.exchange(true)) error_ = e.what();
        }
      }, grain);
      if (failed_.load()) throw Error(error_);
      out(buf_.data(), static_cast<size_t>(n) * out_row);
    }
  }

 private:
  ThreadPool pool_;
  std::vector<std::vector<float>> tmp_;  // per-thread dequantized row
  std::vector<float> gptq_diag_;         // diag H of the current matrix (the GPTQ block search's importance)
  std::vector<uint8_t> buf_;             // one chunk of output rows
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  std::string error_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

const std::vector<QuantFileType>& quant_file_types() { return kFileTypes; }

std::optional<QuantFileType> find_quant_file_type(std::string_view name) {
  for (const auto& ft : kFileTypes)
    if (iequals(ft.name, name)) return ft;
  // llama-quantize's aliases
  static const std::pair<const char*, const char*> kAliases[] = {{"Q3_K", "Q3_K_M"}, {"Q4_K", "Q4_K_M"}, {"Q5_K", "Q5_K_M"}};
  for (const auto& [alias, target] : kAliases)
    if (iequals(alias, name)) return find_quant_file_type(target);
  return std::nullopt;
}

std::string quant_file_type_list() {
  std::string s;
  for (const auto& ft : kFileTypes) s += (s.empty() ? "" : ", ") + std::string(ft.name);
  return s;
}

MixModelInfo mix_model_info(const GGUFFile& f, bool has_imatrix) {
  MixModelInfo m;
  m.arch = f.opt_str("general.architecture").value_or("");
  const std::string a = m.arch + ".";
  auto layers = f.opt_int(a + "block_count");
  if (!layers) {  // not a known architecture's file: count the blocks
    int n = 0;
    for (const auto& t : f.tensors())
      if (auto l = layer_of(t.name)) n = std::max(n, *l + 1);
    layers = n;
  }
  m.n_layer = static_cast<int>(*layers);
  m.n_head = first_int(f, a + "attention.head_count").value_or(0);
  m.n_head_kv = first_int(f, a + "attention.head_count_kv").value_or(m.n_head);
  m.n_expert = static_cast<int>(f.opt_int(a + "expert_count").value_or(0));
  m.has_output = f.find_tensor("output.weight") != nullptr;
  m.n_attention_wv = 0;
  for (const auto& t : f.tensors())
    if (contains(t.name, "attn_v.weight") || contains(t.name, "attn_qkv.weight") || contains(t.name, "attn_kv_b.weight"))
      ++m.n_attention_wv;
  m.has_imatrix = has_imatrix;
  return m;
}

DType mix_tensor_type(const QuantFileType& ft, const MixModelInfo& m, const std::string& name, int64_t ne0,
                      int kind_index, bool pure, std::string* why) {
  DType to = ft.base;
  if (!is_block_quantized(to)) return to;
  std::string reason;
  GGUFTensorInfo t;
  t.name = name;
  t.ne[0] = ne0;
  MixCounters c{kind_index, kind_index, kind_index, kind_index};
  if (!pure) to = mix_type(m, c, t, to, ft.ftype, &reason);
  to = fallback_type(to, ne0, &reason);
  if (why) *why = reason;
  return to;
}

const char* quant_method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::Auto: return "auto";
    case QuantMethod::Gptq: return "gptq";
    case QuantMethod::Search: return "search";
    case QuantMethod::Rtn: return "rtn";
  }
  return "?";
}

std::optional<QuantMethod> parse_quant_method(std::string_view s) {
  for (QuantMethod m : {QuantMethod::Auto, QuantMethod::Gptq, QuantMethod::Search, QuantMethod::Rtn})
    if (iequals(quant_method_name(m), s)) return m;
  return std::nullopt;
}

void quantize_rows(DType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* importance) {
  const size_t rs = row_size(type, n_per_row);
  auto* d = static_cast<uint8_t*>(dst);
  for (int64_t r = 0; r < nrows; ++r) {
    void* out = d + static_cast<size_t>(r) * rs;
    if (importance && is_block_quantized(type)) quantize_row_weighted(type, src + r * n_per_row, out, n_per_row, importance);
    else quantize_row(type, src + r * n_per_row, out, n_per_row);
  }
}

QuantizePlan plan_quantization(const GGUFFile& in, const QuantizeOptions& opt) {
  const QuantFileType ft = opt.file_type;
  if (!ft.name) throw Error("quantize: no file type given");
  if (in.opt_int("split.count").value_or(1) > 1)
    throw Error(in.name() + ": is one part of a split model; merge the parts first (split models are not supported)");

  // rtn uses no statistics: llama.cpp's no-imatrix mix (and bytes) even when an importance matrix is given
  const ModelFacts m = mix_model_info(in, static_cast<bool>(opt.importance) && opt.method != QuantMethod::Rtn);
  const auto& ts = in.tensors();
  QuantizePlan plan;
  plan.file_type = ft;
  plan.tensors.resize(ts.size());

  MixCounters counters;
  for (size_t i : llama_cpp_order(in)) {
    const GGUFTensorInfo& t = ts[i];
    TensorPlan& p = plan.tensors[i];
    p.name = t.name;
    p.ne.assign(t.ne, t.ne + t.n_dims);
    p.from = p.to = t.type;
    p.matrix = is_weight_matrix(t);
    if (!p.matrix) continue;
    DType to = ft.base;
    if (is_block_quantized(to)) {
      if (!opt.pure) to = mix_type(m, counters, t, to, ft.ftype, &p.fallback);
      to = fallback_type(to, t.ne[0], &p.fallback);
    }
    if (opt.keep_output_f16 && is_output_tensor(m, t.name)) {
      to = DType::F16;
      p.fallback.clear();
    }
    p.to = to;
  }

  // Already-quantized input.
  std::map<DType, int> quantized_in;
  for (const auto& p : plan.tensors)
    if (p.matrix && !is_float_type(p.from)) ++quantized_in[p.from];
  if (!quantized_in.empty() && !opt.allow_requantize)
    throw Error(in.name() + ": is already quantized (" + type_counts(quantized_in) +
                "); quantizing it again loses more quality than quantizing the original F32/F16 model - pass "
                "--allow-requantize to do it anyway");

  std::map<DType, int> requantized;
  for (size_t i = 0; i < ts.size(); ++i) {
    TensorPlan& p = plan.tensors[i];
    const TypeInfo* from = type_info(p.from);
    if (p.converted() && (!from || !from->supported))
      throw Error(in.name() + ": tensor '" + p.name + "' has type " + (from ? from->name : "unknown") +
                  ", which lokal cannot convert");
    p.requantize = p.converted() && !is_float_type(p.from);
    p.bytes_in = ts[i].nbytes;
    p.bytes_out = GGUFWriter::tensor_size(p.to, p.ne, p.name);
    plan.bytes_in += p.bytes_in;
    plan.bytes_out += p.bytes_out;
    plan.n_elements += static_cast<uint64_t>(ts[i].n_elements());
    ++plan.count_in[p.from];
    ++plan.count_out[p.to];
    if (!p.fallback.empty()) {
      ++plan.n_fallback;
      plan.notes.push_back("fallback: " + p.name + ": " + p.fallback);
    }
    if (p.requantize) {
      ++plan.n_requantize;
      ++requantized[p.from];
    }
  }
  if (plan.n_requantize > 0)
    plan.notes.push_back("requantizing " + std::to_string(plan.n_requantize) +
                         " tensor(s) that are already quantized (" + type_counts(requantized) +
                         "): they are dequantized to F32 and quantized again, which adds to their error");
  plan.file_size_in = in.file_size();
  return plan;
}

QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeOptions& opt) {
  const auto t0 = Clock::now();
  check_paths(in_path, out_path, opt);
  auto in = GGUFFile::open(in_path);
  validate_model(*in);  // model/config.h: the checks every subcommand makes, before anything is planned or written
  QuantizeResult res;
  res.plan = plan_quantization(*in, opt);
  QuantizePlan& plan = res.plan;
  const auto& ts = in->tensors();

  // Importance vectors, looked up (and their sizes checked) before anything is written.
  std::vector<const float*> importance(ts.size(), nullptr);
  if (opt.importance) {
    std::vector<std::string> missing;
    for (size_t i = 0; i < ts.size(); ++i) {
      const TensorPlan& p = plan.tensors[i];
      if (!p.matrix || !p.converted() || !is_block_quantized(p.to)) continue;
      const ImportanceView v = opt.importance(ts[i]);
      if (!v.data) {
        missing.push_back(p.name);
        continue;
      }
      const uint64_t want = static_cast<uint64_t>(ts[i].ne[0]) * static_cast<uint64_t>(ts[i].ne[2]);
      if (v.size != want)
        throw Error("importance matrix: the entry for '" + p.name + "' has " + std::to_string(v.size) +
                    " values, but the tensor " + ts[i].shape_str() + " needs " + std::to_string(want) +
                    " (one per column); was it computed for another model?");
      importance[i] = v.data;
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t k = 0; k < missing.size(); ++k) list += (k ? ", " : "") + missing[k];
      plan.notes.push_back("warning: the importance matrix has no entry for " + std::to_string(missing.size()) +
                           " matri" + (missing.size() == 1 ? "x" : "ces") + " (quantized without importance): " + list);
    }
  }

  // Input covariances (GPTQ), looked up and checked before anything is written.
  if (opt.method == QuantMethod::Gptq && !opt.covariance)
    throw Error("--quant-method gptq needs the input covariance of each matrix (lokal imatrix --covariance writes "
                "IMATRIX.cov beside the importance matrix); none was given");
  if (opt.method == QuantMethod::Search && !opt.importance)
    throw Error("--quant-method search needs an importance matrix (--imatrix)");
  const bool with_covariance = opt.covariance && (opt.method == QuantMethod::Gptq || opt.method == QuantMethod::Auto);
  std::vector<bool> use_gptq(ts.size(), false);  // the covariance is fetched again (and expanded) when the tensor is written
  if (with_covariance) {
    int n_missing = 0;
    for (size_t i = 0; i < ts.size(); ++i) {
      const TensorPlan& p = plan.tensors[i];
      if (!p.matrix || !p.converted() || !gptq_supports(p.to)) continue;
      const CovarianceView v = opt.covariance(ts[i]);
      if (!v.data) {
        ++n_missing;
        continue;
      }
      if (v.n != ts[i].ne[0])
        throw Error("covariance: the entry for '" + p.name + "' is " + std::to_string(v.n) + " x " + std::to_string(v.n) +
                    ", but the tensor " + ts[i].shape_str() + " has " + std::to_string(ts[i].ne[0]) +
                    " columns; was it computed for another model?");
      if (ts[i].ne[2] * ts[i].ne[3] != 1) continue;  // stacked experts: one covariance does not describe every slice
      use_gptq[i] = true;
    }
    if (n_missing)
      plan.notes.push_back("note: the covariance has no entry for " + std::to_string(n_missing) + " matri" +
                           (n_missing == 1 ? "x" : "ces") + " (quantized by the per-block search or round-to-nearest)");
  }

  // With the covariance (auto/gptq), the block-quantized matrices that have no statistics at all - token_embd, a
  // lookup table, not a product - go through the weighted search with uniform importance (its weights are then
  // sqrt(sigma2 + x^2) alone) instead of round-to-nearest: measured on tinytales-4m, 0-5% lower KL per type.
  // (Without a covariance nothing changes: a .dat alone keeps its earlier behaviour.)
  std::vector<float> uniform;
  if (with_covariance) {
    std::vector<size_t> plain;
    for (size_t i = 0; i < ts.size(); ++i) {
      const TensorPlan& p = plan.tensors[i];
      if (!p.matrix || !p.converted() || !is_block_quantized(p.to) || importance[i] || use_gptq[i]) continue;
      plain.push_back(i);
      uniform.resize(std::max(uniform.size(), static_cast<size_t>(ts[i].ne[0] * ts[i].ne[2])), 1.0f);
    }
    std::string names;
    for (size_t i : plain) {  // after the last resize: the pointers stay valid
      importance[i] = uniform.data();
      names += (names.empty() ? "" : ", ") + plan.tensors[i].name;
    }
    if (!plain.empty())
      plan.notes.push_back("note: without statistics, quantized by the weighted search with uniform importance: " + names);
  }

  GGUFWriter w;
  w.copy_metadata(*in);
  w.remove("split.no");
  w.remove("split.count");
  w.remove("split.tensors.count");
  w.set_u32("general.quantization_version", 2);
  w.set_u32("general.file_type", static_cast<uint32_t>(plan.file_type.ftype));
  if (opt.importance && opt.method != QuantMethod::Rtn && !opt.imatrix_meta.file.empty()) {
    const ImatrixMetadata& im = opt.imatrix_meta;
    w.set_str("quantize.imatrix.file", im.file);
    if (!im.dataset.empty()) w.set_str("quantize.imatrix.dataset", im.dataset);
    w.set_i32("quantize.imatrix.entries_count", im.entries);
    if (im.chunks > 0) w.set_i32("quantize.imatrix.chunks_count", im.chunks);
  }

  GptqFactor gptq;  // the last matrix's factor
  std::unique_ptr<TensorConverter> conv;
  if (!opt.dry_run) conv = std::make_unique<TensorConverter>(opt.n_threads > 0 ? opt.n_threads : ThreadPool::default_threads());

  for (size_t i = 0; i < ts.size(); ++i) {
    const TensorPlan& p = plan.tensors[i];
    w.add_tensor(p.name, p.to, p.ne, [&, i](const GGUFWriter::Sink& out) {
      const auto ts0 = Clock::now();
      const GGUFTensorInfo& t = ts[i];
      if (i + 1 < ts.size() && in->mapped())
        in->mapped()->prefetch(in->data_offset() + ts[i + 1].offset, ts[i + 1].nbytes);
      if (!p.converted()) {
        constexpr size_t kPiece = size_t{64} << 20;
        for (size_t off = 0; off < t.nbytes; off += kPiece) out(t.data + off, std::min(kPiece, t.nbytes - off));
      } else {
        if (use_gptq[i]) {
          const CovarianceView cv = opt.covariance(t);
          if (!cv.data || cv.n != t.ne[0]) throw Error("covariance: the entry for '" + t.name + "' changed while quantizing");
          // q/k/v (and gate/up) meet the same input: one factor for consecutive matrices with an equal covariance
          const size_t nn = static_cast<size_t>(cv.n * cv.n);
          if (gptq.n != cv.n || std::memcmp(gptq.H.data(), cv.data, nn * sizeof(float)) != 0)
            gptq_prepare(cv.data, cv.n, opt.gptq_damp, gptq);
          conv->convert(t, p.to, importance[i], out, opt.method, &gptq);
        } else {
          conv->convert(t, p.to, opt.method == QuantMethod::Rtn ? nullptr : importance[i], out, opt.method);
        }
      }
      release_pages(*in, t);
      if (opt.on_tensor) {
        TensorProgress pr;
        pr.index = i;
        pr.count = ts.size();
        pr.tensor = &p;
        pr.seconds = seconds_since(ts0);
        opt.on_tensor(pr);
      }
    });
  }
  plan.file_size_out = w.file_size();
  if (opt.on_plan) opt.on_plan(plan);
  if (opt.dry_run) return res;

  w.write(out_path);
  res.written = true;
  res.seconds = seconds_since(t0);
  return res;
}

}  // namespace lokal
