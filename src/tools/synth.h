// tools/synth.h - `lokal synth`: random-weight GGUF files with the exact shapes, hyperparameters and
// tokenizer metadata of popular models, so speed at real sizes can be measured with no download.
//
// The files follow llama.cpp's GGUF conventions (key names, tensor names, shapes, file-type mixes), so both
// lokal and llama.cpp load them. Weights are deterministic pseudo-random numbers: a given (preset, type, seed,
// layers, vocabulary) always gives the same bytes, whatever the thread count.
//
//   matrices, token_embd, biases   approximately normal, mean 0, std 0.02 (sum of four uniforms)
//   norm weights                   1 + the same noise
//   rope_freqs.weight (llama 3)    the Llama 3 rope frequency factors computed from the preset's scaling
//
// Generation streams: each tensor is produced in chunks of rows (rows split across threads, each row generated
// and quantized on its own), handed to the GGUF writer and forgotten, so memory stays at a few chunk buffers
// whatever the model size.
//
// Vocabulary: either generated (the preset's size and kind, see below) or every tokenizer.* key copied from a
// vocab GGUF (--vocab), whose token count then must equal the preset's: any other size is refused. Only when asked
// (--pad-vocab, SynthOptions::pad_vocab) does a preset with padded embeddings, like Qwen2.5-7B's 152064 rows,
// accept a smaller vocabulary and pad it with "[PADn]" tokens as llama.cpp's converter does.
//   SPM (tinyllama, mistral): <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then synthetic pieces
//     (each the concatenation of two earlier pieces, scores decreasing), single characters last.
//   BPE (qwen2, llama 3): the 256 byte-level symbols in GPT-2 order, then one token per merge (each merge joins
//     two earlier tokens, so merges and tokens are consistent), then the model's special tokens at their real ids.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"

namespace lokal {

enum class SynthVocab { SPM, BPE_Qwen2, BPE_Llama3 };

struct SynthPreset {
  std::string name;          // "tinyllama-1.1b"
  std::string model;         // the model it mirrors: "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
  std::string arch;          // GGUF general.architecture: "llama" or "qwen2"
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t n_ff = 0;
  int64_t n_vocab = 0;       // rows of token_embd
  int64_t n_ctx = 0;         // context_length (max_position_embeddings)
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied = false;         // no output.weight: the output reuses token_embd
  bool qkv_bias = false;     // attn_q/k/v biases (qwen2)
  SynthVocab vocab = SynthVocab::SPM;
  int64_t n_vocab_text = 0;  // generated BPE vocabs: tokens before the special tokens (0: n_vocab - specials)
  bool vocab_pad = false;    // with --pad-vocab, --vocab may have fewer tokens than n_vocab (padded with [PADn])
  // Llama 3 rope scaling (rope_freqs.weight); factor 0 = none.
  float rope_scale_factor = 0, rope_low_freq = 0, rope_high_freq = 0;
  int64_t rope_orig_ctx = 0;

  int64_t head_dim() const { return n_embd / n_head; }
};

// The built-in presets (see the table in synth.cpp).
const std::vector<SynthPreset>& synth_presets();
// nullptr if unknown (case-insensitive).
const SynthPreset* find_synth_preset(std::string_view name);
// "tinyllama-1.1b, qwen2.5-0.5b, ..."
std::string synth_preset_list();

struct SynthTensorPlan {
  std::string name;
  std::vector<int64_t> ne;   // ne[0] = row length
  DType type = DType::F32;
  enum class Init { Normal, Norm, RopeFreqs } init = Init::Normal;
  uint64_t bytes = 0;
};

struct SynthPlan {
  SynthPreset preset;        // after --layers
  std::string type_name;     // "Q4_K_M"
  int file_type = 0;         // general.file_type (llama_ftype)
  std::vector<SynthTensorPlan> tensors;  // in file order
  uint64_t bytes = 0;        // tensor data
  uint64_t n_params = 0;     // elements of all tensors
  std::map<DType, int> count;            // tensors per type
};

struct SynthOptions {
  SynthPreset preset;        // usually *find_synth_preset(name); tests may pass their own shapes
  std::string type = "Q8_0"; // a lokal quantize file type name (F32, F16, BF16, Q8_0, Q4_0, ..., Q4_K_M, ...)
  bool pure = false;         // every matrix in the base type (no llama-quantize mix, output not bumped to Q6_K)
  std::string vocab_file;    // copy tokenizer.* from this GGUF instead of generating a vocabulary
  bool pad_vocab = false;    // --pad-vocab: a smaller vocab_file is padded with [PADn] (presets with vocab_pad only)
  uint64_t seed = 42;
  int64_t n_layer = 0;       // 0: the preset's
  bool rope_freqs = true;    // write rope_freqs.weight for presets with Llama 3 rope scaling
  int n_threads = 0;         // 0: all hardware threads
};

struct SynthProgress {
  uint64_t bytes_done = 0, bytes_total = 0;   // tensor data written so far / in all
  size_t tensor = 0, n_tensors = 0;           // index of the tensor being written
  const std::string* tensor_name = nullptr;
  double seconds = 0;
};

struct SynthResult {
  SynthPlan plan;
  uint64_t file_size = 0;
  int64_t n_vocab = 0;       // tokens in the written vocabulary
  double seconds = 0;
};

// The tensors, types and sizes `synth_model` would write. Throws lokal::Error for an unknown type name, a
// type that cannot hold the preset's rows, or bad options.
SynthPlan synth_plan(const SynthOptions& opt);

// Writes the file to `path` (atomically: a temporary file renamed into place when complete). `progress` is
// called after every chunk of rows (from the calling thread). Throws lokal::Error on any failure.
SynthResult synth_model(const SynthOptions& opt, const std::string& path,
                        const std::function<void(const SynthProgress&)>& progress = {});

// The Llama 3 rope frequency factors (head_dim / 2 values) for a preset with rope scaling.
std::vector<float> llama3_rope_factors(const SynthPreset& p);

}  // namespace lokal
