#include "lb/pool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "lb/inet_csum.h"

namespace rematcher {
namespace {

absl::Status Errno(absl::string_view what) { return absl::ErrnoToStatus(errno, what); }

// A little over the datapath's settle time (RM_VERIFY_SETTLE_NS): a probe's
// answer counts only that long after the release, or after the first answer.
constexpr absl::Duration kProbeAfterSettle =
    absl::Nanoseconds(RM_VERIFY_SETTLE_NS + 1000000);

// A parked pooled connection (RM_P_PARKED) still parked this long after its
// release lost its event: the core reads the ring within milliseconds even
// when polling, so one younger than this may have its event still to come.
constexpr uint64_t kParkedLostNs = 200ULL * 1000 * 1000;

// An IPv4 socket address; ip and port in network order.
sockaddr_in Ipv4(uint32_t ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = ip;
  a.sin_port = port;
  return a;
}

}  // namespace

std::string AddrString(uint32_t ip_net, uint16_t port_net) {
  char buf[INET_ADDRSTRLEN];
  in_addr a{ip_net};
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return absl::StrCat(buf, ":", ntohs(port_net));
}

absl::StatusOr<BackendSpec> ParseBackend(const std::string& text, uint16_t default_port) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.empty() || parts.size() > 2 || parts[0].empty())
    return absl::InvalidArgumentError(absl::StrCat("bad backend '", text, "': want IPv4[:port]"));
  BackendSpec b;
  in_addr a;
  if (inet_pton(AF_INET, parts[0].c_str(), &a) != 1)
    return absl::InvalidArgumentError(
        absl::StrCat("bad backend '", text, "': '", parts[0], "' is not an IPv4 address"));
  b.ip = a.s_addr;
  uint32_t port = default_port;
  if (parts.size() == 2 && (!absl::SimpleAtoi(parts[1], &port) || port == 0 || port > 65535))
    return absl::InvalidArgumentError(
        absl::StrCat("bad backend '", text, "': port must be 1..65535"));
  b.port = htons(static_cast<uint16_t>(port));
  return b;
}

PoolManager::~PoolManager() {
  for (auto& [pid, c] : conns_) {
    if (c.fd >= 0) {
      int one = 1;
      setsockopt(c.fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one));
      close(c.fd);
    }
  }
  if (raw_fd_ >= 0) close(raw_fd_);
}

absl::Status PoolManager::AddBackend(uint32_t id, const BackendSpec& spec) {
  if (id >= RM_MAX_BACKENDS) return absl::OutOfRangeError("backend id");
  Backend& b = backends_[id];
  b.spec = spec;
  b.removed = false;
  b.target = opts_.conns_per_backend;
  b.failures = 0;
  b.next_try = absl::InfinitePast();
  return absl::OkStatus();
}

// The socket of an established pooled connection, made again in repair
// mode for an adopted record: bound to its tuple and connected without a
// handshake, at the record's sequence numbers. Like the one the earlier
// process had (in repair mode since Finish), it never sends or receives;
// it holds the tuple and closes silently.
absl::StatusOr<int> PoolManager::RepairSocket(const rm_pool& rec) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  auto fail = [&](absl::string_view what) {
    absl::Status st = Errno(what);
    close(fd);
    return st;
  };
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one)))
    return fail("TCP_REPAIR (needs CAP_NET_ADMIN)");
  for (auto [q, seq] : {std::pair<int, uint32_t>{TCP_SEND_QUEUE, rec.lb_nxt},
                        std::pair<int, uint32_t>{TCP_RECV_QUEUE, rec.be_nxt}}) {
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, sizeof(seq)))
      return fail("TCP_QUEUE_SEQ");
  }
  sockaddr_in local = Ipv4(rec.key.lb_ip, rec.key.lb_port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)))
    return fail("bind to its local port");
  sockaddr_in peer = Ipv4(rec.key.backend_ip, rec.key.backend_port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)))
    return fail("connect in repair mode");
  return fd;
}

