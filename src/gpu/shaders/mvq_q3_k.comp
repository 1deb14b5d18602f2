#version 450
#include "mvq_common.glsl"
#include "q_q3_k.glsl"
#include "mvq_main.glsl"
