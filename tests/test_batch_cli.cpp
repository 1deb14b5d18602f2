// `lokal batch` end to end: JSONL in, JSONL out in the input's order, through the scheduler with several sequences
// at once; greedy completions equal llama.cpp's (the golden greedy text) and `lokal run`'s, whatever else is in the
// batch; bad lines are reported with their line numbers while the rest of the file is still generated.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/test_data.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using lokal::test::run_lokal;

namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

struct Scratch {
  fs::path dir;
  Scratch() {
    dir = fs::temp_directory_path() / ("lokal-batch-" + std::to_string(::getpid()) + "-" +
                                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string p = (dir / name).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
};

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  std::vector<json> out;
  std::string line;
  while (std::getline(f, line)) out.push_back(json::parse(line));
  return out;
}

TEST(BatchCli, GreedyMatchesLlamaCppInAnyBatch) {
  Scratch s;
  const auto g = json::parse(lokal::test::read_file(lokal::test::data_path("golden/logits/stories260K.p1.json")));
  const std::string golden = g["greedy"]["text"].get<std::string>();
  // The golden prompt in the middle of eight others with different lengths, seeds and limits.
  std::string in;
  for (int i = 0; i < 9; ++i) {
    json j;
    if (i == 4) {
      j = {{"prompt", "Once upon a time"}, {"max_tokens", 32}, {"temperature", 0}, {"id", "golden"}};
    } else {
      j = {{"prompt", "Lily and Tom went to the park" + std::string(static_cast<size_t>(i) * 3, '!')},
           {"max_tokens", 10 + 7 * i}, {"seed", i}, {"temperature", 0.9}};
    }
    in += j.dump() + "\n";
  }
  const std::string inp = s.write("in.jsonl", in), out = (s.dir / "out.jsonl").string();
  auto r = run_lokal("batch -m " + q(lokal::test::data_path("models/real/stories260K.gguf")) + " -f " + q(inp) +
                     " -o " + q(out) + " -np 4 -b 16 -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto res = read_jsonl(out);
  ASSERT_EQ(res.size(), 9u);
  for (size_t i = 0; i < res.size(); ++i) {
    EXPECT_EQ(res[i]["line"], static_cast<int>(i) + 1) << "input order";
    ASSERT_TRUE(res[i].contains("text")) << res[i].dump();
    EXPECT_EQ(res[i]["usage"]["total_tokens"].get<int>(),
              res[i]["usage"]["prompt_tokens"].get<int>() + res[i]["usage"]["completion_tokens"].get<int>());
    EXPECT_TRUE(res[i]["timings"].contains("generation_tokens_per_second"));
  }
  EXPECT_EQ(res[4]["id"], "golden");
  EXPECT_EQ(res[4]["text"], golden);
  EXPECT_EQ(res[4]["finish_reason"], "length");
  EXPECT_EQ(res[4]["usage"]["completion_tokens"], 32);
  EXPECT_NE(r.err.find("9 done, 0 failed"), std::string::npos) << r.err;

  // The same seeded line alone (parallel 1) gives the same text: batch invariance seen from the command line.
  const std::string one = s.write("one.jsonl", json({{"prompt", "Lily and Tom went to the park!!!"}, {"max_tokens", 17},
                                                     {"seed", 1}, {"temperature", 0.9}}).dump() + "\n");
  auto r1 = run_lokal("batch -m " + q(lokal::test::data_path("models/real/stories260K.gguf")) + " -f " + q(one) +
                      " -np 1 -t 1");
  ASSERT_EQ(r1.rc, 0) << r1.err;
  EXPECT_EQ(json::parse(r1.out)["text"], res[1]["text"]);
}

// Each bad line gets an error naming its line (on stderr and in its output object); the good lines still run;
// the exit status is 1.
TEST(BatchCli, BadLinesAreReportedAndTheRestRuns) {
  Scratch s;
  const std::string in =
      "{\"prompt\": \"Once upon a time\", \"max_tokens\": 4}\n"
      "this is not json\n"
      "\n"
      "{\"prompt\": \"hi\", \"temprature\": 0.5}\n"
      "{\"prompt\": \"\"}\n"
      "{\"prompt\": \"hi\", \"max_tokens\": -3}\n"
      "{\"prompt\": [1, 99999999]}\n"
      "[1, 2]\n"
      "{\"prompt\": \"hi\", \"n\": 2}\n"
      "{\"prompt\": \"The end\", \"max_tokens\": 3, \"stop\": \"never-seen\"}\n";
  const std::string inp = s.write("in.jsonl", in), out = (s.dir / "out.jsonl").string();
  auto r = run_lokal("batch -m " + q(lokal::test::data_path("models/real/stories260K.gguf")) + " -f " + q(inp) +
                     " -o " + q(out) + " -np 2");
  EXPECT_EQ(r.rc, 1) << r.err;
  const auto res = read_jsonl(out);
  ASSERT_EQ(res.size(), 9u) << "one result per non-blank line";
  struct Want {
    int line;
    const char* error;  // nullptr: a completion
  };
  const Want want[] = {{1, nullptr},
                       {2, "not valid JSON"},
                       {4, "unknown field \"temprature\""},
                       {5, "the prompt is empty"},
                       {6, "\"max_tokens\" = -3 is out of range"},
                       {7, "99999999 is outside the vocabulary"},
                       {8, "must be a JSON object"},
                       {9, "\"n\" must be 1"},
                       {10, nullptr}};
  for (size_t i = 0; i < 9; ++i) {
    SCOPED_TRACE("output " + std::to_string(i));
    EXPECT_EQ(res[i]["line"], want[i].line);
    if (want[i].error) {
      ASSERT_TRUE(res[i].contains("error")) << res[i].dump();
      EXPECT_NE(res[i]["error"].get<std::string>().find(want[i].error), std::string::npos) << res[i].dump();
      EXPECT_NE(r.err.find("in.jsonl:" + std::to_string(want[i].line) + ": "), std::string::npos) << r.err;
    } else {
      EXPECT_TRUE(res[i].contains("text")) << res[i].dump();
    }
  }
  EXPECT_NE(r.err.find("2 done, 7 failed"), std::string::npos) << r.err;
}

// A prompt longer than the pool can ever hold fails with the numbers; a pool smaller than the prompts together
// forces preemption, and every completion still equals its run with a pool large enough for all.
TEST(BatchCli, SmallPoolPreemptsAndStillMatches) {
  Scratch s;
  std::string in, longp;
  for (int i = 0; i < 60; ++i) longp += "the cat sat on the mat and ";
  in += json({{"prompt", longp}, {"max_tokens", 4}}).dump() + "\n";
  for (int i = 0; i < 6; ++i)
    in += json({{"prompt", "Tim had a red ball" + std::string(static_cast<size_t>(i), '.')}, {"max_tokens", 60},
                {"temperature", 0}}).dump() + "\n";
  const std::string inp = s.write("in.jsonl", in);
  const std::string m = q(lokal::test::data_path("models/real/stories260K.gguf"));
  auto small = run_lokal("batch -m " + m + " -f " + q(inp) + " -np 4 --kv-tokens 192 -c 192");
  auto big = run_lokal("batch -m " + m + " -f " + q(inp) + " -np 4 --kv-tokens 2048 -c 192");
  EXPECT_EQ(small.rc, 1) << small.err;
  std::vector<json> a, b;
  for (auto* p : {&small, &big}) {
    std::istringstream ss(p->out);
    std::string line;
    while (std::getline(ss, line)) (p == &small ? a : b).push_back(json::parse(line));
  }
  ASSERT_EQ(a.size(), 7u);
  ASSERT_EQ(b.size(), 7u);
  EXPECT_NE(a[0]["error"].get<std::string>().find("longer than"), std::string::npos) << a[0].dump();
  int64_t preempted = 0;
  for (size_t i = 1; i < 7; ++i) {
    EXPECT_EQ(a[i]["text"], b[i]["text"]) << "line " << i + 1;
    preempted += a[i]["preempted"].get<int64_t>();
  }
  EXPECT_GT(preempted, 0) << small.err;
}

TEST(BatchCli, MissingInputAndOutputOverInputAreRefused) {
  Scratch s;
  const std::string m = q(lokal::test::data_path("models/real/stories260K.gguf"));
  auto r = run_lokal("batch -m " + m + " -f " + q((s.dir / "nope.jsonl").string()));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("nope.jsonl: no such file"), std::string::npos) << r.err;
  const std::string inp = s.write("in.jsonl", "{\"prompt\": \"hi\", \"max_tokens\": 2}\n");
  auto r2 = run_lokal("batch -m " + m + " -f " + q(inp) + " -o " + q(inp));
  EXPECT_NE(r2.rc, 0);
  EXPECT_EQ(lokal::test::read_file(inp), "{\"prompt\": \"hi\", \"max_tokens\": 2}\n") << "the input is untouched";
  const std::string empty = s.write("empty.jsonl", "\n\n");
  auto r3 = run_lokal("batch -m " + m + " -f " + q(empty));
  EXPECT_NE(r3.rc, 0);
  EXPECT_NE(r3.err.find("no prompts"), std::string::npos) << r3.err;
}

}  // namespace
