// kv_common.glsl - shared by kv_store.comp and attention.comp: the KV cache layouts and exact conversions.
//
// Cache layouts (gpu/kernels.h), rows of `width` elements, bound as uint[]:
//   KV_F32 (0):  float[n_rows][width]
//   KV_F16 (1):  half[n_rows][width], two per word (element 2w in the low half of word w)
//   KV_Q8_0 (2): int8 qs[n_rows][width], four per word (element 4w in the low byte), then from word
//                n_rows * width / 4 on: float d[n_rows][width / 32] (the scale of block b = elements [32b, 32b+32))
//
// Every conversion here works on the bits with integer operations, so nothing depends on a driver's rounding mode or
// on whether it flushes denormals: an f32 -> f16 conversion gives core/fp16.cpp's fp32_to_fp16 bit for bit, an
// f16 -> f32 conversion is exact (f16 denormals included), and div_rn is a correctly rounded f32 division (Vulkan
// only promises 2.5 ULP for `/`).
#define KV_F32 0u
#define KV_F16 1u
#define KV_Q8_0 2u

// core/fp16.cpp's fp32_to_fp16, step for step: round to nearest even, NaN -> sign | 0x7e00, |x| >= 65536 -> inf.
uint f32_to_f16_bits(uint u) {
  const uint sgn = (u >> 16) & 0x8000u;
  const uint absu = u & 0x7FFFFFFFu;
  if (absu > 0x7F800000u) return sgn | 0x7E00u;
  if (absu >= 0x47800000u) return sgn | 0x7C00u;
  const int e = int(absu >> 23) - 127;
  if (e < -25) return sgn;
  uint mant = (absu & 0x7FFFFFu) | 0x800000u;
  uint shift, hexp;
  if (e < -14) {  // an f16 denormal
    shift = uint(13 + (-14 - e));
    hexp = 0u;
  } else {
    shift = 13u;
    hexp = uint(e + 15);
    mant &= 0x7FFFFFu;
  }
  uint hm = mant >> shift;
  const uint rem = mant & ((1u << shift) - 1u);
  const uint halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (hm & 1u) != 0u)) hm += 1u;
  uint o = (hexp << 10) + hm;  // a carry out of the mantissa moves into the exponent
  if (o >= 0x7C00u) o = 0x7C00u;
  return sgn | o;
}

// The f32 bits of the f16 in the low 16 bits of h (exact; f16 denormals become f32 normals).
uint f16_to_f32_bits(uint h) {
  const uint sgn = (h & 0x8000u) << 16;
  const uint e = (h >> 10) & 31u;
  const uint m = h & 0x3FFu;
  if (e == 0u) {
    if (m == 0u) return sgn;
    const int s = findMSB(m);  // m * 2^-24 = 1.f * 2^(s - 24)
    return sgn | (uint(s + 103) << 23) | ((m << uint(23 - s)) & 0x7FFFFFu);
  }
  if (e == 31u) return sgn | 0x7F800000u | (m << 13);
  return sgn | ((e + 112u) << 23) | (m << 13);
}
float half_lo(uint w) { return uintBitsToFloat(f16_to_f32_bits(w & 0xFFFFu)); }
float half_hi(uint w) { return uintBitsToFloat(f16_to_f32_bits(w >> 16)); }

// Signed byte i (0..3) of w as a float.
float i8_of(uint w, uint i) { return float(int(w << (24u - 8u * i)) >> 24); }

// a / b correctly rounded (to nearest even), for positive normal a, b whose quotient is a normal f32 or overflows:
// long division of the 24-bit significands. Elsewhere (zero, denormals, inf, NaN, a denormal quotient) it falls
// back to the driver's division.
float div_rn(float a, float b) {
  const uint ua = floatBitsToUint(a), ub = floatBitsToUint(b);
  if (ua < 0x00800000u || ua >= 0x7F800000u || ub < 0x00800000u || ub >= 0x7F800000u) return a / b;
  uint ma = (ua & 0x7FFFFFu) | 0x800000u;
  const uint mb = (ub & 0x7FFFFFu) | 0x800000u;
  int e = int(ua >> 23) - int(ub >> 23) + 127;
  if (ma < mb) {
    ma <<= 1;
    e -= 1;
  }
  uint q = 0u, r = ma;  // invariant: mb <= r < 2 mb before each step (r < 2^25)
  for (int i = 0; i < 24; ++i) {
    q <<= 1;
    if (r >= mb) {
      r -= mb;
      q |= 1u;
    }
    r <<= 1;
  }
  // q: 24 significant bits, r: twice the remainder. (An exact tie cannot happen for a quotient of two 24-bit
  // significands; the even rule is there for form.)
  if (r > mb || (r == mb && (q & 1u) != 0u)) q += 1u;
  if (q == 0x1000000u) {
    q >>= 1;
    e += 1;
  }
  if (e >= 255) return uintBitsToFloat(0x7F800000u);
  if (e <= 0) return a / b;
  return uintBitsToFloat((uint(e) << 23) | (q & 0x7FFFFFu));
}
