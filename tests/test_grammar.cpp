// GBNF grammars and the matcher: parsing (accept/reject tables for many grammars, every error), the matcher's
// incremental state (refusals leave it unchanged, UTF-8 split across calls, completion), token masks against a
// brute-force check on synthetic vocabularies and on the real Qwen2 and tinychat vocabularies, the cache, the
// stack limit and threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <set>
#include <thread>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "core/error.h"
#include "core/gguf.h"
#include "support/test_data.h"
#include "tokenizer/vocab.h"

using lokal::Grammar;
using lokal::GrammarMatcher;
using lokal::GrammarMatcherOptions;
using lokal::TokenIndex;

namespace {

std::shared_ptr<const Grammar> parse(const std::string& g, const std::string& root = "root") {
  return Grammar::parse(g, root);
}

// Whether `text` is a whole sentence of the grammar (accepted and complete).
bool matches(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  GrammarMatcher m(g, nullptr);
  return m.accept_bytes(text) && m.is_complete();
}

struct Case {
  std::string text;
  bool ok;
};

void check_table(const std::string& gbnf, const std::vector<Case>& cases, const std::string& root = "root") {
  auto g = parse(gbnf, root);
  for (const Case& c : cases) EXPECT_EQ(matches(g, c.text), c.ok) << "text: '" << c.text << "'\ngrammar:\n" << gbnf;
}

std::string parse_error(const std::string& gbnf, const std::string& root = "root") {
  try {
    Grammar::parse(gbnf, root);
  } catch (const lokal::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  }
  ADD_FAILURE() << "no error for grammar:\n" << gbnf;
  return "";
}

#define EXPECT_CONTAINS(haystack, needle)                          \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
      << "'" << (haystack) << "' lacks '" << (needle) << "'"

const char* kArith = R"G(
# arithmetic, with precedence through rules
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= number | "(" expr ")" | "-" factor
number ::= [0-9]+ ("." [0-9]+)?
)G";

const char* kJson = R"G(
root   ::= value
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::=
  "{" ws (
            string ws ":" ws value ws
    ("," ws string ws ":" ws value ws)*
  )? "}"
array  ::=
  "[" ws (
            value ws
    ("," ws value ws)*
  )? "]"
string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\""
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})?
ws ::= | " " | "\n" [ \t]{0,20}
)G";

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Parsing and recognition

TEST(Grammar, Arithmetic) {
  check_table(kArith, {{"1", true},
                       {"1+2", true},
                       {"1+2*3", true},
                       {"(1+2)*3", true},
                       {"-(4.5/0.5)", true},
                       {"((((7))))", true},
                       {"", false},
                       {"1+", false},
                       {"(1+2", false},
                       {"1..2", false},
                       {"1 + 2", false},
                       {"+1", false},
                       {"1)", false}});
}

TEST(Grammar, Json) {
  check_table(kJson, {{"{}", true},
                      {"[]", true},
                      {"{\"a\": 1}", true},
                      {"{\"a\": [1, 2.5, -3e10, true, null, \"x\\n\\u00e9\"]}", true},
                      {"{\n  \"k\": {\"n\": false}\n}", true},
                      {"\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"", true},  // é € 😀
                      {"{\"a\" 1}", false},
                      {"{\"a\": 1,}", false},
                      {"[1 2]", false},
                      {"\"\\q\"", false},
                      {"\"a\nb\"", false},
                      {"01x", false},
                      {"{  }", false},  // two spaces: the whitespace rule allows one
                      {"tru", false}});
}

TEST(Grammar, ListsAndLines) {
  const char* g = R"G(
# a grammar for lists
root ::= ("- " item)+
item ::= [^\n]+ "\n"
)G";
  check_table(g, {{"- a\n", true},
                  {"- milk\n- eggs and ham\n", true},
                  {"- \xE2\x98\x95 coffee\n", true},
                  {"- \n", false},
                  {"-a\n", false},
                  {"- a", false},
                  {"", false}});
}

TEST(Grammar, ChessMoves) {
  const char* g = R"G(
root ::= (
    # first move pair, then more numbered ones
    "1. " move " " move "\n"
    ([1-9] [0-9]? ". " move " " move "\n")+
)
move ::= (pawn | nonpawn | castle) [+#]?
pawn ::= ([a-h] "x")? [a-h] [1-8] ("=" [NBRQ])?
nonpawn ::= [NBKQR] [a-h]? [1-8]? "x"? [a-h] [1-8]
castle ::= "O-O" "-O"?
)G";
  check_table(g, {{"1. e4 e5\n2. Nf3 Nc6\n", true},
                  {"1. e4 e5\n2. Nf3 Nc6\n3. Bb5 a6\n4. O-O-O Qxd8#\n", true},
                  {"1. exd5 e8=Q+\n12. Rae1 O-O\n", true},
                  {"1. e4 e5\n", false},  // needs at least one more line
                  {"1. e9 e5\n2. a1 a2\n", false},
                  {"1. e4 e5\n0. a1 a2\n", false},
                  {"1. Zf3 e5\n2. a1 a2\n", false}});
}

