#include "lb/metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"

namespace rematcher {
namespace {

constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr char kTextContentType[] = "text/plain; charset=utf-8";
// Events handled per OnReady(): each may be a /metrics render, and the
// loop that calls us also makes policy decisions.
constexpr int kBatch = 8;
// Connections accepted per readiness of the listening socket.
constexpr int kAcceptBatch = 16;
constexpr size_t kReadChunk = 4096;
constexpr int kBacklog = 256;

int64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

absl::Status Errno(absl::string_view what) { return absl::ErrnoToStatus(errno, what); }

const char* Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

// RFC 9110 token (method, header name).
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (absl::ascii_isalnum(c)) continue;
    if (!strchr("!#$%&'*+-.^_`|~", c) || c == 0) return false;
  }
  return true;
}

// End of the request head (just past the empty line), or npos. Bare LF
// line ends are accepted, as RFC 9112 allows.
size_t HeadEnd(const std::string& s) {
  for (size_t i = s.find('\n'); i != std::string::npos; i = s.find('\n', i + 1)) {
    if (i + 1 < s.size() && s[i + 1] == '\n') return i + 2;
    if (i + 2 < s.size() && s[i + 1] == '\r' && s[i + 2] == '\n') return i + 3;
  }
  return std::string::npos;
}

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "': ", why, " (want IP:PORT, e.g. 127.0.0.1:9100 or [::1]:9100)"));
  };
  std::string host, port;
  bool v6 = false;
  if (absl::StartsWith(text, "[")) {
    size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return bad("an IPv6 address is written [ADDRESS]:PORT");
    host = std::string(text.substr(1, close - 1));
    port = std::string(text.substr(close + 2));
    v6 = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) return bad("no port");
    host = std::string(text.substr(0, colon));
    port = std::string(text.substr(colon + 1));
    if (host.find(':') != std::string::npos) return bad("an IPv6 address goes in brackets");
  }
  if (host.empty()) return bad("no address: name the address to bind");
  uint32_t p = 0;
  if (!AllDigits(port) || port.size() > 5 || !absl::SimpleAtoi(port, &p) || p > 65535)
    return bad("the port must be a number up to 65535");
  ListenAddress out;
  out.port = static_cast<uint16_t>(p);
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&out.addr);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(out.port);
    if (inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) != 1)
      return bad(absl::StrCat("'", host, "' is not a numeric IPv6 address"));
    out.len = sizeof(sockaddr_in6);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&out.addr);
    a->sin_family = AF_INET;
    a->sin_port = htons(out.port);
    if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) != 1)
      return bad(absl::StrCat("'", host,
                              "' is not a numeric IPv4 address (names are not resolved)"));
    out.len = sizeof(sockaddr_in);
  }
  return out;
}

std::string ListenAddressString(const sockaddr_storage& addr) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf));
    return absl::StrCat("[", buf, "]:", ntohs(a->sin6_port));
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
  inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf));
  return absl::StrCat(buf, ":", ntohs(a->sin_port));
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Create(
    const MetricsHttpOptions& opts, Provider provider) {
  if (opts.timeout <= absl::ZeroDuration())
    return absl::InvalidArgumentError("metrics endpoint: the timeout must be positive");
  if (opts.max_request_bytes < 64 || opts.max_connections < 1)
    return absl::InvalidArgumentError(
        "metrics endpoint: need max_request_bytes >= 64 and max_connections >= 1");
  if (!provider) return absl::InvalidArgumentError("metrics endpoint: no provider");
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer(opts, std::move(provider)));
  if (auto st = s->Listen(); !st.ok()) return st;
  return s;
}

MetricsHttpServer::~MetricsHttpServer() {
  for (auto& [fd, c] : conns_) close(fd);
  if (listen_fd_ >= 0) close(listen_fd_);
  if (epfd_ >= 0) close(epfd_);
}

