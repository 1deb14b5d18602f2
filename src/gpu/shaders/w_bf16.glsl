// w_bf16.glsl - unit_weights for BF16 weights, shared by mv_bf16.comp (matmul for few tokens) and mm_bf16.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// BF16: the top 16 bits of an f32, 2 bytes per element.
#define UNIT 1
void unit_weights(uint rb, uint u, out float wv[UNIT]) { wv[0] = uintBitsToFloat(u16_at(rb + 2u * u) << 16); }
