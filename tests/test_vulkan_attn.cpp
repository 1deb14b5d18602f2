// The KV cache on the device (gpu::Kernels::kv_store, attention) against the CPU: core/quant.h's conversions for the
// stored bytes, ops/attention.h's attention_ref (double precision, exact softmax) for attention.
//
// Like test_vulkan, these tests need a Vulkan device (lavapipe will do) and FAIL without one, unless
// LOKAL_TEST_NO_GPU=1, which skips them.
//
// kv_store must be bit-exact: f32 rows are copied, f16 is core/fp16.cpp's fp32_to_fp16 (round to nearest even;
// denormals, ties, overflow to inf, NaN), q8_0 is quantize_row's Q8_0 (d = amax/127 stored through f16,
// q = round(x / d) with halves away from zero), rearranged into the device layout.
//
// attention: the device reads each K/V element as exactly the value dequantize_row gives for the CPU's cache (same
// stored values, exact widening), so only the arithmetic differs. The tolerance, per output element, derived for
// any order of f32 summation (u = 2^-24, gamma_k = k u / (1 - k u); Vulkan: +, -, * correctly rounded, exp within
// 3 + 2|x| ULP, division within 2.5 ULP; 1 ULP <= 2u relative):
//   S = max_j scale * sum_i |q_i k_ji|       bounds every |score|, so |s_j - m| <= 2S;
//   a score's error (f32 dot of hd terms, then * scale): d_s <= gamma_(hd+1) S;
//   an exp(s_j - m) (or a rescale factor exp(m_old - m_new)): argument error 2 d_s + 2S u (the subtraction), value
//     error (3 + 4S) 2u, so relative error e1 = 2 d_s + 2S u + (3 + 4S) 2u;
//   each weight p_j reaches the output through its own exp and at most R rescales (R = how often the running max
//     grew after the first tile; counted from the double scores with a 1e-3 margin, so never undercounted), each
//     rescale also rounding acc and l once: relative error e <= (R + 1) e1 + 2R u;
//   o = sum p_j v_j / sum p_j with every p_j off by a factor in [1 - e, 1 + e] moves o by <= 2e/(1-e) max_j|v_j|;
//   the sums themselves (a product, <= 63 adds in a tile, one add per tile): gamma_(tiles+65) relative to
//     sum p_j |v_j| for the numerator and to sum p_j for l: <= 2 gamma_(tiles+65) max_j|v_j| on o;
//   the final division: 5u |o| <= 5u max_j|v_j|.
//   tol = (2e/(1-e) + 2 gamma_(tiles+65) + 5u) max_j |v_j|   (max over the positions, this output's dimension).
// With hd = 128 and values in [-1, 1] this is ~1e-4 of max|v| (actual errors are ~1e-7): far below what reading a
// wrong row, page or head costs (>= |v| / n, ~1.4e-3 at n = 700, and whole pages for page-table mistakes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/fp16.h"
#include "core/quant.h"
#include "core/types.h"
#include "gpu/gpu.h"
#include "gpu/kernels.h"
#include "support/gpu_test.h"
#include "ops/attention.h"

using namespace lokal;

namespace {

using test::kU;
using test::upload_vec;
using test::random_floats;
double gamma_k(double k) { return k * kU / (1 - k * kU); }

// One f32 row converted to the device layout (gpu/kernels.h) with the CPU's conversions, written as row `row` of a
// cache image of n_rows rows.
void put_device_row(DType t, const float* x, int64_t width, int64_t n_rows, int64_t row, std::vector<uint8_t>& img) {
  switch (t) {
    case DType::F32: std::memcpy(&img[static_cast<size_t>(row * width * 4)], x, static_cast<size_t>(width) * 4); break;
    case DType::F16:
      for (int64_t i = 0; i < width; ++i) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(&img[static_cast<size_t>((row * width + i) * 2)], &h, 2);
      }
      break;
    case DType::Q8_0: {
      std::vector<BlockQ8_0> b(static_cast<size_t>(width / 32));
      quantize_row(DType::Q8_0, x, b.data(), width);
      for (int64_t k = 0; k < width / 32; ++k) {
        std::memcpy(&img[static_cast<size_t>(row * width + 32 * k)], b[k].qs, 32);
        const float d = fp16_to_fp32(b[k].d);
        std::memcpy(&img[static_cast<size_t>(n_rows * width + 4 * (row * (width / 32) + k))], &d, 4);
      }
      break;
    }
    default: ADD_FAILURE() << "no device layout for " << type_name(t);
  }
}

std::vector<uint8_t> device_image(DType t, const std::vector<float>& rows, int64_t n_rows, int64_t width) {
  std::vector<uint8_t> img(gpu::Kernels::kv_bytes(t, n_rows, width));
  for (int64_t r = 0; r < n_rows; ++r) put_device_row(t, rows.data() + r * width, width, n_rows, r, img);
  return img;
}

// The same rows in the CPU's format (rows of row_size(t, width) bytes, quantize_row).
std::vector<uint8_t> cpu_image(DType t, const std::vector<float>& rows, int64_t n_rows, int64_t width) {
  const size_t rb = row_size(t, width);
  std::vector<uint8_t> img(rb * static_cast<size_t>(n_rows));
  for (int64_t r = 0; r < n_rows; ++r) quantize_row(t, rows.data() + r * width, img.data() + r * rb, width);
  return img;
}

