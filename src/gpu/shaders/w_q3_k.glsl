// w_q3_k.glsl - unit_weights for Q3_K weights, shared by mv_q3_k.comp (matmul for few tokens) and mm_q3_k.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q3_K, 110 bytes per 256 elements:  [0..31] hmask  [32..95] qs  [96..107] scales (16 six-bit values)  [108] d (f16).
// Element e = 32 j + l (g = j/4, c = j%4): low 2 bits = bits 2c of qs[g*32 + l]; the third bit is bit (4g + c) of
// hmask[l]; code = low - (bit set ? 0 : 4). Scale of sub-block k = e/16: low nibble from byte k (k < 8) or high
// nibble of byte k-8, top two bits from byte 8 + k%4, bits 2*(k/4); minus 32.   w = (d * scale) * code
#include "kquant.glsl"
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + (u >> 3) * 110u, j = u & 7u, g = j >> 2, c = j & 3u;
  const float d = f16_at(b + 108u);
  for (uint h = 0; h < 2u; ++h) {
    precise float dl = d * float(q3k_scale(b + 96u, 2u * j + h));
    for (uint i = 0; i < 16u; ++i) {
      const uint l = 16u * h + i;
      const int lo = int((byte_at(b + 32u + g * 32u + l) >> (2u * c)) & 3u);
      const bool high = ((byte_at(b + l) >> (4u * g + c)) & 1u) != 0u;
      precise float wl = dl * float(lo - (high ? 0 : 4));
      wv[l] = wl;
    }
  }
}
