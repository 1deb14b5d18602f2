// tokenizer/wpm.cpp - WordPiece tokenization (tokenizer.ggml.model = "bert").
//
// llama.cpp's BERT vocabularies mark word-initial pieces with a U+2581 prefix (instead of marking
// continuations with "##"). Pre-processing: every character is replaced by the first code point of
// its canonical decomposition (which drops accents), whitespace separates words, NUL / U+FFFD /
// control characters are dropped, the rest is lowercased, and punctuation, ASCII symbols and CJK
// ideographs become one-character words. Each word, prefixed with U+2581, is then covered greedily
// by the longest matching tokens; a word that cannot be covered becomes the unknown token.
#include <algorithm>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab_data.h"

namespace lokal {

namespace {

bool is_cjk_ideograph(uint32_t cp) {
  // The ranges BERT's BasicTokenizer checks (with 0x2B920 where Hugging Face's code has it).
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words(1);
  for (uint32_t cp : unicode::decode_lenient(text)) {
    cp = unicode::nfd_first(cp);
    const uint8_t flags = unicode::char_flags(cp);
    if (flags & unicode::kWhitespace) {
      if (!words.back().empty()) words.emplace_back();
      continue;
    }
    if (cp == 0 || cp == unicode::kReplacementChar || (flags & unicode::kControl)) continue;
    std::string ch;
    unicode::append_utf8(ch, unicode::to_lower(cp));
    if ((flags & unicode::kPunctuation) || (cp < 0x7F && (flags & unicode::kSymbol)) || is_cjk_ideograph(cp)) {
      if (!words.back().empty()) words.emplace_back();
      words.back() = std::move(ch);
      words.emplace_back();
    } else {
      words.back() += ch;
    }
  }
  if (words.back().empty()) words.pop_back();
  return words;
}

}  // namespace

void tokenize_wpm(const VocabData& v, std::string_view text, std::vector<int32_t>& out) {
  for (const std::string& w : split_words(text)) {
    const std::string word = "\xE2\x96\x81" + w;
    const std::string_view sv(word);
    const size_t start = out.size();
    for (size_t i = 0; i < sv.size();) {
      // Longest token starting at byte i.
      size_t j = std::min(sv.size(), i + v.max_token_len);
      int32_t id = -1;
      for (; j > i; --j) {
        id = v.find(sv.substr(i, j - i));
        if (id >= 0) break;
      }
      if (id < 0) {
        out.resize(start);
        break;
      }
      out.push_back(id);
      i = j;
    }
    if (out.size() == start) {
      v.warn_unknown(w);
      if (v.unk >= 0) out.push_back(v.unk);
    }
  }
}

}  // namespace lokal
