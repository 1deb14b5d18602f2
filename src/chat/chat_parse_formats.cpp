// chat/chat_parse_formats.cpp - each tool-call format's triggers and block functions (see chat_parse.h for the
// syntax of each, chat_parse_internal.h for the block contract).
#include <algorithm>
#include <cctype>

#include "chat/chat_parse_internal.h"

namespace lokal::chat_parse_detail {

namespace {

BlockResult need_more() { return {}; }
BlockResult fail(size_t len) {
  BlockResult r;
  r.status = Block::Fail;
  r.len = len;
  return r;
}
BlockResult no_match(size_t len) {
  BlockResult r;
  r.status = Block::NoMatch;
  r.len = len;
  return r;
}
BlockResult done(size_t len, std::vector<RawCall> calls = {}) {
  BlockResult r;
  r.status = Block::Done;
  r.len = len;
  r.calls = std::move(calls);
  return r;
}
// Undecided for now; at the end of the output, `at_end`.
BlockResult more_or(const Src& src, BlockResult at_end) { return src.final ? std::move(at_end) : need_more(); }

// The JSON value starting at s[i] as parsed JSON, with its end; nullopt status passes Incomplete/Invalid through.
struct JsonAt {
  JsonStatus status;
  size_t end = 0;
  std::optional<ojson> value;  // Complete and accepted by nlohmann
};
JsonAt json_at(const Src& src, size_t i) {
  const JsonScan sc = src.json(i);
  JsonAt r{sc.status, sc.end, std::nullopt};
  if (sc.status == JsonStatus::Complete) {
    r.end = i + sc.end;
    r.value = parse_json(src.s.substr(i, sc.end));
  }
  return r;
}

// ---- call objects ----

struct CallKeys {
  const char* name;
  const char* args;
  const char* args2;    // alternative spelling, or nullptr
  bool strict = false;  // only name/args/"type":"function" keys, and the arguments must be present
};
constexpr CallKeys kNameArguments{"name", "arguments", "parameters", false};
constexpr CallKeys kLlamaKeys{"name", "parameters", "arguments", true};
constexpr CallKeys kCohereKeys{"tool_name", "parameters", "arguments", false};

std::optional<RawCall> call_from_json(const ojson& o, const CallKeys& k) {
  if (!o.is_object()) return std::nullopt;
  auto n = o.find(k.name);
  if (n == o.end() || !n->is_string() || n->get_ref<const std::string&>().empty()) return std::nullopt;
  const ojson* args = nullptr;
  if (auto a = o.find(k.args); a != o.end())
    args = &*a;
  else if (auto a2 = k.args2 ? o.find(k.args2) : o.end(); a2 != o.end())
    args = &*a2;
  if (k.strict) {
    if (!args) return std::nullopt;
    for (auto it = o.begin(); it != o.end(); ++it) {
      const std::string& key = it.key();
      if (key == k.name || key == k.args || (k.args2 && key == k.args2)) continue;
      if (key == "type" && it->is_string() && it->get_ref<const std::string&>() == "function") continue;
      return std::nullopt;
    }
  }
  auto text = arguments_text(args);
  if (!text) return std::nullopt;
  return RawCall{"", n->get<std::string>(), std::move(*text)};
}

// An id the model gave that we keep: printable ASCII, not too long.
std::string usable_id(const ojson& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_string()) return "";
  const std::string& id = it->get_ref<const std::string&>();
  if (id.empty() || id.size() > 64) return "";
  for (char c : id)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) return "";
  return id;
}

// A list of call objects (or one object) -> calls; nullopt if any is not a call or there are none.
std::optional<std::vector<RawCall>> call_list(const ojson& v, const CallKeys& k, bool mistral_ids) {
  std::vector<RawCall> calls;
  auto one = [&](const ojson& o) {
    auto c = call_from_json(o, k);
    if (!c) return false;
    if (mistral_ids) {
      std::string id = usable_id(o, "id");
      bool ok = id.size() == 9;
      for (char ch : id) ok = ok && std::isalnum(static_cast<unsigned char>(ch));
      if (ok) c->id = id;
    }
    calls.push_back(std::move(*c));
    return true;
  };
  if (v.is_array()) {
    for (const auto& o : v)
      if (!one(o)) return std::nullopt;
  } else if (!one(v)) {
    return std::nullopt;
  }
  if (calls.empty()) return std::nullopt;
  return calls;
}