absl::StatusOr<AdoptedPools> PoolManager::Adopt() {
  AdoptedPools out;
  std::vector<bool> kept(dp_->max_pool(), false);
  std::vector<uint32_t> parked;
  uint32_t top = 0;
  for (uint32_t pid = 0; pid < dp_->max_pool(); pid++) {
    std::optional<rm_pool> peek = dp_->PeekPool(pid);
    if (!peek || peek->key.backend_ip == 0) continue;  // never used, or deleted
    absl::StatusOr<rm_pool> rec = dp_->GetPool(pid);
    if (!rec.ok()) return rec.status();
    if (rec->key.backend_ip == 0) continue;
    top = pid + 1;
    gens_[pid] = rec->gen;
    auto b = backends_.find(rec->backend_id);
    // A removed backend's connections are kept too: its clients are
    // mid-exchange or move at their next request, as after a runtime remove.
    const bool ours = b != backends_.end() &&
                      b->second.spec.ip == rec->key.backend_ip &&
                      b->second.spec.port == rec->key.backend_port &&
                      rec->key.lb_ip == opts_.lb_ip;
    const bool live = PoolLive(*rec);
    int fd = -1;
    if (ours && live) {
      absl::StatusOr<int> s = RepairSocket(*rec);
      if (s.ok()) {
        fd = *s;
      } else {
        LOG(WARNING) << "pooled connection " << pid << " ("
                     << AddrString(rec->key.lb_ip, rec->key.lb_port) << " -> "
                     << AddrString(rec->key.backend_ip, rec->key.backend_port)
                     << "): " << s.status() << "; not adopted";
      }
    }
    if (fd < 0) {
      // Established once (sequence state known): tell the backend.
      if (live || rec->state == RM_P_DEAD) SendReset(pid, *rec).IgnoreError();
      dp_->DeletePool(pid, rec->key).IgnoreError();
      if (rec->state == RM_P_IDLE) dp_->UncountIdle(rec->backend_id);
      out.dropped++;
      continue;
    }
    Conn c;
    c.fd = fd;
    c.backend = rec->backend_id;
    c.key = rec->key;
    c.state = Conn::kLive;
    conns_[pid] = c;
    kept[pid] = true;
    b->second.live++;
    if (rec->state == RM_P_IDLE) out.idle++;
    if (rec->state == RM_P_BUSY) out.busy++;
    if (rec->state == RM_P_VERIFY) {
      out.verifying++;
      OnVerify(pid);
    }
    if (rec->state == RM_P_PARKED) parked.push_back(pid);
  }
  // Parked when the last process stopped: shrunk and queued now, as the
  // event would have had them.
  for (uint32_t pid : parked) {
    absl::StatusOr<bool> done = Unpark(pid);
    if (done.ok() && *done) {
      out.idle++;
      out.unparked++;
    }
  }
  next_id_ = top;
  for (uint32_t pid = 0; pid < top; pid++)
    if (!kept[pid]) free_ids_.push_back(pid);
  // Entries of the connections dropped above (and of any that died while
  // no process ran) leave the idle queues now.
  for (auto& [id, b] : backends_) CompactIdle(id, b);
  return out;
}

uint32_t PoolManager::ResetAll() {
  uint32_t sent = 0;
  for (const auto& [pid, c] : conns_) {
    if (c.state != Conn::kLive) continue;
    auto rec = dp_->GetPool(pid);
    if (rec.ok() && SendReset(pid, *rec).ok()) sent++;
  }
  return sent;
}

absl::Status PoolManager::SendReset(uint32_t pid, rm_pool rec) {
  if (rec.state == RM_P_BUSY)
    if (auto owner = dp_->GetClient(rec.owner); owner.ok()) UseOwnerSeqs(&rec, pid, *owner);
  return SendPoolReset(&raw_fd_, rec);
}

absl::Status SendPoolReset(int* raw_fd, const rm_pool& rec) {
  return SendPoolSegment(raw_fd, rec, rec.lb_nxt, rec.be_nxt, rec.lb_ts_last, rec.be_ts_last, 0,
                         /*rst=*/true, /*probe_byte=*/false);
}

void PoolManager::RemoveBackend(uint32_t id) {
  auto it = backends_.find(id);
  if (it != backends_.end()) it->second.removed = true;
}

absl::StatusOr<uint32_t> PoolManager::AllocId() {
  if (!free_ids_.empty()) {
    uint32_t id = free_ids_.front();
    free_ids_.pop_front();
    return id;
  }
  if (next_id_ >= dp_->max_pool())
    return absl::ResourceExhaustedError(
        absl::StrCat("pool table full (", dp_->max_pool(), " pooled connections)"));
  return next_id_++;
}

absl::Status PoolManager::OpenOne(uint32_t backend) {
  Backend& b = backends_[backend];
  auto id = AllocId();
  if (!id.ok()) return id.status();
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free_ids_.push_back(*id);
    return Errno("socket");
  }
  auto fail = [&](absl::string_view what) {
    absl::Status st = Errno(what);
    close(fd);
    free_ids_.push_back(*id);
    return st;
  };
  int mss = opts_.mss;
  if (setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss))) return fail("TCP_MAXSEG");
  sockaddr_in local = Ipv4(opts_.lb_ip, 0);
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof(local)))
    return fail(absl::StrCat("bind to ", AddrString(opts_.lb_ip, 0)));
  socklen_t len = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len)) return fail("getsockname");

  Conn c;
  c.fd = fd;
  c.backend = backend;
  c.key.backend_ip = b.spec.ip;
  c.key.lb_ip = opts_.lb_ip;
  c.key.backend_port = b.spec.port;
  c.key.lb_port = local.sin_port;
  c.deadline = absl::Now() + opts_.connect_timeout;

  // The tuple is registered before the SYN leaves, so the datapath sees
  // (and records) the SYN-ACK.
  rm_pool rec{};
  rec.state = RM_P_CONNECTING;
  rec.backend_id = backend;
  rec.owner = RM_NO_ID;
  rec.key = c.key;
  rec.gen = ++gens_[*id] & 0xfff;
  if (auto st = dp_->PutPool(*id, rec); !st.ok()) {
    close(fd);
    free_ids_.push_back(*id);
    return st;
  }
  sockaddr_in peer = Ipv4(b.spec.ip, b.spec.port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof(peer)) && errno != EINPROGRESS) {
    absl::Status st = Errno(absl::StrCat("connect to ", AddrString(b.spec.ip, b.spec.port)));
    dp_->DeletePool(*id, c.key).IgnoreError();
    close(fd);
    free_ids_.push_back(*id);
    return st;
  }
  conns_[*id] = c;
  by_fd_[fd] = *id;
  b.connecting++;
  stats_.opened++;
  if (watch_) watch_(fd);
  return absl::OkStatus();
}

std::vector<int> PoolManager::ConnectingFds() const {
  std::vector<int> out;
  out.reserve(by_fd_.size());
  for (const auto& [fd, pid] : by_fd_) out.push_back(fd);
  return out;
}

