// q_q5_k.glsl - unit_codes for Q5_K (mvq_q5_k.comp; see mvq_common.glsl and w_q5_k.glsl for the layout): a unit is
// sub-block j of a 176-byte superblock; element l's fifth bit is bit j of qh[l]. w = (d * sc) * q - dmin * mn:
// codes q (0..31), wd = d * sc, wm = -dmin * mn.
#include "kquant.glsl"
#define HAS_OFFSET 1
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + (u >> 3) * 176u, j = u & 7u;
  uint sc, mn;
  k4_scale_min(b + 4u, j, sc, mn);
  wd0 = wd1 = f16_at(b) * float(sc);
  wm0 = wm1 = -(f16_at(b + 2u) * float(mn));
  const uint q0 = b + 48u + (j >> 1) * 32u, shift = (j & 1u) * 4u;
  for (uint k = 0; k < 8u; ++k) {
    const uint hi = ((u32_at_even(b + 16u + 4u * k) >> j) & 0x01010101u) << 4;
    q[k] = ((u32_at_even(q0 + 4u * k) >> shift) & 0x0F0F0F0Fu) | hi;
  }
}
