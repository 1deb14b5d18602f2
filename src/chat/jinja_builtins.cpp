// chat/jinja_builtins.cpp - jinja2's filters and tests, the globals chat templates use (range, namespace, dict,
// cycler, joiner, raise_exception, strftime_now), and the python methods of str, dict and list values.
//
// Each filter mirrors jinja2 3.1's implementation (filters.py) with the environment transformers uses
// (autoescape off, ImmutableSandboxedEnvironment), except `tojson`, which is transformers' json.dumps-based one.
// Filters that return generators in jinja2 (map, select, reverse, ...) return lists here, which behave the same
// in every use a template can make of them, except that they are also JSON serializable.
// Methods that would modify a value (list.append, dict.update, ...) are blocked like the immutable sandbox does.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
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

// ---------------------------------------------------------------------------------------------------------------
// Argument binding: python-style positional + keyword parameters.

struct Bound {
  std::vector<const Value*> v;  // nullptr = not given
  const Value* operator[](size_t i) const { return v[i]; }
};

Bound bind(const Args& a, const std::string& fname, std::initializer_list<const char*> names) {
  Bound b;
  b.v.assign(names.size(), nullptr);
  if (a.pos.size() > names.size())
    fail(fname + " takes at most " + std::to_string(names.size()) + " argument(s) (" +
         std::to_string(a.pos.size()) + " given)");
  for (size_t i = 0; i < a.pos.size(); ++i) b.v[i] = &a.pos[i];
  for (const auto& [k, v] : a.kw) {
    size_t i = 0;
    for (const char* n : names) {
      if (k == n) break;
      ++i;
    }
    if (i == names.size()) fail(fname + " got an unexpected keyword argument '" + k + "'");
    if (b.v[i]) fail(fname + " got multiple values for argument '" + k + "'");
    b.v[i] = &v;
  }
  return b;
}

void no_args(const Args& a, const std::string& fname) {
  if (!a.pos.empty() || !a.kw.empty()) fail(fname + " takes no arguments");
}

int64_t int_arg(const Value* v, int64_t dflt, const std::string& what) {
  if (!v || v->is_none()) return dflt;
  if (!v->is_int_like()) fail(what + " must be an integer, not " + type_name(*v));
  return v->i();
}

bool bool_arg(const Value* v, bool dflt) { return v ? truthy(*v) : dflt; }

std::string str_arg(Interp& in, const Value* v, const std::string& dflt) {
  if (!v) return dflt;
  return to_str(*v, in.budget);
}

// python str(value), keeping Markup-ness (jinja2's soft_str).
Value soft_str(Interp& in, const Value& v) {
  if (v.is_str()) return v;
  return Value::string(to_str(v, in.budget));
}

Value bound_method(const Value& self, MethodId id) {
  auto* c = new CallableObj(CallableObj::Type::Method);
  Value v = Value::heap(Kind::Callable, c);
  c->self = self;
  c->method = id;
  c->depth = self.depth() + 1;
  check_depth(c->depth);
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// String helpers (code-point aware)

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

bool is_line_break(uint32_t cp) {
  return cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D || cp == 0x1E ||
         cp == 0x85 || cp == 0x2028 || cp == 0x2029;
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

Value str_list(std::vector<std::string> parts, bool safe) {
  std::vector<Value> items;
  items.reserve(parts.size());
  for (auto& p : parts) items.push_back(Value::string(std::move(p), safe));
  return make_list(std::move(items));
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

// ---------------------------------------------------------------------------------------------------------------
// jinja2's make_attrgetter: "a.b.0" -> item lookups

struct AttrGetter {
  std::vector<Value> parts;
  Value dflt;  // used when a lookup gives Undefined, if given
  bool has_default = false;
  bool lower = false;  // postprocess: ignore case
  Value operator()(Interp& in, Value item) const {
    for (const Value& p : parts) {
      item = in.get_item(item, p);
      if (has_default && item.is_undefined()) item = dflt;
    }
    if (lower && item.is_str()) item = Value::string(py_lower(item.str()));
    return item;
  }
};

AttrGetter make_getter(Interp& in, const Value* attribute, bool lower) {
  AttrGetter g;
  g.lower = lower;
  if (!attribute || attribute->is_none()) return g;
  if (attribute->is_int_like()) {
    g.parts.push_back(Value::integer(attribute->i()));
    return g;
  }
  std::string a = to_str(*attribute, in.budget);
  const std::string dot = ".";
  for (const std::string& part : py_split(a, &dot, -1, false)) {
    int64_t idx;
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits && parse_py_int(part, 10, &idx)) g.parts.push_back(Value::integer(idx));
    else g.parts.push_back(Value::string(part));
  }
  return g;
}

// Sorting key for sort/dictsort/min/max/unique (case-insensitive unless asked otherwise).
Value fold_case(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_str()) return Value::string(py_lower(v.str()));
  return v;
}

void sort_values(Interp& in, std::vector<size_t>& order, const std::vector<Value>& keys, bool reverse) {
  in.budget.charge(keys.size() * 4);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return reverse ? compare(keys[b], keys[a], "<") < 0 : compare(keys[a], keys[b], "<") < 0;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Filters

Value f_abs(Interp&, const Value& v, const Args& a) {
  no_args(a, "abs");
  if (v.is(Kind::Float)) return Value::number(std::fabs(v.f()));
  if (v.is_int_like()) {
    if (v.i() == INT64_MIN) fail("integer overflow");
    return Value::integer(v.i() < 0 ? -v.i() : v.i());
  }
  fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
}

Value f_attr(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "attr", {"name"});
  if (!b[0]) fail("attr() requires a name");
  std::string name = to_str(*b[0], in.budget);
  if (v.is_undefined()) in.undefined_error(v);
  if (v.is(Kind::Namespace)) {
    if (Value* x = v.nsp()->find(name)) return *x;
  } else if (v.is(Kind::Object)) {
    return in.get_attr(v, Value::string(name));
  } else if (name.rfind("__", 0) != 0) {
    Value m;
    if (lookup_method(v, name, &m)) return m;
  } else {
    return Value::undefined("access to attribute '" + name + "' is unsafe", true);
  }
  return in.missing(v, Value::string(name), true);
}

Value f_batch(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "batch", {"linecount", "fill_with"});
  int64_t n = int_arg(b[0], 0, "linecount");
  std::vector<Value> rows, cur;
  for (Value& x : in.iterate(v)) {
    if (static_cast<int64_t>(cur.size()) == n) {
      rows.push_back(make_list(std::move(cur)));
      cur.clear();
    }
    cur.push_back(std::move(x));
  }
  if (!cur.empty()) {
    if (b[1] && !b[1]->is_none()) {
      in.budget.check_size(static_cast<size_t>(n));
      in.budget.charge(static_cast<uint64_t>(n));
      while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*b[1]);
    }
    rows.push_back(make_list(std::move(cur)));
  }
  return make_list(std::move(rows));
}

