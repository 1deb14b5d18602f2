#version 450
#extension GL_KHR_shader_subgroup_arithmetic : require
#define SUBGROUP_SUMS 1
#include "mv_common.glsl"
#include "w_q5_k.glsl"
#include "mv_main.glsl"