// Values that exercise the f16 conversion: ties (to even), f16 denormals and their ties, the overflow boundary,
// signed zero, f32 denormals, inf and NaN.
std::vector<float> f16_edge_values() {
  std::vector<float> v = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, -(1.0f + 0x1p-11f), 2049.0f, 2051.0f,
                          0x1p-25f,        1.5f * 0x1p-25f,     0x1p-24f,            3 * 0x1p-25f, 0x1p-26f,
                          6.1e-5f,         1e-5f,               -3.3e-7f,            65504.0f,     65519.0f,
                          65520.0f,        70000.0f,            -1e9f,               0.0f,         -0.0f,
                          1e-30f,          1e-40f,              -1e-45f,             INFINITY,     -INFINITY,
                          NAN,             0.1f,                -0.3f,               1e-3f,        0.33333334f};
  v.push_back(std::nextafter(65520.0f, 0.0f));
  v.push_back(std::nextafter(0x1p-25f, 1.0f));
  return v;
}

// 32-value blocks that exercise Q8_0: ties of x * id (halves away from zero), a zero block, tiny and huge scales,
// f16-denormal and f16-zero d, mixed magnitudes.
std::vector<float> q8_edge_blocks(std::mt19937& rng) {
  std::vector<float> v;
  auto block = [&](auto f) {
    for (int j = 0; j < 32; ++j) v.push_back(f(j));
  };
  block([](int j) { return j == 0 ? 127.0f : float(j % 16) - 7.5f; });   // d = 1: x.5 ties, both signs
  block([](int j) { return j == 5 ? -127.0f : 0.5f + float(j) * 3.0f; }); // negative amax
  block([](int) { return 0.0f; });
  block([](int j) { return j == 3 ? -0.0f : 0.0f; });
  block([](int j) { return j == 0 ? 1e4f : 1e-3f * float(j); });
  block([](int j) { return 1e-20f * float(j - 16); });  // d's f16 is 0, id finite
  block([](int j) { return 1e-4f * float(j - 16); });   // d an f16 denormal
  block([](int j) { return 1e-30f * float(j - 7); });
  block([](int j) { return 60000.0f * float(j - 16) / 16.0f; });
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  block([&](int) { return u(rng) * 1e-3f; });
  block([&](int) { return u(rng) * 250.0f; });
  return v;
}

// The shared data of an attention case: a cache of n_rows rows, its device and CPU images.
struct Cache {
  DType type;
  int64_t width;
  std::vector<float> rows;       // n_rows x width, as given
  std::vector<uint8_t> dev_img, cpu_img;
  std::vector<float> deq;        // the stored values widened back (what both sides compute with)
};

Cache make_cache(std::mt19937& rng, DType t, int64_t n_rows, int64_t width) {
  Cache c{t, width, random_floats(rng, static_cast<size_t>(n_rows * width), -1.0f, 1.0f), {}, {}, {}};
  c.dev_img = device_image(t, c.rows, n_rows, width);
  c.cpu_img = cpu_image(t, c.rows, n_rows, width);
  c.deq.resize(c.rows.size());
  const size_t rb = row_size(t, width);
  for (int64_t r = 0; r < n_rows; ++r) dequantize_row(t, c.cpu_img.data() + r * rb, c.deq.data() + r * width, width);
  return c;
}

KVRows cpu_rows(const Cache& c, int64_t head_dim) {
  KVRows k;
  k.type = c.type;
  k.base = c.cpu_img.data();
  k.row_bytes = row_size(c.type, c.width);
  k.head_bytes = row_size(c.type, head_dim);
  k.page_bytes = k.row_bytes * kKVPage;
  return k;
}

struct AttnCase {
  DType tk, tv;
  int n_head, n_head_kv, hd, hdv;
  std::vector<int64_t> ns;  // positions of each token of the batch
};

std::string case_name(const AttnCase& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "K %s V %s heads %d/%d hd %d/%d n", type_name(c.tk), type_name(c.tv), c.n_head,
                c.n_head_kv, c.hd, c.hdv);
  std::string s = buf;
  for (int64_t n : c.ns) s.append(" ").append(std::to_string(n));
  return s;
}

