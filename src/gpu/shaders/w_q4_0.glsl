// w_q4_0.glsl - unit_weights for Q4_0 weights, shared by mv_q4_0.comp (matmul for few tokens) and mm_q4_0.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q4_0, 18 bytes per 32 elements:  [0] d (f16)  [2..17] qs: 16 bytes.
// Element j < 16 is the low nibble of qs[j], element j + 16 its high nibble.   w = (q - 8) * d
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + u * 18u;
  const float d = f16_at(b);
  for (uint j = 0; j < 16u; ++j) {
    const uint q = byte_at(b + 2u + j);
    precise float lo = float(int(q & 15u) - 8) * d;
    precise float hi = float(int(q >> 4) - 8) * d;
    wv[j] = lo;
    wv[j + 16u] = hi;
  }
}