// Whether s[i..] starts with `{` ws `"<key>` (the text looks like a call object even if it does not parse).
bool starts_like(std::string_view s, size_t i, std::string_view key) {
  if (i >= s.size() || s[i] != '{') return false;
  i = skip_ws(s, i + 1);
  return s.substr(i, key.size() + 1) == std::string("\"") + std::string(key);
}

// ---- Hermes: <tool_call> {json} </tool_call> ----

BlockResult hermes(const Src& src) {
  const std::string_view s = src.s;
  const size_t i = skip_ws(s, src.lit);
  if (i == s.size()) return more_or(src, fail(src.lit));
  if (s[i] != '{') return fail(src.lit);
  JsonAt j = json_at(src, i);
  if (j.status == JsonStatus::Incomplete) return more_or(src, fail(src.lit));
  if (j.status == JsonStatus::Invalid || !j.value) return fail(src.lit);
  auto call = call_from_json(*j.value, kNameArguments);
  if (!call) return fail(src.lit);
  const size_t k = skip_ws(s, j.end);
  switch (lit_at(s, k, "</tool_call>")) {
    case Lit::Match: return done(k + 12, {std::move(*call)});
    case Lit::Partial: return more_or(src, fail(src.lit));
    default: return fail(src.lit);
  }
}

// ---- Llama 3.x: {"name": ..., "parameters": ...} (; ...) at the start, <|python_tag|> ----

// Calls separated by ';' starting at s[i0] == '{'. Used at the answer's start (streaming) and after
// <|python_tag|> (final text only).
BlockResult llama_calls(const Src& src, size_t i0) {
  const std::string_view s = src.s;
  std::vector<RawCall> calls;
  size_t i = i0, last = i0;
  auto not_a_call = [&](size_t len, bool callish) {
    if (!calls.empty()) return done(last, std::move(calls));
    return callish ? fail(len) : no_match(len);
  };
  while (true) {
    JsonAt j = json_at(src, i);
    if (j.status == JsonStatus::Incomplete) {
      if (!src.final) return need_more();
      return not_a_call(i0 + 1, starts_like(s, i, "name"));
    }
    if (j.status == JsonStatus::Invalid) return not_a_call(i0 + 1, starts_like(s, i, "name"));
    std::optional<RawCall> call = j.value ? call_from_json(*j.value, kLlamaKeys) : std::nullopt;
    if (!call) {
      const bool callish = j.value ? (j.value->is_object() && j.value->contains("name") &&
                                      (j.value->contains("parameters") || j.value->contains("arguments")))
                                   : starts_like(s, i, "name");
      return not_a_call(j.value ? j.end : i0 + 1, callish);
    }
    calls.push_back(std::move(*call));
    last = j.end;
    size_t k = skip_ws(s, j.end);
    if (k == s.size()) return more_or(src, done(last, std::move(calls)));
    if (s[k] != ';') return done(last, std::move(calls));
    k = skip_ws(s, k + 1);
    if (k == s.size()) return more_or(src, done(last, std::move(calls)));
    if (s[k] != '{') return done(last, std::move(calls));
    i = k;
  }
}

BlockResult llama_start(const Src& src) {
  if (src.s[0] != '{') return no_match(0);
  return llama_calls(src, 0);
}

RawCall python_code_call(std::string_view code) {
  ojson args = ojson::object();
  args["code"] = std::string(code);
  return RawCall{"", "python", dump_compact(args)};
}

// <|python_tag|> + the rest of the output: JSON calls, a built-in tool call, or Python code.
BlockResult llama_python_tag(const Src& src) {
  if (!src.final) return need_more();
  const std::string_view s = src.s;
  const std::string_view rest = trim(s.substr(src.lit));
  if (rest.empty()) return fail(src.lit);
  if (rest[0] == '{') {
    const size_t i0 = static_cast<size_t>(rest.data() - s.data());
    BlockResult r = llama_calls(src, i0);
    if (r.status == Block::Done && skip_ws(s, r.len) == s.size()) {
      r.len = s.size();
      return r;
    }
  }
  if (auto b = parse_builtin_call(rest)) return done(s.size(), {std::move(*b)});
  return done(s.size(), {python_code_call(rest)});
}

