// GPTQ-style error-feedback quantization (core/quant_gptq.h), the input covariance it needs (eval/imatrix.h:
// `lokal imatrix --covariance`, the LOKALCOV file) and `lokal quantize --quant-method` (tools/quantize.h).
//
// On real weights (tinytales-4m, trained) with a covariance collected on real text, GPTQ must lower the
// calibration output error sum_rows (w - q)^T H (w - q) below the importance-weighted per-block search's (and
// round-to-nearest's) for every type. Measured here: GPTQ's error is 8-36% of the search's (the calibration is 2
// chunks of 64 tokens, a low-rank H, so the gap is wider than with the full text); the test asks only for "lower",
// which any working error feedback gives. Everything is deterministic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/gguf.h"
#include "core/quant.h"
#include "core/quant_gptq.h"
#include "eval/imatrix.h"
#include "model/model.h"
#include "support/test_data.h"
#include "tools/quantize.h"

namespace fs = std::filesystem;
using namespace lokal;

namespace {

struct TempDir : lokal::test::TempDir {
  TempDir() : lokal::test::TempDir("lokal_gptq") {}
};

std::string tinytales(const std::string& t) { return test::data_path("models/real/tinytales-4m-" + t + ".gguf"); }
std::string q(const std::string& s) { return "'" + s + "'"; }

const DType kTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q2_K,
                        DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

// Covariance and importance of the tinytales model on 2 chunks of 64 tokens of the books text's second half
// (shared by the tests of this file; about 0.2 s).
struct Calib {
  ImportanceMatrix im;
  CovarianceSet cov;
};
const Calib& calib() {
  static const Calib c = [] {
    auto model = Model::load(tinytales("f32"));
    ImatrixOptions io;
    io.ppl.n_ctx = 64;
    io.ppl.n_chunks = 2;
    io.n_threads = 2;
    io.process_output = true;
    io.covariance = true;
    const std::string books = test::read_file(test::data_path("golden/ppl-text-books.txt"));
    ImatrixResult r = compute_imatrix(*model, books.substr(books.size() / 2), "books-second-half", io);
    return Calib{std::move(r.matrix), std::move(r.cov)};
  }();
  return c;
}

// One matrix of tinytales-4m as F32 rows.
std::vector<float> matrix(const std::string& name, int64_t* rows, int64_t* cols) {
  auto f = GGUFFile::open(tinytales("f32"));
  const GGUFTensorInfo* t = f->find_tensor(name);
  EXPECT_NE(t, nullptr) << name;
  *cols = t->ne[0];
  *rows = t->ne[1];
  std::vector<float> w(static_cast<size_t>(*rows * *cols));
  std::memcpy(w.data(), t->data, w.size() * sizeof(float));
  return w;
}

}  // namespace

// ---- the quantizer ---------------------------------------------------------------------------

// The whole-matrix calibration output error of GPTQ is below the per-block search's (and round-to-nearest's) on
// real weights and real inputs, for every type, and every row dequantizes through the reference dequantizer to
// finite values on the block's grid (re-quantizing the dequantized row with the same scales is lossless: checked by
// dequantize -> the value set per block has at most 2^bits levels per sub-block).
TEST(Gptq, LowerCalibrationOutputErrorThanTheSearchOnRealWeights) {
  for (const std::string name : {"blk.1.attn_q.weight", "blk.2.ffn_down.weight"}) {
    int64_t rows = 0, n = 0;
    const std::vector<float> W = matrix(name, &rows, &n);
    const std::vector<float> H = calib().cov.entries.at(name).full();
    const std::vector<float> imp = calib().im.entries.at(name).importance();
    const GptqFactor f = gptq_prepare(H.data(), n);
    for (DType type : kTypes) {
      const size_t rs = row_size(type, n);
      std::vector<uint8_t> a(rs), b(rs), c(rs);
      std::vector<float> y(static_cast<size_t>(n));
      double e_gptq = 0, e_search = 0, e_rtn = 0;
      for (int64_t r = 0; r < rows; r += 4) {  // every 4th row: enough, and fast
        const float* w = W.data() + r * n;
        quantize_row_gptq(type, w, a.data(), n, imp.data(), f);
        quantize_row_weighted(type, w, b.data(), n, imp.data());
        quantize_row(type, w, c.data(), n);
        e_gptq += gptq_output_error(type, a.data(), w, f);
        e_search += gptq_output_error(type, b.data(), w, f);
        e_rtn += gptq_output_error(type, c.data(), w, f);
        dequantize_row(type, a.data(), y.data(), n);
        for (int64_t j = 0; j < n; ++j) ASSERT_TRUE(std::isfinite(y[static_cast<size_t>(j)])) << type_name(type);
      }
      std::printf("%-22s %-5s output error: gptq %.4g  search %.4g  rtn %.4g  (gptq/search %.3f)\n", name.c_str(),
                  type_name(type), e_gptq, e_search, e_rtn, e_gptq / e_search);
      EXPECT_LT(e_gptq, e_search) << name << " " << type_name(type);
      EXPECT_LT(e_gptq, e_rtn) << name << " " << type_name(type);
    }
  }
}

