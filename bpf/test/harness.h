// Test harness for the XDP datapath: loads the real object through
// lb/datapath, sets up a VIP, backends and pooled connections, drives client
// handshakes, and keeps an independent model of one splice epoch so tests can
// build every expected output packet themselves (PacketBuilder, full
// checksums) instead of trusting the datapath's own offsets.
//
// Addresses are all from 198.18.0.0/15. Byte order: the model is host order;
// conversion to the records' network order happens here only.
#ifndef REMATCHER_BPF_TEST_HARNESS_H_
#define REMATCHER_BPF_TEST_HARNESS_H_

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <unistd.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bpf/rematcher_shared.h"
#include "gtest/gtest.h"
#include "lb/datapath.h"
#include "testing/bpf_fixture/bpf_fixture.h"
#include "testing/packet/packet.h"
#include "testing/packet/packet_gtest.h"

namespace rematcher::dptest {

// A new fd for the map called `name` that program `prog_fd` uses, or -1.
// Lets a test reach a map the Datapath wrapper does not expose.
inline int MapFdByName(int prog_fd, const std::string& name) {
  uint32_t ids[64] = {};
  bpf_prog_info info{};
  info.nr_map_ids = 64;
  info.map_ids = reinterpret_cast<uint64_t>(ids);
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len)) return -1;
  for (uint32_t i = 0; i < info.nr_map_ids && i < 64; i++) {
    int fd = bpf_map_get_fd_by_id(ids[i]);
    if (fd < 0) continue;
    bpf_map_info mi{};
    uint32_t mlen = sizeof(mi);
    if (bpf_obj_get_info_by_fd(fd, &mi, &mlen) == 0 && name == mi.name) return fd;
    close(fd);
  }
  return -1;
}

using bpf_fixture::RunXdp;
using bpf_fixture::TestRunResult;
using bpf_fixture::XdpVerdictName;
using packet::Bytes;
using packet::MacAddr;
using packet::PacketBuilder;
using packet::PacketsEqual;
using packet::ParseIpv4;
using packet::ParseMac;
using packet::SackBlock;

inline const MacAddr kLbMac = ParseMac("02:00:00:00:00:0a");
inline const uint32_t kVip = ParseIpv4("198.18.0.10");
constexpr uint16_t kVipPort = 8080;
inline const uint32_t kLbIp = ParseIpv4("198.18.0.11");  // pooled connections' source
constexpr uint16_t kCfgMss = 1400;
constexpr uint8_t kCfgClientWscale = 9;

struct BackendSpec {
  uint32_t ip;
  uint16_t port;
  MacAddr mac;
};
inline const BackendSpec kBackends[] = {
    {ParseIpv4("198.19.0.1"), 80, ParseMac("02:00:00:00:02:01")},
    {ParseIpv4("198.19.0.2"), 80, ParseMac("02:00:00:00:02:02")},
    {ParseIpv4("198.19.0.3"), 8000, ParseMac("02:00:00:00:02:03")},
};

struct VlanSpec {
  uint16_t vid;
  uint8_t pcp;
  uint16_t tpid;  // 0: builder default
};

inline uint16_t TciNet(const VlanSpec& v) { return htons(uint16_t(v.pcp << 13 | v.vid)); }

// The datapath's stamp for when a backend TSval arrived (rm_ts_stamp):
// CLOCK_MONOTONIC (bpf_ktime_get_ns) in units of 2^16 ns.
inline uint32_t TsStampNow() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return uint32_t((uint64_t(t.tv_sec) * 1000000000u + uint64_t(t.tv_nsec)) >> 16);
}

// A pooled connection as the test set it up (host order).
struct PoolSpec {
  uint32_t pid = 0;
  uint32_t backend = 0;
  uint16_t lb_port = 50000;
  uint32_t lb_nxt = 0x10000000;
  uint32_t be_nxt = 0x20000000;
  uint32_t lb_ts = 5000000;
  uint32_t be_ts = 7000000;
  uint32_t be_ts_at = 0;  // when be_ts arrived (TsStampNow())
  uint8_t lb_ws = 7;
  uint8_t be_ws = 7;
  uint8_t flags = RM_LEG_TS | RM_LEG_SACK | RM_LEG_WS;
  std::vector<VlanSpec> vlans;  // tags on the backend side (innermost last)
  uint16_t gen = 0;  // rm_pool.gen, also in its idle-queue entry (an id reused)
};

