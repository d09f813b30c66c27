// The test backend: an HTTP/1.1 keep-alive server with deterministic bodies.
//
// Owns: listening sockets, one epoll event loop per thread (each with its own
// SO_REUSEPORT listener), and every accepted connection until it is closed.
// Contract (see README-style notes in backend_main.cc for the request API):
//   GET|POST /r?size=N&delay_us=D&seed=S -> 200, body = FillBody(S, 0..N)
//     &pause_at=P&pause_us=U: the body's first P bytes, a pause of U, the rest
//     &reset_at=P[&pause_us=U]: the first P bytes, U (50 ms), then an RST
//   other paths -> 404; malformed heads -> 400 and close.
// Delays, stalls and body generation never block other connections except the
// deliberate stall (--stall_*), which freezes a whole event loop like a GC
// pause. Responses are produced lazily in bounded chunks as the socket drains.

#ifndef REMATCHER_TESTING_BACKEND_SERVER_H_
#define REMATCHER_TESTING_BACKEND_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rematcher::backend {

// Largest response body a request may ask for, and largest upload accepted.
inline constexpr uint64_t kMaxBodyBytes = uint64_t{1} << 30;
// Largest per-request delay_us accepted.
inline constexpr uint64_t kMaxDelayUs = 60'000'000;

struct ServerOptions {
  std::string listen = "0.0.0.0:8080";  // IPv4 "IP:PORT"; port 0 = ephemeral
  std::string name;                     // X-Backend value
  int threads = 1;
  int64_t service_us = 0;          // added to every request's service time
  int64_t stall_every_ms = 0;      // 0 = no stalls
  int64_t stall_ms = 0;            // length of each stall, < stall_every_ms
  int64_t max_requests_per_conn = 0;  // 0 = unlimited
  int64_t keepalive_timeout_ms = 0;   // 0 = never close idle connections
  int64_t corrupt_every = 0;          // testing only; 0 = never corrupt
  // GET /health answers 503 while this file exists, else 200 (empty: always
  // 200): a health endpoint a test can fail without touching the serving.
  std::string unhealthy_file;
};

// Totals across threads, read after Wait().
struct ServerStats {
  uint64_t connections_accepted = 0;
  uint64_t requests = 0;
  uint64_t bad_requests = 0;
  uint64_t body_bytes_sent = 0;
  uint64_t corrupted_responses = 0;
  uint64_t resets = 0;  // connections ended with an RST (reset_at)
};

class Worker;

class Server {
 public:
  // Validates options and binds all listeners; does not start serving.
  static absl::StatusOr<std::unique_ptr<Server>> Create(
      const ServerOptions& options);
  ~Server();

  // The bound port (useful with port 0).
  int port() const { return port_; }

  // Starts the worker threads.
  absl::Status Start();
  // Asks every worker to exit; safe to call from any thread, more than once.
  void Stop();
  // Joins the workers and returns the combined stats.
  ServerStats Wait();

 private:
  Server() = default;

  ServerOptions options_;
  int port_ = 0;
  int stop_fd_ = -1;  // eventfd, made readable once by Stop()
  std::atomic<uint64_t> response_counter_{0};  // for --corrupt_every
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
};

// Parses "IP:PORT" (IPv4 dotted quad).
absl::Status ParseIpv4HostPort(const std::string& s, uint32_t* addr_be,
                               uint16_t* port);

}  // namespace rematcher::backend

#endif  // REMATCHER_TESTING_BACKEND_SERVER_H_
