#include "testing/testbed/nstat.h"

#include "gtest/gtest.h"

namespace rematcher::testbed {
namespace {

TEST(NstatTest, ParsesAbsoluteOutput) {
  NstatCounters c = ParseNstat(
      "#kernel\n"
      "IpInReceives                    3328               0.0\n"
      "TcpInCsumErrors                 0                  0.0\n"
      "TcpExtPAWSEstab                 18446744073709551615 0.0\n"
      "garbage\n");
  EXPECT_EQ(c.size(), 3u);
  EXPECT_EQ(c["IpInReceives"], 3328u);
  EXPECT_EQ(c["TcpInCsumErrors"], 0u);
  EXPECT_EQ(c["TcpExtPAWSEstab"], UINT64_MAX);
}

TEST(NstatTest, DiffKeepsOnlyChanges) {
  NstatCounters a = {{"A", 1}, {"B", 5}, {"C", 7}};
  NstatCounters b = {{"A", 1}, {"B", 9}, {"D", 2}};
  NstatDelta d = NstatDiff(a, b);
  EXPECT_EQ(d, (NstatDelta{{"B", 4}, {"C", -7}, {"D", 2}}));
  EXPECT_EQ(FormatNstatDiff(d), "B +4\nC -7\nD +2\n");
}

}  // namespace
}  // namespace rematcher::testbed