Value f_capitalize(Interp& in, const Value& v, const Args& a) {
  no_args(a, "capitalize");
  Value s = soft_str(in, v);
  return Value::string(py_capitalize(s.str()), s.is_safe());
}

Value f_center(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "center", {"width"});
  Value s = soft_str(in, v);
  return Value::string(pad(in, s.str(), int_arg(b[0], 80, "width"), nullptr, '^'));
}

Value f_default(Interp&, const Value& v, const Args& a) {
  Bound b = bind(a, "default", {"default_value", "boolean"});
  bool boolean = bool_arg(b[1], false);
  if (v.is_undefined() || (boolean && !truthy(v))) return b[0] ? *b[0] : Value::string("");
  return v;
}

Value f_dictsort(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "dictsort", {"case_sensitive", "by", "reverse"});
  if (v.is_undefined()) in.undefined_error(v);
  if (!v.is_dict()) fail("dictsort() requires a mapping");
  bool cs = bool_arg(b[0], false), rev = bool_arg(b[2], false);
  std::string by = str_arg(in, b[1], "key");
  if (by != "key" && by != "value") fail("You can only sort by either 'key' or 'value'");
  const auto& items = v.dict().items;
  std::vector<Value> keys;
  std::vector<size_t> order;
  for (size_t i = 0; i < items.size(); ++i) {
    keys.push_back(fold_case(by == "key" ? items[i].first : items[i].second, cs));
    order.push_back(i);
  }
  sort_values(in, order, keys, rev);
  std::vector<Value> out;
  for (size_t i : order) out.push_back(make_list({items[i].first, items[i].second}, true));
  return make_list(std::move(out));
}

Value escaped(Interp& in, const Value& v, bool force) {
  if (v.is_safe() && !force) return v;
  Value s = soft_str(in, v);
  in.budget.charge_bytes(s.str().size());
  return Value::string(html_escape(s.str()), true);
}
Value f_escape(Interp& in, const Value& v, const Args& a) {
  no_args(a, "escape");
  return escaped(in, v, false);
}
Value f_forceescape(Interp& in, const Value& v, const Args& a) {
  no_args(a, "forceescape");
  return escaped(in, v, true);
}

Value f_first(Interp& in, const Value& v, const Args& a) {
  no_args(a, "first");
  if (v.is_list()) {
    if (!v.list().items.empty()) return v.list().items.front();
  } else {
    std::vector<Value> items = in.iterate(v);
    if (!items.empty()) return items.front();
  }
  return Value::undefined("No first item, sequence was empty.");
}

Value f_last(Interp& in, const Value& v, const Args& a) {
  no_args(a, "last");
  if (v.is_list()) {
    if (!v.list().items.empty()) return v.list().items.back();
  } else {
    std::vector<Value> items = in.iterate(v);
    if (!items.empty()) return items.back();
  }
  return Value::undefined("No last item, sequence was empty.");
}

Value to_float(const Value& v, const Value* dflt) {
  double d;
  if (v.is(Kind::Float)) return v;
  if (v.is_int_like()) return Value::number(static_cast<double>(v.i()));
  if (v.is_str() && parse_py_float(v.str(), &d)) return Value::number(d);
  return dflt ? *dflt : Value::number(0.0);
}

Value f_float(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "float", {"default"});
  if (v.is_undefined()) in.undefined_error(v);
  return to_float(v, b[0]);
}

Value f_int(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "int", {"default", "base"});
  if (v.is_undefined()) in.undefined_error(v);
  Value dflt = b[0] ? *b[0] : Value::integer(0);
  int64_t base = int_arg(b[1], 10, "base");
  if (v.is_int_like()) return Value::integer(v.i());
  if (v.is(Kind::Float)) {
    double d = v.f();
    if (std::isnan(d)) return dflt;
    if (std::isinf(d) || std::fabs(d) >= 9.2e18) fail("cannot convert float infinity or huge float to integer");
    return Value::integer(static_cast<int64_t>(d));
  }
  if (v.is_str()) {
    int64_t i;
    if ((base == 0 || (base >= 2 && base <= 36)) && parse_py_int(v.str(), static_cast<int>(base), &i))
      return Value::integer(i);
    double d;
    if (parse_py_float(v.str(), &d) && std::isfinite(d) && std::fabs(d) < 9.2e18)
      return Value::integer(static_cast<int64_t>(d));
  }
  return dflt;
}

