#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

TEST(RoundRobinTest, NameAndAbi) {
  auto p = LinkedPolicy();
  EXPECT_EQ(p->name(), "rr");
  EXPECT_EQ(p->abi_version().major, RM_POLICY_ABI_MAJOR);
}

TEST(RoundRobinTest, CyclesInOrder) {
  auto p = LinkedPolicy();
  std::vector<rematcher::BackendInfo> bs = {Backend(1), Backend(2), Backend(3)};
  rematcher::Snapshot snap{0, bs};
  std::vector<size_t> seq;
  for (int i = 0; i < 6; ++i) seq.push_back(*p->Pick(snap, {}));
  EXPECT_EQ(seq, (std::vector<size_t>{0, 1, 2, 0, 1, 2}));
}

TEST(RoundRobinTest, IgnoresLoadAndWeights) {
  auto p = LinkedPolicy();
  auto counts = CountPicks(*p, {Backend(1, 9, 100), Backend(2, 1, 0)}, 1000);
  EXPECT_EQ(counts[1], 500);
  EXPECT_EQ(counts[2], 500);
}

TEST(RoundRobinTest, SkipsIneligible) {
  auto p = LinkedPolicy();
  ExpectSkipsIneligible(*p);
}

TEST(RoundRobinTest, SkipsIneligibleInRotation) {
  auto p = LinkedPolicy();
  auto counts = CountPicks(
      *p, {Backend(1), Backend(2, 1, 0, 0), Backend(3), Backend(4)}, 300);
  EXPECT_EQ(counts[1], 100);
  EXPECT_EQ(counts[2], 0);
  EXPECT_EQ(counts[3], 100);
  EXPECT_EQ(counts[4], 100);
}

TEST(RoundRobinTest, SurvivesShrinkingSnapshot) {
  auto p = LinkedPolicy();
  std::vector<rematcher::BackendInfo> big = {Backend(1), Backend(2), Backend(3),
                                             Backend(4)};
  std::vector<rematcher::BackendInfo> small = {Backend(1)};
  for (int i = 0; i < 3; ++i) p->Pick({0, big}, {});
  EXPECT_EQ(p->Pick({0, small}, {}), 0u);
  EXPECT_EQ(p->stats().plugin_errors, 0u);
}

TEST(RoundRobinTest, RejectsAnyOption) {
  EXPECT_EQ(CreateError(""), "");
  EXPECT_NE(
      CreateError("seed=1").find("unknown option 'seed' (accepted: none)"),
      std::string::npos)
      << CreateError("seed=1");
}

TEST(RoundRobinTest, RepeatIsNotATurn) {
  auto p = LinkedPolicy();
  ExpectRepeatIsNotATurn(*p);
}

}  // namespace
}  // namespace rematcher_policies
