#include <gtest/gtest.h>

#include "policies/common/test_util.h"

namespace rematcher_policies {
namespace {

rematcher::BackendInfo WithLatency(uint32_t id, uint32_t outstanding,
                                   uint64_t ewma_ns) {
  rematcher::BackendInfo b = Backend(id, 1, outstanding);
  b.latency_ewma_last_byte_ns = ewma_ns;
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

TEST(PeakEwmaTest, SkipsIneligible) {
  auto p = LinkedPolicy("seed=4");
  ExpectSkipsIneligible(*p);
}

TEST(PeakEwmaTest, ArgsErrors) {
  EXPECT_NE(CreateError("unknown_latency_ns=0").find("must be > 0"),
            std::string::npos);
  EXPECT_NE(
      CreateError("latency=1")
          .find(
              "unknown option 'latency' (accepted: seed, unknown_latency_ns)"),
      std::string::npos)
      << CreateError("latency=1");
}

}  // namespace
}  // namespace rematcher_policies