// The bound of the file comment for every output of token t (positions through `pages`), checked against
// attention_ref. Returns the largest error seen relative to its bound.
double check_outputs(const AttnCase& ac, float scale, const float* q, int64_t n, const std::vector<int32_t>& pages,
                     const Cache& K, const Cache& V, const float* got, const std::string& what,
                     const gpu::Kernels::AttnSplit& split = {}) {
  AttentionShape s{ac.n_head, ac.n_head_kv, ac.hd, ac.hdv, scale};
  KVRows kr = cpu_rows(K, ac.hd).with_pages(pages.data()), vr = cpu_rows(V, ac.hdv).with_pages(pages.data());
  std::vector<float> ref(static_cast<size_t>(ac.n_head * ac.hdv));
  attention_ref(s, q, 1, n - 1, kr, vr, ref.data());
  const int group = ac.n_head / ac.n_head_kv;
  auto row_of = [&](int64_t j) { return int64_t(pages[static_cast<size_t>(j / kKVPage)]) * kKVPage + j % kKVPage; };
  const int64_t tiles = (n + kKVPage - 1) / kKVPage;
  double worst = 0;
  for (int h = 0; h < ac.n_head; ++h) {
    const int g = h / group;
    const float* qh = q + h * ac.hd;
    double S = 0;
    std::vector<double> sc(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
      const float* k = K.deq.data() + row_of(j) * K.width + g * ac.hd;
      double d = 0, a = 0;
      for (int i = 0; i < ac.hd; ++i) d += double(qh[i]) * k[i], a += std::fabs(double(qh[i]) * k[i]);
      sc[static_cast<size_t>(j)] = d * scale;
      S = std::max(S, a * scale);
    }
    // Rescales: counted within each chunk of a split (its own running max from its first tile), plus the merge's
    // one factor exp(m_s - M) per chunk; the merge's sums over the chunks add `splits` to the summation count.
    const int64_t chunk_tiles = split.splits > 1 ? split.chunk / kKVPage : tiles;
    int R = 0, R_chunk = 0;
    double m = -INFINITY;
    for (int64_t tl = 0; tl < tiles; ++tl) {
      double mt = -INFINITY;
      for (int64_t j = tl * kKVPage; j < std::min(n, (tl + 1) * kKVPage); ++j) mt = std::max(mt, sc[static_cast<size_t>(j)]);
      const bool chunk_start = tl % chunk_tiles == 0 && (split.splits == 1 || tl / chunk_tiles < split.splits);
      if (chunk_start) {
        R_chunk = 0;
        m = -INFINITY;
      }
      if (!chunk_start && mt > m - 1e-3) R = std::max(R, ++R_chunk);
      m = std::max(m, mt);
    }
    if (split.splits > 1) ++R;
    const double ds = gamma_k(ac.hd + 1) * S;
    const double e1 = 2 * ds + 2 * S * kU + (3 + 4 * S) * 2 * kU;
    const double e = (R + 1) * e1 + 2 * R * kU;
    const double f = 2 * e / (1 - e) + 2 * gamma_k(double(tiles + 65 + split.splits)) + 5 * kU;
    for (int i = 0; i < ac.hdv; ++i) {
      double M = 0;
      for (int64_t j = 0; j < n; ++j) M = std::max(M, std::fabs(double(V.deq[row_of(j) * V.width + g * ac.hdv + i])));
      const double tol = f * M + 1e-30;
      const double err = std::fabs(double(got[h * ac.hdv + i]) - ref[static_cast<size_t>(h * ac.hdv + i)]);
      worst = std::max(worst, err / tol);
      if (!(err <= tol)) {
        ADD_FAILURE() << what << " head " << h << " dim " << i << ": gpu " << got[h * ac.hdv + i] << " reference "
                      << ref[static_cast<size_t>(h * ac.hdv + i)] << " error " << err << " > bound " << tol;
        return worst;
      }
    }
  }
  return worst;
}

// Runs one attention case: a batch of tokens with the given context lengths, each with its own page table drawn
// from a shuffled pool of pages (not in order; tokens share pages), meta laid out with junk in front and the page
// tables after the per-token words.
void run_attention_case(gpu::Kernels& kern, std::mt19937& rng, const AttnCase& ac, bool split = false) {
  SCOPED_TRACE(case_name(ac) + (split ? " (split)" : ""));
  gpu::Device& dev = kern.device();
  const int64_t n_tok = static_cast<int64_t>(ac.ns.size());
  int64_t max_pages = 0;
  for (int64_t n : ac.ns) max_pages = std::max(max_pages, (n + kKVPage - 1) / kKVPage);
  const int64_t n_pages = max_pages + 5;
  const int64_t n_rows = n_pages * kKVPage;
  const int64_t kw = int64_t(ac.n_head_kv) * ac.hd, vw = int64_t(ac.n_head_kv) * ac.hdv;
  const Cache K = make_cache(rng, ac.tk, n_rows, kw), V = make_cache(rng, ac.tv, n_rows, vw);
  const float scale = 1.0f / std::sqrt(float(ac.hd));
  const std::vector<float> q = random_floats(rng, static_cast<size_t>(n_tok * ac.n_head * ac.hd), -1.5f, 1.5f);

  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(n_tok));
  std::vector<uint32_t> meta = {0xDEADBEEFu, 7u, 12345u};  // junk before the offsets
  const uint32_t npos_off = static_cast<uint32_t>(meta.size()), pt_off = npos_off + static_cast<uint32_t>(n_tok);
  meta.resize(meta.size() + 2 * static_cast<size_t>(n_tok));
  for (int64_t t = 0; t < n_tok; ++t) {
    std::vector<int32_t> pool(static_cast<size_t>(n_pages));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    pool.resize(static_cast<size_t>((ac.ns[t] + kKVPage - 1) / kKVPage));
    tables[static_cast<size_t>(t)] = pool;
    meta[npos_off + t] = static_cast<uint32_t>(ac.ns[t]);
    meta[pt_off + t] = static_cast<uint32_t>(meta.size());
    for (int32_t p : pool) meta.push_back(static_cast<uint32_t>(p));
  }
  gpu::Buffer qb = upload_vec(dev, q), kb = upload_vec(dev, K.dev_img), vb = upload_vec(dev, V.dev_img);
  gpu::Buffer mb = upload_vec(dev, meta), ob = dev.alloc(static_cast<uint64_t>(n_tok * ac.n_head * ac.hdv) * 4);
  const gpu::Kernels::AttnShape s{ac.n_head, ac.n_head_kv, ac.hd, ac.hdv, scale};
  const int64_t max_n = *std::max_element(ac.ns.begin(), ac.ns.end());
  const gpu::Kernels::AttnSplit sp = split ? gpu::Kernels::attention_split(s, n_tok, max_n) : gpu::Kernels::AttnSplit{};
  if (split) {
    EXPECT_GT(sp.splits, 1) << "this case should split";
    EXPECT_LE(gpu::Kernels::attention_scratch_bytes(s, n_tok, max_n) / 4,
              uint64_t(n_tok * ac.n_head * sp.splits * (ac.hdv + 2)) + 0)
        << "the scratch bound is the split's size";
    EXPECT_GE(gpu::Kernels::attention_scratch_bytes(s, n_tok, max_n), uint64_t(n_tok * ac.n_head * sp.splits * (ac.hdv + 2)) * 4);
  }
  gpu::Buffer scratch = dev.alloc(std::max<uint64_t>(16, gpu::Kernels::attention_scratch_bytes(s, n_tok, max_n)));
  {
    gpu::Commands c(dev);
    if (split)
      kern.attention(c, s, qb, kb, ac.tk, vb, ac.tv, n_rows, mb, npos_off, pt_off, ob, n_tok, &scratch, max_n);
    else
      kern.attention(c, s, qb, kb, ac.tk, vb, ac.tv, n_rows, mb, npos_off, pt_off, ob, n_tok);
    c.submit_and_wait();
  }
  std::vector<float> out(static_cast<size_t>(n_tok * ac.n_head * ac.hdv));
  dev.download(ob, out.data(), out.size() * 4);
  double worst = 0;
  for (int64_t t = 0; t < n_tok; ++t)
    worst = std::max(worst, check_outputs(ac, scale, q.data() + t * ac.n_head * ac.hd, ac.ns[t],
                                          tables[static_cast<size_t>(t)], K, V, out.data() + t * ac.n_head * ac.hdv,
                                          "token " + std::to_string(t) + " (n " + std::to_string(ac.ns[t]) + ")", sp));
  std::printf("  %s: largest error / bound %.3g\n", case_name(ac).c_str(), worst);
}

}  // namespace

