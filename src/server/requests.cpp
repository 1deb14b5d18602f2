#include "server/requests.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace lokal::server {

using json = nlohmann::ordered_json;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

[[noreturn]] void bad(const std::string& param, const std::string& why) {
  throw ApiError(400, "'" + param + "' " + why, param, "invalid_value");
}

const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const std::string& param, double lo, double hi) {
  if (!v.is_number()) bad(param, "must be a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad(param, "must be between " + json(lo).dump() + " and " + json(hi).dump() + " (got " + v.dump() + ")");
  return d;
}

int64_t integer(const json& v, const std::string& param, int64_t lo, int64_t hi) {
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && d >= static_cast<double>(lo) && d <= static_cast<double>(hi))
      return static_cast<int64_t>(d);
  }
  if (!v.is_number_integer()) bad(param, "must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    bad(param, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi) bad(param, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + " (got " + std::to_string(i) + ")");
  return i;
}

bool boolean(const json& v, const std::string& param) {
  if (!v.is_boolean()) bad(param, "must be true or false");
  return v.get<bool>();
}

std::string string(const json& v, const std::string& param) {
  if (!v.is_string()) bad(param, "must be a string");
  return v.get<std::string>();
}

std::vector<std::string> stops(const json& v, const std::string& param) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > 16) bad(param, "may hold at most 16 strings");
    for (const json& s : v) out.push_back(string(s, param + "[]"));
  } else {
    bad(param, "must be a string or an array of strings");
  }
  for (const std::string& s : out)
    if (s.empty()) bad(param, "must not contain an empty string");
  return out;
}

// An array of token ids (each in [0, INT32_MAX]; the vocabulary check comes in prepare()).
std::vector<int32_t> token_ids(const json& arr, const std::string& param) {
  std::vector<int32_t> out;
  out.reserve(arr.size());
  for (const json& t : arr) out.push_back(static_cast<int32_t>(integer(t, param, 0, std::numeric_limits<int32_t>::max())));
  return out;
}

// A completion prompt: a string, an array of one string, or token ids (one prompt per request; llama-server's mixed
// string/token arrays are not taken).
void completion_prompt(const json* p, TextRequest& r) {
  if (!p) bad("prompt", "is required");
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
  } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
    r.prompt = (*p)[0].get<std::string>();
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number_integer()) {
    r.prompt_is_tokens = true;
    r.prompt_tokens = token_ids(*p, "prompt[]");
  } else {
    bad("prompt", "must be a string, an array of one string, or an array of token ids (one prompt per request)");
  }
}

// stream and stream_options.include_usage.
void stream_fields(const json& b, TextRequest& r) {
  if (auto v = field(b, "stream")) r.stream = boolean(*v, "stream");
  if (auto v = field(b, "stream_options")) {
    if (!v->is_object()) bad("stream_options", "must be an object");
    if (auto u = field(*v, "include_usage")) r.include_usage = boolean(*u, "stream_options.include_usage");
  }
}

