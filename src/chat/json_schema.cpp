// chat/json_schema.cpp - JSON Schema -> GBNF (see json_schema.h for what is supported).
#include "chat/json_schema.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <cstdint>
#include <optional>

#include "chat/grammar.h"
#include "core/error.h"

namespace lokal {

namespace {

using json = nlohmann::ordered_json;
using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

constexpr int kMaxDepth = 64;
constexpr uint64_t kMaxCount = 100000;           // larger minLength/maxItems/... count as unbounded
constexpr int64_t kIntCap = 9999999999999999LL;  // 16 digits

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw Error("JSON schema: " + msg + " at " + (path.empty() ? std::string("/") : path));
}

std::string ptr_escape(const std::string& key) {
  std::string out;
  for (const char c : key) {
    if (c == '~') out += "~0";
    else if (c == '/') out += "~1";
    else out += c;
  }
  return out;
}

std::string dump(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* kHex = "0123456789ABCDEF";

std::string hex_escape(uint32_t cp) {
  std::string out;
  if (cp < 0x100) {
    out = "\\x";
    out += kHex[cp >> 4];
    out += kHex[cp & 15];
  } else if (cp < 0x10000) {
    out = "\\u";
    for (int s = 12; s >= 0; s -= 4) out += kHex[(cp >> s) & 15];
  } else {
    out = "\\U";
    for (int s = 28; s >= 0; s -= 4) out += kHex[(cp >> s) & 15];
  }
  return out;
}

// A code point inside a GBNF [...] class.
std::string class_char(uint32_t cp) {
  if (cp >= 0x20 && cp < 0x7F && cp != '\\' && cp != ']' && cp != '[' && cp != '^' && cp != '-' && cp != '"')
    return std::string(1, static_cast<char>(cp));
  return hex_escape(cp);
}

std::string class_of(const Ranges& r) {
  std::string out = "[";
  for (const auto& [lo, hi] : r) {
    out += class_char(lo);
    if (hi > lo) {
      out += '-';
      out += class_char(hi);
    }
  }
  return out + "]";
}

Ranges normalize(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (const auto& [lo, hi] : r) {
    if (!out.empty() && lo <= out.back().second + 1) out.back().second = std::max(out.back().second, hi);
    else out.push_back({lo, hi});
  }
  return out;
}

Ranges complement(const Ranges& r) {
  Ranges out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : normalize(r)) {
    if (lo > next) out.push_back({next, lo - 1});
    next = hi + 1;
  }
  if (next <= 0x10FFFF) out.push_back({next, 0x10FFFF});
  return out;
}

Ranges subtract(const Ranges& a, const Ranges& b) {
  Ranges inv = complement(b), out;
  for (const auto& [lo, hi] : normalize(a))
    for (const auto& [l2, h2] : inv) {
      const uint32_t l = std::max(lo, l2), h = std::min(hi, h2);
      if (l <= h) out.push_back({l, h});
    }
  return normalize(out);
}

bool in_ranges(const Ranges& r, uint32_t cp) {
  for (const auto& [lo, hi] : r)
    if (cp >= lo && cp <= hi) return true;
  return false;
}

// The JSON text of one character whose decoded value is in `r`: plain characters as a class, '"', '\' and
// control characters as their escapes.
std::string json_char_of(const Ranges& r) {
  static const Ranges kSpecial = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
  std::vector<std::string> alts;
  const Ranges plain = subtract(r, kSpecial);
  if (!plain.empty()) alts.push_back(class_of(plain));
  if (in_ranges(r, '"')) alts.push_back("\"\\\\\\\"\"");   // \"
  if (in_ranges(r, '\\')) alts.push_back("\"\\\\\\\\\"");  // \\ (JSON)
  int n_ctl = 0;
  for (uint32_t c = 0; c < 0x20; ++c) n_ctl += in_ranges(r, c);
  if (n_ctl == 32) {
    alts.push_back("\"\\\\\" ([bfnrt] | \"u00\" [01] [0-9a-fA-F])");
  } else {
    for (uint32_t c = 0; c < 0x20; ++c) {
      if (!in_ranges(r, c)) continue;
      const char* shortc = c == '\n'   ? "n"
                           : c == '\t' ? "t"
                           : c == '\r' ? "r"
                           : c == '\b' ? "b"
                           : c == '\f' ? "f"
                                       : nullptr;
      std::string esc = shortc ? std::string(shortc) : std::string("u00") + kHex[c >> 4] + kHex[c & 15];
      alts.push_back("\"\\\\" + esc + "\"");
    }
  }
  if (alts.empty()) return "[]";
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

std::string repeat_expr(const std::string& atom, uint64_t lo, std::optional<uint64_t> hi) {
  if (hi && *hi == 0) return "";
  if (lo == 0 && !hi) return atom + "*";
  if (lo == 1 && !hi) return atom + "+";
  if (lo == 0 && hi && *hi == 1) return atom + "?";
  if (hi && lo == *hi) return lo == 1 ? atom : atom + "{" + std::to_string(lo) + "}";
  if (!hi) return atom + "{" + std::to_string(lo) + ",}";
  return atom + "{" + std::to_string(lo) + "," + std::to_string(*hi) + "}";
}

std::optional<uint64_t> get_count(const json& s, const char* key, const std::string& path) {
  auto it = s.find(key);
  if (it == s.end()) return std::nullopt;
  const json& v = *it;
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= 0 && d == std::floor(d)) return d > 1e18 ? uint64_t{1} << 62 : static_cast<uint64_t>(d);
  }
  fail(path + "/" + key, std::string("'") + key + "' must be a non-negative integer");
}

// ---- integer ranges ----
std::string digits_class(char lo, char hi) {
  if (lo == hi) return std::string("\"") + lo + "\"";
  if (lo == '0' && hi == '9') return "[0-9]";
  return std::string("[") + lo + "-" + hi + "]";
}

