// Child process helpers; see process.h.
#include "testing/testbed/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"

extern char** environ;

namespace rematcher::testbed {
namespace {

// Process groups of live children, for KillAllSpawnedProcesses() from a
// signal handler: fixed size, lock-free.
constexpr int kMaxTracked = 256;
std::atomic<pid_t> g_tracked[kMaxTracked];

void Track(pid_t pid) {
  for (auto& slot : g_tracked) {
    pid_t expected = 0;
    if (slot.compare_exchange_strong(expected, pid)) return;
  }
  LOG(WARNING) << "process registry full; pid " << pid << " not tracked for signal cleanup";
}

void Untrack(pid_t pid) {
  for (auto& slot : g_tracked) {
    pid_t expected = pid;
    if (slot.compare_exchange_strong(expected, 0)) return;
  }
}

int DecodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

// What the child needs, prepared before fork so the child does not allocate.
struct ExecPlan {
  std::string path;
  std::vector<std::string> args;
  std::vector<char*> argv;
};

absl::StatusOr<ExecPlan> Plan(const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  ExecPlan p;
  absl::StatusOr<std::string> path = ResolveExecutable(argv[0]);
  if (!path.ok()) return path.status();
  p.path = *path;
  p.args = argv;
  for (std::string& a : p.args) p.argv.push_back(a.data());
  p.argv.push_back(nullptr);
  return p;
}

// Child side after fork: only async-signal-safe calls.
[[noreturn]] void ExecChild(const ExecPlan& plan, int in_fd, int out_fd, int err_fd) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // Undo signal masks/dispositions the parent (e.g. gtest) may have set.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  if (in_fd >= 0) dup2(in_fd, 0);
  if (out_fd >= 0) dup2(out_fd, 1);
  if (err_fd >= 0) dup2(err_fd, 2);
  execve(plan.path.c_str(), plan.argv.data(), environ);
  _exit(127);
}

}  // namespace

absl::StatusOr<std::string> ResolveExecutable(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    if (access(name.c_str(), X_OK) == 0) return name;
    return absl::NotFoundError(absl::StrCat(name, " is not executable"));
  }
  const char* env = getenv("PATH");
  std::vector<std::string> dirs = absl::StrSplit(env ? env : "", ':', absl::SkipEmpty());
  for (const char* d : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) dirs.push_back(d);
  for (const std::string& d : dirs) {
    std::string p = absl::StrCat(d, "/", name);
    struct stat st;
    if (stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(p.c_str(), X_OK) == 0) return p;
  }
  return absl::NotFoundError(absl::StrCat("executable ", name, " not found in PATH or sbin"));
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout) {
  absl::StatusOr<ExecPlan> plan = Plan(argv);
  if (!plan.ok()) return plan.status();
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    close(out_pipe[0]);
    close(out_pipe[1]);
    return absl::ErrnoToStatus(e, "pipe2");
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid == 0) ExecChild(*plan, devnull, out_pipe[1], err_pipe[1]);
  int fork_errno = errno;
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (devnull >= 0) close(devnull);
  if (pid < 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return absl::ErrnoToStatus(fork_errno, "fork");
  }
  setpgid(pid, pid);  // also done in the child; whichever runs first wins
  Track(pid);

  CommandResult r;
  const absl::Time deadline = absl::Now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  bool timed_out = false;
  char buf[4096];
  while (open_fds > 0) {
    int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      timed_out = true;
      break;
    }
    int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got > 0) {
        (i == 0 ? r.out : r.err).append(buf, got);
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& f : fds)
    if (f.fd >= 0) close(f.fd);

  int status = 0;
  if (!timed_out) {
    // Output closed; the child should exit promptly, but stay bounded.
    while (true) {
      pid_t w = waitpid(pid, &status, WNOHANG);
      if (w == pid) break;
      if (absl::Now() > deadline) {
        timed_out = true;
        break;
      }
      usleep(2000);
    }
  }
  if (timed_out) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    Untrack(pid);
    return absl::DeadlineExceededError(absl::StrCat("timed out after ", absl::FormatDuration(timeout),
                                                    ": ", absl::StrJoin(argv, " ")));
  }
  Untrack(pid);
  r.exit_code = DecodeStatus(status);
  return r;
}

