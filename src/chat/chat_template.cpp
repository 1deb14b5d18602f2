#include "chat/chat_template.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/gguf.h"
#include "core/safe_io.h"
#include "tokenizer/vocab.h"

namespace lokal {

using json = nlohmann::ordered_json;

// ---------------------------------------------------------------- built-in templates
//
// Written here, in the documented formats of each family, for files that carry no template. They render plain
// conversations (system, user, assistant; a tool result as the family's tool/ipython turn); models with function
// calling ship their own template, which is always preferred.
namespace {
struct Builtin {
  const char* name;
  const char* source;
};

constexpr Builtin kBuiltins[] = {
    {"chatml",
     "{%- for message in messages -%}\n"
     "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
     "{%- if message['content'] is string -%}{{- message['content'] -}}{%- endif -%}\n"
     "{{- '<|im_end|>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"},
    {"llama3",
     "{{- bos_token if bos_token is defined else '' -}}\n"
     "{%- for message in messages -%}\n"
     "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] -%}\n"
     "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' -}}\n"
     "{%- if message['content'] is string -%}{{- message['content'] | trim -}}{%- endif -%}\n"
     "{{- '<|eot_id|>' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}\n"},
    {"llama2",
     "{%- set bos = bos_token if bos_token is defined else '' -%}\n"
     "{%- set eos = eos_token if eos_token is defined else '' -%}\n"
     "{%- if messages and messages[0]['role'] == 'system' -%}\n"
     "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}\n"
     "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}\n"
     "{%- for message in turns -%}\n"
     "{%- if message['role'] == 'user' or message['role'] == 'tool' -%}\n"
     "{{- bos + '[INST] ' -}}\n"
     "{%- if loop.first and system -%}{{- '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' -}}{%- endif -%}\n"
     "{{- (message['content'] or '') | trim + ' [/INST]' -}}\n"
     "{%- elif message['role'] == 'assistant' -%}\n"
     "{{- ' ' + (message['content'] or '') | trim + ' ' + eos -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"},
    {"mistral",
     "{{- bos_token if bos_token is defined else '' -}}\n"
     "{%- set eos = eos_token if eos_token is defined else '' -%}\n"
     "{%- if messages and messages[0]['role'] == 'system' -%}\n"
     "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}\n"
     "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}\n"
     "{%- for message in turns -%}\n"
     "{%- if message['role'] == 'user' or message['role'] == 'tool' -%}\n"
     "{%- set text = (system + '\\n\\n' + (message['content'] or '')) if (loop.first and system) else (message['content'] or '') -%}\n"
     "{{- '[INST] ' + text + '[/INST]' -}}\n"
     "{%- elif message['role'] == 'assistant' -%}\n"
     "{{- ' ' + (message['content'] or '') + eos -}}\n"
     "{%- endif -%}\n"
     "{%- endfor -%}\n"},
    {"gemma",
     "{{- bos_token if bos_token is defined else '' -}}\n"
     "{%- if messages and messages[0]['role'] == 'system' -%}\n"
     "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}\n"
     "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}\n"
     "{%- for message in turns -%}\n"
     "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}\n"
     "{{- '<start_of_turn>' + role + '\\n' -}}\n"
     "{%- if loop.first and system -%}{{- system + '\\n\\n' -}}{%- endif -%}\n"
     "{{- (message['content'] or '') | trim + '<end_of_turn>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}\n"},
    {"phi3",
     "{%- for message in messages -%}\n"
     "{%- set role = 'user' if message['role'] == 'tool' else message['role'] -%}\n"
     "{{- '<|' + role + '|>\\n' + (message['content'] or '') + '<|end|>\\n' -}}\n"
     "{%- endfor -%}\n"
     "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}\n"},
};

// A template file is a few KB; 1 MiB is far beyond any real one and keeps a wrong path (a model) from being read.
constexpr uint64_t kMaxTemplateBytes = 1u << 20;

std::string file_label(const std::string& path) { return std::filesystem::path(path).filename().string(); }

ChatTemplateSource from_tokenizer_config(const std::string& path, const std::string& text) {
  json cfg;
  try {
    cfg = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  ChatTemplateSource src;
  src.name = file_label(path);
  if (!cfg.is_object() || !cfg.contains("chat_template"))
    throw Error(path + ": no \"chat_template\" in this JSON file (expected a Hugging Face tokenizer_config.json)");
  const json& ct = cfg["chat_template"];
  if (ct.is_string()) {
    src.source = ct.get<std::string>();
  } else if (ct.is_array()) {
    for (const json& e : ct) {
      if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["name"].is_string() ||
          !e["template"].is_string())
        throw Error(path + ": \"chat_template\" list entries must be {\"name\": ..., \"template\": ...}");
      const std::string n = e["name"].get<std::string>();
      if (n == "default") src.source = e["template"].get<std::string>();
      if (n == "tool_use") src.tool_use = e["template"].get<std::string>();
    }
    if (src.source.empty()) {
      if (src.tool_use.empty()) throw Error(path + ": \"chat_template\" has no \"default\" or \"tool_use\" entry");
      src.source = src.tool_use;
    }
  } else {
    throw Error(path + ": \"chat_template\" must be a string or a list of {name, template}");
  }
  return src;
}

[[noreturn]] void bad_message(size_t i, const std::string& what) {
  throw Error("message " + std::to_string(i + 1) + ": " + what);
}

// JSON text the way python's json.dumps writes it by default (", " and ": " separators, non-ASCII kept): what
// templates rendered by transformers show when a tool call's arguments are a string.
void python_json(const json& v, std::string& out) {
  if (v.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      out += json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace);
      out += ": ";
      python_json(it.value(), out);
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) out += ", ";
      python_json(v[i], out);
    }
    out += ']';
  } else {
    out += v.dump(-1, ' ', false, json::error_handler_t::replace);
  }
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    default: return "a number";
  }
}
}  // namespace