// All strings of a.size() digits between a and b (same length, a <= b).
std::string range_same_len(const std::string& a, const std::string& b) {
  if (a.empty()) return "";
  size_t p = 0;
  while (p < a.size() && a[p] == b[p]) ++p;
  std::string prefix = p ? "\"" + a.substr(0, p) + "\"" : "";
  if (p == a.size()) return prefix;
  const std::string ra = a.substr(p), rb = b.substr(p);
  const size_t n = ra.size() - 1;
  const bool a_min = std::all_of(ra.begin() + 1, ra.end(), [](char c) { return c == '0'; });
  const bool b_max = std::all_of(rb.begin() + 1, rb.end(), [](char c) { return c == '9'; });
  const char lo_d = a_min ? ra[0] : static_cast<char>(ra[0] + 1);
  const char hi_d = b_max ? rb[0] : static_cast<char>(rb[0] - 1);
  const std::string any = n == 0 ? "" : n == 1 ? " [0-9]" : " [0-9]{" + std::to_string(n) + "}";
  std::vector<std::string> alts;
  if (!a_min) alts.push_back(std::string("\"") + ra[0] + "\" " + range_same_len(ra.substr(1), std::string(n, '9')));
  if (lo_d <= hi_d) alts.push_back(digits_class(lo_d, hi_d) + any);
  if (!b_max) alts.push_back(std::string("\"") + rb[0] + "\" " + range_same_len(std::string(n, '0'), rb.substr(1)));
  std::string body;
  if (alts.size() == 1) {
    body = alts[0];
  } else {
    body = "(";
    for (size_t i = 0; i < alts.size(); ++i) body += (i ? " | " : "") + alts[i];
    body += ")";
  }
  return prefix.empty() ? body : prefix + " " + body;
}

uint64_t pow10(size_t n) {
  uint64_t v = 1;
  while (n--) v *= 10;
  return v;
}

// Decimal numbers lo..hi (0 <= lo <= hi <= kIntCap), no leading zeros.
std::string range_nonneg(uint64_t lo, uint64_t hi) {
  std::vector<std::string> alts;
  const size_t l0 = std::to_string(lo).size(), l1 = std::to_string(hi).size();
  size_t full_from = 0, full_to = 0;  // a run of lengths whose every number is in range
  auto flush_full = [&]() {
    if (!full_from) return;
    const std::string tail = full_from == full_to
                                 ? (full_from == 2 ? " [0-9]" : " [0-9]{" + std::to_string(full_from - 1) + "}")
                                 : " [0-9]{" + std::to_string(full_from - 1) + "," + std::to_string(full_to - 1) + "}";
    alts.push_back("[1-9]" + tail);
    full_from = full_to = 0;
  };
  for (size_t len = l0; len <= l1; ++len) {
    const uint64_t first = len == 1 ? 0 : pow10(len - 1), last = pow10(len) - 1;
    const uint64_t a = std::max(lo, first), b = std::min(hi, last);
    if (len > 1 && a == first && b == last) {
      if (!full_from) full_from = len;
      full_to = len;
      continue;
    }
    flush_full();
    alts.push_back(range_same_len(std::to_string(a), std::to_string(b)));
  }
  flush_full();
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

std::string join_alts(const std::vector<std::string>& alts) {
  std::string out;
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out;
}

// ---- keywords ----
const std::set<std::string> kUnsupported = {
    "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "dependencies", "patternProperties",
    "propertyNames", "contains", "minContains", "maxContains", "multipleOf", "minProperties", "maxProperties",
    "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef"};
// Keywords that constrain values (the rest are annotations, ignored).
const std::set<std::string> kValidation = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "additionalItems", "minItems",
    "maxItems", "minLength", "maxLength", "pattern", "format", "enum", "const", "anyOf", "oneOf", "allOf", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "nullable", "uniqueItems"};

bool has_validation(const json& s, const std::set<std::string>& except) {
  for (const auto& [k, v] : s.items())
    if (kValidation.count(k) && !except.count(k)) return true;
  return false;
}

std::string sanitize(const std::string& hint) {
  std::string out;
  for (const char c : hint) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (ok) out += c;
    else if (!out.empty() && out.back() != '-') out += '-';
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  if (out.size() > 48) out.resize(48);
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "x" : out;
}

// ---- regular expressions (pattern) -> GBNF for the JSON text of a string's content ----
class RegexConverter {
 public:
  RegexConverter(std::string re, std::string path, SchemaConverter& conv)
      : src_(std::move(re)), re_(src_), path_(std::move(path)), conv_(conv) {}

  std::string convert() {
    bool anchored_start = false, anchored_end = false;
    if (!re_.empty() && re_[0] == '^') {
      anchored_start = true;
      re_.remove_prefix(1);
    }
    if (!re_.empty() && re_.back() == '$' && (re_.size() < 2 || re_[re_.size() - 2] != '\\')) {
      anchored_end = true;
      re_.remove_suffix(1);
    }
    std::string body = alternation(0);
    if (pos_ != re_.size()) bad("unexpected ')'");
    const std::string any = conv_.builtin("char") + "*";
    return (anchored_start ? "" : any + " ") + "(" + body + ")" + (anchored_end ? "" : " " + any);
  }

 private:
  std::string src_;
  std::string_view re_;
  size_t pos_ = 0;
  std::string path_;
  SchemaConverter& conv_;

  [[noreturn]] void bad(const std::string& what) {
    fail(path_, "unsupported or invalid 'pattern' (" + what + " at offset " + std::to_string(pos_) + ")");
  }
  bool eof() const { return pos_ >= re_.size(); }