// A second pooled connection (pool 1, on backend 1): a rematch's target.
inline PoolSpec SecondPool() {
  PoolSpec p;
  p.pid = 1;
  p.backend = 1;
  p.lb_port = 50001;
  return p;
}

// A client as the test drives it (host order). The datapath's random ISN and
// TS clock are read back from the record after the SYN.
struct ClientSpec {
  uint32_t ip = ParseIpv4("198.18.1.1");
  uint16_t port = 40000;
  MacAddr mac = ParseMac("02:00:00:00:01:01");
  uint32_t isn = 0x01000000;
  uint16_t mss = 1460;
  bool sack = true;
  bool ts = true;
  int ws = 7;  // -1: not offered
  uint32_t tsval = 100000;
  std::vector<VlanSpec> vlans;

  // Filled in by the handshake / kept up to date by the test.
  uint32_t id = RM_NO_ID;
  uint32_t s_isn = 0;
  uint32_t s_ts0 = 0;
  uint32_t c_nxt = 0;     // next seq the client sends
  uint32_t s_nxt = 0;     // next seq the LB sends to the client
  uint32_t c_ts = 0;      // highest TSval the client sent
  uint32_t s_ts = 0;      // highest TSval the client saw from the LB
};

// One splice epoch, computed from what the test set up (never read from the
// datapath's record): DESIGN.md's d_req/d_resp and the TS rules.
struct Epoch {
  uint32_t c_nxt0, s_nxt0;  // client space at epoch start
  uint32_t c_ts0, s_ts0;    // highest TSvals on the client leg at epoch start
  uint32_t lb_nxt0, be_nxt0, lb_ts0, be_ts0;  // pool values at epoch start
  uint8_t c_ws, s_ws, lb_ws, be_ws;

  uint32_t SeqC2B(uint32_t s) const { return lb_nxt0 + (s - c_nxt0); }
  uint32_t AckC2B(uint32_t a) const {
    return int32_t(a - s_nxt0) < 0 ? be_nxt0 : be_nxt0 + (a - s_nxt0);
  }
  uint32_t SackEdgeC2B(uint32_t e) const { return be_nxt0 + (e - s_nxt0); }
  uint32_t TsvalC2B(uint32_t v) const { return lb_ts0 + (v - c_ts0); }
  uint32_t TsecrC2B(uint32_t e) const {
    if (e == 0) return 0;
    return int32_t(e - s_ts0) < 0 ? be_ts0 : be_ts0 + (e - s_ts0);
  }
  uint32_t SeqB2C(uint32_t s) const { return s_nxt0 + (s - be_nxt0); }
  uint32_t AckB2C(uint32_t a) const {
    return int32_t(a - lb_nxt0) < 0 ? c_nxt0 : c_nxt0 + (a - lb_nxt0);
  }
  uint32_t SackEdgeB2C(uint32_t e) const { return c_nxt0 + (e - lb_nxt0); }
  uint32_t TsvalB2C(uint32_t v) const { return s_ts0 + (v - be_ts0); }
  uint32_t TsecrB2C(uint32_t e) const {
    if (e == 0) return 0;
    return int32_t(e - lb_ts0) < 0 ? c_ts0 : c_ts0 + (e - lb_ts0);
  }
  uint16_t WinC2B(uint16_t w) const {
    uint64_t v = (uint64_t(w) << c_ws) >> lb_ws;
    return v > 0xffff ? 0xffff : uint16_t(v);
  }
  uint16_t WinB2C(uint16_t w) const {
    uint64_t v = (uint64_t(w) << be_ws) >> s_ws;
    return v > 0xffff ? 0xffff : uint16_t(v);
  }
};

inline Bytes Pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; i++) b[i] = uint8_t(seed + i * 7 + (i >> 8));
  return b;
}

// One TCP segment as a test describes it; BuildSeg lays it out with Linux's
// option order (NOP NOP TS, NOP NOP SACK).
struct Seg {
  uint8_t flags = packet::ACK;
  uint32_t seq = 0, ack = 0;
  uint16_t win = 1000;
  bool ts = false;
  uint32_t tsval = 0, tsecr = 0;
  bool ts_nops = false;  // TS option replaced by 10 NOPs
  bool ts_odd = false;   // NOP TS NOP: the option at an odd offset (21)
  bool sack = false;
  std::vector<SackBlock> blocks;
  size_t sack_nops = 0;  // NOPs after the (compacted) SACK option, or in its place
  Bytes payload;
};

