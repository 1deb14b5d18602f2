// tile_common.glsl - the output tiling shared by the tiled matrix shaders (mm_main.glsl: f32, mmq_main.glsl: int8;
// gpu/kernels.cpp's kTileRows / kTileTokens): a workgroup of WG = 128 threads computes BM = 64 rows x BN = 32 tokens
// of y; row tiles are numbered along grid x then y (y continues past the grid's x limit), token tiles along z; thread
// (tx, ty) holds the TM x TN = 4 x 4 register block of rows tx + TX i and tokens ty + TY j. Included after y and pc.
#define WG 128
#define BM 64            // rows per tile
#define BN 32            // tokens per tile
#define TM 4             // rows per thread: tx + 16 i, i < TM
#define TN 4             // tokens per thread: ty + 8 j, j < TN
#define TX (BM / TM)     // 16 threads across the rows
#define TY (BN / TN)     // 8 across the tokens (TX * TY = WG)
layout(local_size_x = WG, local_size_y = 1, local_size_z = 1) in;

// This workgroup's row tile, or false for a workgroup past the last one (the grid is rounded up to whole rows of x).
bool tile_origin(out uint row0, out uint tok0) {
  const uint tile = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
  row0 = tile * BM;
  tok0 = gl_WorkGroupID.z * BN;
  return tile < (pc.rows + BM - 1) / BM;
}

// y[t][r] = acc of the register block, token-major; consecutive threads store consecutive rows of one token.
void store_tile(float acc[TM * TN], uint row0, uint tok0, uint tx, uint ty) {
  [[unroll]] for (uint j = 0; j < TN; ++j) {
    const uint tok = tok0 + ty + j * TY;
    if (tok < pc.n_tok)
      [[unroll]] for (uint i = 0; i < TM; ++i) {
        const uint row = row0 + tx + i * TX;
        if (row < pc.rows) y[tok * pc.y_rows + pc.y_row0 + row] = acc[i * TN + j];
      }
  }
}
