#version 450
#include "mv_common.glsl"
// Q8_0, 34 bytes per 32 elements:  [0] d (f16)  [2..33] qs: 32 int8.   w[j] = qs[j] * d
#define UNIT 32
float unit_dot(uint rb, uint u, uint xb) {
  const uint b = rb + u * 34u;
  const float d = f16_at(b);
  float s = 0.0;
  for (uint j = 0; j < 32u; ++j) {
    precise float wj = float(i8_at(b + 2u + j)) * d;
    s += wj * x[xb + j];
  }
  return s;
}
#include "mv_main.glsl"
