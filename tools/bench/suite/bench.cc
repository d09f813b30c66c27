// bench: rematcher side by side with the load balancers users would pick
// instead, on one namespace testbed, in one run (issue 5).
//
//   bazel run //tools/bench/suite:bench -- --suite=quick   # under 5 minutes
//   bazel run //tools/bench/suite:bench -- --suite=full    # about an hour
//
// What it owns and its contract:
// - Builds a testbed "rmbn" (1 client namespace, 3 backend namespaces, the LB
//   namespace with the VIP 198.18.0.10), only addresses of 198.18.0.0/15.
// - Per scenario it (re)starts the three test backends with the scenario's
//   service times and stalls, then for every repetition runs every contender
//   once, in an order rotated (and reversed on odd repetitions) so that drift
//   of this shared machine hits all contenders alike. Each contender is
//   started, owns the VIP alone (checked before each start: no listener on
//   the VIP, no XDP on the LB's eth0, no nft table of ours), runs every load
//   point of the scenario, and is stopped.
// - Contenders: direct (loadgen spreads its connections and rate over the
//   backend IPs: the limit), rematcher with rr / least_outstanding / p2c,
//   HAProxy http mode (balance leastconn, balance random(2); per request,
//   `http-reuse always`), HAProxy tcp mode (per connection, leastconn),
//   nftables DNAT with numgen (per connection, in kernel; the LB namespace
//   forwards and SNATs to the LB's own address 198.18.0.2 so that replies come
//   back through it: the backends keep no route to the clients via the LB).
// - CPU per request: the LB process's utime+stime (/proc/<pid>/stat; zero for
//   nft, which has no process) and the host's softirq time (/proc/stat deltas,
//   all CPUs). Softirq cannot be attributed to a namespace: every veth hop of
//   clients, switch, LB and backends lands there, so the summary reports the
//   LB's softirq as the excess over the direct contender of the same point
//   (same clients, same backends, one hop less), and the LB's estimated cost
//   as process + that excess. Host-wide counters also see other tenants of
//   this machine; medians over repetitions damp that, not remove it.
// - Writes <out>/results.csv (one row per run), results.md (medians with
//   min..max over repetitions, target checks), PNG plots of rps and p99 per
//   scenario and point (gnuplot), and prints the summary.
// - Bounded: every command has a timeout, a watchdog kills everything after
//   --max_total_s, SIGINT/SIGTERM remove the namespaces and children.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bpf/rematcher_shared.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "lb/control_client.h"
#include "testing/testbed/process.h"
#include "testing/testbed/testbed.h"
#include "tools/bench/suite/stats.h"

DEFINE_string(suite, "quick", "quick | full");
DEFINE_string(out_dir, "",
              "Results directory (default: <workspace>/bench/results/<suite>-<timestamp>)");
DEFINE_int32(reps, 0, "Repetitions per point (default: quick 3, full 5)");
DEFINE_double(duration_s, 0, "Seconds per load run (default: quick 0.9, full 5)");
DEFINE_double(warmup_s, -1, "Unrecorded load after each LB start (default: quick 0.1, full 1)");
DEFINE_string(contenders, "",
              "Comma-separated contender names, in this order (default: all but "
              "rematcher-peak_ewma, the example custom plugin). A rematcher "
              "contender takes extra flags after @, +-separated, as a variant: "
              "rematcher-p2c@poll_us=0; binary=/abs/path runs another build of rematcher "
              "(rematcher-p2c@binary=/tmp/old/bazel-bin/lb/rematcher)");
DEFINE_string(scenarios, "", "Comma-separated subset of scenario names (default: all of the suite)");
DEFINE_string(points, "", "Comma-separated subset of point names, e.g. closed-10c (default: all)");
DEFINE_double(max_total_s, 0, "Hard bound on the whole run (default: quick 420, full 7200)");
DEFINE_int32(client_threads, 2, "loadgen/wrk threads for a single-target run");
DEFINE_int32(conns_per_backend, 64, "rematcher --conns_per_backend");
DEFINE_string(prefix, "rmbn", "Testbed namespace prefix");
DEFINE_bool(keep_latency_csv, false,
            "Keep loadgen's per-request latency CSVs (with the backend that answered) in the "
            "run's logs/ directory");
DEFINE_string(rematcher_flags, "",
              "Extra flags for every rematcher contender, space-separated (experiments)");