// The sampling fields the APIs share (OpenAI names plus llama.cpp's extras). `prefix` names the object they sit in
// ("options." for Ollama) in messages.
void sampling_fields(const json& b, TextRequest& r, const std::string& prefix) {
  SamplingParams& sp = r.sampling;
  if (auto v = field(b, "temperature")) sp.temperature = static_cast<float>(number(*v, prefix + "temperature", 0, 100));
  if (auto v = field(b, "top_p")) sp.top_p = static_cast<float>(number(*v, prefix + "top_p", 0, 1));
  if (sp.top_p <= 0.0f) sp.top_p = 1e-6f;  // 0 means "most likely only" to clients; keep the sampler's (0, 1] range
  if (auto v = field(b, "top_k")) sp.top_k = static_cast<int>(integer(*v, prefix + "top_k", 0, 1 << 30));
  if (auto v = field(b, "min_p")) sp.min_p = static_cast<float>(number(*v, prefix + "min_p", 0, 1));
  if (auto v = field(b, "repeat_penalty")) sp.repeat_penalty = static_cast<float>(number(*v, prefix + "repeat_penalty", 1e-3, 100));
  if (auto v = field(b, "repeat_last_n")) sp.repeat_last_n = static_cast<int>(integer(*v, prefix + "repeat_last_n", 0, 1 << 20));
  if (auto v = field(b, "presence_penalty")) sp.presence_penalty = static_cast<float>(number(*v, prefix + "presence_penalty", -2, 2));
  if (auto v = field(b, "frequency_penalty")) sp.frequency_penalty = static_cast<float>(number(*v, prefix + "frequency_penalty", -2, 2));
  if (auto v = field(b, "seed")) {
    const int64_t s = integer(*v, prefix + "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
    if (s >= 0) {  // -1 (llama-server): random
      sp.seed = static_cast<uint64_t>(s);
      r.seed_given = true;
    }
  }
  if (auto v = field(b, "stop")) r.stop = stops(*v, prefix + "stop");
}

// OpenAI's {"123": -100, ...}: bias per token id; -100 bans the token (OpenAI: "should result in a ban").
void openai_logit_bias(const json& v, TextRequest& r) {
  if (!v.is_object()) bad("logit_bias", "must be an object mapping token ids to biases");
  if (v.size() > 4096) bad("logit_bias", "may hold at most 4096 tokens");
  for (auto it = v.begin(); it != v.end(); ++it) {
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(it.key(), &used);
      if (used != it.key().size()) id = -1;
    } catch (const std::exception&) {
      id = -1;
    }
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) bad("logit_bias", "keys must be token ids (got \"" + it.key() + "\")");
    const double b = number(it.value(), "logit_bias", -100, 100);
    r.sampling.logit_bias.emplace_back(static_cast<int32_t>(id), b <= -100 ? kNegInf : static_cast<float>(b));
  }
}

// llama-server's [[id, bias], ["text", bias], [id, false]] (false bans) or the OpenAI object.
void llama_logit_bias(const json& v, TextRequest& r) {
  if (v.is_object()) return openai_logit_bias(v, r);
  if (!v.is_array()) bad("logit_bias", "must be an array of [token, bias] pairs or an object");
  if (v.size() > 4096) bad("logit_bias", "may hold at most 4096 entries");
  for (const json& e : v) {
    if (!e.is_array() || e.size() != 2) bad("logit_bias", "entries must be [token, bias] pairs");
    float bias = 0;
    if (e[1].is_boolean()) {
      if (e[1].get<bool>()) continue;  // true: no change
      bias = kNegInf;
    } else {
      bias = static_cast<float>(number(e[1], "logit_bias", -1e6, 1e6));
    }
    if (e[0].is_string()) r.logit_bias_text.emplace_back(e[0].get<std::string>(), bias);
    else r.sampling.logit_bias.emplace_back(static_cast<int32_t>(integer(e[0], "logit_bias", 0, std::numeric_limits<int32_t>::max())), bias);
  }
}

// response_format: {"type": "text"|"json_object"|"json_schema", "json_schema": {"schema": ...}} or the flat
// {"type": "json_schema", "schema": ...}.
void response_format(const json& v, TextRequest& r) {
  if (!v.is_object()) bad("response_format", "must be an object");
  const std::string type = v.contains("type") ? string(v["type"], "response_format.type") : "text";
  if (type == "text") return;
  if (type == "json_object") {
    r.format = v.contains("schema") && v["schema"].is_object() ? v["schema"] : json("json");
    return;
  }
  if (type != "json_schema") bad("response_format.type", "must be text, json_object or json_schema (got \"" + type + "\")");
  const json* schema = nullptr;
  if (auto js = field(v, "json_schema")) {
    if (!js->is_object()) bad("response_format.json_schema", "must be an object");
    schema = field(*js, "schema");
    if (!schema && !js->contains("name")) schema = js;  // the schema itself put there
  }
  if (!schema) schema = field(v, "schema");
  if (!schema) bad("response_format.json_schema.schema", "is required for type json_schema");
  if (!schema->is_object() && !schema->is_boolean()) bad("response_format.json_schema.schema", "must be a JSON schema object");
  r.format = *schema;
}

