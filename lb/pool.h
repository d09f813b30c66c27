// PoolManager: the persistent TCP connections from the LB to each backend.
//
// A pooled connection is opened by the kernel (connect()), while the
// datapath passes its handshake through and records what userspace cannot
// read from the socket (the backend's SYN-ACK: ISN, TSval, options, MAC).
// Once established, the socket is put in TCP_REPAIR mode, its sequence and
// timestamp state is read, and the connection is handed to the datapath
// (record IDLE, id pushed to the backend's idle queue). From then on the
// kernel socket only holds the 4-tuple: it never sends or receives again,
// and close() in repair mode is silent.
//
// Dead connections (reported by the datapath) are reset towards the backend
// if needed, closed silently and replaced, with back-off while a backend
// refuses connections.
#ifndef REMATCHER_LB_POOL_H_
#define REMATCHER_LB_POOL_H_

#include <netinet/in.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "lb/datapath.h"

namespace rematcher {

struct BackendSpec {
  uint32_t ip = 0;    // network order
  uint16_t port = 0;  // network order
  uint32_t weight = 1;
};

std::string AddrString(uint32_t ip_net, uint16_t port_net);
absl::StatusOr<BackendSpec> ParseBackend(const std::string& text, uint16_t default_port);

struct PoolOptions {
  uint32_t lb_ip = 0;             // network order: local address for pools
  uint32_t conns_per_backend = 32;  // opened at start and kept
  uint32_t max_conns_per_backend = 256;  // grown to on demand
  uint16_t mss = 1400;            // TCP_MAXSEG before connect
  absl::Duration connect_timeout = absl::Seconds(2);
  // Retire a pooled connection after this many splices / this age, before
  // the backend's own keep-alive limits bite (0 = never).
  uint32_t max_uses = 0;
  absl::Duration idle_timeout = absl::ZeroDuration();  // 0: never
  // Testing only: every Nth park event is ignored, as a lost one would be,
  // leaving that connection to ScanPools (0: none).
  uint32_t test_skip_park_every = 0;
  // Testing only: park events are ignored and ScanPools passes parked
  // connections by: they stay parked until a next process adopts them.
  bool test_hold_parked = false;
};

// What PoolManager::Adopt found in the records an earlier process left.
struct AdoptedPools {
  uint32_t idle = 0, busy = 0, verifying = 0;  // kept
  uint32_t unparked = 0;  // of idle: parked, shrunk and queued by Adopt
  uint32_t dropped = 0;  // connecting, dead, or of a backend no longer given
};

// One segment of pooled connection `rec` from the LB's side, through a raw
// socket (*raw_fd, opened on first use): an ACK, an RST (rst), or a probe
// carrying one byte the backend already has (probe_byte).
absl::Status SendPoolSegment(int* raw_fd, const rm_pool& rec, uint32_t seq, uint32_t ack,
                             uint32_t tsval, uint32_t tsecr, uint16_t window, bool rst,
                             bool probe_byte);
// A zero window, then RM_IDLE_WIN, at the record's sequence numbers and
// timestamps, in that order in one system call (sendmmsg): a parked pooled
// connection's window shrink (PoolManager::Unpark).
absl::Status SendPoolWindowShrink(int* raw_fd, const rm_pool& rec);
// An RST at the record's own sequence numbers and timestamps (exact for an
// idle connection; a busy one's live numbers are in its client's record,
// see UseOwnerSeqs).
absl::Status SendPoolReset(int* raw_fd, const rm_pool& rec);

struct PoolStats {
  uint64_t opened = 0, established = 0, connect_failures = 0, retired = 0;
  uint64_t idle_entries_compacted = 0;  // dead idle-queue entries dropped
  uint64_t idle_timeouts = 0;           // retired for idling too long
  uint64_t idle_retire_deferred = 0;    // scans that left some of those for the next
  uint64_t verify_probes = 0;           // probes sent to RM_P_VERIFY connections
  uint64_t verify_timeouts = 0;         // retired: no answer to any probe
  uint64_t parked = 0;                  // RM_P_PARKED: window shrunk, queued
  uint64_t parked_by_scan = 0;          // ...of which found by the pool scan
                                        // (their event lost)
  uint64_t parked_reread = 0;           // shrinks sent again from a locked
                                        // copy (the unlocked read was torn)
};

// Per-backend connect outcomes, for passive health checking.
struct PoolBackendCounters {
  uint64_t connects_ok = 0, connects_failed = 0;
  uint64_t connects_refused = 0;  // of the failed: refused (nothing listens)
  std::string last_error;  // short: "refused", "timed out", ...
};

class PoolManager {
 public:
  PoolManager(Datapath* dp, const PoolOptions& opts) : dp_(dp), opts_(opts) {}
  ~PoolManager();