TEST(Grammar, IdentifiersAndNames) {
  const char* g = R"G(
root ::= c-ident ("," c-ident)*
c-ident ::= [a-zA-Z_] [a-zA-Z0-9_]*
rule-2 ::= "unused"
)G";
  check_table(g, {{"x", true},
                  {"_private,camelCase,snake_case2", true},
                  {"a1", true},
                  {"1a", false},
                  {"a,", false},
                  {"a-b", false}});
}

TEST(Grammar, RepetitionCounts) {
  check_table("root ::= \"a\"{3}", {{"aaa", true}, {"aa", false}, {"aaaa", false}});
  check_table("root ::= \"a\"{2,4}", {{"a", false}, {"aa", true}, {"aaa", true}, {"aaaa", true}, {"aaaaa", false}});
  check_table("root ::= \"a\"{2,}", {{"a", false}, {"aa", true}, {"aaaaaaaaaa", true}});
  check_table("root ::= \"a\"{0,2} \"b\"", {{"b", true}, {"ab", true}, {"aab", true}, {"aaab", false}});
  check_table("root ::= \"x\" \"a\"{0,0} \"y\"", {{"xy", true}, {"xay", false}});
  check_table("root ::= (\"ab\" | \"c\"){ 1 , 2 }",
              {{"ab", true}, {"cab", true}, {"abab", true}, {"", false}, {"ccc", false}});
  check_table("root ::= \"a\"+?", {{"", true}, {"a", true}, {"aaa", true}});   // (a+)?
  check_table("root ::= [0-9]{4} \"-\" [0-9]{2}", {{"2024-01", true}, {"202-01", false}, {"2024-1", false}});
  check_table("root ::= (\"a\" \"b\"?)*", {{"", true}, {"a", true}, {"abaab", true}, {"b", false}, {"abb", false}});
  check_table("root ::= (\"\" | \"a\")* \"b\"",
              {{"b", true}, {"aab", true}, {"a", false}});  // loop over an empty match
}

TEST(Grammar, LiteralsClassesEscapes) {
  check_table(R"(root ::= "\x41\u00e9\U0001F600\t\r\n\\\"\[\]")",
              {{"A\xC3\xA9\xF0\x9F\x98\x80\t\r\n\\\"[]", true}, {"A", false}});
  check_table(R"(root ::= [^"\\]+)", {{"abc", true}, {"a\"b", false}, {"a\\b", false}, {"\xE2\x82\xAC", true}});
  check_table("root ::= [a-]+", {{"a-a", true}, {"b", false}});
  check_table("root ::= [-a]+", {{"-a", true}});
  check_table(R"(root ::= [\x00-\x1F\]]*)", {{std::string("\x01\x1F]", 3), true}, {" ", false}});
  check_table("root ::= [ぁ-ゟ]+", {{"\xE3\x81\x82\xE3\x81\x84", true}, {"a", false}});  // hiragana
  check_table("root ::= . . .", {{"abc", true}, {"a\nb", true}, {"\xE2\x82\xAC\xC3\xA9!", true}, {"ab", false}});
  check_table("root ::= [^a-z]", {{"A", true}, {"q", false}, {"\xF0\x9F\x98\x80", true}});
  check_table("root ::= []? \"x\"", {{"x", true}});   // an empty class matches nothing
  check_table("root ::= \"\"", {{"", true}, {"a", false}});
  check_table("root ::= \"ab\" \"\" \"c\"", {{"abc", true}});
}

TEST(Grammar, LayoutCommentsAndRoot) {
  // Newlines inside parentheses and after '|' continue a rule; comments anywhere; CRLF line ends; another root.
  const std::string g =
      "# leading comment\r\n"
      "start ::= greeting # trailing comment\r\n"
      "greeting ::= \"hi\" |\r\n"
      "   \"hello\" | (\r\n"
      "  \"hey\" # inside\r\n"
      "  \"!\"\r\n"
      ")\r\n"
      "\r\n";
  check_table(g, {{"hi", true}, {"hello", true}, {"hey!", true}, {"hey", false}}, "start");
  check_table("root ::=\n  \"a\"", {{"a", true}});
  check_table("root ::= a | b\na ::= \"x\"\nb ::= \"y\"", {{"x", true}, {"y", true}, {"xy", false}});
  check_table("root ::= | \"z\"", {{"", true}, {"z", true}});
}

