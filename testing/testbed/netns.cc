// Named network namespaces; see netns.h.
#include "testing/testbed/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "testing/testbed/process.h"

namespace rematcher::testbed {

absl::Status CreateNetns(const std::string& name) {
  // `ip` sets up /run/netns as a shared mount point the first time; doing it
  // by hand would duplicate that logic.
  absl::StatusOr<std::string> out = RunOk({"ip", "netns", "add", name}, absl::Seconds(10));
  return out.status();
}

void DeleteNetnsSignalSafe(const char* path) {
  umount2(path, MNT_DETACH);
  unlink(path);
}

absl::Status DeleteNetns(const std::string& name) {
  std::string path = absl::StrCat(kNetnsRunDir, "/", name);
  if (umount2(path.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("umount ", path));
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, absl::StrCat("unlink ", path));
  }
  return absl::OkStatus();
}

std::vector<std::string> ListNetns() {
  std::vector<std::string> names;
  DIR* d = opendir(kNetnsRunDir);
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<ScopedNetns> ScopedNetns::Enter(const std::string& name) {
  int saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (saved < 0) return absl::ErrnoToStatus(errno, "open /proc/thread-self/ns/net");
  std::string path = absl::StrCat(kNetnsRunDir, "/", name);
  int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    int e = errno;
    close(saved);
    return absl::ErrnoToStatus(e, absl::StrCat("open ", path));
  }
  int rc = setns(target, CLONE_NEWNET);
  int e = errno;
  close(target);
  if (rc != 0) {
    close(saved);
    return absl::ErrnoToStatus(e, absl::StrCat("setns into ", name));
  }
  return ScopedNetns(saved);
}

ScopedNetns::~ScopedNetns() {
  if (saved_fd_ < 0) return;
  // Failing to return would leave this thread in a test namespace: fatal.
  PCHECK(setns(saved_fd_, CLONE_NEWNET) == 0) << "setns back to the original namespace";
  close(saved_fd_);
}

absl::StatusOr<int> SocketInNetns(const std::string& name, int domain, int type, int protocol) {
  absl::StatusOr<ScopedNetns> in = ScopedNetns::Enter(name);
  if (!in.ok()) return in.status();
  int fd = socket(domain, type | SOCK_CLOEXEC, protocol);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("socket in ", name));
  return fd;
}

absl::StatusOr<int> IfIndexInNetns(const std::string& name, const std::string& ifname) {
  absl::StatusOr<ScopedNetns> in = ScopedNetns::Enter(name);
  if (!in.ok()) return in.status();
  unsigned idx = if_nametoindex(ifname.c_str());
  if (idx == 0) return absl::ErrnoToStatus(errno, absl::StrCat(ifname, " in ", name));
  return static_cast<int>(idx);
}

}  // namespace rematcher::testbed
