// w_q6_k.glsl - unit_weights for Q6_K weights, shared by mv_q6_k.comp (matmul for few tokens) and mm_q6_k.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q6_K, 210 bytes per 256 elements:  [0..127] ql  [128..191] qh  [192..207] scales (16 int8)  [208] d (f16).
// Element e = 32 j + l (g = j/4, c = j%4): low 4 bits from ql[g*64 + (c%2)*32 + l] (nibble c/2), high 2 bits from
// qh[g*32 + l] (bits 2c), code q - 32; sub-blocks of 16 have their own scale scales[e/16].
// w = (d * scale) * (q - 32)
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + (u >> 3) * 210u, j = u & 7u, g = j >> 2, c = j & 3u;
  const float d = f16_at(b + 208u);
  const uint ql0 = b + g * 64u + (c & 1u) * 32u, qh0 = b + 128u + g * 32u;
  const uint lshift = (c >> 1) * 4u, hshift = 2u * c;
  for (uint l = 0; l < 32u; ++l) {
    const uint lo = (byte_at(ql0 + l) >> lshift) & 15u;
    const uint hi = (byte_at(qh0 + l) >> hshift) & 3u;
    const float sc = float(i8_at(b + 192u + 2u * j + (l >> 4)));
    precise float wl = d * sc * float(int(lo | (hi << 4)) - 32);
    wv[l] = wl;
  }
}
