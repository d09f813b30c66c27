// Fault injection on testbed links: random loss, duplication, reordering and
// corruption at chosen rates, per direction, on any host's link.
//
// A FaultInjector owns the faults on one link: the switch-side veth peer of a
// host (in the switch namespace, e.g. "rmt-c0"). Directions are named from the
// host: kFromHost are frames the host sends, kToHost frames it receives.
//
//   loss, duplicate, corrupt: a tc program (tcx links, clsact as fallback) on
//     the link, see faults.bpf.c. Corruption flips one payload byte of IPv4
//     TCP/UDP frames and leaves checksums stale, so the receiver counts
//     TcpInCsumErrors and drops the frame (it is loss the stack can see).
//   reorder: only when reorder > 0 at Attach, a userspace relay (relay.h) is
//     spliced into the link: the host's peer leaves the bridge, a new veth pair
//     "flt<ifindex>b" (bridge port) / "flt<ifindex>r" (relay end) takes its
//     place, and a thread moves frames between the peer and the relay end,
//     holding some back. Both tc programs then sit on flt<ifindex>b (ingress:
//     from host, after the relay; egress: to host, before it), because
//     AF_PACKET reads frames before tc ingress runs on the peer and the
//     relay's sends bypass tc egress (PACKET_QDISC_BYPASS), so a tc drop is
//     never mistaken for a relay send error.
//
// Lifetime: destruction (or Detach()) removes everything Attach made: tc
// programs, the relay thread and sockets, the veth pair; the peer goes back on
// its bridge. tcx links die with the process, so a crash leaves no program
// behind; a crash in relay mode leaves the pair, which the next Attach on the
// same link (or deleting the testbed) removes.
#ifndef REMATCHER_TESTING_FAULTS_FAULTS_H_
#define REMATCHER_TESTING_FAULTS_FAULTS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "testing/testbed/testbed.h"

struct faults_bpf;

namespace rematcher::faults {

class FrameRelay;

enum class Direction { kFromHost, kToHost, kBoth };

struct FaultSpec {
  // Probabilities per frame, each in [0, 1] (applied in parts per million).
  double loss = 0;
  double duplicate = 0;
  double reorder = 0;
  double corrupt = 0;  // of IPv4 TCP/UDP frames that carry payload
  // The first this many TCP RSTs in each chosen direction are dropped (a
  // reset lost on the way: TCP never retransmits one). Update() sets a new
  // budget.
  uint32_t drop_resets = 0;
  // For this long from Attach() or Update(), every pure TCP ACK (no
  // payload; no SYN, FIN or RST) in each chosen direction is dropped: a
  // receiver's acknowledgements lost, so its peer waits out its loss probe
  // and retransmission timers. Zero: none.
  absl::Duration drop_acks_for = absl::ZeroDuration();
  Direction dir = Direction::kBoth;
  // 0: unseeded (kernel prandom, std::random_device). Otherwise the BPF draws
  // use a per-CPU xorshift seeded from it and the relay a seeded mt19937_64;
  // the sequence of draws is fixed, which frames meet them depends on timing.
  uint64_t seed = 0;
  // Reordering: a held frame goes out after this many later frames passed it
  // (1: adjacent swap; 0: only the timeout releases it) ...
  int reorder_gap_frames = 1;
  // ... or after this long, whichever comes first.
  absl::Duration reorder_max_hold = absl::Milliseconds(5);
};

absl::Status ValidateFaultSpec(const FaultSpec& spec);
// "loss=5% dup=0% reorder=0% corrupt=0% dir=both seed=0"
std::string FaultSpecString(const FaultSpec& spec);

struct DirectionCounters {
  // tc program
  uint64_t seen = 0;              // frames the program saw (its own copies excluded)
  uint64_t dropped = 0;
  uint64_t duplicated = 0;        // extra copies sent
  uint64_t duplicate_failed = 0;  // bpf_clone_redirect errors
  uint64_t corrupt_eligible = 0;  // IPv4 TCP/UDP frames with payload that were not dropped
  uint64_t corrupted = 0;
  uint64_t resets_dropped = 0;    // by the drop_resets budget
  uint64_t acks_dropped = 0;      // within drop_acks_for
  // relay (zero unless reorder was requested at Attach)
  uint64_t relayed = 0;      // frames the relay read
  uint64_t held = 0;         // frames held back
  uint64_t reordered = 0;    // held frames that at least one later frame overtook
  uint64_t held_alone = 0;   // held frames released by timeout, nothing overtook
  uint64_t relay_lost = 0;   // unplanned: socket overflows and send errors
};

struct FaultCounters {
  DirectionCounters from_host;
  DirectionCounters to_host;
  std::string ToString() const;  // two lines, one per direction
};

class FaultInjector {
 public:
  // The link of a testbed host: `switch_side_ifname` in tb.switch_ns(), e.g.
  // tb.client_peer_ifname(0).
  static absl::StatusOr<std::unique_ptr<FaultInjector>> Attach(const testbed::Testbed& tb,
                                                               const std::string& switch_side_ifname,
                                                               const FaultSpec& spec);
  // Any veth in any namespace; reordering needs it to be a bridge port.
  static absl::StatusOr<std::unique_ptr<FaultInjector>> Attach(const std::string& netns,
                                                               const std::string& ifname,
                                                               const FaultSpec& spec);
  ~FaultInjector();
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // Removes everything Attach made; idempotent. Returns the first error but
  // still attempts every step.
  absl::Status Detach();
  // Changes the rates, direction and seed of loss/duplicate/corrupt while
  // attached. Reordering parameters are fixed at Attach (FailedPrecondition).
  absl::Status Update(const FaultSpec& spec);
  absl::StatusOr<FaultCounters> Counters() const;

