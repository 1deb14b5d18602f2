// The chat layer end to end through the binary: `lokal template`, `lokal chat -p` (tool calls, reasoning, JSON
// answers on tinychat, a real trained chat model), `lokal run` with special tokens in the prompt and with grammars
// and JSON schemas (every constrained output parses and validates, on models whose free output is not JSON), and
// the refusals of bad input (one clear line each).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "support/test_data.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using lokal::test::data_path;
using lokal::test::expect_one_line_error;
using lokal::test::run_lokal;

namespace {

std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out.push_back(c);
  }
  return out + "'";
}

std::string tinychat() { return data_path("models/real/tinychat-4m-q8_0.gguf"); }
std::string tinytales() { return data_path("models/real/tinytales-4m-q8_0.gguf"); }

const json kWeatherTool = json::array({{{"type", "function"},
                                        {"function",
                                         {{"name", "get_weather"},
                                          {"description", "Get the current weather for a city."},
                                          {"parameters",
                                           {{"type", "object"},
                                            {"properties", {{"city", {{"type", "string"}, {"description", "City name"}}}}},
                                            {"required", json::array({"city"})}}}}}}});

// The subset of JSON Schema the tests use: type, properties, required, additionalProperties false, enum, items,
// minItems/maxItems.
bool validates(const json& v, const json& s, std::string& why) {
  if (s.contains("enum")) {
    for (const json& e : s["enum"])
      if (e == v) return true;
    why = v.dump() + " not in enum";
    return false;
  }
  const std::string type = s.value("type", "");
  if (type == "object") {
    if (!v.is_object()) return why = v.dump() + " is not an object", false;
    for (const json& r : s.value("required", json::array()))
      if (!v.contains(r.get<std::string>())) return why = "missing " + r.dump(), false;
    const json props = s.value("properties", json::object());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (props.contains(it.key())) {
        if (!validates(it.value(), props[it.key()], why)) return false;
      } else if (s.contains("additionalProperties") && s["additionalProperties"] == false) {
        return why = "extra property " + it.key(), false;
      }
    }
    return true;
  }
  if (type == "array") {
    if (!v.is_array()) return why = v.dump() + " is not an array", false;
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return why = "too few items", false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return why = "too many items", false;
    for (const json& e : v)
      if (s.contains("items") && !validates(e, s["items"], why)) return false;
    return true;
  }
  if (type == "string") return v.is_string() || (why = v.dump() + " is not a string", false);
  if (type == "integer") return v.is_number_integer() || (why = v.dump() + " is not an integer", false);
  if (type == "number") return v.is_number() || (why = v.dump() + " is not a number", false);
  if (type == "boolean") return v.is_boolean() || (why = v.dump() + " is not a boolean", false);
  if (type == "null") return v.is_null() || (why = v.dump() + " is not null", false);
  return true;
}

}  // namespace

TEST(TemplateCli, RendersTheModelsTemplateAndCountsSpecialTokens) {
  lokal::test::TempDir dir;
  const json g = json::parse(lokal::test::read_file(data_path("golden/chat-templates.json")));
  const std::string msgs = dir.file("m.json");
  std::ofstream(msgs) << g["conversations"]["system_user"]["messages"].dump();
  std::string want;
  for (const json& e : g["entries"])
    if (e["template"] == "Qwen-Qwen2.5-7B-Instruct.jinja" && e["conversation"] == "system_user") want = e["rendered"];
  ASSERT_FALSE(want.empty());

  auto r = run_lokal("template " + q(tinychat()) + " --messages " + q(msgs));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, want);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("prompt: (\\d+) tokens \\(special tokens parsed\\)"))) << r.err;
  const int parsed = std::stoi(m[1]);
  EXPECT_NE(r.err.find("tool-call format hermes"), std::string::npos) << r.err;
  r = run_lokal("template " + q(tinychat()) + " --messages " + q(msgs) + " --no-parse-special");
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex("prompt: (\\d+) tokens"))) << r.err;
  EXPECT_GT(std::stoi(m[1]), parsed + 10);  // each <|im_start|> / <|im_end|> becomes several text pieces

  // The same through the template file, an inline OpenAI request body, and a built-in template.
  r = run_lokal("template " + q(data_path("chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja")) + " --messages " +
                q(json{{"messages", g["conversations"]["system_user"]["messages"]}}.dump()));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, want);
  r = run_lokal("template --chat-template chatml --no-generation-prompt --messages " +
                q(R"([{"role":"user","content":"Hi"}])"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "<|im_start|>user\nHi<|im_end|>\n");
  // Extra variables reach the template.
  r = run_lokal("template --chat-template " + q(dir.file("t.jinja")) + " --messages '[{\"role\":\"user\",\"content\":\"x\"}]'");
  expect_one_line_error(r, "unknown chat template");
  std::ofstream(dir.file("t.jinja")) << "{{ greeting }} {{ messages | length }}{% if enable_thinking is false %} no-think{% endif %}";
  r = run_lokal("template " + q(dir.file("t.jinja")) +
                " --messages '[{\"role\":\"user\",\"content\":\"x\"}]' --kwargs '{\"greeting\": \"hey\", \"enable_thinking\": false}'");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "hey 1 no-think");
}

