#version 450
// quantize_q8: the activations of the int8 path (gpu/kernels.h: quantize_q8, matmul_q8). x holds n_blocks runs of
// 32 f32 (n_tok rows of cols, cols a multiple of 32); block b becomes
//   words [8 b, 8 b + 8):     its 32 codes, int8, four per word (element 4k + i in byte i of word k)
//   word  8 n + 2 b:          d, f32 (the scale, rounded to f16 precision)
//   word  8 n + 2 b + 1:      the sums of its codes 0..15 (low 16 bits) and 16..31 (high 16 bits), int16 each
// with d = max|x| / 127 and code = round-half-even(x / d) (as core/quant.cpp's Q8_0 and ops' activation blocks; the
// codes use the unrounded d, the product uses the f16-rounded one). One thread per block.
#extension GL_EXT_control_flow_attributes : require
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer XQ { uint xq[]; };

layout(push_constant) uniform Push {
  uint n_blocks;
} pc;

void main() {
  const uint b = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
  if (b >= pc.n_blocks) return;
  const uint x0 = b * 32u;
  float amax = 0.0;
  for (uint i = 0; i < 32u; ++i) amax = max(amax, abs(x[x0 + i]));
  const float d = amax / 127.0;
  const float id = d != 0.0 ? 1.0 / d : 0.0;
  int sum_lo = 0, sum_hi = 0;
  for (uint k = 0; k < 8u; ++k) {
    uint word = 0u;
    for (uint i = 0; i < 4u; ++i) {
      const int q = int(roundEven(x[x0 + 4u * k + i] * id));
      word |= (uint(q) & 0xFFu) << (8u * i);
      if (k < 4u) sum_lo += q; else sum_hi += q;
    }
    xq[8u * b + k] = word;
  }
  const uint aux = 8u * pc.n_blocks + 2u * b;
  xq[aux] = floatBitsToUint(unpackHalf2x16(packHalf2x16(vec2(d, 0.0))).x);
  xq[aux + 1u] = (uint(sum_lo) & 0xFFFFu) | (uint(sum_hi) << 16);
}
