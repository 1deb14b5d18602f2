#version 450
#include "mv_common.glsl"
#include "w_q5_k.glsl"
#include "mv_main.glsl"
