// chat/jinja_value.cpp - python-like values for the Jinja interpreter: construction, truthiness, printing
// (str/repr exactly as python 3 prints them), equality and ordering, json.dumps, and UTF-8 helpers.
// See jinja_impl.h for the memory model.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "chat/jinja_impl.h"

namespace lokal::jinja::detail {

void fail(std::string msg) { throw JinjaError{std::move(msg), 0}; }

void Budget::over_steps() const {
  fail("template exceeded max_steps (" + std::to_string(max_steps) + " evaluation steps)");
}
void Budget::over_size(size_t n) const {
  fail("template output exceeded max_output_bytes (" + std::to_string(max_bytes) + " bytes" +
       (n ? "; a string or list of " + std::to_string(n) : std::string(" with a repeated string or list")) + ")");
}

// ---------------------------------------------------------------------------------------------------------------
// Construction and access

Value Value::string(std::string s, bool safe) { return heap(Kind::Str, new StrObj(std::move(s)), safe ? kSafe : 0); }

Value Value::undefined(std::string message, bool unsafe) {
  Value v;
  if (!message.empty()) {
    v.obj_ = new StrObj(std::move(message));
    v.retain();
  }
  v.flags_ = unsafe ? kUnsafe : 0;
  return v;
}

const std::string& Value::str() const { return static_cast<const StrObj*>(obj_)->s; }
const ListObj& Value::list() const { return *static_cast<const ListObj*>(obj_); }
const DictObj& Value::dict() const { return *static_cast<const DictObj*>(obj_); }
const RangeObj& Value::range() const { return *static_cast<const RangeObj*>(obj_); }
const CallableObj& Value::callable() const { return *static_cast<const CallableObj*>(obj_); }
ObjectObj& Value::object() const { return *static_cast<ObjectObj*>(obj_); }
const std::string* Value::undefined_message() const {
  return kind_ == Kind::Undefined && obj_ ? &static_cast<const StrObj*>(obj_)->s : nullptr;
}

const Value* DictObj::find(std::string_view key) const {
  if (!index.empty()) {
    auto it = index.find(key);
    return it == index.end() ? nullptr : &items[it->second].second;
  }
  for (const auto& [k, v] : items)
    if (k.is_str() && k.str() == key) return &v;
  return nullptr;
}

const Value* DictObj::find(const Value& key) const {
  if (key.is_str()) return find(std::string_view(key.str()));
  for (const auto& [k, v] : items)
    if (equals(k, key)) return &v;
  return nullptr;
}

int64_t RangeObj::size() const {  // in 128 bits: stop - start may not fit in 64
  __int128 lo = start, hi = stop, st = step;
  __int128 n = 0;
  if (st > 0 && lo < hi) n = (hi - lo - 1) / st + 1;
  if (st < 0 && lo > hi) n = (lo - hi - 1) / (-st) + 1;
  return n > INT64_MAX ? INT64_MAX : static_cast<int64_t>(n);
}

Value* NamespaceObj::find(std::string_view name) {
  for (auto& [k, v] : attrs)
    if (k == name) return &v;
  return nullptr;
}

void check_depth(uint32_t depth) {
  if (depth > static_cast<uint32_t>(kMaxValueDepth))
    fail("value nested too deeply (more than " + std::to_string(kMaxValueDepth) + " levels)");
}

uint32_t max_depth_of(const std::vector<Value>& items) {
  uint32_t d = 0;
  for (const Value& v : items) d = std::max(d, v.depth());
  return d;
}

Value make_list(std::vector<Value> items, bool tuple) {
  uint32_t d = max_depth_of(items) + 1;
  check_depth(d);
  auto* l = new ListObj;
  l->items = std::move(items);
  l->tuple = tuple;
  l->depth = d;
  return Value::heap(Kind::List, l);
}

Value make_group(Value grouper, Value list) {
  Value g = make_list({std::move(grouper), std::move(list)}, true);
  static_cast<ListObj*>(g.obj())->group = true;  // not shared yet
  return g;
}

Value make_dict(std::vector<std::pair<Value, Value>> items) {
  uint32_t d = 0;
  for (const auto& [k, v] : items) d = std::max({d, k.depth(), v.depth()});
  check_depth(d + 1);
  auto* o = new DictObj;
  o->items = std::move(items);
  o->depth = d + 1;
  if (o->items.size() > 16) {
    o->index.reserve(o->items.size());
    for (size_t i = 0; i < o->items.size(); ++i)
      if (o->items[i].first.is_str()) o->index.emplace(o->items[i].first.str(), i);
  }
  return Value::heap(Kind::Dict, o);
}

Value make_range(int64_t start, int64_t stop, int64_t step) {
  auto* r = new RangeObj;
  r->start = start;
  r->stop = stop;
  r->step = step;
  r->depth = 1;
  return Value::heap(Kind::Range, r);
}

// ---------------------------------------------------------------------------------------------------------------
// UTF-8

uint32_t utf8_decode(std::string_view s, size_t i, size_t* len) {
  const auto c = static_cast<unsigned char>(s[i]);
  auto cont = [&](size_t k) { return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80; };
  auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  if (c < 0x80) {
    *len = 1;
    return c;
  }
  if (c >= 0xC2 && c <= 0xDF && cont(1)) {
    *len = 2;
    return ((c & 0x1Fu) << 6) | byte(1);
  }
  if (c >= 0xE0 && c <= 0xEF && cont(1) && cont(2)) {
    uint32_t cp = ((c & 0x0Fu) << 12) | (byte(1) << 6) | byte(2);
    if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) {
      *len = 3;
      return cp;
    }
  }
  if (c >= 0xF0 && c <= 0xF4 && cont(1) && cont(2) && cont(3)) {
    uint32_t cp = ((c & 0x07u) << 18) | (byte(1) << 12) | (byte(2) << 6) | byte(3);
    if (cp >= 0x10000 && cp <= 0x10FFFF) {
      *len = 4;
      return cp;
    }
  }
  *len = 1;
  return 0xDC00 + c;  // an invalid byte: python's surrogateescape, re-encoded as the same byte by utf8_append
}