Value f_format(Interp& in, const Value& v, const Args& a) {
  if (!a.pos.empty() && !a.kw.empty()) fail("can't handle positional and keyword arguments at the same time");
  Value fmt = soft_str(in, v);
  if (!a.kw.empty()) {
    std::vector<std::pair<Value, Value>> m;
    for (const auto& [k, x] : a.kw) m.emplace_back(Value::string(k), x);
    return percent_format(in, fmt, make_dict(std::move(m)));
  }
  return percent_format(in, fmt, make_list(a.pos, true));
}

Value f_indent(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "indent", {"width", "first", "blank"});
  std::string indention;
  if (b[0] && b[0]->is_str()) indention = b[0]->str();
  else {
    int64_t w = int_arg(b[0], 4, "width");
    in.budget.check_size(static_cast<size_t>(std::max<int64_t>(0, w)));
    indention.assign(static_cast<size_t>(std::max<int64_t>(0, w)), ' ');
  }
  bool first = bool_arg(b[1], false), blank = bool_arg(b[2], false);
  if (v.is_undefined()) in.undefined_error(v);
  Value sv = soft_str(in, v);
  std::string s = sv.str() + "\n";
  std::vector<std::string> lines = py_splitlines(s, false);
  std::string rv;
  if (blank) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i) rv += "\n" + indention;
      rv += lines[i];
      in.budget.check_size(rv.size());
    }
  } else {
    rv = lines.empty() ? std::string() : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += '\n';
      if (!lines[i].empty()) rv += indention;
      rv += lines[i];
      in.budget.check_size(rv.size());
    }
  }
  if (first) rv = indention + rv;
  in.budget.check_size(rv.size());
  in.budget.charge_bytes(rv.size());
  return Value::string(std::move(rv), sv.is_safe());
}

Value f_items(Interp&, const Value& v, const Args& a) {
  no_args(a, "items");
  if (v.is_undefined()) return make_list({});
  if (!v.is_dict()) fail("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, x] : v.dict().items) out.push_back(make_list({k, x}, true));
  return make_list(std::move(out));
}

Value f_join(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "join", {"d", "attribute"});
  std::string sep = str_arg(in, b[0], "");
  AttrGetter g = make_getter(in, b[1], false);
  std::string out;
  bool first = true;
  for (Value& x : in.iterate(v)) {
    if (!first) out += sep;
    first = false;
    append_str(out, g(in, std::move(x)), in.budget);
    in.budget.check_size(out.size());
  }
  in.budget.charge_bytes(out.size());
  return Value::string(std::move(out));
}

