// JSON Schema -> GBNF: for many schemas the grammar accepts valid instances and refuses invalid ones; random walks
// through each grammar always end in JSON that parses and satisfies the schema (checked by a small validator for
// the supported subset); integer and number bounds exhaustively; patterns and formats; errors name the keyword and
// the place; several schemas in one grammar (tool calls).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <regex>
#include <unordered_map>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "core/error.h"

using lokal::Grammar;
using lokal::GrammarMatcher;
using lokal::json_schema_to_gbnf;
using lokal::SchemaConverter;
using lokal::TokenIndex;
using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

namespace {

std::shared_ptr<const Grammar> grammar_of(const std::string& schema) {
  return Grammar::parse(json_schema_to_gbnf(ojson::parse(schema)));
}

bool matches(const std::shared_ptr<const Grammar>& g, const std::string& text) {
  GrammarMatcher m(g, nullptr);
  return m.accept_bytes(text) && m.is_complete();
}

// ---- a validator for the subset of JSON Schema the converter supports ----
size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (const unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

const ojson& resolve(const ojson& root, const std::string& ref) {
  const ojson* cur = &root;
  if (ref == "#") return root;
  std::string p = ref.substr(2);
  size_t start = 0;
  while (start <= p.size()) {
    const size_t end = p.find('/', start);
    const std::string key = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    cur = &(*cur)[key];
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return *cur;
}

bool valid(const json& v, const ojson& s, const ojson& root);

bool valid_type(const json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "integer")
    return v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()));
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return false;
}

bool valid(const json& v, const ojson& s, const ojson& root) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) return valid(v, resolve(root, s["$ref"]), root);
  if (s.contains("nullable") && s["nullable"] == true && v.is_null()) return true;
  if (s.contains("allOf")) {  // lokal merges the parts (properties and required united), so validate the merge
    ojson merged = s;
    merged.erase("allOf");
    for (const auto& part : s["allOf"]) {
      const ojson& sub = part.contains("$ref") ? resolve(root, part["$ref"]) : part;
      for (const auto& [k, val] : sub.items()) {
        if (k == "properties") {
          for (const auto& [pk, pv] : val.items()) merged["properties"][pk] = pv;
        } else if (k == "required") {
          for (const auto& r : val) merged["required"].push_back(r);
        } else {
          merged[k] = val;
        }
      }
    }
    return valid(v, merged, root);
  }
  for (const char* k : {"anyOf", "oneOf"}) {
    if (!s.contains(k)) continue;
    bool any = false;
    for (const auto& sub : s[k]) any = any || valid(v, sub, root);
    if (!any) return false;
  }
  if (s.contains("const") && json::parse(s["const"].dump()) != v) return false;
  if (s.contains("enum")) {
    bool any = false;
    for (const auto& e : s["enum"]) any = any || json::parse(e.dump()) == v;
    if (!any) return false;
  }
  if (s.contains("type")) {
    bool any = false;
    if (s["type"].is_array()) {
      for (const auto& t : s["type"]) any = any || valid_type(v, t);
    } else {
      any = valid_type(v, s["type"]);
    }
    if (!any) return false;
  }
  if (v.is_object()) {
    const bool has_props = s.contains("properties");
    for (const auto& [k, val] : v.items()) {
      if (has_props && s["properties"].contains(k)) {
        if (!valid(val, s["properties"][k], root)) return false;
      } else if (s.contains("additionalProperties")) {
        if (!valid(val, s["additionalProperties"], root)) return false;
      } else if (has_props) {
        // lokal's rule: with properties and no additionalProperties, no other keys (except required ones)
        bool req = false;
        if (s.contains("required"))
          for (const auto& r : s["required"]) req = req || r == k;
        if (!req) return false;
      }
    }
    if (s.contains("required"))
      for (const auto& r : s["required"])
        if (!v.contains(r.get<std::string>())) return false;
  }
  if (v.is_array()) {
    size_t prefix = 0;
    if (s.contains("prefixItems")) {
      prefix = s["prefixItems"].size();
      for (size_t i = 0; i < prefix && i < v.size(); ++i)
        if (!valid(v[i], s["prefixItems"][i], root)) return false;
    }
    if (s.contains("items"))
      for (size_t i = prefix; i < v.size(); ++i)
        if (!valid(v[i], s["items"], root)) return false;
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
  }
  if (v.is_string()) {
    const std::string str = v.get<std::string>();
    if (s.contains("minLength") && utf8_length(str) < s["minLength"].get<size_t>()) return false;
    if (s.contains("maxLength") && utf8_length(str) > s["maxLength"].get<size_t>()) return false;
    if (s.contains("pattern") && !std::regex_search(str, std::regex(s["pattern"].get<std::string>()))) return false;
    const std::string fmt = s.value("format", "");
    if (fmt == "date" && !std::regex_match(str, std::regex(R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))")))
      return false;
    if (fmt == "uuid" && !std::regex_match(str, std::regex("[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")))
      return false;
  }
  if (v.is_number()) {
    const double x = v.get<double>();
    if (s.contains("minimum") && x < s["minimum"].get<double>()) return false;
    if (s.contains("maximum") && x > s["maximum"].get<double>()) return false;
    if (s.contains("exclusiveMinimum") && s["exclusiveMinimum"].is_number() && x <= s["exclusiveMinimum"].get<double>())
      return false;
    if (s.contains("exclusiveMaximum") && s["exclusiveMaximum"].is_number() && x >= s["exclusiveMaximum"].get<double>())
      return false;
  }
  return true;
}

