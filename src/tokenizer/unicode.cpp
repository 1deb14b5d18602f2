// tokenizer/unicode.cpp - UTF-8 coding, the GPT-2 byte mapping and character-property lookups.
#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace lokal::unicode {

size_t utf8_len_from_lead(uint8_t lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

std::vector<uint32_t> decode_lenient(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b = static_cast<uint8_t>(s[i]);
    size_t n_cont = 0;  // continuation bytes the lead byte asks for
    uint32_t cp = b;
    if ((b & 0xE0) == 0xC0) {
      n_cont = 1, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n_cont = 2, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n_cont = 3, cp = b & 0x07;
    } else if (b >= 0x80) {  // a stray continuation byte or 0xF8..0xFF
      out.push_back(kReplacementChar);
      ++i;
      continue;
    }
    bool complete = i + n_cont < s.size();
    for (size_t k = 1; complete && k <= n_cont; ++k) complete = (static_cast<uint8_t>(s[i + k]) & 0xC0) == 0x80;
    if (!complete) {
      out.push_back(kReplacementChar);
      ++i;
      continue;
    }
    for (size_t k = 1; k <= n_cont; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n_cont + 1;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp > 0x10FFFF) cp = kReplacementChar;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

int utf8_sequence_length(std::string_view s, size_t* bad_len) {
  const uint8_t b = static_cast<uint8_t>(s[0]);
  if (b < 0x80) return 1;
  // Allowed range of the second byte by lead (Unicode Table 3-7); later bytes are 80..BF.
  uint8_t lo = 0x80, hi = 0xBF;
  int n = 0;
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    *bad_len = 1;
    return 0;
  }
  for (int k = 1; k < n; ++k) {
    if (static_cast<size_t>(k) >= s.size()) return -1;
    const uint8_t c = static_cast<uint8_t>(s[k]);
    if (c < lo || c > hi) {
      *bad_len = static_cast<size_t>(k);
      return 0;
    }
    lo = 0x80, hi = 0xBF;
  }
  return n;
}

namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// (controls, space, DEL, NBSP, soft hyphen...) take code points 256, 257, ... in byte order.
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 512> from_cp{};  // all mapped code points are < 512
  ByteMap() {
    from_cp.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

uint32_t byte_to_bpe_cp(uint8_t b) { return byte_map().to_cp[b]; }

int bpe_cp_to_byte(uint32_t cp) { return cp < 512 ? byte_map().from_cp[cp] : -1; }

uint8_t char_flags(uint32_t cp) {
  using tables::kFlagRanges;
  const auto* end = kFlagRanges + tables::kFlagRanges_size;
  const auto* it = std::upper_bound(kFlagRanges, end, cp,
                                    [](uint32_t c, const tables::FlagRange& r) { return c < r.first; });
  return it == kFlagRanges ? 0 : (it - 1)->flags;
}

uint32_t to_lower(uint32_t cp) {
  using tables::kLowerRanges;
  const auto* end = kLowerRanges + tables::kLowerRanges_size;
  const auto* it = std::upper_bound(kLowerRanges, end, cp,
                                    [](uint32_t c, const tables::LowerRange& r) { return c < r.first; });
  if (it == kLowerRanges) return cp;
  const auto& r = *(it - 1);
  if (cp > r.last || (cp - r.first) % r.stride != 0) return cp;
  return static_cast<uint32_t>(static_cast<int64_t>(cp) + r.delta);
}

uint32_t nfd_first(uint32_t cp) {
  using tables::kNfdRanges;
  const auto* end = kNfdRanges + tables::kNfdRanges_size;
  const auto* it = std::upper_bound(kNfdRanges, end, cp,
                                    [](uint32_t c, const tables::NfdRange& r) { return c < r.first; });
  if (it == kNfdRanges) return cp;
  const auto& r = *(it - 1);
  return cp <= r.last ? r.base : cp;
}

}  // namespace lokal::unicode