namespace rematcher::bench {

std::vector<std::string> g_args;  // the command line's arguments, before gflags

namespace {

namespace tb = rematcher::testbed;
constexpr int kNumBackends = 3;
constexpr int kPort = 8080;
constexpr char kVip[] = "198.18.0.10";
constexpr char kNftTable[] = "rmbench";

// ---------------------------------------------------------------- plan

enum class Kind { kDirect, kRematcher, kHaproxyHttp, kHaproxyTcp, kNft };

struct Contender {
  std::string name;
  Kind kind;
  std::string arg;  // rematcher policy (a name, or a plugin path in the runfiles) or HAProxy balance algorithm
  std::string extra = "";  // more rematcher flags
  bool by_default = true;  // run when --contenders is not given
  std::string binary = "";  // another rematcher build (variant binary=/abs/path)
};

std::vector<Contender> AllContenders() {
  return {
      {"direct", Kind::kDirect, ""},
      {"rematcher-rr", Kind::kRematcher, "rr"},
      {"rematcher-least_outstanding", Kind::kRematcher, "least_outstanding"},
      {"rematcher-p2c", Kind::kRematcher, "p2c"},
      // The example custom plugin (plugins/example/peak_ewma.cc), loaded by
      // path as a user's own would be; its path is set in Bench().
      {"rematcher-peak_ewma", Kind::kRematcher, "plugins/example/libpeak_ewma.so", "", false},
      // The splice alone: one client on one pooled connection for life.
      {"rematcher-splice", Kind::kRematcher, "rr", "--rematch=false"},
      {"haproxy-http-leastconn", Kind::kHaproxyHttp, "leastconn"},
      {"haproxy-http-random2", Kind::kHaproxyHttp, "random(2)"},
      {"haproxy-tcp", Kind::kHaproxyTcp, "leastconn"},
      {"nft-dnat", Kind::kNft, ""},
  };
}

struct BackendCfg {
  int64_t service_us = 0;
  int64_t stall_every_ms = 0;
  int64_t stall_ms = 0;
};

struct Point {
  std::string name;
  std::string tool = "loadgen";  // loadgen | wrk
  bool open = false;
  int conns = 64;
  double rate = 0;  // open loop: offered requests per second
  std::string size = "0";
  // A new connection for every request. The request says "Connection:
  // close" (the backend closes first) unless churn_fin_only: then the
  // client just closes after the response, and the backend may keep the
  // connection (an L4 LB's pooled one lives on).
  bool churn = false;
  bool churn_fin_only = false;
  // Keep-alive connections of this many requests each, closed by the client
  // after the last response and replaced (0: one connection for the run).
  int requests_per_conn = 0;
  // An X-Pad header of this many bytes in each request (loadgen
  // --pad_head): past rematcher's 1 KiB head reader, so every exchange is
  // left to its layer-4 rules, as an unframed protocol's (Redis,
  // memcached, a custom RPC) would be. The peers frame HTTP as usual.
  int pad_head = 0;
};

struct Scenario {
  std::string name;
  std::string desc;
  std::vector<BackendCfg> backends;
  bool fail_return = false;  // backend 2 dies at 1/3 of each run, returns at 2/3
  std::vector<Point> points;
};

struct Plan {
  std::string suite;
  int reps = 3;
  double duration_s = 1.5;
  double warmup_s = 0.3;
  double max_total_s = 420;
  std::vector<Scenario> scenarios;
  std::vector<Contender> contenders;
};

// Base service time of every backend; the slow one takes 5x.
constexpr int64_t kServiceUs = 200;
constexpr int64_t kSlowServiceUs = 1000;

Point Closed(int conns, std::string size = "0", std::string tool = "loadgen") {
  Point p;
  p.tool = tool;
  p.conns = conns;
  p.size = size;
  p.name = absl::StrCat(tool == "wrk" ? "wrk" : "closed", "-", conns, "c", size == "0" ? "" : "-" + size);
  return p;
}

// Connection churn: every request on a connection of its own, closed by
// the client after the response (a short-lived-connection workload).
Point Churn(int conns, bool fin_only = false) {
  Point p = Closed(conns);
  p.churn = true;
  p.churn_fin_only = fin_only;
  p.name = absl::StrCat("churn-", conns, "c", fin_only ? "-fin" : "");
  return p;
}

// Short keep-alive connections: each carries `per_conn` requests, then the
// client closes it (FIN after the last response) and opens another, as
// browsers and pooled HTTP clients do. For rematcher every close returns a
// pooled connection and every open takes one (the per-client set-up and
// tear-down), which the persistent-connection points never exercise.
Point Reconnecting(int conns, int per_conn) {
  Point p = Closed(conns);
  p.churn = true;
  p.requests_per_conn = per_conn;
  p.name = absl::StrCat("conn", per_conn, "r-", conns, "c");
  return p;
}

// Persistent connections whose exchanges rematcher cannot frame (pad_head).
Point Unframed(int conns, std::string size) {
  Point p = Closed(conns, size);
  p.pad_head = 1500;
  p.name = absl::StrCat("unframed-", conns, "c-", size);
  return p;
}

Point Open(double rate, int conns = 64) {
  Point p;
  p.open = true;
  p.rate = rate;
  p.conns = conns;
  p.name = absl::StrCat("open-", static_cast<int>(rate / 1000), "k");
  return p;
}

absl::StatusOr<Plan> MakePlan(const std::string& suite) {
  Plan plan;
  plan.suite = suite;
  const bool full = suite == "full";
  if (!full && suite != "quick") return absl::InvalidArgumentError("--suite must be quick or full");
  plan.reps = full ? 5 : 3;
  // quick: 162 runs and 81 LB starts (a rematcher start verifies the XDP
  // program, ~3 s) in under five minutes on a 2-CPU VM.
  plan.duration_s = full ? 5 : 0.9;
  plan.warmup_s = full ? 1 : 0.1;
  plan.max_total_s = full ? 7200 : 420;
  if (FLAGS_reps > 0) plan.reps = FLAGS_reps;
  if (FLAGS_duration_s > 0) plan.duration_s = FLAGS_duration_s;
  if (FLAGS_warmup_s >= 0) plan.warmup_s = FLAGS_warmup_s;
  if (FLAGS_max_total_s > 0) plan.max_total_s = FLAGS_max_total_s;

  BackendCfg base{kServiceUs, 0, 0};
  Scenario equal{"equal", absl::StrCat("3 equal backends, service time ", kServiceUs, " us"),
                 {base, base, base}};
  Scenario slow{"slow",
                absl::StrCat("backend b2 5x slower (", kSlowServiceUs, " us vs ", kServiceUs,
                             " us)"),
                {base, base, {kSlowServiceUs, 0, 0}}};
  // Different periods so the pauses drift against each other like GCs.
  Scenario stalls{"stalls",
                  absl::StrCat("service ", kServiceUs,
                               " us; each backend pauses 40 ms every 310/370/430 ms"),
                  {{kServiceUs, 310, 40}, {kServiceUs, 370, 40}, {kServiceUs, 430, 40}}};
  Scenario fail{"fail_return", "3 equal backends; b2 killed at 1/3 of each run, restarted at 2/3",
                {base, base, base}, true};
  if (!full) {
    equal.points = {Closed(64), Open(8000)};
    slow.points = {Closed(64), Open(8000)};
    stalls.points = {Closed(64), Open(8000)};
    plan.scenarios = {equal, slow, stalls};
  } else {
    equal.points = {Closed(10),         Closed(100), Closed(1000), Closed(10000),
                    Closed(64, "64k"),  Closed(64, "0", "wrk"),    Open(5000),
                    Open(10000),        Open(20000),           Churn(16),
                    Churn(16, /*fin_only=*/true), Reconnecting(64, 10),
                    Unframed(64, "0"),  Unframed(64, "64k")};
    slow.points = {Closed(64), Closed(64, "0", "wrk"), Open(5000), Open(10000),
                   Reconnecting(64, 10)};
    stalls.points = {Closed(64), Open(5000), Open(10000), Reconnecting(64, 10)};
    fail.points = {Open(5000)};
    plan.scenarios = {equal, slow, stalls, fail};
  }
  plan.contenders = AllContenders();
  if (FLAGS_contenders.empty()) {
    plan.contenders.erase(std::remove_if(plan.contenders.begin(), plan.contenders.end(),
                                         [](const Contender& c) { return !c.by_default; }),
                          plan.contenders.end());
  } else {
    // Names in the order given. A rematcher contender may carry extra
    // flags after '@', '+'-separated, as a variant in the same run:
    // rematcher-p2c@poll_us=0+redecide_us=0 is p2c with --poll_us=0
    // --redecide_us=0.
    std::vector<Contender> keep;
    for (absl::string_view want : absl::StrSplit(FLAGS_contenders, ',', absl::SkipEmpty())) {
      std::pair<absl::string_view, absl::string_view> nf = absl::StrSplit(want, absl::MaxSplits('@', 1));
      auto base = std::find_if(plan.contenders.begin(), plan.contenders.end(),
                               [&](const Contender& c) { return c.name == nf.first; });
      if (base == plan.contenders.end())
        return absl::InvalidArgumentError(absl::StrCat("--contenders: unknown contender '", nf.first, "'"));
      Contender c = *base;
      if (!nf.second.empty()) {
        if (c.kind != Kind::kRematcher)
          return absl::InvalidArgumentError(absl::StrCat("--contenders: only rematcher contenders take flags: '", want, "'"));
        c.name = std::string(want);
        for (absl::string_view f : absl::StrSplit(nf.second, '+', absl::SkipEmpty())) {
          // binary=/abs/path: another build of rematcher (A/B of two builds
          // in one run), not a flag.
          if (absl::ConsumePrefix(&f, "binary=")) {
            if (f.empty() || f[0] != '/' || access(std::string(f).c_str(), X_OK) != 0)
              return absl::InvalidArgumentError(
                  absl::StrCat("--contenders: binary= needs an executable absolute path: '", want, "'"));
            c.binary = std::string(f);
            continue;
          }
          absl::StrAppend(&c.extra, " --", f);
        }
      }
      keep.push_back(c);
    }
    plan.contenders = keep;
  }
  if (!FLAGS_points.empty()) {
    std::set<std::string> want = absl::StrSplit(FLAGS_points, ',', absl::SkipEmpty());
    std::vector<Scenario> keep;
    for (Scenario s : plan.scenarios) {
      std::vector<Point> pts;
      for (const Point& p : s.points)
        if (want.count(p.name)) pts.push_back(p);
      if (pts.empty()) continue;
      s.points = pts;
      keep.push_back(s);
    }
    if (keep.empty()) return absl::InvalidArgumentError("--points matches none");
    plan.scenarios = keep;
  }
  if (!FLAGS_scenarios.empty()) {
    std::set<std::string> want = absl::StrSplit(FLAGS_scenarios, ',', absl::SkipEmpty());
    std::vector<Scenario> keep;
    for (const Scenario& s : plan.scenarios)
      if (want.count(s.name)) keep.push_back(s);
    if (keep.empty()) return absl::InvalidArgumentError("--scenarios matches none");
    plan.scenarios = keep;
  }
  return plan;
}

// ---------------------------------------------------------------- results

struct Row {
  std::string scenario, point, contender;
  int rep = 0, order = 0;
  std::string tool, mode;
  int conns = 0;
  double rate = 0;
  std::string size;
  LoadResult r;
  double wall_s = 0, lb_proc_s = 0, softirq_s = 0, busy_s = 0;
  std::map<std::string, int64_t> rm;  // rematcher `stats` deltas over the run
  std::map<std::string, int64_t> tcp;  // nstat deltas: client_* and backends_* (summed)
  std::string error;                  // empty when the run completed
};

double PerReq(double seconds, int64_t ok) { return ok > 0 ? seconds * 1e6 / ok : 0; }

const std::vector<std::string> kRmCounters = {"rematches",      "decision_applied", "decision_late",
                                              "drop_no_pool",   "drop_table_full",  "tx_rst",
                                              "pool_dead",      "pipelined",        "closed_retire",  "closed_clean",
                                              "pool_connect_failures", "pool_acks_sent",
                                              "pool_acks_carried", "core_ring_wakeups",
                                              "core_ring_polls", "backend_stalls", "policy_redecided",
                                              "rematch_skipped_no_idle", "policy_pick_full",
                                              "redecide_withheld", "arrival_rerouted", "pool_parked",
                                              "no_pool_wait"};

// nstat counters that show loss or splice damage; deltas per run, on the
// client namespace and summed over the backend namespaces.
const std::vector<std::string> kTcpCounters = {"TcpRetransSegs", "TcpExtTCPTimeouts",
                                               "TcpExtPAWSEstab", "TcpInCsumErrors",
                                               "TcpOutRsts"};

std::vector<std::string> TcpColumns() {
  std::vector<std::string> c;
  for (const char* side : {"client_", "backends_"})
    for (const std::string& k : kTcpCounters) c.push_back(absl::StrCat(side, k));
  return c;
}

std::string CsvHeader() {
  std::string h =
      "suite,scenario,point,contender,rep,order,tool,mode,conns,rate,size,rps,p50_us,p99_us,"
      "p999_us,ok,errors,verify_failures,duration_s,wall_s,lb_proc_cpu_s,softirq_s,host_busy_s,"
      "lb_proc_us_per_req,softirq_us_per_req,host_busy_us_per_req,backend_requests,"
      "backend_switches";
  for (const std::string& c : kRmCounters) absl::StrAppend(&h, ",rm_", c);
  for (const std::string& c : TcpColumns()) absl::StrAppend(&h, ",", c);
  return h + ",error";
}

std::string CsvRow(const std::string& suite, const Row& w) {
  std::vector<std::string> be;
  for (const auto& [k, v] : w.r.backends) be.push_back(absl::StrCat(k, ":", v));
  std::string s = absl::StrFormat(
      "%s,%s,%s,%s,%d,%d,%s,%s,%d,%.0f,%s,%.1f,%d,%d,%d,%d,%d,%d,%.3f,%.3f,%.3f,%.3f,%.3f,%.2f,"
      "%.2f,%.2f,%s,%d",
      suite, w.scenario, w.point, w.contender, w.rep, w.order, w.tool, w.mode, w.conns, w.rate,
      w.size, w.r.rps, w.r.p50_us, w.r.p99_us, w.r.p999_us, w.r.ok, w.r.errors,
      w.r.verify_failures, w.r.duration_s, w.wall_s, w.lb_proc_s, w.softirq_s, w.busy_s,
      PerReq(w.lb_proc_s, w.r.ok), PerReq(w.softirq_s, w.r.ok), PerReq(w.busy_s, w.r.ok),
      absl::StrJoin(be, " "), w.r.backend_switches);
  for (const std::string& c : kRmCounters) {
    auto it = w.rm.find(c);
    absl::StrAppend(&s, ",", it == w.rm.end() ? "" : absl::StrCat(it->second));
  }
  for (const std::string& c : TcpColumns()) {
    auto it = w.tcp.find(c);
    absl::StrAppend(&s, ",", it == w.tcp.end() ? "" : absl::StrCat(it->second));
  }
  return absl::StrCat(s, ",", CsvField(w.error));
}

// ---------------------------------------------------------------- the bench

std::atomic<bool> g_stop{false};

std::string ReadFileOr(const std::string& path, size_t tail = 0) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  if (tail && s.size() > tail) s = "..." + s.substr(s.size() - tail);
  return s;
}

class Bench {
 public:
  Bench(Plan plan, std::string out_dir) : plan_(std::move(plan)), out_dir_(std::move(out_dir)) {
    runfiles_ = tb::RunfilesRoot();
    rematcher_ = runfiles_ + "/lb/rematcher";
    loadgen_ = runfiles_ + "/testing/loadgen/loadgen";
    backend_ = runfiles_ + "/testing/backend/backend";
    policy_dir_ = runfiles_ + "/policies";
    tmp_ = out_dir_ + "/logs";
    control_socket_ = absl::StrCat("/run/rematcher/", FLAGS_prefix, "-bench.sock");
  }