  uint32_t next_cp() {
    const unsigned char c = static_cast<unsigned char>(re_[pos_]);
    int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || pos_ + static_cast<size_t>(len) > re_.size()) bad("invalid UTF-8");
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1Fu : len == 3 ? c & 0x0Fu : c & 0x07u;
    for (int i = 1; i < len; ++i)
      cp = (cp << 6) | (static_cast<unsigned char>(re_[pos_ + static_cast<size_t>(i)]) & 0x3Fu);
    pos_ += static_cast<size_t>(len);
    return cp;
  }

  std::string alternation(int depth) {
    if (depth > 64) bad("groups nested too deeply");
    std::vector<std::string> alts{sequence(depth)};
    while (!eof() && re_[pos_] == '|') {
      ++pos_;
      alts.push_back(sequence(depth));
    }
    for (std::string& a : alts)
      if (a.empty()) a = "\"\"";
    return join_alts(alts);
  }

  std::string sequence(int depth) {
    std::string out;
    while (!eof() && re_[pos_] != '|' && re_[pos_] != ')') {
      std::string atom = this->atom(depth);
      atom = quantifiers(atom);
      if (!atom.empty()) out += (out.empty() ? "" : " ") + atom;
    }
    return out;
  }

  uint64_t number() {
    if (eof() || !(re_[pos_] >= '0' && re_[pos_] <= '9')) bad("expected a number in {}");
    uint64_t v = 0;
    while (!eof() && re_[pos_] >= '0' && re_[pos_] <= '9') {
      v = v * 10 + static_cast<uint64_t>(re_[pos_++] - '0');
      if (v > Grammar::kMaxRepetition) bad("repetition count too large");
    }
    return v;
  }

  std::string quantifiers(std::string atom) {
    while (!eof()) {
      const char c = re_[pos_];
      uint64_t lo = 0;
      std::optional<uint64_t> hi;
      if (c == '*') {
        ++pos_;
      } else if (c == '+') {
        lo = 1, ++pos_;
      } else if (c == '?') {
        hi = 1, ++pos_;
      } else if (c == '{') {
        ++pos_;
        lo = number();
        if (!eof() && re_[pos_] == ',') {
          ++pos_;
          if (!eof() && re_[pos_] != '}') hi = number();
        } else {
          hi = lo;
        }
        if (eof() || re_[pos_] != '}') bad("expected '}'");
        ++pos_;
        if (hi && *hi < lo) bad("{m,n} with n < m");
      } else {
        break;
      }
      if (!eof() && re_[pos_] == '?') ++pos_;  // lazy: the same set of whole matches
      else if (!eof() && re_[pos_] == '+') bad("possessive quantifier");
      atom = atom.empty() ? atom : repeat_expr("(" + atom + ")", lo, hi);
    }
    return atom;
  }

  Ranges escape_class(char e, bool* ok) {
    *ok = true;
    static const Ranges kDigit = {{'0', '9'}};
    static const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
    static const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}};
    switch (e) {
      case 'd': return kDigit;
      case 'D': return complement(kDigit);
      case 'w': return kWord;
      case 'W': return complement(kWord);
      case 's': return kSpace;
      case 'S': return complement(kSpace);
      default: *ok = false; return {};
    }
  }

  // After a backslash: one literal code point.
  uint32_t escape_char() {
    if (eof()) bad("trailing backslash");
    const char e = re_[pos_];
    switch (e) {
      case 'n': ++pos_; return '\n';
      case 't': ++pos_; return '\t';
      case 'r': ++pos_; return '\r';
      case 'f': ++pos_; return '\f';
      case 'v': ++pos_; return '\v';
      case '0': ++pos_; return 0;
      case 'x': case 'u': {
        ++pos_;
        const int n = e == 'x' ? 2 : 4;
        uint32_t v = 0;
        for (int i = 0; i < n; ++i) {
          if (eof() || !std::isxdigit(static_cast<unsigned char>(re_[pos_]))) bad("bad \\x or \\u escape");
          const char h = re_[pos_++];
          v = v * 16 + static_cast<uint32_t>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        return v;
      }
      default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '1' && e <= '9'))
          bad(std::string("escape \\") + e);
        return next_cp();
    }
  }

  std::string atom(int depth) {
    const char c = re_[pos_];
    if (c == '(') {
      ++pos_;
      if (!eof() && re_[pos_] == '?') {
        if (pos_ + 1 < re_.size() && re_[pos_ + 1] == ':') pos_ += 2;
        else bad("lookaround or named group");
      }
      std::string inner = alternation(depth + 1);
      if (eof() || re_[pos_] != ')') bad("missing ')'");
      ++pos_;
      return "(" + inner + ")";
    }
    if (c == '[') return json_char_of(char_class());
    if (c == '.') {
      ++pos_;
      return json_char_of(complement({{'\n', '\n'}, {'\r', '\r'}}));
    }
    if (c == '\\') {
      ++pos_;
      if (eof()) bad("trailing backslash");
      bool ok;
      Ranges r = escape_class(re_[pos_], &ok);
      if (ok) {
        ++pos_;
        return json_char_of(r);
      }
      const uint32_t cp = escape_char();
      return json_char_of({{cp, cp}});
    }
    if (c == '^' || c == '$') bad("anchor inside the pattern");
    if (c == '*' || c == '+' || c == '?' || c == '{') bad("quantifier without an item");
    const uint32_t cp = next_cp();
    return json_char_of({{cp, cp}});
  }

  Ranges char_class() {
    ++pos_;  // [
    bool negate = false;
    if (!eof() && re_[pos_] == '^') negate = true, ++pos_;
    Ranges r;
    bool first = true;
    for (;;) {
      if (eof()) bad("unterminated character class");
      if (re_[pos_] == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      uint32_t lo;
      if (re_[pos_] == '\\') {
        ++pos_;
        if (eof()) bad("trailing backslash");
        bool ok;
        Ranges cls = escape_class(re_[pos_], &ok);
        if (ok) {
          ++pos_;
          r.insert(r.end(), cls.begin(), cls.end());
          continue;
        }
        lo = escape_char();
      } else if (re_[pos_] == '[' && pos_ + 1 < re_.size() && re_[pos_ + 1] == ':') {
        bad("POSIX class");
      } else {
        lo = next_cp();
      }
      uint32_t hi = lo;
      if (pos_ + 1 < re_.size() && re_[pos_] == '-' && re_[pos_ + 1] != ']') {
        ++pos_;
        if (re_[pos_] == '\\') {
          ++pos_;
          hi = escape_char();
        } else {
          hi = next_cp();
        }
        if (hi < lo) bad("range out of order");
      }
      r.push_back({lo, hi});
    }
    return negate ? complement(r) : normalize(r);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

struct SchemaConverter::Ctx {
  const json* root;
  int doc;
  std::map<std::string, std::string> refs;  // $ref -> rule name
  int merge_depth = 0;
};

namespace {
const char* kBuiltinNames[] = {"root", "ws", "char", "string", "integer", "number", "boolean", "null", "value",
                               "object", "array", "dot"};
}

SchemaConverter::SchemaConverter() {
  for (const char* n : kBuiltinNames) reserved_.insert(n);
}

std::string SchemaConverter::literal(std::string_view text) {
  std::string out = "\"";
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) out += hex_escape(c);
    else out += ch;
  }
  return out + "\"";
}

std::string SchemaConverter::unique_name(const std::string& hint) {
  const std::string base = sanitize(hint);
  std::string name = base;
  for (int i = 1; by_name_.count(name) || reserved_.count(name); ++i) name = base + "-" + std::to_string(i);
  return name;
}

std::string SchemaConverter::add_rule(const std::string& name, const std::string& body) {
  auto it = by_body_.find(body);
  if (it != by_body_.end()) return it->second;
  const std::string n = unique_name(name);
  rules_.push_back({n, body});
  by_name_[n] = body;
  by_body_[body] = n;
  return n;
}

