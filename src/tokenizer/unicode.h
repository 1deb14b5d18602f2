// tokenizer/unicode.h - the UTF-8 and Unicode helpers the tokenizers need (internal header).
//
// * UTF-8 decoding that mirrors llama.cpp's tolerant decoder (so tokenization of invalid input
//   matches it byte for byte), and strict validation for the streaming decoder.
// * The GPT-2 byte-level mapping (every byte <-> one printable code point).
// * Character properties for WordPiece pre-processing, from the generated unicode_tables.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lokal::unicode {

constexpr uint32_t kReplacementChar = 0xFFFD;

// Length of a UTF-8 sequence judged by its first byte only (0xxx:1, 110x:2, 1110:3, 1111:4;
// a stray continuation byte counts as 1). Used where llama.cpp splits text without validating.
size_t utf8_len_from_lead(uint8_t lead);

// Decode leniently, as llama.cpp does: a lead byte followed by enough continuation bytes (10xxxxxx)
// yields its code point (overlong forms and surrogates included, values up to 0x1FFFFF); anything
// else yields U+FFFD and consumes one byte.
std::vector<uint32_t> decode_lenient(std::string_view s);

// Append the UTF-8 form of `cp` (surrogates are encoded like any other value, as llama.cpp does);
// values above 0x10FFFF are written as U+FFFD.
void append_utf8(std::string& out, uint32_t cp);

// Length of the well-formed UTF-8 sequence at the start of `s` (1-4), 0 if the bytes there are
// ill-formed, or -1 if they are a valid but incomplete prefix that runs into the end of `s`.
// On 0, `*bad_len` is the length of the maximal ill-formed subpart (what one U+FFFD replaces, as in
// Python's and ICU's "replace" decoding).
int utf8_sequence_length(std::string_view s, size_t* bad_len);

// GPT-2 byte-level BPE: the code point that stands for byte `b` in token texts, and back
// (-1 if `cp` stands for no byte).
uint32_t byte_to_bpe_cp(uint8_t b);
int bpe_cp_to_byte(uint32_t cp);

// Character classes (bit flags) for WordPiece pre-processing.
enum CharFlags : uint8_t {
  kWhitespace = 1,   // the White_Space property
  kControl = 2,      // general category Cc, Cf, Co or Cs
  kPunctuation = 4,  // general category P*
  kSymbol = 8,       // general category S*
};
uint8_t char_flags(uint32_t cp);
uint32_t to_lower(uint32_t cp);   // simple (one code point) lowercase mapping
uint32_t nfd_first(uint32_t cp);  // first code point of the canonical decomposition

namespace tables {
struct FlagRange { uint32_t first; uint8_t flags; };                    // until the next entry
struct LowerRange { uint32_t first, last; int32_t delta; uint32_t stride; };
struct NfdRange { uint32_t first, last, base; };
extern const FlagRange kFlagRanges[];
extern const size_t kFlagRanges_size;
extern const LowerRange kLowerRanges[];
extern const size_t kLowerRanges_size;
extern const NfdRange kNfdRanges[];
extern const size_t kNfdRanges_size;
}  // namespace tables

}  // namespace lokal::unicode
