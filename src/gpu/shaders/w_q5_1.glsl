// w_q5_1.glsl - unit_weights for Q5_1 weights, shared by mv_q5_1.comp (matmul for few tokens) and mm_q5_1.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q5_1, 24 bytes per 32 elements:  [0] d (f16)  [2] m (f16)  [4..7] qh: 32 fifth bits  [8..23] qs: 16 bytes.
// Codes as Q5_0 (without the -16).   w = q * d + m
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + u * 24u;
  const float d = f16_at(b), m = f16_at(b + 2u);
  const uint qh = u32_at_even(b + 4u);
  for (uint j = 0; j < 16u; ++j) {
    const uint q = byte_at(b + 8u + j);
    const uint lo = (q & 15u) | (((qh >> j) & 1u) << 4);
    const uint hi = (q >> 4) | (((qh >> (j + 16u)) & 1u) << 4);
    precise float wl = float(lo) * d + m;
    precise float wh = float(hi) * d + m;
    wv[j] = wl;
    wv[j + 16u] = wh;
  }
}
