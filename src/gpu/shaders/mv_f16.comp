#version 450
#include "mv_common.glsl"
// F16: IEEE half, 2 bytes per element.
#define UNIT 1
float unit_dot(uint rb, uint u, uint xb) { return f16_at(rb + 2u * u) * x[xb]; }
#include "mv_main.glsl"
