// Packet builder and parser for datapath tests.
//
// Owns: building Ethernet frames (optional 802.1Q / 802.1ad tags) carrying
// IPv4/IPv6 + TCP/UDP/ICMP, or ARP, byte by byte; deliberately malformed
// variants; and parsing frames back into fields a test can compare.
//
// Contract:
// - Checksums are computed independently of the datapath code: a full
//   one's-complement sum over the bytes actually laid out (RFC 1071), never an
//   incremental update. A malformation (bad IHL, bad data offset, wrong total
//   length, truncation) changes only what it names: checksums stay consistent
//   with the bytes that were laid out, unless Bad*Checksum() is asked for.
// - Build() never fails for malformed input: invalid addresses in the string
//   overloads are programmer errors (CHECK).
// - Multi-byte fields are given in host order and written in network order.
// - TCP options are laid out in the order they were added and padded to a
//   4-byte boundary with zero bytes (EOL), as RFC 793 prescribes.
#ifndef REMATCHER_TESTING_PACKET_PACKET_H_
#define REMATCHER_TESTING_PACKET_PACKET_H_

#include <array>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace rematcher::packet {

using Bytes = std::vector<uint8_t>;
using MacAddr = std::array<uint8_t, 6>;
using Ipv6Addr = std::array<uint8_t, 16>;

// "02:00:00:00:00:01" -> MacAddr. CHECK-fails on malformed text.
MacAddr ParseMac(absl::string_view text);
std::string MacToString(const MacAddr& mac);
// "198.18.0.2" -> host-order uint32_t. CHECK-fails on malformed text.
uint32_t ParseIpv4(absl::string_view text);
std::string Ipv4ToString(uint32_t host_order);
Ipv6Addr ParseIpv6(absl::string_view text);
std::string Ipv6ToString(const Ipv6Addr& addr);

constexpr uint16_t kEthTypeIpv4 = 0x0800;
constexpr uint16_t kEthTypeArp = 0x0806;
constexpr uint16_t kEthTypeIpv6 = 0x86DD;
constexpr uint16_t kEthTypeVlan = 0x8100;    // 802.1Q C-tag
constexpr uint16_t kEthTypeQinQ = 0x88A8;    // 802.1ad S-tag
constexpr uint8_t kIpProtoIcmp = 1;
constexpr uint8_t kIpProtoTcp = 6;
constexpr uint8_t kIpProtoUdp = 17;

// TCP flag bits as they sit in byte 13 of the header.
enum TcpFlag : uint8_t {
  FIN = 0x01,
  SYN = 0x02,
  RST = 0x04,
  PSH = 0x08,
  ACK = 0x10,
  URG = 0x20,
  ECE = 0x40,
  CWR = 0x80,
};

enum TcpOptionKind : uint8_t {
  kOptEol = 0,
  kOptNop = 1,
  kOptMss = 2,
  kOptWindowScale = 3,
  kOptSackPermitted = 4,
  kOptSack = 5,
  kOptTimestamps = 8,
  kOptMd5 = 19,
  kOptTcpAo = 29,
};

struct SackBlock {
  uint32_t left = 0;
  uint32_t right = 0;
  bool operator==(const SackBlock& o) const { return left == o.left && right == o.right; }
};

// One's-complement sum helpers (RFC 1071), exposed so tests can check other
// tools' arithmetic. Sum32 adds 16-bit big-endian words; Fold folds and inverts.
uint32_t Sum32(absl::Span<const uint8_t> bytes, uint32_t initial = 0);
uint16_t FoldComplement(uint32_t sum);

class PacketBuilder {
 public:
  PacketBuilder() = default;

  // ---- L2
  PacketBuilder& Eth(const MacAddr& src, const MacAddr& dst);
  PacketBuilder& Eth(absl::string_view src, absl::string_view dst);
  // Appends a tag; the first call is the outermost. With two tags and no
  // explicit TPID the outer one is 802.1ad (0x88A8), the inner 802.1Q.
  PacketBuilder& Vlan(uint16_t vid, uint8_t pcp = 0, uint16_t tpid = 0);
  // Overrides the ethertype after the tags (default: from the L3 chosen).
  PacketBuilder& EtherType(uint16_t type);

  // ---- IPv4 (defaults: TTL 64, id 0, TOS 0, DF set)
  PacketBuilder& Ipv4(uint32_t src, uint32_t dst);  // host order
  PacketBuilder& Ipv4(absl::string_view src, absl::string_view dst);
  PacketBuilder& Ttl(uint8_t ttl);
  PacketBuilder& Id(uint16_t id);
  PacketBuilder& Tos(uint8_t tos);
  PacketBuilder& DontFragment(bool df);
  PacketBuilder& Ipv4Options(Bytes options);  // padded with EOL to 4 bytes
  PacketBuilder& IpProtocol(uint8_t proto);   // override the protocol field
  // Fragments: MF flag and offset in 8-byte units.
  PacketBuilder& MoreFragments(bool mf = true);
  PacketBuilder& FragmentOffset(uint16_t offset_8byte_units);

