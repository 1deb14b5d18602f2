// chat/jinja_strings.cpp - python's string operations (code-point aware, like python's str), the methods of
// str, dict, list and loop/cycler values, and string formatting (str.format and "fmt % args").
//
// Methods that would modify a value (list.append, dict.update, ...) are blocked like jinja2's
// ImmutableSandboxedEnvironment does: looking them up gives an Undefined that fails as a security error when
// called. Every operation that builds or scans a string charges the render's Budget.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string_view>

#include "chat/jinja_impl.h"

namespace lokal::jinja::detail {

enum class MethodId : uint8_t {
  StrStrip, StrLstrip, StrRstrip, StrSplit, StrRsplit, StrSplitlines, StrStartswith, StrEndswith, StrUpper,
  StrLower, StrTitle, StrCapitalize, StrSwapcase, StrCasefold, StrReplace, StrFind, StrRfind, StrIndex, StrRindex,
  StrCount, StrJoin, StrIsalpha, StrIsdigit, StrIsalnum, StrIsspace, StrIslower, StrIsupper, StrIstitle,
  StrCenter, StrLjust, StrRjust, StrZfill, StrFormat, StrRemoveprefix, StrRemovesuffix, StrPartition,
  StrRpartition,
  DictItems, DictKeys, DictValues, DictGet, DictCopy,
  ListCount, ListIndex, ListCopy,
  LoopCycle, LoopChanged, CyclerNext, CyclerReset,
};

namespace {

Value bound_method(const Value& self, MethodId id) {
  auto* c = new CallableObj(CallableObj::Type::Method);
  Value v = Value::heap(Kind::Callable, c);
  c->self = self;
  c->method = id;
  c->depth = self.depth() + 1;
  check_depth(c->depth);
  return v;
}

template <class F>
std::string map_chars(std::string_view s, F&& f) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    uint32_t m = f(cp);
    if (m == cp) out.append(s, i, len);
    else utf8_append(out, m);
    i += len;
  }
  return out;
}

bool is_cased(uint32_t cp) { return upper_cp(cp) != cp || lower_cp(cp) != cp; }

bool is_line_break(uint32_t cp) {
  return cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D || cp == 0x1E ||
         cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

Value str_list(std::vector<std::string> parts, bool safe) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (auto& p : parts) items.push_back(Value::string(std::move(p), safe));
  return make_list(std::move(items));
}

// Byte range of the python slice s[start:end] (code point indices, negative from the end).
std::pair<size_t, size_t> byte_range(std::string_view s, const Value* start, const Value* end) {
  if ((!start || start->is_none()) && (!end || end->is_none())) return {0, s.size()};
  std::vector<size_t> off = char_offsets(s);
  auto n = static_cast<int64_t>(off.size() - 1);
  auto fix = [&](const Value* v, int64_t dflt) {
    if (!v || v->is_none()) return dflt;
    int64_t x = int_arg(v, dflt, "slice index");
    if (x < 0) x = std::max<int64_t>(0, x + n);
    return std::min(x, n);
  };
  int64_t b = fix(start, 0), e = fix(end, n);
  if (e < b) e = b;
  return {off[static_cast<size_t>(b)], off[static_cast<size_t>(e)]};
}

int64_t cp_index(std::string_view s, size_t byte_off) {
  return static_cast<int64_t>(utf8_length(s.substr(0, byte_off)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// String helpers (code-point aware)

std::string py_upper(std::string_view s) {
  std::string u = map_chars(s, upper_cp);
  for (size_t p = u.find("\xC3\x9F"); p != std::string::npos; p = u.find("\xC3\x9F", p)) u.replace(p, 2, "SS");  // ß
  return u;
}
std::string py_lower(std::string_view s) { return map_chars(s, lower_cp); }

std::string py_capitalize(std::string_view s) {
  bool first = true;
  return map_chars(s, [&](uint32_t cp) {
    uint32_t r = first ? upper_cp(cp) : lower_cp(cp);
    first = false;
    return r;
  });
}

// python's str.title(): a letter after a cased letter is lowercased, any other letter uppercased.
std::string py_title(std::string_view s) {
  bool prev_cased = false;
  return map_chars(s, [&](uint32_t cp) {
    uint32_t r = prev_cased ? lower_cp(cp) : upper_cp(cp);
    prev_cased = is_cased(cp);
    return r;
  });
}

// jinja2's |title: words begin after whitespace, '-', '(', '{', '[' or '<'.
std::string jinja_title(std::string_view s) {
  bool start = true;
  return map_chars(s, [&](uint32_t cp) {
    bool sep = is_space_cp(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
    uint32_t r = sep ? cp : (start ? upper_cp(cp) : lower_cp(cp));
    start = sep;
    return r;
  });
}

std::string py_swapcase(std::string_view s) {
  return map_chars(s, [](uint32_t cp) {
    uint32_t u = upper_cp(cp);
    return u != cp ? u : lower_cp(cp);
  });
}

// strip/lstrip/rstrip: whitespace, or the characters of `chars`.
std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  if (chars)
    for (size_t i = 0; i < chars->size();) {
      size_t len;
      set.push_back(utf8_decode(*chars, i, &len));
      i += len;
    }
  auto strip_it = [&](uint32_t cp) {
    return chars ? std::find(set.begin(), set.end(), cp) != set.end() : is_space_cp(cp);
  };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e) {
      size_t len;
      uint32_t cp = utf8_decode(s, b, &len);
      if (!strip_it(cp)) break;
      b += len;
    }
  if (right) {
    // Walk forward to find the last character that must stay.
    size_t keep_end = b;
    for (size_t i = b; i < e;) {
      size_t len;
      uint32_t cp = utf8_decode(s, i, &len);
      i += len;
      if (!strip_it(cp)) keep_end = i;
    }
    e = keep_end;
  }
  return std::string(s.substr(b, e - b));
}

// python's str.splitlines()
std::vector<std::string> py_splitlines(std::string_view s, bool keepends) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    if (!is_line_break(cp)) {
      i += len;
      continue;
    }
    size_t end = i + len;
    if (cp == '\r' && end < s.size() && s[end] == '\n') ++end;
    lines.emplace_back(s.substr(start, (keepends ? end : i) - start));
    start = i = end;
  }
  if (start < s.size()) lines.emplace_back(s.substr(start));
  return lines;
}