std::string SchemaConverter::builtin(const std::string& name) {
  if (by_name_.count(name)) return name;
  std::string body;
  if (name == "ws") {
    body = "| \" \" | \"\\n\" [ \\t]{0,20}";
  } else if (name == "char") {
    body = "[^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})";
  } else if (name == "dot") {
    body = "[^\"\\\\\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bft] | \"u\" [0-9a-fA-F]{4})";
  } else if (name == "string") {
    body = "\"\\\"\" " + builtin("char") + "* \"\\\"\"";
  } else if (name == "integer") {
    body = "\"-\"? (\"0\" | [1-9] [0-9]{0,15})";
  } else if (name == "number") {
    body = "\"-\"? (\"0\" | [1-9] [0-9]{0,15}) (\".\" [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?";
  } else if (name == "boolean") {
    body = "\"true\" | \"false\"";
  } else if (name == "null") {
    body = "\"null\"";
  } else if (name == "value") {
    by_name_["value"] = "";  // reserve first: object and array refer back to value
    body = builtin("object") + " | " + builtin("array") + " | " + builtin("string") + " | " + builtin("number") +
           " | " + builtin("boolean") + " | " + builtin("null");
  } else if (name == "object") {
    by_name_["object"] = "";
    const std::string ws = builtin("ws"), s = builtin("string"), v = builtin("value");
    body = "\"{\" " + ws + " (" + s + " " + ws + " \":\" " + ws + " " + v + " " + ws + " (\",\" " + ws + " " + s + " " +
           ws + " \":\" " + ws + " " + v + " " + ws + ")*)? \"}\"";
  } else if (name == "array") {
    by_name_["array"] = "";
    const std::string ws = builtin("ws"), v = builtin("value");
    body = "\"[\" " + ws + " (" + v + " " + ws + " (\",\" " + ws + " " + v + " " + ws + ")*)? \"]\"";
  } else {
    throw Error("JSON schema: no built-in rule '" + name + "'");
  }
  auto it = std::find_if(rules_.begin(), rules_.end(), [&](const auto& r) { return r.first == name; });
  if (it == rules_.end()) rules_.push_back({name, body});
  else it->second = body;
  by_name_[name] = body;
  by_body_.emplace(body, name);
  return name;
}

std::string SchemaConverter::grammar(const std::string& root_body) const {
  std::string out = "root ::= " + root_body + "\n";
  for (const auto& [name, body] : rules_) out += name + " ::= " + body + "\n";
  return out;
}

std::string SchemaConverter::add(const json& schema, const std::string& name_hint) {
  Ctx ctx{&schema, n_docs_++, {}};
  return visit(schema, name_hint, "", ctx, 0);
}

namespace {

// The schema a local $ref points to.
const json& resolve_ref(const json& root, const std::string& ref, const std::string& path) {
  if (ref.empty() || ref[0] != '#') fail(path, "remote $ref '" + ref + "' is not supported (only '#...')");
  std::string_view p(ref);
  p.remove_prefix(1);
  const json* cur = &root;
  if (p.empty()) return *cur;
  if (p[0] != '/') fail(path, "$ref '" + ref + "' is not a JSON pointer (anchors are not supported)");
  while (!p.empty()) {
    p.remove_prefix(1);
    const size_t end = p.find('/');
    std::string raw(p.substr(0, end));
    p = end == std::string_view::npos ? std::string_view() : p.substr(end);
    std::string key;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '~' && i + 1 < raw.size() && (raw[i + 1] == '0' || raw[i + 1] == '1')) {
        key += raw[i + 1] == '0' ? '~' : '/';
        ++i;
      } else if (raw[i] == '%' && i + 2 < raw.size() && std::isxdigit(static_cast<unsigned char>(raw[i + 1])) &&
                 std::isxdigit(static_cast<unsigned char>(raw[i + 2]))) {
        key += static_cast<char>(std::stoi(raw.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        key += raw[i];
      }
    }
    if (cur->is_object()) {
      auto it = cur->find(key);
      if (it == cur->end()) fail(path, "$ref '" + ref + "' points to nothing");
      cur = &*it;
    } else if (cur->is_array()) {
      if (key.empty() || key.size() > 9 || !std::all_of(key.begin(), key.end(), ::isdigit))
        fail(path, "$ref '" + ref + "' points to nothing");
      const size_t i = std::stoul(key);
      if (i >= cur->size()) fail(path, "$ref '" + ref + "' points to nothing");
      cur = &(*cur)[i];
    } else {
      fail(path, "$ref '" + ref + "' points to nothing");
    }
  }
  return *cur;
}

const json& follow_refs(const json& root, const json& s, const std::string& path) {
  const json* cur = &s;
  for (int i = 0; i < 32; ++i) {
    if (!cur->is_object()) return *cur;
    auto it = cur->find("$ref");
    if (it == cur->end()) return *cur;
    if (!it->is_string()) fail(path, "'$ref' must be a string");
    if (has_validation(*cur, {})) fail(path, "keywords beside '$ref' are not supported");
    cur = &resolve_ref(root, it->get<std::string>(), path);
  }
  fail(path, "$ref chain too long or circular");
}

// allOf: one schema with the parts' properties and required united; other keywords must agree.
void merge_into(json& out, const json& part, const std::string& path) {
  if (part.is_boolean()) {
    if (!part.get<bool>()) fail(path, "'false' schema in allOf (matches nothing)");
    return;
  }
  if (!part.is_object()) fail(path, "allOf items must be schemas");
  for (const auto& [k, v] : part.items()) {
    if (k == "properties") {
      if (!v.is_object()) fail(path, "'properties' must be an object");
      json& props = out["properties"];
      if (!props.is_object()) props = json::object();
      for (const auto& [pk, pv] : v.items()) {
        auto it = props.find(pk);
        if (it == props.end()) props[pk] = pv;
        else if (*it != pv) *it = json{{"allOf", json::array({*it, pv})}};
      }
    } else if (k == "required") {
      if (!v.is_array()) fail(path, "'required' must be an array");
      json& req = out["required"];
      if (!req.is_array()) req = json::array();
      for (const json& r : v)
        if (std::find(req.begin(), req.end(), r) == req.end()) req.push_back(r);
    } else if (k == "$defs" || k == "definitions" || !kValidation.count(k)) {
      continue;
    } else if (out.contains(k)) {
      if (out[k] != v) fail(path, "allOf parts disagree on '" + k + "'");
    } else {
      out[k] = v;
    }
  }
}

}  // namespace