std::vector<std::string> builtin_template_names() {
  std::vector<std::string> out;
  for (const Builtin& b : kBuiltins) out.emplace_back(b.name);
  return out;
}

ChatTemplateSource builtin_template(const std::string& name) {
  std::string names;
  for (const Builtin& b : kBuiltins) {
    if (name == b.name) return {std::string(b.name) + " (built in)", b.source, ""};
    names += (names.empty() ? "" : ", ") + std::string(b.name);
  }
  throw Error("unknown chat template '" + name + "' (built in: " + names + "; or give a .jinja file)");
}

ChatTemplateSource resolve_chat_template(const std::string& spec, const GGUFFile* gguf) {
  if (!spec.empty()) {
    for (const Builtin& b : kBuiltins)
      if (spec == b.name) return builtin_template(spec);
    std::error_code ec;
    if (!std::filesystem::exists(spec, ec)) builtin_template(spec);  // throws: unknown name, and lists the names
    check_input_file(spec, "chat template file");
    const std::string text = read_text_input(spec, kMaxTemplateBytes, "a chat template is a few KB");
    if (text.find('\0') != std::string::npos) throw Error(spec + ": not a text file (a chat template is Jinja text)");
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && text[first] == '{' && text.find("\"chat_template\"") != std::string::npos &&
        spec.size() > 5 && spec.substr(spec.size() - 5) == ".json")
      return from_tokenizer_config(spec, text);
    return {file_label(spec), text, ""};
  }
  if (!gguf) throw Error("no chat template given (use --chat-template NAME|FILE)");
  auto main_tpl = gguf->opt_str("tokenizer.chat_template");
  if (!main_tpl || main_tpl->empty()) {
    std::string names;
    for (const Builtin& b : kBuiltins) names += (names.empty() ? "" : ", ") + std::string(b.name);
    throw Error(gguf->name() + ": the model has no chat template (tokenizer.chat_template); give one with "
                "--chat-template NAME|FILE (built in: " + names + ")");
  }
  ChatTemplateSource src{file_label(gguf->name()), *main_tpl, ""};
  if (auto tu = gguf->opt_str("tokenizer.chat_template.tool_use")) src.tool_use = *tu;
  return src;
}

// ---------------------------------------------------------------- messages

void validate_tools(const json& tools) {
  if (tools.is_null()) return;
  if (!tools.is_array()) throw Error(std::string("tools must be an array, not ") + type_name(tools));
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string at = "tool " + std::to_string(i + 1) + ": ";
    if (!t.is_object()) throw Error(at + "must be an object {\"type\": \"function\", \"function\": {...}}");
    if (t.contains("type") && t["type"] != "function")
      throw Error(at + "unsupported type " + t["type"].dump() + " (only \"function\")");
    if (!t.contains("function") || !t["function"].is_object())
      throw Error(at + "missing \"function\" object");
    const json& f = t["function"];
    if (!f.contains("name") || !f["name"].is_string() || f["name"].get<std::string>().empty())
      throw Error(at + "function has no \"name\"");
    if (f.contains("parameters") && !f["parameters"].is_object())
      throw Error(at + "\"parameters\" must be a JSON schema object");
  }
}

