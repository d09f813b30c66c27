#include "lb/core.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "lb/policy_loader.h"
#include <bpf/libbpf.h>

namespace rematcher {
namespace {

absl::Status Errno(absl::string_view what) { return absl::ErrnoToStatus(errno, what); }

uint64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

const char* ClientStateName(uint32_t s) {
  switch (s) {
    case RM_C_SYN_RCVD: return "syn_rcvd";
    case RM_C_ESTABLISHED: return "established";
    case RM_C_LAST_ACK: return "last_ack";
    case RM_C_NAT_CLOSE: return "closing";
    case RM_C_CLOSED: return "closed";
    default: return "free";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Core>> Core::Create(const CoreOptions& opts) {
  std::unique_ptr<Core> c(new Core(opts));
  if (auto st = c->Init(); !st.ok()) return st;
  return c;
}

Core::~Core() {
  // Probes first (they leave the epoll set), pools next (reset at their
  // backends unless pinned; their sockets close silently), then the
  // datapath detaches.
  metrics_http_.reset();
  health_.reset();
  // Without a pinned datapath nothing will serve these connections again:
  // the backends are told so rather than left holding them open.
  if (pools_ && opts_.pin_dir.empty()) {
    const uint32_t reset = pools_->ResetAll();
    LOG(INFO) << "reset " << reset << " pooled connections at their backends";
  }
  pools_.reset();
  if (rb_) ring_buffer__free(rb_);
  for (int fd : {epfd_, timerfd_, sigfd_, ctlfd_})
    if (fd >= 0) close(fd);
  if (!opts_.control_socket.empty()) unlink(opts_.control_socket.c_str());
  dp_.reset();
}

absl::Status Core::Init() {
  if (opts_.backends.size() > opts_.max_backends)
    return absl::InvalidArgumentError(absl::StrCat(opts_.backends.size(),
                                                   " backends given but --max_backends is ",
                                                   opts_.max_backends));
  if (opts_.max_backends > RM_MAX_BACKENDS)
    return absl::InvalidArgumentError(
        absl::StrCat("--max_backends must be at most ", RM_MAX_BACKENDS));
  if (opts_.max_conns_per_backend > RM_MAX_POOL_PER_BACKEND ||
      opts_.conns_per_backend > opts_.max_conns_per_backend)
    return absl::InvalidArgumentError(absl::StrCat(
        "--conns_per_backend must be <= max pool per backend (", RM_MAX_POOL_PER_BACKEND, ")"));

  auto policy = LoadPolicy(opts_.policy, opts_.policy_args, opts_.policy_dirs);
  if (!policy.ok()) return policy.status();
  policy_ = std::move(*policy);
  LOG(INFO) << "policy '" << policy_->name() << "' loaded from " << policy_->origin()
            << " (ABI " << policy_->abi_version().major << "." << policy_->abi_version().minor
            << ")";

  DatapathOptions dopts;
  dopts.max_clients = opts_.max_clients;
  dopts.max_pool = opts_.max_backends * opts_.max_conns_per_backend;
  dopts.pin_dir = opts_.pin_dir;
  dopts.idle_lifo = opts_.idle_lifo;
  auto dp = Datapath::Load(dopts);
  if (!dp.ok()) return dp.status();
  dp_ = std::move(*dp);
  if (dp_->adopted())
    LOG(INFO) << "adopting the datapath pinned in " << opts_.pin_dir
              << " (its clients and pooled connections carry on)";
  LOG(INFO) << "idle pooled connections are taken "
            << (dp_->idle_lifo() ? "newest first (LIFO)" : "oldest first (FIFO)");

  rm_config cfg{};
  cfg.vip = opts_.vip;
  cfg.vip_port = opts_.vip_port;
  cfg.mss = opts_.mss;
  cfg.client_wscale = opts_.client_wscale;
  cfg.sack_ok = 1;
  cfg.ts_ok = 1;
  cfg.rematch = opts_.rematch;
  cfg.events = 1;
  cfg.max_clients = opts_.max_clients;
  cfg.client_window_cap = opts_.client_window_cap;
  cfg.pool_max_uses = opts_.pool_max_uses;
  cfg.reroute_margin = opts_.rematch ? opts_.reroute_margin : 0;
  cfg.reroute_ratio_pct = opts_.reroute_ratio_pct;
  if (auto st = dp_->SetConfig(cfg); !st.ok()) return st;

  PoolOptions popts;
  popts.lb_ip = opts_.lb_ip;
  popts.conns_per_backend = opts_.conns_per_backend;
  popts.max_conns_per_backend = opts_.max_conns_per_backend;
  popts.mss = opts_.mss;
  popts.max_uses = opts_.pool_max_uses;
  popts.idle_timeout = opts_.pool_idle_timeout;
  popts.test_skip_park_every = opts_.test_skip_park_every;
  popts.test_hold_parked = opts_.test_hold_parked;
  pools_ = std::make_unique<PoolManager>(dp_.get(), popts);

  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return Errno("epoll_create1");
  // A replacement pooled connection is usable a round trip after it is
  // opened: watch it from the start, not from the next tick (up to 100 ms
  // later, while clients of a backend that closes every connection wait
  // for an idle one).
  pools_->SetConnectingWatcher([this](int fd) { WatchConnecting(fd); });
  HealthOptions hopts = opts_.health;
  hopts.lb_ip = opts_.lb_ip;
  if (auto st = ValidateHealthOptions(hopts); !st.ok()) return st;
  health_ = std::make_unique<HealthChecker>(hopts, epfd_, pools_.get(), dp_.get());
  if (hopts.interval > absl::ZeroDuration())
    LOG(INFO) << "health checks every " << hopts.interval << " (timeout " << hopts.timeout
              << ", rise " << hopts.rise << ", fall " << hopts.fall << "): "
              << (hopts.http_path.empty() ? std::string("TCP connect")
                                          : absl::StrCat("HTTP GET ", hopts.http_path, " -> 2xx"))
              << (hopts.passive ? ", plus pooled-connect failures" : "");
  else
    LOG(INFO) << "active health checks off; "
              << (hopts.passive ? "pooled-connect failures still count" : "passive ones off too");

  if (auto st = dp_->Attach(opts_.ifindex, opts_.allow_generic_xdp); !st.ok()) return st;
  LOG(INFO) << "XDP attached to " << opts_.ifname << " ("
            << (dp_->attached_generic() ? "generic" : "native") << "), VIP "
            << AddrString(opts_.vip, opts_.vip_port);
  if (auto st = client_resets_.Open(opts_.ifindex); !st.ok())
    LOG(WARNING) << "clients reset by their backend are told once only (the datapath passes "
                    "the backend's RST on), not again: "
                 << st;

  if (dp_->adopted()) {
    auto adopted = AddBackendsAdopting();
    if (!adopted.ok()) return adopted.status();
    adopted_pools_ = adopted->idle + adopted->busy + adopted->verifying;
    auto clients = dp_->ForEachClient([&](uint32_t, const rm_client& c) {
      if (c.state == RM_C_ESTABLISHED) adopted_clients_++;
    });
    if (!clients.ok()) return clients;
    LOG(INFO) << "adopted " << adopted_pools_ << " pooled connections (" << adopted->idle
              << " idle (" << adopted->unparked << " of them parked, shrunk and queued now), "
              << adopted->busy << " busy, " << adopted->verifying
              << " being verified; " << adopted->dropped << " dropped) and "
              << adopted_clients_ << " established clients";
  } else {
    for (const BackendSpec& b : opts_.backends) {
      auto id = AddBackend(b);
      if (!id.ok()) return id.status();
    }
  }
  // An earlier process may have left the datapath not waking anyone
  // (it was polling): wakeups on until this one decides otherwise.
  if (auto st = dp_->SetEventWakeups(true); !st.ok()) return st;

  rb_ = ring_buffer__new(dp_->events_fd(), &Core::OnEventThunk, this, nullptr);
  if (!rb_) return Errno("ring_buffer__new");
  auto add = [&](int fd, uint32_t events) -> absl::Status {
    epoll_event e{};
    e.events = events;
    e.data.fd = fd;
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &e)) return Errno("epoll_ctl");
    return absl::OkStatus();
  };
  if (auto st = add(ring_buffer__epoll_fd(rb_), EPOLLIN); !st.ok()) return st;
  timerfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  itimerspec its{};
  its.it_interval.tv_nsec = 100 * 1000 * 1000;
  its.it_value.tv_nsec = 1000 * 1000;
  timerfd_settime(timerfd_, 0, &its, nullptr);
  if (auto st = add(timerfd_, EPOLLIN); !st.ok()) return st;
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  sigfd_ = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd_ < 0) return Errno("signalfd");
  if (auto st = add(sigfd_, EPOLLIN); !st.ok()) return st;
  if (!opts_.control_socket.empty()) {
    if (auto st = OpenControlSocket(); !st.ok()) return st;
    if (auto st = add(ctlfd_, EPOLLIN); !st.ok()) return st;
  }
  if (!opts_.metrics_addr.empty()) {
    MetricsHttpOptions mo;
    mo.addr = opts_.metrics_addr;
    auto m = MetricsHttpServer::Create(mo, [this] { return MetricsText(); });
    if (!m.ok()) return m.status();
    metrics_http_ = std::move(*m);
    if (auto st = add(metrics_http_->fd(), EPOLLIN); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<AdoptedPools> Core::AddBackendsAdopting() {
  // The pinned backends, by address.
  absl::flat_hash_map<uint64_t, uint32_t> pinned;
  auto addr_key = [](uint32_t ip, uint16_t port) { return (uint64_t{ip} << 16) | port; };
  for (uint32_t id = 0; id < opts_.max_backends; id++) {
    auto b = dp_->GetBackend(id);
    if (b.ok() && b->ip != 0 && (b->flags & (RM_BE_ACTIVE | RM_BE_DRAINING)))
      pinned[addr_key(b->ip, b->port)] = id;
  }
  adopting_ = true;
  std::vector<const BackendSpec*> fresh;
  for (const BackendSpec& spec : opts_.backends) {
    auto it = pinned.find(addr_key(spec.ip, spec.port));
    if (it == pinned.end()) {
      fresh.push_back(&spec);
      continue;
    }
    auto id = AddBackendAt(spec, it->second);
    if (!id.ok()) return id.status();
    pinned.erase(it);
  }
  // Pinned and not given any more: kept, removed, until its pooled
  // connections (adopted next) are released and retired.
  for (const auto& [key, id] : pinned) {
    BackendSpec gone;
    gone.ip = static_cast<uint32_t>(key >> 16);
    gone.port = static_cast<uint16_t>(key & 0xffff);
    auto added = AddBackendAt(gone, id);
    if (!added.ok()) return added.status();
    LOG(INFO) << "backend " << id << " (" << AddrString(gone.ip, gone.port)
              << ") was in the pinned datapath and is not given now: removing it";
    if (auto st = RemoveBackend(id); !st.ok()) return st;
  }
  adopting_ = false;
  // The pooled connections now, before any new backend could take the id
  // of a removed one that still has some.
  auto adopted = pools_->Adopt();
  if (!adopted.ok()) return adopted.status();
  // A removed backend's idle ones, adopted only to be accounted, close now
  // as they would at a removal at run time.
  for (const auto& [key, id] : pinned) {
    const uint32_t closed = pools_->RetireIdle(id);
    if (closed) LOG(INFO) << "backend " << id << ": " << closed << " adopted idle pooled connections closed";
  }
  for (const BackendSpec* spec : fresh) {
    auto id = AddBackend(*spec);
    if (!id.ok()) return id.status();
  }
  return adopted;
}

absl::StatusOr<uint32_t> Core::AddBackend(const BackendSpec& spec) {
  uint32_t id = 0;
  while (id < opts_.max_backends) {
    auto it = backends_.find(id);
    // An id is reused only once its previous pools are gone.
    if (it == backends_.end() ||
        (it->second.removed && pools_->Established(id) == 0 && pools_->Connecting(id) == 0))
      break;
    id++;
  }
  if (id >= opts_.max_backends)
    return absl::ResourceExhaustedError(
        absl::StrCat("backend table full (--max_backends=", opts_.max_backends, ")"));
  return AddBackendAt(spec, id);
}

absl::StatusOr<uint32_t> Core::AddBackendAt(const BackendSpec& spec, uint32_t id) {
  for (const auto& [other, b] : backends_)
    if (!b.removed && b.spec.ip == spec.ip && b.spec.port == spec.port)
      return absl::AlreadyExistsError(
          absl::StrCat("backend ", AddrString(spec.ip, spec.port), " already present (id ",
                       other, ")"));
  if (id >= opts_.max_backends)
    return absl::ResourceExhaustedError(
        absl::StrCat("backend id ", id, " is past --max_backends=", opts_.max_backends));
  Backend b;
  b.spec = spec;
  backends_[id] = b;
  // Adopted load counters are the live count of what the datapath holds
  // in flight (it settles them as those requests end): never reset.
  if (!adopting_) dp_->ResetBackendLoad(id);
  first_byte_hist_[id].Reset();
  rm_backend rb{};
  rb.ip = spec.ip;
  rb.port = spec.port;
  rb.flags = RM_BE_ACTIVE | RM_BE_CAN_GROW;
  if (auto st = dp_->SetBackend(id, rb); !st.ok()) return st;
  backends_[id].flags = rb.flags;
  if (auto st = pools_->AddBackend(id, spec); !st.ok()) return st;
  health_->AddBackend(id, spec);
  if (auto st = PublishBackends(); !st.ok()) return st;
  LOG(INFO) << "backend " << id << " = " << AddrString(spec.ip, spec.port) << " weight "
            << spec.weight;
  return id;
}

absl::Status Core::RemoveBackend(uint32_t id) {
  auto it = backends_.find(id);
  if (it == backends_.end() || it->second.removed)
    return absl::NotFoundError(absl::StrCat("no backend ", id));
  it->second.removed = true;
  it->second.draining = true;
  rm_backend rb{};
  rb.ip = it->second.spec.ip;
  rb.port = it->second.spec.port;
  rb.flags = RM_BE_DRAINING;
  if (auto st = dp_->SetBackend(id, rb); !st.ok()) return st;
  it->second.flags = rb.flags;
  pools_->RemoveBackend(id);
  health_->RemoveBackend(id);
  absl::Status published = PublishBackends();
  // Its clients' next requests, and decisions already made for it, go
  // elsewhere; its idle pooled connections close now (nothing will take
  // them again) instead of at --pool_idle_timeout_ms. Busy ones finish
  // their response and close when they are idle again (PoolManager::Tick).
  const size_t moved = MoveClientsOff(id);
  const uint32_t retired = pools_->RetireIdle(id);
  LOG(INFO) << "backend " << id << " removed: " << moved
            << " clients move at their next request, " << retired
            << " idle pooled connections closed";
  return published;
}

absl::Status Core::DrainBackend(uint32_t id) {
  auto it = backends_.find(id);
  if (it == backends_.end() || it->second.removed)
    return absl::NotFoundError(absl::StrCat("no backend ", id));
  it->second.draining = true;
  rm_backend rb{};
  rb.ip = it->second.spec.ip;
  rb.port = it->second.spec.port;
  rb.flags = RM_BE_ACTIVE | RM_BE_DRAINING;
  if (auto st = dp_->SetBackend(id, rb); !st.ok()) return st;
  it->second.flags = rb.flags;
  LOG(INFO) << "backend " << id << " draining";
  return PublishBackends();
}

absl::Status Core::RematchClient(uint32_t client, uint32_t backend) {
  auto it = backends_.find(backend);
  if (it == backends_.end() || it->second.removed)
    return absl::NotFoundError(absl::StrCat("no backend ", backend));
  auto c = dp_->GetClient(client);
  if (!c.ok()) return c.status();
  if (c->state != RM_C_ESTABLISHED)
    return absl::FailedPreconditionError(absl::StrCat("client ", client, " is not established"));
  forced_[client] = backend;
  dp_->SetDecision(client, c->req_no + 1, backend);
  return absl::OkStatus();
}

absl::Status Core::PublishBackends() {
  UpdatePanic();
  std::vector<uint32_t> list;
  snapshot_.clear();
  snap_index_.clear();
  std::vector<uint32_t> ids;
  for (const auto& [id, b] : backends_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint32_t id : ids) {
    const Backend& b = backends_[id];
    if (b.removed) continue;
    BackendInfo info{};
    info.id = id;
    info.ipv4 = b.spec.ip;
    info.port = b.spec.port;
    info.weight = b.spec.weight;
    // In panic every backend counts as healthy: the policy spreads the
    // load over all of them as usual.
    bool healthy = InService(id);
    info.flags = (healthy ? RM_BACKEND_HEALTHY : 0) | (b.draining ? RM_BACKEND_DRAINING : 0);
    snap_index_[id] = snapshot_.size();
    snapshot_.push_back(info);
    if (healthy && !b.draining) list.push_back(id);
  }
  // Parallel to snapshot_ at all times, like its zero counts until the
  // next RefreshLoad: a pick before then (MoveClientsOff) must not read
  // the old list's counts by the new list's indices.
  snap_pending_.assign(snapshot_.size(), 0);
  return dp_->SetBackendList(list);
}

int Core::OnEventThunk(void* ctx, void* data, size_t len) {
  if (len < sizeof(rm_event)) return 0;
  rm_event ev;
  memcpy(&ev, data, sizeof(ev));
  static_cast<Core*>(ctx)->OnEvent(ev);
  return 0;
}

void Core::OnEvent(const rm_event& ev) {
  events_++;
  switch (ev.type) {
    case RM_EV_REQ_START:
      // This request used (or missed) the client's pending decision: it is
      // no longer load to come on its backend.
      SetPending(ev.client_id, RM_NO_ID);
      // The decision first (the client's next request may be close); the
      // old connection's owed ACK has until its backend's loss probe.
      OnRequestDone(ev);
      if (ev.ack_pool != RM_NO_ID) SendPoolAck(ev.ack_pool, ev);
      break;
    case RM_EV_REQ_DONE: {
      // The decision made at this request's start is asked again with
      // fresher load: as if there were none, or it would count against
      // its own backend (and a client would keep its backend for good).
      // The policy is told it is a repeat, and of what (a round robin
      // must not count it as another turn).
      const uint32_t earlier = ev.client_id < pending_to_.size() ? pending_to_[ev.client_id] : RM_NO_ID;
      SetPending(ev.client_id, RM_NO_ID);
      OnRequestDone(ev, earlier);
      TimeFirstByte(ev);
      break;
    }
    case RM_EV_POOL_ACK:
      SendPoolAck(ev.pool_id, ev);
      break;
    case RM_EV_POOL_DEAD: {
      // An idle connection (no client) dying means the backend closed or
      // reset it unprompted: worth an early probe.
      const bool was_idle = ev.client_id == RM_NO_ID;
      if (was_idle) health_->OnIdleConnDied(ev.backend_id);
      pools_->OnDead(ev.pool_id, ev.req_no != 0, was_idle);
      // A client whose connection ended with it (a close that ran through
      // the pooled connection, or a reset) makes no next request.
      if (ev.client_id < opts_.max_clients) {
        auto c = dp_->GetClient(ev.client_id);
        if (c.ok() && c->state != RM_C_ESTABLISHED) {
          ForgetPending(ev.client_id);
          if (c->state == RM_C_CLOSED && (c->fin_flags & RM_FIN_B_RST))
            client_resets_.Add(ev.client_id, *c, absl::Now());
          // A close that cost a pooled connection: what made it unclean
          // (the same fields as `clients N closing`), while the record
          // still lingers. Rare between requests; a reset mid-exchange is
          // the usual one.
          LOG_EVERY_N(INFO, 100)
              << "client " << ev.client_id << " "
              << AddrString(c->key.client_ip, c->key.client_port)
              << " ended with its pooled connection " << ev.pool_id << " (backend "
              << ev.backend_id << ", retired): state " << ClientStateName(c->state)
              << " phase " << static_cast<int>(c->phase)
              << absl::StrFormat(" fin 0x%02x", c->fin_flags) << " be_unacked "
              << static_cast<int32_t>(c->c_nxt + c->d_req - c->b_acked) << " cl_unacked "
              << static_cast<int32_t>(c->s_nxt - c->c_acked) << " requests " << c->req_no
              << " (" << google::COUNTER << " so far)";
        }
      }
      break;
    }
    case RM_EV_NEED_POOL:
      pools_->OnNeed(ev.backend_id);
      break;
    case RM_EV_CLIENT_LEFT:
      // A client that left between requests, its pooled connection idle
      // at once (its last response framed and whole): the ACK its close
      // carried, and its decision is void, as below.
      if (ev.pool_id != RM_NO_ID) SendCloseAckLater(ev);
      ForgetPending(ev.client_id);
      break;
    case RM_EV_POOL_VERIFY:
      pools_->OnVerify(ev.pool_id);
      // Its client closed between requests, or went idle (one that comes
      // back is decided afresh at its next request's start).
      ForgetPending(ev.client_id);
      break;
    default:
      break;
  }
}

void Core::SetPolling(bool on) {
  absl::Status st = dp_->SetEventWakeups(!on);
  if (!st.ok()) {
    // Wakeups stay as they were; so does the loop.
    LOG_EVERY_N(WARNING, 100) << "polling " << (on ? "on" : "off") << ": " << st;
    return;
  }
  polling_ = on;
  if (on) {
    poll_entries_++;
    // Each spell of polling starts at the shortest interval.
    poll_now_ns_ = absl::ToInt64Nanoseconds(opts_.poll_interval);
    poll_ctl_applied_ = dp_->Counter(RM_ST_DECISION_APPLIED);
    poll_ctl_late_ = dp_->Counter(RM_ST_DECISION_LATE);
  }
}

void Core::AdjustPollInterval() {
  const uint64_t applied = dp_->Counter(RM_ST_DECISION_APPLIED);
  const uint64_t late = dp_->Counter(RM_ST_DECISION_LATE);
  const uint64_t d_applied = applied - poll_ctl_applied_, d_late = late - poll_ctl_late_;
  poll_ctl_applied_ = applied;
  poll_ctl_late_ = late;
  const uint64_t total = d_applied + d_late;
  const int64_t lo = absl::ToInt64Nanoseconds(opts_.poll_interval);
  const int64_t hi = std::max(lo, absl::ToInt64Nanoseconds(opts_.poll_max));
  if (d_late * 100 > total) {
    poll_now_ns_ = std::max(lo, poll_now_ns_ / 2);
  } else if (total >= 20 && d_late * 500 <= total) {
    poll_now_ns_ = std::min(hi, poll_now_ns_ + poll_now_ns_ / 4);
  }
}

void Core::SendPoolAck(uint32_t pool, const rm_event& ev) {
  absl::StatusOr<bool> sent =
      pools_->SendAck(pool, ev.seq, ev.ack, ev.tsval, ev.tsecr, ev.window);
  if (!sent.ok()) return;
  if (*sent) {
    pool_acks_sent_++;
  } else {
    pool_acks_carried_++;
  }
}

namespace {
// How long a close's ACK waits for the client's final ACK to take it from
// the datapath: that comes a round trip after the FIN, well within this
// even on a busy host. A backend with more than one segment unacknowledged
// probes for the ACK after 2 ms plus two round trips at the earliest (Linux's
// loss probe); if the final ACK was lost, that probe is answered in place.
constexpr uint64_t kCloseAckWaitNs = 2'000'000;
// More waiting than this (a burst of closes) and the oldest goes now.
constexpr size_t kCloseAcksMax = 4096;
}  // namespace

void Core::SendCloseAckLater(const rm_event& ev) {
  std::optional<rm_client> c = dp_->PeekClient(ev.client_id);
  if (!c || c->state != RM_C_LAST_ACK || c->close_pool != ev.pool_id) {
    SendPoolAck(ev.pool_id, ev);  // its final ACK came (or never will)
    return;
  }
  if (close_acks_.size() >= kCloseAcksMax) {
    SendPoolAck(close_acks_.front().ev.pool_id, close_acks_.front().ev);
    close_acks_.pop_front();
  }
  close_acks_.push_back({MonoNowNs() + kCloseAckWaitNs, ev});
}

uint64_t Core::FlushCloseAcks(uint64_t now_ns, bool all) {
  while (!close_acks_.empty() && (all || close_acks_.front().due_ns <= now_ns)) {
    // Sent already by the datapath (RM_POOL_ACK_SENT), or taken by
    // another client since: SendAck finds it so and sends nothing.
    SendPoolAck(close_acks_.front().ev.pool_id, close_acks_.front().ev);
    close_acks_.pop_front();
  }
  return close_acks_.empty() ? UINT64_MAX : close_acks_.front().due_ns - now_ns;
}

void Core::OnRequestDone(const rm_event& ev, uint32_t earlier) {
  const uint64_t now = MonoNowNs();
  uint32_t target = ev.backend_id;
  auto forced = forced_.find(ev.client_id);
  if (forced != forced_.end()) {
    target = forced->second;
    forced_.erase(forced);
  } else {
    RefreshLoad(now);
    // Asked when a request starts, the decision is for the request after
    // it, which this one will no longer load: its own backend is shown
    // without it, or every first decision would lean away from where the
    // client is (the one at the request's end sees it answered already).
    uint32_t* own = nullptr;
    if (ev.type == RM_EV_REQ_START) {
      auto cur = snap_index_.find(ev.backend_id);
      if (cur != snap_index_.end() && snapshot_[cur->second].outstanding > 0) {
        own = &snapshot_[cur->second].outstanding;
        --*own;
      }
    }
    Snapshot snap;
    snap.now_ns = now;
    snap.backends = absl::MakeConstSpan(snapshot_);
    snap.pending = absl::MakeConstSpan(snap_pending_);
    std::optional<size_t> pick =
        policy_->Pick(snap, PolicyRequest(ev.client_id, ev.backend_id, ev.req_no, earlier));
    if (own != nullptr) ++*own;
    if (pick) target = snapshot_[*pick].id;
    // "No preference" (or a pick out of service) must not keep a client on
    // a backend that left service: its next request goes elsewhere.
    if (!Eligible(target)) {
      if (auto fb = FallbackBackend(target)) target = *fb;
    }
    // A pick with no pooled connection to give would only be skipped in the
    // datapath, while counting as load to come there and, for a policy
    // that keeps its earlier answer (rr), being asked and kept again at the
    // request's end: under overload on a 2-CPU box every decision of 2,000
    // rr clients came to name the one full backend and rematching stopped
    // (stress_test). The client stays where it is instead.
    if (target != ev.backend_id && Eligible(ev.backend_id) && Full(target)) {
      target = ev.backend_id;
      decisions_full_kept_++;
    }
  }
  // A decision that keeps the client in place is still a decision: the
  // datapath counts it as applied, not late.
  dp_->SetDecision(ev.client_id, ev.req_no + 1, target);
  decisions_written_++;
  NoteDecision(ev.client_id, target, now);
}

Request Core::PolicyRequest(uint32_t client, uint32_t current_backend,
                            uint32_t requests_so_far, uint32_t earlier) const {
  Request req;
  req.client_id = client;
  auto cur = snap_index_.find(current_backend);
  if (cur != snap_index_.end()) req.current_backend = cur->second;
  if (earlier != RM_NO_ID) {
    req.repeat = true;
    auto prev = snap_index_.find(earlier);
    if (prev != snap_index_.end()) req.previous_pick = prev->second;
  }
  req.requests_on_connection = requests_so_far;
  return req;
}

uint64_t Core::Typical(uint32_t id) const {
  if (id >= RM_MAX_BACKENDS) return 0;
  // 0: no sample in that window.
  uint64_t typical = dp_->BackendLoad(id).ewma_first_ns;
  for (uint64_t f : {floor_cur_[id], floor_prev_[id]})
    if (f != 0 && f < typical) typical = f;
  return typical;
}

uint64_t Core::StallLimitNs(uint32_t id) const {
  const uint64_t min_ns = absl::ToInt64Nanoseconds(opts_.stall_min);
  return std::max<uint64_t>(min_ns, 3 * Typical(id));
}

bool Core::Stalled(uint32_t id, const rm_backend_load& l, uint64_t now) const {
  if (opts_.stall_min <= absl::ZeroDuration() || l.unanswered == 0) return false;
  const uint64_t progress = l.progress_ns;
  if (progress >= now) return false;
  const uint64_t quiet = now - progress;
  const uint64_t limit = StallLimitNs(id);
  return quiet > limit &&
         quiet < limit + static_cast<uint64_t>(absl::ToInt64Nanoseconds(opts_.stall_hold));
}

uint64_t Core::NanosToNextStall(uint64_t now) const {
  uint64_t next = UINT64_MAX;
  if (opts_.stall_min <= absl::ZeroDuration()) return next;
  for (const BackendInfo& b : snapshot_) {
    if (b.id >= RM_MAX_BACKENDS || stalled_[b.id]) continue;
    const rm_backend_load& l = dp_->BackendLoad(b.id);
    if (l.unanswered == 0) continue;
    const uint64_t limit = StallLimitNs(b.id);
    const uint64_t at = l.progress_ns + limit + 1;
    // Silent past the flag's hold: the health checks' business, not a
    // reason to poll.
    if (now > at + static_cast<uint64_t>(absl::ToInt64Nanoseconds(opts_.stall_hold))) continue;
    next = std::min(next, at > now ? at - now : 0);
  }
  return next;
}

void Core::TrackFirstByteFloor(uint32_t id, uint64_t ewma_ns) {
  if (ewma_ns != 0 && (floor_cur_[id] == 0 || ewma_ns < floor_cur_[id])) floor_cur_[id] = ewma_ns;
}

void Core::RefreshLoad(uint64_t now) {
  if (now - floor_window_start_ns_ > 500'000'000) {
    // A new half-second window of first-byte floors (TrackFirstByteFloor).
    floor_prev_ = floor_cur_;
    floor_cur_.fill(0);
    floor_window_start_ns_ = now;
  }
  snap_pending_.assign(snapshot_.size(), 0);
  for (size_t i = 0; i < snapshot_.size(); ++i) {
    BackendInfo& b = snapshot_[i];
    const rm_backend_load& l = dp_->BackendLoad(b.id);
    b.requests_total = l.requests;
    b.latency_ewma_first_byte_ns = l.ewma_first_ns;
    b.latency_ewma_last_byte_ns = l.ewma_last_ns;
    if (b.id >= RM_MAX_BACKENDS) {
      b.outstanding = InFlight(l);
      continue;
    }
    // In flight (by default: not answered yet; see load_until_acked),
    // plus decided for it and not started yet: every client's
    // next request is decided long before it comes, and policies that saw
    // only the requests in flight sent whole runs of those decisions to
    // whichever backend was least loaded at one instant (20-36 requests in
    // a row on one backend at 5,000 req/s open loop; a stall starting then
    // caught them all).
    snap_pending_[i] = opts_.count_pending_decisions ? committed_[b.id] : 0;
    b.outstanding = InFlight(l) + snap_pending_[i];
    TrackFirstByteFloor(b.id, l.ewma_first_ns);
    const bool stalled = Stalled(b.id, l, now);
    if (stalled && !stalled_[b.id]) stalls_[b.id]++;
    stalled_[b.id] = stalled;
    b.flags = stalled ? (b.flags | RM_BACKEND_STALLED) : (b.flags & ~RM_BACKEND_STALLED);
  }
  if (opts_.reroute_margin > 0 && opts_.rematch) UpdateAlternatives();
}

void Core::UpdateAlternatives() {
  // Each backend's alternative (rm_backend_load::alt): the other backend
  // in service, with a connection to give, where a request would wait
  // least by (requests unanswered + 1) x its usual first-byte latency
  // (Typical: the recent floor of the EWMA, which a stall does not
  // inflate), then by requests in flight and decided for it. The datapath
  // compares the two unanswered counts again as each request arrives. By
  // the count alone, a backend 5x slower that a latency-aware policy had
  // left idle was every busy backend's alternative: with peak_ewma at an
  // open 5,000 req/s it got 2-3.5% of the requests, every one by reroute,
  // and they set the p99. A backend with no sample yet counts as fast as
  // the fastest.
  uint64_t fastest = 0;
  for (const BackendInfo& b : snapshot_) {
    const uint64_t t = Typical(b.id);
    if (t != 0 && (fastest == 0 || t < fastest)) fastest = t;
  }
  struct Cand {
    uint32_t id;
    uint64_t wait, load;
  };
  Cand best{RM_NO_ID, UINT64_MAX, UINT64_MAX}, second = best;
  auto less = [](const Cand& a, const Cand& b) {
    return a.wait != b.wait ? a.wait < b.wait : a.load < b.load;
  };
  for (const BackendInfo& b : snapshot_) {
    if (b.id >= RM_MAX_BACKENDS || !Eligible(b.id) || Full(b.id)) continue;
    const uint64_t typical = Typical(b.id);
    const uint64_t usual = typical != 0 ? typical : std::max<uint64_t>(fastest, 1);
    Cand c{b.id, (uint64_t{dp_->BackendLoad(b.id).unanswered} + 1) * usual, b.outstanding};
    if (less(c, best)) {
      second = best;
      best = c;
    } else if (less(c, second)) {
      second = c;
    }
  }
  for (const BackendInfo& b : snapshot_) {
    if (b.id >= RM_MAX_BACKENDS) continue;
    dp_->SetBackendAlt(b.id, b.id == best.id ? second.id : best.id);
  }
}

void Core::SetPending(uint32_t client, uint32_t backend) {
  if (pending_to_.empty()) {
    pending_to_.assign(opts_.max_clients, RM_NO_ID);
    pending_at_.assign(opts_.max_clients, 0);
  }
  if (client >= pending_to_.size()) return;
  const uint32_t old = pending_to_[client];
  if (old == backend) return;
  if (old < RM_MAX_BACKENDS && committed_[old] > 0) committed_[old]--;
  pending_to_[client] = backend;
  if (backend < RM_MAX_BACKENDS) committed_[backend]++;
}

void Core::ForgetPending(uint32_t client) {
  // Its decision stays in the datapath (used if the client does come
  // back); it just no longer counts as load to come, nor is it re-asked:
  // with clients opening a connection per request, decisions of clients
  // already gone were re-asked tens to hundreds of times per request
  // until they expired (ExpirePending, 1 s).
  if (client < pending_to_.size() && pending_to_[client] != RM_NO_ID) {
    SetPending(client, RM_NO_ID);
    pending_forgotten_++;
  }
}

void Core::NoteDecision(uint32_t client, uint32_t backend, uint64_t now) {
  if (backend >= RM_MAX_BACKENDS || client >= opts_.max_clients) return;
  const bool listed = !pending_to_.empty() && pending_to_[client] == backend;
  SetPending(client, backend);  // sizes pending_to_ and pending_at_ for max_clients
  pending_at_[client] = static_cast<uint32_t>(now >> 20);  // ~1 ms units
  if (listed || opts_.redecide_interval <= absl::ZeroDuration()) return;
  if (pending_.empty()) pending_.resize(RM_MAX_BACKENDS);
  std::vector<uint32_t>& list = pending_[backend];
  list.push_back(client);
  // Entries of clients whose latest decision went elsewhere are dead, and a
  // client decided for the same backend request after request is listed
  // once per request: both are dropped whenever a list has doubled, so each
  // stays O(clients).
  if (list.size() >= 1024 && (list.size() & (list.size() - 1)) == 0) {
    if (listed_mark_.size() != pending_to_.size()) listed_mark_.assign(pending_to_.size(), 0);
    const uint32_t mark = ++listed_stamp_;
    list.erase(std::remove_if(list.begin(), list.end(),
                              [&](uint32_t id) {
                                if (pending_to_[id] != backend || listed_mark_[id] == mark)
                                  return true;
                                listed_mark_[id] = mark;
                                return false;
                              }),
               list.end());
  }
}

void Core::ExpirePending() {
  // A decision not used within a second belongs to an idle or gone client:
  // it no longer counts as load on its backend (and a client that comes
  // back is decided afresh at its next request's start anyway).
  // A fifth of the table per tick (every 100 ms): each slot is looked at
  // twice a second, so a decision stops counting 1-1.5 s after it was
  // made. (The whole table every tick was 5% of the core's CPU at an open
  // 5,000 req/s with the default 65,536 slots.)
  const uint32_t now = static_cast<uint32_t>(MonoNowNs() >> 20);
  const size_t n = pending_to_.size();
  const size_t slice = std::min<size_t>(n, std::max<size_t>(4096, n / 5));
  for (size_t k = 0; k < slice; k++) {
    const size_t id = expire_cursor_++ % n;
    if (pending_to_[id] != RM_NO_ID && now - pending_at_[id] > 954)  // 1 s
      SetPending(id, RM_NO_ID);
  }
}

void Core::Redecide(bool at_once) {
  if (pending_.empty() || snapshot_.size() < 2) return;
  const uint64_t now = MonoNowNs();
  if (!at_once &&
      now - last_redecide_ns_ <
          static_cast<uint64_t>(absl::ToInt64Nanoseconds(opts_.redecide_interval)))
    return;
  last_redecide_ns_ = now;
  RefreshLoad(now);
  // "Behind": at least three requests and twice as many outstanding as the
  // least loaded backend in service, in two rounds in a row. Equal backends
  // under load differ by a request or two, and a backend's count jumps for
  // an instant as a batch of requests lands on it; a stalled one stays
  // behind. (A lower bar churned decisions among healthy backends: 6,300
  // changes for 4,000 requests; one round only still re-decided five times
  // per request with 64 busy connections on equal backends.)
  // The rule looks at requests in flight only (the snapshot's outstanding
  // also counts decisions not yet used).
  auto inflight = [&](const BackendInfo& b) -> uint64_t {
    return b.id < RM_MAX_BACKENDS ? InFlight(dp_->BackendLoad(b.id)) : 0;
  };
  uint64_t least = UINT64_MAX;
  for (const BackendInfo& b : snapshot_)
    if (Eligible(b.id)) least = std::min<uint64_t>(least, inflight(b));
  if (least == UINT64_MAX) return;
  // The policy sees each decision moved in this round as one request less
  // on its old backend and one more on its new one: the round re-asks many
  // decisions from one snapshot, and without that a load-aware policy
  // would send them all to the backend least loaded at that instant.
  view_ = snapshot_;
  view_pending_ = snap_pending_;
  Snapshot snap;
  snap.now_ns = now;
  snap.backends = absl::MakeConstSpan(view_);
  snap.pending = absl::MakeConstSpan(view_pending_);
  absl::flat_hash_set<uint32_t> was_behind;
  was_behind.swap(behind_);
  for (const BackendInfo& b : snapshot_) {
    // A stalled backend (no progress for several times its usual latency)
    // is behind at once, whatever its count: at a stall's start it has
    // only the few requests that caught it.
    const bool stalled = (b.flags & RM_BACKEND_STALLED) != 0;
    const uint64_t out = inflight(b);
    if (!stalled && (out < least + 3 || out < least * 2)) continue;
    behind_.insert(b.id);
    if (!stalled && !was_behind.contains(b.id)) continue;
    const uint64_t progress = dp_->BackendLoad(b.id).progress_ns;
    const uint64_t silence = now > progress ? now - progress : 0;
    // Where a decision may move (see below); with nowhere, its decisions
    // are not put to the policy at all this round.
    auto may_take = [&](uint32_t t) {
      return t != b.id && Eligible(t) && !Full(t) && !(stalled && Typical(t) > silence);
    };
    if (std::none_of(snapshot_.begin(), snapshot_.end(),
                     [&](const BackendInfo& t) { return may_take(t.id); }))
      continue;
    std::vector<uint32_t> list;
    list.swap(pending_[b.id]);
    std::vector<uint32_t>& keep = pending_[b.id];
    for (uint32_t id : list) {
      if (pending_to_[id] != b.id) continue;  // decided elsewhere since
      uint64_t d = dp_->GetDecision(id);
      if (!d || static_cast<uint32_t>(d) - 1 != b.id || forced_.count(id)) {
        SetPending(id, RM_NO_ID);
        continue;
      }
      const uint32_t next = static_cast<uint32_t>(d >> 32);
      // Where the client is now is in its record, not here: the policy
      // is told only what it is replacing.
      std::optional<size_t> pick =
          policy_->Pick(snap, PolicyRequest(id, RM_NO_ID, next - 1, /*earlier=*/b.id));
      if (!pick || snapshot_[*pick].id == b.id) {
        keep.push_back(id);
        continue;
      }
      const uint32_t target = snapshot_[*pick].id;
      // Not to a backend that has no connection to give (see Full), nor,
      // off a stalled one, to a backend whose usual first byte takes longer
      // than this one's silence so far: under CPU overload the fast
      // backends' short gaps were flagged as stalls (3x a floor of
      // fractions of a millisecond) and their decisions all drained to the
      // overloaded one, whose own floor was 100 ms and more; once it was
      // full, none of them could be used (stress_test).
      if (!may_take(target)) {
        if (Eligible(target)) redecide_withheld_++;
        keep.push_back(id);
        continue;
      }
      // Only if no newer decision replaced it meanwhile.
      if (!dp_->ReplaceDecision(id, d, next, target)) {
        SetPending(id, RM_NO_ID);
        continue;
      }
      decisions_redecided_++;
      view_[*pick].outstanding++;
      view_pending_[*pick]++;
      const size_t from = snap_index_[b.id];
      if (view_[from].outstanding > 0) view_[from].outstanding--;
      if (view_pending_[from] > 0) view_pending_[from]--;
      NoteDecision(id, target, now);
    }
  }
}

void Core::TimeFirstByte(const rm_event& ev) {
  if (ev.backend_id < first_byte_hist_.size())
    first_byte_hist_[ev.backend_id].Observe(uint64_t{ev.first_byte_us} * 1000);
}

void Core::CollectClients() {
  uint64_t now = CoarseNowNs();
  auto before = [&](absl::Duration d) -> uint64_t {
    uint64_t ns = absl::ToInt64Nanoseconds(d);
    return now > ns ? now - ns : 0;
  };
  std::vector<std::pair<uint32_t, uint64_t>> to_free, to_release;
  uint64_t idle_release = opts_.idle_release > absl::ZeroDuration() ? before(opts_.idle_release) : 0;
  auto st = dp_->ForEachClient([&](uint32_t id, const rm_client& c) {
    switch (c.state) {
      case RM_C_SYN_RCVD:
        if (c.last_seen_ns < before(opts_.half_open_timeout))
          to_free.push_back({id, before(opts_.half_open_timeout)});
        break;
      case RM_C_LAST_ACK:
      case RM_C_CLOSED:
        if (c.last_seen_ns < before(opts_.closed_linger))
          to_free.push_back({id, before(opts_.closed_linger)});
        break;
      case RM_C_NAT_CLOSE:
        if (c.last_seen_ns < before(absl::Seconds(30)))
          to_free.push_back({id, before(absl::Seconds(30))});
        break;
      case RM_C_ESTABLISHED:
        if (c.last_seen_ns < before(opts_.client_idle_timeout))
          to_free.push_back({id, before(opts_.client_idle_timeout)});
        else if (idle_release && c.pool_id != RM_NO_ID && c.last_seen_ns < idle_release)
          to_release.push_back({id, idle_release});
        break;
    }
  });
  if (!st.ok()) {
    LOG_EVERY_N(ERROR, 10) << st;
  }
  for (auto [id, older] : to_free) dp_->FreeClient(id, older).IgnoreError();
  for (auto [id, older] : to_release) dp_->ReleaseIdleClient(id, older).IgnoreError();
}

bool Core::Full(uint32_t backend) const {
  return backend < RM_MAX_BACKENDS && pools_->Idle(backend) == 0 && !pools_->CanGrow(backend) &&
         pools_->Connecting(backend) == 0;
}

bool Core::InService(uint32_t backend) const { return panic_ || health_->healthy(backend); }

void Core::UpdatePanic() {
  size_t in_service = 0, healthy = 0;
  for (const auto& [id, b] : backends_) {
    if (b.removed || b.draining) continue;
    in_service++;
    if (health_->healthy(id)) healthy++;
  }
  const bool panic = opts_.health_panic && in_service > 0 &&
                     (healthy == 0 || healthy * 100 < in_service * opts_.health_panic_threshold);
  if (panic == panic_) return;
  panic_ = panic;
  if (panic) {
    panic_entries_++;
    if (healthy == 0)
      LOG(WARNING) << "every backend fails its health checks: all stay in service (panic) until "
                   << "one passes; --health_panic=false refuses new clients instead";
    else
      LOG(WARNING) << "only " << healthy << " of " << in_service
                   << " backends pass their health checks, under --health_panic_threshold="
                   << opts_.health_panic_threshold
                   << "%: all stay in service (panic) until enough pass";
  } else {
    panic_ended_ = true;
    LOG(WARNING) << healthy << " of " << in_service
                 << " backends pass their health checks: panic over, the failing ones "
                 << "leave service";
  }
}

bool Core::Eligible(uint32_t backend) const {
  auto it = snap_index_.find(backend);
  if (it == snap_index_.end()) return false;
  uint32_t f = snapshot_[it->second].flags;
  return (f & RM_BACKEND_HEALTHY) && !(f & RM_BACKEND_DRAINING);
}

std::optional<uint32_t> Core::FallbackBackend(uint32_t avoid) {
  for (size_t i = 0; i < snapshot_.size(); i++) {
    const BackendInfo& b = snapshot_[fallback_cursor_++ % snapshot_.size()];
    if (b.id != avoid && Eligible(b.id)) return b.id;
  }
  return std::nullopt;
}

uint16_t Core::DatapathFlags(uint32_t id, const Backend& b) const {
  if (b.removed) return RM_BE_DRAINING;
  uint16_t flags = RM_BE_ACTIVE;
  // Out of service: no new splices (the same flags as a drain); clients on
  // it stay until their next request, which MoveClientsOff sends elsewhere.
  if (b.draining || !InService(id)) flags |= RM_BE_DRAINING;
  if (pools_->CanGrow(id)) flags |= RM_BE_CAN_GROW;
  return flags;
}

void Core::ApplyHealth(const HealthTransition& t) {
  auto it = backends_.find(t.backend);
  if (it == backends_.end() || it->second.removed) return;
  Backend& b = it->second;
  // A panic that starts or ends here changes every backend's service; the
  // other backends' datapath flags follow in Tick, right after this.
  UpdatePanic();
  uint16_t flags = DatapathFlags(t.backend, b);
  rm_backend rb{};
  rb.ip = b.spec.ip;
  rb.port = b.spec.port;
  rb.flags = flags;
  // Flags before lists: the datapath stops splicing onto it first.
  if (auto st = dp_->SetBackend(t.backend, rb); st.ok()) b.flags = flags;
  else LOG(ERROR) << "backend " << t.backend << ": updating datapath flags: " << st;
  if (auto st = PublishBackends(); !st.ok())
    LOG(ERROR) << "publishing backends after a health change: " << st;
  if (t.up) {
    // A panic that ends here moves the failing backends' clients in Tick.
    pools_->RetryNow(t.backend);
    return;
  }
  // In panic this one stays in service with the rest, and its clients stay
  // on it.
  const size_t moved = panic_ ? 0 : MoveClientsOff(t.backend);
  uint32_t retired = t.failed ? pools_->RetireIdle(t.backend) : 0;
  LOG(INFO) << "backend " << t.backend
            << (panic_ ? std::string(" fails its health checks but stays in service (panic)")
                       : absl::StrCat(" out of service: ", moved,
                                      " clients redirected for their next request"))
            << (t.failed ? absl::StrCat(", ", retired, " idle pooled connections retired")
                         : std::string());
}

size_t Core::MoveClientsOff(uint32_t backend) {
  std::vector<std::pair<uint32_t, rm_client>> hit;
  dp_->ForEachClient([&](uint32_t id, const rm_client& c) {
       if (c.state != RM_C_ESTABLISHED) return;
       uint64_t d = dp_->GetDecision(id);
       bool decided_here = d && static_cast<uint32_t>(d >> 32) == c.req_no + 1 &&
                           static_cast<uint32_t>(d) - 1 == backend;
       if (c.backend_id == backend || decided_here) hit.push_back({id, c});
     }).IgnoreError();
  size_t moved = 0;
  for (auto& [id, c] : hit) {
    forced_.erase(id);
    std::optional<uint32_t> target;
    if (!snapshot_.empty()) {
      Snapshot snap;
      snap.now_ns = MonoNowNs();
      snap.backends = absl::MakeConstSpan(snapshot_);
      snap.pending = absl::MakeConstSpan(snap_pending_);
      std::optional<size_t> pick = policy_->Pick(snap, PolicyRequest(id, c.backend_id, c.req_no));
      if (pick && Eligible(snapshot_[*pick].id)) target = snapshot_[*pick].id;
    }
    if (!target) target = FallbackBackend(backend);
    if (!target) break;  // nothing in service: they stay (and fail) where they are
    dp_->SetDecision(id, c.req_no + 1, *target);
    moved++;
  }
  return moved;
}

void Core::WatchLimits(absl::Time now) {
  if (now - last_limits_check_ < absl::Seconds(1)) return;
  last_limits_check_ = now;
  auto st = dp_->Stats();
  if (!st.ok()) return;
  uint64_t full = (*st)[RM_ST_DROP_TABLE_FULL], no_pool = (*st)[RM_ST_DROP_NO_POOL];
  limits_seen_table_full_ = full;
  limits_seen_no_pool_ = no_pool;
  // At most one line per 10 s, summing what happened since the last one.
  bool pending = full != limits_logged_table_full_ || no_pool != limits_logged_no_pool_;
  if (!pending || now - last_limit_log_ < absl::Seconds(10)) return;
  last_limit_log_ = now;
  if (full != limits_logged_table_full_)
    LOG(ERROR) << "client table full (--max_clients=" << opts_.max_clients << "): "
               << full - limits_logged_table_full_
               << " new clients refused with RST since the last report (counter "
                  "drop_table_full = "
               << full << ")";
  if (no_pool != limits_logged_no_pool_)
    LOG(ERROR) << "no pooled connection for " << no_pool - limits_logged_no_pool_
               << " clients since the last report (pools at --max_conns_per_backend="
               << opts_.max_conns_per_backend
               << " or no backend in service; refused with RST, counter drop_no_pool = "
               << no_pool << ")";
  limits_logged_table_full_ = full;
  limits_logged_no_pool_ = no_pool;
}

void Core::WatchConnecting(int fd) {
  if (epfd_ < 0 || watched_.contains(fd)) return;
  epoll_event e{};
  e.events = EPOLLOUT | EPOLLONESHOT;
  e.data.fd = fd;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &e) == 0) watched_[fd] = true;
}

void Core::Tick() {
  ExpirePending();
  absl::Time now = absl::Now();
  pools_->Tick(now);
  client_resets_.Run(now, [&](uint32_t id) { return dp_->GetClient(id); });
  // Pooled connections being opened are watched for writability (as they
  // are opened; this catches any whose registration failed).
  for (int fd : pools_->ConnectingFds()) WatchConnecting(fd);
  // Forget connecting fds that were closed (timed out): epoll dropped them
  // with the close, and a new socket may reuse the number.
  if (!watched_.empty()) {
    std::vector<int> fds = pools_->ConnectingFds();
    absl::flat_hash_map<int, bool> live;
    for (int fd : fds) live[fd] = true;
    for (auto it = watched_.begin(); it != watched_.end();) {
      if (!live.contains(it->first)) watched_.erase(it++);
      else ++it;
    }
  }
  // Health: active probes and passive signals; transitions change the
  // datapath's flags and lists, the snapshot, and where clients go next.
  for (const HealthTransition& t : health_->Tick(now)) ApplyHealth(t);
  // Tell the datapath which pools can still grow (first data then waits for
  // a connection instead of being refused).
  for (auto& [id, b] : backends_) {
    if (b.removed) continue;
    uint16_t flags = DatapathFlags(id, b);
    if (flags != b.flags) {
      rm_backend rb{};
      rb.ip = b.spec.ip;
      rb.port = b.spec.port;
      rb.flags = flags;
      if (dp_->SetBackend(id, rb).ok()) b.flags = flags;
    }
  }
  if (panic_ended_) {
    // The backends still failing leave service now (the health change or
    // the removal that ended the panic did not move their clients).
    panic_ended_ = false;
    for (const auto& [id, b] : backends_) {
      if (b.removed || InService(id)) continue;
      const size_t moved = MoveClientsOff(id);
      LOG(INFO) << "backend " << id << " out of service: " << moved
                << " clients redirected for their next request";
    }
  }
  WatchLimits(now);
  if (metrics_http_) metrics_http_->Tick();
  if (opts_.stats_interval > absl::ZeroDuration() && now - last_stats_ >= opts_.stats_interval) {
    PrintStats();
    last_stats_ = now;
  }
}

std::vector<BackendStatus> Core::Backends() {
  std::vector<BackendStatus> out;
  std::vector<uint32_t> ids;
  for (const auto& [id, b] : backends_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (uint32_t id : ids) {
    const Backend& b = backends_[id];
    if (b.removed && pools_->Established(id) == 0) continue;
    const rm_backend_load& l = dp_->BackendLoad(id);
    BackendStatus s;
    s.id = id;
    s.addr = AddrString(b.spec.ip, b.spec.port);
    s.weight = b.spec.weight;
    s.healthy = health_->healthy(id);
    s.health = health_->status(id);
    s.draining = b.draining;
    s.removed = b.removed;
    s.pool_live = pools_->Established(id);
    s.pool_idle = pools_->Idle(id);
    s.outstanding = l.outstanding;
    s.unanswered = l.unanswered;
    s.requests = l.requests;
    s.responses = l.responses;
    s.rematched_in = l.rematched_in;
    s.rerouted_in = l.rerouted_in;
    s.ewma_first_ns = l.ewma_first_ns;
    s.ewma_last_ns = l.ewma_last_ns;
    s.stalled = id < RM_MAX_BACKENDS && stalled_[id];
    s.pending_decisions = id < RM_MAX_BACKENDS ? committed_[id] : 0;
    s.stalls = id < RM_MAX_BACKENDS ? stalls_[id] : 0;
    out.push_back(s);
  }
  return out;
}

std::string Core::BackendsText() {
  std::string out =
      absl::StrFormat("%-3s %-21s %-6s %-8s %9s %5s %5s %12s %10s %10s %10s %10s  %s\n", "id",
                      "address", "weight", "state", "pool", "wait", "out", "requests",
                      "rematch_in", "reroute_in", "ewma_1st", "ewma_last", "check");
  for (const BackendStatus& s : Backends()) {
    const char* state = s.removed      ? "removed"
                        : s.draining   ? "draining"
                        : s.healthy && s.stalled ? "stalled"
                        : s.healthy    ? "up"
                        : panic_       ? "panic"
                        : s.health.up ? "ejected"
                                       : "down";
    // Last check result, with the open streak ("ok x2", "refused x3").
    std::string check = s.health.last;
    uint32_t streak = s.health.fail_streak ? s.health.fail_streak : s.health.ok_streak;
    if (streak > 1) absl::StrAppend(&check, " x", streak);
    absl::StrAppendFormat(&out,
                          "%-3u %-21s %-6u %-8s %4u/%-4u %5u %5u %12u %10u %10u %8.2fms %8.2fms  %s\n",
                          s.id, s.addr, s.weight, state, s.pool_idle, s.pool_live, s.unanswered,
                          s.outstanding, s.requests, s.rematched_in, s.rerouted_in,
                          s.ewma_first_ns / 1e6,
                          s.ewma_last_ns / 1e6, check);
  }
  return out;
}

std::string Core::ClientsText(size_t limit, bool closing) {
  std::string out = absl::StrFormat("%-7s %-21s %-12s %-7s %-5s %9s %9s", "id", "client", "state",
                                    "backend", "next", "requests", "rematches");
  // `closing`: only records past established, with what decides whether a
  // close was clean (between requests, everything acknowledged both ways)
  // or ran to its end through the pooled connection: the request phase, the
  // FINs seen and acknowledged (RM_FIN_*), the client bytes the backend has
  // not acknowledged and the response bytes the client has not.
  if (closing) absl::StrAppend(&out, " phase fin  be_unacked cl_unacked pool");
  absl::StrAppend(&out, "\n");
  size_t n = 0, total = 0;
  dp_->ForEachClient([&](uint32_t id, const rm_client& c) {
     if (closing && (c.state == RM_C_ESTABLISHED || c.state == RM_C_SYN_RCVD)) return;
     total++;
     if (n++ >= limit) return;
     std::string be = c.backend_id == RM_NO_ID ? "-" : absl::StrCat(c.backend_id);
     // The backend decided for the client's next request, if that decision
     // is still to be used ("-": none yet, or one for a request gone by).
     const uint64_t d = dp_->GetDecision(id);
     std::string next = d != 0 && static_cast<uint32_t>(d >> 32) == c.req_no + 1
                            ? absl::StrCat(static_cast<uint32_t>(d) - 1)
                            : "-";
     absl::StrAppendFormat(&out, "%-7u %-21s %-12s %-7s %-5s %9u %9u", id,
                           AddrString(c.key.client_ip, c.key.client_port),
                           ClientStateName(c.state), be, next, c.req_no, c.rematches);
     if (closing)
       absl::StrAppendFormat(&out, " %5u 0x%02x %10d %10d %s", c.phase, c.fin_flags,
                             static_cast<int32_t>(c.c_nxt + c.d_req - c.b_acked),
                             static_cast<int32_t>(c.s_nxt - c.c_acked),
                             c.pool_id == RM_NO_ID ? "-" : absl::StrCat(c.pool_id));
     absl::StrAppend(&out, "\n");
   }).IgnoreError();
  if (total > limit) absl::StrAppend(&out, "... ", total - limit, " more\n");
  return out;
}

std::string Core::StatsText() {
  auto st = dp_->Stats();
  if (!st.ok()) return st.status().ToString();
  std::string out;
  for (int i = 0; i < RM_ST__MAX; i++) absl::StrAppend(&out, StatName(i), " ", (*st)[i], "\n");
  absl::StrAppend(&out, "policy_decisions ", decisions_written_, "\n");
  absl::StrAppend(&out, "policy_redecided ", decisions_redecided_, "\n");
  absl::StrAppend(&out, "policy_pick_full ", decisions_full_kept_, "\n");
  absl::StrAppend(&out, "redecide_withheld ", redecide_withheld_, "\n");
  absl::StrAppend(&out, "pending_forgotten ", pending_forgotten_, "\n");
  absl::StrAppend(&out, "adopted_pools ", adopted_pools_, "\n");
  absl::StrAppend(&out, "adopted_clients ", adopted_clients_, "\n");
  absl::StrAppend(&out, "pool_acks_sent ", pool_acks_sent_, "\n");
  absl::StrAppend(&out, "pool_acks_carried ", pool_acks_carried_, "\n");
  absl::StrAppend(&out, "client_resets_sent ", client_resets_.sent(), "\n");
  absl::StrAppend(&out, "health_panic ", panic_ ? 1 : 0, "\nhealth_panic_entries ",
                  panic_entries_, "\n");
  uint64_t stalls = 0;
  for (uint64_t n : stalls_) stalls += n;
  absl::StrAppend(&out, "backend_stalls ", stalls, "\n");
  absl::StrAppend(&out, "core_ring_wakeups ", ring_wakeups_, "\ncore_ring_polls ", ring_polls_,
                  "\ncore_poll_entries ", poll_entries_, "\ncore_polling ", polling_ ? 1 : 0,
                  "\ncore_poll_interval_us ", polling_ ? poll_now_ns_ / 1000 : 0,
                  "\n");
  PolicyStats ps = policy_->stats();
  absl::StrAppend(&out, "policy_calls ", ps.calls, "\npolicy_no_preference ", ps.no_preference,
                  "\npolicy_plugin_errors ", ps.plugin_errors, "\n");
  const PoolStats& pst = pools_->stats();
  absl::StrAppend(&out, "pool_opened ", pst.opened, "\npool_established ", pst.established,
                  "\npool_connect_failures ", pst.connect_failures, "\npool_retired ",
                  pst.retired, "\npool_idle_entries_compacted ", pst.idle_entries_compacted,
                  "\npool_idle_timeouts ", pst.idle_timeouts,
                  "\npool_idle_retire_deferred ", pst.idle_retire_deferred, "\npool_verify_probes ",
                  pst.verify_probes, "\npool_verify_timeouts ", pst.verify_timeouts,
                  "\npool_parked_shrunk ", pst.parked, "\npool_parked_by_scan ",
                  pst.parked_by_scan, "\npool_parked_reread ", pst.parked_reread, "\n");
  return out;
}

std::string Core::MetricsText() {
  // One group per metric family (# HELP, # TYPE, then all its samples), as
  // the text format wants. Labels are ids and addresses only: never payload.
  std::string out;
  auto family = [&out](absl::string_view name, absl::string_view type, absl::string_view help) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  // A family of one unlabelled sample.
  auto single = [&](absl::string_view name, absl::string_view type, absl::string_view help,
                    uint64_t value) {
    family(name, type, help);
    absl::StrAppend(&out, name, " ", value, "\n");
  };
  auto st = dp_->Stats();
  family("rematcher_datapath_total", "counter", "Datapath counters by reason.");
  if (st.ok())
    for (int i = 0; i < RM_ST__MAX; i++)
      absl::StrAppend(&out, "rematcher_datapath_total{reason=\"", StatName(i), "\"} ", (*st)[i],
                      "\n");
  family("rematcher_rematches_total", "counter",
         "Clients moved to another backend at a request boundary.");
  if (st.ok()) absl::StrAppend(&out, "rematcher_rematches_total ", (*st)[RM_ST_REMATCHES], "\n");
  family("rematcher_boundary_decisions_total", "counter",
         "Request boundaries that found a fresh policy decision (applied) or none yet (late).");
  if (st.ok())
    absl::StrAppend(&out, "rematcher_boundary_decisions_total{result=\"applied\"} ",
                    (*st)[RM_ST_DECISION_APPLIED], "\n",
                    "rematcher_boundary_decisions_total{result=\"late\"} ",
                    (*st)[RM_ST_DECISION_LATE], "\n");
  single("rematcher_policy_decisions_total", "counter",
         "Decisions written for the datapath.",
         decisions_written_);
  single("rematcher_policy_redecided_total", "counter",
         "Pending decisions changed because their backend fell behind.",
         decisions_redecided_);
  single("rematcher_policy_pick_full_total", "counter",
         "Policy picks of a backend with no pooled connection to give (none idle, pool at its "
         "limit) that kept the client where it was instead.",
         decisions_full_kept_);
  single("rematcher_redecide_withheld_total", "counter",
         "Re-decisions the policy made but the core withheld: the new backend was full, or "
         "usually slower than the stalled one's silence so far (rounds with no such backend at "
         "all do not ask the policy and are not counted).",
         redecide_withheld_);
  single("rematcher_adopted_pool_connections", "gauge",
         "Pooled connections this process took over from a pinned datapath at start.",
         adopted_pools_);
  single("rematcher_adopted_clients", "gauge",
         "Established clients this process took over from a pinned datapath at start.",
         adopted_clients_);
  single("rematcher_pool_acks_sent_total", "counter",
         "ACKs sent to old pooled connections after a rematch (raw socket).",
         pool_acks_sent_);
  single("rematcher_health_panic", "gauge",
         "1 while every backend (or more than allowed by --health_panic_threshold) fails its "
         "health checks and all stay in service (--health_panic).",
         panic_ ? 1 : 0);
  single("rematcher_health_panic_entries_total", "counter",
         "Times a panic began: every backend, or more than allowed by "
         "--health_panic_threshold, failing its health checks.",
         panic_entries_);
  single("rematcher_pool_acks_carried_total", "counter",
         "Owed ACKs the core did not send: the connection was taken again (its next splice "
         "carries them), or the datapath sent a close's in place of the client's final ACK.",
         pool_acks_carried_);
  single("rematcher_pool_windows_shrunk_total", "counter",
         "Pooled connections handed on after an unframed response whose window the core shrank "
         "(a zero window, then one unit) before queueing them.",
         pools_->stats().parked);
  single("rematcher_client_resets_sent_total", "counter",
         "RSTs the core sent to clients whose backend reset them mid-exchange (the datapath "
         "passes the backend's own on once; these cover its loss).",
         client_resets_.sent());
  single("rematcher_core_ring_wakeups_total", "counter",
         "Times the datapath woke the core for its events.", ring_wakeups_);
  single("rematcher_core_ring_polls_total", "counter",
         "Times the core read the event ring on its own clock (polling under load).",
         ring_polls_);
  single("rematcher_core_polling", "gauge",
         "1 while the core polls the event ring instead of being woken per event.",
         polling_ ? 1 : 0);
  absl::StrAppend(&out,
                  "# HELP rematcher_core_poll_interval_seconds The polling interval now (0: not "
                  "polling).\n# TYPE rematcher_core_poll_interval_seconds gauge\n"
                  "rematcher_core_poll_interval_seconds ",
                  absl::StrFormat("%.6f", polling_ ? poll_now_ns_ / 1e9 : 0.0), "\n");
  PolicyStats ps = policy_->stats();
  single("rematcher_policy_calls_total", "counter",
         "Policy Pick calls.",
         ps.calls);
  single("rematcher_policy_no_preference_total", "counter",
         "Pick calls that returned no preference.",
         ps.no_preference);
  single("rematcher_policy_errors_total", "counter",
         "Picks the host refused (out of range or not eligible).",
         ps.plugin_errors);
  const PoolStats& pst = pools_->stats();
  single("rematcher_pool_connections_opened_total", "counter",
         "Pooled backend connections opened (connect started).",
         pst.opened);
  single("rematcher_pool_connections_established_total", "counter",
         "Pooled backend connections handed to the datapath.",
         pst.established);
  single("rematcher_pool_connect_failures_total", "counter",
         "Pooled backend connections that failed or timed out connecting.",
         pst.connect_failures);
  single("rematcher_pool_connections_retired_total", "counter",
         "Established pooled backend connections retired (died, or their backend left).",
         pst.retired);

  std::vector<BackendStatus> bs = Backends();
  std::vector<std::string> labels;  // backend="ID",address="IP:PORT"
  for (const BackendStatus& s : bs)
    labels.push_back(absl::StrCat("backend=\"", s.id, "\",address=\"", s.addr, "\""));
  // A family of one sample per backend, labelled with its id and address.
  auto per_backend = [&](absl::string_view name, absl::string_view type, absl::string_view help,
                         uint64_t (*value)(const BackendStatus&)) {
    family(name, type, help);
    for (size_t i = 0; i < bs.size(); i++)
      absl::StrAppend(&out, name, "{", labels[i], "} ", value(bs[i]), "\n");
  };
  per_backend("rematcher_backend_requests_total", "counter", "Requests started on the backend.",
              [](const BackendStatus& s) -> uint64_t { return s.requests; });
  per_backend("rematcher_backend_outstanding", "gauge",
              "Requests started on the backend whose response the client has not "
              "acknowledged in full.",
              [](const BackendStatus& s) -> uint64_t { return s.outstanding; });
  per_backend("rematcher_backend_unanswered", "gauge",
              "Requests started on the backend whose response has not begun.",
              [](const BackendStatus& s) -> uint64_t { return s.unanswered; });
  per_backend("rematcher_backend_pending_decisions", "gauge",
              "Clients whose next request is decided for the backend and not started yet.",
              [](const BackendStatus& s) -> uint64_t { return s.pending_decisions; });
  per_backend("rematcher_backend_stalls_total", "counter",
              "Times the backend was found stalled: requests unanswered, no response begun "
              "for several times its usual latency.",
              [](const BackendStatus& s) -> uint64_t { return s.stalls; });
  per_backend("rematcher_backend_stalled", "gauge", "1 while the backend is flagged stalled.",
              [](const BackendStatus& s) -> uint64_t { return s.stalled ? 1 : 0; });
  per_backend("rematcher_backend_rematched_in_total", "counter",
              "Clients moved onto the backend by a rematch.",
              [](const BackendStatus& s) -> uint64_t { return s.rematched_in; });
  per_backend("rematcher_backend_arrival_rerouted_in_total", "counter",
              "Requests the arrival check sent to the backend instead of the one decided for "
              "them, which had fallen behind (--reroute_margin).",
              [](const BackendStatus& s) -> uint64_t { return s.rerouted_in; });
  family("rematcher_backend_pool_connections", "gauge",
         "Pooled connections to the backend: idle (in its queue) and live (established).");
  for (const BackendStatus& s : bs)
    absl::StrAppend(&out, "rematcher_backend_pool_connections{backend=\"", s.id,
                    "\",state=\"idle\"} ", s.pool_idle, "\n",
                    "rematcher_backend_pool_connections{backend=\"", s.id,
                    "\",state=\"live\"} ", s.pool_live, "\n");
  family("rematcher_backend_latency_ewma_seconds", "gauge",
         "EWMA (1/8) of request start to first response byte, and to the response's last "
         "byte acknowledged.");
  for (const BackendStatus& s : bs)
    absl::StrAppend(&out, "rematcher_backend_latency_ewma_seconds{backend=\"", s.id,
                    "\",to=\"first_byte\"} ", s.ewma_first_ns / 1e9, "\n",
                    "rematcher_backend_latency_ewma_seconds{backend=\"", s.id,
                    "\",to=\"last_byte_acked\"} ", s.ewma_last_ns / 1e9, "\n");
  family("rematcher_backend_time_to_first_byte_seconds", "histogram",
         "Per request: from its first byte from the client to the first response byte from "
         "the backend, timed in XDP (microsecond resolution).");
  for (size_t i = 0; i < bs.size(); i++)
    first_byte_hist_[bs[i].id].AppendPrometheus(
        &out, "rematcher_backend_time_to_first_byte_seconds", labels[i]);
  per_backend("rematcher_backend_up", "gauge",
              "1 while the backend passes its health checks and is not ejected.",
              [](const BackendStatus& s) -> uint64_t { return s.healthy ? 1 : 0; });
  family("rematcher_backend_health_checks_total", "counter",
         "Health check results (passive_failure: failed pooled connects; "
         "connect_failed_while_serving: a probe or pooled connect that failed while the "
         "backend answered requests, not counted against it).");
  for (const BackendStatus& s : bs)
    absl::StrAppend(&out, "rematcher_backend_health_checks_total{backend=\"", s.id,
                    "\",result=\"ok\"} ", s.health.checks_ok, "\n",
                    "rematcher_backend_health_checks_total{backend=\"", s.id,
                    "\",result=\"failed\"} ", s.health.checks_failed, "\n",
                    "rematcher_backend_health_checks_total{backend=\"", s.id,
                    "\",result=\"passive_failure\"} ", s.health.passive_failures, "\n",
                    "rematcher_backend_health_checks_total{backend=\"", s.id,
                    "\",result=\"connect_failed_while_serving\"} ",
                    s.health.connect_failures_while_serving, "\n");
  family("rematcher_backend_health_transitions_total", "counter",
         "Health state changes of the backend.");
  for (const BackendStatus& s : bs)
    absl::StrAppend(&out, "rematcher_backend_health_transitions_total{backend=\"", s.id,
                    "\",to=\"down\"} ", s.health.went_down, "\n",
                    "rematcher_backend_health_transitions_total{backend=\"", s.id,
                    "\",to=\"up\"} ", s.health.went_up, "\n",
                    "rematcher_backend_health_transitions_total{backend=\"", s.id,
                    "\",to=\"ejected\"} ", s.health.ejections, "\n");
  return out;
}

void Core::PrintStats() {
  auto st = dp_->Stats();
  if (!st.ok()) return;
  const StatsArray& s = *st;
  double secs = absl::ToDoubleSeconds(opts_.stats_interval);
  auto rate = [&](int i) { return (s[i] - last_counters_[i]) / secs; };
  uint64_t drops = 0;
  for (int i = RM_ST_DROP_MALFORMED; i <= RM_ST_DROP_POOL_DATA; i++) drops += s[i];
  uint64_t dec = s[RM_ST_DECISION_APPLIED] + s[RM_ST_DECISION_LATE];
  std::string line = absl::StrFormat(
      "[%s] pkts/s c->b %.0f b->c %.0f | conns/s %.0f | rematches/s %.0f | decisions applied "
      "%.2f%% (late %u) | drops %u | clients handshaken %u\n",
      absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()), rate(RM_ST_TX_C2B),
      rate(RM_ST_TX_B2C), rate(RM_ST_HANDSHAKES), rate(RM_ST_REMATCHES),
      dec ? 100.0 * s[RM_ST_DECISION_APPLIED] / dec : 100.0, s[RM_ST_DECISION_LATE], drops,
      s[RM_ST_HANDSHAKES]);
  std::string table = BackendsText();
  fputs(line.c_str(), stdout);
  fputs(table.c_str(), stdout);
  fflush(stdout);
  last_counters_ = s;
}

absl::Status Core::OpenControlSocket() {
  const std::string& path = opts_.control_socket;
  std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty()) mkdir(dir.c_str(), 0700);
  unlink(path.c_str());
  ctlfd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (ctlfd_ < 0) return Errno("control socket");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path))
    return absl::InvalidArgumentError("control socket path too long");
  strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
  mode_t old = umask(0077);
  int r = bind(ctlfd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  umask(old);
  if (r) return Errno(absl::StrCat("binding control socket ", path));
  chmod(path.c_str(), 0600);
  if (listen(ctlfd_, 16)) return Errno("listen on control socket");
  LOG(INFO) << "control socket " << path << " (root only)";
  return absl::OkStatus();
}

