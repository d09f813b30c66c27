// The Internet checksum (RFC 1071) for the segments userspace builds itself:
// pooled-connection ACKs, probes and resets (pool.cc), and client resets
// (client_reset.cc).
#ifndef REMATCHER_LB_INET_CSUM_H_
#define REMATCHER_LB_INET_CSUM_H_

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

}  // namespace rematcher

#endif  // REMATCHER_LB_INET_CSUM_H_
