// FrameRelay; see relay.h for the contract.
#include "testing/faults/relay.h"

#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "testing/testbed/netns.h"

namespace rematcher::faults {
namespace {

constexpr int kSocketBufferBytes = 8 << 20;
constexpr int kFramesPerWakeup = 64;  // per socket, so one direction cannot starve the other
constexpr size_t kMaxFrameBytes = 65536;

int64_t ClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int64_t MonotonicNs() { return ClockNs(CLOCK_MONOTONIC); }

}  // namespace

absl::StatusOr<int> OpenPacketSocket(const std::string& netns, const std::string& ifname) {
  absl::StatusOr<int> ifindex = testbed::IfIndexInNetns(netns, ifname);
  if (!ifindex.ok()) return ifindex.status();
  absl::StatusOr<int> fd =
      testbed::SocketInNetns(netns, AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
  if (!fd.ok()) return fd.status();
  auto fail = [&](const std::string& what) {
    int e = errno;
    close(*fd);
    return absl::ErrnoToStatus(e, absl::StrCat(what, " on ", netns, "/", ifname));
  };
  // Frames this socket (or anyone) transmits on the device must not be read
  // back as if they had arrived.
  int one = 1;
  if (setsockopt(*fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) < 0)
    return fail("PACKET_IGNORE_OUTGOING");
  // Frames go straight to the driver: a tc egress drop would otherwise come
  // back as a send() error indistinguishable from a real overflow.
  if (setsockopt(*fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
    return fail("PACKET_QDISC_BYPASS");
  // Kernel arrival times: holds are measured from them (see relay.h).
  if (setsockopt(*fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0)
    return fail("SO_TIMESTAMPNS");
  int bytes = kSocketBufferBytes;
  if (setsockopt(*fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0)
    return fail("SO_RCVBUFFORCE");
  if (setsockopt(*fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) < 0)
    return fail("SO_SNDBUFFORCE");
  sockaddr_ll sll = {};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = *ifindex;
  if (bind(*fd, reinterpret_cast<sockaddr*>(&sll), sizeof(sll)) < 0) return fail("bind");
  packet_mreq mr = {};
  mr.mr_ifindex = *ifindex;
  mr.mr_type = PACKET_MR_PROMISC;
  if (setsockopt(*fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) < 0)
    return fail("PACKET_MR_PROMISC");
  return *fd;
}

absl::StatusOr<std::unique_ptr<FrameRelay>> FrameRelay::Start(int host_fd, int bridge_fd,
                                                              const RelayOptions& options) {
  int stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  int err = errno;
  absl::Status bad;
  if (stop_fd < 0 || timer_fd < 0 || epoll_fd < 0) bad = absl::ErrnoToStatus(err, "relay fds");
  if (bad.ok()) {
    for (int fd : {host_fd, bridge_fd, stop_fd, timer_fd}) {
      epoll_event ev = {};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        bad = absl::ErrnoToStatus(errno, "epoll_ctl");
        break;
      }
    }
  }
  if (!bad.ok()) {
    for (int fd : {host_fd, bridge_fd, stop_fd, timer_fd, epoll_fd})
      if (fd >= 0) close(fd);
    return bad;
  }
  std::unique_ptr<FrameRelay> r(
      new FrameRelay(host_fd, bridge_fd, stop_fd, timer_fd, epoll_fd, options));
  r->thread_ = std::thread([p = r.get()] { p->Loop(); });
  return r;
}

FrameRelay::FrameRelay(int host_fd, int bridge_fd, int stop_fd, int timer_fd, int epoll_fd,
                       const RelayOptions& options)
    : fds_{host_fd, bridge_fd},
      stop_fd_(stop_fd),
      timer_fd_(timer_fd),
      epoll_fd_(epoll_fd),
      options_(options) {}

FrameRelay::~FrameRelay() {
  uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof(one)) != sizeof(one)) PLOG(ERROR) << "relay stop";
  if (thread_.joinable()) thread_.join();
  for (int fd : {fds_[0], fds_[1], stop_fd_, timer_fd_, epoll_fd_}) close(fd);
}

RelayCounters FrameRelay::Counters() const {
  RelayCounters c;
  for (int d = 0; d < 2; ++d) {
    // Reading PACKET_STATISTICS resets the kernel's count; fold it in.
    tpacket_stats st = {};
    socklen_t len = sizeof(st);
    if (getsockopt(fds_[d], SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0)
      const_cast<Stats&>(stats_[d]).kernel_drops += st.tp_drops;
    const Stats& s = stats_[d];
    c.dir[d] = {s.received.load(), s.sent.load(),       s.held.load(),        s.reordered.load(),
                s.held_alone.load(), s.send_errors.load(), s.kernel_drops.load()};
  }
  return c;
}

void FrameRelay::Loop() {
  struct Held {
    std::vector<uint8_t> frame;
    int64_t deadline_ns;
    int passed;
  };
  std::array<std::deque<Held>, 2> held;
  std::mt19937_64 rng(options_.seed != 0 ? options_.seed : std::random_device{}());
  std::uniform_int_distribution<uint32_t> ppm(0, 999999);
  std::vector<uint8_t> buf(kMaxFrameBytes);
  const int64_t hold_ns = absl::ToInt64Nanoseconds(options_.max_hold);

  auto send_frame = [&](int d, const uint8_t* p, size_t n) {
    if (send(fds_[1 - d], p, n, 0) == static_cast<ssize_t>(n)) {
      stats_[d].sent++;
    } else {
      stats_[d].send_errors++;
    }
  };
  // Releases held frames of direction d whose deadline passed (all when flush).
  auto release_due = [&](int d, int64_t now, bool flush) {
    while (!held[d].empty() && (flush || held[d].front().deadline_ns <= now)) {
      Held& h = held[d].front();
      send_frame(d, h.frame.data(), h.frame.size());
      (h.passed > 0 ? stats_[d].reordered : stats_[d].held_alone)++;
      held[d].pop_front();
    }
  };
  auto arm_timer = [&] {
    int64_t next = 0;
    for (auto& q : held)
      if (!q.empty() && (next == 0 || q.front().deadline_ns < next)) next = q.front().deadline_ns;
    itimerspec its = {};
    if (next != 0) {
      its.it_value.tv_sec = next / 1000000000;
      its.it_value.tv_nsec = next % 1000000000;
    }
    timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &its, nullptr);
  };
  // arrived: the frame's kernel arrival time (monotonic clock). Held frames
  // whose hold ended before it go out first.
  auto on_frame = [&](int d, size_t n, int64_t arrived) {
    stats_[d].received++;
    release_due(d, arrived, false);
    uint32_t rate = options_.reorder_ppm[d];
    if (rate > 0 && static_cast<int>(held[d].size()) < options_.max_held && ppm(rng) < rate) {
      held[d].push_back({std::vector<uint8_t>(buf.begin(), buf.begin() + n),
                         arrived + hold_ns, 0});
      stats_[d].held++;
      return;
    }
    send_frame(d, buf.data(), n);
    // Held frames are in arrival order, so they reach the gap oldest first.
    for (auto it = held[d].begin(); it != held[d].end();) {
      if (++it->passed >= options_.gap_frames && options_.gap_frames > 0) {
        send_frame(d, it->frame.data(), it->frame.size());
        stats_[d].reordered++;
        it = held[d].erase(it);
      } else {
        ++it;
      }
    }
  };

  bool stop = false;
  while (!stop) {
    epoll_event evs[4];
    // Bounded wait: the timerfd covers held frames, the eventfd stop requests.
    int n = epoll_wait(epoll_fd_, evs, 4, 100);
    if (n < 0 && errno != EINTR) {
      PLOG(ERROR) << "relay epoll_wait";
      break;
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == stop_fd_) {
        stop = true;
      } else if (fd == timer_fd_) {
        uint64_t expirations;
        (void)!read(timer_fd_, &expirations, sizeof(expirations));
      } else {
        int d = fd == fds_[0] ? 0 : 1;
        // Arrival stamps are CLOCK_REALTIME; holds run on the monotonic clock.
        const int64_t real_to_mono = MonotonicNs() - ClockNs(CLOCK_REALTIME);
        for (int k = 0; k < kFramesPerWakeup; ++k) {
          iovec iov = {buf.data(), buf.size()};
          alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
          msghdr msg = {};
          msg.msg_iov = &iov;
          msg.msg_iovlen = 1;
          msg.msg_control = control;
          msg.msg_controllen = sizeof(control);
          ssize_t got = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_TRUNC);
          if (got < 0) break;  // EAGAIN: drained
          if (static_cast<size_t>(got) > buf.size()) {  // cannot happen below 64 KiB MTU
            stats_[d].send_errors++;
            continue;
          }
          int64_t arrived = 0;
          for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
              timespec ts;
              memcpy(&ts, CMSG_DATA(c), sizeof(ts));
              arrived = int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec + real_to_mono;
            }
          }
          const int64_t now = MonotonicNs();
          // No stamp, or one from the future (a clock step): now.
          if (arrived <= 0 || arrived > now) arrived = now;
          on_frame(d, static_cast<size_t>(got), arrived);
        }
      }
    }
    int64_t now = MonotonicNs();
    for (int d = 0; d < 2; ++d) release_due(d, now, stop);
    arm_timer();
  }
}

}  // namespace rematcher::faults