// python's str.split(sep=None, maxsplit=-1) / rsplit
std::vector<std::string> py_split(std::string_view s, const std::string* sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> parts;
  if (sep) {
    if (sep->empty()) fail("empty separator");
    if (!from_right) {
      size_t start = 0;
      while (maxsplit != 0) {
        size_t p = s.find(*sep, start);
        if (p == std::string_view::npos) break;
        parts.emplace_back(s.substr(start, p - start));
        start = p + sep->size();
        --maxsplit;
      }
      parts.emplace_back(s.substr(start));
    } else {
      size_t end = s.size();
      while (maxsplit != 0 && end >= sep->size()) {
        size_t p = s.rfind(*sep, end - sep->size());
        if (p == std::string_view::npos) break;
        parts.emplace_back(s.substr(p + sep->size(), end - p - sep->size()));
        end = p;
        --maxsplit;
      }
      parts.emplace_back(s.substr(0, end));
      std::reverse(parts.begin(), parts.end());
    }
    return parts;
  }
  // Whitespace runs; no empty strings.
  std::vector<std::pair<size_t, size_t>> words;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    if (is_space_cp(cp)) {
      i += len;
      continue;
    }
    size_t b = i;
    while (i < s.size()) {
      cp = utf8_decode(s, i, &len);
      if (is_space_cp(cp)) break;
      i += len;
    }
    words.emplace_back(b, i);
  }
  if (words.empty()) return parts;
  if (maxsplit < 0 || static_cast<size_t>(maxsplit) >= words.size() - 1) {
    for (auto [b, e] : words) parts.emplace_back(s.substr(b, e - b));
    return parts;
  }
  auto n = static_cast<size_t>(maxsplit);
  if (!from_right) {
    for (size_t k = 0; k < n; ++k) parts.emplace_back(s.substr(words[k].first, words[k].second - words[k].first));
    parts.emplace_back(s.substr(words[n].first));  // the rest, from the next word on, as it is
  } else {
    size_t first_kept = words.size() - n;
    parts.emplace_back(s.substr(0, words[first_kept - 1].second));
    for (size_t k = first_kept; k < words.size(); ++k)
      parts.emplace_back(s.substr(words[k].first, words[k].second - words[k].first));
  }
  return parts;
}

std::string py_replace(Interp& in, std::string_view s, std::string_view old, std::string_view rep, int64_t count) {
  std::string out;
  if (old.empty()) {
    // Inserted before every character and at the end.
    int64_t n = 0;
    for (size_t i = 0; i <= s.size();) {
      if (count < 0 || n < count) {
        out += rep;
        ++n;
      }
      if (i == s.size()) break;
      size_t nx = utf8_next(s, i);
      out.append(s, i, nx - i);
      i = nx;
      in.budget.check_size(out.size());
    }
  } else {
    size_t start = 0;
    int64_t n = 0;
    while (count < 0 || n < count) {
      size_t p = s.find(old, start);
      if (p == std::string_view::npos) break;
      out.append(s, start, p - start);
      out += rep;
      start = p + old.size();
      ++n;
      in.budget.check_size(out.size());
    }
    out.append(s, start);
  }
  in.budget.check_size(out.size());
  in.budget.charge_bytes(out.size());
  return out;
}

