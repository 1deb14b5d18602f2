// subgroup_sums.glsl - the end of the few-token matrix shaders that add with subgroups (mvs_*.comp, mvq_*.comp):
// each of the nt tokens' partial sums (acc[t], one per thread) added by subgroupAdd, the subgroups' results put in
// shared memory (`partial`: NT * WG floats, declared by the includer, as are y and pc), then thread t < nt adds them
// and writes token tok0 + t's output for `row`. Any subgroup size works (one of 64 holds the whole workgroup).
void store_subgroup_sums(float acc[NT], uint nt, uint tok0, uint row) {
  [[unroll]] for (uint t = 0; t < NT; ++t) {
    if (t < nt) {
      const float s = subgroupAdd(acc[t]);
      if (subgroupElect()) partial[t * WG + gl_SubgroupID] = s;
    }
  }
  barrier();
  const uint tid = gl_LocalInvocationID.x;
  if (tid < nt) {
    float s = 0.0;
    for (uint g = 0; g < gl_NumSubgroups; ++g) s += partial[tid * WG + g];
    y[(tok0 + tid) * pc.y_rows + pc.y_row0 + row] = s;
  }
}
