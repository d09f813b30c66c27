#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

TEST(WeightedPowerOfTwoTest, InFlightFollowsWeights) {
  // Feed each pick back as one more request in flight; the in-flight counts
  // must end up roughly in proportion to the weights (1:2:5).
  auto p = LinkedPolicy("seed=5");
  EXPECT_EQ(p->name(), "weighted_p2c");
  std::vector<rematcher::BackendInfo> bs = {Backend(1, 1), Backend(2, 2),
                                            Backend(3, 5)};
  for (int i = 0; i < 8000; ++i) bs[*p->Pick({0, bs}, {})].outstanding++;
  EXPECT_NEAR(bs[0].outstanding, 1000, 150);
  EXPECT_NEAR(bs[1].outstanding, 2000, 200);
  EXPECT_NEAR(bs[2].outstanding, 5000, 300);
}

TEST(WeightedPowerOfTwoTest, ComparesLoadPerWeight) {
  // Two backends: every pick compares both. (5+1)/2 = 3 vs (1+1)/1 = 2.
  auto p = LinkedPolicy("seed=6");
  EXPECT_EQ(CountPicks(*p, {Backend(1, 2, 5), Backend(2, 1, 1)}, 50)[2], 50);
}

TEST(WeightedPowerOfTwoTest, EqualWeightsEqualLoadSpreadEvenly) {
  auto p = LinkedPolicy("seed=7");
  auto counts =
      CountPicks(*p, {Backend(1, 3), Backend(2, 3), Backend(3, 3)}, 3000);
  for (int id = 1; id <= 3; ++id) EXPECT_NEAR(counts[id], 1000, 150) << id;
}

TEST(WeightedPowerOfTwoTest, AvoidsStalled) {
  auto p = LinkedPolicy();
  ExpectAvoidsStalled(*p);
}

TEST(WeightedPowerOfTwoTest, SkipsIneligible) {
  auto p = LinkedPolicy("seed=8");
  ExpectSkipsIneligible(*p);
}

TEST(WeightedPowerOfTwoTest, ArgsErrors) {
  EXPECT_NE(CreateError("seed=").find("is not an unsigned integer"),
            std::string::npos);
  EXPECT_NE(CreateError("sed=1").find("unknown option 'sed' (accepted: seed, stick, stick_pct)"),
            std::string::npos);
}

TEST(WeightedPowerOfTwoTest, StaysOnATieWithStick) { ExpectWeightedStickiness("seed=5"); }

}  // namespace
}  // namespace rematcher_policies
