// q_q5_0.glsl - unit_codes for Q5_0 (mvq_q5_0.comp; see mvq_common.glsl). 22 bytes per 32: [0] d (f16) [2..5] qh
// (bit j: fifth bit of element j) [6..21] qs, nibbles as Q4_0. w = (q - 16) * d: codes q - 16, wd = d, no offset.
#define HAS_OFFSET 0
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + u * 22u;
  wd0 = wd1 = f16_at(b);
  wm0 = wm1 = 0.0;
  const uint qh = u32_at_even(b + 2u);
  for (uint k = 0; k < 4u; ++k) {
    const uint v = u32_at_even(b + 6u + 4u * k);
    q[k] = sub_bytes((v & 0x0F0F0F0Fu) | bit4_of_bytes((qh >> (4u * k)) & 15u), 16u);
    q[k + 4u] = sub_bytes(((v >> 4) & 0x0F0F0F0Fu) | bit4_of_bytes((qh >> (16u + 4u * k)) & 15u), 16u);
  }
}
