#include "testing/loadgen/loadgen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "testing/backend/body.h"
#include "testing/backend/http_head.h"

namespace rematcher::loadgen {
namespace {

using ::rematcher::backend::BodyWord;
using ::rematcher::backend::FillBody;
using ::rematcher::backend::Fnv1a64;

constexpr size_t kOutChunkBytes = 256 * 1024;
constexpr size_t kReadChunkBytes = 256 * 1024;
constexpr size_t kVerifyChunkBytes = 64 * 1024;
constexpr int64_t kTickNs = 1'000'000;           // housekeeping period
constexpr int64_t kReconnectBackoffNs = 1'000'000;  // after connect failure
constexpr int64_t kAwaitEofNs = 1'000'000'000;   // wait for server FIN
constexpr int kMaxLoggedVerifyFailures = 10;

constexpr uint64_t kTimerTag = 1;
constexpr uint64_t kSendTimerTag = 2;
constexpr uint64_t kFirstConnId = 16;

// Salts that derive independent per-request choices from --seed.
constexpr uint64_t kSaltSize = 0x51a3;
constexpr uint64_t kSaltSeed = 0x5eed;
constexpr uint64_t kSaltUploadSize = 0x0b5a;
constexpr uint64_t kSaltDelay = 0xde1a;
constexpr uint64_t kSaltUploadSeed = 0x0b5e;

int64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

struct Request {
  uint64_t index = 0;
  uint64_t size = 0;
  uint64_t seed = 0;
  uint64_t upload_size = 0;
  uint64_t upload_seed = 0;
  uint64_t upload_fnv = 0;  // set once the upload is serialized
  int64_t intended_ns = 0;  // latency origin
  int64_t sent_ns = 0;      // head handed to the out buffer; timeout origin
  uint64_t conn = 0;        // connection it went out on: thread << 32 | id
};

struct CsvRow {
  uint64_t index;
  int64_t intended_us;  // since run start
  int64_t latency_us;   // -1 without a complete response
  uint64_t size;
  uint64_t upload_size;
  int status;
  std::string outcome;  // ok | verify_<kind> | <error kind>
  std::string backend;
  uint64_t conn;        // Request::conn (0: never sent)
};

struct ResponseState {
  int status = 0;
  uint64_t content_length = 0;
  bool keep_alive = true;
  std::string backend;
  bool have_seed = false;
  uint64_t seed = 0;
  bool have_body_fnv = false;
  uint64_t body_fnv = 0;
  bool have_upload = false;
  uint64_t upload_len = 0;
  uint64_t upload_fnv = 0;
  uint64_t got = 0;
  Fnv1a64 fnv;
  bool bytes_mismatch = false;
};

enum class ConnState { kConnecting, kOpen, kAwaitEof };

struct Conn {
  int fd = -1;
  uint64_t id = 0;
  ConnState state = ConnState::kConnecting;
  uint32_t epoll_mask = 0;
  int64_t state_since_ns = 0;
  bool in_ready = false;  // queued in Worker::ready_
  bool closing = false;   // server said Connection: close; take no more work

  std::deque<Request> inflight;  // in send order
  size_t write_idx = 0;          // next inflight entry to serialize
  bool head_written = false;     // of inflight[write_idx]
  uint64_t upload_done = 0;
  Fnv1a64 upload_fnv;
  std::string out;
  size_t out_pos = 0;

  std::string in;
  size_t in_pos = 0;
  size_t scan_pos = 0;
  bool in_body = false;
  ResponseState resp;

  uint64_t requests_assigned = 0;
  std::string last_backend;
};

bool ParseHex64(absl::string_view s, uint64_t* v) {
  if (s.size() != 16) return false;
  uint64_t r = 0;
  for (char ch : s) {
    int d;
    if (ch >= '0' && ch <= '9') {
      d = ch - '0';
    } else if (ch >= 'a' && ch <= 'f') {
      d = ch - 'a' + 10;
    } else if (ch >= 'A' && ch <= 'F') {
      d = ch - 'A' + 10;
    } else {
      return false;
    }
    r = (r << 4) | static_cast<uint64_t>(d);
  }
  *v = r;
  return true;
}

// Per-thread results, merged after the run.
struct Partial {
  Report report;
  std::vector<int64_t> latencies_us;
  std::vector<CsvRow> csv;
};

// State shared by all workers.
struct Shared {
  const Options* options;
  sockaddr_in target;
  std::string host_header;
  int64_t start_ns;
  int64_t issue_end_ns;    // closed/open by duration: no new requests after
  int64_t deadline_ns;     // max_time_s
  uint64_t open_total;     // open loop: requests to schedule in total
  std::atomic<uint64_t> next_index{0};  // closed loop claim counter
  std::atomic<int> logged_verify_failures{0};
};

class Worker {
 public:
  Worker(Shared* shared, int thread_index, int thread_count, int slots)
      : sh_(shared),
        opt_(*shared->options),
        thread_index_(thread_index),
        thread_count_(thread_count),
        slots_(slots) {
    next_open_index_ = static_cast<uint64_t>(thread_index);
  }

  ~Worker() {
    for (auto& [id, c] : conns_) close(c->fd);
    if (timer_fd_ >= 0) close(timer_fd_);
    if (send_timer_fd_ >= 0) close(send_timer_fd_);
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  absl::Status Init() {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return absl::ErrnoToStatus(errno, "epoll_create1");
    timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    send_timer_fd_ =
        timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer_fd_ < 0 || send_timer_fd_ < 0) {
      return absl::ErrnoToStatus(errno, "timerfd_create");
    }
    itimerspec tick{};
    tick.it_value.tv_nsec = kTickNs;
    tick.it_interval.tv_nsec = kTickNs;
    if (timerfd_settime(timer_fd_, 0, &tick, nullptr) != 0) {
      return absl::ErrnoToStatus(errno, "timerfd_settime");
    }
    for (auto [fd, tag] : {std::pair{timer_fd_, kTimerTag},
                           std::pair{send_timer_fd_, kSendTimerTag}}) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = tag;
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
        return absl::ErrnoToStatus(errno, "epoll_ctl(ADD timer)");
      }
    }
    return absl::OkStatus();
  }