// ---- Mistral Nemo: [TOOL_CALLS][{...}, ...] ----

BlockResult mistral(const Src& src) {
  const std::string_view s = src.s;
  const size_t i = skip_ws(s, src.lit);
  if (i == s.size()) return more_or(src, fail(src.lit));
  if (s[i] != '[' && s[i] != '{') return fail(src.lit);
  JsonAt j = json_at(src, i);
  if (j.status == JsonStatus::Incomplete) return more_or(src, fail(src.lit));
  if (j.status == JsonStatus::Invalid || !j.value) return fail(src.lit);
  auto calls = call_list(*j.value, kNameArguments, /*mistral_ids=*/true);
  if (!calls) return fail(src.lit);
  return done(j.end, std::move(*calls));
}

// ---- Firefunction v2: functools[{...}, ...] ----

BlockResult firefunction(const Src& src) {
  const size_t i = src.lit - 1;  // the '[' ending the trigger
  JsonAt j = json_at(src, i);
  if (j.status == JsonStatus::Incomplete) return more_or(src, fail(src.lit));
  if (j.status == JsonStatus::Invalid || !j.value || !j.value->is_array()) return fail(src.lit);
  auto calls = call_list(*j.value, kNameArguments, false);
  if (!calls) return fail(src.lit);
  return done(j.end, std::move(*calls));
}

// ---- Command R7B: <|START_ACTION|>[...]<|END_ACTION|>, <|START_RESPONSE|> / <|END_RESPONSE|> ----

BlockResult r7b_action(const Src& src) {
  const std::string_view s = src.s;
  const size_t i = skip_ws(s, src.lit);
  if (i == s.size()) return more_or(src, fail(src.lit));
  if (s[i] != '[' && s[i] != '{') return fail(src.lit);
  JsonAt j = json_at(src, i);
  if (j.status == JsonStatus::Incomplete) return more_or(src, fail(src.lit));
  if (j.status == JsonStatus::Invalid || !j.value) return fail(src.lit);
  auto calls = call_list(*j.value, kCohereKeys, false);
  if (!calls) return fail(src.lit);
  const size_t k = skip_ws(s, j.end);
  switch (lit_at(s, k, "<|END_ACTION|>")) {
    case Lit::Match: return done(k + 14, std::move(*calls));
    case Lit::Partial: return more_or(src, fail(src.lit));
    default: return fail(src.lit);
  }
}

BlockResult drop_marker(const Src& src) { return done(src.lit); }

// ---- DeepSeek R1 ----

// Each token in the spellings models produce: '▁' (U+2581), '_', ' ' or "\_" between words.
std::vector<std::string> ds_spellings(std::initializer_list<const char*> words) {
  std::vector<std::string> out;
  for (const char* sep : {"\xE2\x96\x81", "_", " ", "\\_"}) {
    std::string t = "<\xEF\xBD\x9C";  // "<｜"
    bool first = true;
    for (const char* w : words) {
      if (!first) t += sep;
      t += w;
      first = false;
    }
    t += "\xEF\xBD\x9C>";  // "｜>"
    out.push_back(std::move(t));
  }
  return out;
}

struct DsTokens {
  std::vector<std::string> calls_begin = ds_spellings({"tool", "calls", "begin"});
  std::vector<std::string> calls_end = ds_spellings({"tool", "calls", "end"});
  std::vector<std::string> call_begin = ds_spellings({"tool", "call", "begin"});
  std::vector<std::string> call_end = ds_spellings({"tool", "call", "end"});
  std::vector<std::string> sep = ds_spellings({"tool", "sep"});
};
const DsTokens& ds_tokens() {
  static const DsTokens t;
  return t;
}

struct TokMatch {
  Lit lit = Lit::No;
  size_t len = 0;
};
TokMatch token_at(std::string_view s, size_t i, const std::vector<std::string>& spellings) {
  TokMatch m;
  for (const auto& sp : spellings) {
    const Lit l = lit_at(s, i, sp);
    if (l == Lit::Match) return {Lit::Match, sp.size()};
    if (l == Lit::Partial) m.lit = Lit::Partial;
  }
  return m;
}

