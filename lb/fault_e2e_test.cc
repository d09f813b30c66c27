// Fault end to end: the real rematcher binary (rematching on) between real
// kernel TCP clients and backends, while testing/faults injects loss,
// duplication and reordering on every client and backend link in both
// directions, and while backends close pooled connections (request limit,
// idle timeout) or die (SIGKILL) and come back. Every body is verified byte
// for byte by loadgen.
//
// Where the faults act (measured, see the report printed by each case):
// the testbed runs with GRO on (the LB tests need it), but GRO on the
// switch-side veth peers merges the host's frames into super-frames before
// the fault hooks see them: a "5% loss" then drops whole 64 KiB bursts, and
// the reorder relay cannot forward merged frames larger than the MTU
// (relay_lost, measured 839 of 4200 frames). So this test turns GRO off on
// the switch-side peers only (hosts keep it): every fault then acts on one
// wire frame, and each case checks relay_lost == 0 and prints dropped frames
// next to the hosts' TcpRetransSegs.
//
// PAWS: the injected reordering itself (a held frame overtaken, up to
// reorder_max_hold late) makes the receiving kernel drop a few segments as
// PAWSEstab even on a direct client->backend path with no LB at all
// (measured: 1-2 per ~90,000-180,000 segments at 1%): a frame held back
// while a later one (a retransmission, a duplicate) advanced ts_recent is,
// to PAWS, an old duplicate. So PAWSEstab is bounded by a small rate here
// rather than 0 (TCPACKSkippedPAWS, which only follows a PAWS drop, by
// PAWSEstab), and every PAWS drop is attributed (testing/tcpdrops): all must
// be seen by the tracer, and the kind (old copy, new data, pure ACK) and age
// of each is printed; a drop older than two relay holds and some slack
// (which the injector cannot explain) fails, with the logged drops. TcpInCsumErrors (no
// corruption is injected) must stay 0.
//
// CI runs FAULT_E2E_REQUESTS requests per fault level (default 3000); the
// manual target //lb:fault_e2e_long_test defines it as 100,000.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lb/testing/e2e_fixture.h"
#include "testing/backend/body.h"
#include "testing/backend/test_util.h"
#include "testing/faults/faults.h"
#include "testing/testbed/netns.h"

#ifndef FAULT_E2E_REQUESTS
#define FAULT_E2E_REQUESTS 3000
#endif
#ifndef FAULT_E2E_PREFIX
#define FAULT_E2E_PREFIX "rmfe"
#endif

namespace rematcher {
namespace {

using e2e::BackendRow;
using e2e::E2eBed;
using e2e::JsonInt;
using faults::FaultInjector;
using faults::FaultSpec;

constexpr int kClients = 2;
constexpr int kBackends = 3;
constexpr int kPool = 16;
// Pure ACK PAWS drops allowed beyond the data bound (CheckNstat).
constexpr int64_t kPawsAckBatch = 32;
constexpr uint64_t kRequests = FAULT_E2E_REQUESTS;

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

int64_t Get(const testbed::NstatDelta& d, const char* k) {
  auto it = d.find(k);
  return it == d.end() ? 0 : it->second;
}

class FaultE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    e2e::BedOptions o;
    o.testbed.prefix = FAULT_E2E_PREFIX;
    o.testbed.num_clients = kClients;
    o.testbed.num_backends = kBackends;
    o.testbed.gro = true;
    o.control_socket = absl::StrCat("/run/rematcher/", FAULT_E2E_PREFIX, ".sock");
    auto bed = E2eBed::Create(o);
    if (!bed.ok()) {
      skip_ = new std::string(bed.status().ToString());
      return;
    }
    bed_ = bed->release();
    // GRO off on the switch-side peers only: see the file comment.
    testbed::Testbed& tb = bed_->tb();
    std::vector<std::string> peers = {tb.lb_peer_ifname()};
    for (int i = 0; i < kClients; i++) peers.push_back(tb.client_peer_ifname(i));
    for (int i = 0; i < kBackends; i++) peers.push_back(tb.backend_peer_ifname(i));
    for (const std::string& p : peers) {
      auto r = tb.Run(tb.switch_ns(), {"ethtool", "-K", p, "gro", "off"});
      if (!r.ok()) {
        setup_error_ = new std::string(r.status().ToString());
        return;
      }
    }
  }

  static void TearDownTestSuite() {
    delete bed_;
    bed_ = nullptr;
  }

  void SetUp() override {
    if (skip_) GTEST_SKIP() << "SKIPPED: " << *skip_;
    ASSERT_EQ(setup_error_, nullptr) << *setup_error_;
    ASSERT_NE(bed_, nullptr);
    for (int i = 0; i < kBackends; i++) ASSERT_TRUE(bed_->StartBackend(i).ok());
  }

  void TearDown() override {
    faults_.clear();  // detaches
    if (bed_ == nullptr) return;
    if (HasFailure()) std::cout << "[rematcher log]\n" << bed_->LbLog() << std::endl;
    bed_->StopLb();
  }

  E2eBed& bed() { return *bed_; }

  void AttachFaults(double rate, uint64_t seed) {
    FaultSpec spec;
    spec.loss = rate;
    spec.duplicate = rate;
    spec.reorder = rate;
    spec.dir = faults::Direction::kBoth;
    spec.seed = seed;
    auto f = faults::AttachToLinks(bed().tb(), faults::LinkSet::kClientsAndBackends, spec);
    ASSERT_TRUE(f.ok()) << f.status();
    faults_ = std::move(*f);
  }

  // Prints the injectors' counters, checks the relay lost nothing, and
  // returns the frames dropped on purpose.
  uint64_t ReportFaults() {
    uint64_t dropped = 0, dup = 0, reordered = 0, seen = 0;
    for (auto& f : faults_) {
      auto c = f->Counters();
      EXPECT_TRUE(c.ok()) << c.status();
      if (!c.ok()) continue;
      std::cout << "[faults] " << f->ifname() << "\n" << c->ToString() << std::endl;
      for (const faults::DirectionCounters* d : {&c->from_host, &c->to_host}) {
        EXPECT_EQ(d->relay_lost, 0u) << f->ifname() << ": unplanned loss in the relay";
        dropped += d->dropped;
        dup += d->duplicated;
        reordered += d->reordered;
        seen += d->seen;
      }
    }
    std::cout << "[faults] total frames " << seen << ": dropped " << dropped << ", duplicated "
              << dup << ", reordered " << reordered << std::endl;
    return dropped;
  }