absl::Status MetricsHttpServer::Listen() {
  auto a = ParseListenAddress(opts_.addr);
  if (!a.ok()) return a.status();
  listen_fd_ = socket(a->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return Errno("metrics endpoint: socket");
  int one = 1;
  // A restart must not fail on the previous run's TIME_WAITs.
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // [::]:PORT means IPv6 only: bind what was named, nothing more.
  if (a->addr.ss_family == AF_INET6)
    setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(listen_fd_, reinterpret_cast<const sockaddr*>(&a->addr), a->len)) {
    if (errno == EADDRNOTAVAIL)
      return absl::InvalidArgumentError(
          absl::StrCat("binding the metrics endpoint to ", opts_.addr,
                       ": not an address of this host (in this network namespace)"));
    return Errno(absl::StrCat("binding the metrics endpoint to ", opts_.addr));
  }
  // The backlog only holds connections until the next OnReady(), which
  // accepts (or refuses) them; it is not the connection cap.
  if (listen(listen_fd_, kBacklog))
    return Errno(absl::StrCat("listen on the metrics endpoint ", opts_.addr));
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len))
    return Errno("metrics endpoint: getsockname");
  bound_ = ListenAddressString(bound);
  port_ = ntohs(bound.ss_family == AF_INET6
                    ? reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port
                    : reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);

  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return Errno("metrics endpoint: epoll_create1");
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = listen_fd_;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, listen_fd_, &e)) return Errno("metrics endpoint: epoll_ctl");
  LOG(INFO) << "metrics endpoint http://" << bound_ << "/metrics (Prometheus text), /healthz";
  return absl::OkStatus();
}

void MetricsHttpServer::OnReady() {
  epoll_event evs[kBatch];
  int n = epoll_wait(epfd_, evs, kBatch, 0);
  for (int i = 0; i < n; i++) {
    if (evs[i].data.fd == listen_fd_) Accept();
    else OnConn(evs[i].data.fd, evs[i].events);
  }
}

void MetricsHttpServer::Tick() {
  if (accept_paused_) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = listen_fd_;
    if (epoll_ctl(epfd_, EPOLL_CTL_MOD, listen_fd_, &e) == 0) accept_paused_ = false;
  }
  if (conns_.empty()) return;
  int64_t now = MonoNowNs();
  std::vector<int> expired;
  for (const auto& [fd, c] : conns_)
    if (now >= c.deadline_ns) expired.push_back(fd);
  for (int fd : expired) {
    stats_.timed_out++;
    Close(fd);
  }
}

void MetricsHttpServer::Accept() {
  for (int i = 0; i < kAcceptBatch; i++) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // Out of fds or memory: the listener would stay readable and spin
      // the loop. Stop watching it until the next Tick().
      LOG_EVERY_N(WARNING, 100) << "metrics endpoint: accept: " << strerror(errno)
                                << "; not accepting for a moment";
      epoll_event e{};
      e.data.fd = listen_fd_;
      if (epoll_ctl(epfd_, EPOLL_CTL_MOD, listen_fd_, &e) == 0) accept_paused_ = true;
      return;
    }
    if (conns_.size() >= opts_.max_connections) {
      static constexpr char k503[] =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
          "Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";
      ssize_t ignored = send(fd, k503, sizeof(k503) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
      (void)ignored;
      close(fd);
      stats_.refused++;
      continue;
    }
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = fd;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &e)) {
      close(fd);
      continue;
    }
    Conn c;
    c.deadline_ns = MonoNowNs() + absl::ToInt64Nanoseconds(opts_.timeout);
    conns_[fd] = std::move(c);
    stats_.accepted++;
  }
}

void MetricsHttpServer::OnConn(int fd, uint32_t events) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) {
    epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
    return;
  }
  Conn& c = it->second;
  // Errors and hang-ups surface from recv/send below.
  switch (c.phase) {
    case Conn::kReading: Read(fd, c); break;
    case Conn::kWriting: Write(fd, c); break;
    case Conn::kDraining: Drain(fd, c); break;
  }
}