void PoolManager::OnWritable(int fd) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return;
  uint32_t pid = it->second;
  by_fd_.erase(it);
  Conn& c = conns_[pid];
  Backend& b = backends_[c.backend];
  b.connecting--;
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  absl::Status st = err ? absl::ErrnoToStatus(err, "connect") : Finish(pid, c);
  if (st.ok()) {
    b.live++;
    b.failures = 0;
    b.counters.connects_ok++;
    stats_.established++;
    return;
  }
  stats_.connect_failures++;
  b.failures++;
  b.counters.connects_failed++;
  if (err == ECONNREFUSED) b.counters.connects_refused++;
  b.counters.last_error = err == ECONNREFUSED   ? "connect refused"
                          : err == EHOSTUNREACH ? "host unreachable"
                          : err == ETIMEDOUT    ? "connect timed out"
                          : err                 ? strerror(err)
                                                : std::string(st.message());
  // Back off while a backend refuses: 50 ms doubling to 5 s.
  absl::Duration backoff = std::min(absl::Milliseconds(50) * (1 << std::min(b.failures, 7)),
                                    absl::Seconds(5));
  b.next_try = absl::Now() + backoff;
  LOG_EVERY_N(ERROR, 20) << "backend " << c.backend << " ("
                         << AddrString(b.spec.ip, b.spec.port)
                         << "): pooled connection failed: " << st
                         << " (retrying in " << backoff << ")";
  Retire(pid, /*send_rst=*/false);
}

absl::Status PoolManager::Finish(uint32_t pid, Conn& c) {
  tcp_info ti{};
  socklen_t len = sizeof(ti);
  if (getsockopt(c.fd, IPPROTO_TCP, TCP_INFO, &ti, &len)) return Errno("TCP_INFO");
  int inq = 0;
  if (ioctl(c.fd, SIOCINQ, &inq) == 0 && inq > 0)
    return absl::FailedPreconditionError("backend sent data before any request");
  // A peek: the datapath wrote the handshake's fields when the SYN-ACK
  // passed, before the kernel saw it and so before this socket became
  // writable, and writes nothing more to a connecting record.
  std::optional<rm_pool> rec = dp_->PeekPool(pid);
  if (!rec) return absl::InternalError(absl::StrCat("no pool record ", pid));
  if (!rec->synack_seen)
    return absl::InternalError(
        "the datapath did not see this connection's SYN-ACK (is XDP attached to the "
        "interface that reaches the backend?)");
  int one = 1;
  if (setsockopt(c.fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one)))
    return Errno("TCP_REPAIR (needs CAP_NET_ADMIN)");
  auto queue_seq = [&](int q, uint32_t* out) -> absl::Status {
    if (setsockopt(c.fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q)))
      return Errno("TCP_REPAIR_QUEUE");
    socklen_t l = sizeof(*out);
    if (getsockopt(c.fd, IPPROTO_TCP, TCP_QUEUE_SEQ, out, &l)) return Errno("TCP_QUEUE_SEQ");
    return absl::OkStatus();
  };
  uint32_t lb_nxt = 0, be_nxt = 0, ts = 0;
  if (auto st = queue_seq(TCP_SEND_QUEUE, &lb_nxt); !st.ok()) return st;
  if (auto st = queue_seq(TCP_RECV_QUEUE, &be_nxt); !st.ok()) return st;
  len = sizeof(ts);
  if (getsockopt(c.fd, IPPROTO_TCP, TCP_TIMESTAMP, &ts, &len)) return Errno("TCP_TIMESTAMP");
  if (be_nxt != rec->be_isn + 1)
    return absl::InternalError(absl::StrCat("backend sequence moved during setup (rcv_nxt ",
                                            be_nxt, ", isn ", rec->be_isn, ")"));
  rec->lb_nxt = lb_nxt;
  rec->be_nxt = be_nxt;
  rec->lb_ts_last = ts;
  rec->lb_wscale = (ti.tcpi_options & TCPI_OPT_WSCALE) ? ti.tcpi_rcv_wscale : 0;
  rec->be_wscale = (ti.tcpi_options & TCPI_OPT_WSCALE) ? ti.tcpi_snd_wscale : 0;
  rec->flags = ((ti.tcpi_options & TCPI_OPT_TIMESTAMPS) ? RM_LEG_TS : 0) |
               ((ti.tcpi_options & TCPI_OPT_SACK) ? RM_LEG_SACK : 0) |
               ((ti.tcpi_options & TCPI_OPT_WSCALE) ? RM_LEG_WS : 0);
  rec->state = RM_P_IDLE;
  rec->owner = RM_NO_ID;
  rec->uses = 0;
  rec->last_used_ns = CoarseNowNs();
  // The tuple is mapped since OpenOne.
  if (auto st = dp_->PutPool(pid, *rec, /*map_tuple=*/false); !st.ok()) return st;
  c.state = Conn::kLive;
  absl::Status st = dp_->PushIdle(c.backend, pid, rec->gen);
  if (!st.ok()) {
    // E2BIG: the queue is full of entries of connections that died while
    // idle (a backend closing idle connections); drop them and retry.
    auto b = backends_.find(c.backend);
    if (b != backends_.end()) CompactIdle(c.backend, b->second);
    st = dp_->PushIdle(c.backend, pid, rec->gen);
  }
  return st;
}

