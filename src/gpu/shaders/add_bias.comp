#version 450
// add_bias: y[t][i] += b[i] for t < n_tok, i < n (one correctly rounded addition per element, as y += b on the CPU).
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) buffer Acc { float yv[]; };
layout(std430, set = 0, binding = 1) readonly buffer Bias { float b[]; };
layout(push_constant) uniform Push {
  uint n;      // row length (elements of b)
  uint total;  // n * n_tok
} pc;

void main() {
  const uint i = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * WG + gl_LocalInvocationID.x;
  if (i >= pc.total) return;
  yv[i] = yv[i] + b[i % pc.n];
}