// Byte vocabulary: token b = byte b, so a random walk chooses among all allowed bytes.
std::shared_ptr<const TokenIndex> byte_vocab() {
  static auto ti = [] {
    std::vector<std::string> p;
    for (int b = 0; b < 256; ++b) p.push_back(std::string(1, static_cast<char>(b)));
    p.push_back("");  // EOG
    std::vector<bool> eog(257, false);
    eog[256] = true;
    return std::make_shared<const TokenIndex>(p, eog);
  }();
  return ti;
}

// The shortest bytes (printable ASCII, newline and UTF-8 characters; the rest of a partial character first) that make
// the matcher complete, by breadth-first search.
std::string shortest_completion(const GrammarMatcher& start) {
  struct Node {
    GrammarMatcher m;
    std::string path;
  };
  std::vector<Node> queue{{start, ""}};
  std::unordered_multimap<size_t, size_t> seen{{start.state_hash(), 0}};
  for (size_t head = 0; head < queue.size() && queue.size() < 200000; ++head) {
    if (queue[head].m.is_complete()) return queue[head].path;
    const bool partial = queue[head].m.partial_utf8();  // finish a character first
    std::vector<uint8_t> mask;
    queue[head].m.fill_mask(mask);
    for (int b = partial ? 0x80 : 0x0A; b < (partial ? 0xC0 : 0xF5); ++b) {
      if (!mask[static_cast<size_t>(b)]) continue;
      if (!partial && ((b > 0x0A && b < 0x20) || (b >= 0x7F && b < 0xC2))) continue;
      GrammarMatcher next = queue[head].m;
      if (!next.accept_bytes(std::string(1, static_cast<char>(b)))) continue;
      bool dup = false;
      auto range = seen.equal_range(next.state_hash());
      for (auto it = range.first; it != range.second && !dup; ++it) dup = queue[it->second].m.same_state(next);
      if (dup) continue;
      seen.emplace(next.state_hash(), queue.size());
      queue.push_back({std::move(next), queue[head].path + static_cast<char>(b)});
    }
  }
  ADD_FAILURE() << "no completion found";
  return "";
}

// A random sentence of the grammar: random allowed bytes, then (past `budget` bytes) closing brackets and quotes
// while they are allowed, and the shortest completion.
std::string random_walk(const std::shared_ptr<const Grammar>& g, std::mt19937& rng, size_t budget) {
  GrammarMatcher m(g, byte_vocab());
  std::string out;
  std::vector<uint8_t> mask;
  for (;;) {
    if (m.is_complete() && rng() % 8 == 0) break;
    if (out.size() > budget) {
      // Close what is open while a closer is allowed (cheap), then search for the shortest way to the end.
      for (bool progress = true; progress && !m.is_complete() && out.size() < budget + 1000;) {
        progress = false;
        for (const char* closer : {"\"", "}", "]"}) {  // (a quote first: inside a string, brackets are text)
          if (m.accept_bytes(closer)) {
            out += closer;
            progress = true;
            break;
          }
        }
      }
      const std::string rest = shortest_completion(m);
      EXPECT_TRUE(m.accept_bytes(rest));
      out += rest;
      break;
    }
    m.fill_mask(mask);
    std::vector<int> ok;
    for (int b = 0; b < 256; ++b)
      if (mask[static_cast<size_t>(b)]) ok.push_back(b);
    if (ok.empty()) break;
    const int pick = ok[rng() % ok.size()];
    EXPECT_TRUE(m.accept_bytes(std::string(1, static_cast<char>(pick))));
    out += static_cast<char>(pick);
  }
  EXPECT_TRUE(m.is_complete()) << out;
  return out;
}

