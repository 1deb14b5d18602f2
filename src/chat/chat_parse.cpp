// chat/chat_parse.cpp - the streaming chat output parser (see chat_parse.h): reasoning, content, trigger scanning.
#include "chat/chat_parse.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <random>

#include "chat/chat_parse_internal.h"
#include "core/error.h"

namespace lokal {

using namespace chat_parse_detail;

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::uint64_t fresh_seed() {
  static const std::uint64_t process_random = [] {
    std::random_device rd;
    const std::uint64_t t = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ splitmix64(t);
  }();
  static std::atomic<std::uint64_t> counter{0};
  const std::uint64_t s = splitmix64(process_random + splitmix64(counter.fetch_add(1) + 1));
  return s ? s : 1;
}

// n letters/digits from a hash of (seed, index).
std::string hash_chars(std::uint64_t seed, size_t index, size_t n) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string out;
  std::uint64_t h = splitmix64(seed ^ splitmix64(index + 1));
  for (size_t i = 0; i < n; ++i) {
    if (i % 10 == 0 && i) h = splitmix64(h + i);
    out += kAlphabet[h % 62];
    h /= 62;
  }
  return out;
}

// Length of the longest proper prefix of `lit` that s ends with.
size_t partial_suffix(std::string_view s, std::string_view lit) {
  for (size_t n = std::min(s.size(), lit.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == lit.substr(0, n)) return n;
  return 0;
}

}  // namespace

struct ChatOutputParser::Impl {
  enum class Phase { Start, Think, Body };
  enum class Resp { Off, Str, Tail };

  ParseOptions opt;
  FormatSpec spec;
  std::uint64_t seed;

  std::string buf;  // buf[head..] is the undecided text
  size_t head = 0;
  std::uint64_t base = 0;  // stream offset of buf[0]
  JsonCache cache;
  std::uint64_t hint_abs = ~std::uint64_t(0);  // the block the search hint belongs to
  size_t hint = 0;

  Phase phase = Phase::Start;
  std::string think_close;    // the open reasoning block's close tag
  bool think_lead = true;     // at the reasoning block's start (whitespace dropped there)
  bool think_repeat = false;  // a <think> the model repeats after the prompt opened one is dropped
  bool body_start = true;     // the format's start function has not looked at the answer yet
  Resp resp = Resp::Off;      // Generic {"response": "...} streaming

  bool skip_ws = false;     // drop whitespace at the start of the next content (after a call or reasoning)
  std::string pending_ws;   // content's trailing whitespace, held: dropped if a call follows
  std::string pending_rws;  // reasoning's trailing whitespace, held: dropped at the block's end

  ParsedMessage msg;
  ChatDelta out;
  bool finished = false;

  explicit Impl(const ParseOptions& o) : opt(o), spec(format_spec(o.format, o.parse_tools)) {
    seed = o.id_seed ? o.id_seed : fresh_seed();
    if (opt.reasoning_open_at_start) {
      phase = Phase::Think;
      think_close = "</think>";
      think_repeat = true;
    }
  }

  std::string_view rest() const { return std::string_view(buf).substr(head); }
  std::uint64_t abs() const { return base + head; }
  void consume(size_t n) {
    head += n;
    if (head > 4096 && head * 2 > buf.size()) {
      buf.erase(0, head);
      base += head;
      head = 0;
    }
    cache.drop_before(abs());
  }

  size_t* hint_for(std::uint64_t block_abs) {
    if (block_abs != hint_abs) {
      hint_abs = block_abs;
      hint = 0;
    }
    return &hint;
  }

  // ---- output ----

  void content_out(std::string_view t) {
    if (t.empty()) return;
    msg.content += t;
    out.content += t;
  }
  void emit_content(std::string_view t) {
    if (skip_ws) {
      const size_t k = skip_ws_index(t);
      if (k == t.size()) return;
      t.remove_prefix(k);
      skip_ws = false;
    }
    if (t.empty()) return;
    size_t e = t.size();
    while (e > 0 && is_ws(t[e - 1])) --e;
    if (e == 0) {
      pending_ws += t;
      return;
    }
    content_out(pending_ws);
    pending_ws.clear();
    content_out(t.substr(0, e));
    pending_ws = std::string(t.substr(e));
  }
  void emit_reasoning(std::string_view t) {
    if (t.empty()) return;
    size_t e = t.size();
    while (e > 0 && is_ws(t[e - 1])) --e;
    if (e == 0) {
      pending_rws += t;
      return;
    }
    std::string piece = std::move(pending_rws);
    pending_rws.clear();
    piece += t.substr(0, e);
    msg.reasoning_content += piece;
    out.reasoning_content += piece;
    pending_rws = std::string(t.substr(e));
  }
  static size_t skip_ws_index(std::string_view t) { return chat_parse_detail::skip_ws(t, 0); }

