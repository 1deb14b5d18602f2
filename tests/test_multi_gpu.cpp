// Two GPUs on a machine with none: the Vulkan loader, given Mesa lavapipe's driver manifest twice (under two paths,
// VK_ICD_FILENAMES), enumerates two llvmpipe devices, each with its own memory, queues and objects. So what lokal
// does with several GPUs is tested for real here: a draft model on the other GPU than its target (run and serve),
// models of one server on different GPUs, the device memory each holds (used = predicted, to the byte, draft
// caches included), each GPU's own --vram budget and evictions by it, and a model placed on a GPU that is not there.
//
// Every test runs `lokal` in child processes, which inherit the environment set in SetUp (each test is its own
// process under ctest, so nothing else in this one has touched Vulkan before).
#include <gtest/gtest.h>
#include <sys/utsname.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/gpu_test.h"
#include "support/serve_process.h"
#include "support/test_data.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace lokal;

namespace {

// lavapipe's manifest for this machine's architecture (Debian: /usr/share/vulkan/icd.d/lvp_icd.x86_64.json).
std::string lavapipe_manifest() {
  utsname u{};
  ::uname(&u);
  std::string any;
  for (const char* dir : {"/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("lvp_icd", 0) != 0 || e.path().extension() != ".json") continue;
      if (name.find(u.machine) != std::string::npos) return e.path().string();
      if (any.empty()) any = e.path().string();
    }
  }
  return any;
}

std::map<std::string, uint64_t> by_device(const json& j) {
  std::map<std::string, uint64_t> out;
  for (const auto& [k, v] : j.items()) out[k] = v.get<uint64_t>();
  return out;
}

class TwoGpus : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test::no_gpu_allowed()) GTEST_SKIP() << "LOKAL_TEST_NO_GPU=1: GPU tests skipped";
    const std::string first = lavapipe_manifest();
    ASSERT_FALSE(first.empty()) << "Mesa's lavapipe is not installed (scripts/setup.sh installs mesa-vulkan-drivers)";
    const std::string second = dir_.file("lavapipe-again.json");
    fs::copy_file(first, second);
    const std::string both = first + ":" + second;
    // VK_DRIVER_FILES is the newer name (it wins over VK_ICD_FILENAMES where the loader knows it).
    ::setenv("VK_ICD_FILENAMES", both.c_str(), 1);
    ::setenv("VK_DRIVER_FILES", both.c_str(), 1);
    ::unsetenv("LOKAL_VULKAN_LOADER");
    const test::CliResult r = test::run_lokal("info --devices --json", 60);
    ASSERT_EQ(r.rc, 0) << r.err;
    const json devs = json::parse(r.out)["devices"];
    ASSERT_EQ(devs.size(), 2u) << r.out;
    EXPECT_EQ(devs[0]["index"], 0);
    EXPECT_EQ(devs[1]["index"], 1);
  }

  test::TempDir dir_;
  const std::string target_ = test::data_path("models/real/tinytales-4m-f32.gguf");
  const std::string draft_ = test::data_path("models/real/tinytales-draft-1m-f32.gguf");
  const std::string draft_v1024_ = test::data_path("models/real/tinytales-draft-v1024-f32.gguf");
};