Value f_length(Interp&, const Value& v, const Args& a) {
  no_args(a, "length");
  switch (v.kind()) {
    case Kind::Undefined: return Value::integer(0);
    case Kind::Str: return Value::integer(static_cast<int64_t>(utf8_length(v.str())));
    case Kind::List: return Value::integer(static_cast<int64_t>(v.list().items.size()));
    case Kind::Dict: return Value::integer(static_cast<int64_t>(v.dict().items.size()));
    case Kind::Range: return Value::integer(v.range().size());
    default: fail(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

Value f_list(Interp& in, const Value& v, const Args& a) {
  no_args(a, "list");
  return make_list(in.iterate(v));
}

Value f_lower(Interp& in, const Value& v, const Args& a) {
  no_args(a, "lower");
  Value s = soft_str(in, v);
  return Value::string(py_lower(s.str()), s.is_safe());
}

Value f_upper(Interp& in, const Value& v, const Args& a) {
  no_args(a, "upper");
  Value s = soft_str(in, v);
  return Value::string(py_upper(s.str()), s.is_safe());
}

Value f_map(Interp& in, const Value& v, const Args& a) {
  std::vector<Value> items;
  if (truthy(v)) items = in.iterate(v);  // jinja2: `if value:` (None maps to nothing)
  std::vector<Value> out;
  out.reserve(items.size());
  if (a.pos.empty()) {
    const Value *attribute = nullptr, *dflt = nullptr;
    for (const auto& [k, x] : a.kw) {
      if (k == "attribute") attribute = &x;
      else if (k == "default") dflt = &x;
      else fail("map() got an unexpected keyword argument '" + k + "'");
    }
    if (!attribute) fail("map requires a filter argument");
    AttrGetter g = make_getter(in, attribute, false);
    if (dflt && !dflt->is_none()) {
      g.dflt = *dflt;
      g.has_default = true;
    }
    for (Value& x : items) out.push_back(g(in, std::move(x)));
  } else {
    std::string name = to_str(a.pos[0], in.budget);
    int id = find_filter(name);
    Args rest;
    rest.pos.assign(a.pos.begin() + 1, a.pos.end());
    rest.kw = a.kw;
    for (Value& x : items) out.push_back(in.apply_filter(id, name, x, rest));
  }
  return make_list(std::move(out));
}

Value min_max(Interp& in, const Value& v, const Args& a, bool want_max) {
  Bound b = bind(a, want_max ? "max" : "min", {"case_sensitive", "attribute"});
  bool cs = bool_arg(b[0], false);
  AttrGetter g = make_getter(in, b[1], !cs);
  std::vector<Value> items = in.iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = g(in, items[0]);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = g(in, items[i]);
    int c = compare(k, best_key, want_max ? ">" : "<");
    if (want_max ? c > 0 : c < 0) {
      best = i;
      best_key = std::move(k);
    }
  }
  return items[best];
}
Value f_max(Interp& in, const Value& v, const Args& a) { return min_max(in, v, a, true); }
Value f_min(Interp& in, const Value& v, const Args& a) { return min_max(in, v, a, false); }

Value f_pprint(Interp& in, const Value& v, const Args& a) {
  no_args(a, "pprint");
  std::string s;
  append_repr(s, v, in.budget);
  return Value::string(std::move(s));
}

// select / reject / selectattr / rejectattr
Value select_impl(Interp& in, const Value& v, const Args& a, bool attr, bool keep_if) {
  size_t off = 0;
  AttrGetter g;
  if (attr) {
    if (a.pos.empty()) fail("Missing parameter for attribute name");
    g = make_getter(in, &a.pos[0], false);
    off = 1;
  }
  std::string test;
  int test_id = -1;
  Args targs;
  bool has_test = a.pos.size() > off;
  if (has_test) {
    test = to_str(a.pos[off], in.budget);
    test_id = find_test(test);
    targs.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(off) + 1, a.pos.end());
    targs.kw = a.kw;
  }
  std::vector<Value> out;
  if (!truthy(v)) return make_list({});  // jinja2: `if value:` (None selects nothing)
  for (Value& x : in.iterate(v)) {
    Value key = attr ? g(in, x) : x;
    bool r = has_test ? in.apply_test(test_id, test, key, targs) : truthy(key);
    if (r == keep_if) out.push_back(std::move(x));
  }
  return make_list(std::move(out));
}
Value f_select(Interp& in, const Value& v, const Args& a) { return select_impl(in, v, a, false, true); }
Value f_reject(Interp& in, const Value& v, const Args& a) { return select_impl(in, v, a, false, false); }
Value f_selectattr(Interp& in, const Value& v, const Args& a) { return select_impl(in, v, a, true, true); }
Value f_rejectattr(Interp& in, const Value& v, const Args& a) { return select_impl(in, v, a, true, false); }

Value f_replace(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "replace", {"old", "new", "count"});
  if (!b[0] || !b[1]) fail("replace() requires the old and the new string");
  std::string s = to_str(v, in.budget);
  int64_t count = int_arg(b[2], -1, "count");
  return Value::string(py_replace(in, s, to_str(*b[0], in.budget), to_str(*b[1], in.budget), count));
}

Value f_reverse(Interp& in, const Value& v, const Args& a) {
  no_args(a, "reverse");
  if (v.is_str()) {
    std::vector<size_t> off = char_offsets(v.str());
    std::string r;
    r.reserve(v.str().size());
    for (size_t i = off.size() - 1; i > 0; --i) r.append(v.str(), off[i - 1], off[i] - off[i - 1]);
    return Value::string(std::move(r), v.is_safe());
  }
  std::vector<Value> items = in.iterate(v);
  std::reverse(items.begin(), items.end());
  return make_list(std::move(items));
}

double round_half_even(double x, int64_t ndigits) {
  if (!std::isfinite(x)) return x;
  if (ndigits > 300) return x;
  if (ndigits >= 0) {
    // Correctly rounded decimal digits (glibc printf rounds the exact binary value half-to-even, as python does).
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(ndigits), x);
    return std::strtod(buf, nullptr);
  }
  double p = std::pow(10.0, static_cast<double>(-ndigits));
  double y = x / p;
  double r = std::nearbyint(y);  // default rounding mode: half to even
  return r * p;
}

Value f_round(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "round", {"precision", "method"});
  int64_t precision = int_arg(b[0], 0, "precision");
  std::string method = str_arg(in, b[1], "common");
  if (method != "common" && method != "ceil" && method != "floor")
    fail("method must be common, ceil or floor");
  if (!v.is_number()) fail(std::string("type ") + type_name(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (v.is_int_like()) return Value::integer(v.i());  // python round(int, n) keeps an int
    return Value::number(round_half_even(v.f(), precision));
  }
  double p = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_double() * p;
  return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / p);
}

Value f_safe(Interp& in, const Value& v, const Args& a) {
  no_args(a, "safe");
  return Value::string(to_str(v, in.budget), true);
}

Value f_slice(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "slice", {"slices", "fill_with"});
  int64_t slices = int_arg(b[0], 0, "slices");
  if (slices <= 0) fail("slice() needs a positive number of slices");
  std::vector<Value> seq = in.iterate(v);
  in.budget.charge(static_cast<uint64_t>(slices));
  in.budget.check_size(static_cast<size_t>(slices));
  auto length = static_cast<int64_t>(seq.size());
  int64_t per = length / slices, extra = length % slices, offset = 0;
  std::vector<Value> out;
  for (int64_t k = 0; k < slices; ++k) {
    int64_t start = offset + k * per;
    if (k < extra) ++offset;
    int64_t end = offset + (k + 1) * per;
    std::vector<Value> part(seq.begin() + start, seq.begin() + end);
    if (b[1] && !b[1]->is_none() && k >= extra) part.push_back(*b[1]);
    out.push_back(make_list(std::move(part)));
  }
  return make_list(std::move(out));
}

