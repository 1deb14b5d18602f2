#version 450
// add: y[i] += x[i] (as ops/ops.cpp's add_inplace; one rounding per element, so it equals the CPU bit for bit).
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) buffer Acc { float yv[]; };
layout(std430, set = 0, binding = 1) readonly buffer Input { float x[]; };
layout(push_constant) uniform Push { uint n; } pc;

void main() {
  const uint i = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * WG + gl_LocalInvocationID.x;
  if (i >= pc.n) return;
  yv[i] = yv[i] + x[i];
}
