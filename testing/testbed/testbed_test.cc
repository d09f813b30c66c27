// End-to-end checks of the namespace testbed: reachability, offload and XDP
// setup, a real TCP transfer with counters, and cleanup (normal and stale).
#include "testing/testbed/testbed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "testing/testbed/netns.h"
#include "testing/testbed/nstat.h"

namespace rematcher::testbed {
namespace {

#define SKIP_WITHOUT_TESTBED()                                           \
  do {                                                                   \
    absl::Status avail = Testbed::Available();                           \
    if (!avail.ok()) GTEST_SKIP() << "SKIPPED: " << avail.message();     \
  } while (0)

// Prefixes private to this test binary (the test is tagged exclusive).
constexpr char kPrefix[] = "rtbt";
constexpr char kStalePrefix[] = "rtbs";

sockaddr_in Addr(const std::string& ip, uint16_t port) {
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  return a;
}

// Bounded send/receive so a broken network fails the test instead of hanging.
void SetTimeouts(int fd) {
  timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

TEST(TestbedOptionsTest, RejectsBadPrefixes) {
  TestbedOptions o;
  o.prefix = "Bad_Prefix";
  EXPECT_FALSE(ValidateTestbedOptions(o).ok());
  o.prefix = "waytoolongprefix";
  EXPECT_FALSE(ValidateTestbedOptions(o).ok());
  o.prefix = "abcdefghijk";  // "abcdefghijk-c0" is 14 chars
  EXPECT_TRUE(ValidateTestbedOptions(o).ok());
  o.num_clients = 11;  // "abcdefghijk-c10" is 15, the limit (IFNAMSIZ 16 with NUL)
  EXPECT_TRUE(ValidateTestbedOptions(o).ok());
  o.num_clients = 101;  // "-c100" is one too many
  EXPECT_FALSE(ValidateTestbedOptions(o).ok());
}

class TestbedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_TESTBED();
    TestbedOptions o;
    o.prefix = kPrefix;
    o.num_clients = 2;
    o.num_backends = 2;
    absl::StatusOr<std::unique_ptr<Testbed>> tb = Testbed::Create(o);
    ASSERT_TRUE(tb.ok()) << tb.status();
    tb_ = std::move(*tb);
  }
  void TearDown() override {
    if (tb_ == nullptr) return;
    EXPECT_TRUE(tb_->Destroy().ok());
    EXPECT_TRUE(Testbed::ExistingNamespaces(kPrefix).empty());
    tb_.reset();
  }

  void Ping(const std::string& ns, const std::string& ip) {
    absl::StatusOr<std::string> out =
        tb_->Run(ns, {"ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", ip}, absl::Seconds(10));
    EXPECT_TRUE(out.ok()) << ns << " -> " << ip << ": " << out.status();
  }

