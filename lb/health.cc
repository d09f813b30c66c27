#include "lb/health.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "glog/logging.h"

namespace rematcher {
namespace {

// Short names for the results a probe commonly ends with.
std::string ErrName(int err) {
  switch (err) {
    case ECONNREFUSED: return "refused";
    case ECONNRESET: return "reset";
    case EHOSTUNREACH: return "host unreachable";
    case ENETUNREACH: return "network unreachable";
    case ETIMEDOUT: return "timed out";
    default: return strerror(err);
  }
}

constexpr size_t kMaxReplyBytes = 4096;
constexpr absl::Duration kServingWindow = absl::Seconds(1);

}  // namespace

absl::Status ValidateHealthOptions(const HealthOptions& o) {
  if (o.interval < absl::ZeroDuration() ||
      (o.interval > absl::ZeroDuration() && o.interval < absl::Milliseconds(100)))
    return absl::InvalidArgumentError(
        "--health_interval_ms must be 0 (active checks off) or at least 100");
  if (o.timeout < absl::Milliseconds(10) || o.timeout > absl::Seconds(60))
    return absl::InvalidArgumentError("--health_timeout_ms must be in 10..60000");
  if (o.rise < 1 || o.rise > 100) return absl::InvalidArgumentError("--health_rise must be in 1..100");
  if (o.fall < 1 || o.fall > 100) return absl::InvalidArgumentError("--health_fall must be in 1..100");
  if (!o.http_path.empty()) {
    if (o.http_path[0] != '/' || o.http_path.size() > 1024)
      return absl::InvalidArgumentError(
          "--health_http_path must start with '/' (at most 1024 characters)");
    for (char c : o.http_path)
      if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f)
        return absl::InvalidArgumentError(
            "--health_http_path must not contain spaces or control characters");
  }
  if (o.latency_factor != 0 && !(o.latency_factor > 1 && o.latency_factor <= 1000))
    return absl::InvalidArgumentError(
        "--health_latency_factor must be 0 (off) or in (1, 1000]");
  if (o.latency_min < absl::ZeroDuration() || o.latency_eject <= absl::ZeroDuration())
    return absl::InvalidArgumentError(
        "--health_latency_min_ms must be >= 0 and --health_latency_eject_s > 0");
  return absl::OkStatus();
}

HealthChecker::~HealthChecker() {
  for (auto& [id, e] : entries_) CloseProbe(e);
}

void HealthChecker::AddBackend(uint32_t id, const BackendSpec& spec) {
  auto it = entries_.find(id);
  if (it != entries_.end()) CloseProbe(it->second);
  Entry e;
  e.spec = spec;
  PoolBackendCounters pc = pools_->Counters(id);
  e.pool_ok_seen = pc.connects_ok;
  e.pool_fail_seen = pc.connects_failed;
  e.st.last = opts_.interval > absl::ZeroDuration() ? "pending" : "passive";
  // Spread the first probes over the interval's first tenth.
  e.next_probe = absl::Now() + absl::Milliseconds(50 * (id % 8));
  entries_[id] = std::move(e);
}

void HealthChecker::RemoveBackend(uint32_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  CloseProbe(it->second);
  entries_.erase(it);
}

bool HealthChecker::healthy(uint32_t id) const {
  auto it = entries_.find(id);
  return it == entries_.end() || (it->second.st.up && !it->second.st.ejected);
}

HealthStatus HealthChecker::status(uint32_t id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? HealthStatus{} : it->second.st;
}

std::string HealthChecker::Name(uint32_t id, const Entry& e) const {
  return absl::StrCat("backend ", id, " (", AddrString(e.spec.ip, e.spec.port), ")");
}

absl::Duration HealthChecker::FastInterval() const {
  return std::max(absl::Milliseconds(100), opts_.interval / 4);
}

void HealthChecker::CloseProbe(Entry& e) {
  if (e.fd < 0) return;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, e.fd, nullptr);
  // RST instead of FIN: no TIME_WAIT left in the LB's namespace per probe.
  linger l{1, 0};
  setsockopt(e.fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(e.fd);
  by_fd_.erase(e.fd);
  e.fd = -1;
  e.phase = Entry::kIdle;
  e.rbuf.clear();
}

void HealthChecker::StartProbe(uint32_t id, Entry& e, absl::Time now) {
  e.started = now;
  e.deadline = now + opts_.timeout;
  e.next_probe = now + (e.st.fail_streak > 0 && e.st.up ? FastInterval() : opts_.interval);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    // Our side, not the backend's: say so and do not count it.
    LOG_EVERY_N(ERROR, 10) << Name(id, e) << ": cannot open a health probe socket: "
                           << strerror(errno);
    return;
  }
  sockaddr_in local{};
  local.sin_family = AF_INET;
  local.sin_addr.s_addr = opts_.lb_ip;
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local))) {
    LOG_EVERY_N(ERROR, 10) << Name(id, e) << ": cannot bind a health probe to "
                           << AddrString(opts_.lb_ip, 0) << ": " << strerror(errno);
    close(fd);
    return;
  }
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_addr.s_addr = e.spec.ip;
  peer.sin_port = e.spec.port;
  if (connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)) && errno != EINPROGRESS) {
    int err = errno;
    close(fd);
    Failure(id, e, ErrName(err), /*passive=*/false, ConnectFail(err));
    return;
  }
  epoll_event ev{};
  ev.events = EPOLLOUT;
  ev.data.fd = fd;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev)) {
    LOG_EVERY_N(ERROR, 10) << "health probe: epoll_ctl: " << strerror(errno);
    close(fd);
    return;
  }
  e.fd = fd;
  e.phase = Entry::kConnecting;
  by_fd_[fd] = id;
}

