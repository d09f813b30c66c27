#include "lb/sandbox.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"

namespace rematcher {

absl::StatusOr<std::string> FindRunfile(const std::string& argv0, const std::string& rel) {
  std::vector<std::string> roots;
  if (const char* d = getenv("RUNFILES_DIR")) roots.push_back(d);
  if (const char* d = getenv("TEST_SRCDIR")) roots.push_back(d);
  roots.push_back(argv0 + ".runfiles");
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = 0;
    roots.push_back(std::string(self) + ".runfiles");
  }
  std::vector<std::string> tried;
  for (const std::string& r : roots) {
    for (const std::string& p : {r + "/rematcher/" + rel, r + "/" + rel}) {
      tried.push_back(p);
      if (access(p.c_str(), X_OK) == 0 || access(p.c_str(), R_OK) == 0) return p;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("cannot find ", rel, " (tried ", absl::StrJoin(tried, ", "), ")"));
}

absl::StatusOr<std::unique_ptr<Sandbox>> Sandbox::Create(const SandboxOptions& opts) {
  std::unique_ptr<Sandbox> sb(new Sandbox(opts));
  if (auto st = testbed::Testbed::Available(); !st.ok())
    return absl::FailedPreconditionError(
        absl::StrCat("the sandbox needs root and network namespaces: ", st.message()));
  testbed::TestbedOptions to;
  to.prefix = opts.prefix;
  to.num_clients = opts.num_clients;
  to.num_backends = opts.num_backends;
  auto tb = testbed::Testbed::Create(to);
  if (!tb.ok()) return tb.status();
  sb->tb_ = std::move(*tb);
  // Clients that open connection after connection (churn loads from these
  // namespaces) would otherwise run out of ephemeral ports while the old
  // ones sit in TIME_WAIT (60 s), and connect() then spends milliseconds
  // searching for a free one: a client-side slowdown that looks like the
  // LB's. As the benchmark's client namespace does.
  for (int i = 0; i < opts.num_clients; i++) {
    auto st = sb->tb_->Run(sb->tb_->client_ns(i),
                           {"sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
                            "net.ipv4.ip_local_port_range=1024 65535"});
    if (!st.ok()) return st.status();
  }
  auto backend_bin = FindRunfile(opts.argv0, "testing/backend/backend");
  if (!backend_bin.ok()) return backend_bin.status();
  for (int i = 0; i < opts.num_backends; i++) {
    bool slow = opts.num_backends > 1 && i == opts.num_backends - 1;
    int us = slow ? opts.slow_service_us : opts.fast_service_us;
    std::string name = absl::StrCat("b", i, slow ? "-slow" : "");
    auto p = sb->tb_->Spawn(sb->tb_->backend_ns(i),
                            {*backend_bin, "--listen=0.0.0.0:8080", "--name=" + name,
                             absl::StrCat("--service_us=", us)});
    if (!p.ok()) return p.status();
    sb->procs_.push_back(std::move(*p));
  }
  for (int i = 0; i < opts.num_backends; i++) {
    if (auto st = sb->tb_->WaitForTcpListener(sb->tb_->backend_ns(i), sb->tb_->backend_ip(i),
                                              8080, absl::Seconds(10));
        !st.ok())
      return st;
  }
  return sb;
}

Sandbox::~Sandbox() {
  procs_.clear();  // stop load and backends first
  in_lb_.reset();  // leave the LB namespace before it is deleted
  if (tb_) {
    if (auto st = tb_->Destroy(); !st.ok()) LOG(ERROR) << "sandbox cleanup: " << st;
  }
}

absl::Status Sandbox::Configure(CoreOptions* core) {
  core->ifname = tb_->lb_ifname();
  in_addr a;
  inet_pton(AF_INET, tb_->vip().c_str(), &a);
  core->vip = a.s_addr;
  inet_pton(AF_INET, tb_->lb_ip().c_str(), &a);
  core->lb_ip = a.s_addr;
  core->backends.clear();
  for (int i = 0; i < opts_.num_backends; i++) {
    inet_pton(AF_INET, tb_->backend_ip(i).c_str(), &a);
    BackendSpec b;
    b.ip = a.s_addr;
    b.port = htons(8080);
    core->backends.push_back(b);
  }
  return absl::OkStatus();
}

absl::Status Sandbox::EnterLb() {
  auto s = testbed::ScopedNetns::Enter(tb_->lb_ns());
  if (!s.ok()) return s.status();
  in_lb_.emplace(std::move(*s));
  return absl::OkStatus();
}

absl::Status Sandbox::StartLoad(int connections, int duration_s) {
  auto loadgen = FindRunfile(opts_.argv0, "testing/loadgen/loadgen");
  if (!loadgen.ok()) return loadgen.status();
  auto p = tb_->Spawn(tb_->client_ns(0),
                      {*loadgen, "--target=" + tb_->vip() + ":8080",
                       absl::StrCat("--connections=", connections), "--mode=closed",
                       absl::StrCat("--duration_s=", duration_s),
                       absl::StrCat("--max_time_s=", duration_s + 30), "--sizes=100,1000,20000",
                       "--allow_errors", "--timeout_ms=10000"},
                      {"/dev/null", "/tmp/rematcher-sandbox-loadgen.err"});
  if (!p.ok()) return p.status();
  procs_.push_back(std::move(*p));
  return absl::OkStatus();
}

void Sandbox::PrintHowTo() const {
  std::string vip = tb_->vip();
  printf(
      "\nrematcher sandbox is up: VIP %s:8080 in namespace %s, %d backends (the last one is "
      "%dx slower),\n"
      "clients in namespaces %s-c0..%s-c%d. Send traffic from another terminal:\n"
      "  ip netns exec %s curl -s http://%s:8080/r?size=100 -D - -o /dev/null\n"
      "  ip netns exec %s wrk -t1 -c16 -d10s http://%s:8080/r?size=100\n"
      "Ctrl-C removes everything this sandbox made.\n\n",
      vip.c_str(), tb_->lb_ns().c_str(), opts_.num_backends,
      opts_.slow_service_us / std::max(1, opts_.fast_service_us), opts_.prefix.c_str(),
      opts_.prefix.c_str(), opts_.num_clients - 1, tb_->client_ns(opts_.num_clients > 1 ? 1 : 0).c_str(),
      vip.c_str(), tb_->client_ns(opts_.num_clients > 1 ? 1 : 0).c_str(), vip.c_str());
  fflush(stdout);
}

}  // namespace rematcher