  const std::string& netns() const { return netns_; }
  const std::string& ifname() const { return ifname_; }
  const FaultSpec& spec() const { return spec_; }
  bool relay_spliced() const { return relay_ != nullptr; }
  // The veth pair the relay splices in ("" when none).
  const std::string& relay_bridge_port() const { return pair_bridge_; }
  const std::string& relay_end() const { return pair_relay_; }
  // Kernel ids of the two tc programs (tests check they are gone after Detach).
  std::vector<uint32_t> prog_ids() const;

 private:
  FaultInjector(std::string netns, std::string ifname, const FaultSpec& spec);
  absl::Status Setup();
  absl::Status SpliceRelay();
  absl::Status AttachPrograms();
  absl::Status WriteConfig();

  struct Hook {
    std::string ifname;
    bool ingress = false;
    int link_fd = -1;         // tcx link, or
    bool clsact = false;      // a clsact filter we attached (handle/priority below)
    bool made_qdisc = false;  // and whether we created the clsact qdisc
    uint32_t handle = 0, priority = 0;
  };
  absl::Status AttachHook(Hook& hook, int prog_fd);
  absl::Status DetachHook(Hook& hook);

  const std::string netns_;
  const std::string ifname_;
  FaultSpec spec_;
  faults_bpf* skel_ = nullptr;
  Hook hooks_[2];  // [FLT_DIR_FROM_HOST], [FLT_DIR_TO_HOST]
  std::string bridge_;        // the bridge ifname_ was on (relay mode)
  std::string pair_bridge_;   // flt<ifindex>b, in bridge_
  std::string pair_relay_;    // flt<ifindex>r, read/written by the relay
  bool unbridged_ = false;    // ifname_ was taken off bridge_
  std::unique_ptr<FrameRelay> relay_;
};

// One injector per client link, backend link, or both, same spec on each.
enum class LinkSet { kClients, kBackends, kClientsAndBackends };
absl::StatusOr<std::vector<std::unique_ptr<FaultInjector>>> AttachToLinks(
    const testbed::Testbed& tb, LinkSet links, const FaultSpec& spec);

}  // namespace rematcher::faults

#endif  // REMATCHER_TESTING_FAULTS_FAULTS_H_
