// chat/jinja_impl.h - internals of the Jinja interpreter (chat/jinja.h), shared by its source files.
//
// Design
//   jinja_lexer.cpp    source -> tokens. Applies jinja2's whitespace rules while cutting the text: newline
//                      normalisation, the dropped trailing newline, trim_blocks, lstrip_blocks, {%- -%} {%+ +%},
//                      raw blocks, comments.
//   jinja_parser.cpp   tokens -> AST (Expr / Stmt below), a recursive-descent copy of jinja2's grammar and operator
//                      precedence. Names become integer symbols; filters and tests are resolved to table entries.
//                      Every node records its line; nesting is bounded by kMaxParseDepth.
//   jinja_value.cpp    Value: python-like dynamic values (None, bool, int, float, str, list/tuple, dict, range,
//                      namespace, callables, Undefined) with python's printing (str/repr), equality, ordering,
//                      arithmetic, truthiness, UTF-8 code point helpers and json.dumps.
//   jinja_render.cpp   the tree-walking evaluator: scopes, statements, expressions, macros and calls, limits.
//   jinja_builtins.cpp filters, tests and global functions (range, namespace, ...).
//   jinja_strings.cpp  python string operations, the methods of str/dict/list values, str.format and `%`.
//
// Memory: Values are 16 bytes; strings, lists, dicts and callables live in immutable reference-counted heap objects
// (atomic counts, so the constants inside a parsed Template can be shared by concurrent renders). Lists and dicts
// are never modified after they are built (the sandbox is immutable), so sharing is safe and cycles are
// impossible, except through namespaces, the one mutable object: those are owned by the render (Interp) and
// referenced by plain pointers, so they can neither leak nor recurse on destruction. Every heap object records
// how deeply it nests other objects, and building anything deeper than kMaxValueDepth is an error, which bounds
// the recursion of printing, comparing and destroying values.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "chat/jinja.h"

namespace lokal::jinja::detail {

inline constexpr int kMaxValueDepth = 512;  // nesting of lists/dicts/closures a render may build
inline constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox refuses larger range() objects (MAX_RANGE)

// ---------------------------------------------------------------------------------------------------------------
// Errors. Thrown inside the interpreter without position; the innermost AST node that sees it adds its line, and
// the API boundary turns it into lokal::Error "template NAME, line L: msg".
struct JinjaError {
  std::string msg;
  int line = 0;
};
[[noreturn]] void fail(std::string msg);

// Work and size accounting for one render (see Limits).
struct Budget {
  uint64_t steps = 0;
  uint64_t max_steps = 0;
  size_t max_bytes = 0;
  void charge(uint64_t n) {
    steps += n;
    if (steps > max_steps) over_steps();
  }
  void charge_bytes(size_t n) { charge(1 + n / 64); }
  // Any string or list built while rendering may be at most max_bytes bytes / elements.
  void check_size(size_t n) const {
    if (n > max_bytes) over_size(n);
  }
  [[noreturn]] void over_steps() const;
  [[noreturn]] void over_size(size_t n) const;
};

// ---------------------------------------------------------------------------------------------------------------
// Values

struct HeapObj {
  mutable std::atomic<uint32_t> refs{0};
  uint32_t depth = 1;  // 1 + the deepest object this one holds
  virtual ~HeapObj() = default;
};

enum class Kind : uint8_t {
  Undefined,  // jinja2's Undefined; obj_ may hold a StrObj with the message used when it is misused
  None,
  Bool,
  Int,
  Float,
  Builtin,    // a global function (range, namespace, ...): i_ is its BuiltinId
  Namespace,  // ns_ points into the render's namespace arena (not reference counted)
  // kinds from here on hold a reference-counted obj_
  Str,
  List,  // also tuples (ListObj::tuple)
  Dict,
  Range,
  Callable,  // CallableObj: macro, bound method, joiner
  Object,    // ObjectObj: loop, cycler
};

struct NamespaceObj;

class Value {
 public:
  enum Flag : uint8_t {
    kSafe = 1,    // Str: a markupsafe.Markup ("|safe", "|escape"): `+` escapes the other operand
    kUnsafe = 2,  // Undefined: from a blocked attribute (sandbox); calling it is a security error
  };

