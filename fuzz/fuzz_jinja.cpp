// libFuzzer target for the Jinja chat-template interpreter (chat/jinja.h).
//
// Input: a template source, optionally followed by a NUL byte and a JSON object used as the render context
// (when that part is missing or is not a JSON object, a typical chat context with messages, tool calls and tools
// is used). The template is parsed and rendered with small limits. Every input must either render or throw
// lokal::Error with a one-line message naming the template; anything else (a crash, a sanitizer report, a hang,
// another exception, a non-deterministic or oversized result) is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/jinja.h"
#include "core/error.h"

namespace {

using json = nlohmann::ordered_json;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_jinja: %s\n", what.c_str());
  std::abort();
}

const json& default_context() {
  static const json ctx = json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is the weather like in Paris today?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call00001", "type": "function",
        "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}]},
      {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "{\"temperature\": 18}"},
      {"role": "assistant", "content": [{"type": "text", "text": "It is 18 degrees </think> and sunny."}]}
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather.",
      "parameters": {"type": "object", "properties": {"location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}],
    "documents": null, "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>",
    "n": 3, "f": 1.5, "big": 9223372036854775807
  })");
  return ctx;
}

void check_error(const lokal::Error& e) {
  const std::string msg = e.what();
  if (msg.rfind("template fuzz.jinja", 0) != 0) finding("error message does not name the template: " + msg);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string source = input.substr(0, nul);
  json ctx = default_context();
  if (nul != std::string::npos) {
    json parsed = json::parse(input.substr(nul + 1), nullptr, /*allow_exceptions=*/false);
    if (parsed.is_object()) ctx = std::move(parsed);
  }

  lokal::jinja::Limits limits;
  limits.max_output_bytes = 64 << 10;
  limits.max_steps = 200'000;
  limits.max_depth = 64;

  std::unique_ptr<lokal::jinja::Template> tpl;
  try {
    tpl = std::make_unique<lokal::jinja::Template>(source, "fuzz.jinja");
  } catch (const lokal::Error& e) {
    check_error(e);
    return 0;
  }
  std::string first;
  bool ok = false;
  try {
    first = tpl->render(ctx, limits, 1721995200);
    ok = true;
  } catch (const lokal::Error& e) {
    check_error(e);
  }
  if (ok) {
    if (first.size() > limits.max_output_bytes) finding("output larger than max_output_bytes");
    // Rendering is deterministic (same clock, same context).
    std::string second;
    try {
      second = tpl->render(ctx, limits, 1721995200);
    } catch (const lokal::Error& e) {
      finding(std::string("second render failed: ") + e.what());
    }
    if (second != first) finding("two renders differ");
  }
  return 0;
}
