#version 450
#include "mv_common.glsl"
// BF16: the top 16 bits of an f32, 2 bytes per element.
#define UNIT 1
float unit_dot(uint rb, uint u, uint xb) { return uintBitsToFloat(u16_at(rb + 2u * u) << 16) * x[xb]; }
#include "mv_main.glsl"
