#include "core/fp16.h"

#include <cmath>
#include <vector>

namespace lokal {

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        mant <<= 1;
        ++e;
      } while ((mant & 0x400u) == 0);
      mant &= 0x3ffu;
      u = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | mant << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | mant << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t fp32_to_fp16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (absu >= 0x47800000u) {                       // >= 65536 -> may round to inf
    if (absu == 0x7f800000u) return sign | 0x7c00u;
    // values in [65520, 65536) round to inf as well; handled below by generic path only if < 2^16
    return sign | 0x7c00u;
  }
  const int exp = static_cast<int>(absu >> 23) - 127;
  if (exp < -25) return sign;  // rounds to zero
  uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
  int shift;
  uint16_t hexp;
  if (exp < -14) {  // subnormal half
    shift = 13 + (-14 - exp);
    hexp = 0;
  } else {
    shift = 13;
    hexp = static_cast<uint16_t>(exp + 15);
    mant &= 0x7fffffu;
  }
  if (shift > 31) return sign;
  uint32_t half_mant = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (half_mant & 1u))) half_mant++;
  uint32_t out = (static_cast<uint32_t>(hexp) << 10) + half_mant;  // carry propagates into exponent
  if (out >= 0x7c00u) out = 0x7c00u;
  return static_cast<uint16_t>(sign | out);
}

const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_fp32(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

}  // namespace lokal
