#include "lb/client_reset.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "lb/inet_csum.h"

namespace rematcher {

std::vector<uint8_t> ClientResetFrame(const rm_client& c, const uint8_t src_mac[6]) {
  const size_t l2 = c.vlan_tci ? 18 : 14;
  std::vector<uint8_t> f(l2 + 20 + 20, 0);
  memcpy(&f[0], c.mac, 6);
  memcpy(&f[6], src_mac, 6);
  if (c.vlan_tci) {
    f[12] = 0x81;
    f[13] = 0x00;
    memcpy(&f[14], &c.vlan_tci, 2);  // network order already
  }
  f[l2 - 2] = 0x08;  // IPv4
  f[l2 - 1] = 0x00;
  auto* ip = reinterpret_cast<iphdr*>(&f[l2]);
  FillIpv4ForTcp(ip, c.key.vip, c.key.client_ip, 20);
  auto* th = reinterpret_cast<tcphdr*>(&f[l2 + 20]);
  th->source = c.key.vip_port;
  th->dest = c.key.client_port;
  th->seq = htonl(c.s_nxt);
  th->ack_seq = htonl(c.c_nxt);
  th->doff = 5;
  th->rst = 1;
  th->ack = 1;
  th->check = TcpChecksum(ip, th, 20);
  return f;
}

ClientResets::~ClientResets() {
  if (fd_ >= 0) close(fd_);
}

absl::Status ClientResets::Open(int ifindex) {
  // Protocol 0: the socket only sends.
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "packet socket for client resets");
  ifreq ifr{};
  if (if_indextoname(ifindex, ifr.ifr_name) == nullptr || ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) {
    absl::Status st = absl::ErrnoToStatus(errno, absl::StrCat("MAC of interface ", ifindex));
    close(fd);
    return st;
  }
  memcpy(mac_, ifr.ifr_hwaddr.sa_data, 6);
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
  ifindex_ = ifindex;
  return absl::OkStatus();
}

void ClientResets::Send(const rm_client& c) {
  if (fd_ < 0) return;
  std::vector<uint8_t> f = ClientResetFrame(c, mac_);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = ifindex_;
  to.sll_halen = 6;
  memcpy(to.sll_addr, c.mac, 6);
  if (sendto(fd_, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) < 0) {
    send_errors_++;
    PLOG_EVERY_N(WARNING, 100) << "sending a client reset";
    return;
  }
  sent_++;
}

void ClientResets::Add(uint32_t id, const rm_client& c, absl::Time now) {
  Send(c);
  if (fd_ < 0 || pending() >= kMaxPending) return;
  q_[0].push_back({id, c.key, c.s_nxt, now + kResendAfter[0]});
}

bool ClientResets::SameConnection(const Pending& p, const rm_client& c) {
  return c.state == RM_C_CLOSED && (c.fin_flags & RM_FIN_B_RST) &&
         memcmp(&c.key, &p.key, sizeof(p.key)) == 0 && c.s_nxt == p.s_nxt;
}

void ClientResets::Run(absl::Time now,
                       absl::FunctionRef<absl::StatusOr<rm_client>(uint32_t)> lookup) {
  for (int stage = 0; stage < 2; stage++) {
    auto& q = q_[stage];
    while (!q.empty() && q.front().due <= now) {
      Pending p = q.front();
      q.pop_front();
      absl::StatusOr<rm_client> c = lookup(p.id);
      if (!c.ok() || !SameConnection(p, *c)) continue;
      Send(*c);
      if (stage == 0) {
        p.due = now + kResendAfter[1];
        q_[1].push_back(p);
      }
    }
  }
}

}  // namespace rematcher
