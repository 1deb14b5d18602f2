#version 450
#include "mv_common.glsl"
#include "w_f16.glsl"
#include "mv_main.glsl"