  std::unique_ptr<Testbed> tb_;
};

TEST_F(TestbedTest, LayoutAndReachability) {
  std::vector<std::string> want = {"rtbt-b0", "rtbt-b1", "rtbt-c0", "rtbt-c1", "rtbt-lb", "rtbt-sw"};
  EXPECT_EQ(Testbed::ExistingNamespaces(kPrefix), want);
  Ping(tb_->client_ns(0), tb_->lb_ip());
  Ping(tb_->client_ns(0), tb_->vip());
  Ping(tb_->client_ns(1), tb_->backend_ip(1));
  Ping(tb_->backend_ns(0), tb_->client_ip(1));
  Ping(tb_->lb_ns(), tb_->backend_ip(0));

  absl::StatusOr<std::string> addrs = tb_->Run(tb_->lb_ns(), {"ip", "-4", "-o", "addr", "show", "dev", "eth0"});
  ASSERT_TRUE(addrs.ok()) << addrs.status();
  EXPECT_TRUE(absl::StrContains(*addrs, "198.18.0.2/16")) << *addrs;
  EXPECT_TRUE(absl::StrContains(*addrs, "198.18.0.10/32")) << *addrs;

  absl::StatusOr<std::string> link = tb_->Run(tb_->client_ns(1), {"ip", "-o", "link", "show", "dev", "eth0"});
  ASSERT_TRUE(link.ok());
  EXPECT_TRUE(absl::StrContains(*link, Testbed::MacString(tb_->client_mac(1)))) << *link;
  EXPECT_TRUE(absl::StrContains(*link, "02:00:00:00:01:02")) << *link;
  EXPECT_TRUE(tb_->lb_ifindex().ok());
}

TEST_F(TestbedTest, OffloadSysctlsAndXdp) {
  auto check_tx_off = [&](const std::string& ns, const std::string& dev) {
    absl::StatusOr<std::string> k = tb_->Run(ns, {"ethtool", "-k", dev});
    ASSERT_TRUE(k.ok()) << k.status();
    EXPECT_TRUE(absl::StrContains(*k, "tx-checksumming: off")) << ns << " " << dev;
  };
  check_tx_off(tb_->lb_ns(), "eth0");
  check_tx_off(tb_->client_ns(1), "eth0");
  check_tx_off(tb_->backend_ns(1), "eth0");
  check_tx_off(tb_->switch_ns(), tb_->lb_peer_ifname());
  check_tx_off(tb_->switch_ns(), tb_->client_peer_ifname(0));
  check_tx_off(tb_->switch_ns(), tb_->backend_peer_ifname(1));

  absl::StatusOr<std::string> peer =
      tb_->Run(tb_->switch_ns(), {"ip", "-d", "link", "show", "dev", tb_->lb_peer_ifname()});
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_TRUE(absl::StrContains(*peer, "xdp")) << *peer;
  EXPECT_TRUE(absl::StrContains(*peer, "prog/xdp")) << *peer;
  EXPECT_FALSE(absl::StrContains(*peer, "xdpgeneric")) << "must be native: " << *peer;
  absl::StatusOr<std::string> other =
      tb_->Run(tb_->switch_ns(), {"ip", "-d", "link", "show", "dev", tb_->client_peer_ifname(0)});
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(absl::StrContains(*other, "prog/xdp")) << *other;

  for (const std::string& ns : tb_->all_namespaces()) {
    absl::StatusOr<std::string> v6 = tb_->Run(ns, {"sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"});
    ASSERT_TRUE(v6.ok()) << v6.status();
    EXPECT_EQ(*v6, "1\n") << ns;
    absl::StatusOr<std::string> ecn = tb_->Run(ns, {"sysctl", "-n", "net.ipv4.tcp_ecn"});
    ASSERT_TRUE(ecn.ok());
    EXPECT_EQ(*ecn, "2\n") << ns;
  }
  absl::StatusOr<std::string> v6addr = tb_->Run(tb_->lb_ns(), {"ip", "-6", "addr", "show"});
  ASSERT_TRUE(v6addr.ok());
  EXPECT_FALSE(absl::StrContains(*v6addr, "inet6")) << *v6addr;
}

TEST_F(TestbedTest, TcpTransferWithCounters) {
  const uint16_t port = 9000;
  absl::StatusOr<NstatCounters> c_before = tb_->Nstat(tb_->client_ns(0));
  absl::StatusOr<NstatCounters> b_before = tb_->Nstat(tb_->backend_ns(0));
  ASSERT_TRUE(c_before.ok()) << c_before.status();
  ASSERT_TRUE(b_before.ok()) << b_before.status();

  // Sockets made inside each namespace, used from this process.
  absl::StatusOr<int> lfd = SocketInNetns(tb_->backend_ns(0), AF_INET, SOCK_STREAM);
  ASSERT_TRUE(lfd.ok()) << lfd.status();
  sockaddr_in la = Addr(tb_->backend_ip(0), port);
  ASSERT_EQ(bind(*lfd, reinterpret_cast<sockaddr*>(&la), sizeof(la)), 0) << strerror(errno);
  ASSERT_EQ(listen(*lfd, 4), 0);

  constexpr size_t kBytes = 4 << 20;
  std::vector<uint8_t> data(kBytes);
  for (size_t i = 0; i < kBytes; ++i) data[i] = static_cast<uint8_t>(i * 2654435761u >> 24);
  std::vector<uint8_t> got;
  std::thread server([&] {
    pollfd p = {*lfd, POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) return;
    int fd = accept(*lfd, nullptr, nullptr);
    if (fd < 0) return;
    SetTimeouts(fd);
    uint8_t buf[65536];
    while (true) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      got.insert(got.end(), buf, buf + n);
    }
    close(fd);
  });

