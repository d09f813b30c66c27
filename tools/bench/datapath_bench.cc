// datapath_bench: cost of one spliced client->backend data packet in the XDP
// datapath, through BPF_PROG_TEST_RUN, as a ratio to the trivial XDP_TX
// program (xdp_tx_swap in //bpf:trivial) measured in the same run,
// interleaved round by round.
//
// With `repeat`, the kernel runs the program on the same buffer without
// restoring it, so from the second iteration on the program sees its own
// output. To make every iteration take the spliced path, two client flows A
// and B are spliced onto pooled connections whose tuples mirror each other:
// A's pool has lb_ip:lb_port = B's client ip:port and backend = VIP:port, and
// vice versa. A's rewritten packet is exactly an incoming packet of B, whose
// rewrite is one of A, and so on. The proof is in the counters:
// tx_client_to_backend must grow by exactly `repeat` per run, and nothing
// else but rx may move.
//
// Then the cost of whole exchanges, and of reading HTTP heads in them: two
// clients on pooled connections of their own each run request, backend
// ACK, response, client ACK (4 packets, each through BPF_PROG_TEST_RUN
// once, each next one built from the client's record as the datapath left
// it). One client's request and response are HTTP/1.x (the datapath reads
// both heads: request and response framing), the other's are bytes of the
// same lengths that are not HTTP (the head reader gives up at the first
// byte). Interleaved exchange by exchange; the kernel's per-run durations
// summed per exchange, medians over rounds. Every packet must be
// forwarded, and the HTTP client's requests framed, or the bench fails.
//
// Needs root (BPF). Usage:
//   bazel run //tools/bench:datapath_bench -- [--rounds=15] [--repeat=100000]
//       [--payload=1000] [--exchanges=2000]
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bpf/rematcher_shared.h"
#include "bpf/trivial.skel.h"
#include "lb/datapath.h"
#include "testing/bpf_fixture/bpf_fixture.h"
#include "testing/packet/packet.h"

namespace rematcher {
namespace {

using bpf_fixture::RunXdp;
using bpf_fixture::XdpRunOptions;
using packet::Bytes;
using packet::MacAddr;
using packet::PacketBuilder;
using packet::ParseIpv4;
using packet::ParseMac;

const MacAddr kLbMac = ParseMac("02:00:00:00:00:0a");
const uint32_t kVip = ParseIpv4("198.18.0.10");
constexpr uint16_t kVipPort = 8080;

struct Flow {
  uint32_t ip;
  uint16_t port;
  MacAddr mac;
  uint32_t isn;
  uint32_t tsval;
  uint32_t id = 0, s_isn = 0, s_ts = 0;
};

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "datapath_bench: %s\n", what.c_str());
  exit(1);
}

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(std::string(what) + ": " + std::string(v.status().message()));
  return *std::move(v);
}
void Must(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + std::string(s.message()));
}

PacketBuilder From(const Flow& f) {
  PacketBuilder b;
  b.Eth(f.mac, kLbMac).Ipv4(f.ip, kVip).Tcp(f.port, kVipPort);
  return b;
}

void Handshake(Datapath& dp, Flow& f) {
  Bytes syn = From(f).Flags(packet::SYN).Seq(f.isn).Window(64240).Mss(1460)
                  .SackPermitted().Timestamps(f.tsval, 0).Nop().WindowScale(7).Build();
  auto r = Must(RunXdp(dp.prog_fd(), syn), "SYN");
  if (r.retval != XDP_TX) Die("SYN not answered");
  rm_flow_key key{htonl(f.ip), htonl(kVip), htons(f.port), htons(kVipPort)};
  auto id = Must(dp.LookupClient(key), "lookup");
  if (!id) Die("no client record after SYN");
  f.id = *id;
  rm_client c = Must(dp.GetClient(f.id), "client");
  f.s_isn = c.s_isn;
  f.s_ts = c.s_ts_last;
  Bytes ack = From(f).Flags(packet::ACK).Seq(f.isn + 1).Ack(f.s_isn + 1).Window(502)
                  .Nop().Nop().Timestamps(++f.tsval, f.s_ts).Build();
  r = Must(RunXdp(dp.prog_fd(), ack), "third ACK");
  if (r.retval != XDP_DROP) Die("third ACK not consumed");
}

