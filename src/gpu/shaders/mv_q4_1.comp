#version 450
#include "mv_common.glsl"
#include "w_q4_1.glsl"
#include "mv_main.glsl"
