// Sandbox: what `rematcher` does when no --iface is given. It builds a small
// network of its own (namespaces in 198.18.0.0/16: a switch, the LB, clients,
// backends of different speeds), starts the backends, moves this process's
// main thread into the LB namespace and, once the LB serves, can start a
// load generator so the policy is visibly at work. Everything it made is
// removed when it is destroyed (Ctrl-C), and a stale sandbox left by a
// crash is removed when the next one starts.
#ifndef REMATCHER_LB_SANDBOX_H_
#define REMATCHER_LB_SANDBOX_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lb/core.h"
#include "testing/testbed/netns.h"
#include "testing/testbed/testbed.h"

namespace rematcher {

struct SandboxOptions {
  std::string prefix = "rmsb";
  int num_backends = 3;
  int num_clients = 2;
  // Service time of each backend; the last one is slow so policies differ.
  int fast_service_us = 200;
  int slow_service_us = 2000;
  std::string argv0;
};

class Sandbox {
 public:
  static absl::StatusOr<std::unique_ptr<Sandbox>> Create(const SandboxOptions& opts);
  ~Sandbox();

  // Fills the network-facing part of the core's options.
  absl::Status Configure(CoreOptions* core);
  // Moves the calling thread into the LB namespace (until destruction).
  absl::Status EnterLb();
  // Starts a bounded closed-loop load from client 0.
  absl::Status StartLoad(int connections, int duration_s);
  void PrintHowTo() const;
  testbed::Testbed& testbed() { return *tb_; }

 private:
  explicit Sandbox(const SandboxOptions& opts) : opts_(opts) {}
  SandboxOptions opts_;
  std::unique_ptr<testbed::Testbed> tb_;
  std::vector<testbed::Process> procs_;
  std::optional<testbed::ScopedNetns> in_lb_;
};

// Path of a file from the binary's Bazel runfiles (or next to it).
absl::StatusOr<std::string> FindRunfile(const std::string& argv0, const std::string& rel);

}  // namespace rematcher

#endif  // REMATCHER_LB_SANDBOX_H_
