// The README's main command: `rematcher --policy=p2c` with no --iface builds
// a sandbox network of its own, serves its built-in load and whatever is
// sent from the client namespaces, prints its statistics when --duration_s
// runs out, exits 0 and removes everything it made. Needs root (namespaces,
// XDP); prints SKIPPED otherwise. Prefix rmst, so a sandbox a user runs
// (rmsb) is left alone.
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "lb/control_client.h"
#include "lb/testing/e2e_fixture.h"
#include "testing/backend/test_util.h"
#include "testing/testbed/process.h"
#include "testing/testbed/testbed.h"

namespace rematcher {
namespace {

using backend::testutil::RunfilePath;
using backend::testutil::TempDir;
using e2e::JsonInt;
using e2e::ParseStats;

constexpr char kPrefix[] = "rmst";
constexpr char kVip[] = "198.18.0.10:8080";

absl::StatusOr<testbed::CommandResult> InClient(int i, std::vector<std::string> argv,
                                                absl::Duration timeout) {
  std::vector<std::string> full = {"ip", "netns", "exec", absl::StrCat(kPrefix, "-c", i)};
  full.insert(full.end(), argv.begin(), argv.end());
  return testbed::RunCommand(full, timeout);
}

TEST(SandboxTest, MainCommandServesShortConnectionsAndCleansUp) {
  if (getuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (namespaces, XDP, BPF)";
  if (auto st = testbed::Testbed::Available(); !st.ok())
    GTEST_SKIP() << "SKIPPED: no namespace testbed here: " << st;
  testbed::Testbed::DestroyExisting(kPrefix).IgnoreError();
  // Short: a unix socket path has at most 107 bytes, $TEST_TMPDIR more.
  const std::string sock = "/run/rematcher/sandbox-test.sock";
  const std::string out = TempDir() + "/rematcher.out", err = TempDir() + "/rematcher.err";
  auto lb = testbed::Spawn({RunfilePath("lb/rematcher"), "--policy=p2c", "--duration_s=15",
                            absl::StrCat("--sandbox_prefix=", kPrefix), "--control_socket=" + sock,
                            "--stats_interval_s=0", "--logtostderr"},
                           {out, err});
  ASSERT_TRUE(lb.ok()) << lb.status();
  // Up once the control socket answers (building the network and verifying
  // the XDP program take a few seconds).
  absl::StatusOr<std::string> stats = absl::UnknownError("not asked");
  for (absl::Time end = absl::Now() + absl::Seconds(30); absl::Now() < end && lb->Running();
       absl::SleepFor(absl::Milliseconds(200))) {
    stats = SendControlCommand(sock, "stats", absl::Seconds(2));
    if (stats.ok()) break;
  }
  ASSERT_TRUE(stats.ok()) << stats.status();

  // Churn from the client namespaces does not run out of ports.
  auto reuse = InClient(1, {"sysctl", "-n", "net.ipv4.tcp_tw_reuse"}, absl::Seconds(5));
  ASSERT_TRUE(reuse.ok()) << reuse.status();
  EXPECT_EQ(reuse->out, "1\n");
  // Short keep-alive connections from client 1 (the built-in load runs from
  // client 0 meanwhile): every body verified, every close clean.
  auto lg = InClient(1,
                     {RunfilePath("testing/loadgen/loadgen"), absl::StrCat("--target=", kVip),
                      "--json", "--connections=16", "--requests_per_conn=5", "--requests=5000",
                      "--sizes=100,5000", "--max_time_s=30"},
                     absl::Seconds(45));
  ASSERT_TRUE(lg.ok()) << lg.status();
  EXPECT_EQ(JsonInt(lg->out, "ok"), 5000) << lg->out << lg->err;
  EXPECT_EQ(JsonInt(lg->out, "errors"), 0) << lg->out;
  EXPECT_EQ(JsonInt(lg->out, "verify_failures"), 0) << lg->out;
  EXPECT_GE(JsonInt(lg->out, "connections_opened"), 1000) << lg->out;
  stats = SendControlCommand(sock, "stats", absl::Seconds(2));
  ASSERT_TRUE(stats.ok()) << stats.status();
  auto st = ParseStats(*stats);
  EXPECT_GE(st["closed_clean"], 1000u) << *stats;
  EXPECT_EQ(st["closed_retire"], 0u) << *stats;

  // --duration_s ends it: exit 0, statistics printed, nothing left behind.
  auto code = lb->Wait(absl::Seconds(40));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  auto printed = testbed::RunOk({"cat", out}, absl::Seconds(5));
  ASSERT_TRUE(printed.ok());
  EXPECT_TRUE(absl::StrContains(*printed, "rematcher sandbox is up")) << *printed;
  EXPECT_TRUE(absl::StrContains(*printed, "\nhandshakes ")) << *printed;
  EXPECT_TRUE(testbed::Testbed::ExistingNamespaces(kPrefix).empty())
      << "left behind: " << absl::StrJoin(testbed::Testbed::ExistingNamespaces(kPrefix), " ");
}

// A bad prefix is refused at start with a message that names it.
TEST(SandboxTest, BadPrefixIsRefused) {
  if (getuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (the binary's start-up)";
  auto r = testbed::RunCommand({RunfilePath("lb/rematcher"), "--sandbox_prefix=Bad-1"},
                               absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r->err, "--sandbox_prefix='Bad-1'")) << r->err;
}

}  // namespace
}  // namespace rematcher
