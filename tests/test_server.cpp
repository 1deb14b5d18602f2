// lokal serve, for real: the binary is started on 127.0.0.1 (any free port), driven over HTTP with cpp-httplib's
// client, and stopped with SIGTERM (graceful drain, exit status 0). Each server lives for one test; every request has
// a timeout. Model: tinychat-4m (greedy answers are deterministic; see ../shared/README.md "tinychat").
#include <gtest/gtest.h>
#include <signal.h>
#include <jwt.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "server/requests.h"
#include "support/serve_process.h"
#include "support/test_data.h"

using json = nlohmann::ordered_json;
using lokal::test::data_path;

namespace {

std::string tinychat() { return data_path("models/real/tinychat-4m-q8_0.gguf"); }

using lokal::test::Server;
using lokal::test::post;

json chat_body(const std::string& question, json extra = json::object()) {
  json b = {{"messages", json::array({{{"role", "user"}, {"content", question}}})}, {"temperature", 0}};
  for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
  return b;
}

// The data: lines of an SSE body, parsed ("[DONE]" kept as a string).
std::vector<json> sse_events(const std::string& body, bool* well_formed) {
  std::vector<json> out;
  *well_formed = true;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == ':') continue;
    if (line.rfind("data: ", 0) != 0) {
      *well_formed = false;
      continue;
    }
    const std::string d = line.substr(6);
    if (d == "[DONE]") out.emplace_back("[DONE]");
    else out.push_back(json::parse(d));
  }
  return out;
}

const json kTools = json::parse(R"([{"type":"function","function":{"name":"get_weather","description":"Get the current weather in a city",
  "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}])");

}  // namespace

TEST(Server, OpenAIChatWholeAndStreamedAgree) {
  Server s({"-m", tinychat()});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  int st = 0;
  const json whole = post(c, "/v1/chat/completions", chat_body("What is the capital of France?"), &st);
  ASSERT_EQ(st, 200) << whole.dump();
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["model"], "tinychat-4m-q8_0");
  const json& choice = whole["choices"][0];
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_NE(choice["message"]["content"].get<std::string>().find("Paris"), std::string::npos) << whole.dump();
  EXPECT_EQ(choice["finish_reason"], "stop");
  EXPECT_GT(whole["usage"]["prompt_tokens"].get<int>(), 10);
  EXPECT_EQ(whole["usage"]["total_tokens"].get<int>(), whole["usage"]["prompt_tokens"].get<int>() + whole["usage"]["completion_tokens"].get<int>());
  EXPECT_TRUE(whole["usage"]["prompt_tokens_details"].contains("cached_tokens"));

  // The same through `lokal chat -p` (same template, same greedy decoding).
  auto cli = lokal::test::run_lokal("chat -m " + tinychat() + " --temp 0 -p 'What is the capital of France?'");
  ASSERT_EQ(cli.rc, 0) << cli.err;
  std::string cli_text = cli.out;
  while (!cli_text.empty() && cli_text.back() == '\n') cli_text.pop_back();
  EXPECT_EQ(choice["message"]["content"], cli_text);

  auto r = c.Post("/v1/chat/completions", chat_body("What is the capital of France?", {{"stream", true}, {"stream_options", {{"include_usage", true}}}}).dump(),
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  EXPECT_FALSE(r->get_header_value("x-request-id").empty());
  bool ok = false;
  const auto ev = sse_events(r->body, &ok);
  ASSERT_TRUE(ok) << r->body;
  ASSERT_GE(ev.size(), 4u) << r->body;
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  int finishes = 0;
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["id"], ev[0]["id"]);
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    if (ev[i]["choices"].empty()) continue;
    const json& ch = ev[i]["choices"][0];
    if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) {
      ++finishes;
      EXPECT_EQ(ch["finish_reason"], "stop");
    }
  }
  EXPECT_EQ(finishes, 1);
  EXPECT_EQ(text, choice["message"]["content"]);
  const json& usage_chunk = ev[ev.size() - 2];
  EXPECT_TRUE(usage_chunk["choices"].empty());
  EXPECT_EQ(usage_chunk["usage"]["completion_tokens"], whole["usage"]["completion_tokens"]);
  EXPECT_EQ(s.stop(), 0) << s.log();
  EXPECT_NE(s.log().find("\"path\":\"/v1/chat/completions\""), std::string::npos) << "access log";
}

