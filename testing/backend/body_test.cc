#include "testing/backend/body.h"

#include <string>

#include "gtest/gtest.h"

namespace rematcher::backend {
namespace {

TEST(BodyTest, FillMatchesBytewiseDefinitionAtAnyOffset) {
  const uint64_t seed = 42;
  std::string whole(1000, '\0');
  FillBody(seed, 0, whole.data(), whole.size());
  for (uint64_t i = 0; i < whole.size(); ++i) {
    ASSERT_EQ(static_cast<uint8_t>(whole[i]), BodyByte(seed, i)) << i;
    ASSERT_EQ(static_cast<uint8_t>(whole[i]),
              static_cast<uint8_t>(BodyWord(seed, i / 8) >> (8 * (i % 8))));
  }
  for (uint64_t off : {0, 1, 3, 7, 8, 9, 500}) {
    for (size_t n : {0, 1, 5, 8, 17, 100}) {
      std::string part(n, '\0');
      FillBody(seed, off, part.data(), n);
      EXPECT_EQ(part, whole.substr(off, n)) << off << "+" << n;
    }
  }
}

TEST(BodyTest, SeedsDiffer) {
  std::string a(64, '\0'), b(64, '\0');
  FillBody(0, 0, a.data(), a.size());
  FillBody(1, 0, b.data(), b.size());
  EXPECT_NE(a, b);
}

TEST(BodyTest, FnvKnownVectors) {
  // Published FNV-1a-64 test vectors.
  EXPECT_EQ(Fnv1a64Of("", 0), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fnv1a64Of("a", 1), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(Fnv1a64Of("foobar", 6), 0x85944171f73967e8ULL);
  EXPECT_EQ(FnvHex(0xaf63dc4c8601ec8cULL), "af63dc4c8601ec8c");
  EXPECT_EQ(FnvHex(1), "0000000000000001");
}

TEST(BodyTest, BodyFnvMatchesOneShot) {
  for (uint64_t size : {0, 1, 100, 16 * 1024, 16 * 1024 + 3, 100000}) {
    std::string body(size, '\0');
    FillBody(7, 0, body.data(), body.size());
    EXPECT_EQ(BodyFnv(7, size), Fnv1a64Of(body.data(), body.size())) << size;
  }
}

}  // namespace
}  // namespace rematcher::backend
