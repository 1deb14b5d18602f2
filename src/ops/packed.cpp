// ops/packed.cpp - packed (16-row interleaved) Q4_0 / Q5_0 / Q8_0 / Q4_K layouts: packing, unpacking, the
// activation format and the scalar reference product. See ops/packed.h for the layout.
#include "ops/packed.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/quant.h"
#include "ops/vec_dot.h"

namespace lokal {

namespace {

// Per type: bytes of one canonical block, of its code bytes (qs), where qs starts in the canonical
// block, and where the code chunks start in a packed block of 16 rows (after 16 fp16 scales, and
// for Q5_0 the 16 rows' 32-bit qh words).
size_t block_bytes(DType w) {
  return w == DType::Q4_0 ? sizeof(BlockQ4_0) : w == DType::Q5_0 ? sizeof(BlockQ5_0) : sizeof(BlockQ8_0);
}
int code_bytes(DType w) { return w == DType::Q8_0 ? 32 : 16; }
int qs_offset(DType w) { return w == DType::Q5_0 ? 6 : 2; }
int packed_code_offset(DType w) { return w == DType::Q5_0 ? 96 : 32; }

void check_packable(DType w, int64_t rows, int64_t cols) {
  if (!pack_supported(w)) throw Error(std::string("no packed layout for tensor type ") + type_name(w));
  const int64_t bs = type_info(w)->block_size;
  if (rows % kPackRows != 0 || cols % bs != 0 || cols <= 0)
    throw Error("packed layout needs rows % 16 == 0 and cols % " + std::to_string(bs) + " == 0, got " +
                std::to_string(rows) + " x " + std::to_string(cols));
}

// Q4_K super-block of 16 rows (2304 bytes = 16 x 144): 16 d, 16 dmin (fp16), the 12 scale bytes as
// three 64-byte vectors (vector k, bytes 4r..4r+3 = row r's scales[4k..4k+3]), then 32 chunks of
// 64 bytes (chunk c, bytes 4r..4r+3 = row r's qs[4c..4c+3]). Packing and unpacking are the same
// permutation of 4-byte words in both directions.
constexpr size_t kQ4KGroupBlock = 16 * sizeof(BlockQ4_K);
void q4k_group(int64_t nsb, const uint8_t* src, size_t row_bytes, uint8_t* dst, bool pack, int only_row = -1) {
  for (int64_t b = 0; b < nsb; ++b) {
    for (int r = 0; r < kPackRows; ++r) {
      if (only_row >= 0 && r != only_row) continue;
      // canonical block of row r and packed super-block b
      const size_t co = static_cast<size_t>(r) * row_bytes + static_cast<size_t>(b) * sizeof(BlockQ4_K);
      const size_t po = static_cast<size_t>(b) * kQ4KGroupBlock;
      auto move = [&](size_t canon_off, size_t packed_off, size_t n) {
        if (pack) std::memcpy(dst + po + packed_off, src + co + canon_off, n);
        else std::memcpy(dst + static_cast<size_t>(b) * sizeof(BlockQ4_K) + canon_off, src + po + packed_off, n);
      };
      move(0, 2 * r, 2);                                            // d
      move(2, 32 + 2 * r, 2);                                       // dmin
      for (int k = 0; k < 3; ++k) move(4 + 4 * k, 64 + 64 * k + 4 * r, 4);      // scales
      for (int c = 0; c < 32; ++c) move(16 + 4 * c, 256 + 64 * c + 4 * r, 4);  // qs
    }
  }
}

// One group: 16 canonical rows (src, row_bytes apart) -> packed bytes (dst). Copies 4 code bytes
// at a time (Q8_0's flipped as one 32-bit XOR).
void pack_group(DType w, int64_t nb, const uint8_t* src, size_t row_bytes, uint8_t* dst) {
  const size_t bb = block_bytes(w);
  const int chunks = code_bytes(w) / 4, qo = qs_offset(w), po = packed_code_offset(w);
  const uint32_t flip = w == DType::Q8_0 ? 0x80808080u : 0u;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* o = dst + static_cast<size_t>(b) * kPackRows * bb;
    for (int r = 0; r < kPackRows; ++r) {
      const uint8_t* blk = src + static_cast<size_t>(r) * row_bytes + static_cast<size_t>(b) * bb;
      std::memcpy(o + 2 * r, blk, 2);  // fp16 d is the first member of every block type here
      if (w == DType::Q5_0) std::memcpy(o + 32 + 4 * r, blk + 2, 4);  // qh
      for (int c = 0; c < chunks; ++c) {
        uint32_t v;
        std::memcpy(&v, blk + qo + 4 * c, 4);
        v ^= flip;
        std::memcpy(o + po + 64 * c + 4 * r, &v, 4);
      }
    }
  }
}

}  // namespace

bool pack_supported(DType w) { return w == DType::Q4_0 || w == DType::Q5_0 || w == DType::Q8_0 || w == DType::Q4_K; }

bool pack_worthwhile(DType w, int64_t rows, int64_t cols) {
  static const bool disabled = [] {
    const char* e = std::getenv("LOKAL_REPACK");
    return e && std::string(e) == "0";
  }();
  return !disabled && pack_supported(w) && rows > 0 && rows % kPackRows == 0 && cols > 0 &&
         cols % type_info(w)->block_size == 0 && vec_dot_has_packed(w);
}

