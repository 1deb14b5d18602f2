// q_q8_0.glsl - unit_codes for Q8_0 (mvq_q8_0.comp; see mvq_common.glsl). 34 bytes per 32: [0] d (f16)
// [2..33] qs (int8). w = q * d: codes q, wd = d, no offset.
#define HAS_OFFSET 0
void unit_codes(uint rb, uint u, out uint q[8], out float wd0, out float wd1, out float wm0, out float wm1) {
  const uint b = rb + u * 34u;
  wd0 = wd1 = f16_at(b);
  wm0 = wm1 = 0.0;
  for (uint k = 0; k < 8u; ++k) q[k] = u32_at_even(b + 2u + 4u * k);
}
