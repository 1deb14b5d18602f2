// tokenizer/symbol_table.h - the hash tables behind vocabulary lookups (internal).
//
// Both are open-addressing tables with linear probing over flat arrays, so that a 128k-token
// vocabulary with 280k merges loads in tens of milliseconds (node-based std::unordered_map is
// several times slower to build).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lokal {

// Strings with dense ids 0, 1, 2, ... in the order added, and lookup by text.
class SymbolTable {
 public:
  void reserve(size_t n);
  // Appends `s`. If an equal string was added before, lookups now find the new id (the last one
  // wins, as in llama.cpp's token map).
  void add(std::string s);
  int32_t find(std::string_view s) const;  // -1 if absent
  const std::string& text(int32_t id) const { return strings_[static_cast<size_t>(id)]; }
  size_t size() const { return strings_.size(); }

 private:
  struct Slot {
    uint32_t hash;
    int32_t id;  // -1: empty
  };
  void rehash(size_t n_slots);
  size_t probe(std::string_view s, uint32_t hash) const;  // slot holding s, or the empty slot to use

  std::vector<std::string> strings_;
  std::vector<Slot> slots_;  // size: a power of two, at most 2/3 full
};

// The ranks of BPE merges: merge i is the string "left right" at position i of the merges list.
// A pair is looked up as the string left + ' ' + right; llama.cpp instead splits each merge at its
// first space, which is the same thing because byte-level BPE symbols never contain a space.
class MergeRanks {
 public:
  // Copies the list; for a pair listed twice the first (lowest) rank counts.
  void build(const std::vector<std::string_view>& merges);
  int32_t rank(std::string_view left, std::string_view right) const;  // -1 if not a merge
  size_t size() const { return starts_.empty() ? 0 : starts_.size() - 1; }

 private:
  struct Slot {
    uint32_t hash;
    int32_t rank;  // -1: empty
  };
  std::string_view merge(int32_t rank) const {
    return std::string_view(text_).substr(starts_[rank], starts_[rank + 1] - starts_[rank]);
  }

  std::string text_;             // all merge strings, concatenated
  std::vector<uint32_t> starts_;  // merge i is text_[starts_[i], starts_[i + 1])
  std::vector<Slot> slots_;      // size: a power of two, at most 2/3 full
};

}  // namespace lokal