struct SchemaCase {
  const char* schema;
  std::vector<const char*> good, bad;
};

const std::vector<SchemaCase>& cases() {
  static const std::vector<SchemaCase> c = {
      {R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]})",
       {R"({"name":"Ada","age":36})", "{\n  \"name\": \"Ada\",\n  \"age\": -1\n}",
        R"({ "name" : "A\"\n\u00e9" , "age" : 0 })"},
       {R"({"name":"Ada"})", R"({"age":36,"name":"Ada"})", R"({"name":"Ada","age":"36"})",
        R"({"name":"Ada","age":36,"x":1})", R"({"name":"Ada","age":3.5})", R"({"name":"Ada","age":01})",
        R"(  {"name":"Ada","age":1})", R"({"name":"Ada","age":1}
)"}},
      {R"({"type":"object","properties":{"a":{"type":"boolean"},"b":{"type":"null"},"c":{"type":"number"}},"required":["b"]})",
       {R"({"b":null})", R"({"a":true,"b":null})", R"({"b":null,"c":1.5e3})", R"({"a":false,"b":null,"c":-0.25})"},
       {R"({})", R"({"a":true})", R"({"b":null,"a":true})", R"({"a":true,,"b":null})", R"({"b":null,})"}},
      {R"({"type":"object","properties":{"x":{"type":"integer"},"y":{"type":"integer"}}})",
       {"{}", R"({"x":1})", R"({"y":2})", R"({"x":1,"y":2})"},
       {R"({"y":2,"x":1})", R"({"z":1})", R"({,"y":2})", R"({"x":1,})"}},
      {R"({"type":"object","properties":{"k":{"type":"string"}},"additionalProperties":{"type":"integer"}})",
       {"{}", R"({"k":"v"})", R"({"k":"v","n":1,"m":2})", R"({"n":1})", R"({"kk":1})", R"({"":3})"},
       {R"({"n":"x"})", R"({"k":1})", R"({"n":1,"k":"v"})", R"({"k":"v","k":2})"}},
      {R"({"type":"object","properties":{"k":{"type":"string"}},"additionalProperties":false})",
       {"{}", R"({"k":""})"},
       {R"({"n":1})", R"({"k":"v","n":1})"}},
      {R"({"type":"object"})", {"{}", R"({"a":[1,{"b":null}],"c":"d"})"}, {"[]", "1"}},
      {R"({"type":"array","items":{"type":"integer"},"minItems":2,"maxItems":3})",
       {"[1,2]", "[1, 2, 3]", "[\n  1,\n  2\n]"},
       {"[]", "[1]", "[1,2,3,4]", "[1,\"2\"]", "[1,2,]"}},
      {R"({"type":"array","items":{"type":"string"},"maxItems":0})", {"[]", "[ ]"}, {"[\"a\"]"}},
      {R"({"type":"array","prefixItems":[{"type":"string"},{"type":"boolean"}]})",
       {"[]", "[\"a\"]", "[\"a\",true]"},
       {"[true]", "[\"a\",true,1]", "[\"a\",\"b\"]"}},
      {R"({"type":"array","prefixItems":[{"type":"string"}],"items":{"type":"number"},"minItems":2})",
       {"[\"a\",1]", "[\"a\",1,2.5,3]"},
       {"[\"a\"]", "[1,1]", "[\"a\",\"b\"]"}},
      {R"({"type":"array","items":[{"type":"integer"}],"additionalItems":false})", {"[]", "[5]"}, {"[5,6]"}},
      {R"({"type":"array"})", {"[]", "[1,\"a\",null,[],{}]"}, {"{}"}},
      {R"({"type":"string","minLength":2,"maxLength":4})",
       {"\"ab\"", "\"abcd\"", "\"\xC3\xA9\xC3\xA9\"", "\"a\\n\"", "\"\\u00e9\\\"x\""},
       {"\"a\"", "\"abcde\"", "\"\"", "ab"}},
      {R"({"enum":["red","green",1,null,{"a":[true]}]})",
       {"\"red\"", "\"green\"", "1", "null", "{\"a\":[true]}"},
       {"\"blue\"", "\"Red\"", "2", "{\"a\": [true]}"}},
      {R"({"const":"fixed"})", {"\"fixed\""}, {"\"other\"", "\"fixe\""}},
      {R"({"type":["string","null"]})", {"\"x\"", "null"}, {"1", "true"}},
      {R"({"type":"integer","nullable":true})", {"1", "null"}, {"\"1\""}},
      {R"({"anyOf":[{"type":"integer"},{"type":"array","items":{"type":"integer"}}]})",
       {"5", "[5,6]"},
       {"\"5\"", "[\"5\"]"}},
      {R"({"oneOf":[{"type":"object","properties":{"kind":{"const":"a"},"x":{"type":"integer"}},"required":["kind","x"]},
                    {"type":"object","properties":{"kind":{"const":"b"},"y":{"type":"string"}},"required":["kind","y"]}]})",
       {R"({"kind":"a","x":1})", R"({"kind":"b","y":"s"})"},
       {R"({"kind":"a","y":"s"})", R"({"kind":"c","x":1})"}},
      {R"({"allOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},
                    {"properties":{"b":{"type":"string"}},"required":["b"]}]})",
       {R"({"a":1,"b":"x"})"},
       {R"({"a":1})", R"({"b":"x"})", R"({"b":"x","a":1})"}},
      {R"({"$defs":{"pt":{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"}},"required":["x","y"]}},
          "type":"array","items":{"$ref":"#/$defs/pt"}})",
       {"[]", R"([{"x":1,"y":2},{"x":0.5,"y":-3}])"},
       {R"([{"x":1}])"}},
      {R"({"definitions":{"tree":{"type":"object","properties":{"v":{"type":"integer"},
            "kids":{"type":"array","items":{"$ref":"#/definitions/tree"}}},"required":["v"]}},"$ref":"#/definitions/tree"})",
       {R"({"v":1})", R"({"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4}]}]})"},
       {R"({"v":1,"kids":[{}]})"}},
      {R"({"type":"integer","minimum":-20,"maximum":1234})",
       {"-20", "0", "7", "1234", "999"},
       {"-21", "1235", "01", "-0"}},
      {R"({"type":"integer","exclusiveMinimum":0})", {"1", "99999"}, {"0", "-1"}},
      {R"({"type":"number","minimum":0,"maximum":100})",
       {"0", "100", "99.99", "100.000", "3.14"},
       {"-1", "100.01", "101", "1e2"}},
      {R"({"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1})",
       {"0.5", "0.001", "0.999"},
       {"0", "1", "0.0", "1.0", "-0.5"}},
      {R"({"type":"number","maximum":-2})", {"-2", "-2.0", "-3.5", "-1000"}, {"-1.5", "0", "-2.1e1"}},
      {R"({"type":"string","pattern":"^[a-z]+-\\d{2,3}$"})",
       {"\"ab-12\"", "\"x-123\""},
       {"\"ab-1\"", "\"AB-12\"", "\"ab-1234\""}},
      {R"({"type":"string","pattern":"(cat|dog)s?"})", {"\"cats\"", "\"a dog!\"", "\"hotdog\""}, {"\"cow\""}},
      {R"({"type":"string","pattern":"^\\w+@\\w+\\.com$"})", {"\"me@x.com\""}, {"\"me@x.org\"", "\"@x.com\""}},
      {R"({"type":"string","pattern":"^\"[^\"]*\"$"})", {R"("\"quoted\"")"}, {R"("plain")"}},
      {R"({"type":"string","format":"date"})", {"\"2024-02-29\""}, {"\"2024-13-01\"", "\"24-01-01\""}},
      {R"({"type":"string","format":"date-time"})",
       {"\"2024-02-29T12:30:00Z\"", "\"2024-02-29T23:59:59.123+01:00\""},
       {"\"2024-02-29 12:30:00\""}},
      {R"({"type":"string","format":"uuid"})", {"\"123e4567-e89b-12d3-a456-426614174000\""}, {"\"123e4567\""}},
      {R"({"type":"string","format":"email"})", {"\"anything\""}, {"1"}},
      {"{}", {"1", "\"s\"", "[{\"a\":null}]", "true"}, {"tru", "[1,]"}},
      {"true", {"null", "{}"}, {""}},
      {R"({"type":"object","properties":{"a b":{"type":"string"},"\u00e9":{"type":"integer"},"q\"t":{"type":"boolean"}},
          "required":["a b","\u00e9","q\"t"],"additionalProperties":true})",
       {"{\"a b\":\"x\",\"\xC3\xA9\":1,\"q\\\"t\":true}", "{\"a b\":\"x\",\"\xC3\xA9\":1,\"q\\\"t\":true,\"z\":[]}"},
       {"{\"a b\":\"x\",\"\xC3\xA9\":1}"}},
      {R"({"type":"object","properties":{"id":{"type":"integer"}},"required":["id","extra"]})",
       {R"({"id":1,"extra":[1]})"},
       {R"({"id":1})"}},
  };
  return c;
}

