// w_q5_k.glsl - unit_weights for Q5_K weights, shared by mv_q5_k.comp (matmul for few tokens) and mm_q5_k.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
#include "kquant.glsl"
// Q5_K, 176 bytes per 256 elements:  [0] d  [2] dmin (f16)  [4..15] scales (k4_scale_min)  [16..47] qh  [48..175] qs.
// Low 4 bits as Q4_K; the fifth bit of element 32 j + l is bit j of qh[l].   w = (d * sc) * q - (dmin * mn)
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + (u >> 3) * 176u, j = u & 7u;
  const float d = f16_at(b), dmin = f16_at(b + 2u);
  uint sc, mn;
  k4_scale_min(b + 4u, j, sc, mn);
  precise float dl = d * float(sc);
  precise float ml = dmin * float(mn);
  const uint q0 = b + 48u + (j >> 1) * 32u, shift = (j & 1u) * 4u;
  for (uint l = 0; l < 32u; ++l) {
    const uint q = ((byte_at(q0 + l) >> shift) & 15u) | (((byte_at(b + 16u + l) >> j) & 1u) << 4);
    precise float wl = dl * float(q) - ml;
    wv[l] = wl;
  }
}