  void emit_calls(std::vector<RawCall>& calls) {
    pending_ws.clear();
    skip_ws = true;
    for (auto& c : calls) {
      const size_t index = msg.tool_calls.size();
      if (c.id.empty()) c.id = spec.mistral_ids ? hash_chars(seed, index, 9) : "call_" + hash_chars(seed, index, 24);
      msg.tool_calls.push_back(ToolCall{c.id, c.name, c.arguments});
      out.tool_calls.push_back(ChatDelta::ToolDelta{static_cast<int>(index), c.id, c.name, c.arguments});
    }
  }

  // A block function's decision about the text s (which starts at the trigger).
  void apply(BlockResult& r, std::string_view s) {
    switch (r.status) {
      case Block::Done:
        if (!r.calls.empty()) {
          emit_calls(r.calls);
        } else if (r.enter_response) {
          pending_ws.clear();
          resp = Resp::Str;
        } else if (!r.content.empty()) {
          pending_ws.clear();
          skip_ws = false;
          emit_content(r.content);
          skip_ws = true;
        } else {  // a framing marker: dropped with the whitespace around it
          pending_ws.clear();
          skip_ws = true;
        }
        break;
      case Block::Fail:
        msg.unparsed_tool_call = true;
        emit_content(s.substr(0, r.len));
        break;
      case Block::NoMatch:
      case Block::NeedMore: emit_content(s.substr(0, r.len)); break;
    }
    consume(r.len);
  }

  // ---- phases; each returns whether to run again ----

  bool step_start(bool final) {
    const std::string_view s = rest();
    const size_t k = chat_parse_detail::skip_ws(s, 0);
    if (k == s.size() && !final) return false;
    bool partial = false;
    for (const auto& t : spec.think) {
      const Lit l = lit_at(s, k, t.open);
      if (l == Lit::Match) {
        if (!opt.reasoning) emit_content(s.substr(0, k + t.open.size()));
        consume(k + t.open.size());
        think_close = t.close;
        phase = Phase::Think;
        return true;
      }
      if (l == Lit::Partial) partial = true;
    }
    if (partial && !final) return false;
    phase = Phase::Body;
    return true;
  }

  void think_text(std::string_view t) {
    if (opt.reasoning) {
      emit_reasoning(t);
    } else {
      emit_content(t);
    }
  }

  bool step_think(bool final) {
    std::string_view s = rest();
    if (opt.reasoning && think_lead) {
      const size_t k = chat_parse_detail::skip_ws(s, 0);
      if (think_repeat) {
        const Lit l = lit_at(s, k, "<think>");
        if (l == Lit::Match) {
          consume(k + 7);
          think_repeat = false;
          return true;
        }
        if (l == Lit::Partial && !final) {
          consume(k);
          return false;
        }
      }
      think_repeat = false;
      consume(k);
      s = rest();
      if (s.empty()) return false;
      think_lead = false;
    }
    const size_t p = s.find(think_close);
    if (p != std::string_view::npos) {
      think_text(s.substr(0, p));
      if (opt.reasoning) {
        pending_rws.clear();
        skip_ws = true;
      } else {
        emit_content(s.substr(p, think_close.size()));
      }
      consume(p + think_close.size());
      phase = Phase::Body;
      return true;
    }
    const size_t hold = final ? 0 : partial_suffix(s, think_close);
    think_text(s.substr(0, s.size() - hold));
    consume(s.size() - hold);
    return false;
  }

