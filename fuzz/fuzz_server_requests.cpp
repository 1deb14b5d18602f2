// fuzz_server_requests: every generation endpoint's body parser (server/requests.cpp) on arbitrary bytes. The input
// is parsed as JSON (invalid JSON must be an ApiError 400); a JSON value goes through all eight parsers, each of
// which must either return a request or throw ApiError with a 4xx status — never crash, never another exception.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "server/requests.h"

using namespace lokal::server;

namespace {
void check(const ApiError& e) {
  if (e.status < 400 || e.status > 499 || std::string(e.what()).empty()) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::ordered_json body;
  try {
    body = parse_body(text);
  } catch (const ApiError& e) {
    check(e);
    return 0;
  }
  using Parser = TextRequest (*)(const nlohmann::ordered_json&);
  for (Parser p : {parse_openai_chat, parse_openai_completion, parse_llama_completion, parse_ollama_chat, parse_ollama_generate}) {
    try {
      TextRequest r = p(body);
      if (r.chat && !r.messages.is_array()) std::abort();
      if (r.max_tokens < -1) std::abort();
      if (r.top_logprobs < 0) std::abort();
    } catch (const ApiError& e) {
      check(e);
    }
  }
  using EmbedParser = EmbedRequest (*)(const nlohmann::ordered_json&);
  for (EmbedParser p : {parse_openai_embeddings, parse_ollama_embed, parse_ollama_embeddings}) {
    try {
      EmbedRequest r = p(body);
      if (r.texts.empty() && r.token_inputs.empty()) std::abort();
    } catch (const ApiError& e) {
      check(e);
    }
  }
  return 0;
}