TEST(TemplateCli, BadInputIsOneClearLine) {
  lokal::test::TempDir dir;
  const std::string one = q(R"([{"role":"user","content":"x"}])");
  // A model without a template.
  expect_one_line_error(run_lokal("template " + q(tinytales()) + " --messages " + one),
                        "has no chat template (tokenizer.chat_template); give one with --chat-template", true);
  expect_one_line_error(run_lokal("template " + q(tinychat()) + " --messages '[{\"role\":\"robot\",\"content\":\"x\"}]'"),
                        "message 1: unknown role 'robot'", true);
  expect_one_line_error(run_lokal("template " + q(tinychat()) +
                                  " --messages '[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"tool\",\"content\":\"18\"}]'"),
                        "message 2: a tool message must follow an assistant message with tool_calls", true);
  expect_one_line_error(run_lokal("template " + q(tinychat()) + " --messages '[{\"role\":'"), "--messages: the JSON given is not valid JSON", true);
  expect_one_line_error(run_lokal("template " + q(tinychat()) + " --messages " + q(dir.file("none.json"))), "no such file", true);
  // A template that raises, and one that does not parse: the message names the template and the line.
  expect_one_line_error(run_lokal("template " + q(data_path("chat-templates/google-gemma-2-2b-it.jinja")) +
                                  " --messages '[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"x\"}]'"),
                        "System role not supported", true);
  std::ofstream(dir.file("bad.jinja")) << "line one\n{% for x in %}\n";
  auto r = run_lokal("template " + q(dir.file("bad.jinja")) + " --messages " + one);
  expect_one_line_error(r, "bad.jinja", true);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  // An endless loop and an output bomb end quickly with a clear error.
  std::ofstream(dir.file("loop.jinja")) << "{% for i in range(1000000000) %}{% for j in range(1000000000) %}{% endfor %}{% endfor %}";
  expect_one_line_error(run_lokal("template " + q(dir.file("loop.jinja")) + " --messages " + one), "loop.jinja", true);
  std::ofstream(dir.file("bomb.jinja")) << "{% set s = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}{% for i in range(100000000) %}{{ s }}{% endfor %}";
  expect_one_line_error(run_lokal("template " + q(dir.file("bomb.jinja")) + " --messages " + one), "bomb.jinja", true);
}

// tinychat writes <|im_start|> as one token in the prompt, like llama.cpp: the raw prompt gives the same answer as
// the chat does; with --no-parse-special the model sees text pieces and answers something else.
TEST(RunCli, SpecialTokensInThePromptAreTheTokensTheyName) {
  // The prompt the chat renders (the Qwen2.5 template adds its default system message).
  auto tpl = run_lokal("template " + q(tinychat()) + " --messages " +
                       q(R"([{"role":"user","content":"What is the capital of France?"}])"));
  ASSERT_EQ(tpl.rc, 0) << tpl.err;
  const std::string prompt = tpl.out;
  ASSERT_NE(prompt.find("<|im_start|>assistant\n"), std::string::npos) << prompt;
  auto parsed = run_lokal("run -m " + q(tinychat()) + " --temp 0 -n 24 -p " + q(prompt));
  ASSERT_EQ(parsed.rc, 0) << parsed.err;
  EXPECT_NE(parsed.out.find("Paris"), std::string::npos) << parsed.out;
  EXPECT_NE(parsed.err.find("stop: eog"), std::string::npos) << parsed.err;
  auto chat = run_lokal("chat -m " + q(tinychat()) + " --temp 0 -p " + q("What is the capital of France?"));
  ASSERT_EQ(chat.rc, 0) << chat.err;
  EXPECT_EQ(chat.out, parsed.out);
  auto plain = run_lokal("run -m " + q(tinychat()) + " --temp 0 -n 24 --no-parse-special -p " + q(prompt));
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_NE(plain.out, parsed.out);
}

