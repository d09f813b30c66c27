// Core: the userspace half of rematcher. Owns the datapath, the backend
// pools and the policy, and runs one event loop:
//   - ring-buffer events from XDP: a request finished (ask the policy and
//     write its decision), a pooled connection owes an ACK, died, or ran out;
//   - pooled connections completing their connect();
//   - a 100 ms tick: pool refill, client GC (closed, half-open, idle), idle
//     release of pooled connections, live statistics;
//   - the control socket (root only);
//   - the metrics HTTP endpoint (--metrics_addr; lb/metrics_http.h).
// No payload ever reaches this process.
#ifndef REMATCHER_LB_CORE_H_
#define REMATCHER_LB_CORE_H_

#include <array>
#include <atomic>
#include <thread>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lb/client_reset.h"
#include "lb/datapath.h"
#include "lb/health.h"
#include "lb/metrics_http.h"
#include "lb/policy.h"
#include "lb/pool.h"

struct ring_buffer;

namespace rematcher {

struct CoreOptions {
  int ifindex = 0;
  std::string ifname;
  uint32_t vip = 0;       // network order
  uint16_t vip_port = 0;  // network order
  uint32_t lb_ip = 0;     // network order; source of pooled connections
  std::vector<BackendSpec> backends;
  uint32_t conns_per_backend = 32;
  uint32_t max_conns_per_backend = 256;
  uint32_t max_clients = 65536;
  uint32_t max_backends = RM_MAX_BACKENDS;
  uint16_t mss = 1400;
  uint8_t client_wscale = 7;
  uint32_t client_window_cap = 128 * 1024;
  // Pooled connections are retired before the backend's keep-alive limits
  // bite: after this many splices (0: never) / this long idle (0: never).
  uint32_t pool_max_uses = 0;
  // A request arriving at a boundary goes to its backend's alternative
  // (the least loaded other backend, kept by RefreshLoad) when the backend
  // it would go to has at least this many more requests unanswered
  // (rm_config::reroute_margin). 0: never.
  uint32_t reroute_margin = 2;
  // ...and at least this percentage of the alternative's count
  // (rm_config::reroute_ratio_pct; 200: twice as many). At least 100.
  uint32_t reroute_ratio_pct = 200;
  absl::Duration pool_idle_timeout = absl::Seconds(60);
  // Testing only: every Nth park event is ignored, as if lost (0: none).
  uint32_t test_skip_park_every = 0;
  // Testing only: parked connections stay parked (for adoption's test).
  bool test_hold_parked = false;
  bool rematch = true;
  bool allow_generic_xdp = false;
  std::string policy = "rr";
  std::string policy_args;
  std::vector<std::string> policy_dirs;
  absl::Duration stats_interval = absl::Seconds(1);  // 0: no live stats
  absl::Duration idle_release = absl::Seconds(1);    // hand back pools of idle clients
  absl::Duration client_idle_timeout = absl::Minutes(5);
  absl::Duration closed_linger = absl::Seconds(2);
  absl::Duration half_open_timeout = absl::Seconds(5);
  absl::Duration duration = absl::ZeroDuration();  // 0: until signalled
  // How often (at most) decisions still pending towards a backend that fell
  // behind the others are put to the policy again; 0: never.
  absl::Duration redecide_interval = absl::Microseconds(500);
  // Adaptive polling: while the datapath wakes the core more than once per
  // interval, it stops waking it, and the core reads the ring every
  // interval instead (one wakeup per interval, not per request). Decisions
  // and owed ACKs wait up to an interval (plus timer slack) longer. Back to
  // a wakeup per event when fewer than one event arrives per interval
  // (about half of them would wake). 0: never poll.
  absl::Duration poll_interval = absl::Microseconds(200);
  // While polling, the interval stretches up to poll_max as long as the
  // decisions keep reaching the datapath before their clients' next
  // requests (under 0.2% late over 100 ms: x1.25), and halves (not below
  // poll_interval) when more than 1% come late. An open loop whose clients
  // come back milliseconds later needs no 200 us reads; a closed loop at
  // low concurrency keeps them. poll_max == poll_interval: fixed.
  absl::Duration poll_max = absl::Microseconds(1000);
  // The policy's `outstanding` counts, besides the requests in flight,
  // the decisions made for a backend and not used yet (load to come).
  bool count_pending_decisions = true;
  // What counts as a request in flight, for the policy's `outstanding`, the
  // re-decision's behind rule: false, until its response begins
  // (rm_backend_load.unanswered); true, until the client acknowledges the
  // whole response (rm_backend_load.outstanding), which a client with
  // nothing more to send delays by tens of milliseconds.
  bool load_until_acked = false;
  // Stall detection: a backend with requests unanswered and no progress
  // (no response begun) for max(stall_min, 3 x its lowest first-byte EWMA
  // of the last 0.5-1 s) is flagged RM_BACKEND_STALLED in the policy's
  // snapshot, and the decisions pending towards it are put to the policy
  // again at once (not after two rounds of the count rule). The flag
  // lasts at most stall_hold per stall: a longer silence is the health
  // checks' business, and a flag that outlived the stall (a miscount) must
  // not shun a backend for good. stall_min 0: off.
  absl::Duration stall_min = absl::Milliseconds(1);
  absl::Duration stall_hold = absl::Seconds(1);
  // bpffs directory the datapath is pinned in (DatapathOptions::pin_dir):
  // it outlives the process, and the next one started with it adopts the
  // clients and pooled connections it holds. Empty: not pinned.
  std::string pin_dir;
  // Idle pooled connections taken newest first (DatapathOptions::idle_lifo).
  bool idle_lifo = true;
  std::string control_socket;  // empty: none
  std::string metrics_addr;    // IP:PORT of the Prometheus HTTP endpoint; empty: none
  HealthOptions health;        // lb_ip is filled in from lb_ip above
  // When every backend in service (not draining, not removed) fails its
  // health checks, keep them all in service instead of refusing every new
  // client: checks that fail everywhere at once are as likely a broken
  // check (a wrong --health_http_path, an overloaded health endpoint) as a
  // fleet that is down, and a fleet that is down fails the requests anyway.
  // Ends when one passes. Envoy's panic mode at 0% healthy.
  bool health_panic = true;
  // With health_panic, also panic while fewer than this percentage of the
  // backends in service pass their checks (Envoy's healthy_panic_threshold):
  // the few that pass would otherwise take every request and likely fall
  // over too. 0: only when none passes. Ends when the share is reached.
  uint32_t health_panic_threshold = 0;
};

// One row of `backends` output and of the policy snapshot.
struct BackendStatus {
  uint32_t id;
  std::string addr;
  uint32_t weight;
  bool healthy, draining, removed;
  uint32_t pool_live, pool_idle;
  uint32_t outstanding;  // started, response not acknowledged in full
  uint32_t unanswered;   // started, response not begun
  uint64_t requests, responses, rematched_in, rerouted_in;
  uint64_t ewma_first_ns, ewma_last_ns;
  bool stalled;     // RM_BACKEND_STALLED at the last load refresh
  uint32_t pending_decisions;  // decided for it, not started yet
  uint64_t stalls;  // times it became stalled
  HealthStatus health;
};

class Core {
 public:
  static absl::StatusOr<std::unique_ptr<Core>> Create(const CoreOptions& opts);
  ~Core();