  Value() { obj_ = nullptr; }
  ~Value() { release(); }
  Value(const Value& o) : kind_(o.kind_), flags_(o.flags_) {
    i_ = o.i_;
    retain();
  }
  Value(Value&& o) noexcept : kind_(o.kind_), flags_(o.flags_) {
    i_ = o.i_;
    o.kind_ = Kind::Undefined;
    o.flags_ = 0;
    o.obj_ = nullptr;
  }
  Value& operator=(const Value& o) {
    if (this != &o) {
      Value tmp(o);
      swap(tmp);
    }
    return *this;
  }
  Value& operator=(Value&& o) noexcept {
    if (this != &o) {
      Value tmp(std::move(o));
      swap(tmp);
    }
    return *this;
  }
  void swap(Value& o) noexcept {
    std::swap(kind_, o.kind_);
    std::swap(flags_, o.flags_);
    std::swap(i_, o.i_);
  }

  static Value none() { return Value(Kind::None); }
  static Value boolean(bool b) {
    Value v(Kind::Bool);
    v.i_ = 0;
    v.b_ = b;
    return v;
  }
  static Value integer(int64_t i) {
    Value v(Kind::Int);
    v.i_ = i;
    return v;
  }
  static Value number(double f) {
    Value v(Kind::Float);
    v.f_ = f;
    return v;
  }
  static Value builtin(int id) {
    Value v(Kind::Builtin);
    v.i_ = id;
    return v;
  }
  static Value ns(NamespaceObj* n) {
    Value v(Kind::Namespace);
    v.ns_ = n;
    return v;
  }
  static Value string(std::string s, bool safe = false);
  static Value undefined(std::string message = {}, bool unsafe = false);
  static Value heap(Kind k, HeapObj* obj, uint8_t flags = 0) {  // takes a fresh object (refs == 0)
    Value v(k);
    v.obj_ = obj;
    v.flags_ = flags;
    v.retain();
    return v;
  }

  Kind kind() const { return kind_; }
  uint8_t flags() const { return flags_; }
  bool is(Kind k) const { return kind_ == k; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_str() const { return kind_ == Kind::Str; }
  bool is_safe() const { return kind_ == Kind::Str && (flags_ & kSafe); }
  bool is_int_like() const { return kind_ == Kind::Int || kind_ == Kind::Bool; }  // python bool is an int
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Bool || kind_ == Kind::Float; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }

  bool b() const { return b_; }
  int64_t i() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }  // Int or Bool
  double f() const { return f_; }
  double as_double() const { return kind_ == Kind::Float ? f_ : static_cast<double>(i()); }
  NamespaceObj* nsp() const { return ns_; }
  HeapObj* obj() const { return holds_obj() ? obj_ : nullptr; }
  uint32_t depth() const { return holds_obj() && obj_ ? obj_->depth : (kind_ == Kind::Namespace ? 1 : 0); }

  // Typed access; only valid for the matching kind.
  const std::string& str() const;
  const struct ListObj& list() const;
  const struct DictObj& dict() const;
  const struct RangeObj& range() const;
  const struct CallableObj& callable() const;
  struct ObjectObj& object() const;
  const std::string* undefined_message() const;  // nullptr when none was recorded

