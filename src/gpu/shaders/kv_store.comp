#version 450
// kv_store: cache row meta[row_off + t] = src row t, converted to the cache's type (layouts: kv_common.glsl).
// One workgroup per token row. A row index >= n_rows is ignored (nothing is written).
// With rope_dim > 0 (Kernels::rope_kv_store) the row is first rotated as rope.comp rotates it, with the same float
// operations (`precise`), so the stored bytes are those of rope then kv_store; src itself is left unrotated.
//
// Every thread writes whole 32-bit words, and no two threads write the same word:
//   F32:  thread per element, the bits copied unchanged;
//   F16:  thread per pair of elements (one word), converted as core/fp16.cpp's fp32_to_fp16 (integer code, exact);
//   Q8_0: thread per 32-element block (8 words of qs and its d), as core/quant.cpp's q_q8_0: amax = max |x|,
//         d = amax / 127, id = d != 0 ? 1 / d : 0, the stored d = f16(d) (widened back to f32),
//         q = round(x * id) (halves away from zero). The two divisions are correctly rounded (div_rn), the product
//         is one correctly rounded multiplication (Vulkan's OpFMul), so the bytes equal the CPU's. The one
//         exception: a block whose largest magnitude is below ~2^-118 (d = amax/127 is then an f32 denormal or
//         close to one, and stores as f16 zero), where the driver's division and denormal flushing take over.
#extension GL_GOOGLE_include_directive : require
#include "kv_common.glsl"

#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) readonly buffer Src { uint src[]; };  // f32 bits
layout(std430, set = 0, binding = 1) buffer Cache { uint cache[]; };
layout(std430, set = 0, binding = 2) readonly buffer Meta { uint meta[]; };
layout(std430, set = 0, binding = 3) readonly buffer CosSin { float cs[]; };  // rope: n_tok x rope_dim (rope.comp)
layout(push_constant) uniform Push {
  uint type;     // KV_F32, KV_F16, KV_Q8_0
  uint width;    // elements per row
  uint n_rows;
  uint row_off;  // meta[row_off + t]: the row of token t
  uint n_tok;
  uint dbase;    // Q8_0: word index of d[0][0] (n_rows * width / 4)
  uint head_dim;  // rope: elements per head (rows are head-major)
  uint rope_dim;  // rope: rotated elements per head (0: no rotation)
  uint neox;      // rope: 1: pairs (i, i + rope_dim/2); 0: (2i, 2i+1)
} pc;

// The bits of element e of token t's row: src as it is, or rotated as rope.comp rotates it (the pair's two
// products and their difference / sum each rounded, no fma).
uint src_bits(uint t, uint e) {
  const uint x0 = t * pc.width;
  if (pc.rope_dim == 0u) return src[x0 + e];
  const uint j = e % pc.head_dim;
  if (j >= pc.rope_dim) return src[x0 + e];
  const uint half_dim = pc.rope_dim / 2u;
  const bool second = pc.neox != 0u ? j >= half_dim : (j & 1u) != 0u;
  const uint i = pc.neox != 0u ? (second ? j - half_dim : j) : j / 2u;
  const uint e0 = e - (second ? (pc.neox != 0u ? half_dim : 1u) : 0u);
  const uint e1 = e0 + (pc.neox != 0u ? half_dim : 1u);
  const float c = cs[t * pc.rope_dim + i], s = cs[t * pc.rope_dim + half_dim + i];
  const float a = uintBitsToFloat(src[x0 + e0]), b = uintBitsToFloat(src[x0 + e1]);
  precise float r0 = a * c - b * s;
  precise float r1 = a * s + b * c;
  return floatBitsToUint(second ? r1 : r0);
}

// Round half away from zero (std::round) of an integral-range float: v - trunc(v) is exact.
int round_away(float v) {
  const float t = trunc(v);
  precise float f = v - t;
  return int(t) + (abs(f) >= 0.5 ? (v < 0.0 ? -1 : 1) : 0);
}

void main() {
  const uint t = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (t >= pc.n_tok) return;
  const uint row = meta[pc.row_off + t];
  if (row >= pc.n_rows) return;
  const uint tid = gl_LocalInvocationID.x;
  if (pc.type == KV_F32) {
    const uint c0 = row * pc.width;
    for (uint i = tid; i < pc.width; i += WG) cache[c0 + i] = src_bits(t, i);
  } else if (pc.type == KV_F16) {
    const uint words = pc.width / 2u, c0 = row * words;
    for (uint w = tid; w < words; w += WG)
      cache[c0 + w] = f32_to_f16_bits(src_bits(t, 2u * w)) | (f32_to_f16_bits(src_bits(t, 2u * w + 1u)) << 16);
  } else {
    const uint blocks = pc.width / 32u;
    for (uint b = tid; b < blocks; b += WG) {
      const uint x0 = 32u * b;  // the block's first element in the row
      // amax on the bits: for non-NaN values the order of |x| is that of its bits; NaNs are skipped, as
      // std::max(amax, NaN) keeps amax.
      uint amax_bits = 0u;
      for (uint j = 0u; j < 32u; ++j) {
        const uint a = src_bits(t, x0 + j) & 0x7FFFFFFFu;
        if (a <= 0x7F800000u) amax_bits = max(amax_bits, a);
      }
      const float d = div_rn(uintBitsToFloat(amax_bits), 127.0);
      const float id = d != 0.0 ? div_rn(1.0, d) : 0.0;
      cache[pc.dbase + row * blocks + b] = f16_to_f32_bits(f32_to_f16_bits(floatBitsToUint(d)));
      const uint c0 = row * (pc.width / 4u) + 8u * b;
      for (uint w = 0u; w < 8u; ++w) {
        uint packed = 0u;
        for (uint i = 0u; i < 4u; ++i) {
          precise float v = uintBitsToFloat(src_bits(t, x0 + 4u * w + i)) * id;
          packed |= (uint(round_away(v)) & 0xFFu) << (8u * i);
        }
        cache[c0 + w] = packed;
      }
    }
  }
}