TEST(Grammar, Errors) {
  EXPECT_CONTAINS(parse_error("root ::= foo"), "undefined rule 'foo'");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"\n\nx ::= root bar"), "line 3, column 12: undefined rule 'bar'");
  EXPECT_CONTAINS(parse_error("root ::= root \"a\" | \"b\""), "left recursion in rule 'root'");
  EXPECT_CONTAINS(parse_error("root ::= expr\nexpr ::= term | expr \"+\" term\nterm ::= [0-9]"),
                  "line 2, column 1: left recursion in rule 'expr'");
  // Indirect, and hidden behind rules that can match nothing.
  std::string m = parse_error("root ::= a\na ::= b \"x\"\nb ::= c | \"y\"\nc ::= a \"z\"");
  EXPECT_CONTAINS(m, "left recursion");
  EXPECT_CONTAINS(m, "a -> b -> c -> a");
  EXPECT_CONTAINS(parse_error("root ::= a\na ::= opt a \"x\" | \"y\"\nopt ::= \"z\"?"), "left recursion in rule 'a'");
  EXPECT_CONTAINS(parse_error("root ::= (\"x\"? root) \"y\" | \"z\""), "left recursion in rule 'root'");
  EXPECT_CONTAINS(parse_error("root ::= a\na ::= root | \"x\""), "left recursion");
  EXPECT_CONTAINS(parse_error("root ::= \"abc"), "line 1, column 10: unterminated string literal");
  EXPECT_CONTAINS(parse_error("root ::= \"abc\nx ::= \"y\""), "unterminated string literal");
  EXPECT_CONTAINS(parse_error("root ::= [abc"), "unterminated character class");
  EXPECT_CONTAINS(parse_error("root ::= [abc\n]"), "unterminated character class");
  EXPECT_CONTAINS(parse_error("root ::= \"\\q\""), "unknown escape '\\q'");
  EXPECT_CONTAINS(parse_error("root ::= \"\\x4\""), "\\x needs 2 hex digits");
  EXPECT_CONTAINS(parse_error("root ::= \"\\uZZZZ\""), "\\u needs 4 hex digits");
  EXPECT_CONTAINS(parse_error("root ::= \"\\U00110000\""), "out of range");
  EXPECT_CONTAINS(parse_error("root ::= \"\\"), "unterminated");
  EXPECT_CONTAINS(parse_error("root ::= [z-a]"), "invalid range");
  EXPECT_CONTAINS(parse_error("root ::= (\"a\" | \"b\""), "expected ')'");
  EXPECT_CONTAINS(parse_error("root ::= \"a\" )"), "line 1, column 14: unexpected ')'");
  EXPECT_CONTAINS(parse_error("root = \"a\""), "expected '::=' after rule name 'root'");
  EXPECT_CONTAINS(parse_error("::= \"a\""), "expected a rule name");
  EXPECT_CONTAINS(parse_error("root ::= * \"a\""), "'*' must follow something to repeat");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"{3,1}"), "n < m");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"{x}"), "expected a number");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"{2"), "expected '}'");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"{1000000}"), "repetition count too large");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"\nroot ::= \"b\""), "line 2, column 1: rule 'root' is defined twice");
  EXPECT_CONTAINS(parse_error(""), "empty grammar");
  EXPECT_CONTAINS(parse_error("  # only a comment\n\n"), "empty grammar");
  EXPECT_CONTAINS(parse_error("item ::= \"a\""), "no rule named 'root'");
  EXPECT_CONTAINS(parse_error("root ::= \"a\"", "start"), "no rule named 'start'");
  EXPECT_CONTAINS(parse_error("root ::= [] \"a\""), "rule 'root' matches no string");
  EXPECT_CONTAINS(parse_error("root ::= \"\xC3\""), "invalid UTF-8");
  EXPECT_CONTAINS(parse_error("root ::= \"a\" @"), "unexpected '@'");
  EXPECT_CONTAINS(parse_error(std::string("root ::= ") + std::string(300, '(') + "\"a\"" + std::string(300, ')')),
                  "nested too deeply");
  std::string huge = "root ::=";
  for (int i = 0; i < 25; ++i) huge += " (\"" + std::string(1, static_cast<char>('a' + i)) + "\"{99999}){99999}";
  EXPECT_CONTAINS(parse_error(huge),
                  "grammar too large");
}

TEST(Grammar, DumpReparses) {
  auto g = parse(kJson);
  auto g2 = parse(g->dump());
  for (const char* t : {"{\"a\": [1, {\"b\": null}]}", "[1,", "\"\\u12\"", "{\"x\":\"\\u1234\"}"})
    EXPECT_EQ(matches(g, t), matches(g2, t)) << t;
}

// ---------------------------------------------------------------------------------------------------------------
// Matcher state

TEST(GrammarMatcher, RefusalLeavesStateUnchanged) {
  auto g = parse(kArith);
  GrammarMatcher m(g, nullptr);
  ASSERT_TRUE(m.accept_bytes("1+"));
  EXPECT_FALSE(m.is_complete());
  EXPECT_FALSE(m.accept_bytes("2)"));  // '2' is fine, ')' is not: nothing is taken
  EXPECT_FALSE(m.accept_bytes("*"));
  ASSERT_TRUE(m.accept_bytes("2"));
  EXPECT_TRUE(m.is_complete());
  EXPECT_FALSE(m.is_dead());
  GrammarMatcher copy = m;  // a snapshot
  ASSERT_TRUE(m.accept_bytes("*(3"));
  EXPECT_FALSE(m.is_complete());
  EXPECT_TRUE(copy.is_complete());
  m = copy;  // rolled back
  EXPECT_TRUE(m.is_complete());
  m.reset();
  EXPECT_FALSE(m.is_complete());
  EXPECT_TRUE(m.accept_bytes("7"));
}

