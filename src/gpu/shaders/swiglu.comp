#version 450
// swiglu: out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)) (as ops/ops.cpp's swiglu).
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) readonly buffer Gate { float gate[]; };
layout(std430, set = 0, binding = 1) readonly buffer Up { float up[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Output { float o[]; };
layout(push_constant) uniform Push { uint n; } pc;

void main() {
  const uint i = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * WG + gl_LocalInvocationID.x;
  if (i >= pc.n) return;
  const float g = gate[i];
  o[i] = g / (1.0 + exp(-g)) * up[i];
}