  absl::Status Run();
  const std::vector<Row>& rows() const { return rows_; }

 private:
  absl::Status Setup();
  absl::Status StartBackends(const Scenario& s);
  absl::Status StartBackend(const Scenario& s, int i);
  void StopBackends();
  absl::Status CheckVipFree();
  absl::Status StartContender(const Contender& c, const Scenario& s);
  void StopContender(const Contender& c);
  std::string Backends() const;
  absl::Status WriteHaproxyConfig(const Contender& c, const std::string& path);
  std::vector<std::string> LoadArgv(const Point& p, const std::string& target, int conns,
                                    double rate, double duration_s, int threads, int seed,
                                    const std::string& csv);
  absl::StatusOr<LoadResult> RunLoad(const Contender& c, const Point& p, double duration_s,
                                     int seed, const std::string& tag);
  Row Measure(const Scenario& s, const Point& p, const Contender& c, int rep, int order);
  absl::StatusOr<std::map<std::string, int64_t>> RmStats();
  std::map<std::string, int64_t> TcpSnapshot();

  Plan plan_;
  std::string out_dir_, runfiles_, rematcher_, loadgen_, backend_, policy_dir_, tmp_;
  std::string control_socket_, wrk_lua_;
  std::unique_ptr<tb::Testbed> bed_;
  std::vector<tb::Process> backends_;
  tb::Process lb_;
  std::vector<Row> rows_;
  absl::Time start_ = absl::Now();
};

absl::Status Bench::Setup() {
  for (const std::string& f : {rematcher_, loadgen_, backend_}) {
    if (access(f.c_str(), X_OK) != 0)
      return absl::NotFoundError(absl::StrCat(f, " missing: run through `bazel run`"));
  }
  for (const char* tool : {"haproxy", "nft", "wrk", "gnuplot", "ss"}) {
    if (!tb::ResolveExecutable(tool).ok())
      LOG(WARNING) << tool << " not found (tools/install_deps.sh installs it); "
                   << "its contenders/plots will fail";
  }
  // 10,000 client connections through a proxy take 20,000 descriptors in
  // HAProxy tcp mode, more than this box's default hard limit: raise it
  // (root may, up to fs.nr_open) for us and every process we start.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536) {
    rlimit want{65536, std::max<rlim_t>(rl.rlim_max, 65536)};
    if (setrlimit(RLIMIT_NOFILE, &want) != 0)
      LOG(WARNING) << "cannot raise RLIMIT_NOFILE to 65536 (" << strerror(errno)
                   << "); the 10,000-connection points may fail";
  }
  mkdir("/run/rematcher", 0700);
  wrk_lua_ = tmp_ + "/report.lua";
  std::ofstream(wrk_lua_)
      << "done = function(summary, latency, requests)\n"
         "  local e = summary.errors\n"
         "  local errs = e.connect + e.read + e.write + e.status + e.timeout\n"
         "  local ok = summary.requests - e.status\n"
         "  local d = summary.duration / 1e6\n"
         "  io.write(string.format('RMBENCH rps=%.1f ok=%d errors=%d p50_us=%d p99_us=%d "
         "p999_us=%d duration_s=%.3f\\n', ok / d, ok, errs, latency:percentile(50), "
         "latency:percentile(99), latency:percentile(99.9), d))\n"
         "end\n";
  tb::TestbedOptions o;
  o.prefix = FLAGS_prefix;
  o.num_clients = 1;
  o.num_backends = kNumBackends;
  o.command_timeout = absl::Seconds(15);
  auto bed = tb::Testbed::Create(o);
  if (!bed.ok()) return bed.status();
  bed_ = std::move(*bed);
  // The nft contender forwards one-armed (in and out of eth0): no ICMP
  // redirects to the clients.
  auto s = bed_->Run(bed_->lb_ns(), {"sysctl", "-q", "-w", "net.ipv4.conf.all.send_redirects=0",
                                     "net.ipv4.conf.default.send_redirects=0",
                                     "net.ipv4.conf.eth0.send_redirects=0"});
  if (!s.ok()) return s.status();
  // 10,000 client connections per run: deep accept queues, TIME_WAIT reuse
  // and wide ephemeral port ranges: each run's 10,000 closed connections sit
  // in TIME_WAIT for 60 s, and the next contenders' runs to the same address
  // failed to connect (9,490 of 10,000) without them. The clients' and the
  // LB's ranges do not overlap: the nft contender's conntrack entries (its
  // SNAT keeps client ports) outlive its table, and a pooled connection of
  // rematcher opened from a port one of them still holds was NATed to
  // another port by the LB's kernel while XDP, past conntrack, kept using
  // the first: the backend reset it.
  for (const std::string& ns : bed_->all_namespaces()) {
    bed_->Run(ns, {"sysctl", "-q", "-w", "net.core.somaxconn=65535",
                   "net.ipv4.tcp_max_syn_backlog=65535", "net.ipv4.tcp_tw_reuse=1"})
        .IgnoreError();
  }
  bed_->Run(bed_->client_ns(0), {"sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 65535"})
      .IgnoreError();
  bed_->Run(bed_->lb_ns(), {"sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 39999"})
      .IgnoreError();
  return absl::OkStatus();
}

std::string Bench::Backends() const {
  std::vector<std::string> b;
  for (int i = 0; i < kNumBackends; i++) b.push_back(absl::StrCat(bed_->backend_ip(i), ":", kPort));
  return absl::StrJoin(b, ",");
}

absl::Status Bench::StartBackend(const Scenario& s, int i) {
  const BackendCfg& b = s.backends[i];
  std::string log = absl::StrCat(tmp_, "/", s.name, "-b", i, ".log");
  auto p = bed_->Spawn(bed_->backend_ns(i),
                       {backend_, absl::StrCat("--listen=", bed_->backend_ip(i), ":", kPort),
                        absl::StrCat("--name=b", i), "--threads=1",
                        absl::StrCat("--service_us=", b.service_us),
                        absl::StrCat("--stall_every_ms=", b.stall_every_ms),
                        absl::StrCat("--stall_ms=", b.stall_ms)},
                       {log, log});
  if (!p.ok()) return p.status();
  backends_[i] = std::move(*p);
  return bed_->WaitForTcpListener(bed_->backend_ns(i), bed_->backend_ip(i), kPort,
                                  absl::Seconds(10));
}