TEST(GrammarMatcher, Utf8SplitAcrossCalls) {
  auto g = parse("root ::= \"\xE2\x82\xAC\" [\xC3\xA9-\xC3\xAB]+ \"\xF0\x9F\x98\x80\"");  // € [é-ë]+ 😀
  GrammarMatcher m(g, nullptr);
  ASSERT_TRUE(m.accept_bytes("\xE2"));
  EXPECT_TRUE(m.partial_utf8());
  EXPECT_FALSE(m.accept_bytes("\xE2"));  // not a continuation byte
  EXPECT_FALSE(m.accept_bytes("\x82\xAD"));  // U+20AD is not €
  ASSERT_TRUE(m.accept_bytes("\x82"));
  ASSERT_TRUE(m.accept_bytes("\xAC\xC3"));
  EXPECT_FALSE(m.accept_bytes("\xA8"));  // è is before é
  ASSERT_TRUE(m.accept_bytes("\xAA\xC3\xAB\xF0\x9F"));
  EXPECT_TRUE(m.partial_utf8());
  EXPECT_FALSE(m.is_complete());
  ASSERT_TRUE(m.accept_bytes("\x98"));
  ASSERT_TRUE(m.accept_bytes("\x80"));
  EXPECT_FALSE(m.partial_utf8());
  EXPECT_TRUE(m.is_complete());
  // Ill-formed UTF-8 is refused even where any character is allowed.
  auto any = parse("root ::= .*");
  for (const char* bad : {"\x80", "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xF5",
                          "\xFF", "\xC3\x41"}) {
    GrammarMatcher a(any, nullptr);
    EXPECT_FALSE(a.accept_bytes(bad)) << testing::PrintToString(std::string(bad));
  }
  GrammarMatcher a(any, nullptr);
  EXPECT_TRUE(
      a.accept_bytes("\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xF0\x90\x80\x80\xF4\x8F\xBF\xBF"));
  EXPECT_TRUE(a.is_complete());
}

TEST(GrammarMatcher, StackLimitRefusesInsteadOfExploding) {
  // After n 'a's, k = 0..n 'b's may be pending, each with three possible tops: about 3(n + 1) distinct stacks.
  auto g = parse("root ::= s\ns ::= \"a\" s \"b\" | \"a\" s | \"\"");
  GrammarMatcherOptions o;
  o.max_stacks = 64;
  GrammarMatcher m(g, nullptr, o);
  int taken = 0;
  while (taken < 100 && m.accept_bytes("a")) ++taken;
  EXPECT_GE(taken, 15);
  EXPECT_LT(taken, 25);
  EXPECT_LE(m.n_stacks(), 64u);
  EXPECT_FALSE(m.check_bytes_uncached("a"));
  EXPECT_TRUE(m.accept_bytes("b"));  // still usable
  // A deep nesting is refused past the depth limit.
  GrammarMatcherOptions d;
  d.max_stack_depth = 50;
  GrammarMatcher p(parse("root ::= \"(\" root \")\" | \"x\""), nullptr, d);
  int depth = 0;
  while (depth < 200 && p.accept_bytes("(")) ++depth;
  EXPECT_GT(depth, 20);
  EXPECT_LT(depth, 60);
  // Exponentially ambiguous grammars stay fast (stacks are deduplicated).
  auto amb = parse("root ::= x*\nx ::= \"a\" | \"a\" \"a\" | \"a\" \"a\" \"a\" | y\ny ::= \"a\"+");
  GrammarMatcher am(amb, nullptr);
  EXPECT_TRUE(am.accept_bytes(std::string(2000, 'a')));
  EXPECT_TRUE(am.is_complete());
}

TEST(GrammarMatcher, ExpansionWorkIsBoundedForNestedRepetitions) {
  // "x" .+++...+ (40 nested one-or-more loops): after a few characters every level may loop or return, through
  // two different grammar positions per level, so the distinct stacks double per level. Found by fuzz_grammar,
  // which spent 45 s on one such input before the work of a step was bounded (max_expand_steps).
  auto g = parse("root ::= \"x\" ." + std::string(40, '+'));
  auto taken_with = [&](size_t budget, bool check_refusal) {
    GrammarMatcherOptions o;
    o.max_expand_steps = budget;
    GrammarMatcher m(g, nullptr, o);
    EXPECT_TRUE(m.accept_bytes("x"));
    int taken = 0;
    while (taken < 64) {
      GrammarMatcher before = m;
      if (!m.accept_bytes("a")) {
        if (check_refusal) EXPECT_TRUE(m.same_state(before)) << "a refused byte changed the state";
        EXPECT_FALSE(m.check_bytes_uncached("a"));
        break;
      }
      ++taken;
    }
    return taken;
  };
  // Measured: 2000 steps take the first 'a' only; the default budget takes two, and then the stack limit
  // (max_stacks 1024) refuses the third whatever the budget.
  const int small = taken_with(2000, true);
  EXPECT_EQ(small, 1);
  EXPECT_EQ(taken_with(GrammarMatcherOptions{}.max_expand_steps, true), 2);
  // The grammars of JSON schemas need a few hundred steps at most (bench_grammar's schema: 26; this file's
  // tests: 190 at most, measured): a whole document goes through with a budget of 1000.
  const nlohmann::ordered_json schema = nlohmann::ordered_json::parse(R"({"type":"object","properties":{
      "name":{"type":"string"},"tags":{"type":"array","items":{"type":"string"}},
      "n":{"type":"integer"},"sub":{"type":"object","properties":{"ok":{"type":"boolean"}}}},
      "required":["name","n"]})");
  GrammarMatcherOptions o;
  o.max_expand_steps = 1000;
  GrammarMatcher j(parse(lokal::json_schema_to_gbnf(schema)), nullptr, o);
  EXPECT_TRUE(j.accept_bytes(R"({"name": "a \"b\"", "tags": ["x", "y"], "n": -12, "sub": {"ok": true}})"));
  EXPECT_TRUE(j.is_complete());
}

