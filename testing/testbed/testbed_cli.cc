// testbed_cli: bring a namespace testbed up or down by hand or from scripts.
//
//   testbed_cli up   --prefix=rmt --clients=2 --backends=3
//   testbed_cli down --prefix=rmt
//
// `up` replaces any testbed with the same prefix and leaves the new one in
// place (prints its layout); `down` deletes every namespace of the prefix.
#include <iostream>

#include "absl/strings/str_join.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "testing/testbed/testbed.h"

DEFINE_string(prefix, "rmt", "namespace name prefix ([a-z0-9]+, short)");
DEFINE_int32(clients, 1, "number of client namespaces");
DEFINE_int32(backends, 1, "number of backend namespaces");
DEFINE_bool(xdp_pass, true, "attach xdp_pass on the LB's switch-side peer");

namespace {

using rematcher::testbed::Testbed;
using rematcher::testbed::TestbedOptions;

int Up() {
  TestbedOptions o;
  o.prefix = FLAGS_prefix;
  o.num_clients = FLAGS_clients;
  o.num_backends = FLAGS_backends;
  o.attach_xdp_pass = FLAGS_xdp_pass;
  // A Ctrl-C during setup must not leave half a testbed behind.
  Testbed::InstallSignalCleanup();
  absl::StatusOr<std::unique_ptr<Testbed>> tb = Testbed::Create(o);
  if (!tb.ok()) {
    std::cerr << "up failed: " << tb.status() << "\n";
    return 1;
  }
  Testbed& t = **tb;
  std::cout << "switch " << t.switch_ns() << " (bridge " << t.bridge() << ")\n";
  std::cout << "lb     " << t.lb_ns() << " eth0 " << t.lb_ip() << "/16 vip " << t.vip() << "/32 mac "
            << Testbed::MacString(t.lb_mac()) << " peer " << t.lb_peer_ifname() << "\n";
  for (int i = 0; i < t.num_clients(); ++i)
    std::cout << "client " << t.client_ns(i) << " eth0 " << t.client_ip(i) << "/16 mac "
              << Testbed::MacString(t.client_mac(i)) << "\n";
  for (int i = 0; i < t.num_backends(); ++i)
    std::cout << "backend " << t.backend_ns(i) << " eth0 " << t.backend_ip(i) << "/16 mac "
              << Testbed::MacString(t.backend_mac(i)) << "\n";
  t.Release();
  return 0;
}

int Down() {
  std::vector<std::string> ns = Testbed::ExistingNamespaces(FLAGS_prefix);
  absl::Status s = Testbed::DestroyExisting(FLAGS_prefix);
  if (!s.ok()) {
    std::cerr << "down failed: " << s << "\n";
    return 1;
  }
  std::cout << "removed " << ns.size() << " namespaces" << (ns.empty() ? "" : ": ")
            << absl::StrJoin(ns, " ") << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("testbed_cli up|down --prefix=P [--clients=N --backends=M]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  if (argc != 2) {
    std::cerr << gflags::ProgramUsage() << "\n";
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "up") return Up();
  if (cmd == "down") return Down();
  std::cerr << "unknown command " << cmd << "\n" << gflags::ProgramUsage() << "\n";
  return 2;
}
