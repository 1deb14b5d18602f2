#version 450
#include "mv_common.glsl"
#include "w_q3_k.glsl"
#include "mv_main.glsl"
