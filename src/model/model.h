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
#include "model/offload.h"
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
  // GPU offload (model/offload.h): the last n_gpu_layers layers on a Vulkan device; 0: CPU only.
  OffloadOptions offload;
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
  // The device part of GPU offload (nullptr: everything on the CPU). Layers [first_layer, n_layer) run there.
  DeviceModel* device() const { return device_.get(); }
  int64_t first_device_layer() const { return device_ ? device_->first_layer() : cfg_.n_layer; }

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
  void repack_weights();  // the CPU's matrices only (not those of offloaded layers)

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
  std::unique_ptr<DeviceModel> device_;
};

// Key/value cache as a pool of pages: each page holds kKVPage (64) consecutive positions of one sequence, for every
// layer, K and V separately (element type F32, F16, BF16, Q8_0 or Q4_0, chosen separately for K and V). A sequence
// is a page table (ops/attention.h, KVRows::pages): page i holds its positions [64 i, 64 i + 64). Who owns which
// page is decided above (runtime/kv_pool.h); this class is the memory, allocated once at its full size.
// Layout of a page, per layer: head-major (each KV head's 64 segments contiguous), so one attention tile of one
// head is one sequential run of memory.
//
// With GPU offload (`dev` given), the host pages hold only the CPU's layers [0, dev->first_layer()) and a DeviceKV
// holds the offloaded layers' K and V at the same pages and slots.
class KVCache {
 public:
  KVCache(const ModelConfig& cfg, int64_t n_pages, DType type_k = DType::F32, DType type_v = DType::F32,
          DeviceModel* dev = nullptr);
  static int64_t pages_for(int64_t n_tokens) { return (n_tokens + kKVPage - 1) / kKVPage; }
  int64_t n_pages() const { return n_pages_; }
  int64_t n_ctx() const { return n_pages_ * kKVPage; }  // positions the whole pool holds
  DType type_k() const { return type_k_; }
  DType type_v() const { return type_v_; }
  size_t bytes() const { return k_.size() + v_.size(); }  // host bytes
  uint64_t device_bytes() const { return dev_ ? dev_->bytes() : 0; }
  DeviceKV* device() const { return dev_.get(); }
  size_t bytes_k() const { return k_.size(); }
  size_t bytes_v() const { return v_.size(); }
  // Exact bytes a cache for n_tokens positions (rounded up to whole pages) allocates (for planning before loading).
  // n_layers: the layers kept on the host (all of them without offload).
  static size_t bytes_for(const ModelConfig& cfg, int64_t n_tokens, DType type_k, DType type_v, int64_t n_layers = -1);
  // Views of one layer; their page table is the caller's (KVRows::with_pages).
  KVRows k_rows(int64_t layer) const { return {type_k_, k_.data() + layer * layer_k_, seg_k_, seg_k_ * kKVPage, nullptr, page_k_}; }
  KVRows v_rows(int64_t layer) const { return {type_v_, v_.data() + layer * layer_v_, seg_v_, seg_v_ * kKVPage, nullptr, page_v_}; }
  // Converts and stores the K and V rows of the position in slot `slot` (0..63) of page `page` (a host layer).
  void store(int64_t layer, int64_t page, int64_t slot, const float* k, const float* v);
  // Copies page src over page dst (every layer, K and V, host and device): copy-on-write of a shared page.
  void copy_page(int64_t dst, int64_t src);

 private:
  int64_t n_pages_, n_head_kv_, head_dim_k_, head_dim_v_;
  DType type_k_, type_v_;
  size_t seg_k_, seg_v_;      // bytes of one head at one position
  size_t layer_k_, layer_v_;  // bytes of one layer in a page
  size_t page_k_, page_v_;    // bytes of one page (all layers)
  AnonBuffer k_, v_;  // huge pages: every decoded token reads the whole cache up to its position
  std::unique_ptr<DeviceKV> dev_;
};

// One token of a multi-sequence batch (Forward::eval_batch): evaluated at position `pos` of sequence `seq`.
struct BatchEntry {
  int32_t token = 0;
  int32_t seq = 0;
  int64_t pos = 0;
  bool logits = false;  // whether the caller wants this entry's logits
  bool hidden = false;  // whether the caller wants this entry's final hidden state (after the output norm): embeddings
};

// Page table of a sequence: pages[i] holds its positions [64 i, 64 i + 64).
struct SeqPages {
  const int32_t* pages = nullptr;
  int64_t n_pages = 0;
};

// Sees the input of a weight-matrix product before it runs: `x` holds n_tok rows of W.cols floats (W is the
// model's view; W.data identifies the tensor). For activation statistics such as `lokal imatrix`.
using MatmulObserver = std::function<void(const WeightView& W, const float* x, int64_t n_tok)>;

