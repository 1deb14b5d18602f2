#version 450
// attention_combine: merges the splits of a split attention (attention.comp with splits > 1) into the output.
// For each (token, head) pair p and its partials s < splits (accumulator acc_s, running max m_s, sum l_s):
//   M = max_s m_s,  w_s = exp(m_s - M) (0 for an empty chunk, m_s = -inf),
//   out[p hdv + i] = sum_s w_s acc_s[i] / sum_s w_s l_s        (0 when every chunk is empty: n = 0)
// One workgroup of 64 threads per pair; thread i takes dimensions i, i + 64, ...
layout(local_size_x = 64) in;

layout(std430, set = 0, binding = 0) readonly buffer Part { float part[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Push {
  uint n_pairs;  // n_tok * n_head
  uint splits;
  uint hdv;
  uint ml_off;   // where the (m, l) pairs start in part
} pc;

void main() {
  const uint p = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (p >= pc.n_pairs) return;
  const uint p0 = p * pc.splits;
  const float neg_inf = uintBitsToFloat(0xFF800000u);
  float M = neg_inf;
  for (uint s = 0u; s < pc.splits; ++s) M = max(M, part[pc.ml_off + 2u * (p0 + s)]);
  float L = 0.0;
  for (uint s = 0u; s < pc.splits; ++s) {
    const float m = part[pc.ml_off + 2u * (p0 + s)];
    if (m != neg_inf) L += exp(m - M) * part[pc.ml_off + 2u * (p0 + s) + 1u];
  }
  for (uint i = gl_LocalInvocationID.x; i < pc.hdv; i += 64u) {
    float a = 0.0;
    for (uint s = 0u; s < pc.splits; ++s) {
      const float m = part[pc.ml_off + 2u * (p0 + s)];
      if (m != neg_inf) a += exp(m - M) * part[(p0 + s) * pc.hdv + i];
    }
    o[p * pc.hdv + i] = M == neg_inf ? 0.0 : a / L;
  }
}