json validate_messages(const json& messages) {
  if (!messages.is_array()) throw Error(std::string("messages must be an array, not ") + type_name(messages));
  if (messages.empty()) throw Error("messages is empty: nothing to answer");
  json out = json::array();
  std::vector<std::string> open_calls;  // ids of the last assistant message's tool calls
  bool calls_open = false;              // a tool message may answer them
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    if (!m.is_object()) bad_message(i, std::string("must be an object, not ") + type_name(m));
    if (!m.contains("role") || !m["role"].is_string()) bad_message(i, "has no \"role\"");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "developer" && role != "user" && role != "assistant" && role != "tool")
      bad_message(i, "unknown role '" + role + "' (expected system, developer, user, assistant or tool)");
    json nm = m;
    // Content: a string, null (assistant with tool calls), or text parts joined into one string.
    if (m.contains("content")) {
      const json& c = m["content"];
      if (c.is_array()) {
        std::string text;
        for (size_t k = 0; k < c.size(); ++k) {
          const json& part = c[k];
          if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
            bad_message(i, "content part " + std::to_string(k + 1) + " must be an object with a \"type\"");
          const std::string type = part["type"].get<std::string>();
          if (type != "text")
            bad_message(i, "content part type '" + type + "' is not supported (text only)");
          if (!part.contains("text") || !part["text"].is_string())
            bad_message(i, "text content part " + std::to_string(k + 1) + " has no \"text\" string");
          if (!text.empty()) text += "\n";
          text += part["text"].get<std::string>();
        }
        nm["content"] = text;
      } else if (!c.is_string() && !c.is_null()) {
        bad_message(i, std::string("content must be a string, an array of text parts or null, not ") + type_name(c));
      }
    }
    const bool has_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
    if (has_calls) {
      if (role != "assistant") bad_message(i, "only assistant messages can have tool_calls");
      const json& calls = m["tool_calls"];
      if (!calls.is_array()) bad_message(i, "tool_calls must be an array");
      open_calls.clear();
      for (size_t k = 0; k < calls.size(); ++k) {
        const json& tc = calls[k];
        const std::string at = "tool call " + std::to_string(k + 1) + " ";
        if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object())
          bad_message(i, at + "must be {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}");
        const json& f = tc["function"];
        if (!f.contains("name") || !f["name"].is_string() || f["name"].get<std::string>().empty())
          bad_message(i, at + "has no function name");
        if (f.contains("arguments") && !f["arguments"].is_string() && !f["arguments"].is_object())
          bad_message(i, at + "arguments must be a JSON object or a string holding one");
        if (tc.contains("id") && tc["id"].is_string()) open_calls.push_back(tc["id"].get<std::string>());
      }
      calls_open = !calls.empty();
    } else if (role == "assistant") {
      if (!m.contains("content") || m["content"].is_null()) bad_message(i, "assistant message has neither content nor tool_calls");
    } else if (role == "tool") {
      if (!calls_open) bad_message(i, "a tool message must follow an assistant message with tool_calls");
      if (!m.contains("content") || m["content"].is_null()) bad_message(i, "tool message has no content");
      if (m.contains("tool_call_id") && m["tool_call_id"].is_string() && !open_calls.empty()) {
        const std::string id = m["tool_call_id"].get<std::string>();
        if (std::find(open_calls.begin(), open_calls.end(), id) == open_calls.end())
          bad_message(i, "tool_call_id '" + id + "' answers no tool call of the assistant message before it");
      }
    } else {
      if (!m.contains("content") || m["content"].is_null()) bad_message(i, role + " message has no content");
      calls_open = false;
    }
    out.push_back(std::move(nm));
  }
  return out;
}

// ---------------------------------------------------------------- ChatTemplate

