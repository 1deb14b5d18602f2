// Tests of the chat output parser (chat/chat_parse.h): every format's realistic outputs parsed whole, then the
// same texts streamed in every two-piece split, one character and one byte at a time, and in random pieces; the
// deltas must add up to the message, the message must equal the whole-text one, and no delta may end inside a tag.
// Also: format detection on the 17 shared chat templates, ids, names, and streaming behaviour (what is shown when).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "chat/chat_parse.h"
#include "core/error.h"
#include "support/test_data.h"

// The case table leaves trailing fields at their defaults.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace lokal {
namespace {

using F = ToolCallFormat;

// DeepSeek's special tokens (fullwidth bar U+FF5C, lower one-eighth block U+2581).
const std::string kDsCallsBegin = "<｜tool▁calls▁begin｜>";
const std::string kDsCallsEnd = "<｜tool▁calls▁end｜>";
const std::string kDsCallBegin = "<｜tool▁call▁begin｜>";
const std::string kDsCallEnd = "<｜tool▁call▁end｜>";
const std::string kDsSep = "<｜tool▁sep｜>";

std::string ds_call(const std::string& name, const std::string& args) {
  return kDsCallBegin + "function" + kDsSep + name + "\n```json\n" + args + "\n```" + kDsCallEnd;
}

// Tinychat's (Hermes/Qwen2.5) exact call text.
std::string hermes_call(const std::string& name, const std::string& args) {
  return "<tool_call>\n{\"name\": \"" + name + "\", \"arguments\": " + args + "}\n</tool_call>";
}

struct ExpectedCall {
  std::string name, arguments, id;  // id empty: not checked
};

struct Case {
  std::string name;
  F format;
  std::string text;
  std::string content, reasoning;
  std::vector<ExpectedCall> calls;
  bool unparsed = false;
  bool reasoning_on = true;
  bool open_at_start = false;
  bool tools = true;
};

std::vector<Case> cases() {
  const std::string paris = R"({"location": "Paris"})";
  const std::string tokyo = R"({"location": "Tokyo"})";
  const ExpectedCall weather{"get_weather", R"({"location":"Paris"})", ""};
  const ExpectedCall time_tokyo{"get_time", R"({"location":"Tokyo"})", ""};
  std::vector<Case> v;

  // ---- Hermes / Qwen2.5 / tinychat ----
  v.push_back({"hermes_one_call", F::Hermes, hermes_call("get_weather", paris), "", "", {weather}});
  v.push_back({"hermes_two_calls",
               F::Hermes,
               hermes_call("get_weather", paris) + "\n" + hermes_call("get_time", tokyo),
               "",
               "",
               {weather, time_tokyo}});
  v.push_back({"hermes_text_then_call",
               F::Hermes,
               "Let me check the weather for you.\n" + hermes_call("get_weather", paris),
               "Let me check the weather for you.",
               "",
               {weather}});
  v.push_back({"hermes_call_then_text",
               F::Hermes,
               hermes_call("get_weather", paris) + "\n\nI asked the service.",
               "I asked the service.",
               "",
               {weather}});
  v.push_back({"hermes_no_call", F::Hermes, "The capital of France is Paris.", "The capital of France is Paris.", ""});
  v.push_back({"hermes_no_call_json_answer", F::Hermes, R"({"name": "Alice", "age": 30})",
               R"({"name": "Alice", "age": 30})", ""});
  {
    const std::string bad =
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}\n</tool_call>";
    v.push_back({"hermes_malformed_json", F::Hermes, bad, bad, "", {}, true});
    const std::string open = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}";
    v.push_back({"hermes_missing_close_tag", F::Hermes, open, open, "", {}, true});
    const std::string noname = "<tool_call>\n{\"arguments\": {\"location\": \"Paris\"}}\n</tool_call>";
    v.push_back({"hermes_missing_name", F::Hermes, noname, noname, "", {}, true});
    // A bad block, then a good one: the bad one stays content, the good one is a call.
    v.push_back({"hermes_bad_then_good",
                 F::Hermes,
                 "<tool_call>oops</tool_call>\n" + hermes_call("get_weather", paris),
                 "<tool_call>oops</tool_call>",
                 "",
                 {weather},
                 true});
  }
  v.push_back({"hermes_reasoning_then_call",
               F::Hermes,
               "<think>\nThe user wants the weather in Paris.\n</think>\n\n" + hermes_call("get_weather", paris),
               "",
               "The user wants the weather in Paris.",
               {weather}});
  v.push_back({"hermes_reasoning_then_answer", F::Hermes, "<think>\n2 + 2 = 4\n</think>\n\nThe answer is 4.",
               "The answer is 4.", "2 + 2 = 4"});
  {
    Case c{"hermes_reasoning_open_at_start",
           F::Hermes,
           "The user wants the weather.\n</think>\n\n" + hermes_call("get_weather", paris),
           "",
           "The user wants the weather.",
           {weather}};
    c.open_at_start = true;
    v.push_back(c);
  }
  v.push_back({"hermes_unclosed_think", F::Hermes, "<think>\nStill thinking about <tool_call> and more ", "",
               "Still thinking about <tool_call> and more"});
  {
    Case c{"hermes_reasoning_none_inline", F::Hermes, "<think>\nhmm\n</think>\n\nParis.",
           "<think>\nhmm\n</think>\n\nParis.", ""};
    c.reasoning_on = false;
    v.push_back(c);
    Case d{"hermes_reasoning_none_call", F::Hermes, "<think>\nhmm\n</think>\n" + hermes_call("get_weather", paris),
           "<think>\nhmm\n</think>",     "",        {weather}};
    d.reasoning_on = false;
    v.push_back(d);
  }
  v.push_back({"hermes_arguments_as_string",
               F::Hermes,
               "<tool_call>\n{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 2, \\\"b\\\": 3}\"}\n</tool_call>",
               "",
               "",
               {{"add", R"({"a":2,"b":3})", ""}}});
  v.push_back(
      {"hermes_tricky_arguments",
       F::Hermes,
       hermes_call(
           "send_email",
           R"({"to": "a@b.c", "body": "Use </tool_call> and \"<think>\" é 😀", "n": [1, 2.5, -3e2], "ok": true, "x": null})"),
       "",
       "",
       {{"send_email",
         R"({"to":"a@b.c","body":"Use </tool_call> and \"<think>\" é 😀","n":[1,2.5,-300.0],"ok":true,"x":null})",
         ""}}});
  v.push_back({"hermes_lookalike_text", F::Hermes, "a < b, <tool> and <tool_cal; x <t",
               "a < b, <tool> and <tool_cal; x <t", ""});
  {
    Case c{"hermes_no_tools_offered", F::Hermes, "Sure.\n" + hermes_call("get_weather", paris),
           "Sure.\n" + hermes_call("get_weather", paris), ""};
    c.tools = false;
    v.push_back(c);
  }

  // tinychat's answers with numbers and two different tools.
  v.push_back({"hermes_tinychat_two_tools",
               F::Hermes,
               hermes_call("add", R"({"a": 12, "b": 30})") + "\n" +
                   hermes_call("convert_currency", R"({"amount": 100.5, "from": "USD", "to": "EUR"})"),
               "",
               "",
               {{"add", R"({"a":12,"b":30})", ""}, {"convert_currency", R"({"amount":100.5,"from":"USD","to":"EUR"})", ""}}});
  {
    Case c{"llama3_no_tools_offered", F::Llama3, R"({"name": "get_weather", "parameters": {"location": "Paris"}})",
           R"({"name": "get_weather", "parameters": {"location": "Paris"}})", ""};
    c.tools = false;
    v.push_back(c);
  }

  // ---- Llama 3.x ----
  v.push_back({"llama3_one_call",
               F::Llama3,
               R"({"name": "get_weather", "parameters": {"location": "Paris"}})",
               "",
               "",
               {weather}});
  v.push_back(
      {"llama3_two_calls",
       F::Llama3,
       R"({"name": "get_weather", "parameters": {"location": "Paris"}}; {"name": "get_time", "parameters": {"location": "Tokyo"}})",
       "",
       "",
       {weather, time_tokyo}});
  v.push_back({"llama3_type_function_leading_ws",
               F::Llama3,
               "\n\n{\"type\": \"function\", \"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}",
               "",
               "",
               {weather}});
  v.push_back({"llama3_call_then_text",
               F::Llama3,
               R"({"name": "get_weather", "parameters": {"location": "Paris"}} Done.)",
               "Done.",
               "",
               {weather}});
  v.push_back({"llama3_no_call", F::Llama3, "Paris is the capital of France.", "Paris is the capital of France.", ""});
  v.push_back({"llama3_json_answer_not_a_call", F::Llama3, R"({"name": "Alice", "age": 30})",
               R"({"name": "Alice", "age": 30})", ""});
  {
    const std::string bad = R"({"name": "get_weather", "parameters": {"location": "Paris"})";
    v.push_back({"llama3_malformed", F::Llama3, bad, bad, "", {}, true});
  }
  v.push_back({"llama3_builtin_tool",
               F::Llama3,
               "<|python_tag|>brave_search.call(query=\"weather in Paris\", count=3)",
               "",
               "",
               {{"brave_search", R"({"query":"weather in Paris","count":3})", ""}}});
  v.push_back({"llama3_python_code",
               F::Llama3,
               "<|python_tag|>import math\nprint(math.pi)",
               "",
               "",
               {{"python", R"J({"code":"import math\nprint(math.pi)"})J", ""}}});
  v.push_back({"llama3_text_then_python_tag_json",
               F::Llama3,
               R"(Let me look.<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris"}})",
               "Let me look.",
               "",
               {weather}});
  v.push_back({"llama3_python_tag_empty", F::Llama3, "Hi <|python_tag|>", "Hi <|python_tag|>", "", {}, true});
  v.push_back({"llama3_reasoning_then_call",
               F::Llama3,
               "<think>I need the weather tool.</think>\n" +
                   std::string(R"({"name": "get_weather", "parameters": {"location": "Paris"}})"),
               "",
               "I need the weather tool.",
               {weather}});

  // ---- Mistral Nemo ----
  v.push_back({"mistral_one_call",
               F::MistralNemo,
               R"([TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris"}, "id": "abc123def"}])",
               "",
               "",
               {{"get_weather", R"({"location":"Paris"})", "abc123def"}}});
  v.push_back(
      {"mistral_two_calls",
       F::MistralNemo,
       R"([TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris"}}, {"name": "get_time", "arguments": {"location": "Tokyo"}}])",
       "",
       "",
       {weather, time_tokyo}});
  v.push_back(
      {"mistral_text_then_call",
       F::MistralNemo,
       R"(Checking now. [TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris"}, "id": "Zz9Zz9Zz9"}])",
       "Checking now.",
       "",
       {{"get_weather", R"({"location":"Paris"})", "Zz9Zz9Zz9"}}});
  v.push_back({"mistral_no_call", F::MistralNemo, "It is sunny in Paris.", "It is sunny in Paris.", ""});
  {
    const std::string bad = R"([TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris"})";
    v.push_back({"mistral_malformed", F::MistralNemo, bad, bad, "", {}, true});
  }
  v.push_back({"mistral_reasoning_then_call",
               F::MistralNemo,
               "<think>\nweather\n</think>\n" +
                   std::string(R"([TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris"}}])"),
               "",
               "weather",
               {weather}});

  // ---- DeepSeek R1 ----
  {
    Case c{
        "deepseek_one_call_open_at_start",
        F::DeepSeekR1,
        "The user asks about the weather.\n</think>\n\n" + kDsCallsBegin + ds_call("get_weather", paris) + kDsCallsEnd,
        "",
        "The user asks about the weather.",
        {weather}};
    c.open_at_start = true;
    v.push_back(c);
    Case d{"deepseek_two_calls_open_at_start",
           F::DeepSeekR1,
           "Two tools.\n</think>\n\n" + kDsCallsBegin + ds_call("get_weather", paris) + "\n" +
               ds_call("get_time", tokyo) + kDsCallsEnd,
           "",
           "Two tools.",
           {weather, time_tokyo}};
    d.open_at_start = true;
    v.push_back(d);
    Case e{"deepseek_unclosed_think_open_at_start", F::DeepSeekR1, "Let me think about this for a while", "",
           "Let me think about this for a while"};
    e.open_at_start = true;
    v.push_back(e);
    Case r{"deepseek_repeated_think_open_at_start", F::DeepSeekR1, "<think>\nhmm\n</think>\n\nParis.", "Paris.", "hmm"};
    r.open_at_start = true;
    v.push_back(r);
    Case n{"deepseek_open_at_start_reasoning_none", F::DeepSeekR1, "hmm\n</think>\n\nParis.", "hmm\n</think>\n\nParis.",
           ""};
    n.open_at_start = true;
    n.reasoning_on = false;
    v.push_back(n);
  }
  v.push_back({"deepseek_text_then_call",
               F::DeepSeekR1,
               "I will call a tool." + kDsCallsBegin + ds_call("get_weather", paris) + kDsCallsEnd,
               "I will call a tool.",
               "",
               {weather}});
  v.push_back({"deepseek_think_then_answer", F::DeepSeekR1, "<think>\nHmm.\n</think>\n\nParis.", "Paris.", "Hmm."});
  v.push_back({"deepseek_no_call", F::DeepSeekR1, "Paris.", "Paris.", ""});
  {
    const std::string bad = kDsCallsBegin + ds_call("get_weather", R"({"location": "Paris")") + kDsCallsEnd;
    v.push_back({"deepseek_malformed_json", F::DeepSeekR1, bad, bad, "", {}, true});
    const std::string trunc = kDsCallsBegin + kDsCallBegin + "function" + kDsSep + "get_weather\n```json\n{\"loc";
    v.push_back({"deepseek_truncated", F::DeepSeekR1, trunc, trunc, "", {}, true});
  }
  v.push_back(
      {"deepseek_missing_outer_end", F::DeepSeekR1, kDsCallsBegin + ds_call("get_weather", paris), "", "", {weather}});
  v.push_back({"deepseek_underscore_tokens",
               F::DeepSeekR1,
               "<｜tool_calls_begin｜><｜tool_call_begin｜>function<｜tool_sep｜>get_weather\n```json\n" + paris +
                   "\n```<｜tool_call_end｜><｜tool_calls_end｜>",
               "",
               "",
               {weather}});
  v.push_back({"deepseek_no_fence",
               F::DeepSeekR1,
               kDsCallsBegin + kDsCallBegin + "function" + kDsSep + "get_weather\n" + paris + kDsCallEnd + kDsCallsEnd,
               "",
               "",
               {weather}});

  // ---- Functionary v3.2 (the prompt ends with ">>>") ----
  v.push_back({"fv32_one_call", F::FunctionaryV32, "get_weather\n" + paris, "", "", {weather}});
  v.push_back({"fv32_two_calls",
               F::FunctionaryV32,
               "get_weather\n" + paris + ">>>get_time\n" + tokyo,
               "",
               "",
               {weather, time_tokyo}});
  v.push_back({"fv32_text_then_call",
               F::FunctionaryV32,
               "all\nLet me check the weather.\n>>>get_weather\n" + paris,
               "Let me check the weather.",
               "",
               {weather}});
  v.push_back({"fv32_call_then_text",
               F::FunctionaryV32,
               "get_weather\n" + paris + ">>>all\nIt is sunny.",
               "It is sunny.",
               "",
               {weather}});
  v.push_back({"fv32_no_call", F::FunctionaryV32, "all\nParis is the capital of France.",
               "Paris is the capital of France.", ""});
  v.push_back({"fv32_plain_text_no_header", F::FunctionaryV32, "Hello there! >>> is a prompt.",
               "Hello there! >>> is a prompt.", ""});
  v.push_back({"fv32_leading_marker", F::FunctionaryV32, ">>>all\nHi.", "Hi.", ""});
  {
    const std::string bad = "get_weather\n{\"location\": \"Paris\"";
    v.push_back({"fv32_malformed", F::FunctionaryV32, bad, bad, "", {}, true});
  }
  v.push_back({"fv32_python_code",
               F::FunctionaryV32,
               "python\nprint(1 + 1)",
               "",
               "",
               {{"python", R"J({"code":"print(1 + 1)"})J", ""}}});
  {
    Case c{"fv32_no_tools", F::FunctionaryV32, "all\nNo tools here.", "No tools here.", ""};
    c.tools = false;
    v.push_back(c);
  }

  // ---- Functionary v3.1 ----
  v.push_back(
      {"fv31_one_call", F::FunctionaryV31, "<function=get_weather>" + paris + "</function>", "", "", {weather}});
  v.push_back({"fv31_two_calls",
               F::FunctionaryV31,
               "<function=get_weather>" + paris + "</function><function=get_time>" + tokyo + "</function>",
               "",
               "",
               {weather, time_tokyo}});
  v.push_back({"fv31_text_then_call",
               F::FunctionaryV31,
               "Checking. <function=get_weather>" + paris + "</function>",
               "Checking.",
               "",
               {weather}});
  v.push_back({"fv31_no_call", F::FunctionaryV31, "Paris.", "Paris.", ""});
  {
    const std::string bad = "<function=get_weather>" + paris;
    v.push_back({"fv31_missing_close", F::FunctionaryV31, bad, bad, "", {}, true});
  }
  v.push_back({"fv31_python_tag",
               F::FunctionaryV31,
               "<|python_tag|>print('hi')",
               "",
               "",
               {{"python", R"J({"code":"print('hi')"})J", ""}}});

  // ---- Firefunction v2 ----
  v.push_back({"firefunction_one_call",
               F::Firefunction,
               R"( functools[{"name": "get_weather", "arguments": {"location": "Paris"}}])",
               "",
               "",
               {weather}});
  v.push_back(
      {"firefunction_two_calls",
       F::Firefunction,
       R"(functools[{"name": "get_weather", "arguments": {"location": "Paris"}}, {"name": "get_time", "arguments": {"location": "Tokyo"}}])",
       "",
       "",
       {weather, time_tokyo}});
  v.push_back({"firefunction_text_then_call",
               F::Firefunction,
               R"(Sure. functools[{"name": "get_weather", "arguments": {"location": "Paris"}}])",
               "Sure.",
               "",
               {weather}});
  v.push_back({"firefunction_no_call", F::Firefunction, "Warsaw is the capital of Poland.",
               "Warsaw is the capital of Poland.", ""});
  {
    const std::string bad = R"(functools[{"name": "get_weather", "arguments": {"location": "Paris"}})";
    v.push_back({"firefunction_malformed", F::Firefunction, bad, bad, "", {}, true});
  }

  // ---- Command R7B ----
  v.push_back({"r7b_one_call",
               F::CommandR7B,
               "<|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[\n    {\"tool_call_id\": "
               "\"0\", \"tool_name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\"}}\n]<|END_ACTION|>",
               "",
               "I will look up the weather.",
               {weather}});
  v.push_back(
      {"r7b_two_calls",
       F::CommandR7B,
       "<|START_ACTION|>[\n    {\"tool_call_id\": \"0\", \"tool_name\": \"get_weather\", \"parameters\": "
       "{\"location\": \"Paris\"}},\n    {\"tool_call_id\": \"1\", \"tool_name\": \"get_time\", \"parameters\": "
       "{\"location\": \"Tokyo\"}}\n]<|END_ACTION|>",
       "",
       "",
       {weather, time_tokyo}});
  v.push_back({"r7b_response", F::CommandR7B, "<|START_RESPONSE|>It is sunny in Paris.<|END_RESPONSE|>",
               "It is sunny in Paris.", ""});
  v.push_back({"r7b_thinking_response", F::CommandR7B,
               "<|START_THINKING|>Easy.<|END_THINKING|><|START_RESPONSE|>Paris.<|END_RESPONSE|>", "Paris.", "Easy."});
  {
    const std::string bad = "<|START_ACTION|>[{\"tool_name\": \"get_weather\"]<|END_ACTION|>";
    v.push_back({"r7b_malformed", F::CommandR7B, bad, bad, "", {}, true});
    Case c{"r7b_reasoning_none", F::CommandR7B, "<|START_THINKING|>Easy.<|END_THINKING|><|START_RESPONSE|>Paris.",
           "<|START_THINKING|>Easy.<|END_THINKING|>Paris.", ""};
    c.reasoning_on = false;
    v.push_back(c);
  }

  // ---- Generic ----
  v.push_back({"generic_one_call",
               F::Generic,
               R"({"tool_call": {"name": "get_weather", "arguments": {"location": "Paris"}}})",
               "",
               "",
               {weather}});
  v.push_back(
      {"generic_two_calls",
       F::Generic,
       R"({"tool_calls": [{"name": "get_weather", "arguments": {"location": "Paris"}}, {"name": "get_time", "arguments": {"location": "Tokyo"}, "id": "t2"}]})",
       "",
       "",
       {weather, {"get_time", R"({"location":"Tokyo"})", "t2"}}});
  v.push_back({"generic_response", F::Generic, R"({"response": "Paris is the capital of France."})",
               "Paris is the capital of France.", ""});
  v.push_back({"generic_response_pretty_escapes", F::Generic,
               "{\n  \"response\": \"Line 1\\nS\\u00e9n \\\"quoted\\\" \\ud83d\\ude00 \\\\ end \"\n}\n",
               "Line 1\nSén \"quoted\" 😀 \\ end ", ""});
  v.push_back({"generic_response_not_string", F::Generic, R"({"response": {"name": "Alice", "age": 30}})",
               R"({"name":"Alice","age":30})", ""});
  v.push_back({"generic_response_unterminated", F::Generic, R"({"response": "Hello wor)", "Hello wor", ""});
  v.push_back(
      {"generic_plain_text", F::Generic, "Paris is the capital of France.", "Paris is the capital of France.", ""});
  v.push_back({"generic_other_json", F::Generic, R"({"answer": 42})", R"({"answer": 42})", ""});
  {
    const std::string bad = R"({"tool_call": {"name": "get_weather", "arguments": {"location": "Paris"}})";
    v.push_back({"generic_malformed", F::Generic, bad, bad, "", {}, true});
  }
  v.push_back({"generic_reasoning_then_call",
               F::Generic,
               "<think>tool time</think>" +
                   std::string(R"({"tool_call": {"name": "get_weather", "arguments": {"location": "Paris"}}})"),
               "",
               "tool time",
               {weather}});

  // ---- None ----
  v.push_back({"none_reasoning_answer", F::None, "<think>\nhmm\n</think>\nAnswer: 4", "Answer: 4", "hmm"});
  v.push_back(
      {"none_call_text_is_content", F::None, hermes_call("get_weather", paris), hermes_call("get_weather", paris), ""});
  return v;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

ParseOptions options_of(const Case& c) {
  ParseOptions o;
  o.format = c.format;
  o.parse_tools = c.tools;
  o.reasoning = c.reasoning_on;
  o.reasoning_open_at_start = c.open_at_start;
  o.id_seed = 12345;
  return o;
}

// The tags the parser acts on for a case (its format's triggers, and the reasoning tags when they stay in content):
// where one of them ends up in content verbatim (a call that did not parse), it is shown in one piece, never
// started in one delta and finished in the next.
std::vector<std::string> acted_on_tags(const Case& c) {
  std::vector<std::string> t;
  if (c.tools) {
    switch (c.format) {
      case F::Hermes: t = {"<tool_call>"}; break;
      case F::Llama3: t = {"<|python_tag|>"}; break;
      case F::MistralNemo: t = {"[TOOL_CALLS]"}; break;
      case F::DeepSeekR1: t = {kDsCallsBegin, kDsCallBegin}; break;
      case F::FunctionaryV31: t = {"<function=", "<|python_tag|>"}; break;
      case F::Firefunction: t = {"functools["}; break;
      case F::CommandR7B: t = {"<|START_ACTION|>"}; break;
      default: break;
    }
  }
  if (c.format == F::FunctionaryV32) t.push_back(">>>");
  if (!c.reasoning_on) {
    t.push_back("<think>");
    t.push_back("</think>");
  }
  return t;
}

// What the brief calls a partial tag: never in a delta unless the final text has it too.
const std::vector<std::string> kPartialTags = {"<tool",  "<thi",      "</thi",   "[TOOL", "<|python",
                                               "<funct", "functools", "<|START", "<|END", "<｜tool"};

struct Run {
  ParsedMessage msg;
  std::vector<ChatDelta> deltas;
};

Run run_pieces(const std::vector<std::string_view>& pieces, const ParseOptions& o) {
  Run r;
  ChatOutputParser p(o);
  for (auto piece : pieces) r.deltas.push_back(p.push(piece));
  r.deltas.push_back(p.finish());
  r.msg = p.message();
  return r;
}

std::string describe(const ParsedMessage& m) {
  std::string s = "content=[" + m.content + "] reasoning=[" + m.reasoning_content +
                  "] unparsed=" + std::to_string(m.unparsed_tool_call);
  for (const auto& c : m.tool_calls) s += " call{" + c.id + " " + c.name + " " + c.arguments + "}";
  return s;
}

bool same(const ParsedMessage& a, const ParsedMessage& b) {
  if (a.content != b.content || a.reasoning_content != b.reasoning_content ||
      a.unparsed_tool_call != b.unparsed_tool_call || a.tool_calls.size() != b.tool_calls.size())
    return false;
  for (size_t i = 0; i < a.tool_calls.size(); ++i)
    if (a.tool_calls[i].id != b.tool_calls[i].id || a.tool_calls[i].name != b.tool_calls[i].name ||
        a.tool_calls[i].arguments != b.tool_calls[i].arguments)
      return false;
  return true;
}

// "" when the run is consistent with the whole-text message, else what is wrong.
std::string check_run(const Run& r, const ParsedMessage& whole, const std::vector<std::string>& tags) {
  if (!same(r.msg, whole))
    return "message differs from the whole-text parse: " + describe(r.msg) + " vs " + describe(whole);
  std::string content, reasoning;
  std::vector<std::string> args, names, ids;
  for (const auto& d : r.deltas) {
    // A tag must not be cut by a delta boundary: the delta must not end with the start of a tag that the
    // content goes on to complete.
    const size_t end = content.size() + d.content.size();
    for (const auto& tag : tags)
      for (size_t n = 1; n < tag.size() && n <= d.content.size() && end <= whole.content.size(); ++n)
        if (d.content.compare(d.content.size() - n, n, tag, 0, n) == 0 &&
            whole.content.compare(end - n, tag.size(), tag) == 0)
          return "a delta ends inside the tag " + tag + ": [" + d.content + "]";
    for (const auto& p : kPartialTags) {
      if (whole.content.find(p) == std::string::npos && d.content.find(p) != std::string::npos)
        return "a content delta shows a partial tag: [" + d.content + "]";
      if (whole.reasoning_content.find(p) == std::string::npos && d.reasoning_content.find(p) != std::string::npos)
        return "a reasoning delta shows a partial tag: [" + d.reasoning_content + "]";
    }
    content += d.content;
    reasoning += d.reasoning_content;
    for (const auto& t : d.tool_calls) {
      if (t.index < 0 || t.index > static_cast<int>(args.size())) return "tool delta index out of order";
      if (t.index == static_cast<int>(args.size())) {
        args.emplace_back();
        names.push_back(t.name);
        ids.push_back(t.id);
      }
      args[t.index] += t.arguments_part;
    }
  }
  if (content != r.msg.content) return "content deltas [" + content + "] != message [" + r.msg.content + "]";
  if (reasoning != r.msg.reasoning_content) return "reasoning deltas != message: [" + reasoning + "]";
  if (args.size() != r.msg.tool_calls.size()) return "tool deltas give " + std::to_string(args.size()) + " calls";
  for (size_t i = 0; i < args.size(); ++i)
    if (args[i] != r.msg.tool_calls[i].arguments || names[i] != r.msg.tool_calls[i].name ||
        ids[i] != r.msg.tool_calls[i].id)
      return "tool deltas differ from call " + std::to_string(i);
  return "";
}

// Whole UTF-8 characters.
std::vector<std::string_view> utf8_chars(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = 1;
    while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

class ChatParseCase : public ::testing::TestWithParam<Case> {};

TEST_P(ChatParseCase, WholeText) {
  const Case& c = GetParam();
  const ParsedMessage m = parse_chat_output(c.text, options_of(c));
  EXPECT_EQ(m.content, c.content);
  EXPECT_EQ(m.reasoning_content, c.reasoning);
  EXPECT_EQ(m.unparsed_tool_call, c.unparsed);
  ASSERT_EQ(m.tool_calls.size(), c.calls.size()) << describe(m);
  std::set<std::string> ids;
  for (size_t i = 0; i < c.calls.size(); ++i) {
    EXPECT_EQ(m.tool_calls[i].name, c.calls[i].name);
    EXPECT_EQ(m.tool_calls[i].arguments, c.calls[i].arguments);
    if (!c.calls[i].id.empty()) {
      EXPECT_EQ(m.tool_calls[i].id, c.calls[i].id);
    }
    EXPECT_FALSE(m.tool_calls[i].id.empty());
    ids.insert(m.tool_calls[i].id);
  }
  EXPECT_EQ(ids.size(), c.calls.size()) << "ids are not unique";
}

TEST_P(ChatParseCase, EveryTwoPieceSplit) {
  const Case& c = GetParam();
  const ParseOptions o = options_of(c);
  const ParsedMessage whole = parse_chat_output(c.text, o);
  const std::string_view t = c.text;
  for (size_t i = 0; i <= t.size(); ++i) {
    const std::string err = check_run(run_pieces({t.substr(0, i), t.substr(i)}, o), whole, acted_on_tags(c));
    ASSERT_EQ(err, "") << "split at byte " << i << " of " << c.text;
  }
}

TEST_P(ChatParseCase, OneCharacterAtATime) {
  const Case& c = GetParam();
  const ParseOptions o = options_of(c);
  const ParsedMessage whole = parse_chat_output(c.text, o);
  ASSERT_EQ(check_run(run_pieces(utf8_chars(c.text), o), whole, acted_on_tags(c)), "") << "characters";
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < c.text.size(); ++i) bytes.push_back(std::string_view(c.text).substr(i, 1));
  ASSERT_EQ(check_run(run_pieces(bytes, o), whole, acted_on_tags(c)), "") << "bytes";
}

TEST_P(ChatParseCase, RandomSplits) {
  const Case& c = GetParam();
  const ParseOptions o = options_of(c);
  const ParsedMessage whole = parse_chat_output(c.text, o);
  const auto chars = utf8_chars(c.text);
  std::mt19937 rng(std::hash<std::string>()(c.name));
  for (int trial = 0; trial < 40; ++trial) {
    std::vector<std::string_view> pieces;
    size_t i = 0;
    size_t byte = 0;
    while (i < chars.size()) {
      const size_t n = std::min<size_t>(chars.size() - i, 1 + rng() % (trial % 2 ? 3 : 12));
      size_t len = 0;
      for (size_t k = 0; k < n; ++k) len += chars[i + k].size();
      pieces.push_back(std::string_view(c.text).substr(byte, len));
      byte += len;
      i += n;
      if (rng() % 5 == 0) pieces.push_back(std::string_view());  // empty pushes are fine too
    }
    ASSERT_EQ(check_run(run_pieces(pieces, o), whole, acted_on_tags(c)), "") << "trial " << trial;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, ChatParseCase, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// ---- streaming behaviour ----

ParseOptions opts(F f, std::uint64_t seed = 1) {
  ParseOptions o;
  o.format = f;
  o.id_seed = seed;
  return o;
}

TEST(ChatParseStream, ContentIsShownAtOnceAndTagsAreHeld) {
  ChatOutputParser p(opts(F::Hermes));
  EXPECT_EQ(p.push("The weather").content, "The weather");
  EXPECT_EQ(p.push(" is").content, " is");
  EXPECT_EQ(p.push(" <").content, "");    // could start <tool_call>
  EXPECT_EQ(p.push("b").content, " <b");  // it did not
  EXPECT_EQ(p.push(" ok\n<tool").content, " ok");
  ChatDelta d = p.push("_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}\n");
  EXPECT_TRUE(d.empty());
  d = p.push("</tool_call>");  // the call is emitted as soon as its block closes, before finish()
  ASSERT_EQ(d.tool_calls.size(), 1u);
  EXPECT_EQ(d.tool_calls[0].index, 0);
  EXPECT_EQ(d.tool_calls[0].name, "get_weather");
  EXPECT_EQ(d.tool_calls[0].arguments_part, R"({"location":"Paris"})");
  EXPECT_EQ(d.tool_calls[0].id.rfind("call_", 0), 0u);
  EXPECT_TRUE(d.content.empty());  // the newline before the call was dropped
  EXPECT_TRUE(p.finish().empty());
  EXPECT_EQ(p.message().content, "The weather is <b ok");
}

TEST(ChatParseStream, ReasoningStreamsAndThinkTagIsHeld) {
  ChatOutputParser p(opts(F::Hermes));
  EXPECT_TRUE(p.push("<thi").empty());
  EXPECT_TRUE(p.push("nk>\n").empty());
  EXPECT_EQ(p.push("Let me think").reasoning_content, "Let me think");
  ChatDelta d = p.push(" more.\n</th");
  EXPECT_EQ(d.reasoning_content, " more.");
  EXPECT_TRUE(d.content.empty());
  d = p.push("ink>\n\nHello");
  EXPECT_EQ(d.reasoning_content, "");
  EXPECT_EQ(d.content, "Hello");
  p.finish();
  EXPECT_EQ(p.message().reasoning_content, "Let me think more.");
  EXPECT_EQ(p.message().content, "Hello");
}

TEST(ChatParseStream, GenericResponseStreams) {
  ChatOutputParser p(opts(F::Generic));
  EXPECT_TRUE(p.push("{\"resp").empty());
  EXPECT_EQ(p.push("onse\": \"Hel").content, "Hel");
  EXPECT_EQ(p.push("lo \\u00").content, "lo");  // the escape waits for its digits, the space for what follows
  EXPECT_EQ(p.push("e9!\"}").content, " é!");
  EXPECT_TRUE(p.finish().empty());
  EXPECT_EQ(p.message().content, "Hello é!");
}

TEST(ChatParseStream, PushAfterFinishThrows) {
  ChatOutputParser p(opts(F::Hermes));
  p.push("x");
  p.finish();
  EXPECT_THROW(p.push("y"), Error);
  EXPECT_TRUE(p.finish().empty());
}

TEST(ChatParseStream, LongArgumentsAreLinear) {
  // A 300 KB argument streamed 3 bytes at a time: the block is re-examined after every push, so this only
  // finishes quickly if re-examining resumes instead of rescanning (the JSON scan is incremental).
  std::string body(300000, 'x');
  for (size_t i = 0; i < body.size(); i += 97) body[i] = ' ';
  const std::string text =
      "<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"text\": \"" + body + "\"}}\n</tool_call>";
  const auto t0 = std::chrono::steady_clock::now();
  ChatOutputParser p(opts(F::Hermes));
  for (size_t i = 0; i < text.size(); i += 3) p.push(std::string_view(text).substr(i, 3));
  p.finish();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(p.message().tool_calls.size(), 1u);
  EXPECT_EQ(p.message().tool_calls[0].arguments.size(), body.size() + 11);  // {"text":"..."}
  EXPECT_LT(s, test::kAddressSanitizer ? 60.0 : 10.0);
}

// ---- ids ----

bool alnum(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); });
}

