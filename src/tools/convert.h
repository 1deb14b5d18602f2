// tools/convert.h - model conversion: Hugging Face folders and llama2.c checkpoints -> GGUF, GGUF -> Hugging Face.
//
// convert_model(input, out):
//   * a folder: a Hugging Face model (config.json; model.safetensors, or shards listed by
//     model.safetensors.index.json; tokenizer.model and/or tokenizer.json; tokenizer_config.json with
//     chat_template; generation_config.json). Architectures: LlamaForCausalLM and MistralForCausalLM (GGUF "llama";
//     the q_proj/k_proj rows are permuted from Hugging Face's rotate-half order into GGUF's interleaved RoPE order,
//     per head: GGUF row 2j+s = HF row s*head_dim/2+j) and Qwen2ForCausalLM (GGUF "qwen2", NEOX RoPE: no permutation,
//     q/k/v biases). Every tensor is checked against config.json's shapes.
//   * a file: a llama2.c checkpoint (legacy version 0: 7 int32 header, float32 weights; or version 1: "ak42" magic,
//     256-byte header), with its tokenizer .bin (--tokenizer) or another GGUF's vocabulary (--vocab-from). Written
//     like llama.cpp's convert-llama2c-to-ggml (tensor order, metadata keys, output.weight a copy of the embedding
//     when the classifier is shared), so stories260K converts to stories260K.gguf's tensors byte for byte.
// Tensor types: by default 2-D tensors keep their stored type (F32/F16/BF16; F64 becomes F32), --outtype
// f32/f16/bf16 converts them (round to nearest even, core/fp16); 1-D tensors (norms, biases) are always F32.
//
// Tokenizers (HF <-> GGUF):
//   * SentencePiece ("llama" GGUF vocab): tokenizer.model (the SentencePiece protobuf: piece, score, type per token)
//     carries tokens, scores and types exactly; tokenizer.json is written beside it as a BPE model with
//     byte_fallback and merges derived from the scores. Without tokenizer.model, a tokenizer.json BPE model with
//     byte_fallback gives the tokens; scores are then -id (a warning says so), types from <0xXX> (BYTE), the unk
//     token (UNKNOWN) and added tokens (special: CONTROL, else USER_DEFINED).
//   * byte-level BPE ("gpt2" GGUF vocab: Llama 3, Qwen2): tokenizer.json's vocab, merges and added_tokens (special:
//     CONTROL, else USER_DEFINED); ids up to vocab_size that no token has become "[PAD<id>]" (UNUSED).
//     tokenizer.ggml.pre comes from the pre_tokenizer's Split regex: the Llama 3 expression (\p{N}{1,3}) gives
//     "llama-bpe", the Qwen2 one (single \p{N}) "qwen2", a plain ByteLevel "gpt-2"; anything else "default" with
//     a warning.
//   * special tokens: tokenizer_config.json's bos/eos/unk/pad/sep_token texts, else config.json's *_token_id;
//     add_bos_token/add_eos_token and chat_template from tokenizer_config.json; an eos_token_id list in
//     generation_config.json names the end-of-turn token (its first id that is not eos).
//   * export_hf also stores, in tokenizer_config.json's "gguf_tokenizer" object, every scalar tokenizer.ggml.*
//     key of the GGUF (ids, flags, pre); convert applies it last, so GGUF -> HF -> GGUF reproduces the tokenizer
//     metadata exactly. A foreign folder has no such object and goes through the rules above.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/types.h"

namespace lokal {

struct ConvertTensorProgress {
  size_t index = 0, count = 0;
  std::string name;
  std::string from;              // source type ("F32", "BF16", ...)
  DType to = DType::F32;
  std::vector<int64_t> ne;       // GGUF order
  size_t bytes = 0;              // written
};

struct ConvertOptions {
  std::optional<DType> outtype;  // F32/F16/BF16 for 2-D tensors; nullopt: as stored
  std::string tokenizer;         // llama2.c tokenizer .bin
  std::string vocab_from;        // GGUF whose tokenizer.* keys are used instead
  std::string name;              // general.name (default: from the input)
  std::function<void(const std::string&)> on_note;                // warnings and information
  std::function<void(const ConvertTensorProgress&)> on_tensor;    // after each tensor is written
};

struct ConvertResult {
  std::string source_kind;       // "hf" or "llama2c"
  std::string arch;
  size_t n_tensors = 0;
  uint64_t file_size = 0;
  std::vector<std::string> notes;
};

// Dispatches on the input: a folder is a Hugging Face model, a file a llama2.c checkpoint.
ConvertResult convert_model(const std::string& input, const std::string& out_gguf, const ConvertOptions& opt);
ConvertResult convert_hf(const std::string& dir, const std::string& out_gguf, const ConvertOptions& opt);
ConvertResult convert_llama2c(const std::string& checkpoint, const std::string& out_gguf, const ConvertOptions& opt);

struct ExportOptions {
  uint64_t shard_size = 0;       // bytes per safetensors shard; 0: one model.safetensors
  std::function<void(const std::string&)> on_note;
  std::function<void(const ConvertTensorProgress&)> on_tensor;
};

struct ExportResult {
  std::string arch;
  size_t n_tensors = 0;
  size_t n_shards = 0;
  uint64_t data_bytes = 0;
  std::vector<std::string> files;  // written, relative to the folder
};

// GGUF (llama or qwen2; F32/F16/BF16 tensors, quantized ones are dequantized to F32) -> Hugging Face folder:
// config.json, generation_config.json, model.safetensors (or shards + model.safetensors.index.json),
// tokenizer.json, tokenizer_config.json, and tokenizer.model for SentencePiece vocabularies.
ExportResult export_hf(const std::string& gguf, const std::string& dir, const ExportOptions& opt);

// "2GB", "500M", "1.5 GiB", "4096" -> bytes (GB = 1e9, GiB = 2^30); throws lokal::Error if malformed.
uint64_t parse_size(const std::string& s);

}  // namespace lokal
