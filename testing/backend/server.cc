#include "testing/backend/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "glog/logging.h"
#include "testing/backend/body.h"
#include "testing/backend/http_head.h"

namespace rematcher::backend {
namespace {

// Bytes of response generated ahead of the socket per connection; the only
// per-connection output buffering.
constexpr size_t kOutChunkBytes = 256 * 1024;
constexpr size_t kReadChunkBytes = 256 * 1024;
// Parsed-but-unanswered requests per connection before we stop reading.
constexpr size_t kMaxQueuedResponses = 256;
// Unparsed input held per connection before we stop reading.
constexpr size_t kMaxBufferedInputBytes = 1024 * 1024;
// After our FIN, how long we keep reading for the peer's FIN before close().
constexpr int64_t kDrainTimeoutNs = 2'000'000'000;
// Bodies at least this large have their FNV cached per (seed, size).
constexpr uint64_t kFnvCacheMinBytes = 64 * 1024;
constexpr size_t kFnvCacheMaxEntries = 1024;

constexpr uint64_t kListenTag = 1;
constexpr uint64_t kTimerTag = 2;
constexpr uint64_t kStopTag = 3;
constexpr uint64_t kFirstConnId = 16;

int64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

struct PendingResponse {
  int64_t ready_ns = 0;
  std::string head;
  std::string literal_body;  // used when !generated
  bool generated = false;
  uint64_t seed = 0;
  uint64_t body_bytes = 0;
  int64_t corrupt_at = -1;  // body offset whose byte is flipped, or -1
  // Streams the body's first pause_at bytes, then pauses pause_us (a
  // response generated as it goes); pause_at >= body_bytes: no pause.
  uint64_t pause_at = UINT64_MAX;
  int64_t pause_us = 0;
  bool paused = false;
  // reset_at: the pause ends the connection with an RST instead (SO_LINGER
  // 0): a backend that dies or aborts mid-response.
  bool reset_after_pause = false;
  bool close_after = false;
  // Progress while being copied into the output buffer.
  bool head_done = false;
  uint64_t body_done = 0;
};

struct Conn {
  int fd = -1;
  uint64_t id = 0;
  uint32_t epoll_mask = 0;

  std::string in;
  size_t in_pos = 0;     // first unconsumed byte of `in`
  size_t scan_pos = 0;   // where to resume looking for CRLFCRLF

  // Request whose body is being received.
  bool in_body = false;
  uint64_t body_remaining = 0;
  Fnv1a64 upload_fnv;
  uint64_t upload_len = 0;
  std::string req_method;
  std::string req_path;
  std::string req_query;
  bool req_keep_alive = true;

  std::deque<PendingResponse> responses;
  std::string out;
  size_t out_pos = 0;

  uint64_t requests_seen = 0;
  bool no_more_requests = false;  // close requested, limit hit, or malformed
  bool close_after_flush = false;
  bool peer_eof = false;
  bool draining = false;  // our FIN is sent; discarding input until peer FIN

  int64_t last_activity_ns = 0;
  bool idle_timer_armed = false;

  bool Idle() const {
    return responses.empty() && out_pos == out.size() && !in_body &&
           in_pos == in.size() && !draining && !close_after_flush;
  }
};

enum class TimerKind { kResponseReady, kIdleCheck, kDrainTimeout };

struct Timer {
  int64_t when_ns;
  uint64_t conn_id;
  TimerKind kind;
  bool operator>(const Timer& o) const { return when_ns > o.when_ns; }
};

absl::StatusOr<int> MakeListener(uint32_t addr_be, uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket()");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, "setsockopt(SO_REUSEPORT)");
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = addr_be;
  sa.sin_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, absl::StrCat("bind() port ", port));
  }
  if (listen(fd, 4096) != 0) {
    int e = errno;
    close(fd);
    return absl::ErrnoToStatus(e, "listen()");
  }
  return fd;
}

}  // namespace

absl::Status ParseIpv4HostPort(const std::string& s, uint32_t* addr_be,
                               uint16_t* port) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", s, "' is not IP:PORT"));
  }
  in_addr a{};
  if (inet_pton(AF_INET, s.substr(0, colon).c_str(), &a) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", s.substr(0, colon), "' is not an IPv4 address"));
  }
  uint32_t p = 0;
  if (!absl::SimpleAtoi(s.substr(colon + 1), &p) || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", s.substr(colon + 1), "' is not a port"));
  }
  *addr_be = a.s_addr;
  *port = static_cast<uint16_t>(p);
  return absl::OkStatus();
}