void Core::OnControlReadable() {
  for (;;) {
    int fd = accept4(ctlfd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    ucred cred{};
    socklen_t len = sizeof(cred);
    std::string reply;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.uid != 0) {
      reply = "error: permission denied (root only)\n";
      LOG(WARNING) << "control socket: refused uid " << cred.uid;
    } else {
      // One short command per connection; bounded read with a timeout.
      timeval tv{1, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      char buf[512];
      ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
      if (n > 0) {
        buf[n] = 0;
        reply = HandleCommand(std::string(absl::StripAsciiWhitespace(buf)));
      }
    }
    size_t off = 0;
    while (off < reply.size()) {
      ssize_t w = send(fd, reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
      if (w <= 0) break;
      off += w;
    }
    close(fd);
  }
}

std::string Core::HandleCommand(const std::string& line) {
  std::vector<std::string> a = absl::StrSplit(line, ' ', absl::SkipEmpty());
  auto err = [](const absl::Status& st) { return absl::StrCat("error: ", st.message(), "\n"); };
  auto num = [](const std::string& s, uint32_t* v) { return absl::SimpleAtoi(s, v); };
  if (a.empty() || a[0] == "help")
    return "commands: backends | clients [N] [closing] | stats | metrics | add IP:PORT [WEIGHT] | "
           "remove ID | drain ID | rematch CLIENT BACKEND\n";
  if (a[0] == "backends") return BackendsText();
  if (a[0] == "clients") {
    uint32_t n = 100;
    if (a.size() > 1 && !num(a[1], &n)) return "error: clients [N] [closing]\n";
    if (a.size() > 2 && a[2] != "closing") return "error: clients [N] [closing]\n";
    return ClientsText(n, a.size() > 2);
  }
  if (a[0] == "stats") return StatsText();
  if (a[0] == "metrics") return MetricsText();
  if (a[0] == "add" && (a.size() == 2 || a.size() == 3)) {
    auto spec = ParseBackend(a[1], ntohs(opts_.vip_port));
    if (!spec.ok()) return err(spec.status());
    if (a.size() == 3 && (!num(a[2], &spec->weight) || spec->weight == 0))
      return "error: weight must be a positive integer\n";
    auto id = AddBackend(*spec);
    if (!id.ok()) return err(id.status());
    return absl::StrCat("ok backend ", *id, "\n");
  }
  uint32_t x = 0, y = 0;
  if ((a[0] == "remove" || a[0] == "drain") && a.size() == 2) {
    if (!num(a[1], &x)) return "error: backend id must be a number\n";
    absl::Status st = a[0] == "remove" ? RemoveBackend(x) : DrainBackend(x);
    return st.ok() ? "ok\n" : err(st);
  }
  if (a[0] == "rematch" && a.size() == 3) {
    if (!num(a[1], &x) || !num(a[2], &y)) return "error: rematch CLIENT BACKEND\n";
    absl::Status st = RematchClient(x, y);
    return st.ok() ? "ok (applied at the client's next request)\n" : err(st);
  }
  return absl::StrCat("error: unknown command '", line, "' (try help)\n");
}

absl::Status Core::Run() {
  gc_thread_ = std::thread([this] {
    while (!stop_.load()) {
      CollectClients();
      for (int i = 0; i < 10 && !stop_.load(); i++) absl::SleepFor(absl::Milliseconds(100));
    }
  });
  struct Join {
    Core* c;
    ~Join() {
      c->stop_.store(true);
      if (c->gc_thread_.joinable()) c->gc_thread_.join();
    }
  } join{this};
  started_ = absl::Now();
  last_stats_ = started_;
  last_gc_ = started_;
  auto st0 = dp_->Stats();
  if (st0.ok()) last_counters_ = *st0;
  epoll_event evs[64];
  // Adaptive polling (CoreOptions::poll_interval), judged over windows of
  // 10 ms: the wakeups the ring caused, and the events read.
  const int64_t poll_ns = std::max<int64_t>(0, absl::ToInt64Nanoseconds(opts_.poll_interval));
  constexpr uint64_t kPollWindowNs = 10'000'000;
  uint64_t win_start = MonoNowNs(), win_wakes = 0, win_events = 0;
  int windows = 0;  // the interval is adjusted every 10 windows (100 ms)
  // While polling: time until a backend could be flagged stalled, as of the
  // end of the last pass (NanosToNextStall).
  uint64_t to_stall = UINT64_MAX;
  // After polling stops, one more short sleep: an event reserved before the
  // datapath saw wakeups back on, and submitted after the last read, wakes
  // no one.
  bool linger = false;
  while (!stop_.load()) {
    if (opts_.duration > absl::ZeroDuration() && absl::Now() - started_ >= opts_.duration) break;
    timespec timeout{0, 100'000'000};
    if (polling_) {
      // Read the ring every poll_now_ns_, or sooner if a backend could be
      // found stalled sooner: then its pending decisions move at once, not
      // up to an interval later (the requests sent meanwhile would wait out
      // the stall).
      timeout.tv_nsec = std::max<int64_t>(
          20'000, std::min<uint64_t>(poll_now_ns_, to_stall));
    }
    if (linger) timeout.tv_nsec = poll_ns;
    linger = false;
    if (pools_->verifying()) {
      // A connection handed back is idle again only once its probe is
      // answered: probe when due, not at the next wakeup (up to the 100 ms
      // tick when the ring is quiet).
      const int64_t to_probe = absl::ToInt64Nanoseconds(pools_->NextProbeDue() - absl::Now());
      timeout.tv_nsec = std::clamp<int64_t>(to_probe, 20'000, timeout.tv_nsec);
    }
    // Closes' ACKs whose final ACK did not take them: when due.
    if (const uint64_t to_ack = FlushCloseAcks(MonoNowNs()); to_ack != UINT64_MAX)
      timeout.tv_nsec = std::clamp<int64_t>(to_ack, 20'000, timeout.tv_nsec);
    int n = epoll_pwait2(epfd_, evs, 64, &timeout, nullptr);
    if (n < 0 && errno != EINTR) return Errno("epoll_pwait2");
    if (polling_) ring_polls_++;
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == timerfd_) {
        uint64_t x;
        while (read(timerfd_, &x, sizeof(x)) > 0) {
        }
        Tick();
      } else if (fd == sigfd_) {
        signalfd_siginfo si;
        if (read(sigfd_, &si, sizeof(si)) > 0) {
          LOG(INFO) << "signal " << si.ssi_signo << ": shutting down";
          stop_.store(true);
        }
      } else if (fd == ctlfd_) {
        OnControlReadable();
      } else if (metrics_http_ && fd == metrics_http_->fd()) {
        metrics_http_->OnReady();
      } else if (fd == ring_buffer__epoll_fd(rb_)) {
        ring_wakeups_++;
        win_wakes++;
        win_events += std::max(0, ring_buffer__consume(rb_));
      } else if (health_->Handles(fd)) {
        health_->OnEvent(fd, evs[i].events);
      } else {
        watched_.erase(fd);
        epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
        pools_->OnWritable(fd);
      }
    }
    // Events can queue up while we handle others; drain without waiting.
    win_events += std::max(0, ring_buffer__consume(rb_));
    if (poll_ns > 0) {
      const uint64_t now = MonoNowNs();
      if (now - win_start >= kPollWindowNs) {
        const uint64_t polls = (now - win_start) / poll_ns;  // reads polling would take
        // Hysteresis: in waking mode about half the events wake (REQ_DONE
        // never does), so polling starts above one wakeup per interval and
        // stops below about half of one.
        if (!polling_ && win_wakes > polls) {
          SetPolling(true);
        } else if (polling_ && win_events < polls) {
          SetPolling(false);
          win_events += std::max(0, ring_buffer__consume(rb_));
          linger = true;
        }
        if (polling_ && ++windows % 10 == 0) AdjustPollInterval();
        win_start = now;
        win_wakes = win_events = 0;
      }
    }
    // A stall that became due is flagged now (the snapshot's flags are
    // otherwise refreshed at decisions), and its pending decisions re-asked.
    bool stall_due = false;
    to_stall = UINT64_MAX;
    if (polling_) {
      const uint64_t now = MonoNowNs();
      to_stall = NanosToNextStall(now);
      if (to_stall == 0) {
        stall_due = true;
        RefreshLoad(now);
        to_stall = NanosToNextStall(now);  // the one found is flagged now
      }
    }
    Redecide(stall_due);
    if (pools_->verifying()) pools_->ProbeVerifying(absl::Now());
  }
  FlushCloseAcks(MonoNowNs(), /*all=*/true);
  return absl::OkStatus();
}

}  // namespace rematcher