  // ---- IPv6 (minimal: fixed header, no extension headers; hop limit = Ttl())
  PacketBuilder& Ipv6(const Ipv6Addr& src, const Ipv6Addr& dst);
  PacketBuilder& Ipv6(absl::string_view src, absl::string_view dst);

  // ---- ARP (Ethernet/IPv4). op: 1 request, 2 reply.
  PacketBuilder& Arp(uint16_t op, const MacAddr& sha, uint32_t spa, const MacAddr& tha,
                     uint32_t tpa);

  // ---- TCP (defaults: seq 0, ack 0, flags 0, window 65535)
  PacketBuilder& Tcp(uint16_t sport, uint16_t dport);
  PacketBuilder& Seq(uint32_t seq);
  PacketBuilder& Ack(uint32_t ack);
  PacketBuilder& Flags(uint8_t flags);
  PacketBuilder& Window(uint16_t window);
  PacketBuilder& UrgentPointer(uint16_t urg);
  PacketBuilder& Mss(uint16_t mss);
  PacketBuilder& WindowScale(uint8_t shift);
  PacketBuilder& SackPermitted();
  PacketBuilder& Timestamps(uint32_t val, uint32_t ecr);
  PacketBuilder& Sack(const std::vector<SackBlock>& blocks);
  PacketBuilder& Nop();
  PacketBuilder& Eol();
  PacketBuilder& RawOptions(const Bytes& bytes);
  // Writes kind, declared_len, body verbatim: a zero length, a length longer
  // than the body, or one running past the header are all expressible.
  PacketBuilder& OptionWithLength(uint8_t kind, uint8_t declared_len, const Bytes& body = {});

  // ---- UDP and ICMP echo
  PacketBuilder& Udp(uint16_t sport, uint16_t dport);
  PacketBuilder& Icmp(uint8_t type, uint8_t code, uint16_t id = 0, uint16_t seq = 0);

  PacketBuilder& Payload(Bytes payload);
  PacketBuilder& Payload(absl::string_view payload);

  // ---- Malformations (applied after layout; checksums cover the real bytes)
  PacketBuilder& Ipv4Ihl(uint8_t ihl_words);           // header length field only
  PacketBuilder& Ipv4TotalLength(uint16_t total_len);  // total length field only
  PacketBuilder& TcpDataOffset(uint8_t words);         // data offset field only
  PacketBuilder& BadIpv4Checksum();                    // correct value ^ 0xFFFF... +1
  PacketBuilder& BadL4Checksum();                      // TCP/UDP/ICMP checksum wrong
  PacketBuilder& UdpZeroChecksum();                    // IPv4 "no checksum"
  PacketBuilder& TruncateTo(size_t bytes);             // cut the frame last

  Bytes Build() const;

 private:
  enum class L3 { kNone, kIpv4, kIpv6, kArp };
  enum class L4 { kNone, kTcp, kUdp, kIcmp };
  struct Tag {
    uint16_t tpid;
    uint16_t vid;
    uint8_t pcp;
  };

  Bytes BuildL4(uint8_t* proto_out) const;

  MacAddr eth_src_{};
  MacAddr eth_dst_{};
  std::vector<Tag> tags_;
  std::optional<uint16_t> ethertype_;

  L3 l3_ = L3::kNone;
  uint32_t ip_src_ = 0, ip_dst_ = 0;
  Ipv6Addr ip6_src_{}, ip6_dst_{};
  uint8_t ttl_ = 64;
  uint16_t id_ = 0;
  uint8_t tos_ = 0;
  bool df_ = true;
  bool mf_ = false;
  uint16_t frag_off_ = 0;
  Bytes ip_options_;
  std::optional<uint8_t> ip_proto_;
  uint16_t arp_op_ = 0;
  MacAddr arp_sha_{}, arp_tha_{};
  uint32_t arp_spa_ = 0, arp_tpa_ = 0;

  L4 l4_ = L4::kNone;
  uint16_t sport_ = 0, dport_ = 0;
  uint32_t seq_ = 0, ack_ = 0;
  uint8_t flags_ = 0;
  uint16_t window_ = 65535;
  uint16_t urg_ = 0;
  Bytes tcp_options_;
  uint8_t icmp_type_ = 0, icmp_code_ = 0;
  uint16_t icmp_id_ = 0, icmp_seq_ = 0;
  Bytes payload_;

  std::optional<uint8_t> ihl_override_;
  std::optional<uint16_t> total_len_override_;
  std::optional<uint8_t> doff_override_;
  bool bad_ip_csum_ = false;
  bool bad_l4_csum_ = false;
  bool udp_zero_csum_ = false;
  std::optional<size_t> truncate_to_;
};