 private:
  explicit Value(Kind k) : kind_(k) { obj_ = nullptr; }
  bool holds_obj() const { return kind_ >= Kind::Str || kind_ == Kind::Undefined; }
  void retain() const {
    if (holds_obj() && obj_) obj_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  void release() {
    if (holds_obj() && obj_ && obj_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete obj_;
  }

  Kind kind_ = Kind::Undefined;
  uint8_t flags_ = 0;
  union {
    bool b_;
    int64_t i_;
    double f_;
    HeapObj* obj_;
    NamespaceObj* ns_;
  };
};

struct StrObj : HeapObj {
  std::string s;
  explicit StrObj(std::string v) : s(std::move(v)) { depth = 0; }
};

struct ListObj : HeapObj {
  std::vector<Value> items;
  bool tuple = false;
  bool group = false;  // a (grouper, list) pair from |groupby: a named tuple with those attributes
};

struct DictObj : HeapObj {
  std::vector<std::pair<Value, Value>> items;  // insertion order, unique keys
  std::unordered_map<std::string_view, size_t> index;  // string key -> position, for dicts of more than 16 items
  const Value* find(std::string_view key) const;
  const Value* find(const Value& key) const;
};

struct RangeObj : HeapObj {
  int64_t start = 0, stop = 0, step = 1;  // step != 0
  int64_t size() const;
  int64_t at(int64_t i) const {  // i < size(), so the result lies between start and stop
    return static_cast<int64_t>(static_cast<__int128>(start) + static_cast<__int128>(i) * step);
  }
};

struct NamespaceObj {
  std::vector<std::pair<std::string, Value>> attrs;
  Value* find(std::string_view name);
};

struct MacroDef;
struct Binding {
  int sym;
  Value value;
};

enum class MethodId : uint8_t;

struct CallableObj : HeapObj {
  enum class Type : uint8_t { Macro, Method, Joiner } type;
  // Macro
  const MacroDef* macro = nullptr;
  std::vector<Binding> closure;  // the enclosing (non-template-level) scopes at definition time
  // Method: receiver.method(...)
  Value self;
  MethodId method{};
  // Joiner
  std::string sep;
  mutable bool used = false;
  explicit CallableObj(Type t) : type(t) {}
};

// Stateful objects with attributes: the `loop` of a for loop, cycler(...).
struct ForStmt;
struct Scope;
struct ObjectObj : HeapObj {
  enum class Type : uint8_t { Loop, Cycler } type;
  // Loop
  Value items;  // the (filtered) sequence being iterated, a list
  int64_t index0 = 0;
  int64_t length = 0;
  int loop_depth0 = 0;
  const ForStmt* recurse = nullptr;  // recursive loops: the loop to call again, valid while `active`
  Scope* recurse_scope = nullptr;
  bool active = false;
  Value last_changed;  // loop.changed()
  bool changed_called = false;
  // Cycler
  int64_t pos = 0;
  explicit ObjectObj(Type t) : type(t) {}
};

// Builds a list/tuple, checking its nesting depth.
Value make_list(std::vector<Value> items, bool tuple = false);
Value make_group(Value grouper, Value list);  // a |groupby result: a (grouper, list) named tuple
Value make_dict(std::vector<std::pair<Value, Value>> items);  // keys must be unique
Value make_range(int64_t start, int64_t stop, int64_t step);
uint32_t max_depth_of(const std::vector<Value>& items);
void check_depth(uint32_t depth);  // fails beyond kMaxValueDepth

// Python semantics
bool truthy(const Value& v);
const char* type_name(const Value& v);          // python's type(v).__name__: 'NoneType', 'int', 'str', ...
void append_str(std::string& out, const Value& v, Budget& b, int depth = 0);   // str(v)
void append_repr(std::string& out, const Value& v, Budget& b, int depth = 0);  // repr(v)
std::string to_str(const Value& v, Budget& b);
// python ==; with a budget, comparing strings and containers is charged to it.
bool equals(const Value& a, const Value& b, Budget* budget = nullptr, int depth = 0);
int compare(const Value& a, const Value& b, const char* op);  // python <; fails (TypeError) on unordered types
bool contains(const Value& container, const Value& item, Budget* budget = nullptr);  // python `item in container`
void append_float(std::string& out, double d);                 // repr(float)
std::string html_escape(std::string_view s);                   // markupsafe.escape

struct JsonOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;  // per level, when has_indent
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};
void append_json(std::string& out, const Value& v, const JsonOptions& opt, Budget& b, int level = 0);
Value from_json(const nlohmann::ordered_json& j, int depth = 0);

// UTF-8: strings are byte strings; code points are decoded leniently (an invalid byte counts as one character),
// so slicing never splits a valid sequence and never fails.
size_t utf8_next(std::string_view s, size_t i);  // index of the character after the one at i
uint32_t utf8_decode(std::string_view s, size_t i, size_t* len);
void utf8_append(std::string& out, uint32_t cp);
size_t utf8_length(std::string_view s);
bool is_ascii(std::string_view s);
bool is_space_cp(uint32_t cp);  // python str.isspace
uint32_t upper_cp(uint32_t cp);
uint32_t lower_cp(uint32_t cp);
bool is_alpha_cp(uint32_t cp);
bool is_digit_cp(uint32_t cp);
std::vector<size_t> char_offsets(std::string_view s);  // byte offset of each character, plus s.size()

// ---------------------------------------------------------------------------------------------------------------
// Tokens (jinja_lexer.cpp)

enum class Tok : uint8_t { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };
struct Token {
  Tok type;
  int line;
  std::string text;  // Data: the text; Name; String: decoded value; Op: the operator; Int/Float: the literal
  int64_t ival = 0;
  double fval = 0;
};
// Cuts `source` into tokens with jinja2's whitespace handling (trim_blocks and lstrip_blocks on). Throws
// JinjaError (with line) on lexical errors. The last token is always Eof.
std::vector<Token> tokenize(const std::string& source);

// ---------------------------------------------------------------------------------------------------------------
// AST

enum class ExprKind : uint8_t {
  Const, Name, List, Tuple, Dict, Neg, Pos, Not, Binary, And, Or, Concat, Compare, Cond, Attr, Item, Slice, Call,
  Filter, Test
};
enum class BinOp : uint8_t { Add, Sub, Mul, Div, FloorDiv, Mod, Pow };
enum class CmpOp : uint8_t { Eq, Ne, Lt, Le, Gt, Ge, In, NotIn };

struct Expr {
  ExprKind kind;
  int line;
  int depth = 1;  // height of the subtree, bounded by kMaxParseDepth
  Expr(ExprKind k, int l) : kind(k), line(l) {}
  virtual ~Expr() = default;
};
using ExprPtr = std::unique_ptr<Expr>;

struct ConstExpr : Expr {
  Value value;
  ConstExpr(int l, Value v) : Expr(ExprKind::Const, l), value(std::move(v)) {}
};
struct NameExpr : Expr {
  int sym;
  NameExpr(int l, int s) : Expr(ExprKind::Name, l), sym(s) {}
};
struct SeqExpr : Expr {  // List, Tuple, Concat (`a ~ b ~ c`)
  std::vector<ExprPtr> items;
  using Expr::Expr;
};
struct DictExpr : Expr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
  explicit DictExpr(int l) : Expr(ExprKind::Dict, l) {}
};
struct UnaryExpr : Expr {  // Neg, Pos, Not
  ExprPtr operand;
  using Expr::Expr;
};
struct BinaryExpr : Expr {  // Binary (op), And, Or
  BinOp op = BinOp::Add;
  ExprPtr lhs, rhs;
  using Expr::Expr;
};
struct CompareExpr : Expr {
  ExprPtr first;
  std::vector<std::pair<CmpOp, ExprPtr>> rest;
  explicit CompareExpr(int l) : Expr(ExprKind::Compare, l) {}
};
struct CondExpr : Expr {
  ExprPtr cond, then, otherwise;  // otherwise may be null
  explicit CondExpr(int l) : Expr(ExprKind::Cond, l) {}
};
struct AttrExpr : Expr {
  ExprPtr obj;
  Value name;  // a Str
  explicit AttrExpr(int l) : Expr(ExprKind::Attr, l) {}
};
struct ItemExpr : Expr {
  ExprPtr obj, index;
  explicit ItemExpr(int l) : Expr(ExprKind::Item, l) {}
};
struct SliceExpr : Expr {
  ExprPtr obj, start, stop, step;  // each bound may be null
  explicit SliceExpr(int l) : Expr(ExprKind::Slice, l) {}
};
struct CallArgs {
  std::vector<ExprPtr> pos;
  std::vector<std::pair<std::string, ExprPtr>> kw;
  ExprPtr star, dstar;  // *args, **kwargs
};
struct CallExpr : Expr {
  ExprPtr callee;
  CallArgs args;
  explicit CallExpr(int l) : Expr(ExprKind::Call, l) {}
};
struct FilterExpr : Expr {  // also Test
  ExprPtr input;  // null for the filters of a {% filter %} block or {% set x | f %}
  std::string name;
  int id = -1;    // index into the filter (or test) table, -1 = unknown (fails when evaluated)
  CallArgs args;
  using Expr::Expr;
};

