// tests/test_jinja.cpp - the Jinja interpreter (chat/jinja.h).
//
// The acceptance test renders every golden entry of shared/golden/chat-templates.json (python jinja2 3.1.2
// configured like transformers' apply_chat_template) and compares byte for byte; the entries transformers failed
// on must fail here too. The table of small templates below pins jinja2's semantics one feature at a time: its
// expected outputs were produced by python jinja2 3.1 in the same configuration. Then: error messages and line
// numbers, the sandbox, limits against hostile templates (loops, output bombs, deep nesting, recursion), thread
// safety and speed.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/jinja.h"
#include "core/error.h"
#include "support/test_data.h"

using lokal::Error;
using lokal::jinja::Limits;
using lokal::jinja::Template;
using json = nlohmann::ordered_json;

namespace {

constexpr int64_t kNow = 1721995200;  // 2024-07-26 12:00:00 UTC: the clock of the golden renderings

std::string render(const std::string& src, const json& ctx = json::object(), const Limits& limits = {}) {
  return Template(src, "t").render(ctx, limits, kNow);
}

// The message of the lokal::Error that f throws ("" and a test failure when it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a lokal::Error";
  return "";
}

std::string render_error(const std::string& src, const json& ctx = json::object(), const Limits& limits = {}) {
  std::string msg = error_of([&] { render(src, ctx, limits); });
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "error message is not one line: " << msg;
  return msg;
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

const json& golden() {
  static const json g = json::parse(lokal::test::read_file(lokal::test::data_path("golden/chat-templates.json")));
  return g;
}

std::string template_source(const std::string& file) {
  return lokal::test::read_file(lokal::test::data_path("chat-templates/" + file));
}

// The variables transformers passes: messages, tools (or None), documents=None, add_generation_prompt, the
// special tokens, and the template's extra variables.
json golden_context(const json& entry, const json& conversation) {
  json ctx = json::object();
  ctx["messages"] = entry.contains("messages") ? entry["messages"] : conversation["messages"];
  ctx["tools"] = conversation.contains("tools") ? conversation["tools"] : json(nullptr);
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = entry.value("add_generation_prompt", true);
  if (entry.contains("special_tokens"))
    for (auto it = entry["special_tokens"].begin(); it != entry["special_tokens"].end(); ++it) ctx[it.key()] = it.value();
  if (entry.contains("extra_variables") && entry["extra_variables"].is_object())
    for (auto it = entry["extra_variables"].begin(); it != entry["extra_variables"].end(); ++it)
      ctx[it.key()] = it.value();
  return ctx;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Golden renderings

TEST(JinjaGolden, EveryEntryRendersByteExact) {
  const json& g = golden();
  ASSERT_EQ(g["entries"].size(), 42u);
  int passed = 0;
  for (const json& e : g["entries"]) {
    const std::string name = e["template"].get<std::string>(), conv = e["conversation"].get<std::string>();
    SCOPED_TRACE(name + " / " + conv);
    try {
      Template t(template_source(name), name);
      std::string got = t.render(golden_context(e, g["conversations"][conv]), {}, kNow);
      EXPECT_EQ(got, e["rendered"].get<std::string>());
      passed += got == e["rendered"].get<std::string>();
    } catch (const Error& err) {
      ADD_FAILURE() << err.what();
    }
  }
  EXPECT_EQ(passed, 42);
}

TEST(JinjaGolden, EntriesThatFailInTransformersFailHere) {
  const json& g = golden();
  ASSERT_EQ(g["failed"].size(), 7u);
  for (const json& f : g["failed"]) {
    const std::string name = f["template"].get<std::string>(), conv = f["conversation"].get<std::string>();
    SCOPED_TRACE(name + " / " + conv);
    Template t(template_source(name), name);
    json entry = {{"special_tokens", {{"bos_token", "<s>"}, {"eos_token", "</s>"}}}};
    std::string msg = error_of([&] { t.render(golden_context(entry, g["conversations"][conv]), {}, kNow); });
    EXPECT_CONTAINS(msg, "template " + name + ", line ");
    std::string want = f["errors"][0].get<std::string>();
    if (want.find("not iterable") != std::string::npos) {
      EXPECT_CONTAINS(msg, "'NoneType' object is not iterable");
    } else {
      EXPECT_CONTAINS(msg, "System role not supported");
    }
  }
}

TEST(JinjaGolden, ParsesOnceRendersMany) {
  const json& g = golden();
  const json& e = g["entries"][0];
  Template t(template_source(e["template"].get<std::string>()), "x");
  const json ctx = golden_context(e, g["conversations"][e["conversation"].get<std::string>()]);
  std::string first = t.render(ctx, {}, kNow);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.render(ctx, {}, kNow), first);
  Template copy = t;  // copies share the parsed template
  EXPECT_EQ(copy.render(ctx, {}, kNow), first);
  EXPECT_EQ(copy.name(), "x");
  EXPECT_EQ(copy.source(), template_source(e["template"].get<std::string>()));
}

// ---------------------------------------------------------------------------------------------------------------
// Semantics, one feature at a time (expected outputs from python jinja2 3.1, transformers' configuration)

namespace {
struct Case {
  const char* name;
  const char* source;
  const char* context;
  const char* expected;
};
const Case kCases[] = {
    {"trim_blocks",
     "{% if true %}\nA\n{% endif %}\nB",
     "{}",
     "A\nB"},
    {"lstrip_blocks",
     "  {% if true %}\n  x\n  {% endif %}\n  {# c #}\n  y\n  {{ 1 }}\n",
     "{}",
     "  x\n  y\n  1"},
    {"lstrip_not_after_text",
     "a  {% if true %}b{% endif %}",
     "{}",
     "a  b"},
    {"plus_disables_lstrip_and_trim",
     "a\n  {%+ if true %}b{% endif +%}\nc",
     "{}",
     "a\n  b\nc"},
    {"minus_strips_all",
     "a  \n\n  {%- if true -%}  \n\n b \n {{- 'c' -}} \n d{% endif %}",
     "{}",
     "abcd"},
    {"comment_trim_and_lstrip",
     "x\n  {# comment #}\ny\n  {#- c -#}  \nz",
     "{}",
     "x\nyz"},
    {"raw_block",
     "{% raw %}\n{{ not evaluated }}{% endraw %}\nafter",
     "{}",
     "\n{{ not evaluated }}after"},
    {"raw_block_minus",
     "a {%- raw -%}  {% x %}  {%- endraw -%} b",
     "{}",
     "a{% x %}b"},
    {"trailing_newline_dropped",
     "a\n\n",
     "{}",
     "a\n"},
    {"crlf_normalized",
     "a\r\nb\rc{{ 'x\r\ny' }}\r\n",
     "{}",
     "a\nb\ncx\ny"},
    {"loop_layout",
     "<ul>\n  {% for x in [1, 2] %}\n    <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n",
     "{}",
     "<ul>\n    <li>1</li>\n    <li>2</li>\n</ul>"},
    {"macro_layout",
     "  {%- macro m(x) -%}\n  [{{ x }}]\n  {%- endmacro %}\n{{ m(1) }}\n{{ m(2) }}",
     "{}",
     "[1]\n[2]"},
    {"var_tags_keep_newline",
     "{{ 'a' }}\n{{ 'b' }}\n",
     "{}",
     "a\nb"},
    {"nbsp_is_whitespace_for_minus",
     "a  {%- if 1 %}b{% endif %}",
     "{}",
     "ab"},
    {"int_float_literals",
     "{{ 1 }} {{ 1.0 }} {{ 1.5e3 }} {{ 1_000 }} {{ 0x1f }} {{ 0b101 }} {{ 0o17 }} {{ 2.5E-3 }}",
     "{}",
     "1 1.0 1500.0 1000 31 5 15 0.0025"},
    {"python_float_repr",
     "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 1/3 }} {{ 10/4 }} {{ 4/2 }} {{ -0.0 }} {{ 123456789.125 }} {{ 5e-324 }}",
     "{}",
     "0.30000000000000004 1e+16 1000000000000000.0 1e-05 0.0001 0.3333333333333333 2.5 2.0 -0.0 123456789.125 5e-324"},
    {"constants",
     "{{ true }} {{ false }} {{ none }} {{ True }} {{ False }} {{ None }}",
     "{}",
     "True False None True False None"},
    {"python_repr_containers",
     "{{ [1, 'a', none, true, 1.5, (1,), (1, 2), [], {}] }} {{ {'k': 'v', 2: [3]} }} {{ () }}",
     "{}",
     "[1, 'a', None, True, 1.5, (1,), (1, 2), [], {}] {'k': 'v', 2: [3]} ()"},
    {"python_repr_quotes",
     "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'back\\\\slash'] }}",
     "{}",
     "[\"it's\", 'say \"hi\"', 'both \\' \"', 'back\\\\slash']"},
    {"python_repr_escapes",
     "{{ ['tab\\t', 'nl\\n', '\\x01', '\\x7f', 'é', '\\u200b', '\\xa0', '😀'] }}",
     "{}",
     "['tab\\t', 'nl\\n', '\\x01', '\\x7f', 'é', '\\u200b', '\\xa0', '😀']"},
    {"string_escapes",
     "{{ '\\x41\\u00e9\\U0001F600\\101\\t|\\q' }}",
     "{}",
     "Aé😀A\t|\\q"},
    {"adjacent_strings_concatenate",
     "{{ 'a' 'b' \"c\" }}",
     "{}",
     "abc"},
    {"arithmetic",
     "{{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}",
     "{}",
     "5.0 9 64 4 3 -4 2 -2 3.0 0.5"},
    {"sequence_arithmetic",
     "{{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [1] * 3 }} {{ 'x' * 0 }}| {{ 'a' + 'b' }} {{ [1] + [2] }} {{ (1,) + (2,) }} {{ true + 1 }}",
     "{}",
     "ababab ababab [1, 1, 1] | ab [1, 2] (1, 2) 2"},
    {"concat_tilde",
     "{{ 'a' ~ 1 ~ none ~ true ~ [1] ~ 1.0 ~ undefined_var }}",
     "{}",
     "a1NoneTrue[1]1.0"},
    {"comparisons",
     "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ (1, 2) == [1, 2] }} {{ none == none }} {{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }}",
     "{}",
     "True False True True True False True True"},
    {"membership",
     "{{ 'a' in 'abc' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 2 in range(3) }} {{ 'x' in undefined_var }}",
     "{}",
     "True True True True True False"},
    {"logic_returns_operands",
     "{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or '' }}|{{ none or 'd' }} {{ [] or [1] }} {{ not [] }} {{ not 'a' }}",
     "{}",
     "2 0 |d [1] True False"},
    {"conditional_expression",
     "{{ 'x' if true else 'y' }} {{ 'x' if false else 'y' }} [{{ 'x' if false }}] {{ 1 if 0 else 2 if 1 else 3 }}",
     "{}",
     "x y [] 2"},
    {"tuples",
     "{{ 1, 2 }} {% set t = (1, 'a') %}{{ t[1] }} {{ t|length }} {% set a, b = 1, 2 %}{{ a }}{{ b }}",
     "{}",
     "(1, 2) a 2 12"},
    {"attr_and_item_access",
     "{{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ d.l[1] }} {{ d.l.0 }} {{ d.l[-1] }} [{{ d.l[5] }}] [{{ d.missing }}] {{ d['items'] }} {{ d.items() | list | length }}",
     "{\"d\": {\"a\": 1, \"b\": {\"c\": \"deep\"}, \"l\": [10, 20, 30], \"items\": \"shadowed\"}}",
     "1 1 deep 20 10 30 [] [] shadowed 4"},
    {"none_attr_is_undefined",
     "[{{ none.foo }}|{{ none['x'] }}|{{ 'abc'.foo }}]",
     "{}",
     "[||]"},
    {"dict_methods",
     "{{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 5) }}",
     "{\"d\": {\"a\": 1, \"b\": 2}}",
     "['a', 'b'] [1, 2] [('a', 1), ('b', 2)] 1 None 5"},
    {"slicing",
     "{{ 'abcdef'[::-2] }} {{ 'abcdef'[-2:] }} {{ [1, 2, 3][::-1] }} {{ [1, 2, 3, 4, 5][1:4:2] }} {{ [1, 2, 3][-5:] }} {{ 'abc'[5:1:-1] }} {{ [1, 2, 3][-1:-3:-1] }} {{ (1, 2, 3)[1:] }} {{ range(5)[1:3] }}",
     "{}",
     "fdb ef [3, 2, 1] [2, 4] [1, 2, 3] c [3, 2] (2, 3) range(1, 3)"},
    {"unicode_code_points",
     "{{ 'héllo'|length }} {{ 'héllo'[1] }} {{ 'héllo'[1:3] }} {{ 'héllo'[::-1] }} {{ 'héllo'|reverse }} {{ 'héllo'.find('l') }} {% for c in 'hé😀' %}{{ c }}.{% endfor %}",
     "{}",
     "5 é él olléh olléh 2 h.é.😀."},
    {"type_tests",
     "{{ 1 is number }} {{ 1.0 is float }} {{ 1 is integer }} {{ true is integer }} {{ true is number }} {{ true is boolean }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is sequence }} {{ 'a' is iterable }} {{ 3 is iterable }}",
     "{}",
     "True True True False True True True True True True False"},
    {"value_tests",
     "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ 1 is eq 1 }} {{ 1 is equalto 2 }} {{ 2 is gt 1 }} {{ 'a' is in 'abc' }} {{ none is sameas none }} {{ 'A' is upper }} {{ 'a' is lower }} {{ true is true }} {{ 1 is true }} {{ false is false }}",
     "{}",
     "True True True False True False True True True True True True False True"},
    {"defined_tests",
     "{{ x is defined }} {{ x is undefined }} {{ x is not defined }} {{ not x is defined }} {{ none is none }} {{ 1 is not none }} {{ range is callable }} {{ 'upper' is filter }} {{ 'odd' is test }}",
     "{}",
     "False True True True True True True True True"},
    {"undefined_is_empty_and_falsy",
     "[{{ nope }}] {{ nope is defined }} {% if nope %}yes{% else %}no{% endif %} {% for x in nope %}x{% else %}none{% endfor %} {{ nope|length }} {{ nope|default('d') }} {{ nope == nope }} {{ nope|list }} [{{ nope|string }}]",
     "{}",
     "[] False no none 0 d True [] []"},
    {"loop_variables",
     "{% for a in [1, 2, 3] if a > 1 %}{{ loop.index }}/{{ loop.length }} {{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }} {{ loop.first }}{{ loop.last }} {{ loop.previtem }}{{ loop.nextitem }} {{ loop.cycle('x', 'y') }}{{ loop.depth }};{% endfor %}",
     "{}",
     "1/2 021 TrueFalse 3 x1;2/2 110 FalseTrue 2 y1;"},
    {"loop_unpacking",
     "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %} {% for k, v in {'a': 1}|items %}{{ k }}{{ v }}{% endfor %} {% for (a, (b, c)) in [[1, [2, 3]]] %}{{ a }}{{ b }}{{ c }}{% endfor %} {% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %}",
     "{}",
     "a=1;b=2; a1 123 xy"},
    {"loop_else_and_controls",
     "{% for x in [] %}a{% else %}empty{% endfor %} {% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}",
     "{}",
     "empty 0134"},
    {"nested_loops",
     "{% for i in range(2) %}{% for j in 'ab' %}{{ loop.index }}{{ i }}{{ j }} {% endfor %}|{{ loop.index }} {% endfor %}",
     "{}",
     "10a 20b |1 11a 21b |2 "},
    {"loop_changed",
     "{% for i in [1, 1, 2, 2, 1] %}{{ loop.changed(i) }} {% endfor %}",
     "{}",
     "True False True False True "},
    {"recursive_loop",
     "{% for item in tree recursive %}[{{ item.n }}{{ loop.depth }}{{ loop(item.c) }}]{% endfor %}",
     "{\"tree\": [{\"n\": \"a\", \"c\": [{\"n\": \"b\", \"c\": []}]}, {\"n\": \"c\", \"c\": []}]}",
     "[a1[b2]][c1]"},
    {"loop_over_messages",
     "{% for m in messages %}{{ loop.index }}:{{ m.role }}:{{ m['content'] }}\n{% endfor %}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"Hello\"}]}]}",
     "1:system:Be brief.\n2:user:Hi\n3:assistant:[{'type': 'text', 'text': 'Hello'}]\n"},
    {"set_in_loop_is_local",
     "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}",
     "{}",
     "12121"},
    {"set_in_if_is_not_local",
     "{% if true %}{% set z = 3 %}{% endif %}{{ z }}",
     "{}",
     "3"},
    {"namespace",
     "{% set ns = namespace(t=0, items=[]) %}{% for i in [1, 2, 3] %}{% set ns.t = ns.t + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.t }} {{ ns.items }} {{ ns }}",
     "{}",
     "6 [1, 2, 3] <Namespace {'t': 6, 'items': [1, 2, 3]}>"},
    {"namespace_from_dict",
     "{% set ns = namespace({'x': 1}, y=2) %}{{ ns.x }}{{ ns.y }}{{ ns['x'] }}{% set ns.x = 5 %}{{ ns.x }}",
     "{}",
     "1215"},
    {"block_set",
     "{% set x %}hello {{ 1 }}{% endset %}[{{ x }}] {% set y | upper %}shout{% endset %}{{ y }} {% set z %}{% set inner = 1 %}{% endset %}[{{ inner }}]",
     "{}",
     "[hello 1] SHOUT []"},
    {"with_block",
     "{% with a = 1, b = 2 %}{% set c = 3 %}{{ a }}{{ b }}{{ c }}{% endwith %}[{{ a }}{{ c }}]",
     "{}",
     "123[]"},
    {"filter_block",
     "{% filter upper %}abc {{ 'def' }}{% endfilter %} {% filter trim|title %}  x y  {% endfilter %}",
     "{}",
     "ABC DEF X Y"},
    {"generation_and_block",
     "{% generation %}gen {{ 1 }}{% endgeneration %} {% block b %}blk{% endblock %} {% print 1 + 1 %}",
     "{}",
     "gen 1 blk 2"},
    {"macro_defaults",
     "{% macro m(a, b=2, c='x') %}{{ a }}{{ b }}{{ c }}{% endmacro %}{{ m(1) }} {{ m(1, 3) }} {{ m(1, c='z') }} [{{ m() }}]",
     "{}",
     "12x 13x 12z [2x]"},
    {"macro_varargs_kwargs",
     "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, x=4) }}",
     "{}",
     "1(2, 3){'x': 4}"},
    {"macro_default_uses_earlier_arg",
     "{% macro m(a, b=a * 2) %}{{ b }}{% endmacro %}{{ m(5) }}",
     "{}",
     "10"},
    {"macro_sees_template_globals_at_call_time",
     "{% macro m() %}{{ x }}{% endmacro %}{% set x = 5 %}{{ m() }}",
     "{}",
     "5"},
    {"macro_closure",
     "{% for i in [1, 2] %}{% macro m() %}{{ i }}{% endmacro %}{{ m() }}{% endfor %} {% macro outer() %}{% set v = 3 %}{% macro inner() %}{{ v }}{% endmacro %}{{ inner() }}{% endmacro %}{{ outer() }}",
     "{}",
     "12 3"},
    {"macro_recursion",
     "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
     "{}",
     "54321"},
    {"macro_modifies_namespace",
     "{% set n = namespace(a=1) %}{% macro m() %}{% set n.a = 5 %}{% endmacro %}{{ m() }}{{ n.a }}",
     "{}",
     "5"},
    {"call_block",
     "{% macro m() %}<{{ caller() }}>{% endmacro %}{% call m() %}inside{% endcall %} {% macro m2() %}{{ caller(5) }}{% endmacro %}{% call(x) m2() %}x={{ x }}{% endcall %}",
     "{}",
     "<inside> x=5"},
    {"macro_star_args",
     "{% macro m(a, b) %}{{ a }}{{ b }}{% endmacro %}{{ m(*[1, 2]) }}{{ m(**{'a': 3, 'b': 4}) }}",
     "{}",
     "1234"},
    {"filter_trim_length_first_last",
     "[{{ '  a b  '|trim }}|{{ 'xxaxx'|trim('x') }}] {{ [1, 2, 3]|length }} {{ 'abc'|count }} {{ [3, 1, 2]|first }} {{ [3, 1, 2]|last }} {{ 'abc'|first }} [{{ []|first }}]",
     "{}",
     "[a b|a] 3 3 3 2 a []"},
    {"filter_join_map",
     "{{ [1, 2]|join(', ') }} {{ [{'n': 'a'}, {'n': 'b'}]|join(',', attribute='n') }} {{ [{'n': 'a'}, {'n': 'b'}]|map(attribute='n')|list }} {{ ['a', 'B']|map('upper')|list }} {{ [{'a': 1}, {}]|map(attribute='a', default=0)|list }} {{ none|map('upper')|list }}",
     "{}",
     "1, 2 a,b ['a', 'b'] ['A', 'B'] [1, 0] []"},
    {"filter_select_reject",
     "{{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', none, 'a']|select|list }} {{ [1, 2, 3]|select('>', 1)|list }} {{ [1, 2]|select('equalto', 2)|list }} {{ [none, 1]|reject('none')|list }}",
     "{}",
     "[1, 3] [2, 4] [1, 'a'] [2, 3] [2] [1]"},
    {"filter_selectattr",
     "{{ items|selectattr('a')|list }} {{ items|selectattr('a', 'equalto', 2)|list }} {{ items|selectattr('a', 'defined')|list }} {{ items|rejectattr('a', 'defined')|list }} {{ items|selectattr('a', '==', 1)|map(attribute='a')|list }}",
     "{\"items\": [{\"a\": 1}, {\"a\": 2}, {\"b\": 3}]}",
     "[{'a': 1}, {'a': 2}] [{'a': 2}] [{'a': 1}, {'a': 2}] [{'b': 3}] [1]"},
    {"filter_conversions",
     "{{ 5|string }} {{ [1]|string }} {{ none|string }} {{ '5'|int }} {{ '5.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 5.9|int }} {{ '0x1A'|int(0, 16) }} {{ '5'|float }} {{ 'x'|float }} {{ 'abc'|list }} {{ {'a': 1}|list }} {{ range(3)|list }}",
     "{}",
     "5 [1] None 5 5 0 7 5 26 5.0 0.0 ['a', 'b', 'c'] ['a'] [0, 1, 2]"},
    {"filter_case",
     "{{ 'aBc'|lower }} {{ 'aBc'|upper }} {{ 'hello world'|title }} {{ 'a-b c(d'|title }} {{ 'hELLO wORLD'|capitalize }} {{ 'they\\'re bill'.title() }}",
     "{}",
     "abc ABC Hello World A-B C(D Hello world They'Re Bill"},
    {"filter_replace_default",
     "{{ 'hello'|replace('l', 'L') }} {{ 'hello'|replace('l', 'L', 1) }} {{ nope|default('d') }} {{ none|default('d') }} {{ ''|default('d', true) }} {{ 0|d('z', boolean=true) }}",
     "{}",
     "heLLo heLlo d None d z"},
    {"filter_escape_safe",
     "{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|escape|escape }} {{ '<b>'|safe }} {{ '<b>'|forceescape }}",
     "{}",
     "&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt; &lt;b&gt; <b> &lt;b&gt;"},
    {"markup_concatenation_escapes",
     "{{ 'a'|safe + '<' }} {{ '<' + 'x'|safe }} {{ ('a'|safe ~ '<') }} {{ '<'|e|trim + '<' }} {{ \"'\"|safe + {'k': 'v'}|tojson }}",
     "{}",
     "a&lt; &lt;x a< &lt;&lt; '{&#34;k&#34;: &#34;v&#34;}"},
    {"filter_indent",
     "{{ 'a\nb\n\nc'|indent }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\n\nb\n'|indent(2, blank=true) }}|{{ 'a\nb'|indent('--') }}|{{ '{\n\"x\": 1\n}'|indent(4, first=true) }}",
     "{}",
     "a\n    b\n\n    c|  a\n  b|a\n  \n  b\n  |a\n--b|    {\n    \"x\": 1\n    }"},
    {"filter_items_dictsort",
     "{{ {'b': 1, 'a': 2}|items|list }} {{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }} {{ {'B': 1, 'a': 2}|dictsort }} {{ {'B': 1, 'a': 2}|dictsort(true) }} {{ {'b': 1, 'a': 2}|dictsort(reverse=true) }}",
     "{}",
     "[('b', 1), ('a', 2)] [('a', 2), ('b', 1)] [('b', 1), ('a', 2)] [('a', 2), ('B', 1)] [('B', 1), ('a', 2)] [('b', 1), ('a', 2)]"},
    {"filter_sort_unique_reverse",
     "{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [{'a': 2}, {'a': 1}]|sort(attribute='a') }} {{ [1, 2, 1, 3]|unique|list }} {{ ['a', 'A', 'b']|unique|list }} {{ [1, 2, 3]|reverse|list }}",
     "{}",
     "[1, 2, 3] [3, 2, 1] ['A', 'b', 'c'] ['A', 'b', 'c'] [{'a': 1}, {'a': 2}] [1, 2, 3] ['a', 'b'] [3, 2, 1]"},
    {"filter_numbers",
     "{{ -3|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2|round }} {{ 2.675|round(2) }} {{ 1.5|round(0, 'floor') }} {{ 1.2|round(0, 'ceil') }} {{ [1, 2, 3]|sum }} {{ [{'v': 1}, {'v': 2}]|sum(attribute='v') }} {{ [3, 1, 2]|min }} {{ [3, 1, 2]|max }} {{ [{'a': 3}, {'a': 1}]|min(attribute='a') }}",
     "{}",
     "3 2.0 4.0 2 2.67 1.0 2.0 6 3 1 3 {'a': 1}"},
    {"filter_misc",
     "{{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|batch(2, 'x')|list }} {{ [1, 2, 3, 4, 5]|slice(2)|list }} {{ 'hello world foo'|wordcount }} [{{ 'abc'|center(9) }}] {{ 'hello world'|truncate(8) }} {{ '<p>a  <b>b</b></p>'|striptags }} {{ '%s-%d'|format('a', 3) }} {{ [1, [2, 'x']]|pprint }}",
     "{}",
     "[[1, 2], [3, 4], [5]] [[1, 2], [3, 'x']] [[1, 2, 3], [4, 5]] 3 [   abc   ] hello world a b a-3 [1, [2, 'x']]"},
    {"tojson_default_separators",
     "{{ {'b': 1, 'a': [1, 2.0, 'é\n', none, true, false]}|tojson }}",
     "{}",
     "{\"b\": 1, \"a\": [1, 2.0, \"é\\n\", null, true, false]}"},
    {"tojson_indent",
     "{{ {'b': 1, 'a': [], 'c': {}, 'd': [1, {'e': 'f'}]}|tojson(indent=2) }}",
     "{}",
     "{\n  \"b\": 1,\n  \"a\": [],\n  \"c\": {},\n  \"d\": [\n    1,\n    {\n      \"e\": \"f\"\n    }\n  ]\n}"},
    {"tojson_indent_string_and_zero",
     "{{ [1, {}]|tojson(indent='\t') }}|{{ {'a': [1]}|tojson(indent=0) }}",
     "{}",
     "[\n\t1,\n\t{}\n]|{\n\"a\": [\n1\n]\n}"},
    {"tojson_sort_keys_separators",
     "{{ {'b': 1, 'a': 2}|tojson(sort_keys=true, separators=(',', ':')) }} {{ {'b': 1, 'a': 2}|tojson(separators=(';', '=')) }}",
     "{}",
     "{\"a\":2,\"b\":1} {\"b\"=1;\"a\"=2}"},
    {"tojson_strings",
     "{{ 'é😀\"\\\\/\\x01\\x7f\\t'|tojson }} {{ 'é😀'|tojson(ensure_ascii=true) }}",
     "{}",
     "\"é😀\\\"\\\\/\\u0001\177\\t\" \"\\u00e9\\ud83d\\ude00\""},
    {"tojson_numbers",
     "{{ [1e16, 0.1, 1.0, -0.0, 1e-7, 3, 12345678901234, 1.5e300]|tojson }}",
     "{}",
     "[1e+16, 0.1, 1.0, -0.0, 1e-07, 3, 12345678901234, 1.5e+300]"},
    {"tojson_keys",
     "{{ {1: 'a', true: 'b', none: 'c', 1.5: 'd'}|tojson }}",
     "{}",
     "{\"1\": \"b\", \"null\": \"c\", \"1.5\": \"d\"}"},
    {"tojson_context_order_and_nesting",
     "{{ tools|tojson }}\n{{ tools[0]|tojson(indent=4) }}",
     "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"location\": {\"type\": \"string\"}}, \"required\": [\"location\"]}}}]}",
     "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"location\": {\"type\": \"string\"}}, \"required\": [\"location\"]}}}]\n{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"get_weather\",\n        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {\n                \"location\": {\n                    \"type\": \"string\"\n                }\n            },\n            \"required\": [\n                \"location\"\n            ]\n        }\n    }\n}"},
    {"string_methods_strip_split",
     "[{{ ' a '.strip() }}|{{ 'xax'.strip('x') }}|{{ ' a '.lstrip() }}|{{ ' a '.rstrip() }}] {{ 'a,b,,c'.split(',') }} {{ 'a b  c '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '  a b c  '.split(none, 1) }} {{ 'a\nb\r\nc'.splitlines() }}",
     "{}",
     "[a|a|a | a] ['a', 'b', '', 'c'] ['a', 'b', 'c'] ['a', 'b,c'] ['a,b', 'c'] ['a', 'b c  '] ['a', 'b', 'c']"},
    {"string_methods_search",
     "{{ 'abc'.startswith('a') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count('l') }} {{ ', '.join(['a', 'b']) }} {{ 'abc'.replace('b', 'X') }} {{ 'a</think>b</think>c'.split('</think>')[-1] }}",
     "{}",
     "True True 3 -1 2 a, b aXc c"},
    {"string_methods_case_and_pad",
     "{{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'aBC'.capitalize() }} {{ 'aBc'.swapcase() }} {{ 'ab'.center(6, '*') }} {{ 'ab'.rjust(4, '0') }} {{ '-5'.zfill(4) }} {{ 'abc'.isalpha() }} {{ '12'.isdigit() }}",
     "{}",
     "HELLO hello Abc AbC **ab** 00ab -005 True True"},
    {"string_format",
     "{{ '{} and {}'.format(1, 'b') }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{x}-{y!r}'.format(x=1, y='s') }} {{ '{:>5}|{:<4}|{:^5}|{:05d}|{:.2f}|{:x}'.format('a', 'b', 'c', 42, 3.14159, 255) }} {{ '%s|%5s|%-5s|%d|%05d|%.2f|%x|%r|%%' % ('a', 'b', 'c', 42, 7, 3.14159, 255, 'q') }}",
     "{}",
     "1 and b aba 1-'s'     a|b   |  c  |00042|3.14|ff a|    b|c    |42|00007|3.14|ff|'q'|%"},
    {"range_dict_cycler_joiner",
     "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ range(2) }} {{ dict(a=1, b=2) }} {% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}{{ c.current }} {% set j = joiner('+') %}{{ j() }}a{{ j() }}b",
     "{}",
     "[0, 1, 2] [1, 4, 7] [5, 3, 1] range(0, 2) {'a': 1, 'b': 2} abab a+b"},
    {"strftime_now",
     "{{ strftime_now('%d %b %Y') }} {{ strftime_now('%Y-%m-%d %H:%M:%S %A %B %j') }}",
     "{}",
     "26 Jul 2024 2024-07-26 12:00:00 Friday July 208"},

};
}  // namespace

TEST(JinjaSemantics, MatchesPythonJinja2) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    try {
      EXPECT_EQ(render(c.source, json::parse(c.context)), c.expected) << c.source;
    } catch (const Error& e) {
      ADD_FAILURE() << e.what() << "\n  template: " << c.source;
    }
  }
}