size_t utf8_next(std::string_view s, size_t i) {
  size_t len;
  utf8_decode(s, i, &len);
  return i + len;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
    out += static_cast<char>(cp - 0xDC00);  // an escaped invalid byte
  } else if (cp >= 0xD800 && cp <= 0xDFFF) {
    out += "\xEF\xBF\xBD";  // a lone surrogate (from a "\ud800" escape): U+FFFD
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

size_t utf8_length(std::string_view s) {
  if (is_ascii(s)) return s.size();
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i = utf8_next(s, i)) ++n;
  return n;
}

std::vector<size_t> char_offsets(std::string_view s) {
  std::vector<size_t> off;
  off.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); i = utf8_next(s, i)) off.push_back(i);
  off.push_back(s.size());
  return off;
}

bool is_space_cp(uint32_t cp) {
  switch (cp) {
    case ' ': case '\t': case '\n': case '\v': case '\f': case '\r': case 0x1C: case 0x1D: case 0x1E: case 0x1F:
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

// Simple case mapping for ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic and fullwidth Latin; other
// characters are caseless here.
uint32_t upper_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
  if (cp == 0xB5) return 0x39C;
  if (cp >= 0xE0 && cp <= 0xFE && cp != 0xF7) return cp - 32;
  if (cp == 0xFF) return 0x178;
  if ((cp >= 0x100 && cp <= 0x137) || (cp >= 0x14A && cp <= 0x177)) return cp & ~1u;
  if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E)) return (cp & 1) ? cp : cp - 1;
  if (cp == 0x3C2) return 0x3A3;
  if (cp >= 0x3B1 && cp <= 0x3C9) return cp - 32;
  if (cp >= 0x430 && cp <= 0x44F) return cp - 32;
  if (cp >= 0x450 && cp <= 0x45F) return cp - 80;
  if (cp >= 0xFF41 && cp <= 0xFF5A) return cp - 32;
  return cp;
}

uint32_t lower_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 32;
  if (cp == 0x178) return 0xFF;
  if ((cp >= 0x100 && cp <= 0x137) || (cp >= 0x14A && cp <= 0x177)) return cp | 1u;
  if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E)) return (cp & 1) ? cp + 1 : cp;
  if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) return cp + 32;
  if (cp >= 0x410 && cp <= 0x42F) return cp + 32;
  if (cp >= 0x400 && cp <= 0x40F) return cp + 80;
  if (cp >= 0xFF21 && cp <= 0xFF3A) return cp + 32;
  return cp;
}

bool is_digit_cp(uint32_t cp) { return cp >= '0' && cp <= '9'; }