// One event loop: a listener, a timerfd, the shared stop eventfd, and the
// connections it accepted.
class Worker {
 public:
  Worker(const ServerOptions& options, int listen_fd, int stop_fd,
         int64_t start_ns, std::atomic<uint64_t>* response_counter)
      : options_(options),
        listen_fd_(listen_fd),
        stop_fd_(stop_fd),
        start_ns_(start_ns),
        response_counter_(response_counter) {}

  ~Worker() {
    for (auto& [id, c] : conns_) close(c->fd);
    if (listen_fd_ >= 0) close(listen_fd_);
    if (timer_fd_ >= 0) close(timer_fd_);
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  absl::Status Init() {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return absl::ErrnoToStatus(errno, "epoll_create1");
    timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer_fd_ < 0) return absl::ErrnoToStatus(errno, "timerfd_create");
    if (absl::Status s = Add(listen_fd_, EPOLLIN, kListenTag); !s.ok()) return s;
    if (absl::Status s = Add(timer_fd_, EPOLLIN, kTimerTag); !s.ok()) return s;
    return Add(stop_fd_, EPOLLIN, kStopTag);
  }

  void Run() {
    constexpr int kMaxEvents = 256;
    epoll_event events[kMaxEvents];
    while (!stop_) {
      int timeout_ms = MaybeStall();
      int n = epoll_wait(epoll_fd_, events, kMaxEvents, timeout_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        PLOG(ERROR) << "epoll_wait";
        return;
      }
      for (int i = 0; i < n; ++i) {
        const uint64_t tag = events[i].data.u64;
        if (tag == kStopTag) {
          stop_ = true;
        } else if (tag == kListenTag) {
          Accept();
        } else if (tag == kTimerTag) {
          uint64_t expirations;
          (void)!read(timer_fd_, &expirations, sizeof(expirations));
          armed_timer_ns_ = 0;
        } else {
          HandleConnEvent(tag, events[i].events);
        }
      }
      RunTimers();
    }
  }

  ServerStats stats() const { return stats_; }

