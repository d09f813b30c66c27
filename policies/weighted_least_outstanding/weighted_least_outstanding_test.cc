#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

TEST(WeightedLeastOutstandingTest, LoadPerWeight) {
  auto p = LinkedPolicy();
  EXPECT_EQ(p->name(), "weighted_least_outstanding");
  // (3+1)/4 = 1.0 vs (1+1)/1 = 2.0: the heavier, busier backend wins.
  EXPECT_EQ(CountPicks(*p, {Backend(1, 1, 1), Backend(2, 4, 3)}, 10)[2], 10);
  // (4+1)/4 = 1.25 vs (0+1)/1 = 1.0: now the light one wins.
  EXPECT_EQ(CountPicks(*p, {Backend(1, 1, 0), Backend(2, 4, 4)}, 10)[1], 10);
}

TEST(WeightedLeastOutstandingTest, InFlightSettlesInProportionToWeights) {
  // Feed each pick back as one more request in flight: the counts must grow
  // in proportion to the weights (1:2:5).
  auto p = LinkedPolicy();
  std::vector<rematcher::BackendInfo> bs = {Backend(1, 1), Backend(2, 2),
                                            Backend(3, 5)};
  for (int i = 0; i < 800; ++i) bs[*p->Pick({0, bs}, {})].outstanding++;
  EXPECT_NEAR(bs[0].outstanding, 100, 2);
  EXPECT_NEAR(bs[1].outstanding, 200, 2);
  EXPECT_NEAR(bs[2].outstanding, 500, 2);
}

TEST(WeightedLeastOutstandingTest, TiesRotate) {
  auto p = LinkedPolicy();
  auto counts = CountPicks(
      *p, {Backend(1, 2, 1), Backend(2, 1, 0), Backend(3, 4, 9)}, 100);
  // 1: 2/2 = 1, 2: 1/1 = 1, 3: 10/4 = 2.5.
  EXPECT_EQ(counts[1], 50);
  EXPECT_EQ(counts[2], 50);
}

TEST(WeightedLeastOutstandingTest, NoOverflowWithHugeValues) {
  auto p = LinkedPolicy();
  auto counts = CountPicks(
      *p, {Backend(1, UINT32_MAX, UINT32_MAX - 1), Backend(2, UINT32_MAX, 0)},
      5);
  EXPECT_EQ(counts[2], 5);
}

TEST(WeightedLeastOutstandingTest, AvoidsStalled) {
  auto p = LinkedPolicy();
  ExpectAvoidsStalled(*p);
}

TEST(WeightedLeastOutstandingTest, SkipsIneligible) {
  auto p = LinkedPolicy();
  ExpectSkipsIneligible(*p);
}

TEST(WeightedLeastOutstandingTest, RejectsUnknownOptions) {
  EXPECT_NE(CreateError("bias=1").find("unknown option 'bias'"),
            std::string::npos);
}

TEST(WeightedLeastOutstandingTest, StaysOnATieWithStick) { ExpectWeightedStickiness(""); }

}  // namespace
}  // namespace rematcher_policies
