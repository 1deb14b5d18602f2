#version 450
// rope: rotary embedding in place on x[n_tok][n_heads * head_dim]; one invocation per rotated pair (t, head, i),
// i < rope_dim / 2. The pair is (i, i + rope_dim/2) (neox) or (2i, 2i+1); cos = cs[t][i], sin = cs[t][rope_dim/2 + i].
// a' = a c - b s, b' = a s + b c with each product and the difference/sum rounded separately, as ops/ops.cpp's rope
// computes them (`precise`: no fma), so given the same cos/sin the result equals the CPU's bit for bit.
#define WG 64
layout(local_size_x = WG) in;
layout(std430, set = 0, binding = 0) buffer Data { float xv[]; };
layout(std430, set = 0, binding = 1) readonly buffer CosSin { float cs[]; };
layout(push_constant) uniform Push {
  uint total;     // n_tok * n_heads * rope_dim / 2
  uint n_heads;
  uint head_dim;
  uint rope_dim;
  uint neox;      // 1: pairs (i, i + rope_dim/2); 0: (2i, 2i+1)
} pc;

void main() {
  const uint p = (gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x) * WG + gl_LocalInvocationID.x;
  if (p >= pc.total) return;
  const uint half_dim = pc.rope_dim / 2u;
  const uint i = p % half_dim, th = p / half_dim;  // th = t * n_heads + head
  const uint t = th / pc.n_heads;
  const uint base = th * pc.head_dim;
  const uint i0 = base + (pc.neox != 0u ? i : 2u * i);
  const uint i1 = i0 + (pc.neox != 0u ? half_dim : 1u);
  const float c = cs[t * pc.rope_dim + i], s = cs[t * pc.rope_dim + half_dim + i];
  const float a = xv[i0], b = xv[i1];
  precise float r0 = a * c - b * s;
  precise float r1 = a * s + b * c;
  xv[i0] = r0;
  xv[i1] = r1;
}
