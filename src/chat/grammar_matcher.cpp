// chat/grammar_matcher.cpp - the token trie (TokenIndex) and the matcher: parse stacks advanced by UTF-8 bytes,
// a lazily built DFA over interned states (the cache), and the trie walk that fills token masks.
#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "chat/grammar.h"
#include "core/error.h"

namespace lokal {

// ---------------------------------------------------------------------------------------------------------------
// TokenIndex

namespace {

constexpr uint32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};

// Whether a character whose first bytes gave `v`, with `left` continuation bytes to come, can still be a valid one
// (not overlong, not a surrogate, not above U+10FFFF).
bool prefix_can_complete(uint32_t v, uint8_t left, uint8_t len) {
  uint32_t lo = v << (6 * left);
  uint32_t hi = lo | ((1u << (6 * left)) - 1);
  lo = std::max(lo, kMinForLen[len]);
  hi = std::min<uint32_t>(hi, 0x10FFFF);
  return lo <= hi && !(lo >= 0xD800 && hi <= 0xDFFF);
}

int utf8_len(uint8_t b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// valid[k]: p[k..] is well-formed UTF-8 from a character boundary; a last character may be cut short if its start
// can still complete.
void suffix_validity(std::string_view p, std::vector<char>& valid) {
  const size_t L = p.size();
  valid.assign(L + 1, 0);
  valid[L] = 1;
  for (size_t d = L; d-- > 0;) {
    const uint8_t b = static_cast<uint8_t>(p[d]);
    const int n = utf8_len(b);
    if (n == 0) continue;
    if (n == 1) {
      valid[d] = valid[d + 1];
      continue;
    }
    const size_t avail = std::min<size_t>(static_cast<size_t>(n), L - d);
    uint32_t v = b & (n == 2 ? 0x1Fu : n == 3 ? 0x0Fu : 0x07u);
    bool ok = true;
    for (size_t k = 1; k < avail && ok; ++k) {
      const uint8_t c = static_cast<uint8_t>(p[d + k]);
      ok = (c & 0xC0) == 0x80;
      v = (v << 6) | (c & 0x3Fu);
      // every prefix must be able to complete (the matcher checks each byte)
      if (ok && k + 1 < static_cast<size_t>(n))
        ok = prefix_can_complete(v, static_cast<uint8_t>(n - 1 - k), static_cast<uint8_t>(n));
    }
    if (ok && avail == 1) ok = prefix_can_complete(v, static_cast<uint8_t>(n - 1), static_cast<uint8_t>(n));
    if (!ok) continue;
    if (avail == static_cast<size_t>(n)) {
      ok = v >= kMinForLen[n] && v <= 0x10FFFF && !(v >= 0xD800 && v <= 0xDFFF);
      valid[d] = ok && valid[d + static_cast<size_t>(n)];
    } else {
      valid[d] = 1;  // cut short at the end
    }
  }
}

}  // namespace

TokenIndex::TokenIndex(std::vector<std::string> pieces, std::vector<bool> is_eog)
    : pieces_(std::move(pieces)), is_eog_(std::move(is_eog)) {
  if (pieces_.size() > static_cast<size_t>(INT32_MAX)) throw Error("token index: too many tokens");
  is_eog_.resize(pieces_.size(), false);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const int32_t id = static_cast<int32_t>(i);
    if (is_eog_[i]) eog_.push_back(id);
    else if (pieces_[i].size() > kMaxTrieDepth) long_.push_back(id);
    else if (!pieces_[i].empty()) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    const int c = pieces_[static_cast<size_t>(a)].compare(pieces_[static_cast<size_t>(b)]);
    return c != 0 ? c < 0 : a < b;
  });
  // Sorted pieces insert into a trie in depth-first order: a new piece shares its common prefix with the previous
  // one, so only nodes past that prefix are new, appended after everything before them.
  std::vector<uint32_t> path;  // path[d] = node at depth d + 1
  std::string_view prev;
  std::vector<char> valid;
  std::vector<std::array<uint64_t, 2>> suffix_ascii;
  std::vector<char> suffix_non_ascii;
  for (const int32_t id : ids) {
    const std::string& p = pieces_[static_cast<size_t>(id)];
    size_t l = 0;
    while (l < prev.size() && l < p.size() && prev[l] == p[l]) ++l;
    while (path.size() > l) {
      nodes_[path.back()].skip = static_cast<uint32_t>(nodes_.size());
      path.pop_back();
    }
    for (size_t d = l; d < p.size(); ++d) {
      nodes_.push_back(
          {0, static_cast<uint32_t>(sorted_.size()), 0, static_cast<uint8_t>(p[d]), static_cast<uint8_t>(d + 1)});
      below_.push_back({{0, 0}, false, true});
      path.push_back(static_cast<uint32_t>(nodes_.size() - 1));
    }
    Node& end = nodes_[path.back()];
    if (end.n_tok == UINT16_MAX) {  // absurdly many tokens with one piece: check the rest one by one
      long_.push_back(id);
    } else {
      ++end.n_tok;
      sorted_.push_back(id);
      uint16_t chars = 0;
      for (const char ch : p) chars = static_cast<uint16_t>(chars + ((static_cast<uint8_t>(ch) & 0xC0) != 0x80));
      sorted_chars_.push_back(chars);
      // What lies below each node of the path.
      const size_t L = p.size();
      suffix_validity(p, valid);
      suffix_ascii.assign(L + 1, {0, 0});
      suffix_non_ascii.assign(L + 1, 0);
      for (size_t k = L; k-- > 0;) {
        const uint8_t b = static_cast<uint8_t>(p[k]);
        suffix_ascii[k] = suffix_ascii[k + 1];
        suffix_non_ascii[k] = suffix_non_ascii[k + 1];
        if (b < 128) suffix_ascii[k][b >> 6] |= uint64_t{1} << (b & 63);
        else suffix_non_ascii[k] = 1;
      }
      for (size_t d = 0; d < L; ++d) {
        Below& bl = below_[path[d]];
        bl.ascii[0] |= suffix_ascii[d][0];
        bl.ascii[1] |= suffix_ascii[d][1];
        bl.non_ascii = bl.non_ascii || suffix_non_ascii[d];
        bl.well_formed = bl.well_formed && valid[d];
      }
    }
    prev = p;
  }
  while (!path.empty()) {
    nodes_[path.back()].skip = static_cast<uint32_t>(nodes_.size());
    path.pop_back();
  }
  std::sort(long_.begin(), long_.end());
}

