// Chat templates as the engine uses them (chat/chat_template.h): message checks, template sources, built-in
// templates, the tool-call forms tried in turn, and special tokens in rendered prompts (tokenizer).
// The Jinja interpreter itself is tested against every golden rendering in test_jinja.cpp.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/error.h"
#include "core/gguf.h"
#include "support/test_data.h"
#include "tokenizer/vocab.h"

using namespace lokal;
using json = nlohmann::ordered_json;

namespace {

json golden() {
  static const json g = json::parse(test::read_file(test::data_path("golden/chat-templates.json")));
  return g;
}

const json& golden_entry(const std::string& tpl, const std::string& conv) {
  static json g = golden();
  for (const json& e : g["entries"])
    if (e["template"] == tpl && e["conversation"] == conv) return e;
  throw std::runtime_error("no golden entry " + tpl + " / " + conv);
}

ChatTemplate template_file(const std::string& file, const json& special) {
  ChatTemplateSource src = resolve_chat_template(test::data_path("chat-templates/" + file), nullptr);
  return ChatTemplate(src, special.value("bos_token", ""), special.value("eos_token", ""));
}

constexpr int64_t kGoldenClock = 1721995200;  // 2024-07-26 12:00:00 UTC, the clock of the golden renderings

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

json user(const std::string& text) { return {{"role", "user"}, {"content", text}}; }

}  // namespace

TEST(ChatMessages, MalformedListsAreRefusedNamingTheMessage) {
  expect_error([] { validate_messages(json::object()); }, "messages must be an array");
  expect_error([] { validate_messages(json::array()); }, "messages is empty");
  expect_error([] { validate_messages(json::array({"hi"})); }, "message 1: must be an object");
  expect_error([] { validate_messages(json::array({user("a"), {{"role", "robot"}, {"content", "x"}}})); },
               "message 2: unknown role 'robot'");
  expect_error([] { validate_messages(json::array({{{"content", "x"}}})); }, "message 1: has no \"role\"");
  expect_error([] { validate_messages(json::array({{{"role", "user"}, {"content", 5}}})); },
               "content must be a string, an array of text parts or null");
  expect_error([] {
    validate_messages(json::array({{{"role", "user"}, {"content", json::array({{{"type", "image_url"}}})}}}));
  }, "content part type 'image_url' is not supported");
  expect_error([] { validate_messages(json::array({user("a"), {{"role", "tool"}, {"content", "18 C"}}})); },
               "message 2: a tool message must follow an assistant message with tool_calls");
  expect_error([] { validate_messages(json::array({user("a"), {{"role", "assistant"}}})); },
               "assistant message has neither content nor tool_calls");
  const json call = {{"role", "assistant"},
                     {"tool_calls", json::array({{{"id", "c1"}, {"type", "function"},
                                                  {"function", {{"name", "f"}, {"arguments", "{}"}}}}})}};
  expect_error([&] { validate_messages(json::array({user("a"), call, {{"role", "tool"}, {"tool_call_id", "c9"}, {"content", "x"}}})); },
               "tool_call_id 'c9' answers no tool call");
  // A user turn in between closes the calls.
  expect_error([&] { validate_messages(json::array({user("a"), call, user("b"), {{"role", "tool"}, {"content", "x"}}})); },
               "message 4: a tool message must follow");
  // Valid: the answer to the call, text parts joined.
  const json ok = validate_messages(json::array(
      {{{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}})}},
       call, {{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "x"}}}));
  EXPECT_EQ(ok[0]["content"], "a\nb");
  expect_error([] { validate_tools(json::array({{{"type", "function"}}})); }, "tool 1: missing \"function\"");
  expect_error([] { validate_tools(json::array({{{"type", "function"}, {"function", {{"description", "x"}}}}})); },
               "tool 1: function has no \"name\"");
}

