// tokenizer/symbol_table.cpp - open-addressing hash tables for token texts and BPE merges.
#include "tokenizer/symbol_table.h"

#include <algorithm>
#include <bit>

#include "core/error.h"

namespace lokal {

namespace {

// FNV-1a, fed piece by piece (a merge "left right" hashes like its parts fed in turn). Token
// texts are short, so a byte loop is as fast as anything fancier.
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;
uint64_t fnv(uint64_t h, std::string_view s) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}
uint32_t finish(uint64_t h) { return static_cast<uint32_t>(h ^ (h >> 32)); }

// Slots for n entries: a power of two, at most 2/3 full.
size_t slots_for(size_t n) { return std::bit_ceil(std::max<size_t>(16, n + n / 2 + 1)); }

}  // namespace

// --- SymbolTable -------------------------------------------------------------------------------

void SymbolTable::reserve(size_t n) {
  strings_.reserve(n);
  if (slots_for(n) > slots_.size()) rehash(slots_for(n));
}

void SymbolTable::rehash(size_t n_slots) {
  slots_.assign(n_slots, Slot{0, -1});
  for (size_t id = 0; id < strings_.size(); ++id) {
    const uint32_t h = finish(fnv(kFnvBasis, strings_[id]));
    // Re-adding in id order keeps "the last equal string wins".
    slots_[probe(strings_[id], h)] = Slot{h, static_cast<int32_t>(id)};
  }
}

size_t SymbolTable::probe(std::string_view s, uint32_t hash) const {
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& slot = slots_[i];
    if (slot.id < 0 || (slot.hash == hash && strings_[static_cast<size_t>(slot.id)] == s)) return i;
  }
}

void SymbolTable::add(std::string s) {
  if (slots_for(strings_.size() + 1) > slots_.size()) rehash(slots_for(strings_.size() + 1));
  const uint32_t h = finish(fnv(kFnvBasis, s));
  strings_.push_back(std::move(s));
  slots_[probe(strings_.back(), h)] = Slot{h, static_cast<int32_t>(strings_.size() - 1)};
}

int32_t SymbolTable::find(std::string_view s) const {
  if (slots_.empty()) return -1;
  return slots_[probe(s, finish(fnv(kFnvBasis, s)))].id;
}

// --- MergeRanks --------------------------------------------------------------------------------

void MergeRanks::build(const std::vector<std::string_view>& merges) {
  size_t bytes = 0;
  for (std::string_view m : merges) bytes += m.size();
  if (bytes > UINT32_MAX || merges.size() > static_cast<size_t>(INT32_MAX))
    throw Error("too many BPE merges");
  text_.clear();
  text_.reserve(bytes);
  starts_.assign(1, 0);
  starts_.reserve(merges.size() + 1);
  slots_.assign(slots_for(merges.size()), Slot{0, -1});
  const size_t mask = slots_.size() - 1;
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string_view m = merges[r];
    text_ += m;
    starts_.push_back(static_cast<uint32_t>(text_.size()));
    const uint32_t h = finish(fnv(kFnvBasis, m));
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Slot& slot = slots_[i];
      if (slot.rank < 0) {
        slot = Slot{h, static_cast<int32_t>(r)};
        break;
      }
      if (slot.hash == h && merge(slot.rank) == m) break;  // listed before: keep the lower rank
    }
  }
}

int32_t MergeRanks::rank(std::string_view left, std::string_view right) const {
  if (slots_.empty()) return -1;
  const uint32_t h = finish(fnv(fnv(fnv(kFnvBasis, left), " "), right));
  const size_t mask = slots_.size() - 1;
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    const Slot& slot = slots_[i];
    if (slot.rank < 0) return -1;
    if (slot.hash != h) continue;
    const std::string_view m = merge(slot.rank);
    if (m.size() == left.size() + 1 + right.size() && m.substr(0, left.size()) == left && m[left.size()] == ' ' &&
        m.substr(left.size() + 1) == right)
      return slot.rank;
  }
}

}  // namespace lokal
