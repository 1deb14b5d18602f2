// chat/grammar.h - grammar-constrained decoding: GBNF grammars, a per-vocabulary token index, and a matcher that
// says which tokens may come next.
//
// Grammar (GBNF, llama.cpp's syntax; grammar.cpp):
//   rule-name ::= alternative | alternative ...      # a comment runs to the end of the line
//   * a rule name is letters, digits, '-' (and '_'); `root` is the start rule unless another is named;
//   * a sequence is terminals and rule names one after the other: "literal" (escapes \n \t \r \\ \" \[ \] \xHH
//     \uHHHH \UHHHHHHHH), [a-z0-9_] character classes ([^...] negated; the same escapes inside, '-' first or last is
//     literal), `.` (any character), ( ... ) groups;
//   * repetition after any item: * + ? {m} {m,} {m,n} (quantifiers may be chained: x+? is (x+)?);
//   * a rule ends at the end of a line, except inside parentheses, right after `::=` or after a `|`.
//   The grammar works on Unicode code points; the matcher feeds it UTF-8 bytes (ill-formed UTF-8 is never taken).
//   Not supported: llama.cpp's token references (<[id]>, <|name|>), escapes other than those above (\- is an
//   error, as in llama.cpp: write \x2D). Errors (lokal::Error, one line) start with "grammar: " and give "line L,
//   column C" (1-based, bytes) where a place is known: syntax errors, "undefined rule 'foo'", a rule defined twice, no
//   root rule, an empty grammar, left recursion (direct or through other rules, also behind rules that can match
//   the empty string) naming the rule, a root that matches no string at all, a grammar over the size limits.
//
// TokenIndex: the byte strings ("pieces") of every token of one vocabulary, sorted into a trie, built once and
// shared (immutable) by every matcher on that vocabulary. Tokens whose piece is empty (control tokens) are never
// allowed, except end-of-generation tokens, which are allowed exactly when the grammar is complete.
//
// GrammarMatcher: one per sequence. Its state is a set of parse stacks (a pushdown recognizer; each stack lists
// grammar positions, the top one is the next terminal) plus the bytes of a UTF-8 character not finished yet, so a
// character split over byte-fallback tokens works. States are immutable and shared, so copying a matcher (e.g. to
// roll back after speculative decoding) copies a few shared pointers.
//   Speed: matchers share a cache (copies of a matcher share their origin's; `GrammarMatcher m2 = m; m2.reset();`
//   gives a fresh matcher on the same cache). It turns the recognizer into a lazily built DFA over bytes: every
//   distinct state is interned once and its transitions are remembered, so walking a token's bytes costs a table
//   lookup per byte. fill_mask walks the token trie depth-first from the current state and skips a whole subtree as
//   soon as its prefix is refused. A subtree whose bytes are all "plain" characters of the state reached (those that
//   lead to one same next state: inside a JSON string, all but '"', '\' and controls) is judged without walking it:
//   when they lead back to the state itself every piece below is taken; when they count down (a string with
//   maxLength, x{0,n}) a piece is taken if its number of characters fits. Masks are cached per state (the canonical
//   set of stacks + partial UTF-8 bytes), so states that come back (inside a JSON string, before a key) reuse
//   theirs. Costs on Qwen2's 151936 tokens: bench/bench_grammar.cpp. The cache is bounded (it is
//   dropped and rebuilt when it grows past the limits of GrammarMatcherOptions) and guarded by a mutex: matchers
//   sharing a cache may be used from different threads (their calls take turns); one matcher is not thread-safe.
//   Ambiguous grammars can multiply stacks: a step that would need more than max_stacks stacks (or a stack deeper
//   than max_stack_depth, or more work than max_expand_steps) is refused as if the byte were not allowed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lokal {

// A compiled grammar: immutable, shareable across threads.
class Grammar {
 public:
  // Parses GBNF text (UTF-8). Throws lokal::Error (see above).
  static std::shared_ptr<const Grammar> parse(std::string_view gbnf, std::string_view root = "root");

