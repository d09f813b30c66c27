// Child processes for tests and the testbed: run-to-completion with a
// deadline, and long-running children owned by an RAII handle.
//
// Contract:
// - Every wait is bounded: Run* take a timeout; on expiry the child's whole
//   process group is SIGKILLed and reaped, and DeadlineExceeded is returned.
// - A Process handle owns its child: destruction SIGKILLs the child's process
//   group and reaps it. Children also get PR_SET_PDEATHSIG(SIGKILL), so they
//   die with the thread that spawned them if this process crashes.
// - argv[0] is resolved against PATH and then /usr/sbin:/sbin (Bazel's test
//   PATH lacks the sbin directories where ip, ethtool, sysctl live).
// - Fork happens in a multithreaded process: the child only calls
//   async-signal-safe functions before execve.
#ifndef REMATCHER_TESTING_TESTBED_PROCESS_H_
#define REMATCHER_TESTING_TESTBED_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rematcher::testbed {

// The workspace root of this binary's Bazel runfiles ($RUNFILES_DIR, or
// /proc/self/exe + ".runfiles"), or "." (bazel run starts a binary there).
std::string RunfilesRoot();

struct CommandResult {
  int exit_code = 0;  // exit status, or -signal when killed by a signal
  std::string out;
  std::string err;
};

// Runs argv to completion. Non-zero exit is not an error here.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout);
// Runs argv; returns stdout, or an error carrying the exit code and stderr.
absl::StatusOr<std::string> RunOk(const std::vector<std::string>& argv, absl::Duration timeout);

// Absolute path of an executable, or NotFound.
absl::StatusOr<std::string> ResolveExecutable(const std::string& name);

struct SpawnOptions {
  // Files that receive the child's stdout / stderr (created or truncated);
  // empty means /dev/null. The same path for both interleaves them.
  std::string stdout_path;
  std::string stderr_path;
};

class Process {
 public:
  Process() = default;
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process();

  pid_t pid() const { return pid_; }
  bool valid() const { return pid_ > 0; }
  // True while the child has not been reaped and has not exited.
  bool Running();
  // Waits for exit; returns the exit code (or -signal). DeadlineExceeded when
  // still running at the deadline (the child is left running).
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // Sends sig to the child's process group.
  void Signal(int sig);
  // SIGTERM, wait up to grace, then SIGKILL; reaps. Returns the exit code.
  absl::StatusOr<int> Stop(absl::Duration grace = absl::Seconds(2));

 private:
  friend absl::StatusOr<Process> Spawn(const std::vector<std::string>& argv,
                                       const SpawnOptions& options);
  explicit Process(pid_t pid);
  void KillAndReap();

  pid_t pid_ = -1;
  bool reaped_ = false;
  int exit_code_ = 0;
};

absl::StatusOr<Process> Spawn(const std::vector<std::string>& argv,
                              const SpawnOptions& options = {});

// Async-signal-safe: SIGKILLs the process group of every live Process. For a
// SIGINT/SIGTERM handler (see Testbed::EmergencyCleanup).
void KillAllSpawnedProcesses();

}  // namespace rematcher::testbed

#endif  // REMATCHER_TESTING_TESTBED_PROCESS_H_