// With H = identity there is nothing to feed forward (the factor is diagonal), so GPTQ is the block search's scales
// with nearest rounding: its error stays within 1% of the search's (not exactly equal: inside GPTQ the search does
// not fall back to the reference block when that one is better, and the search weights by sqrt(sigma2 + x^2), GPTQ's
// output error does not). Also checks that each GPTQ block holds
// no more distinct levels than the type allows (codes were packed in range).
TEST(Gptq, IdentityCovarianceIsThePerBlockSearchAndCodesAreInRange) {
  const int64_t n = 512;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n)), H(static_cast<size_t>(n * n), 0.0f), imp(static_cast<size_t>(n), 1.0f);
  for (auto& v : w) v = nd(rng) * 0.05f;
  for (int64_t i = 0; i < n; ++i) H[static_cast<size_t>(i * n + i)] = 1.0f;
  const GptqFactor f = gptq_prepare(H.data(), n);
  for (DType type : kTypes) {
    const size_t rs = row_size(type, n);
    std::vector<uint8_t> a(rs), b(rs);
    quantize_row_gptq(type, w.data(), a.data(), n, imp.data(), f);
    quantize_row_weighted(type, w.data(), b.data(), n, imp.data());
    const double ea = gptq_output_error(type, a.data(), w.data(), f), eb = gptq_output_error(type, b.data(), w.data(), f);
    EXPECT_LE(ea, eb * 1.01) << type_name(type);
    std::vector<float> y(static_cast<size_t>(n));
    dequantize_row(type, a.data(), y.data(), n);
    const int bits = type == DType::Q2_K ? 2 : type == DType::Q3_K ? 3 : type == DType::Q6_K ? 6
                   : (type == DType::Q5_0 || type == DType::Q5_1 || type == DType::Q5_K) ? 5 : 4;
    const int sub = (type == DType::Q2_K || type == DType::Q3_K || type == DType::Q6_K) ? 16 : 32;
    for (int64_t s = 0; s < n; s += sub) {
      std::vector<float> lv(y.begin() + s, y.begin() + s + sub);
      std::sort(lv.begin(), lv.end());
      lv.erase(std::unique(lv.begin(), lv.end()), lv.end());
      EXPECT_LE(lv.size(), size_t{1} << bits) << type_name(type) << " sub-block at " << s;
    }
  }
}

TEST(Gptq, BadInputsAreRefused) {
  std::vector<float> H(16, 0.0f), w(256, 0.1f), imp(256, 1.0f);
  EXPECT_THROW(gptq_prepare(H.data(), 4), Error);  // no positive diagonal
  std::vector<float> I(256 * 256, 0.0f);
  for (int i = 0; i < 256; ++i) I[static_cast<size_t>(i * 257)] = 1.0f;
  const GptqFactor f = gptq_prepare(I.data(), 256);
  std::vector<uint8_t> out(row_size(DType::Q8_0, 256));
  EXPECT_THROW(quantize_row_gptq(DType::Q8_0, w.data(), out.data(), 256, imp.data(), f), Error);
  std::vector<uint8_t> out2(row_size(DType::Q4_0, 128));
  EXPECT_THROW(quantize_row_gptq(DType::Q4_0, w.data(), out2.data(), 128, imp.data(), f), Error);  // n != H's
}

