// runtime/plan.h - memory planning: what a model needs in RAM for given settings, and which model /
// context / KV-cache types / batch fit a budget. Run before loading anything but GGUF headers.
//
// Two layers:
//   * estimate_memory(facts, settings): a pure function giving the bytes lokal will have resident at its
//     peak for one model and one set of settings, as a breakdown:
//       weights   the whole GGUF file (it is mapped and every page is read in at load; with --no-mmap it is
//                 read into one heap buffer of the same size) + the 1-D tensors converted to F32 at load
//       kv        KVCache::bytes_for: n_layer * pool positions (rounded up to 64-position pages) * (row bytes of K +
//                 row bytes of V) for the chosen types; the pool is n_ctx * n_parallel positions unless kv_tokens
//                 sets it (sequences share it), plus the pool's page bookkeeping
//       compute   Forward::scratch_bytes_for (micro-batch activations of max(n_batch, n_parallel) tokens, attention
//                 tiles, the quantized-activation buffer) + one row of logits per parallel sequence
//       overhead  the process itself: code, libraries, the C++ runtime and heap (a constant measured on this
//                 build), the tokenizer's tables (per token, per byte of token text, per merge), thread stacks
//     The total is what `lokal run` reaches as peak resident set size (VmHWM); tests/test_plan.cpp holds it to
//     5% of the measured value.
//   * make_plan(request): tries the candidate settings in a fixed order of preference and returns the first that
//     fits each budget, with every candidate's breakdown and a one-line reason. Settings the user fixed (context,
//     KV types, batch) are never changed; only the free ones are searched. Nothing fits -> Plan::fits is false and
//     the caller refuses with the numbers of the smallest candidate.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/gguf.h"
#include "core/types.h"
#include "model/config.h"

