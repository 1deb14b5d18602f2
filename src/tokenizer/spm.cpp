// tokenizer/spm.cpp - SentencePiece-style tokenization (tokenizer.ggml.model = "llama").
//
// The text is cut into UTF-8 characters; then, repeatedly, the adjacent pair whose concatenation
// is the vocabulary token with the highest score is merged (ties: the leftmost pair). Pieces that
// end up not being tokens are spelled with byte tokens (<0xNN>), or the unknown token if the
// vocabulary has no byte for them.
#include <queue>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab_data.h"

namespace lokal {

namespace {

struct Piece {
  int prev, next;  // neighbours in the chain, -1 at the ends
  uint32_t off, len;  // bytes of the text; len 0 once merged into the left neighbour
};

struct Candidate {
  float score;
  int left, right;
  uint32_t len;  // bytes of left + right when proposed; stale if either piece changed since
};

// Orders the priority queue: highest score first, then the leftmost pair.
struct Lower {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void tokenize_spm(const VocabData& v, std::string_view text, std::vector<int32_t>& out) {
  std::vector<Piece> pieces;
  for (size_t off = 0; off < text.size();) {
    const size_t len = std::min(unicode::utf8_len_from_lead(static_cast<uint8_t>(text[off])), text.size() - off);
    const int idx = static_cast<int>(pieces.size());
    pieces.push_back({idx - 1, off + len == text.size() ? -1 : idx + 1, static_cast<uint32_t>(off),
                      static_cast<uint32_t>(len)});
    off += len;
  }
  if (pieces.empty()) return;

  std::priority_queue<Candidate, std::vector<Candidate>, Lower> queue;
  auto propose = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const uint32_t len = pieces[left].len + pieces[right].len;
    const int32_t id = v.find(text.substr(pieces[left].off, len));
    if (id >= 0) queue.push({v.scores[id], left, right, len});
  };
  for (int i = 1; i < static_cast<int>(pieces.size()); ++i) propose(i - 1, i);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Piece& l = pieces[c.left];
    Piece& r = pieces[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) pieces[r.next].prev = c.left;
    propose(l.prev, c.left);
    propose(c.left, l.next);
  }

  for (int i = 0; i != -1; i = pieces[i].next) {
    const std::string_view piece = text.substr(pieces[i].off, pieces[i].len);
    const int32_t id = v.find(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    bool prev_unknown = false;  // a run of bytes without a token becomes one unknown token
    for (char ch : piece) {
      const int32_t b = v.byte_token[static_cast<uint8_t>(ch)];
      if (b >= 0) {
        out.push_back(b);
        prev_unknown = false;
      } else if (!prev_unknown) {
        v.warn_unknown(piece);
        if (v.unk >= 0) out.push_back(v.unk);
        prev_unknown = true;
      }
    }
  }
}

}  // namespace lokal