absl::Status Bench::StartBackends(const Scenario& s) {
  StopBackends();
  backends_.resize(kNumBackends);
  for (int i = 0; i < kNumBackends; i++) {
    if (absl::Status st = StartBackend(s, i); !st.ok()) return st;
  }
  return absl::OkStatus();
}

void Bench::StopBackends() {
  for (tb::Process& p : backends_)
    if (p.valid()) p.Stop(absl::Seconds(2)).IgnoreError();
  backends_.clear();
}

absl::Status Bench::CheckVipFree() {
  auto ss = bed_->Run(bed_->lb_ns(), {"ss", "-Hltn", absl::StrCat("src ", kVip, ":", kPort)});
  if (ss.ok() && !absl::StripAsciiWhitespace(*ss).empty())
    return absl::FailedPreconditionError(absl::StrCat("VIP still has a listener: ", *ss));
  auto link = bed_->Run(bed_->lb_ns(), {"ip", "-d", "link", "show", "dev", "eth0"});
  if (link.ok() && absl::StrContains(*link, "prog/xdp")) {
    LOG(WARNING) << "XDP still attached to the LB's eth0 after a contender; removing it";
    bed_->Run(bed_->lb_ns(), {"ip", "link", "set", "dev", "eth0", "xdp", "off"}).IgnoreError();
    bed_->Run(bed_->lb_ns(), {"ip", "link", "set", "dev", "eth0", "xdpgeneric", "off"})
        .IgnoreError();
  }
  auto nft = bed_->Run(bed_->lb_ns(), {"nft", "list", "tables"});
  if (nft.ok() && absl::StrContains(*nft, kNftTable))
    return absl::FailedPreconditionError("nft table still present");
  return absl::OkStatus();
}

absl::Status Bench::WriteHaproxyConfig(const Contender& c, const std::string& path) {
  const bool http = c.kind == Kind::kHaproxyHttp;
  std::ofstream f(path);
  // maxconn bounded by the FD limit HAProxy inherits (2 fds per connection);
  // HAProxy refuses to start when it cannot raise its limit that far.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  const long maxconn = std::max<long>(256, std::min<long>(30000, (long(rl.rlim_cur) - 200) / 2));
  f << "global\n  maxconn " << maxconn << "\n  nbthread 2\n"
    << "defaults\n  mode " << (http ? "http" : "tcp") << "\n"
    << "  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n";
  if (http) f << "  option http-keep-alive\n  http-reuse always\n";
  f << "frontend fe\n  bind " << kVip << ":" << kPort << " backlog 65535\n  default_backend be\n"
    << "backend be\n  balance " << c.arg << "\n";
  for (int i = 0; i < kNumBackends; i++)
    f << "  server b" << i << " " << bed_->backend_ip(i) << ":" << kPort << "\n";
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("writing ", path));
  return absl::OkStatus();
}

absl::Status Bench::StartContender(const Contender& c, const Scenario& s) {
  if (absl::Status st = CheckVipFree(); !st.ok()) return st;
  // A variant's flags may hold a path: no '/' in the file name.
  const std::string log =
      absl::StrCat(tmp_, "/", absl::StrReplaceAll(c.name, {{"/", "_"}}), ".log");
  switch (c.kind) {
    case Kind::kDirect:
      return absl::OkStatus();
    case Kind::kRematcher: {
      unlink(control_socket_.c_str());
      // Every request in flight holds a pooled connection (rematcher cannot
      // queue a request the way an L7 proxy does), so the pools are opened
      // for the scenario's largest point up front, like HAProxy's maxconn:
      // a cold pool hit by thousands of new clients at once refuses some.
      int max_conns = 0;
      for (const Point& p : s.points) max_conns = std::max(max_conns, p.conns);
      const int per_backend =
          std::min<int>(RM_MAX_POOL_PER_BACKEND,
                        std::max<int>(FLAGS_conns_per_backend, max_conns * 11 / 10 / kNumBackends));
      const int max_per_backend =
          std::min<int>(RM_MAX_POOL_PER_BACKEND, std::max(256, per_backend * 5 / 4));
      std::vector<std::string> argv = {
          c.binary.empty() ? rematcher_ : c.binary, "--iface=eth0", absl::StrCat("--vip=", kVip, ":", kPort),
          "--backends=" + Backends(),
          "--policy=" + (absl::StrContains(c.arg, '/') ? runfiles_ + "/" + c.arg : c.arg),
          "--policy_dir=" + policy_dir_,
          "--stats_interval_s=0", "--control_socket=" + control_socket_,
          absl::StrCat("--conns_per_backend=", per_backend),
          absl::StrCat("--max_conns_per_backend=", max_per_backend),
          // Dies on its own even if we are SIGKILLed mid-run.
          absl::StrCat("--duration_s=", static_cast<int>(plan_.max_total_s))};
      for (absl::string_view f : absl::StrSplit(absl::StrCat(c.extra, " ", FLAGS_rematcher_flags),
                                                ' ', absl::SkipEmpty()))
        argv.emplace_back(f);
      auto p = bed_->Spawn(bed_->lb_ns(), argv, {log, log});
      if (!p.ok()) return p.status();
      lb_ = std::move(*p);
      const absl::Duration wait = absl::Seconds(20 + per_backend * kNumBackends / 500);
      absl::Time deadline = absl::Now() + wait;
      while (absl::Now() < deadline) {
        auto st = SendControlCommand(control_socket_, "stats", absl::Seconds(2));
        if (st.ok() && ParseKeyValueLines(*st)["pool_established"] >=
                           static_cast<int64_t>(per_backend) * kNumBackends)
          return absl::OkStatus();
        if (!lb_.Running())
          return absl::InternalError(absl::StrCat("rematcher exited: ", ReadFileOr(log, 2000)));
        absl::SleepFor(absl::Milliseconds(50));
      }
      return absl::DeadlineExceededError(
          absl::StrCat("rematcher pools not established in ", absl::FormatDuration(wait), ": ",
                       ReadFileOr(log, 2000)));
    }
    case Kind::kHaproxyHttp:
    case Kind::kHaproxyTcp: {
      std::string cfg = absl::StrCat(tmp_, "/", c.name, ".cfg");
      if (absl::Status st = WriteHaproxyConfig(c, cfg); !st.ok()) return st;
      auto p = bed_->Spawn(bed_->lb_ns(), {"haproxy", "-db", "-f", cfg}, {log, log});
      if (!p.ok()) return p.status();
      lb_ = std::move(*p);
      absl::Status st =
          bed_->WaitForTcpListener(bed_->client_ns(0), kVip, kPort, absl::Seconds(10));
      if (!st.ok() || !lb_.Running())
        return absl::InternalError(absl::StrCat("haproxy did not come up: ", st.ToString(), " ",
                                                ReadFileOr(log, 2000)));
      return absl::OkStatus();
    }
    case Kind::kNft: {
      std::string conf = tmp_ + "/nft.conf";
      std::ofstream f(conf);
      f << "table ip " << kNftTable << " {\n"
        << "  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n"
        << "    ip daddr " << kVip << " tcp dport " << kPort << " dnat to numgen inc mod "
        << kNumBackends << " map { ";
      for (int i = 0; i < kNumBackends; i++)
        f << (i ? ", " : "") << i << " : " << bed_->backend_ip(i);
      f << " }\n  }\n"
        << "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n"
        << "    ip daddr 198.18.2.0/24 tcp dport " << kPort << " snat to " << bed_->lb_ip()
        << "\n  }\n}\n";
      f.close();
      auto s1 = bed_->Run(bed_->lb_ns(), {"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"});
      if (!s1.ok()) return s1.status();
      auto s2 = bed_->Run(bed_->lb_ns(), {"nft", "-f", conf});
      if (!s2.ok()) return s2.status();
      return bed_->WaitForTcpListener(bed_->client_ns(0), kVip, kPort, absl::Seconds(10));
    }
  }
  return absl::InternalError("unknown contender");
}

void Bench::StopContender(const Contender& c) {
  if (lb_.valid()) {
    auto rc = lb_.Stop(absl::Seconds(5));
    if (rc.ok() && *rc != 0 && *rc != -SIGTERM)
      LOG(WARNING) << c.name << " exited with " << *rc;
  }
  lb_ = tb::Process();
  if (c.kind == Kind::kRematcher) unlink(control_socket_.c_str());  // gone if it was killed
  if (c.kind == Kind::kNft) {
    bed_->Run(bed_->lb_ns(), {"nft", "delete", "table", "ip", kNftTable}).IgnoreError();
    bed_->Run(bed_->lb_ns(), {"sysctl", "-q", "-w", "net.ipv4.ip_forward=0"}).IgnoreError();
  }
}

