// chat/jinja_render.cpp - the evaluator: walks the AST of a parsed template with python/jinja2 semantics.
//
// Scoping follows jinja2: the template level writes Interp::root; a for-loop iteration, a macro call and the
// bodies of with / filter / call / set blocks get a new Scope, so `set` inside them stays local (which is why
// templates use namespace() to carry state out of loops); `if` opens no scope. Lookups walk the local scopes,
// then the template level, then the globals (range, namespace, ...). A macro sees its arguments, what its
// definition site could see (copied into the macro when it is defined, unless it is defined at template level),
// and the template level as it is when the macro runs.
//
// Errors are JinjaError without a line; the innermost expression or statement the error passes through adds
// its line. Every evaluation step is charged to the Budget, every nested evaluation to the depth limit.
#include <cmath>
#include <ctime>

#include "chat/jinja_impl.h"
#include "core/error.h"

namespace lokal::jinja::detail {

Interp::Interp(const Template::Impl& t, const Limits& l, int64_t now_)
    : tpl(t), limits(l), now(now_) {
  budget.max_steps = l.max_steps;
  budget.max_bytes = l.max_output_bytes;
  root.resize(t.parsed.symbols.size());
  root_bound.assign(t.parsed.symbols.size(), 0);
}

Interp::~Interp() {
  // Values inside namespaces may refer to other namespaces only by plain pointer, so destroying them in any
  // order is safe; clear the template-level values first for clarity.
  root.clear();
  namespaces.clear();
}

Interp::DepthGuard::DepthGuard(Interp& in) : in_(in) {
  if (++in_.depth > in_.limits.max_depth) {
    --in_.depth;
    fail("template exceeded max_depth (" + std::to_string(in_.limits.max_depth) +
         " nested calls and expressions; unbounded macro recursion?)");
  }
}

void Interp::charge_value(const Value& v) {
  switch (v.kind()) {
    case Kind::Str: budget.charge_bytes(v.str().size()); break;
    case Kind::List: budget.charge(v.list().items.size()); break;
    case Kind::Dict: budget.charge(v.dict().items.size()); break;
    default: break;
  }
}

NamespaceObj* Interp::new_namespace() {
  budget.charge(1);
  namespaces.push_back(std::make_unique<NamespaceObj>());
  return namespaces.back().get();
}

void Interp::undefined_error(const Value& u) {
  if (const std::string* m = u.undefined_message()) fail(*m);
  fail("undefined value");
}

void Interp::write(std::string_view s) {
  if (out->size() + s.size() > limits.max_output_bytes)
    fail("template output exceeded max_output_bytes (" + std::to_string(limits.max_output_bytes) + " bytes)");
  out->append(s);
  budget.charge_bytes(s.size());
}

Value Interp::lookup(int sym) {
  for (Scope* s = scope; s; s = s->parent)
    if (Value* v = s->find(sym)) return *v;
  if (root_bound[static_cast<size_t>(sym)]) return root[static_cast<size_t>(sym)];
  int g = tpl.parsed.symbol_global[static_cast<size_t>(sym)];
  if (g >= 0) return Value::builtin(g);
  return Value::undefined("'" + tpl.parsed.symbols[static_cast<size_t>(sym)] + "' is undefined");
}

Value Interp::missing(const Value& obj, const Value& key) {
  std::string msg;
  if (obj.is_none()) msg = "'None'";
  else msg = std::string("'") + type_name(obj) + " object'";
  if (key.is_str()) {
    msg += " has no attribute '" + key.str() + "'";
  } else {
    msg += " has no element ";
    append_repr(msg, key, budget);
  }
  return Value::undefined(std::move(msg));
}

namespace {

[[noreturn]] void int_overflow() { fail("integer overflow (python would use a big integer)"); }

bool is_dunder(std::string_view n) { return n.size() >= 2 && n[0] == '_' && n[1] == '_'; }

Value unsafe_attr(const Value& obj, std::string_view name) {
  return Value::undefined("access to attribute '" + std::string(name) + "' of '" + type_name(obj) +
                              "' object is unsafe",
                          true);
}

// Python index -> position, or -1 when out of range.
int64_t norm_index(int64_t i, int64_t n) {
  if (i < 0) i += n;
  return (i < 0 || i >= n) ? -1 : i;
}

// Python's slice.indices(): the positions first, first+step, ... before *last (their count is returned).
int64_t slice_indices(int64_t n, const Value* start, const Value* stop, int64_t step, int64_t* first,
                      int64_t* last = nullptr) {
  auto clamp = [&](const Value* v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = v->i();
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  int64_t lo = clamp(start, step < 0 ? n - 1 : 0);
  int64_t hi = clamp(stop, step < 0 ? -1 : n);
  *first = lo;
  if (last) *last = hi;
  // lo and hi lie in [-1, n]; |step| may be as large as 2^63, so divide in unsigned arithmetic.
  if (step > 0) return lo < hi ? static_cast<int64_t>(static_cast<uint64_t>(hi - lo - 1) / static_cast<uint64_t>(step)) + 1 : 0;
  return lo > hi ? static_cast<int64_t>(static_cast<uint64_t>(lo - hi - 1) / (0 - static_cast<uint64_t>(step))) + 1 : 0;
}

Value str_char(const std::string& s, size_t off, size_t next) { return Value::string(s.substr(off, next - off)); }

}  // namespace

Value Interp::get_attr(const Value& obj, const Value& name_v) {
  const std::string& name = name_v.str();
  switch (obj.kind()) {
    case Kind::Undefined:
      if (is_dunder(name)) return unsafe_attr(obj, name);  // python attributes of the Undefined object itself
      undefined_error(obj);
    case Kind::Namespace:
      if (Value* v = obj.nsp()->find(name)) return *v;
      return Value::undefined("'Namespace' object has no attribute '" + name + "'");
    case Kind::Object: {
      ObjectObj& o = obj.object();
      if (o.type == ObjectObj::Type::Loop) {
        Value v = loop_attr(o, name);
        if (!v.is_undefined()) return v;
      } else if (name == "current") {
        const auto& items = o.items.list().items;
        return items[static_cast<size_t>(o.pos)];
      }
      Value m;
      if (lookup_method(obj, name, &m)) return m;
      return missing(obj, name_v);
    }
    default: {
      if (is_dunder(name)) return unsafe_attr(obj, name);
      if (obj.is_list() && obj.list().group) {
        if (name == "grouper") return obj.list().items[0];
        if (name == "list") return obj.list().items[1];
      }
      Value m;
      if (lookup_method(obj, name, &m)) return m;
      if (obj.is_dict())
        if (const Value* v = obj.dict().find(std::string_view(name))) return *v;
      return missing(obj, name_v);
    }
  }
}

Value Interp::get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Kind::Undefined: undefined_error(obj);
    case Kind::Dict:
      if (const Value* v = obj.dict().find(key)) return *v;
      break;
    case Kind::List:
      if (key.is_int_like()) {
        const auto& items = obj.list().items;
        int64_t i = norm_index(key.i(), static_cast<int64_t>(items.size()));
        if (i >= 0) return items[static_cast<size_t>(i)];
      }
      break;
    case Kind::Str:
      if (key.is_int_like()) {
        charge_value(obj);
        const std::string& s = obj.str();
        if (is_ascii(s)) {
          int64_t i = norm_index(key.i(), static_cast<int64_t>(s.size()));
          if (i >= 0) return Value::string(std::string(1, s[static_cast<size_t>(i)]));
        } else {
          std::vector<size_t> off = char_offsets(s);
          int64_t i = norm_index(key.i(), static_cast<int64_t>(off.size() - 1));
          if (i >= 0) return str_char(s, off[static_cast<size_t>(i)], off[static_cast<size_t>(i) + 1]);
        }
      }
      break;
    case Kind::Range:
      if (key.is_int_like()) {
        const RangeObj& r = obj.range();
        int64_t i = norm_index(key.i(), r.size());
        if (i >= 0) return Value::integer(r.at(i));
      }
      break;
    default: break;
  }
  // jinja2 falls back to the attribute of that name.
  if (key.is_str()) {
    if (obj.kind() == Kind::Namespace || obj.kind() == Kind::Object) return get_attr(obj, key);
    if (is_dunder(key.str())) return unsafe_attr(obj, key.str());
    Value m;
    if (lookup_method(obj, key.str(), &m)) return m;
  }
  return missing(obj, key);
}

