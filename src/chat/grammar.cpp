// chat/grammar.cpp - the GBNF parser: text -> rules, the checks (undefined rules, empty grammar, left recursion,
// a root that matches nothing), and the compiled form the matcher walks (grammar_matcher.cpp).
#include "chat/grammar.h"

#include <algorithm>
#include <limits>
#include <map>
#include <unordered_map>

#include "core/error.h"

namespace lokal {

bool Grammar::CharSet::contains(uint32_t cp) const {
  if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
  auto it = std::lower_bound(ranges.begin(), ranges.end(), cp,
                             [](const std::pair<uint32_t, uint32_t>& r, uint32_t c) { return r.second < c; });
  return it != ranges.end() && it->first <= cp;
}

bool Grammar::CharSet::intersects(uint32_t lo, uint32_t hi) const {
  auto it = std::lower_bound(ranges.begin(), ranges.end(), lo,
                             [](const std::pair<uint32_t, uint32_t>& r, uint32_t c) { return r.second < c; });
  return it != ranges.end() && it->first <= hi;
}

namespace {

constexpr uint32_t kMaxCodepoint = 0x10FFFF;
constexpr size_t kNone = std::numeric_limits<size_t>::max();

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

// Sorted, merged, without surrogates (they are never valid UTF-8, so they can never match).
Ranges normalize(Ranges r, bool negate) {
  std::sort(r.begin(), r.end());
  Ranges merged;
  for (const auto& [lo, hi] : r) {
    if (!merged.empty() && lo <= merged.back().second + 1) merged.back().second = std::max(merged.back().second, hi);
    else merged.push_back({lo, hi});
  }
  if (negate) {
    Ranges inv;
    uint32_t next = 0;
    for (const auto& [lo, hi] : merged) {
      if (lo > next) inv.push_back({next, lo - 1});
      next = hi + 1;
    }
    if (next <= kMaxCodepoint) inv.push_back({next, kMaxCodepoint});
    merged = std::move(inv);
  }
  Ranges out;
  for (const auto& [lo, hi] : merged) {
    if (hi < 0xD800 || lo > 0xDFFF) {
      out.push_back({lo, hi});
      continue;
    }
    if (lo < 0xD800) out.push_back({lo, 0xD7FF});
    if (hi > 0xDFFF) out.push_back({0xE000, hi});
  }
  return out;
}

struct Sym {
  bool rule;
  uint32_t arg;  // rule id or char set id
};
using Seq = std::vector<Sym>;

struct RuleDef {
  std::string name;
  std::vector<Seq> alts;
  bool defined = false;
  bool star = false;      // generated for x*: alternatives {x R} and {}; its tail reference to itself is allowed
  size_t use_pos = kNone;  // first reference (for "undefined rule")
  size_t def_pos = kNone;  // where the user rule is defined
  uint32_t owner = 0;      // the user rule a generated rule comes from
};

std::string describe_char(std::string_view s, size_t pos) {
  if (pos >= s.size()) return "end of input";
  const unsigned char c = static_cast<unsigned char>(s[pos]);
  if (c == '\n') return "end of line";
  if (c >= 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
  static const char* hex = "0123456789ABCDEF";
  return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

// Parses and compiles; a friend of Grammar.
class GrammarBuilder {
 public:
  explicit GrammarBuilder(std::string_view src) : s_(src) {}

  std::shared_ptr<const Grammar> build(std::string_view root) {
    skip_space(true);
    if (eof()) throw Error("grammar: empty grammar (no rules)");
    while (!eof()) {
      parse_rule();
      skip_space(true);
    }
    for (const RuleDef& r : rules_)
      if (!r.defined) fail(r.use_pos, "undefined rule '" + r.name + "'");
    auto it = by_name_.find(std::string(root));
    if (it == by_name_.end()) throw Error("grammar: no rule named '" + std::string(root) + "' (the start rule)");
    const uint32_t root_id = it->second;
    merge_char_alternatives();
    prune_unproductive(root_id);
    check_left_recursion();
    return flatten(root_id);
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  std::vector<RuleDef> rules_;
  std::unordered_map<std::string, uint32_t> by_name_;
  std::vector<Ranges> sets_;
  std::map<Ranges, uint32_t> set_ids_;
  size_t n_syms_ = 0;
  int depth_ = 0;
  uint32_t owner_ = 0;
  std::vector<int> aux_count_;

  // ---- errors and positions ----
  [[noreturn]] void fail(size_t at, const std::string& msg) const {
    at = std::min(at, s_.size());
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at; ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw Error("grammar: line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + msg);
  }

  bool eof() const { return pos_ >= s_.size(); }
  char peek(size_t k = 0) const { return pos_ + k < s_.size() ? s_[pos_ + k] : '\0'; }

  void skip_space(bool newlines) {
    while (!eof()) {
      const char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else if (c == '#') {
        while (!eof() && s_[pos_] != '\n') ++pos_;
      } else if (c == '\n' && newlines) {
        ++pos_;
      } else {
        break;
      }
    }
  }

  // ---- rules, symbols, char sets ----
  uint32_t rule_ref(const std::string& name, size_t at) {
    auto it = by_name_.find(name);
    if (it != by_name_.end()) {
      RuleDef& r = rules_[it->second];
      if (r.use_pos == kNone) r.use_pos = at;
      return it->second;
    }
    const uint32_t id = static_cast<uint32_t>(rules_.size());
    RuleDef r;
    r.name = name;
    r.use_pos = at;
    r.owner = id;
    rules_.push_back(std::move(r));
    aux_count_.push_back(0);
    by_name_.emplace(name, id);
    return id;
  }

  uint32_t aux_rule(std::vector<Seq> alts, bool star = false) {
    const uint32_t id = static_cast<uint32_t>(rules_.size());
    RuleDef r;
    r.name = rules_[owner_].name + "-" + std::to_string(++aux_count_[owner_]);
    r.alts = std::move(alts);
    r.defined = true;
    r.star = star;
    r.owner = owner_;
    rules_.push_back(std::move(r));
    aux_count_.push_back(0);
    return id;
  }

  uint32_t char_set(Ranges r, bool negate) {
    Ranges n = normalize(std::move(r), negate);
    auto it = set_ids_.find(n);
    if (it != set_ids_.end()) return it->second;
    const uint32_t id = static_cast<uint32_t>(sets_.size());
    set_ids_.emplace(n, id);
    sets_.push_back(std::move(n));
    return id;
  }

  void count_syms(size_t n, size_t at) {
    n_syms_ += n;
    if (n_syms_ > Grammar::kMaxElems)
      fail(at, "grammar too large (more than " + std::to_string(Grammar::kMaxElems) +
                   " elements after expanding repetitions)");
  }

  // ---- lexing ----
  std::string parse_name() {
    const size_t start = pos_;
    while (!eof() && is_name_char(s_[pos_])) ++pos_;
    return std::string(s_.substr(start, pos_ - start));
  }

  uint32_t parse_hex(size_t at, int digits, char which) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      const char c = peek();
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else fail(at, std::string("escape \\") + which + " needs " + std::to_string(digits) + " hex digits");
      v = v * 16 + static_cast<uint32_t>(d);
      ++pos_;
    }
    if (v > kMaxCodepoint) fail(at, "code point out of range in escape (above U+10FFFF)");
    return v;
  }

  // One character of a literal or class: an escape or one UTF-8 encoded code point.
  uint32_t parse_char() {
    const size_t at = pos_;
    const unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c == '\\') {
      ++pos_;
      if (eof()) fail(at, "unterminated escape at end of input");
      const char e = s_[pos_++];
      switch (e) {
        case 'x': return parse_hex(at, 2, e);
        case 'u': return parse_hex(at, 4, e);
        case 'U': return parse_hex(at, 8, e);
        case 'n': return '\n';
        case 't': return '\t';
        case 'r': return '\r';
        case '\\': case '"': case '[': case ']': return static_cast<unsigned char>(e);
        default: {
          --pos_;
          fail(at, "unknown escape '\\" + (static_cast<unsigned char>(e) >= 0x20 && static_cast<unsigned char>(e) < 0x7F
                                                 ? std::string(1, e)
                                                 : describe_char(s_, pos_)) +
                       "' (known: \\n \\t \\r \\\\ \\\" \\[ \\] \\xHH \\uHHHH \\UHHHHHHHH)");
        }
      }
    }
    if (c < 0x80) {
      ++pos_;
      return c;
    }
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else fail(at, "invalid UTF-8");
    for (int i = 1; i < len; ++i) {
      const unsigned char d = static_cast<unsigned char>(peek(static_cast<size_t>(i)));
      if (pos_ + static_cast<size_t>(i) >= s_.size() || (d & 0xC0) != 0x80) fail(at, "invalid UTF-8");
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > kMaxCodepoint || (cp >= 0xD800 && cp <= 0xDFFF)) fail(at, "invalid UTF-8");
    pos_ += static_cast<size_t>(len);
    return cp;
  }

  // ---- grammar ----
  void parse_rule() {
    const size_t start = pos_;
    const std::string name = parse_name();
    if (name.empty()) fail(pos_, "expected a rule name, found " + describe_char(s_, pos_));
    skip_space(false);
    if (s_.substr(pos_, 3) != "::=")
      fail(pos_, "expected '::=' after rule name '" + name + "', found " + describe_char(s_, pos_));
    pos_ += 3;
    skip_space(true);
    const uint32_t id = rule_ref(name, start);
    if (rules_[id].defined) fail(start, "rule '" + name + "' is defined twice");
    rules_[id].defined = true;
    rules_[id].def_pos = start;
    owner_ = id;
    std::vector<Seq> alts = parse_alternates(false);
    rules_[id].alts = std::move(alts);
    skip_space(false);
    if (!eof() && peek() != '\n') fail(pos_, "unexpected " + describe_char(s_, pos_));
  }

  std::vector<Seq> parse_alternates(bool nested) {
    std::vector<Seq> alts;
    alts.push_back(parse_sequence(nested));
    while (peek() == '|') {
      ++pos_;
      skip_space(true);
      alts.push_back(parse_sequence(nested));
    }
    return alts;
  }

  Seq parse_sequence(bool nested) {
    Seq seq;
    size_t item = kNone;  // where the last item (what a quantifier repeats) starts in seq
    while (!eof()) {
      const size_t at = pos_;
      const char c = peek();
      if (c == '"') {
        item = seq.size();
        ++pos_;
        for (;;) {
          if (eof() || peek() == '\n') fail(at, "unterminated string literal");
          if (peek() == '"') {
            ++pos_;
            break;
          }
          const uint32_t cp = parse_char();
          seq.push_back({false, char_set({{cp, cp}}, false)});
          count_syms(1, at);
        }
      } else if (c == '[') {
        item = seq.size();
        ++pos_;
        bool negate = false;
        if (peek() == '^') {
          negate = true;
          ++pos_;
        }
        Ranges r;
        for (;;) {
          if (eof() || peek() == '\n') fail(at, "unterminated character class");
          if (peek() == ']') {
            ++pos_;
            break;
          }
          const size_t ca = pos_;
          const uint32_t lo = parse_char();
          uint32_t hi = lo;
          if (peek() == '-' && pos_ + 1 < s_.size() && peek(1) != ']') {
            ++pos_;
            hi = parse_char();
            if (hi < lo) fail(ca, "invalid range in character class (end before start)");
          }
          r.push_back({lo, hi});
        }
        seq.push_back({false, char_set(std::move(r), negate)});
        count_syms(1, at);
      } else if (c == '.') {
        item = seq.size();
        ++pos_;
        seq.push_back({false, char_set({{0, kMaxCodepoint}}, false)});
        count_syms(1, at);
      } else if (is_name_char(c)) {
        item = seq.size();
        const std::string name = parse_name();
        seq.push_back({true, rule_ref(name, at)});
        count_syms(1, at);
      } else if (c == '(') {
        if (++depth_ > Grammar::kMaxNesting) fail(at, "parentheses nested too deeply");
        ++pos_;
        skip_space(true);
        std::vector<Seq> alts = parse_alternates(true);
        if (peek() != ')')
          fail(pos_, "expected ')' (to close the '(' at " + where(at) + "), found " + describe_char(s_, pos_));
        ++pos_;
        --depth_;
        item = seq.size();
        if (alts.size() == 1) {
          seq.insert(seq.end(), alts[0].begin(), alts[0].end());
        } else {
          seq.push_back({true, aux_rule(std::move(alts))});
          count_syms(1, at);
        }
      } else if (c == '*' || c == '+' || c == '?' || c == '{') {
        if (item == kNone) fail(at, std::string("'") + c + "' must follow something to repeat");
        uint32_t lo = 0, hi = 0;
        bool unbounded = false;
        ++pos_;
        if (c == '*') unbounded = true;
        else if (c == '+') lo = 1, unbounded = true;
        else if (c == '?') hi = 1;
        else parse_braces(at, nested, lo, hi, unbounded);
        repeat(seq, item, lo, hi, unbounded, at);
      } else {
        break;
      }
      skip_space(nested);
    }
    return seq;
  }

  std::string where(size_t at) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < s_.size(); ++i) {
      if (s_[i] == '\n') ++line, col = 1;
      else ++col;
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
  }

  uint32_t parse_count(size_t at) {
    if (!(peek() >= '0' && peek() <= '9')) fail(pos_, "expected a number in {...}, found " + describe_char(s_, pos_));
    uint64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      v = v * 10 + static_cast<uint64_t>(peek() - '0');
      if (v > Grammar::kMaxRepetition)
        fail(at, "repetition count too large (limit " + std::to_string(Grammar::kMaxRepetition) + ")");
      ++pos_;
    }
    return static_cast<uint32_t>(v);
  }

