// Builder/parser round trips, checksums against packets whose bytes were
// computed outside this code, and the malformations doing what they claim.
#include "testing/packet/packet.h"

#include "gtest/gtest.h"
#include "testing/packet/packet_gtest.h"

namespace rematcher::packet {
namespace {

constexpr char kClientMac[] = "02:00:00:00:01:01";
constexpr char kLbMac[] = "02:00:00:00:00:02";

PacketBuilder Syn() {
  return PacketBuilder()
      .Eth(kClientMac, kLbMac)
      .Ipv4("198.18.1.1", "198.18.0.10")
      .Id(0x1234)
      .Tcp(40000, 8080)
      .Seq(0x01020304)
      .Flags(SYN)
      .Window(64240);
}

// Computed once with an independent Python script (struct.pack + a plain
// one's-complement sum): IPv4 checksum 0x9b58, TCP checksum 0xffa4.
const Bytes kKnownSyn = {
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, 0x08, 0x00, 0x45,
    0x00, 0x00, 0x3c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9b, 0x58, 0xc6, 0x12, 0x01, 0x01,
    0xc6, 0x12, 0x00, 0x0a, 0x9c, 0x40, 0x1f, 0x90, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00,
    0x00, 0xa0, 0x02, 0xfa, 0xf0, 0xff, 0xa4, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02,
    0x08, 0x0a, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07};

TEST(ChecksumTest, TextbookIpv4Header) {
  // The widely reproduced example header (Wikipedia, "IPv4 header checksum").
  Bytes h = {0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
             0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7};
  EXPECT_EQ(FoldComplement(Sum32(h)), 0);
  h[10] = h[11] = 0;
  EXPECT_EQ(FoldComplement(Sum32(h)), 0xb861);
}

TEST(ChecksumTest, OddLengthPadsWithZero) {
  EXPECT_EQ(Sum32(Bytes{0x12, 0x34, 0x56}), 0x1234u + 0x5600u);
}

TEST(BuilderTest, MatchesIndependentlyComputedSyn) {
  Bytes got = Syn().Mss(1460).SackPermitted().Timestamps(100, 0).Nop().WindowScale(7).Build();
  EXPECT_TRUE(PacketsEqual(kKnownSyn, got));
  ParsedPacket p = Parse(kKnownSyn);
  EXPECT_TRUE(p.Ipv4ChecksumOk());
  EXPECT_TRUE(p.TcpChecksumOk());
  EXPECT_TRUE(p.errors.empty()) << p.Describe();
}

TEST(ParserTest, DetectsChecksumErrorsInKnownPacket) {
  Bytes b = kKnownSyn;
  b[24] ^= 0x01;  // IPv4 checksum
  EXPECT_FALSE(Parse(b).Ipv4ChecksumOk());
  EXPECT_TRUE(Parse(b).TcpChecksumOk());
  b = kKnownSyn;
  b[41] ^= 0x01;  // seq
  EXPECT_TRUE(Parse(b).Ipv4ChecksumOk());
  EXPECT_FALSE(Parse(b).TcpChecksumOk());
  b = kKnownSyn;
  b[29] ^= 0x01;  // source address: pseudo-header and IP header both break
  EXPECT_FALSE(Parse(b).Ipv4ChecksumOk());
  EXPECT_FALSE(Parse(b).TcpChecksumOk());
}

TEST(RoundTripTest, TcpFieldsAndEveryOption) {
  // 40 bytes of options at most: split the option kinds over two packets.
  Bytes b = PacketBuilder()
                .Eth(kClientMac, kLbMac)
                .Ipv4("198.18.1.2", "198.18.0.10")
                .Ttl(17)
                .Id(77)
                .Tos(0x02)
                .Tcp(1234, 8080)
                .Seq(0xFFFFFFF0)
                .Ack(0x80000001)
                .Flags(ACK | PSH | ECE)
                .Window(512)
                .Mss(1400)
                .WindowScale(14)
                .SackPermitted()
                .Timestamps(0xDEADBEEF, 0x01020304)
                .RawOptions({253, 4, 0xAB, 0xCD})
                .Nop()
                .Eol()
                .Payload("hello")
                .Build();
  ParsedPacket p = Parse(b);
  ASSERT_TRUE(p.errors.empty()) << p.Describe();
  ASSERT_TRUE(p.ipv4 && p.tcp);
  EXPECT_EQ(p.eth.src, ParseMac(kClientMac));
  EXPECT_EQ(p.eth.dst, ParseMac(kLbMac));
  EXPECT_EQ(p.ipv4->src, ParseIpv4("198.18.1.2"));
  EXPECT_EQ(p.ipv4->ttl, 17);
  EXPECT_EQ(p.ipv4->id, 77);
  EXPECT_EQ(p.ipv4->tos, 0x02);
  EXPECT_TRUE(p.ipv4->df);
  EXPECT_EQ(p.tcp->seq, 0xFFFFFFF0u);
  EXPECT_EQ(p.tcp->ack, 0x80000001u);
  EXPECT_EQ(p.tcp->flags, ACK | PSH | ECE);
  EXPECT_EQ(p.tcp->window, 512);
  EXPECT_EQ(p.tcp->mss, 1400);
  EXPECT_EQ(p.tcp->window_scale, 14);
  EXPECT_TRUE(p.tcp->sack_permitted);
  ASSERT_TRUE(p.tcp->timestamps);
  EXPECT_EQ(p.tcp->timestamps->first, 0xDEADBEEFu);
  EXPECT_EQ(p.tcp->timestamps->second, 0x01020304u);
  // mss, ws, sackOK, ts, raw(253), nop, eol
  ASSERT_EQ(p.tcp->options.size(), 7u);
  EXPECT_EQ(p.tcp->options[4].kind, 253);
  EXPECT_EQ(p.tcp->options[4].raw, (Bytes{253, 4, 0xAB, 0xCD}));
  EXPECT_EQ(p.tcp->options[5].kind, kOptNop);
  EXPECT_EQ(p.tcp->options.back().kind, kOptEol);
  // 4+3+2+10+4+1+1 = 25 bytes -> padded to 28, data offset 12 words.
  EXPECT_EQ(p.tcp->data_offset, 12);
  EXPECT_EQ(p.PayloadString(), "hello");
  EXPECT_TRUE(p.Ipv4ChecksumOk());
  EXPECT_TRUE(p.TcpChecksumOk());

  ParsedPacket s = Parse(PacketBuilder()
                             .Eth(kClientMac, kLbMac)
                             .Ipv4("198.18.1.2", "198.18.0.10")
                             .Tcp(1234, 8080)
                             .Flags(ACK)
                             .Nop()
                             .Nop()
                             .Timestamps(5, 6)
                             .Nop()
                             .Nop()
                             .Sack({{10, 20}, {30, 40}, {0xFFFFFFF0, 5}})
                             .Build());
  ASSERT_TRUE(s.tcp);
  ASSERT_TRUE(s.errors.empty()) << s.Describe();
  EXPECT_EQ(s.tcp->data_offset, 15);  // 2+10+2+26 = 40 bytes of options
  EXPECT_EQ(s.tcp->sack, (std::vector<SackBlock>{{10, 20}, {30, 40}, {0xFFFFFFF0, 5}}));
  EXPECT_TRUE(s.TcpChecksumOk());
}

TEST(BuilderDeathTest, OptionsOver40BytesNeedAnExplicitOffset) {
  EXPECT_DEATH(Syn().RawOptions(Bytes(44, kOptNop)).Build(), "exceed 40");
  ParsedPacket p = Parse(Syn().RawOptions(Bytes(44, kOptNop)).TcpDataOffset(15).Build());
  EXPECT_EQ(p.tcp->data_offset, 15);
}

TEST(RoundTripTest, OptionPaddingIsZero) {
  ParsedPacket p = Parse(Syn().WindowScale(7).Build());
  ASSERT_TRUE(p.tcp);
  EXPECT_EQ(p.tcp->data_offset, 6);
  EXPECT_EQ(p.tcp->options.size(), 2u);  // ws, then the EOL that pads
  EXPECT_EQ(p.tcp->options[1].kind, kOptEol);
  EXPECT_TRUE(p.TcpChecksumOk());
}

TEST(RoundTripTest, VlanAndQinQ) {
  ParsedPacket one = Parse(Syn().Vlan(100, 3).Build());
  ASSERT_EQ(one.vlans.size(), 1u);
  EXPECT_EQ(one.vlans[0].tpid, kEthTypeVlan);
  EXPECT_EQ(one.vlans[0].vid(), 100);
  EXPECT_EQ(one.vlans[0].pcp(), 3);
  EXPECT_EQ(one.eth.ethertype, kEthTypeIpv4);
  EXPECT_TRUE(one.tcp && one.TcpChecksumOk());

  ParsedPacket two = Parse(Syn().Vlan(10).Vlan(20).Build());
  ASSERT_EQ(two.vlans.size(), 2u);
  EXPECT_EQ(two.vlans[0].tpid, kEthTypeQinQ);
  EXPECT_EQ(two.vlans[0].vid(), 10);
  EXPECT_EQ(two.vlans[1].tpid, kEthTypeVlan);
  EXPECT_EQ(two.vlans[1].vid(), 20);
  EXPECT_EQ(two.l3_offset, 22u);
  EXPECT_TRUE(two.tcp && two.TcpChecksumOk());
}

TEST(RoundTripTest, UdpIcmpArpIpv6) {
  ParsedPacket u = Parse(PacketBuilder()
                             .Eth(kClientMac, kLbMac)
                             .Ipv4("198.18.1.1", "198.18.0.10")
                             .Udp(53, 5353)
                             .Payload("abc")
                             .Build());
  ASSERT_TRUE(u.udp);
  EXPECT_EQ(u.udp->length, 11);
  EXPECT_TRUE(u.UdpChecksumOk());
  EXPECT_NE(u.udp->checksum, 0);
  EXPECT_EQ(u.PayloadString(), "abc");

  ParsedPacket i = Parse(PacketBuilder()
                             .Eth(kClientMac, kLbMac)
                             .Ipv4("198.18.1.1", "198.18.0.10")
                             .Icmp(8, 0, 7, 9)
                             .Payload("ping")
                             .Build());
  ASSERT_TRUE(i.icmp);
  EXPECT_EQ(i.icmp->type, 8);
  EXPECT_EQ(i.icmp->id, 7);
  EXPECT_EQ(i.icmp->seq, 9);
  EXPECT_EQ(FoldComplement(Sum32(absl::MakeConstSpan(i.bytes).subspan(i.l4_offset))), 0);

  ParsedPacket a = Parse(PacketBuilder()
                             .Eth(kClientMac, "ff:ff:ff:ff:ff:ff")
                             .Arp(1, ParseMac(kClientMac), ParseIpv4("198.18.1.1"), MacAddr{},
                                  ParseIpv4("198.18.0.2"))
                             .Build());
  ASSERT_TRUE(a.arp);
  EXPECT_EQ(a.eth.ethertype, kEthTypeArp);
  EXPECT_EQ(a.arp->op, 1);
  EXPECT_EQ(a.arp->tpa, ParseIpv4("198.18.0.2"));

  ParsedPacket v6 = Parse(PacketBuilder()
                              .Eth(kClientMac, kLbMac)
                              .Ipv6("2001:2::1", "2001:2::a")
                              .Tcp(1, 2)
                              .Flags(SYN)
                              .Mss(1440)
                              .Build());
  ASSERT_TRUE(v6.ipv6 && v6.tcp);
  EXPECT_EQ(v6.ipv6->next_header, kIpProtoTcp);
  EXPECT_EQ(v6.ipv6->payload_length, 24);
  EXPECT_EQ(v6.tcp->mss, 1440);
  EXPECT_TRUE(v6.TcpChecksumOk());
  EXPECT_FALSE(v6.Ipv4ChecksumOk());
}

TEST(MalformedTest, Truncate) {
  Bytes full = Syn().Build();
  Bytes b = Syn().TruncateTo(40).Build();
  ASSERT_EQ(b.size(), 40u);
  EXPECT_TRUE(std::equal(b.begin(), b.end(), full.begin()));
  ParsedPacket p = Parse(b);
  EXPECT_FALSE(p.tcp);
  EXPECT_FALSE(p.errors.empty());
  EXPECT_FALSE(Parse(Bytes(10, 0)).errors.empty());
}

TEST(MalformedTest, BadIhl) {
  ParsedPacket low = Parse(Syn().Ipv4Ihl(4).Build());
  ASSERT_TRUE(low.ipv4);
  EXPECT_EQ(low.ipv4->ihl, 4);
  EXPECT_FALSE(low.tcp);
  EXPECT_FALSE(low.errors.empty());
  ParsedPacket high = Parse(Syn().Ipv4Ihl(15).Build());
  EXPECT_EQ(high.ipv4->ihl, 15);
  EXPECT_FALSE(high.errors.empty());
}

TEST(MalformedTest, BadDataOffset) {
  ParsedPacket low = Parse(Syn().Mss(1460).TcpDataOffset(4).Build());
  ASSERT_TRUE(low.tcp);
  EXPECT_EQ(low.tcp->data_offset, 4);
  EXPECT_FALSE(low.errors.empty());
  // Checksums still cover the real bytes: only the field is wrong.
  EXPECT_TRUE(low.TcpChecksumOk());
  ParsedPacket high = Parse(Syn().TcpDataOffset(15).Build());
  EXPECT_EQ(high.tcp->data_offset, 15);
  EXPECT_FALSE(high.errors.empty());
}

TEST(MalformedTest, BadOptionLengths) {
  ParsedPacket zero = Parse(Syn().OptionWithLength(kOptTimestamps, 0).Nop().Nop().Build());
  ASSERT_TRUE(zero.tcp);
  EXPECT_TRUE(zero.tcp->options_malformed);
  EXPECT_FALSE(zero.tcp->timestamps);

  // A TS option claiming 12 bytes inside a 12-byte option area: runs past the
  // end only if the header is shorter; here it fits but is the wrong size for TS.
  ParsedPacket wrong = Parse(Syn().OptionWithLength(kOptTimestamps, 12, Bytes(10, 0)).Build());
  ASSERT_TRUE(wrong.tcp);
  EXPECT_FALSE(wrong.tcp->options_malformed);
  EXPECT_FALSE(wrong.tcp->timestamps);  // not decoded: length is not 10

  ParsedPacket past = Parse(Syn().OptionWithLength(kOptMss, 40, {0x05, 0xb4}).Build());
  ASSERT_TRUE(past.tcp);
  EXPECT_EQ(past.tcp->data_offset, 6);
  EXPECT_TRUE(past.tcp->options_malformed);
  EXPECT_FALSE(past.tcp->mss);

  ParsedPacket dangling = Parse(Syn().Nop().Nop().Nop().RawOptions({kOptMss}).Build());
  ASSERT_TRUE(dangling.tcp);
  // 4 bytes exactly: the MSS kind has no length byte.
  EXPECT_TRUE(dangling.tcp->options_malformed);
}

TEST(MalformedTest, Fragments) {
  ParsedPacket first = Parse(Syn().MoreFragments().Build());
  ASSERT_TRUE(first.ipv4);
  EXPECT_TRUE(first.ipv4->mf);
  EXPECT_EQ(first.ipv4->frag_offset, 0);
  EXPECT_TRUE(first.tcp);
  EXPECT_TRUE(first.Ipv4ChecksumOk());

  ParsedPacket later = Parse(Syn().DontFragment(false).FragmentOffset(185).Payload("x").Build());
  ASSERT_TRUE(later.ipv4);
  EXPECT_FALSE(later.ipv4->df);
  EXPECT_EQ(later.ipv4->frag_offset, 185);
  EXPECT_FALSE(later.tcp);
  EXPECT_TRUE(later.Ipv4ChecksumOk());
}

TEST(MalformedTest, WrongTotalLength) {
  ParsedPacket longer = Parse(Syn().Ipv4TotalLength(1000).Build());
  EXPECT_EQ(longer.ipv4->total_length, 1000);
  EXPECT_FALSE(longer.errors.empty());
  EXPECT_TRUE(longer.Ipv4ChecksumOk());
  EXPECT_FALSE(longer.TcpChecksumOk());  // the segment it claims is not there

  // Shorter than the frame: the tail is treated as Ethernet padding.
  ParsedPacket shorter = Parse(Syn().Payload("abcd").Ipv4TotalLength(42).Build());
  EXPECT_EQ(shorter.ipv4->total_length, 42);
  EXPECT_EQ(shorter.payload_length, 2u);
}

TEST(MalformedTest, BadChecksums) {
  ParsedPacket ip = Parse(Syn().BadIpv4Checksum().Build());
  EXPECT_FALSE(ip.Ipv4ChecksumOk());
  EXPECT_TRUE(ip.TcpChecksumOk());
  ParsedPacket tcp = Parse(Syn().BadL4Checksum().Build());
  EXPECT_TRUE(tcp.Ipv4ChecksumOk());
  EXPECT_FALSE(tcp.TcpChecksumOk());
}

TEST(DiffTest, NamesTheField) {
  Bytes a = Syn().Seq(1).Build();
  Bytes b = Syn().Seq(2).Build();
  std::string d = DiffPackets(a, b);
  EXPECT_NE(d.find("tcp.seq: expected 1, actual 2"), std::string::npos) << d;
  EXPECT_EQ(DiffPackets(a, a), "");
  EXPECT_FALSE(PacketsEqual(a, b));
  std::string desc = Parse(a).Describe();
  EXPECT_NE(desc.find("tcp: sport=40000 dport=8080"), std::string::npos) << desc;
  EXPECT_NE(desc.find("flags=[SYN]"), std::string::npos) << desc;
}

}  // namespace
}  // namespace rematcher::packet