  absl::StatusOr<int> cfd = SocketInNetns(tb_->client_ns(0), AF_INET, SOCK_STREAM);
  ASSERT_TRUE(cfd.ok()) << cfd.status();
  SetTimeouts(*cfd);
  sockaddr_in ca = Addr(tb_->backend_ip(0), port);
  bool connected = connect(*cfd, reinterpret_cast<sockaddr*>(&ca), sizeof(ca)) == 0;
  EXPECT_TRUE(connected) << strerror(errno);
  size_t sent = 0;
  while (connected && sent < kBytes) {
    ssize_t n = send(*cfd, data.data() + sent, kBytes - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += n;
  }
  close(*cfd);
  server.join();
  close(*lfd);
  EXPECT_EQ(sent, kBytes);
  EXPECT_TRUE(got == data) << "received " << got.size() << " bytes, content differs or short";

  absl::StatusOr<NstatCounters> c_after = tb_->Nstat(tb_->client_ns(0));
  absl::StatusOr<NstatCounters> b_after = tb_->Nstat(tb_->backend_ns(0));
  ASSERT_TRUE(c_after.ok() && b_after.ok());
  NstatDelta cd = NstatDiff(*c_before, *c_after);
  NstatDelta bd = NstatDiff(*b_before, *b_after);
  PrintNstatDiff(std::cout, "client0", cd);
  EXPECT_EQ(cd["TcpActiveOpens"], 1);
  EXPECT_EQ(bd["TcpPassiveOpens"], 1);
  EXPECT_GE(cd["TcpOutSegs"], static_cast<int64_t>(kBytes / 65536));
  EXPECT_EQ(bd["TcpInCsumErrors"], 0);
  EXPECT_EQ(cd["TcpInCsumErrors"], 0);
}

TEST_F(TestbedTest, SpawnedServerAndCurl) {
  // A real server process in a backend namespace, a real client in a client's.
  std::string dir = ::testing::TempDir() + "/www";
  ASSERT_TRUE(RunOk({"mkdir", "-p", dir}, absl::Seconds(5)).ok());
  std::string body(100000, 'x');
  for (size_t i = 0; i < body.size(); i += 97) body[i] = 'a' + (i % 26);
  std::ofstream(dir + "/blob") << body;

  SpawnOptions so;
  so.stderr_path = ::testing::TempDir() + "/http_server.err";
  absl::StatusOr<Process> server =
      tb_->Spawn(tb_->backend_ns(1), {"/usr/bin/python3", "-m", "http.server", "8081", "--bind",
                                      tb_->backend_ip(1), "--directory", dir},
                 so);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::Status up = tb_->WaitForTcpListener(tb_->client_ns(1), tb_->backend_ip(1), 8081, absl::Seconds(10));
  ASSERT_TRUE(up.ok()) << up;
  absl::StatusOr<std::string> out = tb_->Run(
      tb_->client_ns(1),
      {"curl", "-sS", "--max-time", "10", absl::StrCat("http://", tb_->backend_ip(1), ":8081/blob")},
      absl::Seconds(15));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(*out == body) << "got " << out->size() << " bytes";
  EXPECT_TRUE(server->Running());
  absl::StatusOr<int> code = server->Stop();
  EXPECT_TRUE(code.ok()) << code.status();
}

TEST(TestbedStaleTest, StaleNamespacesAreRemovedAtCreation) {
  SKIP_WITHOUT_TESTBED();
  TestbedOptions o;
  o.prefix = kStalePrefix;
  o.num_clients = 3;
  o.num_backends = 1;
  {
    absl::StatusOr<std::unique_ptr<Testbed>> crashed = Testbed::Create(o);
    ASSERT_TRUE(crashed.ok()) << crashed.status();
    (*crashed)->Release();  // as if the process had died without cleanup
  }
  ASSERT_EQ(Testbed::ExistingNamespaces(kStalePrefix).size(), 6u);
  // A look-alike of another prefix must survive.
  ASSERT_TRUE(CreateNetns("rtbs2-sw").ok());

  o.num_clients = 1;  // fewer clients: the stale rtbs-c1, rtbs-c2 must go too
  absl::StatusOr<std::unique_ptr<Testbed>> tb = Testbed::Create(o);
  ASSERT_TRUE(tb.ok()) << tb.status();
  std::vector<std::string> want = {"rtbs-b0", "rtbs-c0", "rtbs-lb", "rtbs-sw"};
  EXPECT_EQ(Testbed::ExistingNamespaces(kStalePrefix), want);
  absl::StatusOr<std::string> ping = (*tb)->Run(
      (*tb)->client_ns(0), {"ping", "-c", "1", "-W", "2", "-q", (*tb)->lb_ip()}, absl::Seconds(5));
  EXPECT_TRUE(ping.ok()) << ping.status();
  tb->reset();
  EXPECT_TRUE(Testbed::ExistingNamespaces(kStalePrefix).empty());
  std::vector<std::string> all = ListNetns();
  EXPECT_NE(std::find(all.begin(), all.end(), "rtbs2-sw"), all.end());
  EXPECT_TRUE(DeleteNetns("rtbs2-sw").ok());
}

TEST(TestbedStaleTest, EmergencyCleanupRemovesLiveTestbeds) {
  SKIP_WITHOUT_TESTBED();
  TestbedOptions o;
  o.prefix = kStalePrefix;
  o.num_clients = 1;
  o.num_backends = 1;
  absl::StatusOr<std::unique_ptr<Testbed>> tb = Testbed::Create(o);
  ASSERT_TRUE(tb.ok()) << tb.status();
  absl::StatusOr<Process> sleeper = (*tb)->Spawn((*tb)->lb_ns(), {"sleep", "30"});
  ASSERT_TRUE(sleeper.ok());
  Testbed::EmergencyCleanup();  // what a SIGINT handler would call
  EXPECT_TRUE(Testbed::ExistingNamespaces(kStalePrefix).empty());
  absl::StatusOr<int> code = sleeper->Wait(absl::Seconds(5));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, -SIGKILL);
}

}  // namespace
}  // namespace rematcher::testbed
