// model/model.h - a loaded model: config, tokenizer and weight views into the mapped GGUF,
// plus the per-context state (KV cache, scratch) and the forward pass.
#pragma once
#include <functional>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/gguf.h"
#include "core/mmap.h"
#include "core/threadpool.h"
#include "model/config.h"
#include "ops/attention.h"
#include "ops/ops.h"
#include "tokenizer/vocab.h"

namespace lokal {

struct LoadOptions {
  bool use_mmap = true;
  bool mlock = false;
  bool prefetch = true;   // ask the kernel to read the weights ahead (avoids first-token page faults)
  // Rewrite Q4_0 / Q5_0 / Q8_0 / Q4_K matrices in place into the 16-row interleaved layout of ops/packed.h when the
  // CPU has a kernel for it (same memory; the file on disk is not changed). LOKAL_REPACK=0 disables.
  bool repack = true;
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  WeightView wq, wk, wv, wo;         // wq: n_embd -> n_head*head_dim, wo: n_head*head_dim_v -> n_embd
  const float* bq = nullptr;         // optional biases (qwen2): [n_embd_q], [n_embd_k], [n_embd_v]
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* ffn_norm = nullptr;   // [n_embd]
  WeightView w_gate, w_up, w_down;   // gate/up: n_embd -> n_ff, down: n_ff -> n_embd
};

class Model {
 public:
  // Maps the file, validates every tensor's presence, type and shape. Throws lokal::Error.
  static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& opt = {});
  // The same with a file the caller already opened (and looked at, e.g. to plan memory): it is not parsed twice.
  // With opt.use_mmap false the file is opened again and read into memory.
  static std::unique_ptr<Model> load(std::unique_ptr<GGUFFile> file, const LoadOptions& opt = {});

  const ModelConfig& config() const { return cfg_; }
  const Vocab& vocab() const { return *vocab_; }
  const GGUFFile& gguf() const { return *gguf_; }
  double load_seconds() const { return load_seconds_; }
  size_t weight_bytes() const { return weight_bytes_; }   // bytes of all tensor data
  // The largest matmul_scratch_row_bytes of the matrices the forward pass multiplies with.
  size_t max_act_row_bytes() const { return max_act_row_; }
  bool mlocked() const { return mlocked_; }
  // Matrices rewritten into the packed layout at load, and their bytes.
  int64_t packed_tensors() const { return packed_tensors_; }
  size_t packed_bytes() const { return packed_bytes_; }

  WeightView tok_embd;
  WeightView output;                 // == tok_embd when embeddings are tied
  bool tied_output = false;
  const float* output_norm = nullptr;
  const float* rope_freqs = nullptr; // optional per-pair frequency divisors (Llama 3.1 rope scaling)
  std::vector<LayerWeights> layers;

 private:
  Model() = default;
  // Lookups of tensors ModelConfig::from_gguf validated; nullptr / empty when an optional one is absent.
  WeightView matrix(const std::string& name, int64_t cols, int64_t rows);
  const float* vector(const std::string& name, int64_t n);
  void repack_weights();

  ModelConfig cfg_;
  std::unique_ptr<GGUFFile> gguf_;
  std::unique_ptr<Vocab> vocab_;
  std::vector<std::unique_ptr<float[]>> owned_;  // non-F32 norm/bias vectors converted at load
  double load_seconds_ = 0;
  size_t weight_bytes_ = 0;
  size_t max_act_row_ = 0;
  bool mlocked_ = false;
  int64_t packed_tensors_ = 0;
  size_t packed_bytes_ = 0;
};

