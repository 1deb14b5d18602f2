#version 450
#include "mv_common.glsl"
// Q4_1, 20 bytes per 32 elements:  [0] d (f16)  [2] m (f16)  [4..19] qs: 16 bytes (nibbles as Q4_0).   w = q * d + m
#define UNIT 32
float unit_dot(uint rb, uint u, uint xb) {
  const uint b = rb + u * 20u;
  const float d = f16_at(b), m = f16_at(b + 2u);
  float s = 0.0;
  for (uint j = 0; j < 16u; ++j) {
    const uint q = byte_at(b + 4u + j);
    precise float lo = float(q & 15u) * d + m;
    precise float hi = float(q >> 4) * d + m;
    s += lo * x[xb + j] + hi * x[xb + j + 16u];
  }
  return s;
}
#include "mv_main.glsl"