  void parse_braces(size_t at, bool nested, uint32_t& lo, uint32_t& hi, bool& unbounded) {
    skip_space(nested);
    lo = parse_count(at);
    skip_space(nested);
    if (peek() == ',') {
      ++pos_;
      skip_space(nested);
      if (peek() == '}') {
        unbounded = true;
      } else {
        hi = parse_count(at);
        skip_space(nested);
        if (hi < lo) fail(at, "repetition {m,n} with n < m");
      }
    } else {
      hi = lo;
    }
    if (peek() != '}') fail(pos_, "expected '}' to end the repetition, found " + describe_char(s_, pos_));
    ++pos_;
  }

  // Replaces seq[item..] by its repetition lo..hi times (or lo.. with no upper bound).
  void repeat(Seq& seq, size_t item, uint32_t lo, uint32_t hi, bool unbounded, size_t at) {
    Seq body(seq.begin() + static_cast<ptrdiff_t>(item), seq.end());
    seq.resize(item);
    if (body.empty()) return;
    const Sym x = body.size() == 1 ? body[0] : Sym{true, aux_rule({body})};
    count_syms(lo + (unbounded ? 3 : 2u * (hi - lo)), at);
    for (uint32_t i = 0; i < lo; ++i) seq.push_back(x);
    if (unbounded) {
      const uint32_t r = aux_rule({}, true);
      rules_[r].alts = {Seq{x, Sym{true, r}}, Seq{}};
      seq.push_back({true, r});
    } else if (hi > lo) {
      // x{0,k} as (x (x (...)?)?)? : nested optionals, so the matcher never holds more than one live count.
      uint32_t inner = 0;
      for (uint32_t k = 1; k <= hi - lo; ++k) {
        Seq first{x};
        if (k > 1) first.push_back({true, inner});
        inner = aux_rule({std::move(first), Seq{}});
      }
      seq.push_back({true, inner});
    }
  }