absl::StatusOr<std::map<std::string, int64_t>> Bench::RmStats() {
  auto st = SendControlCommand(control_socket_, "stats", absl::Seconds(2));
  if (!st.ok()) return st.status();
  return ParseKeyValueLines(*st);
}

std::map<std::string, int64_t> Bench::TcpSnapshot() {
  std::map<std::string, int64_t> out;
  auto add = [&](const std::string& ns, const char* side) {
    auto n = bed_->Nstat(ns);
    if (!n.ok()) return;
    for (const std::string& k : kTcpCounters) {
      auto it = n->find(k);
      out[absl::StrCat(side, k)] += it == n->end() ? 0 : static_cast<int64_t>(it->second);
    }
  };
  add(bed_->client_ns(0), "client_");
  for (int i = 0; i < kNumBackends; i++) add(bed_->backend_ns(i), "backends_");
  return out;
}

std::vector<std::string> Bench::LoadArgv(const Point& p, const std::string& target, int conns,
                                         double rate, double duration_s, int threads, int seed,
                                         const std::string& csv) {
  if (p.tool == "wrk") {
    return {"wrk",
            absl::StrCat("-t", threads),
            absl::StrCat("-c", std::max(conns, threads)),
            absl::StrCat("-d", std::max(1, static_cast<int>(duration_s + 0.5)), "s"),
            "--timeout",
            "5s",
            "-s",
            wrk_lua_,
            absl::StrCat("http://", target, "/r?size=", p.size)};
  }
  std::vector<std::string> a = {loadgen_,
                                "--target=" + target,
                                absl::StrCat("--connections=", conns),
                                absl::StrCat("--threads=", threads),
                                absl::StrFormat("--duration_s=%.3f", duration_s),
                                absl::StrFormat("--max_time_s=%.0f", duration_s + 20),
                                "--sizes=" + p.size,
                                absl::StrCat("--seed=", seed),
                                "--timeout_ms=5000",
                                "--json",
                                "--allow_errors"};
  if (p.open) {
    a.push_back("--mode=open");
    a.push_back(absl::StrFormat("--rate=%.1f", rate));
  }
  if (p.churn && p.requests_per_conn > 0)
    a.push_back(absl::StrCat("--requests_per_conn=", p.requests_per_conn));
  else if (p.churn)
    a.push_back("--new_conn_per_request");
  if (p.churn_fin_only) a.push_back("--close_header=false");
  if (p.pad_head > 0) a.push_back(absl::StrCat("--pad_head=", p.pad_head));
  if (!csv.empty()) a.push_back("--latency_csv=" + csv);
  return a;
}

// Loads from the client namespace. Direct: one process per backend (the
// connections and the rate split evenly), latencies merged per request from
// loadgen's CSVs (wrk: percentiles are the worst of the three, an upper bound).
absl::StatusOr<LoadResult> Bench::RunLoad(const Contender& c, const Point& p, double duration_s,
                                          int seed, const std::string& tag) {
  const absl::Duration timeout = absl::Seconds(duration_s + 40);
  if (c.kind != Kind::kDirect) {
    auto argv = LoadArgv(p, absl::StrCat(kVip, ":", kPort), p.conns, p.rate, duration_s,
                         std::min(FLAGS_client_threads, p.conns), seed,
                         FLAGS_keep_latency_csv && p.tool != "wrk"
                             ? absl::StrCat(tmp_, "/", tag, ".csv")
                             : "");
    auto r = bed_->RunCommand(bed_->client_ns(0), argv, timeout);
    if (!r.ok()) return r.status();
    if (r->exit_code == 3 || (p.tool == "wrk" && r->exit_code != 0))
      return absl::InternalError(absl::StrCat(argv[0], " exited ", r->exit_code, ": ",
                                              r->err.substr(0, 2000)));
    auto res = p.tool == "wrk" ? ParseWrkLine(r->out) : ParseLoadgenJson(r->out);
    if (!res.ok()) return absl::InternalError(absl::StrCat(res.status().message(), " ", r->err));
    return res;
  }
  std::vector<tb::Process> procs;
  std::vector<std::string> outs, csvs;
  for (int i = 0; i < kNumBackends; i++) {
    int conns = p.conns / kNumBackends + (i < p.conns % kNumBackends ? 1 : 0);
    if (conns == 0) continue;
    std::string out = absl::StrCat(tmp_, "/", tag, "-d", i, ".out");
    std::string csv = p.tool == "wrk" ? "" : absl::StrCat(tmp_, "/", tag, "-d", i, ".csv");
    auto argv = LoadArgv(p, absl::StrCat(bed_->backend_ip(i), ":", kPort), conns,
                         p.rate / kNumBackends, duration_s, 1, seed * 10 + i, csv);
    auto pr = bed_->Spawn(bed_->client_ns(0), argv, {out, out + ".err"});
    if (!pr.ok()) return pr.status();
    procs.push_back(std::move(*pr));
    outs.push_back(out);
    csvs.push_back(csv);
  }
  LoadResult sum;
  std::vector<int64_t> lat;
  for (size_t i = 0; i < procs.size(); i++) {
    auto rc = procs[i].Wait(timeout);
    if (!rc.ok()) return rc.status();
    std::string text = ReadFileOr(outs[i]);
    auto r = p.tool == "wrk" ? ParseWrkLine(text) : ParseLoadgenJson(text);
    if (!r.ok())
      return absl::InternalError(absl::StrCat(r.status().message(), " ",
                                              ReadFileOr(outs[i] + ".err", 2000)));
    sum.rps += r->rps;
    sum.ok += r->ok;
    sum.errors += r->errors;
    sum.verify_failures += r->verify_failures;
    sum.duration_s = std::max(sum.duration_s, r->duration_s);
    for (const auto& [k, v] : r->backends) sum.backends[k] += v;
    sum.p50_us = std::max(sum.p50_us, r->p50_us);
    sum.p99_us = std::max(sum.p99_us, r->p99_us);
    sum.p999_us = std::max(sum.p999_us, r->p999_us);
    if (!csvs[i].empty()) {
      std::ifstream f(csvs[i]);
      std::string line;
      std::getline(f, line);  // header
      while (std::getline(f, line)) {
        std::vector<absl::string_view> col = absl::StrSplit(line, ',');
        int64_t us;
        if (col.size() >= 7 && col[6] == "ok" && absl::SimpleAtoi(col[2], &us)) lat.push_back(us);
      }
      if (!FLAGS_keep_latency_csv) unlink(csvs[i].c_str());
    }
  }
  if (!lat.empty()) {
    sum.p50_us = Percentile(&lat, 50);
    sum.p99_us = Percentile(&lat, 99);
    sum.p999_us = Percentile(&lat, 99.9);
  }
  return sum;
}

Row Bench::Measure(const Scenario& s, const Point& p, const Contender& c, int rep, int order) {
  Row w;
  w.scenario = s.name;
  w.point = p.name;
  w.contender = c.name;
  w.rep = rep;
  w.order = order;
  w.tool = p.tool;
  w.mode = p.open ? "open" : "closed";
  w.conns = p.conns;
  w.rate = p.rate;
  w.size = p.size;
  std::map<std::string, int64_t> rm0;
  if (c.kind == Kind::kRematcher) {
    auto st = RmStats();
    if (st.ok()) rm0 = *st;
  }
  auto tcp0 = TcpSnapshot();
  auto cpu0 = ReadHostCpu();
  absl::StatusOr<double> proc0 = lb_.valid() ? ReadPidCpu(lb_.pid()) : absl::StatusOr<double>(0.0);
  absl::Time t0 = absl::Now();

  // A file name: a variant's flags may hold a path (@binary=/x/rematcher).
  std::string tag = absl::StrCat(s.name, "-", p.name, "-",
                                 absl::StrReplaceAll(c.name, {{"/", "_"}}), "-", rep);
  absl::StatusOr<LoadResult> r;
  if (!s.fail_return) {
    r = RunLoad(c, p, plan_.duration_s, rep + 1, tag);
  } else {
    // b2 dies at 1/3 of the run and comes back at 2/3. The load runs on a
    // helper thread and the backend is restarted from this one: children
    // get PR_SET_PDEATHSIG, so a backend spawned by a short-lived thread
    // would die with it.
    auto load = std::async(std::launch::async, [&] {
      return RunLoad(c, p, plan_.duration_s, rep + 1, tag);
    });
    absl::SleepFor(absl::Seconds(plan_.duration_s / 3));
    backends_[2].Signal(SIGKILL);
    backends_[2].Wait(absl::Seconds(2)).IgnoreError();
    absl::SleepFor(absl::Seconds(plan_.duration_s / 3));
    if (absl::Status st = StartBackend(s, 2); !st.ok())
      LOG(ERROR) << "restarting backend b2: " << st;
    r = load.get();
  }

  w.wall_s = absl::ToDoubleSeconds(absl::Now() - t0);
  auto cpu1 = ReadHostCpu();
  absl::StatusOr<double> proc1 = lb_.valid() ? ReadPidCpu(lb_.pid()) : absl::StatusOr<double>(0.0);
  if (cpu0.ok() && cpu1.ok()) {
    w.softirq_s = cpu1->softirq - cpu0->softirq;
    w.busy_s = cpu1->busy() - cpu0->busy();
  }
  if (proc0.ok() && proc1.ok()) w.lb_proc_s = *proc1 - *proc0;
  auto tcp1 = TcpSnapshot();
  for (const auto& [k, v] : tcp1) w.tcp[k] = v - tcp0[k];
  if (c.kind == Kind::kRematcher) {
    auto st = RmStats();
    if (st.ok()) {
      for (const std::string& k : kRmCounters) w.rm[k] = (*st)[k] - rm0[k];
    } else {
      w.error = absl::StrCat("control socket: ", st.status().message(), "; ");
    }
    if (!lb_.Running()) absl::StrAppend(&w.error, "rematcher died during the run; ");
  }
  if (r.ok()) {
    w.r = *r;
  } else {
    absl::StrAppend(&w.error, r.status().ToString());
  }
  return w;
}