void PoolManager::CompactIdle(uint32_t backend, Backend& b) {
  b.deaths_since_compact = 0;
  auto n = dp_->CompactIdle(backend);
  if (!n.ok()) {
    LOG_EVERY_N(ERROR, 10) << "backend " << backend << ": " << n.status();
    return;
  }
  stats_.idle_entries_compacted += *n;
  VLOG(1) << "backend " << backend << ": " << *n << " dead idle-queue entries dropped";
}

void PoolManager::Retire(uint32_t pid, bool send_rst) {
  auto it = conns_.find(pid);
  if (it == conns_.end()) return;
  Conn c = it->second;
  conns_.erase(it);
  if (c.state == Conn::kLive) {
    Backend& b = backends_[c.backend];
    if (b.live) b.live--;
    if (send_rst) {
      auto rec = dp_->GetPool(pid);
      if (rec.ok()) SendReset(pid, *rec).IgnoreError();
    }
    stats_.retired++;
  } else {
    by_fd_.erase(c.fd);
  }
  if (c.fd >= 0) {
    // Repair mode makes close() silent: no FIN, no RST from the kernel. A
    // live connection's socket is in it already (Finish, RepairSocket); one
    // still connecting is put in it here.
    if (c.state != Conn::kLive) {
      int one = 1;
      setsockopt(c.fd, IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one));
    }
    close(c.fd);
  }
  dp_->DeletePool(pid, c.key).IgnoreError();
  free_ids_.push_back(pid);
}

void PoolManager::OnDead(uint32_t pid, bool reset, bool was_idle) {
  auto it = conns_.find(pid);
  if (it == conns_.end() || it->second.state != Conn::kLive) return;
  // A peek: DEAD is final until this thread frees the record (a stale
  // report finds it reused, in another state).
  std::optional<rm_pool> rec = dp_->PeekPool(pid);
  if (rec && rec->state != RM_P_DEAD) return;  // stale report
  uint32_t backend = it->second.backend;
  VLOG(1) << "pooled connection " << pid << " to backend " << backend << " retired";
  Retire(pid, reset);
  // Only a connection that died idle leaves an entry in the idle queue
  // (busy ones were taken out of it): counting every death compacted the
  // queue every 32 requests when backends close each connection, 5% of the
  // core's CPU.
  if (was_idle) NoteDeath(backend);
  Refill(backend, absl::Now());
}

void PoolManager::NoteDeath(uint32_t backend) {
  // A connection that died while idle leaves a dead entry in its backend's
  // idle queue; the datapath skips a few per splice, but a queue full of
  // them refuses new connections and starves clients. Compact well before.
  auto b = backends_.find(backend);
  if (b != backends_.end() &&
      ++b->second.deaths_since_compact >= std::max<uint32_t>(32, b->second.target))
    CompactIdle(backend, b->second);
}

bool PoolManager::RetireIfIdleSince(uint32_t pid, uint64_t cutoff_ns) {
  auto r = dp_->RetireIdlePool(pid, cutoff_ns);
  if (!r.ok() || !*r) return false;  // busy, used since, or gone
  uint32_t backend = conns_[pid].backend;
  Retire(pid, /*send_rst=*/true);
  NoteDeath(backend);
  return true;
}

void PoolManager::Refill(uint32_t backend, absl::Time now) {
  auto it = backends_.find(backend);
  if (it == backends_.end()) return;
  Backend& b = it->second;
  if (b.removed || now < b.next_try) return;
  uint32_t have = b.live + b.connecting;
  // While failing, probe with one connection at a time.
  uint32_t want = b.failures ? std::min<uint32_t>(b.target, have + 1) : b.target;
  for (uint32_t n = have; n < want && n < have + 32; n++) {
    absl::Status st = OpenOne(backend);
    if (!st.ok()) {
      LOG_EVERY_N(ERROR, 20) << "backend " << backend << ": cannot open pooled connection: " << st;
      b.next_try = now + absl::Seconds(1);
      break;
    }
  }
}

void PoolManager::OnNeed(uint32_t backend) {
  auto it = backends_.find(backend);
  if (it == backends_.end() || it->second.removed) return;
  Backend& b = it->second;
  // Grow only a pool that is whole and all busy. One short of its target is
  // being refilled (or its backend is failing): growing it then does not
  // help, and compounds. The events of one burst while the last growth is
  // still connecting used to take a pool to its limit within ~60 ms, and a
  // backend that was unreachable for a while came back with a pool at
  // --max_conns_per_backend (every event during the outage grew it).
  if (b.live < b.target) {
    Refill(backend, absl::Now());
    return;
  }
  uint32_t grown = std::min(opts_.max_conns_per_backend, b.target + std::max(4u, b.target / 4));
  if (grown > b.target) {
    LOG_EVERY_N(WARNING, 10) << "backend " << backend << ": all pooled connections busy; "
                             << "growing pool to " << grown;
    b.target = grown;
    b.at_limit_logged = false;
  } else if (!b.at_limit_logged && b.live + b.connecting >= opts_.max_conns_per_backend) {
    // Once per episode (re-armed when the pool can grow again): new clients
    // of this backend now wait for a release or are refused (drop_no_pool).
    b.at_limit_logged = true;
    LOG(ERROR) << "backend " << backend << " (" << AddrString(b.spec.ip, b.spec.port)
               << "): pool at --max_conns_per_backend=" << opts_.max_conns_per_backend
               << " and all busy; new clients wait or are refused (counter drop_no_pool)";
  }
  Refill(backend, absl::Now());
}

