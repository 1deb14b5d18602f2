// tokenizer/vocab_data.h - the loaded vocabulary and the three tokenization algorithms (internal).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/symbol_table.h"
#include "tokenizer/vocab.h"

namespace lokal {

// Token attributes (llama.cpp's llama_token_attr bits), derived from tokenizer.ggml.token_type.
enum TokenAttr : uint16_t {
  kAttrUnknown = 1 << 0,
  kAttrUnused = 1 << 1,
  kAttrNormal = 1 << 2,
  kAttrControl = 1 << 3,
  kAttrUserDefined = 1 << 4,
  kAttrByte = 1 << 5,
  kAttrLstrip = 1 << 7,  // when cut out of text, whitespace before the token is dropped
  kAttrRstrip = 1 << 8,  // ... whitespace after it is dropped
};

struct VocabData {
  std::string file;  // for messages
  VocabType type = VocabType::SPM;
  std::string model_name, pre_name;

  // Token texts by id; lookup by text finds, for duplicated texts, the last id (as llama.cpp).
  SymbolTable symbols;
  std::vector<float> scores;   // per token
  std::vector<uint16_t> attrs;  // per token, TokenAttr bits
  size_t max_token_len = 0;  // bytes

  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, sep = -1, pad = -1, mask = -1;
  int32_t fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
  std::vector<int32_t> eog;             // sorted
  std::vector<int32_t> special_tokens;  // CONTROL / USER_DEFINED / UNKNOWN ids, longest text first

  // SPM: token for each byte of byte fallback (<0xNN>, else the one-byte text), -1 if none.
  std::array<int32_t, 256> byte_token{};

  // BPE.
  std::unique_ptr<RegexSplitter> splitter;
  bool ignore_merges = false;
  MergeRanks merges;

  mutable std::atomic<bool> warned_unknown{false};

  int32_t n_tokens() const { return static_cast<int32_t>(symbols.size()); }
  const std::string& text(int32_t id) const { return symbols.text(id); }
  int32_t find(std::string_view s) const { return symbols.find(s); }  // token with text `s`, or -1
  // Logs the "unknown character" warning the first time it is needed.
  void warn_unknown(std::string_view what) const;
};

// The algorithms, each appending the ids for one run of plain text (special tokens already cut
// out) to `out`.
// SPM: `text` already has its spaces escaped as U+2581 and the dummy prefix added.
void tokenize_spm(const VocabData& v, std::string_view text, std::vector<int32_t>& out);
void tokenize_bpe(const VocabData& v, std::string_view text, std::vector<int32_t>& out);
void tokenize_wpm(const VocabData& v, std::string_view text, std::vector<int32_t>& out);

}  // namespace lokal
