#version 450
#extension GL_KHR_shader_subgroup_arithmetic : require
#define SUBGROUP_SUMS 1
#include "mv_common.glsl"
#include "w_bf16.glsl"
#include "mv_main.glsl"