// ---------------------------------------------------------------- parser

struct VlanTag {
  uint16_t tpid = 0;
  uint16_t tci = 0;
  uint16_t vid() const { return tci & 0x0FFF; }
  uint8_t pcp() const { return tci >> 13; }
};

struct EthHeader {
  MacAddr dst{};
  MacAddr src{};
  uint16_t ethertype = 0;  // the one after any VLAN tags
};

struct Ipv4Header {
  uint8_t version = 0;
  uint8_t ihl = 0;  // words, as in the packet
  uint8_t tos = 0;
  uint16_t total_length = 0;
  uint16_t id = 0;
  bool df = false;
  bool mf = false;
  uint16_t frag_offset = 0;  // 8-byte units
  uint8_t ttl = 0;
  uint8_t protocol = 0;
  uint16_t checksum = 0;
  uint32_t src = 0;  // host order
  uint32_t dst = 0;
  Bytes options;
};

struct Ipv6Header {
  uint8_t traffic_class = 0;
  uint32_t flow_label = 0;
  uint16_t payload_length = 0;
  uint8_t next_header = 0;
  uint8_t hop_limit = 0;
  Ipv6Addr src{};
  Ipv6Addr dst{};
};

struct TcpOption {
  uint8_t kind = 0;
  Bytes raw;  // the whole option: kind, length (if any), body
};

struct TcpHeader {
  uint16_t sport = 0;
  uint16_t dport = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;
  uint8_t data_offset = 0;  // words, as in the packet
  uint8_t flags = 0;
  uint16_t window = 0;
  uint16_t checksum = 0;
  uint16_t urgent = 0;
  std::vector<TcpOption> options;  // in wire order; EOL ends the list
  bool options_malformed = false;  // zero/short length or running past the header
  // Decoded, when present and well-formed (last occurrence wins).
  std::optional<uint16_t> mss;
  std::optional<uint8_t> window_scale;
  bool sack_permitted = false;
  std::optional<std::pair<uint32_t, uint32_t>> timestamps;  // {val, ecr}
  std::vector<SackBlock> sack;
};

struct UdpHeader {
  uint16_t sport = 0, dport = 0, length = 0, checksum = 0;
};

struct IcmpHeader {
  uint8_t type = 0, code = 0;
  uint16_t checksum = 0, id = 0, seq = 0;
};

struct ArpPacket {
  uint16_t op = 0;
  MacAddr sha{}, tha{};
  uint32_t spa = 0, tpa = 0;
};

// A parsed frame. Holds its own copy of the bytes, so it can be copied and
// kept; payload() points into that copy. Parsing never fails: what could not
// be parsed is listed in `errors` and the deeper layers are left empty.
struct ParsedPacket {
  Bytes bytes;
  EthHeader eth;
  std::vector<VlanTag> vlans;
  std::optional<Ipv4Header> ipv4;
  std::optional<Ipv6Header> ipv6;
  std::optional<ArpPacket> arp;
  std::optional<TcpHeader> tcp;
  std::optional<UdpHeader> udp;
  std::optional<IcmpHeader> icmp;
  size_t l3_offset = 0;
  size_t l4_offset = 0;
  size_t payload_offset = 0;
  size_t payload_length = 0;
  std::vector<std::string> errors;

  absl::Span<const uint8_t> payload() const {
    return absl::MakeConstSpan(bytes).subspan(payload_offset, payload_length);
  }
  std::string PayloadString() const;
  // Full recomputation over the bytes (not trusting the header fields more
  // than needed). False when there is no such header or it is truncated.
  bool Ipv4ChecksumOk() const;
  bool TcpChecksumOk() const;
  bool UdpChecksumOk() const;
  // Named fields ("ipv4.ttl" -> "64"), in wire order; the basis of Describe()
  // and DiffPackets().
  std::vector<std::pair<std::string, std::string>> Fields() const;
  // One line per layer, e.g. "tcp 40000->8080 [S] seq=1 ...".
  std::string Describe() const;
};

ParsedPacket Parse(const Bytes& frame);
ParsedPacket Parse(absl::Span<const uint8_t> frame);

// Field-by-field differences between two frames ("" when byte-identical),
// followed by the first differing byte offsets; meant for test failure text.
std::string DiffPackets(const Bytes& expected, const Bytes& actual);
std::string HexDump(absl::Span<const uint8_t> bytes);

// gtest picks this up through ADL; no gtest dependency here.
void PrintTo(const ParsedPacket& p, std::ostream* os);
std::ostream& operator<<(std::ostream& os, const ParsedPacket& p);

}  // namespace rematcher::packet

#endif  // REMATCHER_TESTING_PACKET_PACKET_H_