// Evaluated arguments of a call.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

enum class StmtKind : uint8_t {
  Data, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, With, Scoped, Break, Continue, Unsupported
};
struct Stmt {
  StmtKind kind;
  int line;
  Stmt(StmtKind k, int l) : kind(k), line(l) {}
  virtual ~Stmt() = default;
};
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// Assignment targets: a name, a tuple of targets, or namespace attribute `ns.attr`.
struct Target {
  enum class Type : uint8_t { Name, Tuple, NsAttr } type = Type::Name;
  int sym = -1;
  std::string attr;
  std::vector<Target> items;
};

struct DataStmt : Stmt {
  std::string text;
  DataStmt(int l, std::string t) : Stmt(StmtKind::Data, l), text(std::move(t)) {}
};
struct OutputStmt : Stmt {
  ExprPtr expr;
  OutputStmt(int l, ExprPtr e) : Stmt(StmtKind::Output, l), expr(std::move(e)) {}
};
struct IfStmt : Stmt {
  std::vector<std::pair<ExprPtr, Body>> branches;  // if + elifs
  Body else_body;
  explicit IfStmt(int l) : Stmt(StmtKind::If, l) {}
};
struct ForStmt : Stmt {
  Target target;
  ExprPtr iter, filter;  // filter may be null
  bool recursive = false;
  Body body, else_body;
  explicit ForStmt(int l) : Stmt(StmtKind::For, l) {}
};
struct SetStmt : Stmt {
  Target target;
  ExprPtr value;
  explicit SetStmt(int l) : Stmt(StmtKind::Set, l) {}
};
struct SetBlockStmt : Stmt {
  Target target;
  std::vector<std::unique_ptr<FilterExpr>> filters;
  Body body;
  explicit SetBlockStmt(int l) : Stmt(StmtKind::SetBlock, l) {}
};
struct MacroDef {
  std::string name;
  std::vector<int> params;           // symbols
  std::vector<std::string> param_names;
  std::vector<ExprPtr> defaults;     // for the last defaults.size() params
  Body body;
  bool uses_caller = false, uses_varargs = false, uses_kwargs = false;
};
struct MacroStmt : Stmt {
  int sym;
  MacroDef def;
  explicit MacroStmt(int l) : Stmt(StmtKind::Macro, l), sym(-1) {}
};
struct CallBlockStmt : Stmt {
  MacroDef caller;  // the block body, passed to the called macro as `caller`
  std::unique_ptr<CallExpr> call;
  explicit CallBlockStmt(int l) : Stmt(StmtKind::CallBlock, l) {}
};
struct FilterBlockStmt : Stmt {
  std::vector<std::unique_ptr<FilterExpr>> filters;
  Body body;
  explicit FilterBlockStmt(int l) : Stmt(StmtKind::FilterBlock, l) {}
};
struct WithStmt : Stmt {
  std::vector<Target> targets;
  std::vector<ExprPtr> values;
  Body body;
  explicit WithStmt(int l) : Stmt(StmtKind::With, l) {}
};
struct ScopedStmt : Stmt {  // {% generation %}, {% block %}: the body in a new scope
  Body body;
  explicit ScopedStmt(int l) : Stmt(StmtKind::Scoped, l) {}
};
struct UnsupportedStmt : Stmt {  // include / import / from / extends: fails when reached
  std::string message;
  UnsupportedStmt(int l, std::string m) : Stmt(StmtKind::Unsupported, l), message(std::move(m)) {}
};