void PoolManager::Tick(absl::Time now) {
  std::vector<uint32_t> expired;
  for (auto& [pid, c] : conns_)
    if (c.state == Conn::kConnecting && now > c.deadline) expired.push_back(pid);
  for (uint32_t pid : expired) {
    Conn& c = conns_[pid];
    Backend& b = backends_[c.backend];
    b.connecting--;
    b.failures++;
    stats_.connect_failures++;
    b.counters.connects_failed++;
    b.counters.last_error = "connect timed out";
    b.next_try = now + std::min(absl::Milliseconds(50) * (1 << std::min(b.failures, 7)),
                                absl::Seconds(5));
    LOG_EVERY_N(ERROR, 20) << "backend " << c.backend << " ("
                           << AddrString(b.spec.ip, b.spec.port)
                           << "): connect timed out after " << opts_.connect_timeout;
    Retire(pid, false);
  }
  ScanPools(now);
  // A removed backend's connections close as they come back idle (its
  // clients moved on after their response): nothing takes them again.
  std::vector<uint32_t> sweep;
  for (auto& [id, b] : backends_)
    if (b.removed && b.live > 0 && now - b.last_removed_sweep >= absl::Milliseconds(200)) {
      b.last_removed_sweep = now;
      sweep.push_back(id);
    }
  for (uint32_t id : sweep) RetireIdle(id);
  for (auto& [id, b] : backends_) {
    // Keep a spare margin of idle connections, so a burst of new clients
    // finds one without waiting for a connect.
    // Only while the pool is whole: while it is being opened (at start, or
    // refilled after its backend was away) its idle count is low by
    // construction, and growing then took every pool to
    // --max_conns_per_backend.
    uint32_t low_water = std::max(2u, b.target / 8);
    if (!b.removed && b.failures == 0 && b.live >= b.target && Idle(id) < low_water &&
        b.target < opts_.max_conns_per_backend) {
      b.target = std::min(opts_.max_conns_per_backend, b.target + std::max(4u, b.target / 4));
      VLOG(1) << "backend " << id << ": idle pool low, target " << b.target;
    }
    Refill(id, now);
  }
}

uint32_t PoolManager::Established(uint32_t backend) const {
  auto it = backends_.find(backend);
  return it == backends_.end() ? 0 : it->second.live;
}

uint32_t PoolManager::Connecting(uint32_t backend) const {
  auto it = backends_.find(backend);
  return it == backends_.end() ? 0 : it->second.connecting;
}

bool PoolManager::backend_failing(uint32_t backend) const {
  auto it = backends_.find(backend);
  return it != backends_.end() && it->second.failures > 0 && it->second.live == 0;
}

PoolBackendCounters PoolManager::Counters(uint32_t backend) const {
  auto it = backends_.find(backend);
  return it == backends_.end() ? PoolBackendCounters{} : it->second.counters;
}

void PoolManager::ScanPools(absl::Time at) {
  // Every 1/20 of the idle timeout (100 ms to 3 s); every second with none.
  const bool timeout = opts_.idle_timeout > absl::ZeroDuration();
  const absl::Duration every =
      timeout ? std::clamp(opts_.idle_timeout / 20, absl::Milliseconds(100), absl::Seconds(3))
              : absl::Seconds(1);
  if (at - last_idle_scan_ < every) return;
  last_idle_scan_ = at;
  uint64_t now = CoarseNowNs();
  uint64_t limit = absl::ToInt64Nanoseconds(opts_.idle_timeout);
  // 0: no idle retirement (no timeout, or not that long since boot).
  uint64_t cutoff = timeout && now > limit ? now - limit : 0;
  std::vector<std::pair<uint64_t, uint32_t>> old;  // (idle since, id)
  std::vector<uint32_t> parked;
  for (const auto& [pid, c] : conns_) {
    if (c.state != Conn::kLive) continue;
    // A peek, not a locked read: each of those is a BPF_PROG_TEST_RUN, and
    // with ~13,700 pooled connections the scan took ~40 ms of a CPU at the
    // core's priority every 3 s; an open 5,000 req/s load's p99 was 1.7x
    // what it is with the peek (bench ab-20261207-221907, p2c 1.71
    // against 1.01 ms). Each hint below is acted on only through a call that
    // checks again: under the lock (RetireIdlePool, Unpark) or at the probe
    // (ProbeVerifying), so a record caught mid-change costs at most a
    // syscall that declines, or a connection found at the next scan.
    std::optional<rm_pool> rec = dp_->PeekPool(pid);
    if (!rec) continue;
    if (cutoff && rec->state == RM_P_IDLE && rec->last_used_ns < cutoff)
      old.push_back({rec->last_used_ns, pid});
    // Its RM_EV_POOL_VERIFY was lost (ring full): probe it all the same.
    if (rec->state == RM_P_VERIFY && !verifying_.contains(pid)) OnVerify(pid);
    // Parked for longer than the core takes to read its event: that event
    // was lost (ring full). Shrink and queue it now. (A younger one's
    // event may still be waiting in the ring.)
    if (rec->state == RM_P_PARKED && rec->last_used_ns + kParkedLostNs < now &&
        !opts_.test_hold_parked)
      parked.push_back(pid);
  }
  // Idle pools are stacks: the connections a load does not need sit at the
  // bottom and reach the timeout together (all opened at start, or all
  // grown for one burst). Each retirement is a locked syscall and a close,
  // then a connect to replace it; thousands in one scan stall the core
  // (the bench's later points suffered, docs/measurements.md
  // "2026-12-08"). The oldest kRetirePerScan go now, and while more are due
  // the scan comes back in 100 ms: 1,280 a second, so 11,000 are gone
  // within 9 s, before a backend's keep-alive timeout (nginx: 75 s) if
  // --pool_idle_timeout_ms keeps its default margin.
  constexpr size_t kRetirePerScan = 128;
  if (old.size() > kRetirePerScan) {
    std::nth_element(old.begin(), old.begin() + kRetirePerScan, old.end());
    old.resize(kRetirePerScan);
    last_idle_scan_ = at - every + absl::Milliseconds(100);
    stats_.idle_retire_deferred++;
  }
  for (const auto& [since, pid] : old)
    if (RetireIfIdleSince(pid, cutoff)) stats_.idle_timeouts++;
  for (uint32_t pid : parked) {
    absl::StatusOr<bool> done = Unpark(pid);
    if (done.ok() && *done) stats_.parked_by_scan++;
  }
}

