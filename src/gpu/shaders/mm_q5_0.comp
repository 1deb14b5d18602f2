#version 450
#include "mv_common.glsl"
#include "w_q5_0.glsl"
#include "mm_main.glsl"