  bool step_body(bool final) {
    if (resp != Resp::Off) return step_response(final);
    std::string_view s = rest();
    if (s.empty()) return false;
    if (body_start) {
      if (!spec.start) {
        body_start = false;
      } else {
        const size_t k = chat_parse_detail::skip_ws(s, 0);
        if (k == s.size()) {
          if (!final) return false;
          body_start = false;
          return true;
        }
        Src src{s.substr(k), 0, final, opt.parse_tools, abs() + k, &cache, hint_for(abs() + k)};
        BlockResult r = spec.start(src);
        if (r.status == Block::NeedMore) {
          if (!final) return false;
          r.status = Block::Fail;  // a start function decides at the end; this is only a safety net
          r.len = 1;
        }
        body_start = false;
        if (r.status == Block::NoMatch && r.len == 0) return true;
        emit_content(s.substr(0, k));
        consume(k);
        apply(r, rest());
        return true;
      }
    }
    // The earliest trigger, or a possible start of one at the end of the text.
    size_t at = s.size(), lit_len = 0;
    const Trigger* trig = nullptr;
    bool partial = false;
    for (size_t p = 0; p < s.size() && !trig && !partial; ++p) {
      for (const auto& t : spec.triggers) {
        for (const auto& lit : t.lits) {
          if (s[p] != lit[0]) continue;
          const Lit l = lit_at(s, p, lit);
          if (l == Lit::Match && lit.size() > lit_len) {
            trig = &t;
            lit_len = lit.size();
            at = p;
          } else if (l == Lit::Partial) {
            partial = true;
            at = p;
          }
        }
      }
      if (trig) partial = false;  // a full match at p wins over a longer spelling still possible at p
    }
    emit_content(s.substr(0, at));
    consume(at);
    if (!trig) {
      if (partial && final) {
        emit_content(rest());
        consume(rest().size());
      }
      return false;
    }
    s = rest();
    Src src{s, lit_len, final, opt.parse_tools, abs(), &cache, hint_for(abs())};
    BlockResult r = trig->fn(src);
    if (r.status == Block::NeedMore) {
      if (!final) return false;
      r.status = Block::Fail;  // safety net: block functions decide at the end themselves
      r.len = lit_len;
    }
    if (r.status != Block::Done && r.len == 0) r.len = lit_len;
    apply(r, s);
    return true;
  }

  // Generic {"response": "...": the JSON string's decoded text streams as content; then `}` is dropped.
  bool step_response(bool final) {
    const std::string_view s = rest();
    if (resp == Resp::Tail) {
      const size_t k = chat_parse_detail::skip_ws(s, 0);
      if (k == s.size()) {
        if (final) consume(k);
        return false;
      }
      if (s[k] == '}') {
        const size_t m = chat_parse_detail::skip_ws(s, k + 1);
        if (m == s.size()) {
          if (final) consume(m);
          return false;
        }
      }
      resp = Resp::Off;  // something else follows the string: it is content, verbatim
      body_start = false;
      return true;
    }
    std::string text;
    size_t i = 0;
    while (i < s.size()) {
      const char c = s[i];
      if (c == '"') {
        emit_content(text);
        consume(i + 1);
        resp = Resp::Tail;
        return true;
      }
      if (c != '\\') {
        text += c;
        ++i;
        continue;
      }
      if (i + 1 >= s.size()) break;
      const char e = s[i + 1];
      if (e != 'u') {
        switch (e) {
          case 'n': text += '\n'; break;
          case 't': text += '\t'; break;
          case 'r': text += '\r'; break;
          case 'b': text += '\b'; break;
          case 'f': text += '\f'; break;
          default: text += e; break;  // " \ / and anything a lenient reader takes literally
        }
        i += 2;
        continue;
      }
      unsigned cp = 0;
      size_t used = 0;
      if (!read_u_escape(s, i, &cp, &used)) break;  // incomplete: wait for more text
      append_utf8(text, cp);
      i += used;
    }
    emit_content(text);
    consume(i);
    if (final) {  // an unterminated string: whatever is left is shown as it is
      emit_content(rest());
      consume(rest().size());
      resp = Resp::Off;
    }
    return false;
  }