uint32_t PoolManager::RetireIdle(uint32_t backend) {
  auto b = backends_.find(backend);
  if (b == backends_.end()) return 0;
  std::vector<uint32_t> live;
  for (const auto& [pid, c] : conns_)
    if (c.state == Conn::kLive && c.backend == backend) live.push_back(pid);
  // Each one out of service in the kernel, under its lock, if idle; their
  // queue entries, dead now, are compacted away.
  uint32_t n = 0;
  for (uint32_t pid : live)
    if (RetireIfIdleSince(pid, UINT64_MAX)) n++;
  CompactIdle(backend, b->second);
  return n;
}

void PoolManager::RetryNow(uint32_t backend) {
  auto it = backends_.find(backend);
  if (it == backends_.end() || it->second.removed) return;
  it->second.next_try = absl::InfinitePast();
  Refill(backend, absl::Now());
}

uint32_t PoolManager::Idle(uint32_t backend) const {
  if (backend >= RM_MAX_BACKENDS) return 0;
  return __atomic_load_n(&dp_->BackendLoad(backend).idle, __ATOMIC_RELAXED);
}

bool PoolManager::CanGrow(uint32_t backend) const {
  auto it = backends_.find(backend);
  return it != backends_.end() && !it->second.removed &&
         it->second.live + it->second.connecting < opts_.max_conns_per_backend;
}

absl::StatusOr<bool> PoolManager::SendAck(uint32_t pid, uint32_t seq, uint32_t ack,
                                          uint32_t tsval, uint32_t tsecr, uint16_t window) {
  // A peek (no syscall; this runs for most rematches): every field used
  // below is taken as a lower bound or a state check, so a record caught
  // mid-change can only make the ACK newer or skip it.
  std::optional<rm_pool> rec = dp_->PeekPool(pid);
  if (!rec) return absl::NotFoundError("no such pooled connection record");
  if (rec->state == RM_P_PARKED) {
    if (opts_.test_hold_parked) return false;
    if (opts_.test_skip_park_every && ++park_events_ % opts_.test_skip_park_every == 0)
      return false;  // as if the event were lost: ScanPools finds it
    return Unpark(pid, rec);
  }
  // The owed ACK is only useful while the connection sits idle (or is
  // being verified before it is): once the next client carries it, its
  // packets are newer and a late ACK with older timestamps would be
  // dropped by the backend (PAWS) or be noise.
  if (rec->state != RM_P_IDLE && rec->state != RM_P_VERIFY) return false;
  auto after = [](uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; };
  if (rec->state == RM_P_IDLE) {
    // The datapath sent it already, in place of the client's final ACK
    // (RM_POOL_ACK_SENT), and nothing moved since.
    if ((rec->flags & RM_POOL_ACK_SENT) && rec->lb_nxt == seq && rec->be_nxt == ack)
      return false;
    // Taken and handed back again since the event was written (the core
    // runs behind the datapath under load, and holds some ACKs on
    // purpose): the next client's splice carried this ACK, and its own
    // hand-back owes its own.
    if (after(rec->lb_nxt, seq) || after(rec->be_nxt, ack)) return false;
  }
  // Otherwise acknowledge from where the record stands, never with an
  // older sequence or timestamp than it holds.
  if (after(rec->lb_nxt, seq)) seq = rec->lb_nxt;
  if (after(rec->be_nxt, ack)) ack = rec->be_nxt;
  if (after(rec->lb_ts_last, tsval)) tsval = rec->lb_ts_last;
  if (after(rec->be_ts_last, tsecr)) tsecr = rec->be_ts_last;
  // Being verified, the connection is held open for what its backend may
  // still owe (as the probes hold it); idle, the window is the caller's
  // (RM_IDLE_WIN: see rematcher_shared.h).
  if (rec->state == RM_P_VERIFY) {
    window = rm_verify_win(rec->lb_wscale);
  } else if (window == 0) {
    window = RM_IDLE_WIN;  // never a zero window here: a client may take it
  }
  if (auto st = SendSegment(*rec, seq, ack, tsval, tsecr, window, /*rst=*/false, false); !st.ok())
    return st;
  return true;
}