bool is_alpha_cp(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  if (cp >= 0xDC80 && cp <= 0xDCFF) return false;  // invalid byte
  if (upper_cp(cp) != cp || lower_cp(cp) != cp) return true;
  if (cp < 0xC0 || cp == 0xD7 || cp == 0xF7 || is_space_cp(cp)) return false;
  // Punctuation, symbols and other non-letters in the common blocks.
  if ((cp >= 0x2000 && cp <= 0x2BFF) || (cp >= 0x3000 && cp <= 0x303F) || (cp >= 0xFF00 && cp <= 0xFF20) ||
      (cp >= 0xFE30 && cp <= 0xFE6F) || (cp >= 0x1F000 && cp <= 0x1FAFF) || (cp >= 0xE000 && cp <= 0xF8FF))
    return false;
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Python semantics

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: case Kind::None: return false;
    case Kind::Bool: return v.b();
    case Kind::Int: return v.i() != 0;
    case Kind::Float: return v.f() != 0.0;
    case Kind::Str: return !v.str().empty();
    case Kind::List: return !v.list().items.empty();
    case Kind::Dict: return !v.dict().items.empty();
    case Kind::Range: return v.range().size() > 0;
    default: return true;
  }
}

const char* type_name(const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Builtin: return "function";
    case Kind::Namespace: return "Namespace";
    case Kind::Str: return v.is_safe() ? "Markup" : "str";
    case Kind::List: return v.list().tuple ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Range: return "range";
    case Kind::Callable:
      switch (v.callable().type) {
        case CallableObj::Type::Macro: return "Macro";
        case CallableObj::Type::Method: return "builtin_function_or_method";
        case CallableObj::Type::Joiner: return "Joiner";
      }
      return "function";
    case Kind::Object: return v.object().type == ObjectObj::Type::Loop ? "LoopContext" : "Cycler";
  }
  return "object";
}

void append_float(std::string& out, double d) {
  if (std::isnan(d)) {
    out += "nan";
    return;
  }
  if (std::isinf(d)) {
    out += d < 0 ? "-inf" : "inf";
    return;
  }
  if (d == 0) {
    out += std::signbit(d) ? "-0.0" : "0.0";
    return;
  }
  // The shortest digits that round-trip (what python's repr uses), laid out by python's rule: positional
  // notation when the decimal exponent is in [-4, 16), otherwise d.ddde+XX.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));
  bool neg = sci[0] == '-';
  if (neg) sci.remove_prefix(1);
  size_t epos = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, epos))
    if (c != '.') digits += c;
  int exp10 = std::atoi(std::string(sci.substr(epos + 1)).c_str());
  int decpt = exp10 + 1;  // value = 0.DIGITS * 10^decpt
  if (neg) out += '-';
  if (decpt > 16 || decpt < -3) {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out.append(digits, 1, std::string::npos);
    }
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += e;
  } else if (decpt <= 0) {
    out += "0.";
    out.append(static_cast<size_t>(-decpt), '0');
    out += digits;
  } else if (static_cast<size_t>(decpt) >= digits.size()) {
    out += digits;
    out.append(static_cast<size_t>(decpt) - digits.size(), '0');
    out += ".0";
  } else {
    out.append(digits, 0, static_cast<size_t>(decpt));
    out += '.';
    out.append(digits, static_cast<size_t>(decpt), std::string::npos);
  }
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

// Characters python's str.isprintable() rejects (approximately: controls, separators, format characters,
// private use), which repr() escapes.
bool printable_cp(uint32_t cp) {
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp < 0x7F) return true;
  if (cp <= 0xA0 || cp == 0xAD) return false;
  if (cp >= 0xDC80 && cp <= 0xDCFF) return false;
  if (cp == 0x061C || cp == 0x1680 || cp == 0x180E || cp == 0x3000 || cp == 0xFEFF) return false;
  if ((cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) || (cp >= 0x205F && cp <= 0x206F)) return false;
  if ((cp >= 0xD800 && cp <= 0xF8FF) || (cp >= 0xFFF9 && cp <= 0xFFFB) || (cp >= 0xFFFE && cp <= 0xFFFF)) return false;
  if (cp >= 0xE0000) return cp >= 0xE0100 && cp <= 0xE01EF;
  return true;
}