// `lokal run` with speculative decoding: greedy text equals plain decoding on the CPU whichever GPU holds the target
// and the draft (each device its own buffers and command streams); the draft's device memory used equals the
// prediction.
TEST_F(TwoGpus, DraftOnTheOtherGpuGivesThePlainText) {
  auto run = [&](const std::string& extra) {
    return test::run_lokal("run -m " + target_ + " -p 'Once upon a time' -n 40 --temp 0 -v " + extra, 300);
  };
  const test::CliResult plain = run("");
  ASSERT_EQ(plain.rc, 0) << plain.err;
  const std::regex draft_mem(R"(gpu memory: draft .*\((\d+) bytes\) used, [0-9.]+ MiB \((\d+) bytes\) predicted)");
  struct Case {
    std::string flags;
    int target_dev, draft_dev;
  };
  for (const Case& c : {Case{"-md " + draft_ + " -ngl 99 --device-draft 1", 0, 1},
                        Case{"-md " + draft_ + " -ngl 99 --device 1 --device-draft 0", 1, 0},
                        // another vocabulary; both split between CPU and GPU, the draft's cache in q8_0
                        Case{"-md " + draft_v1024_ + " -ngl 2 -ngld 1 --device-draft 1 --cache-type-k-draft q8_0 "
                                                     "--cache-type-v-draft q8_0",
                             0, 1}}) {
    const test::CliResult r = run(c.flags);
    ASSERT_EQ(r.rc, 0) << c.flags << ": " << r.err;
    EXPECT_EQ(r.out, plain.out) << c.flags;
    EXPECT_NE(r.err.find("), device " + std::to_string(c.target_dev) + ", int8 decode path"), std::string::npos)
        << c.flags << ": " << r.err;
    EXPECT_TRUE(std::regex_search(r.err, std::regex("gpu: draft \\d of 2 layers on .*, device " +
                                                    std::to_string(c.draft_dev) + "\n")))
        << c.flags << ": " << r.err;
    EXPECT_NE(r.err.find("accepted"), std::string::npos) << r.err;  // it did draft
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.err, m, draft_mem)) << r.err;
    EXPECT_EQ(m[1].str(), m[2].str()) << c.flags << ": the draft's device memory, used vs predicted";
  }
  // A GPU that is not there: the same clear error as for the target.
  const test::CliResult bad = run("-md " + draft_ + " -ngl 99 --device-draft 2");
  test::expect_one_line_error(bad, "Vulkan device 2 does not exist (2 found: 0..1)", true);
}

// lokal bench on the second GPU names it (text, and llama-bench's main_gpu in JSON).
TEST_F(TwoGpus, BenchRunsOnTheGpuItIsGiven) {
  const std::string model = test::data_path("models/real/tinytales-4m-q8_0.gguf");
  const test::CliResult r =
      test::run_lokal("bench -m " + model + " -ngl 99 --device 1 -p 8 -n 2 -r 1 --no-mem-bw --json", 300);
  ASSERT_EQ(r.rc, 0) << r.err;
  const json rows = json::parse(r.out);
  ASSERT_FALSE(rows.empty());
  for (const json& row : rows) {
    EXPECT_EQ(row["main_gpu"], 1) << row.dump();
    EXPECT_EQ(row["gpu_device"], 1) << row.dump();
    EXPECT_EQ(row["n_gpu_layers"], 4) << row.dump();
  }
  const test::CliResult text = test::run_lokal("bench -m " + model + " -ngl 99 --device 1 -p 8 -n 2 -r 1 --no-mem-bw", 300);
  ASSERT_EQ(text.rc, 0) << text.err;
  EXPECT_NE(text.out.find("gpu: 4 layers and the output on "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find(", device 1 ("), std::string::npos) << text.out;
}

// perplexity and batch on the second GPU: the same results as on the first (and the CPU's texts), each GPU named.
TEST_F(TwoGpus, PerplexityAndBatchRunOnTheGpuTheyAreGiven) {
  const std::string q8 = test::data_path("models/real/tinytales-4m-q8_0.gguf");
  const std::string text = test::data_path("golden/ppl-text.txt");
  std::map<int, std::string> ppl;
  for (int dev : {0, 1}) {
    const test::CliResult r = test::run_lokal("perplexity -m " + q8 + " -f " + text + " -c 128 --chunks 2 -ngl 99 "
                                              "--device " + std::to_string(dev), 300);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find("gpu: 4 of 4 layers on "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("(output on the GPU), device " + std::to_string(dev) + "\n"), std::string::npos) << r.err;
    std::smatch m;
    const std::string all = r.out + "\n" + r.err;  // the final figure is the result, on stdout
    ASSERT_TRUE(std::regex_search(all, m, std::regex(R"((^|\n)PPL = ([0-9.]+) )"))) << all;
    ppl[dev] = m[2].str();
  }
  EXPECT_EQ(ppl[0], ppl[1]);  // the same kernels on the same driver: the same bits

  const std::string prompts = dir_.file("p.jsonl");
  std::ofstream(prompts) << "{\"prompt\": \"Once upon a time\", \"max_tokens\": 24, \"temperature\": 0}\n"
                         << "{\"prompt\": \"The king said\", \"max_tokens\": 24, \"temperature\": 0}\n";
  const test::CliResult cpu = test::run_lokal("batch -m " + target_ + " -f " + prompts + " -np 2", 300);
  ASSERT_EQ(cpu.rc, 0) << cpu.err;
  const test::CliResult gpu = test::run_lokal("batch -m " + target_ + " -f " + prompts + " -np 2 -ngl 2 -md " + draft_ +
                                              " -ngld 99 --device-draft 1", 300);
  ASSERT_EQ(gpu.rc, 0) << gpu.err;
  auto texts = [](const std::string& out) {
    std::vector<std::string> t;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) t.push_back(json::parse(line)["text"].get<std::string>());
    return t;
  };
  EXPECT_EQ(texts(gpu.out), texts(cpu.out));
  EXPECT_EQ(texts(cpu.out).size(), 2u);
  EXPECT_NE(gpu.err.find("gpu: 2 of 4 layers on "), std::string::npos) << gpu.err;
  EXPECT_NE(gpu.err.find("(output on the CPU), device 0\n"), std::string::npos) << gpu.err;
  EXPECT_NE(gpu.err.find("gpu: draft 2 of 2 layers on "), std::string::npos) << gpu.err;
  EXPECT_NE(gpu.err.find("(output on the GPU), device 1\n"), std::string::npos) << gpu.err;
}

