// The subcommands behave as one program (issue 13, item 8): -m wherever a model is read, one default batch size,
// one file-type name, strict comma lists, --keep only with --context-shift, synth --vocab of the preset's size only,
// and README's Usage block equal to what the binary prints (`lokal usage`, generated from the CLI definitions).
// Everything runs on the 260K-parameter stories model, so this stays fast under ASan too.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "support/test_data.h"

namespace fs = std::filesystem;

namespace {

using lokal::test::expect_one_line_error;
using lokal::test::run_lokal;
using lokal::test::CliResult;

std::string q(const std::string& s) { return "'" + s + "'"; }
std::string stories() { return q(lokal::test::data_path("models/real/stories260K.gguf")); }
std::string stories_f16() { return q(lokal::test::data_path("models/real/stories260K-f16.gguf")); }
std::string text() { return q(lokal::test::data_path("golden/ppl-text.txt")); }

// The value after "file type:" in `lokal info`'s output.
std::string info_file_type(const std::string& out) {
  const size_t at = out.find("file type:");
  if (at == std::string::npos) return "";
  size_t b = out.find_first_not_of(' ', at + 10);
  return out.substr(b, out.find('\n', b) - b);
}

TEST(CliConsistency, ModelFlagEverywhereAndPositionalStillWorks) {
  // info: -m and the positional give the same output.
  const CliResult pos = run_lokal("info " + stories());
  ASSERT_EQ(pos.rc, 0) << pos.err;
  const CliResult flag = run_lokal("info -m " + stories());
  ASSERT_EQ(flag.rc, 0) << flag.err;
  EXPECT_EQ(flag.out, pos.out);
  // Neither or both: a parse error (exit status 2), one line.
  CliResult r = run_lokal("info");
  expect_one_line_error(r, "info: no model given", true);
  EXPECT_EQ(r.rc, 2);
  r = run_lokal("info -m " + stories() + " " + stories());
  expect_one_line_error(r, "info: the model is given twice", true);
  EXPECT_EQ(r.rc, 2);

  // quantize: IN OUT TYPE and -m IN OUT TYPE (dry runs: nothing is written).
  lokal::test::TempDir dir;
  const std::string out = q(dir.file("out.gguf"));
  const CliResult qp = run_lokal("quantize " + stories_f16() + " " + out + " Q8_0 --dry-run -t 2");
  ASSERT_EQ(qp.rc, 0) << qp.err;
  const CliResult qf = run_lokal("quantize -m " + stories_f16() + " " + out + " Q8_0 --dry-run -t 2");
  ASSERT_EQ(qf.rc, 0) << qf.err;
  EXPECT_EQ(qf.out, qp.out);
  EXPECT_EQ(dir.n_files(), 0u);
  r = run_lokal("quantize -m " + stories_f16() + " " + stories_f16() + " " + out + " Q8_0");
  expect_one_line_error(r, "quantize: the model is given twice", true);
  EXPECT_EQ(r.rc, 2);
  r = run_lokal("quantize " + out + " Q8_0");
  expect_one_line_error(r, "quantize: expected IN.gguf OUT.gguf TYPE or -m IN.gguf OUT.gguf TYPE", true);
  EXPECT_EQ(r.rc, 2);

  // export-hf: -m, and the same checks.
  r = run_lokal("export-hf -m " + stories() + " -o " + q(dir.file("hf")) + " -q");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir.file("hf/config.json")));
  expect_one_line_error(run_lokal("export-hf -o " + q(dir.file("hf2"))), "export-hf: no model given", true);
  expect_one_line_error(run_lokal("export-hf -m " + stories() + " " + stories() + " -o " + q(dir.file("hf2"))),
                        "export-hf: the model is given twice", true);
  EXPECT_FALSE(fs::exists(dir.file("hf2")));

  // compare: repeatable -m, mixed with positionals; the first model on the command line is the base.
  const std::string common = " -f " + text() + " -c 64 --chunks 2 -t 2 -q --json";
  r = run_lokal("compare " + stories_f16() + " -m " + stories() + common);
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_TRUE(j[0]["base"].get<bool>());
  EXPECT_NE(j[0]["model"].get<std::string>().find("stories260K-f16.gguf"), std::string::npos) << j[0]["model"];
  EXPECT_NE(j[1]["model"].get<std::string>().find("stories260K.gguf"), std::string::npos) << j[1]["model"];
  r = run_lokal("compare -m " + stories() + " -m " + stories_f16() + common);
  ASSERT_EQ(r.rc, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_NE(j[0]["model"].get<std::string>().find("stories260K.gguf"), std::string::npos) << j[0]["model"];
  r = run_lokal("compare -f " + text());
  expect_one_line_error(r, "compare: no model given", true);
  EXPECT_EQ(r.rc, 2);

  // The subcommands that always had -m still have it, and require a model.
  for (const char* cmd : {"run", "plan", "bench", "perplexity", "imatrix"}) {
    r = run_lokal(std::string(cmd) + " -f " + text());
    expect_one_line_error(r, "--model is required");
    EXPECT_EQ(r.rc, 2) << cmd;
  }
}