  // nstat on every client and backend: no PAWS damage beyond what the
  // injected reordering causes on its own (see the file comment), no
  // skipped ACKs, no checksum errors. Returns total retransmissions.
  int64_t CheckNstat(const E2eBed::Snap& before, double fault_rate) {
    auto after = bed().TakeNstat();
    EXPECT_TRUE(after.ok()) << after.status();
    if (!after.ok()) return 0;
    int64_t retrans = 0;
    for (auto& [host, d] : E2eBed::Diff(before, *after)) {
      SCOPED_TRACE(host);
      int64_t out = Get(d, "TcpOutSegs"), in = Get(d, "TcpInSegs"), re = Get(d, "TcpRetransSegs");
      retrans += re;
      std::cout << "[nstat] " << host << " out " << out << " in " << in << " retrans " << re
                << " RTO " << Get(d, "TcpExtTCPTimeouts") << " PAWSEstab "
                << Get(d, "TcpExtPAWSEstab") << " DSACKRecv " << Get(d, "TcpExtTCPDSACKRecv")
                << " EstabResets " << Get(d, "TcpEstabResets") << " OutRsts "
                << Get(d, "TcpOutRsts") << std::endl;
      // The kernel counts an ACK it skipped (rate limit) only for a segment
      // it PAWS-dropped, so this is bounded by PAWSEstab, not zero.
      EXPECT_LE(Get(d, "TcpExtTCPACKSkippedPAWS"), Get(d, "TcpExtPAWSEstab"));
      EXPECT_EQ(Get(d, "TcpInCsumErrors"), 0);
      // Scaled with the injected rate: 1 per 5,000 segments at 1%, 1 per
      // 1,000 at 5%, at least 10 (short runs: one backend of the
      // FIN-delimited run once had 6 in 9,300 segments, pure ACKs held by
      // the relay). Measured on a direct client->backend path with the same
      // faults: ~1 per 60,000-90,000 at 1%, ~1 per 7,000-10,000 at 5%;
      // through rematcher the same since 917434f (README, "Faults").
      int64_t paws_allowed =
          fault_rate > 0 ? std::max<int64_t>(10, static_cast<int64_t>(in * fault_rate / 50)) : 0;
      // Pure ACKs get a batch more: once in about 140 runs at 1%, one
      // backend PAWS-dropped 25 pure ACKs, 22 of them 5 ticks old, a batch
      // held in one CPU's queue after the datapath while the other CPU's
      // passed (see E2eBed::kPawsOutliersAllowed). A lost pure ACK costs
      // nothing a later one does not repair; the segments with data stay
      // under the plain bound. Without the tracer every drop counts as data.
      const int64_t paws_estab = Get(d, "TcpExtPAWSEstab");
      const int64_t pure_acks = Get(d, E2eBed::kPawsPureAck);
      EXPECT_LE(paws_estab - pure_acks, paws_allowed)
          << "PAWS drops of segments with data (or a SYN), of " << in
          << " segments received; logged drops:\n" << absl::StrJoin(bed().LoggedPawsDrops(), "\n");
      EXPECT_LE(pure_acks, fault_rate > 0 ? paws_allowed + kPawsAckBatch : 0)
          << "PAWS drops of pure ACKs, of " << in << " segments received";
      // What each PAWS drop was (testing/tcpdrops). A relay holds a frame
      // back at most reorder_max_hold, timed by kernel arrival stamps
      // (testing/faults/relay.h), and every segment crosses two faulty
      // links (its client's and its backend's): twice that many ms ticks,
      // plus what a busy sender adds between stamping a segment and the
      // relay seeing it: up to 10 ticks in the direct-path control and 15
      // through rematcher at 100,000 requests (an owed ACK the core sent
      // late). 2 x 5 + 20 = 30. More than two older ones per host fail: a
      // TS translation made them (before the splice counted a pool's idle
      // time, clients saw old copies 80-700 ticks old at 5%); one or two
      // are a frame stuck in a starved CPU's queue after the datapath
      // (E2eBed::kPawsOutliersAllowed).
      const int hold_ticks =
          static_cast<int>(absl::ToDoubleMilliseconds(FaultSpec().reorder_max_hold) + 0.999);
      const int max_age = fault_rate > 0 ? 2 * hold_ticks + 20 : -1;
      absl::Status paws = bed().CheckPawsAttribution(host, d, max_age);
      EXPECT_TRUE(paws.ok()) << paws;
    }
    return retrans;
  }

  // Pools quiet once the load stops: every live pooled connection idle
  // (none leaked in a splice, none shared), each pool back to its size,
  // every pooled connection ever established either live or retired, and
  // exactly one established socket per live pooled connection in the LB.
  void CheckPoolsQuiet() {
    std::vector<BackendRow> rows = bed().WaitPoolsQuiet(kPool, absl::Seconds(15));
    ASSERT_EQ(rows.size(), static_cast<size_t>(kBackends)) << *bed().Ctl("backends");
    uint64_t live = 0;
    for (const BackendRow& b : rows) {
      SCOPED_TRACE(b.addr);
      EXPECT_EQ(b.pool_idle, b.pool_live) << "pooled connections not back idle";
      EXPECT_GE(b.pool_live, static_cast<uint32_t>(kPool));
      live += b.pool_live;
    }
    auto s = bed().Stats();
    ASSERT_TRUE(s.ok()) << s.status();
    std::cout << "[pools] live " << live << " established " << (*s)["pool_established"]
              << " retired " << (*s)["pool_retired"] << " pool_dead " << (*s)["pool_dead"]
              << " connect_failures " << (*s)["pool_connect_failures"] << std::endl;
    EXPECT_EQ((*s)["pool_established"], live + (*s)["pool_retired"])
        << "pooled connections neither live nor retired";
    auto ss = bed().tb().Run(bed().tb().lb_ns(), {"ss", "-Htn", "state", "established"});
    ASSERT_TRUE(ss.ok());
    EXPECT_EQ(static_cast<uint64_t>(std::count(ss->begin(), ss->end(), '\n')), live) << *ss;
  }

  void PrintStats(const std::map<std::string, uint64_t>& s) {
    std::cout << "[lb]";
    for (const char* k : {"splices", "rematches", "decision_applied", "decision_late",
                          "pool_parked", "pool_parked_shrunk", "pool_parked_by_scan",
                          "pipelined", "pinned_response_unacked", "pinned_request_unacked", "pinned_framing", "pinned_response_owed", "closed_clean", "closed_retire", "pool_dead", "tx_rst",
                          "drop_no_pool", "drop_bad_state", "drop_stale", "drop_malformed",
                          "stale_acked", "pool_retired", "pool_established",
                          "pool_connect_failures", "retry_on_backend_close"}) {
      auto it = s.find(k);
      if (it != s.end()) std::cout << " " << k << "=" << it->second;
    }
    std::cout << std::endl;
  }

