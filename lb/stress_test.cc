// Race stress (issue 4, "Capacity and load"): the real rematcher binary on a
// namespace testbed with three backends and per-request rematching (rr),
// thousands of concurrent keep-alive client connections from two client
// namespaces with mixed request and response sizes, every body verified by
// loadgen. Both CPUs run the datapath at once: the LB's veth has two queues
// with a NAPI ring each (testbed, gro on), XDP runs on the CPU that sent the
// frame, one loadgen and one backend are pinned to each CPU, and the
// per-CPU `rx` counter of the datapath proves it (each CPU >= 10%).
//
// After the load (and after the clients closed and the core's GC ran):
//   - zero verify failures, zero errors, every request answered;
//   - no pooled connection lost or doubled: every backend's pool is back
//     idle with its idle-queue count equal to its live count, the `pools`
//     table holds exactly that many IDLE records per backend and none BUSY
//     or DEAD, every pooled connection ever established is live or retired,
//     and the LB namespace has one established socket per live one;
//   - no datapath counter that means damage or a refused client moved
//     (kMustBeZero below), outstanding back to 0 on every backend;
//   - every client record freed (`clients`, and the client_ids hash empty);
//   - nstat on clients and backends: PAWSEstab at most 1 per 50,000 segments
//     received (see there), TCPACKSkippedPAWS no more than that, no
//     TcpInCsumErrors, clients never reset.
//
// CI: STRESS_REQUESTS requests (default 100,000) over STRESS_CONNECTIONS
// connections (default 2,000). The manual target //lb:stress_long_test runs
// 1,000,000. Both can be overridden at run time with the environment
// variables of the same names (--test_env=STRESS_REQUESTS=...), and so can
// loadgen's size lists (STRESS_SIZES, STRESS_UPLOAD_SIZES).
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "bpf/rematcher_shared.h"
#include "gtest/gtest.h"
#include "lb/testing/e2e_fixture.h"
#include "tools/bench/idle/xdp_probe.h"

#ifndef STRESS_REQUESTS
#define STRESS_REQUESTS 100000
#endif
#ifndef STRESS_CONNECTIONS
#define STRESS_CONNECTIONS 2000
#endif