TEST(ChatTemplateSources, BuiltinsFilesAndRefusals) {
  EXPECT_EQ(builtin_template_names().size(), 6u);
  expect_error([] { builtin_template("nope"); }, "unknown chat template 'nope' (built in: chatml, llama3, llama2");
  expect_error([] { resolve_chat_template("/no/such/template.jinja", nullptr); }, "unknown chat template");
  expect_error([] { resolve_chat_template("", nullptr); }, "no chat template given");
  // A model without a template: the error names the file and both ways out.
  auto g = GGUFFile::open(test::data_path("models/real/tinytales-4m-q8_0.gguf"));
  expect_error([&] { resolve_chat_template("", g.get()); }, "has no chat template (tokenizer.chat_template); give one with --chat-template");

  const json msgs = json::array({{{"role", "system"}, {"content", "Be brief."}}, user("Hi"),
                                 {{"role", "assistant"}, {"content", "Hello!"}}, user("Bye")});
  ChatTemplate chatml(builtin_template("chatml"), "", "");
  EXPECT_EQ(chatml.apply(msgs, nullptr),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
  ChatApplyOptions no_gen;
  no_gen.add_generation_prompt = false;
  EXPECT_EQ(chatml.apply(json::array({user("Hi")}), nullptr, no_gen), "<|im_start|>user\nHi<|im_end|>\n");
  ChatTemplate llama3(builtin_template("llama3"), "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(llama3.apply(json::array({user(" Hi ")}), nullptr),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  ChatTemplate llama2(builtin_template("llama2"), "<s>", "</s>");
  EXPECT_EQ(llama2.apply(msgs, nullptr), "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]");
  ChatTemplate mistral(builtin_template("mistral"), "<s>", "</s>");
  EXPECT_EQ(mistral.apply(msgs, nullptr), "<s>[INST] Be brief.\n\nHi[/INST] Hello!</s>[INST] Bye[/INST]");
  ChatTemplate gemma(builtin_template("gemma"), "<bos>", "<eos>");
  EXPECT_EQ(gemma.apply(msgs, nullptr),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
  ChatTemplate phi3(builtin_template("phi3"), "", "");
  EXPECT_EQ(phi3.apply(json::array({user("Hi")}), nullptr), "<|user|>\nHi<|end|>\n<|assistant|>\n");

  // tokenizer_config.json, both forms.
  test::TempDir dir;
  {
    std::ofstream(dir.file("tokenizer_config.json")) << json{{"chat_template", "{{ messages[0]['content'] }}!"}}.dump();
    ChatTemplate t(resolve_chat_template(dir.file("tokenizer_config.json"), nullptr), "", "");
    EXPECT_EQ(t.apply(json::array({user("x")}), nullptr), "x!");
  }
  {
    std::ofstream(dir.file("list.json")) << json{{"chat_template", json::array({{{"name", "default"}, {"template", "D"}},
                                                                                 {{"name", "tool_use"}, {"template", "T{{ tools | length }}"}}})}}.dump();
    ChatTemplate t(resolve_chat_template(dir.file("list.json"), nullptr), "", "");
    EXPECT_EQ(t.apply(json::array({user("x")}), nullptr), "D");
    const json tools = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
    EXPECT_EQ(t.apply(json::array({user("x")}), tools), "T1");
  }
  {
    std::ofstream(dir.file("bad.json")) << "{\"chat_template\": 5}";
    expect_error([&] { resolve_chat_template(dir.file("bad.json"), nullptr); }, "must be a string or a list");
  }
  // A template that raises: one message naming the template.
  ChatTemplate gem2 = template_file("google-gemma-2-2b-it.jinja", {{"bos_token", "<bos>"}});
  expect_error([&] { gem2.apply(json::array({{{"role", "system"}, {"content", "s"}}, user("x")}), nullptr); },
               "System role not supported");
  expect_error([&] { gem2.apply(json::array({{{"role", "system"}, {"content", "s"}}, user("x")}), nullptr); },
               "google-gemma-2-2b-it.jinja");
}

// The tool-call forms: whatever form the caller uses (OpenAI's wire format: content null, arguments a JSON string;
// or transformers': no content, arguments an object), each template gets the form it can render, and the result is
// the golden rendering.
TEST(ChatTemplateToolCalls, EveryFormRendersTheGoldenPrompt) {
  const json g = golden();
  const json conv = g["conversations"]["tool_call"];
  json wire = conv["messages"];
  wire[1]["content"] = nullptr;
  // The string the client sends (as python's json.dumps writes it, which is what the golden renderings show).
  wire[1]["tool_calls"][0]["function"]["arguments"] = R"({"location": "Paris", "unit": "celsius"})";
  for (const std::string file : {"Qwen-Qwen2.5-7B-Instruct.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
                                 "meetkai-functionary-medium-v3.2.jinja", "mistralai-Mistral-Nemo-Instruct-2407.jinja",
                                 "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"}) {
    SCOPED_TRACE(file);
    const json& e = golden_entry(file, "tool_call");
    ChatTemplate t = template_file(file, e["special_tokens"]);
    ChatApplyOptions o;
    o.now = kGoldenClock;
    for (const json& msgs : {json(conv["messages"]), wire}) EXPECT_EQ(t.apply(msgs, conv["tools"], o), e["rendered"]);
  }
}

TEST(ChatTemplateDetection, FormatAndReasoningFromTheTemplate) {
  struct Case {
    const char* file;
    ToolCallFormat format;
    bool opens_think;
  };
  const Case cases[] = {
      {"Qwen-Qwen2.5-7B-Instruct.jinja", ToolCallFormat::Hermes, false},
      {"NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", ToolCallFormat::Hermes, false},
      {"mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolCallFormat::MistralNemo, false},
      {"deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", ToolCallFormat::DeepSeekR1, true},
      {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", ToolCallFormat::DeepSeekR1, true},
      {"meetkai-functionary-medium-v3.2.jinja", ToolCallFormat::FunctionaryV32, false},
      {"meta-llama-Llama-3.1-8B-Instruct.jinja", ToolCallFormat::Llama3, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    ChatTemplate t = template_file(c.file, json::object());
    EXPECT_EQ(format_name(t.tool_format()), std::string(format_name(c.format)));
    EXPECT_EQ(t.opens_reasoning(), c.opens_think);
  }
}

// tinychat carries the Qwen2.5 template: the model's own template renders the golden Qwen prompt, and its special
// tokens (<|im_start|> ...) are single tokens of the prompt, as llama.cpp tokenizes prompts.
TEST(ChatTemplateModel, TinychatRendersAndTokenizesLikeLlamaCpp) {
  auto g = GGUFFile::open(test::data_path("models/real/tinychat-4m-q8_0.gguf"));
  auto v = Vocab::from_gguf(*g);
  ChatTemplate t = ChatTemplate::for_model("", *g, *v);
  EXPECT_EQ(format_name(t.tool_format()), std::string(format_name(ToolCallFormat::Hermes)));
  const json& e = golden_entry("Qwen-Qwen2.5-7B-Instruct.jinja", "system_user");
  const std::string prompt = t.apply(golden()["conversations"]["system_user"]["messages"], nullptr);
  EXPECT_EQ(prompt, e["rendered"]);

  const std::vector<int32_t> parsed = v->tokenize(prompt, true, true);
  const std::vector<int32_t> plain = v->tokenize(prompt, true, false);
  const int32_t im_start = v->find_token("<|im_start|>"), im_end = v->find_token("<|im_end|>");
  ASSERT_GE(im_start, 0);
  ASSERT_GE(im_end, 0);
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), im_start), 3);
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), im_end), 2);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), im_start), 0);  // plain text: split into ordinary pieces
  EXPECT_LT(parsed.size(), plain.size());
  EXPECT_EQ(v->detokenize(parsed, true), prompt);
}
