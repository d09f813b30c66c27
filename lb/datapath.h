// Datapath: the RAII owner of the loaded XDP object (lb/ never touches map
// names or raw fds elsewhere). Typed access to every map the core uses.
//
// Lifetime: Load() opens the skeleton, sizes the tables, loads and verifies
// the program, creates one idle queue per backend slot and fills the free
// client-id queue. Attach() attaches through a bpf_link, so a crashed
// process leaves nothing attached behind. The destructor detaches.
//
// Pinned (DatapathOptions::pin_dir): the maps and the link are pinned in a
// bpffs directory and outlive the process, crash included; the XDP program
// keeps serving the clients it holds meanwhile. The next Load() with the
// same pin_dir adopts them (same record layout and table sizes, checked)
// and Attach() swaps its program into the pinned link atomically. Unload()
// removes a pinned datapath for good.
#ifndef REMATCHER_LB_DATAPATH_H_
#define REMATCHER_LB_DATAPATH_H_

#include <array>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bpf/rematcher_shared.h"

struct rematcher_bpf;  // the generated skeleton (bpf/rematcher_bpf.skel.h)
struct bpf_link;

namespace rematcher {

static_assert(sizeof(rm_flow_key) == 12, "rm_flow_key layout");
static_assert(sizeof(rm_pool_key) == 12, "rm_pool_key layout");
static_assert(sizeof(rm_config) == 40, "rm_config layout");
static_assert(sizeof(rm_backend) == 8, "rm_backend layout");
static_assert(sizeof(rm_backend_load) == 72, "rm_backend_load layout");
static_assert(sizeof(rm_event) == 48, "rm_event layout");
static_assert(sizeof(rm_ctl) == 32, "rm_ctl layout");

struct DatapathOptions {
  uint32_t max_clients = 65536;  // client table size (ids 0..max_clients-1)
  uint32_t max_pool = 4096;      // pooled-connection table size
  // A splice sets the backend->client TSval offset from the backend's clock
  // as estimated now (its last TSval moved on by the time since it arrived,
  // at 1 kHz), not from that last TSval (which leaps the client's TSval
  // ahead by the connection's idle time). Off only in packet tests whose
  // models compute exact TSvals without a clock; one test runs it on.
  bool estimate_backend_ts_clock = true;
  // bpffs directory to pin the datapath in, or to adopt it from (empty:
  // not pinned; the datapath goes with the process).
  std::string pin_dir;
  // Each backend's idle pooled connections are a stack: a request takes
  // the one that went idle last, whose congestion window is still open and
  // whose memory (the backend's socket and buffers) is still warm; the
  // rest sit out and reach the idle timeout. false: a queue (FIFO), which
  // cycles through every pooled connection (bench/results/
  // ab-20261208-004700-lifo, docs/measurements.md "2026-12-08": with
  // 3,666 per backend, 64 KiB responses were 22% slower that way and an
  // open loop's p99 3-4x higher).
  bool idle_lifo = true;
};

using StatsArray = std::array<uint64_t, RM_ST__MAX>;

// Human-readable name of a counter (for logs, metrics, tests).
const char* StatName(int stat);

// Now on CLOCK_MONOTONIC_COARSE in ns: the datapath's
// bpf_ktime_get_coarse_ns(), so comparable with the times in its records.
uint64_t CoarseNowNs();

// A pooled connection that was established and not given up yet (idle,
// carrying a client, or being verified).
inline bool PoolLive(const rm_pool& rec) {
  return rec.state == RM_P_IDLE || rec.state == RM_P_BUSY || rec.state == RM_P_VERIFY ||
         rec.state == RM_P_PARKED;
}

// A busy pooled connection's record keeps the sequence numbers of its
// take; the live ones are in the record of the client it carries (pool =
// client + d_req, client = pool + d_resp). Sets them in *rec if `c` is
// that client (an RST must carry the backend's next expected sequence).
inline void UseOwnerSeqs(rm_pool* rec, uint32_t pool_id, const rm_client& c) {
  if (rec->state != RM_P_BUSY || c.pool_id != pool_id) return;
  rec->lb_nxt = c.c_nxt + c.d_req;
  rec->be_nxt = c.s_nxt - c.d_resp;
}

class Datapath {
 public:
  static absl::StatusOr<std::unique_ptr<Datapath>> Load(const DatapathOptions& opts);
  ~Datapath();
  Datapath(const Datapath&) = delete;
  Datapath& operator=(const Datapath&) = delete;

