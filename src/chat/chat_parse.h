// chat/chat_parse.h - the chat output parser: a model's generated text -> an OpenAI-style assistant message.
//
// The text a chat model generates (streamed piece by piece) becomes visible `content`, `reasoning_content` (the
// model's `<think>` block) and `tool_calls`. Which syntax a model uses for tool calls depends on its family; the
// family is named by a ToolCallFormat, usually detected from the chat template (detect_format).
//
// ## Formats (what each one parses; text outside the calls is content)
//
//   None            no tool calls: everything after the reasoning block is content.
//   Generic         the whole output is one JSON object (what a grammar-forced "generic" output produces):
//                     {"tool_call": {"name": "f", "arguments": {...}, "id"?: "..."}}        -> one call
//                     {"tool_calls": [{"name": "f", "arguments": {...}, "id"?: "..."}, ...]} -> calls
//                     {"response": "text"}   -> content "text" (decoded; streamed as it arrives)
//                     {"response": <other JSON>} -> content = that JSON, compact
//                   Anything else (plain text, other JSON) is content verbatim. The object may be preceded and
//                   followed by whitespace; text after a complete object is content (also after the string of a
//                   streamed "response" when something other than `}` follows it).
//   Hermes          Hermes 2 Pro / Hermes 3 / Qwen2.5 / tinychat: any number of
//                     <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
//                   blocks anywhere in the answer. "parameters" is accepted for "arguments"; missing arguments
//                   are {}.
//   Llama3          Llama 3.1 / 3.2 / 3.3 JSON calls: the answer starts (after whitespace) with
//                     {"name": "f", "parameters": {...}}         ("arguments" accepted, optional "type": "function")
//                   optionally several separated by ';'. The object must have exactly those keys, so a JSON answer
//                   such as {"name": "Alice", "age": 30} stays content. Text after the calls is content.
//                   `<|python_tag|>` (anywhere; text before it is content) starts a call that runs to the end of
//                   the output, decided at finish(): JSON calls as above; else a built-in tool call
//                   `NAME.call(k="v", n=1, ...)` -> a call named NAME with arguments {"k": "v", "n": 1} (Python
//                   string/number/True/False/None literals); else Python code -> a call named "python" with
//                   arguments {"code": "<the code>"}.
//   MistralNemo     [TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "abc123def"}, ...] (a single object is
//                   accepted too). The model's id is kept when it is 9 ASCII letters/digits, else a 9-character
//                   one is generated. Text before and after is content.
//   DeepSeekR1      <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```
//                   <｜tool▁call▁end｜> (more calls, separated by whitespace) <｜tool▁calls▁end｜>
//                   (the ```json fence is optional; the tokens are also accepted with '_', ' ' or "\_" for '▁';
//                   the block may start at <｜tool▁call▁begin｜>; the final <｜tool▁calls▁end｜> may be missing at
//                   the end of the output). All calls of a block are emitted together when it closes.
//   FunctionaryV32  ">>>NAME\n{json arguments}" segments (the generation prompt ends with ">>>", so the first
//                   segment usually has no ">>>"); NAME "all" is plain content up to the next ">>>NAME\n"; NAME
//                   "python" followed by anything but '{' is code up to the next ">>>NAME\n" -> {"code": "..."}.
//                   NAME is [A-Za-z0-9_.-]+. With parse_tools false, only "all" headers are removed.
//   FunctionaryV31  <function=NAME>{json arguments}</function> (anywhere), and `<|python_tag|>` + code to the end
//                   of the output -> a call named "python" with {"code": ...}.
//   Firefunction    Firefunction v2: " functools[{"name": "f", "arguments": {...}}, ...]" (content before it).
//   CommandR7B      <|START_THINKING|>plan<|END_THINKING|> (reasoning, at the start), <|START_ACTION|>[{
//                   "tool_call_id": "0", "tool_name": "f", "parameters": {...}}, ...]<|END_ACTION|> (calls; the
//                   model's "0", "1"... ids are replaced by generated unique ones), <|START_RESPONSE|>text
//                   <|END_RESPONSE|> (content; the two markers are removed).
//
// ## Reasoning
//
// When the output starts (after whitespace) with `<think>` (CommandR7B also `<|START_THINKING|>`), the text up to
// `</think>` (`<|END_THINKING|>`) is reasoning_content, trimmed of surrounding whitespace; whitespace right after
// the close tag is dropped. With reasoning_open_at_start (the template's generation prompt already opened
// `<think>`, e.g. DeepSeek-R1's ends with "<think>\n"; see detect_reasoning_open) everything up to `</think>` is
// reasoning (a `<think>` the model repeats at its start is dropped). A reasoning block that never closes stays
// reasoning_content to the end, and the content is empty (as llama.cpp does); nothing inside a reasoning block is
// parsed as a tool call. With reasoning = false (llama.cpp's `--reasoning-format none`), the block, its tags
// included, stays in content verbatim (tool calls inside it are still not parsed). Reasoning is recognized only at
// the start of the output.
//
// ## Tool calls
//
// Arguments are compact JSON object text, re-serialized (key order kept; numbers as nlohmann writes them, e.g.
// -3e2 -> -300.0; an "arguments" given as a JSON string holding an object is decoded). A call is emitted only once
// it is complete and valid (its block closed), in one ToolDelta with id, name and the whole arguments: a call shown
// early could not be taken back if its block then failed to parse, and that text must go to content instead.
// Text that starts like a call (a marker such as `<tool_call>`, `[TOOL_CALLS]`; for Llama3 a leading object with
// "name" and "parameters"/"arguments", or unfinished JSON starting `{"name"`; for Generic a leading `{"tool_call`)
// but does not parse (bad JSON, missing fields, missing close tag at the end) is kept in content verbatim and sets
// unparsed_tool_call; scanning goes on after its marker, so a later valid call is still a call. Other JSON answers
// are plain content. Whitespace between content and a call (before it and after it) is dropped; content is
// otherwise verbatim. Ids: the format's own when it has a usable one (Generic: printable ASCII up to 64 bytes;
// MistralNemo: 9 letters/digits), else "call_" + 24 ASCII letters/digits (MistralNemo: 9), from a hash of
// ParseOptions::id_seed and the call's index: unique within a message, and across parsers when id_seed is 0.
//
// ## Streaming
//
// push() returns what can be shown now: text that could still be the start of a marker (`<tool_call>`, `<think>`,
// `[TOOL_CALLS]`, ...) is held back until it is decided, as is trailing whitespace (it may turn out to precede a
// call) and a call being generated; for Llama3 and Generic a JSON object at the start of the answer is held until
// it is complete (it may be a call), except a Generic {"response": "...", whose text streams. finish() flushes
// everything. The concatenation of all deltas' content, reasoning_content and each index's arguments_part equals
// message() after finish(), and the result does not depend on how the text was split into pushes
// (parse_chat_output gives the same message). Decisions are made on bytes, so a push that ends inside a UTF-8
// character is fine, but deltas then may end inside one too. Held text is re-examined after each push with its
// JSON scans resumed (not restarted), so long calls cost time about linear in their length.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lokal {

