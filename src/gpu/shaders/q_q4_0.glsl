// q_q4_0.glsl - unit_codes for Q4_0 (mvq_q4_0.comp; see mvq_common.glsl). 18 bytes per 32: [0] d (f16) [2..17] qs.
// Element j < 16: low nibble of qs[j]; j + 16: its high nibble. w = (q - 8) * d: codes q - 8, wd = d, no offset.
#define HAS_OFFSET 0
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + u * 18u;
  wd0 = wd1 = f16_at(b);
  wm0 = wm1 = 0.0;
  for (uint k = 0; k < 4u; ++k) {
    const uint v = u32_at_even(b + 2u + 4u * k);
    q[k] = sub_bytes(v & 0x0F0F0F0Fu, 8u);
    q[k + 4u] = sub_bytes((v >> 4) & 0x0F0F0F0Fu, 8u);
  }
}