  // Runs the event loop until RequestStop(), SIGINT/SIGTERM or the
  // configured duration.
  absl::Status Run();
  void RequestStop() { stop_.store(true); }

  // Control operations (also reachable through the control socket).
  absl::StatusOr<uint32_t> AddBackend(const BackendSpec& spec);
  // The same at a given id (adoption keeps each backend's pinned id).
  absl::StatusOr<uint32_t> AddBackendAt(const BackendSpec& spec, uint32_t id);
  absl::Status RemoveBackend(uint32_t id);
  absl::Status DrainBackend(uint32_t id);
  absl::Status RematchClient(uint32_t client, uint32_t backend);
  std::vector<BackendStatus> Backends();
  std::string BackendsText();
  // `closing`: only records past established, with the state of their close.
  std::string ClientsText(size_t limit, bool closing = false);
  std::string StatsText();
  std::string MetricsText();  // Prometheus text exposition
  std::string HandleCommand(const std::string& line);

  Datapath* datapath() { return dp_.get(); }
  PoolManager* pools() { return pools_.get(); }
  uint64_t decisions_written() const { return decisions_written_; }
  uint64_t decisions_redecided() const { return decisions_redecided_; }
  uint64_t pool_acks_sent() const { return pool_acks_sent_; }

 private:
  explicit Core(const CoreOptions& opts) : opts_(opts) {}
  absl::Status Init();
  static int OnEventThunk(void* ctx, void* data, size_t len);
  void OnEvent(const rm_event& ev);
  // `earlier`: the backend decided for this client's next request before
  // (at the request's start), which this decision replaces; RM_NO_ID if none.
  void OnRequestDone(const rm_event& ev, uint32_t earlier = RM_NO_ID);
  void SendPoolAck(uint32_t pool, const rm_event& ev);
  // A close's owed ACK (RM_EV_CLIENT_LEFT) whose client has not sent its
  // final ACK yet, which would take it to the backend from the datapath:
  // sent only if that has not happened kCloseAckWait later (then the
  // client's final ACK was lost, or it reset instead).
  void SendCloseAckLater(const rm_event& ev);
  // Sends (or finds sent) those due by `now_ns`; all of them if `all`.
  // Returns the nanoseconds until the next is due (UINT64_MAX: none).
  uint64_t FlushCloseAcks(uint64_t now_ns, bool all = false);
  void Tick();
  // Adds a connecting pooled socket to epoll (once) to finish it when writable.
  void WatchConnecting(int fd);
  void CollectClients();
  void PrintStats();
  absl::Status PublishBackends();
  // Health: applies a transition (datapath flags, lists, pools, clients).
  void ApplyHealth(const HealthTransition& t);
  // Points every client on (or decided for) a backend that left service at
  // an eligible one for its next request. Returns how many.
  size_t MoveClientsOff(uint32_t backend);
  // A backend for new requests when the policy's choice is not eligible
  // (round robin over eligible ones); nullopt when none is.
  std::optional<uint32_t> FallbackBackend(uint32_t avoid);
  bool Eligible(uint32_t backend) const;
  // In service as far as health goes: passes its checks, or too few
  // backends pass them (panic, CoreOptions::health_panic).
  bool InService(uint32_t backend) const;
  // Recomputes panic_ from the backends' health (logging a change).
  void UpdatePanic();
  bool panic_ = false;
  // Set when a panic ends; Tick then moves the failing backends' clients.
  bool panic_ended_ = false;
  uint64_t panic_entries_ = 0;
  // No idle pooled connection, none connecting and the pool at its limit:
  // a rematch there now would be skipped (the client stays where it is).
  bool Full(uint32_t backend) const;
  // Rate-limited ERRORs when the datapath refuses clients at a limit.
  void WatchLimits(absl::Time now);
  absl::Status OpenControlSocket();
  void OnControlReadable();
  // REQ_DONE's time to first byte (timed by the datapath) into its
  // backend's histogram: a bucket increment.
  void TimeFirstByte(const rm_event& ev);

