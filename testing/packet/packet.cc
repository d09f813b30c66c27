// Packet builder and parser; see packet.h for the contract.
#include "testing/packet/packet.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"

namespace rematcher::packet {
namespace {

void Put8(Bytes& b, uint8_t v) { b.push_back(v); }
void Put16(Bytes& b, uint16_t v) {
  b.push_back(v >> 8);
  b.push_back(v & 0xFF);
}
void Put32(Bytes& b, uint32_t v) {
  Put16(b, v >> 16);
  Put16(b, v & 0xFFFF);
}
void Set16(Bytes& b, size_t off, uint16_t v) {
  b[off] = v >> 8;
  b[off + 1] = v & 0xFF;
}
uint16_t Get16(absl::Span<const uint8_t> b, size_t off) {
  return static_cast<uint16_t>(b[off] << 8 | b[off + 1]);
}
uint32_t Get32(absl::Span<const uint8_t> b, size_t off) {
  return static_cast<uint32_t>(Get16(b, off)) << 16 | Get16(b, off + 2);
}
void PutBytes(Bytes& b, absl::Span<const uint8_t> v) { b.insert(b.end(), v.begin(), v.end()); }
void PadTo4(Bytes& b) {
  while (b.size() % 4 != 0) b.push_back(0);
}

std::string Hex(absl::Span<const uint8_t> b) {
  std::string s;
  for (uint8_t c : b) absl::StrAppendFormat(&s, "%02x", c);
  return s;
}

// Pseudo-header sums (RFC 793 / RFC 8200 section 8.1).
uint32_t PseudoSum4(uint32_t src, uint32_t dst, uint8_t proto, uint32_t len) {
  Bytes p;
  Put32(p, src);
  Put32(p, dst);
  Put8(p, 0);
  Put8(p, proto);
  Put16(p, static_cast<uint16_t>(len));
  return Sum32(p);
}
uint32_t PseudoSum6(const Ipv6Addr& src, const Ipv6Addr& dst, uint8_t nh, uint32_t len) {
  Bytes p;
  PutBytes(p, src);
  PutBytes(p, dst);
  Put32(p, len);
  Put32(p, nh);
  return Sum32(p);
}

}  // namespace

// ---------------------------------------------------------------- addresses

MacAddr ParseMac(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  CHECK_EQ(parts.size(), 6u) << "bad MAC " << text;
  MacAddr mac;
  for (int i = 0; i < 6; ++i) {
    CHECK(parts[i].size() == 2) << "bad MAC " << text;
    mac[i] = static_cast<uint8_t>(std::stoul(parts[i], nullptr, 16));
  }
  return mac;
}

std::string MacToString(const MacAddr& m) {
  return absl::StrFormat("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

uint32_t ParseIpv4(absl::string_view text) {
  in_addr a;
  std::string s(text);
  CHECK_EQ(inet_pton(AF_INET, s.c_str(), &a), 1) << "bad IPv4 address " << text;
  return ntohl(a.s_addr);
}

std::string Ipv4ToString(uint32_t h) {
  return absl::StrFormat("%u.%u.%u.%u", h >> 24, (h >> 16) & 0xFF, (h >> 8) & 0xFF, h & 0xFF);
}

Ipv6Addr ParseIpv6(absl::string_view text) {
  Ipv6Addr a;
  std::string s(text);
  CHECK_EQ(inet_pton(AF_INET6, s.c_str(), a.data()), 1) << "bad IPv6 address " << text;
  return a;
}

std::string Ipv6ToString(const Ipv6Addr& a) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, a.data(), buf, sizeof(buf));
  return buf;
}

// ---------------------------------------------------------------- checksums

uint32_t Sum32(absl::Span<const uint8_t> bytes, uint32_t initial) {
  uint64_t sum = initial;
  size_t i = 0;
  for (; i + 1 < bytes.size(); i += 2) sum += static_cast<uint32_t>(bytes[i] << 8 | bytes[i + 1]);
  if (i < bytes.size()) sum += static_cast<uint32_t>(bytes[i] << 8);  // odd byte, zero pad
  while (sum >> 32) sum = (sum & 0xFFFFFFFF) + (sum >> 32);
  return static_cast<uint32_t>(sum);
}

uint16_t FoldComplement(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return static_cast<uint16_t>(~sum & 0xFFFF);
}

// ---------------------------------------------------------------- builder

PacketBuilder& PacketBuilder::Eth(const MacAddr& src, const MacAddr& dst) {
  eth_src_ = src;
  eth_dst_ = dst;
  return *this;
}
PacketBuilder& PacketBuilder::Eth(absl::string_view src, absl::string_view dst) {
  return Eth(ParseMac(src), ParseMac(dst));
}
PacketBuilder& PacketBuilder::Vlan(uint16_t vid, uint8_t pcp, uint16_t tpid) {
  tags_.push_back({tpid, static_cast<uint16_t>(vid & 0x0FFF), static_cast<uint8_t>(pcp & 7)});
  return *this;
}
PacketBuilder& PacketBuilder::EtherType(uint16_t type) {
  ethertype_ = type;
  return *this;
}
PacketBuilder& PacketBuilder::Ipv4(uint32_t src, uint32_t dst) {
  l3_ = L3::kIpv4;
  ip_src_ = src;
  ip_dst_ = dst;
  return *this;
}
PacketBuilder& PacketBuilder::Ipv4(absl::string_view src, absl::string_view dst) {
  return Ipv4(ParseIpv4(src), ParseIpv4(dst));
}
PacketBuilder& PacketBuilder::Ttl(uint8_t ttl) {
  ttl_ = ttl;
  return *this;
}
PacketBuilder& PacketBuilder::Id(uint16_t id) {
  id_ = id;
  return *this;
}
PacketBuilder& PacketBuilder::Tos(uint8_t tos) {
  tos_ = tos;
  return *this;
}
PacketBuilder& PacketBuilder::DontFragment(bool df) {
  df_ = df;
  return *this;
}
PacketBuilder& PacketBuilder::Ipv4Options(Bytes options) {
  ip_options_ = std::move(options);
  PadTo4(ip_options_);
  return *this;
}
PacketBuilder& PacketBuilder::IpProtocol(uint8_t proto) {
  ip_proto_ = proto;
  return *this;
}
PacketBuilder& PacketBuilder::MoreFragments(bool mf) {
  mf_ = mf;
  return *this;
}
PacketBuilder& PacketBuilder::FragmentOffset(uint16_t off) {
  frag_off_ = off & 0x1FFF;
  return *this;
}
PacketBuilder& PacketBuilder::Ipv6(const Ipv6Addr& src, const Ipv6Addr& dst) {
  l3_ = L3::kIpv6;
  ip6_src_ = src;
  ip6_dst_ = dst;
  return *this;
}
PacketBuilder& PacketBuilder::Ipv6(absl::string_view src, absl::string_view dst) {
  return Ipv6(ParseIpv6(src), ParseIpv6(dst));
}
PacketBuilder& PacketBuilder::Arp(uint16_t op, const MacAddr& sha, uint32_t spa,
                                  const MacAddr& tha, uint32_t tpa) {
  l3_ = L3::kArp;
  arp_op_ = op;
  arp_sha_ = sha;
  arp_spa_ = spa;
  arp_tha_ = tha;
  arp_tpa_ = tpa;
  return *this;
}
PacketBuilder& PacketBuilder::Tcp(uint16_t sport, uint16_t dport) {
  l4_ = L4::kTcp;
  sport_ = sport;
  dport_ = dport;
  return *this;
}
PacketBuilder& PacketBuilder::Seq(uint32_t seq) {
  seq_ = seq;
  return *this;
}
PacketBuilder& PacketBuilder::Ack(uint32_t ack) {
  ack_ = ack;
  return *this;
}
PacketBuilder& PacketBuilder::Flags(uint8_t flags) {
  flags_ = flags;
  return *this;
}
PacketBuilder& PacketBuilder::Window(uint16_t window) {
  window_ = window;
  return *this;
}
PacketBuilder& PacketBuilder::UrgentPointer(uint16_t urg) {
  urg_ = urg;
  return *this;
}
PacketBuilder& PacketBuilder::Mss(uint16_t mss) {
  Put8(tcp_options_, kOptMss);
  Put8(tcp_options_, 4);
  Put16(tcp_options_, mss);
  return *this;
}
PacketBuilder& PacketBuilder::WindowScale(uint8_t shift) {
  PutBytes(tcp_options_, {kOptWindowScale, 3, shift});
  return *this;
}
PacketBuilder& PacketBuilder::SackPermitted() {
  PutBytes(tcp_options_, {kOptSackPermitted, 2});
  return *this;
}
PacketBuilder& PacketBuilder::Timestamps(uint32_t val, uint32_t ecr) {
  PutBytes(tcp_options_, {kOptTimestamps, 10});
  Put32(tcp_options_, val);
  Put32(tcp_options_, ecr);
  return *this;
}
PacketBuilder& PacketBuilder::Sack(const std::vector<SackBlock>& blocks) {
  Put8(tcp_options_, kOptSack);
  Put8(tcp_options_, static_cast<uint8_t>(2 + 8 * blocks.size()));
  for (const SackBlock& b : blocks) {
    Put32(tcp_options_, b.left);
    Put32(tcp_options_, b.right);
  }
  return *this;
}
PacketBuilder& PacketBuilder::Nop() {
  Put8(tcp_options_, kOptNop);
  return *this;
}
PacketBuilder& PacketBuilder::Eol() {
  Put8(tcp_options_, kOptEol);
  return *this;
}
PacketBuilder& PacketBuilder::RawOptions(const Bytes& bytes) {
  PutBytes(tcp_options_, bytes);
  return *this;
}
PacketBuilder& PacketBuilder::OptionWithLength(uint8_t kind, uint8_t declared_len,
                                               const Bytes& body) {
  Put8(tcp_options_, kind);
  Put8(tcp_options_, declared_len);
  PutBytes(tcp_options_, body);
  return *this;
}
PacketBuilder& PacketBuilder::Udp(uint16_t sport, uint16_t dport) {
  l4_ = L4::kUdp;
  sport_ = sport;
  dport_ = dport;
  return *this;
}
PacketBuilder& PacketBuilder::Icmp(uint8_t type, uint8_t code, uint16_t id, uint16_t seq) {
  l4_ = L4::kIcmp;
  icmp_type_ = type;
  icmp_code_ = code;
  icmp_id_ = id;
  icmp_seq_ = seq;
  return *this;
}
PacketBuilder& PacketBuilder::Payload(Bytes payload) {
  payload_ = std::move(payload);
  return *this;
}
PacketBuilder& PacketBuilder::Payload(absl::string_view payload) {
  payload_.assign(payload.begin(), payload.end());
  return *this;
}
PacketBuilder& PacketBuilder::Ipv4Ihl(uint8_t ihl) {
  ihl_override_ = ihl & 0x0F;
  return *this;
}
PacketBuilder& PacketBuilder::Ipv4TotalLength(uint16_t len) {
  total_len_override_ = len;
  return *this;
}
PacketBuilder& PacketBuilder::TcpDataOffset(uint8_t words) {
  doff_override_ = words & 0x0F;
  return *this;
}
PacketBuilder& PacketBuilder::BadIpv4Checksum() {
  bad_ip_csum_ = true;
  return *this;
}
PacketBuilder& PacketBuilder::BadL4Checksum() {
  bad_l4_csum_ = true;
  return *this;
}
PacketBuilder& PacketBuilder::UdpZeroChecksum() {
  udp_zero_csum_ = true;
  return *this;
}
PacketBuilder& PacketBuilder::TruncateTo(size_t bytes) {
  truncate_to_ = bytes;
  return *this;
}

// Lays out the L4 header and payload with a zero checksum field; the caller
// fills the checksum once the pseudo-header is known.
Bytes PacketBuilder::BuildL4(uint8_t* proto_out) const {
  Bytes l4;
  switch (l4_) {
    case L4::kNone:
      *proto_out = 0xFD;  // RFC 3692 experimental
      PutBytes(l4, payload_);
      return l4;
    case L4::kTcp: {
      *proto_out = kIpProtoTcp;
      Bytes opts = tcp_options_;
      PadTo4(opts);
      // More than 40 bytes cannot be described by the 4-bit data offset; a
      // test that wants that must say which offset to write.
      CHECK(opts.size() <= 40 || doff_override_)
          << "TCP options of " << opts.size() << " bytes exceed 40; set TcpDataOffset()";
      uint8_t doff = static_cast<uint8_t>((20 + opts.size()) / 4);
      if (doff_override_) doff = *doff_override_;
      Put16(l4, sport_);
      Put16(l4, dport_);
      Put32(l4, seq_);
      Put32(l4, ack_);
      Put8(l4, static_cast<uint8_t>(doff << 4));
      Put8(l4, flags_);
      Put16(l4, window_);
      Put16(l4, 0);  // checksum
      Put16(l4, urg_);
      PutBytes(l4, opts);
      PutBytes(l4, payload_);
      return l4;
    }
    case L4::kUdp:
      *proto_out = kIpProtoUdp;
      Put16(l4, sport_);
      Put16(l4, dport_);
      Put16(l4, static_cast<uint16_t>(8 + payload_.size()));
      Put16(l4, 0);
      PutBytes(l4, payload_);
      return l4;
    case L4::kIcmp:
      *proto_out = l3_ == L3::kIpv6 ? 58 : kIpProtoIcmp;
      Put8(l4, icmp_type_);
      Put8(l4, icmp_code_);
      Put16(l4, 0);
      Put16(l4, icmp_id_);
      Put16(l4, icmp_seq_);
      PutBytes(l4, payload_);
      return l4;
  }
  return l4;
}

Bytes PacketBuilder::Build() const {
  Bytes f;
  PutBytes(f, eth_dst_);
  PutBytes(f, eth_src_);
  for (size_t i = 0; i < tags_.size(); ++i) {
    uint16_t tpid = tags_[i].tpid;
    if (tpid == 0) tpid = (tags_.size() >= 2 && i == 0) ? kEthTypeQinQ : kEthTypeVlan;
    Put16(f, tpid);
    Put16(f, static_cast<uint16_t>(tags_[i].pcp << 13 | tags_[i].vid));
  }
  uint16_t ethertype = 0x88B5;  // IEEE local experimental, for "no L3"
  if (l3_ == L3::kIpv4) ethertype = kEthTypeIpv4;
  if (l3_ == L3::kIpv6) ethertype = kEthTypeIpv6;
  if (l3_ == L3::kArp) ethertype = kEthTypeArp;
  if (ethertype_) ethertype = *ethertype_;
  Put16(f, ethertype);
  const size_t l3 = f.size();

  if (l3_ == L3::kNone) {
    PutBytes(f, payload_);
  } else if (l3_ == L3::kArp) {
    Put16(f, 1);  // Ethernet
    Put16(f, kEthTypeIpv4);
    Put8(f, 6);
    Put8(f, 4);
    Put16(f, arp_op_);
    PutBytes(f, arp_sha_);
    Put32(f, arp_spa_);
    PutBytes(f, arp_tha_);
    Put32(f, arp_tpa_);
  } else {
    uint8_t proto = 0;
    Bytes l4 = BuildL4(&proto);
    if (ip_proto_) proto = *ip_proto_;
    // L4 checksum over the real segment bytes; the pseudo-header uses the
    // real segment length, whatever the IP length field will claim.
    size_t csum_off = 0;
    bool has_csum = true;
    bool pseudo = true;
    switch (l4_) {
      case L4::kTcp: csum_off = 16; break;
      case L4::kUdp: csum_off = 6; break;
      case L4::kIcmp: csum_off = 2; pseudo = (l3_ == L3::kIpv6); break;
      case L4::kNone: has_csum = false; break;
    }
    if (has_csum && !(l4_ == L4::kUdp && udp_zero_csum_)) {
      uint32_t sum = 0;
      if (pseudo) {
        sum = l3_ == L3::kIpv4 ? PseudoSum4(ip_src_, ip_dst_, proto, l4.size())
                               : PseudoSum6(ip6_src_, ip6_dst_, proto, l4.size());
      }
      uint16_t c = FoldComplement(Sum32(l4, sum));
      if (l4_ == L4::kUdp && c == 0) c = 0xFFFF;  // 0 means "none" for UDP
      if (bad_l4_csum_) c ^= 0x0101;
      Set16(l4, csum_off, c);
    }

    if (l3_ == L3::kIpv4) {
      const size_t hl = 20 + ip_options_.size();
      uint8_t ihl = static_cast<uint8_t>(hl / 4);
      if (ihl_override_) ihl = *ihl_override_;
      uint16_t total = static_cast<uint16_t>(hl + l4.size());
      if (total_len_override_) total = *total_len_override_;
      Put8(f, static_cast<uint8_t>(0x40 | ihl));
      Put8(f, tos_);
      Put16(f, total);
      Put16(f, id_);
      Put16(f, static_cast<uint16_t>((df_ ? 0x4000 : 0) | (mf_ ? 0x2000 : 0) | frag_off_));
      Put8(f, ttl_);
      Put8(f, proto);
      Put16(f, 0);
      Put32(f, ip_src_);
      Put32(f, ip_dst_);
      PutBytes(f, ip_options_);
      uint16_t c = FoldComplement(Sum32(absl::MakeConstSpan(f).subspan(l3, hl)));
      if (bad_ip_csum_) c ^= 0x0101;
      Set16(f, l3 + 10, c);
    } else {
      Put32(f, 0x60000000u | static_cast<uint32_t>(tos_) << 20);
      Put16(f, total_len_override_ ? *total_len_override_ : static_cast<uint16_t>(l4.size()));
      Put8(f, proto);
      Put8(f, ttl_);
      PutBytes(f, ip6_src_);
      PutBytes(f, ip6_dst_);
    }
    PutBytes(f, l4);
  }
  if (truncate_to_ && *truncate_to_ < f.size()) f.resize(*truncate_to_);
  return f;
}

// ---------------------------------------------------------------- parser

namespace {

void ParseTcpOptions(absl::Span<const uint8_t> opts, TcpHeader& t) {
  size_t i = 0;
  while (i < opts.size()) {
    uint8_t kind = opts[i];
    if (kind == kOptEol) {
      t.options.push_back({kind, {0}});
      return;
    }
    if (kind == kOptNop) {
      t.options.push_back({kind, {1}});
      ++i;
      continue;
    }
    if (i + 1 >= opts.size()) {
      t.options_malformed = true;
      t.options.push_back({kind, Bytes(opts.begin() + i, opts.end())});
      return;
    }
    uint8_t len = opts[i + 1];
    if (len < 2 || i + len > opts.size()) {
      t.options_malformed = true;
      t.options.push_back({kind, Bytes(opts.begin() + i, opts.end())});
      return;
    }
    absl::Span<const uint8_t> o = opts.subspan(i, len);
    t.options.push_back({kind, Bytes(o.begin(), o.end())});
    if (kind == kOptMss && len == 4) t.mss = Get16(o, 2);
    if (kind == kOptWindowScale && len == 3) t.window_scale = o[2];
    if (kind == kOptSackPermitted && len == 2) t.sack_permitted = true;
    if (kind == kOptTimestamps && len == 10) t.timestamps = {{Get32(o, 2), Get32(o, 6)}};
    if (kind == kOptSack && len >= 10 && (len - 2) % 8 == 0) {
      t.sack.clear();
      for (size_t j = 2; j + 8 <= len; j += 8) t.sack.push_back({Get32(o, j), Get32(o, j + 4)});
    }
    i += len;
  }
}

// The L4 segment as the IP header describes it, clipped to the frame.
// Returns false when the frame is shorter than the IP header claims.
bool L4Segment(const ParsedPacket& p, absl::Span<const uint8_t>* seg) {
  absl::Span<const uint8_t> all = absl::MakeConstSpan(p.bytes);
  size_t end;
  if (p.ipv4) {
    end = p.l3_offset + p.ipv4->total_length;
  } else if (p.ipv6) {
    end = p.l3_offset + 40 + p.ipv6->payload_length;
  } else {
    return false;
  }
  if (end > all.size() || p.l4_offset > end) return false;
  *seg = all.subspan(p.l4_offset, end - p.l4_offset);
  return true;
}

uint32_t Pseudo(const ParsedPacket& p, uint8_t proto, size_t len) {
  if (p.ipv4) return PseudoSum4(p.ipv4->src, p.ipv4->dst, proto, len);
  return PseudoSum6(p.ipv6->src, p.ipv6->dst, proto, len);
}

std::string FlagString(uint8_t f) {
  static const char* kNames[] = {"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"};
  std::vector<std::string> on;
  for (int i = 0; i < 8; ++i)
    if (f & (1 << i)) on.push_back(kNames[i]);
  return "[" + absl::StrJoin(on, ",") + "]";
}

std::string OptionString(const TcpOption& o) {
  const Bytes& r = o.raw;
  switch (o.kind) {
    case kOptEol: return "eol";
    case kOptNop: return "nop";
    case kOptMss:
      if (r.size() == 4) return absl::StrCat("mss ", Get16(r, 2));
      break;
    case kOptWindowScale:
      if (r.size() == 3) return absl::StrCat("wscale ", r[2]);
      break;
    case kOptSackPermitted:
      if (r.size() == 2) return "sackOK";
      break;
    case kOptTimestamps:
      if (r.size() == 10) return absl::StrCat("ts val ", Get32(r, 2), " ecr ", Get32(r, 6));
      break;
    case kOptSack:
      if (r.size() >= 10 && (r.size() - 2) % 8 == 0) {
        std::string s = "sack";
        for (size_t j = 2; j + 8 <= r.size(); j += 8)
          absl::StrAppend(&s, " ", Get32(r, j), "-", Get32(r, j + 4));
        return s;
      }
      break;
  }
  return absl::StrCat("kind ", o.kind, " raw ", Hex(r));
}

}  // namespace

ParsedPacket Parse(const Bytes& frame) { return Parse(absl::MakeConstSpan(frame)); }

ParsedPacket Parse(absl::Span<const uint8_t> frame) {
  ParsedPacket p;
  p.bytes.assign(frame.begin(), frame.end());
  absl::Span<const uint8_t> b = absl::MakeConstSpan(p.bytes);
  p.payload_offset = b.size();
  if (b.size() < 14) {
    p.errors.push_back(absl::StrCat("frame of ", b.size(), " bytes is shorter than Ethernet"));
    return p;
  }
  std::copy(b.begin(), b.begin() + 6, p.eth.dst.begin());
  std::copy(b.begin() + 6, b.begin() + 12, p.eth.src.begin());
  size_t off = 12;
  uint16_t type = Get16(b, off);
  while (type == kEthTypeVlan || type == kEthTypeQinQ || type == 0x9100) {
    if (off + 6 > b.size()) {
      p.errors.push_back("truncated VLAN tag");
      p.eth.ethertype = type;
      return p;
    }
    p.vlans.push_back({type, Get16(b, off + 2)});
    off += 4;
    type = Get16(b, off);
  }
  p.eth.ethertype = type;
  off += 2;
  p.l3_offset = off;
  p.l4_offset = p.payload_offset = off;
  p.payload_length = b.size() - off;

  uint8_t proto = 0;
  size_t l4_end = b.size();
  if (type == kEthTypeArp) {
    if (off + 28 > b.size()) {
      p.errors.push_back("truncated ARP");
      return p;
    }
    ArpPacket a;
    a.op = Get16(b, off + 6);
    std::copy(b.begin() + off + 8, b.begin() + off + 14, a.sha.begin());
    a.spa = Get32(b, off + 14);
    std::copy(b.begin() + off + 18, b.begin() + off + 24, a.tha.begin());
    a.tpa = Get32(b, off + 24);
    p.arp = a;
    p.payload_offset = off + 28;
    p.payload_length = b.size() - p.payload_offset;
    return p;
  } else if (type == kEthTypeIpv4) {
    if (off + 20 > b.size()) {
      p.errors.push_back("truncated IPv4 header");
      return p;
    }
    Ipv4Header h;
    h.version = b[off] >> 4;
    h.ihl = b[off] & 0x0F;
    h.tos = b[off + 1];
    h.total_length = Get16(b, off + 2);
    h.id = Get16(b, off + 4);
    uint16_t fo = Get16(b, off + 6);
    h.df = fo & 0x4000;
    h.mf = fo & 0x2000;
    h.frag_offset = fo & 0x1FFF;
    h.ttl = b[off + 8];
    h.protocol = b[off + 9];
    h.checksum = Get16(b, off + 10);
    h.src = Get32(b, off + 12);
    h.dst = Get32(b, off + 16);
    const size_t hl = h.ihl * 4u;
    if (h.version != 4) p.errors.push_back(absl::StrCat("IPv4 version field is ", h.version));
    if (h.ihl < 5) {
      p.errors.push_back(absl::StrCat("IPv4 IHL ", h.ihl, " < 5"));
      p.ipv4 = h;
      return p;
    }
    if (off + hl > b.size()) {
      p.errors.push_back(absl::StrCat("IPv4 IHL ", h.ihl, " runs past the frame"));
      p.ipv4 = h;
      return p;
    }
    h.options.assign(b.begin() + off + 20, b.begin() + off + hl);
    p.ipv4 = h;
    if (h.total_length < hl) {
      p.errors.push_back(absl::StrCat("IPv4 total length ", h.total_length, " < header"));
    } else if (off + h.total_length > b.size()) {
      p.errors.push_back(absl::StrCat("IPv4 total length ", h.total_length, " exceeds frame"));
    } else {
      l4_end = off + h.total_length;  // anything after is Ethernet padding
    }
    off += hl;
    proto = h.protocol;
    if (h.frag_offset != 0) {
      p.errors.push_back("non-first fragment: no L4 header");
      p.l4_offset = p.payload_offset = off;
      p.payload_length = l4_end - off;
      return p;
    }
  } else if (type == kEthTypeIpv6) {
    if (off + 40 > b.size()) {
      p.errors.push_back("truncated IPv6 header");
      return p;
    }
    Ipv6Header h;
    uint32_t w = Get32(b, off);
    h.traffic_class = (w >> 20) & 0xFF;
    h.flow_label = w & 0xFFFFF;
    h.payload_length = Get16(b, off + 4);
    h.next_header = b[off + 6];
    h.hop_limit = b[off + 7];
    std::copy(b.begin() + off + 8, b.begin() + off + 24, h.src.begin());
    std::copy(b.begin() + off + 24, b.begin() + off + 40, h.dst.begin());
    p.ipv6 = h;
    off += 40;
    if (off + h.payload_length > b.size()) {
      p.errors.push_back("IPv6 payload length exceeds frame");
    } else {
      l4_end = off + h.payload_length;
    }
    proto = h.next_header;
  } else {
    return p;
  }

  p.l4_offset = off;
  p.payload_offset = off;
  p.payload_length = l4_end - off;
  if (proto == kIpProtoTcp) {
    if (off + 20 > l4_end) {
      p.errors.push_back("truncated TCP header");
      return p;
    }
    TcpHeader t;
    t.sport = Get16(b, off);
    t.dport = Get16(b, off + 2);
    t.seq = Get32(b, off + 4);
    t.ack = Get32(b, off + 8);
    t.data_offset = b[off + 12] >> 4;
    t.flags = b[off + 13];
    t.window = Get16(b, off + 14);
    t.checksum = Get16(b, off + 16);
    t.urgent = Get16(b, off + 18);
    size_t hl = t.data_offset * 4u;
    if (t.data_offset < 5) {
      p.errors.push_back(absl::StrCat("TCP data offset ", t.data_offset, " < 5"));
      hl = 20;
    } else if (off + hl > l4_end) {
      p.errors.push_back(absl::StrCat("TCP data offset ", t.data_offset, " runs past the segment"));
      hl = l4_end - off;
    }
    ParseTcpOptions(b.subspan(off + 20, hl - 20), t);
    if (t.options_malformed) p.errors.push_back("malformed TCP options");
    p.tcp = t;
    p.payload_offset = off + hl;
  } else if (proto == kIpProtoUdp) {
    if (off + 8 > l4_end) {
      p.errors.push_back("truncated UDP header");
      return p;
    }
    p.udp = UdpHeader{Get16(b, off), Get16(b, off + 2), Get16(b, off + 4), Get16(b, off + 6)};
    p.payload_offset = off + 8;
  } else if (proto == kIpProtoIcmp || proto == 58) {
    if (off + 8 > l4_end) {
      p.errors.push_back("truncated ICMP header");
      return p;
    }
    p.icmp = IcmpHeader{b[off], b[off + 1], Get16(b, off + 2), Get16(b, off + 4), Get16(b, off + 6)};
    p.payload_offset = off + 8;
  }
  p.payload_length = l4_end - p.payload_offset;
  return p;
}

std::string ParsedPacket::PayloadString() const {
  absl::Span<const uint8_t> s = payload();
  return std::string(s.begin(), s.end());
}

bool ParsedPacket::Ipv4ChecksumOk() const {
  if (!ipv4 || ipv4->ihl < 5 || l3_offset + ipv4->ihl * 4u > bytes.size()) return false;
  return FoldComplement(Sum32(absl::MakeConstSpan(bytes).subspan(l3_offset, ipv4->ihl * 4u))) ==
         0;
}

bool ParsedPacket::TcpChecksumOk() const {
  absl::Span<const uint8_t> seg;
  if (!tcp || !L4Segment(*this, &seg)) return false;
  return FoldComplement(Sum32(seg, Pseudo(*this, kIpProtoTcp, seg.size()))) == 0;
}

bool ParsedPacket::UdpChecksumOk() const {
  absl::Span<const uint8_t> seg;
  if (!udp || !L4Segment(*this, &seg)) return false;
  if (ipv4 && udp->checksum == 0) return true;  // "no checksum"
  return FoldComplement(Sum32(seg, Pseudo(*this, kIpProtoUdp, seg.size()))) == 0;
}

std::vector<std::pair<std::string, std::string>> ParsedPacket::Fields() const {
  std::vector<std::pair<std::string, std::string>> f;
  auto add = [&f](std::string k, std::string v) { f.emplace_back(std::move(k), std::move(v)); };
  add("frame.length", absl::StrCat(bytes.size()));
  if (bytes.size() < 14) return f;
  add("eth.dst", MacToString(eth.dst));
  add("eth.src", MacToString(eth.src));
  for (size_t i = 0; i < vlans.size(); ++i) {
    std::string k = absl::StrCat("vlan", i);
    add(k + ".tpid", absl::StrFormat("0x%04x", vlans[i].tpid));
    add(k + ".vid", absl::StrCat(vlans[i].vid()));
    add(k + ".pcp", absl::StrCat(vlans[i].pcp()));
  }
  add("eth.type", absl::StrFormat("0x%04x", eth.ethertype));
  if (arp) {
    add("arp.op", absl::StrCat(arp->op));
    add("arp.sha", MacToString(arp->sha));
    add("arp.spa", Ipv4ToString(arp->spa));
    add("arp.tha", MacToString(arp->tha));
    add("arp.tpa", Ipv4ToString(arp->tpa));
  }
  if (ipv4) {
    const Ipv4Header& h = *ipv4;
    add("ipv4.src", Ipv4ToString(h.src));
    add("ipv4.dst", Ipv4ToString(h.dst));
    add("ipv4.version", absl::StrCat(h.version));
    add("ipv4.ihl", absl::StrCat(h.ihl));
    add("ipv4.tos", absl::StrFormat("0x%02x", h.tos));
    add("ipv4.total_length", absl::StrCat(h.total_length));
    add("ipv4.id", absl::StrCat(h.id));
    add("ipv4.df", h.df ? "1" : "0");
    add("ipv4.mf", h.mf ? "1" : "0");
    add("ipv4.frag_offset", absl::StrCat(h.frag_offset));
    add("ipv4.ttl", absl::StrCat(h.ttl));
    add("ipv4.protocol", absl::StrCat(h.protocol));
    add("ipv4.checksum", absl::StrFormat("0x%04x (%s)", h.checksum,
                                         Ipv4ChecksumOk() ? "ok" : "BAD"));
    if (!h.options.empty()) add("ipv4.options", Hex(h.options));
  }
  if (ipv6) {
    add("ipv6.src", Ipv6ToString(ipv6->src));
    add("ipv6.dst", Ipv6ToString(ipv6->dst));
    add("ipv6.payload_length", absl::StrCat(ipv6->payload_length));
    add("ipv6.next_header", absl::StrCat(ipv6->next_header));
    add("ipv6.hop_limit", absl::StrCat(ipv6->hop_limit));
  }
  if (tcp) {
    const TcpHeader& t = *tcp;
    add("tcp.sport", absl::StrCat(t.sport));
    add("tcp.dport", absl::StrCat(t.dport));
    add("tcp.seq", absl::StrCat(t.seq));
    add("tcp.ack", absl::StrCat(t.ack));
    add("tcp.data_offset", absl::StrCat(t.data_offset));
    add("tcp.flags", FlagString(t.flags));
    add("tcp.window", absl::StrCat(t.window));
    add("tcp.checksum",
        absl::StrFormat("0x%04x (%s)", t.checksum, TcpChecksumOk() ? "ok" : "BAD"));
    add("tcp.urgent", absl::StrCat(t.urgent));
    std::vector<std::string> opts;
    for (const TcpOption& o : t.options) opts.push_back(OptionString(o));
    add("tcp.options", absl::StrCat("<", absl::StrJoin(opts, ","),
                                    t.options_malformed ? " MALFORMED" : "", ">"));
  }
  if (udp) {
    add("udp.sport", absl::StrCat(udp->sport));
    add("udp.dport", absl::StrCat(udp->dport));
    add("udp.length", absl::StrCat(udp->length));
    add("udp.checksum",
        absl::StrFormat("0x%04x (%s)", udp->checksum, UdpChecksumOk() ? "ok" : "BAD"));
  }
  if (icmp) {
    add("icmp.type", absl::StrCat(icmp->type));
    add("icmp.code", absl::StrCat(icmp->code));
    add("icmp.id", absl::StrCat(icmp->id));
    add("icmp.seq", absl::StrCat(icmp->seq));
  }
  absl::Span<const uint8_t> pl = payload();
  add("payload.length", absl::StrCat(pl.size()));
  add("payload", pl.size() <= 32 ? Hex(pl) : Hex(pl.subspan(0, 32)) + "...");
  for (const std::string& e : errors) add("error", e);
  return f;
}

std::string ParsedPacket::Describe() const {
  std::string out;
  std::string layer;
  for (const auto& [k, v] : Fields()) {
    std::string l = k.substr(0, k.find('.'));
    if (l != layer) {
      if (!out.empty()) out += "\n";
      out += l + ":";
      layer = l;
    }
    std::string name = k.find('.') == std::string::npos ? "" : k.substr(k.find('.') + 1);
    absl::StrAppend(&out, " ", name.empty() ? "" : name + "=", v);
  }
  return out;
}

std::string DiffPackets(const Bytes& expected, const Bytes& actual) {
  if (expected == actual) return "";
  ParsedPacket e = Parse(expected), a = Parse(actual);
  std::multimap<std::string, std::string> af;
  for (auto& kv : a.Fields()) af.insert(kv);
  std::string out;
  std::map<std::string, int> seen;
  for (const auto& [k, v] : e.Fields()) {
    auto range = af.equal_range(k);
    int idx = seen[k]++;
    auto it = range.first;
    for (int i = 0; i < idx && it != range.second; ++i) ++it;
    if (it == range.second) {
      absl::StrAppend(&out, "  ", k, ": expected ", v, ", actual has none\n");
    } else {
      if (it->second != v) absl::StrAppend(&out, "  ", k, ": expected ", v, ", actual ", it->second, "\n");
    }
  }
  std::map<std::string, int> ecount;
  for (auto& kv : e.Fields()) ecount[kv.first]++;
  std::map<std::string, int> acount;
  for (const auto& [k, v] : a.Fields()) {
    if (++acount[k] > ecount[k]) absl::StrAppend(&out, "  ", k, ": expected none, actual ", v, "\n");
  }
  int shown = 0;
  std::string offs;
  size_t n = std::min(expected.size(), actual.size());
  for (size_t i = 0; i < n && shown < 16; ++i) {
    if (expected[i] != actual[i]) {
      absl::StrAppendFormat(&offs, " @%zu:%02x/%02x", i, expected[i], actual[i]);
      ++shown;
    }
  }
  absl::StrAppend(&out, "  bytes (expected/actual):", offs.empty() ? " none in common prefix" : offs);
  if (expected.size() != actual.size())
    absl::StrAppend(&out, "; lengths ", expected.size(), " vs ", actual.size());
  return out;
}

std::string HexDump(absl::Span<const uint8_t> b) {
  std::string out;
  for (size_t i = 0; i < b.size(); i += 16) {
    absl::StrAppendFormat(&out, "%04zx:", i);
    for (size_t j = i; j < std::min(b.size(), i + 16); ++j) absl::StrAppendFormat(&out, " %02x", b[j]);
    out += "\n";
  }
  return out;
}

void PrintTo(const ParsedPacket& p, std::ostream* os) { *os << "\n" << p.Describe(); }

std::ostream& operator<<(std::ostream& os, const ParsedPacket& p) { return os << p.Describe(); }

}  // namespace rematcher::packet