  // N requests with mixed sizes and uploads from both clients at once under
  // loss + duplication + reordering at `rate` on every link. With an empty
  // policy, no LB: client i loads backend i directly (the control: what the
  // same faults do to two Linux TCP stacks with nothing in between).
  // `extra`: more loadgen flags for both clients.
  void RunUnderFaults(double rate, const std::string& policy,
                      const std::vector<std::string>& extra = {}) {
    const bool direct = policy.empty();
    if (!direct) {
      ASSERT_TRUE(bed().StartLb(policy).ok()) << bed().LbLog();
    }
    std::vector<std::string> targets(kClients);
    for (int c = 0; c < kClients; c++) {
      if (direct) {
        targets[c] = absl::StrCat("--target=", bed().tb().backend_ip(c), ":",
                                  bed().options().backend_port);
      }
      // One request before the faults: the client resolves its target's
      // address (ARP) on a clean link. Under 5% loss each way on two links
      // an ARP exchange fails about one time in five, and three failures
      // in a row failed every first connection of a run at once.
      std::vector<std::string> warm = {"--connections=1", "--requests=1", "--sizes=0"};
      if (direct) warm.push_back(targets[c]);
      auto w = bed().Load(c, warm, absl::Seconds(20));
      ASSERT_TRUE(w.ok()) << w.status();
      ASSERT_EQ(JsonInt(w->json, "ok"), 1) << w->json << w->err;
    }
    auto before = bed().TakeNstat();
    bed().ClearPawsLog();
    ASSERT_TRUE(before.ok()) << before.status();
    AttachFaults(rate, 1000 + static_cast<uint64_t>(rate * 1000));
    const uint64_t per_client = kRequests / kClients;
    // Bound on the whole run: TCP recovery explains a few RTO backoffs on
    // some requests, not a stall; the per-request timeout is far above any
    // recovery seen (p999 and max are printed).
    const double max_time_s = 60 + static_cast<double>(per_client) * (rate >= 0.05 ? 0.03 : 0.01);
    std::vector<std::string> flags = {
        "--connections=8", absl::StrCat("--requests=", per_client),
        "--sizes=0,100,10000,65536,300000", "--upload_sizes=0,0,5000,100000",
        "--timeout_ms=30000", absl::StrCat("--max_time_s=", max_time_s), "--allow_errors"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    std::vector<std::string> f1 = flags;
    if (direct) {
      flags.push_back(targets[0]);
      f1.push_back(targets[1]);
    }
    std::string out1 = bed().TempPath("load_c1.json");
    f1.push_back("--seed=7");
    auto bg = bed().SpawnLoad(1, f1, out1);
    ASSERT_TRUE(bg.ok()) << bg.status();
    auto r = bed().Load(0, flags, absl::Seconds(max_time_s + 30));
    ASSERT_TRUE(r.ok()) << r.status();
    auto rc = bg->Wait(absl::Seconds(max_time_s + 30));
    ASSERT_TRUE(rc.ok()) << rc.status();
    std::vector<std::string> jsons = {r->json, ReadFile(out1)};
    std::vector<std::string> errs = {r->err, ReadFile(out1 + ".err")};
    for (int c = 0; c < kClients; c++) {
      const std::string& j = jsons[c];
      SCOPED_TRACE(absl::StrCat("client ", c));
      std::cout << "[loadgen c" << c << "] " << j << std::endl;
      // What loadgen logged about its failures (the head it could not
      // parse, a connection that timed out).
      if (JsonInt(j, "errors") > 0) std::cout << "[loadgen c" << c << " log] " << errs[c] << std::endl;
      EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
      EXPECT_EQ(JsonInt(j, "ok"), static_cast<int64_t>(per_client)) << j;
      EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
      EXPECT_EQ(JsonInt(j, "timeout"), 0) << j;
    }
    EXPECT_EQ(r->exit_code, 0) << r->err;
    EXPECT_EQ(*rc, 0) << ReadFile(out1 + ".err");
    std::cout << "[time] client 0 took " << r->elapsed << " for " << per_client << " requests"
              << std::endl;
    uint64_t dropped = ReportFaults();
    faults_.clear();  // detach before judging the quiet state
    int64_t retrans = CheckNstat(*before, rate);
    std::cout << "[loss] frames dropped " << dropped << ", segments retransmitted " << retrans
              << std::endl;
    // Loss was really injected and repaired by TCP.
    EXPECT_GT(dropped, 0u);
    EXPECT_GE(retrans, static_cast<int64_t>(dropped) / 2);
    if (direct) return;
    auto s = bed().Stats();
    ASSERT_TRUE(s.ok());
    PrintStats(*s);
    EXPECT_GT((*s)["rematches"], 0u) << "rematching never happened";
    EXPECT_EQ((*s)["drop_malformed"], 0u);
    CheckPoolsQuiet();
  }

  // `close_failures`: the fraction of requests that may fail with EOF or
  // reset (never a timeout) because the backend closed under them.
  void RunBackendCloses(const std::vector<std::string>& backend_flags,
                        const std::vector<std::string>& lb_flags = {},
                        double close_failures = 0);

  static E2eBed* bed_;
  static std::string* skip_;
  static std::string* setup_error_;
  std::vector<std::unique_ptr<FaultInjector>> faults_;
};

E2eBed* FaultE2eTest::bed_ = nullptr;
std::string* FaultE2eTest::skip_ = nullptr;
std::string* FaultE2eTest::setup_error_ = nullptr;

// Every request byte exact under 1% loss+dup+reorder on every link, with
// rematching (fixed 2026-11-26: reordered or lost first request segments,
// and duplicated old response segments during an upload, had pinned
// clients as pipelining and left pooled connections busy).
TEST_F(FaultE2eTest, OnePercentLossReorderDuplicationBothSides) {
  RunUnderFaults(0.01, "rr");
}

// The same at 5%, with p2c. Was DISABLED until 98fa300 (1 run in 3 had a
// request time out with a pooled connection dying under it); 7 of 7 runs
// passed since, with PAWS drops at about the direct path's rate.
TEST_F(FaultE2eTest, FivePercentLossReorderDuplicationBothSides) {
  RunUnderFaults(0.05, "p2c");
}

// The same with every exchange unframed (request heads past the head
// reader: loadgen --pad_head), as an unframed protocol's would be: every
// boundary by the layer-4 rules, and moves with no ACK owed park their
// connection (RM_P_PARKED) while the core shrinks its window, with the
// core's two segments subject to the same faults. Every body byte exact,
// every parked connection queued or retired (none left parked: the pools
// end whole and idle).
TEST_F(FaultE2eTest, FivePercentFaultsUnframedExchanges) {
  RunUnderFaults(0.05, "rr", {"--pad_head=1500"});
  auto s = bed().Stats();
  ASSERT_TRUE(s.ok());
  EXPECT_GT((*s)["pool_parked"], 0u) << "no move parked its connection";
  EXPECT_LE((*s)["pool_parked_shrunk"], (*s)["pool_parked"]);
  EXPECT_EQ((*s)["pinned_framing"], 0u) << "an unframed exchange was framed";
}

// The control for the PAWS figures: the same faults and load straight from
// the clients to two backends, no LB. Its `[paws]` lines are what two Linux
// stacks see from the injector alone (the same bounds hold); put them next
// to the run above.
TEST_F(FaultE2eTest, FivePercentDirectPathControl) {
  RunUnderFaults(0.05, "");
}

// Backends close pooled connections themselves, under 1% faults: after 10
// requests on a connection (the 10th response says Connection: close and is
// followed by the backend's FIN) and after 200 ms idle (FIN on an idle pooled
// connection). Requests keep succeeding; a client sees a close only on an
// exchange its backend closed (loadgen resends what was never answered);
// the pools refill.
void FaultE2eTest::RunBackendCloses(const std::vector<std::string>& backend_flags,
                                    const std::vector<std::string>& lb_flags,
                                    double close_failures) {
  for (int i = 0; i < kBackends; i++) ASSERT_TRUE(bed().StartBackend(i, backend_flags).ok());
  ASSERT_TRUE(bed().StartLb("rr", lb_flags).ok()) << bed().LbLog();
  auto s0 = bed().Stats();
  ASSERT_TRUE(s0.ok());
  // Idle pooled connections die of the keepalive timeout before any load.
  absl::SleepFor(absl::Milliseconds(800));
  auto before = bed().TakeNstat();
  bed().ClearPawsLog();
  ASSERT_TRUE(before.ok());
  AttachFaults(0.01, 77);
  const uint64_t n = std::max<uint64_t>(1000, kRequests / 3);
  auto r = bed().Load(0, {"--connections=8", absl::StrCat("--requests=", n),
                          "--sizes=0,100,10000,300000", "--upload_sizes=0,0,5000",
                          "--timeout_ms=30000", "--max_time_s=150", "--allow_errors"},
                      absl::Seconds(180));
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "[loadgen] " << r->json << std::endl;
  EXPECT_EQ(JsonInt(r->json, "verify_failures"), 0) << r->json;
  EXPECT_EQ(JsonInt(r->json, "timeout"), 0) << r->json;
  EXPECT_EQ(JsonInt(r->json, "unfinished"), 0) << r->json;
  EXPECT_EQ(JsonInt(r->json, "protocol"), 0) << r->json;
  EXPECT_EQ(JsonInt(r->json, "bad_status"), 0) << r->json;
  // Every request gets through (the ones on a closing exchange are resent),
  // or, where the backend may close under a request, fails fast and visibly.
  const int64_t may_fail = static_cast<int64_t>(close_failures * n);
  EXPECT_GE(JsonInt(r->json, "ok"), static_cast<int64_t>(n) - may_fail) << r->json;
  EXPECT_EQ(JsonInt(r->json, "errors"), JsonInt(r->json, "eof") + JsonInt(r->json, "reset"))
      << "only closes may fail requests: " << r->json;
  EXPECT_LE(JsonInt(r->json, "errors"), may_fail) << r->json;
  ReportFaults();
  faults_.clear();
  CheckNstat(*before, 0.01);
  auto s1 = bed().Stats();
  ASSERT_TRUE(s1.ok());
  PrintStats(*s1);
  EXPECT_GT((*s1)["pool_retired"], (*s0)["pool_retired"]);
  EXPECT_GT((*s1)["pool_established"], (*s0)["pool_established"] + 3 * kPool)
      << "pools did not refill";
  // The backends keep closing idle pooled connections: pools stay refilled.
  absl::SleepFor(absl::Milliseconds(600));
  std::vector<BackendRow> rows = bed().WaitPoolsQuiet(kPool, absl::Seconds(10));
  std::cout << *bed().Ctl("backends") << std::endl;
  for (const BackendRow& b : rows) EXPECT_GE(b.pool_live, 1u) << b.addr;
}

// Backend FIN that delimits a response (Connection: close on every 10th).
TEST_F(FaultE2eTest, BackendFinDelimitsResponseUnderFaults) {
  RunBackendCloses({"--max_requests_per_conn=10"});
}

// Backends that also close connections idle for 200 ms (far below any
// sane --pool_idle_timeout_ms, which would churn the pools): the backend's
// FIN on an idle pooled connection is answered, the dead queue entries it
// leaves are compacted away, and a request that lands on a connection the
// backend is closing at that moment, before anything of it was acked to the
// client, is retried on a fresh one (retry_on_backend_close). What cannot be
// retried fails fast and visibly (EOF or reset, never a hang): a close that
// reaches a request whose ack the client already has (it will not resend
// it, and rematcher holds no copy of the payload to replay), or a request
// that started mid-epoch on a connection the client kept. Measured: 970-978
// of 1,000 succeed, the rest EOF; up to 5% may fail here. An L7 proxy
// retries these from its buffer; with rematcher, retire pooled connections
// before the backend does (--pool_idle_timeout_ms below its keepalive
// timeout), which the default (60 s) does for common servers.
TEST_F(FaultE2eTest, BackendFinOnIdlePooledConnectionUnderFaults) {
  RunBackendCloses({"--max_requests_per_conn=10", "--keepalive_timeout_ms=200"}, {},
                   /*close_failures=*/0.05);
  auto s = bed().Stats();
  ASSERT_TRUE(s.ok());
  std::cout << "[pool] retry_on_backend_close " << (*s)["retry_on_backend_close"]
            << " compacted " << (*s)["pool_idle_entries_compacted"] << std::endl;
  EXPECT_GT((*s)["pool_idle_entries_compacted"], 0u);
}

// A backend that resets a connection mid-response (it crashed, or gave up
// on the request): the datapath passes its RST on to the client, once, and
// nothing retransmits a reset. Lost on the way (here the injector drops the
// first RST towards the client each time), a client waiting for the rest of
// the response with nothing to send would wait for ever; the core sends it
// one of its own (lb/client_reset.h). curl, with an 8 s limit, must end
// with "connection reset" (exit 56) within 3 s, never time out (exit 28).
TEST_F(FaultE2eTest, BackendResetMidResponseReachesTheClientThoughTheResetIsLost) {
  ASSERT_TRUE(bed().StartLb("rr").ok()) << bed().LbLog();
  FaultSpec spec;
  spec.drop_resets = 1;
  spec.dir = faults::Direction::kToHost;
  auto f = FaultInjector::Attach(bed().tb(), bed().tb().client_peer_ifname(0), spec);
  ASSERT_TRUE(f.ok()) << f.status();
  auto s0 = bed().Stats();
  ASSERT_TRUE(s0.ok()) << s0.status();
  const std::string url =
      absl::StrCat("http://", bed().tb().vip(), ":8080/r?size=200000&seed=5&reset_at=30000");
  constexpr int kRuns = 3;
  for (int i = 0; i < kRuns; i++) {
    SCOPED_TRACE(absl::StrCat("run ", i));
    if (i > 0) ASSERT_TRUE((*f)->Update(spec).ok());  // one more reset to lose
    absl::Time t0 = absl::Now();
    auto r = bed().tb().RunCommand(bed().tb().client_ns(0),
                                   {"curl", "-sS", "-o", "/dev/null", "-m", "8", "-w",
                                    "%{size_download}", url},
                                   absl::Seconds(15));
    absl::Duration took = absl::Now() - t0;
    ASSERT_TRUE(r.ok()) << r.status();
    std::cout << "[reset] curl exit " << r->exit_code << " after " << took << ", body bytes "
              << r->out << "; " << r->err << std::flush;
    EXPECT_EQ(r->exit_code, 56) << "not ended by a reset (28: it waited out curl's limit)";
    EXPECT_LT(took, absl::Seconds(3));
    int64_t body = 0;
    EXPECT_TRUE(absl::SimpleAtoi(r->out, &body)) << r->out;
    EXPECT_GE(body, 30000) << "the bytes before the reset";
  }
  auto c = (*f)->Counters();
  ASSERT_TRUE(c.ok()) << c.status();
  std::cout << "[faults] " << c->ToString();
  EXPECT_EQ(c->to_host.resets_dropped, uint64_t{kRuns}) << "the datapath's RST was not the one lost";
  auto s1 = bed().Stats();
  ASSERT_TRUE(s1.ok()) << s1.status();
  std::cout << "[lb] client_resets_sent " << (*s1)["client_resets_sent"] - (*s0)["client_resets_sent"]
            << " pool_dead " << (*s1)["pool_dead"] - (*s0)["pool_dead"] << std::endl;
  EXPECT_GE((*s1)["client_resets_sent"] - (*s0)["client_resets_sent"], uint64_t{kRuns});
  EXPECT_EQ((*s1)["pool_dead"] - (*s0)["pool_dead"], uint64_t{kRuns});
  // The pools refill, and the next request is served as ever.
  bed().WaitPoolsQuiet(kPool, absl::Seconds(10));
  auto ok = bed().tb().RunCommand(
      bed().tb().client_ns(0),
      {"curl", "-sS", "-o", "/dev/null", "-m", "8", "-w", "%{http_code}",
       absl::StrCat("http://", bed().tb().vip(), ":8080/r?size=200000&seed=5")},
      absl::Seconds(15));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->exit_code, 0) << ok->err;
  EXPECT_EQ(ok->out, "200");
}

