// mmq_main.glsl - the body of the int8 tiled matrix shaders (mmq_*.comp) for prompts (more than 8 tokens); included
// after mvq_common.glsl and the type's unit_codes (q_TYPE.glsl). The tiles of mm_main.glsl with the arithmetic of
// mvq_main.glsl: the weights stay int8 codes in shared memory and every product is OpSDot on four packed codes.
//
// One workgroup of WG = 128 threads computes an output tile of BM = 64 rows x BN = 32 tokens (row tiles along grid
// x then y, token tiles along z, as mm_main.glsl). K is walked in steps of UPS = 2 units (64 elements):
//   1. each thread fetches one unit of one row (unit_codes: 8 words of codes and the four floats wd0, wd1, wm0, wm1)
//      into wq / wsc, and the 32 tokens' two activation blocks (8 words of codes, d, the half sums) are copied into
//      xq_s / xd_s / xsum_s; rows and tokens beyond the matrix are zeros (codes and scales 0: they add exact zeros);
//   2. barrier; each thread takes a 4-row x 4-token register block: per unit and (row, token) pair 8 sdot of the
//      halves, then acc += d_a * (wd0 * isum_0 + wd1 * isum_1 + wm0 * asum_0 + wm1 * asum_1) (or, for Q4_1/Q5_1,
//      d_a * (wd0 * isum_0 + wd1 * isum_1) + wm0 * s_a), the unit term of mvq_common.glsl in the same float
//      operations; barrier.
// Each output is a sequential f32 sum of its units' terms (mvq_main.glsl sums the same terms strided, then by a
// subgroup tree: the same error bound). Sizes: wq 16 x 65 words, wsc 2 x 4 x 64 floats, xq_s 16 x 33 words, xd_s and
// xsum_s 2 x 32: 9.4 KiB of shared memory. Both code arrays are K-major with an odd stride, so the stores and the
// step-2 reads (consecutive rows; tokens broadcast) fall in distinct banks.
#include "tile_common.glsl"
#define UPS 2            // units (32 elements) per step
#define KW (8 * UPS)     // code words per row per step
#define WQ_STRIDE (BM + 1)
#define XQ_STRIDE (BN + 1)

shared uint wq[KW * WQ_STRIDE];    // wq[(8 uu + k) * WQ_STRIDE + r]: word k of unit uu of row row0 + r
shared vec4 wsc[UPS * BM];         // (wd0, wd1, wm0, wm1) of unit uu of row r at [uu * BM + r]
shared uint xq_s[KW * XQ_STRIDE];  // xq_s[(8 uu + k) * XQ_STRIDE + t]: word k of block uu of token tok0 + t
shared float xd_s[UPS * BN];       // d of that block
shared uint xsum_s[UPS * BN];      // its half sums (int16 each) or s (f32 bits), as quantize_q8.comp wrote them

void main() {
  uint row0, tok0;
  if (!tile_origin(row0, tok0)) return;  // the whole workgroup leaves together, so the barriers below stay uniform
  const uint tid = gl_LocalInvocationID.x;
  const uint tx = tid % TX, ty = tid / TX;
  const uint units = pc.cols / 32u;
  const uint aux = 8u * units * pc.n_tok;  // where the activations' (d, sums) pairs start
  float acc[TM * TN];
  [[unroll]] for (uint i = 0; i < TM * TN; ++i) acc[i] = 0.0;
  for (uint u0 = 0; u0 < units; u0 += UPS) {
    // 1. W: thread tid takes unit u0 + tid / BM of row row0 + tid % BM (BM * UPS = WG: one unit each).
    {
      const uint r = tid % BM, uu = tid / BM;
      const uint row = row0 + r, u = u0 + uu;
      uint q[8];
      float wd0 = 0.0, wd1 = 0.0, wm0 = 0.0, wm1 = 0.0;
      if (row < pc.rows && u < units) {
        unit_codes(row * pc.row_bytes, u, q, wd0, wd1, wm0, wm1);
      } else {
        [[unroll]] for (uint k = 0; k < 8u; ++k) q[k] = 0u;
      }
      [[unroll]] for (uint k = 0; k < 8u; ++k) wq[(8u * uu + k) * WQ_STRIDE + r] = q[k];
      wsc[uu * BM + r] = vec4(wd0, wd1, wm0, wm1);
    }
    //    X: BN tokens x UPS blocks x 8 words, consecutive threads read consecutive words of one token's blocks.
    for (uint i = tid; i < BN * KW; i += WG) {
      const uint t = i / KW, kw = i % KW, uu = kw / 8u;
      const uint tok = tok0 + t, u = u0 + uu;
      xq_s[kw * XQ_STRIDE + t] = (tok < pc.n_tok && u < units) ? xq[8u * (tok * units + u) + kw % 8u] : 0u;
    }
    if (tid < BN * UPS) {
      const uint t = tid % BN, uu = tid / BN;
      const uint tok = tok0 + t, u = u0 + uu;
      const bool inside = tok < pc.n_tok && u < units;
      const uint blk = tok * units + u;
      xd_s[uu * BN + t] = inside ? uintBitsToFloat(xq[aux + 2u * blk]) : 0.0;
      xsum_s[uu * BN + t] = inside ? xq[aux + 2u * blk + 1u] : 0u;
    }
    barrier();
    // 2. The register block, unit by unit.
    [[unroll]] for (uint uu = 0; uu < UPS; ++uu) {
      uint b[TN][8];
      float da[TN];
#if HAS_OFFSET == 1
      float as0[TN], as1[TN];
#endif
#if HAS_OFFSET == 2
      float sa[TN];
#endif
      [[unroll]] for (uint j = 0; j < TN; ++j) {
        const uint t = ty + j * TY;
        [[unroll]] for (uint k = 0; k < 8u; ++k) b[j][k] = xq_s[(8u * uu + k) * XQ_STRIDE + t];
        da[j] = xd_s[uu * BN + t];
#if HAS_OFFSET == 1
        const uint sums = xsum_s[uu * BN + t];
        as0[j] = float(int(sums << 16) >> 16);
        as1[j] = float(int(sums) >> 16);
#endif
#if HAS_OFFSET == 2
        sa[j] = uintBitsToFloat(xsum_s[uu * BN + t]);
#endif
      }
      [[unroll]] for (uint i = 0; i < TM; ++i) {
        const uint r = tx + i * TX;
        uint a[8];
        [[unroll]] for (uint k = 0; k < 8u; ++k) a[k] = wq[(8u * uu + k) * WQ_STRIDE + r];
        const vec4 sc = wsc[uu * BM + r];
        [[unroll]] for (uint j = 0; j < TN; ++j) {
          int s0 = 0, s1 = 0;
          [[unroll]] for (uint k = 0; k < 4u; ++k) {
            s0 += sdot(a[k], b[j][k]);
            s1 += sdot(a[k + 4u], b[j][k + 4u]);
          }
          float v = sc.x * float(s0) + sc.y * float(s1);
#if HAS_OFFSET == 1
          v += sc.z * as0[j] + sc.w * as1[j];
#endif
#if HAS_OFFSET == 2
          acc[i * TN + j] += da[j] * v + sc.z * sa[j];
#else
          acc[i * TN + j] += da[j] * v;
#endif
        }
      }
    }
    barrier();
  }
  store_tile(acc, row0, tok0, tx, ty);
}
