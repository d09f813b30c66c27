#include "lb/client_reset.h"

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <iostream>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "lb/inet_csum.h"

namespace rematcher {
namespace {

rm_client ResetClient() {
  rm_client c{};
  c.state = RM_C_CLOSED;
  c.fin_flags = RM_FIN_B_RST;
  inet_pton(AF_INET, "198.18.1.7", &c.key.client_ip);
  inet_pton(AF_INET, "198.18.0.10", &c.key.vip);
  c.key.client_port = htons(40007);
  c.key.vip_port = htons(8080);
  const uint8_t mac[6] = {0x02, 0, 0, 0, 1, 7};
  memcpy(c.mac, mac, 6);
  c.s_nxt = 0xfffffff0u;
  c.c_nxt = 0x12345678u;
  return c;
}

struct Parsed {
  bool ok = false;
  uint16_t vlan = 0;
  const iphdr* ip = nullptr;
  const tcphdr* th = nullptr;
};

Parsed Parse(const std::vector<uint8_t>& f) {
  Parsed p;
  size_t l2 = 14;
  if (f.size() >= 18 && f[12] == 0x81 && f[13] == 0x00) {
    p.vlan = (f[14] << 8) | f[15];
    l2 = 18;
  }
  if (f.size() != l2 + 40 || f[l2 - 2] != 0x08 || f[l2 - 1] != 0x00) return p;
  p.ip = reinterpret_cast<const iphdr*>(&f[l2]);
  p.th = reinterpret_cast<const tcphdr*>(&f[l2 + 20]);
  p.ok = true;
  return p;
}

TEST(ClientResetFrame, IsAnRstFromTheVipWithGoodChecksums) {
  rm_client c = ResetClient();
  const uint8_t lb_mac[6] = {0x02, 0, 0, 0, 0, 0x10};
  for (uint16_t tci : {uint16_t{0}, uint16_t{htons(42)}}) {
    c.vlan_tci = tci;
    std::vector<uint8_t> f = ClientResetFrame(c, lb_mac);
    Parsed p = Parse(f);
    ASSERT_TRUE(p.ok) << "tci " << tci;
    EXPECT_EQ(memcmp(&f[0], c.mac, 6), 0) << "to the MAC the client's segments came from";
    EXPECT_EQ(memcmp(&f[6], lb_mac, 6), 0);
    EXPECT_EQ(p.vlan, tci ? 42 : 0);
    EXPECT_EQ(p.ip->version, 4);
    EXPECT_EQ(p.ip->ihl, 5);
    EXPECT_EQ(ntohs(p.ip->tot_len), 40);
    EXPECT_EQ(p.ip->protocol, IPPROTO_TCP);
    EXPECT_EQ(p.ip->saddr, c.key.vip);
    EXPECT_EQ(p.ip->daddr, c.key.client_ip);
    EXPECT_EQ(Fold(Sum16(p.ip, 20)), 0xffff) << "IP checksum";
    EXPECT_EQ(p.th->source, c.key.vip_port);
    EXPECT_EQ(p.th->dest, c.key.client_port);
    EXPECT_EQ(ntohl(p.th->seq), c.s_nxt) << "what the client has when nothing was lost";
    EXPECT_EQ(ntohl(p.th->ack_seq), c.c_nxt);
    EXPECT_TRUE(p.th->rst);
    EXPECT_TRUE(p.th->ack);
    EXPECT_FALSE(p.th->syn || p.th->fin || p.th->psh);
    EXPECT_EQ(p.th->doff, 5);
    uint64_t s = Sum16(p.th, 20) + Sum16(&p.ip->saddr, 8) + IPPROTO_TCP + 20;
    EXPECT_EQ(Fold(s), 0xffff) << "TCP checksum";
  }
}

// The schedule, on real packet sockets: in a network namespace of its own
// (only its loopback, no route anywhere), a capture socket on lo sees every
// frame sent.
class ClientResetsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (a network namespace, packet sockets)";
    ASSERT_EQ(unshare(CLONE_NEWNET), 0) << strerror(errno);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    ASSERT_GE(s, 0);
    ifreq ifr{};
    strcpy(ifr.ifr_name, "lo");
    ASSERT_EQ(ioctl(s, SIOCGIFFLAGS, &ifr), 0);
    ifr.ifr_flags |= IFF_UP;
    ASSERT_EQ(ioctl(s, SIOCSIFFLAGS, &ifr), 0);
    close(s);
    lo_ = if_nametoindex("lo");
    cap_ = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    ASSERT_GE(cap_, 0);
    sockaddr_ll a{};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(ETH_P_ALL);
    a.sll_ifindex = lo_;
    ASSERT_EQ(bind(cap_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_TRUE(resets_.Open(lo_).ok());
  }
  void TearDown() override {
    if (cap_ >= 0) close(cap_);
  }

  // RST frames sent (seen going out of lo) within `wait`.
  int Sent(absl::Duration wait = absl::Milliseconds(50)) {
    int n = 0;
    absl::Time until = absl::Now() + wait;
    for (;;) {
      int ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(until - absl::Now()));
      pollfd pfd{cap_, POLLIN, 0};
      if (poll(&pfd, 1, ms) <= 0) return n;
      uint8_t buf[256];
      sockaddr_ll from{};
      socklen_t len = sizeof(from);
      ssize_t got = recvfrom(cap_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (got <= 0 || from.sll_pkttype != PACKET_OUTGOING) continue;
      Parsed p = Parse(std::vector<uint8_t>(buf, buf + got));
      if (p.ok && p.th->rst && p.th->dest == htons(40007)) n++;
    }
  }

  int lo_ = 0, cap_ = -1;
  ClientResets resets_;
};

TEST_F(ClientResetsTest, AtOnceThenTwiceWithinTheLinger) {
  rm_client c = ResetClient();
  absl::Time t0 = absl::FromUnixSeconds(1000);
  auto same = [&](uint32_t id) -> absl::StatusOr<rm_client> {
    EXPECT_EQ(id, 7u);
    return c;
  };
  resets_.Add(7, c, t0);
  EXPECT_EQ(Sent(), 1) << "at once";
  EXPECT_EQ(resets_.pending(), 1u);
  resets_.Run(t0 + absl::Milliseconds(100), same);
  EXPECT_EQ(Sent(), 0) << "not yet";
  resets_.Run(t0 + absl::Milliseconds(250), same);
  EXPECT_EQ(Sent(), 1) << "first resend";
  resets_.Run(t0 + absl::Milliseconds(1000), same);
  EXPECT_EQ(Sent(), 0) << "not yet";
  resets_.Run(t0 + absl::Milliseconds(1250), same);
  EXPECT_EQ(Sent(), 1) << "second resend";
  EXPECT_EQ(resets_.pending(), 0u);
  resets_.Run(t0 + absl::Seconds(10), same);
  EXPECT_EQ(Sent(), 0) << "no more";
  EXPECT_EQ(resets_.sent(), 3u);
  EXPECT_EQ(resets_.send_errors(), 0u);
  // Every resend is within the record's linger (CoreOptions::closed_linger).
  EXPECT_LT(ClientResets::kResendAfter[0] + ClientResets::kResendAfter[1], absl::Seconds(2));
}

// A resend goes only while the record is that same closed connection.
TEST_F(ClientResetsTest, OnlyToTheSameClosedConnection) {
  const rm_client c = ResetClient();
  absl::Time t0 = absl::FromUnixSeconds(1000);
  struct Case {
    const char* what;
    std::function<void(rm_client&)> change;
    bool gone;
  } cases[] = {
      {"freed", nullptr, true},
      {"the port reconnected (a new connection on the record)",
       [](rm_client& r) { r.state = RM_C_ESTABLISHED; r.fin_flags = 0; }, false},
      {"closed some other way", [](rm_client& r) { r.fin_flags = RM_FIN_C; }, false},
      {"another client", [](rm_client& r) { r.key.client_port = htons(40008); }, false},
      {"another sequence space", [](rm_client& r) { r.s_nxt += 100000; }, false},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    resets_.Add(7, c, t0);
    EXPECT_EQ(Sent(), 1);
    rm_client now = c;
    if (k.change) k.change(now);
    resets_.Run(t0 + absl::Seconds(5), [&](uint32_t) -> absl::StatusOr<rm_client> {
      if (k.gone) return absl::NotFoundError("freed");
      return now;
    });
    EXPECT_EQ(Sent(), 0);
    EXPECT_EQ(resets_.pending(), 0u);
  }
}

}  // namespace
}  // namespace rematcher