TEST(JinjaSemantics, PrintsContentPartsLikePython) {
  json ctx = {{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "hi"}}}}}}}};
  EXPECT_EQ(render("{{ messages[0]['content'] }}", ctx), "[{'type': 'text', 'text': 'hi'}]");
  EXPECT_EQ(render("{{ x }}|{{ y }}|{{ z }}", {{"x", 1.0}, {"y", 3}, {"z", nullptr}}), "1.0|3|None");
  EXPECT_EQ(render("{{ big }}", {{"big", 18446744073709551615ull}}), "1.8446744073709552e+19");
}

TEST(JinjaSemantics, StrftimeNowUsesTheGivenClockOrTheRealOne) {
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y %H:%M') }}"), "26 Jul 2024 12:00");
  std::string year = Template("{{ strftime_now('%Y') }}", "t").render(json::object());  // now = 0: the real clock
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
}

TEST(JinjaSemantics, ContextMayBeNullButNotAnArray) {
  EXPECT_EQ(render("a{{ x }}", json(nullptr)), "a");
  EXPECT_CONTAINS(render_error("a", json::array()), "context must be a JSON object");
}

// ---------------------------------------------------------------------------------------------------------------
// Errors

TEST(JinjaErrors, ParseErrorsNameTemplateAndLine) {
  std::string msg = error_of([] { Template("line one\n{% for x in %}\n", "bad.jinja"); });
  EXPECT_CONTAINS(msg, "template bad.jinja, line 2: ");
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_CONTAINS(error_of([] { Template("{{ a b }}", "t"); }), "line 1: expected end of print statement, got 'b'");
  EXPECT_CONTAINS(error_of([] { Template("a\n\n{% if x %}", "t"); }), "line 3: unexpected end of template");
  EXPECT_CONTAINS(error_of([] { Template("{% if x %}{% endfor %}", "t"); }), "unexpected 'endfor'");
  EXPECT_CONTAINS(error_of([] { Template("{% do 1 %}", "t"); }), "unknown tag 'do'");
  EXPECT_CONTAINS(error_of([] { Template("{{ 'abc }}", "t"); }), "unterminated string");
  EXPECT_CONTAINS(error_of([] { Template("x\n{# open", "t"); }), "line 2: missing end of comment tag");
  EXPECT_CONTAINS(error_of([] { Template("{% raw %}x", "t"); }), "missing end of raw directive");
  EXPECT_CONTAINS(error_of([] { Template("{{ (1 }}", "t"); }), "unexpected '}'");
  EXPECT_CONTAINS(error_of([] { Template("{% break %}", "t"); }), "'break' outside of a loop");
  EXPECT_CONTAINS(error_of([] { Template("{% macro m(a=1, b) %}{% endmacro %}", "t"); }), "non-default argument");
  EXPECT_CONTAINS(error_of([] { Template("{{ '\\x4' }}", "t"); }), "truncated \\xXX escape");
}

