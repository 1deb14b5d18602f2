#include "runtime/kv_pool.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace lokal {

size_t KVPool::KeyHash::operator()(const Key& k) const {
  // FNV-1a over the parent, its generation and the tokens; keys are compared in full on a hash match.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(static_cast<uint32_t>(k.parent));
  mix(k.parent_gen);
  for (int32_t t : k.tokens) mix(static_cast<uint32_t>(t));
  return static_cast<size_t>(h);
}

KVPool::KVPool(const ModelConfig& cfg, int64_t n_tokens, DType type_k, DType type_v, DeviceModel* dev) {
  if (n_tokens <= 0) throw Error("the KV cache must hold at least one token, got " + std::to_string(n_tokens));
  const int64_t n_pages = KVCache::pages_for(n_tokens);
  if (n_pages > INT32_MAX / 2) throw Error("KV cache of " + std::to_string(n_tokens) + " tokens is too large");
  cache_ = std::make_unique<KVCache>(cfg, n_pages, type_k, type_v, dev);
  pages_.resize(static_cast<size_t>(n_pages));
  free_.reserve(static_cast<size_t>(n_pages));
  for (int64_t p = n_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));  // page 0 first
}

KVPool::Seq& KVPool::seq(SeqId s) {
  if (s < 0 || static_cast<size_t>(s) >= seqs_.size() || !seqs_[static_cast<size_t>(s)].live)
    throw Error("KV pool: unknown sequence " + std::to_string(s));
  return seqs_[static_cast<size_t>(s)];
}
const KVPool::Seq& KVPool::seq(SeqId s) const { return const_cast<KVPool*>(this)->seq(s); }

int64_t KVPool::n_sequences() const {
  return static_cast<int64_t>(std::count_if(seqs_.begin(), seqs_.end(), [](const Seq& q) { return q.live; }));
}

KVPool::SeqId KVPool::create() {
  SeqId s;
  if (!free_seqs_.empty()) {
    s = free_seqs_.back();
    free_seqs_.pop_back();
  } else {
    s = static_cast<SeqId>(seqs_.size());
    seqs_.emplace_back();
  }
  Seq& q = seqs_[static_cast<size_t>(s)];
  q.live = true;
  q.pages.clear();
  q.tokens.clear();
  return s;
}

int32_t KVPool::take_page() {
  int32_t p;
  if (!free_.empty()) {
    p = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    p = lru_.front();
    lru_.pop_front();
    Page& pg = pages_[static_cast<size_t>(p)];
    map_.erase(pg.key);
    pg.cached = false;
    ++evictions_;
  } else {
    return -1;
  }
  Page& pg = pages_[static_cast<size_t>(p)];
  pg.refs = 1;
  ++pg.gen;  // keys naming the old contents as their parent never match again
  return p;
}

void KVPool::hold(int32_t p) {
  Page& pg = pages_[static_cast<size_t>(p)];
  if (pg.refs == 0 && pg.cached) lru_.erase(pg.lru);
  ++pg.refs;
}

void KVPool::drop(int32_t p) {
  Page& pg = pages_[static_cast<size_t>(p)];
  if (pg.refs <= 0) throw Error("KV pool: page " + std::to_string(p) + " released more often than held");
  if (--pg.refs > 0) return;
  if (pg.cached) pg.lru = lru_.insert(lru_.end(), p);
  else free_.push_back(p);
}

int64_t KVPool::attach_prefix(SeqId s, const std::vector<int32_t>& tokens) {
  Seq& q = seq(s);
  if (!q.tokens.empty()) throw Error("KV pool: attach_prefix needs an empty sequence");
  const int64_t max_pages = tokens.empty() ? 0 : (static_cast<int64_t>(tokens.size()) - 1) / kKVPage;
  Key k;
  for (int64_t i = 0; i < max_pages; ++i) {
    std::copy(tokens.begin() + i * kKVPage, tokens.begin() + (i + 1) * kKVPage, k.tokens.begin());
    auto it = map_.find(k);
    if (it == map_.end()) break;
    const int32_t p = it->second;
    hold(p);
    q.pages.push_back(p);
    k.parent = p;
    k.parent_gen = pages_[static_cast<size_t>(p)].gen;
  }
  q.tokens.assign(tokens.begin(), tokens.begin() + static_cast<int64_t>(q.pages.size()) * kKVPage);
  return static_cast<int64_t>(q.tokens.size());
}

int64_t KVPool::pages_needed(SeqId s, int64_t new_len) const {
  const Seq& q = seq(s);
  const int64_t len = static_cast<int64_t>(q.tokens.size());
  if (new_len <= len) return 0;
  const int64_t want = KVCache::pages_for(new_len);
  int64_t need = std::max<int64_t>(0, want - static_cast<int64_t>(q.pages.size()));
  // Existing pages that will be written and are shared: one copy each (a cached page held by this sequence alone
  // is taken out of the cache instead, no copy).
  for (int64_t i = len / kKVPage; i < static_cast<int64_t>(q.pages.size()) && i < want; ++i)
    if (pages_[static_cast<size_t>(q.pages[static_cast<size_t>(i)])].refs > 1) ++need;
  return need;
}

