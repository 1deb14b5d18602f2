// mv_main.glsl - the body shared by the matrix x vector shaders; included after unit_dot.
shared float partial[WG];

void main() {
  // Rows beyond 65535 workgroups continue in gl_WorkGroupID.y (the host dispatches a 2-D grid for tall matrices).
  const uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (row >= pc.rows) return;  // the whole workgroup leaves together, so the barriers below stay uniform
  const uint tid = gl_LocalInvocationID.x;
  const uint units = pc.cols / UNIT;
  const uint row_base = row * pc.row_bytes;
  float acc = 0.0;
  for (uint u = tid; u < units; u += WG) acc += unit_dot(row_base, u, u * UNIT);
  partial[tid] = acc;
  barrier();
  for (uint s = WG / 2; s > 0; s >>= 1) {
    if (tid < s) partial[tid] += partial[tid + s];
    barrier();
  }
  if (tid == 0) y[row] = partial[0];
}