TEST(CliConsistency, OneDefaultBatchSize) {
  // The synopsis shows each subcommand's -b default: the same 512 everywhere it has a fixed default.
  const CliResult u = run_lokal("usage");
  ASSERT_EQ(u.rc, 0) << u.err;
  for (const char* cmd : {"run", "perplexity", "imatrix", "compare", "bench"}) {
    const size_t at = u.out.find(std::string("lokal ") + cmd + " ");
    ASSERT_NE(at, std::string::npos) << cmd;
    const size_t next = u.out.find("\nlokal ", at + 1);
    EXPECT_NE(u.out.substr(at, next - at).find("[-b 512]"), std::string::npos) << cmd << ": " << u.out.substr(at, next - at);
  }
  // And what runs uses it: bench's and plan's JSON.
  CliResult r = run_lokal("bench -m " + stories() + " -p 8 -n 0 -r 1 -t 2 --no-mem-bw --json -q");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)[0]["n_batch"].get<int64_t>(), 512);
  r = run_lokal("plan -m " + stories() + " --ram 1GiB --json -t 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["settings"]["n_batch"].get<int64_t>(), 512);
}

TEST(CliConsistency, OneFileTypeName) {
  for (const std::string& m : {stories(), stories_f16()}) {
    const CliResult info = run_lokal("info " + m);
    ASSERT_EQ(info.rc, 0) << info.err;
    const std::string ft = info_file_type(info.out);
    ASSERT_FALSE(ft.empty()) << info.out;

    CliResult r = run_lokal("plan -m " + m + " --ram 1GiB --json -t 2");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["file_type"].get<std::string>(), ft) << m;
    r = run_lokal("plan -m " + m + " --ram 1GiB -t 2");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("file type"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(" " + ft + " "), std::string::npos) << r.out;

    r = run_lokal("bench -m " + m + " -p 8 -n 0 -r 1 -t 2 --no-mem-bw --json -q");
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto b = nlohmann::json::parse(r.out)[0];
    EXPECT_EQ(b["file_type"].get<std::string>(), ft) << m;
    const std::string mt = b["model_type"].get<std::string>();
    EXPECT_EQ(mt.substr(mt.size() - ft.size()), ft) << mt;

    r = run_lokal("compare " + m + " --kv f16,f32 -f " + text() + " -c 64 --chunks 2 -t 2 -q --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)[0]["file_type"].get<std::string>(), ft) << m;
    r = run_lokal("compare " + m + " --kv f16,f32 -f " + text() + " -c 64 --chunks 2 -t 2 -q");
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("| file type |"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("| " + ft + " |"), std::string::npos) << r.out;
  }
}