// One call at s[i] (just after <｜tool▁call▁begin｜>): TYPE<｜tool▁sep｜>NAME\n[```json] {json}
// [```]<｜tool▁call▁end｜>. Returns Done with len = the index after the call, Fail, or NeedMore.
BlockResult ds_call(const Src& src, size_t i) {
  const std::string_view s = src.s;
  const DsTokens& tk = ds_tokens();
  size_t p = i;
  while (true) {  // the type ("function")
    if (p == s.size()) return need_more();
    const TokMatch m = token_at(s, p, tk.sep);
    if (m.lit == Lit::Match) {
      p += m.len;
      break;
    }
    if (m.lit == Lit::Partial) return need_more();
    if (s[p] == '\n' || p - i > 32) return fail(0);
    ++p;
  }
  const size_t name_start = p;
  while (true) {  // the name, up to the end of the line
    if (p == s.size()) return need_more();
    if (s[p] == '\n') break;
    if (p - name_start > 256) return fail(0);
    ++p;
  }
  const std::string_view name = trim(s.substr(name_start, p - name_start));
  if (name.empty()) return fail(0);
  p = skip_ws(s, p + 1);
  for (std::string_view fence : {"```json", "```"}) {
    const Lit l = lit_at(s, p, fence);
    if (l == Lit::Partial) return need_more();
    if (l == Lit::Match) {
      p = skip_ws(s, p + fence.size());
      break;
    }
  }
  if (p == s.size()) return need_more();
  if (s[p] != '{') return fail(0);
  JsonAt j = json_at(src, p);
  if (j.status == JsonStatus::Incomplete) return need_more();
  if (j.status == JsonStatus::Invalid || !j.value || !j.value->is_object()) return fail(0);
  size_t q = skip_ws(s, j.end);
  const Lit fl = lit_at(s, q, "```");
  if (fl == Lit::Partial) return need_more();
  if (fl == Lit::Match) q = skip_ws(s, q + 3);
  const TokMatch e = token_at(s, q, tk.call_end);
  if (e.lit == Lit::Partial) return need_more();
  if (e.lit == Lit::No) return fail(0);
  return done(q + e.len, {RawCall{"", std::string(name), dump_compact(*j.value)}});
}

BlockResult deepseek(const Src& src) {
  const std::string_view s = src.s;
  const DsTokens& tk = ds_tokens();
  size_t i = 0;
  if (const TokMatch b = token_at(s, 0, tk.calls_begin); b.lit == Lit::Match) i = b.len;
  std::vector<RawCall> calls;
  size_t last = 0;  // after the last complete call
  // The block ends early (before s[last..]): the calls so far stand, the rest is looked at again as content.
  auto stop = [&]() { return calls.empty() ? fail(src.lit) : done(last, std::move(calls)); };
  while (true) {
    const size_t k = skip_ws(s, i);
    if (k == s.size()) return src.final ? (calls.empty() ? fail(src.lit) : done(k, std::move(calls))) : need_more();
    const TokMatch ce = token_at(s, k, tk.calls_end);
    if (ce.lit == Lit::Match) return calls.empty() ? fail(src.lit) : done(k + ce.len, std::move(calls));
    const TokMatch cb = token_at(s, k, tk.call_begin);
    if (cb.lit != Lit::Match) {
      if ((cb.lit == Lit::Partial || ce.lit == Lit::Partial) && !src.final) return need_more();
      return stop();
    }
    BlockResult c = ds_call(src, k + cb.len);
    if (c.status == Block::NeedMore) {
      if (!src.final) return need_more();
      return stop();
    }
    if (c.status != Block::Done) return stop();
    calls.push_back(std::move(c.calls[0]));
    i = last = c.len;
  }
}

// ---- Functionary v3.1: <function=NAME>{json}</function>, <|python_tag|>code ----

bool name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'; }

