// core/mmap: the file mapping, the --no-mmap copy, and writable() (the repacking loader's private
// copy of a byte range, moved over the mapping in huge pages). A file of 9 MiB + 123 bytes with
// random bytes covers whole 2 MiB stretches, partial pages at both ends and the 64 MiB chunking's
// single-chunk case; ranges start at odd offsets.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "core/error.h"
#include "core/mmap.h"

using namespace lokal;

namespace {

// Index of the first byte where a and b differ (or of the shorter one's end), -1 if equal: a failure
// names the spot instead of printing megabytes.
long first_diff(const std::string& a, const std::string& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i)
    if (a[i] != b[i]) return static_cast<long>(i);
  return a.size() == b.size() ? -1 : static_cast<long>(n);
}

class MmapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "lokal-mmap-test-" + std::to_string(::getpid()) + ".bin";
    std::mt19937 rng(11);
    bytes_.resize((size_t{9} << 20) + 123);
    for (auto& c : bytes_) c = static_cast<char>(rng());
    std::ofstream(path_, std::ios::binary).write(bytes_.data(), static_cast<std::streamsize>(bytes_.size()));
  }
  void TearDown() override { std::remove(path_.c_str()); }
  std::string on_disk() const {
    std::ifstream f(path_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  std::string view(const MappedFile& m) const { return std::string(reinterpret_cast<const char*>(m.data()), m.size()); }
  std::string path_, bytes_;
};

TEST_F(MmapTest, WritableRangesAreFaithfulPrivateCopies) {
  for (bool use_mmap : {true, false}) {
    SCOPED_TRACE(use_mmap ? "mmap" : "read into memory");
    MappedFile m(path_, use_mmap);
    EXPECT_EQ(m.is_mapped(), use_mmap);
    ASSERT_EQ(first_diff(view(m), bytes_), -1);
    std::string expect = bytes_;
    // First range: odd start and length, spans several 2 MiB stretches.
    const size_t o1 = 4097 + 3, n1 = (size_t{5} << 20) + 77;
    uint8_t* p = m.writable(o1, n1);
    ASSERT_EQ(p, m.data() + o1) << "the range must stay at its address";
    EXPECT_EQ(first_diff(view(m), bytes_), -1) << "making a range writable must not change any byte";
    for (size_t i = 0; i < n1; i += 4093) p[i] = static_cast<uint8_t>(p[i] ^ 0x5a), expect[o1 + i] = static_cast<char>(p[i]);
    p[n1 - 1] = 0x11, expect[o1 + n1 - 1] = 0x11;
    // Second range overlaps the first one's tail and runs to the end of the file: the first range's
    // writes must survive it.
    const size_t o2 = o1 + n1 - 1000, n2 = bytes_.size() - o2;
    uint8_t* q = m.writable(o2, n2);
    EXPECT_EQ(first_diff(view(m), expect), -1) << "a second writable range must keep what was written through the first";
    q[n2 - 1] = 0x22, expect[o2 + n2 - 1] = 0x22;
    EXPECT_EQ(first_diff(view(m), expect), -1);
    EXPECT_EQ(m.writable(bytes_.size(), 0), m.data() + bytes_.size());
    EXPECT_THROW(m.writable(bytes_.size() - 10, 11), Error);
    EXPECT_THROW(m.writable(bytes_.size() + 1, 0), Error);
    EXPECT_EQ(first_diff(on_disk(), bytes_), -1) << "the file on disk must never change";
  }
}

// A range copied fresh from the file (read from the file, not from the mapping) that ends at the
// file's end, which is not a page boundary: the bytes up to the end are the file's, nothing past it
// is needed, and a later range overlapping it is copied from memory (keeps the writes).
TEST_F(MmapTest, WritableRangeToTheEndOfTheFileIsReadFromTheFile) {
  MappedFile m(path_, true);
  std::string expect = bytes_;
  const size_t o = (size_t{3} << 20) + 5, n = bytes_.size() - o;
  uint8_t* p = m.writable(o, n);
  ASSERT_EQ(first_diff(view(m), bytes_), -1);
  p[n - 1] = 0x33, expect[o + n - 1] = 0x33;
  p[0] = 0x44, expect[o] = 0x44;
  uint8_t* q = m.writable(10, o + 100);
  q[5] = 0x55, expect[15] = 0x55;
  EXPECT_EQ(first_diff(view(m), expect), -1);
  EXPECT_EQ(first_diff(on_disk(), bytes_), -1);
}

TEST_F(MmapTest, MissingFileIsAClearError) {
  for (bool use_mmap : {true, false}) {
    try {
      MappedFile m(path_ + ".missing", use_mmap);
      FAIL() << "opening a missing file must throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(".missing: no such file"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
