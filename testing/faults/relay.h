// FrameRelay: a userspace L2 relay that reorders frames, spliced into one
// testbed link (tc cannot delay a frame on a kernel without a delaying qdisc,
// and this one has no netem or fq).
//
// It moves whole Ethernet frames between two AF_PACKET sockets in the switch
// namespace: `host` (bound to the host's switch-side veth peer, taken off the
// bridge) and `bridge` (bound to one end of a new veth pair whose other end
// joins the bridge in its place). FaultInjector does that splicing; this
// class only relays.
//
// Reordering: each frame is held back with probability reorder_ppm (per
// direction). A held frame is released as soon as `gap_frames` later frames of
// the same direction have been sent past it, or when `max_hold` expires,
// whichever comes first (gap_frames 0: time only). A release after at least
// one frame passed it is counted as `reordered`; a timeout with none as
// `held_alone` (delayed, still in order).
//
// Time is the kernel's arrival stamp of each frame (SO_TIMESTAMPNS), not the
// moment the thread reads it: a held frame whose hold ended before a later
// frame arrived goes out before that frame even when the thread was off the
// CPU meanwhile (on a busy two-CPU machine it can be, for milliseconds).
// So no frame is overtaken by anything that arrived more than `max_hold`
// after it, and a receiver never sees a segment reordered behind segments
// sent more than `max_hold` later: what TCP's PAWS check can see of the
// relay is bounded by it (lb/fault_e2e_test relies on that).
//
// One thread, epoll + timerfd; every wait is bounded and the destructor stops
// and joins the thread and closes both sockets.
#ifndef REMATCHER_TESTING_FAULTS_RELAY_H_
#define REMATCHER_TESTING_FAULTS_RELAY_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rematcher::faults {

struct RelayOptions {
  // Index 0: from host (host socket -> bridge socket); 1: to host.
  std::array<uint32_t, 2> reorder_ppm = {0, 0};
  int gap_frames = 1;
  absl::Duration max_hold = absl::Milliseconds(5);
  int max_held = 64;  // per direction; beyond it frames are not held
  uint64_t seed = 0;  // 0: random
};

struct RelayDirectionCounters {
  uint64_t received = 0;      // frames read from the socket
  uint64_t sent = 0;          // frames written (released held ones included)
  uint64_t held = 0;          // frames held back
  uint64_t reordered = 0;     // held frames released after >= 1 frame passed them
  uint64_t held_alone = 0;    // held frames released by timeout with none passing
  uint64_t send_errors = 0;   // send() failed: the frame is lost
  uint64_t kernel_drops = 0;  // socket receive-queue overflows (PACKET_STATISTICS)
};

struct RelayCounters {
  std::array<RelayDirectionCounters, 2> dir;
};

// An AF_PACKET socket (all protocols, outgoing frames ignored, promiscuous,
// large buffers, transmitting past qdiscs and tc egress) created in namespace `netns` and bound to `ifname`.
absl::StatusOr<int> OpenPacketSocket(const std::string& netns, const std::string& ifname);

class FrameRelay {
 public:
  // Takes ownership of both fds (closed on failure too).
  static absl::StatusOr<std::unique_ptr<FrameRelay>> Start(int host_fd, int bridge_fd,
                                                           const RelayOptions& options);
  ~FrameRelay();
  FrameRelay(const FrameRelay&) = delete;
  FrameRelay& operator=(const FrameRelay&) = delete;

  RelayCounters Counters() const;

 private:
  struct Stats {
    std::atomic<uint64_t> received{0}, sent{0}, held{0}, reordered{0}, held_alone{0},
        send_errors{0}, kernel_drops{0};
  };
  FrameRelay(int host_fd, int bridge_fd, int stop_fd, int timer_fd, int epoll_fd,
             const RelayOptions& options);
  void Loop();

  const int fds_[2];  // [0] host socket, [1] bridge socket: dir d reads fds_[d]
  const int stop_fd_;
  const int timer_fd_;
  const int epoll_fd_;
  const RelayOptions options_;
  std::array<Stats, 2> stats_;
  std::thread thread_;
};

}  // namespace rematcher::faults

#endif  // REMATCHER_TESTING_FAULTS_RELAY_H_
