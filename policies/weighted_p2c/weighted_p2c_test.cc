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
  EXPECT_NE(CreateError("sed=1").find("unknown option 'sed' (accepted: seed, stick)"),
            std::string::npos);
}

TEST(WeightedPowerOfTwoTest, StaysOnATieWithStick) {
  ExpectStickiness([](const std::string& args) {
    // The helper's "default" is stick=0 here: these default to -1.
    return LinkedPolicy(args.empty() ? "seed=5,stick=0" : "seed=5," + args);
  });
  // Per unit of weight: (3 + 1) / 2 on the current one against (1 + 1) / 1
  // is a tie, so the client stays; one more in flight there and it moves.
  auto p = LinkedPolicy("seed=5,stick=0");
  const std::vector<rematcher::BackendInfo> tie = {Backend(1, 1, 1), Backend(2, 2, 3)};
  EXPECT_EQ(CountPicksFrom(*p, tie, 1, 100)[2], 100);
  const std::vector<rematcher::BackendInfo> more = {Backend(1, 1, 1), Backend(2, 2, 4)};
  EXPECT_EQ(CountPicksFrom(*p, more, 1, 100)[2], 0);
  EXPECT_NE(CreateError("stick=-5").find("option 'stick'"), std::string::npos);
  // By default (-1) a tie does not hold a client: shares follow weights.
  auto by_default = LinkedPolicy("seed=5");
  const std::vector<rematcher::BackendInfo> even = {Backend(1), Backend(2), Backend(3)};
  EXPECT_LT(CountPicksFrom(*by_default, even, 1, 300)[2], 250);
}

}  // namespace
}  // namespace rematcher_policies