void tool_choice(const json& v, TextRequest& r) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s != "none" && s != "auto" && s != "required") bad("tool_choice", "must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}");
    r.tool_choice = s;
    return;
  }
  if (v.is_object()) {
    const json* fn = field(v, "function");
    if (fn && fn->is_object() && fn->contains("name") && (*fn)["name"].is_string()) {
      r.tool_choice = (*fn)["name"].get<std::string>();
      if (r.tool_choice.empty() || r.tool_choice == "none" || r.tool_choice == "auto" || r.tool_choice == "required")
        bad("tool_choice.function.name", "must name an offered function");
      return;
    }
  }
  bad("tool_choice", "must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}");
}

void model_field(const json& b, std::string& model) {
  if (auto v = field(b, "model")) model = string(*v, "model");
  else if (auto n = field(b, "name")) model = string(*n, "name");  // Ollama's older name
}
void model_field(const json& b, TextRequest& r) { model_field(b, r.model); }

void require_object(const json& b) {
  if (!b.is_object()) throw ApiError(400, "the request body must be a JSON object", "", "invalid_request");
}

// OpenAI content: a string, or an array of parts of which only text ones are accepted here (a text-only model).
void check_content_parts(const json& messages) {
  if (!messages.is_array()) bad("messages", "must be an array of messages");
  if (messages.empty()) bad("messages", "must hold at least one message");
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    if (!m.is_object()) bad("messages[" + std::to_string(i) + "]", "must be an object");
    if (auto c = field(m, "content"); c && c->is_array())
      for (const json& part : *c)
        if (part.is_object() && part.contains("type") && part["type"] != "text")
          throw ApiError(400, "messages[" + std::to_string(i) + "]: content parts of type " + part["type"].dump() +
                                  " are not supported: this model reads text only", "messages", "unsupported_content");
  }
}

void ollama_options(const json& b, TextRequest& r) {
  const json* o = field(b, "options");
  if (!o) return;
  if (!o->is_object()) bad("options", "must be an object");
  sampling_fields(*o, r, "options.");
  if (auto v = field(*o, "num_predict")) {
    const int64_t n = integer(*v, "options.num_predict", -2, 1 << 30);
    r.max_tokens = n < 0 ? -1 : n;  // -1 infinite, -2 fill the context (both: until the end or the context)
  }
  if (auto v = field(*o, "num_ctx")) integer(*v, "options.num_ctx", 1, 1 << 30);  // the server's -c decides
}

void ollama_format(const json& b, TextRequest& r) {
  const json* f = field(b, "format");
  if (!f) return;
  if (f->is_string()) {
    if (f->get<std::string>() == "json") r.format = "json";
    else if (!f->get<std::string>().empty()) bad("format", "must be \"json\" or a JSON schema object");
  } else if (f->is_object()) {
    r.format = *f;
  } else {
    bad("format", "must be \"json\" or a JSON schema object");
  }
}

void ollama_think(const json& b, TextRequest& r) {
  const json* t = field(b, "think");
  if (!t) return;
  if (t->is_boolean()) r.think = t->get<bool>();
  else if (t->is_string() && (*t == "low" || *t == "medium" || *t == "high")) r.think = true;
  else bad("think", "must be true, false, \"low\", \"medium\" or \"high\"");
}

void ollama_keep_alive(const json& b) {
  const json* k = field(b, "keep_alive");
  if (k && !k->is_string() && !k->is_number()) bad("keep_alive", "must be a duration string such as \"5m\" or a number of seconds");
}

}  // namespace

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    std::string what = e.what();
    throw ApiError(400, "the request body is not valid JSON: " + what, "", "invalid_json");
  }
  require_object(j);
  return j;
}

