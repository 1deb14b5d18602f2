// Importance matrices (engine/imatrix.h) and the importance-weighted quantizers (core/quant.h,
// quantize_row_weighted): the llama.cpp .dat format (round trip, llama.cpp's reading rules, malformed files),
// the collector, the weighted quantizers' error against the reference quantizers, and `quantize --imatrix` on the
// real trained tinytales-4m model: mean KL-divergence vs F32 no higher than llama.cpp's file of the same type.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "core/error.h"
#include "core/gguf.h"
#include "core/quant.h"
#include "eval/compare.h"
#include "eval/imatrix.h"
#include "tools/quantize.h"
#include "model/model.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using namespace lokal;

namespace {

// A fresh folder per test, removed at the end (tests/support).
struct TempDir : lokal::test::TempDir {
  TempDir() : lokal::test::TempDir("lokal_im") {}
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void put_i32(std::vector<uint8_t>& b, int32_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + 4);
}
void put_f32(std::vector<uint8_t>& b, float v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + 4);
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put_i32(b, static_cast<int32_t>(s.size()));
  b.insert(b.end(), s.begin(), s.end());
}

std::string tinytales(const std::string& t) { return test::data_path("models/real/tinytales-4m-" + t + ".gguf"); }

}  // namespace

// ---- file format -----------------------------------------------------------------------------

TEST(ImatrixFile, RoundTripKeepsEveryEntryAndTheTrailer) {
  TempDir dir;
  ImportanceMatrix m;
  m.chunks = 7;
  m.dataset = "some/text.txt";
  m.entries["blk.0.attn_q.weight"] = {7, {0.5f, 1.5f, 7.0f}};
  m.entries["blk.0.ffn_down.weight"] = {3, {3.0f, 0.0f}};
  write_imatrix(dir.file("a.dat"), m);
  const ImportanceMatrix r = read_imatrix(dir.file("a.dat"));
  EXPECT_EQ(r.chunks, 7);
  EXPECT_EQ(r.dataset, "some/text.txt");
  ASSERT_EQ(r.entries.size(), 2u);
  EXPECT_EQ(r.entries.at("blk.0.attn_q.weight").ncall, 7);
  EXPECT_EQ(r.entries.at("blk.0.attn_q.weight").values, (std::vector<float>{0.5f, 1.5f, 7.0f}));
  // importance = values / ncall (llama-quantize's reading rule)
  EXPECT_EQ(r.entries.at("blk.0.ffn_down.weight").importance(), (std::vector<float>{1.0f, 0.0f}));
  // The exact bytes of llama.cpp's layout: i32 count, then per entry i32 len, name, i32 ncall, i32 nval, f32s;
  // trailer i32 last_call, i32 len, dataset (entries in name order).
  std::vector<uint8_t> want;
  put_i32(want, 2);
  put_str(want, "blk.0.attn_q.weight");
  put_i32(want, 7);
  put_i32(want, 3);
  for (float v : {0.5f, 1.5f, 7.0f}) put_f32(want, v);
  put_str(want, "blk.0.ffn_down.weight");
  put_i32(want, 3);
  put_i32(want, 2);
  for (float v : {3.0f, 0.0f}) put_f32(want, v);
  put_i32(want, 7);
  put_str(want, "some/text.txt");
  EXPECT_EQ(read_bytes(dir.file("a.dat")), want);
}

TEST(ImatrixFile, ReadsFilesWithoutTrailerAndWithZeroCalls) {
  TempDir dir;
  std::vector<uint8_t> b;
  put_i32(b, 1);
  put_str(b, "output.weight");
  put_i32(b, 0);  // ncall 0: values used as they are
  put_i32(b, 2);
  put_f32(b, 2.0f);
  put_f32(b, 4.0f);
  write_bytes(dir.file("old.dat"), b);
  const ImportanceMatrix r = read_imatrix(dir.file("old.dat"));
  EXPECT_EQ(r.chunks, 0);
  EXPECT_TRUE(r.dataset.empty());
  EXPECT_EQ(r.entries.at("output.weight").importance(), (std::vector<float>{2.0f, 4.0f}));
}