TEST(VulkanKV, TypesAndSizes) {
  using K = gpu::Kernels;
  EXPECT_TRUE(K::supports_kv(DType::F32));
  EXPECT_TRUE(K::supports_kv(DType::F16));
  EXPECT_TRUE(K::supports_kv(DType::Q8_0));
  EXPECT_FALSE(K::supports_kv(DType::BF16));
  EXPECT_FALSE(K::supports_kv(DType::Q4_0));
  EXPECT_EQ(K::kv_bytes(DType::F32, 10, 64), 2560u);
  EXPECT_EQ(K::kv_bytes(DType::F16, 10, 64), 1280u);
  EXPECT_EQ(K::kv_bytes(DType::Q8_0, 10, 64), 640u + 80u);
  EXPECT_EQ(K::kv_bytes(DType::Q8_0, 0, 64), 0u);
  EXPECT_THROW(K::kv_bytes(DType::Q8_0, 10, 48), Error);  // not whole blocks
  EXPECT_THROW(K::kv_bytes(DType::F16, 10, 3), Error);    // odd f16 width
  EXPECT_THROW(K::kv_bytes(DType::BF16, 10, 64), Error);
  EXPECT_THROW(K::kv_bytes(DType::F32, -1, 64), Error);
  EXPECT_THROW(K::kv_bytes(DType::F32, int64_t(1) << 32, 1024), Error);  // beyond 32-bit word indices
}

// kv_store writes exactly the CPU's bytes into the rows meta names, leaves every other row alone, and ignores a row
// index beyond the cache. Random rows plus the edge values above; widths of one block and of several (odd count).
TEST(VulkanKV, StoreIsBitExact) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(31);
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    for (int64_t width : {32, 96, 352}) {
      SCOPED_TRACE(std::string(type_name(t)) + " width " + std::to_string(width));
      const int64_t n_rows = 150, n_tok = 41;
      std::vector<float> src = random_floats(rng, static_cast<size_t>(n_tok * width), -3.0f, 3.0f);
      // Spread the edge values over the rows (Q8_0 keeps its blocks whole and gets no NaN/inf: the CPU's
      // static_cast<int8_t>(round(NaN)) is undefined).
      const std::vector<float> edge = t == DType::Q8_0 ? q8_edge_blocks(rng) : f16_edge_values();
      if (t == DType::Q8_0) {
        for (size_t i = 0; i < edge.size() && i + 32 * 7 < src.size(); ++i) src[32 * 7 + i] = edge[i];
      } else {
        for (size_t i = 0; i < edge.size(); ++i) src[(i * 131 + 5) % src.size()] = edge[i];
      }
      // Rows: distinct, in no order; token 13 points past the cache (ignored).
      std::vector<uint32_t> rows(static_cast<size_t>(n_rows));
      std::iota(rows.begin(), rows.end(), 0u);
      std::shuffle(rows.begin(), rows.end(), rng);
      rows.resize(static_cast<size_t>(n_tok));
      rows[13] = static_cast<uint32_t>(n_rows) + 4;
      const uint32_t row_off = 5;
      std::vector<uint32_t> meta(row_off, 0xFFFFFFFFu);
      meta.insert(meta.end(), rows.begin(), rows.end());

      const uint64_t bytes = gpu::Kernels::kv_bytes(t, n_rows, width);
      std::vector<uint8_t> expect(bytes, 0xA5);  // the cache's previous contents
      gpu::Buffer cache = upload_vec(*dev, expect), sb = upload_vec(*dev, src), mb = upload_vec(*dev, meta);
      {
        gpu::Commands c(*dev);
        k.kv_store(c, sb, cache, t, n_rows, width, mb, row_off, n_tok);
        c.submit_and_wait();
      }
      std::vector<uint8_t> got(bytes);
      dev->download(cache, got.data(), bytes);
      for (int64_t i = 0; i < n_tok; ++i)
        if (rows[i] < n_rows) put_device_row(t, src.data() + i * width, width, n_rows, rows[i], expect);
      size_t first = 0;
      while (first < bytes && got[first] == expect[first]) ++first;
      EXPECT_EQ(first, bytes) << "first differing byte " << first << ": gpu " << int(got[first]) << " cpu "
                              << int(expect[first]);
    }
  }
}