std::string errmsg(const std::string& schema) {
  try {
    json_schema_to_gbnf(ojson::parse(schema));
  } catch (const lokal::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    return m;
  }
  ADD_FAILURE() << "no error for " << schema;
  return "";
}

#define EXPECT_CONTAINS(haystack, needle)                          \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) \
      << "'" << (haystack) << "' lacks '" << (needle) << "'"

}  // namespace

TEST(JsonSchema, AcceptsValidRefusesInvalid) {
  for (const SchemaCase& c : cases()) {
    SCOPED_TRACE(c.schema);
    auto g = grammar_of(c.schema);
    const ojson s = ojson::parse(c.schema);
    for (const char* t : c.good) {
      EXPECT_TRUE(matches(g, t)) << "should accept: " << t;
      auto j = json::parse(t, nullptr, false);
      if (!j.is_discarded()) {
        EXPECT_TRUE(valid(j, s, s)) << "the test's own validator refuses: " << t;
      }
    }
    for (const char* t : c.bad) EXPECT_FALSE(matches(g, t)) << "should refuse: " << t;
  }
}

TEST(JsonSchema, RandomWalksGiveValidJson) {
  std::mt19937 rng(42);
  int walks = 0;
  for (const SchemaCase& c : cases()) {
    SCOPED_TRACE(c.schema);
    auto g = grammar_of(c.schema);
    const ojson s = ojson::parse(c.schema);
    for (int i = 0; i < 10; ++i) {
      const std::string text = random_walk(g, rng, 20 + 20 * static_cast<size_t>(i));
      auto j = json::parse(text, nullptr, false);
      ASSERT_FALSE(j.is_discarded()) << "not JSON: " << text;
      EXPECT_TRUE(valid(j, s, s)) << "not valid: " << text;
      ++walks;
    }
  }
  EXPECT_GT(walks, 350);
}

