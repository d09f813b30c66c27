// Namespace testbed; see testbed.h for the layout and contract.
#include "testing/testbed/testbed.h"

#include <arpa/inet.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bpf/trivial.skel.h"
#include "glog/logging.h"
#include "testing/testbed/netns.h"

namespace rematcher::testbed {
namespace {

// Namespaces of live testbeds, for EmergencyCleanup() from a signal handler:
// fixed slots, no locks, no allocation on the reading side.
// state: 0 free, 1 being written, 2 live.
struct NsSlot {
  std::atomic<int> state{0};
  char path[128];
};
constexpr int kMaxNsSlots = 1024;
NsSlot g_ns_slots[kMaxNsSlots];

void RegisterNs(const std::string& name) {
  std::string path = absl::StrCat(kNetnsRunDir, "/", name);
  for (NsSlot& s : g_ns_slots) {
    int expected = 0;
    if (s.state.compare_exchange_strong(expected, 1)) {
      snprintf(s.path, sizeof(s.path), "%s", path.c_str());
      s.state.store(2);
      return;
    }
  }
  LOG(WARNING) << "namespace registry full; " << name << " not covered by EmergencyCleanup";
}

void UnregisterNs(const std::string& name) {
  std::string path = absl::StrCat(kNetnsRunDir, "/", name);
  for (NsSlot& s : g_ns_slots) {
    if (s.state.load() == 2 && path == s.path) {
      s.state.store(0);
      return;
    }
  }
}

void SignalCleanupHandler(int sig) {
  Testbed::EmergencyCleanup();
  signal(sig, SIG_DFL);
  raise(sig);
}

std::string Cidr(const std::string& ip, int len) { return absl::StrCat(ip, "/", len); }

}  // namespace

absl::Status ValidateTestbedOptions(const TestbedOptions& o) {
  static const std::regex kPrefix("[a-z0-9]+");
  if (!std::regex_match(o.prefix, kPrefix))
    return absl::InvalidArgumentError(absl::StrCat("prefix '", o.prefix, "' must match [a-z0-9]+"));
  if (o.num_clients < 0 || o.num_clients > 254 || o.num_backends < 0 || o.num_backends > 254)
    return absl::InvalidArgumentError("clients and backends must be in 0..254");
  // The longest interface name is the switch-side peer "<prefix>-c<i>".
  int widest = std::max(o.num_clients, o.num_backends) - 1;
  size_t longest = o.prefix.size() + 2 + std::to_string(std::max(widest, 0)).size();
  if (longest > 15)
    return absl::InvalidArgumentError(absl::StrCat("prefix '", o.prefix, "' too long: interface ",
                                                   "names would be ", longest, " > 15 chars"));
  if (o.tcp_ecn < 0 || o.tcp_ecn > 2) return absl::InvalidArgumentError("tcp_ecn must be 0..2");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Testbed>> Testbed::Create(const TestbedOptions& options) {
  if (absl::Status s = ValidateTestbedOptions(options); !s.ok()) return s;
  if (absl::Status s = DestroyExisting(options.prefix); !s.ok()) return s;
  std::unique_ptr<Testbed> tb(new Testbed(options));
  const absl::Time start = absl::Now();
  // On failure the unique_ptr deletes whatever was made.
  if (absl::Status s = tb->Build(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("building testbed ", options.prefix, ": ", s.message()));
  }
  LOG(INFO) << "testbed " << options.prefix << " up: " << options.num_clients << " clients, "
            << options.num_backends << " backends, in " << absl::FormatDuration(absl::Now() - start);
  return tb;
}

Testbed::~Testbed() {
  absl::Status s = Destroy();
  if (!s.ok()) LOG(ERROR) << "testbed " << prefix() << " cleanup: " << s;
}

std::vector<std::string> Testbed::all_namespaces() const {
  std::vector<std::string> ns = {switch_ns(), lb_ns()};
  for (int i = 0; i < num_clients(); ++i) ns.push_back(client_ns(i));
  for (int i = 0; i < num_backends(); ++i) ns.push_back(backend_ns(i));
  return ns;
}

std::string Testbed::client_ip(int i) const { return absl::StrCat("198.18.1.", i + 1); }
std::string Testbed::backend_ip(int i) const { return absl::StrCat("198.18.2.", i + 1); }

std::string Testbed::MacString(const MacAddr& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

absl::Status Testbed::AddNamespace(const std::string& ns) {
  // Registered before creation, so a signal mid-way still removes it.
  RegisterNs(ns);
  created_.push_back(ns);
  if (absl::Status s = CreateNetns(ns); !s.ok()) return s;
  // Before any veth exists, so new devices inherit "default".
  absl::StatusOr<std::string> out =
      Run(ns, {"sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1",
               absl::StrCat("net.ipv4.tcp_ecn=", options_.tcp_ecn)});
  if (!out.ok()) return out.status();
  return Run("", {"ip", "-n", ns, "link", "set", "lo", "up"}).status();
}

absl::Status Testbed::AddHost(const std::string& ns, const std::string& peer, const MacAddr& mac,
                              const MacAddr& peer_mac, const std::vector<std::string>& cidrs) {
  const std::string sw = switch_ns();
  // The LB's link carries every flow twice (in and out) through one veth
  // XDP ring of 256 frames; give it one queue per CPU so flows are hashed
  // over several rings, as RSS would on a NIC. Per-flow order is kept.
  const std::string queues = ns == lb_ns() ? "2" : "1";
  std::vector<std::vector<std::string>> steps = {
      {"ip", "-n", sw, "link", "add", peer, "address", MacString(peer_mac), "numtxqueues",
       queues, "numrxqueues", queues, "type", "veth", "peer", "name", "eth0", "address",
       MacString(mac), "numtxqueues", queues, "numrxqueues", queues, "netns", ns},
      {"ip", "-n", sw, "link", "set", peer, "master", bridge()},
  };
  for (const std::string& c : cidrs) steps.push_back({"ip", "-n", ns, "addr", "add", c, "dev", "eth0"});
  for (auto& step : steps)
    if (absl::StatusOr<std::string> r = Run("", step); !r.ok()) return r.status();
  // Offload off on both ends before either carries traffic.
  // tx off: see the file comment. gro on: gives every veth receive side a
  // NAPI ring. Without it veth delivers through the sending CPU's backlog,
  // so a flow sent from two CPUs is reordered on the wire, which the TCP
  // stacks then count as PAWS drops and out-of-order segments that no load
  // balancer caused.
  const char* gro = options_.gro ? "on" : "off";
  if (auto r = Run(ns, {"ethtool", "-K", "eth0", "tx", "off", "gro", gro}); !r.ok())
    return r.status();
  if (auto r = Run(sw, {"ethtool", "-K", peer, "tx", "off", "gro", gro}); !r.ok())
    return r.status();
  if (auto r = Run("", {"ip", "-n", sw, "link", "set", peer, "up"}); !r.ok()) return r.status();
  return Run("", {"ip", "-n", ns, "link", "set", "eth0", "up"}).status();
}

absl::Status Testbed::Build() {
  for (const std::string& ns : all_namespaces())
    if (absl::Status s = AddNamespace(ns); !s.ok()) return s;
  const std::string sw = switch_ns();
  for (auto& step : std::vector<std::vector<std::string>>{
           {"ip", "-n", sw, "link", "add", bridge(), "type", "bridge", "stp_state", "0",
            "forward_delay", "0"},
           {"ip", "-n", sw, "link", "set", bridge(), "up"}}) {
    if (absl::StatusOr<std::string> r = Run("", step); !r.ok()) return r.status();
  }
  if (absl::Status s = AddHost(lb_ns(), lb_peer_ifname(), lb_mac(), lb_peer_mac(),
                               {Cidr(lb_ip(), kPrefixLen), Cidr(vip(), 32)});
      !s.ok())
    return s;
  for (int i = 0; i < num_clients(); ++i) {
    if (absl::Status s = AddHost(client_ns(i), client_peer_ifname(i), client_mac(i),
                                 client_peer_mac(i), {Cidr(client_ip(i), kPrefixLen)});
        !s.ok())
      return s;
  }
  for (int i = 0; i < num_backends(); ++i) {
    if (absl::Status s = AddHost(backend_ns(i), backend_peer_ifname(i), backend_mac(i),
                                 backend_peer_mac(i), {Cidr(backend_ip(i), kPrefixLen)});
        !s.ok())
      return s;
  }
  if (options_.attach_xdp_pass) return AttachXdpPass();
  return absl::OkStatus();
}

absl::Status Testbed::AttachXdpPass() {
  trivial* skel = trivial::open_and_load();
  if (skel == nullptr) return absl::ErrnoToStatus(errno, "loading //bpf:trivial");
  absl::Status result = absl::OkStatus();
  {
    absl::StatusOr<ScopedNetns> in = ScopedNetns::Enter(switch_ns());
    if (!in.ok()) {
      result = in.status();
    } else {
      int ifindex = static_cast<int>(if_nametoindex(lb_peer_ifname().c_str()));
      if (ifindex == 0) {
        result = absl::ErrnoToStatus(errno, lb_peer_ifname());
      } else {
        // Netlink attach: the device holds the program, so it outlives the
        // skeleton and goes away with the device.
        int rc = bpf_xdp_attach(ifindex, bpf_program__fd(skel->progs.xdp_pass),
                                XDP_FLAGS_DRV_MODE, nullptr);
        if (rc < 0)
          result = absl::ErrnoToStatus(-rc, absl::StrCat("native XDP attach on ", lb_peer_ifname()));
      }
    }
  }
  trivial::destroy(skel);
  return result;
}

absl::StatusOr<int> Testbed::lb_ifindex() const { return IfIndexInNetns(lb_ns(), lb_ifname()); }

absl::Status Testbed::Destroy() {
  absl::Status first = absl::OkStatus();
  // Switch first: its veths take their host ends with them.
  for (const std::string& ns : created_) {
    absl::Status s = DeleteNetns(ns);
    if (!s.ok() && first.ok()) first = s;
    UnregisterNs(ns);
  }
  created_.clear();
  return first;
}

void Testbed::Release() {
  for (const std::string& ns : created_) UnregisterNs(ns);
  created_.clear();
}

std::vector<std::string> Testbed::ExistingNamespaces(const std::string& prefix) {
  std::vector<std::string> found;
  std::regex re(absl::StrCat("^", prefix, "-(sw|lb|c[0-9]+|b[0-9]+)$"));
  for (const std::string& ns : ListNetns())
    if (std::regex_match(ns, re)) found.push_back(ns);
  return found;
}

absl::Status Testbed::DestroyExisting(const std::string& prefix) {
  TestbedOptions o;
  o.prefix = prefix;
  if (absl::Status s = ValidateTestbedOptions(o); !s.ok()) return s;
  std::vector<std::string> stale = ExistingNamespaces(prefix);
  if (!stale.empty()) LOG(INFO) << "removing namespaces " << absl::StrJoin(stale, " ");
  for (const std::string& ns : stale)
    if (absl::Status s = DeleteNetns(ns); !s.ok()) return s;
  return absl::OkStatus();
}

void Testbed::EmergencyCleanup() {
  KillAllSpawnedProcesses();
  for (NsSlot& s : g_ns_slots) {
    if (s.state.load() == 2) {
      DeleteNetnsSignalSafe(s.path);
      s.state.store(0);
    }
  }
}

void Testbed::InstallSignalCleanup() {
  struct sigaction sa = {};
  sa.sa_handler = SignalCleanupHandler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

absl::Status Testbed::Available() {
  if (geteuid() != 0) return absl::PermissionDeniedError("not running as root");
  for (const char* tool : {"ip", "ethtool", "sysctl", "nstat"}) {
    if (absl::StatusOr<std::string> p = ResolveExecutable(tool); !p.ok()) return p.status();
  }
  // Loading the xdp_pass program is the step a sandbox refuses.
  trivial* skel = trivial::open_and_load();
  if (skel == nullptr)
    return absl::ErrnoToStatus(errno, "loading //bpf:trivial (sandboxed? missing CAP_BPF?)");
  trivial::destroy(skel);
  // Creating a namespace needs CAP_SYS_ADMIN and a writable /run.
  if (access("/run", W_OK) != 0) return absl::ErrnoToStatus(errno, "/run is not writable");
  return absl::OkStatus();
}

absl::StatusOr<CommandResult> Testbed::RunCommand(const std::string& ns,
                                                  const std::vector<std::string>& argv,
                                                  absl::Duration timeout) const {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  if (ns.empty()) return rematcher::testbed::RunCommand(argv, timeout);
  // `ip netns exec` searches PATH itself; resolve here so sbin tools work
  // from Bazel's test PATH too.
  absl::StatusOr<std::string> exe = ResolveExecutable(argv[0]);
  if (!exe.ok()) return exe.status();
  std::vector<std::string> full = {"ip", "netns", "exec", ns, *exe};
  full.insert(full.end(), argv.begin() + 1, argv.end());
  return rematcher::testbed::RunCommand(full, timeout);
}

absl::StatusOr<std::string> Testbed::Run(const std::string& ns,
                                         const std::vector<std::string>& argv,
                                         absl::Duration timeout) const {
  absl::StatusOr<CommandResult> r = RunCommand(ns, argv, timeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::InternalError(absl::StrCat(ns.empty() ? "" : "[" + ns + "] ", "`",
                                            absl::StrJoin(argv, " "), "` exited with ",
                                            r->exit_code, ": ", r->err));
  }
  return std::move(r->out);
}

absl::StatusOr<std::string> Testbed::Run(const std::string& ns,
                                         const std::vector<std::string>& argv) const {
  return Run(ns, argv, options_.command_timeout);
}

absl::StatusOr<Process> Testbed::Spawn(const std::string& ns, const std::vector<std::string>& argv,
                                       const SpawnOptions& options) const {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  if (ns.empty()) return rematcher::testbed::Spawn(argv, options);
  absl::StatusOr<std::string> exe = ResolveExecutable(argv[0]);
  if (!exe.ok()) return exe.status();
  // `ip netns exec` execs the command in place, so the pid is the command's.
  std::vector<std::string> full = {"ip", "netns", "exec", ns, *exe};
  full.insert(full.end(), argv.begin() + 1, argv.end());
  return rematcher::testbed::Spawn(full, options);
}

absl::StatusOr<NstatCounters> Testbed::Nstat(const std::string& ns) const {
  absl::StatusOr<std::string> out = Run(ns, {"nstat", "-a", "-s", "-z"});
  if (!out.ok()) return out.status();
  NstatCounters c = ParseNstat(*out);
  if (c.empty()) return absl::InternalError(absl::StrCat("no counters parsed from nstat in ", ns));
  return c;
}

absl::Status Testbed::WaitForTcpListener(const std::string& ns, const std::string& ip,
                                         uint16_t port, absl::Duration timeout) const {
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1)
    return absl::InvalidArgumentError(absl::StrCat("bad address ", ip));
  const absl::Time deadline = absl::Now() + timeout;
  int last_errno = 0;
  while (absl::Now() < deadline) {
    absl::StatusOr<int> fd = SocketInNetns(ns, AF_INET, SOCK_STREAM);
    if (!fd.ok()) return fd.status();
    timeval tv = {1, 0};
    setsockopt(*fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int rc = connect(*fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    last_errno = errno;
    close(*fd);
    if (rc == 0) return absl::OkStatus();
    usleep(20000);
  }
  return absl::DeadlineExceededError(absl::StrCat("nothing listening on ", ip, ":", port, " from ",
                                                  ns, ": ", strerror(last_errno)));
}

}  // namespace rematcher::testbed
