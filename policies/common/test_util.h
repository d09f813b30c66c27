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

// Picks `n` times on a fixed snapshot, with its pending decisions per
// backend (parallel to `bs`; the host passes them on only if there is one
// per backend); returns backend id -> count (-1 for no preference).
inline std::map<int64_t, int> CountPicks(
    rematcher::Policy& policy, const std::vector<rematcher::BackendInfo>& bs,
    const std::vector<uint32_t>& pending, int n) {
  std::map<int64_t, int> counts;
  rematcher::Snapshot snap{0, bs, pending};
  for (int i = 0; i < n; ++i) {
    auto pick = policy.Pick(snap, rematcher::Request{});
    counts[pick.has_value() ? int64_t{bs[*pick].id} : -1]++;
  }
  return counts;
}

// The same with no pending counts (a host older than ABI 1.3).
inline std::map<int64_t, int> CountPicks(
    rematcher::Policy& policy, const std::vector<rematcher::BackendInfo>& bs,
    int n) {
  return CountPicks(policy, bs, {}, n);
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


// Picks `n` times for a client now on bs[current]; backend id -> count.
inline std::map<int64_t, int> CountPicksFrom(
    rematcher::Policy& policy, const std::vector<rematcher::BackendInfo>& bs,
    size_t current, int n) {
  std::map<int64_t, int> counts;
  rematcher::Snapshot snap{0, bs};
  rematcher::Request req;
  req.current_backend = current;
  for (int i = 0; i < n; ++i) {
    auto pick = policy.Pick(snap, req);
    counts[pick.has_value() ? int64_t{bs[*pick].id} : -1]++;
  }
  return counts;
}

// A round robin asked again about the same next request (RM_REQUEST_REPEAT)
// gives the earlier answer without taking a turn, unless that backend is
// stalled or out of service now, and a repeat whose earlier choice left the
// snapshot is a fresh turn.
inline void ExpectRepeatIsNotATurn(rematcher::Policy& policy) {
  const std::vector<rematcher::BackendInfo> bs = {Backend(1), Backend(2), Backend(3)};
  rematcher::Snapshot snap{0, bs};
  std::vector<uint32_t> order;
  for (int i = 0; i < 6; ++i) {
    rematcher::Request first;
    auto pick = policy.Pick(snap, first);
    ASSERT_TRUE(pick.has_value());
    for (int r = 0; r < 3; ++r) {
      rematcher::Request again;
      again.repeat = true;
      again.previous_pick = *pick;
      EXPECT_EQ(policy.Pick(snap, again), pick) << "repeat " << r;
    }
    order.push_back(bs[*pick].id);
  }
  EXPECT_EQ(order, (std::vector<uint32_t>{1, 2, 3, 1, 2, 3}));
  // The earlier choice (the third backend) is stalled now: a turn, which
  // is the first backend's, and the rotation moves on to the second.
  std::vector<rematcher::BackendInfo> stalled = bs;
  stalled[2].flags |= RM_BACKEND_STALLED;
  rematcher::Request again;
  again.repeat = true;
  again.previous_pick = 2;
  EXPECT_EQ(policy.Pick({0, stalled}, again), 0u);
  EXPECT_EQ(policy.Pick(snap, rematcher::Request{}), 1u);
  again.previous_pick = std::nullopt;  // gone from the snapshot
  EXPECT_TRUE(policy.Pick(snap, again).has_value());
  EXPECT_EQ(policy.stats().plugin_errors, 0u);
}

// The `stick` option (Stickiness) of the load-aware built-ins, created
// through `make(args)`: ties keep a client where it is by default, more
// load than the slack moves it, stick=-1 moves on ties, a current backend
// that is no longer a candidate never holds a client, bad values are
// refused.
template <typename Make>
void ExpectStickiness(const Make& make) {
  const uint16_t stalled = RM_BACKEND_HEALTHY | RM_BACKEND_STALLED;
  const std::vector<rematcher::BackendInfo> tie = {Backend(1, 1, 2), Backend(2, 1, 2),
                                                   Backend(3, 1, 2)};
  auto p = make("");
  EXPECT_EQ(CountPicksFrom(*p, tie, 1, 300)[2], 300) << "a tie keeps the client";
  // One more in flight on the current backend than on the others: moves at
  // stick=0, stays at stick=1, moves again at two more.
  const std::vector<rematcher::BackendInfo> one_more = {Backend(1, 1, 2), Backend(2, 1, 3),
                                                        Backend(3, 1, 2)};
  EXPECT_EQ(CountPicksFrom(*p, one_more, 1, 300)[2], 0);
  auto slack = make("stick=1");
  EXPECT_EQ(CountPicksFrom(*slack, one_more, 1, 300)[2], 300);
  const std::vector<rematcher::BackendInfo> two_more = {Backend(1, 1, 2), Backend(2, 1, 4),
                                                        Backend(3, 1, 2)};
  EXPECT_EQ(CountPicksFrom(*slack, two_more, 1, 300)[2], 0);
  // stick_pct=25: the slack is a quarter of the current backend's count
  // where that is more than `stick`: 40 in flight holds the client against
  // 30, not against 29; at a count of 3 it is 0, and one more moves it.
  auto share = make("stick_pct=25");
  const std::vector<rematcher::BackendInfo> quarter = {Backend(1, 1, 30), Backend(2, 1, 40),
                                                       Backend(3, 1, 30)};
  EXPECT_EQ(CountPicksFrom(*share, quarter, 1, 300)[2], 300) << "within 25%";
  const std::vector<rematcher::BackendInfo> past = {Backend(1, 1, 29), Backend(2, 1, 40),
                                                    Backend(3, 1, 29)};
  EXPECT_EQ(CountPicksFrom(*share, past, 1, 300)[2], 0) << "past 25%";
  EXPECT_EQ(CountPicksFrom(*share, one_more, 1, 300)[2], 0) << "a quarter of 3 is 0";
  for (const char* bad : {"stick_pct=101", "stick_pct=x", "stick_pct=-5", "stick=-1,stick_pct=10"})
    EXPECT_NE(CreateError(bad).find("option 'stick"), std::string::npos)
        << bad << ": " << CreateError(bad);
  // stick=-1: a tie is broken as if the client were new.
  auto off = make("stick=-1");
  auto spread = CountPicksFrom(*off, tie, 1, 300);
  EXPECT_GT(spread[1], 30);
  EXPECT_GT(spread[3], 30);
  EXPECT_LT(spread[2], 200);
  // A stalled, draining or unhealthy current backend holds nobody, even
  // idle against busy others.
  for (uint16_t flags : {stalled, uint16_t{RM_BACKEND_HEALTHY | RM_BACKEND_DRAINING},
                         uint16_t{0}}) {
    const std::vector<rematcher::BackendInfo> out = {Backend(1, 1, 5), Backend(2, 1, 0, flags),
                                                     Backend(3, 1, 5)};
    auto counts = CountPicksFrom(*slack, out, 1, 100);
    EXPECT_EQ(counts[2], 0) << "flags " << flags;
  }
}

// The weighted policies' `stick`: ExpectStickiness at stick=0 (their
// default is -1), per unit of weight ((3 + 1) / 2 on the current backend
// against (1 + 1) / 1 is a tie, so the client stays; one more in flight
// there and it moves), and by default a tie does not hold a client.
// `base`: options every instance gets ("" or "seed=N").
inline void ExpectWeightedStickiness(const std::string& base) {
  const std::string sep = base.empty() ? "" : ",";
  ExpectStickiness([&](const std::string& args) {
    return LinkedPolicy(base + sep + (args.empty() ? "stick=0" : args));
  });
  auto p = LinkedPolicy(base + sep + "stick=0");
  const std::vector<rematcher::BackendInfo> tie = {Backend(1, 1, 1), Backend(2, 2, 3)};
  EXPECT_EQ(CountPicksFrom(*p, tie, 1, 100)[2], 100);
  const std::vector<rematcher::BackendInfo> more = {Backend(1, 1, 1), Backend(2, 2, 4)};
  EXPECT_EQ(CountPicksFrom(*p, more, 1, 100)[2], 0);
  EXPECT_NE(CreateError("stick=-5").find("option 'stick'"), std::string::npos);
  auto by_default = LinkedPolicy(base);
  const std::vector<rematcher::BackendInfo> even = {Backend(1), Backend(2), Backend(3)};
  EXPECT_LT(CountPicksFrom(*by_default, even, 1, 300)[2], 250);
}

}  // namespace rematcher_policies

#endif  // REMATCHER_POLICIES_COMMON_TEST_UTIL_H_