  // Attach natively; with allow_generic, fall back to generic (skb) mode
  // with a loud warning. Fails if another XDP program is attached.
  absl::Status Attach(int ifindex, bool allow_generic);
  void Detach();
  bool attached_generic() const { return generic_; }
  // Whether Load() adopted maps pinned by an earlier process (their
  // records, queues and counters are live state, not to be reset).
  bool adopted() const { return adopted_; }
  bool idle_lifo() const { return idle_lifo_; }  // idle pools as stacks (else queues)
  // Removes the datapath pinned in pin_dir: the link first (XDP detaches,
  // so the clients it held are reset by the kernel at their next segment),
  // then the maps, then the directory. NotFound if nothing is pinned there.
  // on_pool, if given, sees every live pooled connection record (idle,
  // busy, being verified) after the link is gone and before the maps are,
  // when the pinned records have this build's layout; the count of those
  // seen goes to *pools_seen, or -1 if the layout differed.
  static absl::Status Unload(const std::string& pin_dir,
                             const std::function<void(const rm_pool&)>& on_pool = nullptr,
                             int64_t* pools_seen = nullptr);

  int prog_fd() const;      // xdp_rematcher, e.g. for BPF_PROG_TEST_RUN
  int ctl_prog_fd() const;  // xdp_ctl
  int events_fd() const;    // ring buffer of rm_event
  // Whether the datapath wakes the core for its events (rb_send). Off while
  // the core polls the ring under load: it reads the ring on its own clock
  // then, and a wakeup per event would only cost an IPI and a context switch.
  // The datapath still wakes it if the ring fills past a quarter.
  absl::Status SetEventWakeups(bool on);
  uint32_t max_clients() const { return opts_.max_clients; }
  uint32_t max_pool() const { return opts_.max_pool; }

  absl::Status SetConfig(const rm_config& cfg);
  absl::StatusOr<rm_config> GetConfig() const;

  absl::Status SetBackend(uint32_t id, const rm_backend& b);
  absl::StatusOr<rm_backend> GetBackend(uint32_t id) const;
  // The dense list of backends a client's first request may go to
  // (round-robin); also sets config.num_backends.
  absl::Status SetBackendList(const std::vector<uint32_t>& ids);
  // Live load signals (mmap; no syscall). id < RM_MAX_BACKENDS.
  const rm_backend_load& BackendLoad(uint32_t id) const;
  void ResetBackendLoad(uint32_t id);
  // rm_backend_load::alt of backend `id` (alt: a backend id, RM_NO_ID for
  // none); written only when it changes (the record's line is the
  // datapath's).
  void SetBackendAlt(uint32_t id, uint32_t alt);

  // Pool records. PutPool writes the record under its lock and maps the
  // tuple to the id.
  // map_tuple: also map p.key to pid (skip when it already is).
  absl::Status PutPool(uint32_t pid, const rm_pool& p, bool map_tuple = true);
  absl::StatusOr<rm_pool> GetPool(uint32_t pid) const;
  // The record as it stands in memory, without its lock and without a
  // syscall (a read-only mmap): each 32-bit field is one the datapath wrote,
  // but a record being changed meanwhile may mix old and new fields. For
  // hints only. nullopt for an id out of range.
  std::optional<rm_pool> PeekPool(uint32_t pid) const;
  // The same for a client record (a hint: see PeekPool).
  std::optional<rm_client> PeekClient(uint32_t id) const;
  absl::Status DeletePool(uint32_t pid, const rm_pool_key& key);
  // Idle-queue entries carry the record's generation (rm_pool.gen).
  absl::Status PushIdle(uint32_t backend, uint32_t pid, uint16_t gen = 0);
  // Returns the pool id of the popped entry (tests inspect queues with it).
  absl::StatusOr<std::optional<uint32_t>> PopIdle(uint32_t backend);
  // Drops the entries of a backend's idle queue whose pooled connection is
  // no longer idle under that generation (it died while queued), keeping
  // the live ones in order. Returns how many were dropped. Clients that
  // look for an idle connection meanwhile may find none for a moment (the
  // datapath's bounded wait covers that).
  absl::StatusOr<size_t> CompactIdle(uint32_t backend);
  // One idle entry of `backend` is dead and not counted as idle any more
  // (its record was deleted from userspace while it sat in the queue).
  void UncountIdle(uint32_t backend);
  // Takes an idle pooled connection out of service if it has been idle
  // since before `older_than_ns` (CLOCK_MONOTONIC_COARSE). True if it did.
  absl::StatusOr<bool> RetireIdlePool(uint32_t pid, uint64_t older_than_ns);
  // A parked pooled connection (RM_P_PARKED), its window shrunk from
  // `sent` (the record the segments were built from): idle and queued, 1;
  // 0 if it was not parked (it died meanwhile); -3 if it was, but its
  // sequence numbers or timestamps are not those of `sent` (a record read
  // while it was being written), and it stays parked.
  absl::StatusOr<int32_t> UnparkPool(uint32_t pid, const rm_pool& sent);

