// tokenizer/bpe.cpp - byte-level BPE tokenization (tokenizer.ggml.model = "gpt2").
//
// The text is split into words by the pre-tokenizer regexes. Each word's bytes are written as
// GPT-2's printable byte characters, one symbol per byte; then, repeatedly, the adjacent pair with
// the lowest merge rank is merged (ties: the leftmost pair). Each final symbol is a token; a symbol
// that is not (possible only with unusual merge lists) is spelled with one-byte tokens where they
// exist, as llama.cpp does.
#include <queue>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab_data.h"

namespace lokal {

namespace {

struct Symbol {
  int prev, next;     // neighbours in the chain, -1 at the ends
  uint32_t off, len;  // bytes of the byte-level word; len 0 once merged into the left neighbour
};

struct Candidate {
  int32_t rank;
  int left, right;
  uint32_t len;  // bytes of left + right when proposed; stale if either symbol changed since
};

// Orders the priority queue: lowest rank first, then the leftmost pair.
struct Later {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

}  // namespace

void tokenize_bpe(const VocabData& v, std::string_view text, std::vector<int32_t>& out) {
  const std::vector<uint32_t> cps = unicode::decode_lenient(text);
  const std::vector<size_t> lengths = v.splitter->split(cps);

  std::string raw, word;
  std::vector<Symbol> syms;
  std::priority_queue<Candidate, std::vector<Candidate>, Later> queue;  // empty between words
  size_t at = 0;
  for (size_t n_cps : lengths) {
    // The word as UTF-8 (ill-formed input bytes are U+FFFD by now), then in byte-level form.
    raw.clear();
    for (size_t k = at; k < at + n_cps; ++k) unicode::append_utf8(raw, cps[k]);
    at += n_cps;
    word.clear();
    syms.clear();
    for (size_t k = 0; k < raw.size(); ++k) {
      const uint32_t off = static_cast<uint32_t>(word.size());
      unicode::append_utf8(word, unicode::byte_to_bpe_cp(static_cast<uint8_t>(raw[k])));
      const int idx = static_cast<int>(syms.size());
      syms.push_back({idx - 1, k + 1 == raw.size() ? -1 : idx + 1, off, static_cast<uint32_t>(word.size()) - off});
    }
    if (syms.empty()) continue;
    const std::string_view w(word);
    if (v.ignore_merges) {
      const int32_t id = v.find(w);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
    }

    auto propose = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const Symbol& l = syms[left];
      const Symbol& r = syms[right];
      const int32_t rank = v.merges.rank(w.substr(l.off, l.len), w.substr(r.off, r.len));
      if (rank >= 0) queue.push({rank, left, right, l.len + r.len});
    };
    for (int i = 1; i < static_cast<int>(syms.size()); ++i) propose(i - 1, i);

    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& l = syms[c.left];
      Symbol& r = syms[c.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) syms[r.next].prev = c.left;
      propose(l.prev, c.left);
      propose(c.left, l.next);
    }

    for (int i = 0; i != -1; i = syms[i].next) {
      const std::string_view s = w.substr(syms[i].off, syms[i].len);
      const int32_t id = v.find(s);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      for (size_t k = 0; k < s.size(); ++k) {
        const int32_t b = v.find(s.substr(k, 1));
        if (b >= 0) out.push_back(b);
      }
    }
  }
}

}  // namespace lokal
