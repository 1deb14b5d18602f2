// core/fp16.h - IEEE half and bfloat16 conversions (exact, round-to-nearest-even).
#pragma once
#include <cstdint>
#include <cstring>

namespace lokal {

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even, like F16C's _cvtss_sh(x, 0)

inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even; NaN stays NaN (quiet). Matches ggml's fp32->bf16.
inline uint16_t fp32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64);
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

// Table lookup for hot paths (65536 entries, built once).
const float* fp16_table();
inline float fp16_to_fp32_fast(uint16_t h) { return fp16_table()[h]; }

}  // namespace lokal
