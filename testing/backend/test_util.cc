#include "testing/backend/test_util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "testing/backend/http_head.h"

namespace rematcher::backend::testutil {
namespace {

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// fork+exec with stdout/stderr redirected to files.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::string& out_path,
                            const std::string& err_path) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
  if (pid == 0) {
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out >= 0) dup2(out, 1);
    if (err >= 0) dup2(err, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits for pid up to timeout_s; kills it after. Returns exit code or -1.
int WaitPid(pid_t pid, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6));
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::atomic<int> unique_counter{0};

std::string UniqueName(absl::string_view stem) {
  return absl::StrCat(TempDir(), "/", stem, ".", getpid(), ".",
                      unique_counter.fetch_add(1));
}

}  // namespace

std::string RunfilePath(absl::string_view rel) {
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* ws = getenv("TEST_WORKSPACE");
  if (srcdir == nullptr) return std::string(rel);
  return absl::StrCat(srcdir, "/", ws ? ws : "rematcher", "/", rel);
}

std::string TempDir() {
  const char* t = getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         double timeout_s) {
  const std::string out = UniqueName("cmd.out");
  const std::string err = UniqueName("cmd.err");
  absl::StatusOr<pid_t> pid = Spawn(argv, out, err);
  if (!pid.ok()) return pid.status();
  CommandResult r;
  r.exit_code = WaitPid(*pid, timeout_s);
  r.stdout_text = ReadFileOrEmpty(out);
  r.stderr_text = ReadFileOrEmpty(err);
  return r;
}

BackendProcess::~BackendProcess() {
  if (pid_ > 0) Stop();
}

absl::Status BackendProcess::Start(const std::vector<std::string>& flags) {
  const std::string port_file = UniqueName("backend.port");
  log_path_ = UniqueName("backend.log");
  std::vector<std::string> argv = {RunfilePath("testing/backend/backend"),
                                   "--listen=127.0.0.1:0",
                                   "--port_file=" + port_file};
  argv.insert(argv.end(), flags.begin(), flags.end());
  absl::StatusOr<pid_t> pid = Spawn(argv, log_path_, log_path_ + ".err");
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  for (int i = 0; i < 1000; ++i) {
    std::string text = ReadFileOrEmpty(port_file);
    if (!text.empty() &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port_)) {
      return absl::OkStatus();
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat(
          "backend exited early: ", ReadFileOrEmpty(log_path_ + ".err")));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::DeadlineExceededError("backend did not write its port");
}

int BackendProcess::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int code = WaitPid(pid_, 10);
  pid_ = -1;
  return code;
}

std::string BackendProcess::target() const {
  return absl::StrCat("127.0.0.1:", port_);
}

int BackendProcess::OpenFdCount() const {
  DIR* d = opendir(absl::StrCat("/proc/", pid_, "/fd").c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

absl::StatusOr<int> UnusedLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, "bind");
  }
  close(fd);
  return ntohs(sa.sin_port);
}

absl::StatusOr<int> ConnectLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, absl::StrCat("connect 127.0.0.1:", port));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

absl::Status SendAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "send");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

std::string HttpResponse::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

namespace {

// Appends available bytes to `buffer`, waiting up to the deadline.
absl::Status ReadMore(int fd, std::string* buffer,
                      std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return absl::DeadlineExceededError("read timeout");
  pollfd p{fd, POLLIN, 0};
  int r = poll(&p, 1, static_cast<int>(left.count()));
  if (r == 0) return absl::DeadlineExceededError("read timeout");
  if (r < 0) return absl::ErrnoToStatus(errno, "poll");
  char buf[256 * 1024];
  ssize_t n = recv(fd, buf, sizeof(buf), 0);
  if (n == 0) return absl::UnavailableError("peer closed");
  if (n < 0) return absl::ErrnoToStatus(errno, "recv");
  buffer->append(buf, static_cast<size_t>(n));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HttpResponse> ReadResponse(int fd, std::string* buffer,
                                          double timeout_s) {
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6));
  size_t end;
  while ((end = buffer->find("\r\n\r\n")) == std::string::npos) {
    if (absl::Status s = ReadMore(fd, buffer, deadline); !s.ok()) return s;
  }
  absl::StatusOr<ResponseHead> head =
      ParseResponseHead(absl::string_view(*buffer).substr(0, end));
  if (!head.ok()) return head.status();
  HttpResponse r;
  r.status = head->status;
  r.keep_alive = head->keep_alive;
  for (const Header& h : head->headers) {
    r.headers[absl::AsciiStrToLower(h.name)] = std::string(h.value);
  }
  if (head->content_length < 0) {
    return absl::InvalidArgumentError("response without Content-Length");
  }
  const size_t length = static_cast<size_t>(head->content_length);
  buffer->erase(0, end + 4);
  while (buffer->size() < length) {
    if (absl::Status s = ReadMore(fd, buffer, deadline); !s.ok()) return s;
  }
  r.body = buffer->substr(0, length);
  buffer->erase(0, length);
  return r;
}

bool WaitForPeerClose(int fd, double timeout_s) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(timeout_s * 1000)) <= 0) return false;
  char c;
  ssize_t n = recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

uint64_t ReferenceFnv1a64(absl::string_view data) {
  uint64_t h = 14695981039346656037ULL;  // offset basis
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ULL;  // FNV-64 prime
  }
  return h;
}

}  // namespace rematcher::backend::testutil
