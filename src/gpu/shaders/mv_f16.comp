#version 450
#include "mv_common.glsl"
// F16: IEEE half, 2 bytes per element.
#define UNIT 1
void unit_weights(uint rb, uint u, out float wv[UNIT]) { wv[0] = f16_at(rb + 2u * u); }
#include "mv_main.glsl"