// rope_kv_store (K rotated on its way into the cache, the forward pass's fused step) stores exactly the bytes of rope
// then kv_store, for every cache type, both pair layouts, whole and partial rotation (rope_dim 64 and 32 of 64), and
// leaves its source unrotated.
TEST(VulkanKV, RopeKvStoreGivesTheBitsOfRopeThenKvStore) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(37);
  const int64_t head_dim = 64, heads = 3, width = heads * head_dim, n_rows = 40, n_tok = 9;
  for (DType t : {DType::F32, DType::F16, DType::Q8_0})
    for (bool neox : {false, true})
      for (int64_t rope_dim : {int64_t(64), int64_t(32)}) {
        SCOPED_TRACE(std::string(type_name(t)) + (neox ? " neox" : " normal") + " rope_dim " + std::to_string(rope_dim));
        const std::vector<float> src = random_floats(rng, static_cast<size_t>(n_tok * width), -3.0f, 3.0f);
        std::vector<float> cs(static_cast<size_t>(n_tok * rope_dim));
        std::uniform_real_distribution<float> angle(-40.0f, 40.0f);
        for (int64_t i = 0; i < n_tok; ++i)
          for (int64_t j = 0; j < rope_dim / 2; ++j) {
            const float a = angle(rng);
            cs[static_cast<size_t>(i * rope_dim + j)] = std::cos(a);
            cs[static_cast<size_t>(i * rope_dim + rope_dim / 2 + j)] = std::sin(a);
          }
        std::vector<uint32_t> rows(static_cast<size_t>(n_rows));
        std::iota(rows.begin(), rows.end(), 0u);
        std::shuffle(rows.begin(), rows.end(), rng);
        rows.resize(static_cast<size_t>(n_tok));
        const uint64_t bytes = gpu::Kernels::kv_bytes(t, n_rows, width);
        const std::vector<uint8_t> init(bytes, 0x5A);
        gpu::Buffer sb = upload_vec(*dev, src), rotated = upload_vec(*dev, src), csb = upload_vec(*dev, cs),
                    mb = upload_vec(*dev, rows), separate = upload_vec(*dev, init), fused = upload_vec(*dev, init);
        {
          gpu::Commands c(*dev);
          k.rope(c, rotated, csb, n_tok, heads, head_dim, rope_dim, neox);
          c.barrier();
          k.kv_store(c, rotated, separate, t, n_rows, width, mb, 0, n_tok);
          k.rope_kv_store(c, sb, csb, head_dim, rope_dim, neox, fused, t, n_rows, width, mb, 0, n_tok);
          c.submit_and_wait();
        }
        std::vector<uint8_t> a(bytes), b(bytes);
        dev->download(separate, a.data(), bytes);
        dev->download(fused, b.data(), bytes);
        EXPECT_NE(a, init);
        EXPECT_TRUE(a == b) << "the fused store differs from rope then kv_store";
        EXPECT_EQ(test::download_floats(*dev, sb, src.size()), src) << "the source was changed";
        EXPECT_NE(test::download_floats(*dev, rotated, src.size()), src) << "rope rotated nothing";
      }
  gpu::Buffer big = dev->alloc(1 << 16), meta = dev->alloc(64), cs_small = dev->alloc(16);
  gpu::Commands c(*dev);
  EXPECT_THROW(k.rope_kv_store(c, big, big, 64, 31, false, big, DType::F32, 4, 128, meta, 0, 1), Error);  // odd
  EXPECT_THROW(k.rope_kv_store(c, big, big, 64, 66, false, big, DType::F32, 4, 128, meta, 0, 1), Error);  // > head
  EXPECT_THROW(k.rope_kv_store(c, big, big, 48, 32, false, big, DType::F32, 4, 128, meta, 0, 1), Error);  // heads
  EXPECT_THROW(k.rope_kv_store(c, big, cs_small, 64, 64, false, big, DType::F32, 4, 128, meta, 0, 1), Error);
  EXPECT_NO_THROW(k.rope_kv_store(c, big, big, 64, 64, true, big, DType::Q8_0, 4, 128, meta, 0, 1));
}

