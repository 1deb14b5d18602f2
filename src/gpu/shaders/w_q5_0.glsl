// w_q5_0.glsl - unit_weights for Q5_0 weights, shared by mv_q5_0.comp (matmul for few tokens) and mm_q5_0.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q5_0, 22 bytes per 32 elements:  [0] d (f16)  [2..5] qh: 32 fifth bits (u32, not 4-aligned)  [6..21] qs: 16 bytes.
// Element j < 16: low nibble of qs[j] | bit j of qh << 4; element j + 16: high nibble | bit j+16 << 4.
// w = (q - 16) * d
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + u * 22u;
  const float d = f16_at(b);
  const uint qh = u32_at_even(b + 2u);
  for (uint j = 0; j < 16u; ++j) {
    const uint q = byte_at(b + 6u + j);
    const int lo = int((q & 15u) | (((qh >> j) & 1u) << 4));
    const int hi = int((q >> 4) | (((qh >> (j + 16u)) & 1u) << 4));
    precise float wl = float(lo - 16) * d;
    precise float wh = float(hi - 16) * d;
    wv[j] = wl;
    wv[j + 16u] = wh;
  }
}