TEST(ImatrixFile, MalformedFilesAreRefusedWithAClearError) {
  TempDir dir;
  std::vector<uint8_t> good;
  put_i32(good, 1);
  put_str(good, "blk.0.attn_k.weight");
  put_i32(good, 2);
  put_i32(good, 2);
  put_f32(good, 1.0f);
  put_f32(good, 2.0f);
  put_i32(good, 2);
  put_str(good, "t.txt");
  write_bytes(dir.file("good.dat"), good);
  ASSERT_NO_THROW(read_imatrix(dir.file("good.dat")));

  auto expect_error = [&](std::vector<uint8_t> bytes, const std::string& needle) {
    write_bytes(dir.file("bad.dat"), bytes);
    try {
      read_imatrix(dir.file("bad.dat"));
      ADD_FAILURE() << "no error for a file expected to fail with '" << needle << "'";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("bad.dat"), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  // every truncation of the good file
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> t(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    write_bytes(dir.file("cut.dat"), t);
    // Cutting exactly before the trailer leaves a valid trailer-less file.
    if (n == good.size() - 13) {
      EXPECT_NO_THROW(read_imatrix(dir.file("cut.dat")));
      continue;
    }
    EXPECT_THROW(read_imatrix(dir.file("cut.dat")), Error) << "cut at " << n;
  }
  auto patched = [&](size_t off, int32_t v) {
    std::vector<uint8_t> b = good;
    std::memcpy(b.data() + off, &v, 4);
    return b;
  };
  expect_error(patched(0, 0), "entry count");
  expect_error(patched(0, -5), "entry count");
  expect_error(patched(0, 2), "entry 2 of 2");  // a second entry that is not there (the trailer is read as one)
  expect_error(patched(4, 1 << 30), "name length");
  expect_error(patched(4, -1), "name length");
  expect_error(patched(4 + 4 + 19, -3), "negative call count");
  expect_error(patched(4 + 4 + 19 + 4, 0), "value count");
  expect_error(patched(4 + 4 + 19 + 4, 1 << 29), "value count");
  {
    std::vector<uint8_t> b = good;
    const float nan = std::nanf("");
    std::memcpy(b.data() + 4 + 4 + 19 + 8, &nan, 4);
    expect_error(b, "non-finite");
    const float neg = -1.0f;
    std::memcpy(b.data() + 4 + 4 + 19 + 8, &neg, 4);
    expect_error(b, "negative");
  }
  {
    std::vector<uint8_t> b = good;
    b.push_back(0);
    expect_error(b, "unexpected bytes");
  }
  {  // duplicate entry names
    std::vector<uint8_t> b;
    put_i32(b, 2);
    for (int k = 0; k < 2; ++k) {
      put_str(b, "blk.0.attn_k.weight");
      put_i32(b, 1);
      put_i32(b, 1);
      put_f32(b, 1.0f);
    }
    expect_error(b, "appears twice");
  }
  EXPECT_THROW(read_imatrix(dir.file("does-not-exist.dat")), Error);
  ImportanceMatrix empty;
  EXPECT_THROW(write_imatrix(dir.file("empty.dat"), empty), Error);
}

// ---- the weighted quantizers ------------------------------------------------------------------

namespace {

const DType kTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                        DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

struct Errors {
  double ref = 0, weighted = 0;
};

// Weighted error of the reference and the weighted quantizer on rows of n elements, block by block: the
// weighted quantizer keeps the reference block whenever its own is not better, so no block may be worse.
Errors compare_errors(DType t, const std::vector<float>& x, const std::vector<float>& imp, int64_t n, int* worse_blocks) {
  const int64_t rows = static_cast<int64_t>(x.size()) / n;
  const int64_t bs = type_info(t)->block_size;
  const size_t rs = row_size(t, n), bbytes = row_size(t, bs);
  std::vector<uint8_t> a(rs), b(rs);
  std::vector<float> w(static_cast<size_t>(n));
  Errors e;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data() + r * n;
    const float* ir = imp.data() + r * n;
    quantize_row(t, xr, a.data(), n);
    quantize_row_weighted(t, xr, b.data(), n, ir);
    importance_weights(xr, ir, n, w.data());
    for (int64_t k = 0; k < n / bs; ++k) {
      const double ea = quant_weighted_error(t, a.data() + k * bbytes, xr + k * bs, w.data() + k * bs, bs);
      const double eb = quant_weighted_error(t, b.data() + k * bbytes, xr + k * bs, w.data() + k * bs, bs);
      if (eb > ea) ++*worse_blocks;
      e.ref += ea;
      e.weighted += eb;
    }
  }
  return e;
}

}  // namespace

TEST(WeightedQuant, NeverWorseThanTheReferenceAndMuchBetterOnAverage) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  // 3 rows of 768 = 3 super-blocks per row (an odd count), heavy-tailed values, skewed importance.
  const int64_t n = 768, rows = 3;
  std::vector<float> x(static_cast<size_t>(n * rows)), imp(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float g = normal(rng);
    x[i] = 0.02f * g * (uni(rng) < 0.05f ? 6.0f : 1.0f);
    imp[i] = std::exp(2.0f * normal(rng));  // log-normal: a few columns matter much more
  }
  for (int k = 0; k < 5; ++k) imp[static_cast<size_t>(k * 7)] = 0.0f;  // columns never active
  for (DType t : kTypes) {
    int worse = 0;
    const Errors e = compare_errors(t, x, imp, n, &worse);
    EXPECT_EQ(worse, 0) << type_name(t);
    EXPECT_LE(e.weighted, e.ref) << type_name(t);
    if (t == DType::Q8_0) {
      EXPECT_EQ(e.weighted, e.ref);  // importance is ignored for Q8_0 (as in llama.cpp)
    } else {
      // The search must find real gains, not fall back to the reference everywhere (that would also catch a
      // wrongly packed block, which the final comparison would always reject). Measured gains are 25-60%;
      // 10% leaves room for other data while still failing a quantizer that does nothing.
      EXPECT_LT(e.weighted, 0.9 * e.ref) << type_name(t) << ": ref " << e.ref << " weighted " << e.weighted;
    }
  }
}

