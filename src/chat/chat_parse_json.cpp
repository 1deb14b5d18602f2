// chat/chat_parse_json.cpp - JSON syntax scanning and JSON/Python-literal helpers of the chat output parser.
#include <algorithm>
#include <cctype>

#include "chat/chat_parse_internal.h"

namespace lokal::chat_parse_detail {

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && is_ws(s[b])) ++b;
  while (e > b && is_ws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

void JsonScanner::value_done() {
  if (stack_.empty()) {
    st_ = St::Done;
    end_ = pos_;
  } else {
    st_ = St::After;
  }
}

JsonScan JsonScanner::scan(std::string_view t) {
  while (pos_ < t.size() && st_ != St::Done && st_ != St::Bad) {
    const char c = t[pos_];
    switch (st_) {
      case St::Value:
        if (is_ws(c)) {
          ++pos_;
        } else if (c == '{' || c == '[') {
          if (stack_.size() >= kMaxJsonDepth) {
            st_ = St::Bad;
            break;
          }
          stack_.push_back(c);
          st_ = c == '{' ? St::ObjFirst : St::ArrFirst;
          ++pos_;
        } else if (c == '"') {
          key_ = false;
          st_ = St::Str;
          ++pos_;
        } else if (c == '-' || is_digit(c)) {
          st_ = St::Num;
          sub_ = c == '-' ? 0 : c == '0' ? 1 : 2;
          ++pos_;
        } else if (c == 't' || c == 'f' || c == 'n') {
          lit_ = c == 't' ? "true" : c == 'f' ? "false" : "null";
          sub_ = 1;
          st_ = St::Lit;
          ++pos_;
        } else {
          st_ = St::Bad;
        }
        break;
      case St::ObjFirst:
      case St::ObjKey:
        if (is_ws(c)) {
          ++pos_;
        } else if (c == '"') {
          key_ = true;
          st_ = St::Str;
          ++pos_;
        } else if (c == '}' && st_ == St::ObjFirst) {
          stack_.pop_back();
          ++pos_;
          value_done();
        } else {
          st_ = St::Bad;
        }
        break;
      case St::Colon:
        if (is_ws(c)) {
          ++pos_;
        } else if (c == ':') {
          st_ = St::Value;
          ++pos_;
        } else {
          st_ = St::Bad;
        }
        break;
      case St::ArrFirst:
        if (is_ws(c)) {
          ++pos_;
        } else if (c == ']') {
          stack_.pop_back();
          ++pos_;
          value_done();
        } else {
          st_ = St::Value;  // reprocess c as a value
        }
        break;
      case St::After:
        if (is_ws(c)) {
          ++pos_;
        } else if (c == ',') {
          st_ = stack_.back() == '{' ? St::ObjKey : St::Value;
          ++pos_;
        } else if ((c == '}' && stack_.back() == '{') || (c == ']' && stack_.back() == '[')) {
          stack_.pop_back();
          ++pos_;
          value_done();
        } else {
          st_ = St::Bad;
        }
        break;
      case St::Str: {
        // Skip ordinary bytes quickly.
        size_t i = pos_;
        while (i < t.size() && t[i] != '"' && t[i] != '\\' && static_cast<unsigned char>(t[i]) >= 0x20) ++i;
        pos_ = i;
        if (i == t.size()) break;
        if (t[i] == '"') {
          ++pos_;
          if (key_) {
            st_ = St::Colon;
          } else {
            value_done();
          }
        } else if (t[i] == '\\') {
          st_ = St::Esc;
          ++pos_;
        } else {
          st_ = St::Bad;  // raw control character
        }
        break;
      }
      case St::Esc:
        if (c == 'u') {
          st_ = St::Hex;
          sub_ = 4;
          ++pos_;
        } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
          st_ = St::Str;
          ++pos_;
        } else {
          st_ = St::Bad;
        }
        break;
      case St::Hex:
        if (!is_hex(c)) {
          st_ = St::Bad;
          break;
        }
        ++pos_;
        if (--sub_ == 0) st_ = St::Str;
        break;
      case St::Num: {
        // 0 after '-', 1 after a leading '0', 2 integer digits, 3 after '.', 4 fraction digits, 5 after 'e',
        // 6 after the exponent's sign, 7 exponent digits.
        const bool d = is_digit(c);
        const bool e = c == 'e' || c == 'E';
        int next = -1;  // -1: the number ended before c; -2: invalid
        switch (sub_) {
          case 0: next = c == '0' ? 1 : d ? 2 : -2; break;
          case 1: next = c == '.' ? 3 : e ? 5 : -1; break;
          case 2: next = d ? 2 : c == '.' ? 3 : e ? 5 : -1; break;
          case 3: next = d ? 4 : -2; break;
          case 4: next = d ? 4 : e ? 5 : -1; break;
          case 5: next = (c == '+' || c == '-') ? 6 : d ? 7 : -2; break;
          case 6: next = d ? 7 : -2; break;
          default: next = d ? 7 : -1; break;
        }
        if (next == -2) {
          st_ = St::Bad;
        } else if (next == -1) {
          value_done();  // c is looked at again in the next state
        } else {
          sub_ = static_cast<std::uint8_t>(next);
          ++pos_;
        }
        break;
      }
      case St::Lit:
        if (c != lit_[sub_]) {
          st_ = St::Bad;
          break;
        }
        ++pos_;
        if (lit_[++sub_] == '\0') value_done();
        break;
      case St::Done:
      case St::Bad: break;
    }
  }
  if (st_ == St::Done) return {JsonStatus::Complete, end_};
  if (st_ == St::Bad) return {JsonStatus::Invalid, pos_};
  return {JsonStatus::Incomplete, 0};
}

