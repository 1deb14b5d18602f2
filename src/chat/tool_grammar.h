// chat/tool_grammar.h - a grammar that forces a tool call, in the model's own tool-call format.
//
// Used when a call is required (tool_choice "required") or one function is named: the output is then guaranteed to
// be a call of an offered function whose arguments match that function's JSON schema (chat/json_schema.h), written
// the way the model was trained to write it, so the output parser (chat/chat_parse.h) reads it back:
//   Hermes / Qwen2.5   <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call>   (several with parallel)
//   Llama 3.x          {"name": "NAME", "parameters": ARGS}
//   Mistral Nemo       [TOOL_CALLS][{"name": "NAME", "arguments": ARGS, "id": "9 alphanumerics"}, ...]
//   everything else    the generic form {"tool_call": {"name": "NAME", "arguments": ARGS}} (parsed as Generic)
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "chat/chat_parse.h"

namespace lokal {

struct ToolGrammar {
  std::string gbnf;        // root rule: the call(s)
  ToolCallFormat format;   // the format to parse the output with
};

// `tools`: an OpenAI tool list (validated); `only`: a function name to force ("" = any offered function; a name not
// offered is a lokal::Error). `parallel`: allow several calls where the format can hold them.
ToolGrammar tool_call_grammar(ToolCallFormat format, const nlohmann::ordered_json& tools, const std::string& only,
                              bool parallel);

}  // namespace lokal