std::string SchemaConverter::visit(const json& s, const std::string& name, const std::string& path, Ctx& ctx,
                                   int depth) {
  if (depth > kMaxDepth) fail(path, "schema nested too deeply");
  if (s.is_boolean()) {
    if (s.get<bool>()) return builtin("value");
    fail(path, "unsupported 'false' schema (matches nothing)");
  }
  if (!s.is_object()) fail(path, "a schema must be an object or a boolean");
  for (const auto& [k, v] : s.items()) {
    if (kUnsupported.count(k)) fail(path, "unsupported keyword '" + k + "'");
    if (k == "uniqueItems" && !(v.is_boolean() && !v.get<bool>())) fail(path, "unsupported keyword 'uniqueItems'");
  }

  if (auto it = s.find("$ref"); it != s.end()) {
    if (!it->is_string()) fail(path + "/$ref", "'$ref' must be a string");
    for (const auto& [k, v] : s.items())
      if (kValidation.count(k)) fail(path, "unsupported: keyword '" + k + "' beside '$ref'");
    const std::string ref = it->get<std::string>();
    auto found = ctx.refs.find(ref);
    if (found != ctx.refs.end()) return found->second;
    const json& target = resolve_ref(*ctx.root, ref, path);
    std::string hint = ref.substr(ref.rfind('/') == std::string::npos ? 0 : ref.rfind('/') + 1);
    if (hint.empty() || hint == "#") hint = "ref";
    const std::string rname = unique_name(hint);
    reserved_.insert(rname);
    ctx.refs[ref] = rname;
    const std::string inner = visit(target, rname + "-def", ref.size() > 1 ? ref.substr(1) : "", ctx, depth + 1);
    rules_.push_back({rname, inner});
    by_name_[rname] = inner;
    return rname;
  }

  if (auto it = s.find("nullable"); it != s.end() && it->is_boolean() && it->get<bool>()) {
    json copy = s;
    copy.erase("nullable");
    const std::string inner = visit(copy, name, path, ctx, depth + 1);
    return add_rule(name, inner + " | " + builtin("null"));
  }

  if (auto it = s.find("allOf"); it != s.end()) {
    if (!it->is_array() || it->empty()) fail(path + "/allOf", "'allOf' must be a non-empty array");
    if (++ctx.merge_depth > 32) fail(path, "allOf nested too deeply or circular");
    json merged = s;
    merged.erase("allOf");
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string p = path + "/allOf/" + std::to_string(i);
      merge_into(merged, follow_refs(*ctx.root, (*it)[i], p), p);
    }
    const std::string r = visit(merged, name, path, ctx, depth + 1);
    --ctx.merge_depth;
    return r;
  }

  for (const char* key : {"anyOf", "oneOf"}) {
    auto it = s.find(key);
    if (it == s.end()) continue;
    if (!it->is_array() || it->empty()) fail(path + "/" + key, std::string("'") + key + "' must be a non-empty array");
    json rest = s;
    rest.erase("anyOf");
    rest.erase("oneOf");
    const bool plain = !has_validation(rest, {});
    if (s.contains("anyOf") && s.contains("oneOf")) fail(path, "unsupported: both 'anyOf' and 'oneOf'");
    std::vector<std::string> alts;
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string p = path + "/" + key + "/" + std::to_string(i);
      const std::string hint = name + "-" + std::to_string(i);
      if (plain) {
        alts.push_back(visit((*it)[i], hint, p, ctx, depth + 1));
      } else {  // keywords beside anyOf apply to every alternative
        json part = json{{"allOf", json::array({rest, (*it)[i]})}};
        alts.push_back(visit(part, hint, p, ctx, depth + 1));
      }
    }
    return add_rule(name, join_alts(alts));
  }

  if (auto it = s.find("const"); it != s.end()) return add_rule(name, literal(dump(*it)));
  if (auto it = s.find("enum"); it != s.end()) {
    if (!it->is_array() || it->empty()) fail(path + "/enum", "'enum' must be a non-empty array");
    std::vector<std::string> alts;
    for (const json& v : *it) alts.push_back(literal(dump(v)));
    return add_rule(name, join_alts(alts));
  }

  std::string type;
  if (auto it = s.find("type"); it != s.end()) {
    if (it->is_array()) {
      if (it->empty()) fail(path + "/type", "'type' must not be an empty list");
      std::vector<std::string> alts;
      for (const json& t : *it) {
        if (!t.is_string()) fail(path + "/type", "'type' entries must be strings");
        json copy = s;
        copy["type"] = t;
        alts.push_back(visit(copy, name + "-" + t.get<std::string>(), path, ctx, depth + 1));
      }
      return add_rule(name, join_alts(alts));
    }
    if (!it->is_string()) fail(path + "/type", "'type' must be a string or a list of strings");
    type = it->get<std::string>();
  } else {
    auto has = [&](std::initializer_list<const char*> keys) {
      return std::any_of(keys.begin(), keys.end(), [&](const char* k) { return s.contains(k); });
    };
    if (has({"properties", "additionalProperties", "required"})) type = "object";
    else if (has({"items", "prefixItems", "minItems", "maxItems", "additionalItems"})) type = "array";
    else if (has({"minLength", "maxLength", "pattern", "format"})) type = "string";
    else if (has({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})) type = "number";
    else return builtin("value");
  }
  if (type == "object") return visit_object(s, name, path, ctx, depth);
  if (type == "array") return visit_array(s, name, path, ctx, depth);
  if (type == "string") return visit_string(s, name, path);
  if (type == "integer") return visit_number(s, true, name, path);
  if (type == "number") return visit_number(s, false, name, path);
  if (type == "boolean") return builtin("boolean");
  if (type == "null") return builtin("null");
  fail(path + "/type", "unknown type '" + type + "'");
}