  struct Backend {
    BackendSpec spec;
    bool draining = false;
    bool removed = false;
    uint16_t flags = 0;  // last written to the datapath
  };
  // What the datapath should hold for a backend now: out of service
  // (draining, removed, failing its checks) takes RM_BE_ACTIVE's splices
  // away; CAN_GROW while its pool may grow.
  uint16_t DatapathFlags(uint32_t id, const Backend& b) const;

  CoreOptions opts_;
  std::unique_ptr<Datapath> dp_;
  std::unique_ptr<PoolManager> pools_;
  std::unique_ptr<Policy> policy_;
  std::unique_ptr<HealthChecker> health_;
  // Clients whose backend reset them are told again (lb/client_reset.h).
  ClientResets client_resets_;
  ring_buffer* rb_ = nullptr;
  int epfd_ = -1, timerfd_ = -1, sigfd_ = -1, ctlfd_ = -1;
  absl::flat_hash_map<int, bool> watched_;  // connecting fds in epoll
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::atomic<bool> stop_{false};
  // Client GC runs on its own thread: a full scan of the client table takes
  // milliseconds, which must not delay policy decisions.
  std::thread gc_thread_;

  absl::flat_hash_map<uint32_t, Backend> backends_;
  std::vector<BackendInfo> snapshot_;            // policy view, by index
  absl::flat_hash_map<uint32_t, size_t> snap_index_;
  absl::flat_hash_map<uint32_t, uint32_t> forced_;  // client -> backend

