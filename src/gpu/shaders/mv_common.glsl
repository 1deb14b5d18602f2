// mv_common.glsl - shared by every matrix shader (mv_*.comp, mm_*.comp): y[t][r] = sum_c W[r][c] * x[t][c] for
// t < n_tok (matvec is n_tok = 1). Each shader is mv_common.glsl, then w_TYPE.glsl (the type's unit_weights), then
// the body: mv_main.glsl (the few-token kernel described below) or mm_main.glsl (the tiled kernel for many tokens).
//
// W is uploaded exactly as stored in the GGUF file: rows of `row_bytes` bytes, each a run of blocks of its type.
// Blocks are 18, 20, 22, 34, 84, 110, 144, 176 or 210 bytes long, so they are not 4-byte aligned in general; the
// shaders need no 8/16-bit storage feature: W is bound as an array of 32-bit words and every field is picked out of
// them with shifts (byte_at, u16_at). Every block size and every 16-bit field offset inside a block is even, so a
// 16-bit field never straddles two words. Device::alloc rounds buffers up to 16 bytes, so the last word exists.
//
// One workgroup computes one row for a group of up to NT tokens (workgroup z: tokens NT z .. NT z + NT-1; x and y are
// token-major: x[t] is cols floats, y[t] rows floats). The row is cut into units of UNIT elements (32 for the block
// types: one block of the 32-element formats, one sub-block of the 256-element K-quant superblocks; 1 for
// F32/F16/BF16); thread i takes units i, i+WG, i+2*WG, ..., dequantizes each once and dots it with each of the
// group's token vectors, keeping NT f32 partial sums; the WG partial sums of each token are then added in shared
// memory.
// Weights are dequantized with the same float operations, in the same order, as core/quant.cpp's reference
// (`precise` forbids fusing them into an fma), so each dequantized weight equals the CPU's bit for bit; only the
// order of the f32 sum differs from a sequential dot product.
#extension GL_GOOGLE_include_directive : require
// [[unroll]] (mv_main.glsl's token and dot loops, mm_main.glsl's register-block loops: constant indices keep acc[]
// and wv[] in registers). Not on the dequantizing loops of unit_weights (w_*.glsl): spirv-opt's unroller drops the
// NoContraction decoration (`precise`) from the copies it makes, and the optimizer then fuses them into fma.
#extension GL_EXT_control_flow_attributes : require

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer Input { float x[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Output { float y[]; };

layout(push_constant) uniform Push {
  uint rows;       // output elements
  uint cols;       // elements per row of W (= length of x), a multiple of UNIT
  uint row_bytes;  // bytes per row of W
  uint n_tok;      // tokens (rows of x and of y)
  uint y_rows;     // y's row length (>= rows: a matrix cut into parts writes rows [y_row0, y_row0 + rows) of it)
  uint y_row0;
} pc;

#include "w_fields.glsl"

// Each w_TYPE.glsl defines UNIT and `void unit_weights(uint row_base, uint u, out float wv[UNIT])`: the UNIT
// dequantized weights of unit u of the row starting at byte row_base, wv[l] = element u * UNIT + l.