// Q8_0 over many blocks whose magnitudes span 2^-100 .. 2^100 (d's f16 from zero through denormals to inf; the
// divisions amax/127 and 1/d over many significands): kv_store's bytes equal quantize_row's. (The shader divides
// with integer long division, div_rn in kv_common.glsl, because Vulkan lets `/` be off by 2.5 ULP.)
// Copy-on-write of a page: rows [0, 64) copied over rows [64, 128) of a 192-row cache: the copied rows equal the
// source's bytes in every region of the layout (Q8_0: quants and scales), the other rows stay as they were.
TEST(VulkanKV, CopyRowsCopiesEveryRegion) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(7);
  const int64_t n_rows = 192, width = 64;
  for (DType t : {DType::F32, DType::F16, DType::Q8_0}) {
    const std::vector<float> x = random_floats(rng, static_cast<size_t>(n_rows * width), -3, 3);
    std::vector<uint8_t> img(gpu::Kernels::kv_bytes(t, n_rows, width)), want;
    for (int64_t r = 0; r < n_rows; ++r) put_device_row(t, x.data() + r * width, width, n_rows, r, img);
    want = img;
    for (int64_t r = 0; r < 64; ++r) put_device_row(t, x.data() + r * width, width, n_rows, 64 + r, want);
    gpu::Buffer cache = upload_vec(*dev, img);
    gpu::Commands c(*dev);
    k.kv_copy_rows(c, cache, t, n_rows, width, 0, 64, 64);
    c.submit_and_wait();
    std::vector<uint8_t> got(img.size());
    dev->download(cache, got.data(), got.size());
    EXPECT_TRUE(got == want) << type_name(t);
    gpu::Commands bad(*dev);
    EXPECT_THROW(k.kv_copy_rows(bad, cache, t, n_rows, width, 0, 32, 64), Error) << "overlapping rows";
    EXPECT_THROW(k.kv_copy_rows(bad, cache, t, n_rows, width, 0, 160, 64), Error) << "past the end";
  }
}

TEST(VulkanKV, StoreQ8WideRangeIsBitExact) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(32);
  const int64_t width = 2048, n_tok = 300, n_rows = n_tok;
  std::vector<float> src = random_floats(rng, static_cast<size_t>(n_tok * width), -1.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-100, 100);
  for (size_t b = 0; b < src.size() / 32; ++b) {
    const float f = std::ldexp(1.0f, ex(rng));
    for (size_t j = 0; j < 32; ++j) src[32 * b + j] *= f;
  }
  std::vector<uint32_t> meta(static_cast<size_t>(n_tok));
  std::iota(meta.begin(), meta.end(), 0u);
  const uint64_t bytes = gpu::Kernels::kv_bytes(DType::Q8_0, n_rows, width);
  gpu::Buffer cache = dev->alloc(bytes), sb = upload_vec(*dev, src), mb = upload_vec(*dev, meta);
  {
    gpu::Commands c(*dev);
    k.kv_store(c, sb, cache, DType::Q8_0, n_rows, width, mb, 0, n_tok);
    c.submit_and_wait();
  }
  std::vector<uint8_t> got(bytes);
  dev->download(cache, got.data(), bytes);
  const std::vector<uint8_t> expect = device_image(DType::Q8_0, src, n_rows, width);
  size_t bad = 0, first = bytes;
  for (size_t i = 0; i < bytes; ++i)
    if (got[i] != expect[i]) bad++, first = std::min(first, i);
  EXPECT_EQ(bad, 0u) << "first differing byte " << first;
}

// Every K/V type combination, GQA 8/2, head sizes 64 and 128, contexts 1, 63, 64, 65 (tile boundaries) and 700
// in one batch with separate, shuffled, shared page tables.
TEST(VulkanAttention, TypeCombinationsMatchReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(77);
  const DType types[] = {DType::F32, DType::F16, DType::Q8_0};
  for (DType tk : types)
    for (DType tv : types) {
      const int hd = (tk == tv) ? 128 : 64;
      run_attention_case(k, rng, {tk, tv, 8, 2, hd, hd, {1, 63, 64, 65, 700, 130}});
    }
}

// Head sizes that are not multiples of the 64 threads or of the 16 lanes: 48, 80 (F32/F16), 256 (the maximum),
// a K head size different from V's, no GQA, and full GQA (one KV head).
TEST(VulkanAttention, HeadSizesAndGroups) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(78);
  run_attention_case(k, rng, {DType::F32, DType::F16, 8, 2, 80, 80, {1, 65, 200}});
  run_attention_case(k, rng, {DType::F16, DType::F32, 4, 4, 80, 80, {64, 3}});
  run_attention_case(k, rng, {DType::F16, DType::F16, 6, 3, 48, 48, {129, 1}});
  run_attention_case(k, rng, {DType::F32, DType::F32, 2, 1, 2, 2, {1, 70}});
  run_attention_case(k, rng, {DType::Q8_0, DType::F16, 4, 1, 256, 256, {1, 300}});
  run_attention_case(k, rng, {DType::F32, DType::Q8_0, 4, 2, 256, 256, {66}});
  run_attention_case(k, rng, {DType::F16, DType::F32, 4, 2, 96, 64, {100, 7}});
  run_attention_case(k, rng, {DType::Q8_0, DType::Q8_0, 16, 16, 64, 32, {17, 64, 128}});
}

// A long context (many tiles, many page-table entries): 5000 positions.
TEST(VulkanAttention, LongContext) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(79);
  run_attention_case(k, rng, {DType::F16, DType::Q8_0, 4, 1, 64, 64, {5000, 4097}});
}

