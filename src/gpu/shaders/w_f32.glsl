// w_f32.glsl - unit_weights for F32 weights, shared by mv_f32.comp (matmul for few tokens) and mm_f32.comp
// (tiled matmul for many tokens). Included after mv_common.glsl. Not [[unroll]]ed: see mv_common.glsl.
// F32: 4 bytes per element.
#define UNIT 1
void unit_weights(uint rb, uint u, out float wv[UNIT]) { wv[0] = uintBitsToFloat(w[(rb >> 2) + u]); }
