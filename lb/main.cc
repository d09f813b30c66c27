// rematcher: flags in, Core out. With --iface it serves on that interface;
// without, it builds a sandbox network of its own (see lb/sandbox.h).
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/mount.h>
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "lb/core.h"
#include "lb/metrics_http.h"
#include "lb/pool.h"
#include "lb/policy_loader.h"
#include "lb/sandbox.h"

DEFINE_string(iface, "", "Interface to attach XDP to. Empty: build and serve a sandbox network.");
DEFINE_string(vip, "", "Virtual IP clients connect to, IPv4[:port] (default port 8080).");
DEFINE_string(backends, "", "Comma-separated backends, IPv4[:port][@weight] (default port: the VIP's).");
DEFINE_string(lb_ip, "", "Source address of pooled backend connections (default: first IPv4 of --iface).");
DEFINE_uint32(conns_per_backend, 32, "Pooled connections opened to each backend at start.");
DEFINE_uint32(max_conns_per_backend, 256, "Pooled connections per backend at most (grown on demand).");
DEFINE_uint32(max_clients, 65536, "Client connections held at once; more are refused with RST.");
DEFINE_uint32(max_backends, 64, "Backends at most (ids 0..max-1).");
DEFINE_string(policy, "rr", "Built-in policy name (rr, least_outstanding, p2c, weighted_rr, "
              "weighted_least_outstanding, weighted_p2c) or path to a policy .so.");
DEFINE_string(policy_args, "", "Configuration passed to the policy, key=value,...");
DEFINE_uint32(mss, 1400, "MSS advertised to clients and used by pooled connections; clients "
              "below it are refused.");
DEFINE_uint32(client_wscale, 7, "Window scale the LB advertises to clients (0..14).");
DEFINE_uint32(client_window_cap, 128 * 1024,
              "Most bytes a client may send ahead (its advertised window is capped). Every "
              "pooled connection accepts this much, so moving a client never overruns the new "
              "backend. 0: no cap (uploads then pin clients whose window grew).");
DEFINE_uint32(reroute_margin, 2,
              "A request arriving at a boundary goes to the least loaded other backend "
              "instead when the backend decided for it (or its current one) has at least "
              "this many more requests unanswered at that instant, and --reroute_ratio_pct "
              "percent of the other's count (it may have stalled since the decision was made). "
              "0: never.");
DEFINE_uint32(reroute_ratio_pct, 200,
              "The arrival check's second test (--reroute_margin): the backend a request "
              "would go to must have at least this percentage of the other's unanswered "
              "requests (200: twice as many). 100 to 10000.");
DEFINE_uint32(test_skip_park_every, 0,
              "Testing only: ignore every Nth event for a parked pooled connection, as if it "
              "were lost, leaving it to the pool scan (0: none).");
DEFINE_bool(test_hold_parked, false,
            "Testing only: leave parked pooled connections parked (their events ignored, the "
            "pool scan passing them by), for the next process to adopt with --pin_dir.");
DEFINE_uint32(pool_max_uses, 0,
              "Retire a pooled connection after it carried this many clients or requests "
              "(splices), below the backend's own limit (nginx keepalive_requests, default "
              "1000). 0: never.");
DEFINE_double(pool_idle_timeout_ms, 60000,
              "Retire a pooled connection idle this long, below the backend's keep-alive "
              "timeout (nginx keepalive_timeout, default 75 s), so a client never lands on one "
              "the backend is closing. 0: never.");
DEFINE_string(idle_order, "lifo",
              "Which idle pooled connection a request takes: lifo (the one idle the shortest "
              "time: its congestion window still open, its memory warm; the others reach "
              "--pool_idle_timeout_ms and are replaced) or fifo (the one idle the longest: "
              "every pooled connection is used in turn).");
