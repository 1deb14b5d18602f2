// q8_block.glsl - quantize_q8's block (see quantize_q8.comp for the layout and the two scalings), shared by
// quantize_q8.comp and the kernels that quantize their own output for the int8 path (rms_norm.comp, swiglu_q8.comp),
// so that all of them write the same bytes for the same values. The includer declares the output buffer `xq` (uint)
// and defines Q8_SRC(i), the f32 source element i (a flat index: block b is elements 32 b .. 32 b + 31, superblock
// 256 (b / 8) ..); each source value must be the same float however often it is read.
void q8_quantize_block(uint b, uint n_blocks, bool superblock) {
  const uint x0 = b * 32u;
  float d, id, d_unrounded = 0.0;
  if (superblock) {
    const uint s0 = x0 & ~255u;
    float amax = 0.0, v = 0.0;
    for (uint i = 0; i < 256u; ++i) {
      const float e = Q8_SRC(s0 + i);
      if (abs(e) > amax) {  // strictly greater: the first element of largest magnitude
        amax = abs(e);
        v = e;
      }
    }
    id = amax != 0.0 ? -127.0 / v : 0.0;
    d = amax != 0.0 ? 1.0 / id : 0.0;
  } else {
    float amax = 0.0;
    for (uint i = 0; i < 32u; ++i) amax = max(amax, abs(Q8_SRC(x0 + i)));
    id = amax != 0.0 ? 127.0 / amax : 0.0;
    d_unrounded = amax / 127.0;
    d = unpackHalf2x16(packHalf2x16(vec2(d_unrounded, 0.0))).x;
  }
  int sum_lo = 0, sum_hi = 0;
  for (uint k = 0; k < 8u; ++k) {
    uint word = 0u;
    for (uint i = 0; i < 4u; ++i) {
      const int q = min(127, int(roundEven(Q8_SRC(x0 + 4u * k + i) * id)));
      word |= (uint(q) & 0xFFu) << (8u * i);
      if (k < 4u) sum_lo += q; else sum_hi += q;
    }
    xq[8u * b + k] = word;
  }
  const uint aux = 8u * n_blocks + 2u * b;
  xq[aux] = floatBitsToUint(d);
  if (superblock)
    xq[aux + 1u] = (uint(sum_lo) & 0xFFFFu) | (uint(sum_hi) << 16);
  else
    xq[aux + 1u] = floatBitsToUint(unpackHalf2x16(packHalf2x16(vec2(d_unrounded * float(sum_lo + sum_hi), 0.0))).x);
}