std::string pad(Interp& in, std::string_view s, int64_t width, const Value* fill, char align) {
  std::string f = " ";
  if (fill) {
    if (!fill->is_str() || utf8_length(fill->str()) != 1) fail("the fill character must be exactly one character long");
    f = fill->str();
  }
  auto len = static_cast<int64_t>(utf8_length(s));
  if (width <= len) return std::string(s);
  int64_t marg = width - len;
  if (marg > static_cast<int64_t>(in.limits.max_output_bytes)) in.budget.over_size(0);
  in.budget.check_size(static_cast<size_t>(marg) * f.size() + s.size());
  in.budget.charge_bytes(static_cast<size_t>(marg) * f.size());
  int64_t left = align == '<' ? 0 : align == '>' ? marg : marg / 2 + (marg & width & 1);
  std::string out;
  for (int64_t k = 0; k < left; ++k) out += f;
  out += s;
  for (int64_t k = 0; k < marg - left; ++k) out += f;
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Number parsing (python int() / float() of strings)

bool parse_py_int(std::string_view s, int base, int64_t* out) {
  std::string t = py_strip(s, nullptr, true, true);
  std::string_view v = t;
  bool neg = false;
  if (!v.empty() && (v[0] == '+' || v[0] == '-')) {
    neg = v[0] == '-';
    v.remove_prefix(1);
  }
  if (v.size() >= 2 && v[0] == '0') {
    char p = static_cast<char>(v[1] | 0x20);
    int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
    if (pb && (base == pb || base == 0)) {
      base = pb;
      v.remove_prefix(2);
      if (!v.empty() && v[0] == '_') v.remove_prefix(1);
    }
  }
  if (base == 0) base = 10;
  if (v.empty() || v.back() == '_') return false;
  uint64_t acc = 0;
  bool prev_us = true;
  for (char c : v) {
    if (c == '_') {
      if (prev_us) return false;
      prev_us = true;
      continue;
    }
    prev_us = false;
    char lc = static_cast<char>(c | 0x20);
    int d = (c >= '0' && c <= '9') ? c - '0' : (lc >= 'a' && lc <= 'z') ? lc - 'a' + 10 : 99;
    if (d >= base) return false;
    if (acc > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) return false;
    acc = acc * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  if (acc > static_cast<uint64_t>(INT64_MAX) + (neg ? 1 : 0)) return false;
  *out = neg ? static_cast<int64_t>(0 - acc) : static_cast<int64_t>(acc);
  return true;
}

bool parse_py_float(std::string_view s, double* out) {
  std::string t = py_strip(s, nullptr, true, true);
  std::string clean;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    if (c == '_') {
      if (i == 0 || i + 1 == t.size() || !isdigit(static_cast<unsigned char>(t[i - 1])) ||
          !isdigit(static_cast<unsigned char>(t[i + 1])))
        return false;
      continue;
    }
    clean += c;
  }
  std::string low = py_lower(clean);
  std::string_view body = low;
  bool neg = false;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    neg = body[0] == '-';
    body.remove_prefix(1);
  }
  if (body == "inf" || body == "infinity") {
    *out = neg ? -HUGE_VAL : HUGE_VAL;
    return true;
  }
  if (body == "nan") {
    *out = std::nan("");
    return true;
  }
  if (body.empty()) return false;
  for (char c : body)
    if (!(isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == '+' || c == '-')) return false;
  char* end = nullptr;
  *out = std::strtod(clean.c_str(), &end);
  return end && *end == '\0';
}

bool has_cased(std::string_view s, bool upper) {
  bool any = false;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    i += len;
    if (!is_cased(cp)) continue;
    if (upper ? lower_cp(cp) == cp && upper_cp(cp) != cp : upper_cp(cp) == cp && lower_cp(cp) != cp) return false;
    any = true;
  }
  return any;
}

// ---------------------------------------------------------------------------------------------------------------
// Methods