// Speculative decoding per request: "draft_max" (lokal) or llama-server's "speculative.n_max" (0: off for this
// request), and "speculative": false.
static void spec_fields(const json& b, TextRequest& r) {
  if (auto v = field(b, "draft_max")) r.draft_max = static_cast<int>(integer(*v, "draft_max", 0, 128));
  if (auto v = field(b, "speculative.n_max")) r.draft_max = static_cast<int>(integer(*v, "speculative.n_max", 0, 128));
  if (auto v = field(b, "speculative"); v && v->is_boolean()) {
    if (!v->get<bool>()) r.draft_max = 0;
  } else if (v) {
    bad("speculative", "must be true or false");
  }
}

json apply_defaults(json b, Api api, const RequestDefaults& d) {
  if (d.empty() || !b.is_object()) return b;
  const bool ollama = api == Api::OllamaChat || api == Api::OllamaGenerate;
  if (!d.sampling.empty()) {
    if (ollama && !b.contains("options")) b["options"] = json::object();
    json& target = ollama ? b["options"] : b;
    if (target.is_object())
      for (auto it = d.sampling.begin(); it != d.sampling.end(); ++it)
        if (!target.contains(it.key()) || target[it.key()].is_null()) target[it.key()] = it.value();
  }
  if (!d.system.empty()) {
    if (api == Api::OllamaGenerate) {
      if (!b.contains("system") || b["system"].is_null()) b["system"] = d.system;
    } else if (api == Api::OpenAIChat || api == Api::OllamaChat) {
      json* m = b.contains("messages") ? &b["messages"] : nullptr;
      if (m && m->is_array()) {
        bool has = false;
        for (const json& x : *m)
          if (x.is_object() && x.contains("role") && (x["role"] == "system" || x["role"] == "developer")) has = true;
        if (!has) m->insert(m->begin(), json{{"role", "system"}, {"content", d.system}});
      }
    }
  }
  return b;
}

TextRequest parse_openai_chat(const json& b) {
  require_object(b);
  TextRequest r;
  r.api = Api::OpenAIChat;
  r.chat = true;
  model_field(b, r);
  const json* msgs = field(b, "messages");
  if (!msgs) bad("messages", "is required");
  check_content_parts(*msgs);
  r.messages = *msgs;
  sampling_fields(b, r, "");
  if (auto v = field(b, "max_completion_tokens")) r.max_tokens = integer(*v, "max_completion_tokens", 0, 1 << 30);
  else if (auto m = field(b, "max_tokens")) r.max_tokens = integer(*m, "max_tokens", 0, 1 << 30);
  if (auto v = field(b, "n"); v && integer(*v, "n", 1, 1 << 30) != 1)
    bad("n", "must be 1: lokal returns one choice per request (send several requests for several answers)");
  stream_fields(b, r);
  if (auto v = field(b, "logit_bias")) openai_logit_bias(*v, r);
  if (auto v = field(b, "logprobs")) r.logprobs = boolean(*v, "logprobs");
  if (auto v = field(b, "top_logprobs")) {
    r.top_logprobs = static_cast<int>(integer(*v, "top_logprobs", 0, 20));
    if (!r.logprobs && r.top_logprobs > 0) bad("top_logprobs", "needs \"logprobs\": true");
  }
  if (auto v = field(b, "tools")) {
    if (!v->is_array()) bad("tools", "must be an array of tools");
    if (!v->empty()) r.tools = *v;
  }
  if (auto v = field(b, "tool_choice")) tool_choice(*v, r);
  if (auto v = field(b, "parallel_tool_calls")) r.parallel_tool_calls = boolean(*v, "parallel_tool_calls");
  if (r.tool_choice != "auto" && r.tool_choice != "none" && r.tools.is_null())
    bad("tool_choice", "\"" + r.tool_choice + "\" needs \"tools\"");
  if (auto v = field(b, "response_format")) response_format(*v, r);
  if (auto v = field(b, "user")) r.user = string(*v, "user");
  if (auto v = field(b, "cache_prompt")) r.cache_prompt = boolean(*v, "cache_prompt");
  if (auto v = field(b, "ignore_eos")) r.ignore_eos = boolean(*v, "ignore_eos");
  spec_fields(b, r);
  if (auto v = field(b, "grammar")) r.grammar = string(*v, "grammar");
  if (auto v = field(b, "chat_template_kwargs")) {
    if (!v->is_object()) bad("chat_template_kwargs", "must be an object");
    r.kwargs = *v;
  }
  if (auto v = field(b, "reasoning_format")) {
    const std::string f = string(*v, "reasoning_format");
    if (f == "none") r.think = false;
    else if (f != "auto" && f != "deepseek" && f != "deepseek-legacy") bad("reasoning_format", "must be none, auto or deepseek");
  }
  return r;
}