  // --- The compiled form (for the matcher and for tests). ---
  // Every alternative of every rule is a run of elements ending with End. Repetitions and groups became extra
  // rules (named after the rule they come from, e.g. "item-3"). Alternatives that can match no string are dropped.
  enum class Op : uint8_t { End, Chars, Rule };
  struct Elem {
    Op op;
    uint32_t arg;  // Chars: index into char_sets(); Rule: index into rules()
  };
  struct CharSet {
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // sorted, disjoint, inclusive; never surrogates
    uint64_t ascii[2] = {0, 0};                          // bit c set: code point c < 128 is in the set
    bool contains(uint32_t cp) const;
    bool intersects(uint32_t lo, uint32_t hi) const;  // any code point of [lo, hi] in the set
  };
  struct Rule {
    std::string name;
    std::vector<uint32_t> alts;  // position in elems() of each alternative's first element
  };
  const std::vector<Elem>& elems() const { return elems_; }
  const std::vector<CharSet>& char_sets() const { return char_sets_; }
  const std::vector<Rule>& rules() const { return rules_; }
  uint32_t root() const { return root_; }
  std::string dump() const;  // the compiled rules as GBNF-like text (debugging)

  // Limits (input beyond them is a lokal::Error).
  static constexpr uint32_t kMaxRepetition = 100000;  // m and n of {m,n}
  static constexpr size_t kMaxElems = 4u << 20;       // elements after expanding repetitions
  static constexpr int kMaxNesting = 256;             // nested parentheses

 private:
  friend class GrammarBuilder;
  std::vector<Elem> elems_;
  std::vector<CharSet> char_sets_;
  std::vector<Rule> rules_;
  uint32_t root_ = 0;
};

// The token pieces of one vocabulary as a trie: immutable, shareable across threads.
class TokenIndex {
 public:
  // pieces[id] = the raw bytes token id stands for ("" for control tokens); is_eog[id] = it ends generation
  // (shorter than pieces: the rest are false). EOG tokens are never matched as text.
  TokenIndex(std::vector<std::string> pieces, std::vector<bool> is_eog);
  // token_to_piece(id) of every token (control tokens give ""), is_eog from the vocabulary (a lokal::Vocab; a
  // template so that this library needs no tokenizer at link time).
  template <typename VocabT>
  static std::shared_ptr<const TokenIndex> from_vocab(const VocabT& v) {
    const int32_t n = v.n_tokens();
    std::vector<std::string> pieces(static_cast<size_t>(n));
    std::vector<bool> eog(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      pieces[static_cast<size_t>(i)] = v.token_to_piece(i);
      eog[static_cast<size_t>(i)] = v.is_eog(i);
    }
    return std::make_shared<const TokenIndex>(std::move(pieces), std::move(eog));
  }

  int32_t n_tokens() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const { return pieces_[static_cast<size_t>(id)]; }
  bool is_eog(int32_t id) const { return is_eog_[static_cast<size_t>(id)]; }
  const std::vector<int32_t>& eog_tokens() const { return eog_; }

  // Trie in depth-first order: node i's subtree is [i, skip); depth is 1 for the first byte of a piece. tok_first is
  // the number of trie tokens before node i in this order: the tokens whose piece ends at node i are
  // sorted_ids()[tok_first, tok_first + n_tok), and those of its whole subtree [tok_first, tok_first of node skip)
  // (tok_first_at(skip)). Pieces longer than 255 bytes are not in the trie but in long_tokens().
  struct Node {
    uint32_t skip;
    uint32_t tok_first;
    uint16_t n_tok;
    uint8_t byte;
    uint8_t depth;
  };
  // The bytes of a node's subtree (its own byte and all below it in every piece), for taking whole subtrees.
  struct Below {
    uint64_t ascii[2];  // bit b: some byte b < 128
    bool non_ascii;     // some byte >= 128
    bool well_formed;   // every piece's rest from this node is well-formed UTF-8 starting at a character boundary
                        // (it may stop inside a character if that start can still become a valid character)
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<Below>& below() const { return below_; }
  uint32_t tok_first_at(uint32_t node) const {
    return node < nodes_.size() ? nodes_[node].tok_first : static_cast<uint32_t>(sorted_.size());
  }
  const std::vector<int32_t>& sorted_ids() const { return sorted_; }
  // Characters in each piece, in sorted_ids() order: bytes that are not UTF-8 continuation bytes (a character cut
  // short at the end counts as one).
  const std::vector<uint16_t>& sorted_chars() const { return sorted_chars_; }
  const std::vector<int32_t>& long_tokens() const { return long_; }
  static constexpr size_t kMaxTrieDepth = 255;

