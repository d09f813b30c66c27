#include "testing/testbed/process.h"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace rematcher::testbed {
namespace {

TEST(ProcessTest, RunCapturesOutputAndExitCode) {
  absl::StatusOr<CommandResult> r =
      RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"}, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_FALSE(RunOk({"false"}, absl::Seconds(5)).ok());
  EXPECT_EQ(*RunOk({"echo", "hi"}, absl::Seconds(5)), "hi\n");
}

TEST(ProcessTest, RunTimesOutAndKillsTheGroup) {
  absl::Time start = absl::Now();
  // The grandchild keeps the pipe open; the group kill must still end it.
  absl::StatusOr<CommandResult> r = RunCommand({"sh", "-c", "sleep 30 & sleep 30"}, absl::Milliseconds(300));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(ProcessTest, MissingExecutable) {
  EXPECT_EQ(RunCommand({"no-such-binary-xyz"}, absl::Seconds(1)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(ResolveExecutable("ip").ok() || ResolveExecutable("sh").ok());
}

TEST(ProcessTest, SpawnWaitAndOutputFile) {
  std::string path = ::testing::TempDir() + "/spawn_out.txt";
  SpawnOptions o;
  o.stdout_path = path;
  absl::StatusOr<Process> p = Spawn({"sh", "-c", "echo spawned; exit 7"}, o);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::StatusOr<int> code = p->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 7);
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), "spawned\n");
}

TEST(ProcessTest, SpawnStdoutAndStderrToOneFileKeepsBoth) {
  std::string path = ::testing::TempDir() + "/spawn_both.txt";
  SpawnOptions o;
  o.stdout_path = o.stderr_path = path;
  absl::StatusOr<Process> p = Spawn({"sh", "-c", "echo one >&2; echo two; echo three >&2"}, o);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(p->Wait(absl::Seconds(5)).ok());
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), "one\ntwo\nthree\n");
}

TEST(ProcessTest, DestructorKillsAndReaps) {
  pid_t pid;
  {
    absl::StatusOr<Process> p = Spawn({"sleep", "30"});
    ASSERT_TRUE(p.ok()) << p.status();
    pid = p->pid();
    EXPECT_TRUE(p->Running());
    EXPECT_EQ(p->Wait(absl::Milliseconds(50)).status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_EQ(kill(pid, 0), -1);  // reaped: no such process (or a stranger's reuse, unlikely)
}

TEST(ProcessTest, StopSendsTerm) {
  absl::StatusOr<Process> p = Spawn({"sleep", "30"});
  ASSERT_TRUE(p.ok());
  absl::StatusOr<int> code = p->Stop();
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, -SIGTERM);
}

}  // namespace
}  // namespace rematcher::testbed
