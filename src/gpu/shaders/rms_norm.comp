#version 450
// rms_norm: y[r][i] = x[r][i] * (1 / sqrt(mean_i(x[r][i]^2) + eps)) * w[i], one workgroup per row of n.
// (ops/ops.cpp's rms_norm sums the squares in double; here they are summed in f32: WG strided partial sums, then a
// tree in shared memory.)
// Fused forms (gpu/kernels.h: rms_norm_fused), chosen by flags, to save a decode step's dispatches and barriers:
//   RESIDUAL: first x[r][i] += res[r][i] (the residual add of the layer before; x is written back), then the norm of
//             the sum;
//   Q8 / Q8_SUPERBLOCK: then y's row is also quantized for the int8 path into xq (q8_block.glsl: the bytes
//             quantize_q8.comp writes for y), as blocks row * n / 32 .. of rows * n / 32.
// Every float operation is `precise` (no fma contraction), so the fused and the plain forms give the same bits.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) buffer X { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer Weight { float wt[]; };
layout(std430, set = 0, binding = 2) coherent buffer Output { float y[]; };
layout(std430, set = 0, binding = 3) readonly buffer Residual { float res[]; };
layout(std430, set = 0, binding = 4) writeonly buffer XQ { uint xq[]; };
layout(push_constant) uniform Push {
  uint rows;
  uint n;
  float eps;
  uint flags;
} pc;

#define RESIDUAL 1u
#define Q8 2u
#define Q8_SUPERBLOCK 4u

shared float partial[WG];

#define Q8_SRC(i) y[i]
#include "q8_block.glsl"

void main() {
  const uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (row >= pc.rows) return;
  const uint tid = gl_LocalInvocationID.x, base = row * pc.n;
  float acc = 0.0;
  for (uint i = tid; i < pc.n; i += WG) {
    precise float v = x[base + i];
    if ((pc.flags & RESIDUAL) != 0u) {
      v = v + res[base + i];
      x[base + i] = v;  // only this thread reads it again
    }
    precise float sq = v * v;
    acc = acc + sq;
  }
  partial[tid] = acc;
  barrier();
  for (uint s = WG / 2; s > 0; s >>= 1) {
    if (tid < s) partial[tid] += partial[tid + s];
    barrier();
  }
  const float mean = partial[0] / float(pc.n);
  const float scale = 1.0 / sqrt(mean + pc.eps);
  for (uint i = tid; i < pc.n; i += WG) {
    precise float o = x[base + i] * scale;
    o = o * wt[i];
    y[base + i] = o;
  }
  if ((pc.flags & (Q8 | Q8_SUPERBLOCK)) != 0u) {
    memoryBarrierBuffer();
    barrier();  // the whole row of y is written
    const uint per_row = pc.n / 32u;
    for (uint b = tid; b < per_row; b += WG)
      q8_quantize_block(row * per_row + b, pc.rows * per_row, (pc.flags & Q8_SUPERBLOCK) != 0u);
  }
}
