#include "support/test_data.h"

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cctype>
#include <cstdio>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace lokal::test {

std::string test_data_dir() {
  const char* env = std::getenv("LOKAL_TEST_DATA");
  std::string dir = env && *env ? env : LOKAL_TEST_DATA_DEFAULT;
  if (!fs::is_directory(dir) || !fs::exists(fs::path(dir) / "README.md"))
    throw std::runtime_error("shared test data not found at '" + dir +
                             "' (set LOKAL_TEST_DATA to the folder holding models/ and golden/)");
  return dir;
}

std::string data_path(const std::string& rel) {
  std::string p = test_data_dir() + "/" + rel;
  if (!fs::exists(p)) throw std::runtime_error("missing test data file: " + p);
  return p;
}

std::string binary_dir() { return LOKAL_BINARY_DIR; }

std::string vocab_dir() {
  static std::mutex mu;
  std::lock_guard<std::mutex> lk(mu);
  std::string out = binary_dir() + "/test-vocab";
  if (!fs::exists(out + "/.extracted")) {
    fs::create_directories(out);
    std::string archive = data_path("tokenizers/vocab-gguf.tar.xz");
    std::string cmd = "cd '" + out + "' && tar xJf '" + archive + "'";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("failed to extract " + archive);
    std::ofstream(out + "/.extracted") << "ok\n";
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CliResult run_lokal(const std::string& args, int timeout_s) {
  static std::atomic<int> counter{0};
  const std::string bin = binary_dir() + "/src/lokal";
  const std::string err_file = (fs::temp_directory_path() / ("lokal_cli_err_" + std::to_string(::getpid()) + "_" +
                                                             std::to_string(counter++))).string();
  const std::string limit = timeout_s > 0 ? "timeout -k 5 " + std::to_string(timeout_s) + " " : "";
  const std::string cmd = limit + "'" + bin + "' " + args + " 2>'" + err_file + "'";
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("popen failed");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  r.err = read_file(err_file);
  fs::remove(err_file);
  return r;
}

void expect_one_line_error(const CliResult& r, const std::string& must_contain, bool no_stdout) {
  EXPECT_NE(r.rc, 0);
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected exactly one line, got: " << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << "message: " << r.err;
  if (no_stdout) {
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TempDir::TempDir(const std::string& prefix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "_" + info->name() : "global";
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  path_ = fs::temp_directory_path() / (prefix + "_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

size_t TempDir::n_files() const {
  return static_cast<size_t>(std::distance(fs::directory_iterator(path_), fs::directory_iterator()));
}

}  // namespace lokal::test
