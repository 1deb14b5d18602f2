#version 450
#include "mvq_common.glsl"
#include "q_q6_k.glsl"
#include "mmq_main.glsl"