// One server, models on different GPUs: `a` on GPU 0 with its draft on GPU 1, `b` on GPU 1, `cpu` on neither. Each
// answers the CPU's greedy text; what each holds on each GPU (/api/ps) equals the router's prediction (/v1/models)
// to the byte once a's two sequences have both drafted; /metrics sums the loaded models by GPU.
TEST_F(TwoGpus, ServePutsEachModelOnItsGpu) {
  const std::string cfg = dir_.file("two.toml");
  std::ofstream(cfg) << "[models.a]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\ndraft = \"" << draft_
                     << "\"\ndraft_device = 1\n"
                     << "[models.b]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\ndevice = 1\n"
                     << "[models.cpu]\nmodel = \"" << target_ << "\"\n";
  test::Server s({"--config", cfg, "--parallel", "2", "--metrics"});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client(120);
  std::map<std::string, std::map<std::string, uint64_t>> predicted;
  {
    auto r = c.Get("/v1/models");
    ASSERT_TRUE(r);
    const json models = json::parse(r->body);
    for (const json& m : models["data"])
      if (!m.contains("alias_of")) predicted[m["id"].get<std::string>()] = by_device(m["meta"]["vram_by_device"]);
  }
  ASSERT_EQ(predicted["a"].size(), 2u);
  ASSERT_EQ(predicted["b"].size(), 1u);
  EXPECT_EQ(predicted["b"].count("1"), 1u);
  EXPECT_TRUE(predicted["cpu"].empty());
  EXPECT_EQ(predicted["a"]["0"], predicted["b"]["1"]);  // the same target with the same settings

  auto complete = [&](const std::string& model, int n) {
    int st = 0;
    httplib::Client cl("127.0.0.1", s.port());
    cl.set_read_timeout(300);
    const json r = test::post(cl, "/v1/completions",
                              {{"model", model}, {"prompt", "Once upon a time"}, {"max_tokens", n}, {"temperature", 0}},
                              &st);
    EXPECT_EQ(st, 200) << model << ": " << r.dump();
    return st == 200 ? r["choices"][0]["text"].get<std::string>() : std::string();
  };
  const std::string want = complete("cpu", 40);
  ASSERT_FALSE(want.empty());
  // Two requests to a and one to b at once (the two models' schedulers step concurrently, on GPU 0 and GPU 1
  // both): a's two sequences both draft, so both of its draft caches exist on GPU 1.
  auto one = std::async(std::launch::async, complete, "a", 40);
  auto two = std::async(std::launch::async, complete, "a", 40);
  auto other = std::async(std::launch::async, complete, "b", 40);
  EXPECT_EQ(one.get(), want);
  EXPECT_EQ(two.get(), want);
  EXPECT_EQ(other.get(), want);
  EXPECT_EQ(complete("b", 40), want);

  auto r = c.Get("/api/ps");
  ASSERT_TRUE(r);
  const json ps = json::parse(r->body);
  std::map<std::string, std::map<std::string, uint64_t>> used;
  for (const json& m : ps["models"]) {
    used[m["name"].get<std::string>()] = by_device(m["vram_by_device"]);
    uint64_t sum = 0;
    for (const auto& [d, b] : used[m["name"].get<std::string>()]) sum += b;
    EXPECT_EQ(m["size_vram"].get<uint64_t>(), sum) << m.dump();
  }
  ASSERT_EQ(used.size(), 3u) << ps.dump();
  EXPECT_EQ(used["a"], predicted["a"]) << "a: used on each GPU = predicted (the draft's two caches on GPU 1)";
  EXPECT_EQ(used["b"], predicted["b"]);
  EXPECT_TRUE(used["cpu"].empty());
  EXPECT_EQ(by_device(ps["memory"]["vram_predicted_bytes"]),
            (std::map<std::string, uint64_t>{{"0", predicted["a"]["0"]},
                                             {"1", predicted["a"]["1"] + predicted["b"]["1"]}}));
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  for (const auto& [dev, bytes] : by_device(ps["memory"]["vram_predicted_bytes"]))
    EXPECT_NE(metrics->body.find("lokal_predicted_device_memory_bytes{device=\"" + dev + "\"} " +
                                 std::to_string(bytes) + "\n"),
              std::string::npos)
        << metrics->body;
  EXPECT_EQ(s.stop(), 0) << s.log();
}