// Key/value cache for one sequence: per layer, n_ctx rows (one per position) holding the
// n_head_kv heads of K (n_embd_k values) and V (n_embd_v values). Element type F32 or F16,
// chosen separately for K and V; attention reads the rows in place (ops/attention.h).
class KVCache {
 public:
  KVCache(const ModelConfig& cfg, int64_t n_ctx, DType type_k = DType::F32, DType type_v = DType::F32);
  int64_t n_ctx() const { return n_ctx_; }
  DType type_k() const { return type_k_; }
  DType type_v() const { return type_v_; }
  size_t bytes() const { return k_.size() + v_.size(); }
  size_t bytes_k() const { return k_.size(); }
  size_t bytes_v() const { return v_.size(); }
  // Exact bytes a cache of these settings allocates (for planning before loading).
  static size_t bytes_for(const ModelConfig& cfg, int64_t n_ctx, DType type_k, DType type_v);
  // Head-major (ops/attention.h): per layer, each KV head's segments of all positions are contiguous.
  KVRows k_rows(int64_t layer) const { return {type_k_, k_.data() + layer * layer_k_, seg_k_, seg_k_ * static_cast<size_t>(n_ctx_)}; }
  KVRows v_rows(int64_t layer) const { return {type_v_, v_.data() + layer * layer_v_, seg_v_, seg_v_ * static_cast<size_t>(n_ctx_)}; }
  // Converts and stores the K and V rows of position `pos`.
  void store(int64_t layer, int64_t pos, const float* k, const float* v);

 private:
  int64_t n_ctx_, n_head_kv_, head_dim_k_, head_dim_v_;
  DType type_k_, type_v_;
  size_t seg_k_, seg_v_, layer_k_, layer_v_;  // bytes of one head at one position; of one layer
  AnonBuffer k_, v_;  // huge pages: every decoded token reads the whole cache up to its position
};

// Sees the input of a weight-matrix product before it runs: `x` holds n_tok rows of W.cols floats (W is the
// model's view; W.data identifies the tensor). For activation statistics such as `lokal imatrix`.
using MatmulObserver = std::function<void(const WeightView& W, const float* x, int64_t n_tok)>;

// Runs the forward pass of a llama-family model (llama, qwen2) over a batch of tokens.
class Forward {
 public:
  Forward(const Model& model, int64_t n_ctx, ThreadPool& pool, int64_t max_batch = 256,
          DType cache_type_k = DType::F32, DType cache_type_v = DType::F32);

  // Process tokens[0..n) at positions pos0..pos0+n-1 (causal attention over the cache).
  // If all_logits, writes n rows of n_vocab logits to `logits`; otherwise only the last row.
  // Throws lokal::Error if pos0 + n exceeds the context.
  void eval(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* logits);

  int64_t n_ctx() const { return kv_.n_ctx(); }
  size_t kv_bytes() const { return kv_.bytes(); }
  const KVCache& kv() const { return kv_; }
  size_t scratch_bytes() const;
  // Bytes of working memory eval() needs for a batch of n tokens at context n_ctx (for planning).
  // type_k: the K cache type (attention converts queries to its partner type); max_act_row_bytes: the largest
  // quantized-activation row of any weight matrix (Model::max_act_row_bytes), SIZE_MAX for the bound of
  // 4 bytes per element.
  static size_t scratch_bytes_for(const ModelConfig& cfg, int64_t n_batch, int64_t n_ctx, int n_threads,
                                  DType type_k = DType::F16, size_t max_act_row_bytes = SIZE_MAX);
  // Called before every weight-matrix product of eval() (empty: none, the default).
  void set_matmul_observer(MatmulObserver obs) { observer_ = std::move(obs); }

 private:
  void eval_batch(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* logits);
  void attention(int64_t layer, int64_t n, int64_t pos0);
  void observe(const WeightView& W, const float* x, int64_t n) const {
    if (observer_) observer_(W, x, n);
  }

  const Model& m_;
  const ModelConfig& c_;
  ThreadPool& pool_;
  KVCache kv_;
  int64_t max_batch_;
  // Scratch, sized for max_batch tokens.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, gate_, up_;
  std::vector<float> scores_;  // attention scratch (per-thread tiles)
  std::vector<uint8_t> act_;
  MatmulObserver observer_;
};

}  // namespace lokal
