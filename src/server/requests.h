// server/requests.h - every generation endpoint's JSON body turned into one internal request, and that request
// prepared against the loaded model (chat template, tokens, grammar, context check).
//
// The parsers are pure functions of the body (fuzzed: fuzz/fuzz_server_requests.cpp): any bad field is an ApiError
// naming it, never a crash. Unknown fields are ignored, as OpenAI's and Ollama's servers do.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "chat/chat_parse.h"
#include "chat/chat_template.h"
#include "runtime/sampling.h"

namespace lokal::server {

class Engine;

// An error answered to the client: HTTP status, one-line message, the offending parameter ("" when none).
struct ApiError : std::runtime_error {
  int status;
  std::string param;
  std::string code;  // OpenAI's "code" ("" -> null)
  int retry_after = 0;  // seconds for a Retry-After header (0: none)
  ApiError(int status_, const std::string& message, std::string param_ = {}, std::string code_ = {})
      : std::runtime_error(message), status(status_), param(std::move(param_)), code(std::move(code_)) {}
};

enum class Api { OpenAIChat, OpenAICompletion, LlamaCompletion, OllamaChat, OllamaGenerate };

struct TextRequest {
  Api api = Api::OpenAIChat;
  std::string model;
  bool chat = false;                     // messages + template (else a raw prompt)
  nlohmann::ordered_json messages;       // chat: OpenAI-form messages (Ollama's converted)
  nlohmann::ordered_json tools;          // null or an OpenAI tool list
  std::string tool_choice = "auto";      // none | auto | required | a function name
  bool parallel_tool_calls = true;
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();  // chat_template_kwargs
  bool add_generation_prompt = true;
  std::string prompt;                    // completion: text
  std::vector<int32_t> prompt_tokens;    // completion: tokens given as numbers (llama-server)
  bool prompt_is_tokens = false;
  bool raw = false;                      // Ollama generate "raw": no template
  std::string system;                    // Ollama generate "system"
  SamplingParams sampling;
  bool seed_given = false;
  int64_t max_tokens = -1;               // -1: until the end of the turn or the context
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int draft_max = -1;                    // speculative decoding: -1 the server's, 0 off, N at most N drafted tokens
  bool stream = false;
  bool include_usage = false;            // stream_options.include_usage
  bool logprobs = false;
  int top_logprobs = 0;
  nlohmann::ordered_json format;         // response_format / Ollama format / llama json_schema: a JSON schema, or
                                         // the string "json" (any JSON object); null: none
  std::string grammar;                   // GBNF (llama-server "grammar")
  std::optional<bool> think;             // Ollama "think"; reasoning_format "none" sets false
  bool cache_prompt = true;
  std::string user;
  std::vector<std::pair<std::string, float>> logit_bias_text;  // llama-server's [["text", bias]] form, resolved later
};

// A model's request defaults (serve's --temp, --top-k, --top-p, --min-p, --repeat-penalty, --seed, --system; a
// preset's settings): what a request leaves out. `sampling` holds API field names (temperature, top_k, top_p, min_p,
// repeat_penalty, seed) with values.
struct RequestDefaults {
  nlohmann::ordered_json sampling = nlohmann::ordered_json::object();
  std::string system;  // a chat without a system (or developer) message gets this one first
  bool empty() const { return sampling.empty() && system.empty(); }
};
// The body with the defaults filled in where it gives no value of its own: sampling fields at the top level (OpenAI,
// llama-server) or in "options" (Ollama); the system prompt as a first message (chat) or Ollama generate's "system".
// A body of the wrong shape is returned unchanged (parsing reports it).
nlohmann::ordered_json apply_defaults(nlohmann::ordered_json body, Api api, const RequestDefaults& d);

TextRequest parse_openai_chat(const nlohmann::ordered_json& body);
TextRequest parse_openai_completion(const nlohmann::ordered_json& body);
TextRequest parse_llama_completion(const nlohmann::ordered_json& body);
TextRequest parse_ollama_chat(const nlohmann::ordered_json& body);
TextRequest parse_ollama_generate(const nlohmann::ordered_json& body);

// /v1/embeddings, Ollama's /api/embed and /api/embeddings.
struct EmbedRequest {
  Api api = Api::OpenAIChat;             // OpenAIChat here means /v1/embeddings; OllamaChat /api/embed; OllamaGenerate /api/embeddings
  std::string model;
  std::vector<std::string> texts;        // one per input
  std::vector<std::vector<int32_t>> token_inputs;  // inputs given as token ids (OpenAI)
  bool base64 = false;                   // encoding_format "base64": little-endian float32 bytes
  bool truncate = false;                 // Ollama's truncate: cut inputs longer than the context (only when asked)
  int64_t dimensions = 0;                // OpenAI: must equal the model's (no Matryoshka truncation)
};
EmbedRequest parse_openai_embeddings(const nlohmann::ordered_json& body);
EmbedRequest parse_ollama_embed(const nlohmann::ordered_json& body);       // /api/embed: input string or array
EmbedRequest parse_ollama_embeddings(const nlohmann::ordered_json& body);  // /api/embeddings: prompt

// A request ready to submit.
struct Prepared {
  std::vector<int32_t> prompt;
  std::string prompt_text;               // what was tokenized (for /apply-template and logs)
  SamplingParams sampling;               // with the grammar and logit biases resolved
  ParseOptions parse;                    // how to read the output (tool calls, reasoning)
  bool parse_output = false;             // chat: split tool calls / reasoning out of the text
};

// Renders, tokenizes, compiles grammars, and checks that the prompt fits the context (400 with both numbers
// otherwise). Throws ApiError.
Prepared prepare(Engine& engine, TextRequest& req);

// The template's rendering of an OpenAI chat body (for /apply-template and /api/show). Throws ApiError.
std::string render_chat(const Engine& engine, const TextRequest& req);

// Parses a body as JSON (400 with the parser's message when it is not an object).
nlohmann::ordered_json parse_body(const std::string& body);

}  // namespace lokal::server
