// End-to-end tests of the `lokal` binary: real generation, info output, and that every kind
// of bad input gives one clear error line on stderr and a non-zero exit status.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/test_data.h"

namespace fs = std::filesystem;

namespace {

using Result = lokal::test::CliResult;
using lokal::test::run_lokal;

std::string model(const char* rel) { return "'" + lokal::test::data_path(rel) + "'"; }

// Writes a copy of `src` with `from` replaced by `to` (same length) at its first occurrence.
std::string patched_copy(const std::string& src, const std::string& from, const std::string& to, const char* name) {
  std::string bytes = lokal::test::read_file(src);
  size_t at = bytes.find(from);
  if (at == std::string::npos || from.size() != to.size()) throw std::runtime_error("patch target not found");
  bytes.replace(at, from.size(), to);
  std::string out = (fs::temp_directory_path() / name).string();
  std::ofstream(out, std::ios::binary) << bytes;
  return out;
}

using lokal::test::expect_one_line_error;

TEST(Cli, GreedyRunMatchesLlamaCppText) {
  auto g = nlohmann::json::parse(lokal::test::read_file(lokal::test::data_path("golden/logits/stories260K.p1.json")));
  Result r = run_lokal("run -m " + model("models/real/stories260K.gguf") + " -p 'Once upon a time' -n 32 --temp 0 -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  // stdout holds the generated text only (the prompt is not echoed), then a newline.
  EXPECT_EQ(r.out, g["greedy"]["text"].get<std::string>() + "\n");
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("load"), std::string::npos) << r.err;
}

TEST(Cli, SameSeedSameText) {
  const std::string args = "run -m " + model("models/real/stories260K.gguf") + " -p 'Once upon a time' -n 24 --temp 1.0 --seed 42";
  Result a = run_lokal(args), b = run_lokal(args);
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  Result c = run_lokal("run -m " + model("models/real/stories260K.gguf") + " -p 'Once upon a time' -n 24 --temp 1.0 --seed 43");
  EXPECT_NE(a.out, c.out);
}

TEST(Cli, InfoShowsModel) {
  Result r = run_lokal("info " + model("models/synth/synth-qwen2-q4_k_m.gguf"));
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* s : {"qwen2", "n_embd         256", "n_head_kv      2", "Q4_K", "Q6_K", "gpt2", "qwen2", "neox",
                        "tied to token_embd", "kv cache", "total"})
    EXPECT_NE(r.out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << r.out;
}

TEST(Cli, BadInputsGiveOneClearLine) {
  expect_one_line_error(run_lokal("run -m /nonexistent.gguf -p hi"), "nonexistent.gguf");
  expect_one_line_error(run_lokal("run -m '" + lokal::test::test_data_dir() + "/models' -p hi"), "directory");
  expect_one_line_error(run_lokal("run -m " + model("models/real/stories260K.gguf") + " --bogus-flag"), "bogus");
  expect_one_line_error(run_lokal("run -m " + model("models/real/stories260K.gguf") + " -p hi --top-p 7"), "top-p");
  expect_one_line_error(run_lokal("frobnicate"), "frobnicate");
  expect_one_line_error(run_lokal("info " + model("golden/prompts.json")), "not a GGUF file");
  // A prompt longer than the context is refused with the numbers.
  expect_one_line_error(run_lokal("run -m " + model("models/real/stories260K.gguf") + " -c 4 -p 'Once upon a time there was'"),
                        "context");
}

TEST(Cli, UnsupportedArchitectureAndTypeAreNamed) {
  const std::string src = lokal::test::data_path("models/real/stories260K.gguf");
  // general.architecture = "llama" -> "gptxx" (same length).
  std::string arch = patched_copy(src, std::string("general.architecture\x08\0\0\0\x05\0\0\0\0\0\0\0llama", 37),
                                  std::string("general.architecture\x08\0\0\0\x05\0\0\0\0\0\0\0gptxx", 37), "lokal_arch.gguf");
  expect_one_line_error(run_lokal("run -m '" + arch + "' -p hi"), "unsupported model architecture 'gptxx'");
  // output_norm.weight: F32 (0) -> I32 (26), same element size, so the file still parses.
  std::string name = "output_norm.weight";
  std::string tail = std::string("\x01\0\0\0", 4) + std::string("\x40\0\0\0\0\0\0\0", 8);  // 1 dim, ne0 = 64
  std::string typ = patched_copy(src, std::string("\x12\0\0\0\0\0\0\0", 8) + name + tail + std::string("\0\0\0\0", 4),
                                 std::string("\x12\0\0\0\0\0\0\0", 8) + name + tail + std::string("\x1a\0\0\0", 4),
                                 "lokal_type.gguf");
  expect_one_line_error(run_lokal("run -m '" + typ + "' -p hi"), "I32");
  fs::remove(arch);
  fs::remove(typ);
}

}  // namespace