// A backend held back by lost ACKs. The client's acknowledgements of an
// unframed response's first flight are lost between the LB and the backend,
// so the backend, with most of the response still to send, waits out its
// retransmission timer (tcp_rto_min_us 2 s in its namespace here, so the
// wait outlasts the LB's idle scan, which runs every second) while the
// client, having acknowledged all it got, looks idle. The idle release
// hands the pooled connection back, and it must be verified: the probe's
// ACK (its one old byte ends at the backend's rcv_nxt, so the backend takes
// it) has the backend send on before it answers, and the connection goes
// back to the client (pool_reattached). Handed straight back to the idle
// queue (as after a whole framed response, which this is not), the
// connection sat idle with bytes owed, the backend's next segment found it
// with no client and killed it (pool_dead), and the client waited: with
// resp_whole() forced true (a local edit), 15,268 of 1,000,125 bytes, then
// nothing for 10 s.
TEST_F(FaultE2eTest, BackendHeldBackByLostAcksIsNotHandedOff) {
  // The namespaces outlive this test: the setting goes back to what it was
  // whatever happens here (the next test's SetUp restarts the backends,
  // whose new listeners take it). Left at 2 s, it once made a later test's
  // request wait out 2 + 4 s of retransmission timer.
  auto rto_min = [&](int i, const std::string& value) {
    return bed().tb().RunCommand(bed().tb().backend_ns(i),
                                 {"sysctl", "-qw", "net.ipv4.tcp_rto_min_us=" + value},
                                 absl::Seconds(5));
  };
  std::vector<std::string> was(kBackends);
  auto restore = absl::MakeCleanup([&] {
    for (int i = 0; i < kBackends; i++)
      if (!was[i].empty()) (void)rto_min(i, was[i]);
  });
  for (int i = 0; i < kBackends; i++) {
    auto cur = bed().tb().RunCommand(bed().tb().backend_ns(i),
                                     {"sysctl", "-n", "net.ipv4.tcp_rto_min_us"},
                                     absl::Seconds(5));
    ASSERT_TRUE(cur.ok()) << cur.status();
    if (cur->exit_code != 0) {
      std::cout << "SKIPPED: no net.ipv4.tcp_rto_min_us on this kernel: " << cur->err << std::endl;
      GTEST_SKIP();
    }
    was[i] = std::string(absl::StripAsciiWhitespace(cur->out));
    auto r = rto_min(i, "2000000");
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->exit_code, 0) << r->err;
    // A listener takes the setting when it is made: restart the backend.
    ASSERT_TRUE(bed().StartBackend(i).ok());
  }
  ASSERT_TRUE(bed().StartLb("rr", {"--idle_release_ms=100"}).ok()) << bed().LbLog();
  std::vector<std::unique_ptr<FaultInjector>> fs;
  FaultSpec spec;
  spec.dir = faults::Direction::kToHost;  // towards the backend
  for (int i = 0; i < kBackends; i++) {
    auto f = FaultInjector::Attach(bed().tb(), bed().tb().backend_peer_ifname(i), spec);
    ASSERT_TRUE(f.ok()) << f.status();
    fs.push_back(std::move(*f));
  }
  auto s0 = bed().Stats();
  ASSERT_TRUE(s0.ok()) << s0.status();
  absl::StatusOr<int> fd = testbed::SocketInNetns(bed().tb().client_ns(0), AF_INET, SOCK_STREAM);
  ASSERT_TRUE(fd.ok()) << fd.status();
  sockaddr_in vip{};
  vip.sin_family = AF_INET;
  vip.sin_port = htons(bed().options().backend_port);
  inet_pton(AF_INET, bed().tb().vip().c_str(), &vip.sin_addr);
  ASSERT_EQ(connect(*fd, reinterpret_cast<sockaddr*>(&vip), sizeof(vip)), 0) << strerror(errno);
  // A head over a segment long is left to the layer-4 rules: no framing
  // tells the LB that the response is not whole.
  const size_t size = 1000000;
  const std::string req = absl::StrCat("GET /r?size=", size, "&seed=91 HTTP/1.1\r\nHost: t\r\n",
                                       "X-Pad: ", std::string(1500, 'p'), "\r\n\r\n");
  // Every pure ACK towards the backends is lost for 60 ms from now: the
  // client's ACKs of the first flight and of the backend's loss probe.
  spec.drop_acks_for = absl::Milliseconds(60);
  for (auto& f : fs) ASSERT_TRUE(f->Update(spec).ok());
  const absl::Time t0 = absl::Now();
  ASSERT_EQ(send(*fd, req.data(), req.size(), 0), ssize_t(req.size()));
  // What came stays in `rest` if the response stalls (the body so far).
  std::string rest;
  absl::StatusOr<backend::testutil::HttpResponse> resp =
      backend::testutil::ReadResponse(*fd, &rest, /*timeout_s=*/10);
  const absl::Duration took = absl::Now() - t0;
  const size_t got = resp.ok() ? resp->body.size() : rest.size();
  uint64_t acks_dropped = 0;
  for (auto& f : fs) {
    auto c = f->Counters();
    ASSERT_TRUE(c.ok()) << c.status();
    acks_dropped += c->to_host.acks_dropped;
  }
  auto s1 = bed().Stats();
  ASSERT_TRUE(s1.ok()) << s1.status();
  close(*fd);  // after the counters: its close, after an unframed response, is verified too
  auto d = [&](const char* k) { return (*s1)[k] - (*s0)[k]; };
  std::cout << "[lost acks] got " << got << " of " << size << " body bytes in " << took
            << "; acks_dropped " << acks_dropped << " pool_verify " << d("pool_verify")
            << " pool_reattached " << d("pool_reattached") << " pool_verified "
            << d("pool_verified") << " pool_dead " << d("pool_dead") << std::endl;
  ASSERT_TRUE(resp.ok()) << "the response stalled: " << resp.status();
  std::string body(size, 0);
  backend::FillBody(91, 0, body.data(), size);
  EXPECT_TRUE(resp->body == body) << "body differs";
  EXPECT_GT(acks_dropped, 0u);
  EXPECT_EQ(d("pool_verify"), 1u) << "the client was not released as idle: no hold-back";
  EXPECT_EQ(d("pool_reattached"), 1u) << "verification did not give the connection back";
  EXPECT_EQ(d("pool_dead"), 0u);
  EXPECT_LT(took, absl::Milliseconds(1900)) << "the backend's own timer ended the wait";
}