  // Alternatives that are one character class each become one class ("+" | "-" is [+-]): fewer parse stacks.
  void merge_char_alternatives() {
    for (RuleDef& r : rules_) {
      size_t first = kNone, n = 0;
      Ranges all;
      for (size_t i = 0; i < r.alts.size(); ++i) {
        if (r.alts[i].size() != 1 || r.alts[i][0].rule) continue;
        if (first == kNone) first = i;
        ++n;
        const Ranges& cs = sets_[r.alts[i][0].arg];
        all.insert(all.end(), cs.begin(), cs.end());
      }
      if (n < 2) continue;
      const Sym merged{false, char_set(std::move(all), false)};
      std::vector<Seq> alts;
      for (size_t i = 0; i < r.alts.size(); ++i) {
        if (i == first) alts.push_back({merged});
        else if (!(r.alts[i].size() == 1 && !r.alts[i][0].rule)) alts.push_back(std::move(r.alts[i]));
      }
      r.alts = std::move(alts);
    }
  }

  // ---- checks ----
  // Drops alternatives that can match no string (an empty class, a rule with no way out); a root that matches
  // nothing is an error.
  void prune_unproductive(uint32_t root) {
    const size_t n = rules_.size();
    std::vector<char> prod(n, 0);
    auto sym_ok = [&](const Sym& s) { return s.rule ? prod[s.arg] != 0 : !sets_[s.arg].empty(); };
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (prod[r]) continue;
        for (const Seq& a : rules_[r].alts) {
          if (std::all_of(a.begin(), a.end(), sym_ok)) {
            prod[r] = 1;
            changed = true;
            break;
          }
        }
      }
    }
    if (!prod[root]) throw Error("grammar: rule '" + rules_[root].name + "' matches no string");
    for (RuleDef& r : rules_) {
      std::erase_if(r.alts, [&](const Seq& a) { return !std::all_of(a.begin(), a.end(), sym_ok); });
    }
  }

  void check_left_recursion() {
    const size_t n = rules_.size();
    std::vector<char> nullable(n, 0);
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (nullable[r]) continue;
        for (const Seq& a : rules_[r].alts) {
          if (std::all_of(a.begin(), a.end(), [&](const Sym& s) { return s.rule && nullable[s.arg]; })) {
            nullable[r] = 1;
            changed = true;
            break;
          }
        }
      }
    }
    // Edge a -> b: b can be the first thing a matches (everything before it in the alternative can be empty).
    std::vector<std::vector<uint32_t>> edges(n);
    for (size_t r = 0; r < n; ++r) {
      for (const Seq& a : rules_[r].alts) {
        for (size_t i = 0; i < a.size(); ++i) {
          const Sym& s = a[i];
          if (!s.rule) break;
          // x* calls itself last (a loop, not a left recursion: nothing waits after it).
          if (!(rules_[r].star && s.arg == r && i + 1 == a.size())) edges[r].push_back(s.arg);
          if (!nullable[s.arg]) break;
        }
      }
      std::sort(edges[r].begin(), edges[r].end());
      edges[r].erase(std::unique(edges[r].begin(), edges[r].end()), edges[r].end());
    }
    std::vector<char> color(n, 0);  // 0 new, 1 on the path, 2 done
    std::vector<std::pair<uint32_t, size_t>> path;
    for (uint32_t start = 0; start < n; ++start) {
      if (color[start]) continue;
      path.push_back({start, 0});
      color[start] = 1;
      while (!path.empty()) {
        auto& [r, i] = path.back();
        if (i == edges[r].size()) {
          color[r] = 2;
          path.pop_back();
          continue;
        }
        const uint32_t to = edges[r][i++];
        if (color[to] == 0) {
          color[to] = 1;
          path.push_back({to, 0});
        } else if (color[to] == 1) {
          report_cycle(path, to);
        }
      }
    }
  }

  [[noreturn]] void report_cycle(const std::vector<std::pair<uint32_t, size_t>>& path, uint32_t to) {
    size_t k = 0;
    while (path[k].first != to) ++k;
    std::vector<std::string> names;
    for (size_t i = k; i < path.size(); ++i) {
      const std::string& nm = rules_[rules_[path[i].first].owner].name;
      if (names.empty() || names.back() != nm) names.push_back(nm);
    }
    const RuleDef& user = rules_[rules_[to].owner];
    std::string chain;
    for (const std::string& nm : names) chain += nm + " -> ";
    chain += user.name;
    fail(user.def_pos, "left recursion in rule '" + user.name + "' (" + chain +
                           "): a rule must not be able to start with itself; rewrite it with repetition, e.g. "
                           "expr ::= term (\"+\" term)*");
  }

  std::shared_ptr<const Grammar> flatten(uint32_t root) {
    auto g = std::make_shared<Grammar>();
    g->char_sets_.resize(sets_.size());
    for (size_t i = 0; i < sets_.size(); ++i) {
      Grammar::CharSet& cs = g->char_sets_[i];
      cs.ranges = sets_[i];
      for (const auto& [lo, hi] : cs.ranges)
        for (uint32_t c = lo; c <= hi && c < 128; ++c) cs.ascii[c >> 6] |= uint64_t{1} << (c & 63);
    }
    g->rules_.resize(rules_.size());
    size_t total = 0;
    for (const RuleDef& r : rules_)
      for (const Seq& a : r.alts) total += a.size() + 1;
    g->elems_.reserve(total);
    for (size_t r = 0; r < rules_.size(); ++r) {
      g->rules_[r].name = rules_[r].name;
      for (const Seq& a : rules_[r].alts) {
        g->rules_[r].alts.push_back(static_cast<uint32_t>(g->elems_.size()));
        for (const Sym& s : a) g->elems_.push_back({s.rule ? Grammar::Op::Rule : Grammar::Op::Chars, s.arg});
        g->elems_.push_back({Grammar::Op::End, 0});
      }
    }
    g->root_ = root;
    return g;
  }
};

