// q_q3_k.glsl - unit_codes for Q3_K (mvq_q3_k.comp; see mvq_common.glsl and w_q3_k.glsl for the layout): a unit is
// sub-block j of a 110-byte superblock; its halves of 16 have their own six-bit scales. Code = low two bits + 4 *
// (hmask bit) - 4 (-4..3), w = (d * scale_h) * code: wd_h = d * scale_h, no offset.
#include "kquant.glsl"
#define HAS_OFFSET 0
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + (u >> 3) * 110u, j = u & 7u, g = j >> 2, c = j & 3u;
  const float d = f16_at(b + 108u);
  wd0 = d * float(q3k_scale(b + 96u, 2u * j));
  wd1 = d * float(q3k_scale(b + 96u, 2u * j + 1u));
  wm0 = wm1 = 0.0;
  const uint q0 = b + 32u + g * 32u;
  for (uint k = 0; k < 8u; ++k) {
    const uint lo = (u32_at_even(q0 + 4u * k) >> (2u * c)) & 0x03030303u;
    const uint hi = ((u32_at_even(b + 4u * k) >> (4u * g + c)) & 0x01010101u) << 2;
    q[k] = sub_bytes(lo | hi, 4u);
  }
}
