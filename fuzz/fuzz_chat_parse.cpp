// libFuzzer target for the chat output parser (chat/chat_parse.h).
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_chat_parse.cpp \
//     src/chat/chat_parse*.cpp -o /tmp/fuzz_cp && /tmp/fuzz_cp -dict=fuzz/chat_parse.dict -max_total_time=60
//
// Input: byte 0 = option bits (reasoning, reasoning_open_at_start, parse_tools), byte 1 = split seed, the rest is
// the generated text. Every format parses the text whole and streamed in pieces whose sizes come from the seed.
// Findings (abort): an exception other than lokal::Error, deltas whose concatenation differs from message(), a
// streamed message that differs from the whole-text one, a tool call whose arguments are not a JSON object, text
// lost (with reasoning left inline and no call found, formats without framing markers must show every
// non-whitespace byte of the output in content, in order).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_parse.h"
#include "core/error.h"

namespace {

using lokal::ChatDelta;
using lokal::ChatOutputParser;
using lokal::ParsedMessage;
using lokal::ParseOptions;
using lokal::ToolCallFormat;

[[noreturn]] void finding(const std::string& what, ToolCallFormat f) {
  std::fprintf(stderr, "fuzz_chat_parse [%s]: %s\n", lokal::format_name(f), what.c_str());
  std::abort();
}

struct Collected {
  std::string content, reasoning;
  std::vector<std::string> args, names, ids;
};

void collect(Collected& c, const ChatDelta& d, ToolCallFormat f) {
  c.content += d.content;
  c.reasoning += d.reasoning_content;
  for (const auto& t : d.tool_calls) {
    if (t.index < 0 || t.index > static_cast<int>(c.args.size())) finding("tool delta index out of order", f);
    if (t.index == static_cast<int>(c.args.size())) {
      c.args.emplace_back();
      c.names.push_back(t.name);
      c.ids.push_back(t.id);
    }
    c.args[t.index] += t.arguments_part;
  }
}

void check_same(const ParsedMessage& a, const ParsedMessage& b, ToolCallFormat f, const char* what) {
  if (a.content != b.content) finding(std::string(what) + ": content differs", f);
  if (a.reasoning_content != b.reasoning_content) finding(std::string(what) + ": reasoning differs", f);
  if (a.unparsed_tool_call != b.unparsed_tool_call) finding(std::string(what) + ": unparsed flag differs", f);
  if (a.tool_calls.size() != b.tool_calls.size()) finding(std::string(what) + ": call count differs", f);
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    const auto& x = a.tool_calls[i];
    const auto& y = b.tool_calls[i];
    if (x.name != y.name || x.arguments != y.arguments || x.id != y.id)
      finding(std::string(what) + ": call differs", f);
  }
}

std::string no_ws(std::string_view s) {
  std::string out;
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') out += c;
  return out;
}

ParsedMessage streamed(std::string_view text, const ParseOptions& o, uint32_t seed) {
  ChatOutputParser p(o);
  Collected c;
  size_t i = 0;
  uint32_t x = seed * 2654435761u + 1;
  while (i < text.size()) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const size_t n = 1 + x % ((x >> 8) % 4 == 0 ? 17 : 4);
    const size_t take = std::min(n, text.size() - i);
    collect(c, p.push(text.substr(i, take)), o.format);
    i += take;
  }
  collect(c, p.finish(), o.format);
  if (!p.finish().empty()) finding("a second finish() returned something", o.format);
  const ParsedMessage& m = p.message();
  if (c.content != m.content) finding("content deltas != message().content", o.format);
  if (c.reasoning != m.reasoning_content) finding("reasoning deltas != message().reasoning_content", o.format);
  if (c.args.size() != m.tool_calls.size()) finding("tool deltas != message().tool_calls", o.format);
  for (size_t k = 0; k < c.args.size(); ++k) {
    const auto& tc = m.tool_calls[k];
    if (c.args[k] != tc.arguments || c.names[k] != tc.name || c.ids[k] != tc.id)
      finding("tool delta != message() call", o.format);
    if (tc.name.empty() || tc.id.empty()) finding("call without name or id", o.format);
    auto j = nlohmann::json::parse(tc.arguments, nullptr, false);
    if (j.is_discarded() || !j.is_object()) finding("arguments are not a JSON object: " + tc.arguments, o.format);
  }
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t bits = data[0];
  const uint32_t seed = data[1];
  const std::string_view text(reinterpret_cast<const char*>(data + 2), size - 2);
  for (int f = 0; f <= static_cast<int>(ToolCallFormat::CommandR7B); ++f) {
    ParseOptions o;
    o.format = static_cast<ToolCallFormat>(f);
    o.reasoning = !(bits & 1);
    o.reasoning_open_at_start = bits & 2;
    o.parse_tools = !(bits & 4);
    o.id_seed = 7;
    try {
      const ParsedMessage whole = lokal::parse_chat_output(text, o);
      const ParsedMessage a = streamed(text, o, seed);
      check_same(whole, a, o.format, "streamed vs whole");
      const ParsedMessage b = streamed(text, o, seed + 77);
      check_same(whole, b, o.format, "streamed (other split) vs whole");
      const bool framed = o.format == ToolCallFormat::Generic || o.format == ToolCallFormat::FunctionaryV32 ||
                          o.format == ToolCallFormat::CommandR7B;
      if (!o.reasoning && !framed && whole.tool_calls.empty() && no_ws(whole.content) != no_ws(text))
        finding("text lost: content is not the output", o.format);
      // One byte at a time, for short inputs.
      if (text.size() <= 256) {
        ChatOutputParser p(o);
        for (char ch : text) p.push(std::string_view(&ch, 1));
        p.finish();
        check_same(whole, p.message(), o.format, "byte by byte vs whole");
      }
    } catch (const lokal::Error&) {
      // allowed (the parser does not throw any today)
    } catch (const std::exception& e) {
      finding(std::string("unexpected exception: ") + e.what(), o.format);
    } catch (...) {
      finding("unexpected non-std exception", o.format);
    }
  }
  return 0;
}
