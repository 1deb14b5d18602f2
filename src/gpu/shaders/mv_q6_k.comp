#version 450
#include "mv_common.glsl"
#include "w_q6_k.glsl"
#include "mv_main.glsl"