// ---------------------------------------------------------------------------------------------------------------
// States and steps

namespace grammar_detail {

// A canonical matcher state: the sorted distinct stacks (each: its length, then grammar positions bottom to top;
// the top is always a Chars element) and a partly read UTF-8 character.
struct State {
  std::vector<uint32_t> data;
  uint32_t n_stacks = 0;
  uint32_t partial = 0;  // bits of the character read so far
  uint8_t left = 0;      // continuation bytes still expected
  uint8_t len = 0;       // length of that character
  bool complete = false;
  size_t hash = 0;

  void finish() {
    complete = left == 0 && n_stacks > 0 && data[0] == 0;  // the empty stack sorts first
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t{partial} << 16) ^ (uint64_t{left} << 8) ^ len;
    for (const uint32_t v : data) h = (h ^ v) * 0x100000001B3ull + (h >> 29);
    hash = static_cast<size_t>(h);
  }
  bool operator==(const State& o) const {
    return hash == o.hash && partial == o.partial && left == o.left && len == o.len && data == o.data;
  }
};

struct VecHash {
  size_t operator()(const std::vector<uint32_t>& v) const {
    uint64_t h = 0xCBF29CE484222325ull;
    for (const uint32_t x : v) h = (h ^ x) * 0x100000001B3ull;
    return static_cast<size_t>(h ^ (h >> 31));
  }
};

// Expands stacks until every top is a terminal (Chars) or the stack is empty (everything matched).
struct Expander {
  const Grammar& g;
  const GrammarMatcherOptions& opt;
  std::vector<std::vector<uint32_t>> out;
  std::unordered_set<std::vector<uint32_t>, VecHash> seen;
  std::vector<std::vector<uint32_t>> work;
  size_t steps = 0;
  bool overflow = false;