void append_str_repr(std::string& out, std::string_view s) {
  char quote = '\'';
  if (s.find('\'') != std::string_view::npos && s.find('"') == std::string_view::npos) quote = '"';
  out += quote;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (printable_cp(cp)) {
      out.append(s, i, len);
    } else {
      char buf[16];
      if (cp >= 0xDC80 && cp <= 0xDCFF) std::snprintf(buf, sizeof buf, "\\x%02x", cp - 0xDC00);
      else if (cp <= 0xFF) std::snprintf(buf, sizeof buf, "\\x%02x", cp);
      else if (cp <= 0xFFFF) std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      else std::snprintf(buf, sizeof buf, "\\U%08x", cp);
      out += buf;
    }
    i += len;
  }
  out += quote;
}

void check_recursion(int depth) {
  if (depth > kMaxValueDepth) fail("value nested too deeply to print");
}

void append_obj_str(std::string& out, const Value& v, Budget& b, int depth) {
  switch (v.kind()) {
    case Kind::Builtin:
      out += "<function ";
      out += global_name(static_cast<int>(v.i()));
      out += '>';
      return;
    case Kind::Namespace: {
      out += "<Namespace {";
      bool first = true;
      for (const auto& [k, val] : v.nsp()->attrs) {
        if (!first) out += ", ";
        first = false;
        append_str_repr(out, k);
        out += ": ";
        append_repr(out, val, b, depth + 1);
        b.check_size(out.size());
      }
      out += "}>";
      return;
    }
    case Kind::Range: {
      const RangeObj& r = v.range();
      out += "range(" + std::to_string(r.start) + ", " + std::to_string(r.stop);
      if (r.step != 1) out += ", " + std::to_string(r.step);
      out += ')';
      return;
    }
    case Kind::Callable: {
      const CallableObj& c = v.callable();
      if (c.type == CallableObj::Type::Macro) out += "<Macro '" + c.macro->name + "'>";
      else if (c.type == CallableObj::Type::Joiner) out += "<Joiner>";
      else out += "<built-in method>";
      return;
    }
    case Kind::Object: {
      const ObjectObj& o = v.object();
      if (o.type == ObjectObj::Type::Loop)
        out += "<LoopContext " + std::to_string(o.index0 + 1) + "/" + std::to_string(o.length) + ">";
      else out += "<Cycler>";
      return;
    }
    default: return;
  }
}

}  // namespace

void append_str(std::string& out, const Value& v, Budget& b, int depth) {
  switch (v.kind()) {
    case Kind::Undefined: return;
    case Kind::None: out += "None"; return;
    case Kind::Bool: out += v.b() ? "True" : "False"; return;
    case Kind::Int: {
      char buf[32];
      auto r = std::to_chars(buf, buf + sizeof buf, v.i());
      out.append(buf, r.ptr);
      return;
    }
    case Kind::Float: append_float(out, v.f()); return;
    case Kind::Str: out += v.str(); return;
    case Kind::List: case Kind::Dict: append_repr(out, v, b, depth); return;
    default: append_obj_str(out, v, b, depth); return;
  }
}

void append_repr(std::string& out, const Value& v, Budget& b, int depth) {
  check_recursion(depth);
  switch (v.kind()) {
    case Kind::Undefined: out += "Undefined"; return;
    case Kind::Str:
      if (v.is_safe()) {
        out += "Markup(";
        append_str_repr(out, v.str());
        out += ')';
      } else {
        append_str_repr(out, v.str());
      }
      b.check_size(out.size());
      b.charge_bytes(v.str().size());
      return;
    case Kind::List: {
      const ListObj& l = v.list();
      out += l.tuple ? '(' : '[';
      for (size_t i = 0; i < l.items.size(); ++i) {
        if (i) out += ", ";
        append_repr(out, l.items[i], b, depth + 1);
        b.check_size(out.size());
      }
      if (l.tuple && l.items.size() == 1) out += ',';
      out += l.tuple ? ')' : ']';
      b.charge(l.items.size());
      return;
    }
    case Kind::Dict: {
      out += '{';
      bool first = true;
      for (const auto& [k, val] : v.dict().items) {
        if (!first) out += ", ";
        first = false;
        append_repr(out, k, b, depth + 1);
        out += ": ";
        append_repr(out, val, b, depth + 1);
        b.check_size(out.size());
      }
      out += '}';
      b.charge(v.dict().items.size());
      return;
    }
    default: append_str(out, v, b, depth); return;
  }
}

