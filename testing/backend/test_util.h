// Test helpers for tests that drive the real backend and loadgen binaries
// over loopback: runfiles paths, child processes, and a small blocking HTTP
// client that exposes the raw wire (so tests can pipeline, split writes and
// reset connections on purpose).

#ifndef REMATCHER_TESTING_BACKEND_TEST_UTIL_H_
#define REMATCHER_TESTING_BACKEND_TEST_UTIL_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rematcher::backend::testutil {

// Path of a data dependency, e.g. "testing/backend/backend".
std::string RunfilePath(absl::string_view workspace_relative);

// A writable per-test scratch directory ($TEST_TMPDIR, or /tmp).
std::string TempDir();

struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string stdout_text;
  std::string stderr_text;
};

// Runs argv to completion (killed after timeout_s), capturing its output.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         double timeout_s);

// A running backend on 127.0.0.1 with an ephemeral port.
class BackendProcess {
 public:
  BackendProcess() = default;
  BackendProcess(const BackendProcess&) = delete;
  BackendProcess& operator=(const BackendProcess&) = delete;
  ~BackendProcess();

  // Starts the backend binary with `flags` (besides --listen/--port_file)
  // and waits until it listens.
  absl::Status Start(const std::vector<std::string>& flags);
  // SIGTERM, then the exit code (-1 if it died of a signal or hung).
  int Stop();

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string target() const;  // "127.0.0.1:<port>"
  // Open file descriptors of the process, from /proc.
  int OpenFdCount() const;

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

// A port on 127.0.0.1 that nothing listens on (bound then released).
absl::StatusOr<int> UnusedLoopbackPort();

// Blocking TCP connection to 127.0.0.1:port with receive timeouts.
absl::StatusOr<int> ConnectLoopback(int port);
absl::Status SendAll(int fd, absl::string_view data);

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;
  bool keep_alive = true;
  std::string Header(const std::string& lowercase_name) const;
};

// Reads one response from `fd`; `buffer` keeps bytes past it for the next
// call (pipelining).
absl::StatusOr<HttpResponse> ReadResponse(int fd, std::string* buffer,
                                          double timeout_s = 30);

// True if the peer closes (EOF or RST) within timeout_s with no more data.
bool WaitForPeerClose(int fd, double timeout_s);

// FNV-1a-64, written out independently of body.h so tests cross-check it.
uint64_t ReferenceFnv1a64(absl::string_view data);

}  // namespace rematcher::backend::testutil

#endif  // REMATCHER_TESTING_BACKEND_TEST_UTIL_H_