// A backend that stalls (a GC-like pause of 150 ms every 300 ms). The
// decision for a client's next request is taken when its current request
// starts or its response begins, so decisions taken before a stall still
// name the stalled backend when the requests come. Three things move them:
// the core flags a backend with requests outstanding and no response begun
// for a while as stalled (--stall_ms; policies prefer the others), puts
// pending decisions towards a stalled or overloaded backend to the policy
// again (--redecide_us), and counts decisions not used yet as load
// (--count_pending_decisions), so one instant's least loaded backend does
// not get them all; and the load the policy sees is the requests not
// answered yet, not those whose responses the clients have yet to
// acknowledge (--load_until_acked=false): an idle client's delayed ACK left
// each request counted for tens of ms after its answer, and the stalled
// backend's few stuck requests were lost in that noise. The same open-loop
// load with all four and with none, on the same backends.
TEST_F(FaultE2eTest, PendingDecisionsLeaveAStalledBackend) {
  ASSERT_TRUE(bed().StartBackend(0, {"--stall_every_ms=300", "--stall_ms=150"}).ok());
  struct Outcome {
    int64_t p50 = -1, p90 = -1, p99 = -1, mean = -1, ok = -1, to_stalled = -1;
    uint64_t redecided = 0, stalls = 0;
  };
  auto run = [&](bool on) {
    Outcome o;
    std::vector<std::string> flags;
    if (!on)
      flags = {"--redecide_us=0", "--stall_ms=0", "--count_pending_decisions=false",
               "--load_until_acked=true", "--reroute_margin=0"};
    absl::Status st = bed().StartLb("least_outstanding", flags);
    EXPECT_TRUE(st.ok()) << st << bed().LbLog();
    if (!st.ok()) return o;
    auto r = bed().Load(0, {"--connections=64", "--mode=open", "--rate=1000",
                            "--requests=4000", "--sizes=100,1000", "--timeout_ms=10000",
                            "--max_time_s=40"},
                        absl::Seconds(60));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return o;
    std::cout << "[loadgen " << (on ? "on" : "off") << "] " << r->json << std::endl;
    o.p50 = JsonInt(r->json, "p50");
    o.p90 = JsonInt(r->json, "p90");
    o.p99 = JsonInt(r->json, "p99");
    o.mean = JsonInt(r->json, "mean");
    o.ok = JsonInt(r->json, "ok");
    o.to_stalled = e2e::BackendCounts(r->json)["b0"];
    auto s = bed().Stats();
    EXPECT_TRUE(s.ok());
    if (s.ok()) {
      o.redecided = (*s)["policy_redecided"];
      o.stalls = (*s)["backend_stalls"];
    }
    bed().StopLb();
    return o;
  };
  Outcome off = run(false);
  Outcome on = run(true);
  std::cout << "[stall] without: p50 " << off.p50 << " p90 " << off.p90 << " p99 " << off.p99
            << " mean " << off.mean << " us, b0 served " << off.to_stalled << "; with: p50 "
            << on.p50 << " p90 " << on.p90 << " p99 " << on.p99 << " mean " << on.mean
            << " us, b0 served " << on.to_stalled << ", "
            << on.redecided << " decisions changed, " << on.stalls << " stalls flagged"
            << std::endl;
  EXPECT_EQ(off.ok, 4000);
  EXPECT_EQ(on.ok, 4000);
  EXPECT_EQ(off.redecided, 0u);
  EXPECT_EQ(off.stalls, 0u);
  EXPECT_GT(on.redecided, 0u);
  // About 13 stalls in the run's 4 s.
  EXPECT_GE(on.stalls, 5u);
  // Measured (2026-12-05, all four against none, 3 runs): p90 3.1-28 ms
  // -> 0.53-0.86 ms, the stalled backend served 843-984 -> 569-619 of the
  // 4,000 requests. Earlier (before stall flags and pending-decision load,
  // with re-decision alone against none, 8 runs): p90 2-68 ms without, 0.3-1.1
  // ms with. All three against none: p90 1.5 ms -> 0.46, p99 146 -> 111 ms.
  // Only the directions are asserted (a 4x margin on p90 failed 2 of 8
  // runs of the earlier form). p99 stays a stall either way: requests
  // already sent when a stall begins, and those queued behind them on the
  // same client connections, still wait. (With the load until acknowledged,
  // the stalled backend served about as many requests with as without:
  // 760 vs 802.) The direction of the mean, not of p90: once (2026-12-07)
  // the run without had its stalls miss its p90 (519 us, against 529 with)
  // while its p99 was 133 ms against 3.5 and its mean 7.5 ms against 1.0;
  // every request caught by a stall adds its wait to the mean.
  EXPECT_LT(on.mean, off.mean) << "mean with " << on.mean << " us, without " << off.mean;
  EXPECT_LT(on.to_stalled, off.to_stalled);
}