// ---------------------------------------------------------------------------------------------------------------
// Token masks

namespace {

// A synthetic vocabulary: every single byte, pieces cut from sample texts at random places (so some end inside a
// UTF-8 character), control tokens ("") and two end-of-generation tokens.
std::shared_ptr<const TokenIndex> synthetic_vocab(uint32_t seed) {
  std::vector<std::string> pieces;
  std::vector<bool> eog;
  for (int b = 0; b < 256; ++b) pieces.push_back(std::string(1, static_cast<char>(b)));
  const std::vector<std::string> texts = {
      "{\"name\": \"Ada\", \"age\": 36, \"tags\": [\"x\", \"y\"], \"ok\": true, \"v\": null}",
      "1+2*(3-4)/5.25", "- milk\n- eggs\n", "1. e4 e5\n2. Nf3 Nc6\n", "caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x98\x80!",
      "\xE3\x81\x82\xE3\x81\x84\xE3\x81\x86", "\"\\n\\u00e9\\\"\"", "  \n\t{}[],:", "true false null -0.5e+10",
      "snake_case camelCase _x9", "<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call>"};
  std::mt19937 rng(seed);
  for (int i = 0; i < 1500; ++i) {
    const std::string& t = texts[rng() % texts.size()];
    const size_t a = rng() % t.size();
    const size_t len = 1 + rng() % std::min<size_t>(12, t.size() - a);
    pieces.push_back(t.substr(a, len));
  }
  // Pieces that stop inside a character, under common prefixes so that they sit in big subtrees of the trie: each
  // subtree holds one kind of ill-formed piece (a start that can never complete: overlong, surrogate, above
  // U+10FFFF; a stray byte) among well-formed ones.
  const char* bad[] = {"\xE0\x80", "\xED\xA0", "\xF4\x90", "\xF0\x80", "\xC0", "\x80", "\xF5", "\xC3\xC3", nullptr};
  for (int k = 0; k < 9; ++k) {
    const std::string prefix = std::string("q") + static_cast<char>('a' + k);
    for (const char* tail : {"y", "yz", "yzw", "\xC3", "\xE2\x82", "\xF0\x9F\x98", "\xE3\x81\x82", "\xE0\xA0",
                             "\xED\x9F", "\xF4\x8F", "0123", "\xC3\xA9!"})
      pieces.push_back(prefix + tail);
    if (bad[k]) pieces.push_back(prefix + bad[k]);
  }
  // A subtree of letters only, with pieces of many lengths.
  for (const char* w : {"zebra", "zebras", "zeb", "zero", "zeros", "zest", "zz", "zzz", "zzzz", "zzzzz", "zzzzzzzz"})
    pieces.push_back(w);
  pieces.push_back("");  // control
  pieces.push_back("");  // control
  eog.resize(pieces.size(), false);
  pieces.push_back("");  // EOG, like <|im_end|>
  eog.push_back(true);
  pieces.push_back("</s>");  // an EOG token with text: still only an end
  eog.push_back(true);
  pieces.push_back(std::string(300, ' '));  // longer than the trie holds
  eog.push_back(false);
  return std::make_shared<const TokenIndex>(pieces, eog);
}

// The mask computed without the trie or the cache: each token's bytes on a fresh copy, and the uncached reference
// path; both must agree.
std::vector<uint8_t> brute_mask(const GrammarMatcher& m, bool also_uncached) {
  const TokenIndex& ti = *m.tokens();
  std::vector<uint8_t> out(static_cast<size_t>(ti.n_tokens()), 0);
  for (int32_t id = 0; id < ti.n_tokens(); ++id) {
    const std::string& p = ti.piece(id);
    if (ti.is_eog(id)) {
      out[static_cast<size_t>(id)] = m.is_complete();
      continue;
    }
    if (p.empty()) continue;
    GrammarMatcher copy = m;
    const bool ok = copy.accept_bytes(p);
    out[static_cast<size_t>(id)] = ok;
    if (also_uncached) {
      EXPECT_EQ(m.check_bytes_uncached(p), ok) << "token " << id;
    }
  }
  return out;
}

std::string show(const std::string& s) {
  std::string o;
  for (const unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\') o += static_cast<char>(c);
    else {
      static const char* hex = "0123456789ABCDEF";
      o += std::string("\\x") + hex[c >> 4] + hex[c & 15];
    }
  }
  return o;
}

// Walks a grammar with random allowed tokens; at each state compares fill_mask, fill_bitmask and allowed() with the
// brute force. Returns the number of states checked.
int check_masks_on_walk(const std::shared_ptr<const Grammar>& g, const std::shared_ptr<const TokenIndex>& ti,
                        uint32_t seed, int steps, bool uncached_every, const GrammarMatcherOptions& opt = {}) {
  std::mt19937 rng(seed);
  GrammarMatcher m(g, ti, opt);
  std::vector<uint8_t> mask;
  std::vector<uint64_t> bits;
  std::string text;
  int checked = 0;
  for (int s = 0; s < steps; ++s) {
    m.fill_mask(mask);
    const std::vector<uint8_t> brute = brute_mask(m, uncached_every || s % 8 == 0);
    for (int32_t id = 0; id < ti->n_tokens(); ++id) {
      if (mask[static_cast<size_t>(id)] != brute[static_cast<size_t>(id)]) {
        ADD_FAILURE() << "token " << id << " '" << show(ti->piece(id)) << "' mask "
                      << int(mask[static_cast<size_t>(id)]) << " brute " << int(brute[static_cast<size_t>(id)])
                      << " after '" << show(text) << "'";
        return checked;
      }
    }
    m.fill_bitmask(bits);
    for (int32_t id = 0; id < ti->n_tokens(); id += 7) {
      const bool bit = (bits[static_cast<size_t>(id) / 64] >> (id % 64)) & 1;
      if (bit != (mask[static_cast<size_t>(id)] != 0) || m.allowed(id) != bit) {
        ADD_FAILURE() << "bitmask / allowed() disagree with the mask for token " << id;
        return checked;
      }
    }
    ++checked;
    std::vector<int32_t> ok;
    for (int32_t id = 0; id < ti->n_tokens(); ++id)
      if (mask[static_cast<size_t>(id)] && !ti->is_eog(id)) ok.push_back(id);
    if (ok.empty()) {
      EXPECT_TRUE(m.is_complete()) << "stuck after '" << show(text) << "'";
      m.reset();
      text.clear();
      continue;
    }
    const int32_t pick = ok[rng() % ok.size()];
    EXPECT_TRUE(m.accept_token(pick));
    text += ti->piece(pick);
    if (m.is_complete() && rng() % 4 == 0) {
      EXPECT_TRUE(m.accept_token(static_cast<int32_t>(ti->eog_tokens()[0])));
      m.reset();
      text.clear();
    }
  }
  return checked;
}

const char* kUnicodeGrammar = R"G(
root ::= (word " ")* word "!"?
word ::= [a-z\u00e0-\u00ff]+ | [\u3041-\u309f]{1,3} | "\u20ac" [0-9]+ | "\U0001F600"
)G";

}  // namespace