bool KVPool::reserve(SeqId s, int64_t new_len) {
  Seq& q = seq(s);
  const int64_t len = static_cast<int64_t>(q.tokens.size());
  if (new_len <= len) return true;
  if (pages_needed(s, new_len) > available_pages()) return false;
  const int64_t want = KVCache::pages_for(new_len);
  for (int64_t i = len / kKVPage; i < static_cast<int64_t>(q.pages.size()) && i < want; ++i) {
    int32_t& p = q.pages[static_cast<size_t>(i)];
    if (writable(p)) continue;
    Page& pg = pages_[static_cast<size_t>(p)];
    if (pg.refs == 1) {  // cached, held only here: leave the cache and write in place
      map_.erase(pg.key);
      pg.cached = false;
      ++pg.gen;
      continue;
    }
    const int32_t c = take_page();  // counted by pages_needed
    cache_->copy_page(c, p);
    drop(p);
    p = c;
  }
  while (static_cast<int64_t>(q.pages.size()) < want) q.pages.push_back(take_page());
  return true;
}

void KVPool::commit(SeqId s, const int32_t* tokens, int64_t n) {
  Seq& q = seq(s);
  const int64_t len = static_cast<int64_t>(q.tokens.size());
  if (n <= 0) return;
  if (KVCache::pages_for(len + n) > static_cast<int64_t>(q.pages.size()))
    throw Error("KV pool: commit past the reserved pages");
  q.tokens.insert(q.tokens.end(), tokens, tokens + n);
  // Register every page that became full.
  for (int64_t i = len / kKVPage; i < (len + n) / kKVPage; ++i) {
    const int32_t p = q.pages[static_cast<size_t>(i)];
    Page& pg = pages_[static_cast<size_t>(p)];
    if (pg.cached) continue;
    Key k;
    if (i > 0) {
      k.parent = q.pages[static_cast<size_t>(i - 1)];
      k.parent_gen = pages_[static_cast<size_t>(k.parent)].gen;
      // A parent that is not registered has no stable identity: its page may be rewritten in place.
      if (!pages_[static_cast<size_t>(k.parent)].cached) continue;
    }
    std::copy(q.tokens.begin() + i * kKVPage, q.tokens.begin() + (i + 1) * kKVPage, k.tokens.begin());
    if (map_.count(k)) continue;  // another sequence computed the same page first
    pg.key = k;
    pg.cached = true;
    map_.emplace(k, p);
  }
}

void KVPool::truncate(SeqId s, int64_t n) {
  Seq& q = seq(s);
  if (n < 0 || n > static_cast<int64_t>(q.tokens.size()))
    throw Error("KV pool: cannot truncate a sequence of " + std::to_string(q.tokens.size()) + " tokens to " +
                std::to_string(n));
  q.tokens.resize(static_cast<size_t>(n));
  const int64_t keep = KVCache::pages_for(n);
  while (static_cast<int64_t>(q.pages.size()) > keep) {
    drop(q.pages.back());
    q.pages.pop_back();
  }
}

KVPool::SeqId KVPool::fork(SeqId s) {
  const SeqId f = create();
  Seq& src = seq(s);  // after create(): seqs_ may have grown
  Seq& dst = seq(f);
  dst.pages = src.pages;
  dst.tokens = src.tokens;
  for (int32_t p : dst.pages) hold(p);
  return f;
}

void KVPool::release(SeqId s) {
  Seq& q = seq(s);
  for (auto it = q.pages.rbegin(); it != q.pages.rend(); ++it) drop(*it);  // deepest pages evicted first
  q.pages.clear();
  q.tokens.clear();
  q.live = false;
  free_seqs_.push_back(s);
}

void KVPool::check_invariants() const {
  std::vector<int32_t> refs(pages_.size(), 0);
  for (const Seq& q : seqs_) {
    if (!q.live) continue;
    if (static_cast<int64_t>(q.pages.size()) < KVCache::pages_for(static_cast<int64_t>(q.tokens.size())))
      throw Error("KV pool: a sequence has fewer pages than its length needs");
    for (int32_t p : q.pages) {
      if (p < 0 || static_cast<size_t>(p) >= pages_.size()) throw Error("KV pool: page id out of range");
      ++refs[static_cast<size_t>(p)];
    }
  }
  std::vector<int> where(pages_.size(), 0);  // 1 free, 2 lru
  for (int32_t p : free_) where[static_cast<size_t>(p)] += 1;
  for (int32_t p : lru_) where[static_cast<size_t>(p)] += 2;
  size_t n_cached = 0;
  for (size_t p = 0; p < pages_.size(); ++p) {
    const Page& pg = pages_[p];
    if (pg.refs != refs[p])
      throw Error("KV pool: page " + std::to_string(p) + " has " + std::to_string(pg.refs) + " references, " +
                  std::to_string(refs[p]) + " in page tables");
    const int expect = pg.refs > 0 ? 0 : pg.cached ? 2 : 1;
    if (where[p] != expect) throw Error("KV pool: page " + std::to_string(p) + " is on the wrong list");
    if (pg.cached) {
      ++n_cached;
      auto it = map_.find(pg.key);
      if (it == map_.end() || it->second != static_cast<int32_t>(p))
        throw Error("KV pool: cached page " + std::to_string(p) + " is not in the prefix map");
    }
  }
  if (n_cached != map_.size()) throw Error("KV pool: the prefix map holds pages that are not marked cached");
}

}  // namespace lokal