TEST(JinjaErrors, UnknownFiltersAndTestsFailAtParseTimeUnlessGuardedByIf) {
  EXPECT_CONTAINS(error_of([] { Template("a\n{{ 1|foo }}", "t"); }), "line 2: unknown filter 'foo'");
  EXPECT_CONTAINS(error_of([] { Template("{{ 1 is foo }}", "t"); }), "unknown test 'foo'");
  // Inside an if (statement or inline), jinja2 only fails if the filter is evaluated.
  EXPECT_EQ(render("{% if false %}{{ 1|foo }}{% endif %}ok"), "ok");
  EXPECT_EQ(render("{{ 1 if true else 2|foo }}"), "1");
  EXPECT_CONTAINS(render_error("{% if x is foo %}{% endif %}"), "unknown test 'foo'");
}

TEST(JinjaErrors, RuntimeErrorsNameTheLine) {
  EXPECT_EQ(render_error("a\nb\n{{ 1 / 0 }}"), "template t, line 3: division by zero");
  EXPECT_EQ(render_error("{{ x.y }}"), "template t, line 1: 'x' is undefined");
  EXPECT_EQ(render_error("\n{% for t in tools %}{% endfor %}", {{"tools", nullptr}}),
            "template t, line 2: 'NoneType' object is not iterable");
  EXPECT_EQ(render_error("{% macro m() %}\n\n{{ 1 + 'a' }}{% endmacro %}\n{{ m() }}"),
            "template t, line 3: unsupported operand type(s) for +: 'int' and 'str'");
  EXPECT_CONTAINS(render_error("{{ d.a.b }}", {{"d", json::object()}}), "'dict object' has no attribute 'a'");
  EXPECT_CONTAINS(render_error("{{ 1 < 'a' }}"), "'<' not supported between instances of 'int' and 'str'");
  EXPECT_CONTAINS(render_error("{{ [1]|tojson }}{{ x|tojson }}"), "Object of type Undefined is not JSON serializable");
  EXPECT_CONTAINS(render_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}"), "takes not more than 1 argument");
  EXPECT_CONTAINS(render_error("{% for a, b in [[1, 2, 3]] %}{% endfor %}"), "too many values to unpack");
  EXPECT_CONTAINS(render_error("{{ 'hello'.index('z') }}"), "substring not found");
  EXPECT_CONTAINS(render_error("{{ 'abc'[::0] }}"), "slice step cannot be zero");
  EXPECT_CONTAINS(render_error("{% set s = 'x' %}{% set s.a = 1 %}"), "non-namespace object");
}

