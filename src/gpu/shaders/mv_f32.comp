#version 450
#include "mv_common.glsl"
// F32: 4 bytes per element.
#define UNIT 1
void unit_weights(uint rb, uint u, out float wv[UNIT]) { wv[0] = uintBitsToFloat(w[(rb >> 2) + u]); }
#include "mv_main.glsl"
