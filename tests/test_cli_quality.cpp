// End-to-end tests of `lokal perplexity` and `lokal compare`: figures against llama-perplexity,
// output formats (text line, Markdown table, JSON), the saved log-probability file, and one clear
// error line for every kind of bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/perplexity.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Result = lokal::test::CliResult;
using lokal::test::run_lokal;

// A shared-data path, quoted for the shell.
std::string shared_arg(const std::string& rel) {
  std::string q = "'";
  q += lokal::test::data_path(rel);
  q += '\'';
  return q;
}

// Every failure of the CLI here must also leave stdout empty.
void expect_failure(const lokal::test::CliResult& r, const std::string& must_contain) {
  lokal::test::expect_one_line_error(r, must_contain, true);
}

// "PPL = 127.2531 +/- 18.17554 over ..." -> {ppl, err}
std::pair<double, double> parse_ppl(const std::string& out) {
  double ppl = 0, err = 0;
  long long n = 0;
  if (std::sscanf(out.c_str(), "PPL = %lf +/- %lf over %lld scored tokens", &ppl, &err, &n) != 3)
    throw std::runtime_error("no PPL line in: " + out);
  return {ppl, err};
}

const json& golden_entry(const json& g, const std::string& model, const std::string& text) {
  for (const auto& r : g["results"])
    if (r["model"] == model && r["text"] == text) return r;
  throw std::runtime_error("no golden entry for " + model + " on " + text);
}