Value f_sort(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "sort", {"reverse", "case_sensitive", "attribute"});
  bool rev = bool_arg(b[0], false), cs = bool_arg(b[1], false);
  std::vector<AttrGetter> getters;
  if (b[2] && b[2]->is_str()) {
    std::string sep = ",";
    for (const std::string& part : py_split(b[2]->str(), &sep, -1, false)) {
      Value pv = Value::string(part);
      getters.push_back(make_getter(in, &pv, !cs));
    }
  } else {
    getters.push_back(make_getter(in, b[2], !cs));
  }
  std::vector<Value> items = in.iterate(v);
  std::vector<Value> keys;
  std::vector<size_t> order;
  for (size_t i = 0; i < items.size(); ++i) {
    if (getters.size() == 1) {
      keys.push_back(getters[0](in, items[i]));
    } else {
      std::vector<Value> k;
      for (const auto& g : getters) k.push_back(g(in, items[i]));
      keys.push_back(make_list(std::move(k)));
    }
    order.push_back(i);
  }
  sort_values(in, order, keys, rev);
  std::vector<Value> out;
  out.reserve(items.size());
  for (size_t i : order) out.push_back(items[i]);
  return make_list(std::move(out));
}

Value f_string(Interp& in, const Value& v, const Args& a) {
  no_args(a, "string");
  return soft_str(in, v);
}

std::string unescape_entities(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos || semi - i > 10) {
      out += s[i];
      continue;
    }
    std::string_view ent = s.substr(i + 1, semi - i - 1);
    uint32_t cp = 0;
    if (ent == "amp") cp = '&';
    else if (ent == "lt") cp = '<';
    else if (ent == "gt") cp = '>';
    else if (ent == "quot") cp = '"';
    else if (ent == "apos") cp = '\'';
    else if (ent == "nbsp") cp = 0xA0;
    else if (ent.size() > 1 && ent[0] == '#') {
      bool hex = ent[1] == 'x' || ent[1] == 'X';
      std::string digits(ent.substr(hex ? 2 : 1));
      char* end = nullptr;
      unsigned long n = std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
      if (!digits.empty() && end && *end == '\0' && n > 0 && n <= 0x10FFFF) cp = static_cast<uint32_t>(n);
    }
    if (!cp) {
      out += s[i];
      continue;
    }
    utf8_append(out, cp);
    i = semi;
  }
  return out;
}

Value f_striptags(Interp& in, const Value& v, const Args& a) {
  no_args(a, "striptags");
  std::string s = to_str(v, in.budget), noc, notags;
  for (size_t i = 0; i < s.size();) {  // <!-- comments -->
    size_t p = s.find("<!--", i);
    if (p == std::string::npos) {
      noc.append(s, i);
      break;
    }
    size_t e = s.find("-->", p + 4);
    if (e == std::string::npos) {
      noc.append(s, i);
      break;
    }
    noc.append(s, i, p - i);
    i = e + 3;
  }
  for (size_t i = 0; i < noc.size();) {  // <tags>
    size_t p = noc.find('<', i);
    size_t e = p == std::string::npos ? p : noc.find('>', p + 1);
    if (e == std::string::npos) {
      notags.append(noc, i);
      break;
    }
    notags.append(noc, i, p - i);
    i = e + 1;
  }
  std::string joined;
  for (const std::string& w : py_split(notags, nullptr, -1, false)) {
    if (!joined.empty()) joined += ' ';
    joined += w;
  }
  return Value::string(unescape_entities(joined));
}

Value f_sum(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "sum", {"attribute", "start"});
  AttrGetter g = make_getter(in, b[0], false);
  Value total = b[1] ? *b[1] : Value::integer(0);
  for (Value& x : in.iterate(v)) total = in.binary(BinOp::Add, total, g(in, std::move(x)));
  return total;
}

Value f_title(Interp& in, const Value& v, const Args& a) {
  no_args(a, "title");
  Value s = soft_str(in, v);
  return Value::string(jinja_title(s.str()), s.is_safe());
}

Value f_tojson(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions opt;
  opt.ensure_ascii = bool_arg(b[0], false);
  if (b[1] && !b[1]->is_none()) {
    opt.has_indent = true;
    if (b[1]->is_str()) {
      opt.indent = b[1]->str();
    } else if (b[1]->is_int_like()) {
      int64_t n = b[1]->i();
      in.budget.check_size(static_cast<size_t>(std::max<int64_t>(0, n)));
      opt.indent.assign(static_cast<size_t>(std::max<int64_t>(0, n)), ' ');
    } else {
      fail(std::string("tojson: indent must be an integer or a string, not ") + type_name(*b[1]));
    }
    opt.item_sep = ",";
  }
  if (b[2] && !b[2]->is_none()) {
    const Value& s = *b[2];
    if (!s.is_list() || s.list().items.size() != 2 || !s.list().items[0].is_str() || !s.list().items[1].is_str())
      fail("tojson: separators must be a pair of strings (item_separator, key_separator)");
    opt.item_sep = s.list().items[0].str();
    opt.key_sep = s.list().items[1].str();
  }
  opt.sort_keys = bool_arg(b[3], false);
  std::string out;
  append_json(out, v, opt, in.budget);
  in.budget.check_size(out.size());
  in.budget.charge_bytes(out.size());
  return Value::string(std::move(out));
}

Value f_trim(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "trim", {"chars"});
  Value s = soft_str(in, v);
  std::string chars;
  const std::string* cp = nullptr;
  if (b[0] && !b[0]->is_none()) {
    chars = to_str(*b[0], in.budget);
    cp = &chars;
  }
  return Value::string(py_strip(s.str(), cp, true, true), s.is_safe());
}