absl::StatusOr<bool> PoolManager::Unpark(uint32_t pid, std::optional<rm_pool> seen) {
  // Nothing moves on a parked connection but its state (the backend's
  // FIN or RST kill it; a retransmission is answered in place), so the
  // record where it stands is what to send from. `seen`, read without the
  // lock (PeekPool), saves a system call; the unpark then checks that it
  // was that record (the datapath may have been writing it), and a torn
  // read is sent again from a locked copy.
  for (int attempt = 0; attempt < 2; attempt++) {
    rm_pool rec;
    if (attempt == 0 && seen) {
      rec = *seen;
    } else {
      absl::StatusOr<rm_pool> locked = dp_->GetPool(pid);
      if (!locked.ok()) return locked.status();
      rec = *locked;
    }
    if (rec.state != RM_P_PARKED) return false;
    // Linux takes a window from a segment that starts where the last one
    // did only if it is larger, or zero (6.5 and later; see
    // ProbeVerifying): so zero first, then the idle window, which a FIN
    // still fits. The next client's request offers more and is taken.
    // Queued only after both are sent, so that request comes after them.
    // A send that fails leaves the window as it was (the old behaviour):
    // the connection is queued all the same, not lost.
    if (absl::Status st = SendPoolWindowShrink(&raw_fd_, rec); !st.ok()) {
      LOG_EVERY_N(WARNING, 100) << "pooled connection " << pid << ": window shrink: " << st;
    }
    absl::StatusOr<int32_t> r = dp_->UnparkPool(pid, rec);
    if (!r.ok()) return r.status();
    if (*r == 1) {
      stats_.parked++;
      return true;
    }
    if (*r != -3) return false;  // no longer parked (it died)
    stats_.parked_reread++;
  }
  return false;
}

void PoolManager::OnVerify(uint32_t pid) {
  if (conns_.find(pid) == conns_.end()) return;
  // A little after the settle time, which the datapath measures from the
  // release (this event comes later still): an earlier answer would only
  // be absorbed, and the next probe may come 600 ms later.
  const absl::Time due = absl::Now() + kProbeAfterSettle;
  verifying_[pid] = Verifying{due, 0};
  next_probe_ = std::min(next_probe_, due);
}

void PoolManager::ProbeVerifying(absl::Time now) {
  // The next due time is found on the way (for NextProbeDue).
  next_probe_ = absl::InfiniteFuture();
  if (verifying_.empty()) return;
  std::vector<uint32_t> done, silent;
  for (auto& [pid, v] : verifying_) {
    if (now < v.due) {
      next_probe_ = std::min(next_probe_, v.due);
      continue;
    }
    std::optional<rm_pool> rec = dp_->PeekPool(pid);
    if (!rec || rec->state != RM_P_VERIFY || conns_.find(pid) == conns_.end()) {
      done.push_back(pid);  // verified, retired, or gone
      continue;
    }
    // Two answers are needed (RM_POOL_ANSWERED): 10 probes give each a few
    // chances under loss.
    if (v.probes >= 10) {
      silent.push_back(pid);
      continue;
    }
    // The last byte the backend received, again (any value: a receiver
    // never compares a duplicate): Linux answers a duplicate at once with an
    // ACK carrying its snd_nxt, whatever it has sent since. A zero-length
    // probe one byte behind (a keepalive) is out of window instead, and
    // those answers are rate-limited to one per 500 ms per connection
    // (tcp_invalid_ratelimit): too slow for a connection reused every
    // few ms.
    //
    // First a window update (a bare ACK at lb_nxt): the probe alone,
    // being old data, cannot open a window the last client closed (Linux
    // takes a window only from a segment at or past the last one that set
    // it). A backend held back by that window sends what it owes as soon
    // as it is open, before it answers the probe, so the datapath sees it
    // was owed. The window it opens is modest (rm_verify_win): the backend
    // keeps it once verified, and the next client's request can only
    // raise it. So the first round closes the window first: a zero window
    // is taken from a segment that starts where the last one did, where a
    // smaller nonzero one is not, so the modest one is then taken too,
    // whatever window the last client left (megabytes, if it downloaded).
    // Safe here: no client can take the connection while it is verified.
    const uint16_t open = rm_verify_win(rec->lb_wscale);
    absl::Status st;
    if (v.probes == 0)
      st = SendSegment(*rec, rec->lb_nxt, rec->be_nxt, rec->lb_ts_last, rec->be_ts_last, 0, false,
                       /*probe_byte=*/false);
    if (st.ok())
      st = SendSegment(*rec, rec->lb_nxt, rec->be_nxt, rec->lb_ts_last, rec->be_ts_last, open,
                       false, /*probe_byte=*/false);
    if (st.ok())
      st = SendSegment(*rec, rec->lb_nxt - 1, rec->be_nxt, rec->lb_ts_last, rec->be_ts_last,
                       open, false, /*probe_byte=*/true);
    if (!st.ok()) {
      LOG_EVERY_N(WARNING, 100) << "pooled connection " << pid << ": probe: " << st;
    }
    stats_.verify_probes++;
    v.probes++;
    // An answer comes within a round trip, and the datapath counts the
    // second one only a settle time after the first: the next probe goes
    // then (a lost probe or answer costs as little), and after four
    // probes every 50 ms.
    v.due = now + (v.probes <= 4 ? kProbeAfterSettle : absl::Milliseconds(50));
    next_probe_ = std::min(next_probe_, v.due);
  }
  for (uint32_t pid : done) verifying_.erase(pid);
  for (uint32_t pid : silent) {
    verifying_.erase(pid);
    auto it = conns_.find(pid);
    if (it == conns_.end()) continue;
    uint32_t backend = it->second.backend;
    LOG_EVERY_N(WARNING, 20) << "pooled connection " << pid << " to backend " << backend
                             << ": no two answers to 10 probes while verifying; retired";
    stats_.verify_timeouts++;
    Retire(pid, /*send_rst=*/true);
    NoteDeath(backend);
    Refill(backend, now);
  }
}

