#version 450
// swiglu: out[i] = silu(gate[i]) * up[i] (swiglu_value.glsl).
#extension GL_GOOGLE_include_directive : require
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) readonly buffer Gate { float gate[]; };
layout(std430, set = 0, binding = 1) readonly buffer Up { float up[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Output { float o[]; };
layout(push_constant) uniform Push { uint n; } pc;

#include "swiglu_value.glsl"

void main() {
  const uint i = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * WG + gl_LocalInvocationID.x;
  if (i >= pc.n) return;
  o[i] = swiglu_value(gate[i], up[i]);
}
