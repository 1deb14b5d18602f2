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

  // Reads and validates the hyperparameters. Throws lokal::Error naming the file for an
  // unsupported architecture or missing/inconsistent values.
  static ModelConfig from_gguf(const GGUFFile& f);
};

// Human-readable name of a llama_ftype value ("Q4_K - Medium").
std::string file_type_name(int ftype);

}  // namespace lokal
