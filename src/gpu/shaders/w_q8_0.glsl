// w_q8_0.glsl - unit_weights for Q8_0 weights, shared by mv_q8_0.comp (matmul for few tokens) and mm_q8_0.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q8_0, 34 bytes per 32 elements:  [0] d (f16)  [2..33] qs: 32 int8.   w[j] = qs[j] * d
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + u * 34u;
  const float d = f16_at(b);
  for (uint j = 0; j < 32u; ++j) {
    precise float wj = float(i8_at(b + 2u + j)) * d;
    wv[j] = wj;
  }
}