// A request's backend is decided a request earlier, often milliseconds
// before it arrives; a backend that stalls meanwhile has its unanswered
// count climb while the core has yet to flag it. The datapath checks on
// arrival (--reroute_margin): a request bound for a backend that has two
// more requests unanswered than its alternative, and twice as many, goes to
// the alternative. Side by side with the check off, with the core's stall
// flags and re-decision off in both runs (they catch a stall too, a
// millisecond or more after it began: PendingDecisionsLeaveAStalledBackend):
// fewer requests wait out a stall.
TEST_F(FaultE2eTest, ArrivingRequestsGoAroundAStalledBackend) {
  ASSERT_TRUE(bed().StartBackend(0, {"--stall_every_ms=150", "--stall_ms=40"}).ok());
  struct Outcome {
    int64_t ok = -1, waited = -1, p99 = -1;
    uint64_t rerouted = 0;
  };
  auto run = [&](bool on) {
    Outcome o;
    absl::Status st = bed().StartLb(
        "p2c", {"--stall_ms=0", "--redecide_us=0", on ? "--reroute_margin=2" : "--reroute_margin=0"});
    EXPECT_TRUE(st.ok()) << st << bed().LbLog();
    if (!st.ok()) return o;
    const std::string csv = bed().TempPath(on ? "reroute_on.csv" : "reroute_off.csv");
    auto r = bed().Load(0, {"--connections=64", "--mode=open", "--rate=2000",
                            "--requests=6000", "--sizes=100", "--timeout_ms=10000",
                            "--max_time_s=40", "--latency_csv=" + csv},
                        absl::Seconds(60));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return o;
    std::cout << "[loadgen " << (on ? "on" : "off") << "] " << r->json << std::endl;
    o.ok = JsonInt(r->json, "ok");
    o.p99 = JsonInt(r->json, "p99");
    // Requests that waited out (most of) a stall: 20 ms or more.
    o.waited = 0;
    std::vector<std::string> lines = absl::StrSplit(ReadFile(csv), '\n', absl::SkipEmpty());
    for (size_t i = 1; i < lines.size(); i++) {
      std::vector<std::string> f = absl::StrSplit(lines[i], ',');
      int64_t lat = 0;
      if (f.size() > 2 && absl::SimpleAtoi(f[2], &lat) && lat >= 20000) o.waited++;
    }
    auto s = bed().Stats();
    EXPECT_TRUE(s.ok());
    if (s.ok()) o.rerouted = (*s)["arrival_rerouted"];
    bed().StopLb();
    return o;
  };
  Outcome off = run(false);
  Outcome on = run(true);
  std::cout << "[reroute] without: " << off.waited << " requests waited >= 20 ms, p99 "
            << off.p99 << " us; with: " << on.waited << ", p99 " << on.p99 << " us, "
            << on.rerouted << " rerouted" << std::endl;
  EXPECT_EQ(off.ok, 6000);
  EXPECT_EQ(on.ok, 6000);
  EXPECT_EQ(off.rerouted, 0u);
  EXPECT_GT(on.rerouted, 0u);
  // Measured (2026-12-06): 408 -> 43 requests waited 20 ms or more, p99
  // 31.5 -> 7.8 ms. With the check off every request decided for the
  // stalled backend during a pause waits it out; with it on, those sent
  // before its count climbs (about two per pause) still do.
  EXPECT_LT(on.waited * 3, off.waited) << "with " << on.waited << ", without " << off.waited;
}