Value f_truncate(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "truncate", {"length", "killwords", "end", "leeway"});
  std::string s = to_str(v, in.budget);
  int64_t length = int_arg(b[0], 255, "length");
  bool killwords = bool_arg(b[1], false);
  std::string end = str_arg(in, b[2], "...");
  int64_t leeway = int_arg(b[3], 5, "leeway");
  auto end_len = static_cast<int64_t>(utf8_length(end));
  if (length < end_len) fail("expected length >= " + std::to_string(end_len) + ", got " + std::to_string(length));
  if (leeway < 0) fail("expected leeway >= 0, got " + std::to_string(leeway));
  std::vector<size_t> off = char_offsets(s);
  auto n = static_cast<int64_t>(off.size() - 1);
  if (n <= length + leeway) return Value::string(s);
  std::string head = s.substr(0, off[static_cast<size_t>(length - end_len)]);
  if (killwords) return Value::string(head + end);
  std::string sp = " ";
  std::vector<std::string> parts = py_split(head, &sp, 1, true);
  return Value::string(parts[0] + end);
}

Value f_unique(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "unique", {"case_sensitive", "attribute"});
  bool cs = bool_arg(b[0], false);
  AttrGetter g = make_getter(in, b[1], !cs);
  std::vector<Value> out, seen;
  for (Value& x : in.iterate(v)) {
    Value k = g(in, x);
    if (k.is_list() && !k.list().tuple) fail("unhashable type: 'list'");
    if (k.is_dict()) fail("unhashable type: 'dict'");
    bool dup = false;
    in.budget.charge(seen.size());
    for (const Value& s : seen)
      if (equals(s, k, &in.budget)) {
        dup = true;
        break;
      }
    if (!dup) {
      seen.push_back(std::move(k));
      out.push_back(std::move(x));
    }
  }
  return make_list(std::move(out));
}

Value f_wordcount(Interp& in, const Value& v, const Args& a) {
  no_args(a, "wordcount");
  std::string s = to_str(v, in.budget);
  int64_t n = 0;
  bool in_word = false;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    bool w = cp == '_' || is_digit_cp(cp) || is_alpha_cp(cp);
    if (w && !in_word) ++n;
    in_word = w;
    i += len;
  }
  return Value::integer(n);
}

struct FilterEntry {
  const char* name;
  FilterFn fn;
};
constexpr FilterEntry kFilters[] = {
    {"abs", f_abs}, {"attr", f_attr}, {"batch", f_batch}, {"capitalize", f_capitalize}, {"center", f_center},
    {"count", f_length}, {"d", f_default}, {"default", f_default}, {"dictsort", f_dictsort}, {"e", f_escape},
    {"escape", f_escape}, {"first", f_first}, {"float", f_float}, {"forceescape", f_forceescape},
    {"format", f_format}, {"indent", f_indent}, {"int", f_int}, {"items", f_items}, {"join", f_join},
    {"last", f_last}, {"length", f_length}, {"list", f_list}, {"lower", f_lower}, {"map", f_map}, {"max", f_max},
    {"min", f_min}, {"pprint", f_pprint}, {"reject", f_reject}, {"rejectattr", f_rejectattr},
    {"replace", f_replace}, {"reverse", f_reverse}, {"round", f_round}, {"safe", f_safe}, {"select", f_select},
    {"selectattr", f_selectattr}, {"slice", f_slice}, {"sort", f_sort}, {"string", f_string},
    {"striptags", f_striptags}, {"sum", f_sum}, {"title", f_title}, {"tojson", f_tojson}, {"trim", f_trim},
    {"truncate", f_truncate}, {"unique", f_unique}, {"upper", f_upper}, {"wordcount", f_wordcount},
};

// ---------------------------------------------------------------------------------------------------------------
// Tests

const Value& one_arg(const Args& a, const char* name) {
  if (a.pos.size() != 1 || !a.kw.empty()) fail(std::string("test '") + name + "' takes exactly one argument");
  return a.pos[0];
}