// ---------------------------------------------------------------------------------------------------------------
// Filters, tests, globals (jinja_builtins.cpp) and methods (jinja_strings.cpp)

struct Interp;
using FilterFn = Value (*)(Interp&, const Value& input, const Args& args);
using TestFn = bool (*)(Interp&, const Value& input, const Args& args);
int find_filter(std::string_view name);  // -1 if unknown
int find_test(std::string_view name);
int find_global(std::string_view name);  // a builtin id, -1 if none
FilterFn filter_fn(int id);
TestFn test_fn(int id);
const char* global_name(int id);
Value call_global(Interp& in, int id, Args& args);
// The python attribute `name` of a str, list/tuple or dict (its methods), bound to `obj`: true and *out set when
// it exists (a blocked one, like list.append, yields an Undefined that fails as a security error when called).
bool lookup_method(const Value& obj, std::string_view name, Value* out);

// Binding call arguments to named parameters, python style (positional in order, then keywords by name);
// fails on unknown keywords and too many arguments. Missing ones are nullptr.
struct Bound {
  std::vector<const Value*> v;
  const Value* operator[](size_t i) const { return v[i]; }
};
Bound bind(const Args& a, const std::string& fname, std::initializer_list<const char*> names);
void no_args(const Args& a, const std::string& fname);
int64_t int_arg(const Value* v, int64_t dflt, const std::string& what);
bool bool_arg(const Value* v, bool dflt);
std::string str_arg(Interp& in, const Value* v, const std::string& dflt);
Value soft_str(Interp& in, const Value& v);  // python str(v), keeping a Markup string as it is