  void expand(std::vector<uint32_t> st) {
    const auto& elems = g.elems();
    work.push_back(std::move(st));
    while (!work.empty() && !overflow) {
      std::vector<uint32_t> cur = std::move(work.back());
      work.pop_back();
      // A step costs more the deeper its stack (it is copied): the budget bounds the work, not just the count.
      steps += 1 + cur.size() / 16;
      if (steps > opt.max_expand_steps) {
        overflow = true;
        break;
      }
      if (cur.empty()) {
        out.push_back(std::move(cur));
        continue;
      }
      const uint32_t p = cur.back();
      const Grammar::Elem& e = elems[p];
      if (e.op == Grammar::Op::Chars) {
        out.push_back(std::move(cur));
        if (out.size() > 4 * opt.max_stacks + 16) dedupe();
        continue;
      }
      if (!seen.insert(cur).second) continue;  // reached before (ambiguity, or a loop through empty matches)
      cur.pop_back();
      if (e.op == Grammar::Op::End) {  // an alternative finished: continue after the rule reference below it
        work.push_back(std::move(cur));
        continue;
      }
      // A rule reference: remember where to continue after it (not if nothing follows: a tail call), then enter
      // each alternative.
      if (elems[p + 1].op != Grammar::Op::End) cur.push_back(p + 1);
      if (cur.size() + 1 > opt.max_stack_depth) {
        overflow = true;
        break;
      }
      const auto& alts = g.rules()[e.arg].alts;
      for (size_t i = alts.size(); i-- > 0;) {
        std::vector<uint32_t> nx;
        nx.reserve(cur.size() + 1);
        nx = cur;
        nx.push_back(alts[i]);
        work.push_back(std::move(nx));
      }
    }
  }
  void dedupe() {
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    if (out.size() > opt.max_stacks) overflow = true;
  }
  // The canonical state of `out` (nullptr when nothing is left or the limits were hit).
  std::shared_ptr<const State> finish(uint32_t partial = 0, uint8_t left = 0, uint8_t len = 0) {
    if (!overflow) dedupe();
    if (overflow) return nullptr;
    auto s = std::make_shared<State>();
    size_t total = 0;
    for (const auto& st : out) total += st.size() + 1;
    s->data.reserve(total);
    for (const auto& st : out) {
      s->data.push_back(static_cast<uint32_t>(st.size()));
      s->data.insert(s->data.end(), st.begin(), st.end());
    }
    s->n_stacks = static_cast<uint32_t>(out.size());
    s->partial = partial;
    s->left = left;
    s->len = len;
    s->finish();
    return s;
  }
};

std::shared_ptr<const State> initial_state(const Grammar& g, const GrammarMatcherOptions& opt) {
  Expander ex{g, opt, {}, {}, {}};
  for (const uint32_t a : g.rules()[g.root()].alts) ex.expand({a});
  auto s = ex.finish();
  if (!s) throw Error("grammar: the start of the grammar needs more than " + std::to_string(opt.max_stacks) +
                      " parse stacks (too ambiguous)");
  return s;
}

template <typename F>
void for_each_stack(const State& s, F&& f) {
  size_t i = 0;
  for (uint32_t k = 0; k < s.n_stacks; ++k) {
    const uint32_t n = s.data[i];
    f(&s.data[i + 1], n);
    i += n + 1;
  }
}

// Whether some stack can take a character whose first bytes gave `v` with `left` continuation bytes to come.
bool partial_possible(const Grammar& g, const State& s, uint32_t v, uint8_t left, uint8_t len) {
  uint32_t lo = v << (6 * left);
  uint32_t hi = lo | ((1u << (6 * left)) - 1);
  lo = std::max(lo, kMinForLen[len]);
  hi = std::min<uint32_t>(hi, 0x10FFFF);
  if (lo > hi || (lo >= 0xD800 && hi <= 0xDFFF)) return false;
  bool ok = false;
  for_each_stack(s, [&](const uint32_t* st, uint32_t n) {
    if (!ok && n > 0 && g.char_sets()[g.elems()[st[n - 1]].arg].intersects(lo, hi)) ok = true;
  });
  return ok;
}

std::shared_ptr<const State> advance(const Grammar& g, const State& s, uint32_t cp, const GrammarMatcherOptions& opt) {
  Expander ex{g, opt, {}, {}, {}};
  for_each_stack(s, [&](const uint32_t* st, uint32_t n) {
    if (n == 0 || ex.overflow) return;
    const uint32_t top = st[n - 1];
    if (!g.char_sets()[g.elems()[top].arg].contains(cp)) return;
    std::vector<uint32_t> next(st, st + n);
    next.back() = top + 1;
    ex.expand(std::move(next));
  });
  if (ex.out.empty()) return nullptr;
  return ex.finish();
}

