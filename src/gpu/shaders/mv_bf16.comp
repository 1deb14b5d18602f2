#version 450
#include "mv_common.glsl"
#include "w_bf16.glsl"
#include "mv_main.glsl"