  absl::StatusOr<rm_client> GetClient(uint32_t id) const;
  absl::StatusOr<std::optional<uint32_t>> LookupClient(const rm_flow_key& key) const;
  // Visits every client record that is not FREE, read in place through the
  // read-only mmap of the table (no syscall, no copy of free slots; not
  // under the records' lock: a record being changed meanwhile may mix old
  // and new fields, so callers treat what they see as a hint).
  absl::Status ForEachClient(const std::function<void(uint32_t, const rm_client&)>& fn) const;
  // Frees a client slot from userspace (after the datapath marked it
  // CLOSED, or it expired): the record is marked FREE, the tuple unmapped,
  // the id returned to the free queue. Runs in the kernel (xdp_ctl).
  absl::Status FreeClient(uint32_t id, uint64_t older_than_ns);
  // Hands an idle client's pooled connection back (idle release).
  absl::Status ReleaseIdleClient(uint32_t id, uint64_t older_than_ns);

  // Policy decision for the client's request number req_no (atomic store
  // into the mmap'd decisions array).
  void SetDecision(uint32_t client, uint32_t req_no, uint32_t backend);
  // Replaces client's decision, if it is still `expect` (as GetDecision
  // returned it), with one for (req_no, backend), atomically; false if it
  // changed meanwhile.
  bool ReplaceDecision(uint32_t client, uint64_t expect, uint32_t req_no, uint32_t backend);
  uint64_t GetDecision(uint32_t client) const;

  // Counters summed over CPUs.
  absl::StatusOr<StatsArray> Stats() const;
  // One counter, summed over CPUs (0 if it cannot be read).
  uint64_t Counter(uint32_t index) const;

  // Runs an xdp_ctl command; returns its result field.
  absl::StatusOr<int32_t> RunCtl(const rm_ctl& cmd);
  // The same for the usual form: an op on one record (client or pool id)
  // with a time cutoff.
  absl::StatusOr<int32_t> RunCtl(uint32_t op, uint32_t id, uint64_t older_than_ns);

 private:
  // Counter `index` of the stats map summed over CPUs; per_cpu has ncpus_ slots.
  absl::StatusOr<uint64_t> SumCounter(uint32_t index, std::vector<uint64_t>* per_cpu) const;
  explicit Datapath(const DatapathOptions& opts) : opts_(opts), idle_lifo_(opts.idle_lifo) {}
  // Load() with a pin_dir: reuses the maps pinned there, if any (all or
  // none), after checking each against what this build would create.
  absl::Status ReusePinnedMaps();
  absl::Status PinMaps();
  absl::Status AttachPinned(int ifindex);
  // Copies a whole client or pool record in or out through xdp_ctl, under
  // the record's lock (RM_CTL_GET_CLIENT, RM_CTL_GET_POOL, RM_CTL_PUT_POOL).
  absl::Status RecordCtl(uint32_t op, uint32_t id, const void* in_rec, void* out_rec,
                         size_t len) const;
  // Runs `cmd` through xdp_ctl with `len` record bytes after it (copied in
  // from in_rec, and back out to out_rec when the result is 0); returns the
  // command's result field.
  absl::StatusOr<int32_t> RunCtlWith(const rm_ctl& cmd, const void* in_rec, void* out_rec,
                                     size_t len) const;
  DatapathOptions opts_;
  ::rematcher_bpf* skel_ = nullptr;
  bpf_link* link_ = nullptr;
  int pinned_link_fd_ = -1;  // a pinned link adopted (not created) by Attach
  int pin_lock_fd_ = -1;     // flock on pin_dir while this process uses it
  bool adopted_ = false;
  bool generic_ = false;
  int generic_ifindex_ = 0;
  int ncpus_ = 1;
  rm_backend_load* load_ = nullptr;       // mmap of backend_load
  volatile uint64_t* decisions_ = nullptr;  // mmap of decisions
  size_t load_len_ = 0, decisions_len_ = 0, pools_len_ = 0, clients_len_ = 0;
  const volatile rm_pool* pools_ = nullptr;      // read-only mmap of pools
  const volatile rm_client* clients_ = nullptr;  // read-only mmap of clients
  std::vector<int> idle_queue_fds_;
  bool idle_lifo_;  // the idle queues' kind (an adopted datapath's own)
};

}  // namespace rematcher

#endif  // REMATCHER_LB_DATAPATH_H_
