// mv_main.glsl - the body of the few-token matrix shaders (mv_*.comp; see mv_common.glsl); included after
// unit_weights. Kernels::matmul uses it for up to 8 tokens (decode); more tokens go to mm_main.glsl's tiles.
// With SUBGROUP_SUMS (the mvs_*.comp variants, for devices with subgroup arithmetic) the threads' partial sums are
// added with subgroupAdd and the subgroups' results in shared memory; otherwise by a shared-memory tree.
#define WG 32
#define NT 8  // tokens per workgroup (<= WG: thread t < NT writes token t's result)
layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

shared float partial[NT * WG];
#ifdef SUBGROUP_SUMS
#include "subgroup_sums.glsl"
#endif

void main() {
  // Rows beyond 65535 workgroups continue in gl_WorkGroupID.y (the host dispatches a 2-D grid for tall matrices).
  const uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (row >= pc.rows) return;  // the whole workgroup leaves together, so the barriers below stay uniform
  const uint tok0 = gl_WorkGroupID.z * NT;
  const uint nt = min(pc.n_tok - tok0, uint(NT));  // tokens in this group (1..NT; the host sends no empty group)
  const uint tid = gl_LocalInvocationID.x;
  const uint units = pc.cols / UNIT;
  const uint row_base = row * pc.row_bytes;
  float acc[NT];
  [[unroll]] for (uint t = 0; t < NT; ++t) acc[t] = 0.0;
  float wv[UNIT];
  for (uint u = tid; u < units; u += WG) {
    unit_weights(row_base, u, wv);  // once per unit, for all the group's tokens
    const uint xb = tok0 * pc.cols + u * UNIT;
    [[unroll]] for (uint t = 0; t < NT; ++t) {
      if (t < nt) {
        const uint xt = xb + t * pc.cols;
        float s = 0.0;
        [[unroll]] for (uint l = 0; l < UNIT; ++l) s += wv[l] * x[xt + l];
        acc[t] += s;
      }
    }
  }
#ifdef SUBGROUP_SUMS
  store_subgroup_sums(acc, nt, tok0, row);
#else
  // Only the group's nt tokens are summed (nt is uniform in the workgroup: matvec pays for one tree, not NT).
  [[unroll]] for (uint t = 0; t < NT; ++t)
    if (t < nt) partial[t * WG + tid] = acc[t];
  barrier();
  for (uint s = WG / 2; s > 0; s >>= 1) {
    if (tid < s)
      [[unroll]] for (uint t = 0; t < NT; ++t)
        if (t < nt) partial[t * WG + tid] += partial[t * WG + tid + s];
    barrier();
  }
  if (tid < nt) y[(tok0 + tid) * pc.y_rows + pc.y_row0 + row] = partial[tid * WG];
#endif
}