TEST(GrammarMask, MatchesBruteForceOnSyntheticVocab) {
  auto ti = synthetic_vocab(1);
  std::vector<std::string> grammars = {kJson, kArith, kUnicodeGrammar,
                                             "root ::= (\"- \" [^\\n]+ \"\\n\")+",
                                             "root ::= \"<tool_call>\\n\" [^<]* \"</tool_call>\"",
                                             "root ::= [^\"\\\\]* \"\\\"\" | .{2,5}",
                                             // runs of "plain" characters that count down, shrink, or alternate
                                             "root ::= [^!]{0,3} [^!0-9]* \"!\"",
                                             "root ::= ([a-z ] [^a-z!])* \"!\"",
                                             "root ::= [^\\n]{0,40} \"\\n\" [^\\n]{2,} \"\\n\"",
                                             "root ::= [a-z]{3} [a-m]* \"!\"",
                                             "root ::= ([a-z ] | [^\\x00-\\x7F] \"x\")* \"!\""};
  // A count ending in a state of more than 64 stacks (70 two-character words; only the last ones take a letter).
  std::string wide = "root ::= [a-z]{2} (";
  for (int i = 0; i < 70; ++i)
    wide += std::string(i ? " | " : "") + "\"" + static_cast<char>((i < 64 ? 'A' : 'a') + i % 26) +
            static_cast<char>('0' + i / 26) + "\"";
  grammars.push_back(wide + ")");
  int states = 0;
  for (size_t i = 0; i < grammars.size(); ++i)
    states += check_masks_on_walk(parse(grammars[i]), ti, static_cast<uint32_t>(10 + i), 60, true);
  EXPECT_GT(states, 300);
  // JSON-schema grammars too.
  auto schema = nlohmann::ordered_json::parse(R"({"type":"object","properties":{
      "name":{"type":"string","maxLength":6},"age":{"type":"integer","minimum":-5,"maximum":120},
      "tags":{"type":"array","items":{"enum":["x","y","caf\u00e9"]},"minItems":1},"ok":{"type":"boolean"},
      "v":{"type":["number","null"]}},"required":["name","age"]})");
  EXPECT_GT(check_masks_on_walk(parse(lokal::json_schema_to_gbnf(schema)), ti, 99, 120, false), 100);
}

TEST(GrammarMask, CacheLimitsKeepMasksRight) {
  auto ti = synthetic_vocab(2);
  GrammarMatcherOptions tiny;
  tiny.max_cache_states = 8;  // dropped all the time
  tiny.max_cached_masks = 2;
  EXPECT_GT(check_masks_on_walk(parse(kJson), ti, 5, 80, false, tiny), 70);
  GrammarMatcherOptions none;
  none.max_cached_masks = 0;
  EXPECT_GT(check_masks_on_walk(parse(kUnicodeGrammar), ti, 6, 40, false, none), 30);
}

