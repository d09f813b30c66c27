// HealthChecker: whether each backend may receive new requests.
//
// Active checks: every --health_interval_ms, per backend, a non-blocking TCP
// connect from the LB's address to the backend's (and, with an HTTP path, a
// GET that must answer 2xx). Probe sockets are closed with an RST (SO_LINGER
// 0), so the LB's namespace keeps no TIME_WAIT from them. Their replies
// reach the kernel through XDP untouched: the datapath passes tuples it
// does not own.
//
// A backend that answered a request on a pooled connection within the last
// second is alive, whatever its listen queue does: connects that fail
// or time out then (active probes' or the pools') do not count toward
// `fall`. Under a burst of thousands of connections a backend's SYN queue
// overflows and drops SYNs while it serves every established connection;
// counting those timeouts took all three backends of a benchmark out of
// service at once. An HTTP probe's bad answer always counts.
//
// Passive signals (no extra traffic): a failed or timed-out pooled-
// connection connect (PoolManager) counts as a failed check; an idle pooled
// connection dying (the backend closed or reset it while nobody used it)
// brings the next probe forward; a latency EWMA far above the others'
// (optional) ejects the backend for a while, Envoy outlier-detection style,
// growing with repeated ejections.
//
// State machine (HAProxy's rise/fall): a backend starts up; `fall`
// consecutive failures take it down, `rise` consecutive successful active
// checks (or successful pooled connects when active checks are off) bring it
// back. While a failure streak is open, probes run at a quarter of the
// interval. Transitions are returned by Tick(); the Core applies them
// (datapath flags, first-request list, policy snapshot, client moves) and
// this class logs them (WARNING down, INFO up).
//
// Threading: everything runs on the Core's event-loop thread. The checker
// adds and removes its own probe fds in the Core's epoll set; the Core
// routes events on fds for which Handles() is true to OnEvent().
#ifndef REMATCHER_LB_HEALTH_H_
#define REMATCHER_LB_HEALTH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "lb/datapath.h"
#include "lb/pool.h"

namespace rematcher {

struct HealthOptions {
  uint32_t lb_ip = 0;  // network order: source address of probes
  // Active checks; interval 0 turns them off (passive signals only).
  absl::Duration interval = absl::Seconds(2);
  absl::Duration timeout = absl::Seconds(1);
  uint32_t rise = 2;
  uint32_t fall = 3;
  std::string http_path;  // empty: TCP connect only; else GET, expect 2xx
  // Pooled-connection connect failures count as failed checks.
  bool passive = true;
  // Latency outlier ejection; factor 0 turns it off. A backend whose
  // first-byte latency EWMA exceeds factor x the median of the other
  // eligible backends and latency_min is ejected for latency_eject x the
  // number of consecutive ejections (at most 8x). Needs
  // latency_min_responses fresh responses before it judges a backend.
  double latency_factor = 0;
  absl::Duration latency_min = absl::Milliseconds(50);
  absl::Duration latency_eject = absl::Seconds(10);
  uint64_t latency_min_responses = 16;
};

// Validates options; the message names the flag.
absl::Status ValidateHealthOptions(const HealthOptions& o);

struct HealthTransition {
  uint32_t backend;
  bool up;
  // Down because the backend stopped answering (connects or probes failed
  // below HTTP: refused, reset, timed out): its idle pooled connections are
  // suspect and are retired. Not for a latency ejection, nor for a backend
  // that answers its HTTP check with a non-2xx status (it is alive and its
  // connections work; it asks for no new requests).
  bool failed;
};

struct HealthStatus {
  bool up = true;            // checks pass (or not yet failed `fall` times)
  bool ejected = false;      // latency outlier, ejected for now
  uint32_t ok_streak = 0, fail_streak = 0;
  uint64_t checks_ok = 0, checks_failed = 0, passive_failures = 0;
  uint64_t went_down = 0, went_up = 0, ejections = 0;
  // Connects that failed while the backend was answering requests: an
  // overloaded listen queue, not a dead backend; not counted toward `fall`.
  uint64_t connect_failures_while_serving = 0;
  std::string last;          // last check result, short ("ok 0.3ms", "refused")
};

class HealthChecker {
 public:
  HealthChecker(const HealthOptions& opts, int epfd, PoolManager* pools, const Datapath* dp)
      : opts_(opts), epfd_(epfd), pools_(pools), dp_(dp) {}
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  void AddBackend(uint32_t id, const BackendSpec& spec);
  void RemoveBackend(uint32_t id);

