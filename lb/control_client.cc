#include "lb/control_client.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace rematcher {

absl::StatusOr<std::string> SendControlCommand(const std::string& socket_path,
                                               const std::string& command,
                                               absl::Duration timeout) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(a.sun_path)) {
    close(fd);
    return absl::InvalidArgumentError("control socket path too long");
  }
  strncpy(a.sun_path, socket_path.c_str(), sizeof(a.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a))) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(
        e, absl::StrCat("connecting to ", socket_path, " (is rematcher running?)"));
  }
  std::string line = command + "\n";
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, "sending command");
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      int e = errno;
      close(fd);
      return absl::ErrnoToStatus(e, "reading reply");
    }
    out.append(buf, n);
  }
  close(fd);
  return out;
}

}  // namespace rematcher