  // \uXXXX (with a following low surrogate for a high one) at s[i]; false if more text is needed.
  static bool read_u_escape(std::string_view s, size_t i, unsigned* cp, size_t* used) {
    auto hex4 = [&](size_t at, unsigned* v) -> int {  // 1 ok, 0 need more, -1 not hex
      if (at + 4 > s.size()) {
        for (size_t k = at; k < s.size(); ++k)
          if (!std::isxdigit(static_cast<unsigned char>(s[k]))) return -1;
        return 0;
      }
      *v = 0;
      for (size_t k = at; k < at + 4; ++k) {
        const char c = s[k];
        if (!std::isxdigit(static_cast<unsigned char>(c))) return -1;
        *v = *v * 16 + static_cast<unsigned>(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
      }
      return 1;
    };
    unsigned hi = 0;
    const int r = hex4(i + 2, &hi);
    if (r == 0) return false;
    if (r < 0) {  // "\u" not followed by hex: show the 'u' literally
      *cp = 'u';
      *used = 2;
      return true;
    }
    if (hi < 0xD800 || hi > 0xDFFF) {
      *cp = hi;
      *used = 6;
      return true;
    }
    if (hi >= 0xDC00) {  // a lone low surrogate
      *cp = 0xFFFD;
      *used = 6;
      return true;
    }
    const size_t j = i + 6;
    const Lit l = lit_at(s, j, "\\u");
    if (l == Lit::Partial) return false;
    unsigned lo = 0;
    const int r2 = l == Lit::Match ? hex4(j + 2, &lo) : -1;
    if (r2 == 0) return false;
    if (r2 < 0 || lo < 0xDC00 || lo > 0xDFFF) {
      *cp = 0xFFFD;
      *used = 6;
      return true;
    }
    *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    *used = 12;
    return true;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  void run(bool final) {
    while (true) {
      bool again = false;
      switch (phase) {
        case Phase::Start: again = step_start(final); break;
        case Phase::Think: again = step_think(final); break;
        case Phase::Body: again = step_body(final); break;
      }
      if (!again) break;
    }
    if (final) {
      if (!rest().empty()) {  // cannot happen; never lose text if it did
        emit_content(rest());
        consume(rest().size());
      }
      content_out(pending_ws);
      pending_ws.clear();
      pending_rws.clear();
    }
  }

  ChatDelta take() {
    ChatDelta d = std::move(out);
    out = ChatDelta();
    return d;
  }
};

ChatOutputParser::ChatOutputParser(ParseOptions options) : impl_(std::make_unique<Impl>(options)) {}
ChatOutputParser::~ChatOutputParser() = default;
ChatOutputParser::ChatOutputParser(ChatOutputParser&&) noexcept = default;
ChatOutputParser& ChatOutputParser::operator=(ChatOutputParser&&) noexcept = default;

ChatDelta ChatOutputParser::push(std::string_view text) {
  if (impl_->finished) throw Error("chat output parser: push() after finish()");
  impl_->buf.append(text);
  impl_->run(false);
  return impl_->take();
}

ChatDelta ChatOutputParser::finish() {
  if (impl_->finished) return ChatDelta();
  impl_->finished = true;
  impl_->run(true);
  return impl_->take();
}

const ParsedMessage& ChatOutputParser::message() const { return impl_->msg; }

ParsedMessage parse_chat_output(std::string_view text, const ParseOptions& options) {
  ChatOutputParser p(options);
  p.push(text);
  p.finish();
  return p.message();
}

// ---- names and detection ----

namespace {

struct FormatName {
  ToolCallFormat format;
  const char* name;
};
constexpr FormatName kFormatNames[] = {
    {ToolCallFormat::None, "none"},
    {ToolCallFormat::Generic, "generic"},
    {ToolCallFormat::Hermes, "hermes"},
    {ToolCallFormat::Llama3, "llama3"},
    {ToolCallFormat::MistralNemo, "mistral-nemo"},
    {ToolCallFormat::DeepSeekR1, "deepseek-r1"},
    {ToolCallFormat::FunctionaryV32, "functionary-v3.2"},
    {ToolCallFormat::FunctionaryV31, "functionary-v3.1"},
    {ToolCallFormat::Firefunction, "firefunction-v2"},
    {ToolCallFormat::CommandR7B, "command-r7b"},
};

bool contains(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

}  // namespace

const char* format_name(ToolCallFormat format) {
  for (const auto& f : kFormatNames)
    if (f.format == format) return f.name;
  return "unknown";
}

ToolCallFormat format_from_name(std::string_view name) {
  std::string known;
  for (const auto& f : kFormatNames) {
    if (name == f.name) return f.format;
    known += known.empty() ? "" : ", ";
    known += f.name;
  }
  throw Error("unknown tool-call format '" + std::string(name) + "' (known: " + known + ")");
}

ToolCallFormat detect_format(std::string_view t) {
  if (contains(t,
               "<\xEF\xBD\x9Ctool\xE2\x96\x81"
               "calls\xE2\x96\x81"
               "begin\xEF\xBD\x9C>"))
    return ToolCallFormat::DeepSeekR1;
  if (contains(t, "<|START_ACTION|>")) return ToolCallFormat::CommandR7B;
  if (contains(t, " functools[")) return ToolCallFormat::Firefunction;
  if (contains(t, ">>>all")) return ToolCallFormat::FunctionaryV32;
  if (contains(t, "<function=")) return ToolCallFormat::FunctionaryV31;
  if (contains(t, "[TOOL_CALLS]")) return ToolCallFormat::MistralNemo;
  if (contains(t, "<tool_call>")) return ToolCallFormat::Hermes;
  if (contains(t, "<|start_header_id|>") && contains(t, "ipython")) return ToolCallFormat::Llama3;
  return ToolCallFormat::Generic;
}

bool detect_reasoning_open(std::string_view t) {
  const size_t p = t.rfind("add_generation_prompt");
  if (p == std::string_view::npos) return false;
  std::string_view after = t.substr(p);
  if (const size_t e = after.find("endif"); e != std::string_view::npos) after = after.substr(0, e);
  return contains(after, "<think>");
}

}  // namespace lokal
