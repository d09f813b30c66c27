// Metrics over HTTP: a tiny HTTP/1.1 server for Prometheus scrapes, and the
// fixed-bucket latency histogram the Core feeds per request.
//
// MetricsHttpServer answers
//   GET|HEAD /metrics  200, Content-Type: text/plain; version=0.0.4, the
//                      provider's text (Prometheus text exposition)
//   GET|HEAD /healthz  200 "ok"
//   other paths        404;  other methods on the two paths 405
//   malformed          400 (505 for an HTTP version other than 1.x)
//   request too big    431 (414 when the request line alone is too long)
// Every response carries Content-Length and "Connection: close"; the
// connection is then half-closed and whatever the client still sends is
// read and dropped until it closes (so a refused request's unread bytes
// never turn the response into an RST). Each connection lives at most
// `timeout` from accept to close (idle, slow or slowloris clients alike);
// beyond `max_connections` a new connection gets a best-effort 503 and is
// closed at once, so the listening socket never stays readable.
//
// Threading: none. The server owns an epoll set of its own sockets; its
// fd() is readable whenever one of them needs work. The owner registers
// fd() (EPOLLIN) in its event loop, calls OnReady() when it fires and
// Tick() periodically; the provider runs only inside OnReady(), on the
// owner's thread. Work per OnReady() is bounded so a flood of scrapes
// cannot starve the rest of the loop. No payload is ever seen here: the
// provider's text is the only body.
#ifndef REMATCHER_LB_METRICS_HTTP_H_
#define REMATCHER_LB_METRICS_HTTP_H_

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace rematcher {

// A numeric listen address: "IPv4:PORT" or "[IPv6]:PORT". Host names are
// not resolved and nothing is implied: the server binds exactly what the
// user named (0.0.0.0 only if written out).
struct ListenAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
  uint16_t port = 0;  // host order; 0 = ephemeral (tests)
};
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text);
// "127.0.0.1:9100", "[::1]:9100".
std::string ListenAddressString(const sockaddr_storage& addr);

struct MetricsHttpOptions {
  std::string addr;                               // see ParseListenAddress
  absl::Duration timeout = absl::Seconds(5);      // accept to close, at most
  size_t max_request_bytes = 8 * 1024;            // request line + headers
  size_t max_connections = 64;                    // open at once
};

struct MetricsHttpStats {
  uint64_t accepted = 0;
  uint64_t refused = 0;    // over max_connections: 503 and closed
  uint64_t timed_out = 0;  // closed at the deadline
  uint64_t ok = 0;         // 200 responses
  uint64_t errors = 0;     // 4xx/5xx responses
};

class MetricsHttpServer {
 public:
  // Returns the body of GET /metrics; called on the owner's thread.
  using Provider = std::function<std::string()>;

  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Create(
      const MetricsHttpOptions& opts, Provider provider);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // The server's own epoll fd: register it with EPOLLIN (level-triggered).
  int fd() const { return epfd_; }
  // Handles what is ready now, without blocking (a bounded batch; the fd
  // stays readable if more is pending).
  void OnReady();
  // Closes connections past their deadline; re-arms accepting after a
  // file-descriptor shortage. Call every 100 ms or so.
  void Tick();

  // Bound address, e.g. "127.0.0.1:9100" (the real port when 0 was asked).
  const std::string& address() const { return bound_; }
  uint16_t port() const { return port_; }
  size_t connections() const { return conns_.size(); }
  const MetricsHttpStats& stats() const { return stats_; }

 private:
  struct Conn {
    enum Phase { kReading, kWriting, kDraining } phase = kReading;
    std::string in;
    std::string out;
    size_t out_off = 0;
    int64_t deadline_ns = 0;  // CLOCK_MONOTONIC
  };

  MetricsHttpServer(const MetricsHttpOptions& opts, Provider provider)
      : opts_(opts), provider_(std::move(provider)) {}
  absl::Status Listen();
  void Accept();
  void OnConn(int fd, uint32_t events);
  void Read(int fd, Conn& c);
  void Respond(int fd, Conn& c, int status, absl::string_view content_type,
               std::string body, bool head, absl::string_view extra_headers = "");
  void Write(int fd, Conn& c);
  void Drain(int fd, Conn& c);
  void Close(int fd);
  // Parses c.in (a complete head) and responds.
  void Handle(int fd, Conn& c, absl::string_view head);

  MetricsHttpOptions opts_;
  Provider provider_;
  int epfd_ = -1, listen_fd_ = -1;
  bool accept_paused_ = false;
  std::string bound_;
  uint16_t port_ = 0;
  absl::flat_hash_map<int, Conn> conns_;
  MetricsHttpStats stats_;
};

// A Prometheus histogram of durations with fixed buckets from 100 us to
// 10 s (1-2.5-5 steps). Observe() is a bounded scan of a 16-entry array and
// two adds: no allocation, meant for the per-request path.
class LatencyHistogram {
 public:
  static constexpr int kBounds = 16;

  void Observe(uint64_t ns);
  void Reset() { *this = LatencyHistogram(); }
  uint64_t count() const { return count_; }
  uint64_t sum_ns() const { return sum_ns_; }
  // Count in bucket i alone (not cumulative); i == kBounds is (10 s, +Inf).
  uint64_t bucket(int i) const { return counts_[i]; }

  // Appends the sample lines (no # lines) of one labelled series:
  //   <name>_bucket{<labels>,le="0.0001"} N ... le="+Inf", <name>_sum, <name>_count
  // labels: the inside of the braces, e.g. backend="0",address="10.0.0.1:80";
  // may be empty.
  void AppendPrometheus(std::string* out, absl::string_view name,
                        absl::string_view labels) const;

 private:
  std::array<uint64_t, kBounds + 1> counts_{};
  uint64_t sum_ns_ = 0, count_ = 0;
};

}  // namespace rematcher

#endif  // REMATCHER_LB_METRICS_HTTP_H_
