#version 450
#include "mv_common.glsl"
// F32: 4 bytes per element.
#define UNIT 1
float unit_dot(uint rb, uint u, uint xb) { return uintBitsToFloat(w[(rb >> 2) + u]) * x[xb]; }
#include "mv_main.glsl"
