#version 450
// quantize_q8: the activations of the int8 path (gpu/kernels.h: quantize_q8, matmul_q8). x holds n_blocks runs of
// 32 f32 (n_tok rows of cols, cols a multiple of 32); block b becomes
//   words [8 b, 8 b + 8):     its 32 codes, int8, four per word (element 4k + i in byte i of word k)
//   word  8 n + 2 b:          d, f32 (the scale: element = d * code)
//   word  8 n + 2 b + 1:      superblock = 1: the sums of its codes 0..15 (low 16 bits) and 16..31 (high 16 bits),
//                             int16 each (the K-quants' offsets); superblock = 0: s, f32 bits, = d * (the sum of its
//                             32 codes) with the unrounded d, rounded to f16 precision (as the CPU's Q8_1 blocks; the
//                             offsets of Q4_1 / Q5_1)
// in one of two scalings, the two the CPU (ops/vec_dot) and llama.cpp's CPU backend give the activations of these
// weight types, so that the device's integer sums are theirs:
//   superblock = 0 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights; Q8_0 activations): per block of 32, d = max|x| / 127 and
//     code = round-half-even(x * (127 / max|x|)); d is then rounded to f16 precision (the product uses the rounded d)
//   superblock = 1 (Q2_K..Q6_K weights; Q8_K activations): per superblock of 256 (cols a multiple of 256), with v the
//     first element of largest magnitude, iscale = -127 / v, code = min(127, round-half-even(iscale * x)) and
//     d = 1 / iscale in f32, written to each of the superblock's 8 blocks.
// One thread per block (in superblock mode each of the 8 threads of a superblock finds its maximum: 256 reads each).
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer XQ { uint xq[]; };

layout(push_constant) uniform Push {
  uint n_blocks;
  uint superblock;  // 1: Q8_K scaling (see above)
} pc;

#define Q8_SRC(i) x[i]
#include "q8_block.glsl"

void main() {
  const uint b = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * 64u;
  if (b >= pc.n_blocks) return;
  q8_quantize_block(b, pc.n_blocks, pc.superblock != 0u);
}