// ---- the covariance: collection and file -----------------------------------------------------

TEST(Covariance, CollectorMatchesTheImportanceAndTheOuterProducts) {
  auto model = Model::load(tinytales("f32"));
  ImatrixCollector c(*model, false, true);
  const WeightView& wq = model->layers[0].wq;
  const WeightView& wk = model->layers[0].wk;
  const int64_t n = wq.cols;
  std::vector<float> x(static_cast<size_t>(n * 3));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  for (auto& v : x) v = ud(rng);
  c.observe(wq, x.data(), 3);
  c.observe(wk, x.data(), 3);  // the same input: the cached outer products
  x[5] = 2.0f;                 // a different input for q only
  c.observe(wq, x.data(), 3);
  const ImportanceMatrix m = c.result(1, "");
  const CovarianceSet cs = c.covariance();
  ASSERT_EQ(cs.entries.size(), 2u);
  const CovarianceEntry& e = cs.entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(e.n, n);
  EXPECT_EQ(e.n_tokens, 6);
  const std::vector<float> H = e.full();
  const std::vector<float> imp = m.entries.at("blk.0.attn_q.weight").importance();
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(H[static_cast<size_t>(i * n + i)], imp[static_cast<size_t>(i)], 1e-5f);
  // H_ij = mean over the 6 token rows (3 before x[5] changed, 3 after) of x_i x_j
  std::mt19937 rng2(1);
  std::vector<float> xa(static_cast<size_t>(n * 3));
  for (auto& v : xa) v = ud(rng2);
  std::vector<float> xb(xa);
  xb[5] = 2.0f;
  for (int64_t i : {0, 5, 17}) {
    for (int64_t j : {0, 5, 200}) {
      double s = 0;
      for (int t = 0; t < 3; ++t) s += double(xa[t * n + i]) * xa[t * n + j] + double(xb[t * n + i]) * xb[t * n + j];
      EXPECT_NEAR(H[static_cast<size_t>(i * n + j)], s / 6.0, 1e-5) << i << "," << j;
    }
  }
  const std::vector<float> Hk = cs.entries.at("blk.0.attn_k.weight").full();
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int t = 0; t < 3; ++t) s += double(xa[t * n + 3]) * xa[t * n + j];
    EXPECT_NEAR(Hk[static_cast<size_t>(3 * n + j)], s / 3.0, 1e-5);
  }
}

TEST(Covariance, FileRoundTripsAndBadFilesAreRefusedWithAClearError) {
  TempDir dir;
  CovarianceSet c;
  for (int k = 0; k < 2; ++k) {
    CovarianceEntry e;
    e.n = 3 + k;
    e.n_tokens = 10 + k;
    for (int i = 0; i < e.n * (e.n + 1) / 2; ++i) e.upper.push_back(0.5f + static_cast<float>(i));
    c.entries["blk." + std::to_string(k) + ".ffn_up.weight"] = e;
  }
  const std::string p = dir.file("x.cov");
  write_covariance(p, c);
  const CovarianceSet r = read_covariance(p);
  ASSERT_EQ(r.entries.size(), 2u);
  for (const auto& [name, e] : c.entries) {
    const CovarianceEntry& g = r.entries.at(name);
    EXPECT_EQ(g.n, e.n);
    EXPECT_EQ(g.n_tokens, e.n_tokens);
    EXPECT_EQ(g.upper, e.upper);
  }
  const std::vector<float> full = r.entries.at("blk.0.ffn_up.weight").full();
  EXPECT_EQ(full[1], 1.5f);  // H_01
  EXPECT_EQ(full[3], 1.5f);  // H_10
  EXPECT_EQ(full[8], 5.5f);  // H_22

  const std::string good = test::read_file(p);
  auto expect_bad = [&](const std::string& bytes, const std::string& what) {
    std::ofstream(dir.file("bad.cov"), std::ios::binary) << bytes;
    try {
      read_covariance(dir.file("bad.cov"));
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad.cov"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("not a valid covariance file"), std::string::npos) << e.what();
    }
  };
  // every truncation (fuzz-like): each prefix is refused, never read past its end
  for (size_t len = 0; len < good.size(); ++len) expect_bad(good.substr(0, len), "prefix " + std::to_string(len));
  expect_bad(good + "x", "a trailing byte");
  std::string b = good;
  b[0] = 'X';
  expect_bad(b, "bad magic");
  b = good;
  b[8] = 2;
  expect_bad(b, "version 2");
  b = good;
  b[12] = 0;  // entry count 0
  expect_bad(b, "no entries");
  // the first entry: name (19 bytes) at 20, n at 39, n_tokens at 43, values at 51
  const float nan = std::nanf(""), neg = -1.0f;
  b = good;
  std::memcpy(&b[51 + 4], &nan, 4);
  expect_bad(b, "NaN");
  b = good;
  std::memcpy(&b[51], &neg, 4);
  expect_bad(b, "negative diagonal");
  b = good;
  std::memset(&b[43], 0, 8);
  expect_bad(b, "zero tokens");
  b = good;
  b[39] = 0;
  expect_bad(b, "size 0");
  b = good;  // the second entry's name made equal to the first's
  const size_t second = 51 + 6 * 4;
  std::memcpy(&b[second + 4], "blk.0", 5);
  expect_bad(b, "duplicate name");
  EXPECT_THROW(read_covariance(dir.file("missing.cov")), Error);
}

