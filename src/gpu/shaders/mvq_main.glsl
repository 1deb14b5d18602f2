// mvq_main.glsl - the body of the int8 few-token matrix shaders (mvq_*.comp; see mvq_common.glsl); included after
// unit_codes. One workgroup per row (rows beyond the x limit continue in y) and up to NT tokens (all of them: the
// host sends at most NT); thread i takes units i, i + WG, ...; the WG partial sums of each token are added with
// subgroupAdd, then across the workgroup's subgroups in shared memory (any subgroup size).
#define WG 32
#define NT 8
layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

shared float partial[NT * WG];
#include "subgroup_sums.glsl"

void main() {
  const uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (row >= pc.rows) return;  // the whole workgroup leaves together
  const uint nt = pc.n_tok;
  const uint tid = gl_LocalInvocationID.x;
  const uint units = pc.cols / 32u;
  const uint row_base = row * pc.row_bytes;
  const uint aux = 8u * units * nt;  // where the activations' (d, sums) pairs start
  float acc[NT];
  [[unroll]] for (uint t = 0; t < NT; ++t) acc[t] = 0.0;
  uint q[8];
  float wd0, wd1, wm0, wm1;
  for (uint u = tid; u < units; u += WG) {
    unit_codes(row_base, u, q, wd0, wd1, wm0, wm1);
    [[unroll]] for (uint t = 0; t < NT; ++t) {
      if (t < nt) {
        const uint blk = t * units + u, a = 8u * blk;
        int s0 = 0, s1 = 0;
        [[unroll]] for (uint k = 0; k < 4u; ++k) {
          s0 += sdot(q[k], xq[a + k]);
          s1 += sdot(q[k + 4u], xq[a + k + 4u]);
        }
        const float da = uintBitsToFloat(xq[aux + 2u * blk]);
        float v = wd0 * float(s0) + wd1 * float(s1);
#if HAS_OFFSET == 1
        const uint sums = xq[aux + 2u * blk + 1u];
        v += wm0 * float(int(sums << 16) >> 16) + wm1 * float(int(sums) >> 16);
#endif
#if HAS_OFFSET == 2
        acc[t] += da * v + wm0 * uintBitsToFloat(xq[aux + 2u * blk + 1u]);
#else
        acc[t] += da * v;
#endif
      }
    }
  }
  store_subgroup_sums(acc, nt, 0u, row);
}
