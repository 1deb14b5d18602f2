// kquant.glsl - helpers for the 256-element K-quant superblocks. A unit is one 32-element sub-block:
// superblock u / 8, sub-block j = u % 8, whose elements e = 32 j + l (l = 0..31) lie in
// "group" g = j / 4 (the 128-element half) and "column" c = j % 4 (which bit pair / nibble of the shared bytes).

// Q4_K / Q5_K scales: 12 bytes holding 8 (scale, min) pairs of 6 bits. Pairs 0..3: low 6 bits of bytes 0..3 (scale)
// and 4..7 (min). Pairs 4..7: nibbles of bytes 8..11 (low: scale, high: min) plus, as bits 4..5, the top two bits
// of bytes 0..3 (scale) and 4..7 (min).
void k4_scale_min(uint s, uint j, out uint sc, out uint mn) {  // s: byte offset of scales[0]
  if (j < 4u) {
    sc = byte_at(s + j) & 63u;
    mn = byte_at(s + j + 4u) & 63u;
  } else {
    sc = (byte_at(s + j + 4u) & 15u) | ((byte_at(s + j - 4u) >> 6) << 4);
    mn = (byte_at(s + j + 4u) >> 4) | ((byte_at(s + j) >> 6) << 4);
  }
}

// Q3_K scales: 12 bytes holding 16 six-bit values. Value k: low nibble from byte k (k < 8) or the high nibble of
// byte k - 8, top two bits from byte 8 + k % 4, bits 2 (k / 4); minus 32.
int q3k_scale(uint s, uint k) {
  const uint lo = k < 8u ? (byte_at(s + k) & 15u) : (byte_at(s + k - 8u) >> 4);
  const uint hi = (byte_at(s + 8u + (k & 3u)) >> (2u * (k >> 2))) & 3u;
  return int(lo | (hi << 4)) - 32;
}