  void Run() {
    constexpr int kMaxEvents = 256;
    epoll_event events[kMaxEvents];
    int64_t last_scan_ns = 0;
    for (;;) {
      int64_t now = MonoNowNs();
      if (now >= sh_->deadline_ns) {
        AbortAll(now);
        break;
      }
      ReleaseDueOpenLoop(now);
      EnsureConns(now);
      Dispatch(now);
      if (Finished()) break;
      ArmSendTimer();
      int n = epoll_wait(epoll_fd_, events, kMaxEvents, -1);
      if (n < 0 && errno != EINTR) {
        PLOG(ERROR) << "epoll_wait";
        AbortAll(MonoNowNs());
        break;
      }
      for (int i = 0; i < n; ++i) {
        const uint64_t tag = events[i].data.u64;
        if (tag == kTimerTag || tag == kSendTimerTag) {
          uint64_t expirations;
          (void)!read(tag == kTimerTag ? timer_fd_ : send_timer_fd_,
                      &expirations, sizeof(expirations));
          if (tag == kSendTimerTag) armed_send_ns_ = 0;
          continue;
        }
        HandleConnEvent(tag, events[i].events);
      }
      now = MonoNowNs();
      if (now - last_scan_ns >= kTickNs) {
        ScanTimeouts(now);
        last_scan_ns = now;
      }
    }
    for (auto& [id, c] : conns_) close(c->fd);
    conns_.clear();
  }

  Partial& partial() { return partial_; }

 private:
  // ---- work sources ------------------------------------------------------

  Request MakeRequest(uint64_t index, int64_t intended_ns) const {
    Request r;
    r.index = index;
    r.size = opt_.sizes[BodyWord(opt_.seed ^ kSaltSize, index) % opt_.sizes.size()];
    r.seed = BodyWord(opt_.seed ^ kSaltSeed, index);
    if (!opt_.upload_sizes.empty()) {
      r.upload_size = opt_.upload_sizes[BodyWord(opt_.seed ^ kSaltUploadSize, index) %
                                        opt_.upload_sizes.size()];
      r.upload_seed = BodyWord(opt_.seed ^ kSaltUploadSeed, index);
    }
    r.intended_ns = intended_ns;
    return r;
  }

  int64_t OpenIntendedNs(uint64_t index) const {
    return sh_->start_ns +
           static_cast<int64_t>(static_cast<double>(index) * 1e9 / opt_.rate);
  }

  bool OpenScheduleLeft() const {
    return next_open_index_ < sh_->open_total &&
           OpenIntendedNs(next_open_index_) < sh_->issue_end_ns;
  }

  void ReleaseDueOpenLoop(int64_t now) {
    if (opt_.mode != Mode::kOpen) return;
    while (OpenScheduleLeft()) {
      const int64_t t = OpenIntendedNs(next_open_index_);
      if (t > now) break;
      backlog_.push_back(MakeRequest(next_open_index_, t));
      next_open_index_ += static_cast<uint64_t>(thread_count_);
    }
  }

  void ArmSendTimer() {
    if (opt_.mode != Mode::kOpen || !OpenScheduleLeft()) return;
    const int64_t t = OpenIntendedNs(next_open_index_);
    if (t == armed_send_ns_) return;
    itimerspec its{};
    its.it_value.tv_sec = t / 1'000'000'000;
    its.it_value.tv_nsec = t % 1'000'000'000;
    if (timerfd_settime(send_timer_fd_, TFD_TIMER_ABSTIME, &its, nullptr) == 0) {
      armed_send_ns_ = t;
    }
  }

  // Takes the next request to send, if any.
  bool Claim(int64_t now, Request* out) {
    if (!retry_.empty()) {
      *out = retry_.front();
      retry_.pop_front();
      return true;
    }
    if (opt_.mode == Mode::kOpen) {
      if (backlog_.empty()) return false;
      *out = backlog_.front();
      backlog_.pop_front();
      return true;
    }
    if (closed_exhausted_) return false;
    if (opt_.requests == 0 && now >= sh_->issue_end_ns) {
      closed_exhausted_ = true;
      return false;
    }
    const uint64_t k = sh_->next_index.fetch_add(1);
    if (opt_.requests > 0 && k >= opt_.requests) {
      closed_exhausted_ = true;
      return false;
    }
    *out = MakeRequest(k, now);
    return true;
  }

  bool WorkRemains(int64_t now) {
    if (!retry_.empty() || !backlog_.empty()) return true;
    if (opt_.mode == Mode::kOpen) return OpenScheduleLeft();
    if (closed_exhausted_) return false;
    if (opt_.requests > 0) return sh_->next_index.load() < opt_.requests;
    return now < sh_->issue_end_ns;
  }

  bool Finished() {
    if (WorkRemains(MonoNowNs())) return false;
    for (auto& [id, c] : conns_) {
      if (!c->inflight.empty()) return false;
    }
    return true;
  }

  // ---- connections -------------------------------------------------------

  int ActiveConns() const { return active_conns_; }

  void EnsureConns(int64_t now) {
    while (ActiveConns() < slots_ && now >= reconnect_after_ns_ &&
           WorkRemains(now)) {
      if (!OpenConn(now)) {
        reconnect_after_ns_ = now + kReconnectBackoffNs;
        break;
      }
    }
  }