void pack_matrix_inplace(DType w, int64_t rows, int64_t cols, uint8_t* data) {
  check_packable(w, rows, cols);
  const size_t rb = row_size(w, cols);
  const int64_t nb = cols / 32;
  std::vector<uint8_t> tmp(rb * kPackRows);
  for (int64_t g = 0; g < rows / kPackRows; ++g) {
    uint8_t* grp = data + static_cast<size_t>(g) * kPackRows * rb;
    std::memcpy(tmp.data(), grp, tmp.size());
    if (w == DType::Q4_K) q4k_group(cols / QK_K, tmp.data(), rb, grp, true);
    else pack_group(w, nb, tmp.data(), rb, grp);
  }
}

void unpack_row(DType w, int64_t cols, const uint8_t* data, int64_t r, uint8_t* dst) {
  check_packable(w, kPackRows, cols);
  const size_t rb = row_size(w, cols);
  if (w == DType::Q4_K) {
    q4k_group(cols / QK_K, data + static_cast<size_t>(r / kPackRows) * kPackRows * rb, rb, dst, false,
              static_cast<int>(r % kPackRows));
    return;
  }
  const size_t bb = block_bytes(w);
  const int chunks = code_bytes(w) / 4, qo = qs_offset(w), po = packed_code_offset(w);
  const uint32_t flip = w == DType::Q8_0 ? 0x80808080u : 0u;
  const int64_t nb = cols / 32;
  const uint8_t* grp = data + static_cast<size_t>(r / kPackRows) * kPackRows * rb;
  const int i = static_cast<int>(r % kPackRows);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = grp + static_cast<size_t>(b) * kPackRows * bb;
    uint8_t* blk = dst + static_cast<size_t>(b) * bb;
    std::memcpy(blk, p + 2 * i, 2);
    if (w == DType::Q5_0) std::memcpy(blk + 2, p + 32 + 4 * i, 4);
    for (int c = 0; c < chunks; ++c) {
      uint32_t v;
      std::memcpy(&v, p + po + 64 * c + 4 * i, 4);
      v ^= flip;
      std::memcpy(blk + qo + 4 * c, &v, 4);
    }
  }
}

size_t packed_act_row_size(DType w, int64_t cols) {
  if (w == DType::Q4_K) return row_size(DType::Q8_K, cols);
  return static_cast<size_t>(cols / 32) * sizeof(BlockQ8S);
}

void quantize_activation_packed(DType w, const float* x, void* dst, int64_t n) {
  if (!pack_supported(w)) throw Error(std::string("no packed layout for tensor type ") + type_name(w));
  if (w == DType::Q4_K) return quantize_activation(w, x, dst, n);  // canonical Q8_K
  // The canonical Q8_0 activation (dispatched kernel), then each block widened: the same codes and
  // scale, plus the offset correction.
  thread_local std::vector<uint8_t> q8;
  q8.resize(row_size(DType::Q8_0, n));
  quantize_activation(w, x, q8.data(), n);
  const int32_t c = w == DType::Q4_0 ? 8 : w == DType::Q5_0 ? 16 : 128;
  const auto* src = reinterpret_cast<const BlockQ8_0*>(q8.data());
  auto* out = static_cast<BlockQ8S*>(dst);
  for (int64_t b = 0; b < n / 32; ++b) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += src[b].qs[j];
    out[b].d = fp16_to_fp32(src[b].d);
    out[b].bias = -c * s;
    std::memcpy(out[b].qs, src[b].qs, 32);
  }
}

void vec_dot_packed_ref(DType w, int64_t n, const void* groups, size_t g_stride, int64_t ng, const void* act,
                        size_t a_stride, int64_t nt, float* y, int64_t ldy) {
  check_packable(w, kPackRows, n);
  std::vector<uint8_t> row(row_size(w, n));
  const auto* gb = static_cast<const uint8_t*>(groups);
  const auto* ab = static_cast<const uint8_t*>(act);
  if (w == DType::Q4_K) {  // activations are canonical Q8_K rows
    for (int64_t t = 0; t < nt; ++t)
      for (int64_t g = 0; g < ng; ++g)
        for (int i = 0; i < kPackRows; ++i) {
          unpack_row(w, n, gb + static_cast<size_t>(g) * g_stride, i, row.data());
          y[t * ldy + g * kPackRows + i] = vec_dot_ref(w, n, row.data(), ab + static_cast<size_t>(t) * a_stride);
        }
    return;
  }
  std::vector<BlockQ8_0> a8(static_cast<size_t>(n / 32));
  for (int64_t t = 0; t < nt; ++t) {
    const auto* at = reinterpret_cast<const BlockQ8S*>(ab + static_cast<size_t>(t) * a_stride);
    for (int64_t b = 0; b < n / 32; ++b) {
      a8[static_cast<size_t>(b)].d = fp32_to_fp16(at[b].d);  // exact: d came from an fp16
      std::memcpy(a8[static_cast<size_t>(b)].qs, at[b].qs, 32);
    }
    for (int64_t g = 0; g < ng; ++g)
      for (int i = 0; i < kPackRows; ++i) {
        unpack_row(w, n, gb + static_cast<size_t>(g) * g_stride, i, row.data());
        y[t * ldy + g * kPackRows + i] = vec_dot_ref(w, n, row.data(), a8.data());
      }
  }
}

}  // namespace lokal
