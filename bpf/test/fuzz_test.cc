// Fuzzing the XDP datapath through BPF_PROG_TEST_RUN: random bytes,
// truncated and bit-flipped copies of real packets, and well-formed packets
// on owned tuples with forged flags, out-of-window seq/ack, option soup and
// bogus SACK blocks. Seeded (REMATCHER_FUZZ_SEED overrides), bounded in count
// and time.
//
// Per packet: never XDP_ABORTED (or any verdict but DROP/PASS/TX); a passed
// packet is untouched; a well-formed packet on an owned tuple is never passed
// to the stack; anything transmitted from a well-formed input carries valid
// IPv4 and TCP checksums.
// Two driven flows keep completing exchanges (so rematches and the arrival
// check run under the fuzz); their pooled connections take random backend
// segments too, FIN and RST included, and one that dies is retired and
// replaced as the core would (record freed, queue compacted, a new one
// queued), and a driven client that dies reconnects.
// Afterwards: the pool/client records are consistent (every IDLE pool is in
// its backend's queue exactly once, every BUSY pool is owned by exactly one
// live client of the matching epoch and queued nowhere), and the protected
// flows (fuzzed without FIN/RST) still translate a valid segment byte-exact.
#include <arpa/inet.h>
#include <linux/bpf.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

#include "bpf/test/harness.h"
#include "gtest/gtest.h"

