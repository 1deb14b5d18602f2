// w_q2_k.glsl - unit_weights for Q2_K weights, shared by mv_q2_k.comp (matmul for few tokens) and mm_q2_k.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// Q2_K, 84 bytes per 256 elements:  [0..15] scales  [16..79] qs  [80] d (f16)  [82] dmin (f16).
// Element e = 32 j + l (g = j/4, c = j%4): code = bits 2c..2c+1 of qs[g*32 + l]; sub-block of 16 e/16 has the scale
// byte scales[e/16] = (min code << 4) | scale code.   w = (d * sc) * q - (dmin * mn)
#define UNIT 32
void unit_weights(uint rb, uint u, out float wv[UNIT]) {
  const uint b = rb + (u >> 3) * 84u, j = u & 7u, g = j >> 2, c = j & 3u;
  const float d = f16_at(b + 80u), dmin = f16_at(b + 82u);
  for (uint h = 0; h < 2u; ++h) {  // the two sub-blocks of 16
    const uint sc = byte_at(b + 2u * j + h);
    precise float dl = d * float(sc & 15u);
    precise float ml = dmin * float(sc >> 4);
    for (uint i = 0; i < 16u; ++i) {
      const uint l = 16u * h + i;
      const uint q = (byte_at(b + 16u + g * 32u + l) >> (2u * c)) & 3u;
      precise float wl = dl * float(q) - ml;
      wv[l] = wl;
    }
  }
}