inline Bytes BuildSeg(PacketBuilder b, const Seg& s) {
  b.Flags(s.flags).Seq(s.seq).Ack(s.ack).Window(s.win);
  if (s.ts || s.ts_nops) {
    b.Nop();
    if (!s.ts_odd) b.Nop();
    if (s.ts) b.Timestamps(s.tsval, s.tsecr);
    else b.RawOptions(Bytes(10, packet::kOptNop));
    if (s.ts_odd) b.Nop();
  }
  if (s.sack) {
    b.Nop().Nop();
    if (!s.blocks.empty()) b.Sack(s.blocks);
    if (s.sack_nops) b.RawOptions(Bytes(s.sack_nops, packet::kOptNop));
  }
  if (!s.payload.empty()) b.Payload(s.payload);
  return b.Build();
}

// Blocks whose left edge is before `floor` describe another epoch's data and
// go; the rest are moved by `map`; the freed bytes become NOPs.
template <typename F>
void TranslateSack(Seg& s, uint32_t floor, F map, bool keep) {
  if (!s.sack) return;
  std::vector<SackBlock> kept;
  if (keep) {
    for (const SackBlock& b : s.blocks)
      if (int32_t(b.left - floor) >= 0) kept.push_back({map(b.left), map(b.right)});
  }
  size_t n = s.blocks.size();
  if (kept.empty()) {
    s.blocks.clear();
    s.sack_nops = 2 + 8 * n;
  } else {
    s.sack_nops = 8 * (n - kept.size());
    s.blocks = kept;
  }
}

inline Seg C2B(const Epoch& e, Seg s, bool keep_ts = true, bool keep_sack = true) {
  s.seq = e.SeqC2B(s.seq);
  if (s.flags & packet::ACK) s.ack = e.AckC2B(s.ack);
  if (!(s.flags & packet::SYN)) s.win = e.WinC2B(s.win);
  s.flags &= uint8_t(~(packet::ECE | packet::CWR));
  if (s.ts) {
    if (keep_ts) {
      s.tsval = e.TsvalC2B(s.tsval);
      s.tsecr = e.TsecrC2B(s.tsecr);
    } else {
      s.ts = false;
      s.ts_nops = true;
    }
  }
  TranslateSack(s, e.s_nxt0, [&](uint32_t x) { return e.SackEdgeC2B(x); }, keep_sack);
  return s;
}

inline Seg B2C(const Epoch& e, Seg s, bool keep_ts = true, bool keep_sack = true) {
  s.seq = e.SeqB2C(s.seq);
  if (s.flags & packet::ACK) s.ack = e.AckB2C(s.ack);
  if (!(s.flags & packet::SYN)) s.win = e.WinB2C(s.win);
  s.flags &= uint8_t(~(packet::ECE | packet::CWR));
  if (s.ts) {
    if (keep_ts) {
      s.tsval = e.TsvalB2C(s.tsval);
      s.tsecr = e.TsecrB2C(s.tsecr);
    } else {
      s.ts = false;
      s.ts_nops = true;
    }
  }
  TranslateSack(s, e.lb_nxt0, [&](uint32_t x) { return e.SackEdgeB2C(x); }, keep_sack);
  return s;
}

// Counter changes: only those listed may change (rx is implied, +1 per run).
using Deltas = std::map<int, int64_t>;

class DatapathFixture : public ::testing::Test {
 protected:
  // DatapathOptions::idle_lifo for LoadDatapath. The packet tests' models
  // take pooled connections in the order they were queued (FIFO); the
  // LIFO order the product runs with has tests of its own (IdleOrder*).
  bool idle_lifo_ = false;
  void SetUp() override {
    REMATCHER_SKIP_WITHOUT_BPF();
    LoadDatapath(16);
  }