// --ignore-eos bans the end-of-generation tokens: the answer that ended at <|im_end|> now runs to -n; --logit-bias
// steers greedy decoding and names a bad token or syntax in one line.
TEST(RunCli, IgnoreEosAndLogitBias) {
  const std::string prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
  auto ended = run_lokal("run -m " + q(tinychat()) + " --temp 0 -n 64 -p " + q(prompt));
  ASSERT_EQ(ended.rc, 0) << ended.err;
  EXPECT_NE(ended.err.find("stop: eog"), std::string::npos) << ended.err;
  auto longer = run_lokal("run -m " + q(tinychat()) + " --temp 0 -n 64 --ignore-eos -p " + q(prompt));
  ASSERT_EQ(longer.rc, 0) << longer.err;
  EXPECT_EQ(longer.err.find("stop: eog"), std::string::npos) << longer.err;
  EXPECT_NE(longer.err.find("stop: length"), std::string::npos) << longer.err;
  EXPECT_EQ(longer.out.rfind(ended.out, 0), 0u) << "greedy text up to the end token is unchanged";
  EXPECT_GT(longer.out.size(), ended.out.size());
  // The sampler's handling of biases is tested in test_sampling; here: the flag reaches it (a ban of every
  // end token equals --ignore-eos), and bad values are one clear error.
  auto banned = run_lokal("run -m " + q(tinychat()) + " --temp 0 -n 64 -l " + q("4-inf") /* <|im_end|>, tinychat's eos (lokal info) */ +
                          " -p " + q(prompt));
  ASSERT_EQ(banned.rc, 0) << banned.err;
  EXPECT_EQ(banned.out, longer.out);
  for (const char* bad : {"abc", "5", "99999999+1", "3+x", "3+inf"}) {
    auto r = run_lokal("run -m " + q(tinychat()) + " -n 1 -l " + q(bad) + " -p hi");
    EXPECT_NE(r.rc, 0) << bad;
    EXPECT_NE(r.err.find("--logit-bias"), std::string::npos) << bad << ": " << r.err;
  }
}

