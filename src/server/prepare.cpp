// server/prepare.cpp - a parsed request made ready against the loaded model (server/requests.h: prepare()).
#include <cmath>
#include <limits>
#include <random>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "chat/tool_grammar.h"
#include "core/error.h"
#include "server/engine.h"
#include "server/requests.h"
#include "tokenizer/vocab.h"

namespace lokal::server {

using json = nlohmann::ordered_json;

namespace {
[[noreturn]] void bad(const std::string& param, const std::string& why) {
  throw ApiError(400, "'" + param + "' " + why, param, "invalid_value");
}
}  // namespace

std::string render_chat(const Engine& engine, const TextRequest& req) {
  const ChatTemplate* tpl = engine.chat_template();
  if (!tpl)
    throw ApiError(400, "this model has no chat template (" + engine.template_error() +
                            "); start the server with --chat-template NAME|FILE, or send raw prompts to /completion",
                   "messages", "no_chat_template");
  json messages;
  try {
    messages = validate_messages(req.messages);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "messages");
  }
  json tools = req.tool_choice == "none" ? json(nullptr) : req.tools;
  if (!tools.is_null()) {
    try {
      validate_tools(tools);
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "tools");
    }
  }
  ChatApplyOptions ao;
  ao.add_generation_prompt = req.add_generation_prompt;
  ao.kwargs = req.kwargs;
  if (req.think.has_value() && !ao.kwargs.contains("enable_thinking")) ao.kwargs["enable_thinking"] = *req.think;
  try {
    return tpl->apply(messages, tools, ao);
  } catch (const Error& e) {
    throw ApiError(400, std::string("the chat template failed: ") + e.what(), "messages", "template_error");
  }
}

Prepared prepare(Engine& engine, TextRequest& req) {
  Prepared p;
  const Vocab& vocab = engine.model().vocab();
  const int64_t n_vocab = vocab.n_tokens();
  // The request's "model" was resolved by the router (server/router.h): names, aliases, routes, tasks.

  // The prompt.
  if (req.prompt_is_tokens) {
    for (int32_t t : req.prompt_tokens)
      if (t >= n_vocab) bad("prompt", "holds token " + std::to_string(t) + ", outside the vocabulary (0.." + std::to_string(n_vocab - 1) + ")");
    p.prompt = req.prompt_tokens;
  } else {
    p.prompt_text = req.chat ? render_chat(engine, req) : req.prompt;
    p.prompt = vocab.tokenize(p.prompt_text, true, true);
    // A template that writes the BOS text itself plus the tokenizer's own BOS: keep one (as llama.cpp warns and does).
    if (p.prompt.size() >= 2 && vocab.bos() >= 0 && p.prompt[0] == vocab.bos() && p.prompt[1] == vocab.bos())
      p.prompt.erase(p.prompt.begin());
  }
  if (p.prompt.empty()) bad(req.chat ? "messages" : "prompt", "is empty and the model adds no BOS token: nothing to condition on");
  const int64_t n_ctx = engine.n_ctx();
  if (static_cast<int64_t>(p.prompt.size()) >= n_ctx)
    throw ApiError(400, "the prompt is " + std::to_string(p.prompt.size()) + " tokens but the context holds " +
                            std::to_string(n_ctx) + " (the prompt and at least one generated token must fit; the "
                            "server's -c sets it): shorten the prompt",
                   req.chat ? "messages" : "prompt", "context_length_exceeded");

  // Sampling: biases checked against the vocabulary, text biases resolved, grammars compiled.
  p.sampling = req.sampling;
  for (const auto& [tok, b] : p.sampling.logit_bias)
    if (tok >= n_vocab) bad("logit_bias", "names token " + std::to_string(tok) + ", outside the vocabulary (0.." + std::to_string(n_vocab - 1) + ")");
  for (const auto& [text, b] : req.logit_bias_text)
    for (int32_t t : vocab.tokenize(text, false, false)) p.sampling.logit_bias.emplace_back(t, b);
  if (req.ignore_eos) p.sampling.ban_end_of_generation(vocab);
  if (!req.seed_given) p.sampling.seed = std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32);

  const ChatTemplate* tpl = engine.chat_template();
  const bool tools_on = req.chat && !req.tools.is_null() && req.tool_choice != "none";
  int n_constraints = (!req.format.is_null()) + (!req.grammar.empty()) + (tools_on && req.tool_choice != "auto");
  if (n_constraints > 1)
    throw ApiError(400, "give one of response_format/format, grammar and a forced tool_choice: they cannot be combined", "response_format");
  std::string gbnf;
  ToolCallFormat fmt = tpl ? tpl->tool_format() : ToolCallFormat::Generic;
  try {
    if (!req.grammar.empty()) {
      gbnf = req.grammar;
    } else if (!req.format.is_null()) {
      gbnf = req.format.is_string() ? json_object_gbnf() : json_schema_to_gbnf(req.format);
    } else if (tools_on && req.tool_choice != "auto") {
      ToolGrammar tg = tool_call_grammar(fmt, req.tools, req.tool_choice == "required" ? "" : req.tool_choice, req.parallel_tool_calls);
      gbnf = tg.gbnf;
      fmt = tg.format;
    }
    if (!gbnf.empty()) p.sampling.grammar = Grammar::parse(gbnf);
  } catch (const Error& e) {
    const char* param = !req.grammar.empty() ? "grammar" : !req.format.is_null() ? "response_format" : "tool_choice";
    throw ApiError(400, e.what(), param);
  }
  try {
    p.sampling.validate();
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }

  if (req.chat) {
    p.parse_output = true;
    p.parse.format = fmt;
    p.parse.parse_tools = tools_on;
    p.parse.reasoning = req.think.value_or(true);
    p.parse.reasoning_open_at_start = tpl && tpl->opens_reasoning();
  }
  return p;
}

}  // namespace lokal::server
