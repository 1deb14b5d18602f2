#version 450
// rms_norm: y[r][i] = x[r][i] * (1 / sqrt(mean_i(x[r][i]^2) + eps)) * w[i], one workgroup per row of n.
// (ops/ops.cpp's rms_norm sums the squares in double; here they are summed in f32: WG strided partial sums, then a
// tree in shared memory.)
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) readonly buffer Input { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer Weight { float wt[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Output { float y[]; };
layout(push_constant) uniform Push {
  uint rows;
  uint n;
  float eps;
} pc;

shared float partial[WG];

void main() {
  const uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (row >= pc.rows) return;
  const uint tid = gl_LocalInvocationID.x, base = row * pc.n;
  float acc = 0.0;
  for (uint i = tid; i < pc.n; i += WG) acc += x[base + i] * x[base + i];
  partial[tid] = acc;
  barrier();
  for (uint s = WG / 2; s > 0; s >>= 1) {
    if (tid < s) partial[tid] += partial[tid + s];
    barrier();
  }
  const float mean = partial[0] / float(pc.n);
  const float scale = 1.0 / sqrt(mean + pc.eps);
  for (uint i = tid; i < pc.n; i += WG) y[base + i] = x[base + i] * scale * wt[i];
}
