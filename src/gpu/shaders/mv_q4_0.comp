#version 450
#include "mv_common.glsl"
// Q4_0, 18 bytes per 32 elements:  [0] d (f16)  [2..17] qs: 16 bytes.
// Element j < 16 is the low nibble of qs[j], element j + 16 its high nibble.   w = (q - 8) * d
#define UNIT 32
float unit_dot(uint rb, uint u, uint xb) {
  const uint b = rb + u * 18u;
  const float d = f16_at(b);
  float s = 0.0;
  for (uint j = 0; j < 16u; ++j) {
    const uint q = byte_at(b + 2u + j);
    precise float lo = float(int(q & 15u) - 8) * d;
    precise float hi = float(int(q >> 4) - 8) * d;
    s += lo * x[xb + j] + hi * x[xb + j + 16u];
  }
  return s;
}
#include "mv_main.glsl"