  bool OpenConn(int64_t now) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      PLOG_EVERY_N(WARNING, 1000) << "socket()";
      return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ++partial_.report.connections_opened;
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->id = next_id_++;
    c->state_since_ns = now;
    int rc = connect(fd, reinterpret_cast<const sockaddr*>(&sh_->target),
                     sizeof(sh_->target));
    if (rc != 0 && errno != EINPROGRESS) {
      // Immediate failure: one request pays for it so that a dead target
      // ends a bounded run instead of spinning.
      close(fd);
      Request r;
      if (Claim(now, &r)) AccountError(r, kErrConnect, now);
      return false;
    }
    c->state = rc == 0 ? ConnState::kOpen : ConnState::kConnecting;
    c->epoll_mask = rc == 0 ? EPOLLIN : EPOLLOUT;
    epoll_event ev{};
    ev.events = c->epoll_mask;
    ev.data.u64 = c->id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      PLOG(ERROR) << "epoll_ctl(ADD)";
      close(fd);
      return false;
    }
    ++active_conns_;
    Conn* raw = c.get();
    conns_.emplace(raw->id, std::move(c));
    MarkReady(raw);
    return true;
  }

  Conn* Find(uint64_t id) {
    auto it = conns_.find(id);
    return it == conns_.end() ? nullptr : it->second.get();
  }

  void RemoveConn(Conn* c) {
    if (c->state != ConnState::kAwaitEof) --active_conns_;
    close(c->fd);
    conns_.erase(c->id);
  }

  // Stops using `c` for requests: in-flight ones are requeued (the server
  // announced the close, so they were never processed), and the socket
  // waits briefly for the server's FIN so TIME_WAIT lands on the server.
  void Retire(Conn* c, int64_t now) {
    // Requests after the one just answered were never processed; resend.
    for (Request& r : c->inflight) retry_.push_back(r);
    c->inflight.clear();
    c->write_idx = 0;
    --active_conns_;
    c->state = ConnState::kAwaitEof;
    c->state_since_ns = now;
    c->out.clear();
    c->out_pos = 0;
    SetMask(c, EPOLLIN);
  }

  void MarkReady(Conn* c) {
    if (c->in_ready) return;
    c->in_ready = true;
    ready_.push_back(c->id);
  }

  size_t Capacity(const Conn* c) const {
    if (c->state == ConnState::kAwaitEof || c->closing) return 0;
    if (opt_.new_conn_per_request) return c->requests_assigned == 0 ? 1 : 0;
    size_t depth = static_cast<size_t>(std::max(1, opt_.pipeline));
    if (opt_.requests_per_conn > 0) {
      if (c->requests_assigned >= opt_.requests_per_conn) return 0;
      depth = static_cast<size_t>(
          std::min<uint64_t>(depth, opt_.requests_per_conn - c->requests_assigned));
    }
    if (opt_.mode == Mode::kClosed && !opt_.pipeline_refill) {
      // Closed loop writes a batch of `pipeline` requests back to back,
      // then waits for all of them. Refilling, it keeps `pipeline` out, as
      // the open loop does.
      return c->inflight.empty() ? depth : 0;
    }
    if (opt_.write_early_at > 0) {
      // One at a time: the first alone, each next one mid-response.
      if (c->inflight.empty()) return 1;
      return c->inflight.size() == 1 && c->in_body && c->resp.got >= opt_.write_early_at ? 1
                                                                                         : 0;
    }
    return c->inflight.size() < depth ? depth - c->inflight.size() : 0;
  }

  bool HaveWorkNow() const {
    return !retry_.empty() || !backlog_.empty() ||
           (opt_.mode == Mode::kClosed && !closed_exhausted_);
  }

  // Hands claimable requests to connections that have room.
  void Dispatch(int64_t now) {
    size_t n = ready_.size();
    while (n-- > 0 && HaveWorkNow()) {
      const uint64_t id = ready_.front();
      ready_.pop_front();
      Conn* c = Find(id);
      if (c == nullptr) continue;
      c->in_ready = false;
      size_t cap = Capacity(c);
      if (cap == 0) continue;
      bool assigned = false;
      Request r;
      while (cap > 0 && Claim(now, &r)) {
        r.conn = (static_cast<uint64_t>(thread_index_) << 32) | c->id;
        c->inflight.push_back(r);
        ++c->requests_assigned;
        --cap;
        assigned = true;
      }
      if (assigned && c->state == ConnState::kOpen && !Flush(c, now)) continue;
      if (Capacity(c) > 0) MarkReady(c);
    }
  }

  void SetMask(Conn* c, uint32_t mask) {
    if (mask == c->epoll_mask) return;
    epoll_event ev{};
    ev.events = mask;
    ev.data.u64 = c->id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &ev) == 0) {
      c->epoll_mask = mask;
    }
  }

  // ---- writing -----------------------------------------------------------

  void AppendRequestHead(Conn* c, const Request& r) {
    std::string& o = c->out;
    absl::StrAppend(&o, r.upload_size > 0 ? "POST" : "GET", " /r?size=", r.size);
    if (opt_.delay_us > 0 &&
        (opt_.delay_one_in <= 1 || BodyWord(opt_.seed ^ kSaltDelay, r.index) % opt_.delay_one_in == 0))
      absl::StrAppend(&o, "&delay_us=", opt_.delay_us);
    if (opt_.pause_us > 0)
      absl::StrAppend(&o, "&pause_at=", opt_.pause_at, "&pause_us=", opt_.pause_us);
    absl::StrAppend(&o, "&seed=", r.seed, " HTTP/1.1\r\nHost: ", sh_->host_header,
                    "\r\n");
    if (r.upload_size > 0) {
      absl::StrAppend(&o, "Content-Length: ", r.upload_size, "\r\n");
    }
    if (opt_.new_conn_per_request && opt_.close_header) o.append("Connection: close\r\n");
    if (opt_.pad_head > 0) absl::StrAppend(&o, "X-Pad: ", std::string(opt_.pad_head, 'p'), "\r\n");
    o.append("\r\n");
  }

  void FillOut(Conn* c, int64_t now) {
    while (c->out.size() < kOutChunkBytes && c->write_idx < c->inflight.size()) {
      Request& r = c->inflight[c->write_idx];
      if (!c->head_written) {
        AppendRequestHead(c, r);
        r.sent_ns = now;
        c->head_written = true;
        c->upload_done = 0;
        c->upload_fnv.Reset();
      }
      if (c->upload_done < r.upload_size) {
        const uint64_t room = kOutChunkBytes - std::min(kOutChunkBytes, c->out.size());
        const uint64_t n = std::min(room, r.upload_size - c->upload_done);
        if (n > 0) {
          const size_t old = c->out.size();
          c->out.resize(old + n);
          FillBody(r.upload_seed, c->upload_done, &c->out[old], n);
          c->upload_fnv.Update(&c->out[old], n);
          c->upload_done += n;
        }
        if (c->upload_done < r.upload_size) break;
      }
      r.upload_fnv = c->upload_fnv.value();
      c->head_written = false;
      ++c->write_idx;
    }
  }

  // Writes what it can. Returns false if the connection was removed.
  bool Flush(Conn* c, int64_t now) {
    for (;;) {
      if (c->out_pos == c->out.size()) {
        c->out.clear();
        c->out_pos = 0;
        FillOut(c, now);
        if (c->out.empty()) break;
      }
      ssize_t n = send(c->fd, c->out.data() + c->out_pos,
                       c->out.size() - c->out_pos, MSG_NOSIGNAL);
      if (n >= 0) {
        c->out_pos += static_cast<size_t>(n);
        partial_.report.bytes_sent += static_cast<uint64_t>(n);
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      Fail(c, kErrReset, now);  // EPIPE, ECONNRESET
      return false;
    }
    SetMask(c, EPOLLIN | (c->out_pos < c->out.size() ? EPOLLOUT : 0));
    return true;
  }

  // ---- reading -----------------------------------------------------------

  void HandleConnEvent(uint64_t id, uint32_t events) {
    Conn* c = Find(id);
    if (c == nullptr) return;
    const int64_t now = MonoNowNs();
    if (c->state == ConnState::kConnecting) {
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
        VLOG(1) << "connect: " << strerror(err);
        reconnect_after_ns_ = now + kReconnectBackoffNs;
        Fail(c, kErrConnect, now);
        return;
      }
      c->state = ConnState::kOpen;
      c->state_since_ns = now;
      if (!Flush(c, now)) return;
      MarkReady(c);
      return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      if (!ReadInput(c, now)) return;
    }
    if ((events & EPOLLOUT) && c->state == ConnState::kOpen) Flush(c, now);
  }

  // Returns false if the connection was removed.
  bool ReadInput(Conn* c, int64_t now) {
    for (int i = 0; i < 16; ++i) {
      ssize_t n = recv(c->fd, read_buf_.get(), kReadChunkBytes, 0);
      if (n > 0) {
        partial_.report.bytes_received += static_cast<uint64_t>(n);
        if (c->state == ConnState::kAwaitEof) continue;  // discard
        c->in.append(read_buf_.get(), static_cast<size_t>(n));
        if (!ProcessInput(c, now)) return false;
        if (static_cast<size_t>(n) < kReadChunkBytes) return true;
        continue;
      }
      if (n == 0) {
        if (!c->inflight.empty()) {
          Fail(c, kErrEof, now);
        } else {
          RemoveConn(c);  // idle close (e.g. keep-alive timeout): fine
        }
        return false;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      if (errno == EINTR) continue;
      if (c->state == ConnState::kAwaitEof || c->inflight.empty()) {
        RemoveConn(c);
      } else {
        Fail(c, kErrReset, now);
      }
      return false;
    }
    return true;
  }

  // Parses responses in `c->in`. Returns false if the connection was removed.
  bool ProcessInput(Conn* c, int64_t now) {
    while (c->state == ConnState::kOpen) {
      if (!c->in_body) {
        const size_t from = std::max(c->in_pos, c->scan_pos);
        const size_t end = c->in.find("\r\n\r\n", from);
        if (end == std::string::npos) {
          c->scan_pos = c->in.size() >= 3 ? std::max(c->in_pos, c->in.size() - 3)
                                          : c->in_pos;
          if (c->in.size() - c->in_pos > backend::kMaxHeadBytes) {
            Fail(c, kErrProtocol, now);
            return false;
          }
          break;
        }
        absl::string_view head(c->in.data() + c->in_pos, end - c->in_pos);
        if (c->inflight.empty() || !StartResponse(c, head)) {
          LOG_EVERY_N(WARNING, 100)
              << "unparseable or unsolicited response head: '"
              << absl::CEscape(head.substr(0, 200)) << "'";
          Fail(c, kErrProtocol, now);
          return false;
        }
        c->in_pos = end + 4;
        c->scan_pos = c->in_pos;
      }
      const size_t avail = c->in.size() - c->in_pos;
      const uint64_t want = c->resp.content_length - c->resp.got;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(avail, want));
      const uint64_t got_before = c->resp.got;
      if (take > 0) ConsumeBody(c, c->in.data() + c->in_pos, take);
      if (opt_.write_early_at > 0 && got_before < opt_.write_early_at &&
          c->resp.got >= opt_.write_early_at) {
        MarkReady(c);  // room for the request written ahead (Capacity)
      }
      c->in_pos += take;
      if (c->resp.got < c->resp.content_length) break;
      c->in_body = false;
      if (!CompleteResponse(c, now)) return false;
    }
    if (c->in_pos == c->in.size()) {
      c->in.clear();
      c->in_pos = 0;
      c->scan_pos = 0;
    } else if (c->in_pos >= 64 * 1024) {
      c->in.erase(0, c->in_pos);
      c->scan_pos -= std::min(c->scan_pos, c->in_pos);
      c->in_pos = 0;
    }
    return true;
  }

  bool StartResponse(Conn* c, absl::string_view head) {
    absl::StatusOr<backend::ResponseHead> h = backend::ParseResponseHead(head);
    if (!h.ok() || h->content_length < 0) return false;
    ResponseState& s = c->resp;
    s = ResponseState();
    s.status = h->status;
    s.content_length = static_cast<uint64_t>(h->content_length);
    s.keep_alive = h->keep_alive;
    s.backend = std::string(h->Find("X-Backend"));
    absl::string_view v = h->Find("X-Seed");
    s.have_seed = !v.empty() && absl::SimpleAtoi(v, &s.seed);
    s.have_body_fnv = ParseHex64(h->Find("X-Body-Fnv"), &s.body_fnv);
    absl::string_view ul = h->Find("X-Upload-Len");
    s.have_upload = !ul.empty() && absl::SimpleAtoi(ul, &s.upload_len) &&
                    ParseHex64(h->Find("X-Upload-Fnv"), &s.upload_fnv);
    c->in_body = true;
    return true;
  }

  void ConsumeBody(Conn* c, const char* data, size_t n) {
    ResponseState& s = c->resp;
    const Request& r = c->inflight.front();
    if (opt_.verify && s.status == 200) {
      s.fnv.Update(data, n);
      if (!s.bytes_mismatch) {
        // Compare against body.h in slices; bytes past the requested size
        // are a length failure, judged at completion.
        size_t done = 0;
        while (done < n && s.got + done < r.size) {
          const size_t k = static_cast<size_t>(std::min<uint64_t>(
              {n - done, kVerifyChunkBytes, r.size - (s.got + done)}));
          FillBody(r.seed, s.got + done, expect_buf_.get(), k);
          if (memcmp(expect_buf_.get(), data + done, k) != 0) {
            s.bytes_mismatch = true;
            break;
          }
          done += k;
        }
      }
    }
    s.got += n;
  }

  // Returns false if the connection was removed.
  bool CompleteResponse(Conn* c, int64_t now) {
    ResponseState& s = c->resp;
    Request r = c->inflight.front();
    const bool request_fully_sent = c->write_idx > 0;
    c->inflight.pop_front();
    if (request_fully_sent) --c->write_idx;

    const std::string& backend = s.backend.empty() ? kNoBackend : s.backend;
    ++partial_.report.backends[backend];
    if (!c->last_backend.empty() && c->last_backend != backend) {
      ++partial_.report.backend_switches;
    }
    c->last_backend = backend;
    const int64_t latency_us = (now - r.intended_ns) / 1000;
    partial_.latencies_us.push_back(latency_us);

    if (s.status != 200) {
      AccountError(r, kErrBadStatus, now, latency_us, s.status, backend);
    } else if (opt_.verify) {
      int failure = -1;
      if (s.content_length != r.size) {
        failure = kVerifyLength;
      } else if (!s.have_seed || s.seed != r.seed) {
        failure = kVerifySeed;
      } else if (s.bytes_mismatch) {
        failure = kVerifyBytes;
      } else if (!s.have_body_fnv || s.body_fnv != s.fnv.value()) {
        failure = kVerifyBodyFnv;
      } else if (r.upload_size > 0 &&
                 (!s.have_upload || s.upload_len != r.upload_size ||
                  s.upload_fnv != r.upload_fnv)) {
        failure = kVerifyUpload;
      }
      if (failure >= 0) {
        ++partial_.report.verify_failures;
        ++partial_.report.verify_failures_by_kind[failure];
        if (sh_->logged_verify_failures.fetch_add(1) < kMaxLoggedVerifyFailures) {
          LOG(WARNING) << "verify failure (" << VerifyKindName(failure)
                       << ") on request " << r.index << ": size " << r.size
                       << " seed " << r.seed << " from backend '" << backend
                       << "'";
        }
        Record(r, latency_us, s.status,
               absl::StrCat("verify_", VerifyKindName(failure)), backend);
      } else {
        ++partial_.report.ok;
        Record(r, latency_us, s.status, "ok", backend);
      }
    } else {
      ++partial_.report.ok;
      Record(r, latency_us, s.status, "ok", backend);
    }

    if (opt_.new_conn_per_request && !opt_.close_header && s.keep_alive &&
        request_fully_sent) {
      // The client closes first: FIN right after the response.
      RemoveConn(c);
      return false;
    }
    if (!s.keep_alive || !request_fully_sent || opt_.new_conn_per_request) {
      Retire(c, now);
      return true;
    }
    if (opt_.requests_per_conn > 0 && c->requests_assigned >= opt_.requests_per_conn &&
        c->inflight.empty()) {
      // Its last request answered: the client closes first (FIN), and a
      // new connection takes its place.
      RemoveConn(c);
      return false;
    }
    MarkReady(c);
    return true;
  }

  // ---- accounting --------------------------------------------------------

  void Record(const Request& r, int64_t latency_us, int status,
              std::string outcome, const std::string& backend) {
    ++partial_.report.requests;
    if (opt_.latency_csv.empty()) return;
    partial_.csv.push_back({r.index, (r.intended_ns - sh_->start_ns) / 1000,
                            latency_us, r.size, r.upload_size, status,
                            std::move(outcome), backend, r.conn});
  }

  void AccountError(const Request& r, int kind, int64_t now,
                    int64_t latency_us = -1, int status = 0,
                    const std::string& backend = "") {
    (void)now;
    ++partial_.report.errors;
    ++partial_.report.errors_by_kind[kind];
    Record(r, latency_us, status, ErrorKindName(kind), backend);
  }

  // Closes `c`; everything in flight on it is an error of `kind`.
  void Fail(Conn* c, int kind, int64_t now) {
    LogFailure(c, kind, now);
    for (const Request& r : c->inflight) AccountError(r, kind, now);
    c->inflight.clear();
    RemoveConn(c);
  }

  // Failures are rare and each one needs explaining: where the connection
  // was (its port, what it had received of the response in flight, the
  // last backend) and what its TCP stack says (TCP_INFO). The first 20.
  void LogFailure(Conn* c, int kind, int64_t now) {
    static std::atomic<int> logged{0};
    if (logged.fetch_add(1) >= 20) return;
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    getsockname(c->fd, reinterpret_cast<sockaddr*>(&local), &len);
    tcp_info ti{};
    socklen_t tlen = sizeof(ti);
    const bool have_ti = getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0;
    std::string what = absl::StrFormat(
        "%s on connection %u (local port %u): %u requests in flight, %u assigned so far, "
        "last backend '%s'; response in progress: %s, content_length %u, body got %u; "
        "unparsed input %u bytes",
        ErrorKindName(kind), c->id, ntohs(local.sin_port), c->inflight.size(),
        c->requests_assigned, c->last_backend, c->in_body ? "yes" : "no",
        c->resp.content_length, c->resp.got, c->in.size() - c->in_pos);
    if (!c->inflight.empty()) {
      const Request& r = c->inflight.front();
      absl::StrAppendFormat(&what, "; oldest request #%u size %u upload %u sent %.1f ms ago",
                            r.index, r.size, r.upload_size,
                            r.sent_ns > 0 ? (now - r.sent_ns) / 1e6 : -1.0);
    }
    if (have_ti)
      absl::StrAppendFormat(&what,
                            "; tcp state %u retransmits %u backoff %u rto %u us unacked %u "
                            "last_data_recv %u ms last_ack_recv %u ms total_retrans %u",
                            ti.tcpi_state, ti.tcpi_retransmits, ti.tcpi_backoff, ti.tcpi_rto,
                            ti.tcpi_unacked, ti.tcpi_last_data_recv, ti.tcpi_last_ack_recv,
                            ti.tcpi_total_retrans);
    LOG(WARNING) << "request failed: " << what;
  }

  void ScanTimeouts(int64_t now) {
    const int64_t timeout_ns = opt_.timeout_ms * 1'000'000;
    std::vector<std::pair<uint64_t, int>> expired;
    for (auto& [id, c] : conns_) {
      if (c->state == ConnState::kAwaitEof) {
        if (now - c->state_since_ns >= kAwaitEofNs) expired.push_back({id, -1});
      } else if (c->state == ConnState::kConnecting) {
        if (now - c->state_since_ns >= timeout_ns) {
          expired.push_back({id, kErrConnect});
        }
      } else if (!c->inflight.empty() && c->inflight.front().sent_ns > 0 &&
                 now - c->inflight.front().sent_ns >= timeout_ns) {
        expired.push_back({id, kErrTimeout});
      }
    }
    for (auto [id, kind] : expired) {
      Conn* c = Find(id);
      if (c == nullptr) continue;
      if (kind < 0) {
        RemoveConn(c);
      } else {
        Fail(c, kind, now);
      }
    }
  }

  void AbortAll(int64_t now) {
    std::vector<uint64_t> ids;
    for (auto& [id, c] : conns_) ids.push_back(id);
    for (uint64_t id : ids) Fail(Find(id), kErrUnfinished, now);
    for (const Request& r : retry_) AccountError(r, kErrUnfinished, now);
    for (const Request& r : backlog_) AccountError(r, kErrUnfinished, now);
    retry_.clear();
    backlog_.clear();
  }

  static inline const std::string kNoBackend = "(none)";

  Shared* sh_;
  const Options& opt_;
  const int thread_index_;
  const int thread_count_;
  const int slots_;
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  int send_timer_fd_ = -1;
  int64_t armed_send_ns_ = 0;
  int active_conns_ = 0;
  int64_t reconnect_after_ns_ = 0;
  uint64_t next_id_ = kFirstConnId;
  uint64_t next_open_index_ = 0;
  bool closed_exhausted_ = false;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::deque<uint64_t> ready_;    // conns that may take work
  std::deque<Request> retry_;     // requests to resend (server closed first)
  std::deque<Request> backlog_;   // open loop: due but not yet sent
  std::unique_ptr<char[]> read_buf_{new char[kReadChunkBytes]};
  std::unique_ptr<char[]> expect_buf_{new char[kVerifyChunkBytes]};
  Partial partial_;
};