  // ts_estimate: DatapathOptions::estimate_backend_ts_clock; off by default,
  // so the TSval models below (offsets from the last TSvals) are exact.
  void LoadDatapath(uint32_t max_clients, uint8_t sack_ok = 1, uint8_t ts_ok = 1,
                    uint8_t rematch = 1, bool ts_estimate = false) {
    dp_.reset();
    DatapathOptions o;
    o.max_clients = max_clients;
    o.max_pool = 64;
    o.estimate_backend_ts_clock = ts_estimate;
    o.idle_lifo = idle_lifo_;
    auto dp = Datapath::Load(o);
    ASSERT_TRUE(dp.ok()) << dp.status();
    dp_ = std::move(*dp);
    rm_config cfg{};
    cfg.vip = htonl(kVip);
    cfg.vip_port = htons(kVipPort);
    cfg.mss = kCfgMss;
    cfg.client_wscale = kCfgClientWscale;
    cfg.sack_ok = sack_ok;
    cfg.ts_ok = ts_ok;
    cfg.rematch = rematch;
    cfg.events = 0;
    cfg.max_clients = max_clients;
    ASSERT_TRUE(dp_->SetConfig(cfg).ok());
    for (uint32_t b = 0; b < 3; b++) {
      rm_backend be{htonl(kBackends[b].ip), htons(kBackends[b].port), RM_BE_ACTIVE};
      ASSERT_TRUE(dp_->SetBackend(b, be).ok());
    }
    ASSERT_TRUE(dp_->SetBackendList({0}).ok());
  }

  // Turns the arrival check on (rm_config::reroute_margin and
  // reroute_ratio_pct, the binary's defaults unless given) with backends 0
  // and 1 each other's alternative.
  void EnableReroute(uint32_t margin = 2, uint32_t ratio_pct = 200) {
    auto cfg = dp_->GetConfig();
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    cfg->reroute_margin = margin;
    cfg->reroute_ratio_pct = ratio_pct;
    ASSERT_TRUE(dp_->SetConfig(*cfg).ok());
    dp_->SetBackendAlt(0, 1);
    dp_->SetBackendAlt(1, 0);
  }

  // ---- pools
  rm_pool_key PoolKey(const PoolSpec& p) const {
    const BackendSpec& b = kBackends[p.backend];
    return rm_pool_key{htonl(b.ip), htonl(kLbIp), htons(b.port), htons(p.lb_port)};
  }
  void AddPool(const PoolSpec& p, bool queue = true) {
    rm_pool r{};
    r.state = RM_P_IDLE;
    r.backend_id = p.backend;
    r.owner = RM_NO_ID;
    r.key = PoolKey(p);
    r.lb_nxt = p.lb_nxt;
    r.be_nxt = p.be_nxt;
    r.be_edge = p.lb_nxt + (1u << 20);  // the backend has advertised 1 MiB
    r.lb_ts_last = p.lb_ts;
    r.be_ts_last = p.be_ts;
    r.be_ts_at = p.be_ts_at;
    r.be_isn = p.be_nxt - 1;
    r.lb_wscale = p.lb_ws;
    r.be_wscale = p.be_ws;
    r.flags = p.flags;
    r.synack_seen = 1;
    r.be_mss = 1400;
    r.gen = p.gen & 0xfff;
    r.vlan_tci = p.vlans.empty() ? 0 : TciNet(p.vlans.back());
    memcpy(r.be_mac, kBackends[p.backend].mac.data(), 6);
    ASSERT_TRUE(dp_->PutPool(p.pid, r).ok());
    if (queue) {
      ASSERT_TRUE(dp_->PushIdle(p.backend, p.pid, p.gen).ok());
    }
  }
  rm_pool Pool(uint32_t pid) {
    auto p = dp_->GetPool(pid);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : rm_pool{};
  }
  rm_client Client(uint32_t id) {
    auto c = dp_->GetClient(id);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : rm_client{};
  }
  // Drains a backend's idle queue in the order requests take from it (and
  // puts it back as it was).
  std::vector<uint32_t> IdleQueue(uint32_t backend) {
    std::vector<uint32_t> out;
    for (;;) {
      auto p = dp_->PopIdle(backend);
      EXPECT_TRUE(p.ok());
      if (!p.ok() || !p->has_value()) break;
      out.push_back(**p);
    }
    std::vector<uint32_t> back = out;
    if (dp_->idle_lifo()) std::reverse(back.begin(), back.end());
    for (uint32_t pid : back) EXPECT_TRUE(dp_->PushIdle(backend, pid).ok());
    return out;
  }

