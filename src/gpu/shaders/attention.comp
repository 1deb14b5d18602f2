#version 450
// attention: out[t][h*hdv + i] = sum_{j<n} softmax_j(scale * q[t,h] . K[row(t,j), g]) V[row(t,j), g][i] over a paged
// KV cache (gpu/kernels.h), g = h / group, n = meta[npos_off + t], row(t, j) = meta[meta[pt_off + t] + j/64]*64 + j%64.
//
// One workgroup of 64 threads per (token, head). q is kept in shared memory. The positions are visited in tiles of
// 64 = one KV page (one page-table read per tile) with an online softmax: running max m, running sum l and the
// accumulator are rescaled by exp(m_old - m_new) only when the max grows. Per tile:
//  1. scores: 4 groups of 16 lanes; a group takes positions r, r+4, ..., its lane l reads words l, l+16, ... of the
//     position's K segment (16 consecutive words of one row per load), dots them with q and leaves a partial sum;
//  2. thread j adds the 16 partials of position j, times scale (positions >= n are masked out);
//  3. every thread finds the tile's max (broadcast reads of shared memory), thread j stores p_j = exp(s_j - m_new);
//  4. thread i accumulates dims i, i+64, i+128, i+192 of V: sum_j p_j V[row_j][dim] (consecutive threads read
//     consecutive elements of a row), and (identically in every thread) l.
// Split (flash-decoding, when few (token, head) pairs would leave most of a GPU idle on a long context): with
// pc.splits > 1, workgroup (token, head, s) visits only positions [s chunk, (s + 1) chunk) (chunk a multiple of 64)
// and writes its unnormalized accumulator, running max and sum to the scratch buffer bound as Out:
// o[p hdv + i] = acc_i, o[ml_off + 2 p] = m, o[ml_off + 2 p + 1] = l for p = (token n_head + head) splits + s (an
// empty chunk: m = -inf, l = 0, acc = 0); attention_combine.comp then merges the splits.
// K and V elements are converted to f32 exactly as core/quant.cpp's dequantize_row (F16 exactly, Q8_0 as
// float(q) * d, `precise`), so they equal the CPU's values; scores and sums are f32. head_dim, head_dim_v <= 256.
#extension GL_GOOGLE_include_directive : require
#include "kv_common.glsl"

#define WG 64
#define TILE 64
#define LANES 16
#define GROUPS (WG / LANES)
#define MAX_HD 256
layout(local_size_x = WG) in;