int64_t Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  if (rank == 0) rank = 1;
  return sorted[std::min(rank, sorted.size()) - 1];
}

std::string JsonString(absl::string_view s) {
  std::string o = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (ch < 0x20) {
          absl::StrAppendFormat(&o, "\\u%04x", ch);
        } else {
          o += static_cast<char>(ch);
        }
    }
  }
  o += "\"";
  return o;
}

}  // namespace

const char* ErrorKindName(int kind) {
  static constexpr const char* kNames[kNumErrorKinds] = {
      "connect", "reset", "eof", "timeout", "bad_status", "protocol",
      "unfinished"};
  return kind >= 0 && kind < kNumErrorKinds ? kNames[kind] : "unknown";
}

const char* VerifyKindName(int kind) {
  static constexpr const char* kNames[kNumVerifyKinds] = {
      "length", "seed", "bytes", "body_fnv", "upload"};
  return kind >= 0 && kind < kNumVerifyKinds ? kNames[kind] : "unknown";
}

absl::StatusOr<std::vector<uint64_t>> ParseSizeList(absl::string_view list) {
  std::vector<uint64_t> sizes;
  for (absl::string_view item : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    uint64_t mult = 1;
    if (!item.empty() && (item.back() == 'k' || item.back() == 'K')) {
      mult = 1024;
      item.remove_suffix(1);
    } else if (!item.empty() && (item.back() == 'm' || item.back() == 'M')) {
      mult = 1024 * 1024;
      item.remove_suffix(1);
    }
    uint64_t n = 0;
    if (item.empty() || item[0] == '-' || item[0] == '+' ||
        !absl::SimpleAtoi(item, &n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad size '", item, "' in list '", list, "'"));
    }
    sizes.push_back(n * mult);
  }
  return sizes;
}

absl::Status ValidateOptions(const Options& o) {
  if (o.connections < 1) return absl::InvalidArgumentError("connections must be >= 1");
  if (o.threads < 1) return absl::InvalidArgumentError("threads must be >= 1");
  if (o.pipeline < 1) return absl::InvalidArgumentError("pipeline must be >= 1");
  if (o.write_early_at > 0 && o.pipeline < 2)
    return absl::InvalidArgumentError("write_early_at needs pipeline >= 2");
  if (o.pause_us > 1'000'000) return absl::InvalidArgumentError("pause_us above 1 s");
  if (o.sizes.empty()) return absl::InvalidArgumentError("sizes must not be empty");
  for (uint64_t s : o.sizes) {
    if (s > (uint64_t{1} << 30)) return absl::InvalidArgumentError("size above 1 GiB");
  }
  for (uint64_t s : o.upload_sizes) {
    if (s > (uint64_t{1} << 30)) {
      return absl::InvalidArgumentError("upload size above 1 GiB");
    }
  }
  if (!(o.max_time_s > 0)) return absl::InvalidArgumentError("max_time_s must be > 0");
  if (o.requests == 0 && !(o.duration_s > 0)) {
    return absl::InvalidArgumentError("need requests > 0 or duration_s > 0");
  }
  if (o.mode == Mode::kOpen && !(o.rate > 0)) {
    return absl::InvalidArgumentError("open mode needs rate > 0");
  }
  if (o.timeout_ms <= 0) return absl::InvalidArgumentError("timeout_ms must be > 0");
  return absl::OkStatus();
}

absl::StatusOr<Report> Run(const Options& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  Shared sh;
  sh.options = &options;
  {
    size_t colon = options.target.rfind(':');
    uint32_t port = 0;
    in_addr a{};
    if (colon == std::string::npos ||
        inet_pton(AF_INET, options.target.substr(0, colon).c_str(), &a) != 1 ||
        !absl::SimpleAtoi(options.target.substr(colon + 1), &port) ||
        port == 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("target '", options.target, "' is not IPv4 IP:PORT"));
    }
    sh.target = sockaddr_in{};
    sh.target.sin_family = AF_INET;
    sh.target.sin_addr = a;
    sh.target.sin_port = htons(static_cast<uint16_t>(port));
    sh.host_header = options.target;
  }
  const int threads = std::min(options.threads, options.connections);
  sh.start_ns = MonoNowNs();
  sh.deadline_ns = sh.start_ns + static_cast<int64_t>(options.max_time_s * 1e9);
  sh.issue_end_ns = options.requests > 0
                        ? sh.deadline_ns
                        : sh.start_ns + static_cast<int64_t>(options.duration_s * 1e9);
  sh.open_total = options.requests > 0
                      ? options.requests
                      : static_cast<uint64_t>(options.rate * options.duration_s);

  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < threads; ++t) {
    const int slots = options.connections / threads +
                      (t < options.connections % threads ? 1 : 0);
    auto w = std::make_unique<Worker>(&sh, t, threads, slots);
    if (absl::Status s = w->Init(); !s.ok()) return s;
    workers.push_back(std::move(w));
  }
  std::vector<std::thread> running;
  for (auto& w : workers) {
    Worker* raw = w.get();
    running.emplace_back([raw] { raw->Run(); });
  }
  for (std::thread& t : running) t.join();
  const int64_t end_ns = MonoNowNs();

  Report rep;
  std::vector<int64_t> lat;
  std::vector<CsvRow> csv;
  for (auto& w : workers) {
    const Report& p = w->partial().report;
    rep.requests += p.requests;
    rep.ok += p.ok;
    rep.errors += p.errors;
    for (int k = 0; k < kNumErrorKinds; ++k) rep.errors_by_kind[k] += p.errors_by_kind[k];
    rep.verify_failures += p.verify_failures;
    for (int k = 0; k < kNumVerifyKinds; ++k) {
      rep.verify_failures_by_kind[k] += p.verify_failures_by_kind[k];
    }
    for (const auto& [name, n] : p.backends) rep.backends[name] += n;
    rep.backend_switches += p.backend_switches;
    rep.connections_opened += p.connections_opened;
    rep.bytes_sent += p.bytes_sent;
    rep.bytes_received += p.bytes_received;
    auto& l = w->partial().latencies_us;
    lat.insert(lat.end(), l.begin(), l.end());
    auto& c = w->partial().csv;
    std::move(c.begin(), c.end(), std::back_inserter(csv));
  }
  // Requests asked for but never issued before max_time_s also count.
  if (options.requests > rep.requests) {
    const uint64_t missing = options.requests - rep.requests;
    rep.requests += missing;
    rep.errors += missing;
    rep.errors_by_kind[kErrUnfinished] += missing;
  }
  rep.duration_s = static_cast<double>(end_ns - sh.start_ns) / 1e9;
  rep.rps = rep.duration_s > 0 ? static_cast<double>(rep.ok) / rep.duration_s : 0;
  std::sort(lat.begin(), lat.end());
  rep.latency_p50_us = Percentile(lat, 0.50);
  rep.latency_p90_us = Percentile(lat, 0.90);
  rep.latency_p99_us = Percentile(lat, 0.99);
  rep.latency_p999_us = Percentile(lat, 0.999);
  rep.latency_max_us = lat.empty() ? 0 : lat.back();
  if (!lat.empty()) {
    long double sum = 0;
    for (int64_t v : lat) sum += v;
    rep.latency_mean_us = static_cast<int64_t>(sum / lat.size());
  }

  if (!options.latency_csv.empty()) {
    std::sort(csv.begin(), csv.end(),
              [](const CsvRow& a, const CsvRow& b) { return a.index < b.index; });
    std::ofstream f(options.latency_csv);
    f << "index,intended_us,latency_us,size,upload_size,status,outcome,backend,conn\n";
    for (const CsvRow& r : csv) {
      f << r.index << ',' << r.intended_us << ',' << r.latency_us << ','
        << r.size << ',' << r.upload_size << ',' << r.status << ','
        << r.outcome << ',' << r.backend << ',' << r.conn << '\n';
    }
    if (!f) {
      return absl::ErrnoToStatus(errno,
                                 absl::StrCat("writing ", options.latency_csv));
    }
  }
  return rep;
}