Value Interp::slice(const Value& obj, const SliceExpr& s) {
  if (obj.is_undefined()) undefined_error(obj);
  Value bounds[3];
  const Value* ptr[3] = {nullptr, nullptr, nullptr};
  const Expr* exprs[3] = {s.start.get(), s.stop.get(), s.step.get()};
  for (int k = 0; k < 3; ++k) {
    if (!exprs[k]) continue;
    bounds[k] = eval(*exprs[k]);
    if (bounds[k].is_none()) continue;
    if (!bounds[k].is_int_like()) return Value::undefined("slice indices must be integers or None");
    ptr[k] = &bounds[k];
  }
  int64_t step = ptr[2] ? ptr[2]->i() : 1;
  if (step == 0) fail("slice step cannot be zero");
  charge_value(obj);
  int64_t first = 0, count = 0;
  switch (obj.kind()) {
    case Kind::Str: {
      const std::string& str = obj.str();
      std::string r;
      if (is_ascii(str)) {
        count = slice_indices(static_cast<int64_t>(str.size()), ptr[0], ptr[1], step, &first);
        r.reserve(static_cast<size_t>(count));
        for (int64_t k = 0; k < count; ++k) r += str[static_cast<size_t>(first + k * step)];
      } else {
        std::vector<size_t> off = char_offsets(str);
        count = slice_indices(static_cast<int64_t>(off.size() - 1), ptr[0], ptr[1], step, &first);
        for (int64_t k = 0; k < count; ++k) {
          auto i = static_cast<size_t>(first + k * step);
          r.append(str, off[i], off[i + 1] - off[i]);
        }
      }
      budget.charge_bytes(r.size());
      return Value::string(std::move(r), obj.is_safe());
    }
    case Kind::List: {
      const ListObj& l = obj.list();
      count = slice_indices(static_cast<int64_t>(l.items.size()), ptr[0], ptr[1], step, &first);
      budget.charge(static_cast<uint64_t>(count));
      std::vector<Value> items;
      items.reserve(static_cast<size_t>(count));
      for (int64_t k = 0; k < count; ++k) items.push_back(l.items[static_cast<size_t>(first + k * step)]);
      return make_list(std::move(items), l.tuple);
    }
    case Kind::Range: {  // a range again, like python
      const RangeObj& r = obj.range();
      int64_t last = 0, new_step = 0;
      slice_indices(r.size(), ptr[0], ptr[1], step, &first, &last);
      if (__builtin_mul_overflow(r.step, step, &new_step)) int_overflow();
      auto at = [&](int64_t i) {  // r.start + i * r.step, clamped to int64 (python has big integers)
        __int128 v = static_cast<__int128>(r.start) + static_cast<__int128>(i) * r.step;
        return v > INT64_MAX ? INT64_MAX : v < INT64_MIN ? INT64_MIN : static_cast<int64_t>(v);
      };
      return make_range(at(first), at(last), new_step);
    }
    default: return Value::undefined(std::string("'") + type_name(obj) + "' object is not subscriptable");
  }
}