absl::Status Bench::Run() {
  if (absl::Status st = Setup(); !st.ok()) return st;
  std::ofstream csv(out_dir_ + "/results.csv");
  csv << CsvHeader() << "\n";
  const int n = static_cast<int>(plan_.contenders.size());
  for (const Scenario& s : plan_.scenarios) {
    if (g_stop) break;
    LOG(INFO) << "scenario " << s.name << ": " << s.desc;
    if (absl::Status st = StartBackends(s); !st.ok()) {
      LOG(ERROR) << "scenario " << s.name << ": backends did not start: " << st;
      continue;
    }
    for (int rep = 0; rep < plan_.reps && !g_stop; rep++) {
      // Round-robin: each repetition starts at a different contender, and odd
      // repetitions run backwards, so no contender always runs first or last.
      std::vector<int> order;
      int offset = rep * n / std::max(1, plan_.reps);
      for (int k = 0; k < n; k++) order.push_back((offset + k) % n);
      if (rep % 2) std::reverse(order.begin(), order.end());
      for (int k = 0; k < n && !g_stop; k++) {
        const Contender& c = plan_.contenders[order[k]];
        absl::Status st = StartContender(c, s);
        if (st.ok() && plan_.warmup_s > 0) {
          Point warm = s.points.front();
          warm.tool = "loadgen";
          warm.open = false;
          warm.conns = std::min(warm.conns, 256);
          auto wr = RunLoad(c, warm, plan_.warmup_s, 99, "warmup");
          if (!wr.ok()) LOG(WARNING) << c.name << " warm-up: " << wr.status();
        }
        for (const Point& p : s.points) {
          Row w;
          if (st.ok()) {
            w = Measure(s, p, c, rep, k);
          } else {
            w.scenario = s.name;
            w.point = p.name;
            w.contender = c.name;
            w.rep = rep;
            w.order = k;
            w.tool = p.tool;
            w.mode = p.open ? "open" : "closed";
            w.conns = p.conns;
            w.rate = p.rate;
            w.size = p.size;
            w.error = absl::StrCat("start: ", st.ToString());
          }
          LOG(INFO) << absl::StrFormat(
              "%-7s %-14s %-28s rep %d: %8.0f rps p50 %6d p99 %6d p99.9 %6d us, ok %d err %d "
              "vfail %d, lb %.2fs softirq %.2fs%s%s",
              s.name, p.name, c.name, rep, w.r.rps, w.r.p50_us, w.r.p99_us, w.r.p999_us, w.r.ok,
              w.r.errors, w.r.verify_failures, w.lb_proc_s, w.softirq_s,
              w.error.empty() ? "" : " ERROR: ", w.error.substr(0, 300));
          csv << CsvRow(plan_.suite, w) << "\n" << std::flush;
          rows_.push_back(std::move(w));
        }
        StopContender(c);
      }
    }
    StopBackends();
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- report

struct Agg {
  Spread rps, p50, p99, p999, proc, softirq;
  int64_t errors = 0, verify_failures = 0, failed_runs = 0;
  std::map<std::string, int64_t> rm;   // summed over reps
  std::map<std::string, int64_t> tcp;  // summed over reps
};

using AggKey = std::tuple<std::string, std::string, std::string>;  // scenario, point, contender

std::map<AggKey, Agg> Aggregate(const std::vector<Row>& rows) {
  std::map<AggKey, std::vector<const Row*>> by;
  for (const Row& w : rows) by[{w.scenario, w.point, w.contender}].push_back(&w);
  std::map<AggKey, Agg> out;
  for (const auto& [k, ws] : by) {
    Agg a;
    std::vector<double> rps, p50, p99, p999, proc, sirq;
    for (const Row* w : ws) {
      if (!w->error.empty() || w->r.ok == 0) {
        a.failed_runs++;
        a.errors += w->r.errors;
        continue;
      }
      rps.push_back(w->r.rps);
      p50.push_back(w->r.p50_us);
      p99.push_back(w->r.p99_us);
      p999.push_back(w->r.p999_us);
      proc.push_back(PerReq(w->lb_proc_s, w->r.ok));
      sirq.push_back(PerReq(w->softirq_s, w->r.ok));
      a.errors += w->r.errors;
      a.verify_failures += w->r.verify_failures;
      for (const auto& [rk, rv] : w->rm) a.rm[rk] += rv;
      for (const auto& [tk, tv] : w->tcp) a.tcp[tk] += tv;
    }
    a.rps = Summarize(rps);
    a.p50 = Summarize(p50);
    a.p99 = Summarize(p99);
    a.p999 = Summarize(p999);
    a.proc = Summarize(proc);
    a.softirq = Summarize(sirq);
    out[k] = a;
  }
  return out;
}

int64_t Get(const std::map<std::string, int64_t>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? 0 : it->second;
}

std::string Ms(double us) { return absl::StrFormat("%.2f", us / 1000.0); }

// LB CPU estimate per request: process + softirq in excess of direct's.
double LbCpuUs(const std::map<AggKey, Agg>& agg, const AggKey& k) {
  auto it = agg.find(k);
  if (it == agg.end() || it->second.rps.n == 0) return -1;
  double excess = 0;
  auto d = agg.find({std::get<0>(k), std::get<1>(k), "direct"});
  if (d != agg.end() && d->second.softirq.n)
    excess = std::max(0.0, it->second.softirq.median - d->second.softirq.median);
  return it->second.proc.median + excess;
}

std::string Report(const Plan& plan, const std::vector<Row>& rows, const std::string& machine,
                   const std::string& command, const std::string& datapath) {
  auto agg = Aggregate(rows);
  std::string md = absl::StrCat("# rematcher benchmark: suite `", plan.suite, "`\n\n",
                                "Command: `", command, "`\n\n", "Machine: ", machine, "\n\n");
  absl::StrAppendFormat(&md,
                        "Each point: %d repetitions of %.1f s, contenders interleaved "
                        "(rotated per repetition); medians with [min..max]. Latency in ms "
                        "(loadgen: closed loop from assignment to a connection, open loop from "
                        "the intended send time). CPU in us per request: `lb proc` is the LB "
                        "process's utime+stime, `softirq` is host-wide softirq per request, "
                        "`lb est` = lb proc + (softirq - direct's softirq), clamped at 0. "
                        "`retrans c/b`, `RTOs c/b`: nstat TcpRetransSegs and TCPTimeouts on the "
                        "client / the backends, summed over repetitions (0 in a lossless run).\n\n",
                        plan.reps, plan.duration_s);
  for (const Scenario& s : plan.scenarios) {
    absl::StrAppend(&md, "## ", s.name, ": ", s.desc, "\n\n");
    for (const Point& p : s.points) {
      absl::StrAppend(&md, "### ", s.name, " / ", p.name, " (", p.tool, ", ",
                      p.open ? absl::StrFormat("open loop %.0f req/s", p.rate) : "closed loop",
                      ", ", p.conns, " connections, ",
                      p.requests_per_conn > 0
                          ? absl::StrCat("a new connection every ", p.requests_per_conn,
                                         " requests, closed by the client, ")
                      : p.churn ? (p.churn_fin_only ? "a new connection per request, closed by "
                                                      "the client without Connection: close, "
                                                    : "a new connection per request with "
                                                      "Connection: close, ")
                                : "",
                      p.pad_head > 0 ? absl::StrCat(p.pad_head, " B of padding in each request head "
                                                    "(unframed for rematcher), ")
                                     : "",
                      p.size,
                      " B responses)\n\n");
      absl::StrAppend(&md,
                      "| contender | rps | p50 ms | p99 ms | p99.9 ms | lb proc us/req | "
                      "softirq us/req | lb est us/req | errors | failed runs | retrans c/b | RTOs c/b |\n"
                      "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
      for (const Contender& c : plan.contenders) {
        auto it = agg.find({s.name, p.name, c.name});
        if (it == agg.end()) continue;
        const Agg& a = it->second;
        if (a.rps.n == 0) {
          absl::StrAppend(&md, "| ", c.name, " | - | - | - | - | - | - | - | ", a.errors, " | ",
                          a.failed_runs, " | - | - |\n");
          continue;
        }
        absl::StrAppendFormat(
            &md, "| %s | %.0f [%.0f..%.0f] | %s | %s [%s..%s] | %s [%s..%s] | %.1f | %.1f | %.1f | %d%s | %d "
            "| %d/%d | %d/%d |\n",
            c.name, a.rps.median, a.rps.min, a.rps.max, Ms(a.p50.median), Ms(a.p99.median),
            Ms(a.p99.min), Ms(a.p99.max), Ms(a.p999.median), Ms(a.p999.min), Ms(a.p999.max),
            a.proc.median, a.softirq.median, LbCpuUs(agg, {s.name, p.name, c.name}), a.errors,
            a.verify_failures ? absl::StrCat(" (", a.verify_failures, " VERIFY)") : "",
            a.failed_runs, Get(a.tcp, "client_TcpRetransSegs"),
            Get(a.tcp, "backends_TcpRetransSegs"), Get(a.tcp, "client_TcpExtTCPTimeouts"),
            Get(a.tcp, "backends_TcpExtTCPTimeouts"));
      }
      // rematcher's own counters, summed over the repetitions.
      std::string rmtext;
      for (const Contender& c : plan.contenders) {
        if (c.kind != Kind::kRematcher) continue;
        auto it = agg.find({s.name, p.name, c.name});
        if (it == agg.end() || it->second.rm.empty()) continue;
        std::vector<std::string> kv;
        for (const std::string& k : kRmCounters)
          if (it->second.rm[k]) kv.push_back(absl::StrCat(k, "=", it->second.rm[k]));
        absl::StrAppend(&rmtext, "- ", c.name, ": ", absl::StrJoin(kv, ", "), "\n");
      }
      if (!rmtext.empty())
        absl::StrAppend(&md, "\nrematcher `stats` deltas (sum over repetitions):\n", rmtext);
      std::string png = absl::StrCat(s.name, "-", p.name, ".png");
      absl::StrAppend(&md, "\n![", s.name, " ", p.name, "](", png, ")\n\n");
    }
  }

  // Targets of issue 5, checked on whatever points this suite has.
  absl::StrAppend(&md, "## Targets (issue 5)\n\n");
  auto med = [&](const std::string& s, const std::string& p, const std::string& c,
                 double Agg::*unused, Spread Agg::*f) -> double {
    (void)unused;
    auto it = agg.find({s, p, c});
    if (it == agg.end() || (it->second.*f).n == 0) return -1;
    return (it->second.*f).median;
  };
  auto best_rm = [&](const std::string& s, const std::string& p, Spread Agg::*f, bool lower,
                     std::vector<std::string> names) {
    std::pair<std::string, double> best{"", -1};
    for (const std::string& n : names) {
      double v = med(s, p, n, nullptr, f);
      if (v < 0) continue;
      if (best.second < 0 || (lower ? v < best.second : v > best.second)) best = {n, v};
    }
    return best;
  };
  const std::vector<std::string> all_rm = {"rematcher-rr", "rematcher-least_outstanding",
                                           "rematcher-p2c"};
  const std::vector<std::string> smart_rm = {"rematcher-least_outstanding", "rematcher-p2c"};
  auto verdict = [](bool ok) { return ok ? "**met**" : "**missed**"; };
  for (const Scenario& s : plan.scenarios) {
    for (const Point& p : s.points) {
      if (s.name == "equal") {
        auto rm = best_rm(s.name, p.name, &Agg::rps, false, all_rm);
        double hap = std::max(med(s.name, p.name, "haproxy-http-leastconn", nullptr, &Agg::rps),
                              med(s.name, p.name, "haproxy-http-random2", nullptr, &Agg::rps));
        double nft = med(s.name, p.name, "nft-dnat", nullptr, &Agg::rps);
        double dir = med(s.name, p.name, "direct", nullptr, &Agg::rps);
        if (rm.second < 0 || p.open) continue;
        absl::StrAppendFormat(&md, "- equal / %s: best rematcher (%s) %.0f rps\n", p.name,
                              rm.first, rm.second);
        if (hap > 0)
          absl::StrAppendFormat(&md, "  - >= 1.5x HAProxy http (%.0f): %.2fx %s\n", hap,
                                rm.second / hap, verdict(rm.second >= 1.5 * hap));
        if (nft > 0)
          absl::StrAppendFormat(&md, "  - >= nftables DNAT (%.0f): %.2fx %s\n", nft,
                                rm.second / nft, verdict(rm.second >= nft));
        if (dir > 0)
          absl::StrAppendFormat(&md, "  - within 20%% of direct (%.0f): %.2fx %s\n", dir,
                                rm.second / dir, verdict(rm.second >= 0.8 * dir));
        // CPU per request vs HAProxy http.
        double rmcpu = LbCpuUs(agg, {s.name, p.name, rm.first});
        double hapcpu = LbCpuUs(agg, {s.name, p.name, "haproxy-http-leastconn"});
        if (rmcpu >= 0 && hapcpu > 0)
          absl::StrAppendFormat(&md,
                                "  - LB CPU/request <= 1/5 of HAProxy http leastconn: %.1f vs "
                                "%.1f us (%.2f) %s\n",
                                rmcpu, hapcpu, rmcpu / hapcpu, verdict(rmcpu <= hapcpu / 5));
      } else if (s.name == "slow" || s.name == "stalls") {
        for (auto [f, label] : {std::pair<Spread Agg::*, const char*>{&Agg::p99, "p99"},
                                {&Agg::p999, "p99.9"}}) {
          auto rm = best_rm(s.name, p.name, f, true, smart_rm);
          double hap = med(s.name, p.name, "haproxy-http-leastconn", nullptr, f);
          double nft = med(s.name, p.name, "nft-dnat", nullptr, f);
          if (rm.second < 0) continue;
          absl::StrAppendFormat(&md, "- %s / %s %s: best of p2c/least_outstanding (%s) %s ms",
                                s.name, p.name, label, rm.first, Ms(rm.second));
          if (hap > 0)
            absl::StrAppendFormat(&md, "; <= HAProxy http leastconn %s ms %s", Ms(hap),
                                  verdict(rm.second <= hap));
          if (nft > 0)
            absl::StrAppendFormat(&md, "; nft DNAT %s ms (%.1fx lower; 'several times' %s)",
                                  Ms(nft), nft / std::max(1.0, rm.second),
                                  verdict(nft >= 3 * rm.second));
          md += "\n";
        }
      }
    }
  }
  // Cost flat over connection counts (full suite).
  std::vector<std::string> cp;
  for (const Point& p : plan.scenarios.front().points)
    if (!p.open && !p.churn && p.tool == "loadgen" && p.size == "0" && p.pad_head == 0)
      cp.push_back(p.name);
  if (cp.size() >= 3) {
    for (const std::string& c : all_rm) {
      std::vector<std::string> parts;
      for (const std::string& p : cp) {
        double v = LbCpuUs(agg, {plan.scenarios.front().name, p, c});
        parts.push_back(absl::StrFormat("%s %.1f", p, v));
      }
      absl::StrAppend(&md, "- LB CPU us/request over connection counts, ", c, ": ",
                      absl::StrJoin(parts, ", "), "\n");
    }
  }
  absl::StrAppend(&md, "\nDatapath ns/packet vs a trivial XDP_TX program (BPF_PROG_TEST_RUN, ",
                  "//tools/bench:datapath_bench, same run): ", datapath, "\n");
  return md;
}

absl::Status Plots(const Plan& plan, const std::vector<Row>& rows, const std::string& dir) {
  auto agg = Aggregate(rows);
  for (const Scenario& s : plan.scenarios) {
    for (const Point& p : s.points) {
      std::string base = absl::StrCat(dir, "/", s.name, "-", p.name);
      std::ofstream dat(base + ".dat");
      int i = 0;
      for (const Contender& c : plan.contenders) {
        auto it = agg.find({s.name, p.name, c.name});
        if (it == agg.end()) continue;
        const Agg& a = it->second;
        std::string label = c.name;
        absl::StrReplaceAll({{"rematcher-", "rm-"}, {"least_outstanding", "lo"},
                             {"haproxy-", "hap-"}, {"leastconn", "lc"}, {"_us=", "="}},
                            &label);
        dat << i++ << " " << label << " " << a.rps.median << " " << a.rps.min << " "
            << a.rps.max << " " << a.p99.median / 1000 << " " << a.p99.min / 1000 << " "
            << a.p99.max / 1000 << "\n";
      }
      dat.close();
      std::ofstream gp(base + ".gp");
      // noenhanced: variant names carry '@' and '_', gnuplot's markup.
      gp << "set terminal pngcairo size 900,420 font 'sans,9' noenhanced\n"
         << "set output '" << base << ".png'\n"
         << "set multiplot layout 1,2 title '" << s.name << " / " << p.name << " (median, min..max of "
         << plan.reps << ")'\n"
         << "set style fill solid 0.5\nset boxwidth 0.6\nset xtics rotate by -40 left\n"
         << "set yrange [0:*]\nset grid ytics\nunset key\n"
         << "set title 'requests/s'\n"
         << "plot '" << base << ".dat' using 1:3:xtic(2) with boxes lc rgb '#4477aa', "
         << "'' using 1:3:4:5 with yerrorbars lc rgb 'black' pt 0\n"
         << "set title 'p99 latency (ms)'\n"
         << "plot '" << base << ".dat' using 1:6:xtic(2) with boxes lc rgb '#cc6677', "
         << "'' using 1:6:7:8 with yerrorbars lc rgb 'black' pt 0\n"
         << "unset multiplot\n";
      gp.close();
      auto r = tb::RunCommand({"gnuplot", base + ".gp"}, absl::Seconds(30));
      if (!r.ok() || r->exit_code != 0)
        LOG(WARNING) << "gnuplot " << base << ": " << (r.ok() ? r->err : r.status().ToString());
      unlink((base + ".gp").c_str());
      unlink((base + ".dat").c_str());
    }
  }
  return absl::OkStatus();
}

// The kernel's DAMON monitors (kdamond threads) as they stand: on the
// machines this suite was built on, one samples physical memory every 500 ms
// with a pageout scheme, and each pass shows as a burst of slow requests
// (docs/measurements.md, "2026-12-08"). Empty when sysfs has none.
std::string DamonState() {
  const std::string root = "/sys/kernel/mm/damon/admin/kdamonds";
  // Each file holds one value (empty if missing).
  auto read = [](const std::string& path) {
    return std::string(absl::StripAsciiWhitespace(ReadFileOr(path)));
  };
  const std::string n = read(root + "/nr_kdamonds");
  int count = 0;
  if (n.empty() || !absl::SimpleAtoi(n, &count) || count <= 0) return "";
  std::vector<std::string> parts;
  for (int i = 0; i < count && i < 8; i++) {
    const std::string d = absl::StrCat(root, "/", i);
    const std::string state = read(d + "/state");
    if (state != "on") {
      parts.push_back(absl::StrCat("kdamond ", i, " ", state.empty() ? "?" : state));
      continue;
    }
    const std::string ctx = d + "/contexts/0";
    int64_t sample_us = 0;
    (void)absl::SimpleAtoi(read(ctx + "/monitoring_attrs/intervals/sample_us"), &sample_us);
    std::string action = read(ctx + "/schemes/0/action");
    parts.push_back(absl::StrFormat("kdamond %d on (%s, sampling every %d ms%s)", i,
                                    read(ctx + "/operations"), sample_us / 1000,
                                    action.empty() ? "" : ", scheme " + action));
  }
  return absl::StrCat("DAMON: ", absl::StrJoin(parts, "; "));
}

std::string Machine() {
  std::string model;
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (absl::StartsWith(line, "model name")) {
      model = std::string(absl::StripAsciiWhitespace(line.substr(line.find(':') + 1)));
      break;
    }
  auto un = tb::RunOk({"uname", "-r"}, absl::Seconds(5));
  auto hap = tb::RunCommand({"haproxy", "-v"}, absl::Seconds(5));
  std::string hv = hap.ok() ? hap->out.substr(0, hap->out.find(" - ")) : "haproxy ?";
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  const std::string damon = DamonState();
  return absl::StrFormat("%s, %ld CPUs, kernel %s, %s, load average at start %.2f (shared host)%s",
                         model, sysconf(_SC_NPROCESSORS_ONLN),
                         un.ok() ? std::string(absl::StripAsciiWhitespace(*un)) : "?", hv, load[0],
                         damon.empty() ? "" : ", " + damon);
}

// The datapath's cost ratio from the other bench
// (//tools/bench:datapath_bench, from this binary's runfiles).
std::string DatapathRatio() {
  const std::string bin = tb::RunfilesRoot() + "/tools/bench/datapath_bench";
  if (access(bin.c_str(), X_OK) != 0)
    return absl::StrCat("not measured (", bin, " is missing)");
  auto r = tb::RunCommand({bin, "--rounds=7", "--repeat=20000"}, absl::Seconds(120));
  if (!r.ok() || r->exit_code != 0)
    return absl::StrCat("datapath_bench failed: ", r.ok() ? r->err.substr(0, 300)
                                                          : r.status().ToString());
  for (absl::string_view line : absl::StrSplit(r->out, '\n'))
    if (absl::StartsWith(line, "ratio") || absl::StrContains(line, "(ns/pkt)"))
      LOG(INFO) << "datapath_bench: " << line;
  auto summary = SummarizeDatapathBench(r->out);
  return summary.ok() ? *summary : absl::StrCat("unparsed: ", summary.status().message());
}

int Main(int argc, char** argv) {
  auto plan = MakePlan(FLAGS_suite);
  if (!plan.ok()) {
    fprintf(stderr, "bench: %s\n", std::string(plan.status().message()).c_str());
    return 3;
  }
  if (getuid() != 0) {
    fprintf(stderr, "bench: needs root (namespaces, XDP)\n");
    return 3;
  }
  if (absl::Status st = tb::Testbed::Available(); !st.ok()) {
    fprintf(stderr, "bench: testbed unavailable: %s\n", st.ToString().c_str());
    return 3;
  }
  std::string out = FLAGS_out_dir;
  if (out.empty()) {
    const char* ws = getenv("BUILD_WORKSPACE_DIRECTORY");
    char ts[32];
    time_t now = time(nullptr);
    strftime(ts, sizeof(ts), "%Y%m%d-%H%M%S", localtime(&now));
    out = absl::StrCat(ws ? ws : ".", "/bench/results/", plan->suite, "-", ts);
  }
  tb::RunOk({"mkdir", "-p", out + "/logs"}, absl::Seconds(5)).IgnoreError();
  // Children inherit: 10,000 connections need more than 1024 descriptors.
  rlimit rl{1 << 20, 1 << 20};
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  tb::Testbed::InstallSignalCleanup();
  // Watchdog: a wedged run must not outlive its budget.
  std::thread([budget = plan->max_total_s] {
    absl::SleepFor(absl::Seconds(budget));
    fprintf(stderr, "bench: over the %.0f s budget; killing everything\n", budget);
    tb::Testbed::EmergencyCleanup();
    _exit(4);
  }).detach();

  // The command line as given (main() keeps it before gflags takes the
  // flags out of argv), so results.md says how to reproduce this run.
  std::string command = "bazel run //tools/bench/suite:bench --";
  for (const std::string& a : g_args) absl::StrAppend(&command, " ", a);
  if (!absl::StrContains(command, "--suite")) absl::StrAppend(&command, " --suite=", plan->suite);
  std::string machine = Machine();
  LOG(INFO) << "results in " << out << "; " << machine;

  Plan p = *plan;
  int rc = 0;
  std::vector<Row> rows;
  {
    Bench bench(p, out);
    absl::Status st = bench.Run();
    if (!st.ok()) {
      LOG(ERROR) << "bench: " << st;
      rc = 1;
    }
    rows = bench.rows();
  }  // the testbed and every process go here, before the report
  if (!tb::Testbed::ExistingNamespaces(FLAGS_prefix).empty())
    tb::Testbed::DestroyExisting(FLAGS_prefix).IgnoreError();
  std::string md = Report(p, rows, machine, command, DatapathRatio());
  std::ofstream(out + "/results.md") << md;
  Plots(p, rows, out).IgnoreError();
  std::cout << md << std::flush;
  std::cout << "\nresults: " << out << "/results.{csv,md} and *.png\n";
  return rc;
}

}  // namespace
}  // namespace rematcher::bench

int main(int argc, char** argv) {
  gflags::SetUsageMessage("rematcher vs HAProxy / nftables / direct on a namespace testbed");
  for (int i = 1; i < argc; i++) rematcher::bench::g_args.push_back(argv[i]);
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  signal(SIGPIPE, SIG_IGN);
  return rematcher::bench::Main(argc, argv);
}
