// w_q4_1.glsl - unit_weights for Q4_1 weights, shared by mv_q4_1.comp (matmul for few tokens) and mm_q4_1.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q4_1, 20 bytes per 32 elements:  [0] d (f16)  [2] m (f16)  [4..19] qs: 16 bytes (nibbles as Q4_0).   w = q * d + m
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + u * 20u;
  const float d = f16_at(b), m = f16_at(b + 2u);
  for (uint j = 0; j < 16u; ++j) {
    const uint q = byte_at(b + 4u + j);
    precise float lo = float(q & 15u) * d + m;
    precise float hi = float(q >> 4) * d + m;
    wv[j] = lo;
    wv[j + 16u] = hi;
  }
}