// A representative set through the real binary (every entry is covered in-process by test_perplexity):
// F32, F16, quantized SPM; byte-level BPE without BOS; the char vocab; the K-quant real model.
TEST(CliPerplexity, MatchesLlamaPerplexity) {
  const json g = json::parse(lokal::test::read_file(lokal::test::data_path("golden/perplexity.json")));
  struct Case {
    const char* model;
    const char* text;
    double tol;
  };
  const Case cases[] = {
      {"models/real/stories260K.gguf", "golden/ppl-text.txt", 1e-3},
      {"models/real/stories260K-f16.gguf", "golden/ppl-text.txt", 1e-3},
      {"models/real/llama-2-tiny-random-f16.gguf", "golden/ppl-text.txt", 1e-3},
      {"models/real/babyllama-936K-q4_0.gguf", "golden/ppl-text-no-newlines.txt", 5e-3},
      {"models/synth/synth-qwen2-q8_0.gguf", "golden/ppl-text.txt", 5e-3},
      {"models/synth/synth-llama-q3_k_m.gguf", "golden/ppl-text.txt", 5e-3},
      {"models/real/tinytales-4m-f32.gguf", "golden/ppl-text-books.txt", 1e-3},
      {"models/real/tinytales-4m-q4_k_m.gguf", "golden/ppl-text-books.txt", 5e-3},
  };
  for (const Case& c : cases) {
    const json& e = golden_entry(g, c.model, c.text);
    const json& ref = e["with_f32_kv"];
    // The entry's own command line, minus the program name and llama.cpp's KV-type flags.
    std::istringstream ss(e["command"].get<std::string>());
    std::string args, w;
    ss >> w;  // llama-perplexity
    while (ss >> w) {
      if (w == "-m" || w == "-f") {
        std::string rel;
        ss >> rel;
        args += " " + w + " " + shared_arg(rel);
      } else {
        args += " " + w;
      }
    }
    Result r = run_lokal("perplexity" + args);
    ASSERT_EQ(r.rc, 0) << "perplexity" << args << ": " << r.err;
    auto [ppl, err] = parse_ppl(r.out);
    EXPECT_NEAR(ppl / ref["ppl"].get<double>(), 1.0, c.tol) << c.model << " on " << c.text << ": " << r.out;
    EXPECT_NEAR(err / ref["ppl_err"].get<double>(), 1.0, 1e-2) << c.model << ": " << r.out;
    EXPECT_NE(r.err.find("[8/8] PPL = "), std::string::npos) << r.err;  // progress per chunk on stderr
    EXPECT_NE(r.out.find("tokens/s"), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  }
}

TEST(CliPerplexity, SaveLogitsWritesTheDocumentedFile) {
  const std::string path = (fs::temp_directory_path() / ("lokal_cliq_lpf_" + std::to_string(::getpid()))).string();
  Result r = run_lokal("perplexity -m " + shared_arg("models/real/stories260K.gguf") + " -f " + shared_arg("golden/ppl-text.txt") +
                       " -c 128 --chunks 4 -t 2 --save-logits '" + path + "'");
  ASSERT_EQ(r.rc, 0) << r.err;
  const double ppl = parse_ppl(r.out).first;
  lokal::LogProbReader rd(path);
  EXPECT_EQ(rd.plan().n_vocab, 512);
  EXPECT_EQ(rd.plan().n_ctx, 128);
  EXPECT_EQ(rd.plan().n_chunks, 4);
  EXPECT_EQ(rd.plan().n_scored, 63);
  EXPECT_EQ(rd.plan().tokens[0], 1);  // BOS
  double sum = 0;
  lokal::LogProbRow row;
  while (rd.rows_left() > 0) {
    rd.next(&row);
    sum += row.nll;
  }
  EXPECT_NEAR(std::exp(sum / (4 * 63)), ppl, 1e-3 * ppl);
  EXPECT_EQ(fs::file_size(path), 40u + 4u * 4 * 128 + 4u * 63 * (16 + 2 * 512));
  fs::remove(path);
}

TEST(CliPerplexity, BadInputsGiveOneClearLine) {
  const std::string stories = shared_arg("models/real/stories260K.gguf");
  const std::string text = shared_arg("golden/ppl-text.txt");
  expect_failure(run_lokal("perplexity -m /nonexistent.gguf -f " + text), "nonexistent.gguf");
  expect_failure(run_lokal("perplexity -m " + stories + " -f /nonexistent.txt"), "nonexistent.txt");
  expect_failure(run_lokal("perplexity -m " + stories), "--file");
  // Too short a text for the context: the numbers are named.
  const std::string short_text = (fs::temp_directory_path() / ("lokal_cliq_short_" + std::to_string(::getpid()))).string();
  std::ofstream(short_text) << "Once upon a time there was a little cat.\n";
  expect_failure(run_lokal("perplexity -m " + stories + " -f '" + short_text + "' -c 64"), "at least 128");
  fs::remove(short_text);
  // Above the trained context (tinytales: 256) without --allow-long-ctx.
  const std::string books = shared_arg("golden/ppl-text-books.txt");
  expect_failure(run_lokal("perplexity -m " + shared_arg("models/real/tinytales-4m-q8_0.gguf") + " -f " + books + " -c 512"),
                        "trained context of 256");
  expect_failure(run_lokal("perplexity -m " + stories + " -f " + text + " --chunks 0"), "chunks");
  expect_failure(run_lokal("perplexity -m " + stories + " -f " + text + " -c 2"), "at least 4");
  expect_failure(run_lokal("perplexity -m " + stories + " -f " + text + " -c 128 --save-logits /nonexistent/dir/x.lpf"),
                        "/nonexistent/dir/x.lpf");
  expect_failure(run_lokal("perplexity -m " + shared_arg("golden/prompts.json") + " -f " + text), "not a GGUF file");
}

TEST(CliPerplexity, LongContextNeedsTheFlag) {
  Result r = run_lokal("perplexity -m " + shared_arg("models/real/tinytales-draft-1m-q8_0.gguf") + " -f " +
                       shared_arg("golden/ppl-text-books.txt") + " -c 512 --chunks 1 -t 2 --allow-long-ctx");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_GT(parse_ppl(r.out).first, 1.0);
}

// ---- compare ------------------------------------------------------------------------------

std::string tinytales(const char* type) { return shared_arg(std::string("models/real/tinytales-4m-") + type + ".gguf"); }

TEST(CliCompare, JsonHasTheFieldsAndSaneOrdering) {
  Result r = run_lokal("compare " + tinytales("f32") + " " + tinytales("q8_0") + " " + tinytales("q4_k_m") + " " +
                       tinytales("q2_k") + " -f " + shared_arg("golden/ppl-text-books.txt") + " -c 256 --chunks 4 -t 2 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  json j = json::parse(r.out);  // stdout is exactly the JSON document
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 4u);
  for (const auto& row : j)
    for (const char* k : {"model", "file_type", "file_bytes", "bits_per_weight", "ppl", "ppl_err", "delta_ppl",
                          "delta_ppl_pct", "kl_mean", "kl_p99", "top1_agreement", "prefill_tps", "decode_tps",
                          "n_scored_tokens"})
      EXPECT_TRUE(row.contains(k)) << "missing " << k << " in " << row.dump();
  EXPECT_TRUE(j[0]["base"].get<bool>());
  EXPECT_EQ(j[0]["kl_mean"].get<double>(), 0.0);
  EXPECT_EQ(j[0]["kl_p99"].get<double>(), 0.0);
  EXPECT_EQ(j[0]["top1_agreement"].get<double>(), 100.0);
  EXPECT_EQ(j[0]["delta_ppl"].get<double>(), 0.0);
  EXPECT_EQ(j[0]["file_bytes"].get<uint64_t>(), fs::file_size(lokal::test::data_path("models/real/tinytales-4m-f32.gguf")));
  EXPECT_NEAR(j[0]["bits_per_weight"].get<double>(), 32.0, 1e-9);
  EXPECT_LT(j[1]["kl_mean"].get<double>(), j[2]["kl_mean"].get<double>());
  EXPECT_LT(j[2]["kl_mean"].get<double>(), j[3]["kl_mean"].get<double>());
  EXPECT_GT(j[1]["kl_mean"].get<double>(), 0.0);
  EXPECT_GT(j[1]["top1_agreement"].get<double>(), j[3]["top1_agreement"].get<double>());
  EXPECT_LT(j[3]["top1_agreement"].get<double>(), 100.0);
  for (const auto& row : j) {
    EXPECT_EQ(row["n_scored_tokens"].get<int64_t>(), 4 * 127);
    EXPECT_GT(row["prefill_tps"].get<double>(), 0.0);
    EXPECT_GT(row["decode_tps"].get<double>(), 0.0);
  }
}

TEST(CliCompare, MarkdownTable) {
  Result r = run_lokal("compare " + tinytales("f32") + " " + tinytales("q8_0") + " -f " +
                       shared_arg("golden/ppl-text-books.txt") + " -c 256 --chunks 2 -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<std::string> lines;
  std::istringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 4u) << r.out;  // header, separator, two rows
  for (const char* col : {"PPL", "ΔPPL", "KL mean", "KL p99", "top-1", "bpw", "prefill t/s", "decode t/s", "size (MiB)"})
    EXPECT_NE(lines[0].find(col), std::string::npos) << col;
  EXPECT_EQ(lines[1].rfind("|---", 0), 0u);
  EXPECT_NE(lines[2].find("tinytales-4m-f32.gguf (base)"), std::string::npos) << lines[2];
  EXPECT_NE(lines[2].find("| 100.00 |"), std::string::npos) << lines[2];
  EXPECT_NE(lines[3].find("tinytales-4m-q8_0.gguf"), std::string::npos) << lines[3];
  EXPECT_NE(lines[3].find("Q8_0"), std::string::npos) << lines[3];
  EXPECT_NE(r.err.find("model 2/2"), std::string::npos) << r.err;  // progress on stderr
}

TEST(CliCompare, BadInputsGiveOneClearLine) {
  const std::string books = shared_arg("golden/ppl-text-books.txt");
  expect_failure(run_lokal("compare " + tinytales("f32") + " " +
                                  shared_arg("models/real/tinytales-draft-v1024-f32.gguf") + " -f " + books + " -c 256"),
                        "tinytales-draft-v1024-f32.gguf: its vocabulary has 1024 tokens");
  expect_failure(run_lokal("compare " + tinytales("f32") + " -f " + books), "at least one other model");
  expect_failure(run_lokal("compare " + tinytales("f32") + " /nonexistent.gguf -f " + books), "nonexistent.gguf");
  expect_failure(run_lokal("compare " + tinytales("f32") + " " + tinytales("q8_0") + " -f " + books + " -c 512"),
                        "trained context of 256");
}

}  // namespace