TEST(JinjaErrors, RaiseExceptionMessageIsVerbatim) {
  EXPECT_EQ(render_error("\n{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"),
            "template t, line 2: Conversation roles must alternate user/assistant/user/assistant/...");
  std::string gemma = template_source("google-gemma-2-2b-it.jinja");
  json ctx = {{"messages", {{{"role", "system"}, {"content", "x"}}}}, {"bos_token", "<bos>"}};
  EXPECT_EQ(error_of([&] { Template(gemma, "gemma").render(ctx, {}, kNow); }),
            "template gemma, line 1: System role not supported");
}

TEST(JinjaErrors, IncludeImportExtendsAreRefusedWhenReached) {
  EXPECT_EQ(render("{% if false %}{% include 'x.jinja' %}{% endif %}ok"), "ok");
  for (const char* src : {"{% include 'other.jinja' %}", "{% import 'm.jinja' as m %}",
                          "{% from 'm.jinja' import a, b %}", "{% extends 'base.jinja' %}"})
    EXPECT_CONTAINS(render_error(src), "cannot load other templates");
}

// ---------------------------------------------------------------------------------------------------------------
// Sandbox

TEST(JinjaSandbox, NoPythonInternalsAndImmutableValues) {
  EXPECT_EQ(render("[{{ ''.__class__ }}|{{ x.__class__ }}|{{ d.__init__ }}|{{ range.__globals__ }}]", {{"d", json::object()}}),
            "[|||]");
  EXPECT_CONTAINS(render_error("{{ ''.__class__.__mro__[1].__subclasses__() }}"), "unsafe");
  EXPECT_CONTAINS(render_error("{% set l = [1] %}{{ l.append(2) }}"), "access to attribute 'append' of 'list' object is unsafe");
  EXPECT_CONTAINS(render_error("{{ d.update({'a': 1}) }}", {{"d", json::object()}}), "'update' of 'dict' object is unsafe");
  EXPECT_CONTAINS(render_error("{{ d.pop('a') }}", {{"d", {{"a", 1}}}}), "unsafe");
  // Keys starting with an underscore are plain data.
  EXPECT_EQ(render("{{ d._private }}", {{"d", {{"_private", 7}}}}), "7");
}