TEST(GrammarMask, EndOfGenerationAndControlTokens) {
  auto ti = synthetic_vocab(3);
  const int32_t n = ti->n_tokens();
  const int32_t eog_empty = n - 3, eog_text = n - 2, control = n - 4;
  ASSERT_TRUE(ti->is_eog(eog_empty));
  ASSERT_TRUE(ti->is_eog(eog_text));
  GrammarMatcher m(parse("root ::= \"ab\" \"c\"?"), ti);
  std::vector<uint8_t> mask;
  m.fill_mask(mask);
  EXPECT_FALSE(mask[static_cast<size_t>(eog_empty)]);
  EXPECT_FALSE(m.allowed(eog_text));
  EXPECT_FALSE(m.accept_token(eog_empty));
  EXPECT_FALSE(m.allowed(control));
  EXPECT_FALSE(m.allowed(-1));
  EXPECT_FALSE(m.allowed(n));
  EXPECT_FALSE(m.accept_token(n + 5));
  ASSERT_TRUE(m.accept_token('a'));
  ASSERT_TRUE(m.accept_token('b'));
  m.fill_mask(mask);
  EXPECT_TRUE(mask[static_cast<size_t>(eog_empty)]);
  EXPECT_TRUE(mask[static_cast<size_t>(eog_text)]);
  EXPECT_TRUE(mask['c']);
  EXPECT_FALSE(mask[static_cast<size_t>(control)]);
  EXPECT_TRUE(m.accept_token(eog_text));
  EXPECT_TRUE(m.is_complete());
  ASSERT_TRUE(m.accept_token('c'));
  m.fill_mask(mask);
  int allowed = 0;
  for (uint8_t x : mask) allowed += x;
  EXPECT_EQ(allowed, 2);  // only the two EOG tokens
  // A byte-only matcher refuses token calls with an error.
  GrammarMatcher b(parse("root ::= \"a\""), nullptr);
  EXPECT_THROW(b.allowed(0), lokal::Error);
  EXPECT_THROW(b.fill_mask(mask), lokal::Error);
}