// A latency-aware policy (the example plugin, peak_ewma) all but stops
// using a backend 10x slower at a load the fast ones carry easily, and the
// arrival check must not undo that: each backend's alternative is chosen by
// (unanswered + 1) x usual latency, not by the count alone, which made the
// idle slow backend every busy one's alternative. Measured here
// (2026-12-06, 3 runs each): 776-847 of 15,000 requests to the slow
// backend with the count alone, 67-128 with the fix. Counted by what the
// check itself sent there (the backend's rerouted_in): with the count
// alone 731-743, with the fix 1-10 on a quiet host and 107-194 with both
// CPUs kept busy by other work (2026-12-06).
TEST_F(FaultE2eTest, ArrivalReroutesLeaveAnIdleSlowBackendAlone) {
  for (int i = 0; i < kBackends; i++)
    ASSERT_TRUE(bed().StartBackend(i, {i == kBackends - 1 ? "--service_us=2000" : "--service_us=200"}).ok());
  ASSERT_TRUE(bed().StartLb(backend::testutil::RunfilePath("plugins/example/libpeak_ewma.so")).ok())
      << bed().LbLog();
  std::vector<std::string> load = {"--connections=64", "--mode=open", "--rate=8000",
                                   "--sizes=0", "--timeout_ms=10000", "--max_time_s=30"};
  // Warm-up: until every backend has answered, its latency is not known.
  std::vector<std::string> warm = load;
  warm.push_back("--requests=2000");
  auto w = bed().Load(0, warm, absl::Seconds(60));
  ASSERT_TRUE(w.ok()) << w.status();
  auto before = bed().Backends();
  auto s0 = bed().Stats();
  ASSERT_TRUE(before.ok() && s0.ok());
  load.push_back("--requests=15000");
  auto r = bed().Load(0, load, absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "[loadgen] " << r->json << std::endl;
  EXPECT_EQ(JsonInt(r->json, "ok"), 15000) << r->json;
  auto after = bed().Backends();
  auto s = bed().Stats();
  ASSERT_TRUE(after.ok() && s.ok());
  ASSERT_EQ(after->size(), before->size());
  uint64_t total = 0, slow = 0, slow_rerouted = 0;
  for (size_t i = 0; i < after->size(); i++) {
    const uint64_t n = (*after)[i].requests - (*before)[i].requests;
    total += n;
    if ((*after)[i].id == kBackends - 1) {
      slow = n;
      slow_rerouted = (*after)[i].rerouted_in - (*before)[i].rerouted_in;
    }
  }
  std::cout << "[slow] the slow backend served " << slow << " of " << total
            << " requests, " << slow_rerouted << " of them rerouted to it; arrival_rerouted "
            << (*s)["arrival_rerouted"] - (*s0)["arrival_rerouted"] << std::endl;
  EXPECT_GE(total, 15000u);
  // What the policy sends there is its own affair: on a host whose CPUs
  // are taken by other work, the fast backends' latency rises and
  // peak_ewma itself sent 1,154-1,690 of 15,000 there with the check off
  // (763-1,303 with it on, 107-194 of them rerouted). The check's own
  // share is what must stay small.
  EXPECT_LE(slow_rerouted * 50, total) << "more than 2% rerouted to the backend 10x slower";
}

// A stall flag moves a backend's pending decisions only to backends that
// usually answer sooner than it has been silent: a backend pausing 15 ms
// now and then among two that take 40 ms per request keeps its decisions
// (moving them would trade a wait of at most 15 ms for one of 40). Under
// CPU overload (stress_test) the fast backends' short gaps were flagged and
// every decision drained to the overloaded backend, whose usual latency was
// 100 ms and more; rematching all but stopped once its pool was full.
// Without the rule this test saw every stall move decisions to the slow
// backends (policy_redecided in the hundreds).
TEST_F(FaultE2eTest, StallFlagDoesNotMoveDecisionsToSlowerBackends) {
  ASSERT_TRUE(bed().StartBackend(0, {"--stall_every_ms=200", "--stall_ms=15"}).ok());
  for (int i = 1; i < kBackends; i++)
    ASSERT_TRUE(bed().StartBackend(i, {"--service_us=40000"}).ok());
  ASSERT_TRUE(bed().StartLb("rr").ok()) << bed().LbLog();
  // A warm-up first: until the slow backends have answered a few requests
  // their latency is not known, and decisions may move to them.
  std::vector<std::string> load = {"--connections=64", "--mode=open", "--rate=600",
                                   "--sizes=100", "--timeout_ms=10000", "--max_time_s=30"};
  std::vector<std::string> warm = load;
  warm.push_back("--requests=300");
  auto w = bed().Load(0, warm, absl::Seconds(60));
  ASSERT_TRUE(w.ok()) << w.status();
  auto s0 = bed().Stats();
  ASSERT_TRUE(s0.ok()) << s0.status();
  load.push_back("--requests=2400");
  auto r = bed().Load(0, load, absl::Seconds(60));
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "[loadgen] " << r->json << std::endl;
  EXPECT_EQ(JsonInt(r->json, "ok"), 2400) << r->json;
  EXPECT_EQ(JsonInt(r->json, "verify_failures"), 0) << r->json;
  auto s = bed().Stats();
  ASSERT_TRUE(s.ok()) << s.status();
  auto delta = [&](const char* k) { return (*s)[k] - (*s0)[k]; };
  std::cout << "[stall] warm-up: backend_stalls " << (*s0)["backend_stalls"]
            << " policy_redecided " << (*s0)["policy_redecided"] << "; then: backend_stalls "
            << delta("backend_stalls") << " policy_redecided " << delta("policy_redecided")
            << " redecide_withheld " << delta("redecide_withheld") << std::endl;
  // The pauses were flagged (about 20 in the run's 4 s) ...
  EXPECT_GE(delta("backend_stalls"), 5u);
  // ... and no decision left the paused backend for a slower one. (The
  // slow backends are always "behind" on requests in flight; rr keeps a
  // decision asked again, so theirs do not move either.)
  EXPECT_LE(delta("policy_redecided"), 10u);
}

// SIGKILL one backend under load and restart it: requests in flight to it
// fail fast (reset/EOF, never a timeout), the other clients keep being
// served by the other backends, no byte is wrong, and the pool of the
// restarted backend refills.
TEST_F(FaultE2eTest, BackendKilledMidLoadAndRestarted) {
  ASSERT_TRUE(bed().StartLb("rr").ok()) << bed().LbLog();
  std::vector<std::string> flags = {"--connections=8", "--duration_s=8",
                                    "--sizes=0,100,10000,300000", "--upload_sizes=0,0,5000",
                                    "--timeout_ms=5000", "--max_time_s=30", "--allow_errors"};
  std::string out1 = bed().TempPath("kill_c1.json");
  std::vector<std::string> f1 = flags;
  f1.push_back("--seed=9");
  auto bg = bed().SpawnLoad(1, f1, out1);
  ASSERT_TRUE(bg.ok());
  absl::SleepFor(absl::Seconds(2));
  bed().KillBackend(1, SIGKILL);
  absl::Time killed = absl::Now();
  // Its connects are refused from now on: nothing listens. That counts at
  // once, though it answered requests a moment ago (a connect that times
  // out then is overload, and does not).
  absl::Duration down_after = absl::InfiniteDuration();
  while (absl::Now() - killed < absl::Seconds(2)) {
    auto rows = bed().Backends();
    ASSERT_TRUE(rows.ok()) << rows.status();
    for (const e2e::BackendRow& row : *rows)
      if (row.id == 1 && row.state == "down" && down_after == absl::InfiniteDuration())
        down_after = absl::Now() - killed;
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::cout << "[kill] b1 marked down after " << down_after << std::endl;
  EXPECT_LT(down_after, absl::Seconds(1)) << *bed().Ctl("backends");
  auto mid = bed().Backends();
  ASSERT_TRUE(mid.ok());
  std::cout << "[backends while b1 is dead]\n" << *bed().Ctl("backends") << std::endl;
  ASSERT_TRUE(bed().StartBackend(1).ok());
  std::cout << "[restart] b1 back after " << absl::Now() - killed << std::endl;
  auto r = bed().Load(0, {"--connections=8", "--duration_s=4", "--sizes=0,100,10000,300000",
                          "--timeout_ms=5000", "--max_time_s=30", "--allow_errors"},
                      absl::Seconds(60));
  ASSERT_TRUE(r.ok());
  auto rc = bg->Wait(absl::Seconds(60));
  ASSERT_TRUE(rc.ok());
  std::string j1 = ReadFile(out1);
  for (const std::string& j : {j1, r->json}) {
    std::cout << "[loadgen] " << j << std::endl;
    EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
    // Fail fast: reset or EOF, never a hang to the timeout.
    EXPECT_EQ(JsonInt(j, "timeout"), 0) << j;
    EXPECT_EQ(JsonInt(j, "unfinished"), 0) << j;
    EXPECT_EQ(JsonInt(j, "protocol"), 0) << j;
    EXPECT_EQ(JsonInt(j, "bad_status"), 0) << j;
    EXPECT_GT(JsonInt(j, "ok"), 500) << j;
  }
  // The client running across the kill lost at most the requests in flight
  // on b1 (8 connections, each had at most one).
  EXPECT_LE(JsonInt(j1, "errors"), 8) << j1;
  auto s = bed().Stats();
  ASSERT_TRUE(s.ok());
  PrintStats(*s);
  // After the restart the pool of b1 refills and it serves again.
  CheckPoolsQuiet();
  auto r2 = bed().Load(0, {"--connections=4", "--requests=600", "--sizes=100",
                           "--timeout_ms=5000", "--max_time_s=30"},
                       absl::Seconds(60));
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(JsonInt(r2->json, "ok"), 600) << r2->json;
  // b1 is back in rotation. (Its share of a 30 ms burst depends on how many
  // decisions arrive in time; the even spread is RoundRobinSpreads' job.)
  EXPECT_GT(e2e::BackendCounts(r2->json)["b1"], 0) << r2->json;
}

}  // namespace
}  // namespace rematcher
