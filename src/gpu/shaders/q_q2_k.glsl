// q_q2_k.glsl - unit_codes for Q2_K (mvq_q2_k.comp; see mvq_common.glsl and w_q2_k.glsl for the layout): a unit is
// sub-block j of an 84-byte superblock; its halves of 16 have their own scale and min codes (byte 2j + h: scale in
// the low nibble, min in the high one). w = (d * sc) * q - dmin * mn: codes q (0..3), wd_h = d * sc_h,
// wm_h = -dmin * mn_h.
#define HAS_OFFSET 1
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + (u >> 3) * 84u, j = u & 7u, g = j >> 2, c = j & 3u;
  const float d = f16_at(b + 80u), dmin = f16_at(b + 82u);
  const uint s0 = byte_at(b + 2u * j), s1 = byte_at(b + 2u * j + 1u);
  wd0 = d * float(s0 & 15u);
  wd1 = d * float(s1 & 15u);
  wm0 = -(dmin * float(s0 >> 4));
  wm1 = -(dmin * float(s1 >> 4));
  const uint q0 = b + 16u + g * 32u;
  for (uint k = 0; k < 8u; ++k) q[k] = (u32_at_even(q0 + 4u * k) >> (2u * c)) & 0x03030303u;
}