BlockResult functionary_v31(const Src& src) {
  const std::string_view s = src.s;
  size_t p = src.lit;
  while (p < s.size() && name_char(s[p]) && p - src.lit <= 128) ++p;
  if (p == s.size()) return more_or(src, fail(src.lit));
  if (s[p] != '>' || p == src.lit) return fail(src.lit);
  const std::string name(s.substr(src.lit, p - src.lit));
  const size_t i = skip_ws(s, p + 1);
  if (i == s.size()) return more_or(src, fail(src.lit));
  if (s[i] != '{') return fail(src.lit);
  JsonAt j = json_at(src, i);
  if (j.status == JsonStatus::Incomplete) return more_or(src, fail(src.lit));
  if (j.status == JsonStatus::Invalid || !j.value || !j.value->is_object()) return fail(src.lit);
  const size_t k = skip_ws(s, j.end);
  switch (lit_at(s, k, "</function>")) {
    case Lit::Match: return done(k + 11, {RawCall{"", name, dump_compact(*j.value)}});
    case Lit::Partial: return more_or(src, fail(src.lit));
    default: return fail(src.lit);
  }
}

BlockResult python_tag_code(const Src& src) {
  if (!src.final) return need_more();
  const std::string_view code = trim(src.s.substr(src.lit));
  if (code.empty()) return fail(src.lit);
  return done(src.s.size(), {python_code_call(code)});
}

// ---- Functionary v3.2: >>>NAME\n{json} / >>>all\ntext / >>>python\ncode ----

enum class Header : std::uint8_t { No, Partial, Match };
// NAME '\n' at s[i]; on Match, *end is the index after the newline.
Header header_at(std::string_view s, size_t i, size_t* end) {
  size_t p = i;
  while (p < s.size() && name_char(s[p])) {
    if (p - i >= 128) return Header::No;
    ++p;
  }
  if (p == s.size()) return Header::Partial;
  if (s[p] != '\n' || p == i) return Header::No;
  *end = p + 1;
  return Header::Match;
}

// A segment whose header starts at s[i] (i = 3 after ">>>", 0 at the answer's start).
BlockResult functionary_v32_segment(const Src& src, size_t i) {
  const std::string_view s = src.s;
  size_t h = 0;
  switch (header_at(s, i, &h)) {
    case Header::Partial:
      if (!src.final) return need_more();
      [[fallthrough]];
    case Header::No: return no_match(i);  // i == 0: not a header, the answer is plain text
    case Header::Match: break;
  }
  const std::string_view name = s.substr(i, h - 1 - i);
  if (name == "all") return done(h);
  if (!src.parse_tools) return no_match(h);
  const size_t b = skip_ws(s, h);
  if (b == s.size()) return more_or(src, fail(h));
  if (s[b] != '{') {
    if (name != "python") return fail(h);
    // Code up to the next ">>>NAME\n" or the end (the search resumes where the previous look stopped).
    size_t q = std::max(b, *src.hint);
    while (true) {
      q = s.find(">>>", q);
      if (q == std::string_view::npos) {
        *src.hint = s.size() >= 2 ? s.size() - 2 : 0;
        if (!src.final) return need_more();
        return done(s.size(), {python_code_call(trim(s.substr(h)))});
      }
      size_t e = 0;
      const Header hd = header_at(s, q + 3, &e);
      if (hd == Header::Match) {
        const std::string_view code = trim(s.substr(h, q - h));
        if (code.empty()) return fail(h);
        return done(q, {python_code_call(code)});
      }
      if (hd == Header::Partial && !src.final) {
        *src.hint = q;
        return need_more();
      }
      q += 1;
    }
  }
  JsonAt j = json_at(src, b);
  if (j.status == JsonStatus::Incomplete) return more_or(src, fail(h));
  if (j.status == JsonStatus::Invalid || !j.value || !j.value->is_object()) return fail(h);
  RawCall call{"", std::string(name), dump_compact(*j.value)};
  const size_t q = skip_ws(s, j.end);
  if (q == s.size()) return more_or(src, done(q, {std::move(call)}));
  switch (lit_at(s, q, ">>>")) {
    case Lit::Match: return done(q, {std::move(call)});
    case Lit::Partial: return more_or(src, fail(h));
    default: return fail(h);
  }
}

BlockResult functionary_v32_start(const Src& src) { return functionary_v32_segment(src, 0); }
BlockResult functionary_v32(const Src& src) {
  BlockResult r = functionary_v32_segment(src, src.lit);
  if (r.status == Block::NoMatch && r.len < src.lit) r.len = src.lit;
  return r;
}

// ---- Generic: {"tool_call": ...} / {"tool_calls": [...]} / {"response": ...} as the whole output ----