TEST(JsonSchema, IntegerRangesExactly) {
  const std::vector<std::pair<int, int>> ranges = {{0, 0},     {0, 9},      {0, 10},    {1, 99},   {5, 150},
                                                   {-5, 5},    {-150, -5},  {-1, 0},    {10, 10},  {99, 1001},
                                                   {123, 4567}, {-999, 999}, {7, 70},   {100, 199}, {-100, -100}};
  for (const auto& [lo, hi] : ranges) {
    auto g = grammar_of("{\"type\":\"integer\",\"minimum\":" + std::to_string(lo) +
                        ",\"maximum\":" + std::to_string(hi) + "}");
    for (int v = lo - 120; v <= hi + 120; ++v)
      ASSERT_EQ(matches(g, std::to_string(v)), v >= lo && v <= hi) << v << " in [" << lo << ", " << hi << "]";
    EXPECT_FALSE(matches(g, std::string("0").append(std::to_string(std::abs(lo) + 1))));  // no leading zeros
  }
  // One side only, and float bounds.
  auto g = grammar_of(R"({"type":"integer","minimum":1.5})");
  EXPECT_FALSE(matches(g, "1"));
  EXPECT_TRUE(matches(g, "2"));
  EXPECT_TRUE(matches(g, "9999999999999999"));
  EXPECT_FALSE(matches(g, "99999999999999999"));  // 17 digits: beyond the grammar's integers
  auto h = grammar_of(R"({"type":"integer","maximum":-3,"exclusiveMaximum":true})");
  EXPECT_TRUE(matches(h, "-4"));
  EXPECT_FALSE(matches(h, "-3"));
}