  bool Handles(int fd) const { return by_fd_.contains(fd); }
  void OnEvent(int fd, uint32_t events);
  // An idle pooled connection of this backend died: probe it soon.
  void OnIdleConnDied(uint32_t backend);

  // Starts due probes, expires late ones, reads passive signals. Returns
  // the transitions since the last call, in order.
  std::vector<HealthTransition> Tick(absl::Time now);

  // Eligible for new requests: checks pass and not ejected.
  bool healthy(uint32_t id) const;
  HealthStatus status(uint32_t id) const;
  const HealthOptions& options() const { return opts_; }

 private:
  struct Entry {
    BackendSpec spec;
    HealthStatus st;
    // Probe in flight.
    int fd = -1;
    enum { kIdle, kConnecting, kReading } phase = kIdle;
    absl::Time started, deadline;
    absl::Time next_probe = absl::InfinitePast();
    std::string rbuf;
    // Passive: PoolManager counters already seen.
    uint64_t pool_ok_seen = 0, pool_fail_seen = 0, pool_refused_seen = 0;
    // Latency ejection.
    absl::Time eject_until;
    uint32_t consecutive_ejections = 0;
    uint64_t responses_at_admit = 0;
    // Liveness from the datapath: responses seen, and when they last grew.
    uint64_t responses_seen = 0;
    absl::Time last_served = absl::InfinitePast();
  };

  void StartProbe(uint32_t id, Entry& e, absl::Time now);
  // How a check failed.
  enum class Fail {
    kConnect,   // no connection: unreachable, timed out connecting
    kRefused,   // no connection: refused (an RST to the SYN: nothing listens)
    kNoAnswer,  // connected, but no usable answer (reset, timeout, garbage)
    kStatus,    // answered with an HTTP status other than 2xx
  };
  // How a connect that failed with `err` failed.
  static Fail ConnectFail(int err);
  void FinishProbe(uint32_t id, Entry& e, bool ok, const std::string& result,
                   Fail kind = Fail::kNoAnswer);
  void CloseProbe(Entry& e);
  void Success(uint32_t id, Entry& e, const std::string& result);
  // A failure to connect does not count while the backend is answering
  // requests (Serving): a listener whose queues overflow drops SYNs. A
  // refusal always counts (nothing listens: the process died, and its
  // last responses are no sign of life), as does an HTTP probe's bad
  // answer. The kind
  // of the failure that takes a backend down decides whether its idle
  // pooled connections are retired (HealthTransition::failed).
  void Failure(uint32_t id, Entry& e, const std::string& result, bool passive,
               Fail kind = Fail::kNoAnswer);
  // Answered a request on a pooled connection within the last second.
  bool Serving(const Entry& e) const;
  void CheckLatency(absl::Time now);
  absl::Duration FastInterval() const;
  std::string Name(uint32_t id, const Entry& e) const;

  HealthOptions opts_;
  int epfd_;
  PoolManager* pools_;
  const Datapath* dp_;
  absl::flat_hash_map<uint32_t, Entry> entries_;
  absl::flat_hash_map<int, uint32_t> by_fd_;
  std::vector<HealthTransition> pending_;
  absl::Time now_ = absl::InfinitePast();
};

}  // namespace rematcher

#endif  // REMATCHER_LB_HEALTH_H_