TEST(ChatParseIds, ShapeStabilityAndUniqueness) {
  const std::string two = hermes_call("a", "{}") + hermes_call("b", "{}");
  const ParsedMessage m1 = parse_chat_output(two, opts(F::Hermes, 42));
  const ParsedMessage m2 = parse_chat_output(two, opts(F::Hermes, 42));
  ASSERT_EQ(m1.tool_calls.size(), 2u);
  for (const auto& c : m1.tool_calls) {
    ASSERT_EQ(c.id.size(), 5u + 24u);
    EXPECT_EQ(c.id.substr(0, 5), "call_");
    EXPECT_TRUE(alnum(c.id.substr(5)));
  }
  EXPECT_NE(m1.tool_calls[0].id, m1.tool_calls[1].id);
  EXPECT_EQ(m1.tool_calls[0].id, m2.tool_calls[0].id);  // same seed, same ids
  // Seed 0: each parser draws a fresh seed, so ids differ between requests.
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    const ParsedMessage m = parse_chat_output(two, opts(F::Hermes, 0));
    for (const auto& c : m.tool_calls) seen.insert(c.id);
  }
  EXPECT_EQ(seen.size(), 100u);

  const ParsedMessage mi = parse_chat_output(
      R"([TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}, "id": "too-long-id"}])",
      opts(F::MistralNemo));
  ASSERT_EQ(mi.tool_calls.size(), 2u);
  for (const auto& c : mi.tool_calls) {
    EXPECT_EQ(c.id.size(), 9u);
    EXPECT_TRUE(alnum(c.id)) << c.id;
  }
}