// One byte: nullptr if it is refused.
std::shared_ptr<const State> step(const Grammar& g, const State& s, uint8_t b, const GrammarMatcherOptions& opt) {
  if (s.left == 0) {
    if (b < 0x80) return advance(g, s, b, opt);
    uint8_t len;
    uint32_t v;
    if (b >= 0xC2 && b <= 0xDF) len = 2, v = b & 0x1Fu;
    else if (b >= 0xE0 && b <= 0xEF) len = 3, v = b & 0x0Fu;
    else if (b >= 0xF0 && b <= 0xF4) len = 4, v = b & 0x07u;
    else return nullptr;
    const uint8_t left = static_cast<uint8_t>(len - 1);
    if (!partial_possible(g, s, v, left, len)) return nullptr;
    auto ns = std::make_shared<State>(s);
    ns->partial = v;
    ns->left = left;
    ns->len = len;
    ns->finish();
    return ns;
  }
  if ((b & 0xC0) != 0x80) return nullptr;
  const uint32_t v = (s.partial << 6) | (b & 0x3Fu);
  const uint8_t left = static_cast<uint8_t>(s.left - 1);
  if (left == 0) {
    if (v < kMinForLen[s.len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return nullptr;
    return advance(g, s, v, opt);
  }
  if (!partial_possible(g, s, v, left, s.len)) return nullptr;
  auto ns = std::make_shared<State>(s);
  ns->partial = v;
  ns->left = left;
  ns->finish();
  return ns;
}

// ---------------------------------------------------------------------------------------------------------------
// The cache: interned states, their byte transitions (a DFA built as it is used) and their token masks.

constexpr int32_t kUnknown = -2;
constexpr int32_t kDead = -1;

struct StatePtrHash {
  size_t operator()(const State* s) const { return s->hash; }
};
struct StatePtrEq {
  bool operator()(const State* a, const State* b) const { return a == b || *a == *b; }
};

// Whether a char set holds every non-ASCII character.
bool holds_all_non_ascii(const Grammar::CharSet& cs) {
  bool low = false, high = false;
  for (const auto& [lo, hi] : cs.ranges) {
    if (lo <= 0x80 && hi >= 0xD7FF) low = true;
    if (lo <= 0xE000 && hi >= 0x10FFFF) high = true;
  }
  return low && high;
}

// The cache: interned states, their byte transitions (a DFA built as it is used), their token masks, and facts that
// make both cheaper to compute.
struct Cache {
  explicit Cache(const GrammarMatcherOptions& o) : opt(o) {}
  std::mutex mu;
  GrammarMatcherOptions opt;

  // The "plain" characters of a state: those that all lead to one same next state (inside a JSON string: every
  // character but '"', '\' and controls). A run of plain characters is then judged by its length alone: `reach` of
  // them are taken (kUnbounded when they lead back to the state itself, a loop), and when `decided`, one more is
  // refused. For x{0,300} the states count down, for x* they loop.
  static constexpr uint32_t kUnbounded = UINT32_MAX;
  struct Chain {
    uint8_t status = 0;       // 0 not computed, 1 nothing worth it, 2 usable, 3 being computed
    bool non_ascii = false;   // every non-ASCII character is plain
    bool decided = false;
    uint32_t reach = 0;
    uint64_t ascii[2] = {0, 0};  // the plain ASCII characters
    int32_t succ = -1;           // where plain characters lead
  };
  struct Info {
    std::shared_ptr<const State> state;
    std::unique_ptr<int32_t[]> row;  // next state by byte (kUnknown until computed), null until first used
    std::shared_ptr<const std::vector<uint64_t>> mask;
    int32_t base = -1;  // the same stacks without the partial character (itself when there is none)
    std::vector<std::pair<uint64_t, int32_t>> advance_memo;  // which stacks take a character -> next state
    Chain chain;
  };
  std::vector<Info> states;  // (Info moves when the vector grows; rows and states do not)
  std::unordered_map<const State*, int32_t, StatePtrHash, StatePtrEq> index;
  std::deque<int32_t> mask_order;
  size_t n_masks = 0;
  uint64_t hits = 0, misses = 0, clears = 0;

  void clear() {
    states.clear();
    mask_order.clear();
    n_masks = 0;
    index.clear();
  }
  void maybe_clear() {
    if (states.size() > opt.max_cache_states) {
      clear();
      ++clears;
    }
  }
  const int32_t* row(int32_t s) const { return states[static_cast<size_t>(s)].row.get(); }

  int32_t intern(const std::shared_ptr<const State>& s, int32_t base = -1) {
    auto it = index.find(s.get());
    if (it != index.end()) return it->second;
    if (s->left != 0 && base < 0) {  // a partial state from outside: find its stacks' state first
      auto b = std::make_shared<State>(*s);
      b->partial = 0, b->left = 0, b->len = 0;
      b->finish();
      base = intern(b);
    }
    const int32_t id = static_cast<int32_t>(states.size());
    states.emplace_back();
    states.back().state = s;
    states.back().base = s->left == 0 ? id : base;
    index.emplace(s.get(), id);
    return id;
  }

  // The state after character `cp` from base state `b`. It only depends on which stacks can take cp, so that is
  // remembered per state: every ordinary character of a JSON string costs one expansion, not one each.
  int32_t advance_cp(const Grammar& g, int32_t b, uint32_t cp) {
    const State& st = *states[static_cast<size_t>(b)].state;
    if (st.n_stacks > 64) {
      auto ns = advance(g, st, cp, opt);
      return ns ? intern(ns) : kDead;
    }
    const uint64_t sig = takers(g, st, cp);
    if (sig == 0) return kDead;
    for (const auto& [m, t] : states[static_cast<size_t>(b)].advance_memo)
      if (m == sig) return t;
    auto ns = advance(g, st, cp, opt);
    const int32_t t = ns ? intern(ns) : kDead;
    states[static_cast<size_t>(b)].advance_memo.push_back({sig, t});
    return t;
  }

  int32_t compute_next(const Grammar& g, int32_t s, uint8_t byte) {
    const State& st = *states[static_cast<size_t>(s)].state;
    const int32_t base = states[static_cast<size_t>(s)].base;
    if (st.left == 0) {
      if (byte < 0x80) return advance_cp(g, s, byte);
      const int n = utf8_len(byte);
      if (n < 2) return kDead;
      const uint32_t v = byte & (n == 2 ? 0x1Fu : n == 3 ? 0x0Fu : 0x07u);
      const uint8_t left = static_cast<uint8_t>(n - 1);
      if (!partial_possible(g, st, v, left, static_cast<uint8_t>(n))) return kDead;
      auto ns = std::make_shared<State>(st);
      ns->partial = v, ns->left = left, ns->len = static_cast<uint8_t>(n);
      ns->finish();
      return intern(ns, s);
    }
    if ((byte & 0xC0) != 0x80) return kDead;
    const uint32_t v = (st.partial << 6) | (byte & 0x3Fu);
    const uint8_t left = static_cast<uint8_t>(st.left - 1);
    if (left == 0) {
      if (v < kMinForLen[st.len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return kDead;
      return advance_cp(g, base, v);
    }
    if (!partial_possible(g, st, v, left, st.len)) return kDead;
    auto ns = std::make_shared<State>(st);
    ns->partial = v, ns->left = left;
    ns->finish();
    return intern(ns, base);
  }

  int32_t next_slow(const Grammar& g, int32_t s, uint8_t b) {
    Info* info = &states[static_cast<size_t>(s)];
    if (!info->row) {
      info->row.reset(new int32_t[256]);
      std::fill_n(info->row.get(), 256, kUnknown);
    }
    int32_t* row = info->row.get();  // stays put while `states` grows
    if (row[b] != kUnknown) return row[b];
    const int32_t t = compute_next(g, s, b);
    row[b] = t;
    return t;
  }
  int32_t next(const Grammar& g, int32_t s, uint8_t b) {
    const int32_t* r = row(s);
    if (r && r[b] != kUnknown) return r[b];
    return next_slow(g, s, b);
  }

  // Which stacks of a state can take code point cp (bit k: stack k; states of more than 64 stacks are not asked).
  static uint64_t takers(const Grammar& g, const State& st, uint32_t cp) {
    uint64_t sig = 0;
    uint32_t k = 0;
    for_each_stack(st, [&](const uint32_t* stack, uint32_t n) {
      if (k < 64 && n > 0 && g.char_sets()[g.elems()[stack[n - 1]].arg].contains(cp)) sig |= uint64_t{1} << k;
      ++k;
    });
    return sig;
  }

  // The plain characters of state s alone (status 1 or 2, succ, ascii, non_ascii). Characters taken by the same
  // stacks lead to the same state (advance_cp), so grouping them by their takers finds them without stepping.
  Chain plain_here(const Grammar& g, int32_t s) {
    Chain l;
    l.status = 1;
    const State& st = *states[static_cast<size_t>(s)].state;
    if (st.left != 0 || st.n_stacks == 0 || st.n_stacks > 64) return l;
    uint64_t sig[128];
    for (uint32_t b = 0; b < 128; ++b) sig[b] = takers(g, st, b);
    // The most common set of takers among ASCII characters.
    uint64_t best = 0;
    int best_n = 0;
    for (uint32_t b = 0; b < 128; ++b) {
      if (sig[b] == 0 || sig[b] == best) continue;
      int n = 0;
      for (uint32_t k = b; k < 128; ++k) n += sig[k] == sig[b];
      if (n > best_n) best = sig[b], best_n = n;
      if (best_n >= 64) break;
    }
    // Every non-ASCII character is taken by the same stacks when each top holds all of them or none.
    uint64_t na = 0;
    bool uniform = true;
    uint32_t k = 0;
    for_each_stack(st, [&](const uint32_t* stack, uint32_t n) {
      if (n > 0) {
        const Grammar::CharSet& cs = g.char_sets()[g.elems()[stack[n - 1]].arg];
        if (holds_all_non_ascii(cs)) na |= uint64_t{1} << k;
        else if (cs.intersects(0x80, 0x10FFFF)) uniform = false;
      }
      ++k;
    });
    if (!uniform) na = 0;
    uint32_t cp = 0;
    if (best == 0 || (best_n < 8 && na != 0)) {
      best = na;
      cp = 0x80;
    } else {
      for (uint32_t b = 0; b < 128; ++b)
        if (sig[b] == best) {
          cp = b;
          break;
        }
    }
    if (best == 0) return l;
    const int32_t succ = advance_cp(g, s, cp);
    if (succ < 0) return l;  // (too many stacks)
    int n = 0;
    for (uint32_t b = 0; b < 128; ++b)
      if (sig[b] == best) l.ascii[b >> 6] |= uint64_t{1} << (b & 63), ++n;
    l.non_ascii = na == best;
    l.succ = succ;
    if (n >= 8 || l.non_ascii) l.status = 2;
    return l;
  }

  // Whether state e surely takes none of the characters of a plain set.
  bool refuses_all(const Grammar& g, int32_t e, const uint64_t ascii[2], bool non_ascii) {
    const State& st = *states[static_cast<size_t>(e)].state;
    if (st.n_stacks > 64) return false;  // (not asked: "no" is always safe)
    for (uint32_t b = 0; b < 128; ++b)
      if ((ascii[b >> 6] >> (b & 63) & 1) && takers(g, st, b) != 0) return false;
    if (!non_ascii) return true;
    bool takes = false;
    for_each_stack(st, [&](const uint32_t* stack, uint32_t k) {
      if (k > 0 && g.char_sets()[g.elems()[stack[k - 1]].arg].intersects(0x80, 0x10FFFF)) takes = true;
    });
    return !takes;
  }

  Chain chain(const Grammar& g, int32_t s) {
    if (states[static_cast<size_t>(s)].chain.status) return states[static_cast<size_t>(s)].chain;
    // Forward along the successors until a known state, an unusable one or a cycle; then back, each state's reach
    // from its successor's. Pieces have at most 255 bytes, so a reach beyond that is never needed: the walk stops
    // there (the last state is then judged one character deep).
    std::vector<int32_t> path;
    for (int32_t cur = s; path.size() < 2 * TokenIndex::kMaxTrieDepth;) {
      if (states[static_cast<size_t>(cur)].chain.status) break;
      Chain l = plain_here(g, cur);
      if (l.status == 2) l.status = 3;
      states[static_cast<size_t>(cur)].chain = l;
      path.push_back(cur);
      if (l.status != 3) break;
      cur = l.succ;
    }
    for (size_t i = path.size(); i-- > 0;) {
      Chain c = states[static_cast<size_t>(path[i])].chain;
      if (c.status != 3) continue;
      const Chain n = states[static_cast<size_t>(c.succ)].chain;
      const bool nested =
          (c.ascii[0] & ~n.ascii[0]) == 0 && (c.ascii[1] & ~n.ascii[1]) == 0 && (!c.non_ascii || n.non_ascii);
      if (c.succ == path[i]) {
        c.reach = kUnbounded;  // a loop
        c.decided = true;
      } else if (n.status == 2 && nested) {
        c.reach = n.reach == kUnbounded ? kUnbounded : n.reach + 1;
        c.decided = n.decided;
      } else {
        // (a successor still being computed is a longer cycle: judged only one character deep)
        c.reach = 1;
        c.decided = n.status != 3 && refuses_all(g, c.succ, c.ascii, c.non_ascii);
      }
      c.status = 2;
      states[static_cast<size_t>(path[i])].chain = c;
    }
    return states[static_cast<size_t>(s)].chain;
  }

  void store_mask(int32_t s, std::shared_ptr<const std::vector<uint64_t>> m) {
    if (opt.max_cached_masks == 0) return;
    while (n_masks >= opt.max_cached_masks && !mask_order.empty()) {
      states[static_cast<size_t>(mask_order.front())].mask.reset();
      mask_order.pop_front();
      --n_masks;
    }
    states[static_cast<size_t>(s)].mask = std::move(m);
    mask_order.push_back(s);
    ++n_masks;
  }
};

// Subtrees of fewer nodes are walked rather than judged by their plain characters.
constexpr uint32_t kChainCheckMin = 2;

// Token mask of state `start`: the trie walked depth first, a subtree skipped as soon as its prefix is refused, and
// judged whole when all its bytes are plain characters of the state reached (inside a string: by their number).
std::vector<uint64_t> compute_mask(Cache& c, const Grammar& g, const TokenIndex& ti, int32_t start) {
  const size_t n_tok = static_cast<size_t>(ti.n_tokens());
  std::vector<uint64_t> bits((n_tok + 63) / 64, 0);
  const auto& nodes = ti.nodes();
  const auto& below = ti.below();
  const int32_t* sorted = ti.sorted_ids().data();
  const uint16_t* chars = ti.sorted_chars().data();
  auto set = [&](uint32_t k) {
    const uint32_t id = static_cast<uint32_t>(sorted[k]);
    bits[id >> 6] |= uint64_t{1} << (id & 63);
  };
  // State, its transition row (null until first used) and the characters so far at each depth of the current path.
  int32_t st[TokenIndex::kMaxTrieDepth + 1];
  const int32_t* rowp[TokenIndex::kMaxTrieDepth + 1];
  uint32_t pc[TokenIndex::kMaxTrieDepth + 1];
  st[0] = start;
  rowp[0] = c.row(start);
  pc[0] = 0;
  const size_t n = nodes.size();
  size_t i = 0;
  while (i < n) {
    const TokenIndex::Node& nd = nodes[i];
    const unsigned d = nd.depth;
    if (nd.skip - i >= kChainCheckMin) {  // a big subtree: maybe all plain characters of the parent state
      const Cache::Chain ch = c.chain(g, st[d - 1]);
      const TokenIndex::Below& b = below[i];
      if (ch.status == 2 && b.well_formed && (b.ascii[0] & ~ch.ascii[0]) == 0 && (b.ascii[1] & ~ch.ascii[1]) == 0 &&
          (!b.non_ascii || ch.non_ascii)) {
        const uint32_t first = nd.tok_first, end = ti.tok_first_at(nd.skip);
        if (ch.reach == Cache::kUnbounded) {
          for (uint32_t k = first; k < end; ++k) set(k);
          i = nd.skip;
          continue;
        }
        // A piece is taken if its characters after the path so far fit in the reach.
        const uint64_t limit = uint64_t{ch.reach} + pc[d - 1];
        bool all_fit = true;
        for (uint32_t k = first; k < end && all_fit; ++k) all_fit = chars[k] <= limit;
        if (ch.decided || all_fit) {
          for (uint32_t k = first; k < end; ++k)
            if (chars[k] <= limit) set(k);
          i = nd.skip;
          continue;
        }
      }
      rowp[d - 1] = c.row(st[d - 1]);  // (looking at the plain characters may have made the row)
    }
    const int32_t* row = rowp[d - 1];
    int32_t t;
    if (row && row[nd.byte] != kUnknown) {
      t = row[nd.byte];
    } else {
      t = c.next_slow(g, st[d - 1], nd.byte);
      rowp[d - 1] = c.row(st[d - 1]);
    }
    if (t < 0) {
      i = nd.skip;
      continue;
    }
    st[d] = t;
    rowp[d] = c.row(t);
    pc[d] = pc[d - 1] + ((nd.byte & 0xC0) != 0x80);
    for (uint32_t k = nd.tok_first; k < nd.tok_first + nd.n_tok; ++k) set(k);
    ++i;
  }
  for (const int32_t id : ti.long_tokens()) {
    int32_t s = start;
    for (const char ch : ti.piece(id)) {
      s = c.next(g, s, static_cast<uint8_t>(ch));
      if (s < 0) break;
    }
    if (s >= 0) bits[static_cast<uint32_t>(id) >> 6] |= uint64_t{1} << (id & 63);
  }
  if (c.states[static_cast<size_t>(start)].state->complete)
    for (const int32_t id : ti.eog_tokens()) bits[static_cast<uint32_t>(id) >> 6] |= uint64_t{1} << (id & 63);
  return bits;
}

}  // namespace grammar_detail

// ---------------------------------------------------------------------------------------------------------------
// GrammarMatcher

using grammar_detail::Cache;
using grammar_detail::State;

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenIndex> tokens,
                               const GrammarMatcherOptions& options)
    : grammar_(std::move(grammar)), tokens_(std::move(tokens)) {
  if (!grammar_) throw Error("grammar matcher: no grammar");
  GrammarMatcherOptions o = options;
  o.max_stacks = std::max<size_t>(o.max_stacks, 1);
  o.max_stack_depth = std::max<size_t>(o.max_stack_depth, 2);
  o.max_expand_steps = std::max<size_t>(o.max_expand_steps, 16);
  cache_ = std::make_shared<Cache>(o);
  start_ = grammar_detail::initial_state(*grammar_, o);
  state_ = start_;
}

const TokenIndex& GrammarMatcher::index() const {
  if (!tokens_) throw Error("grammar matcher: no token index (this matcher only takes bytes)");
  return *tokens_;
}

bool GrammarMatcher::allowed(int32_t id) const {
  const TokenIndex& ti = index();
  if (id < 0 || id >= ti.n_tokens()) return false;
  if (ti.is_eog(id)) return is_complete();
  const std::string& piece = ti.piece(id);
  if (piece.empty()) return false;
  std::lock_guard<std::mutex> lk(cache_->mu);
  Cache& c = *cache_;
  c.maybe_clear();
  int32_t s = c.intern(state_);
  if (const auto& m = c.states[static_cast<size_t>(s)].mask)
    return ((*m)[static_cast<uint32_t>(id) >> 6] >> (id & 63)) & 1;
  for (const char ch : piece) {
    s = c.next(*grammar_, s, static_cast<uint8_t>(ch));
    if (s < 0) return false;
  }
  return true;
}

bool GrammarMatcher::accept_token(int32_t id) {
  const TokenIndex& ti = index();
  if (id < 0 || id >= ti.n_tokens()) return false;
  if (ti.is_eog(id)) return is_complete();
  const std::string& piece = ti.piece(id);
  if (piece.empty()) return false;
  return accept_bytes(piece);
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  std::lock_guard<std::mutex> lk(cache_->mu);
  Cache& c = *cache_;
  c.maybe_clear();
  std::shared_ptr<const State> cur = state_;
  int32_t s = c.intern(cur);
  for (const char ch : bytes) {
    if (c.states.size() > 2 * c.opt.max_cache_states + 64) {  // a long input: don't let the cache grow without bound
      cur = c.states[static_cast<size_t>(s)].state;
      c.clear();
      ++c.clears;
      s = c.intern(cur);
    }
    s = c.next(*grammar_, s, static_cast<uint8_t>(ch));
    if (s < 0) return false;
  }
  state_ = c.states[static_cast<size_t>(s)].state;
  return true;
}

void GrammarMatcher::fill_bitmask(std::vector<uint64_t>& bits) const {
  const TokenIndex& ti = index();
  std::lock_guard<std::mutex> lk(cache_->mu);
  Cache& c = *cache_;
  c.maybe_clear();
  const int32_t s = c.intern(state_);
  if (const auto& m = c.states[static_cast<size_t>(s)].mask) {
    ++c.hits;
    bits = *m;
    return;
  }
  ++c.misses;
  auto m = std::make_shared<const std::vector<uint64_t>>(grammar_detail::compute_mask(c, *grammar_, ti, s));
  bits = *m;
  c.store_mask(s, std::move(m));
}

namespace {
// kSpread[b]: 8 bytes, byte j = bit j of b.
struct SpreadTable {
  uint64_t v[256];
  SpreadTable() {
    for (int b = 0; b < 256; ++b) {
      uint64_t x = 0;
      for (int j = 0; j < 8; ++j)
        if (b >> j & 1) x |= uint64_t{1} << (8 * j);
      v[b] = x;
    }
  }
};
const SpreadTable kSpread;
}  // namespace

void GrammarMatcher::fill_mask(std::vector<uint8_t>& allowed) const {
  std::vector<uint64_t> bits;
  fill_bitmask(bits);
  const size_t n = static_cast<size_t>(index().n_tokens());
  allowed.resize(n);
  uint8_t* dst = allowed.data();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t x = kSpread.v[(bits[i >> 6] >> (i & 63)) & 0xFF];  // little-endian: byte j = token i + j
    std::memcpy(dst + i, &x, 8);
  }
  for (; i < n; ++i) dst[i] = static_cast<uint8_t>((bits[i >> 6] >> (i & 63)) & 1);
}

bool GrammarMatcher::is_complete() const { return state_->complete; }
bool GrammarMatcher::is_dead() const { return state_->n_stacks == 0; }
void GrammarMatcher::reset() { state_ = start_; }
size_t GrammarMatcher::n_stacks() const { return state_->n_stacks; }
bool GrammarMatcher::partial_utf8() const { return state_->left != 0; }

bool GrammarMatcher::check_bytes_uncached(std::string_view bytes) const {
  std::shared_ptr<const State> cur = state_;
  for (const char ch : bytes) {
    cur = grammar_detail::step(*grammar_, *cur, static_cast<uint8_t>(ch), cache_->opt);
    if (!cur) return false;
  }
  return true;
}

bool GrammarMatcher::same_state(const GrammarMatcher& other) const {
  return grammar_ == other.grammar_ && (state_ == other.state_ || *state_ == *other.state_);
}

size_t GrammarMatcher::state_hash() const { return state_->hash; }

GrammarMatcher::CacheStats GrammarMatcher::cache_stats() const {
  std::lock_guard<std::mutex> lk(cache_->mu);
  CacheStats st;
  st.mask_hits = cache_->hits;
  st.mask_misses = cache_->misses;
  st.states = cache_->states.size();
  st.masks = cache_->n_masks;
  st.clears = cache_->clears;
  return st;
}

void GrammarMatcher::clear_cache() const {
  std::lock_guard<std::mutex> lk(cache_->mu);
  cache_->clear();
}

}  // namespace lokal