TEST(ChatCli, ToolCallIsParsedIntoNameAndArguments) {
  auto r = run_lokal("chat -m " + q(tinychat()) + " --temp 0 --json --tools " + q(kWeatherTool.dump()) +
                     " -p " + q("What's the weather in Tokyo?"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const json m = json::parse(r.out);
  ASSERT_TRUE(m.contains("tool_calls")) << r.out;
  ASSERT_EQ(m["tool_calls"].size(), 1u) << r.out;
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_weather");
  const json args = json::parse(m["tool_calls"][0]["function"]["arguments"].get<std::string>());
  ASSERT_TRUE(args.is_object());
  EXPECT_TRUE(args.contains("city")) << args.dump();  // (the tiny model often gets the city itself wrong)
  EXPECT_EQ(m["finish_reason"], "tool_calls");
  EXPECT_EQ(m["content"], "");
  EXPECT_FALSE(m.contains("unparsed_tool_call"));
  EXPECT_FALSE(m["tool_calls"][0]["id"].get<std::string>().empty());
}

TEST(ChatCli, ForcedToolCallIsACallOfTheOfferedFunction) {
  // Asked about something else, the model would answer in text; tool_choice required forces a call whose
  // arguments match the schema.
  const json tools = json::array(
      {kWeatherTool[0],
       {{"type", "function"},
        {"function",
         {{"name", "add"},
          {"parameters",
           {{"type", "object"},
            {"properties", {{"a", {{"type", "integer"}}}, {"b", {{"type", "integer"}}}}},
            {"required", json::array({"a", "b"})},
            {"additionalProperties", false}}}}}}});
  for (const std::string choice : {"required", "add"}) {
    for (int seed : {1, 2, 3}) {
      auto r = run_lokal("chat -m " + q(tinychat()) + " --seed " + std::to_string(seed) + " --json -n 96 --tools " +
                         q(tools.dump()) + " --tool-choice " + choice + " -p " + q("Tell me a short story about a cat."));
      ASSERT_EQ(r.rc, 0) << r.err;
      const json m = json::parse(r.out);
      ASSERT_TRUE(m.contains("tool_calls")) << r.out;
      for (const json& c : m["tool_calls"]) {
        const std::string name = c["function"]["name"];
        if (choice == "add") { EXPECT_EQ(name, "add"); }
        const json args = json::parse(c["function"]["arguments"].get<std::string>());
        std::string why;
        const json& schema = name == "add" ? tools[1]["function"]["parameters"] : tools[0]["function"]["parameters"];
        EXPECT_TRUE(validates(args, schema, why)) << why << ": " << r.out;
      }
    }
  }
  expect_one_line_error(run_lokal("chat -m " + q(tinychat()) + " --tools " + q(kWeatherTool.dump()) +
                                  " --tool-choice nope -p hi"),
                        "names function 'nope', which is not among the tools offered", true);
}

TEST(ChatCli, ReasoningIsSplitFromTheAnswer) {
  auto r = run_lokal("chat -m " + q(tinychat()) + " --temp 0 --json --system " +
                     q("Think step by step before you answer.") + " -p " + q("What is the capital of Italy?"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const json m = json::parse(r.out);
  ASSERT_TRUE(m.contains("reasoning_content")) << r.out;
  EXPECT_FALSE(m["reasoning_content"].get<std::string>().empty());
  EXPECT_EQ(m["content"].get<std::string>().find("<think>"), std::string::npos) << r.out;
  EXPECT_EQ(m["content"].get<std::string>().find("</think>"), std::string::npos) << r.out;
  EXPECT_FALSE(m["content"].get<std::string>().empty()) << r.out;
  // Text mode: the answer on stdout, the reasoning not at all with --hide-reasoning.
  auto t = run_lokal("chat -m " + q(tinychat()) + " --temp 0 --hide-reasoning --system " +
                     q("Think step by step before you answer.") + " -p " + q("What is the capital of Italy?"));
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_EQ(t.out, m["content"].get<std::string>() + (m["content"].get<std::string>().back() == '\n' ? "" : "\n"));
}

// Grammars and JSON schemas on models whose free output is never JSON: every output parses and validates.
TEST(RunCli, JsonSchemaOutputAlwaysValidates) {
  lokal::test::TempDir dir;
  const json schemas[] = {
      {{"type", "object"},
       {"properties", {{"name", {{"type", "string"}}}, {"age", {{"type", "integer"}}}}},
       {"required", json::array({"name", "age"})},
       {"additionalProperties", false}},
      {{"type", "array"}, {"items", {{"type", "string"}, {"enum", json::array({"red", "green", "blue"})}}},
       {"minItems", 1}, {"maxItems", 3}},
      {{"type", "object"},
       {"properties",
        {{"ok", {{"type", "boolean"}}},
         {"tags", {{"type", "array"}, {"items", {{"type", "string"}}}, {"maxItems", 2}}},
         {"score", {{"type", "number"}}},
         {"inner", {{"type", "object"}, {"properties", {{"n", {{"type", "null"}}}}}, {"required", json::array({"n"})}}}}},
       {"required", json::array({"ok", "inner"})}},
  };
  int runs = 0;
  for (size_t si = 0; si < std::size(schemas); ++si) {
    const std::string file = dir.file("s" + std::to_string(si) + ".json");
    std::ofstream(file) << schemas[si].dump();
    for (const std::string& model : {tinytales(), tinychat()}) {
      for (int seed = 1; seed <= 4; ++seed) {
        auto r = run_lokal("run -m " + q(model) + " --seed " + std::to_string(seed) + " --temp 1.0 -n 200 --json-schema " +
                           q(file) + " -p " + q("Once upon a time"));
        ASSERT_EQ(r.rc, 0) << r.err;
        std::string text = r.out;
        while (!text.empty() && text.back() == '\n') text.pop_back();
        if (r.err.find("stop: eog") == std::string::npos) continue;  // cut by -n: not a whole value yet
        ++runs;
        json v;
        ASSERT_NO_THROW(v = json::parse(text)) << "schema " << si << " seed " << seed << ": " << text;
        std::string why;
        EXPECT_TRUE(validates(v, schemas[si], why)) << why << ": " << text;
      }
    }
  }
  EXPECT_GE(runs, 16);  // most runs end by themselves (the grammar completes, then only end-of-text is allowed)
}

TEST(RunCli, GbnfGrammarFileConstrainsTheOutput) {
  lokal::test::TempDir dir;
  std::ofstream(dir.file("g.gbnf")) << "# yes or no, then a number\nroot ::= answer \" \" num\nanswer ::= \"yes\" | \"no\"\n"
                                       "num ::= [1-9] [0-9]{0,2}\n";
  for (int seed = 1; seed <= 5; ++seed) {
    auto r = run_lokal("run -m " + q(tinytales()) + " --seed " + std::to_string(seed) + " -n 20 --grammar-file " +
                       q(dir.file("g.gbnf")) + " -p " + q("The king said"));
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_TRUE(std::regex_match(r.out, std::regex("(yes|no) [1-9][0-9]{0,2}\n"))) << r.out;
  }
  std::ofstream(dir.file("undef.gbnf")) << "root ::= item+\n";
  expect_one_line_error(run_lokal("run -m " + q(tinytales()) + " --grammar-file " + q(dir.file("undef.gbnf")) + " -p x"),
                        "undefined rule 'item'", true);
  std::ofstream(dir.file("left.gbnf")) << "root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]\n";
  expect_one_line_error(run_lokal("run -m " + q(tinytales()) + " --grammar-file " + q(dir.file("left.gbnf")) + " -p x"),
                        "left recursion", true);
  expect_one_line_error(run_lokal("run -m " + q(tinytales()) + " --json-schema '{\"type\": \"string\", \"not\": {}}' -p x"),
                        "'not'", true);
  expect_one_line_error(run_lokal("run -m " + q(tinytales()) + " --json-schema '{\"type\": ' -p x"),
                        "--json-schema: the JSON given is not valid JSON", true);
}