std::string SchemaConverter::not_keys_rule(const std::vector<std::string>& keys, const std::string& name) {
  // The JSON text of each key's content, as code points, in a trie; a rule per trie node: the rest of a key's text
  // after that prefix, for any key except the listed ones.
  std::vector<std::vector<uint32_t>> texts;
  for (const std::string& k : keys) {
    const std::string enc = dump(json(k));
    const std::string content = enc.substr(1, enc.size() - 2);
    if (content.find('\\') != std::string::npos) return builtin("string");  // escapes in a key: any key
    std::vector<uint32_t> cps;
    for (size_t i = 0; i < content.size();) {
      const unsigned char c = static_cast<unsigned char>(content[i]);
      const int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
      uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1Fu : len == 3 ? c & 0x0Fu : c & 0x07u;
      for (int j = 1; j < len && i + static_cast<size_t>(j) < content.size(); ++j)
        cp = (cp << 6) | (static_cast<unsigned char>(content[i + static_cast<size_t>(j)]) & 0x3Fu);
      cps.push_back(cp);
      i += static_cast<size_t>(len);
    }
    texts.push_back(std::move(cps));
  }
  std::sort(texts.begin(), texts.end());
  texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
  const std::string ch = builtin("char");
  const std::string any_rest = ch + "* \"\\\"\"";
  int counter = 0;
  const std::string base = unique_name(name);
  reserved_.insert(base);
  // node(prefix): the texts sharing `prefix` are texts[lo, hi).
  std::function<std::string(size_t, size_t, size_t)> node = [&](size_t lo, size_t hi, size_t depth) -> std::string {
    std::vector<std::string> alts;
    Ranges next;
    bool is_key = false;
    for (size_t i = lo; i < hi;) {
      if (texts[i].size() == depth) {
        is_key = true;
        ++i;
        continue;
      }
      const uint32_t c = texts[i][depth];
      size_t j = i;
      while (j < hi && texts[j].size() > depth && texts[j][depth] == c) ++j;
      next.push_back({c, c});
      alts.push_back(class_of({{c, c}}) + " " + node(i, j, depth + 1));
      i = j;
    }
    // A character no key continues with: anything may follow.
    static const Ranges kSpecial = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
    Ranges other = subtract(complement(next), kSpecial);
    if (!other.empty()) alts.push_back(class_of(other) + " " + any_rest);
    alts.push_back("\"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) " + any_rest);
    if (!is_key) alts.push_back("\"\\\"\"");
    const std::string rn = base + "-" + std::to_string(counter++);
    rules_.push_back({rn, join_alts(alts)});
    by_name_[rn] = rules_.back().second;
    return rn;
  };
  const std::string first = node(0, texts.size(), 0);
  rules_.push_back({base, "\"\\\"\" " + first});
  by_name_[base] = rules_.back().second;
  return base;
}

std::string SchemaConverter::visit_object(const json& s, const std::string& name, const std::string& path, Ctx& ctx,
                                          int depth) {
  const std::string ws = builtin("ws");
  std::vector<std::pair<std::string, const json*>> props;
  static const json kAny = true;
  if (auto it = s.find("properties"); it != s.end()) {
    if (!it->is_object()) fail(path + "/properties", "'properties' must be an object");
    for (const auto& [k, v] : it->items()) props.push_back({k, &v});
  }
  std::set<std::string> required;
  if (auto it = s.find("required"); it != s.end()) {
    if (!it->is_array()) fail(path + "/required", "'required' must be an array of strings");
    for (const json& r : *it) {
      if (!r.is_string()) fail(path + "/required", "'required' must be an array of strings");
      const std::string k = r.get<std::string>();
      if (required.insert(k).second &&
          std::none_of(props.begin(), props.end(), [&](const auto& p) { return p.first == k; }))
        props.push_back({k, &kAny});
    }
  }
  const json* additional = nullptr;
  bool extra = false;
  if (auto it = s.find("additionalProperties"); it != s.end()) {
    if (it->is_boolean()) {
      extra = it->get<bool>();
      if (extra) additional = &kAny;
    } else if (it->is_object()) {
      extra = true;
      additional = &*it;
    } else {
      fail(path + "/additionalProperties", "'additionalProperties' must be a boolean or a schema");
    }
  } else if (!s.contains("properties")) {
    extra = true;  // a bare object schema: any keys
    additional = &kAny;
  }
  if (props.empty() && extra && additional == &kAny) return builtin("object");

  const size_t n = props.size();
  std::vector<std::string> kv(n);
  std::vector<std::string> keys;
  for (size_t i = 0; i < n; ++i) {
    const std::string& key = props[i].first;
    keys.push_back(key);
    const std::string hint = name + "-" + key;
    const std::string val = visit(*props[i].second, hint, path + "/properties/" + ptr_escape(key), ctx, depth + 1);
    kv[i] = add_rule(hint + "-kv", literal(dump(json(key))) + " " + ws + " \":\" " + ws + " " + val + " " + ws);
  }
  std::string extra_kv;
  if (extra) {
    const std::string val = visit(*additional, name + "-additional", path + "/additionalProperties", ctx, depth + 1);
    const std::string key = keys.empty() ? builtin("string") : not_keys_rule(keys, name + "-other-key");
    extra_kv = add_rule(name + "-additional-kv", key + " " + ws + " \":\" " + ws + " " + val + " " + ws);
  }
  // tail[k]: what may follow once something was written, from property k on (each item preceded by a comma);
  // first[k]: the same before anything was written.
  auto cat = [](const std::string& a, const std::string& b) { return a.empty() ? b : b.empty() ? a : a + " " + b; };
  auto is_req = [&](size_t k) { return required.count(props[k].first) > 0; };
  // tail(k): what may follow once something was written, from property k on (each item after a comma): inline when
  // it is a plain run of required items, else a rule. first(k): the same before anything was written. Both are
  // made on demand, so no unused rules are left behind.
  std::vector<std::string> tails(n + 1), firsts(n + 1);
  std::vector<char> tail_done(n + 1, 0), first_done(n + 1, 0);
  std::function<std::string(size_t)> tail = [&](size_t k) -> std::string {
    if (tail_done[k]) return tails[k];
    std::string t;
    if (k == n) {
      if (extra) t = "(\",\" " + ws + " " + extra_kv + ")*";
    } else {
      const std::string item = "\",\" " + ws + " " + kv[k];
      t = cat(is_req(k) ? item : "(" + item + ")?", tail(k + 1));
    }
    bool plain = !extra;
    for (size_t j = k; j < n && plain; ++j) plain = is_req(j);
    tails[k] = plain ? t : add_rule(name + "-tail-" + std::to_string(k), t);
    tail_done[k] = 1;
    return tails[k];
  };
  std::function<std::string(size_t)> first = [&](size_t k) -> std::string {
    if (first_done[k]) return firsts[k];
    std::string f;
    if (k == n) {
      if (extra) f = add_rule(name + "-only-extra", "(" + cat(extra_kv, tail(n)) + ")?");
    } else if (is_req(k)) {
      f = cat(kv[k], tail(k + 1));
    } else {
      const std::string with = cat(kv[k], tail(k + 1));
      const std::string rest = first(k + 1);
      f = add_rule(name + "-first-" + std::to_string(k), rest.empty() ? "(" + with + ")?" : with + " | " + rest);
    }
    firsts[k] = f;
    first_done[k] = 1;
    return f;
  };
  return add_rule(name, cat("\"{\" " + ws, first(0)) + " \"}\"");
}