std::string to_str(const Value& v, Budget& b) {
  if (v.is_str()) return v.str();
  std::string s;
  append_str(s, v, b);
  return s;
}

bool equals(const Value& a, const Value& b, Budget* budget, int depth) {
  if (depth > kMaxValueDepth) fail("value nested too deeply to compare");
  if (a.is_number() && b.is_number()) {
    if (a.is(Kind::Float) || b.is(Kind::Float)) return a.as_double() == b.as_double();
    return a.i() == b.i();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::Undefined: case Kind::None: return true;
    case Kind::Str:
      if (a.obj() == b.obj()) return true;
      if (budget) budget->charge_bytes(std::min(a.str().size(), b.str().size()));
      return a.str() == b.str();
    case Kind::List: {
      const ListObj &x = a.list(), &y = b.list();
      if (&x == &y) return true;
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      if (budget) budget->charge(x.items.size());
      for (size_t i = 0; i < x.items.size(); ++i)
        if (!equals(x.items[i], y.items[i], budget, depth + 1)) return false;
      return true;
    }
    case Kind::Dict: {
      const DictObj &x = a.dict(), &y = b.dict();
      if (&x == &y) return true;
      if (x.items.size() != y.items.size()) return false;
      if (budget) budget->charge(x.items.size() * (y.index.empty() ? y.items.size() : 1));
      for (const auto& [k, v] : x.items) {
        const Value* o = y.find(k);
        if (!o || !equals(v, *o, budget, depth + 1)) return false;
      }
      return true;
    }
    case Kind::Range: {
      const RangeObj &x = a.range(), &y = b.range();
      int64_t n = x.size();
      if (n != y.size()) return false;
      if (n == 0) return true;
      return x.start == y.start && (n == 1 || x.step == y.step);
    }
    case Kind::Builtin: return a.i() == b.i();
    case Kind::Namespace: return a.nsp() == b.nsp();
    default: return a.obj() == b.obj();
  }
}

int compare(const Value& a, const Value& b, const char* op) {
  if (a.is_number() && b.is_number()) {
    if (a.is(Kind::Float) || b.is(Kind::Float)) {
      double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : (x > y ? 1 : 0);
    }
    return a.i() < b.i() ? -1 : (a.i() > b.i() ? 1 : 0);
  }
  if (a.is_str() && b.is_str()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple) {
    const auto &x = a.list().items, &y = b.list().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equals(x[i], y[i])) return compare(x[i], y[i], op);
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  fail(std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) +
       "'");
}

bool contains(const Value& container, const Value& item, Budget* budget) {
  switch (container.kind()) {
    case Kind::Undefined: return false;  // iterating an Undefined yields nothing
    case Kind::Str:
      if (!item.is_str())
        fail(std::string("'in <string>' requires string as left operand, not ") + type_name(item));
      if (budget) budget->charge_bytes(container.str().size());
      return container.str().find(item.str()) != std::string::npos;
    case Kind::List:
      if (budget) budget->charge(container.list().items.size());
      for (const Value& v : container.list().items)
        if (equals(v, item, budget)) return true;
      return false;
    case Kind::Dict:
      if (budget && container.dict().index.empty()) budget->charge(container.dict().items.size());
      return container.dict().find(item) != nullptr;
    case Kind::Range: {
      if (!item.is_number()) return false;
      double x = item.as_double();
      if (x != std::floor(x)) return false;
      const RangeObj& r = container.range();
      if (std::fabs(x) >= 9.2e18) return false;
      auto v = static_cast<int64_t>(x);
      if (r.step > 0 ? (v < r.start || v >= r.stop) : (v > r.start || v <= r.stop)) return false;
      return (static_cast<__int128>(v) - r.start) % r.step == 0;
    }
    default: fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

// ---------------------------------------------------------------------------------------------------------------
// json.dumps

namespace {

void append_json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        default:
          if (c < 0x20 || (ensure_ascii && c == 0x7F)) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp = utf8_decode(s, i, &len);
    if (!ensure_ascii) {
      out.append(s, i, len);
    } else {
      if (cp >= 0xDC80 && cp <= 0xDCFF) cp = 0xFFFD;
      char buf[16];
      if (cp >= 0x10000) {
        uint32_t v = cp - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      }
      out += buf;
    }
    i += len;
  }
  out += '"';
}

void json_newline(std::string& out, const JsonOptions& opt, int level, Budget& b) {
  out += '\n';
  for (int i = 0; i < level; ++i) {
    out += opt.indent;
    b.check_size(out.size());
  }
  b.charge_bytes(opt.indent.size() * static_cast<size_t>(level));
}

[[noreturn]] void not_serializable(const Value& v) {
  fail(std::string("Object of type ") + type_name(v) + " is not JSON serializable");
}

// A dict key as json.dumps writes it (str, or int/float/bool/None converted), or fails.
std::string json_key(const Value& k) {
  switch (k.kind()) {
    case Kind::Str: return k.str();
    case Kind::None: return "null";
    case Kind::Bool: return k.b() ? "true" : "false";
    case Kind::Int: return std::to_string(k.i());
    case Kind::Float: {
      if (std::isnan(k.f())) return "NaN";
      if (std::isinf(k.f())) return k.f() < 0 ? "-Infinity" : "Infinity";
      std::string s;
      append_float(s, k.f());
      return s;
    }
    default:
      fail(std::string("keys must be str, int, float, bool or None, not ") + type_name(k));
  }
}

}  // namespace