TEST(WeightedQuant, UniformImportanceOnRealWeightsIsNotWorseAndNullIsTheReference) {
  auto f = GGUFFile::open(tinytales("f32"));
  const GGUFTensorInfo* t = f->find_tensor("blk.1.ffn_up.weight");
  ASSERT_NE(t, nullptr);
  const int64_t n = t->ne[0];
  std::vector<float> x(reinterpret_cast<const float*>(t->data), reinterpret_cast<const float*>(t->data) + n * 8);
  std::vector<float> ones(x.size(), 1.0f);
  for (DType ty : kTypes) {
    int worse = 0;
    const Errors e = compare_errors(ty, x, ones, n, &worse);
    EXPECT_EQ(worse, 0) << type_name(ty);
    EXPECT_LE(e.weighted, e.ref) << type_name(ty);
    // Null importance: the reference bytes.
    std::vector<uint8_t> a(row_size(ty, n)), b(a.size());
    quantize_row(ty, x.data(), a.data(), n);
    quantize_rows(ty, x.data(), b.data(), 1, n, nullptr);
    EXPECT_EQ(a, b) << type_name(ty);
  }
  std::vector<float> bad(static_cast<size_t>(n), 1.0f);
  bad[3] = -1.0f;
  std::vector<uint8_t> out(row_size(DType::Q4_K, n));
  EXPECT_THROW(quantize_row_weighted(DType::Q4_K, x.data(), out.data(), n, bad.data()), Error);
  EXPECT_THROW(quantize_row_weighted(DType::Q4_K, x.data(), out.data(), n - 1, ones.data()), Error);
}

// ---- collecting and using an importance matrix on the real model -------------------------------