// Each of Read/Respond/Write/Drain either leaves the connection open or
// calls Close(fd) as its very last action (c is gone after that).
void MetricsHttpServer::Read(int fd, Conn& c) {
  char buf[kReadChunk];
  for (;;) {
    // At most one byte past the cap: enough to know it was exceeded.
    size_t room = opts_.max_request_bytes + 1 - c.in.size();
    ssize_t n = recv(fd, buf, std::min(sizeof(buf), room), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      // The client closed (or reset) before a whole request: answer what
      // was half-sent (it may still read), forget an empty connection.
      if (n == 0 && !c.in.empty()) {
        Respond(fd, c, 400, kTextContentType, "incomplete request\n", false);
      } else {
        Close(fd);
      }
      return;
    }
    c.in.append(buf, n);
    // Empty lines before the request line are ignored (RFC 9112 2.2).
    size_t lead = c.in.find_first_not_of("\r\n");
    if (lead == std::string::npos) lead = c.in.size();
    if (lead > 0) c.in.erase(0, lead);
    size_t end = HeadEnd(c.in);
    if (end != std::string::npos && end <= opts_.max_request_bytes) {
      Handle(fd, c, absl::string_view(c.in).substr(0, end));
      return;
    }
    if (c.in.size() > opts_.max_request_bytes) {
      bool line_ended = c.in.find('\n') != std::string::npos;
      Respond(fd, c, line_ended ? 431 : 414, kTextContentType,
              absl::StrCat("request larger than ", opts_.max_request_bytes, " bytes\n"), false);
      return;
    }
  }
}

void MetricsHttpServer::Handle(int fd, Conn& c, absl::string_view head) {
  auto bad = [&](absl::string_view why) {
    Respond(fd, c, 400, kTextContentType, absl::StrCat(why, "\n"), false);
  };
  std::vector<absl::string_view> lines = absl::StrSplit(head, '\n');
  for (absl::string_view& l : lines) absl::ConsumeSuffix(&l, "\r");
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) return bad("empty request");

  std::vector<absl::string_view> rl = absl::StrSplit(lines[0], ' ');
  if (rl.size() != 3 || !IsToken(rl[0]) || rl[1].empty())
    return bad("malformed request line");
  absl::string_view method = rl[0], target = rl[1], version = rl[2];
  if (version.size() != 8 || !absl::StartsWith(version, "HTTP/") ||
      !absl::ascii_isdigit(version[5]) || version[6] != '.' || !absl::ascii_isdigit(version[7]))
    return bad("malformed HTTP version");
  if (version[5] != '1')
    return Respond(fd, c, 505, kTextContentType, "HTTP/1.x only\n", false);
  for (char ch : target)
    if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f) return bad("malformed target");

  int hosts = 0;
  for (size_t i = 1; i < lines.size(); i++) {
    absl::string_view l = lines[i];
    if (l.empty() || l[0] == ' ' || l[0] == '\t') return bad("malformed header");
    size_t colon = l.find(':');
    if (colon == absl::string_view::npos || !IsToken(l.substr(0, colon)))
      return bad("malformed header");
    if (absl::EqualsIgnoreCase(l.substr(0, colon), "host")) hosts++;
  }
  if (hosts > 1 || (version == "HTTP/1.1" && hosts == 0))
    return bad("an HTTP/1.1 request needs exactly one Host header");

  // Absolute form (proxies): keep the path. Query and fragment are ignored.
  if (absl::StartsWithIgnoreCase(target, "http://") ||
      absl::StartsWithIgnoreCase(target, "https://")) {
    size_t scheme_end = target.find("//") + 2;
    size_t slash = target.find('/', scheme_end);
    target = slash == absl::string_view::npos ? absl::string_view("/") : target.substr(slash);
  }
  if (target[0] != '/') return bad("malformed target");
  absl::string_view path = target.substr(0, target.find_first_of("?#"));

  bool get = method == "GET", head_only = method == "HEAD";
  if (path != "/metrics" && path != "/healthz")
    return Respond(fd, c, 404, kTextContentType, "not found (try /metrics)\n", head_only);
  if (!get && !head_only)
    return Respond(fd, c, 405, kTextContentType, "GET or HEAD only\n", false,
                   "Allow: GET, HEAD\r\n");
  if (path == "/healthz") return Respond(fd, c, 200, kTextContentType, "ok\n", head_only);
  Respond(fd, c, 200, kMetricsContentType, provider_(), head_only);
}