// Python's string operations on UTF-8, counting code points (jinja_strings.cpp)
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_capitalize(std::string_view s);
std::string py_title(std::string_view s);    // str.title()
std::string jinja_title(std::string_view s);  // the |title filter (words start after space, '-', brackets)
std::string py_swapcase(std::string_view s);
std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right);  // chars null: whitespace
std::vector<std::string> py_splitlines(std::string_view s, bool keepends);
std::vector<std::string> py_split(std::string_view s, const std::string* sep, int64_t maxsplit, bool from_right);
std::string py_replace(Interp& in, std::string_view s, std::string_view old, std::string_view rep, int64_t count);
std::string pad(Interp& in, std::string_view s, int64_t width, const Value* fill, char align);  // '<' '>' '^'
bool parse_py_int(std::string_view s, int base, int64_t* out);  // python int(s, base)
bool parse_py_float(std::string_view s, double* out);           // python float(s)
bool has_cased(std::string_view s, bool upper);                  // str.isupper() / str.islower()
Value call_method(Interp& in, const Value& self, MethodId id, Args& args);
Value percent_format(Interp& in, const Value& fmt, const Value& args);  // python "fmt % args"

// ---------------------------------------------------------------------------------------------------------------
// The evaluator (jinja_render.cpp)

// Local variables of a for-loop iteration, a macro call, a with/filter/set block. Template-level variables live
// in Interp::root. Scopes are on the C++ stack; macros copy what they close over (CallableObj::closure).
struct Scope {
  Scope* parent = nullptr;
  std::vector<Binding> vars;
  Value* find(int sym) {
    for (auto it = vars.rbegin(); it != vars.rend(); ++it)
      if (it->sym == sym) return &it->value;
    return nullptr;
  }
  void set(int sym, Value v) {
    if (Value* p = find(sym)) *p = std::move(v);
    else vars.push_back(Binding{sym, std::move(v)});
  }
};