TEST(JsonSchema, NumberRanges) {
  struct R {
    const char* schema;
    double lo, hi;
    bool lo_incl, hi_incl;
  };
  const std::vector<R> rs = {{R"({"type":"number","minimum":0,"maximum":1})", 0, 1, true, true},
                             {R"({"type":"number","minimum":-3,"exclusiveMaximum":2})", -3, 2, true, false},
                             {R"({"type":"number","exclusiveMinimum":-1,"maximum":0})", -1, 0, false, true},
                             {R"({"type":"number","minimum":5})", 5, 1e300, true, true},
                             {R"({"type":"number","exclusiveMaximum":-10})", -1e300, -10, true, false}};
  std::mt19937 rng(3);
  for (const R& r : rs) {
    auto g = grammar_of(r.schema);
    for (int i = 0; i < 3000; ++i) {
      // numbers near the bounds, with 0-3 decimals
      const double base = (i % 2 ? r.lo : r.hi);
      const double center = std::isfinite(base) && std::fabs(base) < 1e100 ? base : 0;
      const int decimals = static_cast<int>(rng() % 4);
      const double scale = std::pow(10.0, decimals);
      const double v = std::round((center + (static_cast<int>(rng() % 600) - 300) / 100.0) * scale) / scale;
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
      const double parsed = std::strtod(buf, nullptr);
      if (std::string(buf) == "-0" || std::string(buf).rfind("-0.", 0) == 0) continue;  // "-0..." forms: skip
      const bool in = (r.lo_incl ? parsed >= r.lo : parsed > r.lo) && (r.hi_incl ? parsed <= r.hi : parsed < r.hi);
      ASSERT_EQ(matches(g, buf), in) << buf << " for " << r.schema;
    }
  }
}