void HealthChecker::OnEvent(int fd, uint32_t events) {
  auto bit = by_fd_.find(fd);
  if (bit == by_fd_.end()) return;
  uint32_t id = bit->second;
  Entry& e = entries_[id];
  if (e.phase == Entry::kConnecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return FinishProbe(id, e, false, ErrName(err), ConnectFail(err));
    if (opts_.http_path.empty()) return FinishProbe(id, e, true, "ok");
    std::string req = absl::StrCat("GET ", opts_.http_path, " HTTP/1.1\r\nHost: ",
                                   AddrString(e.spec.ip, e.spec.port),
                                   "\r\nUser-Agent: rematcher-health\r\nConnection: close\r\n\r\n");
    // A fresh connection's send buffer takes a short request whole.
    ssize_t w = send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    if (w != static_cast<ssize_t>(req.size()))
      return FinishProbe(id, e, false, w < 0 ? ErrName(errno) : "short write");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
    e.phase = Entry::kReading;
    return;
  }
  if (e.phase != Entry::kReading) return;
  char buf[1024];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      e.rbuf.append(buf, n);
      if (e.rbuf.size() > kMaxReplyBytes || e.rbuf.find("\r\n") != std::string::npos) break;
      continue;
    }
    if (n == 0) break;  // closed: judge what we have
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (events & (EPOLLHUP | EPOLLERR)) break;
      return;  // wait for more
    }
    return FinishProbe(id, e, false, ErrName(errno));
  }
  size_t eol = e.rbuf.find("\r\n");
  if (eol == std::string::npos) return FinishProbe(id, e, false, "no HTTP status line");
  // "HTTP/1.x NNN reason"
  std::string line = e.rbuf.substr(0, std::min<size_t>(eol, 64));
  int code = 0;
  if (!absl::StartsWith(line, "HTTP/1.") || line.size() < 12 ||
      !absl::SimpleAtoi(line.substr(9, 3), &code))
    return FinishProbe(id, e, false, "bad HTTP status line");
  if (code < 200 || code > 299)
    return FinishProbe(id, e, false, absl::StrCat("HTTP ", code), Fail::kStatus);
  FinishProbe(id, e, true, absl::StrCat("HTTP ", code));
}

HealthChecker::Fail HealthChecker::ConnectFail(int err) {
  return err == ECONNREFUSED ? Fail::kRefused : Fail::kConnect;
}

void HealthChecker::FinishProbe(uint32_t id, Entry& e, bool ok, const std::string& result,
                                Fail kind) {
  absl::Duration took = absl::Now() - e.started;
  CloseProbe(e);
  if (ok)
    Success(id, e, absl::StrFormat("%s %.1fms", result, absl::ToDoubleMilliseconds(took)));
  else
    Failure(id, e, result, /*passive=*/false, kind);
}

void HealthChecker::Success(uint32_t id, Entry& e, const std::string& result) {
  e.st.checks_ok++;
  e.st.fail_streak = 0;
  e.st.ok_streak++;
  e.st.last = result;
  if (!e.st.up && e.st.ok_streak >= opts_.rise) {
    e.st.up = true;
    e.st.went_up++;
    LOG(INFO) << Name(id, e) << " is UP: " << e.st.ok_streak << " consecutive checks passed ("
              << result << ")";
    pending_.push_back({id, true, false});
  }
}

bool HealthChecker::Serving(const Entry& e) const {
  return now_ - e.last_served <= kServingWindow;
}

void HealthChecker::Failure(uint32_t id, Entry& e, const std::string& result, bool passive,
                            Fail kind) {
  if (kind == Fail::kConnect && Serving(e)) {
    e.st.connect_failures_while_serving++;
    LOG_EVERY_N(INFO, 100) << Name(id, e) << ": " << (passive ? "pooled connect" : "probe")
                           << " failed (" << result
                           << ") while the backend answers requests: overloaded, not down; "
                              "not counted ("
                           << e.st.connect_failures_while_serving << " so far)";
    return;
  }
  if (passive) e.st.passive_failures++;
  else e.st.checks_failed++;
  e.st.ok_streak = 0;
  e.st.fail_streak++;
  e.st.last = passive ? absl::StrCat("pool: ", result) : result;
  VLOG(1) << Name(id, e) << ": check failed (" << e.st.last << "), streak " << e.st.fail_streak;
  if (e.st.up && e.st.fail_streak >= opts_.fall) {
    e.st.up = false;
    e.st.went_down++;
    LOG(WARNING) << Name(id, e) << " is DOWN: " << e.st.fail_streak
                 << " consecutive failed checks (last: " << e.st.last
                 << "); its clients move at their next request";
    pending_.push_back({id, false, /*failed=*/kind != Fail::kStatus});
  } else if (e.st.up && opts_.interval > absl::ZeroDuration()) {
    // Confirm or clear a suspicion quickly.
    e.next_probe = std::min(e.next_probe, now_ + FastInterval());
  }
}

