// A small network of namespaces on one machine, for end-to-end tests and the
// LB's sandbox mode.
//
// Layout (prefix P, all on one L2 segment 198.18.0.0/16 behind one bridge):
//
//   P-sw   switch: bridge br0 + the switch-side veth of every host
//   P-lb   eth0 198.18.0.2/16 and the VIP 198.18.0.10/32     (peer P-lb in P-sw)
//   P-c<i> eth0 198.18.1.(i+1)/16  clients                   (peer P-c<i>)
//   P-b<i> eth0 198.18.2.(i+1)/16  backends                  (peer P-b<i>)
//
// MACs are fixed so packet tests can name them: a host is 02:00:00:00:RR:NN
// with RR/NN the third/fourth octet of its address (LB 02:00:00:00:00:02),
// its switch-side peer 02:00:00:ff:RR:NN.
//
// Every veth end has TX checksum offload off (CHECKSUM_PARTIAL frames would
// reach XDP with incomplete checksums), IPv6 is disabled in every namespace,
// net.ipv4.tcp_ecn is set to its default (2) explicitly, and the xdp_pass
// program of //bpf:trivial is attached in native mode to the LB's switch-side
// peer so that frames the LB sends with XDP_TX are not dropped by veth.
//
// Lifetime: Create() first deletes namespaces left by a crashed run with the
// same prefix; destruction deletes every namespace made (which destroys the
// veths). Live testbeds are also kept in a lock-free registry that
// EmergencyCleanup() flushes from a signal handler. Prefixes are per user of
// the machine: two concurrent testbeds must not share one.
#ifndef REMATCHER_TESTING_TESTBED_TESTBED_H_
#define REMATCHER_TESTING_TESTBED_TESTBED_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "testing/testbed/nstat.h"
#include "testing/testbed/process.h"

namespace rematcher::testbed {

using MacAddr = std::array<uint8_t, 6>;

struct TestbedOptions {
  std::string prefix = "rmt";  // [a-z0-9]+, short: "<prefix>-c<i>" <= 15 chars
  int num_clients = 1;         // 0..254
  int num_backends = 1;        // 0..254
  int tcp_ecn = 2;             // net.ipv4.tcp_ecn in every namespace
  bool attach_xdp_pass = true;
  // GRO (and with it a NAPI ring) on every veth: keeps each flow in order
  // (see testbed.cc). Off for tests that count individual frames on links.
  bool gro = true;
  absl::Duration command_timeout = absl::Seconds(10);
};

class Testbed {
 public:
  static absl::StatusOr<std::unique_ptr<Testbed>> Create(const TestbedOptions& options);
  ~Testbed();
  Testbed(const Testbed&) = delete;
  Testbed& operator=(const Testbed&) = delete;

  // Deletes every namespace of this testbed; idempotent.
  absl::Status Destroy();
  // Leaves the namespaces in place (testbed_cli up) and forgets them.
  void Release();

  // Namespaces of `prefix` that exist now (exact name patterns, so "rmt"
  // never matches "rmt2-sw").
  static std::vector<std::string> ExistingNamespaces(const std::string& prefix);
  static absl::Status DestroyExisting(const std::string& prefix);
  // Async-signal-safe: kills spawned children and deletes the namespaces of
  // every live testbed. Call from the owner's SIGINT/SIGTERM handler.
  static void EmergencyCleanup();
  // Installs SIGINT/SIGTERM handlers that call EmergencyCleanup() and then
  // re-raise the signal with its default action.
  static void InstallSignalCleanup();
  // OK when this process can build a testbed (root, BPF, `ip`), else why not.
  static absl::Status Available();

  const TestbedOptions& options() const { return options_; }
  const std::string& prefix() const { return options_.prefix; }
  int num_clients() const { return options_.num_clients; }
  int num_backends() const { return options_.num_backends; }