TEST(GrammarMask, PartialUtf8Tokens) {
  // Byte-fallback tokens: a character made of several tokens.
  std::vector<std::string> pieces = {"\xE2", "\x82", "\xAC", "\xE2\x82", "\xAC!", "\xE2\x82\xAC", "a", "\xC3",
                                     "\xA9", "\xF0\x9F\x98", "\x80"};
  auto ti = std::make_shared<const TokenIndex>(pieces, std::vector<bool>{});
  GrammarMatcher m(parse("root ::= \"\xE2\x82\xAC\"+ \"!\"?"), ti);
  auto mask_of = [&]() {
    std::vector<uint8_t> mk;
    m.fill_mask(mk);
    return mk;
  };
  EXPECT_EQ(mask_of(), (std::vector<uint8_t>{1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(m.accept_token(0));
  EXPECT_EQ(mask_of(), (std::vector<uint8_t>{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(m.accept_token(1));
  EXPECT_EQ(mask_of(), (std::vector<uint8_t>{0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(m.accept_token(4));
  EXPECT_TRUE(m.is_complete());
  EXPECT_EQ(mask_of(), (std::vector<uint8_t>(11, 0)));
}

TEST(GrammarMask, SharedCacheAcrossThreads) {
  auto ti = synthetic_vocab(4);
  auto g = parse(kJson);
  const std::vector<std::string> prefixes = {"{\"a\": [1, ", "[\"x",    "{\"k\": {\"n\": tr",
                                             "[1.5e",        "{\"\xC3", "[[[[\""};
  GrammarMatcher base(g, ti);
  std::vector<std::vector<uint8_t>> expected;
  for (const std::string& p : prefixes) {
    GrammarMatcher m(g, ti);  // a separate cache
    ASSERT_TRUE(m.accept_bytes(p)) << p;
    expected.push_back(brute_mask(m, false));
  }
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t]() {
      for (int round = 0; round < 30; ++round) {
        const size_t k = static_cast<size_t>((t + round) % static_cast<int>(prefixes.size()));
        GrammarMatcher m = base;  // copies share base's cache
        if (round % 10 == 0) m.clear_cache();
        if (!m.accept_bytes(prefixes[k])) ++bad;
        std::vector<uint8_t> mask;
        m.fill_mask(mask);
        if (mask != expected[k]) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(base.cache_stats().mask_hits, 0u);
}

TEST(GrammarMask, CacheHitsForRepeatedStates) {
  auto ti = synthetic_vocab(5);
  GrammarMatcher m(parse(kJson), ti);
  ASSERT_TRUE(m.accept_bytes("[\"ab"));
  std::vector<uint8_t> mask, again;
  m.fill_mask(mask);
  const auto s0 = m.cache_stats();
  EXPECT_EQ(s0.mask_misses, 1u);
  ASSERT_TRUE(m.accept_bytes("cdef"));  // still inside the string: the same state
  m.fill_mask(again);
  const auto s1 = m.cache_stats();
  EXPECT_EQ(s1.mask_hits, 1u);
  EXPECT_EQ(s1.mask_misses, 1u);
  EXPECT_EQ(mask, again);
  EXPECT_GT(s1.states, 0u);
  m.clear_cache();
  EXPECT_EQ(m.cache_stats().states, 0u);
  m.fill_mask(again);
  EXPECT_EQ(mask, again);
}

// ---------------------------------------------------------------------------------------------------------------
// Real vocabularies

namespace {

std::shared_ptr<const TokenIndex> qwen2_index() {
  static std::shared_ptr<const TokenIndex> ti = [] {
    auto f = lokal::GGUFFile::open(lokal::test::vocab_dir() + "/ggml-vocab-qwen2.gguf");
    auto v = lokal::Vocab::from_gguf(*f);
    return TokenIndex::from_vocab(*v);
  }();
  return ti;
}

}  // namespace

TEST(GrammarRealVocab, Qwen2JsonSchemaMasksMatchBruteForce) {
  auto ti = qwen2_index();
  ASSERT_EQ(ti->n_tokens(), 151936);
  ASSERT_FALSE(ti->eog_tokens().empty());
  auto schema = nlohmann::ordered_json::parse(R"({"type":"object","properties":{
      "city":{"type":"string"},"days":{"type":"integer","minimum":1,"maximum":14},
      "unit":{"enum":["celsius","fahrenheit"]},"notes":{"type":"array","items":{"type":"string"},"maxItems":2}},
      "required":["city","days"],"additionalProperties":false})");
  auto g = parse(lokal::json_schema_to_gbnf(schema));
  // States along a fixed text (tokenized by bytes here), including inside strings and after a number.
  const std::string text = "{\"city\": \"Z\xC3\xBCrich \xE5\x8C\x97\", \"days\": 12, \"notes\": [\"a\", \"b\"]}";
  GrammarMatcher m(g, ti);
  std::vector<uint8_t> mask;
  int checked = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i % 3 == 0 || i + 1 >= text.size() || i == 11 || i == 12) {
      m.fill_mask(mask);
      const auto brute = brute_mask(m, i == 11);  // the uncached path is slow: once, inside a character
      ASSERT_EQ(mask, brute) << "after '" << show(text.substr(0, i)) << "'";
      ++checked;
    }
    if (i < text.size()) {
      ASSERT_TRUE(m.accept_bytes(text.substr(i, 1))) << i;
    }
  }
  EXPECT_TRUE(m.is_complete());
  EXPECT_GT(checked, 15);
  // A walk that picks random allowed Qwen2 tokens ends in valid JSON.
  std::mt19937 rng(7);
  for (int run = 0; run < 3; ++run) {
    GrammarMatcher w(g, ti);
    std::string out;
    for (int step = 0; step < 400 && !w.is_complete(); ++step) {
      w.fill_mask(mask);
      std::vector<int32_t> ok;
      for (int32_t id = 0; id < ti->n_tokens(); ++id)
        if (mask[static_cast<size_t>(id)]) ok.push_back(id);
      ASSERT_FALSE(ok.empty()) << out;
      // Past 40 tokens prefer short tokens that close things.
      int32_t pick = ok[rng() % ok.size()];
      if (step > 40) {
        for (const char* pref : {"\"", "]", "}", "1", ",", ":"}) {
          auto it = std::find_if(ok.begin(), ok.end(), [&](int32_t id) { return ti->piece(id) == pref; });
          if (it != ok.end()) {
            pick = *it;
            break;
          }
        }
      }
      ASSERT_TRUE(w.accept_token(pick));
      out += ti->piece(pick);
    }
    ASSERT_TRUE(w.is_complete()) << out;
    auto j = nlohmann::json::parse(out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out;
    EXPECT_TRUE(j.contains("city") && j["city"].is_string()) << out;
    EXPECT_TRUE(j["days"].is_number_integer() && j["days"] >= 1 && j["days"] <= 14) << out;
  }
}

TEST(GrammarRealVocab, TinychatVocab) {
  auto f = lokal::GGUFFile::open(lokal::test::data_path("models/real/tinychat-4m-f32.gguf"));
  auto v = lokal::Vocab::from_gguf(*f);
  auto ti = TokenIndex::from_vocab(*v);
  auto g = parse("root ::= \"<tool_call>\\n{\\\"name\\\": \\\"\" [a-z_]+ \"\\\"}\\n</tool_call>\"");
  GrammarMatcher m(g, ti);
  std::vector<uint8_t> mask;
  const std::string text = "<tool_call>\n{\"name\": \"get_time\"}\n</tool_call>";
  for (size_t i = 0; i <= text.size(); i += 5) {
    GrammarMatcher at(g, ti);
    ASSERT_TRUE(at.accept_bytes(text.substr(0, i)));
    at.fill_mask(mask);
    ASSERT_EQ(mask, brute_mask(at, false)) << i;
  }
  // The tokenizer's own tokens of the text are accepted one by one, and only then may generation end.
  const auto ids = v->tokenize(text, false, false);
  for (const int32_t id : ids) ASSERT_TRUE(m.accept_token(id)) << id;
  EXPECT_TRUE(m.is_complete());
  for (int32_t id = 0; id < v->n_tokens(); ++id)
    if (v->is_eog(id)) {
      EXPECT_TRUE(m.allowed(id));
    }
}