Bytes Data(const Flow& f, size_t payload, uint32_t tsval) {
  Bytes body(payload);
  for (size_t i = 0; i < payload; i++) body[i] = uint8_t('a' + i % 26);
  return From(f).Flags(packet::ACK | packet::PSH).Seq(f.isn + 1).Ack(f.s_isn + 1).Window(502)
      .Nop().Nop().Timestamps(tsval, f.s_ts).Payload(body).Build();
}

double Median(std::vector<double> v);

// A datapath for 4 clients: the VIP, TS, SACK and window scaling on.
std::unique_ptr<Datapath> LoadDatapath() {
  auto dp = Must(Datapath::Load({4, 16}), "loading the datapath");
  rm_config cfg{};
  cfg.vip = htonl(kVip);
  cfg.vip_port = htons(kVipPort);
  cfg.mss = 1400;
  cfg.client_wscale = 7;
  cfg.sack_ok = 1;
  cfg.ts_ok = 1;
  cfg.rematch = 1;
  cfg.max_clients = 4;
  Must(dp->SetConfig(cfg), "config");
  return dp;
}

// An idle pooled connection `pid` of `backend` with tuple `key`, at the
// given positions, queued.
void AddIdlePool(Datapath& dp, uint32_t pid, uint32_t backend, const rm_pool_key& key,
                 uint32_t lb_nxt, uint32_t be_nxt, uint32_t lb_ts, uint32_t be_ts,
                 const MacAddr& be_mac) {
  rm_pool p{};
  p.state = RM_P_IDLE;
  p.backend_id = backend;
  p.owner = RM_NO_ID;
  p.key = key;
  p.lb_nxt = lb_nxt;
  p.be_nxt = be_nxt;
  p.lb_ts_last = lb_ts;
  p.be_ts_last = be_ts;
  p.lb_wscale = 7;
  p.be_wscale = 7;
  p.flags = RM_LEG_TS | RM_LEG_SACK | RM_LEG_WS;
  memcpy(p.be_mac, be_mac.data(), 6);
  Must(dp.PutPool(pid, p), "pool");
  Must(dp.PushIdle(backend, pid), "idle queue");
}

// ---- whole exchanges

const uint32_t kBackendIp = ParseIpv4("198.18.2.1");
const uint32_t kLbIp = ParseIpv4("198.18.0.2");
const MacAddr kBackendMac = ParseMac("02:00:00:00:02:01");

// Runs one packet; dies unless the verdict is XDP_TX. Returns the kernel's
// duration of the run.
double RunTx(int fd, const Bytes& pkt, const char* what) {
  auto r = Must(RunXdp(fd, pkt), what);
  if (r.retval != XDP_TX) Die(std::string(what) + ": not forwarded");
  return double(r.duration_ns);
}

// One exchange of client `f` on its pooled connection (key `pk`): request,
// backend ACK, response, client ACK, each built from the record. Returns the
// summed durations.
double Exchange(Datapath& dp, const Flow& f, const rm_pool_key& pk, const std::string& req,
                const std::string& resp) {
  int fd = dp.prog_fd();
  auto client_seg = [&](const std::string& payload) {
    rm_client c = Must(dp.GetClient(f.id), "client");
    return From(f).Flags(packet::ACK | (payload.empty() ? 0 : packet::PSH)).Seq(c.c_nxt)
        .Ack(c.s_nxt).Window(502).Nop().Nop().Timestamps(c.c_ts_last + 1, c.s_ts_last)
        .Payload(payload).Build();
  };
  auto backend_seg = [&](const std::string& payload) {
    rm_client c = Must(dp.GetClient(f.id), "client");
    PacketBuilder b;
    b.Eth(kBackendMac, kLbMac).Ipv4(kBackendIp, kLbIp).Tcp(ntohs(pk.backend_port), ntohs(pk.lb_port));
    return b.Flags(packet::ACK | (payload.empty() ? 0 : packet::PSH)).Seq(c.s_nxt - c.d_resp)
        .Ack(c.c_nxt + c.d_req).Window(502).Nop().Nop()
        .Timestamps(c.b_ts_last + 1, c.lb_ts_last).Payload(payload).Build();
  };
  double ns = RunTx(fd, client_seg(req), "request");
  ns += RunTx(fd, backend_seg(""), "backend ACK");
  ns += RunTx(fd, backend_seg(resp), "response");
  ns += RunTx(fd, client_seg(""), "client ACK");
  return ns;
}

