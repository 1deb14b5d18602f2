// Speculative decoding through the binary (docs/SPECULATIVE.md): `lokal run`, `chat` and `batch` with a draft model
// or n-gram drafting give exactly the greedy text they give without, report what was drafted, and refuse bad
// settings with one clear line. (The mechanism itself - identity, rollback, the sampling rule - is tested in
// tests/test_speculative.cpp; the server in tests/test_server.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "support/test_data.h"

using json = nlohmann::json;
using lokal::test::data_path;
using lokal::test::run_lokal;

namespace {

std::string tales() { return data_path("models/real/tinytales-4m-f32.gguf"); }
std::string draft1m() { return data_path("models/real/tinytales-draft-1m-q8_0.gguf"); }
std::string draft1024() { return data_path("models/real/tinytales-draft-v1024-q8_0.gguf"); }

// The numbers of run's "speculative: METHOD | drafted D, accepted A (...)" line; D = -1 when there is none.
struct SpecLine {
  std::string method;
  long drafted = -1, accepted = -1;
};
SpecLine spec_line(const std::string& err) {
  std::smatch m;
  SpecLine s;
  if (std::regex_search(err, m, std::regex("speculative: ([^|\\n]+) \\| drafted (\\d+), accepted (\\d+)"))) {
    s.method = m[1];
    s.drafted = std::stol(m[2]);
    s.accepted = std::stol(m[3]);
  }
  return s;
}

TEST(SpeculativeCli, RunIsTokenIdenticalInEveryMode) {
  const std::string base = "run -m " + tales() + " -n 120 --temp 0 -t 2 --ignore-eos -p 'Once upon a time there was a little girl who'";
  const auto plain = run_lokal(base);
  ASSERT_EQ(plain.rc, 0) << plain.err;
  ASSERT_GT(plain.out.size(), 100u);
  struct Mode {
    std::string flags, method;
  };
  const std::vector<Mode> modes = {
      {"--draft " + draft1m() + " --draft-p-min 0 --draft-fixed --draft-max 4", "draft (same vocabulary)"},
      {"--draft " + draft1m(), "draft (same vocabulary)"},  // the defaults: adaptive, p-min 0.75
      {"--draft " + draft1024() + " --draft-p-min 0 --draft-fixed", "draft (text translation)"},
      {"--draft " + draft1024() + " --draft-p-min 0 --draft-fixed --draft-vocab intersect", "draft (vocabulary intersection)"},
      {"--draft-ngram --draft-fixed --draft-max 8", "ngram"},
      {"--draft-ngram --draft " + draft1m() + " --draft-p-min 0", "ngram+draft (same vocabulary)"},
  };
  for (const Mode& m : modes) {
    const auto r = run_lokal(base + " " + m.flags);
    ASSERT_EQ(r.rc, 0) << m.flags << "\n" << r.err;
    EXPECT_EQ(r.out, plain.out) << m.flags;
    const SpecLine s = spec_line(r.err);
    EXPECT_EQ(s.method, m.method) << r.err;
    EXPECT_GE(s.drafted, s.accepted) << r.err;
    if (m.flags.find("--draft-fixed") != std::string::npos) EXPECT_GT(s.drafted, 0) << m.flags << "\n" << r.err;
  }
  // The choice for another vocabulary is reported with the overlap.
  const auto r = run_lokal(base + " --draft " + draft1024());
  EXPECT_NE(r.err.find("text translation (vocabularies differ"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("overlap 50.0%"), std::string::npos) << r.err;
}

TEST(SpeculativeCli, ChatAndBatchAreExact) {
  const std::string chat_model = data_path("models/real/tinychat-4m-q8_0.gguf");
  const std::string chat_draft = data_path("models/real/tinychat-draft-1m-q8_0.gguf");
  const std::string q = " --temp 0 -t 2 -p 'Tell me a story about a cat.'";
  const auto plain = run_lokal("chat -m " + chat_model + q);
  const auto spec = run_lokal("chat -m " + chat_model + q + " --draft " + chat_draft + " --draft-p-min 0 --draft-fixed");
  ASSERT_EQ(plain.rc, 0) << plain.err;
  ASSERT_EQ(spec.rc, 0) << spec.err;
  EXPECT_EQ(spec.out, plain.out);
  EXPECT_NE(spec.err.find("[speculative: "), std::string::npos) << spec.err;

  lokal::test::TempDir dir("lokal-spec");
  std::string in;
  const std::vector<std::string> prompts = {"Once upon a time", "The king said to his son that", "In the morning the old man",
                                            "She looked at the sky and"};
  for (size_t i = 0; i < 8; ++i) {
    json j = {{"prompt", prompts[i % 4]}, {"max_tokens", 60}, {"temperature", 0}, {"ignore_eos", true}};
    if (i == 7) j["draft_max"] = 0;
    in += j.dump() + "\n";
  }
  const std::string file = dir.file("in.jsonl");
  std::ofstream(file) << in;
  const auto b0 = run_lokal("batch -m " + tales() + " -f " + file + " -t 2");
  const auto b1 = run_lokal("batch -m " + tales() + " -f " + file + " -t 2 --draft " + draft1m() +
                            " --draft-p-min 0 --draft-fixed --draft-max 4");
  ASSERT_EQ(b0.rc, 0) << b0.err;
  ASSERT_EQ(b1.rc, 0) << b1.err;
  std::vector<json> l0, l1;
  for (auto* p : {&b0, &b1}) {
    std::istringstream s(p->out);
    std::string line;
    auto& v = p == &b0 ? l0 : l1;
    while (std::getline(s, line)) v.push_back(json::parse(line));
  }
  ASSERT_EQ(l0.size(), 8u);
  ASSERT_EQ(l1.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(l1[i]["text"], l0[i]["text"]) << i;
    if (i < 7) EXPECT_GT(l1[i]["speculative"]["drafted"].get<int>(), 0) << l1[i].dump();
    else EXPECT_FALSE(l1[i].contains("speculative")) << l1[i].dump();  // draft_max 0: speculation off
  }
  EXPECT_NE(b1.err.find("speculative: draft (same vocabulary) | drafted"), std::string::npos) << b1.err;
}

TEST(SpeculativeCli, BadSettingsAreOneClearLine) {
  const std::string base = "run -m " + tales() + " -n 4 -p 'Once' ";
  lokal::test::expect_one_line_error(run_lokal(base + "--draft /nonexistent/draft.gguf"), "/nonexistent/draft.gguf", true);
  // A vocab-only GGUF (no weights) is not a usable draft: the error names it as the draft.
  const std::string vocab_only = lokal::test::vocab_dir() + "/ggml-vocab-llama-spm.gguf";
  ASSERT_TRUE(std::filesystem::exists(vocab_only)) << vocab_only;
  lokal::test::expect_one_line_error(run_lokal(base + "--draft " + vocab_only), "draft model " + vocab_only, true);
  lokal::test::expect_one_line_error(run_lokal(base + "--draft-ngram --draft-min 9 --draft-max 4"), "--draft-min", true);
  for (const std::string bad : {"--draft-max 0", "--draft-max 500", "--draft-p-min 1.5", "--draft-vocab bogus"}) {
    const auto r = run_lokal(base + "--draft-ngram " + bad);
    EXPECT_EQ(r.rc, 2) << bad << "\n" << r.err;  // a CLI parse error
    EXPECT_NE(r.err.find(bad.substr(0, bad.find(' '))), std::string::npos) << r.err;
  }
  // A draft that is not smaller than the target: a warning, and it still works (exactly).
  const auto same = run_lokal(base + "--draft " + tales());
  EXPECT_EQ(same.rc, 0) << same.err;
  EXPECT_NE(same.err.find("warning: the draft model"), std::string::npos) << same.err;
}

}  // namespace