TEST(CliConsistency, EmptyItemsInCommaListsAreRefused) {
  const std::string m = stories();
  const struct {
    std::string args, flag;
  } cases[] = {
      {"bench -m " + m + " -p 8,,16", "--n-prompt"},  {"bench -m " + m + " -p 8,", "--n-prompt"},
      {"bench -m " + m + " -n ,8", "--n-gen"},        {"bench -m " + m + " -t 1,,2", "--threads"},
      {"bench -m " + m + " -d 0,", "--depth"},        {"bench -m " + m + " -p ''", "--n-prompt"},
      {"plan -m " + m + " --ram 1GiB,,2GiB", "--ram"}, {"plan -m " + m + " --ram ,1GiB", "--ram"},
      {"compare " + m + " --kv f16,,q8_0 -f " + text(), "--kv"},
      {"compare " + m + " --kv f16,q8_0, -f " + text(), "--kv"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    const CliResult r = run_lokal(c.args);
    expect_one_line_error(r, c.flag + ": empty item in the comma list", true);
    EXPECT_EQ(r.rc, 2);
  }
  // Items are still range-checked one by one, and good lists still work.
  expect_one_line_error(run_lokal("bench -m " + m + " -p 8,9999999"), "--n-prompt", true);
  const CliResult r = run_lokal("bench -m " + m + " -p 8,16 -n 0 -r 1 -t 2 --no-mem-bw --json -q");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out).size(), 2u);
}

TEST(CliConsistency, KeepNeedsContextShift) {
  CliResult r = run_lokal("run -m " + stories() + " -p 'Once' -n 4 --temp 0 --keep 4");
  expect_one_line_error(r, "--keep requires --context-shift", true);
  EXPECT_EQ(r.rc, 2);
  r = run_lokal("run -m " + stories() + " -p 'Once' -n 4 --temp 0 -t 2 --keep 4 --context-shift");
  EXPECT_EQ(r.rc, 0) << r.err;
}

TEST(CliConsistency, SynthVocabOfAnotherSizeIsRefused) {
  lokal::test::TempDir dir;
  const std::string out = dir.file("s.gguf");
  // Smaller than tinyllama's 32000 rows (BERT's 30522 tokens): refused, nothing written.
  CliResult r = run_lokal("synth --preset tinyllama-1.1b --layers 1 -t 2 -q --vocab " +
                          q(lokal::test::vocab_dir() + "/ggml-vocab-bert-bge.gguf") + " -o " + q(out));
  expect_one_line_error(r, "the vocabulary has 30522 tokens, but preset 'tinyllama-1.1b' needs 32000", true);
  EXPECT_EQ(r.rc, 1);
  // Smaller than a padded preset's (Qwen2.5-7B: 152064 rows, the Qwen2 tokenizer 151936): refused too, unless
  // --pad-vocab (tested in test_synth_bench).
  r = run_lokal("synth --preset qwen2.5-7b --layers 1 -t 2 -q --vocab " +
                q(lokal::test::vocab_dir() + "/ggml-vocab-qwen2.gguf") + " -o " + q(out));
  expect_one_line_error(r, "--pad-vocab", true);
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(dir.n_files(), 0u);
  r = run_lokal("synth --preset qwen2.5-0.5b --pad-vocab -o " + q(out));
  expect_one_line_error(r, "--pad-vocab requires --vocab", true);
}

