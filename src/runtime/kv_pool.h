// runtime/kv_pool.h - the KV cache shared by all sequences: pages, page tables, rollback, fork, prefix reuse.
//
// The pool is one KVCache (model/model.h) of n pages of kKVPage (64) positions, allocated once. The budget is a
// total number of cached tokens shared by every sequence: a sequence takes pages as it grows and gives them back when
// it shrinks or ends; nothing divides the pool into fixed slots.
//
// Pages are reference counted. Several sequences can hold the same page (fork, prefix reuse); a page is written only
// by a sequence that holds it alone and that is not in the prefix cache (reserve() copies it first otherwise:
// copy-on-write).
//
// Prefix cache: when a sequence's page fills up (64 tokens committed), the page is registered under the key
// (the page before it in that sequence, that page's generation, the 64 tokens). Since the page before is itself
// keyed by its own predecessor, a chain of keys names an exact token prefix from position 0 (no hashing of long
// prefixes, no collisions: keys are compared in full). A registered page is immutable. A new sequence whose
// tokens start with a registered chain takes those pages instead of recomputing them (attach_prefix). When no
// sequence holds a registered page it stays cached, in LRU order, and is evicted only when free pages run out. A
// page's generation changes whenever it is given out anew, so keys that named the old contents never match again.
#pragma once
#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "model/model.h"

namespace lokal {

class KVPool {
 public:
  using SeqId = int32_t;

  // A pool of at least n_tokens positions (rounded up to whole pages).
  KVPool(const ModelConfig& cfg, int64_t n_tokens, DType type_k, DType type_v, DeviceModel* dev = nullptr);

  KVCache& cache() { return *cache_; }
  const KVCache& cache() const { return *cache_; }
  int64_t n_pages() const { return cache_->n_pages(); }
  int64_t capacity_tokens() const { return cache_->n_ctx(); }
  // Pages no sequence holds: free ones plus cached ones that could be evicted.
  int64_t available_pages() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t cached_pages() const { return static_cast<int64_t>(lru_.size()); }  // unheld pages in the prefix cache
  int64_t evictions() const { return evictions_; }

  // A new empty sequence.
  SeqId create();
  // Attaches to an empty sequence the longest run of cached full pages that `tokens` starts with, leaving at least
  // one token of `tokens` to evaluate (its logits are needed). Returns the number of positions reused (a multiple
  // of 64); the sequence's length is then that number.
  int64_t attach_prefix(SeqId s, const std::vector<int32_t>& tokens);
  // Makes positions [length, new_len) writable: allocates missing pages (evicting unheld cached pages, least
  // recently used first) and copies shared or cached pages that will be written. Returns false, changing nothing
  // the sequence can observe, when the pool has too few pages; pages_needed() tells how many.
  bool reserve(SeqId s, int64_t new_len);
  int64_t pages_needed(SeqId s, int64_t new_len) const;
  // Records that positions [length, length + n) now hold `tokens` (after a forward pass wrote them); registers
  // every page that became full in the prefix cache.
  void commit(SeqId s, const int32_t* tokens, int64_t n);
  // Rollback: the sequence keeps positions [0, n); the next token goes to position n, exactly as if nothing after n
  // had been evaluated. Pages past n are released.
  void truncate(SeqId s, int64_t n);
  // A new sequence with the same contents, sharing all pages (the partial last page is copied when either writes).
  SeqId fork(SeqId s);
  // Ends a sequence: its pages are released (cached ones stay in the prefix cache).
  void release(SeqId s);

  int64_t length(SeqId s) const { return seq(s).tokens.size(); }
  const std::vector<int32_t>& tokens(SeqId s) const { return seq(s).tokens; }
  const std::vector<int32_t>& pages(SeqId s) const { return seq(s).pages; }
  SeqPages page_table(SeqId s) const {
    return {seq(s).pages.data(), static_cast<int64_t>(seq(s).pages.size())};
  }
  int64_t n_sequences() const;
  // Checks the bookkeeping (reference counts against page tables, free/LRU lists, cache map); throws lokal::Error
  // on any inconsistency. For tests.
  void check_invariants() const;

 private:
  struct Key {
    int32_t parent = -1;
    uint32_t parent_gen = 0;
    std::array<int32_t, kKVPage> tokens{};
    bool operator==(const Key& o) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  struct Page {
    int32_t refs = 0;
    uint32_t gen = 0;
    bool cached = false;  // registered under `key`; immutable
    Key key;
    std::list<int32_t>::iterator lru;  // valid when cached && refs == 0
  };
  struct Seq {
    bool live = false;
    std::vector<int32_t> pages;
    std::vector<int32_t> tokens;
  };

  Seq& seq(SeqId s);
  const Seq& seq(SeqId s) const;
  int32_t take_page();       // a free page or an evicted cached one, refs = 1, new generation; -1 if none
  void hold(int32_t p);      // refs++ (leaves the LRU list if it was there)
  void drop(int32_t p);      // refs--; at 0: to the LRU list if cached, else free
  bool writable(int32_t p) const { return pages_[static_cast<size_t>(p)].refs == 1 && !pages_[static_cast<size_t>(p)].cached; }

  std::unique_ptr<KVCache> cache_;
  std::vector<Page> pages_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // unheld cached pages, least recently used first
  std::unordered_map<Key, int32_t, KeyHash> map_;
  std::vector<Seq> seqs_;
  std::vector<SeqId> free_seqs_;
  int64_t evictions_ = 0;
};

}  // namespace lokal
