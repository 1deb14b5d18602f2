// chat/jinja_lexer.cpp - template source -> tokens, with jinja2's whitespace rules.
//
// The source is a sequence of text and tags: {{ expression }}, {% statement %}, {# comment #}, and
// {% raw %}...{% endraw %}. What jinja2 does to the text around tags (and so what this lexer reproduces):
//   * all newlines (\r\n, \r, \n) become \n, and one trailing newline of the template is dropped;
//   * `{%-`, `{{-`, `{#-`: the whitespace before the tag is removed; `-%}`, `-}}`, `-#}`: the whitespace after;
//   * trim_blocks: the first newline right after `%}` or `#}` is removed (not after `+%}`, not after `}}`);
//   * lstrip_blocks: spaces and tabs from the start of a line up to `{%` or `{#` are removed (not for `{%+`,
//     not for `{{`), when the tag follows only whitespace on its line;
//   * inside tags, tokens are names, numbers, strings (python escapes decoded) and operators; `%}` and `}}`
//     only end a tag outside brackets.
#include <string_view>

#include "chat/jinja_impl.h"

namespace lokal::jinja::detail {
namespace {

[[noreturn]] void lex_fail(int line, std::string msg) { throw JinjaError{std::move(msg), line}; }

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || static_cast<unsigned char>(c) >= 0x80;
}
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

// The whitespace character (python's \s / str.isspace) at i: its length, or 0.
size_t space_at(std::string_view s, size_t i) {
  if (i >= s.size()) return 0;
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F)) ? 1 : 0;
  size_t len;
  return is_space_cp(utf8_decode(s, i, &len)) ? len : 0;
}

// `text` without its trailing whitespace (python's str.rstrip()).
std::string_view rstrip_ws(std::string_view text) {
  size_t cut = text.size(), i = 0;
  bool in_run = false;
  while (i < text.size()) {
    size_t n = space_at(text, i);
    if (n) {
      if (!in_run) cut = i;
      in_run = true;
      i += n;
    } else {
      in_run = false;
      cut = text.size();
      i = utf8_next(text, i);
    }
  }
  return in_run ? text.substr(0, cut) : text;
}

bool all_ws(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    size_t n = space_at(text, i);
    if (!n) return false;
    i += n;
  }
  return !text.empty();
}

// Decodes the body of a string literal like python's "unicode-escape" codec.
std::string decode_string(std::string_view body, int line) {
  std::string out;
  out.reserve(body.size());
  auto hex = [&](size_t from, int n, const char* what) -> uint32_t {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k) {
      if (from + k >= body.size()) lex_fail(line, std::string("truncated ") + what + " escape in string literal");
      char c = body[from + k];
      int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (d < 0) lex_fail(line, std::string("truncated ") + what + " escape in string literal");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    return v;
  };
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    switch (e) {
      case '\n': break;  // line continuation
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': utf8_append(out, hex(i + 1, 2, "\\xXX")); i += 2; break;
      case 'u': utf8_append(out, hex(i + 1, 4, "\\uXXXX")); i += 4; break;
      case 'U': {
        uint32_t cp = hex(i + 1, 8, "\\UXXXXXXXX");
        if (cp > 0x10FFFF) lex_fail(line, "illegal Unicode character in string literal");
        utf8_append(out, cp);
        i += 8;
        break;
      }
      case 'N': lex_fail(line, "\\N{...} escapes are not supported in string literals");
      default:
        if (e >= '0' && e <= '7') {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
            v = v * 8 + static_cast<uint32_t>(body[++i] - '0');
          utf8_append(out, v);
        } else {
          out += '\\';  // unknown escapes stay as they are
          out += e;
        }
    }
  }
  return out;
}

// `(\d+_)*\d+` at i: the end, or npos.
size_t scan_digits(std::string_view s, size_t i) {
  if (i >= s.size() || !is_digit(s[i])) return std::string_view::npos;
  while (true) {
    while (i < s.size() && is_digit(s[i])) ++i;
    if (i + 1 < s.size() && s[i] == '_' && is_digit(s[i + 1])) {
      ++i;
      continue;
    }
    return i;
  }
}