// ---- quantize_model / the CLI ----------------------------------------------------------------

TEST(QuantMethod, NamesAndClearErrors) {
  EXPECT_EQ(parse_quant_method("GPTQ"), QuantMethod::Gptq);
  EXPECT_EQ(parse_quant_method("auto"), QuantMethod::Auto);
  EXPECT_EQ(parse_quant_method("rtn"), QuantMethod::Rtn);
  EXPECT_EQ(parse_quant_method("search"), QuantMethod::Search);
  EXPECT_FALSE(parse_quant_method("optq"));
  TempDir dir;
  QuantizeOptions o;
  o.file_type = *find_quant_file_type("Q4_0");
  o.method = QuantMethod::Gptq;
  try {
    quantize_model(tinytales("f32"), dir.file("o.gguf"), o);
    ADD_FAILURE() << "gptq without a covariance accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("covariance"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.n_files(), 0u);

  const std::string in = tinytales("f32");
  test::expect_one_line_error(test::run_lokal("quantize " + q(in) + " " + q(dir.file("o.gguf")) + " Q4_0 --quant-method optq"),
                              "unknown --quant-method 'optq'; valid methods: auto, gptq, search, rtn");
  test::expect_one_line_error(test::run_lokal("quantize " + q(in) + " " + q(dir.file("o.gguf")) + " Q4_0 --quant-method gptq"),
                              "--quant-method gptq needs the input covariance");
  test::expect_one_line_error(test::run_lokal("quantize " + q(in) + " " + q(dir.file("o.gguf")) + " Q4_0 --quant-method search"),
                              "--quant-method search needs --imatrix");
  std::ofstream(dir.file("junk.cov")) << "junk";
  test::expect_one_line_error(test::run_lokal("quantize " + q(in) + " " + q(dir.file("o.gguf")) + " Q4_0 --covariance " +
                                              q(dir.file("junk.cov"))),
                              "not a valid covariance file");
  EXPECT_FALSE(fs::exists(dir.file("o.gguf")));
}

// A .dat alone keeps today's behaviour (auto = the per-block search, byte for byte); rtn gives llama.cpp's
// no-imatrix bytes; with the covariance auto differs from both, keeps every tensor's type and shape, and is a
// readable model.
TEST(QuantMethod, DatAloneIsUnchangedAndCovarianceSwitchesToGptq) {
  TempDir dir;
  auto run = [&](const std::string& out, QuantMethod m, bool with_cov) {
    QuantizeOptions o;
    o.file_type = *find_quant_file_type("Q4_K_M");
    o.n_threads = 2;
    o.method = m;
    use_imatrix(o, calib().im, "im.dat");
    if (with_cov) use_covariance(o, calib().cov);
    quantize_model(tinytales("f32"), dir.file(out), o);
    return GGUFFile::open(dir.file(out));
  };
  auto tensor_bytes = [](const GGUFFile& f, const std::string& name) {
    const GGUFTensorInfo* t = f.find_tensor(name);
    return std::string(reinterpret_cast<const char*>(t->data), t->nbytes);
  };
  auto search = run("search.gguf", QuantMethod::Search, false);
  auto autod = run("auto-dat.gguf", QuantMethod::Auto, false);
  auto rtn = run("rtn.gguf", QuantMethod::Rtn, true);
  auto gptq = run("auto-cov.gguf", QuantMethod::Auto, true);
  auto ref = GGUFFile::open(tinytales("q4_k_m"));
  // rtn with an imatrix: llama.cpp's no-imatrix file exactly, mix included (Q4_0's imatrix mix differs), no imatrix keys
  {
    QuantizeOptions o;
    o.file_type = *find_quant_file_type("Q4_0");
    o.n_threads = 2;
    o.method = QuantMethod::Rtn;
    use_imatrix(o, calib().im, "im.dat");
    quantize_model(tinytales("f32"), dir.file("rtn-q4_0.gguf"), o);
    auto r0 = GGUFFile::open(dir.file("rtn-q4_0.gguf"));
    auto l0 = GGUFFile::open(tinytales("q4_0"));
    for (const auto& t : l0->tensors()) EXPECT_EQ(tensor_bytes(*r0, t.name), tensor_bytes(*l0, t.name)) << t.name;
    EXPECT_FALSE(r0->opt_str("quantize.imatrix.file").has_value());
  }
  int differ = 0;
  for (const auto& t : search->tensors()) {
    EXPECT_EQ(tensor_bytes(*autod, t.name), tensor_bytes(*search, t.name)) << t.name;
    EXPECT_EQ(tensor_bytes(*rtn, t.name), tensor_bytes(*ref, t.name)) << t.name;
    const GGUFTensorInfo* g = gptq->find_tensor(t.name);
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(g->type, t.type) << t.name;
    EXPECT_EQ(g->nbytes, t.nbytes) << t.name;
    if (t.name.rfind("blk.", 0) == 0 && tensor_bytes(*gptq, t.name) != tensor_bytes(*search, t.name)) ++differ;
  }
  EXPECT_EQ(differ, 28);  // every matrix of the 4 blocks has a covariance, and GPTQ wins on some rows of each
  EXPECT_NO_THROW(Model::load(dir.file("auto-cov.gguf")));
}

// The CLI end to end: `lokal imatrix --covariance` writes X and X.cov; `lokal quantize --imatrix X` finds X.cov and
// uses GPTQ (auto); --quant-method search ignores it and gives the .dat-only bytes; the written file has the type's
// tensor types and sizes.
TEST(QuantMethod, CliFindsTheCovarianceBesideTheImatrix) {
  TempDir dir;
  const std::string in = tinytales("f32"), im = dir.file("im.dat");
  const std::string books = test::data_path("golden/ppl-text-books.txt");
  test::CliResult r = test::run_lokal("imatrix -m " + q(in) + " -f " + q(books) + " -c 64 --chunks 2 -t 2 --covariance -o " + q(im));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(fs::exists(im + ".cov"));
  EXPECT_NE(r.err.find("input covariance of 28 matrices"), std::string::npos) << r.err;
  r = test::run_lokal("quantize " + q(in) + " " + q(dir.file("g.gguf")) + " Q4_0 -t 2 --imatrix " + q(im));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("im.dat.cov, 28 entries (quant method auto)"), std::string::npos) << r.err;
  r = test::run_lokal("quantize " + q(in) + " " + q(dir.file("s.gguf")) + " Q4_0 -t 2 --quant-method search --imatrix " + q(im));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("covariance:"), std::string::npos) << r.err;
  auto g = GGUFFile::open(dir.file("g.gguf"));
  auto s = GGUFFile::open(dir.file("s.gguf"));
  ASSERT_EQ(g->tensors().size(), s->tensors().size());
  bool any_differs = false;
  for (size_t i = 0; i < g->tensors().size(); ++i) {
    const GGUFTensorInfo& a = g->tensors()[i];
    const GGUFTensorInfo& b = s->tensors()[i];
    EXPECT_EQ(a.type, b.type) << a.name;
    ASSERT_EQ(a.nbytes, b.nbytes) << a.name;
    any_differs = any_differs || std::memcmp(a.data, b.data, a.nbytes) != 0;
  }
  EXPECT_TRUE(any_differs);
}