TEST(JsonSchema, Errors) {
  EXPECT_CONTAINS(errmsg(R"({"type":"object","properties":{"x":{"not":{"type":"string"}}}})"),
                  "JSON schema: unsupported keyword 'not' at /properties/x");
  EXPECT_CONTAINS(errmsg(R"({"if":{},"then":{}})"), "unsupported keyword 'if' at /");
  EXPECT_CONTAINS(errmsg(R"({"type":"array","items":{"type":"integer"},"uniqueItems":true})"), "'uniqueItems'");
  EXPECT_CONTAINS(errmsg(R"({"type":"object","patternProperties":{"^x":{}}})"), "'patternProperties'");
  EXPECT_CONTAINS(errmsg(R"({"type":"number","multipleOf":2})"), "'multipleOf'");
  EXPECT_CONTAINS(errmsg(R"({"type":"strin"})"), "unknown type 'strin' at /type");
  EXPECT_CONTAINS(errmsg(R"({"$ref":"#/$defs/missing"})"), "points to nothing");
  EXPECT_CONTAINS(errmsg(R"({"$ref":"https://example.com/s.json"})"), "remote $ref");
  EXPECT_CONTAINS(errmsg(R"({"$defs":{"a":{"type":"string"}},"$ref":"#/$defs/a","minLength":3})"), "beside '$ref'");
  EXPECT_CONTAINS(errmsg(R"({"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})"),
                  "invalid grammar");
  EXPECT_CONTAINS(errmsg(R"({"type":"array","minItems":3,"maxItems":2})"), "'minItems'");
  EXPECT_CONTAINS(errmsg(R"({"type":"string","minLength":-1})"), "'minLength' must be a non-negative integer");
  EXPECT_CONTAINS(errmsg(R"({"type":"number","minimum":0.5})"), "non-integer");
  EXPECT_CONTAINS(errmsg(R"({"type":"integer","minimum":5,"maximum":4})"), "no integer");
  EXPECT_CONTAINS(errmsg(R"J({"type":"string","pattern":"(?=x)"})J"), "'pattern'");
  EXPECT_CONTAINS(errmsg(R"({"type":"string","pattern":"a\\1"})"), "'pattern'");
  EXPECT_CONTAINS(errmsg(R"({"type":"string","pattern":"(ab"})"), "'pattern'");
  EXPECT_CONTAINS(errmsg(R"({"enum":[]})"), "'enum' must be a non-empty array");
  EXPECT_CONTAINS(errmsg(R"({"properties":{"x":false}})"), "'false' schema");
  EXPECT_CONTAINS(errmsg("42"), "a schema must be an object or a boolean");
  EXPECT_CONTAINS(errmsg(R"({"allOf":[{"type":"string"},{"type":"integer"}]})"), "disagree on 'type'");
  std::string deep = "{}";
  for (int i = 0; i < 200; ++i) deep = "{\"type\":\"array\",\"items\":" + deep + "}";
  EXPECT_CONTAINS(errmsg(deep), "nested too deeply");
}

TEST(JsonSchema, AnyValueAndObjectGrammars) {
  auto any = Grammar::parse(lokal::json_any_value_gbnf());
  auto obj = Grammar::parse(lokal::json_object_gbnf());
  for (const char* t : {"1", "-0.5e+3", "\"x\"", "null", "[[],{}]", "{\"a\": {\"b\": [1, 2]}}"})
    EXPECT_TRUE(matches(any, t)) << t;
  for (const char* t : {"", "nul", "{'a':1}", "[1,]", "01", "1.", "\"\\x\""}) EXPECT_FALSE(matches(any, t)) << t;
  EXPECT_TRUE(matches(obj, "{\"a\": [1]}"));
  EXPECT_TRUE(matches(obj, "{}"));
  EXPECT_FALSE(matches(obj, "[1]"));
  EXPECT_FALSE(matches(obj, "\"s\""));
  // Whitespace is bounded: a model cannot loop on it.
  EXPECT_TRUE(matches(obj, "{\n" + std::string(20, ' ') + "\"a\": 1}"));
  EXPECT_FALSE(matches(obj, "{\n" + std::string(21, ' ') + "\"a\": 1}"));
  EXPECT_FALSE(matches(obj, "{\n\n\"a\": 1}"));
  EXPECT_FALSE(matches(any, std::string(17, '1')));
  std::mt19937 rng(9);
  for (int i = 0; i < 50; ++i) {
    const std::string t = random_walk(obj, rng, 60);
    auto j = json::parse(t, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << t;
    EXPECT_TRUE(j.is_object()) << t;
  }
}

TEST(JsonSchema, ToolCallGrammarFromSeveralSchemas) {
  SchemaConverter c;
  const ojson weather = ojson::parse(
      R"({"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["c","f"]}},"required":["city"]})");
  const ojson search = ojson::parse(
      R"({"type":"object","properties":{"q":{"type":"string"},"n":{"type":"integer","minimum":1,"maximum":10}},"required":["q","n"],
          "$defs":{"unused":{"type":"string"}}})");
  auto call = [&](const std::string& name, const ojson& params) {
    const std::string args = c.add(params, name + "-args");
    return c.add_rule(name + "-call",
                      SchemaConverter::literal("<tool_call>\n{\"name\": \"" + name + "\", \"arguments\": ") + " " +
                          args + " " + SchemaConverter::literal("}\n</tool_call>"));
  };
  const std::string a = call("get_weather", weather);
  const std::string b = call("search", search);
  EXPECT_EQ(c.add_rule("get-weather-call", "\"x\""), "get-weather-call-1");  // taken: a new name
  const std::string gbnf = c.grammar(a + " | " + b);
  auto g = Grammar::parse(gbnf);
  EXPECT_TRUE(matches(
      g,
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>"));
  EXPECT_TRUE(
      matches(g, "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"cats\", \"n\": 3}}\n</tool_call>"));
  EXPECT_FALSE(matches(g, "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"));
  EXPECT_FALSE(
      matches(g, "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"cats\", \"n\": 11}}\n</tool_call>"));
  EXPECT_FALSE(matches(g, "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_EQ(SchemaConverter::literal("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
}

TEST(JsonSchema, AdditionalPropertiesDefault) {
  // Absent with properties: no other keys (llama.cpp's choice); absent without properties: any keys.
  auto g = grammar_of(R"({"type":"object","properties":{"a":{"type":"integer"}}})");
  EXPECT_TRUE(matches(g, R"({"a":1})"));
  EXPECT_FALSE(matches(g, R"({"a":1,"b":2})"));
  auto h = grammar_of(R"({"type":"object","additionalProperties":{"type":"boolean"}})");
  EXPECT_TRUE(matches(h, R"({"x":true,"y":false})"));
  EXPECT_FALSE(matches(h, R"({"x":1})"));
  auto k = grammar_of(R"({"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":true})");
  EXPECT_TRUE(matches(k, R"({"a":1,"b":"x"})"));
  EXPECT_TRUE(matches(k, R"({"b":"x"})"));
  EXPECT_FALSE(matches(k, R"({"a":1,"a":2})"));  // an extra key never repeats a listed one
  EXPECT_FALSE(matches(k, R"({"b":"x","a":1})"));  // listed keys come first, in order
}
