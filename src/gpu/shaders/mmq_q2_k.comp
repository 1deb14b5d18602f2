#version 450
#include "mvq_common.glsl"
#include "q_q2_k.glsl"
#include "mmq_main.glsl"