namespace lokal {

// What planning needs to know about a GGUF file, read from its header (no tensor data is touched).
struct ModelFacts {
  std::string path;
  ModelConfig cfg;
  uint64_t file_bytes = 0;        // size of the whole file
  uint64_t tensor_bytes = 0;      // tensor data
  uint64_t converted_bytes = 0;   // F32 copies made at load of non-F32 1-D tensors (norms, biases)
  int64_t n_params = 0;
  int64_t n_tokens = 0;           // vocabulary size
  uint64_t token_text_bytes = 0;  // sum of the token strings' lengths
  int64_t n_merges = 0;           // BPE merges
  uint64_t merge_text_bytes = 0;
  uint64_t max_act_row_bytes = 0; // Model::max_act_row_bytes, from the tensor types
  std::string type_label;         // model_file_type (model/config.h): "Q4_K - Medium", or the dominant tensor type
  // For GPU offload: per layer, the device bytes of its matrices and vectors as uploaded (model/offload.h) and the
  // file bytes that then leave host memory (its matrices); the output matrix likewise (when it is not tied, its
  // file bytes leave too). Types without a GPU kernel make gpu_ok false.
  std::vector<uint64_t> layer_gpu_bytes, layer_matrix_bytes;
  uint64_t output_gpu_bytes = 0, output_matrix_bytes = 0;
  bool output_tied = false;
  bool gpu_ok = true, output_gpu_ok = true;
  double bits_per_weight() const {
    return n_params > 0 ? 8.0 * static_cast<double>(tensor_bytes) / static_cast<double>(n_params) : 0;
  }
  // Reads the facts of a GGUF model file; throws lokal::Error for an unreadable or unsupported file.
  static ModelFacts read(const std::string& path);
  static ModelFacts from_gguf(const GGUFFile& f, const std::string& path);
};

struct RunSettings {
  int64_t n_ctx = 4096;         // longest sequence
  DType type_k = DType::F16;
  DType type_v = DType::F16;
  int64_t n_batch = kDefaultBatchSize;
  int n_threads = 1;
  int n_parallel = 1;           // sequences evaluated together (lokal batch / serve)
  int64_t kv_tokens = 0;        // positions of the shared KV page pool; 0: n_ctx * n_parallel
  int n_gpu_layers = 0;         // GPU offload (-ngl): the last N layers; >= n_layer: all, and the output
  int64_t pool_tokens() const { return kv_tokens > 0 ? kv_tokens : n_ctx * n_parallel; }
};

struct MemoryEstimate {
  uint64_t weights_bytes = 0;
  uint64_t kv_bytes = 0;
  uint64_t kv_k_bytes = 0;
  uint64_t kv_v_bytes = 0;
  uint64_t compute_bytes = 0;
  uint64_t overhead_bytes = 0;
  uint64_t total_bytes = 0;       // host (RAM) bytes: the offloaded matrices and their cache are not in it
  // GPU offload: device memory (model/offload.h: weights as uploaded, the offloaded layers' KV cache in the device
  // layouts, DeviceScratch), and how many layers / whether the output.
  int64_t gpu_layers = 0;
  bool gpu_output = false;
  uint64_t gpu_weights_bytes = 0, gpu_kv_bytes = 0, gpu_compute_bytes = 0, gpu_total_bytes = 0;
};

// Peak resident bytes of `lokal run` with this model and these settings (see the top of this file).
MemoryEstimate estimate_memory(const ModelFacts& model, const RunSettings& s);
// The draft model of speculative decoding beside a target run with settings `run` (runtime/speculative.h's
// ModelDrafter): its weights once (run.n_gpu_layers: the draft's GPU layers) and, for each of run.n_parallel
// sequences, its own cache of run.n_ctx positions in the draft's cache types (run.type_k/type_v) and working memory
// for micro-batches of up to 64 tokens. overhead_bytes: its tokenizer tables only (the process is the target's).
MemoryEstimate estimate_draft_memory(const ModelFacts& draft, const RunSettings& run);
// The process and tokenizer part of estimate_memory (exposed for reporting).
uint64_t runtime_overhead_bytes(const ModelFacts& model, int n_threads);
// The model-independent part of it: the process itself (code, libraries, C++ runtime, heap), counted once however
// many models one process holds (a multi-model `lokal serve` adds each model's estimate minus this).
uint64_t process_base_bytes();

struct PlanRequest {
  std::vector<ModelFacts> models;        // the files to choose from (e.g. quantizations of one model)
  std::optional<ModelFacts> draft;       // a draft model that must fit beside the chosen one
  uint64_t ram_bytes = 0;                // the budget
  uint64_t vram_bytes = 0;               // GPU budget: with it, as many layers as fit go to the GPU (last first)
  std::optional<int> n_gpu_layers;       // fixed -ngl (else chosen from vram_bytes; 0 without a budget)
  int64_t n_ctx = 0;                     // 0: free (the model's trained context, at most 4096, then halved)
  int n_parallel = 1;                    // sequences served together (fixed)
  int64_t kv_tokens = 0;                 // shared KV pool positions (fixed); 0: n_ctx * n_parallel
  std::optional<DType> type_k, type_v;   // unset: free (f16, then q8_0, then q4_0)
  int64_t n_batch = 0;                   // 0: free (kDefaultBatchSize = 512, then 256, 128, 64, 32)
  int n_threads = 1;
  int64_t min_ctx = 256;                 // a free context is never planned below this
  uint64_t mlock_limit_bytes = UINT64_MAX;  // RLIMIT_MEMLOCK, for the --mlock check
  bool mlock = false;
};

struct PlanCandidate {
  size_t model = 0;            // index into PlanRequest::models
  RunSettings settings;
  MemoryEstimate mem;          // the model's own needs
  MemoryEstimate draft_mem;    // the draft's (zero without a draft)
  uint64_t total_bytes = 0;    // mem.total_bytes + draft (weights, kv, compute; one process overhead)
  uint64_t gpu_bytes = 0;      // device memory (model + draft) with settings.n_gpu_layers
  bool fits = false;
};

struct Plan {
  uint64_t ram_bytes = 0;
  bool fits = false;
  PlanCandidate chosen;                  // the first candidate that fits; else the smallest one tried
  std::vector<PlanCandidate> tried;      // in order of preference, up to and including the chosen one
  std::string reason;                    // why this choice (or why nothing fits), one line
  std::vector<std::string> notes;        // mlock, VRAM, threads...
  uint64_t vram_bytes = 0;
};

// Pure: the same request gives the same plan. Throws lokal::Error if the request has no models or a fixed
// setting is invalid for a model (e.g. a KV type whose block does not divide the head size).
Plan make_plan(const PlanRequest& req);

// A KV cache type as the command line spells it ("f16", "q8_0").
std::string kv_type_label(DType t);

// "2GiB", "512M", "1.5 GB", "800000000" -> bytes (K/M/G/T and KiB/MiB/GiB/TiB: powers of 1024;
// KB/MB/GB/TB: powers of 1000; no unit: bytes). Throws lokal::Error for anything else.
uint64_t parse_byte_size(const std::string& text);
// MemAvailable from /proc/meminfo (0 if unknown); RLIMIT_MEMLOCK (UINT64_MAX if unlimited).
uint64_t available_ram_bytes();
uint64_t mlock_limit_bytes();

}  // namespace lokal