// Split attention (Kernels::attention_split, attention_combine.comp): few (token, head) pairs over long contexts,
// cut into chunks whose partial softmax sums are merged; tokens whose context ends before the last chunks (empty
// chunks), a context that ends inside a chunk, every K/V type, GQA, and head sizes up to 256.
TEST(VulkanAttention, SplitLongContextsMatchReference) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(80);
  run_attention_case(k, rng, {DType::F16, DType::Q8_0, 4, 1, 64, 64, {5000, 4097}}, true);
  run_attention_case(k, rng, {DType::F32, DType::F32, 8, 2, 128, 128, {1, 63, 700, 2000, 65}}, true);
  run_attention_case(k, rng, {DType::Q8_0, DType::F16, 2, 2, 256, 256, {300, 257}}, true);
  run_attention_case(k, rng, {DType::F16, DType::F16, 32, 8, 128, 128, {1500}}, true);
  // Too many pairs to split: the same single pass.
  const gpu::Kernels::AttnShape wide{64, 8, 128, 128, 1.0f};
  EXPECT_EQ(gpu::Kernels::attention_split(wide, 4, 8192).splits, 1);
  EXPECT_EQ(gpu::Kernels::attention_split(wide, 1, 8192).splits, 4);
  EXPECT_EQ(gpu::Kernels::attention_split(wide, 1, 200).splits, 1);  // a short context: one pass
  EXPECT_EQ(gpu::Kernels::attention_scratch_bytes(wide, 8, 200), 0u);
}

// A decode step in one command buffer: kv_store the new rows of K and V, barrier, attention over them. The CPU
// stores the same rows with quantize_row; the result must match the reference as above.
TEST(VulkanAttention, StoreThenAttend) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels kern(dev);
  std::mt19937 rng(80);
  const AttnCase ac{DType::Q8_0, DType::F16, 8, 2, 64, 64, {}};
  const int64_t n_pages = 4, n_rows = n_pages * kKVPage, kw = 128, vw = 128;
  Cache K = make_cache(rng, ac.tk, n_rows, kw), V = make_cache(rng, ac.tv, n_rows, vw);
  gpu::Buffer kb = upload_vec(*dev, K.dev_img), vb = upload_vec(*dev, V.dev_img);
  // Two tokens of one sequence (pages 2, 0, 3) at positions 150 and 151: their rows are 3*64 + 22 and + 23.
  const std::vector<int32_t> pages = {2, 0, 3};
  const int64_t n_tok = 2;
  const std::vector<float> knew = random_floats(rng, n_tok * kw, -1, 1), vnew = random_floats(rng, n_tok * vw, -1, 1);
  const std::vector<float> q = random_floats(rng, n_tok * ac.n_head * ac.hd, -1.5f, 1.5f);
  // meta: [0] rows of the new tokens (2), [2] n per token, [4] page-table start per token, [6] the page table.
  std::vector<uint32_t> meta = {3 * 64 + 22, 3 * 64 + 23, 151, 152, 6, 6, 2, 0, 3};
  gpu::Buffer knb = upload_vec(*dev, knew), vnb = upload_vec(*dev, vnew), mb = upload_vec(*dev, meta);
  gpu::Buffer qb = upload_vec(*dev, q), ob = dev->alloc(n_tok * ac.n_head * ac.hdv * 4);
  const float scale = 0.125f;
  {
    gpu::Commands c(*dev);
    kern.kv_store(c, knb, kb, ac.tk, n_rows, kw, mb, 0, n_tok);
    kern.kv_store(c, vnb, vb, ac.tv, n_rows, vw, mb, 0, n_tok);
    c.barrier();
    kern.attention(c, {ac.n_head, ac.n_head_kv, ac.hd, ac.hdv, scale}, qb, kb, ac.tk, vb, ac.tv, n_rows, mb, 2, 4, ob,
                   n_tok);
    c.submit_and_wait();
  }
  std::vector<float> out(static_cast<size_t>(n_tok * ac.n_head * ac.hdv));
  dev->download(ob, out.data(), out.size() * 4);
  // The CPU side of the same stores.
  for (int64_t t = 0; t < n_tok; ++t) {
    std::copy_n(knew.begin() + t * kw, kw, K.rows.begin() + meta[t] * kw);
    std::copy_n(vnew.begin() + t * vw, vw, V.rows.begin() + meta[t] * vw);
  }
  K = Cache{K.type, kw, K.rows, device_image(K.type, K.rows, n_rows, kw), cpu_image(K.type, K.rows, n_rows, kw), {}};
  V = Cache{V.type, vw, V.rows, device_image(V.type, V.rows, n_rows, vw), cpu_image(V.type, V.rows, n_rows, vw), {}};
  for (Cache* c : {&K, &V}) {
    c->deq.resize(c->rows.size());
    for (int64_t r = 0; r < n_rows; ++r)
      dequantize_row(c->type, c->cpu_img.data() + r * row_size(c->type, c->width), c->deq.data() + r * c->width,
                     c->width);
  }
  // The device's cache after the stores equals the CPU's image.
  std::vector<uint8_t> kgot(K.dev_img.size());
  dev->download(kb, kgot.data(), kgot.size());
  EXPECT_EQ(kgot, K.dev_img);
  for (int64_t t = 0; t < n_tok; ++t)
    check_outputs(ac, scale, q.data() + t * ac.n_head * ac.hd, int64_t(meta[2 + t]), pages, K, V,
                  out.data() + t * ac.n_head * ac.hdv, "token " + std::to_string(t));
}

