// chat/jinja_builtins.cpp - jinja2's filters and tests, and the globals chat templates use (range, namespace,
// dict, cycler, joiner, raise_exception, strftime_now).
//
// Each filter mirrors jinja2 3.1's implementation (filters.py) with the environment transformers uses
// (autoescape off, ImmutableSandboxedEnvironment), except `tojson`, which is transformers' json.dumps-based one.
// Filters that return generators in jinja2 (map, select, reverse, ...) return lists here, which behave the same
// in every use a template can make of them, except that they are also JSON serializable.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <string_view>

#include "chat/jinja_impl.h"

namespace lokal::jinja::detail {

// ---------------------------------------------------------------------------------------------------------------
// Argument binding: python-style positional + keyword parameters.

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

namespace {

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
  return in.missing(v, Value::string(name));
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

Value f_groupby(Interp& in, const Value& v, const Args& a) {
  Bound b = bind(a, "groupby", {"attribute", "default", "case_sensitive"});
  if (!b[0]) fail("groupby() requires an attribute");
  bool cs = bool_arg(b[2], false);
  AttrGetter key_of = make_getter(in, b[0], !cs), grouper_of = make_getter(in, b[0], false);
  if (b[1] && !b[1]->is_none()) {
    key_of.dflt = grouper_of.dflt = *b[1];
    key_of.has_default = grouper_of.has_default = true;
  }
  std::vector<Value> items = in.iterate(v), keys;
  std::vector<size_t> order;
  for (size_t i = 0; i < items.size(); ++i) {
    keys.push_back(key_of(in, items[i]));
    order.push_back(i);
  }
  sort_values(in, order, keys, false);
  std::vector<Value> groups;
  for (size_t k = 0; k < order.size();) {
    std::vector<Value> members;
    size_t j = k;
    while (j < order.size() && equals(keys[order[j]], keys[order[k]], &in.budget)) members.push_back(items[order[j++]]);
    Value grouper = cs ? keys[order[k]] : grouper_of(in, members[0]);
    groups.push_back(make_group(std::move(grouper), make_list(std::move(members))));
    k = j;
  }
  return make_list(std::move(groups));
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
    {"format", f_format}, {"groupby", f_groupby}, {"indent", f_indent}, {"int", f_int}, {"items", f_items}, {"join", f_join},
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
  int64_t v[3] = {0, 0, 0};
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
  if (!gmtime_r(&t, &tmv)) fail("strftime_now(): the clock is out of range");
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

}  // namespace lokal::jinja::detail