// serve --vram per GPU with both GPUs real: a model's bytes count on its `device`, its draft's on `draft_device`, and
// each GPU is held to its own budget ("SIZE" every GPU, "DEV=SIZE" one). Room on GPU 1 is made by evicting a model
// that holds bytes there, never one that only sits on GPU 0 or the CPU.
TEST_F(TwoGpus, EachGpuHasItsOwnVramBudget) {
  auto config = [&](const std::string& name, const std::string& head, const std::string& extra = "") {
    const std::string cfg = dir_.file(name + ".toml");
    std::ofstream(cfg) << head << "[models.a]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\ndraft = \"" << draft_
                       << "\"\ndraft_device = 1\n"
                       << "[models.b]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\ndevice = 1\n"
                       << "[models.c]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\n"
                       << "[models.cpu]\nmodel = \"" << target_ << "\"\n" << extra;
    return cfg;
  };
  // The predictions, from a server without a budget.
  std::map<std::string, std::map<std::string, uint64_t>> predicted;
  {
    test::Server s({"--config", config("open", "")});
    ASSERT_GT(s.port(), 0) << s.log();
    auto r = s.client(60).Get("/v1/models");
    ASSERT_TRUE(r);
    const json models = json::parse(r->body);
    for (const json& m : models["data"])
      if (!m.contains("alias_of")) predicted[m["id"].get<std::string>()] = by_device(m["meta"]["vram_by_device"]);
    EXPECT_EQ(s.stop(), 0) << s.log();
  }
  const uint64_t a1 = predicted["a"]["1"], b1 = predicted["b"]["1"];
  ASSERT_GT(a1, 1u << 20);  // the 1M-parameter draft's weights alone are 2.5 MiB
  ASSERT_GT(b1, a1);
  // GPU 1 holds b or a's draft, not both; GPU 0 has no budget.
  test::Server s({"--config", config("budget", "vram = \"1=" + std::to_string(b1) + "\"\n")});
  ASSERT_GT(s.port(), 0) << s.log();
  auto c = s.client(120);
  auto loaded = [&] {
    std::set<std::string> names;
    auto r = c.Get("/api/ps");
    const json ps = r ? json::parse(r->body) : json::object();
    if (r)
      for (const json& m : ps["models"]) names.insert(m["name"].get<std::string>());
    return names;
  };
  auto use = [&](const char* m) {
    int st = 0;
    const json r = test::post(c, "/v1/completions", {{"model", m}, {"prompt", "Once upon a time"}, {"max_tokens", 4}},
                              &st);
    EXPECT_EQ(st, 200) << m << ": " << r.dump();
  };
  use("c");
  use("cpu");
  use("a");
  EXPECT_EQ(loaded(), (std::set<std::string>{"a", "c", "cpu"}));
  use("b");  // needs GPU 1: a (its draft there) goes; c (GPU 0 only) and cpu stay
  EXPECT_EQ(loaded(), (std::set<std::string>{"b", "c", "cpu"}));
  use("a");  // and back
  EXPECT_EQ(loaded(), (std::set<std::string>{"a", "c", "cpu"}));
  auto r = c.Get("/api/ps");
  ASSERT_TRUE(r);
  const json mem = json::parse(r->body)["memory"];
  EXPECT_EQ(mem["vram_budget_bytes"], 0);
  EXPECT_EQ(by_device(mem["vram_device_budget_bytes"]), (std::map<std::string, uint64_t>{{"1", b1}}));
  EXPECT_EQ(s.stop(), 0) << s.log();

  // At start: a model over one GPU's budget on its own is refused, naming the GPU and its budget.
  const test::CliResult over =
      test::run_lokal("serve --config " + config("over", "vram = \"1=1MiB\"\n") + " --port 0", 60);
  EXPECT_NE(over.rc, 0);
  EXPECT_NE(over.err.find("of device memory on GPU 1"), std::string::npos) << over.err;
  EXPECT_NE(over.err.find("more than --vram 1=1MiB gives that device (1.00 MiB)"), std::string::npos) << over.err;
  // A budget for a GPU that is not there: a warning (the budget is what the user allows).
  test::Server w({"--config", config("warn", "vram = \"2=1MiB\"\n")});
  ASSERT_GT(w.port(), 0) << w.log();
  EXPECT_NE(w.log().find("warning: --vram 2=1MiB names GPU 2, but the highest device number here is 1"),
            std::string::npos) << w.log();
  EXPECT_EQ(w.stop(), 0) << w.log();
}