JsonScan JsonCache::scan(std::string_view text, std::uint64_t abs_start) {
  for (auto& e : entries_)
    if (e.start == abs_start) return e.scanner.scan(text);
  if (entries_.size() >= 32) entries_.erase(entries_.begin());
  entries_.push_back({abs_start, JsonScanner()});
  return entries_.back().scanner.scan(text);
}

void JsonCache::drop_before(std::uint64_t abs) {
  std::erase_if(entries_, [&](const Entry& e) { return e.start < abs; });
}

std::optional<ojson> parse_json(std::string_view text) {
  try {
    ojson j = ojson::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return std::nullopt;
    return j;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::string dump_compact(const ojson& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

std::optional<std::string> arguments_text(const ojson* v) {
  if (!v || v->is_null()) return std::string("{}");
  if (v->is_object()) return dump_compact(*v);
  if (v->is_string()) {
    const std::string_view inner = trim(v->get_ref<const std::string&>());
    const JsonScan sc = scan_json(inner);
    if (inner.empty() || inner[0] != '{' || sc.status != JsonStatus::Complete || sc.end != inner.size())
      return std::nullopt;
    auto j = parse_json(inner);
    if (!j || !j->is_object()) return std::nullopt;
    return dump_compact(*j);
  }
  return std::nullopt;
}

// ---- Python literal call: name.call(key=value, ...) ----

namespace {

bool ident_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

size_t read_ident(std::string_view s, size_t i) {
  if (i >= s.size() || !ident_start(s[i])) return i;
  while (i < s.size() && ident_char(s[i])) ++i;
  return i;
}

// A Python string literal ('...' or "...", common backslash escapes) at s[i]; returns the index after it.
std::optional<size_t> read_py_string(std::string_view s, size_t i, std::string& out) {
  const char q = s[i++];
  while (i < s.size()) {
    const char c = s[i++];
    if (c == q) return i;
    if (c == '\n') return std::nullopt;
    if (c != '\\') {
      out += c;
      continue;
    }
    if (i >= s.size()) return std::nullopt;
    const char e = s[i++];
    switch (e) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '0': out += '\0'; break;
      case '\\':
      case '\'':
      case '"': out += e; break;
      default:
        out += '\\';
        out += e;
        break;
    }
  }
  return std::nullopt;
}

std::optional<size_t> read_py_value(std::string_view s, size_t i, ojson& out) {
  if (i >= s.size()) return std::nullopt;
  if (s[i] == '"' || s[i] == '\'') {
    std::string str;
    auto e = read_py_string(s, i, str);
    if (!e) return std::nullopt;
    out = std::move(str);
    return e;
  }
  const size_t w = read_ident(s, i);
  if (w > i) {
    const std::string_view word = s.substr(i, w - i);
    if (word == "True" || word == "true")
      out = true;
    else if (word == "False" || word == "false")
      out = false;
    else if (word == "None" || word == "null")
      out = nullptr;
    else
      return std::nullopt;
    return w;
  }
  // A number: JSON number syntax, with an optional leading '+'.
  size_t j = i;
  if (s[j] == '+' || s[j] == '-') ++j;
  const size_t num_start = s[i] == '+' ? i + 1 : i;
  while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.' || s[j] == 'e' || s[j] == 'E' ||
                          ((s[j] == '+' || s[j] == '-') && (s[j - 1] == 'e' || s[j - 1] == 'E'))))
    ++j;
  if (j == num_start) return std::nullopt;
  std::string num(s.substr(num_start, j - num_start));
  num += ' ';  // lets the scanner see the number's end
  const JsonScan sc = scan_json(num);
  if (sc.status != JsonStatus::Complete || sc.end != num.size() - 1) return std::nullopt;
  auto v = parse_json(std::string_view(num).substr(0, sc.end));
  if (!v || !v->is_number()) return std::nullopt;
  out = std::move(*v);
  return j;
}

}  // namespace

std::optional<RawCall> parse_builtin_call(std::string_view code) {
  const std::string_view s = trim(code);
  size_t i = read_ident(s, 0);
  if (i == 0) return std::nullopt;
  RawCall call;
  call.name = std::string(s.substr(0, i));
  i = skip_ws(s, i);
  if (i >= s.size() || s[i] != '.') return std::nullopt;
  i = skip_ws(s, i + 1);
  if (s.substr(i, 4) != "call") return std::nullopt;
  i = skip_ws(s, i + 4);
  if (i >= s.size() || s[i] != '(') return std::nullopt;
  i = skip_ws(s, i + 1);
  ojson args = ojson::object();
  while (true) {
    if (i < s.size() && s[i] == ')') break;
    const size_t k = read_ident(s, i);
    if (k == i) return std::nullopt;
    const std::string key(s.substr(i, k - i));
    i = skip_ws(s, k);
    if (i >= s.size() || s[i] != '=') return std::nullopt;
    i = skip_ws(s, i + 1);
    ojson value;
    auto e = read_py_value(s, i, value);
    if (!e) return std::nullopt;
    args[key] = std::move(value);
    i = skip_ws(s, *e);
    if (i < s.size() && s[i] == ',') {
      i = skip_ws(s, i + 1);
      continue;
    }
    if (i < s.size() && s[i] == ')') break;
    return std::nullopt;
  }
  if (i + 1 != s.size()) return std::nullopt;  // something after ')'
  call.arguments = dump_compact(args);
  return call;
}

}  // namespace lokal::chat_parse_detail