layout(std430, set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, set = 0, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, set = 0, binding = 3) readonly buffer Meta { uint meta[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Push {
  uint n_tok;
  uint n_head;
  uint group;     // n_head / n_head_kv
  uint hd;        // head_dim (K, q)
  uint hdv;       // head_dim_v (V, out)
  float scale;
  uint tk, tv;    // KV_F32, KV_F16, KV_Q8_0
  uint n_rows;
  uint npos_off;
  uint pt_off;
  uint kw, vw;    // row widths: n_head_kv * hd, n_head_kv * hdv
  uint kdbase;    // Q8_0: word index of the d array in K (n_rows * kw / 4), in V (n_rows * vw / 4)
  uint vdbase;
  uint splits;    // 1: the whole context, normalized output; > 1: chunks of `chunk` positions, partial output
  uint chunk;
  uint ml_off;    // split: where the (m, l) pairs start in the output
} pc;

shared float qs[MAX_HD];
shared float part[TILE * (LANES + 1)];  // [position][lane], padded against bank conflicts
shared float sc[TILE];
shared float ps[TILE];

// Partial dot of q with the words lane, lane + LANES, ... of K row `row`'s segment of head g.
float k_partial(uint row, uint g, uint lane) {
  float s = 0.0;
  if (pc.tk == KV_F32) {
    const uint base = row * pc.kw + g * pc.hd;
    for (uint w = lane; w < pc.hd; w += LANES) s += uintBitsToFloat(kc[base + w]) * qs[w];
  } else if (pc.tk == KV_F16) {
    const uint base = (row * pc.kw + g * pc.hd) >> 1, words = pc.hd >> 1;
    for (uint w = lane; w < words; w += LANES) {
      const uint v = kc[base + w];
      s += half_lo(v) * qs[2u * w];
      s += half_hi(v) * qs[2u * w + 1u];
    }
  } else {
    const uint base = (row * pc.kw + g * pc.hd) >> 2, words = pc.hd >> 2;
    const uint dbase = pc.kdbase + row * (pc.kw >> 5) + ((g * pc.hd) >> 5);
    for (uint w = lane; w < words; w += LANES) {
      const uint v = kc[base + w];
      const float d = uintBitsToFloat(kc[dbase + (w >> 3)]);
      for (uint i = 0u; i < 4u; ++i) {
        precise float x = i8_of(v, i) * d;
        s += x * qs[4u * w + i];
      }
    }
  }
  return s;
}

// Element e (< hdv) of V row `row`'s segment of head g.
float v_elem(uint row, uint g, uint e) {
  const uint idx = row * pc.vw + g * pc.hdv + e;
  if (pc.tv == KV_F32) return uintBitsToFloat(vc[idx]);
  if (pc.tv == KV_F16) {
    const uint v = vc[idx >> 1];
    return (idx & 1u) != 0u ? half_hi(v) : half_lo(v);
  }
  const float d = uintBitsToFloat(vc[pc.vdbase + (idx >> 5)]);  // row * vw / 32 + (g * hdv + e) / 32
  precise float x = i8_of(vc[idx >> 2], idx & 3u) * d;
  return x;
}

void main() {
  const uint id = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  if (id >= pc.n_tok * pc.n_head * pc.splits) return;  // whole workgroups leave: barriers below stay uniform
  const uint th = id / pc.splits, split = id % pc.splits;
  const uint t = th / pc.n_head, h = th % pc.n_head, g = h / pc.group;
  const uint tid = gl_LocalInvocationID.x, lane = tid % LANES, grp = tid / LANES;
  const uint n_all = meta[pc.npos_off + t];
  // This workgroup's positions [begin, n): all of them, or its chunk (empty when the context ends before it).
  const uint begin = pc.splits > 1u ? min(split * pc.chunk, n_all) : 0u;
  // (The last chunk runs to the context's end, so a token longer than the host's estimate is still whole.)
  const uint n = pc.splits > 1u && split + 1u < pc.splits ? min(begin + pc.chunk, n_all) : n_all;
  const uint pt = meta[pc.pt_off + t];
  const uint meta_last = uint(meta.length()) - 1u;

  for (uint i = tid; i < pc.hd; i += WG) qs[i] = q[(t * pc.n_head + h) * pc.hd + i];
  barrier();

  float m = uintBitsToFloat(0xFF800000u);  // -inf: running max (of the scores seen so far)
  float l = 0.0;         // running sum of exp(s - m)
  float acc[MAX_HD / WG];
  for (uint k = 0u; k < MAX_HD / WG; ++k) acc[k] = 0.0;

  const uint tiles = n / TILE + ((n % TILE) != 0u ? 1u : 0u);
  const uint first = begin < n ? begin / TILE : tiles;  // an empty chunk visits no tile
  for (uint tile = first; tile < tiles; ++tile) {
    const uint base = tile * TILE;
    const uint valid = min(n - base, uint(TILE));
    // Rows of this tile: one page. Out-of-range page-table entries or rows are clamped (never read out of bounds).
    const uint page = meta[min(pt + tile, meta_last)];
    const uint row0 = page * TILE;

    // 1. partial scores
    for (uint p = grp; p < TILE; p += GROUPS) {
      float s = 0.0;
      if (p < valid) s = k_partial(min(row0 + p, pc.n_rows - 1u), g, lane);
      part[p * (LANES + 1) + lane] = s;
    }
    barrier();
    // 2. scores
    {
      float s = 0.0;
      for (uint i = 0u; i < LANES; ++i) s += part[tid * (LANES + 1) + i];
      sc[tid] = s * pc.scale;
    }
    barrier();
    // 3. the tile's max, the new running max, p_j
    float mt = sc[0];
    for (uint j = 1u; j < valid; ++j) mt = max(mt, sc[j]);
    const float m_new = max(m, mt);
    ps[tid] = tid < valid ? exp(sc[tid] - m_new) : 0.0;
    barrier();
    // 4. rescale and accumulate
    if (m_new != m) {
      const float alpha = tile == first ? 0.0 : exp(m - m_new);
      l *= alpha;
      for (uint k = 0u; k < MAX_HD / WG; ++k) acc[k] *= alpha;
      m = m_new;
    }
    float lt = 0.0;
    for (uint j = 0u; j < valid; ++j) lt += ps[j];
    l += lt;
    for (uint k = 0u; k < MAX_HD / WG; ++k) {
      const uint e = tid + k * WG;
      if (e < pc.hdv) {
        float a = 0.0;
        for (uint j = 0u; j < valid; ++j) a += ps[j] * v_elem(min(row0 + j, pc.n_rows - 1u), g, e);
        acc[k] += a;
      }
    }
  }

  if (pc.splits > 1u) {
    const uint o0 = id * pc.hdv;
    for (uint k = 0u; k < MAX_HD / WG; ++k) {
      const uint e = tid + k * WG;
      if (e < pc.hdv) o[o0 + e] = acc[k];
    }
    if (tid == 0u) {
      o[pc.ml_off + 2u * id] = m;
      o[pc.ml_off + 2u * id + 1u] = l;
    }
    return;
  }
  const uint o0 = (t * pc.n_head + h) * pc.hdv;
  for (uint k = 0u; k < MAX_HD / WG; ++k) {
    const uint e = tid + k * WG;
    if (e < pc.hdv) o[o0 + e] = n == 0u ? 0.0 : acc[k] / l;
  }
}