absl::StatusOr<std::string> RunOk(const std::vector<std::string>& argv, absl::Duration timeout) {
  absl::StatusOr<CommandResult> r = RunCommand(argv, timeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InternalError(absl::StrCat("`", absl::StrJoin(argv, " "), "` exited with ",
                                            r->exit_code, ": ", r->err));
  }
  return std::move(r->out);
}

absl::StatusOr<Process> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) {
  absl::StatusOr<ExecPlan> plan = Plan(argv);
  if (!plan.ok()) return plan.status();
  auto open_out = [](const std::string& path) -> int {
    return open(path.empty() ? "/dev/null" : path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0644);
  };
  int out_fd = open_out(options.stdout_path);
  if (out_fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", options.stdout_path));
  // One file for both: one open file description (a shared offset), or
  // each write would land over the other's from offset 0.
  int err_fd = !options.stderr_path.empty() && options.stderr_path == options.stdout_path
                   ? fcntl(out_fd, F_DUPFD_CLOEXEC, 0)
                   : open_out(options.stderr_path);
  if (err_fd < 0) {
    int e = errno;
    close(out_fd);
    return absl::ErrnoToStatus(e, absl::StrCat("open ", options.stderr_path));
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid == 0) ExecChild(*plan, devnull, out_fd, err_fd);
  int fork_errno = errno;
  close(out_fd);
  close(err_fd);
  if (devnull >= 0) close(devnull);
  if (pid < 0) return absl::ErrnoToStatus(fork_errno, "fork");
  setpgid(pid, pid);
  VLOG(1) << "spawned pid " << pid << ": " << absl::StrJoin(argv, " ");
  return Process(pid);
}

Process::Process(pid_t pid) : pid_(pid) { Track(pid); }

Process::Process(Process&& o) noexcept : pid_(o.pid_), reaped_(o.reaped_), exit_code_(o.exit_code_) {
  o.pid_ = -1;
}

Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    KillAndReap();
    pid_ = o.pid_;
    reaped_ = o.reaped_;
    exit_code_ = o.exit_code_;
    o.pid_ = -1;
  }
  return *this;
}

Process::~Process() { KillAndReap(); }

void Process::KillAndReap() {
  if (pid_ <= 0) return;
  if (!reaped_) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    reaped_ = true;
  }
  // Once the leader is reaped its group id may be reused: never signal it.
  Untrack(pid_);
  pid_ = -1;
}

bool Process::Running() {
  if (pid_ <= 0 || reaped_) return false;
  int status;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped_ = true;
    exit_code_ = DecodeStatus(status);
    return false;
  }
  return true;
}

absl::StatusOr<int> Process::Wait(absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("no process");
  const absl::Time deadline = absl::Now() + timeout;
  while (Running()) {
    if (absl::Now() >= deadline)
      return absl::DeadlineExceededError(absl::StrCat("pid ", pid_, " still running"));
    usleep(5000);
  }
  return exit_code_;
}

void Process::Signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(-pid_, sig);
}

absl::StatusOr<int> Process::Stop(absl::Duration grace) {
  if (pid_ <= 0) return absl::FailedPreconditionError("no process");
  Signal(SIGTERM);
  absl::StatusOr<int> code = Wait(grace);
  if (code.ok()) return code;
  Signal(SIGKILL);
  return Wait(absl::Seconds(5));
}

void KillAllSpawnedProcesses() {
  for (auto& slot : g_tracked) {
    pid_t pid = slot.load();
    if (pid > 0) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
    }
  }
}

std::string RunfilesRoot() {
  if (const char* d = getenv("RUNFILES_DIR"); d && *d) return absl::StrCat(d, "/rematcher");
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    exe[n] = 0;
    std::string r = absl::StrCat(exe, ".runfiles/rematcher");
    struct stat st;
    if (stat(r.c_str(), &st) == 0) return r;
  }
  return ".";  // bazel run starts us in the runfiles tree
}

}  // namespace rematcher::testbed