std::string SchemaConverter::visit_array(const json& s, const std::string& name, const std::string& path, Ctx& ctx,
                                         int depth) {
  const std::string ws = builtin("ws");
  std::vector<std::string> prefix;
  std::string item;  // rule for items after the prefix ("" = none allowed)
  auto item_rule = [&](const json& v, const std::string& p) -> std::string {
    if (v.is_boolean()) return v.get<bool>() ? builtin("value") : "";
    return visit(v, name + "-item", p, ctx, depth + 1);
  };
  const json* tuple = nullptr;
  std::string tuple_key;
  if (auto it = s.find("prefixItems"); it != s.end()) {
    if (!it->is_array()) fail(path + "/prefixItems", "'prefixItems' must be an array");
    tuple = &*it;
    tuple_key = "prefixItems";
    if (auto x = s.find("items"); x != s.end()) item = item_rule(*x, path + "/items");
  } else if (auto it2 = s.find("items"); it2 != s.end() && it2->is_array()) {
    tuple = &*it2;
    tuple_key = "items";
    if (auto x = s.find("additionalItems"); x != s.end()) item = item_rule(*x, path + "/additionalItems");
  } else if (it2 != s.end()) {
    item = item_rule(*it2, path + "/items");
  } else {
    item = builtin("value");
  }
  if (tuple)
    for (size_t i = 0; i < tuple->size(); ++i)
      prefix.push_back(visit((*tuple)[i], name + "-" + std::to_string(i),
                             path + "/" + tuple_key + "/" + std::to_string(i), ctx, depth + 1));
  constexpr uint64_t kNoMax = UINT64_MAX;
  const uint64_t lo = get_count(s, "minItems", path).value_or(0);
  uint64_t hi = get_count(s, "maxItems", path).value_or(kNoMax);
  if (hi != kNoMax && hi > kMaxCount) hi = kNoMax;
  if (lo > kMaxCount) fail(path + "/minItems", "'minItems' too large (limit " + std::to_string(kMaxCount) + ")");
  const uint64_t P = prefix.size();
  if (item.empty()) hi = std::min<uint64_t>(hi, P);
  if (lo > hi) fail(path, "'minItems' is larger than the number of items allowed");
  auto opt = [&](uint64_t v) { return v == kNoMax ? std::nullopt : std::optional<uint64_t>(v); };

  // after(k): having written k >= 1 items, the rest (each preceded by a comma).
  std::string rest;
  if (!item.empty() && hi > P) {
    const uint64_t elo = lo > P ? lo - P : 0;
    const uint64_t ehi = hi == kNoMax ? kNoMax : hi - P;
    if (P == 0)
      rest = repeat_expr("(\",\" " + ws + " " + item + " " + ws + ")", elo > 0 ? elo - 1 : 0,
                         opt(ehi == kNoMax ? kNoMax : ehi - 1));
    else rest = repeat_expr("(\",\" " + ws + " " + item + " " + ws + ")", elo, opt(ehi));
  }
  std::string body;
  if (P == 0) {
    if (item.empty() || hi == 0) {
      body = "\"[\" " + ws + " \"]\"";
    } else {
      const std::string seq = item + " " + ws + (rest.empty() ? "" : " " + rest);
      body = "\"[\" " + ws + " " + (lo == 0 ? "(" + seq + ")?" : seq) + " \"]\"";
    }
  } else {
    std::string after = rest;  // after P items
    for (uint64_t k = P; k-- > 1;) {  // after k items: maybe item k (0-based) and what follows it
      if (k + 1 > hi) {
        after = "";
        continue;
      }
      const std::string seq = "\",\" " + ws + " " + prefix[k] + " " + ws + (after.empty() ? "" : " " + after);
      after = k + 1 <= lo ? seq : "(" + seq + ")?";
    }
    const std::string seq = prefix[0] + " " + ws + (after.empty() ? "" : " " + after);
    body = "\"[\" " + ws + " " + (hi == 0 ? "" : lo >= 1 ? seq : "(" + seq + ")?") + " \"]\"";
  }
  return add_rule(name, body);
}

std::string SchemaConverter::visit_string(const json& s, const std::string& name, const std::string& path) {
  const std::string q = "\"\\\"\"";
  std::string content;
  auto fmt_it = s.find("format");
  const std::string fmt = fmt_it != s.end() && fmt_it->is_string() ? fmt_it->get<std::string>() : "";
  const std::optional<uint64_t> lo = get_count(s, "minLength", path);
  std::optional<uint64_t> hi = get_count(s, "maxLength", path);
  if (lo && hi && *lo > *hi) fail(path, "'minLength' is larger than 'maxLength'");
  if (hi && *hi > kMaxCount) hi.reset();
  if (lo && *lo > kMaxCount)
    fail(path + "/minLength", "'minLength' too large (limit " + std::to_string(kMaxCount) + ")");
  const bool lengths = (lo && *lo > 0) || hi;
  if (auto it = s.find("pattern"); it != s.end()) {
    if (!it->is_string()) fail(path + "/pattern", "'pattern' must be a string");
    if (lengths) fail(path, "unsupported: 'pattern' together with 'minLength' / 'maxLength'");
    RegexConverter rc(it->get<std::string>(), path + "/pattern", *this);
    return add_rule(name, q + " " + rc.convert() + " " + q);
  }
  const std::string date = "[0-9]{4} \"-\" (\"0\" [1-9] | \"1\" [0-2]) \"-\" (\"0\" [1-9] | [12] [0-9] | \"3\" [01])";
  const std::string time =
      "([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9] \":\" [0-5] [0-9] (\".\" [0-9]{1,9})? "
      "(\"Z\" | [+-] ([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9])";
  if (!lengths) {
    if (fmt == "date") return add_rule("date", q + " " + date + " " + q);
    if (fmt == "time") return add_rule("time", q + " " + time + " " + q);
    if (fmt == "date-time") return add_rule("date-time", q + " " + date + " \"T\" " + time + " " + q);
    if (fmt == "uuid")
      return add_rule("uuid",
                      q +
                          " [0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" "
                          "[0-9a-fA-F]{12} " +
                          q);
    return builtin("string");
  }
  return add_rule(name, q + " " + repeat_expr(builtin("char"), lo.value_or(0), hi) + " " + q);
}

