// chat/chat_template.h - messages -> prompt text, through the model's Jinja chat template.
//
// Where a template comes from (resolve_chat_template):
//   * `--chat-template NAME`: one of lokal's built-in templates (builtin_template_names(): chatml, llama2, llama3,
//     mistral, gemma, phi3), written here for models whose file carries no template;
//   * `--chat-template FILE`: a .jinja file, or a Hugging Face tokenizer_config.json (its "chat_template" string,
//     or the list form [{name, template}] whose "default" / "tool_use" entries are used);
//   * otherwise the GGUF's `tokenizer.chat_template` (and `tokenizer.chat_template.tool_use` when tools are offered
//     and the file has it). A model with none is a clear error naming both ways out.
//
// Rendering (ChatTemplate::apply) follows transformers' apply_chat_template: the variables are `messages`, `tools`
// (null when none), `add_generation_prompt`, `bos_token` / `eos_token` (the vocabulary's texts) and any extra
// keyword arguments (e.g. `enable_thinking`). Messages are checked first (validate_messages) and brought into the
// form templates expect: text content parts are joined into one string. Templates disagree on how an assistant's
// tool call looks (arguments as an object or as a JSON string, content absent, null or ""), so when the messages
// carry tool calls the forms are tried in that order and the first that renders the call is used.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat/chat_parse.h"
#include "chat/jinja.h"

namespace lokal {

class GGUFFile;
class Vocab;

struct ChatTemplateSource {
  std::string name;      // shown in errors: "tinychat-4m-f32.gguf", "chatml (built in)", "t.jinja"
  std::string source;    // Jinja text
  std::string tool_use;  // a separate template for requests with tools ("" when none)
};

// lokal's own templates, by name.
std::vector<std::string> builtin_template_names();
// The built-in template NAME; throws lokal::Error listing the names when unknown.
ChatTemplateSource builtin_template(const std::string& name);
// `spec` is a built-in name or a file (.jinja text or tokenizer_config.json); "" means the model's own template
// (`gguf` may be null when there is no model: then spec must be given). Throws lokal::Error.
ChatTemplateSource resolve_chat_template(const std::string& spec, const GGUFFile* gguf);

// Checks an OpenAI-style message list and returns it in the form templates expect. Throws lokal::Error naming the
// message ("message 3: unknown role 'robot' (expected system, developer, user, assistant or tool)"): not an array
// of objects, unknown role, content of the wrong type or a non-text content part, an assistant tool call without a
// function name, a tool message that answers no earlier tool call (or names an id no call had).
nlohmann::ordered_json validate_messages(const nlohmann::ordered_json& messages);
// Checks an OpenAI-style tool list ([{type: "function", function: {name, description?, parameters?}}]).
void validate_tools(const nlohmann::ordered_json& tools);

struct ChatApplyOptions {
  bool add_generation_prompt = true;
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();  // extra template variables
  int64_t now = 0;  // clock for strftime_now (seconds since the epoch); 0: the real clock
};

class ChatTemplate {
 public:
  // bos/eos: the texts of the vocabulary's BOS and EOS tokens ("" when it has none: the variable is then left
  // undefined, as transformers does for a tokenizer without one).
  ChatTemplate(const ChatTemplateSource& src, std::string bos_token, std::string eos_token);
  // The model's (or the override's) template with the vocabulary's special tokens.
  static ChatTemplate for_model(const std::string& spec, const GGUFFile& gguf, const Vocab& vocab);

  // The prompt for `messages` (validated) and `tools` (null or an array). Throws lokal::Error naming the template
  // and line when the template fails (raise_exception included).
  std::string apply(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                    const ChatApplyOptions& opt = {}) const;

  const std::string& name() const { return name_; }
  const std::string& source() const { return main_->source(); }
  // The tool-call format of the model's answers (chat/chat_parse.h), detected from the template text.
  ToolCallFormat tool_format() const { return format_; }
  // Whether the template's generation prompt opens a <think> block itself (DeepSeek-R1 distills).
  bool opens_reasoning() const { return opens_think_; }
  bool supports_tools() const { return supports_tools_; }

 private:
  std::string name_;
  std::shared_ptr<jinja::Template> main_, tool_use_;
  std::string bos_, eos_;
  ToolCallFormat format_ = ToolCallFormat::Generic;
  bool opens_think_ = false;
  bool supports_tools_ = false;
};

}  // namespace lokal
