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

// The stderr line that describes the KV cache ("kv cache: ... (64 cells, ...), K (bf16): ..., V (f32): ...").
std::string kv_line(const std::string& err) {
  const size_t at = err.find("kv cache:");
  return at == std::string::npos ? std::string() : err.substr(at, err.find('\n', at) - at);
}

// llama.cpp's spellings and the long names are one set of options: -ctk/--cache-type-k, -ctv/--cache-type-v,
// -c/--ctx-size, -b/--batch-size, -t/--threads, -n/--n-predict, -m/--model give the same run, plan and bench; the
// older --ctk/--ctv and the NAME=VALUE form still work.
TEST(Cli, LlamaCppAndLongSpellingsGiveTheSameResult) {
  const std::string m = model("models/real/stories260K.gguf");  // head size 8: the unblocked KV types (f32, f16, bf16)
  const std::string common = " -p 'Once upon a time' --temp 0";
  const Result shorts = run_lokal("run -m " + m + common + " -c 64 -b 16 -t 2 -n 12 -ctk bf16 -ctv f32");
  ASSERT_EQ(shorts.rc, 0) << shorts.err;
  const std::string kv = kv_line(shorts.err);
  EXPECT_NE(kv.find("(64 cells"), std::string::npos) << kv;
  EXPECT_NE(kv.find("K (bf16)"), std::string::npos) << kv;
  EXPECT_NE(kv.find("V (f32)"), std::string::npos) << kv;
  for (const std::string& other :
       {"--model " + m + common + " --ctx-size 64 --batch-size 16 --threads 2 --n-predict 12 --cache-type-k bf16 --cache-type-v f32",
        "-m " + m + common + " -c 64 -b 16 -t 2 -n 12 --ctk bf16 --ctv f32",
        "-m " + m + common + " -c 64 -b 16 -t 2 -n 12 --ctk=bf16 -ctv=f32"}) {
    SCOPED_TRACE(other);
    const Result r = run_lokal("run " + other);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, shorts.out);
    EXPECT_EQ(kv_line(r.err), kv);
  }
  // A bad value given through the llama.cpp spelling is reported under the long name.
  expect_one_line_error(run_lokal("run -m " + m + " -p hi -ctk q9_9"), "--cache-type-k: unsupported KV cache type 'q9_9'");

  // plan: the same JSON whichever spelling fixes the KV types.
  const std::string plan = "plan -m " + m + " --ram 1GiB --json -t 2 -c 128 ";
  const Result p1 = run_lokal(plan + "-ctk bf16 -ctv f32");
  ASSERT_EQ(p1.rc, 0) << p1.err;
  const auto j = nlohmann::json::parse(p1.out);
  EXPECT_EQ(j["settings"]["cache_type_k"], "bf16");
  EXPECT_EQ(j["settings"]["cache_type_v"], "f32");
  for (const char* other : {"--cache-type-k bf16 --cache-type-v f32", "--ctk bf16 --ctv f32"}) {
    const Result r = run_lokal(plan + other);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, p1.out) << other;
  }
  // plan's recommendation uses the llama.cpp spellings, and they run.
  const Result pt = run_lokal("plan -m " + m + " --ram 1GiB -t 2 -c 128 -ctk bf16");
  ASSERT_EQ(pt.rc, 0) << pt.err;
  EXPECT_NE(pt.out.find("-c 128 -ctk bf16 -ctv f16 -b "), std::string::npos) << pt.out;

  // bench: the KV types it ran with.
  const std::string bench = "bench -m " + m + " -p 8 -n 0 -r 1 -t 2 --no-mem-bw --json -q ";
  for (const char* flags : {"-ctk bf16 -ctv f32", "--cache-type-k bf16 --cache-type-v f32", "--ctk bf16 --ctv f32"}) {
    const Result r = run_lokal(bench + flags);
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto b = nlohmann::json::parse(r.out)[0];
    EXPECT_EQ(b["type_k"], "bf16") << flags;
    EXPECT_EQ(b["type_v"], "f32") << flags;
  }
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
