// ops/packed.h - interleaved ("packed") weight layouts for the fastest integer kernels.
//
// GGUF stores a matrix row after row. For Q4_0, Q5_0 and Q8_0 the model loader rewrites, in place and
// byte for byte the same size, every group of 16 consecutive rows into one interleaved group, so
// that one 512-bit load holds 4 bytes of the same block of 16 different rows: a VNNI dot product
// (vpdpbusd) then yields 16 rows' partial sums in the 16 int32 lanes at once, with no horizontal
// reductions and one float step per block for 16 rows. The file on disk stays canonical GGUF.
//
// Layout of one group (16 rows of `cols` elements, nb = cols / 32 blocks; group bytes = 16 * row bytes):
//   for each block b, at offset b * (16 * block bytes):
//     16 x fp16 scales d (row 0 .. 15), then
//     Q4_0: 4 chunks c = 0..3 of 64 bytes: bytes 4r .. 4r+3 = row r's qs[4c .. 4c+3] (low nibbles are
//           elements 4c..4c+3, high nibbles elements 16+4c..16+4c+3)
//     Q5_0: 16 x the rows' 32-bit qh words (64 bytes), then the 4 chunks as Q4_0
// Q4_K (super-blocks of 256): per super-block of 16 rows, 16 d, 16 dmin (fp16), the 12 scale bytes as
//     three 64-byte vectors (vector k: bytes 4r..4r+3 = row r's scales[4k..4k+3]), then 32 chunks of
//     64 bytes (chunk c: bytes 4r..4r+3 = row r's qs[4c..4c+3]); partner activations: canonical Q8_K.
//     Q8_0: 8 chunks c = 0..7 of 64 bytes: bytes 4r .. 4r+3 = row r's qs[4c .. 4c+3] XOR 0x80 (the
//           code + 128 as an unsigned byte, so it can be vpdpbusd's unsigned operand)
// The partner activation format is BlockQ8S: the Q8_0 activation block (same codes, same fp16 scale,
// bit for bit what the canonical path multiplies with) plus the block's offset correction
// bias = -C * sum(qs) (C = 8 for Q4_0's codes u - 8, 16 for Q5_0's, 128 for Q8_0's u - 128), so every integer sum is
// exact and equal to the canonical kernel's.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/types.h"

namespace lokal {

constexpr int kPackRows = 16;

struct BlockQ8S {
  float d;        // fp16-rounded scale, as a float
  int32_t bias;   // -C * sum(qs)
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8S) == 40, "BlockQ8S is 40 bytes");

// Types with a packed layout (Q4_0, Q5_0, Q8_0, Q4_K).
bool pack_supported(DType w);
// True when a matrix of this type and shape should be packed at load: the type has a layout, rows
// is a multiple of 16, cols of 32, and the active kernel set has a SIMD kernel for it (packing for
// the scalar reference alone would only slow it down). LOKAL_REPACK=0 in the environment: never.
bool pack_worthwhile(DType w, int64_t rows, int64_t cols);

// Rewrites `rows` canonical rows (row-major, row_size(w, cols) bytes each) into packed groups, in
// place. rows % 16 == 0.
void pack_matrix_inplace(DType w, int64_t rows, int64_t cols, uint8_t* data);
// Canonical bytes of row r of a packed matrix (row_size(w, cols) bytes into dst).
void unpack_row(DType w, int64_t cols, const uint8_t* data, int64_t r, uint8_t* dst);

// Bytes of one activation row in the packed kernels' partner format for w (cols / 32 BlockQ8S; Q4_K:
// a Q8_K row).
size_t packed_act_row_size(DType w, int64_t cols);
// x (n floats) -> n / 32 BlockQ8S for weight type w (the same codes and scales quantize_activation
// produces for w); Q4_K: quantize_activation's Q8_K row itself.
void quantize_activation_packed(DType w, const float* x, void* dst, int64_t n);

// y[t * ldy + 16 g + i] = dot(row i of group g, activation row t) for groups g in [0, ng) (groups
// g_stride bytes apart, starting at `groups`) and tokens t in [0, nt) (rows a_stride bytes apart).
// Integer parts exact; float accumulation per block in order, as vec_dot (same error bound).
void vec_dot_packed(DType w, int64_t n, const void* groups, size_t g_stride, int64_t ng, const void* act,
                    size_t a_stride, int64_t nt, float* y, int64_t ldy);
// Scalar reference: unpacks each row and calls vec_dot_ref (tests compare against it).
void vec_dot_packed_ref(DType w, int64_t n, const void* groups, size_t g_stride, int64_t ng, const void* act,
                        size_t a_stride, int64_t nt, float* y, int64_t ldy);
// True when the active kernel set has a SIMD kernel for packed w.
bool vec_dot_has_packed(DType w);

}  // namespace lokal
