// fuzz/fuzz_grammar.cpp - libFuzzer entry for the grammar code: the input as GBNF (if it parses, a matcher over a
// small vocabulary takes some of the input's bytes, checking that refusals leave the state unchanged and that
// fill_mask agrees with allowed()), and the input as a JSON schema (if it converts, the grammar must parse).
// Only lokal::Error may come out; anything else (another exception, a crash, a sanitizer report) is a finding.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc fuzz/fuzz_grammar.cpp src/chat/grammar*.cpp \
//       src/chat/json_schema.cpp -o /tmp/fuzz_grammar && /tmp/fuzz_grammar -max_total_time=60 /tmp/grammar-corpus
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "chat/grammar.h"
#include "chat/json_schema.h"
#include "core/error.h"

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_grammar: %s\n", what);
  std::abort();
}

const std::shared_ptr<const lokal::TokenIndex>& vocab() {
  static const std::shared_ptr<const lokal::TokenIndex> ti = [] {
    std::vector<std::string> pieces;
    for (int b = 0; b < 256; ++b) pieces.push_back(std::string(1, static_cast<char>(b)));
    for (const char* p : {"ab", "abc", "\"", "\":", "{\"", "\xC3\xA9", "\xE2\x82", "\xAC", "\xF0\x9F\x98\x80", "  ",
                          "\n", "true", "null", "12", "-1", "x\xE0\x80", "qq", "qqq", "qqqq", ""})
      pieces.push_back(p);
    std::vector<bool> eog(pieces.size(), false);
    pieces.push_back("");
    eog.push_back(true);
    return std::make_shared<const lokal::TokenIndex>(pieces, eog);
  }();
  return ti;
}

void exercise(const std::shared_ptr<const lokal::Grammar>& g, std::string_view feed) {
  lokal::GrammarMatcherOptions opt;
  opt.max_stacks = 256;
  opt.max_cache_states = 512;
  opt.max_cached_masks = 4;
  opt.max_expand_steps = 1024;  // ((x+)+)+... grammars refuse bytes early instead of timing out the fuzzer
  lokal::GrammarMatcher m(g, vocab(), opt);
  std::vector<uint8_t> mask;
  for (size_t i = 0; i < feed.size() && i < 64; ++i) {
    const std::string_view byte = feed.substr(i, 1);
    lokal::GrammarMatcher before = m;
    const bool ok = m.accept_bytes(byte);
    if (!ok && !m.same_state(before)) finding("a refused byte changed the state");
    if (ok != before.check_bytes_uncached(byte)) finding("cached and uncached paths disagree");
    if (i % 8 == 0) {
      m.fill_mask(mask);
      for (int32_t id = 0; id < vocab()->n_tokens(); id += 3)
        if ((mask[static_cast<size_t>(id)] != 0) != m.allowed(id)) finding("fill_mask and allowed() disagree");
    }
  }
  (void)m.is_complete();
  (void)m.is_dead();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // As GBNF; the bytes after a NUL (if any) are fed to the matcher, else the whole input.
  const size_t nul = text.find('\0');
  const std::string_view gbnf = text.substr(0, nul);
  const std::string_view feed = nul == std::string_view::npos ? text : text.substr(nul + 1);
  try {
    auto g = lokal::Grammar::parse(gbnf);
    (void)g->dump();
    exercise(g, feed);
  } catch (const lokal::Error&) {
  }
  // As a JSON schema.
  const auto schema = nlohmann::ordered_json::parse(text.begin(), text.end(), nullptr, false);
  if (!schema.is_discarded()) {
    try {
      const std::string out = lokal::json_schema_to_gbnf(schema);
      lokal::Grammar::parse(out);  // json_schema_to_gbnf checks it too; a failure here would be a bug
    } catch (const lokal::Error&) {
    }
  }
  return 0;
}