namespace rematcher::dptest {
namespace {

using packet::ACK;
using packet::FIN;
using packet::PSH;
using packet::RST;
using packet::SYN;

constexpr int kPackets = 200000;
constexpr int kMaxSeconds = 120;
constexpr int kPools = 8;     // 0-5 carry the clients; 6,7 idle, for rematches
constexpr uint32_t kMaxPoolIds = 64;  // the pool table: replacements take 8..63
constexpr int kClients = 6;  // 0,1 protected; 2,3 sacrificial; 4,5 driven
// Whether client i's flow and pool i are spared FIN and
// RST: protected flows must translate byte-exact at the end, driven ones
// keep crossing request boundaries (see drive()).
bool Spared(int i) { return i < 2 || i >= 4; }

class FuzzTest : public DatapathFixture {
 protected:
  std::mt19937_64 rng_;
  uint32_t R32() { return uint32_t(rng_()); }
  uint32_t U(uint32_t n) { return n ? uint32_t(rng_() % n) : 0; }
  bool P(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  uint32_t Near(uint32_t base) {
    switch (U(4)) {
      case 0: return base;
      case 1: return base + U(3000);
      case 2: return base - U(3000);
      default: return R32();
    }
  }

  // Random but length-consistent options, at most `room` bytes; sometimes
  // with a deliberately broken length.
  // A payload shaped like HTTP/1.x requests, for the datapath's head reader
  // (http_head_len): a GET or a POST with a body, sometimes a second
  // request behind it, then bytes flipped or the end cut off.
  Bytes HttpSoup() {
    std::string r;
    if (P(0.5)) {
      r = P(0.5) ? "GET /f HTTP/1.1\r\nHost: x\r\n\r\n"
                 : absl::StrCat("POST /f HTTP/1.1\r\nContent-Length: ", U(40), "\r\n\r\n",
                                std::string(U(40), 'b'));
      if (P(0.3)) r += "GET /g HTTP/1.0\r\n\r\n";
    } else {
      r = HttpResponse(P(0.5));
    }
    Bytes b(r.begin(), r.end());
    if (P(0.5))
      for (uint32_t k = U(4); k > 0; k--) b[U(b.size())] = uint8_t(R32());
    if (P(0.3)) b.resize(U(b.size()));
    return b;
  }
  // An HTTP/1.x response (for the response head reader, resp_read): a
  // Content-Length or a chunked one, one in ten `short` of its framing
  // when asked (a backend that paused mid-body).
  std::string HttpResponse(bool maybe_short) {
    std::string body(1 + U(99), 'r');
    const bool cut = maybe_short && P(0.1);
    if (P(0.5)) {
      return absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: ", body.size() + (cut ? 1 + U(50) : 0),
                          "\r\n\r\n", body);
    }
    return absl::StrCat("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                        absl::Hex(body.size()), "\r\n", body, "\r\n", cut ? "" : "0\r\n\r\n");
  }
  // A driven response: one in three an HTTP response, now and then short
  // of its framing (the client's next request then finds it owed and is
  // pinned for good); the others opaque.
  Bytes DrivenResponse() {
    if (!P(0.33)) return Pattern(100, 5);
    const std::string r = HttpResponse(true);
    return Bytes(r.begin(), r.end());
  }
  // A driven client's request: one in five an HTTP GET, which the head
  // reader frames (hostile bytes right behind one then pin the client for
  // good, as a pipelining one); the others opaque, to keep clients moving.
  Bytes DrivenRequest() {
    if (!P(0.2)) return Pattern(50, 6);
    const std::string r = "GET /d HTTP/1.1\r\nHost: fuzz\r\n\r\n";
    return Bytes(r.begin(), r.end());
  }

  Bytes OptionSoup(uint32_t seq_base, size_t room) {
    Bytes o;
    int n = U(8);
    for (int i = 0; i < n; i++) {
      Bytes one;
      switch (U(9)) {
        case 0: one = {1}; break;
        case 1: one = {2, 4, uint8_t(R32()), uint8_t(R32())}; break;
        case 2: one = {3, 3, uint8_t(U(20))}; break;
        case 3: one = {4, 2}; break;
        case 4: {
          one = {8, 10};
          for (int k = 0; k < 8; k++) one.push_back(uint8_t(R32()));
          break;
        }
        case 5: {  // SACK with 1..4 blocks, edges near the flow or random
          int blocks = 1 + U(4);
          one = {5, uint8_t(2 + 8 * blocks)};
          for (int b = 0; b < 2 * blocks; b++) {
            uint32_t e = Near(seq_base);
            for (int k = 3; k >= 0; k--) one.push_back(uint8_t(e >> (8 * k)));
          }
          break;
        }
        case 6: one = {uint8_t(U(256)), uint8_t(U(6))}; break;  // often bad lengths
        case 7: one = {0}; break;                               // EOL
        default: {
          uint8_t k = uint8_t(30 + U(200)), l = uint8_t(2 + U(6));
          one = {k, l};
          for (int j = 2; j < l; j++) one.push_back(uint8_t(R32()));
        }
      }
      if (o.size() + one.size() > room) break;
      o.insert(o.end(), one.begin(), one.end());
    }
    return o;
  }

  struct Flow {
    ClientSpec c;
    PoolSpec p;
    Epoch e;
  };

  // Whether a frame carries a spared flow's tuple (clients 0,1,4,5 to the
  // VIP, or pools 0,1,4-7 from their backends), in either direction.
  static bool HitsProtected(const Bytes& in, const std::vector<Flow>& flows,
                            const std::vector<PoolSpec>& pools) {
    packet::ParsedPacket p = packet::Parse(in);
    if (!p.ipv4 || !p.tcp) return false;
    for (int i = 0; i < int(flows.size()); i++) {
      if (!Spared(i)) continue;
      const ClientSpec& c = flows[i].c;
      if (p.ipv4->src == c.ip && p.tcp->sport == c.port) return true;
    }
    for (int i = 0; i < int(pools.size()); i++) {
      if (!Spared(i)) continue;
      const BackendSpec& b = kBackends[pools[i].backend];
      if (p.ipv4->src == b.ip && p.tcp->dport == pools[i].lb_port) return true;
    }
    return false;
  }
};

TEST_F(FuzzTest, RandomPacketsNeverAbortAndRecordsStayConsistent) {
  uint64_t seed = 0x5eed2024;
  if (const char* s = getenv("REMATCHER_FUZZ_SEED")) seed = strtoull(s, nullptr, 0);
  std::cout << "fuzz seed " << seed << " (REMATCHER_FUZZ_SEED to override)\n";
  rng_.seed(seed);

  LoadDatapath(64);
  ASSERT_TRUE(dp_->SetBackendList({0, 1}).ok());
  std::vector<PoolSpec> pools(kPools);
  for (int i = 0; i < kPools; i++) {
    pools[i].pid = i;
    pools[i].backend = i % 2;
    pools[i].lb_port = 50000 + i;
    pools[i].lb_nxt = 0x10000000u * (i + 1) + 0xFFF0;
    pools[i].be_nxt = 0xFFFFF000u + 0x100 * i;
    pools[i].lb_ts = 1000 * i + 7;
    pools[i].be_ts = 0xFFFFFF00u + i;
    pools[i].lb_ws = 7;
    pools[i].be_ws = uint8_t(i);
    AddPool(pools[i]);
  }
  // Round robin over backends 0,1 with FIFO queues: client i gets pool i.
  std::vector<Flow> flows(kClients);
  for (int i = 0; i < kClients; i++) {
    Flow& f = flows[i];
    f.c.port = 40000 + i;
    f.c.isn = 0xFFFFFF00u + 0x1000 * i;
    f.c.ws = 3 + i;
    Handshake(f.c);
    f.p = pools[i];
    f.e = StartEpoch(f.c, f.p);
    Seg s;
    s.flags = ACK | PSH;
    s.seq = f.c.c_nxt;
    s.ack = f.c.s_nxt;
    s.ts = true;
    s.tsval = ++f.c.tsval;
    s.tsecr = f.c.s_ts;
    s.payload = Pattern(200, uint8_t(i));
    f.c.c_nxt += 200;
    ExpectTx("first request", BuildSeg(FromClient(f.c), s), BuildSeg(ToBackend(f.p), C2B(f.e, s)),
             {{RM_ST_TX_C2B, 1}, {RM_ST_SPLICES, 1}});
    ASSERT_EQ(Client(f.c.id).pool_id, uint32_t(i));
  }
  if (HasFailure()) return;
  // Rematching and the arrival check run under the fuzz too: now and then
  // a driven client (4, 5) completes an exchange, built from its record as it
  // stands (response, the client's ACK of it, a decision, the next
  // request), so its requests cross boundaries and move between the
  // backends while the random segments keep coming; the backends'
  // alternatives (rm_backend_load::alt) are set, and now and then garbled.
  EnableReroute();
  if (HasFailure()) return;
  auto run_checked = [&](const std::string& what, const Bytes& in) {
    auto r = RunXdp(dp_->prog_fd(), in);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->retval == XDP_DROP || r->retval == XDP_PASS || r->retval == XDP_TX)
        << what << ": verdict " << XdpVerdictName(r->retval);
    EXPECT_NE(r->retval, XDP_PASS) << what << ": an owned tuple's segment passed to the stack";
  };
  int driven = 0, replaced = 0, reconnected = 0;
  // The driven flows' pooled connections (4-7 and their replacements) take
  // random backend segments: one that dies is retired and replaced as the
  // core does (PoolManager::Retire, then a new connection: the record
  // freed and its tuple unmapped, the backend's idle queue compacted, a new
  // record queued under a free id, with the next generation when the id
  // was used before).
  std::vector<uint32_t> driven_pools = {4, 5, 6, 7};
  std::vector<uint32_t> free_pids;
  for (uint32_t pid = kPools; pid < kMaxPoolIds; pid++) free_pids.push_back(pid);
  std::vector<uint16_t> gens(kMaxPoolIds, 0);
  uint32_t next_pid = kPools;  // one past the highest id used
  uint16_t next_port = 50000 + kPools;
  auto replace_if_dead = [&](uint32_t pid) {
    if (Pool(pid).state != RM_P_DEAD || free_pids.empty()) return;
    const PoolSpec old = pools[pid];
    ASSERT_TRUE(dp_->DeletePool(pid, PoolKey(old)).ok());
    ASSERT_TRUE(dp_->CompactIdle(old.backend).ok());
    PoolSpec n = old;
    n.pid = free_pids.front();
    free_pids.erase(free_pids.begin());
    if (pid >= kPools) free_pids.push_back(pid);
    next_pid = std::max(next_pid, n.pid + 1);
    n.gen = ++gens[n.pid] & 0xfff;
    n.lb_port = next_port++;
    n.lb_nxt = R32();
    n.be_nxt = R32();
    n.lb_ts = R32();
    n.be_ts = R32();
    n.be_ws = uint8_t(U(15));
    if (pools.size() <= n.pid) pools.resize(n.pid + 1);
    pools[n.pid] = n;
    AddPool(n);
    std::replace(driven_pools.begin(), driven_pools.end(), pid, n.pid);
    replaced++;
  };
  // A move that parks its old connection (RM_P_PARKED: an unframed
  // response, no ACK owed) is unparked as the core does on its event, so
  // the pools do not run dry (the window shrink itself is the core's and
  // not modelled here).
  uint64_t parks_seen = 0;
  int unparked = 0;
  auto unpark_parked = [&] {
    const uint64_t parks = dp_->Counter(RM_ST_POOL_PARKED);
    if (parks == parks_seen) return;
    parks_seen = parks;
    for (uint32_t pid = 0; pid < next_pid; pid++) {
      rm_pool rec = Pool(pid);
      if (rec.state != RM_P_PARKED) continue;
      auto r = dp_->UnparkPool(pid, rec);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(*r, 1);
      if (*r == 1) unparked++;
    }
  };
  auto drive = [&](Flow& f) {
    rm_client c = Client(f.c.id);
    if (c.state != RM_C_ESTABLISHED) {
      // Reset or closed through its pooled connection: the client comes
      // back on a new connection (its old record is freed as the core's
      // collector would).
      if (c.state != RM_C_FREE) ASSERT_TRUE(dp_->FreeClient(f.c.id, ~0ull).ok());
      if (f.c.port >= 60000) return;  // bounded
      f.c.port = uint16_t(f.c.port + 10);
      f.c.isn = R32();
      f.c.tsval = R32();
      Handshake(f.c);
      reconnected++;
      return;
    }
    // The next segment at the client's record's current position.
    auto client_seg = [&](uint8_t flags, const Bytes& payload) {
      c = Client(f.c.id);
      return FromClient(f.c)
          .Flags(flags)
          .Seq(c.c_nxt)
          .Ack(c.s_nxt)
          .Window(1000)
          .Nop()
          .Nop()
          .Timestamps(c.c_ts_last + 1, c.s_ts_last)
          .Payload(payload)
          .Build();
    };
    if (c.pool_id == RM_NO_ID) {
      // No pooled connection yet (a new client, or its first request
      // found none idle): its first request, again.
      run_checked("driven first request", client_seg(ACK | PSH, DrivenRequest()));
      return;
    }
    if (c.pool_id >= pools.size()) return;
    driven++;
    const PoolSpec& p = pools[c.pool_id];
    run_checked("driven response", FromBackend(p)
                                       .Flags(ACK | PSH)
                                       .Seq(c.s_nxt - c.d_resp)
                                       .Ack(c.c_nxt + c.d_req)
                                       .Window(1000)
                                       .Nop()
                                       .Nop()
                                       .Timestamps(c.b_ts_last + 1, c.lb_ts_last)
                                       .Payload(DrivenResponse())
                                       .Build());
    run_checked("driven ack", client_seg(ACK, {}));
    dp_->SetDecision(f.c.id, Client(f.c.id).req_no + 1, U(2));
    run_checked("driven request", client_seg(ACK | PSH, DrivenRequest()));
  };
  std::vector<rm_client> start(kClients);
  for (int i = 0; i < kClients; i++) start[i] = Client(flows[i].c.id);