DEFINE_bool(rematch, true, "Move clients between backends at request boundaries.");
DEFINE_bool(allow_generic_xdp, false, "Fall back to generic XDP if native attach fails.");
DEFINE_double(stats_interval_s, 1.0, "Live statistics period in seconds (0: off).");
DEFINE_double(redecide_us, 500,
              "How often at most the core re-asks the policy for decisions still pending towards a "
              "backend that fell behind the others (a stall); 0: never.");
DEFINE_double(poll_us, 200,
              "Under load (the datapath waking the core more than once per this interval), "
              "the core reads the datapath's events every this many microseconds instead of "
              "being woken for each: fewer context switches per request, decisions up to an "
              "interval later. 0: a wakeup per event always.");
DEFINE_double(poll_max_us, 1000,
              "While polling, the interval stretches up to this as long as decisions keep "
              "reaching the datapath before their clients' next requests (under 0.2% late), "
              "and halves when more than 1% come late. Equal to --poll_us: fixed.");
DEFINE_double(stall_ms, 1,
              "A backend with requests waiting for an answer and no response begun for "
              "max(this, 3x its usual first-byte latency) is flagged stalled: "
              "load-aware policies prefer the others, and decisions pending towards it are "
              "re-asked at once. 0: off.");
DEFINE_bool(count_pending_decisions, true,
            "Policies see as a backend's outstanding load its requests in flight plus the "
            "decisions already made for it and not used yet (each client's next request is "
            "decided when its previous one starts). false: in flight only.");
DEFINE_bool(load_until_acked, false,
            "A request counts as load on its backend until its client acknowledges the whole "
            "response. Default (false): until its response begins. A client with nothing more "
            "to send delays that ACK (tens of ms), and the ghost load it leaves swamps the "
            "real differences between backends.");
DEFINE_double(stall_hold_ms, 1000,
              "A stall flag lasts at most this long (longer silences are for the health checks).");
DEFINE_double(idle_release_ms, 1000, "Hand back the pooled connection of a client idle this long (0: never).");
DEFINE_double(client_idle_timeout_s, 300, "Forget clients idle this long.");
DEFINE_double(duration_s, 0, "Stop after this many seconds (0: run until SIGINT/SIGTERM).");
DEFINE_string(pin_dir, "",
              "bpffs directory (e.g. /sys/fs/bpf/rematcher-eth0) to pin the datapath in. "
              "Pinned, it outlives the process (stop, restart, crash): the XDP program keeps "
              "serving the clients it holds, and the next rematcher started with the same "
              "--pin_dir adopts them and the pooled connections. Needs --iface. Empty: the "
              "datapath goes with the process and a restart resets established clients.");
DEFINE_bool(unload, false,
            "Remove the datapath pinned in --pin_dir (XDP detaches; the clients it held are "
            "reset at their next segment) and exit.");
DEFINE_string(control_socket, "/run/rematcher/rematcher.sock", "Control socket path (root only; empty: none).");
DEFINE_string(metrics_addr, "", "Serve Prometheus metrics over HTTP (GET /metrics, /healthz) on "
              "exactly this numeric IP:PORT, e.g. 127.0.0.1:9100 or [::1]:9100. Empty: off.");
DEFINE_string(policy_dir, "", "Extra directory to search for built-in policy .so files.");
DEFINE_int32(nice, -10, "Scheduling priority of the control loop (-20..19). Policy decisions "
             "must beat the client's next request; on a busy host a raised priority keeps "
             "them on time.");
DEFINE_uint32(realtime_priority, 0, "If 1..99, run the control loop SCHED_FIFO at this priority "
              "(0: --nice only). On a host whose CPUs the datapath, clients and backends keep "
              "busy, decisions are then applied at every boundary, at some cost in throughput "
              "(README, Measured results).");
DEFINE_uint32(health_interval_ms, 2000, "Active health check period per backend (TCP connect, "
              "plus --health_http_path if set); 0: active checks off.");