TextRequest parse_openai_completion(const json& b) {
  require_object(b);
  TextRequest r;
  r.api = Api::OpenAICompletion;
  model_field(b, r);
  completion_prompt(field(b, "prompt"), r);
  r.max_tokens = 16;  // OpenAI's default for completions
  sampling_fields(b, r, "");
  if (auto m = field(b, "max_tokens")) r.max_tokens = integer(*m, "max_tokens", -1, 1 << 30);
  if (auto v = field(b, "n"); v && integer(*v, "n", 1, 1 << 30) != 1) bad("n", "must be 1");
  if (auto v = field(b, "best_of"); v && integer(*v, "best_of", 1, 1 << 30) != 1) bad("best_of", "must be 1");
  if (auto v = field(b, "echo"); v && boolean(*v, "echo")) bad("echo", "is not supported");
  if (auto v = field(b, "suffix"); v && !string(*v, "suffix").empty()) bad("suffix", "is not supported (fill-in-the-middle)");
  stream_fields(b, r);
  if (auto v = field(b, "logit_bias")) openai_logit_bias(*v, r);
  if (auto v = field(b, "logprobs")) {
    r.top_logprobs = static_cast<int>(integer(*v, "logprobs", 0, 20));
    r.logprobs = true;
  }
  if (auto v = field(b, "user")) r.user = string(*v, "user");
  if (auto v = field(b, "cache_prompt")) r.cache_prompt = boolean(*v, "cache_prompt");
  if (auto v = field(b, "ignore_eos")) r.ignore_eos = boolean(*v, "ignore_eos");
  spec_fields(b, r);
  if (auto v = field(b, "grammar")) r.grammar = string(*v, "grammar");
  if (auto v = field(b, "response_format")) response_format(*v, r);
  return r;
}

TextRequest parse_llama_completion(const json& b) {
  require_object(b);
  TextRequest r;
  r.api = Api::LlamaCompletion;
  model_field(b, r);
  completion_prompt(field(b, "prompt"), r);
  sampling_fields(b, r, "");
  if (auto v = field(b, "n_predict")) {
    const int64_t n = integer(*v, "n_predict", -2, 1 << 30);
    r.max_tokens = n < 0 ? -1 : n;
  } else if (auto m = field(b, "max_tokens")) {
    r.max_tokens = integer(*m, "max_tokens", -1, 1 << 30);
  }
  if (auto v = field(b, "stream")) r.stream = boolean(*v, "stream");
  if (auto v = field(b, "logit_bias")) llama_logit_bias(*v, r);
  if (auto v = field(b, "n_probs")) {
    r.top_logprobs = static_cast<int>(integer(*v, "n_probs", 0, 100));
    r.logprobs = r.top_logprobs > 0;
  }
  if (auto v = field(b, "cache_prompt")) r.cache_prompt = boolean(*v, "cache_prompt");
  if (auto v = field(b, "ignore_eos")) r.ignore_eos = boolean(*v, "ignore_eos");
  spec_fields(b, r);
  if (auto v = field(b, "grammar")) r.grammar = string(*v, "grammar");
  if (auto v = field(b, "json_schema")) {
    if (!v->is_object()) bad("json_schema", "must be a JSON schema object");
    r.format = v->empty() ? json("json") : *v;
  }
  if (auto v = field(b, "response_format")) response_format(*v, r);
  return r;
}