TEST(Server, ToolCallsJsonAndReasoning) {
  Server s({"-m", tinychat()});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  int st = 0;
  const json r = post(c, "/v1/chat/completions", chat_body("What's the weather in Tokyo?", {{"tools", kTools}}), &st);
  ASSERT_EQ(st, 200) << r.dump();
  const json& m = r["choices"][0]["message"];
  EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls") << r.dump();
  ASSERT_EQ(m["tool_calls"].size(), 1u) << r.dump();
  EXPECT_TRUE(m["content"].is_null());
  EXPECT_EQ(m["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_FALSE(m["tool_calls"][0]["id"].get<std::string>().empty());
  const json args = json::parse(m["tool_calls"][0]["function"]["arguments"].get<std::string>());
  EXPECT_TRUE(args["city"].is_string()) << args.dump();

  // Streamed: one indexed tool-call delta with id and name, then finish_reason tool_calls.
  auto sr = c.Post("/v1/chat/completions", chat_body("What's the weather in Tokyo?", {{"tools", kTools}, {"stream", true}}).dump(), "application/json");
  ASSERT_TRUE(sr);
  bool ok = false;
  const auto ev = sse_events(sr->body, &ok);
  ASSERT_TRUE(ok);
  int calls = 0;
  std::string finish;
  for (const json& e : ev) {
    if (!e.is_object() || e["choices"].empty()) continue;
    const json& ch = e["choices"][0];
    if (ch["delta"].contains("tool_calls")) {
      ++calls;
      EXPECT_EQ(ch["delta"]["tool_calls"][0]["index"], 0);
      EXPECT_EQ(ch["delta"]["tool_calls"][0]["function"]["name"], "get_weather");
    }
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(calls, 1) << sr->body;
  EXPECT_EQ(finish, "tool_calls");

  // tool_choice naming the function: a call of it even for a question that does not need it; one call only when
  // parallel_tool_calls is false (with the default, tinychat writes two).
  const json forced = post(c, "/v1/chat/completions",
                           chat_body("Tell me a short story about a cat.", {{"tools", kTools}, {"parallel_tool_calls", false},
                                                                             {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}}), &st);
  ASSERT_EQ(st, 200) << forced.dump();
  ASSERT_EQ(forced["choices"][0]["message"]["tool_calls"].size(), 1u) << forced.dump();
  EXPECT_EQ(forced["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");

  // response_format json_schema (nested and flat): the content parses and has the required keys.
  const json schema = {{"type", "object"}, {"properties", {{"name", {{"type", "string"}}}, {"age", {{"type", "integer"}}}}}, {"required", {"name", "age"}}};
  for (const json& rf : {json{{"type", "json_schema"}, {"json_schema", {{"name", "person"}, {"schema", schema}}}},
                         json{{"type", "json_schema"}, {"schema", schema}}}) {
    const json jr = post(c, "/v1/chat/completions", chat_body("Reply in JSON with the name and age of Anna, who is 7.", {{"response_format", rf}, {"max_tokens", 64}}), &st);
    ASSERT_EQ(st, 200) << jr.dump();
    const json obj = json::parse(jr["choices"][0]["message"]["content"].get<std::string>());
    EXPECT_TRUE(obj["name"].is_string()) << obj.dump();
    EXPECT_TRUE(obj["age"].is_number_integer()) << obj.dump();
  }

  // Reasoning: the system prompt that makes tinychat think; the <think> block comes back as reasoning_content.
  json think = {{"messages", json::array({{{"role", "system"}, {"content", "Think step by step before you answer."}},
                                          {{"role", "user"}, {"content", "What is the capital of France?"}}})},
                {"temperature", 0}};
  const json tr = post(c, "/v1/chat/completions", think, &st);
  ASSERT_EQ(st, 200);
  const json& tm = tr["choices"][0]["message"];
  EXPECT_FALSE(tm.value("reasoning_content", "").empty()) << tr.dump();
  EXPECT_EQ(tm["content"].get<std::string>().find("<think>"), std::string::npos) << tr.dump();
  EXPECT_EQ(s.stop(), 0);
}

TEST(Server, ErrorsHaveOpenAIShapeAndStatus) {
  Server s({"-m", tinychat(), "--max-body", "65536"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  auto check = [&](const std::string& path, const std::string& body, int status, const std::string& needle) {
    auto r = c.Post(path, body, "application/json");
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, status) << body.substr(0, 200) << " -> " << r->body;
    const json j = json::parse(r->body);
    ASSERT_TRUE(j["error"].is_object()) << r->body;
    EXPECT_NE(j["error"]["message"].get<std::string>().find(needle), std::string::npos) << r->body;
    EXPECT_TRUE(j["error"].contains("type") && j["error"].contains("param") && j["error"].contains("code")) << r->body;
    EXPECT_FALSE(r->get_header_value("x-request-id").empty());
    if (status != 503 && status != 429 && status < 500) {
      EXPECT_EQ(r->get_header_value("x-should-retry"), "false");
    }
  };
  check("/v1/chat/completions", "{bad json", 400, "not valid JSON");
  check("/v1/chat/completions", "[1,2]", 400, "JSON object");
  check("/v1/chat/completions", R"({"messages":"hi"})", 400, "messages");
  check("/v1/chat/completions", R"({"messages":[{"role":"robot","content":"x"}]})", 400, "robot");
  check("/v1/chat/completions", chat_body("x", {{"n", 2}}).dump(), 400, "'n'");
  check("/v1/chat/completions", chat_body("x", {{"temperature", "hot"}}).dump(), 400, "temperature");
  check("/v1/chat/completions", chat_body("x", {{"model", "gpt-4"}}).dump(), 404, "gpt-4");
  check("/v1/chat/completions", chat_body("x", {{"logit_bias", {{"999999", 5}}}}).dump(), 400, "vocabulary");
  check("/v1/chat/completions", chat_body("x", {{"tool_choice", "required"}}).dump(), 400, "tools");
  check("/v1/chat/completions", chat_body("x", {{"messages", json::array({{{"role", "user"}, {"content", json::array({{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}})}}})}}).dump(), 400, "text only");
  // A prompt longer than the context (512): 400 saying how many tokens it has and how many fit, never truncated.
  std::string longq;
  for (int i = 0; i < 300; ++i) longq += "capital of France ";
  auto r = c.Post("/v1/chat/completions", chat_body(longq).dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_TRUE(std::regex_search(r->body, std::regex("the prompt is \\d+ tokens but the context holds 512"))) << r->body;
  EXPECT_NE(r->body.find("context_length_exceeded"), std::string::npos);
  // Body above --max-body: 413 with a JSON error.
  std::string big = chat_body(std::string(70000, 'a')).dump();
  auto b = c.Post("/v1/chat/completions", big, "application/json");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->status, 413);
  EXPECT_NE(b->body.find("larger than the server accepts"), std::string::npos) << b->body;
  // Unknown endpoint: 404 JSON; Ollama endpoints answer in Ollama's shape.
  auto n = c.Get("/v1/nothing");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->status, 404);
  EXPECT_NE(n->body.find("no such endpoint"), std::string::npos);
  // An unknown model is a 404 (as Ollama answers), before the body's other fields are looked at.
  auto o = c.Post("/api/chat", R"({"model":"nope","messages":[]})", "application/json");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->status, 404);
  EXPECT_TRUE(json::parse(o->body)["error"].is_string()) << o->body;
  // No messages: Ollama's "load the model" request.
  auto l = c.Post("/api/chat", R"({"messages":[]})", "application/json");
  ASSERT_TRUE(l);
  EXPECT_EQ(l->status, 200) << l->body;
  EXPECT_EQ(json::parse(l->body)["done_reason"], "load") << l->body;
  // The server is still healthy after all that.
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(s.stop(), 0);
}

TEST(Server, AuthScopesRateLimitsAndSafeBind) {
  lokal::test::TempDir dir;
  const std::string keys = dir.file("keys");
  std::ofstream(keys) << "# name scopes\nsecret-inference-key-0001 inference alice\nsecret-admin-key-000000001 admin root\n";
  ::chmod(keys.c_str(), 0600);
  Server s({"-m", tinychat(), "--api-key-file", keys, "--rate-limit-rpm", "3"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  const httplib::Headers alice = {{"Authorization", "Bearer secret-inference-key-0001"}};
  const httplib::Headers root = {{"Authorization", "Bearer secret-admin-key-000000001"}};
  auto g = c.Get("/health");  // open
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 200);
  int st = 0;
  json e = post(c, "/v1/chat/completions", chat_body("hi"), &st);
  EXPECT_EQ(st, 401) << e.dump();
  EXPECT_EQ(e["error"]["type"], "authentication_error");
  e = post(c, "/v1/chat/completions", chat_body("hi"), &st, {{"Authorization", "Bearer wrong-key-wrong-key"}});
  EXPECT_EQ(st, 401);
  EXPECT_EQ(e.dump().find("wrong-key"), std::string::npos) << "the key is never echoed";
  auto m = c.Get("/v1/models", alice);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  auto slots = c.Get("/slots", alice);  // admin scope needed
  ASSERT_TRUE(slots);
  EXPECT_EQ(slots->status, 403) << slots->body;
  slots = c.Get("/slots", root);
  ASSERT_TRUE(slots);
  EXPECT_EQ(slots->status, 200);
  // x-api-key works too. Three generations a minute for alice, then 429 with Retry-After; root has its own budget.
  for (int i = 0; i < 3; ++i) {
    post(c, "/v1/chat/completions", chat_body("What is the capital of France?", {{"max_tokens", 4}}), &st, {{"x-api-key", "secret-inference-key-0001"}});
    EXPECT_EQ(st, 200) << i;
  }
  auto lim = c.Post("/v1/chat/completions", alice, chat_body("hi").dump(), "application/json");
  ASSERT_TRUE(lim);
  EXPECT_EQ(lim->status, 429) << lim->body;
  ASSERT_FALSE(lim->get_header_value("Retry-After").empty());
  EXPECT_GE(std::stoi(lim->get_header_value("Retry-After")), 1);
  post(c, "/v1/chat/completions", chat_body("hi", {{"max_tokens", 2}}), &st, root);
  EXPECT_EQ(st, 200);
  EXPECT_EQ(s.stop(), 0);

  // Any address but loopback without keys: refused before loading anything.
  auto refused = lokal::test::run_lokal("serve -m " + tinychat() + " --host 0.0.0.0 --port 0");
  EXPECT_NE(refused.rc, 0);
  EXPECT_NE(refused.err.find("without authentication"), std::string::npos) << refused.err;
}

TEST(Server, LlamaServerAndOllamaEndpoints) {
  Server s({"-m", tinychat(), "--metrics", "-a", "tiny", "-a", "chat"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  int st = 0;
  // /tokenize and /detokenize round-trip; special tokens are parsed.
  json t = post(c, "/tokenize", {{"content", "<|im_start|>user\nHello"}, {"with_pieces", true}}, &st);
  ASSERT_EQ(st, 200) << t.dump();
  EXPECT_EQ(t["tokens"][0]["piece"], "<|im_start|>");
  json ids = json::array();
  for (const json& x : t["tokens"]) ids.push_back(x["id"]);
  json d = post(c, "/detokenize", {{"tokens", ids}}, &st);
  EXPECT_EQ(d["content"], "<|im_start|>user\nHello");
  // /apply-template is what `lokal template` renders.
  const json msgs = json::array({{{"role", "user"}, {"content", "What is the capital of France?"}}});
  json at = post(c, "/apply-template", {{"messages", msgs}}, &st);
  auto tpl = lokal::test::run_lokal("template " + tinychat() + " --messages '" + msgs.dump() + "'");
  ASSERT_EQ(tpl.rc, 0);
  EXPECT_EQ(at["prompt"], tpl.out);
  // /completion with the rendered prompt gives the chat answer; timings are there.
  json comp = post(c, "/completion", {{"prompt", at["prompt"]}, {"temperature", 0}, {"n_predict", 16}}, &st);
  ASSERT_EQ(st, 200) << comp.dump();
  EXPECT_NE(comp["content"].get<std::string>().find("Paris"), std::string::npos) << comp.dump();
  EXPECT_EQ(comp["stop_type"], "eos");
  EXPECT_GT(comp["timings"]["predicted_n"].get<int>(), 0);
  // OpenAI completions with logprobs.
  json oc = post(c, "/v1/completions", {{"model", "chat"}, {"prompt", "Once upon a time"}, {"max_tokens", 5}, {"temperature", 0}, {"logprobs", 2}}, &st);
  ASSERT_EQ(st, 200) << oc.dump();
  EXPECT_EQ(oc["model"], "tiny");
  EXPECT_EQ(oc["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(oc["choices"][0]["logprobs"]["tokens"].size(), 5u);
  for (const json& lp : oc["choices"][0]["logprobs"]["token_logprobs"]) EXPECT_LE(lp.get<double>(), 0.0);
  // /props, /v1/models with aliases, /metrics.
  auto props = c.Get("/props");
  ASSERT_TRUE(props);
  EXPECT_EQ(json::parse(props->body)["default_generation_settings"]["n_ctx"], 512);
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  for (const char* name : {"llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total", "lokal_time_to_first_token_seconds_bucket",
                           "lokal_time_per_output_token_seconds_count", "llamacpp:requests_processing", "lokal_kv_pages_used"})
    EXPECT_NE(metrics->body.find(name), std::string::npos) << name;

  // Ollama: root text, version, tags, ps, show, chat (NDJSON stream and whole), generate.
  auto root = c.Get("/");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->body, "lokal is running");  // a script probing / (no text/html in Accept) gets Ollama's answer
  auto tags = c.Get("/api/tags");
  ASSERT_TRUE(tags);
  EXPECT_EQ(json::parse(tags->body)["models"][0]["details"]["format"], "gguf");
  json show = post(c, "/api/show", {{"model", "tiny"}}, &st);
  EXPECT_EQ(st, 200);
  EXPECT_NE(show["template"].get<std::string>().find("im_start"), std::string::npos);
  auto stream = c.Post("/api/chat", json{{"model", "tiny"}, {"messages", msgs}, {"options", {{"temperature", 0}}}}.dump(), "application/json");
  ASSERT_TRUE(stream);
  EXPECT_NE(stream->get_header_value("Content-Type").find("application/x-ndjson"), std::string::npos);
  std::istringstream lines(stream->body);
  std::string line, text;
  json last;
  while (std::getline(lines, line)) {
    last = json::parse(line);
    if (!last["done"].get<bool>()) text += last["message"]["content"].get<std::string>();
  }
  EXPECT_NE(text.find("Paris"), std::string::npos) << stream->body;
  EXPECT_TRUE(last["done"].get<bool>());
  EXPECT_EQ(last["done_reason"], "stop");
  EXPECT_GT(last["eval_count"].get<int>(), 0);
  EXPECT_GT(last["total_duration"].get<int64_t>(), 0);
  json whole = post(c, "/api/chat", {{"name", "tiny"}, {"messages", msgs}, {"stream", false}, {"options", {{"temperature", 0}}}}, &st);
  EXPECT_EQ(whole["message"]["content"], text);
  json shorthand = post(c, "/api/chat", {{"message", "What is the capital of France?"}, {"stream", false}, {"options", {{"temperature", 0}}}}, &st);
  EXPECT_EQ(shorthand["message"]["content"], text);
  // Ollama tool calls come back with object arguments.
  json oc2 = post(c, "/api/chat", {{"messages", json::array({{{"role", "user"}, {"content", "What's the weather in Tokyo?"}}})}, {"tools", kTools}, {"stream", false}, {"options", {{"temperature", 0}}}}, &st);
  ASSERT_EQ(st, 200) << oc2.dump();
  ASSERT_EQ(oc2["message"]["tool_calls"].size(), 1u) << oc2.dump();
  EXPECT_TRUE(oc2["message"]["tool_calls"][0]["function"]["arguments"].is_object());
  json gen = post(c, "/api/generate", {{"prompt", "What is the capital of France?"}, {"stream", false}, {"options", {{"temperature", 0}, {"num_predict", 16}}}}, &st);
  EXPECT_EQ(gen["response"], text);
  EXPECT_EQ(s.stop(), 0);
}

TEST(Server, RequestDefaultsFromFlags) {
  // llama-server's --temp/--top-k/... and a default --system: what a request leaves out; its own values win.
  Server s({"-m", tinychat(), "--temp", "0.25", "--top-k", "7", "--min-p", "0.1", "--system", "You are terse."});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  int st = 0;
  json comp = post(c, "/completion", {{"prompt", "Once"}, {"n_predict", 2}}, &st);
  ASSERT_EQ(st, 200) << comp.dump();
  EXPECT_FLOAT_EQ(comp["generation_settings"]["temperature"].get<float>(), 0.25f) << comp.dump();
  EXPECT_EQ(comp["generation_settings"]["top_k"], 7) << comp.dump();
  EXPECT_FLOAT_EQ(comp["generation_settings"]["min_p"].get<float>(), 0.1f) << comp.dump();
  comp = post(c, "/completion", {{"prompt", "Once"}, {"n_predict", 2}, {"temperature", 0.9}, {"top_k", 3}}, &st);
  ASSERT_EQ(st, 200) << comp.dump();
  EXPECT_FLOAT_EQ(comp["generation_settings"]["temperature"].get<float>(), 0.9f) << comp.dump();
  EXPECT_EQ(comp["generation_settings"]["top_k"], 3) << comp.dump();
  // The system prompt goes first into a chat that has none, and never replaces the client's.
  const json user = {{"role", "user"}, {"content", "What is the capital of France?"}};
  json at = post(c, "/apply-template", {{"messages", json::array({user})}}, &st);
  ASSERT_EQ(st, 200) << at.dump();
  EXPECT_NE(at["prompt"].get<std::string>().find("You are terse."), std::string::npos) << at.dump();
  at = post(c, "/apply-template", {{"messages", json::array({{{"role", "system"}, {"content", "Be kind."}}, user})}}, &st);
  EXPECT_NE(at["prompt"].get<std::string>().find("Be kind."), std::string::npos) << at.dump();
  EXPECT_EQ(at["prompt"].get<std::string>().find("You are terse."), std::string::npos) << at.dump();
  // A chat completion answers as before (greedy here: the client's temperature 0 wins over the default 0.25).
  json r = post(c, "/v1/chat/completions", chat_body("What is the capital of France?", {{"temperature", 0}}), &st);
  ASSERT_EQ(st, 200) << r.dump();
  EXPECT_EQ(r["choices"][0]["message"]["content"], "The capital of France is Paris.") << r.dump();
  // Ollama's shapes: sampling defaults go into "options", the system prompt into generate's "system".
  lokal::server::RequestDefaults d;
  d.sampling = {{"temperature", 0.25}, {"seed", 5}};
  d.system = "S";
  using lokal::server::Api;
  json o = lokal::server::apply_defaults({{"model", "m"}, {"prompt", "p"}, {"options", {{"seed", 9}}}}, Api::OllamaGenerate, d);
  EXPECT_EQ(o["options"], json({{"seed", 9}, {"temperature", 0.25}})) << o.dump();
  EXPECT_EQ(o["system"], "S");
  o = lokal::server::apply_defaults({{"model", "m"}, {"messages", json::array({{{"role", "developer"}, {"content", "D"}}})}}, Api::OllamaChat, d);
  EXPECT_EQ(o["messages"].size(), 1u) << o.dump();
  EXPECT_EQ(o["options"]["seed"], 5);
  o = lokal::server::apply_defaults({{"prompt", "p"}, {"temperature", nullptr}}, Api::OpenAICompletion, d);
  EXPECT_EQ(o["temperature"], 0.25);
  EXPECT_FALSE(o.contains("system"));
  EXPECT_EQ(lokal::server::apply_defaults(json::array({1}), Api::OpenAIChat, d), json::array({1}));  // wrong shape: untouched
}

TEST(Server, ConcurrentStreamsAndDisconnectsFreeTheirSequences) {
  Server s({"-m", tinychat(), "--parallel", "4"});
  ASSERT_GT(s.port(), 0) << s.log();
  // 16 concurrent streaming clients, 2 requests each: every stream well-formed, one finish_reason, [DONE] last.
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> th;
  for (int i = 0; i < 16; ++i)
    th.emplace_back([&, i] {
      auto c = s.client();
      for (int k = 0; k < 2; ++k) {
        auto r = c.Post("/v1/chat/completions",
                        chat_body(i % 2 ? "What is the capital of France?" : "Tell me a short story about a cat.",
                                  {{"stream", true}, {"temperature", 0.7}, {"seed", i * 10 + k}, {"max_tokens", 48}}).dump(),
                        "application/json");
        bool ok = r && r->status == 200;
        if (ok) {
          bool wf = false;
          const auto ev = sse_events(r->body, &wf);
          int fin = 0;
          for (const json& e : ev)
            if (e.is_object() && !e["choices"].empty() && !e["choices"][0]["finish_reason"].is_null()) ++fin;
          ok = wf && !ev.empty() && ev.back() == "[DONE]" && fin == 1;
        }
        (ok ? good : bad)++;
      }
    });
  for (auto& t : th) t.join();
  EXPECT_EQ(good.load(), 32);
  EXPECT_EQ(bad.load(), 0);

  // A client that goes away mid-stream: its generation (which would run to the context's end) is cancelled.
  {
    httplib::Client c("127.0.0.1", s.port());
    c.set_read_timeout(30, 0);
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = chat_body("Tell me a short story about a cat.", {{"stream", true}, {"ignore_eos", true}}).dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };  // false: hang up
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    EXPECT_FALSE(c.send(req, res, err));
    EXPECT_EQ(chunks, 3);
  }
  auto c = s.client();
  int in_flight = -1;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    auto h = c.Get("/health");
    ASSERT_TRUE(h);
    in_flight = json::parse(h->body)["slots"]["in_flight"];
    if (in_flight == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(in_flight, 0) << "the abandoned generation was not cancelled";
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// Settings: flags > LOKAL_* environment > --config file > defaults; the repo's example config is valid as written
// (every example uncommented); unknown keys and bad values are one clear error.
TEST(Server, ConfigFileEnvironmentAndFlags) {
  lokal::test::TempDir dir;
  std::string example = lokal::test::read_file(std::string(LOKAL_SOURCE_DIR) + "/packaging/lokal.toml");
  std::string uncommented;
  std::istringstream in(example);
  std::string line;
  while (std::getline(in, line)) {
    if (std::regex_match(line, std::regex("# [a-z_]+ = .*"))) line = line.substr(2);
    if (line.rfind("model = ", 0) == 0) line = "model = \"" + tinychat() + "\"";
    if (line.rfind("api_key_file", 0) == 0) continue;  // names a systemd credential path
    uncommented += line + "\n";
  }
  std::ofstream(dir.file("lokal.toml")) << uncommented;
  auto r = lokal::test::run_lokal("serve --config " + dir.file("lokal.toml") + " --print-config");
  ASSERT_EQ(r.rc, 0) << r.err << "\n" << uncommented;
  EXPECT_NE(r.out.find("port = 8080\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parallel = 4\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cors = [\"http://localhost:3000\", \"https://chat.example.com\"]"), std::string::npos) << r.out;
  // The environment beats the file; a flag beats both.
  ::setenv("LOKAL_PORT", "9001", 1);
  auto env = lokal::test::run_lokal("serve --config " + dir.file("lokal.toml") + " --print-config");
  ASSERT_EQ(env.rc, 0) << env.err;
  EXPECT_NE(env.out.find("port = 9001\n"), std::string::npos) << env.out;
  env = lokal::test::run_lokal("serve --config " + dir.file("lokal.toml") + " --port 9002 --print-config");
  ::unsetenv("LOKAL_PORT");
  EXPECT_NE(env.out.find("port = 9002\n"), std::string::npos) << env.out;
  // Keys are never printed.
  env = lokal::test::run_lokal("serve -m x --api-key supersecretkey123456 --print-config");
  EXPECT_EQ(env.out.find("supersecretkey"), std::string::npos) << env.out;
  // Typos are errors, not silently ignored settings.
  std::ofstream(dir.file("bad.toml")) << "model = \"m.gguf\"\nprot = 8080\n";
  auto bad = lokal::test::run_lokal("serve --config " + dir.file("bad.toml"));
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("unknown key 'prot'"), std::string::npos) << bad.err;
  std::ofstream(dir.file("bad2.toml")) << "port = \"many\"\n";
  bad = lokal::test::run_lokal("serve --config " + dir.file("bad2.toml"));
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("port"), std::string::npos) << bad.err;
  std::ofstream(dir.file("bad3.toml")) << "port = [\n";
  bad = lokal::test::run_lokal("serve --config " + dir.file("bad3.toml"));
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("bad3.toml:"), std::string::npos) << bad.err;
}

// Embeddings on the three APIs: unit vectors of the model's width, the same text the same vector whether sent alone
// or in a batch, base64 = the float array's bytes, over-long inputs refused unless Ollama's truncate asks to cut.
TEST(Server, EmbeddingsOpenAIAndOllama) {
  Server s({"-m", tinychat(), "--parallel", "2"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  int st = 0;
  const json one = post(c, "/v1/embeddings", {{"input", "The cat sat on the mat."}}, &st);
  ASSERT_EQ(st, 200) << one.dump();
  EXPECT_EQ(one["object"], "list");
  const std::vector<float> e = one["data"][0]["embedding"].get<std::vector<float>>();
  ASSERT_EQ(e.size(), 256u);  // tinychat's n_embd
  double norm = 0;
  for (float v : e) norm += static_cast<double>(v) * v;
  EXPECT_NEAR(norm, 1.0, 1e-4);
  EXPECT_GT(one["usage"]["prompt_tokens"].get<int>(), 3);
  const json many = post(c, "/v1/embeddings", {{"input", {"A dog.", "The cat sat on the mat.", "Paris is in France."}}}, &st);
  ASSERT_EQ(st, 200);
  ASSERT_EQ(many["data"].size(), 3u);
  EXPECT_EQ(many["data"][1]["index"], 1);
  EXPECT_EQ(many["data"][1]["embedding"].get<std::vector<float>>(), e);
  EXPECT_NE(many["data"][0]["embedding"].get<std::vector<float>>(), e);
  const json b64 = post(c, "/v1/embeddings", {{"input", "The cat sat on the mat."}, {"encoding_format", "base64"}}, &st);
  ASSERT_EQ(st, 200);
  const std::string enc = b64["data"][0]["embedding"];
  EXPECT_EQ(enc.size(), (256u * 4 + 2) / 3 * 4);
  {  // decode
    static const std::string tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string bytes;
    for (size_t i = 0; i + 3 < enc.size() + 3 && i < enc.size(); i += 4) {
      uint32_t w = 0;
      int pad = 0;
      for (int k = 0; k < 4; ++k) {
        const char ch = enc[i + static_cast<size_t>(k)];
        w <<= 6;
        if (ch == '=') ++pad;
        else w |= static_cast<uint32_t>(tab.find(ch));
      }
      bytes += static_cast<char>(w >> 16);
      if (pad < 2) bytes += static_cast<char>((w >> 8) & 255);
      if (pad < 1) bytes += static_cast<char>(w & 255);
    }
    ASSERT_EQ(bytes.size(), 256u * 4);
    std::vector<float> d(256);
    std::memcpy(d.data(), bytes.data(), bytes.size());
    EXPECT_EQ(d, e);
  }
  json err = post(c, "/v1/embeddings", {{"input", "x"}, {"dimensions", 12}}, &st);
  EXPECT_EQ(st, 400) << err.dump();
  std::string longtext;
  for (int i = 0; i < 400; ++i) longtext += "capital of France ";
  err = post(c, "/v1/embeddings", {{"input", longtext}}, &st);
  EXPECT_EQ(st, 400);
  EXPECT_NE(err.dump().find("context holds 512"), std::string::npos) << err.dump();

  const json oe = post(c, "/api/embed", {{"model", "tinychat-4m-q8_0"}, {"input", {"The cat sat on the mat.", "A dog."}}}, &st);
  ASSERT_EQ(st, 200) << oe.dump();
  ASSERT_EQ(oe["embeddings"].size(), 2u);
  EXPECT_EQ(oe["embeddings"][0].get<std::vector<float>>(), e);
  EXPECT_GT(oe["prompt_eval_count"].get<int>(), 0);
  err = post(c, "/api/embed", {{"input", longtext}}, &st);
  EXPECT_EQ(st, 400);
  EXPECT_TRUE(err["error"].is_string());
  const json cut = post(c, "/api/embed", {{"input", longtext}, {"truncate", true}}, &st);
  EXPECT_EQ(st, 200) << cut.dump();
  const json old = post(c, "/api/embeddings", {{"prompt", "The cat sat on the mat."}}, &st);
  ASSERT_EQ(st, 200);
  EXPECT_EQ(old["embedding"].get<std::vector<float>>(), e);
  EXPECT_EQ(s.stop(), 0);
}

// POST /api/debug/reload (admin scope): the model is loaded again from disk while the server keeps running; a stream
// in flight past --drain-timeout is ended, requests during the reload get 503, and the server answers again after.
TEST(Server, AdminReloadWithoutRestart) {
  Server s({"-m", tinychat(), "--api-key", "inference-key-12345678", "--admin-api-key", "admin-key-1234567890", "--drain-timeout", "0.3",
            "-c", "4096", "--allow-long-ctx", "--parallel", "2"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  const httplib::Headers user = {{"Authorization", "Bearer inference-key-12345678"}};
  const httplib::Headers admin = {{"Authorization", "Bearer admin-key-1234567890"}};
  auto r = c.Post("/api/debug/reload", user, "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403) << r->body;
  // A long stream (end tokens banned, 4000 tokens) that the reload must end.
  std::atomic<bool> stream_done{false};
  std::string body;
  std::thread streamer([&] {
    auto sc = s.client();
    auto sr = sc.Post("/v1/chat/completions", user,
                      chat_body("Tell me a short story about a cat.", {{"stream", true}, {"ignore_eos", true}, {"max_tokens", 4000},
                                                                        {"stream_options", {{"include_usage", true}}}}).dump(),
                      "application/json");
    if (sr) body = sr->body;
    stream_done = true;
  });
  // Wait until it streams, then reload.
  for (int i = 0; i < 200; ++i) {
    auto h = c.Get("/health");
    if (h && json::parse(h->body)["slots"]["in_flight"].get<int>() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int st = 0;
  const json rel = post(c, "/api/debug/reload", json::object(), &st, admin);
  EXPECT_EQ(st, 200) << rel.dump();
  EXPECT_EQ(rel["status"], "reloaded");
  streamer.join();
  EXPECT_TRUE(stream_done.load());
  EXPECT_NE(body.find("[DONE]"), std::string::npos) << body.substr(0, 300);
  {
    bool wf = false;
    const auto ev = sse_events(body, &wf);
    EXPECT_TRUE(wf);
    ASSERT_GE(ev.size(), 2u);
    const json& usage = ev[ev.size() - 2]["usage"];
    EXPECT_LT(usage["completion_tokens"].get<int>(), 4000) << "the reload's drain timeout did not end the stream";
  }
  // Answers again, the same greedy text as before the reload.
  const json a = post(c, "/v1/chat/completions", chat_body("What is the capital of France?"), &st, user);
  ASSERT_EQ(st, 200) << a.dump();
  EXPECT_NE(a["choices"][0]["message"]["content"].get<std::string>().find("Paris"), std::string::npos);
  EXPECT_NE(s.log().find("\"event\":\"reloaded\""), std::string::npos);
  EXPECT_EQ(s.stop(), 0) << s.log();
}

namespace {
// A /proc/PID/status field in kB.
int64_t proc_kb(pid_t pid, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  return -1;
}
}  // namespace

// A soak: 6 clients for LOKAL_SOAK_SECONDS (default 20) seconds of mixed traffic — streams, streams the client drops
// after two chunks, whole answers, malformed JSON, invalid fields. Then: no 5xx and no broken stream, every request
// answered, peak RSS after the warm-up (the first half) within 2% of the end's (not under AddressSanitizer: its
// quarantine of freed memory grows by design), and no KV page held at the end.
TEST(Server, SoakWithDisconnectsAndMalformedRequests) {
  const char* env = std::getenv("LOKAL_SOAK_SECONDS");
  const double seconds = env ? std::atof(env) : 20.0;
  Server s({"-m", tinychat(), "--parallel", "4", "--metrics", "--no-access-log"});
  ASSERT_GT(s.port(), 0) << s.log();
  std::atomic<int> n_ok{0}, n_4xx{0}, n_5xx{0}, n_broken{0}, n_dropped{0};
  std::mutex err_mu;
  std::string first_error;
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(seconds);
  int64_t hwm_warm = -1;
  std::string samples;
  std::thread sampler([&] {
    for (int i = 1; i <= 8; ++i) {
      std::this_thread::sleep_until(t0 + std::chrono::duration<double>(seconds * i / 8));
      const int64_t kb = proc_kb(s.pid(), "VmHWM");
      if (i == 4) hwm_warm = kb;  // the warm-up: the first half (every connection thread and arena in use)
      char buf[32];
      std::snprintf(buf, sizeof buf, " %.1f", static_cast<double>(kb) / 1024.0);
      samples += buf;
    }
  });
  std::vector<std::thread> th;
  for (int w = 0; w < 6; ++w)
    th.emplace_back([&, w] {
      std::mt19937 rng(static_cast<unsigned>(w) * 7919u + 1u);
      auto c = s.client(120);
      auto note = [&](const std::string& e) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (first_error.empty()) first_error = e;
      };
      for (int k = 0; std::chrono::steady_clock::now() < deadline; ++k) {
        const int roll = static_cast<int>(rng() % 100);
        const json body = chat_body(k % 2 ? "Tell me a short story about a cat." : "What is the capital of France?",
                                    {{"temperature", 0.8}, {"seed", k}, {"max_tokens", 8 + static_cast<int>(rng() % 56)},
                                     {"stream", roll < 75}});
        if (roll < 60 || (roll >= 75 && roll < 80)) {  // a stream, or a whole answer
          auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
          if (!r) { ++n_broken; note("no response"); continue; }
          if (r->status >= 500) { ++n_5xx; note(r->body); continue; }
          if (r->status != 200) { ++n_4xx; note(r->body); continue; }
          if (roll < 60) {
            bool wf = false;
            const auto ev = sse_events(r->body, &wf);
            if (!wf || ev.empty() || ev.back() != "[DONE]") { ++n_broken; note(r->body.substr(0, 200)); continue; }
          }
          ++n_ok;
        } else if (roll < 75) {  // the client hangs up after two chunks
          httplib::Client hc("127.0.0.1", s.port());
          hc.set_read_timeout(60, 0);
          httplib::Request req;
          req.method = "POST";
          req.path = "/v1/chat/completions";
          req.body = body.dump();
          req.set_header("Content-Type", "application/json");
          int chunks = 0;
          req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
          httplib::Response res;
          httplib::Error err = httplib::Error::Success;
          hc.send(req, res, err);
          ++n_dropped;
        } else {  // malformed JSON or an invalid field: a 400, never more
          const std::string bad = roll < 90 ? std::string("{\"messages\": [") : chat_body("x", {{"n", 3}}).dump();
          auto r = c.Post("/v1/chat/completions", bad, "application/json");
          if (!r) { ++n_broken; note("no response to a bad request"); continue; }
          if (r->status == 400) ++n_ok;
          else if (r->status >= 500) { ++n_5xx; note(r->body); }
          else { ++n_4xx; note(r->body); }
        }
      }
    });
  for (auto& t : th) t.join();
  sampler.join();
  EXPECT_EQ(n_5xx.load(), 0) << first_error;
  EXPECT_EQ(n_broken.load(), 0) << first_error;
  EXPECT_EQ(n_4xx.load(), 0) << first_error;
  EXPECT_GT(n_ok.load(), 20);
  EXPECT_GT(n_dropped.load(), 2);
  // Idle again: nothing in flight, no KV page held (cached prefix pages are free pages).
  auto c = s.client();
  int in_flight = -1;
  for (int i = 0; i < 200 && in_flight != 0; ++i) {
    auto h = c.Get("/health");
    ASSERT_TRUE(h);
    in_flight = json::parse(h->body)["slots"]["in_flight"];
    if (in_flight) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(in_flight, 0);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  std::smatch sm;
  ASSERT_TRUE(std::regex_search(m->body, sm, std::regex("\nlokal_kv_pages_used ([0-9.e+]+)"))) << m->body;
  EXPECT_EQ(std::stod(sm[1]), 0.0) << "KV pages still held after the soak";
  const int64_t hwm_end = proc_kb(s.pid(), "VmHWM");
  ASSERT_GT(hwm_warm, 0);
  std::printf("[ soak     ] %d ok, %d dropped by the client; peak RSS %.1f MiB after warm-up, %.1f MiB at the end\n",
              n_ok.load(), n_dropped.load(), static_cast<double>(hwm_warm) / 1024, static_cast<double>(hwm_end) / 1024);
  if (!lokal::test::kAddressSanitizer) {
    EXPECT_LE(static_cast<double>(hwm_end), static_cast<double>(hwm_warm) * 1.02) << "peak RSS grew during the soak (MiB at each eighth:" << samples << ")";
  }
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// CORS allow-list, TLS, and the per-request time limit.
TEST(Server, CorsTlsAndRequestTimeout) {
  lokal::test::TempDir dir;
  const std::string key = dir.file("key.pem"), cert = dir.file("cert.pem");
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -keyout '" + key + "' -out '" + cert +
                          "' -days 1 -subj /CN=127.0.0.1 >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl could not make a test certificate";
  Server s({"-m", tinychat(), "--cors", "http://app.example", "--ssl-key-file", key, "--ssl-cert-file", cert,
            "--timeout", "1", "-c", "4096", "--allow-long-ctx"}, false);
  ASSERT_GT(s.port(), 0) << s.log();
  EXPECT_TRUE(s.tls()) << "the TLS server announced http://";
  const int port = s.port();
  httplib::SSLClient c("127.0.0.1", port);
  c.enable_server_certificate_verification(false);
  c.set_read_timeout(60, 0);
  for (int i = 0; i < 3000; ++i) {
    auto h = c.Get("/health");
    if (h && h->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Plain HTTP on the TLS port gets no answer.
  httplib::Client plain("127.0.0.1", port);
  plain.set_read_timeout(5, 0);
  auto pr = plain.Get("/health");
  EXPECT_TRUE(!pr || pr->status != 200);
  // CORS: the allowed origin gets the headers (preflight and request), another origin none.
  auto pre = c.Options("/v1/chat/completions", {{"Origin", "http://app.example"}, {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->status, 204);
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  auto other = c.Options("/v1/chat/completions", {{"Origin", "http://evil.example"}, {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->has_header("Access-Control-Allow-Origin"));
  auto get = c.Get("/v1/models", {{"Origin", "http://app.example"}});
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->get_header_value("Access-Control-Allow-Origin"), "http://app.example");
  // --timeout 1: a generation that would run for many seconds ends after about one, finish_reason length.
  const auto t0 = std::chrono::steady_clock::now();
  auto r = c.Post("/v1/chat/completions",
                  chat_body("Tell me a short story about a cat.", {{"ignore_eos", true}, {"max_tokens", 4000}}).dump(), "application/json");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_LT(j["usage"]["completion_tokens"].get<int>(), 4000) << "not cut off";
  EXPECT_LT(secs, 10.0);
  EXPECT_EQ(s.stop(), 0) << s.log();
}

namespace {
// A datagram socket standing in for systemd's NOTIFY_SOCKET.
struct NotifySocket {
  int fd = -1;
  std::string path;
  NotifySocket() {
    path = "/tmp/lokal-test-notify-" + std::to_string(::getpid()) + ".sock";
    ::unlink(path.c_str());
    fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("bind " + path);
    timeval tv{0, 200000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~NotifySocket() {
    ::close(fd);
    ::unlink(path.c_str());
  }
  // Every datagram received within `seconds`, concatenated with newlines, until one contains `until`.
  std::string receive_until(const std::string& until, double seconds) {
    std::string all;
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
      char buf[4096];
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        all.append(buf, static_cast<size_t>(n));
        all += '\n';
        if (all.find(until) != std::string::npos) break;
      }
    }
    return all;
  }
};
}  // namespace

// A full queue is a 503 with Retry-After; JWT bearer tokens (HS256) authenticate with their sub and scopes; under
// systemd the server says READY=1 once the model is loaded and STOPPING=1 on SIGTERM.
TEST(Server, QueueFullJwtAndSystemdNotify) {
  lokal::test::TempDir dir;
  const std::string secret = "a-shared-secret-of-at-least-32-bytes!!";
  std::ofstream(dir.file("jwt.secret")) << secret << "\n";
  NotifySocket ns;
  ::setenv("NOTIFY_SOCKET", ns.path.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "400000", 1);  // WatchdogSec=0.4: pings every 0.2 s (no WATCHDOG_PID: any process)
  Server s({"-m", tinychat(), "--parallel", "1", "--queue-size", "0", "-c", "4096", "--allow-long-ctx", "--jwt-secret-file",
            dir.file("jwt.secret"), "--jwt-issuer", "login.example"});
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");
  ASSERT_GT(s.port(), 0) << s.log();
  const std::string ready = ns.receive_until("READY=1", 10);
  const std::string pings = ns.receive_until("WATCHDOG=1", 5);
  EXPECT_NE(pings.find("WATCHDOG=1"), std::string::npos) << pings;
  EXPECT_NE(ready.find("READY=1"), std::string::npos) << ready;
  EXPECT_NE(ready.find("STATUS=serving tinychat-4m-q8_0"), std::string::npos) << ready;

  auto token = [&](const std::string& sub, const std::string& iss, const char* scope, long exp_in) {
    jwt_t* j = nullptr;
    jwt_new(&j);
    jwt_add_grant(j, "sub", sub.c_str());
    jwt_add_grant(j, "iss", iss.c_str());
    if (scope) jwt_add_grant(j, "scope", scope);
    jwt_add_grant_int(j, "exp", static_cast<long>(std::time(nullptr)) + exp_in);
    jwt_set_alg(j, JWT_ALG_HS256, reinterpret_cast<const unsigned char*>(secret.data()), static_cast<int>(secret.size()));
    char* t = jwt_encode_str(j);
    std::string out = t ? t : "";
    free(t);
    jwt_free(j);
    return out;
  };
  auto c = s.client();
  auto bearer = [](const std::string& t) { return httplib::Headers{{"Authorization", "Bearer " + t}}; };
  int st = 0;
  post(c, "/v1/chat/completions", chat_body("What is the capital of France?", {{"max_tokens", 4}}), &st,
       bearer(token("alice", "login.example", "inference", 600)));
  EXPECT_EQ(st, 200);
  post(c, "/v1/chat/completions", chat_body("hi"), &st, bearer(token("alice", "login.example", "inference", -600)));
  EXPECT_EQ(st, 401) << "expired";
  post(c, "/v1/chat/completions", chat_body("hi"), &st, bearer(token("alice", "evil.example", "inference", 600)));
  EXPECT_EQ(st, 401) << "wrong issuer";
  auto slots = c.Get("/slots", bearer(token("alice", "login.example", "inference", 600)));
  ASSERT_TRUE(slots);
  EXPECT_EQ(slots->status, 403);
  slots = c.Get("/slots", bearer(token("root", "login.example", "inference admin", 600)));
  ASSERT_TRUE(slots);
  EXPECT_EQ(slots->status, 200);

  // One slot, no queue: a long stream occupies it, the next request is a 503 with Retry-After.
  const std::string tok = token("bob", "login.example", "inference", 600);
  std::atomic<bool> stop_stream{false};
  std::thread streamer([&] {
    httplib::Client hc("127.0.0.1", s.port());
    hc.set_read_timeout(60, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.headers = bearer(tok);
    req.body = chat_body("Tell me a short story about a cat.", {{"stream", true}, {"ignore_eos", true}, {"max_tokens", 4000}}).dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return !stop_stream.load(); };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    hc.send(req, res, err);
  });
  for (int i = 0; i < 500; ++i) {
    auto h = c.Get("/health");
    if (h && json::parse(h->body)["slots"]["in_flight"].get<int>() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto busy = c.Post("/v1/chat/completions", bearer(tok), chat_body("hi").dump(), "application/json");
  stop_stream = true;
  streamer.join();
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->status, 503) << busy->body;
  EXPECT_NE(busy->body.find("queue_full"), std::string::npos) << busy->body;
  ASSERT_FALSE(busy->get_header_value("Retry-After").empty());
  EXPECT_GE(std::stoi(busy->get_header_value("Retry-After")), 1);

  EXPECT_EQ(s.stop(), 0) << s.log();
  const std::string stopping = ns.receive_until("STOPPING=1", 5);
  EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos) << stopping;
  EXPECT_NE(s.log().find("\"subject\":\"jwt:alice\""), std::string::npos) << "the access log names the JWT subject";
}

// Speculative decoding in the server (docs/SPECULATIVE.md): every slot drafts with the same-vocabulary draft, greedy
// answers are exactly those of a server without a draft (also with four requests at once, verified in shared
// batches), timings report the drafts, and a request can turn speculation off ("speculative.n_max": 0).
TEST(Server, SpeculativeDecodingIsExactAndReported) {
  const std::string model = lokal::test::data_path("models/real/tinychat-4m-q8_0.gguf");
  const std::string draft = lokal::test::data_path("models/real/tinychat-draft-1m-q8_0.gguf");
  const std::vector<std::string> questions = {"Tell me a story about a cat.", "What is the capital of France?",
                                              "Tell me a story about a dragon.", "Spell the word house."};
  auto answers = [&](Server& s, const json& extra, std::vector<json>* timings) {
    std::vector<std::string> out(questions.size());
    std::vector<std::thread> th;
    if (timings) timings->assign(questions.size(), json());
    for (size_t i = 0; i < questions.size(); ++i)
      th.emplace_back([&, i] {
        auto c = s.client();
        int st = 0;
        json b = chat_body(questions[i], {{"max_tokens", 80}});
        for (auto it = extra.begin(); it != extra.end(); ++it) b[it.key()] = it.value();
        const json r = post(c, "/v1/chat/completions", b, &st);
        EXPECT_EQ(st, 200) << r.dump();
        out[i] = r["choices"][0]["message"].value("content", "");
        if (timings) (*timings)[i] = r.value("timings", json());
      });
    for (auto& t : th) t.join();
    return out;
  };
  std::vector<std::string> plain;
  {
    Server s({"-m", model, "-np", "4"});
    ASSERT_GT(s.port(), 0) << s.log();
    plain = answers(s, json::object(), nullptr);
    s.stop();
  }
  Server s({"-m", model, "-np", "4", "--draft", draft, "--draft-p-min", "0", "--draft-fixed", "--draft-max", "4"});
  ASSERT_GT(s.port(), 0) << s.log();
  std::vector<json> timings;
  EXPECT_EQ(answers(s, json::object(), &timings), plain);
  int64_t drafted = 0;
  for (const json& t : timings) {
    ASSERT_TRUE(t.contains("draft_n")) << t.dump();
    EXPECT_LE(t["draft_n_accepted"].get<int64_t>(), t["draft_n"].get<int64_t>());
    drafted += t["draft_n"].get<int64_t>();
  }
  EXPECT_GT(drafted, 0);
  {
    auto c = s.client();
    auto r = c.Get("/api/model/info");
    ASSERT_TRUE(r);
    const json info = json::parse(r->body);
    EXPECT_EQ(info["speculative"]["drafted"].get<int64_t>(), drafted) << info.dump();
    EXPECT_NE(info["speculative"]["method"].get<std::string>().find("same vocabulary"), std::string::npos);
  }
  EXPECT_EQ(answers(s, {{"speculative.n_max", 0}}, &timings), plain);
  for (const json& t : timings) EXPECT_EQ(t.value("draft_n", int64_t{0}), 0) << t.dump();
  int st = 0;
  auto c = s.client();
  const json bad = post(c, "/v1/chat/completions", chat_body("Hi", {{"draft_max", 1000}}), &st);
  EXPECT_EQ(st, 400) << bad.dump();
  EXPECT_NE(bad.dump().find("draft_max"), std::string::npos) << bad.dump();
  EXPECT_EQ(s.stop(), 0);
}

// The web chat page (docs/WEBUI.md): served to browsers at / with a CSP that allows nothing external, versioned
// assets cached for a year, validators (304), gzip; byte-identical to the files it embeds; open even when the API
// needs a key; --no-webui leaves the plain text. The page's behaviour in a browser: e2e/webui.test.mjs.
TEST(Server, WebPageHeadersCachingAndNoWebui) {
  Server s({"-m", tinychat(), "--api-key", "k3y-for-the-page"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client();
  c.set_decompress(false);  // see the bytes as sent
  const httplib::Headers html = {{"Accept", "text/html,application/xhtml+xml"}};
  auto page = c.Get("/", html);
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);  // open: the page holds no data (the API it calls needs the key)
  EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");
  const std::string csp = page->get_header_value("Content-Security-Policy");
  for (const char* part : {"default-src 'none'", "script-src 'self'", "connect-src 'self'", "style-src 'self'", "frame-ancestors 'none'"})
    EXPECT_NE(csp.find(part), std::string::npos) << part << " in " << csp;
  EXPECT_EQ(csp.find("unsafe"), std::string::npos) << csp;
  EXPECT_EQ(csp.find("http"), std::string::npos) << "no external origin: " << csp;
  EXPECT_EQ(page->get_header_value("X-Content-Type-Options"), "nosniff");
  EXPECT_EQ(page->get_header_value("Cache-Control"), "no-cache");
  EXPECT_NE(page->body.find("id=\"composer\""), std::string::npos);
  EXPECT_EQ(page->body.find("@VERSION@"), std::string::npos);
  EXPECT_EQ(page->body.find("http://"), std::string::npos) << "nothing loaded from elsewhere";
  EXPECT_EQ(page->body.find("https://"), std::string::npos) << "nothing loaded from elsewhere";
  // A script probing / (curl, Ollama's clients) still gets Ollama's text.
  auto probe = c.Get("/");
  ASSERT_TRUE(probe);
  EXPECT_EQ(probe->body, "lokal is running");

  // Revalidation of the page: 304 without a body.
  auto again = c.Get("/", {{"Accept", "text/html"}, {"If-None-Match", page->get_header_value("ETag")}});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 304);
  EXPECT_TRUE(again->body.empty());

  // Every asset the page names carries ?v=VERSION and is immutable at that version.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(page->body, m, std::regex(R"(/ui/app\.js\?v=([0-9a-f]+))"))) << page->body;
  const std::string v = m[1];
  auto app = c.Get("/ui/app.js?v=" + v);
  ASSERT_TRUE(app);
  EXPECT_EQ(app->status, 200);
  EXPECT_EQ(app->get_header_value("Content-Type"), "text/javascript; charset=utf-8");
  EXPECT_EQ(app->get_header_value("Cache-Control"), "public, max-age=31536000, immutable");
  EXPECT_NE(app->get_header_value("ETag"), "");
  EXPECT_EQ(app->body, lokal::test::read_file(std::string(LOKAL_SOURCE_DIR) + "/src/server/webui/app.js"));
  auto stale = c.Get("/ui/app.js?v=0000");
  ASSERT_TRUE(stale);
  EXPECT_EQ(stale->get_header_value("Cache-Control"), "no-cache") << "an old version's URL is revalidated";
  auto css = c.Get("/ui/style.css?v=" + v);
  ASSERT_TRUE(css);
  EXPECT_EQ(css->get_header_value("Content-Type"), "text/css; charset=utf-8");

  // The Debian libraries, byte for byte; gzip when accepted (and a different validator for it), identity otherwise.
  const std::string marked = lokal::test::read_file("/usr/share/javascript/marked/marked.umd.min.js");
  auto plain = c.Get("/ui/vendor/marked.min.js?v=" + v);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->get_header_value("Content-Encoding"), "");
  EXPECT_TRUE(plain->body == marked) << plain->body.size() << " vs " << marked.size();
  auto gz = c.Get("/ui/vendor/marked.min.js?v=" + v, {{"Accept-Encoding", "gzip, deflate, br"}});
  ASSERT_TRUE(gz);
  EXPECT_EQ(gz->get_header_value("Content-Encoding"), "gzip");
  EXPECT_EQ(gz->get_header_value("Vary"), "Accept-Encoding");
  EXPECT_LT(gz->body.size(), marked.size() / 2);
  ASSERT_GE(gz->body.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(gz->body[0]), 0x1f);  // the gzip magic
  EXPECT_EQ(static_cast<unsigned char>(gz->body[1]), 0x8b);
  EXPECT_NE(gz->get_header_value("ETag"), plain->get_header_value("ETag"));
  auto gz304 = c.Get("/ui/vendor/marked.min.js?v=" + v, {{"Accept-Encoding", "gzip"}, {"If-None-Match", gz->get_header_value("ETag")}});
  ASSERT_TRUE(gz304);
  EXPECT_EQ(gz304->status, 304);
  auto q0 = c.Get("/ui/vendor/marked.min.js?v=" + v, {{"Accept-Encoding", "gzip;q=0, identity"}});
  ASSERT_TRUE(q0);
  EXPECT_EQ(q0->get_header_value("Content-Encoding"), "") << "q=0 refuses gzip";
  for (const char* lib : {"/ui/vendor/purify.min.js", "/ui/vendor/highlight.min.js", "/ui/icon.svg"}) {
    auto r = c.Get(lib);
    ASSERT_TRUE(r) << lib;
    EXPECT_EQ(r->status, 200) << lib;
  }

  // Unknown files are JSON 404s; nothing outside the embedded set is reachable.
  for (const char* bad : {"/ui/nope.js", "/ui/../CMakeLists.txt", "/ui/vendor/", "/ui/%2e%2e/etc/passwd"}) {
    auto r = c.Get(bad);
    ASSERT_TRUE(r) << bad;
    EXPECT_EQ(r->status, 404) << bad;
  }
  // The API behind the page still needs the key.
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
  EXPECT_EQ(s.stop(), 0) << s.log();

  Server off({"-m", tinychat(), "--no-webui"});
  ASSERT_GT(off.port(), 0) << off.log();
  auto oc = off.client();
  auto root = oc.Get("/", html);
  ASSERT_TRUE(root);
  EXPECT_EQ(root->body, "lokal is running");
  auto none = oc.Get("/ui/app.js");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 404);
  EXPECT_EQ(off.log().find("chat in a browser"), std::string::npos);
  EXPECT_EQ(off.stop(), 0) << off.log();
}