  // ---- packets
  static void AddTags(PacketBuilder& b, const std::vector<VlanSpec>& tags) {
    for (const VlanSpec& v : tags) b.Vlan(v.vid, v.pcp, v.tpid);
  }
  PacketBuilder FromClient(const ClientSpec& c) const {
    PacketBuilder b;
    b.Eth(c.mac, kLbMac);
    AddTags(b, c.vlans);
    b.Ipv4(c.ip, kVip).Tcp(c.port, kVipPort);
    return b;
  }
  // What the LB sends the client (spliced or originated).
  PacketBuilder ToClient(const ClientSpec& c) const {
    PacketBuilder b;
    b.Eth(kLbMac, c.mac);
    AddTags(b, c.vlans);
    b.Ipv4(kVip, c.ip).Tcp(kVipPort, c.port);
    return b;
  }
  PacketBuilder FromBackend(const PoolSpec& p) const {
    const BackendSpec& be = kBackends[p.backend];
    PacketBuilder b;
    b.Eth(be.mac, kLbMac);
    AddTags(b, p.vlans);
    b.Ipv4(be.ip, kLbIp).Tcp(be.port, p.lb_port);
    return b;
  }
  PacketBuilder ToBackend(const PoolSpec& p) const {
    const BackendSpec& be = kBackends[p.backend];
    PacketBuilder b;
    b.Eth(kLbMac, be.mac);
    AddTags(b, p.vlans);
    b.Ipv4(kLbIp, be.ip).Tcp(p.lb_port, be.port);
    return b;
  }
  // The client's SYN with Linux's option order.
  Bytes Syn(const ClientSpec& c) const {
    PacketBuilder b = FromClient(c);
    b.Flags(packet::SYN).Seq(c.isn).Window(64240).Mss(c.mss);
    if (c.sack) b.SackPermitted();
    if (c.ts) b.Timestamps(c.tsval, 0);
    else if (c.sack) b.Nop().Nop();
    if (c.ws >= 0) b.Nop().WindowScale(uint8_t(c.ws));
    return b.Build();
  }
  // The SYN-ACK the datapath lays out (see rm_send_reply), for `c` whose
  // s_isn/s_ts0 were read from the record.
  Bytes SynAck(const ClientSpec& c, bool sack_ok = true, bool ts_ok = true) const {
    PacketBuilder b = ToClient(c);
    b.Flags(packet::SYN | packet::ACK).Seq(c.s_isn).Ack(c.isn + 1).Window(65535).Mss(kCfgMss);
    bool ts = c.ts && ts_ok, sack = c.sack && sack_ok;
    if (ts) {
      if (sack) b.SackPermitted();
      else b.Nop().Nop();
      b.Timestamps(c.s_ts0, c.tsval);
    } else if (sack) {
      b.Nop().Nop().SackPermitted();
    }
    if (c.ws >= 0) b.Nop().WindowScale(kCfgClientWscale);
    return b.Build();
  }

  TestRunResult Run(const Bytes& in) {
    auto r = RunXdp(dp_->prog_fd(), in);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return TestRunResult{};
    EXPECT_NE(r->retval, uint32_t(XDP_ABORTED));
    return *r;
  }
  StatsArray Stats() {
    auto s = dp_->Stats();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : StatsArray{};
  }
  static std::string DescribeDeltas(const Deltas& d) {
    std::string out;
    for (auto& [k, v] : d) absl::StrAppend(&out, StatName(k), "=", v, " ");
    return out;
  }
  // Every counter that moved, and by how much (rx excluded).
  static Deltas Diff(const StatsArray& a, const StatsArray& b) {
    Deltas d;
    for (int i = 1; i < RM_ST__MAX; i++)
      if (b[i] != a[i]) d[i] = int64_t(b[i] - a[i]);
    return d;
  }

