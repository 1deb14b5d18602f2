// w_f16.glsl - unit_weights for F16 weights, shared by mv_f16.comp (matmul for few tokens) and mm_f16.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// F16: IEEE half, 2 bytes per element.
#define UNIT 1
void unit_weights(uint rb, uint u, out float wv[UNIT]) { wv[0] = f16_at(rb + 2u * u); }
