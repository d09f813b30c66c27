#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

TEST(LeastOutstandingTest, PicksFewestInFlight) {
  auto p = LinkedPolicy();
  EXPECT_EQ(p->name(), "least_outstanding");
  auto counts = CountPicks(
      *p, {Backend(1, 1, 5), Backend(2, 1, 2), Backend(3, 1, 9)}, 50);
  EXPECT_EQ(counts[2], 50);
}

TEST(LeastOutstandingTest, IgnoresWeights) {
  auto p = LinkedPolicy();
  auto counts = CountPicks(*p, {Backend(1, 100, 3), Backend(2, 1, 2)}, 10);
  EXPECT_EQ(counts[2], 10);
}

TEST(LeastOutstandingTest, TiesRotate) {
  auto p = LinkedPolicy();
  // 1 and 3 tie for least; 2 is busier. Ties must alternate, not stick.
  auto counts = CountPicks(
      *p, {Backend(1, 1, 0), Backend(2, 1, 4), Backend(3, 1, 0)}, 100);
  EXPECT_EQ(counts[1], 50);
  EXPECT_EQ(counts[3], 50);
  EXPECT_EQ(counts[2], 0);
}

TEST(LeastOutstandingTest, AvoidsStalled) {
  auto p = LinkedPolicy();
  ExpectAvoidsStalled(*p);
}

TEST(LeastOutstandingTest, SkipsIneligible) {
  auto p = LinkedPolicy();
  ExpectSkipsIneligible(*p);
}

TEST(LeastOutstandingTest, RejectsAnyOption) {
  EXPECT_NE(CreateError("x=1").find("unknown option 'x'"), std::string::npos);
}

}  // namespace
}  // namespace rematcher_policies