// ---------------------------------------------------------------------------------------------------------------
// Limits: hostile templates fail quickly with an error naming the limit, and never crash.

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

TEST(JinjaLimits, HugeRangesAndEndlessLoopsStopQuickly) {
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_CONTAINS(render_error("{% for i in range(100000000) %}{% endfor %}"), "range too big");
  EXPECT_CONTAINS(render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
                  "max_steps");
  EXPECT_CONTAINS(render_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), "max_depth");
  EXPECT_LT(seconds_since(t0), lokal::test::kAddressSanitizer ? 60.0 : 10.0);
  Limits small;
  small.max_steps = 1000;
  EXPECT_CONTAINS(render_error("{% for i in range(5000) %}{% endfor %}", json::object(), small), "max_steps (1000");
  EXPECT_EQ(render("{% for i in range(100) %}{% endfor %}ok", json::object(), small), "ok");
}

TEST(JinjaLimits, OutputBombsStopAtMaxOutputBytes) {
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_CONTAINS(render_error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"), "max_output_bytes");
  EXPECT_CONTAINS(render_error("{{ 'x' * 1000000000000 }}"), "max_output_bytes");
  EXPECT_CONTAINS(render_error("{{ [1] * 100000000000 }}"), "max_output_bytes");
  EXPECT_CONTAINS(render_error("{% set ns = namespace(s='xy') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
                  "max_output_bytes");
  EXPECT_CONTAINS(render_error("{% set ns = namespace(s=[1]) %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"),
                  "max_");
  EXPECT_CONTAINS(render_error("{% macro m() %}{{ 'x' * 1000000 }}{% endmacro %}{% for i in range(100000) %}{% set y = m() %}{% endfor %}"),
                  "max_steps");
  EXPECT_LT(seconds_since(t0), lokal::test::kAddressSanitizer ? 60.0 : 10.0);
  Limits small;
  small.max_output_bytes = 10;
  EXPECT_EQ(render("0123456789", json::object(), small), "0123456789");
  EXPECT_CONTAINS(render_error("0123456789x", json::object(), small), "max_output_bytes (10 bytes)");
}

TEST(JinjaLimits, DeepNestingIsAnErrorNotACrash) {
  const int n = 100000;
  auto rep = [](const char* s, int k) {
    std::string r;
    for (int i = 0; i < k; ++i) r += s;
    return r;
  };
  for (const std::string& src : {
           "{{ " + rep("(", n) + "1" + rep(")", n) + " }}",
           "{{ " + rep("[", n) + rep("]", n) + " }}",
           "{{ " + rep("{'a': ", n) + "1" + rep("}", n) + " }}",
           "{{ " + rep("not ", n) + "1 }}",
           "{{ " + rep("-", n) + "1 }}",
           "{{ 1" + rep(" + 1", n) + " }}",
           "{{ 1" + rep(" ** 1", n) + " }}",
           "{{ x" + rep(".a", n) + " }}",
           "{{ x" + rep("[0]", n) + " }}",
           "{{ x" + rep("()", n) + " }}",
           "{{ x" + rep("|trim", n) + " }}",
           "{{ 1" + rep(" if 1 else 1", n) + " }}",
           rep("{% if true %}", n) + rep("{% endif %}", n),
           rep("{% for x in y %}", n) + rep("{% endfor %}", n),
       }) {
    std::string msg = error_of([&] { Template(src, "deep"); });
    EXPECT_CONTAINS(msg, "template deep, line 1:");
    EXPECT_CONTAINS(msg, "too deeply");
  }
  // Long flat sequences are not nesting.
  EXPECT_EQ(render("{{ 'a'" + rep(" ~ 'a'", n - 1) + " }}"), std::string(n, 'a'));
  EXPECT_EQ(render("{{ [" + rep("1, ", n) + "]|length }}"), std::to_string(n));
  // Nesting the parser accepts but rendering runs out of max_depth.
  Limits shallow;
  shallow.max_depth = 20;
  EXPECT_CONTAINS(render_error("{{ " + rep("(", 30) + "1" + rep(")", 30) + " + " + rep("[", 30) + rep("]", 30) + " }}",
                               json::object(), shallow),
                  "max_depth (20");
  // Values built deeper than any template needs.
  EXPECT_CONTAINS(render_error("{% set ns = namespace(l=[]) %}{% for i in range(5000) %}{% set ns.l = [ns.l] %}{% endfor %}"),
                  "nested too deeply");
  json deep = json::array();
  for (int i = 0; i < 5000; ++i) deep = json::array({deep});
  EXPECT_CONTAINS(render_error("{{ x }}", {{"x", deep}}), "nested too deeply");
  // A long chain of namespaces (each holding the previous one) is fine, and freed without recursion.
  EXPECT_EQ(render("{% set ns = namespace(c=none) %}{% for i in range(50000) %}{% set ns.c = namespace(n=ns.c) %}{% endfor %}ok"),
            "ok");
  // Values referring back to the loop object (freed when the loop ends; LeakSanitizer checks this under ASan).
  EXPECT_EQ(render("{% for i in [1, 1, 2] %}{{ loop.changed(loop) }}{{ loop.changed(i) }}{% endfor %}"),
            "TrueTrueTrueTrueTrueTrue");
  EXPECT_EQ(render("{% for i in [1] %}{% macro m() %}{{ loop.index }}{% endmacro %}{{ loop.changed(m) }}{{ m() }}{% endfor %}"),
            "True1");
  EXPECT_CONTAINS(render_error("{% for i in [1] %}{{ loop.changed(loop) }}{{ 1 / 0 }}{% endfor %}"), "division by zero");
  // Self-referencing namespaces can be printed (up to the depth limit) and do not leak.
  EXPECT_CONTAINS(render_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}"), "nested too deeply");
}

// ---------------------------------------------------------------------------------------------------------------
// Concurrency and speed

TEST(JinjaRender, ConcurrentRendersOfOneTemplate) {
  const json& g = golden();
  std::vector<std::pair<Template, std::pair<json, std::string>>> work;
  for (const json& e : g["entries"])
    if (e["conversation"] == "tool_call")
      work.push_back({Template(template_source(e["template"].get<std::string>()), "t"),
                      {golden_context(e, g["conversations"]["tool_call"]), e["rendered"].get<std::string>()}});
  ASSERT_FALSE(work.empty());
  std::vector<std::thread> threads;
  std::vector<int> failures(8, 0);
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i)
        for (const auto& [tpl, job] : work)
          if (tpl.render(job.first, {}, kNow) != job.second) ++failures[static_cast<size_t>(t)];
    });
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

TEST(JinjaRender, TypicalChatRendersWellUnderAMillisecond) {
  Template t(template_source("meta-llama-Llama-3.1-8B-Instruct.jinja"), "llama");
  json msgs = json::array({{{"role", "system"}, {"content", "You are a helpful assistant."}}});
  for (int i = 0; i < 9; ++i)
    msgs.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "Message number " + std::to_string(i) + " with some text."}});
  json ctx = {{"messages", msgs}, {"bos_token", "<|begin_of_text|>"}, {"add_generation_prompt", true}};
  const int n = 200;
  auto t0 = std::chrono::steady_clock::now();
  size_t total = 0;
  for (int i = 0; i < n; ++i) total += t.render(ctx, {}, kNow).size();
  double ms = seconds_since(t0) * 1000 / n;
  EXPECT_GT(total, 0u);
  RecordProperty("render_ms", std::to_string(ms));
  std::printf("[ info ] 10-message Llama 3.1 chat: %.3f ms per render\n", ms);
  if (!lokal::test::kAddressSanitizer) {
    EXPECT_LT(ms, 1.0);
  }
}