BlockResult generic_start(const Src& src) {
  const std::string_view s = src.s;
  if (s[0] != '{') return no_match(0);
  // {"response": " streams: recognize the prefix (whitespace allowed between its tokens).
  {
    size_t p = skip_ws(s, 1);
    Lit l = lit_at(s, p, "\"response\"");
    if (l == Lit::Match) {
      p = skip_ws(s, p + 10);
      l = lit_at(s, p, ":");
      if (l == Lit::Match) {
        p = skip_ws(s, p + 1);
        l = lit_at(s, p, "\"");
        if (l == Lit::Match) {
          BlockResult r = done(p + 1);
          r.enter_response = true;
          return r;
        }
      }
    }
    if (l == Lit::Partial && !src.final) return need_more();
  }
  const bool callish = starts_like(s, 0, "tool_call");
  JsonAt j = json_at(src, 0);
  if (j.status == JsonStatus::Incomplete) return more_or(src, callish ? fail(1) : no_match(1));
  if (j.status == JsonStatus::Invalid || !j.value) return callish ? fail(1) : no_match(1);
  const ojson& o = *j.value;
  if (!o.is_object()) return no_match(j.end);
  if (auto it = o.find("tool_call"); it != o.end()) {
    auto c = call_from_json(*it, kNameArguments);
    if (!c || o.size() != 1) return fail(j.end);
    c->id = usable_id(*it, "id");
    return done(j.end, {std::move(*c)});
  }
  if (auto it = o.find("tool_calls"); it != o.end()) {
    if (!it->is_array() || it->empty() || o.size() != 1) return fail(j.end);
    std::vector<RawCall> calls;
    for (const auto& e : *it) {
      auto c = call_from_json(e, kNameArguments);
      if (!c) return fail(j.end);
      c->id = usable_id(e, "id");
      calls.push_back(std::move(*c));
    }
    return done(j.end, std::move(calls));
  }
  if (auto it = o.find("response"); it != o.end()) {
    BlockResult r = done(j.end);
    r.content = it->is_string() ? it->get<std::string>() : dump_compact(*it);
    return r;
  }
  return no_match(j.end);
}

}  // namespace

FormatSpec format_spec(ToolCallFormat format, bool tools) {
  FormatSpec f;
  f.think.push_back({"<think>", "</think>"});
  switch (format) {
    case ToolCallFormat::None: break;
    case ToolCallFormat::Generic:
      if (tools) f.start = generic_start;
      break;
    case ToolCallFormat::Hermes:
      if (tools) f.triggers.push_back({{"<tool_call>"}, hermes});
      break;
    case ToolCallFormat::Llama3:
      if (tools) {
        f.start = llama_start;
        f.triggers.push_back({{"<|python_tag|>"}, llama_python_tag});
      }
      break;
    case ToolCallFormat::MistralNemo:
      if (tools) f.triggers.push_back({{"[TOOL_CALLS]"}, mistral});
      f.mistral_ids = true;
      break;
    case ToolCallFormat::DeepSeekR1:
      if (tools) {
        std::vector<std::string> lits = ds_tokens().calls_begin;
        for (const auto& t : ds_tokens().call_begin) lits.push_back(t);
        f.triggers.push_back({lits, deepseek});
      }
      break;
    case ToolCallFormat::FunctionaryV32:
      f.start = functionary_v32_start;
      f.triggers.push_back({{">>>"}, functionary_v32});
      break;
    case ToolCallFormat::FunctionaryV31:
      if (tools) {
        f.triggers.push_back({{"<function="}, functionary_v31});
        f.triggers.push_back({{"<|python_tag|>"}, python_tag_code});
      }
      break;
    case ToolCallFormat::Firefunction:
      if (tools) f.triggers.push_back({{"functools["}, firefunction});
      break;
    case ToolCallFormat::CommandR7B:
      f.think.push_back({"<|START_THINKING|>", "<|END_THINKING|>"});
      if (tools) f.triggers.push_back({{"<|START_ACTION|>"}, r7b_action});
      f.triggers.push_back({{"<|START_RESPONSE|>", "<|END_RESPONSE|>"}, drop_marker});
      break;
  }
  return f;
}

}  // namespace lokal::chat_parse_detail
