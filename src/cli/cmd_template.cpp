// `lokal template (MODEL.gguf | FILE.jinja) --messages M.json`: print the prompt a chat renders to.
#include <cstdio>
#include <cstring>
#include <fstream>

#include "chat/chat_template.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/gguf.h"
#include "core/log.h"
#include "core/safe_io.h"
#include "tokenizer/vocab.h"

namespace lokal::cli {

namespace {
struct TemplateArgs {
  std::string input;           // a model or a template file
  std::string chat_template;   // --chat-template NAME|FILE
  std::string messages, tools, kwargs;
  bool no_generation_prompt = false;
  bool no_parse_special = false;
  bool show_tokens = false;
};

bool is_gguf(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  f.read(magic, 4);
  return f.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

void run_template(const TemplateArgs& a) {
  set_log_level(LogLevel::Warn);
  if (a.input.empty() && a.chat_template.empty())
    throw Error("no template: give a model (MODEL.gguf), a template file, or --chat-template NAME|FILE");
  nlohmann::ordered_json messages = read_json_arg(a.messages, "--messages");
  nlohmann::ordered_json tools = nullptr;
  // An OpenAI request body works too: {"messages": [...], "tools": [...]}.
  if (messages.is_object() && messages.contains("messages")) {
    if (messages.contains("tools")) tools = messages["tools"];
    messages = nlohmann::ordered_json(messages["messages"]);
  }
  if (!a.tools.empty()) tools = read_json_arg(a.tools, "--tools");
  ChatApplyOptions opt;
  opt.add_generation_prompt = !a.no_generation_prompt;
  if (!a.kwargs.empty()) {
    opt.kwargs = read_json_arg(a.kwargs, "--kwargs");
    if (!opt.kwargs.is_object()) throw Error("--kwargs: must be a JSON object of template variables");
  }

  std::unique_ptr<GGUFFile> gguf;
  std::unique_ptr<Vocab> vocab;
  std::string spec = a.chat_template;
  if (!a.input.empty()) {
    check_input_file(a.input, "model or template file");
    if (is_gguf(a.input)) {
      gguf = GGUFFile::open(a.input);
      vocab = Vocab::from_gguf(*gguf);
    } else {
      if (!spec.empty()) throw Error("a template file and --chat-template both given: give one");
      spec = a.input;
    }
  } else if (a.show_tokens) {
    throw Error("--tokens needs a model (its vocabulary tokenizes the prompt)");
  }
  const ChatTemplate tpl = vocab ? ChatTemplate::for_model(spec, *gguf, *vocab)
                                 : ChatTemplate(resolve_chat_template(spec, nullptr), "", "");
  const std::string prompt = tpl.apply(messages, tools, opt);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  if (vocab) {
    const auto toks = vocab->tokenize(prompt, true, !a.no_parse_special);
    std::fprintf(stderr, "template: %s, tool-call format %s%s; prompt: %zu tokens (special tokens %s)\n",
                 printable(tpl.name()).c_str(), format_name(tpl.tool_format()),
                 tpl.opens_reasoning() ? ", opens <think>" : "", toks.size(),
                 a.no_parse_special ? "as plain text" : "parsed");
    if (a.show_tokens) {
      for (int32_t t : toks) std::fprintf(stderr, "%d %s\n", t, printable(vocab->token_text(t)).c_str());
    }
  }
}
}  // namespace

void register_template(CLI::App& app, int* rc) {
  auto a = std::make_shared<TemplateArgs>();
  CLI::App* cmd = app.add_subcommand("template", "Render a chat (messages, tools) through a chat template and print the prompt");
  cmd->add_option("input", a->input, "A GGUF model (its tokenizer.chat_template) or a .jinja / tokenizer_config.json file");
  cmd->add_option("--messages", a->messages, "Messages: a JSON file or inline JSON (an array, or {\"messages\", \"tools\"})")
      ->required();
  cmd->add_option("--tools", a->tools, "Tools offered (OpenAI format): a JSON file or inline JSON");
  cmd->add_option("--chat-template", a->chat_template, "Use this template instead of the model's: a built-in name "
                                                      "(chatml, llama2, llama3, mistral, gemma, phi3) or a file");
  cmd->add_option("--kwargs", a->kwargs, "Extra template variables as a JSON object (e.g. {\"enable_thinking\": false})");
  cmd->add_flag("--no-generation-prompt", a->no_generation_prompt, "Do not open the assistant's turn at the end");
  cmd->add_flag("--no-parse-special", a->no_parse_special, "Count special-token text in the prompt as plain text");
  cmd->add_flag("--tokens", a->show_tokens, "List the prompt's tokens on stderr (needs a model)");
  cmd->callback([a, rc] {
    run_template(*a);
    *rc = 0;
  });
}

}  // namespace lokal::cli
