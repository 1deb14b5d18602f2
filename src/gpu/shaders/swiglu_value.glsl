// swiglu_value.glsl - silu(g) * u with silu(g) = g / (1 + exp(-g)) (as ops/ops.cpp's swiglu), shared by swiglu.comp
// and swiglu_q8.comp so that both compute the same float for the same inputs (precise: no contraction).
float swiglu_value(float g, float u) {
  precise float den = 1.0 + exp(-g);
  precise float s = g / den;
  precise float o = s * u;
  return o;
}