namespace {

// Ollama messages -> OpenAI messages: tool_calls get ids and string arguments are kept as objects (templates take
// both), tool results name their function (tool_name) and answer the earliest open call of it.
json ollama_messages(const json& msgs) {
  check_content_parts(msgs);
  json out = json::array();
  std::vector<std::pair<std::string, std::string>> open;  // (name, id) of calls not answered yet
  int n_calls = 0;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const json& m = msgs[i];
    json o = json::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key() != "images" && it.key() != "tool_calls" && it.key() != "tool_name" && it.key() != "thinking")
        o[it.key()] = it.value();
    if (auto im = field(m, "images"); im && !(im->is_array() && im->empty()))
      throw ApiError(400, "messages[" + std::to_string(i) + "]: images are not supported: this model reads text only", "messages");
    if (auto tc = field(m, "tool_calls")) {
      if (!tc->is_array()) bad("messages[" + std::to_string(i) + "].tool_calls", "must be an array");
      json calls = json::array();
      for (const json& c : *tc) {
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object())
          bad("messages[" + std::to_string(i) + "].tool_calls", "entries must hold a \"function\" object");
        json fn = c["function"];
        const std::string id = c.contains("id") && c["id"].is_string() ? c["id"].get<std::string>() : "call_" + std::to_string(n_calls);
        ++n_calls;
        if (fn.contains("name") && fn["name"].is_string()) open.emplace_back(fn["name"].get<std::string>(), id);
        if (!fn.contains("arguments")) fn["arguments"] = json::object();
        calls.push_back({{"id", id}, {"type", "function"}, {"function", fn}});
      }
      o["tool_calls"] = calls;
    }
    if (m.value("role", "") == "tool" && !m.contains("tool_call_id")) {
      std::string name = m.contains("tool_name") && m["tool_name"].is_string() ? m["tool_name"].get<std::string>() : "";
      if (name.empty() && m.contains("name") && m["name"].is_string()) name = m["name"].get<std::string>();
      for (auto it = open.begin(); it != open.end(); ++it)
        if (name.empty() || it->first == name) {
          o["tool_call_id"] = it->second;
          if (!name.empty()) o["name"] = name;
          open.erase(it);
          break;
        }
    }
    out.push_back(o);
  }
  return out;
}

}  // namespace

TextRequest parse_ollama_chat(const json& b) {
  require_object(b);
  TextRequest r;
  r.api = Api::OllamaChat;
  r.chat = true;
  r.stream = true;  // Ollama streams unless told not to
  model_field(b, r);
  const json* msgs = field(b, "messages");
  // The one-turn shorthand of lokal's simple API: {"message": "text"}.
  if (!msgs) {
    if (auto m = field(b, "message")) {
      if (!m->is_string()) bad("message", "must be a string (the shorthand for one user message)");
      r.messages = json::array({{{"role", "user"}, {"content", m->get<std::string>()}}});
    } else {
      bad("messages", "is required (or \"message\": \"text\" for one turn)");
    }
  } else {
    r.messages = ollama_messages(*msgs);
  }
  if (auto v = field(b, "tools")) {
    if (!v->is_array()) bad("tools", "must be an array of tools");
    if (!v->empty()) r.tools = *v;
  }
  if (auto v = field(b, "stream")) r.stream = boolean(*v, "stream");
  ollama_options(b, r);
  ollama_format(b, r);
  ollama_think(b, r);
  ollama_keep_alive(b);
  return r;
}

