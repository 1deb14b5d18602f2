// model/config.h - hyperparameters of a decoder-only transformer, read from GGUF metadata.
// Nothing here is hard-coded per model: every shape comes from `<arch>.*` keys or tensor shapes.
#pragma once
#include <cstdint>
#include <string>

#include "core/gguf.h"

namespace lokal {

enum class RopeStyle { Norm, Neox };  // Norm: adjacent pairs (llama); Neox: split halves (qwen2)

struct ModelConfig {
  std::string arch;          // "llama", "qwen2"
  std::string name;          // general.name (may be empty)
  int64_t n_vocab = 0;
  int64_t n_embd = 0;        // model width
  int64_t n_layer = 0;
  int64_t n_head = 0;        // query heads
  int64_t n_head_kv = 0;     // key/value heads (GQA when < n_head)
  int64_t head_dim = 0;      // per-head width of q and k (key_length)
  int64_t head_dim_v = 0;    // per-head width of v (value_length)
  int64_t n_ff = 0;          // FFN hidden width
  int64_t n_ctx_train = 0;   // context length the model was trained with
  float rms_eps = 1e-5f;
  float rope_freq_base = 10000.0f;
  float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
  int64_t rope_dim = 0;          // rotated dims per head
  RopeStyle rope_style = RopeStyle::Norm;
  int file_type = -1;            // general.file_type (llama_ftype), -1 if absent

  int64_t n_embd_q() const { return n_head * head_dim; }
  int64_t n_embd_k() const { return n_head_kv * head_dim; }
  int64_t n_embd_v() const { return n_head_kv * head_dim_v; }

  // Reads the hyperparameters and validates the model's header and tensors: every check of validate_model but
  // building the tokenizer (Model::load builds it right after, in the same order).
  static ModelConfig from_gguf(const GGUFFile& f);
};

// The one model validation, used by every subcommand that reads a model: Model::load (run, info, perplexity, compare,
// imatrix, bench) does ModelConfig::from_gguf then Vocab::from_gguf, exactly what this function does; quantize,
// export-hf and plan call it before they write or plan anything, so one malformed file gets the same error from
// every subcommand. Reads the header, the small 1-D tensors (norm weights, biases, rope_freqs: a few KiB per layer)
// and the tokenizer; the weight matrices are never read, so it costs the same for a 20 GB file. Checks, in order:
//   * a supported architecture (llama, qwen2);
//   * hyperparameters: embedding_length, block_count, attention.head_count, feed_forward_length present and positive;
//     head_count_kv (default head_count) positive and dividing head_count; the head dimensions (key_length, default
//     embedding_length / head_count, which must divide) positive and even; context_length (if present) positive;
//     rope.dimension_count even and at most the head dimension; the RMS norm epsilon and rope.freq_base finite and
//     > 0; a rope scaling factor finite and >= 0; every value below a sanity bound (so products cannot overflow);
//   * a tokenizer whose token count equals token_embd's rows;
//   * tensors: at least one; no mixture-of-experts tensors; the blk.N tensors cover exactly layers 0..block_count-1;
//     every tensor the forward pass reads (token_embd, output_norm, output or tied, rope_freqs if present, per layer
//     attn_norm, attn_q/k/v/output, ffn_norm/gate/up/down, and the q/k/v biases: required for qwen2, optional for
//     llama) present with exactly the expected shape and a type lokal computes with;
//   * the 1-D tensors hold only finite values;
//   * the tokenizer (Vocab::from_gguf: a supported tokenizer model and pre-tokenizer, consistent token arrays).
// Throws lokal::Error with one line "FILE: what is wrong" (FILE = f.name()); returns the configuration.
ModelConfig validate_model(const GGUFFile& f);

// Human-readable name of a llama_ftype value ("Q4_K - Medium").
std::string file_type_name(int ftype);

// The file type every subcommand shows for a model (info, run, bench, plan, compare; label "file type", JSON
// "file_type"): file_type_name(general.file_type), or when the key is absent the tensor type holding the most bytes
// of the 2-D tensors ("F32").
std::string model_file_type(const GGUFFile& f);

// Prompt tokens per forward micro-batch when -b is not given: one default for run, plan, info, perplexity, imatrix,
// compare and bench (llama.cpp's n_batch / n_ubatch default).
inline constexpr int64_t kDefaultBatchSize = 512;

}  // namespace lokal
