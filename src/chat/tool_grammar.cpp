#include "chat/tool_grammar.h"

#include "chat/json_schema.h"
#include "core/error.h"

namespace lokal {

using json = nlohmann::ordered_json;

namespace {
std::string gbnf_literal(const std::string& text) { return SchemaConverter::literal(text); }
}  // namespace

ToolGrammar tool_call_grammar(ToolCallFormat format, const json& tools, const std::string& only, bool parallel) {
  if (!tools.is_array() || tools.empty()) throw Error("a forced tool call needs at least one tool");
  ToolCallFormat fmt = format;
  if (fmt != ToolCallFormat::Hermes && fmt != ToolCallFormat::Llama3 && fmt != ToolCallFormat::MistralNemo)
    fmt = ToolCallFormat::Generic;

  SchemaConverter conv;
  std::vector<std::string> calls;  // one rule body per function: the call object
  bool found = only.empty();
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& f = tools[i]["function"];
    const std::string name = f["name"].get<std::string>();
    if (!only.empty() && name != only) continue;
    found = true;
    const json params = f.contains("parameters") ? json(f["parameters"]) : json{{"type", "object"}};
    const std::string args = conv.add(params, "args" + std::to_string(i));
    const char* key = fmt == ToolCallFormat::Llama3 ? "parameters" : "arguments";
    // Appended piece by piece (GCC 12 warns falsely, -Wrestrict, on chains of " " + std::string).
    std::string body = gbnf_literal("{\"name\": \"" + name + "\", \"" + key + "\": ");
    body.append(" ").append(args);
    if (fmt == ToolCallFormat::MistralNemo)
      body.append(" ").append(gbnf_literal(", \"id\": \"")).append(" [a-zA-Z0-9]{9} ").append(gbnf_literal("\""));
    body.append(" ").append(gbnf_literal("}"));
    if (fmt == ToolCallFormat::Generic) {
      std::string wrapped = gbnf_literal("{\"tool_call\": ");
      wrapped.append(" ").append(body).append(" ").append(gbnf_literal("}"));
      body = std::move(wrapped);
    }
    calls.push_back(conv.add_rule("call" + std::to_string(i), body));
  }
  if (!found) throw Error("tool_choice names function '" + only + "', which is not among the tools offered");

  std::string any;
  for (const std::string& r : calls) any += (any.empty() ? "" : " | ") + r;
  const std::string call = conv.add_rule("call", any);
  std::string root;
  switch (fmt) {
    case ToolCallFormat::Hermes: {
      const std::string one = gbnf_literal("<tool_call>\n") + " " + call + " " + gbnf_literal("\n</tool_call>");
      root = parallel ? one + " (" + gbnf_literal("\n") + " " + one + ")*" : one;
      break;
    }
    case ToolCallFormat::MistralNemo:
      root = gbnf_literal("[TOOL_CALLS][") + " " + call + (parallel ? " (" + gbnf_literal(", ") + " " + call + ")*" : "") +
             " " + gbnf_literal("]");
      break;
    default:  // Llama 3.x and Generic: one JSON object
      root = call;
  }
  return {conv.grammar(root), fmt};
}

}  // namespace lokal
