// q_q6_k.glsl - unit_codes for Q6_K (mvq_q6_k.comp; see mvq_common.glsl and w_q6_k.glsl for the layout): a unit is
// sub-block j of a 210-byte superblock, whose halves have their own int8 scales. w = (d * scale) * (q - 32): codes
// q - 32, wd0/wd1 = d * scale of each half, no offset.
#define HAS_OFFSET 0
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + (u >> 3) * 210u, j = u & 7u, g = j >> 2, c = j & 3u;
  const float d = f16_at(b + 208u);
  wd0 = d * float(i8_at(b + 192u + 2u * j));
  wd1 = d * float(i8_at(b + 193u + 2u * j));
  wm0 = wm1 = 0.0;
  const uint ql0 = b + g * 64u + (c & 1u) * 32u, qh0 = b + 128u + g * 32u;
  const uint lshift = (c >> 1) * 4u, hshift = 2u * c;
  for (uint k = 0; k < 8u; ++k) {
    const uint lo = (u32_at_even(ql0 + 4u * k) >> lshift) & 0x0F0F0F0Fu;
    const uint hi = ((u32_at_even(qh0 + 4u * k) >> hshift) & 0x03030303u) << 4;
    q[k] = sub_bytes(lo | hi, 32u);
  }
}