std::shared_ptr<const Grammar> Grammar::parse(std::string_view gbnf, std::string_view root) {
  GrammarBuilder b(gbnf);
  return b.build(root);
}

namespace {

void append_cp(std::string& out, uint32_t cp) {
  static const char* hex = "0123456789ABCDEF";
  if (cp == '\n') out += "\\n";
  else if (cp == '\t') out += "\\t";
  else if (cp == '\r') out += "\\r";
  else if (cp == '\\' || cp == '"' || cp == '[' || cp == ']') out += '\\', out += static_cast<char>(cp);
  else if (cp == '-' || cp == '^') out += cp == '-' ? "\\x2D" : "\\x5E";
  else if (cp >= 0x20 && cp < 0x7F) out += static_cast<char>(cp);
  else if (cp < 0x100) out += std::string("\\x") + hex[cp >> 4] + hex[cp & 15];
  else if (cp < 0x10000) {
    out += "\\u";
    for (int s = 12; s >= 0; s -= 4) out += hex[(cp >> s) & 15];
  } else {
    out += "\\U";
    for (int s = 28; s >= 0; s -= 4) out += hex[(cp >> s) & 15];
  }
}

}  // namespace

std::string Grammar::dump() const {
  std::string out;
  for (size_t r = 0; r < rules_.size(); ++r) {
    out += rules_[r].name + " ::=";
    for (size_t a = 0; a < rules_[r].alts.size(); ++a) {
      if (a) out += " |";
      if (elems_[rules_[r].alts[a]].op == Op::End) out += " \"\"";  // (a trailing "|" would continue the rule)
      for (uint32_t p = rules_[r].alts[a]; elems_[p].op != Op::End; ++p) {
        out += ' ';
        if (elems_[p].op == Op::Rule) {
          out += rules_[elems_[p].arg].name;
        } else {
          out += '[';
          for (const auto& [lo, hi] : char_sets_[elems_[p].arg].ranges) {
            append_cp(out, lo);
            if (hi != lo) out += '-', append_cp(out, hi);
          }
          out += ']';
        }
      }
    }
    out += '\n';
  }
  return out;
}

}  // namespace lokal