// jinja2's float literal at i (not preceded by '.'): the end, or npos.
size_t scan_float(std::string_view s, size_t i) {
  if (i > 0 && s[i - 1] == '.') return std::string_view::npos;
  size_t p = scan_digits(s, i);
  if (p == std::string_view::npos) return p;
  auto exponent = [&](size_t q) -> size_t {
    if (q < s.size() && (s[q] == 'e' || s[q] == 'E')) {
      ++q;
      if (q < s.size() && (s[q] == '+' || s[q] == '-')) ++q;
      return scan_digits(s, q);
    }
    return std::string_view::npos;
  };
  size_t frac = std::string_view::npos;
  if (p < s.size() && s[p] == '.') frac = scan_digits(s, p + 1);
  if (frac != std::string_view::npos) {
    size_t e = exponent(frac);
    return e != std::string_view::npos ? e : frac;
  }
  return exponent(p);
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) {
    // Newlines -> \n; one trailing newline dropped (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    const std::string_view s = src_;
    while (pos_ < s.size()) {
      size_t t = find_tag(pos_);
      if (t == std::string_view::npos) {
        data(s.substr(pos_), line_);
        count_lines(pos_, s.size());
        pos_ = s.size();
        break;
      }
      char kind = s[t + 1];  // '{', '%' or '#'
      size_t after = t + 2;
      char sign = (after < s.size() && (s[after] == '-' || s[after] == '+')) ? s[after] : 0;
      size_t raw_end = kind == '%' ? match_raw_begin(t) : std::string_view::npos;
      text_before_tag(pos_, t, sign, kind != '{');
      int tag_line = line_;
      if (raw_end != std::string_view::npos) {
        raw_block(raw_end, tag_line);
      } else if (kind == '#') {
        comment(after + (sign ? 1 : 0), tag_line);
      } else {
        tag(kind == '%', after + (sign ? 1 : 0), tag_line);
      }
    }
    tokens_.push_back(Token{Tok::Eof, line_, {}});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  void count_lines(size_t from, size_t to) {
    for (size_t i = from; i < to; ++i)
      if (src_[i] == '\n') ++line_;
  }

  void data(std::string_view text, int line) {
    if (!text.empty()) tokens_.push_back(Token{Tok::Data, line, std::string(text)});
  }

  // Emits the text [from, tag) with the whitespace control of the tag applied, and moves the position to the tag.
  void text_before_tag(size_t from, size_t tag, char sign, bool lstrip_kind) {
    std::string_view text = std::string_view(src_).substr(from, tag - from);
    if (sign == '-') {
      text = rstrip_ws(text);
    } else if (sign != '+' && lstrip_kind) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && all_ws(text.substr(l_pos))) text = text.substr(0, l_pos);
    }
    data(text, line_);
    count_lines(from, tag);
    pos_ = tag;
  }

  // Skips whitespace from pos_ (after a `-%}`), remembering whether it ended a line.
  void skip_ws_after_tag() {
    size_t n;
    line_starting_ = false;
    while ((n = space_at(src_, pos_)) != 0) {
      line_starting_ = src_[pos_] == '\n';
      if (src_[pos_] == '\n') ++line_;
      pos_ += n;
    }
  }

  // Consumes the block or comment end marker ("%}" or "#}", maybe after '+' or '-') at p, then applies its
  // whitespace control: '-' eats the following whitespace, '+' keeps it, and plain ends drop one newline
  // (trim_blocks).
  void end_marker(size_t p) {
    if (src_[p] == '+') {
      pos_ = p + 3;
      line_starting_ = false;
    } else if (src_[p] == '-') {
      pos_ = p + 3;
      skip_ws_after_tag();
    } else {
      pos_ = p + 2;
      line_starting_ = false;
      if (pos_ < src_.size() && src_[pos_] == '\n') {  // trim_blocks
        ++pos_;
        ++line_;
        line_starting_ = true;
      }
    }
  }

  // Whether an end marker `[+-]?<c>}` starts at p.
  bool end_at(size_t p, char c) const {
    if (p + 1 < src_.size() && src_[p] == c && src_[p + 1] == '}') return true;
    return p + 2 < src_.size() && (src_[p] == '+' || src_[p] == '-') && src_[p + 1] == c && src_[p + 2] == '}';
  }

  void comment(size_t from, int tag_line) {
    for (size_t p = from; p < src_.size(); ++p) {
      if (end_at(p, '#')) {
        count_lines(pos_, p);
        end_marker(p);
        return;
      }
    }
    lex_fail(tag_line, "missing end of comment tag");
  }

  // `{%[-+]?\s*raw\s*(-%}\s*|%})` at t: the position after it, or npos.
  size_t match_raw_begin(size_t t) const {
    size_t p = t + 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    while (size_t n = space_at(src_, p)) p += n;
    if (src_.compare(p, 3, "raw") != 0) return std::string::npos;
    p += 3;
    while (size_t n = space_at(src_, p)) p += n;
    if (src_.compare(p, 3, "-%}") == 0 || src_.compare(p, 2, "%}") == 0) return p;
    return std::string::npos;
  }

  void raw_block(size_t end_of_begin, int tag_line) {
    // The begin tag: `-%}` eats the following whitespace; a plain `%}` keeps the newline (no trim_blocks here).
    count_lines(pos_, end_of_begin);
    if (src_[end_of_begin] == '-') {
      pos_ = end_of_begin + 3;
      skip_ws_after_tag();
    } else {
      pos_ = end_of_begin + 2;
      line_starting_ = false;
    }
    // The content runs to the first `{%[-+]?\s*endraw\s*[-+]?%}`.
    for (size_t p = src_.find("{%", pos_); p != std::string::npos; p = src_.find("{%", p + 1)) {
      size_t q = p + 2;
      char sign = (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ? src_[q] : 0;
      if (sign) ++q;
      while (size_t n = space_at(src_, q)) q += n;
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q += 6;
      while (size_t n = space_at(src_, q)) q += n;
      if (!end_at(q, '%')) continue;
      text_before_tag(pos_, p, sign, true);
      count_lines(p, q);
      end_marker(q);
      return;
    }
    lex_fail(tag_line, "missing end of raw directive");
  }

  void tag(bool block, size_t from, int tag_line) {
    tokens_.push_back(Token{block ? Tok::BlockBegin : Tok::VarBegin, tag_line, {}});
    pos_ = from;
    const std::string_view s = src_;
    std::string brackets;  // expected closers
    while (pos_ < s.size()) {
      if (brackets.empty()) {
        if (block && end_at(pos_, '%')) {
          tokens_.push_back(Token{Tok::BlockEnd, line_, {}});
          end_marker(pos_);
          return;
        }
        if (!block && s[pos_] == '-' && s.compare(pos_ + 1, 2, "}}") == 0) {
          tokens_.push_back(Token{Tok::VarEnd, line_, {}});
          pos_ += 3;
          skip_ws_after_tag();
          return;
        }
        if (!block && s.compare(pos_, 2, "}}") == 0) {
          tokens_.push_back(Token{Tok::VarEnd, line_, {}});
          pos_ += 2;
          line_starting_ = false;
          return;
        }
      }
      if (size_t n = space_at(s, pos_)) {
        if (s[pos_] == '\n') ++line_;
        pos_ += n;
        continue;
      }
      char c = s[pos_];
      if (is_digit(c)) {
        number();
        continue;
      }
      if (is_name_start(c)) {
        size_t e = pos_;
        while (e < s.size() && is_name_char(s[e])) ++e;
        tokens_.push_back(Token{Tok::Name, line_, std::string(s.substr(pos_, e - pos_))});
        pos_ = e;
        continue;
      }
      if (c == '\'' || c == '"') {
        string_literal();
        continue;
      }
      operator_token(brackets);
    }
    // Unterminated tag: the parser reports the unexpected end of the template.
  }

  void number() {
    const std::string_view s = src_;
    size_t f = scan_float(s, pos_);
    if (f != std::string_view::npos) {
      std::string lit;
      for (char ch : s.substr(pos_, f - pos_))
        if (ch != '_') lit += ch;
      Token t{Tok::Float, line_, lit};
      t.fval = std::strtod(lit.c_str(), nullptr);
      tokens_.push_back(std::move(t));
      pos_ = f;
      return;
    }
    // 0b / 0o / 0x prefixes, decimal, or zeros.
    int base = 10;
    size_t p = pos_;
    if (s[p] == '0' && p + 1 < s.size()) {
      char k = static_cast<char>(s[p + 1] | 0x20);
      base = k == 'b' ? 2 : k == 'o' ? 8 : k == 'x' ? 16 : 10;
    }
    auto digit_value = [&](char ch) {
      ch = static_cast<char>(ch | 0x20);
      int d = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10 : 99;
      return d < base ? d : -1;
    };
    uint64_t v = 0;
    bool overflow = false;
    size_t e = p;
    if (base != 10) {
      e = p + 2;
      size_t start = e;
      while (e < s.size()) {
        if (s[e] == '_' && e + 1 < s.size() && digit_value(s[e + 1]) >= 0) ++e;
        int d = digit_value(s[e]);
        if (d < 0) break;
        if (v > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) overflow = true;
        v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
        ++e;
      }
      if (e == start) {  // "0x" without digits: just the zero
        base = 10;
        e = p;
      }
    }
    if (base == 10) {
      v = 0;
      if (s[p] == '0') {  // 0(_?0)*
        e = p + 1;
        while (e < s.size() && (s[e] == '0' || (s[e] == '_' && e + 1 < s.size() && s[e + 1] == '0'))) ++e;
      } else {
        e = scan_digits(s, p);
        for (size_t k = p; k < e; ++k) {
          if (s[k] == '_') continue;
          uint64_t d = static_cast<uint64_t>(s[k] - '0');
          if (v > (UINT64_MAX - d) / 10) overflow = true;
          v = v * 10 + d;
        }
      }
    }
    if (overflow || v > static_cast<uint64_t>(INT64_MAX)) lex_fail(line_, "integer literal too large");
    Token t{Tok::Int, line_, std::string(s.substr(pos_, e - pos_))};
    t.ival = static_cast<int64_t>(v);
    tokens_.push_back(std::move(t));
    pos_ = e;
  }

  void string_literal() {
    const std::string_view s = src_;
    char q = s[pos_];
    size_t p = pos_ + 1;
    while (p < s.size() && s[p] != q) p += (s[p] == '\\' && p + 1 < s.size()) ? 2 : 1;
    if (p >= s.size()) lex_fail(line_, "unterminated string literal");
    int start_line = line_;
    count_lines(pos_, p);
    tokens_.push_back(Token{Tok::String, start_line, decode_string(s.substr(pos_ + 1, p - pos_ - 1), start_line)});
    pos_ = p + 1;
  }

  void operator_token(std::string& brackets) {
    const std::string_view s = src_;
    static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwo) {
      if (s.compare(pos_, 2, op) == 0) {
        tokens_.push_back(Token{Tok::Op, line_, std::string(op)});
        pos_ += 2;
        return;
      }
    }
    char c = s[pos_];
    static constexpr std::string_view kOne = "+-/*%~[](){}<>=.:|,;";
    if (kOne.find(c) == std::string_view::npos) {
      std::string shown = c >= 0x20 && c < 0x7F ? std::string(1, c) : "\\x" + std::to_string(static_cast<unsigned char>(c));
      lex_fail(line_, "unexpected character '" + shown + "'");
    }
    if (c == '(' || c == '[' || c == '{') {
      brackets += c == '(' ? ')' : c == '[' ? ']' : '}';
      if (brackets.size() > static_cast<size_t>(kMaxParseDepth)) lex_fail(line_, "brackets nested too deeply");
    } else if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty()) lex_fail(line_, std::string("unexpected '") + c + "'");
      if (brackets.back() != c) lex_fail(line_, std::string("unexpected '") + c + "', expected '" + brackets.back() + "'");
      brackets.pop_back();
    }
    tokens_.push_back(Token{Tok::Op, line_, std::string(1, c)});
    ++pos_;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the last thing consumed ended a line (for lstrip_blocks)
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) { return Lexer(source).run(); }

}  // namespace lokal::jinja::detail