// A token with no positions gets zeros; page-table entries and rows beyond the cache are clamped, never read out
// of bounds (the values are unspecified, only finiteness is checked).
TEST(VulkanAttention, EmptyContextAndOutOfRangePages) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  std::mt19937 rng(81);
  const int64_t n_rows = 64, w = 64;
  const auto kv = random_floats(rng, n_rows * w, -1, 1), q = random_floats(rng, 2 * 2 * 32, -1, 1);
  // token 0: n = 0; token 1: n = 100 through pages {0, 7} (page 7 is rows 448.., beyond the cache).
  const std::vector<uint32_t> meta = {0, 100, 4, 4, 0, 7};
  gpu::Buffer kb = upload_vec(*dev, kv), qb = upload_vec(*dev, q), mb = upload_vec(*dev, meta);
  std::vector<float> junk(2 * 2 * 32, 123.0f);
  gpu::Buffer ob = upload_vec(*dev, junk);
  {
    gpu::Commands c(*dev);
    k.attention(c, {2, 2, 32, 32, 0.2f}, qb, kb, DType::F32, kb, DType::F32, n_rows, mb, 0, 2, ob, 2);
    c.submit_and_wait();
  }
  std::vector<float> out(junk.size());
  dev->download(ob, out.data(), out.size() * 4);
  for (size_t i = 0; i < 64; ++i) EXPECT_EQ(out[i], 0.0f) << i;
  for (size_t i = 64; i < out.size(); ++i) EXPECT_TRUE(std::isfinite(out[i]) && std::fabs(out[i]) <= 1.0f) << i;
}

TEST(VulkanAttention, BadArgumentsAreErrors) {
  OPEN_DEVICE_OR_SKIP(dev);
  gpu::Kernels k(dev);
  gpu::Buffer small = dev->alloc(64), big = dev->alloc(1 << 20), meta = dev->alloc(64);
  gpu::Commands c(*dev);
  // kv_store
  EXPECT_THROW(k.kv_store(c, big, big, DType::BF16, 4, 64, meta, 0, 1), Error);
  EXPECT_THROW(k.kv_store(c, big, big, DType::Q8_0, 4, 48, meta, 0, 1), Error);
  EXPECT_THROW(k.kv_store(c, big, big, DType::F16, 4, 63, meta, 0, 1), Error);
  EXPECT_THROW(k.kv_store(c, big, small, DType::F32, 4, 64, meta, 0, 1), Error);  // cache holds 64 bytes
  EXPECT_THROW(k.kv_store(c, small, big, DType::F32, 4, 64, meta, 0, 1), Error);  // source too short
  EXPECT_THROW(k.kv_store(c, big, big, DType::F32, 4, 4, meta, 14, 3), Error);    // meta: 17 words needed
  try {
    k.kv_store(c, big, small, DType::F16, 4, 64, meta, 0, 1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPU kv_store: cache buffer holds"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(k.kv_store(c, small, small, DType::F32, 4, 64, meta, 0, 0));  // nothing to do
  // attention
  using S = gpu::Kernels::AttnShape;
  auto attn = [&](S s, DType tk, DType tv, int64_t n_rows, const gpu::Buffer& q, const gpu::Buffer& kv,
                  const gpu::Buffer& m, uint32_t off, gpu::Buffer& out, int64_t n_tok) {
    k.attention(c, s, q, kv, tk, kv, tv, n_rows, m, off, off, out, n_tok);
  };
  const S ok{8, 2, 64, 64, 0.125f};
  EXPECT_NO_THROW(attn(ok, DType::F32, DType::F32, 64, big, big, meta, 0, big, 0));
  EXPECT_THROW(attn({8, 2, 257, 64, 1}, DType::F32, DType::F32, 8, big, big, meta, 0, big, 1), Error);  // > 256
  EXPECT_THROW(attn({8, 2, 64, 300, 1}, DType::F32, DType::F32, 8, big, big, meta, 0, big, 1), Error);
  EXPECT_THROW(attn({8, 3, 64, 64, 1}, DType::F32, DType::F32, 8, big, big, meta, 0, big, 1), Error);  // 8 % 3
  EXPECT_THROW(attn({8, 0, 64, 64, 1}, DType::F32, DType::F32, 8, big, big, meta, 0, big, 1), Error);
  EXPECT_THROW(attn({8, 2, 48, 48, 1}, DType::Q8_0, DType::F32, 8, big, big, meta, 0, big, 1), Error);  // 48 % 32
  EXPECT_THROW(attn({8, 2, 64, 7, 1}, DType::F32, DType::F16, 8, big, big, meta, 0, big, 1), Error);    // odd f16
  EXPECT_THROW(attn(ok, DType::BF16, DType::F32, 8, big, big, meta, 0, big, 1), Error);
  EXPECT_THROW(attn(ok, DType::F32, DType::F32, 0, big, big, meta, 0, big, 1), Error);     // no rows
  EXPECT_THROW(attn(ok, DType::F32, DType::F32, 8, small, big, meta, 0, big, 1), Error);   // q too short
  EXPECT_THROW(attn(ok, DType::F32, DType::F32, 8, big, big, meta, 0, small, 1), Error);   // out too short
  EXPECT_THROW(attn(ok, DType::F32, DType::F32, 4096, big, big, meta, 0, big, 1), Error);  // cache too short
  EXPECT_THROW(attn(ok, DType::F32, DType::F32, 8, big, big, meta, 15, big, 2), Error);    // meta too short
  try {
    attn({8, 2, 512, 64, 1}, DType::F32, DType::F32, 8, big, big, meta, 0, big, 1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPU attention: head size"), std::string::npos) << e.what();
  }
}