absl::Status PoolManager::SendSegment(const rm_pool& rec, uint32_t seq, uint32_t ack,
                                      uint32_t tsval, uint32_t tsecr, uint16_t window,
                                      bool rst, bool probe_byte) {
  return SendPoolSegment(&raw_fd_, rec, seq, ack, tsval, tsecr, window, rst, probe_byte);
}

namespace {
// A pooled connection's segment from the LB's side, IPv4 header included,
// into pkt (kPoolSegMax bytes); returns its length.
constexpr size_t kPoolSegMax = 20 + 32 + 1;
size_t BuildPoolSegment(const rm_pool& rec, uint32_t seq, uint32_t ack, uint32_t tsval,
                        uint32_t tsecr, uint16_t window, bool rst, bool probe_byte,
                        uint8_t* pkt) {
  memset(pkt, 0, kPoolSegMax);
  // The tuple from the record, not conns_: Retire() sends its RST after
  // erasing the connection from conns_ (looked up there, it never went).
  const rm_pool_key& k = rec.key;
  bool ts = (rec.flags & RM_LEG_TS) != 0;
  size_t tcp_len = ts ? 32 : 20;
  // A probe carries one byte the backend already has (its value is never
  // compared): see ProbeVerifying.
  const size_t seg_len = tcp_len + (probe_byte ? 1 : 0);
  iphdr* ip = reinterpret_cast<iphdr*>(pkt);
  FillIpv4ForTcp(ip, k.lb_ip, k.backend_ip, seg_len);
  tcphdr* th = reinterpret_cast<tcphdr*>(pkt + 20);
  th->source = k.lb_port;
  th->dest = k.backend_port;
  th->seq = htonl(seq);
  th->ack_seq = htonl(ack);
  th->doff = tcp_len / 4;
  th->ack = 1;
  th->rst = rst;
  th->window = htons(window);
  if (ts) {
    uint8_t* o = pkt + 40;
    o[0] = 1;
    o[1] = 1;
    o[2] = 8;
    o[3] = 10;
    uint32_t v = htonl(tsval), e = htonl(tsecr);
    memcpy(o + 4, &v, 4);
    memcpy(o + 8, &e, 4);
  }
  th->check = TcpChecksum(ip, th, seg_len);
  return 20 + seg_len;
}

absl::Status OpenRaw(int* raw_fd) {
  if (*raw_fd < 0) {
    *raw_fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    if (*raw_fd < 0) return Errno("raw socket (needs CAP_NET_RAW)");
  }
  return absl::OkStatus();
}
}  // namespace

namespace {
// One segment for SendPoolSegments.
struct PoolSeg {
  uint32_t seq, ack, tsval, tsecr;
  uint16_t window;
  bool rst, probe_byte;
};

// Segments of pooled connection `rec` from the LB's side, through the raw
// socket, in order in one system call (sendmmsg). All or an error.
absl::Status SendPoolSegments(int* raw_fd, const rm_pool& rec, const PoolSeg* segs, int n) {
  constexpr int kMax = 2;
  if (n < 1 || n > kMax) return absl::InvalidArgumentError("segment count");
  if (rec.key.backend_ip == 0) return absl::NotFoundError("pooled connection record unused");
  if (auto st = OpenRaw(raw_fd); !st.ok()) return st;
  uint8_t pkt[kMax][kPoolSegMax];
  iovec iov[kMax];
  mmsghdr msgs[kMax] = {};
  sockaddr_in dst = Ipv4(rec.key.backend_ip, 0);
  for (int i = 0; i < n; i++) {
    const PoolSeg& g = segs[i];
    iov[i].iov_base = pkt[i];
    iov[i].iov_len = BuildPoolSegment(rec, g.seq, g.ack, g.tsval, g.tsecr, g.window, g.rst,
                                      g.probe_byte, pkt[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &dst;
    msgs[i].msg_hdr.msg_namelen = sizeof(dst);
  }
  int sent = sendmmsg(*raw_fd, msgs, n, 0);
  if (sent < 0) return Errno("sending on raw socket");
  if (sent < n) return absl::UnavailableError(absl::StrCat(sent, " of ", n, " segments sent"));
  return absl::OkStatus();
}
}  // namespace

absl::Status SendPoolSegment(int* raw_fd, const rm_pool& rec, uint32_t seq, uint32_t ack,
                             uint32_t tsval, uint32_t tsecr, uint16_t window, bool rst,
                             bool probe_byte) {
  const PoolSeg seg{seq, ack, tsval, tsecr, window, rst, probe_byte};
  return SendPoolSegments(raw_fd, rec, &seg, 1);
}

absl::Status SendPoolWindowShrink(int* raw_fd, const rm_pool& rec) {
  // In order; a short count leaves the window as it was.
  const PoolSeg segs[2] = {
      {rec.lb_nxt, rec.be_nxt, rec.lb_ts_last, rec.be_ts_last, 0, false, false},
      {rec.lb_nxt, rec.be_nxt, rec.lb_ts_last, rec.be_ts_last, RM_IDLE_WIN, false, false}};
  return SendPoolSegments(raw_fd, rec, segs, 2);
}


}  // namespace rematcher
