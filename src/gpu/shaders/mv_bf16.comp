#version 450
#include "mv_common.glsl"
// BF16: the top 16 bits of an f32, 2 bytes per element.
#define UNIT 1
void unit_weights(uint rb, uint u, out float wv[UNIT]) { wv[0] = uintBitsToFloat(u16_at(rb + 2u * u) << 16); }
#include "mv_main.glsl"