// One set of option names: wherever a subcommand has one of these options, --help lists it under both llama.cpp's
// short name and the long name, and the old names are not shown.
TEST(CliConsistency, OneSetOfOptionNames) {
  const struct {
    const char* long_name;
    const char* both;
  } names[] = {
      {"--model", "-m,--model"},         {"--ctx-size", "-c,--ctx-size"},   {"--batch-size", "-b,--batch-size"},
      {"--threads", "-t,--threads"},     {"--n-predict", "-n,--n-predict"}, {"--cache-type-k", "-ctk,--cache-type-k"},
      {"--cache-type-v", "-ctv,--cache-type-v"},
  };
  std::map<std::string, int> seen;
  for (const char* cmd : {"run", "info", "perplexity", "compare", "quantize", "imatrix", "synth", "bench", "convert",
                          "export-hf", "plan"}) {
    const CliResult h = run_lokal(std::string(cmd) + " --help");
    ASSERT_EQ(h.rc, 0) << h.err;
    for (const auto& n : names) {
      const std::string ln = std::string(n.long_name) + " ";
      const std::string lc = std::string(n.long_name) + ",";
      if (h.out.find(ln) == std::string::npos && h.out.find(lc) == std::string::npos) continue;
      ++seen[n.long_name];
      EXPECT_NE(h.out.find(std::string("  ") + n.both + " "), std::string::npos) << cmd << ": " << n.both << " in\n" << h.out;
    }
    EXPECT_EQ(h.out.find("--ctk"), std::string::npos) << cmd;
    EXPECT_EQ(h.out.find("--ctv"), std::string::npos) << cmd;
  }
  // Each of them is somewhere (the test would pass vacuously if --help changed its layout).
  for (const auto& n : names) EXPECT_GT(seen[n.long_name], 0) << n.long_name;
  EXPECT_GE(seen["--threads"], 8);
  EXPECT_EQ(seen["--cache-type-k"], 3);  // run, bench, plan
}

// README's block between the usage markers, without its code fence.
std::string readme_usage_block() {
  const std::string readme = lokal::test::read_file(std::string(LOKAL_SOURCE_DIR) + "/README.md");
  std::istringstream in(readme);
  std::string line, block;
  bool inside = false;
  int begins = 0;
  while (std::getline(in, line)) {
    if (line.rfind("<!-- usage:begin", 0) == 0) {
      inside = true;
      ++begins;
      continue;
    }
    if (line.rfind("<!-- usage:end -->", 0) == 0) inside = false;
    if (inside && line.rfind("```", 0) != 0) block += line + "\n";
  }
  EXPECT_EQ(begins, 1);
  return block;
}

TEST(CliConsistency, ReadmeUsageIsTheBinarysSynopsis) {
  const CliResult u = run_lokal("usage");
  ASSERT_EQ(u.rc, 0) << u.err;
  EXPECT_EQ(readme_usage_block(), u.out) << "README.md's Usage block is stale: run scripts/update-readme-usage.sh "
                                         << lokal::test::binary_dir() << "/src/lokal";
  // Every subcommand --help lists has its entry, and `usage` itself stays hidden.
  const CliResult h = run_lokal("--help");
  ASSERT_EQ(h.rc, 0) << h.err;
  for (const char* cmd : {"run", "info", "perplexity", "compare", "quantize", "imatrix", "synth", "bench", "convert",
                          "export-hf", "plan"}) {
    EXPECT_NE(h.out.find(std::string("  ") + cmd + " "), std::string::npos) << cmd;
    EXPECT_NE(u.out.find(std::string("lokal ") + cmd + " "), std::string::npos) << cmd;
  }
  EXPECT_EQ(h.out.find("  usage "), std::string::npos) << h.out;
  // Every option of a subcommand appears in its entry (checked through --help's option names).
  for (const char* cmd : {"run", "bench", "synth"}) {
    const CliResult ch = run_lokal(std::string(cmd) + " --help");
    ASSERT_EQ(ch.rc, 0) << ch.err;
    const size_t at = u.out.find(std::string("lokal ") + cmd + " ");
    const std::string entry = u.out.substr(at, u.out.find("\nlokal ", at + 1) - at);
    std::istringstream in(ch.out);
    std::string line;
    while (std::getline(in, line)) {
      // "  -n,--n-predict INT ..." or "  --json ...": the first name is the one the synopsis uses.
      if (line.rfind("  -", 0) != 0 || line.rfind("  -h,--help", 0) == 0) continue;
      std::string name = line.substr(2, line.find_first_of(", ", 2) - 2);
      EXPECT_TRUE(entry.find("[" + name + " ") != std::string::npos || entry.find("[" + name + "]") != std::string::npos ||
                  entry.find(name + " ") != std::string::npos)
          << cmd << ": " << name << " missing from " << entry;
    }
  }
}

}  // namespace