namespace rematcher {
namespace {

using e2e::BackendRow;
using e2e::E2eBed;
using e2e::JsonInt;

constexpr int kClients = 2;
constexpr int kBackends = 3;
// Every active client holds a pooled connection from its first request
// until it is idle (--idle_release_ms), and a rematch needs an idle one on
// the chosen backend, so the pools must hold about connections / backends
// plus headroom (1024 per backend here; the compile-time limit is
// RM_MAX_POOL_PER_BACKEND). They are opened
// up front: 2,000 clients arriving at once against a pool of 64 that has to
// grow within the datapath's 1 s no-pool wait had ~400 of them refused with
// RST in one of three runs on this 2-core box (a capacity limit of cold
// starts, see the README), which is not what this test is about.
// STRESS_POOL_START overrides it (64 reproduces the cold start).
constexpr int kPoolStart = 1024;
constexpr int kPoolMax = 1024;
constexpr char kPrefix[] = "rmst";

// Datapath counters that stay 0 in a clean run: damage (malformed, bad
// state, unsupported, data on an idle pooled connection), refused clients
// (table full, MSS, RST sent), pooled connections that died or were retired
// by a close mid-exchange, events lost on the ring buffer.
//
// Not here, bounded or printed instead:
// - drop_no_pool: the datapath also counts it when a *rematch* finds no idle
//   pooled connection on the chosen backend and the client simply stays on
//   its current one (bpf/rematcher.bpf.c, do_splice); no client is refused
//   then (tx_rst stays 0, loadgen sees no reset). Measured 1,688 in a clean
//   100,000-request run, all of that kind. A refusal shows as tx_rst.
// - pipelined: loadgen does not pipeline, but a retransmitted request
//   segment can be taken for pipelining (README, known limits); the veth
//   rings drop a few frames under this load (printed as XDP_TX errors).
//   Bounded at 0.1% of the requests instead.
//
// Every client closes between requests, so every close is a clean one that
// keeps its pooled connection (closed_retire and pool_dead 0). One in
// 2,000 was not, once in CI (2026-12-06): a response lost before XDP and
// retransmitted had not counted as a response (fixed in the datapath,
// ClientFinAfterLostResponseAndRetransmittedRequestIsClean).
constexpr const char* kMustBeZero[] = {
    "drop_malformed", "drop_table_full", "drop_mss", "drop_bad_state", "drop_unsupported",
    "drop_pool_data", "pool_dead",       "tx_rst",   "closed_retire",  "events_lost",
};

uint64_t Param(const char* env, uint64_t def) {
  const char* v = getenv(env);
  uint64_t out = 0;
  if (v != nullptr && absl::SimpleAtoi(v, &out) && out > 0) return out;
  return def;
}

std::string Text(const char* env, const char* def) {
  const char* v = getenv(env);
  return v != nullptr && *v ? v : def;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// Frames the LB's XDP_TX could not hand to its veth peer (ring full), summed
// over queues, from `ethtool -S`: loss on the path, not the datapath's doing.
uint64_t XdpTxErrors(E2eBed& bed) {
  auto out = bed.tb().Run(bed.tb().lb_ns(), {"ethtool", "-S", bed.tb().lb_ifname()});
  uint64_t n = 0;
  if (!out.ok()) return 0;
  for (absl::string_view line : absl::StrSplit(*out, '\n')) {
    std::vector<std::string> kv = absl::StrSplit(line, ':');
    uint64_t v;
    if (kv.size() == 2 && absl::EndsWith(kv[0], "_xdp_tx_errors") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(kv[1]), &v))
      n += v;
  }
  return n;
}

// The rows of loadgen's per-request CSV whose outcome is not ok (index,
// intended time, latency, size, upload size, status, outcome, backend).
void PrintFailedRequests(const std::string& csv) {
  std::ifstream f(csv);
  std::string line;
  int shown = 0;
  while (std::getline(f, line) && shown < 20) {
    std::vector<std::string> col = absl::StrSplit(line, ',');
    if (col.size() < 8 || col[6] == "ok" || col[6] == "outcome") continue;
    std::cout << "[failed request] " << line << std::endl;
    shown++;
  }
}

// CPU affinity of this thread, inherited by the processes it spawns. XDP on
// a veth runs in the NAPI poll of the CPU that sent the frame, so pinning
// one client and one backend to each CPU makes both CPUs run the datapath
// even when another job on the box keeps one of them busy.
class Affinity {
 public:
  Affinity() {
    CPU_ZERO(&saved_);
    sched_getaffinity(0, sizeof(saved_), &saved_);
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &saved_)) cpus_.push_back(c);
  }
  ~Affinity() { Restore(); }
  int count() const { return static_cast<int>(cpus_.size()); }
  // The i-th usable CPU (round robin).
  void Pin(int i) {
    if (cpus_.size() < 2) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus_[i % cpus_.size()], &one);
    sched_setaffinity(0, sizeof(one), &one);
  }
  void Restore() { sched_setaffinity(0, sizeof(saved_), &saved_); }

 private:
  cpu_set_t saved_;
  std::vector<int> cpus_;
};

int64_t Get(const testbed::NstatDelta& d, const char* k) {
  auto it = d.find(k);
  return it == d.end() ? 0 : it->second;
}

class StressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    e2e::BedOptions o;
    o.testbed.prefix = kPrefix;
    o.testbed.num_clients = kClients;
    o.testbed.num_backends = kBackends;
    o.testbed.gro = true;  // a NAPI ring per veth queue: two on the LB
    o.control_socket = absl::StrCat("/run/rematcher/", kPrefix, ".sock");
    auto bed = E2eBed::Create(o);
    if (!bed.ok()) {
      if (bed.status().code() == absl::StatusCode::kFailedPrecondition)
        GTEST_SKIP() << "SKIPPED: " << bed.status();
      FAIL() << bed.status();
    }
    bed_ = std::move(*bed);
    testbed::Testbed::InstallSignalCleanup();
    // Backend i on CPU i (mod CPUs); rematcher and the rest unpinned.
    for (int i = 0; i < kBackends; i++) {
      affinity_.Pin(i);
      absl::Status st = bed_->StartBackend(i);
      affinity_.Restore();
      ASSERT_TRUE(st.ok()) << st;
    }
  }

  void TearDown() override {
    if (bed_ && HasFailure()) std::cout << "[rematcher log]\n" << bed_->LbLog() << std::endl;
    bed_.reset();  // stops every process, deletes the namespaces
  }

  Affinity affinity_;
  std::unique_ptr<E2eBed> bed_;
};

