// tokenizer/pretokenizer.cpp - llama.cpp's BPE pre-tokenizer regex sets, run on PCRE2.
#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <initializer_list>
#include <memory>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace lokal {

namespace {

// The expressions, as llama.cpp c392e50 writes them (llama-vocab.cpp, llm_tokenizer_bpe). Where
// llama.cpp's expression holds non-ASCII characters they are written here as \x{...} escapes.

// GPT-2's expression; also the core of several others.
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";

// Llama 3: tokenizer.json's (?i:'s|'t|...) spelled out case by case.
constexpr const char* kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Qwen2: as Llama 3, but digits one at a time.
constexpr const char* kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// CJK ideographs and Hangul, as DeepSeek's tokenizers group them.
constexpr const char* kDeepseekCjk = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

// DeepSeek LLM: an optional space and a run of cased letters.
constexpr const char* kDeepseekLlmLetters =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293})"
    R"(\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A})"
    R"(\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556})"
    R"(\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF})"
    R"(\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D})"
    R"(\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D})"
    R"(\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3})"
    R"(\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107})"
    R"(\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D})"
    R"(\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184})"
    R"(\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D})"
    R"(\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF})"
    R"(\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F})"
    R"(\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2})"
    R"(\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";

// DeepSeek LLM: an optional space and a run of ASCII / full-width punctuation.
constexpr const char* kDeepseekLlmPunct =
    R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)";

BpePreConfig make(std::initializer_list<const char*> regexes) {
  BpePreConfig c;
  for (const char* r : regexes) c.regexes.emplace_back(r);
  return c;
}

bool is_one_of(std::string_view name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// llama.cpp's \s is the Unicode White_Space property. PCRE2's \s differs in both directions (it
// lacks U+0085 and has U+180E), so \s and \S are rewritten to spell the property out. (split()
// turns non-ASCII whitespace into U+000B anyway; the non-ASCII part matters for U+180E only.)
constexpr const char* kWhiteSpace = R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

std::string spell_out_whitespace(const std::string& re) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      const char n = re[++i];
      if (n == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      } else if (n == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpace) + "]";
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (c == '[' && !in_class) in_class = true;
    else if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

std::optional<BpePreConfig> bpe_pre_config(std::string_view name) {
  if (name.empty() || name == "default") {
    return make({R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"});
  }
  if (is_one_of(name, {"llama3", "llama-v3", "llama-bpe", "falcon3"})) {
    BpePreConfig c = make({kLlama3});
    c.ignore_merges = true;
    c.add_bos = true;
    return c;
  }
  if (is_one_of(name, {"dbrx", "smaug-bpe"})) return make({kLlama3});
  if (is_one_of(name, {"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"})) return make({kQwen2});
  if (name == "deepseek-llm") {
    return make({R"([\r\n])", kDeepseekLlmLetters, kDeepseekLlmPunct, R"(\s+$)", kDeepseekCjk, R"(\p{N}+)"});
  }
  if (name == "deepseek-coder") {
    return make({R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kDeepseekCjk, R"(\p{N})"});
  }
  if (name == "falcon") return make({R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"});
  if (is_one_of(name, {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"})) {
    return make({R"(\p{N})", kGpt2});
  }
  if (is_one_of(name, {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es",
                       "jina-v2-de", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais"})) {
    return make({kGpt2});
  }
  return std::nullopt;
}

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

RegexSplitter::RegexSplitter(const std::vector<std::string>& regexes) {
  for (const std::string& re : regexes) {
    const std::string pattern = spell_out_whitespace(re);
    int err = 0;
    PCRE2_SIZE err_off = 0;
    auto c = std::make_unique<Compiled>();
    c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &err_off, nullptr);
    if (!c->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      throw Error("pre-tokenizer regex does not compile at offset " + std::to_string(err_off) + ": " +
                  reinterpret_cast<const char*>(msg) + " (" + pattern + ")");
    }
    pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is the fallback
    regexes_.push_back(std::move(c));
  }
}

RegexSplitter::~RegexSplitter() = default;

std::vector<size_t> RegexSplitter::split(const std::vector<uint32_t>& cps) const {
  // The text the expressions see. As in llama.cpp, whitespace beyond ASCII is replaced by U+000B
  // (so it is \s but never matches a literal character of an expression: DeepSeek's ranges hold
  // U+2029 and U+3000, which therefore never match). PCRE2 needs well-formed UTF-8: surrogates,
  // which the lenient decoder lets through, become private-use characters (both are "other").
  std::string subject;
  subject.reserve(cps.size() * 2);
  std::vector<size_t> offset(cps.size() + 1);  // byte offset of each code point in `subject`
  for (size_t i = 0; i < cps.size(); ++i) {
    offset[i] = subject.size();
    uint32_t cp = cps[i];
    if (cp >= 0x80 && (unicode::char_flags(cp) & unicode::kWhitespace)) cp = 0x0B;
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xE000;
    unicode::append_utf8(subject, cp);
  }
  offset[cps.size()] = subject.size();
  auto cp_index = [&](size_t byte) {
    return static_cast<size_t>(std::lower_bound(offset.begin(), offset.end(), byte) - offset.begin());
  };

  std::vector<size_t> pieces;  // lengths
  if (!cps.empty()) pieces.push_back(cps.size());
  for (const auto& re : regexes_) {
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(re->code, nullptr), &pcre2_match_data_free);
    if (!md) throw Error("out of memory in the pre-tokenizer");
    std::vector<size_t> next;
    next.reserve(pieces.size() * 2);
    size_t begin = 0;  // first code point of the current piece
    for (size_t len : pieces) {
      const size_t end = begin + len;
      const auto* base = reinterpret_cast<PCRE2_SPTR>(subject.data() + offset[begin]);
      const size_t n_bytes = offset[end] - offset[begin];
      size_t done = begin;  // code points of the piece already emitted
      size_t pos = 0;       // search start, in bytes from `base`
      while (pos < n_bytes) {
        // PCRE2_NOTEMPTY: none of the expressions can match the empty string anyway.
        const uint32_t opts = PCRE2_NOTEMPTY | PCRE2_NO_UTF_CHECK;
        int rc = pcre2_match(re->code, base, n_bytes, pos, opts, md.get(), nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking state on the heap
          rc = pcre2_match(re->code, base, n_bytes, pos, opts | PCRE2_NO_JIT, md.get(), nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          PCRE2_UCHAR msg[256];
          pcre2_get_error_message(rc, msg, sizeof(msg));
          throw Error(std::string("pre-tokenizer regex match failed: ") + reinterpret_cast<const char*>(msg));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        const size_t m_begin = cp_index(offset[begin] + ov[0]);
        const size_t m_end = cp_index(offset[begin] + ov[1]);
        if (m_begin > done) next.push_back(m_begin - done);
        next.push_back(m_end - m_begin);
        done = m_end;
        pos = ov[1];
      }
      if (end > done) next.push_back(end - done);
      begin = end;
    }
    pieces = std::move(next);
  }
  return pieces;
}

}  // namespace lokal