  // Called with each socket OpenOne() starts connecting, so its completion
  // is watched at once (ConnectingFds() lists them all, for a sweep).
  void SetConnectingWatcher(std::function<void(int fd)> fn) { watch_ = std::move(fn); }

  // Registers a backend slot; its pool is filled by Tick().
  absl::Status AddBackend(uint32_t id, const BackendSpec& spec);
  // Takes over the pooled connections an earlier process left in adopted
  // maps (Datapath::adopted()). A live one (idle, busy, being verified, parked)
  // whose tuple is a registered backend's (removed ones included) and whose local address is
  // lb_ip is kept, with its socket made again in repair mode (the old one
  // went silently with the old process) so that no new connection takes
  // the tuple; the others are reset towards their
  // backend if they were established, and deleted. Call after AddBackend
  // for every backend and before the first Tick.
  absl::StatusOr<AdoptedPools> Adopt();
  // Stops refilling; idle connections are retired as they surface. Busy
  // ones finish their exchange and are retired when released.
  void RemoveBackend(uint32_t id);
  // Resets every pooled connection at its backend (SendReset). For a
  // shutdown that takes the datapath with it: otherwise the sockets close
  // silently (repair mode) and the backends keep their side open until
  // their own timeouts.
  // Returns how many were sent.
  uint32_t ResetAll();

  // Epoll integration: fds to watch for writability while connecting.
  // The core calls OnWritable(fd) and Tick() (about every 100 ms).
  std::vector<int> ConnectingFds() const;
  void OnWritable(int fd);
  void Tick(absl::Time now);

  // Datapath reports.
  // reset: the backend was not told (no FIN/RST passed): send it a RST.
  // was_idle: it died idle (a backend's FIN or RST on a connection nobody
  // held), so its idle-queue entry is left behind (NoteDeath).
  void OnDead(uint32_t pid, bool reset, bool was_idle);
  void OnNeed(uint32_t backend);
  // A pooled connection entered RM_P_VERIFY (handed back by a client that
  // closed or went idle): probe its backend RM_VERIFY_SETTLE_NS later; the
  // datapath makes it idle on two clean answers, or retires it.
  void OnVerify(uint32_t pid);
  // Sends the probes that are due; called after every pass of the core's
  // loop while any is pending (its tick included). Connections that do not
  // answer twice (10 probes: 4 a settle time apart, then every 50 ms) are
  // retired.
  void ProbeVerifying(absl::Time now);
  bool verifying() const { return !verifying_.empty(); }
  // When the next probe is due (InfiniteFuture if none is pending), as of
  // the last ProbeVerifying and the OnVerify calls since.
  absl::Time NextProbeDue() const { return next_probe_; }

  uint32_t Established(uint32_t backend) const;  // live (idle or busy)
  uint32_t Connecting(uint32_t backend) const;
  uint32_t Idle(uint32_t backend) const;  // entries in the idle queue
  bool CanGrow(uint32_t backend) const;   // below max_conns_per_backend
  const PoolStats& stats() const { return stats_; }
  bool backend_failing(uint32_t backend) const;
  PoolBackendCounters Counters(uint32_t backend) const;

  // Health transitions (HealthChecker via the Core). RetireIdle: the backend
  // failed its checks, so its idle pooled connections are suspect: take
  // them out of the idle queue and retire them (RST towards the backend);
  // returns how many. Busy ones finish or die on their own. RetryNow: the
  // backend is back: drop the connect back-off and refill at once.
  uint32_t RetireIdle(uint32_t backend);
  void RetryNow(uint32_t backend);