TEST(Imatrix, CollectorAveragesSquaredActivations) {
  auto model = Model::load(tinytales("f32"));
  ImatrixCollector c(*model, false);
  const WeightView& w = model->layers[0].wq;
  std::vector<float> x(static_cast<size_t>(w.cols * 2));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % w.cols) * (i < static_cast<size_t>(w.cols) ? 1.0f : 3.0f);
  c.observe(w, x.data(), 2);
  c.observe(model->output, x.data(), 2);  // output.weight is not collected without process_output
  const ImportanceMatrix m = c.result(4, "d");
  ASSERT_EQ(m.entries.size(), 1u);
  const ImatrixEntry& e = m.entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(e.ncall, 4);
  const std::vector<float> imp = e.importance();
  ASSERT_EQ(imp.size(), static_cast<size_t>(w.cols));
  for (int64_t j = 0; j < w.cols; ++j) EXPECT_FLOAT_EQ(imp[static_cast<size_t>(j)], (1.0f + 9.0f) / 2.0f * j * j);
  ImatrixCollector with_output(*model, true);
  with_output.observe(model->output, x.data(), 2);
  EXPECT_EQ(with_output.result(1, "").entries.count("output.weight"), 1u);
}

TEST(Imatrix, QuantizeRefusesAnImatrixOfAnotherShapeAndWarnsAboutMissingEntries) {
  TempDir dir;
  QuantizeOptions o;
  o.file_type = *find_quant_file_type("Q4_K_M");
  o.n_threads = 2;
  ImportanceMatrix m;
  m.entries["blk.0.attn_q.weight"] = {1, std::vector<float>(100, 1.0f)};  // the tensor has 256 columns
  use_imatrix(o, m, "x.dat");
  try {
    quantize_model(tinytales("f32"), dir.file("o.gguf"), o);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.file("o.gguf")));
  m.entries["blk.0.attn_q.weight"] = {1, std::vector<float>(256, 1.0f)};
  use_imatrix(o, m, "x.dat");
  std::vector<std::string> notes;
  o.on_plan = [&](const QuantizePlan& p) { notes = p.notes; };
  quantize_model(tinytales("f32"), dir.file("o.gguf"), o);
  bool warned = false;
  for (const auto& n : notes) warned = warned || n.find("no entry for") != std::string::npos;
  EXPECT_TRUE(warned);
  auto f = GGUFFile::open(dir.file("o.gguf"));
  EXPECT_EQ(f->opt_str("quantize.imatrix.file").value_or(""), "x.dat");
  EXPECT_EQ(f->opt_int("quantize.imatrix.entries_count").value_or(-1), 1);
}

