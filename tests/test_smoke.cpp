#include <gtest/gtest.h>
#include "core/gguf.h"
#include "support/test_data.h"
TEST(Smoke, OpensModel) {
  auto f = lokal::GGUFFile::open(lokal::test::data_path("models/real/stories260K.gguf"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_str("general.architecture"), "llama");
  EXPECT_GT(f->tensors().size(), 10u);
}