std::vector<Value> Interp::iterate(const Value& v) {
  std::vector<Value> items;
  switch (v.kind()) {
    case Kind::Undefined: break;
    case Kind::List: items = v.list().items; break;
    case Kind::Dict:
      items.reserve(v.dict().items.size());
      for (const auto& kv : v.dict().items) items.push_back(kv.first);
      break;
    case Kind::Str: {
      const std::string& s = v.str();
      for (size_t i = 0; i < s.size();) {
        size_t n = utf8_next(s, i);
        items.push_back(Value::string(s.substr(i, n - i), v.is_safe()));
        i = n;
      }
      break;
    }
    case Kind::Range: {
      const RangeObj& r = v.range();
      int64_t n = r.size();
      budget.charge(static_cast<uint64_t>(n));
      items.reserve(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) items.push_back(Value::integer(r.at(i)));
      break;
    }
    default: fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
  budget.charge(items.size());
  return items;
}

Value Interp::apply_filter(int id, const std::string& name, const Value& input, const Args& args) {
  if (id < 0) fail("unknown filter '" + name + "'");
  charge_value(input);
  return filter_fn(id)(*this, input, args);
}

bool Interp::apply_test(int id, const std::string& name, const Value& input, const Args& args) {
  if (id < 0) fail("unknown test '" + name + "'");
  return test_fn(id)(*this, input, args);
}

// ---------------------------------------------------------------------------------------------------------------
// Expressions

Value Interp::eval(const Expr& e) {
  DepthGuard g(*this);
  budget.charge(1);
  try {
    return eval_inner(e);
  } catch (JinjaError& err) {
    if (!err.line) err.line = e.line;
    throw;
  }
}

void Interp::eval_args(const CallArgs& a, Args& out_args) {
  out_args.pos.reserve(a.pos.size());
  for (const auto& e : a.pos) out_args.pos.push_back(eval(*e));
  if (a.star) {
    for (Value& v : iterate(eval(*a.star))) out_args.pos.push_back(std::move(v));
  }
  for (const auto& [k, e] : a.kw) out_args.kw.emplace_back(k, eval(*e));
  if (a.dstar) {
    Value d = eval(*a.dstar);
    if (!d.is_dict()) fail(std::string("argument after ** must be a mapping, not ") + type_name(d));
    for (const auto& [k, v] : d.dict().items) {
      if (!k.is_str()) fail("keywords must be strings");
      out_args.kw.emplace_back(k.str(), v);
    }
  }
}

namespace {

[[noreturn]] void bad_operands(const char* op, const Value& a, const Value& b) {
  fail(std::string("unsupported operand type(s) for ") + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

int64_t int_pow(int64_t base, int64_t exp) {
  int64_t result = 1;
  while (exp > 0) {
    if (exp & 1)
      if (__builtin_mul_overflow(result, base, &result)) int_overflow();
    exp >>= 1;
    if (exp && __builtin_mul_overflow(base, base, &base)) int_overflow();
  }
  return result;
}

}  // namespace

Value Interp::binary(BinOp op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  const bool nums = a.is_number() && b.is_number();
  const bool floats = nums && (a.is(Kind::Float) || b.is(Kind::Float));
  int64_t r = 0;
  switch (op) {
    case BinOp::Add:
      if (floats) return Value::number(a.as_double() + b.as_double());
      if (nums) {
        if (__builtin_add_overflow(a.i(), b.i(), &r)) int_overflow();
        return Value::integer(r);
      }
      if (a.is_str() && b.is_str()) {
        budget.check_size(a.str().size() + b.str().size());
        budget.charge_bytes(a.str().size() + b.str().size());
        if (a.is_safe() || b.is_safe())  // markupsafe: the plain operand is escaped
          return Value::string((a.is_safe() ? a.str() : html_escape(a.str())) +
                                   (b.is_safe() ? b.str() : html_escape(b.str())),
                               true);
        std::string s;
        s.reserve(a.str().size() + b.str().size());
        s += a.str();
        s += b.str();
        return Value::string(std::move(s));
      }
      if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple) {
        const auto &x = a.list().items, &y = b.list().items;
        budget.check_size(x.size() + y.size());
        budget.charge(x.size() + y.size());
        std::vector<Value> items;
        items.reserve(x.size() + y.size());
        items.insert(items.end(), x.begin(), x.end());
        items.insert(items.end(), y.begin(), y.end());
        return make_list(std::move(items), a.list().tuple);
      }
      bad_operands("+", a, b);
    case BinOp::Sub:
      if (floats) return Value::number(a.as_double() - b.as_double());
      if (nums) {
        if (__builtin_sub_overflow(a.i(), b.i(), &r)) int_overflow();
        return Value::integer(r);
      }
      bad_operands("-", a, b);
    case BinOp::Mul: {
      if (floats) return Value::number(a.as_double() * b.as_double());
      if (nums) {
        if (__builtin_mul_overflow(a.i(), b.i(), &r)) int_overflow();
        return Value::integer(r);
      }
      // sequence * int (either order)
      const Value* seq = a.is_int_like() ? &b : &a;
      const Value* cnt = a.is_int_like() ? &a : &b;
      if (!cnt->is_int_like() || !(seq->is_str() || seq->is_list())) bad_operands("*", a, b);
      int64_t n = std::max<int64_t>(0, cnt->i());
      if (seq->is_str()) {
        const std::string& s = seq->str();
        if (n && s.size() > limits.max_output_bytes / static_cast<uint64_t>(n)) budget.over_size(0);
        size_t total = s.size() * static_cast<size_t>(n);
        budget.charge_bytes(total);
        std::string out_s;
        if (total) {
          out_s.reserve(total);
          out_s += s;
          while (out_s.size() * 2 <= total) out_s += out_s;  // doubling: O(log n) appends
          out_s.append(out_s, 0, total - out_s.size());
        }
        return Value::string(std::move(out_s), seq->is_safe());
      }
      const auto& items = seq->list().items;
      if (n && items.size() > limits.max_output_bytes / static_cast<uint64_t>(n)) budget.over_size(0);
      size_t total = items.size() * static_cast<size_t>(n);
      budget.charge(total);
      std::vector<Value> out_items;
      out_items.reserve(total);
      for (int64_t k = 0; k < n; ++k) out_items.insert(out_items.end(), items.begin(), items.end());
      return make_list(std::move(out_items), seq->list().tuple);
    }
    case BinOp::Div:
      if (!nums) bad_operands("/", a, b);
      if (b.as_double() == 0) fail("division by zero");
      return Value::number(a.as_double() / b.as_double());
    case BinOp::FloorDiv:
      if (!nums) bad_operands("//", a, b);
      if (floats) {
        double x = a.as_double(), y = b.as_double();
        if (y == 0) fail("float floor division by zero");
        double mod = std::fmod(x, y), div = (x - mod) / y;
        if (mod != 0 && ((y < 0) != (mod < 0))) div -= 1.0;
        if (div != 0) {
          double fl = std::floor(div);
          if (div - fl > 0.5) fl += 1.0;
          return Value::number(fl);
        }
        return Value::number(std::copysign(0.0, x / y));
      } else {
        int64_t x = a.i(), y = b.i();
        if (y == 0) fail("integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) int_overflow();
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return Value::integer(q);
      }
    case BinOp::Mod:
      if (a.is_str()) return percent_format(*this, a, b);
      if (!nums) bad_operands("%", a, b);
      if (floats) {
        double x = a.as_double(), y = b.as_double();
        if (y == 0) fail("float modulo by zero");
        double m = std::fmod(x, y);
        if (m != 0) {
          if ((y < 0) != (m < 0)) m += y;
        } else {
          m = std::copysign(0.0, y);
        }
        return Value::number(m);
      } else {
        int64_t x = a.i(), y = b.i();
        if (y == 0) fail("integer division or modulo by zero");
        if (y == -1) return Value::integer(0);
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return Value::integer(m);
      }
    case BinOp::Pow: {
      if (!nums) bad_operands("** or pow()", a, b);
      if (!floats && b.i() >= 0) return Value::integer(int_pow(a.i(), b.i()));
      double x = a.as_double(), y = b.as_double();
      if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
      if (x < 0 && y != std::floor(y)) fail("a negative number cannot be raised to a fractional power");
      double p = std::pow(x, y);
      if (std::isinf(p) && std::isfinite(x) && std::isfinite(y)) fail("numerical result out of range");
      return Value::number(p);
    }
  }
  fail("bad operator");
}

bool Interp::compare_op(CmpOp op, const Value& a, const Value& b) {
  static const char* const kNames[] = {"==", "!=", "<", "<=", ">", ">="};
  switch (op) {
    case CmpOp::Eq: return equals(a, b, &budget);
    case CmpOp::Ne: return !equals(a, b, &budget);
    case CmpOp::In: return contains(b, a, &budget);
    case CmpOp::NotIn: return !contains(b, a, &budget);
    default: break;
  }
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (a.is_number() && b.is_number() && (std::isnan(a.as_double()) || std::isnan(b.as_double()))) return false;
  charge_value(a);
  charge_value(b);
  int c = compare(a, b, kNames[static_cast<int>(op)]);
  switch (op) {
    case CmpOp::Lt: return c < 0;
    case CmpOp::Le: return c <= 0;
    case CmpOp::Gt: return c > 0;
    default: return c >= 0;
  }
}

Value Interp::eval_inner(const Expr& e) {
  switch (e.kind) {
    case ExprKind::Const: return static_cast<const ConstExpr&>(e).value;
    case ExprKind::Name: return lookup(static_cast<const NameExpr&>(e).sym);
    case ExprKind::List:
    case ExprKind::Tuple: {
      const auto& s = static_cast<const SeqExpr&>(e);
      std::vector<Value> items;
      items.reserve(s.items.size());
      for (const auto& i : s.items) items.push_back(eval(*i));
      return make_list(std::move(items), e.kind == ExprKind::Tuple);
    }
    case ExprKind::Dict: {
      const auto& d = static_cast<const DictExpr&>(e);
      std::vector<std::pair<Value, Value>> items;
      items.reserve(d.items.size());
      for (const auto& [ke, ve] : d.items) {
        Value k = eval(*ke);
        Value v = eval(*ve);
        if (k.is_list() && !k.list().tuple) fail("unhashable type: 'list'");
        if (k.is_dict()) fail("unhashable type: 'dict'");
        bool replaced = false;
        budget.charge(items.size());
        for (auto& kv : items)
          if (equals(kv.first, k)) {
            kv.second = std::move(v);
            replaced = true;
            break;
          }
        if (!replaced) items.emplace_back(std::move(k), std::move(v));
      }
      return make_dict(std::move(items));
    }
    case ExprKind::Neg:
    case ExprKind::Pos: {
      Value v = eval(*static_cast<const UnaryExpr&>(e).operand);
      if (v.is_undefined()) undefined_error(v);
      bool neg = e.kind == ExprKind::Neg;
      if (v.is(Kind::Float)) return Value::number(neg ? -v.f() : v.f());
      if (v.is_int_like()) {
        if (neg && v.i() == INT64_MIN) int_overflow();
        return Value::integer(neg ? -v.i() : v.i());
      }
      fail(std::string("bad operand type for unary ") + (neg ? "-" : "+") + ": '" + type_name(v) + "'");
    }
    case ExprKind::Not: return Value::boolean(!truthy(eval(*static_cast<const UnaryExpr&>(e).operand)));
    case ExprKind::Binary: {
      const auto& b = static_cast<const BinaryExpr&>(e);
      Value l = eval(*b.lhs);
      Value r = eval(*b.rhs);
      return binary(b.op, l, r);
    }
    case ExprKind::And:
    case ExprKind::Or: {
      const auto& b = static_cast<const BinaryExpr&>(e);
      Value l = eval(*b.lhs);
      if (truthy(l) == (e.kind == ExprKind::Or)) return l;
      return eval(*b.rhs);
    }
    case ExprKind::Concat: {
      std::string s;
      for (const auto& i : static_cast<const SeqExpr&>(e).items) {
        Value v = eval(*i);
        append_str(s, v, budget);
        budget.check_size(s.size());
      }
      budget.charge_bytes(s.size());
      return Value::string(std::move(s));
    }
    case ExprKind::Compare: {
      const auto& c = static_cast<const CompareExpr&>(e);
      Value l = eval(*c.first);
      for (const auto& [op, re] : c.rest) {
        Value r = eval(*re);
        if (!compare_op(op, l, r)) return Value::boolean(false);
        l = std::move(r);
      }
      return Value::boolean(true);
    }
    case ExprKind::Cond: {
      const auto& c = static_cast<const CondExpr&>(e);
      if (truthy(eval(*c.cond))) return eval(*c.then);
      if (c.otherwise) return eval(*c.otherwise);
      return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
    }
    case ExprKind::Attr: {
      const auto& a = static_cast<const AttrExpr&>(e);
      return get_attr(eval(*a.obj), a.name);
    }
    case ExprKind::Item: {
      const auto& it = static_cast<const ItemExpr&>(e);
      Value obj = eval(*it.obj);
      return get_item(obj, eval(*it.index));
    }
    case ExprKind::Slice: {
      const auto& s = static_cast<const SliceExpr&>(e);
      return slice(eval(*s.obj), s);
    }
    case ExprKind::Call: {
      const auto& c = static_cast<const CallExpr&>(e);
      Value callee = eval(*c.callee);
      Args args;
      eval_args(c.args, args);
      return call(callee, args);
    }
    case ExprKind::Filter: {
      const auto& f = static_cast<const FilterExpr&>(e);
      Value input = eval(*f.input);
      Args args;
      eval_args(f.args, args);
      return apply_filter(f.id, f.name, input, args);
    }
    case ExprKind::Test: {
      const auto& t = static_cast<const FilterExpr&>(e);
      Value input = eval(*t.input);
      Args args;
      eval_args(t.args, args);
      return Value::boolean(apply_test(t.id, t.name, input, args));
    }
  }
  fail("bad expression");
}

// ---------------------------------------------------------------------------------------------------------------
// Calls

Value Interp::make_macro(const MacroDef& def) {
  auto* m = new CallableObj(CallableObj::Type::Macro);
  Value v = Value::heap(Kind::Callable, m);
  m->macro = &def;
  // Close over the local scopes (the template level is looked up when the macro runs).
  uint32_t d = 0;
  for (Scope* s = scope; s; s = s->parent)
    for (auto it = s->vars.rbegin(); it != s->vars.rend(); ++it) {
      bool seen = false;
      for (const Binding& b : m->closure) seen |= b.sym == it->sym;
      if (!seen) {
        m->closure.push_back(*it);
        d = std::max(d, it->value.depth());
      }
    }
  budget.charge(m->closure.size());
  check_depth(d + 1);
  m->depth = d + 1;
  return v;
}

Value Interp::call_macro(const CallableObj& m, Args& args) {
  DepthGuard g(*this);
  budget.charge(1);
  const MacroDef& d = *m.macro;
  Scope ms;
  ms.vars = m.closure;
  const size_t np = d.params.size();
  if (args.pos.size() > np && !d.uses_varargs)
    fail("macro '" + d.name + "' takes not more than " + std::to_string(np) + " argument(s)");
  std::vector<const Value*> given(np, nullptr);
  for (size_t i = 0; i < np && i < args.pos.size(); ++i) given[i] = &args.pos[i];
  std::vector<std::pair<Value, Value>> extra_kw;
  const Value* caller = nullptr;
  for (const auto& [k, v] : args.kw) {
    bool matched = false;
    for (size_t i = args.pos.size(); i < np; ++i)
      if (d.param_names[i] == k) {
        if (given[i]) fail("macro '" + d.name + "' got multiple values for argument '" + k + "'");
        given[i] = &v;
        matched = true;
      }
    if (matched) continue;
    if (k == "caller") caller = &v;
    else if (d.uses_kwargs) extra_kw.emplace_back(Value::string(k), v);
    else fail("macro '" + d.name + "' takes no keyword argument '" + k + "'");
  }
  Scope* saved_scope = scope;
  scope = &ms;
  const size_t first_default = np - d.defaults.size();
  for (size_t i = 0; i < np; ++i) {
    if (given[i]) ms.set(d.params[i], *given[i]);
    else if (i >= first_default) ms.set(d.params[i], eval(*d.defaults[i - first_default]));
    else ms.set(d.params[i], Value::undefined("parameter '" + d.param_names[i] + "' was not provided"));
  }
  if (d.uses_varargs) {
    std::vector<Value> rest;
    for (size_t i = np; i < args.pos.size(); ++i) rest.push_back(args.pos[i]);
    ms.set(kSymVarargs, make_list(std::move(rest), true));
  }
  if (d.uses_kwargs) ms.set(kSymKwargs, make_dict(std::move(extra_kw)));
  if (caller) ms.set(kSymCaller, *caller);
  else if (d.uses_caller) ms.set(kSymCaller, Value::undefined("no caller defined"));
  std::string buf;
  std::string* saved_out = out;
  out = &buf;
  exec_body(d.body);
  out = saved_out;
  scope = saved_scope;
  return Value::string(std::move(buf));
}

Value Interp::call(const Value& callee, Args& args) {
  switch (callee.kind()) {
    case Kind::Builtin: return call_global(*this, static_cast<int>(callee.i()), args);
    case Kind::Callable: {
      const CallableObj& c = callee.callable();
      switch (c.type) {
        case CallableObj::Type::Macro: return call_macro(c, args);
        case CallableObj::Type::Method: return call_method(*this, c.self, c.method, args);
        case CallableObj::Type::Joiner:
          if (!c.used) {
            c.used = true;
            return Value::string("");
          }
          return Value::string(c.sep);
      }
      break;
    }
    case Kind::Object: {
      ObjectObj& o = callee.object();
      if (o.type == ObjectObj::Type::Loop) {
        if (!o.recurse) fail("the loop is not recursive: use 'for ... recursive' to call loop()");
        if (!o.active) fail("loop() called after its loop ended");
        if (args.pos.size() != 1 || !args.kw.empty()) fail("loop() takes exactly one argument (the items)");
        DepthGuard g(*this);
        std::string buf;
        std::string* saved_out = out;
        Scope* saved_scope = scope;
        out = &buf;
        scope = o.recurse_scope;
        run_loop(*o.recurse, args.pos[0], o.loop_depth0 + 1);
        out = saved_out;
        scope = saved_scope;
        return Value::string(std::move(buf));
      }
      break;
    }
    case Kind::Undefined: undefined_error(callee);
    default: break;
  }
  fail(std::string("'") + type_name(callee) + "' object is not callable");
}

// ---------------------------------------------------------------------------------------------------------------
// Statements

Value Interp::loop_attr(ObjectObj& o, std::string_view n) {
  const auto& items = o.items.list().items;
  if (n == "index") return Value::integer(o.index0 + 1);
  if (n == "index0") return Value::integer(o.index0);
  if (n == "revindex") return Value::integer(o.length - o.index0);
  if (n == "revindex0") return Value::integer(o.length - o.index0 - 1);
  if (n == "first") return Value::boolean(o.index0 == 0);
  if (n == "last") return Value::boolean(o.index0 == o.length - 1);
  if (n == "length") return Value::integer(o.length);
  if (n == "depth") return Value::integer(o.loop_depth0 + 1);
  if (n == "depth0") return Value::integer(o.loop_depth0);
  if (n == "previtem")
    return o.index0 > 0 ? items[static_cast<size_t>(o.index0 - 1)] : Value::undefined("there is no previous item");
  if (n == "nextitem")
    return o.index0 + 1 < o.length ? items[static_cast<size_t>(o.index0 + 1)]
                                   : Value::undefined("there is no next item");
  return Value();
}

void Interp::bind_target(Scope& s, const Target& t, const Value& v) {
  switch (t.type) {
    case Target::Type::Name: s.set(t.sym, v); return;
    case Target::Type::Tuple: {
      if (v.is_undefined()) undefined_error(v);
      if (!(v.is_list() || v.is_str() || v.is_dict() || v.is(Kind::Range)))
        fail(std::string("cannot unpack non-iterable ") + type_name(v) + " object");
      std::vector<Value> parts = iterate(v);
      if (parts.size() < t.items.size())
        fail("not enough values to unpack (expected " + std::to_string(t.items.size()) + ", got " +
             std::to_string(parts.size()) + ")");
      if (parts.size() > t.items.size())
        fail("too many values to unpack (expected " + std::to_string(t.items.size()) + ")");
      for (size_t i = 0; i < parts.size(); ++i) bind_target(s, t.items[i], parts[i]);
      return;
    }
    case Target::Type::NsAttr: fail("cannot assign to a namespace attribute here");
  }
}

void Interp::assign(const Target& t, const Value& v) {
  if (t.type == Target::Type::NsAttr) {
    Value nsv = lookup(t.sym);
    if (!nsv.is(Kind::Namespace)) fail("cannot assign attribute on non-namespace object");
    NamespaceObj* ns = nsv.nsp();
    if (Value* slot = ns->find(t.attr)) *slot = v;
    else ns->attrs.emplace_back(t.attr, v);
    return;
  }
  if (scope) {
    bind_target(*scope, t, v);
    return;
  }
  // Template level: bind through a temporary scope, then move the bindings to the root.
  Scope tmp;
  bind_target(tmp, t, v);
  for (Binding& b : tmp.vars) {
    root[static_cast<size_t>(b.sym)] = std::move(b.value);
    root_bound[static_cast<size_t>(b.sym)] = 1;
  }
}

Flow Interp::capture(const Body& body, std::string& buf) {
  std::string* saved_out = out;
  Scope* saved_scope = scope;
  Scope s;
  s.parent = scope;
  out = &buf;
  scope = &s;
  Flow f = exec_body(body);
  out = saved_out;
  scope = saved_scope;
  return f;
}

Flow Interp::run_loop(const ForStmt& f, const Value& iterable, int depth0) {
  if (iterable.is_none() || !(iterable.is_undefined() || iterable.is_list() || iterable.is_dict() ||
                              iterable.is_str() || iterable.is(Kind::Range)))
    fail(std::string("'") + type_name(iterable) + "' object is not iterable");
  Value items_v;
  if (iterable.is_list() && !f.filter) {
    items_v = iterable;
    budget.charge(iterable.list().items.size());
  } else {
    std::vector<Value> items = iterate(iterable);
    if (f.filter) {
      Scope fs;
      fs.parent = scope;
      Scope* saved = scope;
      scope = &fs;
      std::vector<Value> kept;
      for (Value& v : items) {
        fs.vars.clear();
        bind_target(fs, f.target, v);
        if (truthy(eval(*f.filter))) kept.push_back(std::move(v));
      }
      scope = saved;
      items = std::move(kept);
    }
    items_v = make_list(std::move(items));
  }
  const auto& items = items_v.list().items;
  if (items.empty()) {  // the else block; a break/continue in it belongs to an enclosing loop
    Scope s;
    s.parent = scope;
    Scope* saved = scope;
    scope = &s;
    Flow flow = exec_body(f.else_body);
    scope = saved;
    return flow;
  }
  auto* lo = new ObjectObj(ObjectObj::Type::Loop);
  Value loop_v = Value::heap(Kind::Object, lo);
  lo->depth = items_v.depth() + 1;
  check_depth(lo->depth);
  lo->items = items_v;
  lo->length = static_cast<int64_t>(items.size());
  lo->loop_depth0 = depth0;
  lo->recurse = f.recursive ? &f : nullptr;
  lo->recurse_scope = scope;
  lo->active = true;
  // When the loop ends (or an error leaves it), the loop object forgets the state that can refer back to it
  // (loop.changed(loop) would otherwise be a reference cycle); it may outlive the loop in a namespace.
  struct Finish {
    ObjectObj* lo;
    ~Finish() {
      lo->active = false;
      lo->last_changed = Value();
      lo->recurse_scope = nullptr;
    }
  } finish{lo};
  Scope s;
  s.parent = scope;
  Scope* saved = scope;
  scope = &s;
  for (size_t i = 0; i < items.size(); ++i) {
    budget.charge(1);
    lo->index0 = static_cast<int64_t>(i);
    s.vars.clear();
    bind_target(s, f.target, items[i]);
    s.vars.push_back(Binding{kSymLoop, loop_v});
    if (exec_body(f.body) == Flow::Break) break;
  }
  scope = saved;
  return Flow::Normal;
}

Flow Interp::exec_body(const Body& body) {
  for (const auto& s : body) {
    Flow f = exec(*s);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Flow Interp::exec(const Stmt& s) {
  try {
    return exec_inner(s);
  } catch (JinjaError& err) {
    if (!err.line) err.line = s.line;
    throw;
  }
}

Flow Interp::exec_inner(const Stmt& s) {
  switch (s.kind) {
    case StmtKind::Data: write(static_cast<const DataStmt&>(s).text); return Flow::Normal;
    case StmtKind::Output: {
      Value v = eval(*static_cast<const OutputStmt&>(s).expr);
      if (v.is_str()) {
        write(v.str());
      } else {
        std::string tmp;
        append_str(tmp, v, budget);
        write(tmp);
      }
      return Flow::Normal;
    }
    case StmtKind::If: {
      DepthGuard g(*this);
      const auto& st = static_cast<const IfStmt&>(s);
      for (const auto& [test, body] : st.branches)
        if (truthy(eval(*test))) return exec_body(body);
      return exec_body(st.else_body);
    }
    case StmtKind::For: {
      DepthGuard g(*this);
      const auto& f = static_cast<const ForStmt&>(s);
      return run_loop(f, eval(*f.iter), 0);
    }
    case StmtKind::Set: {
      const auto& st = static_cast<const SetStmt&>(s);
      assign(st.target, eval(*st.value));
      return Flow::Normal;
    }
    case StmtKind::SetBlock: {
      DepthGuard g(*this);
      const auto& st = static_cast<const SetBlockStmt&>(s);
      std::string buf;
      capture(st.body, buf);
      Value v = Value::string(std::move(buf));
      for (const auto& f : st.filters) {
        Args args;
        eval_args(f->args, args);
        v = apply_filter(f->id, f->name, v, args);
      }
      assign(st.target, v);
      return Flow::Normal;
    }
    case StmtKind::Macro: {
      const auto& st = static_cast<const MacroStmt&>(s);
      Target t;
      t.sym = st.sym;
      assign(t, make_macro(st.def));
      return Flow::Normal;
    }
    case StmtKind::CallBlock: {
      DepthGuard g(*this);
      const auto& st = static_cast<const CallBlockStmt&>(s);
      Value callee = eval(*st.call->callee);
      Args args;
      eval_args(st.call->args, args);
      args.kw.emplace_back("caller", make_macro(st.caller));
      Value v = call(callee, args);
      if (v.is_str()) {
        write(v.str());
      } else {
        std::string tmp;
        append_str(tmp, v, budget);
        write(tmp);
      }
      return Flow::Normal;
    }
    case StmtKind::FilterBlock: {
      DepthGuard g(*this);
      const auto& st = static_cast<const FilterBlockStmt&>(s);
      std::string buf;
      Flow flow = capture(st.body, buf);
      Value v = Value::string(std::move(buf));
      for (const auto& f : st.filters) {
        Args args;
        eval_args(f->args, args);
        v = apply_filter(f->id, f->name, v, args);
      }
      std::string tmp;
      append_str(tmp, v, budget);
      write(tmp);
      return flow;
    }
    case StmtKind::With: {
      DepthGuard g(*this);
      const auto& st = static_cast<const WithStmt&>(s);
      std::vector<Value> vals;
      for (const auto& e : st.values) vals.push_back(eval(*e));
      Scope ws;
      ws.parent = scope;
      for (size_t i = 0; i < vals.size(); ++i) bind_target(ws, st.targets[i], vals[i]);
      Scope* saved = scope;
      scope = &ws;
      Flow f = exec_body(st.body);
      scope = saved;
      return f;
    }
    case StmtKind::Scoped: {
      DepthGuard g(*this);
      Scope ss;
      ss.parent = scope;
      Scope* saved = scope;
      scope = &ss;
      Flow f = exec_body(static_cast<const ScopedStmt&>(s).body);
      scope = saved;
      return f;
    }
    case StmtKind::Break: return Flow::Break;
    case StmtKind::Continue: return Flow::Continue;
    case StmtKind::Unsupported: fail(static_cast<const UnsupportedStmt&>(s).message);
  }
  return Flow::Normal;
}

}  // namespace lokal::jinja::detail

// ---------------------------------------------------------------------------------------------------------------
// Public API

namespace lokal::jinja {

namespace {
[[noreturn]] void rethrow(const std::string& name, const detail::JinjaError& e) {
  std::string msg = "template " + name;
  if (e.line > 0) msg += ", line " + std::to_string(e.line);
  throw Error(msg + ": " + e.msg);
}
}  // namespace

Template::Template(std::string source, std::string name) {
  auto impl = std::make_shared<Impl>();
  impl->name = std::move(name);
  impl->source = std::move(source);
  try {
    impl->parsed = detail::parse_template(impl->source);
  } catch (const detail::JinjaError& e) {
    rethrow(impl->name, e);
  }
  for (size_t i = 0; i < impl->parsed.symbols.size(); ++i)
    impl->symbol_index.emplace(impl->parsed.symbols[i], static_cast<int>(i));
  impl_ = std::move(impl);
}

Template::~Template() = default;

const std::string& Template::name() const { return impl_->name; }
const std::string& Template::source() const { return impl_->source; }

std::string Template::render(const nlohmann::ordered_json& context, const Limits& limits, int64_t now) const {
  using namespace detail;
  std::string out;
  try {
    Interp in(*impl_, limits, now != 0 ? now : static_cast<int64_t>(std::time(nullptr)));
    if (!context.is_null() && !context.is_object()) fail("the context must be a JSON object");
    if (context.is_object())
      for (auto it = context.begin(); it != context.end(); ++it) {
        auto s = impl_->symbol_index.find(it.key());
        if (s == impl_->symbol_index.end() || s->second < kNumReservedSyms) continue;  // never referenced
        in.root[static_cast<size_t>(s->second)] = from_json(it.value());
        in.root_bound[static_cast<size_t>(s->second)] = 1;
      }
    in.out = &out;
    in.exec_body(impl_->parsed.body);
  } catch (const JinjaError& e) {
    rethrow(impl_->name, e);
  }
  return out;
}

}  // namespace lokal::jinja
