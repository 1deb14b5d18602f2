// w_q4_k.glsl - unit_weights for Q4_K weights, shared by mv_q4_k.comp (matmul for few tokens) and mm_q4_k.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
#include "kquant.glsl"
// Q4_K, 144 bytes per 256 elements:  [0] d (f16)  [2] dmin (f16)  [4..15] scales (k4_scale_min)  [16..143] qs.
// Sub-block j uses bytes qs[(j/2)*32 + l], low nibble for even j, high nibble for odd j.
// w = (d * sc) * q - (dmin * mn)
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + (u >> 3) * 144u, j = u & 7u;
  const float d = f16_at(b), dmin = f16_at(b + 2u);
  uint sc, mn;
  k4_scale_min(b + 4u, j, sc, mn);
  precise float dl = d * float(sc);
  precise float ml = dmin * float(mn);
  const uint q0 = b + 16u + (j >> 1) * 32u, shift = (j & 1u) * 4u;
  for (uint l = 0; l < 32u; ++l) {
    precise float wl = dl * float((byte_at(q0 + l) >> shift) & 15u) - ml;
    wv[l] = wl;
  }
}