std::string ReportJson(const Options& o, const Report& r) {
  std::string s = absl::StrFormat(
      "{\"target\":%s,\"mode\":\"%s\",\"connections\":%d,\"threads\":%d,"
      "\"pipeline\":%d,\"requests\":%d,\"ok\":%d,\"errors\":%d,"
      "\"errors_by_kind\":{",
      JsonString(o.target), o.mode == Mode::kOpen ? "open" : "closed",
      o.connections, o.threads, o.pipeline, r.requests, r.ok, r.errors);
  for (int k = 0; k < kNumErrorKinds; ++k) {
    absl::StrAppendFormat(&s, "%s\"%s\":%d", k ? "," : "", ErrorKindName(k),
                          r.errors_by_kind[k]);
  }
  absl::StrAppendFormat(&s, "},\"verify_failures\":%d,\"verify_failures_by_kind\":{",
                        r.verify_failures);
  for (int k = 0; k < kNumVerifyKinds; ++k) {
    absl::StrAppendFormat(&s, "%s\"%s\":%d", k ? "," : "", VerifyKindName(k),
                          r.verify_failures_by_kind[k]);
  }
  absl::StrAppendFormat(
      &s,
      "},\"duration_s\":%.6f,\"rps\":%.1f,\"latency_us\":{\"p50\":%d,\"p90\":%d,"
      "\"p99\":%d,\"p999\":%d,\"max\":%d,\"mean\":%d},\"backends\":{",
      r.duration_s, r.rps, r.latency_p50_us, r.latency_p90_us, r.latency_p99_us,
      r.latency_p999_us, r.latency_max_us, r.latency_mean_us);
  bool first = true;
  for (const auto& [name, n] : r.backends) {
    absl::StrAppendFormat(&s, "%s%s:%d", first ? "" : ",", JsonString(name), n);
    first = false;
  }
  absl::StrAppendFormat(&s,
                        "},\"backend_switches\":%d,\"connections_opened\":%d,"
                        "\"bytes_sent\":%d,\"bytes_received\":%d}",
                        r.backend_switches, r.connections_opened, r.bytes_sent,
                        r.bytes_received);
  return s;
}