DEFINE_uint32(health_timeout_ms, 1000, "A health check not answered in this long has failed.");
DEFINE_uint32(health_rise, 2, "Consecutive passed checks that bring a down backend back.");
DEFINE_uint32(health_fall, 3, "Consecutive failed checks (or failed pooled connects) that take a "
              "backend out of service.");
DEFINE_string(health_http_path, "", "If set, health checks GET this path (e.g. /r?size=0) and "
              "expect a 2xx status; empty: TCP connect only.");
DEFINE_bool(health_panic, true, "When every backend fails its health checks, keep them all in "
            "service (panic) instead of refusing every new client; ends when one passes.");
DEFINE_uint32(health_panic_threshold, 0, "With --health_panic, also panic while fewer than this "
              "percentage of the backends pass their health checks (0..100; 0: only when none "
              "passes). Envoy's healthy panic threshold.");
DEFINE_bool(health_passive, true, "Count failed or timed-out pooled-connection connects as "
            "failed checks.");
DEFINE_double(health_latency_factor, 0, "Eject a backend whose first-byte latency EWMA is over "
              "this many times the median of the others (and over --health_latency_min_ms); "
              "0: off.");
DEFINE_double(health_latency_min_ms, 50, "Latency below this never ejects a backend.");
DEFINE_double(health_latency_eject_s, 10, "First latency ejection lasts this long; repeated "
              "ones last longer (up to 8x).");
DEFINE_bool(sandbox_load, true, "In sandbox mode, run a closed-loop load from a client namespace.");
DEFINE_uint32(sandbox_connections, 16, "Connections of the sandbox's load.");
DEFINE_uint32(sandbox_backends, 3, "Backends in the sandbox (the last one is slow).");
DEFINE_string(sandbox_prefix, "rmsb", "Name prefix of the sandbox's namespaces (1-6 lowercase "
              "letters or digits); a stale sandbox with the same prefix is removed first.");

