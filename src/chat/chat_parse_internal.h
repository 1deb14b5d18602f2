// chat/chat_parse_internal.h - pieces of the chat output parser shared by chat_parse*.cpp (not a public API).
//
// The parser (chat_parse.cpp) scans the undecided text for a format's triggers (marker literals such as
// "<tool_call>"); at a trigger it asks the format's block function (chat_parse_formats.cpp) whether the text from
// there is a complete call (Done), certainly not one (Fail: it looked like a call; NoMatch: plain text), or still
// undecided (NeedMore). Block functions must decide from the text alone: a decision made on a prefix must be the
// one made on any longer text, which is what makes the result independent of how the output was split.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_parse.h"

namespace lokal::chat_parse_detail {

using ojson = nlohmann::ordered_json;

// ---- JSON syntax scanning (chat_parse_json.cpp) ----

enum class JsonStatus : std::uint8_t { Incomplete, Complete, Invalid };
struct JsonScan {
  JsonStatus status = JsonStatus::Incomplete;
  size_t end = 0;  // Complete: one past the value's last byte
};

inline constexpr size_t kMaxJsonDepth = 128;

// Incremental JSON syntax check of one value (leading whitespace allowed; nesting deeper than kMaxJsonDepth is
// Invalid). scan() resumes where the previous call stopped: each call's text must extend the previous one's.
// A top-level number is complete only once a byte after it is seen. UTF-8 is not checked here (nlohmann is).
class JsonScanner {
 public:
  JsonScan scan(std::string_view text);

 private:
  enum class St : std::uint8_t { Value, ObjFirst, ObjKey, Colon, ArrFirst, After, Str, Esc, Hex, Num, Lit, Done, Bad };
  void value_done();
  St st_ = St::Value;
  bool key_ = false;
  std::uint8_t sub_ = 0;  // Hex: digits left; Num: number state; Lit: index into lit_
  const char* lit_ = nullptr;
  std::string stack_;
  size_t pos_ = 0, end_ = 0;
};

inline JsonScan scan_json(std::string_view text) { return JsonScanner().scan(text); }

// Scanners keyed by the stream offset where their value starts, so a block re-examined after every push resumes
// its JSON scan instead of starting over.
class JsonCache {
 public:
  JsonScan scan(std::string_view text, std::uint64_t abs_start);
  void drop_before(std::uint64_t abs);

 private:
  struct Entry {
    std::uint64_t start;
    JsonScanner scanner;
  };
  std::vector<Entry> entries_;
};

// Parses a JSON text that scan_json found Complete (so its depth is bounded); nullopt when nlohmann rejects it
// (e.g. invalid UTF-8).
std::optional<ojson> parse_json(std::string_view text);
// Compact JSON text (invalid UTF-8 replaced, never throws).
std::string dump_compact(const ojson& j);
// A call's arguments as compact object text: an object; a string holding a JSON object; null or absent ({}).
std::optional<std::string> arguments_text(const ojson* v);

// Python literal call `name.call(k=v, ...)` (Llama 3.1 built-in tools) -> name and arguments.
struct RawCall {
  std::string id, name, arguments;
};
std::optional<RawCall> parse_builtin_call(std::string_view code);

// ---- blocks (chat_parse_formats.cpp) ----

enum class Block : std::uint8_t { NeedMore, Done, Fail, NoMatch };
struct BlockResult {
  Block status = Block::NeedMore;
  size_t len = 0;               // bytes decided (Done: consumed; Fail/NoMatch: shown as content, verbatim)
  std::vector<RawCall> calls;   // Done
  std::string content;          // Done: content to show instead of the consumed text (Generic "response")
  bool enter_response = false;  // Done: a Generic {"response": " prefix was consumed; the string streams next
};

// What a block function sees: the undecided text from the trigger on.
struct Src {
  std::string_view s;
  size_t lit = 0;      // length of the trigger literal at s[0] (0 for a format's start function)
  bool final = false;  // no more text will come
  bool parse_tools = true;
  std::uint64_t abs = 0;  // stream offset of s[0]
  JsonCache* cache = nullptr;
  size_t* hint = nullptr;  // per held block, starts at 0: where a linear search may resume on the next look
  JsonScan json(size_t i) const { return cache->scan(s.substr(i), abs + i); }
};

using BlockFn = BlockResult (*)(const Src&);

struct Trigger {
  std::vector<std::string> lits;  // any of these spellings starts the block
  BlockFn fn;
};

struct ThinkTags {
  std::string open, close;
};

struct FormatSpec {
  std::vector<Trigger> triggers;  // anywhere in the answer
  BlockFn start = nullptr;        // at the answer's first non-whitespace byte (may return NoMatch with len 0)
  std::vector<ThinkTags> think;   // reasoning blocks recognized at the start of the output
  bool mistral_ids = false;       // generated ids are 9 letters/digits
};

FormatSpec format_spec(ToolCallFormat format, bool parse_tools);

// ---- small text helpers ----

inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
inline size_t skip_ws(std::string_view s, size_t i) {
  while (i < s.size() && is_ws(s[i])) ++i;
  return i;
}
std::string_view trim(std::string_view s);

enum class Lit : std::uint8_t { No, Partial, Match };
// Whether s[i..] starts with lit (Match), is a proper prefix of it (Partial, also when i == s.size()), or neither.
inline Lit lit_at(std::string_view s, size_t i, std::string_view lit) {
  std::string_view r = s.substr(i);
  if (r.size() >= lit.size()) return r.substr(0, lit.size()) == lit ? Lit::Match : Lit::No;
  return lit.substr(0, r.size()) == r ? Lit::Partial : Lit::No;
}

}  // namespace lokal::chat_parse_detail