  std::string switch_ns() const { return options_.prefix + "-sw"; }
  std::string bridge() const { return "br0"; }
  std::string lb_ns() const { return options_.prefix + "-lb"; }
  std::string client_ns(int i) const { return options_.prefix + "-c" + std::to_string(i); }
  std::string backend_ns(int i) const { return options_.prefix + "-b" + std::to_string(i); }
  // Every namespace made, switch first.
  std::vector<std::string> all_namespaces() const;

  std::string lb_ifname() const { return "eth0"; }  // same name in every host
  std::string host_ifname() const { return "eth0"; }
  // Switch-side peers (in switch_ns()) carry the host namespace's name.
  std::string lb_peer_ifname() const { return lb_ns(); }
  std::string client_peer_ifname(int i) const { return client_ns(i); }
  std::string backend_peer_ifname(int i) const { return backend_ns(i); }

  std::string lb_ip() const { return "198.18.0.2"; }
  std::string vip() const { return "198.18.0.10"; }
  std::string client_ip(int i) const;
  std::string backend_ip(int i) const;
  static constexpr int kPrefixLen = 16;

  MacAddr lb_mac() const { return HostMac(0, 2); }
  MacAddr lb_peer_mac() const { return PeerMac(0, 2); }
  MacAddr client_mac(int i) const { return HostMac(1, i + 1); }
  MacAddr backend_mac(int i) const { return HostMac(2, i + 1); }
  MacAddr client_peer_mac(int i) const { return PeerMac(1, i + 1); }
  MacAddr backend_peer_mac(int i) const { return PeerMac(2, i + 1); }
  static std::string MacString(const MacAddr& mac);

  // ifindex of the LB's eth0 inside lb_ns() (for XDP attach).
  absl::StatusOr<int> lb_ifindex() const;

  // Runs argv inside namespace ns (empty: the caller's) with the default
  // timeout; returns stdout or an error with the exit code and stderr.
  absl::StatusOr<std::string> Run(const std::string& ns, const std::vector<std::string>& argv) const;
  absl::StatusOr<std::string> Run(const std::string& ns, const std::vector<std::string>& argv,
                                  absl::Duration timeout) const;
  absl::StatusOr<CommandResult> RunCommand(const std::string& ns,
                                           const std::vector<std::string>& argv,
                                           absl::Duration timeout) const;
  // Starts argv inside ns; the handle kills and reaps it when destroyed.
  absl::StatusOr<Process> Spawn(const std::string& ns, const std::vector<std::string>& argv,
                                const SpawnOptions& options = {}) const;
  // Absolute counters of ns (`nstat -asz`, which neither reads nor writes
  // nstat's history file).
  absl::StatusOr<NstatCounters> Nstat(const std::string& ns) const;
  // Polls until a TCP connect to ip:port from ns succeeds, bounded.
  absl::Status WaitForTcpListener(const std::string& ns, const std::string& ip, uint16_t port,
                                  absl::Duration timeout) const;

 private:
  explicit Testbed(const TestbedOptions& options) : options_(options) {}
  absl::Status Build();
  absl::Status AddNamespace(const std::string& ns);
  absl::Status AddHost(const std::string& ns, const std::string& peer, const MacAddr& mac,
                       const MacAddr& peer_mac, const std::vector<std::string>& cidrs);
  absl::Status AttachXdpPass();
  static MacAddr HostMac(int role, int n) { return {0x02, 0, 0, 0, uint8_t(role), uint8_t(n)}; }
  static MacAddr PeerMac(int role, int n) { return {0x02, 0, 0, 0xff, uint8_t(role), uint8_t(n)}; }

  TestbedOptions options_;
  std::vector<std::string> created_;  // namespaces to delete, in creation order
};

// Checks the options without touching the system.
absl::Status ValidateTestbedOptions(const TestbedOptions& options);

}  // namespace rematcher::testbed

#endif  // REMATCHER_TESTING_TESTBED_TESTBED_H_