bool t_boolean(Interp&, const Value& v, const Args&) { return v.is(Kind::Bool); }
bool t_callable(Interp&, const Value& v, const Args&) {
  return v.is(Kind::Builtin) || v.is(Kind::Callable) ||
         (v.is(Kind::Object) && v.object().type == ObjectObj::Type::Loop);
}
bool t_defined(Interp&, const Value& v, const Args&) { return !v.is_undefined(); }
bool t_undefined(Interp&, const Value& v, const Args&) { return v.is_undefined(); }
bool t_divisibleby(Interp& in, const Value& v, const Args& a) {
  return equals(in.binary(BinOp::Mod, v, one_arg(a, "divisibleby")), Value::integer(0));
}
bool t_escaped(Interp&, const Value& v, const Args&) { return v.is_safe(); }
bool t_even(Interp& in, const Value& v, const Args&) {
  return equals(in.binary(BinOp::Mod, v, Value::integer(2)), Value::integer(0));
}
bool t_odd(Interp& in, const Value& v, const Args&) {
  return equals(in.binary(BinOp::Mod, v, Value::integer(2)), Value::integer(1));
}
bool t_false(Interp&, const Value& v, const Args&) { return v.is(Kind::Bool) && !v.b(); }
bool t_true(Interp&, const Value& v, const Args&) { return v.is(Kind::Bool) && v.b(); }
bool t_filter(Interp& in, const Value& v, const Args&) { return find_filter(to_str(v, in.budget)) >= 0; }
bool t_test(Interp& in, const Value& v, const Args&) { return find_test(to_str(v, in.budget)) >= 0; }
bool t_float(Interp&, const Value& v, const Args&) { return v.is(Kind::Float); }
bool t_integer(Interp&, const Value& v, const Args&) { return v.is(Kind::Int); }
bool t_number(Interp&, const Value& v, const Args&) { return v.is_number(); }
bool t_string(Interp&, const Value& v, const Args&) { return v.is_str(); }
bool t_mapping(Interp&, const Value& v, const Args&) { return v.is_dict(); }
bool t_none(Interp&, const Value& v, const Args&) { return v.is_none(); }
bool t_iterable(Interp&, const Value& v, const Args&) {
  return v.is_undefined() || v.is_str() || v.is_list() || v.is_dict() || v.is(Kind::Range) ||
         (v.is(Kind::Object) && v.object().type == ObjectObj::Type::Loop);
}
bool t_sequence(Interp&, const Value& v, const Args&) {
  return v.is_undefined() || v.is_str() || v.is_list() || v.is_dict() || v.is(Kind::Range);
}
bool t_in(Interp& in, const Value& v, const Args& a) { return contains(one_arg(a, "in"), v, &in.budget); }
bool t_sameas(Interp&, const Value& v, const Args& a) {
  const Value& o = one_arg(a, "sameas");
  if (v.kind() != o.kind()) return false;
  switch (v.kind()) {
    case Kind::Undefined: return v.obj() == o.obj();
    case Kind::None: return true;
    case Kind::Bool: case Kind::Int: return v.i() == o.i();
    case Kind::Float: return v.f() == o.f();
    case Kind::Builtin: return v.i() == o.i();
    case Kind::Namespace: return v.nsp() == o.nsp();
    default: return v.obj() == o.obj();
  }
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
bool t_lower(Interp& in, const Value& v, const Args&) { return has_cased(to_str(v, in.budget), false); }
bool t_upper(Interp& in, const Value& v, const Args&) { return has_cased(to_str(v, in.budget), true); }
bool t_eq(Interp& in, const Value& v, const Args& a) { return in.compare_op(CmpOp::Eq, v, one_arg(a, "eq")); }
bool t_ne(Interp& in, const Value& v, const Args& a) { return in.compare_op(CmpOp::Ne, v, one_arg(a, "ne")); }
bool t_lt(Interp& in, const Value& v, const Args& a) { return in.compare_op(CmpOp::Lt, v, one_arg(a, "lt")); }
bool t_le(Interp& in, const Value& v, const Args& a) { return in.compare_op(CmpOp::Le, v, one_arg(a, "le")); }
bool t_gt(Interp& in, const Value& v, const Args& a) { return in.compare_op(CmpOp::Gt, v, one_arg(a, "gt")); }
bool t_ge(Interp& in, const Value& v, const Args& a) { return in.compare_op(CmpOp::Ge, v, one_arg(a, "ge")); }

struct TestEntry {
  const char* name;
  TestFn fn;
};
constexpr TestEntry kTests[] = {
    {"boolean", t_boolean}, {"callable", t_callable}, {"defined", t_defined}, {"divisibleby", t_divisibleby},
    {"eq", t_eq}, {"equalto", t_eq}, {"==", t_eq}, {"escaped", t_escaped}, {"even", t_even}, {"false", t_false},
    {"filter", t_filter}, {"float", t_float}, {"ge", t_ge}, {">=", t_ge}, {"gt", t_gt}, {">", t_gt},
    {"greaterthan", t_gt}, {"in", t_in}, {"integer", t_integer}, {"iterable", t_iterable}, {"le", t_le},
    {"<=", t_le}, {"lessthan", t_lt}, {"lower", t_lower}, {"lt", t_lt}, {"<", t_lt}, {"mapping", t_mapping},
    {"ne", t_ne}, {"!=", t_ne}, {"none", t_none}, {"number", t_number}, {"odd", t_odd}, {"sameas", t_sameas},
    {"sequence", t_sequence}, {"string", t_string}, {"test", t_test}, {"true", t_true},
    {"undefined", t_undefined}, {"upper", t_upper},
};

// ---------------------------------------------------------------------------------------------------------------
// Globals

enum GlobalId : int { kRange, kDict, kNamespace, kCycler, kJoiner, kRaiseException, kStrftimeNow, kNumGlobals };
constexpr const char* kGlobalNames[] = {"range", "dict", "namespace", "cycler", "joiner", "raise_exception",
                                        "strftime_now"};

std::vector<std::pair<Value, Value>> dict_from_args(Interp& in, const Args& a, const char* fname) {
  std::vector<std::pair<Value, Value>> items;
  auto put = [&](Value k, Value v) {
    in.budget.charge(items.size());
    for (auto& kv : items)
      if (equals(kv.first, k)) {
        kv.second = std::move(v);
        return;
      }
    items.emplace_back(std::move(k), std::move(v));
  };
  if (a.pos.size() > 1) fail(std::string(fname) + " expected at most 1 positional argument");
  if (!a.pos.empty()) {
    const Value& src = a.pos[0];
    if (src.is_dict()) {
      for (const auto& [k, v] : src.dict().items) put(k, v);
    } else if (src.is(Kind::Namespace)) {
      for (const auto& [k, v] : src.nsp()->attrs) put(Value::string(k), v);
    } else {
      for (const Value& pair : in.iterate(src)) {
        if (!pair.is_list() || pair.list().items.size() != 2)
          fail(std::string(fname) + ": each element must be a (key, value) pair");
        put(pair.list().items[0], pair.list().items[1]);
      }
    }
  }
  for (const auto& [k, v] : a.kw) put(Value::string(k), v);
  return items;
}

Value g_range(Interp&, Args& a) {
  if (!a.kw.empty()) fail("range() takes no keyword arguments");
  if (a.pos.empty() || a.pos.size() > 3) fail("range expected 1 to 3 arguments, got " + std::to_string(a.pos.size()));
  int64_t v[3];
  for (size_t i = 0; i < a.pos.size(); ++i) {
    if (!a.pos[i].is_int_like())
      fail(std::string("'") + type_name(a.pos[i]) + "' object cannot be interpreted as an integer");
    v[i] = a.pos[i].i();
  }
  int64_t start = 0, stop, step = 1;
  if (a.pos.size() == 1) {
    stop = v[0];
  } else {
    start = v[0];
    stop = v[1];
    if (a.pos.size() == 3) step = v[2];
  }
  if (step == 0) fail("range() arg 3 must not be zero");
  Value r = make_range(start, stop, step);
  // Computed without overflow: the difference of two int64 may not fit, so compare in long double.
  long double span = static_cast<long double>(stop) - static_cast<long double>(start);
  long double count = span / static_cast<long double>(step);
  if (count > static_cast<long double>(kMaxRange))
    fail("range too big: the sandbox blocks ranges of more than " + std::to_string(kMaxRange) + " items");
  return r;
}

Value g_strftime_now(Interp& in, Args& a) {
  Bound b = bind(a, "strftime_now", {"format"});
  if (!b[0] || !b[0]->is_str()) fail("strftime_now() requires a format string");
  const std::string& fmt = b[0]->str();
  if (fmt.size() > 4096) fail("strftime_now(): format string too long");
  // python's naive datetime prints nothing for %Z and %z.
  std::string f;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] == '%' && i + 1 < fmt.size()) {
      if (fmt[i + 1] == 'Z' || fmt[i + 1] == 'z') {
        ++i;
        continue;
      }
      f += fmt[i];
      f += fmt[++i];
      continue;
    }
    f += fmt[i];
  }
  if (f.empty()) return Value::string("");
  auto t = static_cast<time_t>(in.now);
  struct tm tmv;
  gmtime_r(&t, &tmv);
  std::string buf(f.size() * 64 + 64, '\0');
  size_t n = std::strftime(buf.data(), buf.size(), f.c_str(), &tmv);
  buf.resize(n);
  return Value::string(std::move(buf));
}

}  // namespace