// The acceptance checks of issue #4 and issue #21 on the real trained model. The imatrix (and the input covariance)
// is computed on the second half of golden/ppl-text-books.txt (held-out book text: the model's domain) and the KL
// measured on the first 8 chunks of the same file, a different stretch of text.
// * issue #4: lokal's per-block search with an importance matrix (no covariance) has a mean KL-divergence vs F32 no
//   higher than llama.cpp's file of the same type made without an imatrix (the files in shared/). (An imatrix from
//   the Apache licence text, golden/ppl-text.txt, is off-domain: see docs/QUANTIZATION.md.)
// * issue #21: with the covariance (GPTQ, the default `auto` method) the mean KL is below that of llama.cpp's
//   importance-matrix file (llama-imatrix -c 128 --process-output on the same text, then llama-quantize --imatrix,
//   c392e50; those files cannot be stored in shared/, so their KL, measured by the same compare_models on the same
//   chunks, is a constant here - docs/QUANTIZATION.md gives the commands), and at least 15% below for Q2_K, Q4_0 and
//   Q4_K_M. Measured: 26-41% below, so the 15% bound has 10+ points of margin for platform differences.
// Q8_0 ignores both statistics, so its files are byte-identical to llama.cpp's and the KL equal. Everything here is
// deterministic (same data, same code, fixed thread count).
TEST(Imatrix, TinytalesKLWithImatrixIsNoHigherThanLlamaCpp) {
  TempDir dir;
  auto model = Model::load(tinytales("f32"));
  ImatrixOptions io;
  io.ppl.n_ctx = 128;
  io.n_threads = 2;
  io.process_output = true;
  io.covariance = true;
  // The second half of the books text: the KL below is measured on its first 8 chunks of 256 tokens (about the
  // first 9 KB), so the two texts do not overlap.
  const std::string books = test::read_file(test::data_path("golden/ppl-text-books.txt"));
  const ImatrixResult ir = compute_imatrix(*model, books.substr(books.size() / 2), "books-second-half", io);
  model.reset();
  EXPECT_EQ(ir.matrix.entries.size(), 4u * 7u + (io.process_output ? 1u : 0u));  // 4 layers x (q, k, v, o, gate, up, down)
  EXPECT_EQ(ir.cov.entries.size(), ir.matrix.entries.size());
  EXPECT_GE(ir.matrix.chunks, 8);
  write_imatrix(dir.file("im.dat"), ir.matrix);
  write_covariance(dir.file("im.dat.cov"), ir.cov);
  const ImportanceMatrix m = read_imatrix(dir.file("im.dat"));
  const CovarianceSet cov = read_covariance(dir.file("im.dat.cov"));

  // mean KL of llama.cpp's importance-matrix files (see above)
  const std::map<std::string, double> llama_imatrix_kl = {{"q2_k", 0.03919}, {"q3_k_m", 0.00692}, {"q4_0", 0.00307},
                                                         {"q4_k_m", 0.00222}, {"q5_k_m", 0.000788}, {"q6_k", 0.000471}};
  const std::vector<std::string> types = {"q2_k", "q3_k_m", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0"};
  std::vector<std::string> paths = {tinytales("f32")};
  for (const auto& t : types) {
    for (const bool with_cov : {false, true}) {
      QuantizeOptions o;
      o.file_type = *find_quant_file_type(t);
      o.n_threads = 2;
      use_imatrix(o, m, dir.file("im.dat"));
      if (with_cov) use_covariance(o, cov);
      const std::string out = dir.file((with_cov ? "gptq-" : "imat-") + t + ".gguf");
      quantize_model(tinytales("f32"), out, o);
      if (!with_cov) paths.push_back(tinytales(t));
      paths.push_back(out);
    }
  }
  CompareOptions co;
  co.ppl.n_ctx = 256;
  co.ppl.n_chunks = 8;
  co.n_threads = 2;
  co.decode_tokens = 1;
  co.temp_dir = dir.file("");
  const auto rows = compare_models(paths, books, "books", co);
  ASSERT_EQ(rows.size(), paths.size());
  for (size_t i = 0; i < types.size(); ++i) {
    const CompareRow& llama = rows[1 + 3 * i];
    const CompareRow& ours = rows[2 + 3 * i];
    const CompareRow& gptq = rows[3 + 3 * i];
    std::printf("%-7s llama.cpp KL %.6f top1 %.2f | lokal search KL %.6f top1 %.2f | lokal gptq KL %.6f p99 %.5f top1 %.2f ppl %.4f\n",
                types[i].c_str(), llama.kl_mean, llama.top1_agreement, ours.kl_mean, ours.top1_agreement, gptq.kl_mean,
                gptq.kl_p99, gptq.top1_agreement, gptq.ppl);
    EXPECT_LE(ours.kl_mean, llama.kl_mean) << types[i];
    if (types[i] == "q8_0") {
      EXPECT_EQ(ours.kl_mean, llama.kl_mean);
      EXPECT_EQ(gptq.kl_mean, llama.kl_mean);
      continue;
    }
    const double target = llama_imatrix_kl.at(types[i]);
    EXPECT_LT(gptq.kl_mean, target) << types[i];
    if (types[i] == "q2_k" || types[i] == "q4_0" || types[i] == "q4_k_m") {
      EXPECT_LT(gptq.kl_mean, 0.85 * target) << types[i];
    }
  }
}
