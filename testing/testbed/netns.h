// Named network namespaces (the `ip netns` kind, bound under /run/netns).
//
// Owns: creating and deleting them, listing them, and entering one from the
// calling thread (a network namespace is per thread, so a test can open a
// socket in any namespace and keep using it after switching back).
#ifndef REMATCHER_TESTING_TESTBED_NETNS_H_
#define REMATCHER_TESTING_TESTBED_NETNS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rematcher::testbed {

inline constexpr char kNetnsRunDir[] = "/run/netns";

absl::Status CreateNetns(const std::string& name);
// Lazily unmounts and unlinks /run/netns/<name>, as `ip netns del` does;
// missing is fine. The kernel frees the namespace (and its veths) once no
// process or fd holds it. Async-signal-safe variant: DeleteNetnsSignalSafe.
absl::Status DeleteNetns(const std::string& name);
void DeleteNetnsSignalSafe(const char* path);
std::vector<std::string> ListNetns();

// Moves the calling thread into a named namespace until destruction.
class ScopedNetns {
 public:
  static absl::StatusOr<ScopedNetns> Enter(const std::string& name);
  ScopedNetns(ScopedNetns&& o) noexcept : saved_fd_(o.saved_fd_) { o.saved_fd_ = -1; }
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;
  ScopedNetns& operator=(ScopedNetns&&) = delete;
  ~ScopedNetns();

 private:
  explicit ScopedNetns(int saved_fd) : saved_fd_(saved_fd) {}
  int saved_fd_ = -1;
};

// A socket created inside namespace `name` (the caller owns the fd).
absl::StatusOr<int> SocketInNetns(const std::string& name, int domain, int type, int protocol = 0);

// Interface index of `ifname` inside namespace `name`.
absl::StatusOr<int> IfIndexInNetns(const std::string& name, const std::string& ifname);

}  // namespace rematcher::testbed

#endif  // REMATCHER_TESTING_TESTBED_NETNS_H_
