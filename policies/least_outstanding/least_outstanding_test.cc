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

TEST(LeastOutstandingTest, RepeatsDoNotTurnTheTieRotation) {
  auto p = LinkedPolicy();
  const std::vector<rematcher::BackendInfo> bs = {Backend(1, 1, 0), Backend(2, 1, 0)};
  rematcher::Snapshot snap{0, bs};
  std::vector<uint32_t> order;
  for (int i = 0; i < 4; ++i) {
    auto pick = p->Pick(snap, rematcher::Request{});
    ASSERT_TRUE(pick.has_value());
    rematcher::Request again;
    again.repeat = true;
    again.previous_pick = *pick;
    EXPECT_EQ(p->Pick(snap, again), pick);
    order.push_back(bs[*pick].id);
  }
  EXPECT_EQ(order, (std::vector<uint32_t>{1, 2, 1, 2}));
}

TEST(LeastOutstandingTest, AvoidsStalled) {
  auto p = LinkedPolicy();
  ExpectAvoidsStalled(*p);
}

TEST(LeastOutstandingTest, SkipsIneligible) {
  auto p = LinkedPolicy();
  ExpectSkipsIneligible(*p);
}

TEST(LeastOutstandingTest, RejectsUnknownOptions) {
  EXPECT_NE(CreateError("x=1").find("unknown option 'x'"), std::string::npos);
}

TEST(LeastOutstandingTest, StaysOnATie) {
  ExpectStickiness([](const std::string& args) {
    return LinkedPolicy(args.empty() ? "" : "" + args);
  });
  for (const char* bad : {"stick=-2", "stick=x", "stick=", "stick=1.5", "stick=1000001"})
    EXPECT_NE(CreateError(bad).find("option 'stick'"), std::string::npos) << bad << ": " << CreateError(bad);
}

// By default a client stays through a quarter of its backend's count
// (stick_pct=25): 40 in flight against 30 elsewhere; stick_pct=0 moves it.
TEST(LeastOutstandingTest, StaysThroughAQuarterByDefault) {
  const std::vector<rematcher::BackendInfo> quarter = {Backend(1, 1, 30), Backend(2, 1, 40),
                                                       Backend(3, 1, 30)};
  auto p = LinkedPolicy();
  EXPECT_EQ(CountPicksFrom(*p, quarter, 1, 300)[2], 300);
  auto off = LinkedPolicy("stick_pct=0");
  EXPECT_EQ(CountPicksFrom(*off, quarter, 1, 300)[2], 0);
}

}  // namespace
}  // namespace rematcher_policies