 private:
  absl::Status Add(int fd, uint32_t mask, uint64_t tag) {
    epoll_event ev{};
    ev.events = mask;
    ev.data.u64 = tag;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::ErrnoToStatus(errno, "epoll_ctl(ADD)");
    }
    return absl::OkStatus();
  }

  // Implements --stall_*: the last stall_ms of every stall_every_ms period
  // the loop sleeps and answers nothing. Returns the epoll timeout that wakes
  // us for the next stall (-1 when stalls are off).
  int MaybeStall() {
    if (options_.stall_every_ms <= 0 || options_.stall_ms <= 0) return -1;
    const int64_t period_ns = options_.stall_every_ms * 1'000'000;
    const int64_t stall_ns = options_.stall_ms * 1'000'000;
    int64_t phase = (MonoNowNs() - start_ns_) % period_ns;
    if (phase >= period_ns - stall_ns) {
      int64_t sleep_ns = period_ns - phase;
      timespec ts{static_cast<time_t>(sleep_ns / 1'000'000'000),
                  static_cast<long>(sleep_ns % 1'000'000'000)};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      }
      phase = (MonoNowNs() - start_ns_) % period_ns;
    }
    int64_t until_stall_ns = period_ns - stall_ns - phase;
    if (until_stall_ns < 0) until_stall_ns = 0;
    return static_cast<int>((until_stall_ns + 999'999) / 1'000'000);
  }

  void Accept() {
    for (int i = 0; i < 64; ++i) {
      int fd = accept4(listen_fd_, nullptr, nullptr,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
            errno == ECONNABORTED) {
          return;
        }
        PLOG_EVERY_N(WARNING, 1000) << "accept4";
        return;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      c->id = next_id_++;
      c->last_activity_ns = MonoNowNs();
      c->epoll_mask = EPOLLIN;
      if (!Add(fd, EPOLLIN, c->id).ok()) {
        close(fd);
        continue;
      }
      ++stats_.connections_accepted;
      Conn* raw = c.get();
      conns_.emplace(raw->id, std::move(c));
      MaybeArmIdleTimer(raw);
    }
  }

  Conn* Find(uint64_t id) {
    auto it = conns_.find(id);
    return it == conns_.end() ? nullptr : it->second.get();
  }

  void CloseConn(Conn* c) {
    close(c->fd);  // also removes it from the epoll set
    conns_.erase(c->id);
  }

  // Ends the connection with an RST rather than a FIN.
  void ResetConn(Conn* c) {
    linger l{1, 0};
    if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) != 0) {
      PLOG(ERROR) << "SO_LINGER conn " << c->id;
    }
    ++stats_.resets;
    CloseConn(c);
  }

  void HandleConnEvent(uint64_t id, uint32_t events) {
    Conn* c = Find(id);
    if (c == nullptr) return;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      if (!ReadInput(c)) return;
    }
    if (!Progress(c)) return;
    if (events & (EPOLLHUP | EPOLLERR)) {
      // Nothing more can arrive; if we still hold the connection and cannot
      // make progress on it, drop it rather than spin on the event.
      if (c->out_pos == c->out.size() &&
          (c->responses.empty() || c->responses.front().ready_ns > MonoNowNs())) {
        CloseConn(c);
      }
    }
  }

  // Reads what is available. Returns false if the connection was closed.
  bool ReadInput(Conn* c) {
    for (int i = 0; i < 8; ++i) {
      if (c->in.size() - c->in_pos >= kMaxBufferedInputBytes && !c->draining) {
        break;
      }
      ssize_t n = recv(c->fd, read_buf_.get(), kReadChunkBytes, 0);
      if (n > 0) {
        c->last_activity_ns = MonoNowNs();
        // Input after the last request we will answer is discarded.
        if (!c->draining && !c->no_more_requests) {
          c->in.append(read_buf_.get(), static_cast<size_t>(n));
        }
        if (static_cast<size_t>(n) < kReadChunkBytes) break;
        continue;
      }
      if (n == 0) {
        c->peer_eof = true;
        if (c->draining) {
          CloseConn(c);
          return false;
        }
        break;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      CloseConn(c);  // reset by peer or similar
      return false;
    }
    return true;
  }

  // Parses input, writes ready output, updates epoll interest and timers.
  // Returns false if the connection was closed.
  bool Progress(Conn* c) {
    for (;;) {
      ParseRequests(c);
      const bool was_full = c->responses.size() >= kMaxQueuedResponses;
      if (!WriteOutput(c)) return false;
      // Writing may have made queue room for buffered pipelined requests.
      if (!was_full || c->responses.size() >= kMaxQueuedResponses ||
          c->in_pos == c->in.size()) {
        break;
      }
    }
    if (c->close_after_flush && c->out_pos == c->out.size() &&
        c->responses.empty() && !c->draining) {
      if (c->peer_eof) {
        CloseConn(c);
        return false;
      }
      shutdown(c->fd, SHUT_WR);
      c->draining = true;
      timers_.push({MonoNowNs() + kDrainTimeoutNs, c->id,
                    TimerKind::kDrainTimeout});
    }
    if (c->peer_eof && c->Idle()) {
      CloseConn(c);
      return false;
    }
    if (c->peer_eof && c->draining) {
      CloseConn(c);
      return false;
    }
    UpdateInterest(c);
    MaybeArmIdleTimer(c);
    return true;
  }

  void UpdateInterest(Conn* c) {
    uint32_t mask = 0;
    const bool want_read =
        !c->peer_eof &&
        (c->draining ||
         (!c->no_more_requests && c->responses.size() < kMaxQueuedResponses &&
          c->in.size() - c->in_pos < kMaxBufferedInputBytes));
    if (want_read) mask |= EPOLLIN;
    if (c->out_pos < c->out.size()) mask |= EPOLLOUT;
    if (mask == c->epoll_mask) return;
    epoll_event ev{};
    ev.events = mask;
    ev.data.u64 = c->id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev) == 0) {
      c->epoll_mask = mask;
    } else {
      PLOG(ERROR) << "epoll_ctl(MOD) conn " << c->id;
    }
  }

  void MaybeArmIdleTimer(Conn* c) {
    if (options_.keepalive_timeout_ms <= 0 || c->idle_timer_armed ||
        !c->Idle()) {
      return;
    }
    c->idle_timer_armed = true;
    timers_.push({c->last_activity_ns + options_.keepalive_timeout_ms * 1'000'000,
                  c->id, TimerKind::kIdleCheck});
  }

  void CompactInput(Conn* c) {
    if (c->in_pos == c->in.size()) {
      c->in.clear();
      c->in_pos = 0;
      c->scan_pos = 0;
    } else if (c->in_pos >= 64 * 1024) {
      c->in.erase(0, c->in_pos);
      c->scan_pos -= std::min(c->scan_pos, c->in_pos);
      c->in_pos = 0;
    }
  }

  void ParseRequests(Conn* c) {
    while (!c->no_more_requests && !c->draining &&
           c->responses.size() < kMaxQueuedResponses) {
      if (c->in_body) {
        const size_t avail = c->in.size() - c->in_pos;
        const size_t take =
            static_cast<size_t>(std::min<uint64_t>(avail, c->body_remaining));
        c->upload_fnv.Update(c->in.data() + c->in_pos, take);
        c->upload_len += take;
        c->in_pos += take;
        c->body_remaining -= take;
        if (c->body_remaining > 0) break;
        c->in_body = false;
        FinishRequest(c);
        continue;
      }
      const size_t from = std::max(c->in_pos, c->scan_pos);
      const size_t end = c->in.find("\r\n\r\n", from);
      if (end == std::string::npos) {
        c->scan_pos = c->in.size() >= 3 ? std::max(c->in_pos, c->in.size() - 3)
                                        : c->in_pos;
        if (c->in.size() - c->in_pos > kMaxHeadBytes) {
          RejectMalformed(c, "request head too large");
        }
        break;
      }
      absl::string_view head(c->in.data() + c->in_pos, end - c->in_pos);
      absl::StatusOr<RequestHead> req = ParseRequestHead(head);
      if (!req.ok()) {
        RejectMalformed(c, req.status().message());
        break;
      }
      if (static_cast<uint64_t>(req->content_length) > kMaxBodyBytes) {
        RejectMalformed(c, "request body too large");
        break;
      }
      c->req_method.assign(req->method.data(), req->method.size());
      c->req_path.assign(req->path.data(), req->path.size());
      c->req_query.assign(req->query.data(), req->query.size());
      c->req_keep_alive = req->keep_alive;
      c->body_remaining = static_cast<uint64_t>(req->content_length);
      c->upload_fnv.Reset();
      c->upload_len = 0;
      c->in_pos = end + 4;
      c->scan_pos = c->in_pos;
      c->in_body = true;  // possibly empty; finished on the next iteration
    }
    CompactInput(c);
  }

  void RejectMalformed(Conn* c, absl::string_view why) {
    ++stats_.bad_requests;
    VLOG(1) << "conn " << c->id << ": 400: " << why;
    std::string body = absl::StrCat("bad request: ", why, "\n");
    PendingResponse r;
    r.ready_ns = 0;
    r.head = absl::StrCat("HTTP/1.1 400 Bad Request\r\nContent-Length: ",
                          body.size(), "\r\nX-Backend: ", options_.name,
                          "\r\nConnection: close\r\n\r\n");
    r.literal_body = std::move(body);
    r.close_after = true;
    c->responses.push_back(std::move(r));
    c->no_more_requests = true;
    c->in.clear();
    c->in_pos = 0;
    c->scan_pos = 0;
  }

  uint64_t CachedBodyFnv(uint64_t seed, uint64_t size) {
    if (size < kFnvCacheMinBytes) return BodyFnv(seed, size);
    auto key = std::make_pair(seed, size);
    auto it = fnv_cache_.find(key);
    if (it != fnv_cache_.end()) return it->second;
    if (fnv_cache_.size() >= kFnvCacheMaxEntries) fnv_cache_.clear();
    uint64_t v = BodyFnv(seed, size);
    fnv_cache_.emplace(key, v);
    return v;
  }

  // Builds the response for the request whose head and body were consumed.
  void FinishRequest(Conn* c) {
    ++c->requests_seen;
    ++stats_.requests;
    const int64_t now = MonoNowNs();
    const bool limit_hit = options_.max_requests_per_conn > 0 &&
                           c->requests_seen >=
                               static_cast<uint64_t>(options_.max_requests_per_conn);
    PendingResponse r;
    r.close_after = !c->req_keep_alive || limit_hit;
    const char* conn_hdr = r.close_after ? "close" : "keep-alive";
    int64_t delay_us = options_.service_us;

    if (c->req_path == "/r" && (c->req_method == "GET" || c->req_method == "POST")) {
      absl::StatusOr<uint64_t> size = QueryUint(c->req_query, "size", 0);
      absl::StatusOr<uint64_t> delay = QueryUint(c->req_query, "delay_us", 0);
      absl::StatusOr<uint64_t> seed = QueryUint(c->req_query, "seed", 0);
      absl::StatusOr<uint64_t> pause_at = QueryUint(c->req_query, "pause_at", UINT64_MAX);
      absl::StatusOr<uint64_t> pause_us = QueryUint(c->req_query, "pause_us", 0);
      absl::StatusOr<uint64_t> reset_at = QueryUint(c->req_query, "reset_at", UINT64_MAX);
      absl::Status bad = !size.ok() ? size.status()
                         : !delay.ok() ? delay.status()
                         : !seed.ok()  ? seed.status()
                         : !pause_at.ok() ? pause_at.status()
                         : !pause_us.ok() ? pause_us.status()
                         : !reset_at.ok() ? reset_at.status()
                                       : absl::OkStatus();
      if (bad.ok() && *reset_at != UINT64_MAX && *pause_at != UINT64_MAX) {
        bad = absl::InvalidArgumentError("reset_at and pause_at together");
      }
      if (bad.ok() && *size > kMaxBodyBytes) {
        bad = absl::InvalidArgumentError("size too large");
      }
      if (bad.ok() && *delay > kMaxDelayUs) {
        bad = absl::InvalidArgumentError("delay_us too large");
      }
      if (bad.ok() && *pause_us > kMaxDelayUs) {
        bad = absl::InvalidArgumentError("pause_us too large");
      }
      if (!bad.ok()) {
        RejectMalformed(c, bad.message());
        return;
      }
      delay_us += static_cast<int64_t>(*delay);
      r.generated = true;
      r.seed = *seed;
      r.body_bytes = *size;
      r.pause_at = *pause_at;
      r.pause_us = static_cast<int64_t>(*pause_us);
      if (*reset_at < r.body_bytes) {
        // The first reset_at bytes, time to deliver them (pause_us, 50 ms
        // if not given), then the RST.
        r.pause_at = *reset_at;
        if (r.pause_us == 0) r.pause_us = 50'000;
        r.reset_after_pause = true;
      }
      const uint64_t nth = response_counter_->fetch_add(1) + 1;
      if (options_.corrupt_every > 0 &&
          nth % static_cast<uint64_t>(options_.corrupt_every) == 0 &&
          r.body_bytes > 0) {
        r.corrupt_at = static_cast<int64_t>(r.body_bytes / 2);
        ++stats_.corrupted_responses;
      }
      // X-Body-Fnv is always the intended body's hash, so a flipped byte
      // looks exactly like damage in transit.
      r.head = absl::StrCat(
          "HTTP/1.1 200 OK\r\nContent-Length: ", r.body_bytes,
          "\r\nX-Backend: ", options_.name, "\r\nX-Seed: ", r.seed,
          "\r\nX-Body-Fnv: ", FnvHex(CachedBodyFnv(r.seed, r.body_bytes)));
      if (c->req_method == "POST") {
        absl::StrAppend(&r.head, "\r\nX-Upload-Len: ", c->upload_len,
                        "\r\nX-Upload-Fnv: ", FnvHex(c->upload_fnv.value()));
      }
      absl::StrAppend(&r.head, "\r\nConnection: ", conn_hdr, "\r\n\r\n");
    } else if (c->req_path == "/health" && c->req_method == "GET") {
      const bool sick = !options_.unhealthy_file.empty() &&
                        access(options_.unhealthy_file.c_str(), F_OK) == 0;
      r.literal_body = sick ? "unhealthy\n" : "ok\n";
      r.head = absl::StrCat(sick ? "HTTP/1.1 503 Service Unavailable" : "HTTP/1.1 200 OK",
                            "\r\nContent-Length: ", r.literal_body.size(), "\r\nX-Backend: ",
                            options_.name, "\r\nConnection: ", conn_hdr, "\r\n\r\n");
    } else {
      r.literal_body = "not found\n";
      r.head = absl::StrCat("HTTP/1.1 404 Not Found\r\nContent-Length: ",
                            r.literal_body.size(), "\r\nX-Backend: ",
                            options_.name, "\r\nConnection: ", conn_hdr,
                            "\r\n\r\n");
    }
    r.ready_ns = now + delay_us * 1000;
    if (r.close_after) c->no_more_requests = true;
    if (r.ready_ns > now) {
      timers_.push({r.ready_ns, c->id, TimerKind::kResponseReady});
    }
    c->responses.push_back(std::move(r));
  }

  // Copies ready responses (head, then generated body) into `out` up to
  // kOutChunkBytes.
  void FillOutput(Conn* c, int64_t now) {
    while (c->out.size() < kOutChunkBytes && !c->responses.empty() &&
           !c->close_after_flush) {
      PendingResponse& r = c->responses.front();
      if (r.ready_ns > now) break;
      if (!r.head_done) {
        c->out.append(r.head);
        r.head_done = true;
      }
      if (r.generated) {
        const uint64_t room = kOutChunkBytes - std::min(kOutChunkBytes, c->out.size());
        const uint64_t limit =
            !r.paused && r.pause_at < r.body_bytes ? r.pause_at : r.body_bytes;
        const uint64_t n = std::min(room, limit - r.body_done);
        if (n > 0) {
          const size_t old = c->out.size();
          c->out.resize(old + n);
          char* dst = &c->out[old];
          FillBody(r.seed, r.body_done, dst, n);
          if (r.corrupt_at >= 0 &&
              static_cast<uint64_t>(r.corrupt_at) >= r.body_done &&
              static_cast<uint64_t>(r.corrupt_at) < r.body_done + n) {
            dst[r.corrupt_at - r.body_done] ^= 0xff;
          }
          r.body_done += n;
          stats_.body_bytes_sent += n;
        }
        if (r.body_done == limit && limit < r.body_bytes) {
          // Mid-body pause: the rest after pause_us.
          r.paused = true;
          r.ready_ns = now + r.pause_us * 1000;
          timers_.push({r.ready_ns, c->id, TimerKind::kResponseReady});
          break;
        }
        if (r.body_done < r.body_bytes) break;
      } else {
        c->out.append(r.literal_body);
      }
      if (r.close_after) c->close_after_flush = true;
      c->responses.pop_front();
    }
  }

  // Returns false if the connection was closed.
  bool WriteOutput(Conn* c) {
    const int64_t now = MonoNowNs();
    for (;;) {
      if (c->out_pos == c->out.size()) {
        c->out.clear();
        c->out_pos = 0;
        FillOutput(c, now);
        if (c->out.empty()) return true;
      }
      ssize_t n = send(c->fd, c->out.data() + c->out_pos,
                       c->out.size() - c->out_pos, MSG_NOSIGNAL);
      if (n >= 0) {
        c->out_pos += static_cast<size_t>(n);
        c->last_activity_ns = now;
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      if (errno == EINTR) continue;
      CloseConn(c);  // EPIPE / ECONNRESET: client went away
      return false;
    }
  }

  void RunTimers() {
    const int64_t now = MonoNowNs();
    while (!timers_.empty() && timers_.top().when_ns <= now) {
      Timer t = timers_.top();
      timers_.pop();
      Conn* c = Find(t.conn_id);
      if (c == nullptr) continue;
      switch (t.kind) {
        case TimerKind::kResponseReady:
          if (!c->responses.empty() && c->responses.front().reset_after_pause &&
              c->responses.front().paused && c->responses.front().ready_ns <= now) {
            ResetConn(c);
            break;
          }
          Progress(c);
          break;
        case TimerKind::kIdleCheck:
          c->idle_timer_armed = false;
          if (c->Idle() &&
              now - c->last_activity_ns >=
                  options_.keepalive_timeout_ms * 1'000'000) {
            VLOG(1) << "conn " << c->id << ": keep-alive timeout";
            c->no_more_requests = true;
            c->close_after_flush = true;
            Progress(c);
          } else {
            MaybeArmIdleTimer(c);
          }
          break;
        case TimerKind::kDrainTimeout:
          if (c->draining) CloseConn(c);
          break;
      }
    }
    if (timers_.empty()) return;
    const int64_t next = timers_.top().when_ns;
    if (next == armed_timer_ns_) return;
    itimerspec its{};
    its.it_value.tv_sec = next / 1'000'000'000;
    its.it_value.tv_nsec = next % 1'000'000'000;
    if (timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &its, nullptr) == 0) {
      armed_timer_ns_ = next;
    } else {
      PLOG(ERROR) << "timerfd_settime";
    }
  }

  const ServerOptions options_;
  int listen_fd_;
  int stop_fd_;  // shared, not owned
  int64_t start_ns_;
  std::atomic<uint64_t>* response_counter_;  // shared, not owned
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  int64_t armed_timer_ns_ = 0;
  bool stop_ = false;
  uint64_t next_id_ = kFirstConnId;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, uint64_t> fnv_cache_;
  std::unique_ptr<char[]> read_buf_{new char[kReadChunkBytes]};
  ServerStats stats_;
};