TextRequest parse_ollama_generate(const json& b) {
  require_object(b);
  TextRequest r;
  r.api = Api::OllamaGenerate;
  r.stream = true;
  model_field(b, r);
  if (auto v = field(b, "prompt")) r.prompt = string(*v, "prompt");
  if (auto v = field(b, "system")) r.system = string(*v, "system");
  if (auto v = field(b, "raw")) r.raw = boolean(*v, "raw");
  if (auto v = field(b, "suffix"); v && !string(*v, "suffix").empty()) bad("suffix", "is not supported (fill-in-the-middle)");
  if (auto v = field(b, "template"); v && !string(*v, "template").empty())
    bad("template", "is not supported: lokal uses the model's Jinja chat template (see --chat-template)");
  if (auto v = field(b, "images"); v && !(v->is_array() && v->empty())) bad("images", "are not supported: this model reads text only");
  if (auto v = field(b, "context"); v && !(v->is_array() && v->empty()))
    bad("context", "is not supported (deprecated by Ollama); send the conversation with /api/chat");
  if (auto v = field(b, "stream")) r.stream = boolean(*v, "stream");
  ollama_options(b, r);
  ollama_format(b, r);
  ollama_think(b, r);
  ollama_keep_alive(b);
  if (!r.raw) {
    r.chat = true;
    r.messages = json::array();
    if (!r.system.empty()) r.messages.push_back({{"role", "system"}, {"content", r.system}});
    r.messages.push_back({{"role", "user"}, {"content", r.prompt}});
  }
  return r;
}

namespace {
constexpr size_t kMaxEmbedInputs = 2048;
}

EmbedRequest parse_openai_embeddings(const json& b) {
  require_object(b);
  EmbedRequest r;
  r.api = Api::OpenAIChat;
  model_field(b, r.model);
  const json* in = field(b, "input");
  if (!in) bad("input", "is required");
  if (in->is_string()) {
    r.texts.push_back(in->get<std::string>());
  } else if (in->is_array() && !in->empty()) {
    if (in->size() > kMaxEmbedInputs) bad("input", "may hold at most " + std::to_string(kMaxEmbedInputs) + " inputs");
    if ((*in)[0].is_number_integer()) {  // one input as tokens
      r.token_inputs.push_back(token_ids(*in, "input[]"));
    } else {
      for (const json& x : *in) {
        if (x.is_string()) {
          r.texts.push_back(x.get<std::string>());
        } else if (x.is_array()) {
          r.token_inputs.push_back(token_ids(x, "input[][]"));
        } else {
          bad("input", "must be a string, an array of strings, or token ids");
        }
      }
      if (!r.texts.empty() && !r.token_inputs.empty()) bad("input", "must not mix strings and token arrays");
    }
  } else {
    bad("input", "must be a non-empty string or array");
  }
  if (auto v = field(b, "encoding_format")) {
    const std::string f = string(*v, "encoding_format");
    if (f == "base64") r.base64 = true;
    else if (f != "float") bad("encoding_format", "must be float or base64");
  }
  if (auto v = field(b, "dimensions")) r.dimensions = integer(*v, "dimensions", 1, 1 << 20);
  if (auto v = field(b, "user")) string(*v, "user");
  return r;
}

EmbedRequest parse_ollama_embed(const json& b) {
  require_object(b);
  EmbedRequest r;
  r.api = Api::OllamaChat;
  model_field(b, r.model);
  const json* in = field(b, "input");
  if (!in) bad("input", "is required");
  if (in->is_string()) {
    r.texts.push_back(in->get<std::string>());
  } else if (in->is_array() && !in->empty()) {
    if (in->size() > kMaxEmbedInputs) bad("input", "may hold at most " + std::to_string(kMaxEmbedInputs) + " inputs");
    for (const json& x : *in) r.texts.push_back(string(x, "input[]"));
  } else {
    bad("input", "must be a string or a non-empty array of strings");
  }
  if (auto v = field(b, "truncate")) r.truncate = boolean(*v, "truncate");
  ollama_keep_alive(b);
  if (auto o = field(b, "options"); o && !o->is_object()) bad("options", "must be an object");
  return r;
}

EmbedRequest parse_ollama_embeddings(const json& b) {
  require_object(b);
  EmbedRequest r;
  r.api = Api::OllamaGenerate;
  model_field(b, r.model);
  const json* p = field(b, "prompt");
  if (!p) bad("prompt", "is required");
  r.texts.push_back(string(*p, "prompt"));
  ollama_keep_alive(b);
  return r;
}

}  // namespace lokal::server