// Runs the forward pass of a llama-family model (llama, qwen2) over a batch of tokens.
class Forward {
 public:
  // A forward pass with its own single-sequence cache of n_ctx positions (perplexity, compare, tests).
  Forward(const Model& model, int64_t n_ctx, ThreadPool& pool, int64_t max_batch = kDefaultBatchSize,
          DType cache_type_k = DType::F32, DType cache_type_v = DType::F32);
  // A forward pass over an external, shared cache (eval_batch only); max_ctx: the longest sequence it will see
  // (sizes the attention scratch).
  Forward(const Model& model, ThreadPool& pool, int64_t max_batch, int64_t max_ctx);

  // Process tokens[0..n) at positions pos0..pos0+n-1 (causal attention over the own cache).
  // If all_logits, writes n rows of n_vocab logits to `logits`; otherwise only the last row.
  // Throws lokal::Error if pos0 + n exceeds the context.
  void eval(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* logits);

  // Evaluates n entries of any sequences in one pass over the weights (micro-batches of max_batch): each entry's
  // K and V go to its position in its sequence's pages (seqs[entry.seq]), and its attention sees that sequence's
  // positions 0..pos (earlier positions must be in the cache or earlier in this batch). Writes one row of n_vocab
  // logits per entry with logits set, in entry order. An entry's results are bit-identical whatever the other
  // entries are (batch invariance: every kernel's arithmetic per token is independent of the batch).
  // With `hidden`, also writes one row of n_embd floats per entry with hidden set (the final hidden state after the
  // output RMS norm, as the output matrix reads it), in entry order.
  void eval_batch(const BatchEntry* entries, int64_t n, const SeqPages* seqs, int64_t n_seqs, KVCache& kv,
                  float* logits, float* hidden = nullptr);

  int64_t n_ctx() const { return n_ctx_; }
  size_t kv_bytes() const { return own_kv_ ? own_kv_->bytes() : 0; }
  const KVCache& kv() const { return *own_kv_; }
  int64_t max_batch() const { return max_batch_; }
  size_t scratch_bytes() const;
  uint64_t device_scratch_bytes() const { return dev_ ? dev_->bytes() : 0; }
  // Bytes of working memory eval() needs for a batch of n tokens at context n_ctx (for planning).
  // type_k: the K cache type (attention converts queries to its partner type); max_act_row_bytes: the largest
  // quantized-activation row of any weight matrix (Model::max_act_row_bytes), SIZE_MAX for the bound of
  // 4 bytes per element.
  static size_t scratch_bytes_for(const ModelConfig& cfg, int64_t n_batch, int64_t n_ctx, int n_threads,
                                  DType type_k = DType::F16, size_t max_act_row_bytes = SIZE_MAX);
  // Called before every weight-matrix product of eval() (empty: none, the default).
  void set_matmul_observer(MatmulObserver obs) { observer_ = std::move(obs); }

 private:
  void eval_micro(const BatchEntry* e, int64_t n, const SeqPages* seqs, KVCache& kv, float* logits, float* hidden);
  // GPU offload: the device's layers over x_ (n rows; up and back down), then the logits when the device has the
  // output. Returns whether it wrote the logits.
  bool eval_device(const BatchEntry* e, int64_t n, const SeqPages* seqs, KVCache& kv, float* logits);
  void observe(const WeightView& W, const float* x, int64_t n) const {
    if (observer_) observer_(W, x, n);
  }
  // Runs fn(t) for t in [0, n): on the pool when there are several tokens.
  template <typename Fn>
  void per_token(int64_t n, Fn&& fn) {
    if (n == 1) fn(0);
    else pool_.parallel_for(n, [&](int64_t t, int) { fn(t); });
  }

  const Model& m_;
  const ModelConfig& c_;
  ThreadPool& pool_;
  std::unique_ptr<KVCache> own_kv_;  // the single-sequence form's cache
  std::vector<int32_t> own_pages_;   // its page table: 0, 1, 2, ...
  int64_t n_ctx_;
  int64_t max_batch_;
  // Scratch, sized for max_batch tokens.
  std::vector<float> x_, xn_, q_, k_, v_, attn_, gate_, up_;
  std::vector<float> scores_;  // attention scratch (per-thread tiles)
  std::vector<uint8_t> act_;
  std::vector<int64_t> n_pos_;          // per entry of a micro-batch: positions its attention sees
  std::vector<const int32_t*> pages_;   // per entry: its sequence's page table
  std::vector<BatchEntry> one_seq_;     // eval()'s entries
  MatmulObserver observer_;
  std::unique_ptr<DeviceScratch> dev_;  // GPU offload's device buffers (nullptr without)
};

}  // namespace lokal