absl::StatusOr<std::unique_ptr<Server>> Server::Create(
    const ServerOptions& options) {
  if (options.threads < 1 || options.threads > 256) {
    return absl::InvalidArgumentError("threads must be in [1, 256]");
  }
  if (options.stall_every_ms < 0 || options.stall_ms < 0 ||
      (options.stall_every_ms > 0 && options.stall_ms >= options.stall_every_ms)) {
    return absl::InvalidArgumentError(
        "need 0 <= stall_ms < stall_every_ms (or stall_every_ms = 0)");
  }
  if (options.service_us < 0 || options.max_requests_per_conn < 0 ||
      options.keepalive_timeout_ms < 0 || options.corrupt_every < 0) {
    return absl::InvalidArgumentError("negative option value");
  }
  uint32_t addr_be = 0;
  uint16_t port = 0;
  if (absl::Status s = ParseIpv4HostPort(options.listen, &addr_be, &port);
      !s.ok()) {
    return s;
  }
  std::unique_ptr<Server> server(new Server());
  server->options_ = options;
  server->stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (server->stop_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd");
  const int64_t start_ns = MonoNowNs();
  for (int i = 0; i < options.threads; ++i) {
    // The first listener fixes the port (it may be ephemeral); the others
    // join it through SO_REUSEPORT and the kernel spreads connections.
    absl::StatusOr<int> fd = MakeListener(addr_be, port);
    if (!fd.ok()) return fd.status();
    if (i == 0) {
      sockaddr_in sa{};
      socklen_t len = sizeof(sa);
      getsockname(*fd, reinterpret_cast<sockaddr*>(&sa), &len);
      port = ntohs(sa.sin_port);
      server->port_ = port;
    }
    auto w = std::make_unique<Worker>(server->options_, *fd, server->stop_fd_,
                                      start_ns, &server->response_counter_);
    if (absl::Status s = w->Init(); !s.ok()) return s;
    server->workers_.push_back(std::move(w));
  }
  return server;
}

Server::~Server() {
  Stop();
  Wait();
  workers_.clear();
  if (stop_fd_ >= 0) close(stop_fd_);
}

absl::Status Server::Start() {
  for (auto& w : workers_) {
    Worker* raw = w.get();
    threads_.emplace_back([raw] { raw->Run(); });
  }
  return absl::OkStatus();
}

void Server::Stop() {
  if (stop_fd_ < 0) return;
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof(one));
}

ServerStats Server::Wait() {
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  ServerStats total;
  for (auto& w : workers_) {
    ServerStats s = w->stats();
    total.connections_accepted += s.connections_accepted;
    total.requests += s.requests;
    total.bad_requests += s.bad_requests;
    total.body_bytes_sent += s.body_bytes_sent;
    total.corrupted_responses += s.corrupted_responses;
    total.resets += s.resets;
  }
  return total;
}

}  // namespace rematcher::backend