int find_filter(std::string_view name) {
  for (size_t i = 0; i < std::size(kFilters); ++i)
    if (name == kFilters[i].name) return static_cast<int>(i);
  return -1;
}
int find_test(std::string_view name) {
  for (size_t i = 0; i < std::size(kTests); ++i)
    if (name == kTests[i].name) return static_cast<int>(i);
  return -1;
}
int find_global(std::string_view name) {
  for (int i = 0; i < kNumGlobals; ++i)
    if (name == kGlobalNames[i]) return i;
  return -1;
}
FilterFn filter_fn(int id) { return kFilters[id].fn; }
TestFn test_fn(int id) { return kTests[id].fn; }
const char* global_name(int id) { return id >= 0 && id < kNumGlobals ? kGlobalNames[id] : "function"; }

Value call_global(Interp& in, int id, Args& a) {
  in.budget.charge(1);
  switch (id) {
    case kRange: return g_range(in, a);
    case kDict: return make_dict(dict_from_args(in, a, "dict"));
    case kNamespace: {
      NamespaceObj* ns = in.new_namespace();
      for (auto& [k, v] : dict_from_args(in, a, "namespace")) {
        if (!k.is_str()) fail("namespace attribute names must be strings");
        ns->attrs.emplace_back(k.str(), std::move(v));
      }
      return Value::ns(ns);
    }
    case kCycler: {
      if (!a.kw.empty()) fail("cycler() takes no keyword arguments");
      if (a.pos.empty()) fail("at least one item has to be provided");
      auto* c = new ObjectObj(ObjectObj::Type::Cycler);
      Value v = Value::heap(Kind::Object, c);
      c->items = make_list(a.pos);
      c->depth = c->items.depth() + 1;
      check_depth(c->depth);
      return v;
    }
    case kJoiner: {
      Bound b = bind(a, "joiner", {"sep"});
      auto* j = new CallableObj(CallableObj::Type::Joiner);
      Value v = Value::heap(Kind::Callable, j);
      j->sep = str_arg(in, b[0], ", ");
      return v;
    }
    case kRaiseException: {
      Bound b = bind(a, "raise_exception", {"message"});
      fail(b[0] ? to_str(*b[0], in.budget) : std::string("raise_exception() called"));
    }
    case kStrftimeNow: return g_strftime_now(in, a);
    default: fail("unknown function");
  }
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
      if (!o.changed_called || !equals(o.last_changed, now)) {
        o.changed_called = true;
        o.last_changed = now;
        return Value::boolean(true);
      }
      return Value::boolean(false);
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
  bool used_mapping = false;
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
      used_mapping = true;
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
  (void)used_mapping;
  in.budget.charge_bytes(out.size());
  return Value::string(std::move(out), safe);
}

}  // namespace lokal::jinja::detail
