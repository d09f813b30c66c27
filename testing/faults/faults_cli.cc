// faults_cli: put faults on one link by hand and watch the counters.
//
//   faults_cli --netns=rmt-sw --dev=rmt-c0 --loss=0.01 --reorder=0.05 --duration=60s
//   faults_cli --prefix=rmt --link=c0 --duplicate=0.02 --dir=to_host
//
// Prints the counters every --interval and detaches (restoring the link) at
// the end of --duration or on SIGINT/SIGTERM.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <iostream>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "testing/faults/faults.h"

DEFINE_string(netns, "", "namespace holding the link (default: <prefix>-sw)");
DEFINE_string(dev, "", "the link: switch-side veth of a host (default: <prefix>-<link>)");
DEFINE_string(prefix, "rmt", "testbed prefix, used with --link");
DEFINE_string(link, "", "testbed host of the link: c<i>, b<i> or lb");
DEFINE_double(loss, 0, "drop probability per frame");
DEFINE_double(duplicate, 0, "duplication probability per frame");
DEFINE_double(reorder, 0, "probability a frame is held back (splices a relay in)");
DEFINE_double(corrupt, 0, "probability an IPv4 TCP/UDP frame with payload gets one byte flipped");
DEFINE_uint32(drop_resets, 0, "drop the first N TCP RSTs in each chosen direction");
DEFINE_double(drop_acks_ms, 0,
              "drop every pure TCP ACK in each chosen direction for this many ms from the start");
DEFINE_string(dir, "both", "from_host, to_host or both");
DEFINE_uint64(seed, 0, "0: unseeded");
DEFINE_int32(reorder_gap, 1, "release a held frame after this many frames passed it (0: timeout only)");
DEFINE_string(reorder_hold, "5ms", "longest a frame is held");
DEFINE_string(duration, "600s", "detach after this long (0: only on a signal)");
DEFINE_string(interval, "1s", "counter print interval");

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

bool ParseDuration(const std::string& text, const char* flag, absl::Duration* out) {
  if (absl::ParseDuration(text, out)) return true;
  std::cerr << "--" << flag << ": cannot parse '" << text << "'\n";
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("faults_cli --netns=NS --dev=IF [--loss=P ...]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  using rematcher::faults::Direction;
  using rematcher::faults::FaultSpec;

  std::string netns = FLAGS_netns.empty() ? FLAGS_prefix + "-sw" : FLAGS_netns;
  std::string dev = FLAGS_dev;
  if (dev.empty() && !FLAGS_link.empty()) dev = FLAGS_prefix + "-" + FLAGS_link;
  if (dev.empty()) {
    std::cerr << "give --dev (or --prefix and --link)\n";
    return 2;
  }
  FaultSpec spec;
  spec.loss = FLAGS_loss;
  spec.duplicate = FLAGS_duplicate;
  spec.reorder = FLAGS_reorder;
  spec.corrupt = FLAGS_corrupt;
  spec.drop_resets = FLAGS_drop_resets;
  spec.drop_acks_for = absl::Microseconds(static_cast<int64_t>(FLAGS_drop_acks_ms * 1000));
  spec.seed = FLAGS_seed;
  spec.reorder_gap_frames = FLAGS_reorder_gap;
  if (FLAGS_dir == "from_host") {
    spec.dir = Direction::kFromHost;
  } else if (FLAGS_dir == "to_host") {
    spec.dir = Direction::kToHost;
  } else if (FLAGS_dir != "both") {
    std::cerr << "--dir must be from_host, to_host or both\n";
    return 2;
  }
  absl::Duration duration, interval;
  if (!ParseDuration(FLAGS_reorder_hold, "reorder_hold", &spec.reorder_max_hold) ||
      !ParseDuration(FLAGS_duration, "duration", &duration) ||
      !ParseDuration(FLAGS_interval, "interval", &interval))
    return 2;
  if (interval < absl::Milliseconds(10)) interval = absl::Milliseconds(10);

  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  auto f = rematcher::faults::FaultInjector::Attach(netns, dev, spec);
  if (!f.ok()) {
    std::cerr << f.status() << "\n";
    return 1;
  }
  std::cout << "attached to " << netns << "/" << dev << ": "
            << rematcher::faults::FaultSpecString(spec)
            << ((*f)->relay_spliced() ? " via relay " + (*f)->relay_bridge_port() : "") << "\n";
  const absl::Time end = duration == absl::ZeroDuration() ? absl::InfiniteFuture()
                                                           : absl::Now() + duration;
  absl::Time next_print = absl::Now() + interval;
  while (!g_stop && absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(10));
    if (absl::Now() < next_print) continue;
    next_print += interval;
    auto c = (*f)->Counters();
    if (c.ok()) std::cout << c->ToString() << std::flush;
    else std::cerr << c.status() << "\n";
  }
  auto c = (*f)->Counters();
  if (c.ok()) std::cout << "final:\n" << c->ToString();
  absl::Status s = (*f)->Detach();
  if (!s.ok()) {
    std::cerr << "detach: " << s << "\n";
    return 1;
  }
  std::cout << "detached\n";
  return 0;
}