ChatTemplate::ChatTemplate(const ChatTemplateSource& src, std::string bos_token, std::string eos_token)
    : name_(src.name), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {
  main_ = std::make_shared<jinja::Template>(src.source, src.name);
  if (!src.tool_use.empty()) tool_use_ = std::make_shared<jinja::Template>(src.tool_use, src.name + " (tool_use)");
  const std::string& tool_src = src.tool_use.empty() ? src.source : src.tool_use;
  format_ = detect_format(tool_src);
  supports_tools_ = tool_src.find("tools") != std::string::npos || tool_src.find("tool_calls") != std::string::npos;
  // Does the generation prompt open a reasoning block? Render a one-message chat and look at how it ends.
  try {
    ChatApplyOptions o;
    o.now = 1;
    const std::string p = apply(json::array({{{"role", "user"}, {"content", "x"}}}), nullptr, o);
    std::string tail = p.substr(p.size() > 16 ? p.size() - 16 : 0);
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
    opens_think_ = tail.size() >= 7 && tail.compare(tail.size() - 7, 7, "<think>") == 0;
  } catch (const Error&) {
    // A template that cannot render a plain user turn (e.g. tool-use only) just gets no reasoning detection.
  }
}

ChatTemplate ChatTemplate::for_model(const std::string& spec, const GGUFFile& gguf, const Vocab& vocab) {
  auto text = [&](int32_t id) { return id >= 0 ? vocab.token_text(id) : std::string(); };
  return ChatTemplate(resolve_chat_template(spec, &gguf), text(vocab.bos()), text(vocab.eos()));
}

std::string ChatTemplate::apply(const json& messages, const json& tools, const ChatApplyOptions& opt) const {
  const json msgs = validate_messages(messages);
  validate_tools(tools);
  const bool with_tools = tools.is_array() && !tools.empty();
  const jinja::Template& tpl = with_tools && tool_use_ ? *tool_use_ : *main_;

  json ctx = json::object();
  ctx["messages"] = msgs;
  ctx["tools"] = with_tools ? tools : json(nullptr);
  ctx["add_generation_prompt"] = opt.add_generation_prompt;
  if (!bos_.empty()) ctx["bos_token"] = bos_;
  if (!eos_.empty()) ctx["eos_token"] = eos_;
  if (opt.kwargs.is_object())
    for (auto it = opt.kwargs.begin(); it != opt.kwargs.end(); ++it) ctx[it.key()] = it.value();

  bool has_calls = false;
  std::string first_call;
  for (const json& m : msgs)
    if (m.contains("tool_calls") && m["tool_calls"].is_array() && !m["tool_calls"].empty()) {
      has_calls = true;
      if (first_call.empty()) first_call = m["tool_calls"][0]["function"]["name"].get<std::string>();
    }
  if (!has_calls) return tpl.render(ctx, {}, opt.now);

  // Tool calls: the forms templates expect, in order (see the header). The first that renders the call wins; if
  // none does, the error of the first form is the one reported.
  enum Content { Absent, Null, Empty };
  struct Form {
    Content content;
    bool args_string;
  };
  constexpr Form kForms[] = {{Absent, false}, {Null, false}, {Null, true}, {Empty, false}, {Empty, true}};
  std::string first_error, first_ok;
  bool rendered = false;
  for (const Form& f : kForms) {
    json v = msgs;
    for (json& m : v) {
      if (!m.contains("tool_calls") || !m["tool_calls"].is_array()) continue;
      if (!m.contains("content") || m["content"].is_null() ||
          (m["content"].is_string() && m["content"].get<std::string>().empty())) {
        if (f.content == Absent) m.erase("content");
        else if (f.content == Null) m["content"] = nullptr;
        else m["content"] = "";
      }
      for (json& tc : m["tool_calls"]) {
        json& fn = tc["function"];
        if (!fn.contains("arguments")) fn["arguments"] = json::object();
        json& a = fn["arguments"];
        if (f.args_string && !a.is_string()) {
          std::string text;
          python_json(a, text);
          a = text;
        } else if (!f.args_string && a.is_string()) {
          try {
            a = json::parse(a.get<std::string>());
          } catch (const json::exception&) {
            // Not JSON: left as the string it is.
          }
        }
      }
    }
    ctx["messages"] = v;
    try {
      std::string out = tpl.render(ctx, {}, opt.now);
      if (out.find(first_call) != std::string::npos) return out;
      if (!rendered) first_ok = std::move(out);  // a template that ignores tool calls: its first rendering
      rendered = true;
    } catch (const Error& e) {
      if (first_error.empty()) first_error = e.what();
    }
  }
  if (rendered) return first_ok;
  throw Error(first_error);
}

}  // namespace lokal
