#version 450
#include "mvq_common.glsl"
#include "q_q4_0.glsl"
#include "mmq_main.glsl"