void HealthChecker::OnIdleConnDied(uint32_t backend) {
  auto it = entries_.find(backend);
  if (it == entries_.end() || opts_.interval <= absl::ZeroDuration()) return;
  // Backends close idle keep-alive connections on their own too: this only
  // brings the next probe forward; it is not a failure by itself.
  Entry& e = it->second;
  absl::Time soon = absl::Now() + absl::Milliseconds(100);
  if (e.phase == Entry::kIdle && e.next_probe > soon) e.next_probe = soon;
}

std::vector<HealthTransition> HealthChecker::Tick(absl::Time now) {
  now_ = now;
  for (auto& [id, e] : entries_) {
    if (dp_) {
      uint64_t responses = dp_->BackendLoad(id).responses;
      if (responses != e.responses_seen) {
        e.responses_seen = responses;
        e.last_served = now;
      }
    }
    // Passive: pooled-connection connects since the last tick.
    PoolBackendCounters pc = pools_->Counters(id);
    uint64_t fails = pc.connects_failed - e.pool_fail_seen;
    uint64_t refused = pc.connects_refused - e.pool_refused_seen;
    uint64_t oks = pc.connects_ok - e.pool_ok_seen;
    e.pool_fail_seen = pc.connects_failed;
    e.pool_refused_seen = pc.connects_refused;
    e.pool_ok_seen = pc.connects_ok;
    if (opts_.passive) {
      // Many connects fail together when a backend dies: they are one
      // observation per tick, not a whole fall's worth at once.
      if (fails)
        Failure(id, e, pc.last_error.empty() ? "connect failed" : pc.last_error, true,
                refused ? Fail::kRefused : Fail::kConnect);
      else if (oks && opts_.interval <= absl::ZeroDuration())
        Success(id, e, "pool connect ok");
    }
    if (opts_.interval <= absl::ZeroDuration()) continue;
    if (e.phase != Entry::kIdle && now >= e.deadline) {
      bool connecting = e.phase == Entry::kConnecting;
      CloseProbe(e);
      Failure(id, e, connecting ? "connect timed out" : "timed out", false,
              connecting ? Fail::kConnect : Fail::kNoAnswer);
    }
    if (e.phase == Entry::kIdle && now >= e.next_probe) StartProbe(id, e, now);
  }
  if (opts_.latency_factor > 0) CheckLatency(now);
  std::vector<HealthTransition> out;
  out.swap(pending_);
  return out;
}

void HealthChecker::CheckLatency(absl::Time now) {
  // Readmit those whose ejection ran out.
  for (auto& [id, e] : entries_) {
    if (!e.st.ejected || now < e.eject_until) continue;
    e.st.ejected = false;
    e.responses_at_admit = dp_->BackendLoad(id).responses;
    LOG(INFO) << Name(id, e) << " readmitted after a latency ejection";
    if (e.st.up) pending_.push_back({id, true, false});
  }
  // Judge each backend against the median of the others in service.
  for (auto& [id, e] : entries_) {
    if (e.st.ejected || !e.st.up) continue;
    const rm_backend_load& l = dp_->BackendLoad(id);
    if (l.responses - e.responses_at_admit < opts_.latency_min_responses) continue;
    std::vector<uint64_t> others;
    for (const auto& [oid, o] : entries_)
      if (oid != id && o.st.up && !o.st.ejected && dp_->BackendLoad(oid).ewma_first_ns)
        others.push_back(dp_->BackendLoad(oid).ewma_first_ns);
    // Never eject the last backend in service.
    if (others.empty()) continue;
    std::sort(others.begin(), others.end());
    double median = others[others.size() / 2];
    double mine = l.ewma_first_ns;
    if (mine < absl::ToDoubleNanoseconds(opts_.latency_min) ||
        mine <= opts_.latency_factor * median) {
      // Healthy for a full judgement: forgive earlier ejections.
      e.consecutive_ejections = 0;
      continue;
    }
    e.consecutive_ejections = std::min<uint32_t>(e.consecutive_ejections + 1, 8);
    absl::Duration d = opts_.latency_eject * e.consecutive_ejections;
    e.st.ejected = true;
    e.st.ejections++;
    e.eject_until = now + d;
    LOG(WARNING) << Name(id, e) << " ejected for " << d << ": latency EWMA "
                 << absl::StrFormat("%.1f", mine / 1e6) << " ms is over "
                 << opts_.latency_factor << "x the others' median "
                 << absl::StrFormat("%.1f", median / 1e6) << " ms";
    pending_.push_back({id, false, false});
  }
}

}  // namespace rematcher