  std::map<std::string, int> kinds;
  std::map<uint32_t, int> verdicts;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kMaxSeconds);
  int done = 0, failures = 0;
  for (; done < kPackets && std::chrono::steady_clock::now() < deadline && failures < 10;
       done++) {
    Bytes in;
    std::string kind;
    bool wellformed = false, owned = false;
    uint32_t hit_pool = RM_NO_ID;
    if (P(0.02)) {
      drive(flows[4 + U(2)]);
      unpark_parked();
    }
    if (P(0.001)) {
      // A garbled alternative: out of range, unknown or the backend itself.
      const uint32_t garble[] = {0, 1, 2, 3, 64, 65, 0xFFFFFFFFu, R32()};
      const_cast<rm_backend_load&>(dp_->BackendLoad(U(2))).alt = garble[U(8)];
    }
    uint32_t pick = U(100);
    if (pick < 10) {
      kind = "random bytes";
      in.resize(14 + U(120));
      for (auto& b : in) b = uint8_t(R32());
      if (P(0.7)) {  // make it look like IPv4 to reach deeper
        in[12] = 0x08;
        in[13] = 0x00;
        if (in.size() > 14) in[14] = uint8_t(0x40 | U(16));
        if (in.size() > 23 && P(0.8)) in[23] = 6;
        if (in.size() >= 34 && P(0.5)) {
          uint32_t d = htonl(P(0.5) ? kVip : kLbIp);
          memcpy(&in[30], &d, 4);
        }
      }
    } else {
      // A well-formed segment on some tuple.
      int t = U(10);
      PacketBuilder b;
      uint32_t seq_base;
      bool protect = false;
      if (t < 5) {
        const int fi = int(U(kClients));
        Flow& f = flows[fi];
        protect = Spared(fi);
        b = FromClient(f.c);
        seq_base = f.c.c_nxt;
        b.Seq(Near(f.c.c_nxt)).Ack(Near(f.c.s_nxt));
        kind = protect ? "client (protected)" : "client";
        owned = true;
      } else if (t < 9) {
        // Pools 0-3 (the protected and sacrificial flows') or one of the
        // driven flows' (replaced when it dies, after this segment).
        const PoolSpec& p = P(0.99) ? pools[U(4)] : pools[driven_pools[U(4)]];
        hit_pool = p.pid;
        protect = p.pid < 2;
        b = FromBackend(p);
        seq_base = p.be_nxt;
        b.Seq(Near(p.be_nxt)).Ack(Near(p.lb_nxt));
        kind = protect ? "backend (protected)" : "backend";
        owned = true;
      } else {
        ClientSpec n;
        n.port = uint16_t(20000 + U(200));
        n.ip = ParseIpv4("198.18.2.1") + U(4);
        b = FromClient(n);
        seq_base = R32();
        b.Seq(seq_base).Ack(R32());
        kind = "other client";
        owned = true;  // to the VIP: ours to answer or drop
      }
      uint8_t flags = uint8_t(R32());
      if (P(0.5)) flags &= uint8_t(~(packet::URG | packet::ECE | packet::CWR));
      if (protect) flags &= uint8_t(~(FIN | RST));
      b.Flags(flags).Window(uint16_t(R32()));
      Bytes opts = OptionSoup(seq_base, 40);
      b.RawOptions(opts);
      b.Payload(P(0.1) ? HttpSoup() : Pattern(P(0.5) ? 0 : U(300), uint8_t(R32())));
      in = b.Build();
      wellformed = !packet::Parse(in).tcp->options_malformed;
      if (P(0.15)) {  // mutate: truncate or flip bytes (breaks checksums)
        kind += " mutated";
        wellformed = false;
        owned = false;
        // Protected flows only get truncated: a flipped byte could forge a
        // FIN or RST (the datapath does not verify checksums; it leaves
        // them broken for the receiver to reject).
        Bytes orig = in;
        if (!protect && P(0.5)) {
          for (int k = 1 + U(4); k > 0; k--) in[U(uint32_t(in.size()))] ^= uint8_t(1 + U(255));
          // A flip that lands on a port or address may turn it into a
          // protected flow's packet: truncate instead.
          if (HitsProtected(in, flows, pools)) in = orig;
        }
        if (in == orig) in.resize(14 + U(uint32_t(in.size() - 14)));
      }
    }
    kinds[kind]++;
    auto r = RunXdp(dp_->prog_fd(), in);
    ASSERT_TRUE(r.ok()) << r.status();
    verdicts[r->retval]++;
    bool bad = false;
    if (r->retval != XDP_DROP && r->retval != XDP_PASS && r->retval != XDP_TX) {
      ADD_FAILURE() << kind << ": verdict " << XdpVerdictName(r->retval);
      bad = true;
    }
    if (r->retval == XDP_PASS && r->output != in) {
      ADD_FAILURE() << kind << ": XDP_PASS modified the packet";
      bad = true;
    }
    if (r->retval == XDP_PASS && owned && wellformed) {
      ADD_FAILURE() << kind << ": a packet of an owned tuple was passed to the stack";
      bad = true;
    }
    if (r->retval == XDP_PASS && owned && kind.find("backend") != std::string::npos &&
        !wellformed && kind.find("mutated") == std::string::npos) {
      ADD_FAILURE() << kind << ": malformed options on an owned pool tuple passed to the stack";
      bad = true;
    }
    if (r->retval == XDP_TX && wellformed) {
      packet::ParsedPacket o = packet::Parse(r->output);
      if (!o.ipv4 || !o.tcp || !o.Ipv4ChecksumOk() || !o.TcpChecksumOk()) {
        ADD_FAILURE() << kind << ": transmitted packet with a bad checksum";
        bad = true;
      }
    }
    if (hit_pool >= 4 && hit_pool != RM_NO_ID) replace_if_dead(hit_pool);
    unpark_parked();
    if (bad) {
      failures++;
      std::cout << "input:\n" << packet::Parse(in).Describe() << "\n"
                << packet::HexDump(in) << "output:\n" << packet::Parse(r->output).Describe()
                << "\n";
    }
  }
  std::cout << "ran " << done << " packets, " << driven << " exchanges driven, " << replaced
            << " driven pooled connections replaced, " << reconnected
            << " driven clients reconnected, " << unparked << " parked connections unparked\n";
  for (auto& [k, v] : kinds) std::cout << "  " << k << ": " << v << "\n";
  for (auto& [k, v] : verdicts) std::cout << "  " << XdpVerdictName(k) << ": " << v << "\n";
  StatsArray st = Stats();
  for (int i = 0; i < RM_ST__MAX; i++)
    if (st[i]) std::cout << "  " << StatName(i) << " " << st[i] << "\n";
  EXPECT_GE(done, kPackets / 10) << "too few packets in the time bound";
  // The driven exchanges crossed boundaries: decisions were applied and
  // clients moved between the backends.
  EXPECT_GT(st[RM_ST_DECISION_APPLIED], 0u);
  EXPECT_GT(st[RM_ST_REMATCHES], 0u);
  // Their pooled connections died under the backend segments and were
  // replaced, and the replacements carried exchanges too.
  EXPECT_GT(replaced, 0);
  int replacements_used = 0;
  for (uint32_t pid = kPools; pid < next_pid; pid++) replacements_used += Pool(pid).uses > 0;
  EXPECT_GT(replacements_used, 0) << "no replacement pooled connection ever carried a request";

