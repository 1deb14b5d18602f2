// tokenizer/pretokenizer.h - regex pre-tokenization for byte-level BPE vocabularies (internal).
//
// A BPE vocabulary names its pre-tokenizer in `tokenizer.ggml.pre`. Each name stands for a list of
// regular expressions (those of llama.cpp c392e50), applied in sequence: the first splits the text
// into pieces (every match is a piece, and so is every stretch of text between matches), the next
// splits each of those pieces further, and so on. The words that come out are then BPE-merged one
// by one. The expressions run on PCRE2 in UTF + UCP mode, with `\s` meaning exactly llama.cpp's
// whitespace (the Unicode White_Space property).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lokal {

// What a `tokenizer.ggml.pre` name selects.
struct BpePreConfig {
  std::vector<std::string> regexes;  // applied in this order
  bool ignore_merges = false;        // a word that is itself a token is taken whole (Llama 3)
  bool add_bos = false;              // default of add_bos when the file does not say
};

// The configuration for a pre-tokenizer name, or nullopt if lokal does not support it.
// An empty name means "default" (as in llama.cpp, which warns about it).
std::optional<BpePreConfig> bpe_pre_config(std::string_view pre_name);

class RegexSplitter {
 public:
  // Compiles the expressions; throws lokal::Error if one does not compile.
  explicit RegexSplitter(const std::vector<std::string>& regexes);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Splits text given as code points; returns the length (in code points) of each word, in order.
  // The lengths add up to cps.size(). Thread-safe.
  std::vector<size_t> split(const std::vector<uint32_t>& cps) const;

 private:
  struct Compiled;
  std::vector<std::unique_ptr<Compiled>> regexes_;
};

}  // namespace lokal