namespace rematcher {
namespace {

int Fail(const std::string& msg) {
  fprintf(stderr, "rematcher: %s\n", msg.c_str());
  return 2;
}

absl::StatusOr<uint32_t> FirstIpv4(const std::string& ifname) {
  ifaddrs* ifa = nullptr;
  if (getifaddrs(&ifa)) return absl::ErrnoToStatus(errno, "getifaddrs");
  uint32_t out = 0;
  for (ifaddrs* p = ifa; p; p = p->ifa_next) {
    if (p->ifa_addr && p->ifa_addr->sa_family == AF_INET && ifname == p->ifa_name) {
      out = reinterpret_cast<sockaddr_in*>(p->ifa_addr)->sin_addr.s_addr;
      break;
    }
  }
  freeifaddrs(ifa);
  if (!out) return absl::NotFoundError(absl::StrCat("interface ", ifname, " has no IPv4 address; pass --lb_ip"));
  return out;
}

// Name of the network namespace (under /run/netns) the calling thread is
// in; empty when it is none of those (e.g. the host's own).
std::string CurrentNetnsName() {
  struct stat self;
  if (stat("/proc/thread-self/ns/net", &self)) return "";
  std::string found;
  if (DIR* d = opendir("/run/netns")) {
    while (dirent* e = readdir(d)) {
      struct stat st;
      std::string path = std::string("/run/netns/") + e->d_name;
      if (e->d_name[0] != '.' && stat(path.c_str(), &st) == 0 && st.st_ino == self.st_ino &&
          st.st_dev == self.st_dev) {
        found = e->d_name;
        break;
      }
    }
    closedir(d);
  }
  return found;
}

// How to reach the metrics endpoint from a shell: from the namespace the
// core serves in (this thread's), and from `peer_ns` too when the address
// is not loopback (a client namespace of the sandbox).
void PrintMetricsHowTo(const std::string& addr, const std::string& peer_ns) {
  auto a = ParseListenAddress(addr);
  if (!a.ok()) return;
  std::string host = ListenAddressString(a->addr);
  bool local_only = absl::StartsWith(host, "127.") || absl::StartsWith(host, "[::1]");
  // A wildcard bind answers on loopback too.
  if (absl::StartsWith(host, "0.0.0.0:")) host = absl::StrCat("127.0.0.1:", a->port);
  if (absl::StartsWith(host, "[::]:")) host = absl::StrCat("[::1]:", a->port);
  std::string ns = CurrentNetnsName();
  auto in = [](const std::string& n) { return n.empty() ? "" : "ip netns exec " + n + " "; };
  std::string text = absl::StrCat("Metrics (Prometheus text), from the LB's namespace",
                                  ns.empty() ? "" : " " + ns, ":\n  ", in(ns),
                                  "curl -s http://", host, "/metrics\n");
  if (!local_only && !peer_ns.empty())
    absl::StrAppend(&text, "or from a client:\n  ", in(peer_ns), "curl -s http://", host,
                    "/metrics\n");
  printf("%s\n", text.c_str());
  fflush(stdout);
}

absl::Status ParseBackends(const std::string& list, uint16_t default_port,
                           std::vector<BackendSpec>* out) {
  for (absl::string_view item : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    std::vector<std::string> w = absl::StrSplit(item, '@');
    if (w.size() > 2) return absl::InvalidArgumentError(absl::StrCat("bad backend '", item, "'"));
    auto b = ParseBackend(w[0], default_port);
    if (!b.ok()) return b.status();
    if (w.size() == 2 && (!absl::SimpleAtoi(w[1], &b->weight) || b->weight == 0))
      return absl::InvalidArgumentError(absl::StrCat("bad weight in '", item, "'"));
    out->push_back(*b);
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  CoreOptions o;
  if (FLAGS_mss < 536 || FLAGS_mss > 9000) return Fail("--mss must be in 536..9000");
  if (FLAGS_client_wscale > 14) return Fail("--client_wscale must be in 0..14");
  if (FLAGS_max_clients == 0 || FLAGS_max_clients > (1u << 22))
    return Fail("--max_clients must be in 1..4194304");
  if (FLAGS_max_backends == 0 || FLAGS_max_backends > RM_MAX_BACKENDS)
    return Fail(absl::StrCat("--max_backends must be in 1..", RM_MAX_BACKENDS));
  if (FLAGS_conns_per_backend == 0 || FLAGS_conns_per_backend > FLAGS_max_conns_per_backend ||
      FLAGS_max_conns_per_backend > RM_MAX_POOL_PER_BACKEND)
    return Fail(absl::StrCat("need 1 <= --conns_per_backend <= --max_conns_per_backend <= ",
                             RM_MAX_POOL_PER_BACKEND));
  if (FLAGS_stats_interval_s < 0 || FLAGS_duration_s < 0 || FLAGS_idle_release_ms < 0 ||
      FLAGS_redecide_us < 0 || FLAGS_poll_us < 0 ||
      FLAGS_stall_ms < 0 || FLAGS_stall_hold_ms < 0 ||
      FLAGS_pool_idle_timeout_ms < 0 ||
      FLAGS_client_idle_timeout_s <= 0)
    return Fail("durations must not be negative");
  if (FLAGS_poll_us > 100000) return Fail("--poll_us must be at most 100000 (100 ms)");
  if (FLAGS_reroute_ratio_pct < 100 || FLAGS_reroute_ratio_pct > 10000)
    return Fail("--reroute_ratio_pct must be in 100..10000 (200: twice as many)");
  if (FLAGS_poll_max_us > 100000 || FLAGS_poll_max_us < FLAGS_poll_us)
    return Fail("--poll_max_us must be in --poll_us..100000 (100 ms)");
  if (FLAGS_idle_order != "lifo" && FLAGS_idle_order != "fifo")
    return Fail(absl::StrCat("--idle_order must be lifo or fifo, got '", FLAGS_idle_order, "'"));
  o.idle_lifo = FLAGS_idle_order == "lifo";
  o.conns_per_backend = FLAGS_conns_per_backend;
  o.max_conns_per_backend = FLAGS_max_conns_per_backend;
  o.max_clients = FLAGS_max_clients;
  o.max_backends = FLAGS_max_backends;
  o.mss = FLAGS_mss;
  o.client_wscale = FLAGS_client_wscale;
  o.rematch = FLAGS_rematch;
  o.client_window_cap = FLAGS_client_window_cap;
  o.pool_max_uses = FLAGS_pool_max_uses;
  o.reroute_margin = FLAGS_reroute_margin;
  o.reroute_ratio_pct = FLAGS_reroute_ratio_pct;
  o.pool_idle_timeout = absl::Milliseconds(FLAGS_pool_idle_timeout_ms);
  o.test_skip_park_every = FLAGS_test_skip_park_every;
  o.test_hold_parked = FLAGS_test_hold_parked;
  o.allow_generic_xdp = FLAGS_allow_generic_xdp;
  o.policy = FLAGS_policy;
  o.policy_args = FLAGS_policy_args;
  o.policy_dirs = DefaultPolicySearchDirs(argv[0]);
  if (!FLAGS_policy_dir.empty()) o.policy_dirs.insert(o.policy_dirs.begin(), FLAGS_policy_dir);
  o.stats_interval = absl::Seconds(FLAGS_stats_interval_s);
  o.idle_release = absl::Milliseconds(FLAGS_idle_release_ms);
  o.redecide_interval = absl::Microseconds(FLAGS_redecide_us);
  o.poll_interval = absl::Microseconds(FLAGS_poll_us);
  o.poll_max = absl::Microseconds(FLAGS_poll_max_us);
  o.stall_min = absl::Microseconds(FLAGS_stall_ms * 1000);
  o.count_pending_decisions = FLAGS_count_pending_decisions;
  o.load_until_acked = FLAGS_load_until_acked;
  o.stall_hold = absl::Microseconds(FLAGS_stall_hold_ms * 1000);
  o.client_idle_timeout = absl::Seconds(FLAGS_client_idle_timeout_s);
  o.duration = absl::Seconds(FLAGS_duration_s);
  o.control_socket = FLAGS_control_socket;
  if (!FLAGS_metrics_addr.empty()) {
    auto a = ParseListenAddress(FLAGS_metrics_addr);
    if (!a.ok()) return Fail(absl::StrCat("--metrics_addr: ", a.status().message()));
    if (a->port == 0) return Fail("--metrics_addr: the port must be in 1..65535");
  }
  o.metrics_addr = FLAGS_metrics_addr;
  if (FLAGS_health_latency_min_ms < 0 || FLAGS_health_latency_eject_s <= 0)
    return Fail("--health_latency_min_ms must be >= 0 and --health_latency_eject_s > 0");
  o.health.interval = absl::Milliseconds(FLAGS_health_interval_ms);
  o.health.timeout = absl::Milliseconds(FLAGS_health_timeout_ms);
  o.health.rise = FLAGS_health_rise;
  o.health.fall = FLAGS_health_fall;
  o.health.http_path = FLAGS_health_http_path;
  o.health.passive = FLAGS_health_passive;
  o.health_panic = FLAGS_health_panic;
  if (FLAGS_health_panic_threshold > 100)
    return Fail(absl::StrCat("--health_panic_threshold=", FLAGS_health_panic_threshold,
                             ": a percentage, 0..100"));
  o.health_panic_threshold = FLAGS_health_panic_threshold;
  o.health.latency_factor = FLAGS_health_latency_factor;
  o.health.latency_min = absl::Milliseconds(FLAGS_health_latency_min_ms);
  o.health.latency_eject = absl::Seconds(FLAGS_health_latency_eject_s);
  if (auto st = ValidateHealthOptions(o.health); !st.ok()) return Fail(std::string(st.message()));

  if (FLAGS_nice < -20 || FLAGS_nice > 19) return Fail("--nice must be in -20..19");
  if (setpriority(PRIO_PROCESS, 0, FLAGS_nice))
    LOG(WARNING) << "could not set priority " << FLAGS_nice << ": " << strerror(errno)
                 << "; policy decisions may come late on a busy host";
  if (FLAGS_realtime_priority > 99) return Fail("--realtime_priority must be in 0..99");
  if (FLAGS_realtime_priority) {
    sched_param sp{};
    sp.sched_priority = static_cast<int>(FLAGS_realtime_priority);
    if (sched_setscheduler(0, SCHED_FIFO, &sp))
      return Fail(absl::StrCat("--realtime_priority=", FLAGS_realtime_priority,
                               ": sched_setscheduler(SCHED_FIFO): ", strerror(errno)));
    LOG(INFO) << "control loop runs SCHED_FIFO at priority " << FLAGS_realtime_priority;
  }

  // BPF needs bpffs only for pinning; mount it if missing, quietly.
  mkdir("/sys/fs/bpf", 0700);
  const bool mounted_bpffs = mount("bpf", "/sys/fs/bpf", "bpf", 0, nullptr) == 0;

  if (!FLAGS_pin_dir.empty() && FLAGS_pin_dir[0] != '/')
    return Fail("--pin_dir must be an absolute path on a BPF filesystem");
  if (FLAGS_unload) {
    if (FLAGS_pin_dir.empty()) return Fail("--unload needs --pin_dir");
    // Its pooled connections are reset at their backends (one RST each,
    // at the record's sequence numbers), which would otherwise hold them
    // open until their own timeouts. Sent from this namespace: run it
    // where rematcher ran.
    int raw_fd = -1;
    int64_t sent = 0, failed = 0, seen = 0;
    absl::Status last;
    absl::Status st = Datapath::Unload(
        FLAGS_pin_dir,
        [&](const rm_pool& rec) {
          absl::Status s = SendPoolReset(&raw_fd, rec);
          if (s.ok()) sent++;
          else { failed++; last = s; }
        },
        &seen);
    if (raw_fd >= 0) close(raw_fd);
    if (!st.ok()) return Fail(absl::StrCat("--unload: ", st.ToString()));
    if (seen < 0)
      LOG(WARNING) << "the pinned records have another layout: their pooled connections were "
                      "not reset at the backends (they close at the backends' timeouts)";
    else
      LOG(INFO) << "reset " << sent << " pooled connections at their backends"
                << (failed ? absl::StrCat(" (", failed, " not: ", last.ToString(), ")") : "");
    LOG(INFO) << "removed the datapath pinned in " << FLAGS_pin_dir;
    return 0;
  }
  // A bpffs this process had to mount lives only as long as its mount
  // namespace: under `ip netns exec` (a private /sys) that is the process.
  if (mounted_bpffs && absl::StartsWith(FLAGS_pin_dir, "/sys/fs/bpf/"))
    return Fail(absl::StrCat(
        "--pin_dir ", FLAGS_pin_dir,
        ": /sys/fs/bpf was not mounted in this mount namespace (ip netns exec mounts a "
        "private /sys), so pins there would go with the process; use a directory on a bpffs "
        "mounted outside it (e.g. mount -t bpf bpf /run/rematcher/bpf)"));
  o.pin_dir = FLAGS_pin_dir;

  std::unique_ptr<Sandbox> sandbox;
  if (FLAGS_iface.empty()) {
    if (!FLAGS_pin_dir.empty())
      return Fail("--pin_dir needs --iface (the sandbox's network goes with the process)");
    if (!FLAGS_backends.empty() || !FLAGS_vip.empty())
      return Fail("--vip/--backends need --iface (without --iface, rematcher builds a sandbox)");
    SandboxOptions so;
    so.argv0 = argv[0];
    if (FLAGS_sandbox_prefix.empty() || FLAGS_sandbox_prefix.size() > 6 ||
        !std::all_of(FLAGS_sandbox_prefix.begin(), FLAGS_sandbox_prefix.end(),
                     [](char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'); }))
      return Fail(absl::StrCat("--sandbox_prefix='", FLAGS_sandbox_prefix,
                               "': 1-6 lowercase letters or digits"));
    so.prefix = FLAGS_sandbox_prefix;
    so.num_backends = FLAGS_sandbox_backends;
    if (so.num_backends < 1 || so.num_backends > 32) return Fail("--sandbox_backends must be in 1..32");
    auto sb = Sandbox::Create(so);
    if (!sb.ok()) return Fail(absl::StrCat("building the sandbox: ", sb.status().ToString()));
    sandbox = std::move(*sb);
    sandbox->Configure(&o).IgnoreError();
    if (auto st = sandbox->EnterLb(); !st.ok()) return Fail(st.ToString());
    o.vip_port = htons(8080);
    if (o.control_socket == "/run/rematcher/rematcher.sock")
      o.control_socket = so.prefix == "rmsb"
                             ? "/run/rematcher/sandbox.sock"
                             : absl::StrCat("/run/rematcher/sandbox-", so.prefix, ".sock");
  } else {
    o.ifname = FLAGS_iface;
    std::string vip = FLAGS_vip;
    if (vip.empty()) return Fail("--vip is required with --iface");
    auto v = ParseBackend(vip, 8080);
    if (!v.ok()) return Fail(absl::StrCat("--vip: ", v.status().message()));
    o.vip = v->ip;
    o.vip_port = v->port;
    if (FLAGS_backends.empty()) return Fail("--backends is required with --iface");
    if (auto st = ParseBackends(FLAGS_backends, ntohs(o.vip_port), &o.backends); !st.ok())
      return Fail(absl::StrCat("--backends: ", st.message()));
    if (!FLAGS_lb_ip.empty()) {
      in_addr a;
      if (inet_pton(AF_INET, FLAGS_lb_ip.c_str(), &a) != 1) return Fail("--lb_ip: not an IPv4 address");
      o.lb_ip = a.s_addr;
    }
  }
  o.ifindex = if_nametoindex(o.ifname.c_str());
  if (!o.ifindex) return Fail(absl::StrCat("no such interface '", o.ifname, "'"));
  if (!o.lb_ip) {
    auto ip = FirstIpv4(o.ifname);
    if (!ip.ok()) return Fail(ip.status().ToString());
    o.lb_ip = *ip;
  }

  auto core = Core::Create(o);
  if (!core.ok()) return Fail(core.status().ToString());
  if (sandbox) {
    if (FLAGS_sandbox_load) {
      if (auto st = sandbox->StartLoad(FLAGS_sandbox_connections,
                                       FLAGS_duration_s > 0 ? FLAGS_duration_s + 5 : 3600);
          !st.ok())
        LOG(WARNING) << "sandbox load not started: " << st;
    }
    sandbox->PrintHowTo();
    // The core serves from this thread's namespace (the sandbox's LB).
    if (!o.metrics_addr.empty())
      PrintMetricsHowTo(o.metrics_addr, sandbox->testbed().client_ns(1));
  }
  absl::Status st = (*core)->Run();
  fputs((*core)->StatsText().c_str(), stdout);
  core->reset();
  sandbox.reset();
  if (!st.ok()) return Fail(st.ToString());
  return 0;
}

}  // namespace
}  // namespace rematcher

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "XDP layer-4 load balancer with per-request rematching.\n"
      "  rematcher --policy=p2c                        (sandbox network)\n"
      "  rematcher --iface=eth0 --vip=IP[:port] --backends=IP[:port],... [--policy=NAME|PATH]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  return rematcher::Main(argc, argv);
}
