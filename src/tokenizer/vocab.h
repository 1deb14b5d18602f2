// tokenizer/vocab.h - the tokenizer: a vocabulary read from GGUF metadata, text <-> token ids.
//
// Three algorithms, chosen by `tokenizer.ggml.model`, each reproducing llama.cpp (c392e50):
//   "llama"  SentencePiece-style BPE: spaces become U+2581, a space is prefixed to the text,
//            adjacent pieces merge by highest token score, unknown bytes fall back to <0xNN> tokens.
//   "gpt2"   byte-level BPE: regex pre-tokenization (by `tokenizer.ggml.pre`), bytes mapped to
//            printable code points, merges applied by rank (`tokenizer.ggml.merges` order).
//   "bert"   WordPiece: lowercasing, accent stripping, punctuation splitting, greedy longest match.
// Text of special tokens (CONTROL, and USER_DEFINED which is always matched) is cut out of the
// input first, longest token first, as llama.cpp does.
//
// A Vocab is immutable after loading and safe to use from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lokal {

class GGUFFile;
struct VocabData;

enum class VocabType { SPM, BPE, WPM };

class Vocab {
 public:
  // Reads the tokenizer.ggml.* metadata; throws lokal::Error naming the file if it is missing,
  // malformed or of an unsupported kind. The Vocab copies what it needs: `f` may be closed after.
  static std::unique_ptr<Vocab> from_gguf(const GGUFFile& f);
  ~Vocab();
  Vocab(const Vocab&) = delete;
  Vocab& operator=(const Vocab&) = delete;

  VocabType type() const;
  std::string model_name() const;  // "llama", "gpt2" or "bert"
  std::string pre_name() const;    // tokenizer.ggml.pre as found in the file ("" if absent)
  int32_t n_tokens() const;
  size_t n_merges() const;         // BPE merges loaded (0 for other vocabularies)

  // Text -> ids. add_special: add BOS/EOS as the vocabulary asks (BERT: [CLS] ... [SEP]).
  // parse_special: text of CONTROL tokens in `text` becomes those tokens (USER_DEFINED tokens are
  // matched either way). Never throws for any input bytes; characters the vocabulary cannot
  // represent become the unknown token (with one warning per Vocab).
  std::vector<int32_t> tokenize(std::string_view text, bool add_special, bool parse_special) const;
  // Text that continues a sequence (the middle of a document): no BOS/EOS, no SentencePiece dummy space, special
  // token text stays text (USER_DEFINED tokens are matched as always). Speculative decoding translates text between
  // vocabularies with it: the pieces of `tokenize(t)` concatenated, tokenized again this way, give the same ids
  // wherever the tokenizer's choices do not depend on what came before.
  std::vector<int32_t> tokenize_fragment(std::string_view text) const;

  // The raw bytes a token stands for (may be part of a UTF-8 character). CONTROL and UNKNOWN
  // tokens give "" unless render_special. An id out of range gives "".
  std::string token_to_piece(int32_t id, bool render_special = false) const;
  // The concatenated pieces (no other clean-up), raw bytes.
  std::string detokenize(const std::vector<int32_t>& ids, bool render_special = false) const;

  const std::string& token_text(int32_t id) const;  // as stored in the file; throws Error if out of range
  float token_score(int32_t id) const;               // throws Error if out of range
  int32_t find_token(std::string_view text) const;   // id whose text is exactly `text`, or -1

  // Special tokens; -1 if none.
  int32_t bos() const;
  int32_t eos() const;
  int32_t eot() const;
  int32_t unk() const;
  int32_t pad() const;
  int32_t sep() const;
  bool add_bos() const;
  bool add_eos() const;

  bool is_eog(int32_t id) const;      // ends generation: EOS, EOT, EOM and tokens such as <|im_end|>
  bool is_control(int32_t id) const;
  bool is_user_defined(int32_t id) const;

 private:
  explicit Vocab(std::unique_ptr<VocabData> d);
  std::vector<int32_t> tokenize_impl(std::string_view text, bool add_special, bool parse_special,
                                     bool dummy_space) const;
  std::unique_ptr<VocabData> d_;
};

// Turns a stream of token ids into text, holding back the bytes of a UTF-8 character that is
// split across tokens until it is complete. Ill-formed bytes become U+FFFD (one per maximal
// ill-formed subpart, as Python's and ICU's "replace" decoders do); nothing is dropped.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Vocab& v, bool render_special = false);
  std::string push(int32_t id);  // the complete UTF-8 text now available
  std::string flush();           // the rest; an incomplete character at the end becomes U+FFFD

 private:
  std::string drain(bool final);
  const Vocab& vocab_;
  bool render_special_;
  std::string pending_;
};

}  // namespace lokal
