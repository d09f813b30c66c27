#include "tools/bench/suite/stats.h"

#include "gtest/gtest.h"

namespace rematcher::bench {
namespace {

TEST(Stats, SummarizeOddAndEven) {
  Spread s = Summarize({3, 1, 2});
  EXPECT_EQ(s.n, 3);
  EXPECT_DOUBLE_EQ(s.median, 2);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 3);
  EXPECT_DOUBLE_EQ(Summarize({1, 2, 3, 4}).median, 2.5);
  EXPECT_EQ(Summarize({}).n, 0);
}

TEST(Stats, PercentileNearestRank) {
  std::vector<int64_t> v;
  for (int i = 1; i <= 1000; i++) v.push_back(1001 - i);
  EXPECT_EQ(Percentile(&v, 50), 500);
  EXPECT_EQ(Percentile(&v, 99), 990);
  EXPECT_EQ(Percentile(&v, 99.9), 999);
  EXPECT_EQ(Percentile(&v, 100), 1000);
  std::vector<int64_t> empty;
  EXPECT_EQ(Percentile(&empty, 99), 0);
}

TEST(Stats, LoadgenJson) {
  const char* j =
      "{\"target\":\"198.18.0.10:8080\",\"mode\":\"closed\",\"connections\":64,\"requests\":10,"
      "\"ok\":9,\"errors\":1,\"errors_by_kind\":{\"connect\":1,\"reset\":0},"
      "\"verify_failures\":0,\"verify_failures_by_kind\":{\"length\":0},\"duration_s\":2.0,"
      "\"rps\":4.5,\"latency_us\":{\"p50\":100,\"p90\":200,\"p99\":300,\"p999\":400,\"max\":5,"
      "\"mean\":1},\"backends\":{\"b0\":4,\"b1\":5},\"backend_switches\":7}";
  auto r = ParseLoadgenJson(j);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->rps, 4.5);
  EXPECT_EQ(r->ok, 9);
  EXPECT_EQ(r->errors, 1);
  EXPECT_EQ(r->p50_us, 100);
  EXPECT_EQ(r->p99_us, 300);
  EXPECT_EQ(r->p999_us, 400);
  EXPECT_EQ(r->backends.at("b1"), 5);
  EXPECT_EQ(r->backend_switches, 7);
  EXPECT_FALSE(ParseLoadgenJson("garbage").ok());
}

TEST(Stats, WrkLine) {
  auto r = ParseWrkLine("Running 2s test\nRMBENCH rps=1000.5 ok=2001 errors=0 p50_us=10 "
                        "p99_us=20 p999_us=30 duration_s=2.000\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->rps, 1000.5);
  EXPECT_EQ(r->ok, 2001);
  EXPECT_EQ(r->p999_us, 30);
  EXPECT_FALSE(ParseWrkLine("no line").ok());
}

TEST(Stats, ProcFiles) {
  auto c = ParseProcStat("cpu  100 0 50 1000 0 0 25 0 0 0\ncpu0 1 2 3\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT(c->softirq, 0);
  EXPECT_DOUBLE_EQ(c->busy(), (100 + 50 + 25) * c->softirq / 25);
  auto p = ParsePidStatCpu("42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 30 20 0 0 20 0");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_GT(*p, 0);
  EXPECT_DOUBLE_EQ(*p, 50 * c->softirq / 25);
}

TEST(Stats, KeyValueAndCsv) {
  auto m = ParseKeyValueLines("rx 5\nrematches 7\nbad line here\n");
  EXPECT_EQ(m["rematches"], 7);
  EXPECT_EQ(m.count("bad"), 0u);
  EXPECT_EQ(CsvField("a,b"), "\"a,b\"");
  EXPECT_EQ(CsvField("x\"y"), "\"x\"\"y\"");
  EXPECT_EQ(CsvField("plain"), "plain");
}

TEST(Stats, DatapathBenchSummary) {
  // As //tools/bench:datapath_bench prints it.
  const char* out =
      "datapath_bench: 7 rounds x repeat=20000, 1000-byte payload\n"
      "                                     median        min        max\n"
      "floor: trivial xdp_tx_swap (ns/pkt)       25.0       25.0       29.0\n"
      "rematcher spliced C->B (ns/pkt)         112.0      105.0      121.0\n"
      "ratio (median of per-round ratios): 4.28x  (median/median: 4.48x)  target <= 5x: met\n";
  auto s = SummarizeDatapathBench(out);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s,
            "`floor: trivial xdp_tx_swap (ns/pkt)       25.0       25.0       29.0`; "
            "`rematcher spliced C->B (ns/pkt)         112.0      105.0      121.0`; "
            "`ratio (median of per-round ratios): 4.28x  (median/median: 4.48x)  target <= 5x: met`");
  EXPECT_FALSE(SummarizeDatapathBench("datapath_bench: failed before any round\n").ok());
}

}  // namespace
}  // namespace rematcher::bench
