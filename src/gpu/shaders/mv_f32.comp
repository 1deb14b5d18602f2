#version 450
#include "mv_common.glsl"
#include "w_f32.glsl"
#include "mv_main.glsl"