// ---- names ----

TEST(ChatParseNames, RoundTrip) {
  for (F f : {F::None, F::Generic, F::Hermes, F::Llama3, F::MistralNemo, F::DeepSeekR1, F::FunctionaryV32,
              F::FunctionaryV31, F::Firefunction, F::CommandR7B})
    EXPECT_EQ(format_from_name(format_name(f)), f) << format_name(f);
  EXPECT_STREQ(format_name(F::DeepSeekR1), "deepseek-r1");
  try {
    format_from_name("qwen9");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qwen9"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("hermes"), std::string::npos);
  }
}

// ---- detection on the shared chat templates ----

TEST(ChatParseDetect, AllSharedTemplates) {
  const std::map<std::string, std::pair<F, bool>> expected = {
      {"CohereForAI-c4ai-command-r-plus-tool_use.jinja", {F::Generic, false}},
      {"CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", {F::CommandR7B, false}},
      {"NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", {F::Hermes, false}},
      {"NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", {F::Hermes, false}},
      {"Qwen-Qwen2.5-7B-Instruct.jinja", {F::Hermes, false}},
      {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", {F::DeepSeekR1, true}},
      {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", {F::DeepSeekR1, true}},
      {"fireworks-ai-llama-3-firefunction-v2.jinja", {F::Firefunction, false}},
      {"google-gemma-2-2b-it.jinja", {F::Generic, false}},
      {"llama-cpp-deepseek-r1.jinja", {F::DeepSeekR1, true}},
      {"meetkai-functionary-medium-v3.1.jinja", {F::FunctionaryV31, false}},
      {"meetkai-functionary-medium-v3.2.jinja", {F::FunctionaryV32, false}},
      {"meta-llama-Llama-3.1-8B-Instruct.jinja", {F::Llama3, false}},
      {"meta-llama-Llama-3.2-3B-Instruct.jinja", {F::Llama3, false}},
      {"meta-llama-Llama-3.3-70B-Instruct.jinja", {F::Llama3, false}},
      {"microsoft-Phi-3.5-mini-instruct.jinja", {F::Generic, false}},
      {"mistralai-Mistral-Nemo-Instruct-2407.jinja", {F::MistralNemo, false}},
  };
  const std::string dir = test::data_path("chat-templates");
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".jinja") continue;
    const std::string name = e.path().filename().string();
    auto it = expected.find(name);
    ASSERT_NE(it, expected.end()) << "a template this test does not know: " << name;
    const std::string src = test::read_file(e.path().string());
    EXPECT_EQ(format_name(detect_format(src)), std::string(format_name(it->second.first))) << name;
    EXPECT_EQ(detect_reasoning_open(src), it->second.second) << name;
    ++n;
  }
  EXPECT_EQ(n, expected.size());
}

TEST(ChatParseDetect, SmallTemplates) {
  EXPECT_EQ(detect_format(""), F::Generic);
  EXPECT_EQ(detect_format("{{ '<|start_header_id|>' }} hello"), F::Generic);  // Llama 3 without tool support
  EXPECT_FALSE(
      detect_reasoning_open("{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
                            "{{ '<think>' }}"));
  EXPECT_TRUE(
      detect_reasoning_open("{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"));
}

}  // namespace
}  // namespace lokal
