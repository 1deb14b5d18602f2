#version 450
#include "mv_common.glsl"
#include "w_f16.glsl"
#include "mm_main.glsl"
