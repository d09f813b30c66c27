#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

TEST(PowerOfTwoTest, NeverPicksTheBusiestOfThree) {
  // Any pair drawn contains a less busy backend than id 3.
  auto p = LinkedPolicy("seed=1");
  EXPECT_EQ(p->name(), "p2c");
  auto counts = CountPicks(
      *p, {Backend(1, 1, 1), Backend(2, 1, 2), Backend(3, 1, 3)}, 3000);
  EXPECT_EQ(counts[3], 0);
  // The least busy wins both pairs it is in: 2/3 of picks.
  EXPECT_NEAR(counts[1], 2000, 150);
  EXPECT_NEAR(counts[2], 1000, 150);
}

TEST(PowerOfTwoTest, TiesSpreadEvenly) {
  auto p = LinkedPolicy("seed=2");
  auto counts = CountPicks(*p, {Backend(1), Backend(2), Backend(3)}, 3000);
  for (int id = 1; id <= 3; ++id) EXPECT_NEAR(counts[id], 1000, 150) << id;
}

TEST(PowerOfTwoTest, SeedMakesItReproducible) {
  std::vector<rematcher::BackendInfo> bs = {Backend(1), Backend(2), Backend(3),
                                            Backend(4)};
  auto a = LinkedPolicy("seed=42");
  auto b = LinkedPolicy("seed=42");
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(a->Pick({0, bs}, {}), b->Pick({0, bs}, {}));
  }
}

TEST(PowerOfTwoTest, SingleEligible) {
  auto p = LinkedPolicy("seed=3");
  auto counts = CountPicks(*p, {Backend(1, 1, 0, 0), Backend(2, 1, 7)}, 20);
  EXPECT_EQ(counts[2], 20);
}

TEST(PowerOfTwoTest, AvoidsStalled) {
  auto p = LinkedPolicy();
  ExpectAvoidsStalled(*p);
}

TEST(PowerOfTwoTest, SkipsIneligible) {
  auto p = LinkedPolicy("seed=4");
  ExpectSkipsIneligible(*p);
}

TEST(PowerOfTwoTest, ArgsErrors) {
  EXPECT_EQ(CreateError("seed=7"), "");
  EXPECT_NE(CreateError("seed=abc")
                .find("option 'seed': 'abc' is not an unsigned integer"),
            std::string::npos)
      << CreateError("seed=abc");
  EXPECT_NE(CreateError("seed=1,choices=3")
                .find("unknown option 'choices' (accepted: seed, stick, stick_pct)"),
            std::string::npos)
      << CreateError("seed=1,choices=3");
}

TEST(PowerOfTwoTest, StaysOnATie) {
  ExpectStickiness([](const std::string& args) {
    return LinkedPolicy(args.empty() ? "seed=5" : "seed=5," + args);
  });
  for (const char* bad : {"stick=-2", "stick=x", "stick=", "stick=1.5", "stick=1000001"})
    EXPECT_NE(CreateError(bad).find("option 'stick'"), std::string::npos) << bad << ": " << CreateError(bad);
}

// By default a client stays through a quarter of its backend's count
// (stick_pct=25): 40 in flight against 30 elsewhere; stick_pct=0 moves it.
TEST(PowerOfTwoTest, StaysThroughAQuarterByDefault) {
  const std::vector<rematcher::BackendInfo> quarter = {Backend(1, 1, 30), Backend(2, 1, 40),
                                                       Backend(3, 1, 30)};
  auto p = LinkedPolicy("seed=5");
  EXPECT_EQ(CountPicksFrom(*p, quarter, 1, 300)[2], 300);
  auto off = LinkedPolicy("stick_pct=0");
  EXPECT_EQ(CountPicksFrom(*off, quarter, 1, 300)[2], 0);
}

}  // namespace
}  // namespace rematcher_policies