std::string ReportText(const Options& o, const Report& r) {
  std::string s = absl::StrFormat(
      "target %s, %s loop, %d connections, %d threads, pipeline %d\n"
      "requests %d: ok %d, errors %d, verify_failures %d\n",
      o.target, o.mode == Mode::kOpen ? "open" : "closed", o.connections,
      o.threads, o.pipeline, r.requests, r.ok, r.errors, r.verify_failures);
  if (r.errors > 0) {
    s += "errors by kind:";
    for (int k = 0; k < kNumErrorKinds; ++k) {
      if (r.errors_by_kind[k]) {
        absl::StrAppendFormat(&s, " %s=%d", ErrorKindName(k), r.errors_by_kind[k]);
      }
    }
    s += "\n";
  }
  if (r.verify_failures > 0) {
    s += "verify failures by kind:";
    for (int k = 0; k < kNumVerifyKinds; ++k) {
      if (r.verify_failures_by_kind[k]) {
        absl::StrAppendFormat(&s, " %s=%d", VerifyKindName(k),
                              r.verify_failures_by_kind[k]);
      }
    }
    s += "\n";
  }
  absl::StrAppendFormat(
      &s,
      "duration %.3f s, %.1f ok/s\n"
      "latency us: p50 %d  p90 %d  p99 %d  p99.9 %d  max %d  mean %d\n"
      "connections opened %d, backend switches %d, sent %d B, received %d B\n"
      "backends:",
      r.duration_s, r.rps, r.latency_p50_us, r.latency_p90_us, r.latency_p99_us,
      r.latency_p999_us, r.latency_max_us, r.latency_mean_us,
      r.connections_opened, r.backend_switches, r.bytes_sent, r.bytes_received);
  for (const auto& [name, n] : r.backends) absl::StrAppendFormat(&s, " %s=%d", name, n);
  s += "\n";
  return s;
}

}  // namespace rematcher::loadgen
