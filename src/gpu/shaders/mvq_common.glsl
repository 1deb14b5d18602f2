// mvq_common.glsl - the int8 path of the matrix product (mvq_*.comp: few tokens; mmq_*.comp: tiled): y[t][r] = sum_c W[r][c] x[t][c] with
// x quantized by quantize_q8.comp (blocks of 32 int8 codes with a scale d_a and the sums of each half's codes) and
// each 32-element unit of W read as 32 int8 codes (eight words of four) with per-half scales:
//     W[r][32u + e] = wd[e / 16] * code_e + wm[e / 16]    (wm: the half's offset, 0 for the symmetric types)
// so a unit's contribution is  d_a * (wd[0] * isum_0 + wd[1] * isum_1 + wm[0] * asum_0 + wm[1] * asum_1),  isum_h the integer
// dot of half h's codes (OpSDot on packed 4 x int8: four sdots per half), asum_h the activation codes' sum. Integer
// sums are exact; only the float combination differs from a dequantize-then-dot. The weight codes are the same
// integers as core/quant.cpp's dequantizers use, moved by a constant where that keeps them in int8 (Q4_0: q - 8).
//
// Each shader is mvq_common.glsl, then q_TYPE.glsl (the type's unit_codes), then mvq_main.glsl (decode: up to 8
// tokens, one workgroup per row) or mmq_main.glsl (prompts: 64-row x 32-token tiles). W is bound as 32-bit
// words as in mv_common.glsl (blocks are not 4-byte aligned; every field offset used here is even).
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_spirv_intrinsics : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(std430, set = 0, binding = 0) readonly buffer Weights { uint w[]; };
layout(std430, set = 0, binding = 1) readonly buffer Input { uint xq[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Output { float y[]; };

layout(push_constant) uniform Push {
  uint rows;       // output elements
  uint cols;       // elements per row of W, a multiple of 32
  uint row_bytes;  // bytes per row of W
  uint n_tok;      // tokens (rows of x and of y): 1..8 (mvq_main.glsl), any (mmq_main.glsl)
  uint y_rows;     // y's row length and where this matrix's rows start in it (as mv_common.glsl)
  uint y_row0;
} pc;

// OpSDot (SPV_KHR_integer_dot_product, opcode 4450) of two words of four packed int8 (PackedVectorFormat4x8Bit = 0):
// capabilities DotProductInput4x8BitPacked (6018) and DotProduct (6019). glslang before 12 has no
// GL_EXT_integer_dot_product, so the instruction is declared directly.
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6018, 6019], id = 4450)
int sdot4x8(uint a, uint b, spirv_literal int packed_format);
int sdot(uint a, uint b) { return sdot4x8(a, b, 0); }

#include "w_fields.glsl"
// Four unsigned codes (one per byte, each < 128) moved down by o (each >= o), as signed int8: no byte borrows.
uint sub_bytes(uint v, uint o) { return ((v | 0x80808080u) - o * 0x01010101u) ^ 0x80808080u; }
// The low bits of a nibble of four bits b0..b3 spread to bit 4 of each byte (the fifth bit of Q5 codes).
uint bit4_of_bytes(uint b4) { return ((b4 & 1u) << 4) | ((b4 & 2u) << 11) | ((b4 & 4u) << 18) | ((b4 & 8u) << 25); }

// Each q_TYPE.glsl defines
//   void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1)
// for unit u of the row starting at byte rb (q[k] holds codes 4k..4k+3), and HAS_OFFSET, how the offsets enter:
//   0: none (wm = 0: Q4_0, Q5_0, Q8_0, Q3_K, Q6_K);
//   1: per half through the activation codes' half sums, exact integers as the CPU's Q8_K bsums (Q2_K, Q4_K, Q5_K:
//      superblock-scaled activations), inside the d_a product as above;
//   2: one offset wm0 per unit times the activation block's s = d_a * (sum of its codes), rounded to f16 as the
//      CPU's Q8_1 blocks carry it (Q4_1, Q5_1: block-scaled activations), added as wm0 * s outside the d_a product.