  // Sends a bare ACK on a pooled connection from its recorded state
  // through a raw socket: used for the ACK the old backend is owed at a
  // rematch (XDP cannot emit two packets for one). (RSTs: SendReset.)
  // Returns false when no ACK was needed: the connection is not idle (its
  // next splice carries the ACK), was taken and handed back since (that
  // splice carried it), or the datapath sent this one already (a close's,
  // on the client's final ACK: RM_POOL_ACK_SENT). A parked one (RM_P_PARKED) gets its
  // window shrunk instead (Unpark).
  absl::StatusOr<bool> SendAck(uint32_t pid, uint32_t seq, uint32_t ack, uint32_t tsval,
                               uint32_t tsecr, uint16_t window);
  // A parked pooled connection: a zero window, then RM_IDLE_WIN, both at
  // the sequence it stands at, then idle and queued. True if it was parked.
  // `seen`: the record as the caller read it without the lock, if it did.
  absl::StatusOr<bool> Unpark(uint32_t pid, std::optional<rm_pool> seen = std::nullopt);

 private:
  // The segment itself, exactly as given, on the record's tuple.
  absl::Status SendSegment(const rm_pool& rec, uint32_t seq, uint32_t ack, uint32_t tsval,
                           uint32_t tsecr, uint16_t window, bool rst, bool probe_byte);
  struct Verifying {
    absl::Time due;
    int probes = 0;
  };
  absl::flat_hash_map<uint32_t, Verifying> verifying_;
  absl::Time next_probe_ = absl::InfiniteFuture();
  struct Conn {
    int fd = -1;
    uint32_t backend = 0;
    rm_pool_key key{};
    enum { kConnecting, kLive } state = kConnecting;
    absl::Time deadline;
  };
  struct Backend {
    BackendSpec spec;
    bool removed = false;
    absl::Time last_removed_sweep;  // removed: when its idle ones were last closed
    uint32_t target = 0;
    uint32_t live = 0, connecting = 0;
    int failures = 0;
    absl::Time next_try;
    PoolBackendCounters counters;
    bool at_limit_logged = false;
    // Connections that died since the idle queue was last compacted: each
    // may have left a dead entry in it.
    uint32_t deaths_since_compact = 0;
  };
  // Retires idle pooled connections idle longer than opts_.idle_timeout
  // (if one is set), and picks up those whose event was lost: being
  // verified but not probed, parked for over 200 ms. Reads every live
  // pooled connection's record (one syscall each), so it runs every
  // idle_timeout / 20 (100 ms .. 3 s; 1 s with no timeout), not at every
  // tick: with 11,000 pooled connections a scan per 100 ms tick took a
  // whole CPU.
  void ScanPools(absl::Time now);
  absl::Time last_idle_scan_ = absl::InfinitePast();
  uint64_t park_events_ = 0;  // for test_skip_park_every
  // Retires pid if it is idle and unused since before cutoff_ns
  // (CoarseNowNs clock), taken out of service in the kernel first.
  bool RetireIfIdleSince(uint32_t pid, uint64_t cutoff_ns);
  // Counts a pooled connection's death; compacts its backend's idle queue
  // once enough may have left dead entries there.
  void NoteDeath(uint32_t backend);
  // Compacts a backend's idle queue (dead entries out).
  void CompactIdle(uint32_t backend, Backend& b);

  absl::Status OpenOne(uint32_t backend);
  absl::StatusOr<int> RepairSocket(const rm_pool& rec);
  // An RST for pooled connection pid at the backend's next expected
  // sequence: the record's, or for a busy one its client's live ones
  // (UseOwnerSeqs).
  absl::Status SendReset(uint32_t pid, rm_pool rec);
  // Opens connections until the backend's target is met (bounded per call).
  void Refill(uint32_t backend, absl::Time now);
  absl::Status Finish(uint32_t pid, Conn& c);
  void Retire(uint32_t pid, bool send_rst);
  absl::StatusOr<uint32_t> AllocId();

  Datapath* dp_;
  PoolOptions opts_;
  PoolStats stats_;
  absl::flat_hash_map<uint32_t, Backend> backends_;
  absl::flat_hash_map<uint32_t, Conn> conns_;     // by pool id
  absl::flat_hash_map<int, uint32_t> by_fd_;      // connecting fd -> pool id
  std::function<void(int fd)> watch_;
  absl::flat_hash_map<uint32_t, uint16_t> gens_;  // by pool id
  std::deque<uint32_t> free_ids_;
  uint32_t next_id_ = 0;
  int raw_fd_ = -1;
};

}  // namespace rematcher

#endif  // REMATCHER_LB_POOL_H_
