// chat/jinja_parser.cpp - tokens -> AST: a recursive-descent parser following jinja2's grammar.
//
// Expression precedence, loosest first (as in jinja2's parser.py):
//   a if c else b  >  or  >  and  >  not  >  comparisons (== != < <= > >= in, not in; chained)  >  + -  >  ~
//   >  * / // %  >  ** (left-associative, as in jinja2)  >  unary - +  >  primary with postfix (.attr [index]
//   [a:b:c] (call)) and then filters (| f(args)) and tests (is [not] t args).
// Statements: if/elif/else, for (target in iter [if cond] [recursive]; else), set (expression, block, namespace
// attribute, tuple targets), macro, call, filter, with, block, generation, print, break/continue, raw (lexer).
// include/import/from/extends parse but fail when rendered: a sandboxed template cannot load other templates.
//
// Filters and tests are looked up here. Like jinja2, an unknown filter or test is a parse error unless it sits
// inside an `if` (statement or inline): there it only fails if evaluated, so a template may guard optional
// features. Recursion is bounded (kMaxParseDepth), and so is the height of every expression tree built by the
// loops (a + b + c + ...), so hostile input can neither overflow the stack here nor when the tree is destroyed.
#include <algorithm>
#include <initializer_list>
#include <string_view>

#include "chat/jinja_impl.h"

namespace lokal::jinja::detail {
namespace {

[[noreturn]] void parse_fail(int line, std::string msg) { throw JinjaError{std::move(msg), line}; }

int expr_depth(const ExprPtr& e) { return e ? e->depth : 0; }

class Parser {
 public:
  explicit Parser(const std::string& source) : toks_(tokenize(source)) {
    for (const char* reserved : {"loop", "caller", "varargs", "kwargs"}) sym(reserved);
  }

  ParsedTemplate run() {
    ParsedTemplate t;
    t.body = subparse({}, nullptr);
    for (const Pending& p : pending_)
      if (!p.soft) parse_fail(p.line, std::string("unknown ") + (p.filter ? "filter" : "test") + " '" + p.name + "'");
    t.symbols = std::move(names_);
    t.symbol_global.reserve(t.symbols.size());
    for (const std::string& n : t.symbols) t.symbol_global.push_back(find_global(n));
    return t;
  }

