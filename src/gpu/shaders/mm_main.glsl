// mm_main.glsl - the body of the tiled matrix x matrix shaders (mm_*.comp) for prompt processing (many tokens);
// included after mv_common.glsl and the type's unit_weights (w_TYPE.glsl). Kernels::matmul uses it above 8 tokens.
//
// One workgroup of WG = 128 threads computes an output tile of BM = 64 rows x BN = 32 tokens. Row tiles are numbered
// along x then y (gl_WorkGroupID.y continues past the grid's x limit), token tiles along z. K (cols) is walked in
// steps of BK = 32 elements (one unit of the block types; 32 units of F32/F16/BF16):
//   1. the tile's 64 rows x 32 weights are dequantized into ws (each weight once per workgroup: a prompt of n tokens
//      dequantizes W n/32 times, not n/8 times as mv_main.glsl does) and the 32 tokens x 32 inputs are copied into
//      xs; rows, tokens and (for UNIT = 1) columns beyond the matrix are zeros;
//   2. barrier; each thread multiplies a 4-row column of ws by a 4-token column of xs into its TM x TN = 4 x 4
//      register block of sums (16 multiply-adds per 8 shared-memory reads); barrier.
// Sizes: ws + xs take 32 * 65 * 4 + 32 * 33 * 4 = 12.5 KiB, inside the 16 KiB of shared memory every Vulkan device
// has; 128 threads x 16 outputs cover the 64 x 32 tile. Both arrays are stored K-major with an odd stride (BM + 1,
// BN + 1), so the dequantizing stores (consecutive threads: consecutive rows, or consecutive k of one row for
// UNIT = 1), the input stores (consecutive k) and the reads of step 2 (consecutive rows; tokens broadcast) all fall
// in distinct banks.
// Each output is one running f32 sum over k = 0 .. cols-1 of w * x (a K-term dot product in one order: the same
// error bound as mv_main.glsl's strided sums and tree), and the weights are unit_weights' (bit-identical to
// core/quant.cpp). An fma in step 2 only removes roundings from that bound.
#include "tile_common.glsl"
#define BK 32            // elements of K per step (a multiple of UNIT)
#define UPS (BK / UNIT)  // units per row per step
#define WS_STRIDE (BM + 1)
#define XS_STRIDE (BN + 1)

shared float ws[BK * WS_STRIDE];  // ws[k * WS_STRIDE + r]: weight (row0 + r, k0 + k)
shared float xs[BK * XS_STRIDE];  // xs[k * XS_STRIDE + t]: input (tok0 + t, k0 + k)

void main() {
  uint row0, tok0;
  if (!tile_origin(row0, tok0)) return;  // the whole workgroup leaves together, so the barriers below stay uniform
  const uint tid = gl_LocalInvocationID.x;
  const uint tx = tid % TX, ty = tid / TX;
  float acc[TM * TN];
  [[unroll]] for (uint i = 0; i < TM * TN; ++i) acc[i] = 0.0;
  float wv[UNIT];
  for (uint k0 = 0; k0 < pc.cols; k0 += BK) {
    // 1. W tile: BM x UPS units; for UNIT = 32 threads 0..63 take one row each, for UNIT = 1 a warp takes 32
    // consecutive elements of one row.
    for (uint i = tid; i < BM * UPS; i += WG) {
      const uint r = i / UPS, uu = i % UPS;
      const uint row = row0 + r, k = k0 + uu * UNIT;
      if (row < pc.rows && k < pc.cols) {  // k < cols fails only for UNIT = 1 (cols is a multiple of UNIT)
        unit_weights(row * pc.row_bytes, k / UNIT, wv);
      } else {
        [[unroll]] for (uint l = 0; l < UNIT; ++l) wv[l] = 0.0;
      }
      [[unroll]] for (uint l = 0; l < UNIT; ++l) ws[(uu * UNIT + l) * WS_STRIDE + r] = wv[l];
    }
    //    X tile: BN tokens x BK inputs, consecutive threads read consecutive inputs of one token.
    for (uint i = tid; i < BN * BK; i += WG) {
      const uint t = i / BK, l = i % BK;
      const uint tok = tok0 + t, k = k0 + l;
      xs[l * XS_STRIDE + t] = (tok < pc.n_tok && k < pc.cols) ? x[tok * pc.cols + k] : 0.0;
    }
    barrier();
    // 2. The register block.
    [[unroll]] for (uint k = 0; k < BK; ++k) {
      float a[TM], b[TN];
      [[unroll]] for (uint i = 0; i < TM; ++i) a[i] = ws[k * WS_STRIDE + tx + i * TX];
      [[unroll]] for (uint j = 0; j < TN; ++j) b[j] = xs[k * XS_STRIDE + ty + j * TY];
      [[unroll]] for (uint i = 0; i < TM; ++i)
        [[unroll]] for (uint j = 0; j < TN; ++j) acc[i * TN + j] += a[i] * b[j];
    }
    barrier();
  }
  store_tile(acc, row0, tok0, tx, ty);
}