struct ExchangeFigures {
  double http_ns, opaque_ns, diff_ns;  // medians over rounds, per exchange
};

ExchangeFigures RunExchanges(int rounds, int per_round) {
  auto dp = LoadDatapath();
  Must(dp->SetBackend(0, rm_backend{htonl(kBackendIp), htons(8080), RM_BE_ACTIVE}), "backend");
  Must(dp->SetBackendList({0}), "backend list");
  Flow http{ParseIpv4("198.18.1.1"), 41000, ParseMac("02:00:00:00:01:01"), 0x30000000, 1000};
  Flow opaque{ParseIpv4("198.18.1.2"), 41001, ParseMac("02:00:00:00:01:02"), 0x40000000, 5000};
  std::vector<rm_pool_key> keys;
  for (uint32_t pid = 0; pid < 2; pid++) {
    keys.push_back(
        rm_pool_key{htonl(kBackendIp), htonl(kLbIp), htons(8080), htons(uint16_t(50000 + pid))});
    AddIdlePool(*dp, pid, 0, keys.back(), 0x50000000 + pid, 0x60000000 + pid, 7000, 9000,
                kBackendMac);
  }
  Handshake(*dp, http);
  Handshake(*dp, opaque);
  // What the test backend and loadgen send: a GET, and a head with a
  // Content-Length and a 300-byte body.
  const std::string req = "GET /r?size=300&seed=123456 HTTP/1.1\r\nHost: 198.18.0.10:8080\r\n\r\n";
  const std::string resp =
      "HTTP/1.1 200 OK\r\nContent-Length: 300\r\nX-Backend: b0\r\nX-Seed: 123456\r\n"
      "X-Body-Fnv: 0123456789abcdef\r\nConnection: keep-alive\r\n\r\n" + std::string(300, 'b');
  const std::string oreq(req.size(), 'q'), oresp(resp.size(), 'r');
  // First requests: each client takes the next idle pooled connection.
  for (Flow* f : {&http, &opaque}) {
    rm_client c = Must(dp->GetClient(f->id), "client");
    Bytes first = From(*f).Flags(packet::ACK | packet::PSH).Seq(c.c_nxt).Ack(c.s_nxt).Window(502)
                      .Nop().Nop().Timestamps(c.c_ts_last + 1, c.s_ts_last)
                      .Payload(f == &http ? req : oreq).Build();
    RunTx(dp->prog_fd(), first, "first request");
  }
  const rm_pool_key& hk = keys[Must(dp->GetClient(http.id), "client").pool_id];
  const rm_pool_key& ok = keys[Must(dp->GetClient(opaque.id), "client").pool_id];
  {
    // Finish the first exchanges (response, ACK) so each round starts at
    // a boundary.
    Exchange(*dp, http, hk, req, resp);
    Exchange(*dp, opaque, ok, oreq, oresp);
  }
  StatsArray before = Must(dp->Stats(), "stats");
  std::vector<double> h_ns, o_ns, d_ns;
  for (int round = 0; round < rounds; round++) {
    double h = 0, o = 0;
    for (int i = 0; i < per_round; i++) {
      h += Exchange(*dp, http, hk, req, resp);
      o += Exchange(*dp, opaque, ok, oreq, oresp);
    }
    h_ns.push_back(h / per_round);
    o_ns.push_back(o / per_round);
    d_ns.push_back((h - o) / per_round);
  }
  StatsArray after = Must(dp->Stats(), "stats");
  for (int i : {int(RM_ST_PIPELINED), int(RM_ST_PIN_FRAMING), int(RM_ST_PIN_RESP_OWED),
                int(RM_ST_DROP_STALE), int(RM_ST_SPLICES)}) {
    if (after[i] != before[i]) Die(std::string("exchanges: ") + StatName(i) + " moved");
  }
  rm_client hc = Must(dp->GetClient(http.id), "client");
  if (!(hc.cflags & RM_CF_FRAMED) || !(hc.cflags & RM_CF_RFRAMED))
    Die("the HTTP client's exchanges were not framed");
  if (Must(dp->GetClient(opaque.id), "client").cflags & RM_CF_FRAMED)
    Die("the opaque client's exchanges were framed");
  return {Median(h_ns), Median(o_ns), Median(d_ns)};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct TrivialDeleter {
  void operator()(trivial* s) const { trivial::destroy(s); }
};

int Main(int argc, char** argv) {
  int rounds = 15;
  uint32_t repeat = 100000;
  size_t payload = 1000;
  int exchanges = 2000;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a.rfind("--rounds=", 0) == 0) rounds = atoi(a.c_str() + 9);
    else if (a.rfind("--repeat=", 0) == 0) repeat = uint32_t(strtoul(a.c_str() + 9, nullptr, 10));
    else if (a.rfind("--payload=", 0) == 0) payload = strtoul(a.c_str() + 10, nullptr, 10);
    else if (a.rfind("--exchanges=", 0) == 0) exchanges = atoi(a.c_str() + 12);
    else Die("unknown argument " + a + " (--rounds= --repeat= --payload= --exchanges=)");
  }
  if (rounds < 1 || repeat < 1 || payload < 1 || payload > 1400 || exchanges < 0)
    Die("bad arguments");
  absl::Status bpf = bpf_fixture::BpfAvailable();
  if (!bpf.ok()) {
    printf("SKIPPED: BPF unavailable: %s\n", std::string(bpf.message()).c_str());
    return 2;
  }

  std::unique_ptr<trivial, TrivialDeleter> floor_skel(trivial::open_and_load());
  if (!floor_skel) Die("loading //bpf:trivial");
  int floor_fd = bpf_program__fd(floor_skel->progs.xdp_tx_swap);

  auto dp = LoadDatapath();

  Flow a{ParseIpv4("198.18.1.1"), 40000, ParseMac("02:00:00:00:01:01"), 0x10000000, 1000};
  Flow b{ParseIpv4("198.18.1.2"), 40001, ParseMac("02:00:00:00:01:02"), 0x20000000, 5000};
  Handshake(*dp, a);
  Handshake(*dp, b);

  // Pool of A points at B's client tuple, pool of B at A's: backend 0 and 1
  // are "the VIP" as seen from the other flow.
  auto mirror_pool = [&](uint32_t pid, uint32_t backend, const Flow& other) {
    Must(dp->SetBackend(backend, rm_backend{htonl(kVip), htons(kVipPort), RM_BE_ACTIVE}),
         "backend");
    // Positions near the other flow's own keep the ping-pong's seq there.
    AddIdlePool(*dp, pid, backend,
                rm_pool_key{htonl(kVip), htonl(other.ip), htons(kVipPort), htons(other.port)},
                other.isn + 1, other.s_isn + 1, other.tsval, other.s_ts, kLbMac);
  };
  mirror_pool(0, 0, b);
  mirror_pool(1, 1, a);
  Must(dp->SetBackendList({0}), "backend list");
  auto r = Must(RunXdp(dp->prog_fd(), Data(a, payload, a.tsval + 1)), "A first request");
  if (r.retval != XDP_TX) Die("A's first request not spliced");
  Must(dp->SetBackendList({1}), "backend list");
  r = Must(RunXdp(dp->prog_fd(), Data(b, payload, b.tsval + 1)), "B first request");
  if (r.retval != XDP_TX) Die("B's first request not spliced");
  if (Must(dp->GetClient(a.id), "A").pool_id != 0 || Must(dp->GetClient(b.id), "B").pool_id != 1)
    Die("flows not spliced onto their mirror pools");

  Bytes pkt = Data(a, payload, a.tsval + 2);
  XdpRunOptions opts;
  opts.repeat = repeat;
  std::vector<double> floor_ns, dp_ns;
  for (int round = 0; round < rounds; round++) {
    auto f = Must(RunXdp(floor_fd, pkt, opts), "floor run");
    if (f.retval != XDP_TX) Die("floor program did not XDP_TX");
    floor_ns.push_back(f.duration_ns);

    StatsArray before = Must(dp->Stats(), "stats");
    auto d = Must(RunXdp(dp->prog_fd(), pkt, opts), "datapath run");
    StatsArray after = Must(dp->Stats(), "stats");
    if (d.retval != XDP_TX) Die("datapath did not XDP_TX");
    for (int i = 0; i < RM_ST__MAX; i++) {
      uint64_t delta = after[i] - before[i];
      uint64_t want = (i == RM_ST_RX || i == RM_ST_TX_C2B) ? repeat : 0;
      if (delta != want) {
        Die(std::string("round ") + std::to_string(round) + ": counter " + StatName(i) +
            " moved by " + std::to_string(delta) + ", want " + std::to_string(want) +
            " (not every iteration took the spliced path)");
      }
    }
    dp_ns.push_back(d.duration_ns);
  }

  double fm = Median(floor_ns), dm = Median(dp_ns);
  printf("datapath_bench: %d rounds x repeat=%u, %zu-byte payload, TS+SACK legs, "
         "interleaved; every datapath iteration proven spliced (tx_client_to_backend "
         "+%u per run)\n",
         rounds, repeat, payload, repeat);
  printf("%-34s %10s %10s %10s\n", "program", "median", "min", "max");
  printf("%-34s %10.1f %10.1f %10.1f\n", "floor: trivial xdp_tx_swap (ns/pkt)", fm,
         *std::min_element(floor_ns.begin(), floor_ns.end()),
         *std::max_element(floor_ns.begin(), floor_ns.end()));
  printf("%-34s %10.1f %10.1f %10.1f\n", "rematcher spliced C->B (ns/pkt)", dm,
         *std::min_element(dp_ns.begin(), dp_ns.end()),
         *std::max_element(dp_ns.begin(), dp_ns.end()));
  // Each round runs the floor and the datapath back to back, so their
  // per-round ratio cancels the drift of a shared machine; its median is
  // the figure against the target. The ratio of the two medians is shown
  // beside it.
  std::vector<double> ratios;
  for (size_t i = 0; i < dp_ns.size(); i++)
    if (floor_ns[i] > 0) ratios.push_back(dp_ns[i] / floor_ns[i]);
  double ratio = ratios.empty() ? 0 : Median(ratios);
  printf("%-34s %10.2f %10.2f %10.2f\n", "per-round ratio datapath/floor", ratio,
         *std::min_element(ratios.begin(), ratios.end()),
         *std::max_element(ratios.begin(), ratios.end()));
  printf("ratio (median of per-round ratios): %.2fx  (median/median: %.2fx)  target <= 5x: %s\n",
         ratio, fm > 0 ? dm / fm : 0, ratio <= 5.0 ? "met" : "MISSED");
  if (exchanges > 0) {
    ExchangeFigures x = RunExchanges(rounds, exchanges);
    printf("exchanges: %d rounds x %d per client, interleaved (request, backend ACK, "
           "response, client ACK; per-run kernel durations summed)\n",
           rounds, exchanges);
    printf("%-34s %10.1f ns (%.1f ns/pkt)\n", "HTTP/1.x exchange (both heads read)",
           x.http_ns, x.http_ns / 4);
    printf("%-34s %10.1f ns (%.1f ns/pkt)\n", "same lengths, not HTTP", x.opaque_ns,
           x.opaque_ns / 4);
    printf("%-34s %10.1f ns per exchange (median of per-round differences)\n",
           "reading the heads costs", x.diff_ns);
  }
  return 0;
}

}  // namespace
}  // namespace rematcher

int main(int argc, char** argv) { return rematcher::Main(argc, argv); }