// A model (or its draft) placed on a GPU this machine lacks is refused at start, as `run` refuses it, instead of
// failing on its first request; the same for a model that needs a GPU where no Vulkan device is found at all.
TEST_F(TwoGpus, AModelOnAMissingGpuIsRefusedAtStart) {
  for (const std::string& where : {std::string("device = 2\n"), std::string("draft = \"" + draft_ + "\"\ndraft_device = 2\n")}) {
    const std::string cfg = dir_.file("missing-" + std::to_string(where.size()) + ".toml");
    std::ofstream(cfg) << "[models.ok]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\n"
                       << "[models.far]\nmodel = \"" << target_ << "\"\ngpu_layers = 99\n" << where;
    const test::CliResult r = test::run_lokal("serve --config " + cfg + " --port 0", 60);
    test::expect_one_line_error(r, "model 'far' puts layers on GPU 2: no GPU to offload to: Vulkan device 2 does not "
                                   "exist (2 found: 0..1)", true);
  }
  // On the CPU (gpu_layers 0) the device setting does not matter.
  const std::string cfg = dir_.file("cpu.toml");
  std::ofstream(cfg) << "[models.cpu]\nmodel = \"" << target_ << "\"\ndevice = 5\n";
  test::Server s({"--config", cfg});
  ASSERT_GT(s.port(), 0) << s.log();
  EXPECT_EQ(s.stop(), 0) << s.log();
}

}  // namespace