void MetricsHttpServer::Respond(int fd, Conn& c, int status, absl::string_view content_type,
                                std::string body, bool head, absl::string_view extra_headers) {
  c.out = absl::StrCat("HTTP/1.1 ", status, " ", Reason(status), "\r\nContent-Type: ",
                       content_type, "\r\nContent-Length: ", body.size(), "\r\n", extra_headers,
                       "Cache-Control: no-store\r\nConnection: close\r\n\r\n");
  if (!head) c.out.append(body);
  c.out_off = 0;
  std::string().swap(c.in);
  if (status == 200) stats_.ok++;
  else stats_.errors++;
  c.phase = Conn::kWriting;
  Write(fd, c);
}

void MetricsHttpServer::Write(int fd, Conn& c) {
  while (c.out_off < c.out.size()) {
    ssize_t n = send(fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      epoll_event e{};
      e.events = EPOLLOUT;
      e.data.fd = fd;
      epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &e);
      return;
    }
    Close(fd);
    return;
  }
  // All sent: half-close, then read and drop until the client closes, so
  // unread request bytes never make the kernel answer with an RST that
  // could destroy the response before the client read it.
  std::string().swap(c.out);
  shutdown(fd, SHUT_WR);
  c.phase = Conn::kDraining;
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = fd;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &e);
  Drain(fd, c);
}

void MetricsHttpServer::Drain(int fd, Conn& c) {
  (void)c;
  char buf[kReadChunk];
  // Bounded: a client streaming junk cannot hold the loop; the deadline
  // closes it eventually.
  for (int i = 0; i < 16; i++) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;  // EOF or error
  }
  Close(fd);
}

void MetricsHttpServer::Close(int fd) {
  epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  conns_.erase(fd);
}

// ------------------------------------------------------------------ histogram

namespace {

constexpr uint64_t kBoundsNs[LatencyHistogram::kBounds] = {
    100'000,     250'000,     500'000,       1'000'000,     2'500'000,     5'000'000,
    10'000'000,  25'000'000,  50'000'000,    100'000'000,   250'000'000,   500'000'000,
    1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
constexpr const char* kLe[LatencyHistogram::kBounds + 1] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",    "0.5",    "1",     "2.5",    "5",     "10",   "+Inf"};

}  // namespace

void LatencyHistogram::Observe(uint64_t ns) {
  int i = 0;
  while (i < kBounds && ns > kBoundsNs[i]) i++;
  counts_[i]++;
  sum_ns_ += ns;
  count_++;
}

void LatencyHistogram::AppendPrometheus(std::string* out, absl::string_view name,
                                        absl::string_view labels) const {
  absl::string_view sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (int i = 0; i <= kBounds; i++) {
    cumulative += counts_[i];
    absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"", kLe[i], "\"} ", cumulative,
                    "\n");
  }
  std::string braces = labels.empty() ? std::string() : absl::StrCat("{", labels, "}");
  // Exact decimal seconds (a double would round large sums).
  absl::StrAppendFormat(out, "%s_sum%s %d.%09d\n", name, braces, sum_ns_ / 1000000000,
                        sum_ns_ % 1000000000);
  absl::StrAppend(out, name, "_count", braces, " ", count_, "\n");
}

}  // namespace rematcher
