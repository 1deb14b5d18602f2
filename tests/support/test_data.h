// tests/support/test_data.h - where the shared test data lives.
//
// One setting: the environment variable LOKAL_TEST_DATA, else the CMake cache value
// LOKAL_TEST_DATA (default ../shared beside the checkout). If the folder is missing the
// tests FAIL (never skip): test_data_dir() throws, which gtest reports as a failure.
#pragma once
#include <filesystem>
#include <string>

namespace lokal::test {

// Whether this test binary is built with AddressSanitizer (shadow memory changes RSS; everything runs ~10x slower).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

std::string test_data_dir();                       // throws std::runtime_error if missing
std::string data_path(const std::string& rel);     // test_data_dir() + "/" + rel, must exist
std::string binary_dir();                          // the CMake build directory
// Extracted vocab GGUFs (tokenizers/vocab-gguf.tar.xz unpacked once into the build dir).
std::string vocab_dir();
std::string read_file(const std::string& path);

// Runs the built `lokal` binary with `args` (a shell-quoted argument string) and captures
// its exit status, stdout and stderr.
struct CliResult {
  int rc;
  std::string out, err;
};
CliResult run_lokal(const std::string& args, int timeout_s = 0);  // timeout_s > 0: killed after it (rc 124)

// Checks a failed command: non-zero status, exactly one stderr line "error: ...", containing `must_contain`;
// with no_stdout, nothing on stdout either.
void expect_one_line_error(const CliResult& r, const std::string& must_contain, bool no_stdout = false);

// A fresh folder for the running test (named after it and the process, so parallel test processes never share
// one), removed with everything in it when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "lokal");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  size_t n_files() const;

 private:
  std::filesystem::path path_;
};

}  // namespace lokal::test
