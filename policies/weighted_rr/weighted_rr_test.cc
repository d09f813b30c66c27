#include <gtest/gtest.h>

#include <string>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

TEST(WeightedRoundRobinTest, ExactShareOverEachCycle) {
  auto p = LinkedPolicy();
  EXPECT_EQ(p->name(), "weighted_rr");
  std::vector<rematcher::BackendInfo> bs = {Backend(1, 5), Backend(2, 1),
                                            Backend(3, 2)};
  for (int cycle = 0; cycle < 10; ++cycle) {
    auto counts = CountPicks(*p, bs, 8);  // one cycle = sum of weights
    EXPECT_EQ(counts[1], 5);
    EXPECT_EQ(counts[2], 1);
    EXPECT_EQ(counts[3], 2);
  }
}

TEST(WeightedRoundRobinTest, SmoothInterleaving) {
  // nginx's classic example: weights 5,1,1 -> a a b a c a a.
  auto p = LinkedPolicy();
  std::vector<rematcher::BackendInfo> bs = {Backend('a', 5), Backend('b', 1),
                                            Backend('c', 1)};
  std::string seq;
  for (int i = 0; i < 7; ++i)
    seq += static_cast<char>(bs[*p->Pick({0, bs}, {})].id);
  EXPECT_EQ(seq, "aabacaa");
}

TEST(WeightedRoundRobinTest, IgnoresLoad) {
  auto p = LinkedPolicy();
  auto counts = CountPicks(*p, {Backend(1, 1, 1000), Backend(2, 1, 0)}, 100);
  EXPECT_EQ(counts[1], 50);
}

TEST(WeightedRoundRobinTest, FollowsIdsWhenIndicesMove) {
  auto p = LinkedPolicy();
  std::vector<rematcher::BackendInfo> bs = {Backend(1, 3), Backend(2, 1)};
  std::vector<rematcher::BackendInfo> swapped = {bs[1], bs[0]};
  std::map<uint32_t, int> counts;
  for (int i = 0; i < 400; ++i) {
    auto& s = (i % 3 == 0) ? swapped : bs;
    counts[s[*p->Pick({0, s}, {})].id]++;
  }
  EXPECT_EQ(counts[1], 300);
  EXPECT_EQ(counts[2], 100);
}

TEST(WeightedRoundRobinTest, ForgetsRemovedBackends) {
  auto p = LinkedPolicy();
  // Many short-lived backends, then one: must keep working (no unbounded
  // state, no stale credit steering picks).
  for (uint32_t id = 100; id < 400; ++id) {
    std::vector<rematcher::BackendInfo> bs = {Backend(id, 2), Backend(1)};
    p->Pick({0, bs}, {});
  }
  EXPECT_EQ(CountPicks(*p, {Backend(1)}, 5)[1], 5);
}

TEST(WeightedRoundRobinTest, SkipsIneligible) {
  auto p = LinkedPolicy();
  ExpectSkipsIneligible(*p);
}

TEST(WeightedRoundRobinTest, RejectsAnyOption) {
  EXPECT_NE(CreateError("seed=1").find("unknown option 'seed'"),
            std::string::npos);
}

TEST(WeightedRoundRobinTest, RepeatIsNotATurn) {
  auto p = LinkedPolicy();
  ExpectRepeatIsNotATurn(*p);
}

}  // namespace
}  // namespace rematcher_policies