enum class ToolCallFormat {
  None,
  Generic,
  Hermes,
  Llama3,
  MistralNemo,
  DeepSeekR1,
  FunctionaryV32,
  FunctionaryV31,
  Firefunction,
  CommandR7B,
};

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // compact JSON text of an object, e.g. {"location":"Paris"}
};

struct ParsedMessage {
  std::string content;
  std::string reasoning_content;
  std::vector<ToolCall> tool_calls;
  bool unparsed_tool_call = false;  // text looked like a call but did not parse: it was kept in content
};

struct ParseOptions {
  ToolCallFormat format = ToolCallFormat::None;
  bool parse_tools = true;               // false when no tools were offered: no tool-call syntax is parsed (the
                                         // format's content framing, e.g. Functionary's ">>>all\n", still is)
  bool reasoning = true;                 // false: leave a <think> block inline in content ("none")
  bool reasoning_open_at_start = false;  // the prompt already opened <think>: text up to </think> is reasoning
  std::uint64_t id_seed = 0;             // tool-call ids are a hash of this and the call's index; 0: a fresh seed
                                         // per parser (a process-wide counter mixed with a random value)
};

// One step of streamed output, OpenAI streaming style.
struct ChatDelta {
  std::string content;
  std::string reasoning_content;
  struct ToolDelta {
    int index = 0;               // position in ParsedMessage::tool_calls
    std::string id, name;        // set in the call's first delta (here: its only one)
    std::string arguments_part;  // concatenated per index == the call's arguments
  };
  std::vector<ToolDelta> tool_calls;
  bool empty() const { return content.empty() && reasoning_content.empty() && tool_calls.empty(); }
};

class ChatOutputParser {
 public:
  explicit ChatOutputParser(ParseOptions options);
  ~ChatOutputParser();
  ChatOutputParser(ChatOutputParser&&) noexcept;
  ChatOutputParser& operator=(ChatOutputParser&&) noexcept;

  // New generated text (UTF-8); returns what can be shown now. Throws lokal::Error after finish().
  ChatDelta push(std::string_view text);
  // End of generation: decides everything held back and returns it. Later calls return an empty delta.
  ChatDelta finish();
  // The whole message so far (final after finish()): the concatenation of the deltas returned so far.
  const ParsedMessage& message() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// push(text) + finish() on a fresh parser.
ParsedMessage parse_chat_output(std::string_view text, const ParseOptions& options);

// "none", "generic", "hermes", "llama3", "mistral-nemo", "deepseek-r1", "functionary-v3.2", "functionary-v3.1",
// "firefunction-v2", "command-r7b".
const char* format_name(ToolCallFormat format);
// The inverse of format_name; throws lokal::Error for an unknown name (the message lists the known ones).
ToolCallFormat format_from_name(std::string_view name);

// The tool-call format a chat template's model uses, from marker text in the template source:
// "<｜tool▁calls▁begin｜>" DeepSeekR1; "<|START_ACTION|>" CommandR7B; " functools[" Firefunction; ">>>all"
// FunctionaryV32; "<function=" FunctionaryV31; "[TOOL_CALLS]" MistralNemo; "<tool_call>" Hermes;
// "<|start_header_id|>" with "ipython" Llama3; anything else Generic (checked in that order).
ToolCallFormat detect_format(std::string_view template_source);
// Whether the template's generation prompt opens a <think> block itself (e.g. DeepSeek-R1's ends with
// "<｜Assistant｜><think>\n"): "<think>" appears after the template's last mention of add_generation_prompt.
// Use it for ParseOptions::reasoning_open_at_start when the prompt was rendered with add_generation_prompt.
bool detect_reasoning_open(std::string_view template_source);

}  // namespace lokal
