// Synthetic snapshots for policy unit tests. Tests load each policy through
// the host's own validation (WrapPolicyEntry), i.e. what the core will see.
#ifndef REMATCHER_POLICIES_COMMON_TEST_UTIL_H_
#define REMATCHER_POLICIES_COMMON_TEST_UTIL_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "lb/policy.h"
#include "lb/policy_loader.h"
#include "plugins/rematcher_policy.h"

namespace rematcher_policies {

inline rematcher::BackendInfo Backend(uint32_t id, uint32_t weight = 1,
                                      uint32_t outstanding = 0,
                                      uint16_t flags = RM_BACKEND_HEALTHY) {
  rematcher::BackendInfo b = {};
  b.id = id;
  b.weight = weight;
  b.outstanding = outstanding;
  b.flags = flags;
  return b;
}

// The policy linked into this test binary, created with `args`.
inline std::unique_ptr<rematcher::Policy> LinkedPolicy(
    const std::string& args = "") {
  auto policy =
      rematcher::WrapPolicyEntry(rematcher_policy_entry(), args, "linked-in");
  EXPECT_TRUE(policy.ok()) << policy.status();
  return policy.ok() ? *std::move(policy) : nullptr;
}

// The error create() gives for `args` (empty if it succeeded).
inline std::string CreateError(const std::string& args) {
  auto policy =
      rematcher::WrapPolicyEntry(rematcher_policy_entry(), args, "linked-in");
  return policy.ok() ? "" : std::string(policy.status().message());
}

// Picks `n` times on a fixed snapshot; returns backend id -> count (-1 for
// no preference).
inline std::map<int64_t, int> CountPicks(
    rematcher::Policy& policy, const std::vector<rematcher::BackendInfo>& bs,
    int n) {
  std::map<int64_t, int> counts;
  rematcher::Snapshot snap{0, bs};
  for (int i = 0; i < n; ++i) {
    auto pick = policy.Pick(snap, rematcher::Request{});
    counts[pick.has_value() ? int64_t{bs[*pick].id} : -1]++;
  }
  return counts;
}

// Every load-aware built-in prefers a backend that is not stalled, even an
// idle stalled one against busy others, and falls back to the stalled ones
// when every eligible backend is stalled.
inline void ExpectAvoidsStalled(rematcher::Policy& policy) {
  const uint16_t stalled = RM_BACKEND_HEALTHY | RM_BACKEND_STALLED;
  auto counts = CountPicks(
      policy, {Backend(1, 1, 1, stalled), Backend(2, 1, 6), Backend(3, 1, 7)}, 200);
  EXPECT_EQ(counts[1], 0);
  EXPECT_EQ(counts[2] + counts[3], 200);
  // All stalled: the usual choice among them (never "no preference").
  counts = CountPicks(policy, {Backend(1, 1, 1, stalled), Backend(2, 1, 9, stalled)}, 100);
  EXPECT_EQ(counts[-1], 0);
  EXPECT_GT(counts[1], 0);
}

// Every built-in must skip ineligible backends and give "no preference" when
// nothing is eligible. Shared so each policy test states it in one line.
inline void ExpectSkipsIneligible(rematcher::Policy& policy) {
  std::vector<rematcher::BackendInfo> bs = {
      Backend(10, 1, 0, 0),                                         // unhealthy
      Backend(11, 1, 0, RM_BACKEND_HEALTHY | RM_BACKEND_DRAINING),  // draining
      Backend(12, 0, 0),                                            // weight 0
      Backend(13, 1, 50),  // the only eligible one, and the busiest
      Backend(14, 5, 0, RM_BACKEND_DRAINING),  // draining, not healthy
  };
  auto counts = CountPicks(policy, bs, 200);
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[13], 200);

  std::vector<rematcher::BackendInfo> none = {bs[0], bs[1], bs[2], bs[4]};
  auto none_counts = CountPicks(policy, none, 50);
  EXPECT_EQ(none_counts.size(), 1u);
  EXPECT_EQ(none_counts[-1], 50);
  EXPECT_EQ(policy.stats().plugin_errors, 0u);
}

}  // namespace rematcher_policies

#endif  // REMATCHER_POLICIES_COMMON_TEST_UTIL_H_