 private:
  std::vector<std::string> pieces_;
  std::vector<bool> is_eog_;
  std::vector<int32_t> eog_, sorted_, long_;
  std::vector<uint16_t> sorted_chars_;
  std::vector<Node> nodes_;
  std::vector<Below> below_;
};

struct GrammarMatcherOptions {
  size_t max_stacks = 1024;          // stacks in one state; a step needing more is refused
  size_t max_stack_depth = 8192;     // entries in one stack (nesting); deeper is refused
  // Work of one step (expanding the stacks after a character; a step costs 1 + stack depth / 16). The grammars of
  // JSON schemas and tool calls need a few hundred at most; a hugely ambiguous grammar ((x+)+)+... hits the
  // limit and the character is refused, so a hostile grammar costs bounded time per byte.
  size_t max_expand_steps = size_t{1} << 15;
  size_t max_cached_masks = 256;     // masks kept (n_tokens / 8 bytes each); 0 = no mask cache
  size_t max_cache_states = 32768;   // interned states before the whole cache is dropped (each up to ~1.2 KiB)
};

namespace grammar_detail {
struct State;
struct Cache;
}  // namespace grammar_detail

class GrammarMatcher {
 public:
  // `tokens` may be null for a byte-only matcher (accept_bytes, is_complete); token calls then throw lokal::Error.
  GrammarMatcher(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenIndex> tokens,
                 const GrammarMatcherOptions& options = {});

  // Whether token `id` may come next (walks its bytes; the state does not change). EOG tokens: is_complete().
  // Ids out of range and empty non-EOG tokens: false.
  bool allowed(int32_t id) const;
  // Advances by the token's bytes (an EOG token: accepted, without changing the state, only when complete). Returns
  // false and leaves the state unchanged if it is not allowed.
  bool accept_token(int32_t id);
  // Advances by raw bytes (may end inside a UTF-8 character). Returns false and leaves the state unchanged if any
  // byte is refused.
  bool accept_bytes(std::string_view bytes);
  // allowed[id] = 1 if token id may come next, else 0; resized to n_tokens.
  void fill_mask(std::vector<uint8_t>& allowed) const;
  // The same as a bitset: bit (id % 64) of word id / 64; resized to (n_tokens + 63) / 64 words.
  void fill_bitmask(std::vector<uint64_t>& bits) const;

  bool is_complete() const;  // the input so far is a whole sentence of the grammar (no partial character)
  // No parse stack at all. Never true for grammars from Grammar::parse (every rule there can finish and a refused
  // step leaves the state as it was); a sequence can still be stuck where no token of the vocabulary fits
  // (fill_mask all zero) or the stack limits refuse every step.
  bool is_dead() const;
  void reset();              // back to the start (the cache is kept)
  size_t n_stacks() const;   // stacks in the current state (an empty stack = complete)
  bool partial_utf8() const; // the last bytes began a character not finished yet

  // The reference path, for tests: whether `bytes` could be accepted now, computed step by step from the stacks
  // without the cache.
  bool check_bytes_uncached(std::string_view bytes) const;
  // The canonical state (stacks + partial character): equal states accept the same continuations.
  bool same_state(const GrammarMatcher& other) const;
  size_t state_hash() const;

  struct CacheStats {
    uint64_t mask_hits = 0, mask_misses = 0;  // fill_mask / fill_bitmask calls served from / not from the cache
    size_t states = 0, masks = 0;             // interned states and cached masks now
    uint64_t clears = 0;                      // times the cache was dropped for growing past its limits
  };
  CacheStats cache_stats() const;
  void clear_cache() const;  // drops the shared cache (benchmarks: the cold cost)

  const std::shared_ptr<const Grammar>& grammar() const { return grammar_; }
  const std::shared_ptr<const TokenIndex>& tokens() const { return tokens_; }

 private:
  const TokenIndex& index() const;
  std::shared_ptr<const Grammar> grammar_;
  std::shared_ptr<const TokenIndex> tokens_;
  std::shared_ptr<grammar_detail::Cache> cache_;
  std::shared_ptr<const grammar_detail::State> state_;
  std::shared_ptr<const grammar_detail::State> start_;
};

}  // namespace lokal
