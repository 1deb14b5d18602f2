// q_q4_1.glsl - unit_codes for Q4_1 (mvq_q4_1.comp; see mvq_common.glsl). 20 bytes per 32: [0] d [2] m (f16)
// [4..19] qs, nibbles as Q4_0. w = q * d + m: codes q (0..15), wd = d, wm = m.
#define HAS_OFFSET 2  // wm0 * s_a (mvq_common.glsl)
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + u * 20u;
  wd0 = wd1 = f16_at(b);
  wm0 = wm1 = f16_at(b + 2u);
  for (uint k = 0; k < 4u; ++k) {
    const uint v = u32_at_even(b + 4u + 4u * k);
    q[k] = v & 0x0F0F0F0Fu;
    q[k + 4u] = (v >> 4) & 0x0F0F0F0Fu;
  }
}
