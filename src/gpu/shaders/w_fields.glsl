// w_fields.glsl - the fields of the weight blocks, picked out of W (bound as uint w[]) with shifts; included by
// mv_common.glsl and mvq_common.glsl after their Weights binding.
// Byte b of W (0..255).
uint byte_at(uint b) { return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xFFu; }
// Signed byte b of W (-128..127).
int i8_at(uint b) { return int(byte_at(b) << 24) >> 24; }
// The 16-bit little-endian value at even byte offset b.
uint u16_at(uint b) { return (w[b >> 2] >> ((b & 2u) * 8u)) & 0xFFFFu; }
// IEEE half at even byte offset b, as f32 (exact).
float f16_at(uint b) { return unpackHalf2x16(u16_at(b)).x; }
// 32-bit little-endian value at even byte offset b (one word when b is 4-aligned, else two halves).
uint u32_at_even(uint b) { return (b & 2u) == 0u ? w[b >> 2] : u16_at(b) | (u16_at(b + 2u) << 16); }
