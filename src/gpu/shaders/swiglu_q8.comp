#version 450
// swiglu_q8: swiglu.comp's out[i] = silu(gate[i]) * up[i] for n_blocks blocks of 32, and the same values quantized
// for the int8 path into xq (q8_block.glsl: the bytes quantize_q8.comp writes for `out`), in one dispatch instead of
// two with a barrier between. One thread per block: it stores its block's 32 values, then (after a workgroup
// barrier: a superblock's 8 blocks are 8 threads of one workgroup of 64) quantizes its block from the stored values.
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) readonly buffer Gate { float gate[]; };
layout(std430, set = 0, binding = 1) readonly buffer Up { float up[]; };
layout(std430, set = 0, binding = 2) coherent buffer Output { float o[]; };
layout(std430, set = 0, binding = 3) writeonly buffer XQ { uint xq[]; };
layout(push_constant) uniform Push {
  uint n_blocks;
  uint superblock;
} pc;

#include "swiglu_value.glsl"
#define Q8_SRC(i) o[i]
#include "q8_block.glsl"

void main() {
  const uint b = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * WG + gl_LocalInvocationID.x;
  const bool mine = b < pc.n_blocks;  // no early return: every thread reaches the barrier
  if (mine)
    for (uint i = 32u * b; i < 32u * b + 32u; ++i) o[i] = swiglu_value(gate[i], up[i]);
  memoryBarrierBuffer();
  barrier();
  if (mine) q8_quantize_block(b, pc.n_blocks, pc.superblock != 0u);
}