void append_json(std::string& out, const Value& v, const JsonOptions& opt, Budget& b, int level) {
  check_recursion(level);
  switch (v.kind()) {
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.b() ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i()); return;
    case Kind::Float:
      if (std::isnan(v.f())) out += "NaN";
      else if (std::isinf(v.f())) out += v.f() < 0 ? "-Infinity" : "Infinity";
      else append_float(out, v.f());
      return;
    case Kind::Str:
      append_json_string(out, v.str(), opt.ensure_ascii);
      b.check_size(out.size());
      b.charge_bytes(v.str().size());
      return;
    case Kind::List: {
      const auto& items = v.list().items;
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += opt.item_sep;
        if (opt.has_indent) json_newline(out, opt, level + 1, b);
        append_json(out, items[i], opt, b, level + 1);
        b.check_size(out.size());
      }
      if (opt.has_indent) json_newline(out, opt, level, b);
      out += ']';
      b.charge(items.size());
      return;
    }
    case Kind::Dict: {
      const auto& items = v.dict().items;
      if (items.empty()) {
        out += "{}";
        return;
      }
      std::vector<std::pair<std::string, const Value*>> entries;
      entries.reserve(items.size());
      for (const auto& [k, val] : items) entries.emplace_back(json_key(k), &val);
      if (opt.sort_keys) {
        // python sorts the original keys: all must be mutually ordered (compare fails otherwise).
        std::vector<size_t> order(items.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t x, size_t y) { return compare(items[x].first, items[y].first, "<") < 0; });
        std::vector<std::pair<std::string, const Value*>> sorted;
        sorted.reserve(order.size());
        for (size_t i : order) sorted.push_back(std::move(entries[i]));
        entries = std::move(sorted);
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += opt.item_sep;
        if (opt.has_indent) json_newline(out, opt, level + 1, b);
        append_json_string(out, entries[i].first, opt.ensure_ascii);
        out += opt.key_sep;
        append_json(out, *entries[i].second, opt, b, level + 1);
        b.check_size(out.size());
      }
      if (opt.has_indent) json_newline(out, opt, level, b);
      out += '}';
      b.charge(entries.size() * (opt.sort_keys ? 8 : 1));
      return;
    }
    default: not_serializable(v);
  }
}

Value from_json(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxValueDepth) fail("context nested too deeply (more than " + std::to_string(kMaxValueDepth) + " levels)");
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null: case T::discarded: return Value::none();
    case T::boolean: return Value::boolean(j.get<bool>());
    case T::number_integer: return Value::integer(j.get<int64_t>());
    case T::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value::integer(static_cast<int64_t>(u));
      return Value::number(static_cast<double>(u));
    }
    case T::number_float: return Value::number(j.get<double>());
    case T::string: return Value::string(j.get<std::string>());
    case T::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e, depth + 1));
      return make_list(std::move(items));
    }
    case T::object: {
      std::vector<std::pair<Value, Value>> items;
      items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it)
        items.emplace_back(Value::string(it.key()), from_json(it.value(), depth + 1));
      return make_dict(std::move(items));
    }
    case T::binary: fail("binary values are not supported in the template context");
  }
  return Value::none();
}

}  // namespace lokal::jinja::detail