 private:
  // ---- token stream
  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(const Token& t, std::string_view op) const { return t.type == Tok::Op && t.text == op; }
  bool is_op(std::string_view op) const { return is_op(cur(), op); }
  bool is_name(std::string_view kw) const { return cur().type == Tok::Name && cur().text == kw; }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view kw) {
    if (!is_name(kw)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Data: return "template data";
      case Tok::VarBegin: return "begin of print statement";
      case Tok::VarEnd: return "end of print statement";
      case Tok::BlockBegin: return "begin of statement block";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::Eof: return "end of template";
      case Tok::String: return "string";
      case Tok::Int: return "integer";
      case Tok::Float: return "float";
      default: return t.text;
    }
  }
  [[noreturn]] void unexpected(const std::string& expected) const {
    parse_fail(cur().line, "expected " + expected + ", got '" + describe(cur()) + "'");
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op)) unexpected("'" + std::string(op) + "'");
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) unexpected(what);
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) unexpected("a name");
    std::string n = cur().text;
    next();
    return n;
  }
  void expect_block_end() { expect(Tok::BlockEnd, "end of statement block"); }

  // ---- recursion and tree height bounds
  struct Guard {
    explicit Guard(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxParseDepth) {
        --p_.depth_;
        parse_fail(p_.cur().line, "template nested too deeply (more than " + std::to_string(kMaxParseDepth) + " levels)");
      }
    }
    ~Guard() { --p_.depth_; }
    Parser& p_;
  };
  template <class T>
  std::unique_ptr<T> sized(std::unique_ptr<T> e, std::initializer_list<int> child_depths) {
    int d = 0;
    for (int c : child_depths) d = std::max(d, c);
    e->depth = d + 1;
    if (e->depth > kMaxParseDepth)
      parse_fail(e->line, "expression nested too deeply (more than " + std::to_string(kMaxParseDepth) + " levels)");
    return e;
  }
  int args_depth(const CallArgs& a) const {
    int d = std::max(expr_depth(a.star), expr_depth(a.dstar));
    for (const auto& e : a.pos) d = std::max(d, e->depth);
    for (const auto& kv : a.kw) d = std::max(d, kv.second->depth);
    return d;
  }

  int sym(const std::string& name) {
    auto it = index_.find(name);
    if (it != index_.end()) return it->second;
    int id = static_cast<int>(names_.size());
    names_.push_back(name);
    index_.emplace(name, id);
    return id;
  }

  // ---- statements

  // Parses template data, prints and statements until `{% <one of ends>` (the cursor is left on that tag name,
  // returned in *matched) or the end of the template (an error when ends is not empty).
  Body subparse(std::initializer_list<std::string_view> ends, std::string* matched) {
    Guard g(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.size() == 0) return body;
        std::string list;
        for (std::string_view e : ends) list += (list.empty() ? "'" : " or '") + std::string(e) + "'";
        parse_fail(t.line, "unexpected end of template, expected " + list + " (the innermost open block is '" +
                               block_stack_.back() + "')");
      }
      if (t.type == Tok::Data) {
        body.push_back(std::make_unique<DataStmt>(t.line, t.text));
        next();
      } else if (t.type == Tok::VarBegin) {
        int line = t.line;
        next();
        ExprPtr e = parse_tuple(false, true, {}, false);
        expect(Tok::VarEnd, "end of print statement");
        body.push_back(std::make_unique<OutputStmt>(line, std::move(e)));
      } else if (t.type == Tok::BlockBegin) {
        next();
        if (cur().type == Tok::Name)
          for (std::string_view e : ends)
            if (cur().text == e) {
              *matched = cur().text;
              return body;
            }
        parse_statement(body);
        expect_block_end();
      } else {
        unexpected("template data or a tag");
      }
    }
  }

  // After a statement head: `%}`, then the body up to one of `ends` (whose name is consumed and returned).
  Body statements(std::initializer_list<std::string_view> ends, std::string* matched = nullptr) {
    skip_op(":");
    expect_block_end();
    std::string m;
    Body b = subparse(ends, &m);
    next();  // the end tag's name
    if (matched) *matched = m;
    return b;
  }

  void parse_statement(Body& out) {
    const Token& t = cur();
    if (t.type != Tok::Name) parse_fail(t.line, "tag name expected");
    const std::string tag = t.text;
    int line = t.line;
    block_stack_.push_back(tag);
    if (tag == "if") out.push_back(parse_if());
    else if (tag == "for") out.push_back(parse_for());
    else if (tag == "set") out.push_back(parse_set());
    else if (tag == "macro") out.push_back(parse_macro());
    else if (tag == "call") out.push_back(parse_call_block());
    else if (tag == "filter") out.push_back(parse_filter_block());
    else if (tag == "with") out.push_back(parse_with());
    else if (tag == "block") out.push_back(parse_block());
    else if (tag == "generation") {
      next();
      auto s = std::make_unique<ScopedStmt>(line);
      s->body = statements({"endgeneration"});
      out.push_back(std::move(s));
    } else if (tag == "print") {
      next();
      out.push_back(std::make_unique<OutputStmt>(line, parse_tuple(false, true, {}, false)));
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) parse_fail(line, "'" + tag + "' outside of a loop");
      next();
      out.push_back(std::make_unique<Stmt>(tag == "break" ? StmtKind::Break : StmtKind::Continue, line));
    } else if (tag == "include" || tag == "import" || tag == "from" || tag == "extends") {
      // Skip the rest of the tag; rendering it fails.
      while (cur().type != Tok::BlockEnd && cur().type != Tok::Eof) next();
      out.push_back(std::make_unique<UnsupportedStmt>(
          line, "'" + tag + "' is not supported: a chat template cannot load other templates"));
    } else if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif") {
      parse_fail(line, "unexpected '" + tag + "'" +
                           (block_stack_.size() > 1 ? " (the innermost open block is '" +
                                                          block_stack_[block_stack_.size() - 2] + "')"
                                                    : ""));
    } else {
      parse_fail(line, "unknown tag '" + tag + "'");
    }
    block_stack_.pop_back();
  }

  // A body in a new frame (for, macro, call, filter, with, set block): not "soft" for unknown filters.
  template <class F>
  auto inner_frame(F&& f) {
    int saved = soft_;
    soft_ = 0;
    auto r = f();
    soft_ = saved;
    return r;
  }

  StmtPtr parse_if() {
    auto s = std::make_unique<IfStmt>(cur().line);
    next();
    ++soft_;
    while (true) {
      ExprPtr test = parse_tuple(false, false, {}, false);
      std::string m;
      Body body = statements({"elif", "else", "endif"}, &m);
      s->branches.emplace_back(std::move(test), std::move(body));
      if (m == "elif") continue;
      if (m == "else") s->else_body = statements({"endif"});
      break;
    }
    --soft_;
    return s;
  }

  StmtPtr parse_for() {
    auto s = std::make_unique<ForStmt>(cur().line);
    next();
    s->target = parse_assign_target(true, false, {"in"}, false);
    if (!skip_name("in")) unexpected("'in'");
    s->iter = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) s->filter = inner_frame([&] { return parse_expression(true); });
    s->recursive = skip_name("recursive");
    std::string m;
    ++loop_depth_;
    s->body = inner_frame([&] { return statements({"endfor", "else"}, &m); });
    --loop_depth_;
    if (m == "else") s->else_body = inner_frame([&] { return statements({"endfor"}); });
    return s;
  }

  StmtPtr parse_set() {
    int line = cur().line;
    next();
    Target target = parse_assign_target(true, false, {}, true);
    if (skip_op("=")) {
      auto s = std::make_unique<SetStmt>(line);
      s->target = std::move(target);
      s->value = parse_tuple(false, true, {}, false);
      return s;
    }
    auto s = std::make_unique<SetBlockStmt>(line);
    s->target = std::move(target);
    if (is_op("|")) {
      next();
      s->filters = parse_filter_chain();
    }
    int saved_loops = loop_depth_;
    loop_depth_ = 0;
    s->body = inner_frame([&] { return statements({"endset"}); });
    loop_depth_ = saved_loops;
    return s;
  }

  void parse_signature(MacroDef& d) {
    expect_op("(");
    while (!is_op(")")) {
      if (!d.params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string name = expect_name();
      if (std::find(d.param_names.begin(), d.param_names.end(), name) != d.param_names.end())
        parse_fail(cur().line, "duplicate argument '" + name + "' in macro definition");
      if (skip_op("=")) {
        d.defaults.push_back(parse_expression(true));
      } else if (!d.defaults.empty()) {
        parse_fail(cur().line, "non-default argument follows default argument");
      }
      d.params.push_back(sym(name));
      d.param_names.push_back(std::move(name));
    }
    expect_op(")");
  }

  // A macro (or caller) body: loops outside do not reach in.
  Body macro_body(MacroDef& d, std::string_view end) {
    int saved_loops = loop_depth_;
    loop_depth_ = 0;
    macros_.push_back(&d);
    Body b = inner_frame([&] { return statements({end}); });
    macros_.pop_back();
    loop_depth_ = saved_loops;
    return b;
  }

  StmtPtr parse_macro() {
    auto s = std::make_unique<MacroStmt>(cur().line);
    next();
    s->def.name = expect_name();
    if (s->def.name == "true" || s->def.name == "false" || s->def.name == "none")
      parse_fail(s->line, "can't assign to '" + s->def.name + "'");
    s->sym = sym(s->def.name);
    parse_signature(s->def);
    s->def.body = macro_body(s->def, "endmacro");
    return s;
  }

  StmtPtr parse_call_block() {
    auto s = std::make_unique<CallBlockStmt>(cur().line);
    next();
    s->caller.name = "caller";
    if (is_op("(")) parse_signature(s->caller);
    ExprPtr call = parse_expression(true);
    if (call->kind != ExprKind::Call) parse_fail(s->line, "expected a macro call after 'call'");
    s->call.reset(static_cast<CallExpr*>(call.release()));
    s->caller.body = macro_body(s->caller, "endcall");
    return s;
  }

  StmtPtr parse_filter_block() {
    auto s = std::make_unique<FilterBlockStmt>(cur().line);
    next();
    s->filters = parse_filter_chain();
    s->body = inner_frame([&] { return statements({"endfilter"}); });
    return s;
  }

  StmtPtr parse_with() {
    auto s = std::make_unique<WithStmt>(cur().line);
    next();
    while (cur().type != Tok::BlockEnd) {
      if (!s->targets.empty()) expect_op(",");
      s->targets.push_back(parse_assign_target(true, false, {}, false));
      expect_op("=");
      s->values.push_back(parse_expression(true));
    }
    s->body = inner_frame([&] { return statements({"endwith"}); });
    return s;
  }

  StmtPtr parse_block() {
    auto s = std::make_unique<ScopedStmt>(cur().line);
    next();
    std::string name = expect_name();
    skip_name("scoped");
    skip_name("required");
    s->body = inner_frame([&] { return statements({"endblock"}); });
    skip_name(name);
    return s;
  }

  // ---- assignment targets

  Target to_target(Expr& e) {
    Target t;
    if (e.kind == ExprKind::Name) {
      t.type = Target::Type::Name;
      t.sym = static_cast<NameExpr&>(e).sym;
      return t;
    }
    if (e.kind == ExprKind::Tuple) {
      t.type = Target::Type::Tuple;
      for (auto& item : static_cast<SeqExpr&>(e).items) t.items.push_back(to_target(*item));
      return t;
    }
    parse_fail(e.line, "can't assign to this expression");
  }

  Target parse_assign_target(bool with_tuple, bool name_only, std::initializer_list<std::string_view> extra_end,
                             bool with_namespace) {
    if (with_namespace && cur().type == Tok::Name && is_op(peek(), ".")) {
      Target t;
      t.type = Target::Type::NsAttr;
      t.sym = sym(cur().text);
      next();
      next();
      t.attr = expect_name();
      return t;
    }
    if (name_only) {
      Target t;
      t.sym = sym(expect_name());
      return t;
    }
    ExprPtr e = with_tuple ? parse_tuple(true, false, extra_end, false) : parse_primary();
    return to_target(*e);
  }

  // ---- expressions

  bool tuple_end(std::initializer_list<std::string_view> extra_end) const {
    if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")")) return true;
    if (cur().type == Tok::Name)
      for (std::string_view e : extra_end)
        if (cur().text == e) return true;
    return false;
  }

  // A comma-separated tuple (or a single expression when there is no comma).
  ExprPtr parse_tuple(bool simplified, bool with_condexpr, std::initializer_list<std::string_view> extra_end,
                      bool explicit_parens) {
    int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (tuple_end(extra_end)) break;
      items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
      if (is_op(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) parse_fail(cur().line, "expected an expression, got '" + describe(cur()) + "'");
    }
    auto t = std::make_unique<SeqExpr>(ExprKind::Tuple, line);
    int d = 0;
    for (auto& i : items) d = std::max(d, i->depth);
    t->items = std::move(items);
    return sized(std::move(t), {d});
  }

  ExprPtr parse_expression(bool with_condexpr) {
    Guard g(*this);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    int line = cur().line;
    size_t mark = pending_.size();
    ExprPtr e = parse_or();
    while (skip_name("if")) {
      for (size_t i = mark; i < pending_.size(); ++i) pending_[i].soft = true;
      ++soft_;
      auto c = std::make_unique<CondExpr>(line);
      c->then = std::move(e);
      c->cond = parse_or();
      if (skip_name("else")) c->otherwise = parse_expression(true);
      --soft_;
      int d1 = c->then->depth, d2 = c->cond->depth, d3 = expr_depth(c->otherwise);
      e = sized(std::move(c), {d1, d2, d3});
      line = cur().line;
    }
    return e;
  }

  ExprPtr binary(ExprKind kind, BinOp op, ExprPtr lhs, ExprPtr rhs, int line) {
    auto b = std::make_unique<BinaryExpr>(kind, line);
    b->op = op;
    int d1 = lhs->depth, d2 = rhs->depth;
    b->lhs = std::move(lhs);
    b->rhs = std::move(rhs);
    return sized(std::move(b), {d1, d2});
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      int line = cur().line;
      next();
      e = binary(ExprKind::Or, BinOp::Add, std::move(e), parse_and(), line);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      int line = cur().line;
      next();
      e = binary(ExprKind::And, BinOp::Add, std::move(e), parse_not(), line);
    }
    return e;
  }

  ExprPtr unary(ExprKind kind, ExprPtr operand, int line) {
    auto u = std::make_unique<UnaryExpr>(kind, line);
    int d = operand->depth;
    u->operand = std::move(operand);
    return sized(std::move(u), {d});
  }

  ExprPtr parse_not() {
    Guard g(*this);
    if (is_name("not")) {
      int line = cur().line;
      next();
      return unary(ExprKind::Not, parse_not(), line);
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = cur().line;
    ExprPtr first = parse_math1();
    std::unique_ptr<CompareExpr> c;
    int d = first->depth;
    while (true) {
      CmpOp op;
      const Token& t = cur();
      if (is_op("==")) op = CmpOp::Eq;
      else if (is_op("!=")) op = CmpOp::Ne;
      else if (is_op("<")) op = CmpOp::Lt;
      else if (is_op("<=")) op = CmpOp::Le;
      else if (is_op(">")) op = CmpOp::Gt;
      else if (is_op(">=")) op = CmpOp::Ge;
      else if (t.type == Tok::Name && t.text == "in") op = CmpOp::In;
      else if (t.type == Tok::Name && t.text == "not" && peek().type == Tok::Name && peek().text == "in") {
        op = CmpOp::NotIn;
        next();
      } else break;
      next();
      if (!c) {
        c = std::make_unique<CompareExpr>(line);
        c->first = std::move(first);
      }
      ExprPtr rhs = parse_math1();
      d = std::max(d, rhs->depth);
      c->rest.emplace_back(op, std::move(rhs));
    }
    if (!c) return first;
    return sized(std::move(c), {d});
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      BinOp op = is_op("+") ? BinOp::Add : BinOp::Sub;
      int line = cur().line;
      next();
      e = binary(ExprKind::Binary, op, std::move(e), parse_concat(), line);
    }
    return e;
  }

  ExprPtr parse_concat() {
    int line = cur().line;
    ExprPtr e = parse_math2();
    if (!is_op("~")) return e;
    auto c = std::make_unique<SeqExpr>(ExprKind::Concat, line);
    int d = e->depth;
    c->items.push_back(std::move(e));
    while (skip_op("~")) {
      c->items.push_back(parse_math2());
      d = std::max(d, c->items.back()->depth);
    }
    return sized(std::move(c), {d});
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (true) {
      BinOp op;
      if (is_op("*")) op = BinOp::Mul;
      else if (is_op("/")) op = BinOp::Div;
      else if (is_op("//")) op = BinOp::FloorDiv;
      else if (is_op("%")) op = BinOp::Mod;
      else break;
      int line = cur().line;
      next();
      e = binary(ExprKind::Binary, op, std::move(e), parse_pow(), line);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      int line = cur().line;
      next();
      e = binary(ExprKind::Binary, BinOp::Pow, std::move(e), parse_unary(true), line);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Guard g(*this);
    int line = cur().line;
    ExprPtr e;
    if (is_op("-")) {
      next();
      e = unary(ExprKind::Neg, parse_unary(false), line);
    } else if (is_op("+")) {
      next();
      e = unary(ExprKind::Pos, parse_unary(false), line);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    Guard g(*this);
    const Token& t = cur();
    int line = t.line;
    switch (t.type) {
      case Tok::Name: {
        const std::string& n = t.text;
        ExprPtr e;
        if (n == "true" || n == "True") e = std::make_unique<ConstExpr>(line, Value::boolean(true));
        else if (n == "false" || n == "False") e = std::make_unique<ConstExpr>(line, Value::boolean(false));
        else if (n == "none" || n == "None") e = std::make_unique<ConstExpr>(line, Value::none());
        else {
          if (!macros_.empty()) {
            if (n == "caller") macros_.back()->uses_caller = true;
            else if (n == "varargs") macros_.back()->uses_varargs = true;
            else if (n == "kwargs") macros_.back()->uses_kwargs = true;
          }
          e = std::make_unique<NameExpr>(line, sym(n));
        }
        next();
        return e;
      }
      case Tok::String: {
        std::string s = t.text;
        next();
        while (cur().type == Tok::String) {  // adjacent literals concatenate
          s += cur().text;
          next();
        }
        return std::make_unique<ConstExpr>(line, Value::string(std::move(s)));
      }
      case Tok::Int: {
        ExprPtr e = std::make_unique<ConstExpr>(line, Value::integer(t.ival));
        next();
        return e;
      }
      case Tok::Float: {
        ExprPtr e = std::make_unique<ConstExpr>(line, Value::number(t.fval));
        next();
        return e;
      }
      case Tok::Op:
        if (t.text == "(") {
          next();
          ExprPtr e = parse_tuple(false, true, {}, true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        break;
      default: break;
    }
    parse_fail(line, "unexpected '" + describe(t) + "'");
  }

  ExprPtr parse_list() {
    auto l = std::make_unique<SeqExpr>(ExprKind::List, cur().line);
    expect_op("[");
    int d = 0;
    while (!is_op("]")) {
      if (!l->items.empty()) expect_op(",");
      if (is_op("]")) break;
      l->items.push_back(parse_expression(true));
      d = std::max(d, l->items.back()->depth);
    }
    expect_op("]");
    return sized(std::move(l), {d});
  }

  ExprPtr parse_dict() {
    auto m = std::make_unique<DictExpr>(cur().line);
    expect_op("{");
    int d = 0;
    while (!is_op("}")) {
      if (!m->items.empty()) expect_op(",");
      if (is_op("}")) break;
      ExprPtr k = parse_expression(true);
      expect_op(":");
      ExprPtr v = parse_expression(true);
      d = std::max({d, k->depth, v->depth});
      m->items.emplace_back(std::move(k), std::move(v));
    }
    expect_op("}");
    return sized(std::move(m), {d});
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) e = parse_subscript(std::move(e));
      else if (is_op("(")) e = parse_call(std::move(e));
      else return e;
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        auto chain = parse_filter_chain();
        for (auto& f : chain) {
          int d = std::max(e->depth, args_depth(f->args));
          f->input = std::move(e);
          e = sized(std::move(f), {d});
        }
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token t = cur();
    next();
    if (t.text == ".") {
      const Token& a = cur();
      int line = a.line;
      if (a.type == Tok::Name) {
        auto e = std::make_unique<AttrExpr>(line);
        e->name = Value::string(a.text);
        next();
        int d = obj->depth;
        e->obj = std::move(obj);
        return sized(std::move(e), {d});
      }
      if (a.type != Tok::Int) parse_fail(line, "expected a name or number after '.'");
      auto e = std::make_unique<ItemExpr>(line);
      e->index = std::make_unique<ConstExpr>(line, Value::integer(a.ival));
      next();
      int d = obj->depth;
      e->obj = std::move(obj);
      return sized(std::move(e), {d});
    }
    // '[': an index, a slice, or several (a tuple index)
    std::vector<ExprPtr> args;
    while (!is_op("]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    if (args.size() == 1 && args[0]->kind == ExprKind::Slice) {
      auto& s = static_cast<SliceExpr&>(*args[0]);
      int d = std::max({obj->depth, expr_depth(s.start), expr_depth(s.stop), expr_depth(s.step)});
      s.obj = std::move(obj);
      std::unique_ptr<SliceExpr> sp(static_cast<SliceExpr*>(args[0].release()));
      return sized(std::move(sp), {d});
    }
    auto e = std::make_unique<ItemExpr>(t.line);
    if (args.size() == 1) {
      e->index = std::move(args[0]);
    } else {
      auto tup = std::make_unique<SeqExpr>(ExprKind::Tuple, t.line);
      int d = 0;
      for (auto& a : args) {
        if (a->kind == ExprKind::Slice) parse_fail(t.line, "slices inside a tuple index are not supported");
        d = std::max(d, a->depth);
      }
      tup->items = std::move(args);
      e->index = sized(std::move(tup), {d});
    }
    int d = std::max(obj->depth, e->index->depth);
    e->obj = std::move(obj);
    return sized(std::move(e), {d});
  }

  // One subscript: an expression or a slice a:b:c (its object is filled in by the caller).
  ExprPtr parse_subscribed() {
    int line = cur().line;
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) return start;
    }
    next();  // ':'
    auto s = std::make_unique<SliceExpr>(line);
    s->start = std::move(start);
    if (!is_op("]") && !is_op(",") && !is_op(":")) s->stop = parse_expression(true);
    if (skip_op(":"))
      if (!is_op("]") && !is_op(",")) s->step = parse_expression(true);
    return s;
  }

  void parse_call_args(CallArgs& a) {
    int line = cur().line;
    expect_op("(");
    bool need_comma = false;
    auto ensure = [&](bool ok) {
      if (!ok) parse_fail(line, "invalid syntax for function call expression");
    };
    while (!is_op(")")) {
      if (need_comma) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*")) {
        ensure(!a.star && !a.dstar);
        next();
        a.star = parse_expression(true);
      } else if (is_op("**")) {
        ensure(!a.dstar);
        next();
        a.dstar = parse_expression(true);
      } else if (cur().type == Tok::Name && is_op(peek(), "=")) {
        ensure(!a.dstar);
        std::string key = cur().text;
        next();
        next();
        a.kw.emplace_back(std::move(key), parse_expression(true));
      } else {
        ensure(!a.star && !a.dstar && a.kw.empty());
        a.pos.push_back(parse_expression(true));
      }
      need_comma = true;
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = std::make_unique<CallExpr>(cur().line);
    parse_call_args(c->args);
    int d = std::max(callee->depth, args_depth(c->args));
    c->callee = std::move(callee);
    return sized(std::move(c), {d});
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      name += '.';
      name += expect_name();
    }
    return name;
  }

  // `name(args) | name2 | ...` after a '|' (or at the start of a filter block): filters without input.
  std::vector<std::unique_ptr<FilterExpr>> parse_filter_chain() {
    std::vector<std::unique_ptr<FilterExpr>> chain;
    while (true) {
      auto f = std::make_unique<FilterExpr>(ExprKind::Filter, cur().line);
      f->name = dotted_name();
      f->id = find_filter(f->name);
      if (f->id < 0) pending_.push_back({f->name, f->line, true, soft_ > 0});
      if (is_op("(")) parse_call_args(f->args);
      chain.push_back(std::move(f));
      if (!skip_op("|")) return chain;
    }
  }

  ExprPtr parse_test(ExprPtr input) {
    int line = cur().line;
    next();  // 'is'
    bool negated = skip_name("not");
    auto t = std::make_unique<FilterExpr>(ExprKind::Test, line);
    t->name = dotted_name();
    t->id = find_test(t->name);
    if (t->id < 0) pending_.push_back({t->name, line, false, soft_ > 0});
    const Token& c = cur();
    if (is_op("(")) {
      parse_call_args(t->args);
    } else if ((c.type == Tok::Name || c.type == Tok::String || c.type == Tok::Int || c.type == Tok::Float ||
                is_op("[") || is_op("{")) &&
               !(c.type == Tok::Name && (c.text == "else" || c.text == "or" || c.text == "and"))) {
      if (c.type == Tok::Name && c.text == "is") parse_fail(c.line, "you cannot chain multiple tests with 'is'");
      t->args.pos.push_back(parse_postfix(parse_primary()));
    }
    int d = std::max(input->depth, args_depth(t->args));
    t->input = std::move(input);
    ExprPtr e = sized(std::move(t), {d});
    if (negated) e = unary(ExprKind::Not, std::move(e), line);
    return e;
  }

  struct Pending {
    std::string name;
    int line;
    bool filter;
    bool soft;
  };

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  int soft_ = 0;        // inside an if statement or inline if: unknown filters/tests fail only when evaluated
  int loop_depth_ = 0;  // for break/continue
  std::vector<MacroDef*> macros_;
  std::vector<std::string> block_stack_{"template"};
  std::vector<Pending> pending_;  // unknown filters and tests
  std::vector<std::string> names_;
  std::unordered_map<std::string, int> index_;
};

}  // namespace

ParsedTemplate parse_template(const std::string& source) { return Parser(source).run(); }

}  // namespace lokal::jinja::detail
