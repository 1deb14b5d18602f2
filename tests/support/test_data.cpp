#include "support/test_data.h"

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

}  // namespace lokal::test
