// The Internet checksum (RFC 1071) for the segments userspace builds itself:
// pooled-connection ACKs, probes and resets (pool.cc), and client resets
// (client_reset.cc).
#ifndef REMATCHER_LB_INET_CSUM_H_
#define REMATCHER_LB_INET_CSUM_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip.h>

#include <cstddef>
#include <cstdint>

namespace rematcher {

// 16-bit big-endian words of p[0, len) summed (an odd last byte padded).
inline uint64_t Sum16(const void* p, size_t len) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  uint64_t s = 0;
  for (size_t i = 0; i + 1 < len; i += 2) s += (b[i] << 8) | b[i + 1];
  if (len & 1) s += b[len - 1] << 8;
  return s;
}

// Folded to 16 bits, carries added back in.
inline uint16_t Fold(uint64_t s) {
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(s);
}

// An IPv4 header without options for a TCP segment of `tcp_len` bytes
// (header and payload): DF, TTL 64, its checksum filled in. Addresses in
// network order.
inline void FillIpv4ForTcp(iphdr* ip, uint32_t saddr, uint32_t daddr, size_t tcp_len) {
  ip->version = 4;
  ip->ihl = 5;
  ip->tot_len = htons(static_cast<uint16_t>(20 + tcp_len));
  ip->frag_off = htons(IP_DF);
  ip->ttl = 64;
  ip->protocol = IPPROTO_TCP;
  ip->saddr = saddr;
  ip->daddr = daddr;
  ip->check = 0;
  ip->check = htons(static_cast<uint16_t>(~Fold(Sum16(ip, 20))));
}

// The checksum field (network order) of the TCP segment at `tcp` (`tcp_len`
// bytes, its own checksum field zero) under header `ip`.
inline uint16_t TcpChecksum(const iphdr* ip, const void* tcp, size_t tcp_len) {
  uint64_t s = Sum16(tcp, tcp_len) + Sum16(&ip->saddr, 8) + IPPROTO_TCP + tcp_len;
  return htons(static_cast<uint16_t>(~Fold(s)));
}

}  // namespace rematcher

#endif  // REMATCHER_LB_INET_CSUM_H_