  // ---- record consistency
  std::map<uint32_t, int> queued;
  for (uint32_t b = 0; b < 2; b++)
    for (uint32_t pid : IdleQueue(b)) {
      queued[pid]++;
      EXPECT_EQ(Pool(pid).backend_id, b) << "pool " << pid << " in the wrong queue";
    }
  std::map<uint32_t, uint32_t> owner_of;
  for (uint32_t pid = 0; pid < next_pid; pid++) {
    rm_pool p = Pool(pid);
    SCOPED_TRACE(absl::StrCat("pool ", pid, " state ", p.state));
    EXPECT_LE(queued[pid], 1) << "queued twice";
    if (p.state == RM_P_IDLE) {
      EXPECT_EQ(queued[pid], 1) << "idle but not queued";
      EXPECT_EQ(p.owner, RM_NO_ID);
    } else if (p.state == RM_P_BUSY) {
      EXPECT_EQ(queued[pid], 0) << "busy and queued";
      rm_client c = Client(p.owner);
      EXPECT_EQ(c.pool_id, pid);
      EXPECT_EQ(c.epoch, p.owner_epoch);
      EXPECT_TRUE(c.state == RM_C_ESTABLISHED || c.state == RM_C_NAT_CLOSE) << c.state;
      owner_of[pid] = p.owner;
    } else if (p.state == RM_P_FREE) {
      // Retired and replaced: freed, its queue entry compacted away.
      EXPECT_EQ(queued[pid], 0) << "freed but queued";
      EXPECT_EQ(std::count(driven_pools.begin(), driven_pools.end(), pid), 0);
    } else {
      EXPECT_EQ(p.state, uint32_t(RM_P_DEAD));
    }
  }
  for (uint32_t id = 0; id < 64; id++) {
    rm_client c = Client(id);
    if (c.state == RM_C_FREE || c.pool_id == RM_NO_ID) continue;
    if (c.state == RM_C_CLOSED) {
      // Closed mid-exchange: keeps naming its retired connection until
      // userspace frees the record after the linger.
      EXPECT_EQ(Pool(c.pool_id).state, uint32_t(RM_P_DEAD)) << "client " << id;
      continue;
    }
    EXPECT_TRUE(owner_of.count(c.pool_id) && owner_of[c.pool_id] == id)
        << "client " << id << " (state " << c.state << ") claims pool " << c.pool_id
        << " which it does not own";
  }