std::string SchemaConverter::visit_number(const json& s, bool integer, const std::string& name,
                                          const std::string& path) {
  // Bounds as doubles; inclusive flags.
  std::optional<double> lo, hi;
  bool lo_incl = true, hi_incl = true;
  auto num = [&](const char* key) -> std::optional<double> {
    auto it = s.find(key);
    if (it == s.end()) return std::nullopt;
    if (it->is_boolean()) return std::nullopt;
    if (!it->is_number()) fail(path + "/" + key, std::string("'") + key + "' must be a number");
    const double d = it->get<double>();
    if (!std::isfinite(d)) fail(path + "/" + key, std::string("'") + key + "' must be finite");
    return d;
  };
  auto flag = [&](const char* key) {
    auto it = s.find(key);
    return it != s.end() && it->is_boolean() && it->get<bool>();
  };
  lo = num("minimum");
  hi = num("maximum");
  if (flag("exclusiveMinimum")) lo_incl = false;  // draft 4
  if (flag("exclusiveMaximum")) hi_incl = false;
  if (auto x = num("exclusiveMinimum"); x && (!lo || *x >= *lo)) lo = x, lo_incl = false;
  if (auto x = num("exclusiveMaximum"); x && (!hi || *x <= *hi)) hi = x, hi_incl = false;
  if (!lo && !hi) return builtin(integer ? "integer" : "number");
  const double cap = static_cast<double>(kIntCap);

  if (integer) {
    int64_t a = -kIntCap, b = kIntCap;
    if (lo) {
      const double v = lo_incl ? std::ceil(*lo) : std::floor(*lo) + 1;
      if (v > cap) fail(path, "'minimum' beyond the 16-digit integers this grammar writes");
      a = v < -cap ? -kIntCap : static_cast<int64_t>(v);
    }
    if (hi) {
      const double v = hi_incl ? std::floor(*hi) : std::ceil(*hi) - 1;
      if (v < -cap) fail(path, "'maximum' beyond the 16-digit integers this grammar writes");
      b = v > cap ? kIntCap : static_cast<int64_t>(v);
    }
    if (a > b) fail(path, "no integer satisfies 'minimum' / 'maximum'");
    std::vector<std::string> alts;
    if (b < 0) {
      alts.push_back("\"-\" " + range_nonneg(static_cast<uint64_t>(-b), static_cast<uint64_t>(-a)));
    } else if (a >= 0) {
      alts.push_back(range_nonneg(static_cast<uint64_t>(a), static_cast<uint64_t>(b)));
    } else {
      alts.push_back("\"-\" " + range_nonneg(1, static_cast<uint64_t>(-a)));
      alts.push_back(range_nonneg(0, static_cast<uint64_t>(b)));
    }
    return add_rule(name, join_alts(alts));
  }

  // number: whole-number bounds only; no exponent.
  for (const auto& [v, key] : {std::pair{lo, "minimum"}, std::pair{hi, "maximum"}}) {
    if (v && (*v != std::floor(*v) || std::fabs(*v) > cap))
      fail(path, std::string("unsupported: a non-integer (or over 16 digits) '") + key + "' for type number");
  }
  if (lo && hi && (*lo > *hi || (*lo == *hi && !(lo_incl && hi_incl)))) fail(path, "no number satisfies the bounds");
  const std::string frac_any = "(\".\" [0-9]{1,16})?";
  const std::string frac_zero = "(\".\" \"0\"{1,16})?";
  const std::string frac_nonzero = "\".\" \"0\"{0,15} [1-9] [0-9]{0,15}";
  // Magnitudes m with A <= m (or A < m) and m <= B (or m < B), B absent = unbounded.
  auto magnitude = [&](uint64_t A, bool a_incl, std::optional<uint64_t> B, bool b_incl) {
    std::vector<std::string> alts;
    const uint64_t lo_any = a_incl ? A : A + 1;
    if (!B) {
      if (lo_any <= static_cast<uint64_t>(kIntCap))
        alts.push_back(range_nonneg(lo_any, static_cast<uint64_t>(kIntCap)) + " " + frac_any);
    } else if (*B >= 1 && lo_any <= *B - 1) {
      alts.push_back(range_nonneg(lo_any, *B - 1) + " " + frac_any);
    }
    if (!a_incl && (!B || A < *B)) alts.push_back("\"" + std::to_string(A) + "\" " + frac_nonzero);
    if (B && b_incl && (*B > A || a_incl)) alts.push_back("\"" + std::to_string(*B) + "\" " + frac_zero);
    return alts;
  };
  std::vector<std::string> alts;
  // r >= 0
  {
    uint64_t A = 0;
    bool a_incl = true;
    if (lo && *lo >= 0) A = static_cast<uint64_t>(*lo), a_incl = lo_incl;
    const bool possible = !hi || *hi > static_cast<double>(A) || (*hi == static_cast<double>(A) && a_incl && hi_incl);
    if (possible) {
      std::optional<uint64_t> B;
      if (hi) B = static_cast<uint64_t>(*hi);
      for (auto& a : magnitude(A, a_incl, B, hi_incl)) alts.push_back(a);
    }
  }
  // r < 0: magnitude -r > 0
  if (!lo || *lo < 0) {
    uint64_t A = 0;
    bool a_incl = false;
    if (hi && *hi < 0) A = static_cast<uint64_t>(-*hi), a_incl = hi_incl;
    std::optional<uint64_t> B;
    if (lo) B = static_cast<uint64_t>(-*lo);
    const bool possible = !B || *B > A || (*B == A && a_incl && lo_incl);
    if (possible)
      for (auto& a : magnitude(A, a_incl, B, lo_incl)) alts.push_back("\"-\" " + a);
  }
  if (alts.empty()) fail(path, "no number satisfies the bounds");
  std::string body;
  for (size_t i = 0; i < alts.size(); ++i) body += (i ? " | " : "") + std::string("(") + alts[i] + ")";
  return add_rule(name, body);
}

// ---------------------------------------------------------------------------------------------------------------

std::string json_schema_to_gbnf(const nlohmann::ordered_json& schema) {
  SchemaConverter c;
  const std::string root = c.add(schema, "schema");
  std::string g = c.grammar(root);
  try {
    Grammar::parse(g);
  } catch (const Error& e) {
    throw Error(std::string("JSON schema: the schema gives an invalid grammar (") + e.what() + ")");
  }
  return g;
}

std::string json_any_value_gbnf() {
  SchemaConverter c;
  return c.grammar(c.builtin("value"));
}

std::string json_object_gbnf() {
  SchemaConverter c;
  return c.grammar(c.builtin("object"));
}

}  // namespace lokal