  uint64_t decisions_written_ = 0, pool_acks_sent_ = 0, events_ = 0;
  // What Init took over from a pinned datapath (CoreOptions::pin_dir).
  uint64_t adopted_pools_ = 0, adopted_clients_ = 0;
  bool adopting_ = false;  // Init is registering the backends of an adopted datapath
  // Init's backends for an adopted datapath: each given backend the pinned
  // one held keeps its id (its records, pools and load are under it); one
  // it held and is not given any more stays, removed (draining), until its
  // pooled connections are released and retired; then the pooled
  // connections are adopted (PoolManager::Adopt); new backends come last.
  absl::StatusOr<AdoptedPools> AddBackendsAdopting();
  // Event-loop accounting (see CoreOptions::poll_interval): wakeups by the
  // ring (one per waking event), reads of the ring while polling, switches
  // into polling, and whether it polls now.
  uint64_t ring_wakeups_ = 0, ring_polls_ = 0, poll_entries_ = 0;
  bool polling_ = false;
  // The polling interval now (CoreOptions::poll_max), and the decision
  // counters at the last adjustment.
  int64_t poll_now_ns_ = 0;
  uint64_t poll_ctl_applied_ = 0, poll_ctl_late_ = 0;
  // Stretches or shortens poll_now_ns_ by how many decisions came late.
  void AdjustPollInterval();
  // Switches polling on or off (datapath wakeups the other way).
  void SetPolling(bool on);
  // Owed ACKs found unneeded when the core got to them: the connection had
  // been taken again, and its next splice carries the ACK.
  uint64_t pool_acks_carried_ = 0;
  struct CloseAck {
    uint64_t due_ns;
    rm_event ev;
  };
  std::deque<CloseAck> close_acks_;  // in due order (one fixed wait each)
  // Decisions a client has not used yet, by the backend they name: a
  // decision is taken when a request starts or its response begins, for
  // the client's next request, which may come much later. When a backend
  // falls behind meanwhile (a stall: its outstanding requests pile up),
  // Redecide() puts those decisions to the policy again with fresh load.
  // pending_to_[id] is the backend of client id's latest decision; an entry
  // of pending_[b] is live while pending_to_[id] == b.
  void NoteDecision(uint32_t client, uint32_t backend, uint64_t now_ns);
  // pending_to_[client] = backend (RM_NO_ID: none), keeping committed_.
  void SetPending(uint32_t client, uint32_t backend);
  // Drops a client's pending decision: it closed, or went idle.
  void ForgetPending(uint32_t client);
  // Forgets decisions older than a second (Tick; each slot is looked at
  // every half second).
  void ExpirePending();
  // Decisions not used yet, by backend: load to come, which the policy's
  // snapshot counts in `outstanding` (RefreshLoad).
  std::array<uint32_t, RM_MAX_BACKENDS> committed_{};
  std::vector<uint32_t> pending_at_;  // when pending_to_[id] was decided (ns >> 20)
  size_t expire_cursor_ = 0;
  std::vector<uint32_t> listed_mark_;  // list compaction's dedup stamps
  uint32_t listed_stamp_ = 0;
  // Re-asks decisions pending towards backends behind the others, at most
  // every redecide_interval unless `now` (a stall just became due).
  void Redecide(bool now = false);
  // The snapshot's load figures and stall flags as of now_ns (MonoNowNs).
  void RefreshLoad(uint64_t now_ns);
  // What the policy is told about a client's next request.
  // `earlier`: the backend this call's decision replaces (RM_NO_ID: a
  // first decision).
  Request PolicyRequest(uint32_t client, uint32_t current_backend,
                        uint32_t requests_so_far, uint32_t earlier = RM_NO_ID) const;
  // Writes each backend's alternative for the datapath's reroute check
  // (CoreOptions::reroute_margin).
  void UpdateAlternatives();
  // Whether backend `id` is stalled now (see CoreOptions::stall_min).
  bool Stalled(uint32_t id, const rm_backend_load& l, uint64_t now_ns) const;
  // The silence after which backend `id` counts as stalled.
  uint64_t StallLimitNs(uint32_t id) const;
  // Backend id's usual first-byte latency: the lower of its EWMA and its
  // floors of the last 0.5-1 s (0 before any sample).
  uint64_t Typical(uint32_t id) const;
  // Nanoseconds until the first backend not flagged yet could be (0: now;
  // UINT64_MAX: none has unanswered requests, or stall flags are off).
  uint64_t NanosToNextStall(uint64_t now_ns) const;
  // The stall rule's yardstick: the lowest first-byte EWMA of a backend
  // over the last 0.5-1 s. The EWMA itself jumps with every stall (a few
  // 40 ms samples put it at several ms, and 3x that let the next stall go
  // unflagged for its first 10-20 ms); its recent floor does not, and it
  // still follows a backend that became slower for good within a second.
  void TrackFirstByteFloor(uint32_t id, uint64_t ewma_ns);  // 0: no sample
  std::array<uint64_t, RM_MAX_BACKENDS> floor_cur_{}, floor_prev_{};
  uint64_t floor_window_start_ns_ = 0;
  // Requests in flight on a backend as the policies and re-decision see
  // them (CoreOptions::load_until_acked).
  uint32_t InFlight(const rm_backend_load& l) const {
    return opts_.load_until_acked ? l.outstanding : l.unanswered;
  }
  std::array<bool, RM_MAX_BACKENDS> stalled_{};
  std::array<uint64_t, RM_MAX_BACKENDS> stalls_{};
  std::vector<BackendInfo> view_;  // Redecide's snapshot, with its moves counted
  // Snapshot::pending for snapshot_ (filled by RefreshLoad) and for view_.
  std::vector<uint32_t> snap_pending_, view_pending_;
  std::vector<std::vector<uint32_t>> pending_;
  std::vector<uint32_t> pending_to_;
  uint64_t last_redecide_ns_ = 0, decisions_redecided_ = 0, pending_forgotten_ = 0;
  // Picks of a full backend (Full) turned into staying put, and re-decision
  // moves withheld because the new backend was full or slower than the
  // stalled one's silence so far.
  uint64_t decisions_full_kept_ = 0, redecide_withheld_ = 0;
  // Backends found behind at the last re-decision round: only a backend
  // behind in two rounds in a row has its pending decisions re-asked.
  absl::flat_hash_set<uint32_t> behind_;
  std::array<LatencyHistogram, RM_MAX_BACKENDS> first_byte_hist_;  // by backend id
  absl::Time started_, last_stats_, last_gc_;
  StatsArray last_counters_{};
  size_t fallback_cursor_ = 0;
  absl::Time last_limits_check_ = absl::InfinitePast();
  absl::Time last_limit_log_ = absl::InfinitePast();
  uint64_t limits_seen_table_full_ = 0, limits_seen_no_pool_ = 0;
  uint64_t limits_logged_table_full_ = 0, limits_logged_no_pool_ = 0;
};

}  // namespace rematcher

#endif  // REMATCHER_LB_CORE_H_
