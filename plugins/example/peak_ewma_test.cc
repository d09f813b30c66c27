#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

rematcher::BackendInfo WithLatency(uint32_t id, uint32_t outstanding,
                                   uint64_t ewma_ns) {
  rematcher::BackendInfo b = Backend(id, 1, outstanding);
  b.latency_ewma_first_byte_ns = ewma_ns;
  return b;
}

TEST(PeakEwmaTest, TwoBackendsLowerScoreAlwaysWins) {
  auto p = LinkedPolicy("seed=1");
  EXPECT_EQ(p->name(), "peak_ewma");
  // 1: 10ms * 1 = 10ms; 2: 2ms * (3+1) = 8ms.
  auto counts = CountPicks(
      *p, {WithLatency(1, 0, 10000000), WithLatency(2, 3, 2000000)}, 100);
  EXPECT_EQ(counts[2], 100);
}

TEST(PeakEwmaTest, NeverPicksWorstOfThree) {
  auto p = LinkedPolicy("seed=2");
  auto counts =
      CountPicks(*p,
                 {WithLatency(1, 0, 1000000), WithLatency(2, 0, 2000000),
                  WithLatency(3, 0, 9000000)},
                 3000);
  EXPECT_EQ(counts[3], 0);
  EXPECT_NEAR(counts[1], 2000, 150);
}

// The score is the first byte's latency, whatever the last byte's: that one
// runs until the client acknowledges the response, which a client waiting
// to send its next request delays alike on every backend.
TEST(PeakEwmaTest, ScoresTheFirstByteNotTheLast) {
  auto p = LinkedPolicy("seed=5");
  rematcher::BackendInfo fast = WithLatency(1, 0, 200000);
  rematcher::BackendInfo slow = WithLatency(2, 0, 1000000);
  fast.latency_ewma_last_byte_ns = 12000000;
  slow.latency_ewma_last_byte_ns = 11000000;
  EXPECT_EQ(CountPicks(*p, {fast, slow}, 100)[1], 100);
}

// Load is the requests in flight: the decisions for other clients' next
// requests that the host counts in `outstanding` (tens per backend in an
// open loop) are left out, unless count_pending=1.
TEST(PeakEwmaTest, WeighsRequestsInFlightNotPendingDecisions) {
  // fast: 0.2 ms x (30 - 29 pending + 1) = 0.4; slow: 1 ms x (5 - 5 + 1) = 1.
  // Counting the decisions: 0.2 x 31 = 6.2 against 1 x 6 = 6.
  std::vector<rematcher::BackendInfo> bs = {WithLatency(1, 30, 200000),
                                            WithLatency(2, 5, 1000000)};
  const std::vector<uint32_t> pending = {29, 5};
  EXPECT_EQ(CountPicks(*LinkedPolicy("seed=6"), bs, pending, 100)[1], 100);
  EXPECT_EQ(CountPicks(*LinkedPolicy("seed=6,count_pending=1"), bs, pending, 100)[2], 100);
  // A host that gives no pending counts (older than ABI 1.3, or not one per
  // backend): everything outstanding is load.
  EXPECT_EQ(CountPicks(*LinkedPolicy("seed=6"), bs, 100)[2], 100);
  EXPECT_EQ(CountPicks(*LinkedPolicy("seed=6"), bs, {29}, 100)[2], 100);
}

TEST(PeakEwmaTest, UnknownLatencyUsesDefault) {
  // No sample yet: assumed 1ms by default, so it beats a known 5ms backend,
  // and loses to it when told to assume 10ms.
  std::vector<rematcher::BackendInfo> bs = {WithLatency(1, 0, 0),
                                            WithLatency(2, 0, 5000000)};
  EXPECT_EQ(CountPicks(*LinkedPolicy("seed=3"), bs, 20)[1], 20);
  EXPECT_EQ(CountPicks(*LinkedPolicy("seed=3,unknown_latency_ns=10000000"), bs,
                       20)[2],
            20);
}

TEST(PeakEwmaTest, AvoidsStalledBackends) {
  auto p = LinkedPolicy("seed=7");
  ExpectAvoidsStalled(*p);
}

TEST(PeakEwmaTest, SkipsIneligible) {
  auto p = LinkedPolicy("seed=4");
  ExpectSkipsIneligible(*p);
}

TEST(PeakEwmaTest, ArgsErrors) {
  EXPECT_NE(CreateError("unknown_latency_ns=0").find("must be > 0"),
            std::string::npos);
  EXPECT_NE(CreateError("count_pending=2").find("must be 0 or 1"), std::string::npos);
  EXPECT_NE(CreateError("latency=1").find("unknown option 'latency' (accepted: "
                                          "count_pending, seed, unknown_latency_ns)"),
            std::string::npos)
      << CreateError("latency=1");
}

}  // namespace
}  // namespace rematcher_policies
