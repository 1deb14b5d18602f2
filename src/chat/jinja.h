// chat/jinja.h - a sandboxed Jinja2 template interpreter for chat templates.
//
// Renders the `chat_template` of a model the way Hugging Face transformers' `apply_chat_template` does: python
// jinja2 3.1 as ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols extension
// (break/continue), the {% generation %} tag, a json.dumps-style `tojson` filter and the globals
// raise_exception(msg) and strftime_now(fmt). Output is byte-exact with python for the templates models ship.
//
// A Template is parsed once (the constructor) and rendered many times; render() is const and thread-safe.
// Templates cannot reach anything but the variables they are given: no python object internals, no files
// (include/import/extends fail with an error), bounded output, work and nesting (Limits). Every failure, at parse
// time or at render time, is a lokal::Error with a one-line message "template NAME, line L: what went wrong".
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace lokal::jinja {

// Bounds on one render() call; exceeding any of them is a lokal::Error that names the limit.
struct Limits {
  size_t max_output_bytes = 4u << 20;  // rendered text, and any one string or list built on the way
  uint64_t max_steps = 10'000'000;     // loop iterations + macro calls + expression evaluations (+ bytes/64 built)
  int max_depth = 256;                 // nesting of calls and expressions while rendering (no stack overflow)
};

// Nesting the parser accepts (expressions, statements, brackets); deeper input is a parse error.
inline constexpr int kMaxParseDepth = 256;

class Template {
 public:
  // Parses `source`. `name` is used in errors: "template NAME, line L: message". Throws lokal::Error.
  Template(std::string source, std::string name);
  ~Template();
  Template(const Template&) = default;  // cheap: the parsed template is shared and immutable
  Template& operator=(const Template&) = default;
  Template(Template&&) noexcept = default;
  Template& operator=(Template&&) noexcept = default;

  // Renders with the variables of `context`, a JSON object (messages, tools, add_generation_prompt, bos_token, ...,
  // any extra kwargs). `now` is the clock for strftime_now (seconds since the epoch, local time = UTC); 0 = the
  // real clock. Throws lokal::Error "template NAME, line L: message" on any runtime error, including
  // raise_exception('msg') (message included verbatim) and exceeding `limits`.
  std::string render(const nlohmann::ordered_json& context, const Limits& limits = {}, int64_t now = 0) const;

  const std::string& name() const;
  const std::string& source() const;

  struct Impl;  // parsed form (chat/jinja_impl.h)

 private:
  std::shared_ptr<const Impl> impl_;
};

}  // namespace lokal::jinja