enum class Flow : uint8_t { Normal, Break, Continue };

// One render: all mutable state lives here, so a Template can be rendered by many threads at once.
struct Interp {
  Interp(const Template::Impl& t, const Limits& l, int64_t now);
  ~Interp();

  const Template::Impl& tpl;
  const Limits& limits;
  int64_t now;
  Budget budget;
  int depth = 0;
  std::vector<Value> root;          // template-level variables by symbol
  std::vector<uint8_t> root_bound;  // whether root[sym] is set
  Scope* scope = nullptr;           // innermost local scope; nullptr = template level
  std::string* out = nullptr;       // where output goes (a capture buffer inside macros and blocks)
  std::vector<std::unique_ptr<NamespaceObj>> namespaces;  // every namespace() made by this render

  // Statements and expressions
  Flow exec_body(const Body& body);
  Flow exec(const Stmt& s);
  Value eval(const Expr& e);
  void eval_args(const CallArgs& a, Args& out);
  void write(std::string_view s);

  // Python/jinja2 semantics used by the builtins too
  Value lookup(int sym);
  Value get_attr(const Value& obj, const Value& name);   // obj.name (attribute, then item)
  Value get_item(const Value& obj, const Value& key);    // obj[key] (item, then attribute)
  Value call(const Value& callee, Args& args);
  std::vector<Value> iterate(const Value& v);            // list(v); fails when v is not iterable
  Value apply_filter(int id, const std::string& name, const Value& input, const Args& args);
  bool apply_test(int id, const std::string& name, const Value& input, const Args& args);
  Value binary(BinOp op, const Value& a, const Value& b);   // python a+b, a*b, ...
  bool compare_op(CmpOp op, const Value& a, const Value& b);
  NamespaceObj* new_namespace();
  // Charges the budget for an operation that scans `v` (a string's bytes, a container's items).
  void charge_value(const Value& v);
  [[noreturn]] void undefined_error(const Value& u);
  // The Undefined for a failed lookup of `key` in `obj` (dict miss, index out of range...), with its message.
  Value missing(const Value& obj, const Value& key);

  struct DepthGuard {
    explicit DepthGuard(Interp& in);
    ~DepthGuard() { --in_.depth; }
    Interp& in_;
  };

 private:
  Value eval_inner(const Expr& e);
  Flow exec_inner(const Stmt& s);
  Flow run_loop(const ForStmt& f, const Value& iterable, int depth0);
  Value call_macro(const CallableObj& m, Args& args);
  Value make_macro(const MacroDef& def);
  void assign(const Target& t, const Value& v);
  void bind_target(Scope& s, const Target& t, const Value& v);
  Value slice(const Value& obj, const SliceExpr& s);
  Value loop_attr(ObjectObj& loop, std::string_view name);
  Flow capture(const Body& body, std::string& buf);
};

// Reserved symbols the evaluator binds itself.
enum : int { kSymLoop = 0, kSymCaller = 1, kSymVarargs = 2, kSymKwargs = 3, kNumReservedSyms = 4 };

// The parsed template.
struct ParsedTemplate {
  Body body;
  std::vector<std::string> symbols;  // symbol id -> name
  std::vector<int> symbol_global;    // symbol id -> BuiltinId or -1
};
ParsedTemplate parse_template(const std::string& source);  // throws JinjaError (with line)

}  // namespace lokal::jinja::detail

namespace lokal::jinja {
struct Template::Impl {
  std::string name, source;
  detail::ParsedTemplate parsed;
  std::unordered_map<std::string, int> symbol_index;  // name -> symbol, for binding the context
};
}  // namespace lokal::jinja