  // Runs one packet and checks verdict, output (when given) and counters.
  // For XDP_PASS/XDP_DROP with no expected output, PASS must leave the
  // packet untouched.
  TestRunResult Expect(const std::string& what, const Bytes& in, uint32_t verdict,
                       const Bytes* want, const Deltas& deltas) {
    SCOPED_TRACE(what);
    StatsArray before = Stats();
    TestRunResult r = Run(in);
    StatsArray after = Stats();
    EXPECT_EQ(r.retval, verdict) << what << ": got " << XdpVerdictName(r.retval)
                                 << "\ninput:\n" << packet::Parse(in).Describe()
                                 << "\noutput:\n" << packet::Parse(r.output).Describe();
    if (want) {
      EXPECT_TRUE(PacketsEqual(*want, r.output)) << what;
      packet::ParsedPacket p = packet::Parse(r.output);
      if (p.ipv4) {
        EXPECT_TRUE(p.Ipv4ChecksumOk()) << what;
      }
      if (p.tcp) {
        EXPECT_TRUE(p.TcpChecksumOk()) << what;
      }
    } else if (verdict == XDP_PASS) {
      EXPECT_TRUE(PacketsEqual(in, r.output)) << what << ": XDP_PASS must not modify";
    }
    EXPECT_EQ(after[RM_ST_RX] - before[RM_ST_RX], 1u);
    Deltas got = Diff(before, after);
    EXPECT_EQ(DescribeDeltas(got), DescribeDeltas(deltas)) << what << ": counters";
    return r;
  }
  TestRunResult ExpectTx(const std::string& what, const Bytes& in, const Bytes& want,
                         const Deltas& deltas) {
    return Expect(what, in, XDP_TX, &want, deltas);
  }

  // SYN, SYN-ACK (checked), third ACK (checked). Fills c.id, s_isn, s_ts0...
  void Handshake(ClientSpec& c) {
    SCOPED_TRACE("handshake");
    Bytes syn = Syn(c);
    TestRunResult r = Run(syn);
    ASSERT_EQ(r.retval, uint32_t(XDP_TX));
    auto id = dp_->LookupClient(FlowKey(c));
    ASSERT_TRUE(id.ok() && id->has_value());
    c.id = **id;
    rm_client rec = Client(c.id);
    ASSERT_EQ(rec.state, uint32_t(RM_C_SYN_RCVD));
    c.s_isn = rec.s_isn;
    c.s_ts0 = rec.s_ts_last;
    EXPECT_TRUE(PacketsEqual(SynAck(c), r.output));
    c.c_nxt = c.isn + 1;
    c.s_nxt = c.s_isn + 1;
    c.c_ts = c.tsval;
    c.s_ts = c.s_ts0;
    // third ACK
    c.tsval += 1;
    PacketBuilder ack = FromClient(c);
    ack.Flags(packet::ACK).Seq(c.c_nxt).Ack(c.s_nxt).Window(502);
    if (c.ts) ack.Nop().Nop().Timestamps(c.tsval, c.s_ts0);
    Expect("third ACK", ack.Build(), XDP_DROP, nullptr,
           {{RM_ST_HANDSHAKES, 1}, {RM_ST_CONSUMED, 1}});
    if (c.ts) c.c_ts = c.tsval;
    rec = Client(c.id);
    EXPECT_EQ(rec.state, uint32_t(RM_C_ESTABLISHED));
    EXPECT_EQ(rec.c_nxt, c.c_nxt);
    EXPECT_EQ(rec.c_acked, c.s_nxt);
  }

  rm_flow_key FlowKey(const ClientSpec& c) const {
    return rm_flow_key{htonl(c.ip), htonl(kVip), htons(c.port), htons(kVipPort)};
  }

  // The epoch a splice of `c` onto `p` starts now, per DESIGN.md.
  Epoch StartEpoch(const ClientSpec& c, const PoolSpec& p) const {
    Epoch e{};
    e.c_nxt0 = c.c_nxt;
    e.s_nxt0 = c.s_nxt;
    e.c_ts0 = c.c_ts;
    e.s_ts0 = c.s_ts;
    e.lb_nxt0 = p.lb_nxt;
    e.be_nxt0 = p.be_nxt;
    e.lb_ts0 = p.lb_ts;
    e.be_ts0 = p.be_ts;
    e.c_ws = c.ws >= 0 ? uint8_t(c.ws) : 0;
    e.s_ws = c.ws >= 0 ? kCfgClientWscale : 0;
    e.lb_ws = p.lb_ws;
    e.be_ws = p.be_ws;
    return e;
  }

  std::unique_ptr<Datapath> dp_;
};

}  // namespace rematcher::dptest

#endif  // REMATCHER_BPF_TEST_HARNESS_H_