  // ---- load counts agree with the records: a request is outstanding while
  // its client is out of RM_PH_IDLE, unanswered while in RM_PH_REQ (a
  // count leaked by some abort path would shun its backend for good).
  {
    uint32_t out[2] = {0, 0}, unans[2] = {0, 0};
    for (uint32_t id = 0; id < 64; id++) {
      rm_client c = Client(id);
      if (c.state == RM_C_FREE || c.phase == RM_PH_IDLE || c.req_backend >= 2) continue;
      out[c.req_backend]++;
      if (c.phase == RM_PH_REQ) unans[c.req_backend]++;
    }
    for (uint32_t b = 0; b < 2; b++) {
      EXPECT_EQ(dp_->BackendLoad(b).outstanding, out[b]) << "backend " << b;
      EXPECT_EQ(dp_->BackendLoad(b).unanswered, unans[b]) << "backend " << b;
    }
  }

  // ---- protected flows still translate byte-exact
  for (int i = 0; i < 2; i++) {
    Flow& f = flows[i];
    SCOPED_TRACE(absl::StrCat("protected flow ", i));
    rm_client c = Client(f.c.id);
    ASSERT_EQ(c.state, uint32_t(RM_C_ESTABLISHED)) << "fin_flags " << int(c.fin_flags);
    ASSERT_EQ(c.pool_id, uint32_t(i));
    ASSERT_EQ(c.epoch, start[i].epoch);
    EXPECT_EQ(Pool(i).state, uint32_t(RM_P_BUSY));
    Seg s;
    s.flags = ACK | PSH;
    s.seq = c.c_nxt;
    s.ack = c.c_acked;
    s.ts = true;
    s.tsval = c.c_ts_last + 1;
    s.tsecr = c.s_ts_last;
    s.payload = Pattern(333, 42);
    StatsArray before = Stats();
    auto r = RunXdp(dp_->prog_fd(), BuildSeg(FromClient(f.c), s));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->retval, uint32_t(XDP_TX));
    EXPECT_TRUE(PacketsEqual(BuildSeg(ToBackend(f.p), C2B(f.e, s)), r->output));
    EXPECT_EQ(Stats()[RM_ST_TX_C2B], before[RM_ST_TX_C2B] + 1);
    Seg bs;
    bs.flags = ACK | PSH;
    bs.seq = c.s_nxt - c.d_resp;
    bs.ack = c.c_nxt + c.d_req;
    bs.ts = true;
    bs.tsval = c.b_ts_last + 1;
    bs.tsecr = c.lb_ts_last;
    bs.payload = Pattern(77, 3);
    r = RunXdp(dp_->prog_fd(), BuildSeg(FromBackend(f.p), bs));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->retval, uint32_t(XDP_TX));
    EXPECT_TRUE(PacketsEqual(BuildSeg(ToClient(f.c), B2C(f.e, bs)), r->output));
  }
}

}  // namespace
}  // namespace rematcher::dptest