namespace {

struct MethodEntry {
  Kind kind;
  const char* name;
  MethodId id;
};
constexpr MethodEntry kMethods[] = {
    {Kind::Str, "strip", MethodId::StrStrip}, {Kind::Str, "lstrip", MethodId::StrLstrip},
    {Kind::Str, "rstrip", MethodId::StrRstrip}, {Kind::Str, "split", MethodId::StrSplit},
    {Kind::Str, "rsplit", MethodId::StrRsplit}, {Kind::Str, "splitlines", MethodId::StrSplitlines},
    {Kind::Str, "startswith", MethodId::StrStartswith}, {Kind::Str, "endswith", MethodId::StrEndswith},
    {Kind::Str, "upper", MethodId::StrUpper}, {Kind::Str, "lower", MethodId::StrLower},
    {Kind::Str, "title", MethodId::StrTitle}, {Kind::Str, "capitalize", MethodId::StrCapitalize},
    {Kind::Str, "swapcase", MethodId::StrSwapcase}, {Kind::Str, "casefold", MethodId::StrCasefold},
    {Kind::Str, "replace", MethodId::StrReplace}, {Kind::Str, "find", MethodId::StrFind},
    {Kind::Str, "rfind", MethodId::StrRfind}, {Kind::Str, "index", MethodId::StrIndex},
    {Kind::Str, "rindex", MethodId::StrRindex}, {Kind::Str, "count", MethodId::StrCount},
    {Kind::Str, "join", MethodId::StrJoin}, {Kind::Str, "isalpha", MethodId::StrIsalpha},
    {Kind::Str, "isdigit", MethodId::StrIsdigit}, {Kind::Str, "isnumeric", MethodId::StrIsdigit},
    {Kind::Str, "isdecimal", MethodId::StrIsdigit}, {Kind::Str, "isalnum", MethodId::StrIsalnum},
    {Kind::Str, "isspace", MethodId::StrIsspace}, {Kind::Str, "islower", MethodId::StrIslower},
    {Kind::Str, "isupper", MethodId::StrIsupper}, {Kind::Str, "istitle", MethodId::StrIstitle},
    {Kind::Str, "center", MethodId::StrCenter}, {Kind::Str, "ljust", MethodId::StrLjust},
    {Kind::Str, "rjust", MethodId::StrRjust}, {Kind::Str, "zfill", MethodId::StrZfill},
    {Kind::Str, "format", MethodId::StrFormat}, {Kind::Str, "removeprefix", MethodId::StrRemoveprefix},
    {Kind::Str, "removesuffix", MethodId::StrRemovesuffix}, {Kind::Str, "partition", MethodId::StrPartition},
    {Kind::Str, "rpartition", MethodId::StrRpartition},
    {Kind::Dict, "items", MethodId::DictItems}, {Kind::Dict, "keys", MethodId::DictKeys},
    {Kind::Dict, "values", MethodId::DictValues}, {Kind::Dict, "get", MethodId::DictGet},
    {Kind::Dict, "copy", MethodId::DictCopy},
    {Kind::List, "count", MethodId::ListCount}, {Kind::List, "index", MethodId::ListIndex},
    {Kind::List, "copy", MethodId::ListCopy},
};
constexpr const char* kListMutators[] = {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"};
constexpr const char* kDictMutators[] = {"pop", "popitem", "setdefault", "update", "clear"};

// python str.format (the parts templates use: fields by position, name, .attr and [key]; !r/!s; a format
// spec [[fill]align][sign][0][width][.precision][type]).
std::string format_spec(Interp& in, const Value& v, std::string_view spec) {
  if (spec.empty()) return to_str(v, in.budget);
  size_t i = 0;
  std::string fill = " ";
  char align = 0;
  auto is_align = [](char c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  size_t l0;
  utf8_decode(spec, 0, &l0);
  if (spec.size() > l0 && is_align(spec[l0])) {
    fill = std::string(spec.substr(0, l0));
    align = spec[l0];
    i = l0 + 1;
  } else if (is_align(spec[0])) {
    align = spec[0];
    i = 1;
  }
  char sign = '-';
  if (i < spec.size() && (spec[i] == '+' || spec[i] == '-' || spec[i] == ' ')) sign = spec[i++];
  if (i < spec.size() && spec[i] == '0') {
    if (!align) {
      fill = "0";
      align = '=';
    }
    ++i;
  }
  int64_t width = 0, prec = -1;
  while (i < spec.size() && isdigit(static_cast<unsigned char>(spec[i])) && width < 100000)
    width = width * 10 + (spec[i++] - '0');
  if (i < spec.size() && spec[i] == '.') {
    ++i;
    prec = 0;
    while (i < spec.size() && isdigit(static_cast<unsigned char>(spec[i])) && prec < 1000)
      prec = prec * 10 + (spec[i++] - '0');
  }
  char type = i < spec.size() ? spec[i++] : 0;
  if (i != spec.size()) fail("invalid format specifier '" + std::string(spec) + "'");
  std::string body;
  if (v.is_str() || (!v.is_number() && !type)) {
    if (type && type != 's') fail(std::string("unknown format code '") + type + "' for a string");
    body = to_str(v, in.budget);
    if (prec >= 0) {
      std::vector<size_t> off = char_offsets(body);
      if (static_cast<size_t>(prec) < off.size() - 1) body.resize(off[static_cast<size_t>(prec)]);
    }
    if (!align) align = '<';
  } else if (v.is_number()) {
    char buf[1100];
    bool is_float = v.is(Kind::Float) || (type && std::string_view("eEfFgG%").find(type) != std::string_view::npos);
    if (!is_float) {
      const char* f = type == 'x' ? "%llx" : type == 'X' ? "%llX" : type == 'o' ? "%llo" : "%lld";
      if (type == 'b') {
        uint64_t u = v.i() < 0 ? 0 - static_cast<uint64_t>(v.i()) : static_cast<uint64_t>(v.i());
        std::string bits;
        do {
          bits.insert(bits.begin(), static_cast<char>('0' + (u & 1)));
          u >>= 1;
        } while (u);
        body = (v.i() < 0 ? "-" : "") + bits;
      } else if (type == 'c') {
        utf8_append(body, static_cast<uint32_t>(v.i()) & 0x1FFFFF);
      } else if (type && type != 'd' && type != 'x' && type != 'X' && type != 'o' && type != 'n') {
        fail(std::string("unknown format code '") + type + "' for an integer");
      } else {
        long long x = v.i();
        std::snprintf(buf, sizeof buf, f, x < 0 ? -x : x);
        body = (x < 0 ? "-" : "") + std::string(buf);
      }
    } else {
      double d = v.as_double();
      if (!type) {
        if (prec < 0) {
          append_float(body, d);
        } else {
          std::snprintf(buf, sizeof buf, "%.*g", static_cast<int>(std::max<int64_t>(prec, 1)), d);
          body = buf;
        }
      } else if (type == '%') {
        std::snprintf(buf, sizeof buf, "%.*f%%", static_cast<int>(prec < 0 ? 6 : prec), d * 100);
        body = buf;
      } else {
        char f[8] = {'%', '.', '*', type, 0};
        std::snprintf(buf, sizeof buf, f, static_cast<int>(prec < 0 ? 6 : prec), d);
        body = buf;
      }
    }
    if (sign != '-' && !body.empty() && body[0] != '-') body.insert(body.begin(), sign);
    if (!align) align = '>';
  } else {
    fail(std::string("unsupported format string passed to ") + type_name(v) + ".__format__");
  }
  auto len = static_cast<int64_t>(utf8_length(body));
  if (width <= len) return body;
  in.budget.check_size(static_cast<size_t>(width) * fill.size());
  int64_t marg = width - len;
  if (align == '=') {
    size_t signs = (!body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) ? 1 : 0;
    std::string padding;
    for (int64_t k = 0; k < marg; ++k) padding += fill;
    return body.substr(0, signs) + padding + body.substr(signs);
  }
  int64_t left = align == '<' ? 0 : align == '>' ? marg : marg / 2;
  std::string out;
  for (int64_t k = 0; k < left; ++k) out += fill;
  out += body;
  for (int64_t k = 0; k < marg - left; ++k) out += fill;
  return out;
}

std::string str_format(Interp& in, const std::string& fmt, const Args& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '}') {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') ++i;
      else fail("Single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    size_t close = fmt.find('}', i + 1);
    if (close == std::string::npos) fail("Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, close - i - 1);
    if (field.find('{') != std::string::npos) fail("nested replacement fields are not supported in format()");
    i = close;
    std::string spec, conv;
    size_t colon = field.find(':');
    if (colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    size_t bang = field.find('!');
    if (bang != std::string::npos) {
      conv = field.substr(bang + 1);
      field.resize(bang);
    }
    // The first part: index or name; then .attr / [key] parts.
    size_t p = 0;
    while (p < field.size() && field[p] != '.' && field[p] != '[') ++p;
    std::string head = field.substr(0, p);
    Value v;
    if (head.empty() || std::all_of(head.begin(), head.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      size_t idx = head.empty() ? auto_idx++ : static_cast<size_t>(std::strtoull(head.c_str(), nullptr, 10));
      if (idx >= a.pos.size()) fail("Replacement index " + std::to_string(idx) + " out of range for positional args tuple");
      v = a.pos[idx];
    } else {
      bool found = false;
      for (const auto& [k, x] : a.kw)
        if (k == head) {
          v = x;
          found = true;
        }
      if (!found) fail("KeyError: '" + head + "'");
    }
    while (p < field.size()) {
      if (field[p] == '.') {
        size_t q = p + 1;
        while (q < field.size() && field[q] != '.' && field[q] != '[') ++q;
        v = in.get_attr(v, Value::string(field.substr(p + 1, q - p - 1)));
        p = q;
      } else {
        size_t q = field.find(']', p);
        if (q == std::string::npos) fail("Missing ']' in format string");
        std::string key = field.substr(p + 1, q - p - 1);
        int64_t idx;
        bool digits = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
        v = in.get_item(v, digits && parse_py_int(key, 10, &idx) ? Value::integer(idx) : Value::string(key));
        p = q + 1;
      }
    }
    if (v.is_undefined()) in.undefined_error(v);
    if (conv == "r" || conv == "a") {
      std::string r;
      append_repr(r, v, in.budget);
      v = Value::string(std::move(r));
    } else if (conv == "s") {
      v = Value::string(to_str(v, in.budget));
    } else if (!conv.empty()) {
      fail("Unknown conversion specifier " + conv);
    }
    out += format_spec(in, v, spec);
    in.budget.check_size(out.size());
  }
  in.budget.charge_bytes(out.size());
  return out;
}

bool all_chars(std::string_view s, bool (*pred)(uint32_t)) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    if (!pred(utf8_decode(s, i, &len))) return false;
    i += len;
  }
  return true;
}

bool matches_affix(const Value& arg, std::string_view s, bool prefix) {
  auto one = [&](const Value& x) {
    if (!x.is_str()) fail(std::string(prefix ? "startswith" : "endswith") + " first arg must be str or a tuple of str, not " + type_name(x));
    const std::string& p = x.str();
    if (p.size() > s.size()) return false;
    return prefix ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (arg.is_list() && arg.list().tuple) {
    for (const Value& x : arg.list().items)
      if (one(x)) return true;
    return false;
  }
  return one(arg);
}

Value str_method(Interp& in, const Value& self, MethodId id, Args& a) {
  const std::string& s = self.str();
  const bool safe = self.is_safe();
  auto opt_chars = [&](const Bound& b, std::string& buf) -> const std::string* {
    if (!b[0] || b[0]->is_none()) return nullptr;
    if (!b[0]->is_str()) fail("strip arg must be None or str");
    buf = b[0]->str();
    return &buf;
  };
  std::string buf;
  switch (id) {
    case MethodId::StrStrip: { Bound b = bind(a, "strip", {"chars"}); return Value::string(py_strip(s, opt_chars(b, buf), true, true), safe); }
    case MethodId::StrLstrip: { Bound b = bind(a, "lstrip", {"chars"}); return Value::string(py_strip(s, opt_chars(b, buf), true, false), safe); }
    case MethodId::StrRstrip: { Bound b = bind(a, "rstrip", {"chars"}); return Value::string(py_strip(s, opt_chars(b, buf), false, true), safe); }
    case MethodId::StrSplit:
    case MethodId::StrRsplit: {
      Bound b = bind(a, id == MethodId::StrSplit ? "split" : "rsplit", {"sep", "maxsplit"});
      const std::string* sep = nullptr;
      if (b[0] && !b[0]->is_none()) {
        if (!b[0]->is_str()) fail(std::string("must be str or None, not ") + type_name(*b[0]));
        sep = &b[0]->str();
      }
      auto parts = py_split(s, sep, int_arg(b[1], -1, "maxsplit"), id == MethodId::StrRsplit);
      in.budget.charge(parts.size());
      return str_list(std::move(parts), safe);
    }
    case MethodId::StrSplitlines: {
      Bound b = bind(a, "splitlines", {"keepends"});
      return str_list(py_splitlines(s, bool_arg(b[0], false)), safe);
    }
    case MethodId::StrStartswith:
    case MethodId::StrEndswith: {
      bool pre = id == MethodId::StrStartswith;
      Bound b = bind(a, pre ? "startswith" : "endswith", {"prefix", "start", "end"});
      if (!b[0]) fail(std::string(pre ? "startswith" : "endswith") + "() takes at least 1 argument");
      auto [lo, hi] = byte_range(s, b[1], b[2]);
      return Value::boolean(matches_affix(*b[0], std::string_view(s).substr(lo, hi - lo), pre));
    }
    case MethodId::StrUpper: no_args(a, "upper"); return Value::string(py_upper(s), safe);
    case MethodId::StrLower: no_args(a, "lower"); return Value::string(py_lower(s), safe);
    case MethodId::StrCasefold: no_args(a, "casefold"); return Value::string(py_lower(s), safe);
    case MethodId::StrTitle: no_args(a, "title"); return Value::string(py_title(s), safe);
    case MethodId::StrCapitalize: no_args(a, "capitalize"); return Value::string(py_capitalize(s), safe);
    case MethodId::StrSwapcase: no_args(a, "swapcase"); return Value::string(py_swapcase(s), safe);
    case MethodId::StrReplace: {
      Bound b = bind(a, "replace", {"old", "new", "count"});
      if (!b[0] || !b[1] || !b[0]->is_str() || !b[1]->is_str()) fail("replace() arguments must be strings");
      std::string rep = safe && !b[1]->is_safe() ? html_escape(b[1]->str()) : b[1]->str();
      std::string old = safe && !b[0]->is_safe() ? html_escape(b[0]->str()) : b[0]->str();
      return Value::string(py_replace(in, s, old, rep, int_arg(b[2], -1, "count")), safe);
    }
    case MethodId::StrFind:
    case MethodId::StrRfind:
    case MethodId::StrIndex:
    case MethodId::StrRindex:
    case MethodId::StrCount: {
      Bound b = bind(a, "find", {"sub", "start", "end"});
      if (!b[0] || !b[0]->is_str()) fail("must be str");
      const std::string& sub = b[0]->str();
      auto [lo, hi] = byte_range(s, b[1], b[2]);
      std::string_view region = std::string_view(s).substr(lo, hi - lo);
      if (id == MethodId::StrCount) {
        if (sub.empty()) return Value::integer(static_cast<int64_t>(utf8_length(region)) + 1);
        int64_t n = 0;
        for (size_t p = region.find(sub); p != std::string_view::npos; p = region.find(sub, p + sub.size())) ++n;
        return Value::integer(n);
      }
      bool rev = id == MethodId::StrRfind || id == MethodId::StrRindex;
      size_t p = rev ? region.rfind(sub) : region.find(sub);
      if (p == std::string_view::npos) {
        if (id == MethodId::StrIndex || id == MethodId::StrRindex) fail("substring not found");
        return Value::integer(-1);
      }
      return Value::integer(cp_index(s, lo + p));
    }
    case MethodId::StrJoin: {
      Bound b = bind(a, "join", {"iterable"});
      if (!b[0]) fail("join() takes exactly one argument");
      std::string out;
      size_t k = 0;
      for (const Value& x : in.iterate(*b[0])) {
        if (!x.is_str())
          fail("sequence item " + std::to_string(k) + ": expected str instance, " + type_name(x) + " found");
        if (k++) out += safe ? s : s;
        out += safe && !x.is_safe() ? html_escape(x.str()) : x.str();
        in.budget.check_size(out.size());
      }
      in.budget.charge_bytes(out.size());
      return Value::string(std::move(out), safe);
    }
    case MethodId::StrIsalpha: no_args(a, "isalpha"); return Value::boolean(all_chars(s, is_alpha_cp));
    case MethodId::StrIsdigit: no_args(a, "isdigit"); return Value::boolean(all_chars(s, is_digit_cp));
    case MethodId::StrIsalnum:
      no_args(a, "isalnum");
      return Value::boolean(all_chars(s, [](uint32_t c) { return is_alpha_cp(c) || is_digit_cp(c); }));
    case MethodId::StrIsspace: no_args(a, "isspace"); return Value::boolean(all_chars(s, is_space_cp));
    case MethodId::StrIslower: no_args(a, "islower"); return Value::boolean(has_cased(s, false));
    case MethodId::StrIsupper: no_args(a, "isupper"); return Value::boolean(has_cased(s, true));
    case MethodId::StrIstitle: no_args(a, "istitle"); return Value::boolean(!s.empty() && py_title(s) == s && has_cased(s, false) == false && std::any_of(s.begin(), s.end(), [](char c) { return c != ' '; }) && is_cased(upper_cp(static_cast<unsigned char>(s[0]))));
    case MethodId::StrCenter:
    case MethodId::StrLjust:
    case MethodId::StrRjust: {
      Bound b = bind(a, "center", {"width", "fillchar"});
      char align = id == MethodId::StrCenter ? '^' : id == MethodId::StrLjust ? '<' : '>';
      return Value::string(pad(in, s, int_arg(b[0], 0, "width"), b[1], align), safe);
    }
    case MethodId::StrZfill: {
      Bound b = bind(a, "zfill", {"width"});
      int64_t w = int_arg(b[0], 0, "width");
      auto len = static_cast<int64_t>(utf8_length(s));
      if (w <= len) return self;
      in.budget.check_size(static_cast<size_t>(w));
      size_t sign = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
      return Value::string(s.substr(0, sign) + std::string(static_cast<size_t>(w - len), '0') + s.substr(sign), safe);
    }
    case MethodId::StrFormat: return Value::string(str_format(in, s, a), safe);
    case MethodId::StrRemoveprefix:
    case MethodId::StrRemovesuffix: {
      Bound b = bind(a, "removeprefix", {"affix"});
      if (!b[0] || !b[0]->is_str()) fail("removeprefix() argument must be str");
      const std::string& p = b[0]->str();
      if (id == MethodId::StrRemoveprefix && s.compare(0, p.size(), p) == 0) return Value::string(s.substr(p.size()), safe);
      if (id == MethodId::StrRemovesuffix && !p.empty() && s.size() >= p.size() &&
          s.compare(s.size() - p.size(), p.size(), p) == 0)
        return Value::string(s.substr(0, s.size() - p.size()), safe);
      return self;
    }
    case MethodId::StrPartition:
    case MethodId::StrRpartition: {
      Bound b = bind(a, "partition", {"sep"});
      if (!b[0] || !b[0]->is_str() || b[0]->str().empty()) fail("partition() requires a non-empty separator");
      const std::string& sep = b[0]->str();
      bool rev = id == MethodId::StrRpartition;
      size_t p = rev ? s.rfind(sep) : s.find(sep);
      std::vector<Value> parts;
      if (p == std::string::npos) {
        if (rev) parts = {Value::string(""), Value::string(""), self};
        else parts = {self, Value::string(""), Value::string("")};
      } else {
        parts = {Value::string(s.substr(0, p), safe), Value::string(sep, safe),
                 Value::string(s.substr(p + sep.size()), safe)};
      }
      return make_list(std::move(parts), true);
    }
    default: break;
  }
  fail("bad string method");
}

}  // namespace

bool lookup_method(const Value& obj, std::string_view name, Value* out) {
  Kind k = obj.kind();
  if (k == Kind::Object) {
    const ObjectObj& o = obj.object();
    MethodId id;
    if (o.type == ObjectObj::Type::Loop && name == "cycle") id = MethodId::LoopCycle;
    else if (o.type == ObjectObj::Type::Loop && name == "changed") id = MethodId::LoopChanged;
    else if (o.type == ObjectObj::Type::Cycler && name == "next") id = MethodId::CyclerNext;
    else if (o.type == ObjectObj::Type::Cycler && name == "reset") id = MethodId::CyclerReset;
    else return false;
    *out = bound_method(obj, id);
    return true;
  }
  if (k != Kind::Str && k != Kind::List && k != Kind::Dict) return false;
  for (const MethodEntry& m : kMethods)
    if (m.kind == k && name == m.name) {
      if (k == Kind::List && obj.list().tuple && m.id == MethodId::ListCopy) break;  // tuples have no copy()
      *out = bound_method(obj, m.id);
      return true;
    }
  auto blocked = [&](const char* const* names, size_t n) {
    for (size_t i = 0; i < n; ++i)
      if (name == names[i]) return true;
    return false;
  };
  if ((k == Kind::List && !obj.list().tuple && blocked(kListMutators, std::size(kListMutators))) ||
      (k == Kind::Dict && blocked(kDictMutators, std::size(kDictMutators)))) {
    *out = Value::undefined("access to attribute '" + std::string(name) + "' of '" + type_name(obj) +
                                "' object is unsafe (templates cannot modify lists or dicts; use namespace() or "
                                "build a new value with +)",
                            true);
    return true;
  }
  return false;
}

Value call_method(Interp& in, const Value& self, MethodId id, Args& a) {
  in.budget.charge(1);
  in.charge_value(self);
  switch (id) {
    case MethodId::DictItems: {
      no_args(a, "items");
      std::vector<Value> out;
      for (const auto& [k, v] : self.dict().items) out.push_back(make_list({k, v}, true));
      in.budget.charge(out.size());
      return make_list(std::move(out));
    }
    case MethodId::DictKeys:
    case MethodId::DictValues: {
      no_args(a, id == MethodId::DictKeys ? "keys" : "values");
      std::vector<Value> out;
      for (const auto& [k, v] : self.dict().items) out.push_back(id == MethodId::DictKeys ? k : v);
      in.budget.charge(out.size());
      return make_list(std::move(out));
    }
    case MethodId::DictGet: {
      Bound b = bind(a, "get", {"key", "default"});
      if (!b[0]) fail("get expected at least 1 argument, got 0");
      if (const Value* v = self.dict().find(*b[0])) return *v;
      return b[1] ? *b[1] : Value::none();
    }
    case MethodId::DictCopy: no_args(a, "copy"); return self;
    case MethodId::ListCopy: no_args(a, "copy"); return self;
    case MethodId::ListCount: {
      Bound b = bind(a, "count", {"value"});
      if (!b[0]) fail("count() takes exactly one argument");
      int64_t n = 0;
      in.budget.charge(self.list().items.size());
      for (const Value& x : self.list().items) n += equals(x, *b[0], &in.budget);
      return Value::integer(n);
    }
    case MethodId::ListIndex: {
      Bound b = bind(a, "index", {"value"});
      if (!b[0]) fail("index expected at least 1 argument, got 0");
      const auto& items = self.list().items;
      for (size_t i = 0; i < items.size(); ++i)
        if (equals(items[i], *b[0], &in.budget)) return Value::integer(static_cast<int64_t>(i));
      fail("value is not in list");
    }
    case MethodId::LoopCycle: {
      if (!a.kw.empty()) fail("cycle() takes no keyword arguments");
      if (a.pos.empty()) fail("no items for cycling given");
      const ObjectObj& o = self.object();
      return a.pos[static_cast<size_t>(o.index0) % a.pos.size()];
    }
    case MethodId::LoopChanged: {
      ObjectObj& o = self.object();
      Value now = make_list(a.pos, true);
      bool changed = !o.changed_called || !equals(o.last_changed, now, &in.budget);
      if (changed && o.active) {  // (after its loop, a loop object keeps no references: see run_loop)
        o.changed_called = true;
        o.last_changed = now;
      }
      return Value::boolean(changed);
    }
    case MethodId::CyclerNext: {
      no_args(a, "next");
      ObjectObj& o = self.object();
      const auto& items = o.items.list().items;
      Value rv = items[static_cast<size_t>(o.pos)];
      o.pos = (o.pos + 1) % static_cast<int64_t>(items.size());
      return rv;
    }
    case MethodId::CyclerReset: no_args(a, "reset"); self.object().pos = 0; return Value::none();
    default: return str_method(in, self, id, a);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// printf-style formatting: "fmt % args"

Value percent_format(Interp& in, const Value& fmt_v, const Value& args) {
  const std::string& fmt = fmt_v.str();
  const bool safe = fmt_v.is_safe();
  std::vector<Value> values;
  const Value* mapping = nullptr;
  if (args.is_list() && args.list().tuple) values = args.list().items;
  else if (args.is_dict()) mapping = &args;
  else values.push_back(args);
  if (mapping) values.push_back(args);  // "%s" % {...} prints the dict
  size_t next = 0;
  auto take = [&]() -> const Value& {
    if (next >= values.size()) fail("not enough arguments for format string");
    return values[next++];
  };
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) fail("incomplete format");
    if (fmt[i] == '%') {
      out += '%';
      continue;
    }
    const Value* arg = nullptr;
    Value keyed;
    if (fmt[i] == '(') {
      size_t close = fmt.find(')', i);
      if (close == std::string::npos) fail("incomplete format key");
      if (!mapping) fail("format requires a mapping");
      std::string key = fmt.substr(i + 1, close - i - 1);
      const Value* v = mapping->dict().find(std::string_view(key));
      if (!v) fail("KeyError: '" + key + "'");
      keyed = *v;
      arg = &keyed;
      i = close + 1;
    }
    std::string flags;
    while (i < fmt.size() && std::string_view("-+ #0").find(fmt[i]) != std::string_view::npos) flags += fmt[i++];
    auto number = [&]() -> int64_t {
      if (i < fmt.size() && fmt[i] == '*') {
        ++i;
        const Value& w = take();
        if (!w.is_int_like()) fail("* wants int");
        return w.i();
      }
      int64_t n = 0;
      while (i < fmt.size() && isdigit(static_cast<unsigned char>(fmt[i])) && n < 100000) n = n * 10 + (fmt[i++] - '0');
      return n;
    };
    int64_t width = number(), prec = -1;
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      prec = std::min<int64_t>(number(), 1000);
    }
    while (i < fmt.size() && (fmt[i] == 'h' || fmt[i] == 'l' || fmt[i] == 'L')) ++i;
    if (i >= fmt.size()) fail("incomplete format");
    char conv = fmt[i];
    const Value& v = arg ? *arg : take();
    std::string body;
    char buf[1200];
    switch (conv) {
      case 's': case 'r': case 'a': {
        if (conv == 's') body = to_str(v, in.budget);
        else append_repr(body, v, in.budget);
        if (safe && !v.is_safe()) body = html_escape(body);
        if (prec >= 0) {
          std::vector<size_t> off = char_offsets(body);
          if (static_cast<size_t>(prec) < off.size() - 1) body.resize(off[static_cast<size_t>(prec)]);
        }
        break;
      }
      case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': case 'c': {
        int64_t x;
        if (v.is_int_like()) x = v.i();
        else if (v.is(Kind::Float) && conv != 'c' && std::isfinite(v.f()) && std::fabs(v.f()) < 9.2e18)
          x = static_cast<int64_t>(v.f());
        else fail(std::string("%") + conv + " format: a number is required, not " + type_name(v));
        if (conv == 'c') {
          utf8_append(body, static_cast<uint32_t>(x) & 0x1FFFFF);
          break;
        }
        // Numbers: printf does the padding (zero padding, '-' flag) itself.
        std::string f = "%" + flags + (width > 0 ? std::to_string(std::min<int64_t>(width, 1000)) : "") +
                        (prec >= 0 ? "." + std::to_string(prec) : "") +
                        (conv == 'x' ? "llx" : conv == 'X' ? "llX" : conv == 'o' ? "llo" : "lld");
        std::snprintf(buf, sizeof buf, f.c_str(), static_cast<long long>(x));
        body = buf;
        break;
      }
      case 'e': case 'E': case 'f': case 'F': case 'g': case 'G': {
        if (!v.is_number()) fail(std::string("must be real number, not ") + type_name(v));
        double d = v.as_double();
        if (std::fabs(d) >= 1e100 && (conv == 'f' || conv == 'F')) conv = conv == 'f' ? 'e' : 'E';  // bounded output
        std::string f = "%" + flags + (width > 0 ? std::to_string(std::min<int64_t>(width, 1000)) : "") + "." +
                        std::to_string(prec < 0 ? 6 : prec) + conv;
        std::snprintf(buf, sizeof buf, f.c_str(), d);
        body = buf;
        break;
      }
      default: fail(std::string("unsupported format character '") + conv + "'");
    }
    auto len = static_cast<int64_t>(utf8_length(body));
    if (width > len) {
      in.budget.check_size(static_cast<size_t>(width));
      std::string padding(static_cast<size_t>(width - len), ' ');
      body = flags.find('-') != std::string::npos ? body + padding : padding + body;
    }
    out += body;
    in.budget.check_size(out.size());
  }
  if (!mapping && next < values.size()) fail("not all arguments converted during string formatting");
  in.budget.charge_bytes(out.size());
  return Value::string(std::move(out), safe);
}

}  // namespace lokal::jinja::detail