TEST_F(StressTest, ThousandsOfKeepAliveClientsRematchedPerRequest) {
  const uint64_t requests = Param("STRESS_REQUESTS", STRESS_REQUESTS);
  const uint64_t connections =
      std::max<uint64_t>(kClients, Param("STRESS_CONNECTIONS", STRESS_CONNECTIONS));
  // Generous bound: measured 6,500-10,000 req/s on the 2-core CI box.
  const double max_time_s = 60 + static_cast<double>(requests) / 1000;
  const int pool_start =
      static_cast<int>(std::min<uint64_t>(kPoolMax, Param("STRESS_POOL_START", kPoolStart)));
  const std::string sizes = Text("STRESS_SIZES", "0,100,100,1000,1000,4k,16k,64k");
  const std::string uploads = Text("STRESS_UPLOAD_SIZES", "0,0,0,100,1000,4k,16k");
  std::cout << "[stress] " << requests << " requests over " << connections << " connections, bound "
            << max_time_s << " s, sizes " << sizes << ", uploads " << uploads << ", pools "
            << pool_start << "..." << kPoolMax << " per backend" << std::endl;

  ASSERT_TRUE(bed_->StartLb("rr",
                            {absl::StrCat("--max_conns_per_backend=", kPoolMax),
                             absl::StrCat("--client_idle_timeout_s=", max_time_s + 120)},
                            pool_start)
                  .ok())
      << bed_->LbLog();
  auto probe = bench::XdpProbe::Open(bed_->tb().lb_ns(), bed_->tb().lb_ifname());
  ASSERT_TRUE(probe.ok()) << probe.status();
  auto rx0 = (*probe)->PerCpuU64("stats", RM_ST_RX);
  ASSERT_TRUE(rx0.ok()) << rx0.status();
  auto before = bed_->TakeNstat();
  bed_->ClearPawsLog();
  ASSERT_TRUE(before.ok()) << before.status();
  const uint64_t tx_errors0 = XdpTxErrors(*bed_);

  // Two loadgens, one per client namespace (so both CPUs send), each with
  // half the connections and half the requests, different seeds. Sizes stop
  // at 64 KiB: with 256 KiB responses on 2,000 connections the LB's veth
  // rings overflow (XDP_TX errors, measured ~3% of frames) and the run turns
  // into a loss test, //lb:fault_e2e_test's subject. At 64 KiB some frames
  // are still lost there (0 to ~3% in measured runs, more when the box is
  // busy); the count is printed.
  std::vector<std::string> jsons(kClients);
  std::vector<std::string> outs;
  {
    std::vector<testbed::Process> bg;
    for (int c = 0; c < kClients; c++) {
      uint64_t n = requests / kClients + (c == 0 ? requests % kClients : 0);
      uint64_t conns = connections / kClients + (c == 0 ? connections % kClients : 0);
      std::string out = bed_->TempPath(absl::StrCat("stress_c", c, ".json"));
      affinity_.Pin(c);  // client c on CPU c
      auto p = bed_->SpawnLoad(
          c,
          {absl::StrCat("--connections=", conns), absl::StrCat("--requests=", n),
           "--sizes=" + sizes, "--upload_sizes=" + uploads, absl::StrCat("--seed=", 11 + c),
           "--timeout_ms=30000", absl::StrCat("--max_time_s=", max_time_s),
           "--latency_csv=" + out + ".csv"},
          out);
      affinity_.Restore();
      ASSERT_TRUE(p.ok()) << p.status();
      bg.push_back(std::move(*p));
      outs.push_back(out);
    }
    for (int c = 0; c < kClients; c++) {
      auto rc = bg[c].Wait(absl::Seconds(max_time_s + 30));
      ASSERT_TRUE(rc.ok()) << rc.status();
      jsons[c] = ReadFile(outs[c]);
      EXPECT_EQ(*rc, 0) << "loadgen c" << c << ": " << ReadFile(outs[c] + ".err");
    }
  }
  uint64_t ok = 0;
  double secs = 0;
  for (int c = 0; c < kClients; c++) {
    const std::string& j = jsons[c];
    SCOPED_TRACE(absl::StrCat("client ", c));
    std::cout << "[loadgen c" << c << "] " << j << std::endl;
    uint64_t n = requests / kClients + (c == 0 ? requests % kClients : 0);
    EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
    EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
    EXPECT_EQ(JsonInt(j, "ok"), static_cast<int64_t>(n)) << j;
    ok += std::max<int64_t>(0, JsonInt(j, "ok"));
    if (JsonInt(j, "ok") != static_cast<int64_t>(n)) PrintFailedRequests(outs[c] + ".csv");
    // Both run at once: the slower one's duration is the run's.
    auto p = j.find("\"duration_s\":");
    if (p != std::string::npos) secs = std::max(secs, std::atof(j.c_str() + p + 13));
  }
  std::cout << "[stress] " << ok << " requests ok in " << secs
            << " s: " << (secs > 0 ? ok / secs : 0) << " req/s over " << connections
            << " connections" << std::endl;

  // Both CPUs ran the datapath.
  auto rx1 = (*probe)->PerCpuU64("stats", RM_ST_RX);
  ASSERT_TRUE(rx1.ok()) << rx1.status();
  uint64_t rx_total = 0;
  std::vector<uint64_t> rx(rx1->size());
  for (size_t i = 0; i < rx.size(); i++) rx_total += rx[i] = (*rx1)[i] - (*rx0)[i];
  std::cout << "[cpus] packets seen by XDP per CPU:";
  int busy_cpus = 0;
  for (size_t i = 0; i < rx.size(); i++) {
    std::cout << " cpu" << i << "=" << rx[i];
    if (rx_total && rx[i] * 10 >= rx_total) busy_cpus++;
  }
  std::cout << std::endl;
  std::cout << "[veth] XDP_TX frames lost to a full peer ring: " << XdpTxErrors(*bed_) - tx_errors0
            << std::endl;
  if (affinity_.count() >= 2) {
    EXPECT_GE(busy_cpus, 2) << "the datapath did not run on two CPUs (each >= 10% of packets)";
  } else {
    std::cout << "[cpus] only one CPU usable here: the two-CPU check is skipped" << std::endl;
  }

  // A close that was not clean (closed_retire) is named while its record
  // still lingers: phase, FINs and what each side had not acked. Closes go
  // on after the load tool exits (a lost FIN is retransmitted), so this is
  // looked at until the records are gone.
  uint64_t retires_shown = 0;
  auto show_unclean_closes = [&] {
    auto s0 = bed_->Stats();
    if (!s0.ok() || (*s0)["closed_retire"] <= retires_shown) return;
    retires_shown = (*s0)["closed_retire"];
    auto r = bed_->Ctl("clients 50 closing");
    std::cout << "[closing] closed_retire " << retires_shown << ":\n"
              << (r.ok() ? *r : r.status().ToString()) << std::endl;
  };
  // The clients closed every connection between requests: answered in
  // place, lingered, collected. Wait for every client record to go.
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::string clients;
  while (true) {
    show_unclean_closes();
    auto r = bed_->Ctl("clients 0");
    if (r.ok()) clients = *r;
    if (std::count(clients.begin(), clients.end(), '\n') == 1 || absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_EQ(std::count(clients.begin(), clients.end(), '\n'), 1)
      << "client records left: " << clients;
  auto ids = (*probe)->KeyCount("client_ids");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, 0u) << "client_ids entries left";

  // Pools: every live pooled connection back idle.
  std::vector<BackendRow> rows = bed_->WaitPoolsQuiet(pool_start, absl::Seconds(20));
  auto btext = bed_->Ctl("backends");
  std::cout << "[backends]\n" << (btext.ok() ? *btext : btext.status().ToString()) << std::endl;
  ASSERT_EQ(rows.size(), static_cast<size_t>(kBackends));
  uint64_t live = 0;
  std::map<uint32_t, uint32_t> live_by_backend;
  for (const BackendRow& b : rows) {
    SCOPED_TRACE(b.addr);
    EXPECT_EQ(b.state, "up");
    EXPECT_EQ(b.pool_idle, b.pool_live) << "pooled connections not back idle";
    EXPECT_GE(b.pool_live, static_cast<uint32_t>(pool_start));
    EXPECT_EQ(b.outstanding, 0);
    EXPECT_EQ(b.unanswered, 0);
    live += b.pool_live;
    live_by_backend[b.id] = b.pool_live;
  }
  auto s = bed_->Stats();
  ASSERT_TRUE(s.ok()) << s.status();
  std::cout << "[lb]";
  for (const auto& [k, v] : *s) std::cout << " " << k << "=" << v;
  std::cout << std::endl;
  std::cout << "[pools] live " << live << " established " << (*s)["pool_established"] << " retired "
            << (*s)["pool_retired"] << " connect_failures " << (*s)["pool_connect_failures"]
            << std::endl;
  EXPECT_EQ((*s)["pool_established"], live + (*s)["pool_retired"])
      << "pooled connections neither live nor retired";
  for (const char* k : kMustBeZero) EXPECT_EQ((*s)[k], 0u) << k;
  std::cout << "[lb] drop_no_pool " << (*s)["drop_no_pool"] << " (rematches declined, see "
            << "kMustBeZero), pipelined " << (*s)["pipelined"] << ", no_pool_wait "
            << (*s)["no_pool_wait"] << ", drop_stale " << (*s)["drop_stale"] << std::endl;
  // A misread boundary now and then under veth loss, never systematically.
  EXPECT_LE((*s)["pipelined"], requests / 1000);
  EXPECT_GE((*s)["handshakes"], connections);
  // Rematching happened at scale (rr moves most requests).
  EXPECT_GT((*s)["rematches"], requests / 4);
  double applied = (*s)["decision_applied"], late = (*s)["decision_late"];
  std::cout << "[decisions] applied " << applied << " late " << late << " ("
            << (applied + late > 0 ? 100 * applied / (applied + late) : 0) << "% applied)"
            << std::endl;

  // The pool table itself: per backend exactly `live` IDLE records, none
  // BUSY (a leaked splice) or DEAD.
  auto pools = (*probe)->ArrayValues("pools");
  ASSERT_TRUE(pools.ok()) << pools.status();
  std::map<uint32_t, uint32_t> idle_records;
  uint32_t by_state[5] = {};
  for (const std::string& v : *pools) {
    rm_pool p;
    ASSERT_EQ(v.size(), sizeof(p));
    memcpy(&p, v.data(), sizeof(p));
    if (p.state < 5) by_state[p.state]++;
    if (p.state == RM_P_IDLE) idle_records[p.backend_id]++;
  }
  std::cout << "[pool records] idle " << by_state[RM_P_IDLE] << " busy " << by_state[RM_P_BUSY]
            << " dead " << by_state[RM_P_DEAD] << " connecting " << by_state[RM_P_CONNECTING]
            << std::endl;
  EXPECT_EQ(by_state[RM_P_BUSY], 0u);
  EXPECT_EQ(by_state[RM_P_DEAD], 0u);
  EXPECT_EQ(idle_records, live_by_backend);

  // One established socket per live pooled connection in the LB namespace
  // (a health probe may be caught mid-connect: retried a few times).
  uint64_t sockets = 0;
  for (int attempt = 0; attempt < 5; attempt++) {
    auto ss = bed_->tb().Run(bed_->tb().lb_ns(), {"ss", "-Htn", "state", "established"});
    ASSERT_TRUE(ss.ok()) << ss.status();
    sockets = std::count(ss->begin(), ss->end(), '\n');
    if (sockets == live) break;
    absl::SleepFor(absl::Milliseconds(300));
  }
  EXPECT_EQ(sockets, live) << "established sockets in the LB namespace";

  // nstat on every client and backend.
  auto after = bed_->TakeNstat();
  ASSERT_TRUE(after.ok()) << after.status();
  for (auto& [host, d] : E2eBed::Diff(*before, *after)) {
    SCOPED_TRACE(host);
    std::cout << "[nstat] " << host << " in " << Get(d, "TcpInSegs") << " out "
              << Get(d, "TcpOutSegs") << " retrans " << Get(d, "TcpRetransSegs") << " PAWSEstab "
              << Get(d, "TcpExtPAWSEstab") << " CsumErrors " << Get(d, "TcpInCsumErrors")
              << " EstabResets " << Get(d, "TcpEstabResets") << " OutRsts " << Get(d, "TcpOutRsts")
              << " OFO " << Get(d, "TcpExtTCPOFOQueue") << std::endl;
    // A TS translation bug drops thousands of segments as PAWS. What is left
    // after the fixes of 98fa300 is one segment in ~1 run of 10 (of ~100,000
    // received): both CPUs forward a flow's segments (the sender's kernel
    // transmits from either CPU, and XDP runs where the frame was sent), so
    // an original can reach the receiver after its own retransmission, as on
    // any path that reorders (the OFO count above). Bounded, not zero.
    const int64_t paws_allowed = Get(d, "TcpInSegs") / 50000;
    EXPECT_LE(Get(d, "TcpExtPAWSEstab"), paws_allowed) << "of " << Get(d, "TcpInSegs");
    EXPECT_LE(Get(d, "TcpExtTCPACKSkippedPAWS"), Get(d, "TcpExtPAWSEstab"));
    // What they were (testing/tcpdrops): printed; each seen by the tracer.
    absl::Status paws = bed_->CheckPawsAttribution(host, d, -1);
    EXPECT_TRUE(paws.ok()) << paws;
    EXPECT_EQ(Get(d, "TcpInCsumErrors"), 0);
    if (host[0] == 'c') {
      EXPECT_EQ(Get(d, "TcpEstabResets"), 0);
      EXPECT_EQ(Get(d, "TcpExtTCPAbortOnData"), 0);
    }
  }
  EXPECT_TRUE(bed_->LbRunning());
}

}  // namespace
}  // namespace rematcher
