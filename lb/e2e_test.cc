// End to end: the real rematcher binary, real XDP on a veth in a namespace
// testbed, the kernel's own TCP on clients and backends, real servers (the
// test backend and nginx) and real clients (loadgen, curl, wrk). Every body
// is verified byte for byte; nstat on both ends must show no damage.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "lb/control_client.h"
#include "lb/testing/e2e_fixture.h"
#include "testing/backend/body.h"
#include "testing/backend/test_util.h"
#include "testing/testbed/netns.h"
#include "testing/testbed/nstat.h"
#include "testing/testbed/testbed.h"

namespace rematcher {
namespace {

using testbed::NstatCounters;
using testbed::Process;
using testbed::Testbed;
using backend::FillBody;
using backend::testutil::RunfilePath;
using backend::testutil::TempDir;

constexpr char kSock[] = "/run/rematcher/e2e.sock";

using e2e::BackendCounts;
using e2e::JsonInt;
using e2e::ParseStats;

// How many times `what` occurs in `s`.
int CountOf(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) n++;
  return n;
}

class E2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (getuid() != 0) return;
    testbed::TestbedOptions o;
    o.prefix = "rme2";
    o.num_clients = 2;
    o.num_backends = 3;
    auto tb = Testbed::Create(o);
    if (!tb.ok()) {
      setup_error_ = new std::string(tb.status().ToString());
      return;
    }
    tb_ = tb->release();
    procs_ = new std::vector<Process>();
    std::string backend = RunfilePath("testing/backend/backend");
    // nginx serves fixed files from a directory of this test's.
    www_ = new std::string(TempDir() + "/www");
    mkdir(www_->c_str(), 0755);
    for (auto [name, size] : std::vector<std::pair<std::string, size_t>>{
             {"zero", 0}, {"one", 1}, {"k", 1024}, {"m", 1 << 20}, {"m8", 8 << 20}}) {
      std::string data(size, 0);
      FillBody(99, 0, data.data(), size);
      std::ofstream(*www_ + "/" + name, std::ios::binary).write(data.data(), size);
    }
    // Text that nginx sends gzipped, and so chunked (its length unknown
    // ahead), when the client accepts gzip.
    mkdir((*www_ + "/gz").c_str(), 0755);
    for (auto [name, lines] : std::vector<std::pair<std::string, int>>{{"small", 8},
                                                                       {"text", 6000}}) {
      std::ofstream f(*www_ + "/gz/" + name);
      for (int l = 0; l < lines; l++) f << "line " << l << " of " << name << ", " << l * 7919 % 10007 << "\n";
    }
    for (int i = 0; i < 3; i++) {
      auto p = tb_->Spawn(tb_->backend_ns(i), {backend, "--listen=0.0.0.0:8080",
                                               absl::StrCat("--name=b", i)});
      ASSERT_TRUE(p.ok()) << p.status();
      procs_->push_back(std::move(*p));
      std::string dir = absl::StrCat(TempDir(), "/nginx", i);
      mkdir(dir.c_str(), 0755);
      std::ofstream(dir + "/nginx.conf")
          << "user root; worker_processes 1; daemon off; pid " << dir << "/nginx.pid; error_log " << dir
          << "/error.log;\nevents { worker_connections 1024; }\n"
          << "http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;\n"
          << "  client_body_temp_path " << dir << "; proxy_temp_path " << dir << ";\n"
          << "  server { listen 8081; root " << *www_ << ";\n"
          << "    location /gz/ { gzip on; gzip_min_length 0; gzip_types *; } } }\n";
      auto n = tb_->Spawn(tb_->backend_ns(i), {"nginx", "-c", dir + "/nginx.conf"},
                          {"", dir + "/stderr"});
      ASSERT_TRUE(n.ok()) << n.status();
      procs_->push_back(std::move(*n));
    }
    for (int i = 0; i < 3; i++) {
      ASSERT_TRUE(tb_->WaitForTcpListener(tb_->backend_ns(i), tb_->backend_ip(i), 8080,
                                          absl::Seconds(10)).ok());
      ASSERT_TRUE(tb_->WaitForTcpListener(tb_->backend_ns(i), tb_->backend_ip(i), 8081,
                                          absl::Seconds(10)).ok());
    }
  }

  static void TearDownTestSuite() {
    delete procs_;
    procs_ = nullptr;
    delete tb_;
    tb_ = nullptr;
  }

  void SetUp() override {
    if (getuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (namespaces, XDP, BPF)";
    if (setup_error_) GTEST_SKIP() << "SKIPPED: testbed unavailable: " << *setup_error_;
    ASSERT_NE(tb_, nullptr);
  }

  void TearDown() override { StopLb(); }

  std::string Backends(int port) {
    std::vector<std::string> b;
    for (int i = 0; i < 3; i++) b.push_back(absl::StrCat(tb_->backend_ip(i), ":", port));
    return absl::StrJoin(b, ",");
  }

  // Starts rematcher in the LB namespace and waits until every backend has
  // established pooled connections.
  // pool: pooled connections opened per backend at start (waited for).
  void StartLb(const std::string& backends, const std::string& policy,
               std::vector<std::string> extra = {}, uint32_t pool = 16) {
    std::vector<std::string> argv = {RunfilePath("lb/rematcher"),
                                     "--iface=eth0",
                                     "--vip=198.18.0.10:8080",
                                     "--backends=" + backends,
                                     "--policy=" + policy,
                                     "--stats_interval_s=0",
                                     absl::StrCat("--conns_per_backend=", pool),
                                     std::string("--control_socket=") + kSock};
    argv.insert(argv.end(), extra.begin(), extra.end());
    lb_log_ = TempDir() + "/rematcher.log";
    auto p = tb_->Spawn(tb_->lb_ns(), argv, {lb_log_, lb_log_});
    ASSERT_TRUE(p.ok()) << p.status();
    lb_ = std::move(*p);
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    int n = std::count(backends.begin(), backends.end(), ',') + 1;
    while (absl::Now() < deadline) {
      auto r = SendControlCommand(kSock, "stats");
      if (r.ok() && ParseStats(*r)["pool_established"] >= pool * n) return;
      ASSERT_TRUE(lb_.Running()) << "rematcher exited: " << Log();
      absl::SleepFor(absl::Milliseconds(100));
    }
    FAIL() << "pools not established in time: " << Log();
  }

  void StopLb() {
    if (lb_.valid()) lb_.Stop(absl::Seconds(5)).IgnoreError();
    lb_ = Process();
  }

  // The peers of backend i's established connections on :8080, as the
  // backend sees them (an LB that died, not stopped, leaves its own behind).
  std::set<std::string> BackendPeers(int i) {
    std::set<std::string> peers;
    auto r = tb_->Run(tb_->backend_ns(i), {"ss", "-Htn", "state", "established", "sport", "=", ":8080"});
    if (!r.ok()) return {"ss failed: " + r.status().ToString()};
    for (absl::string_view line : absl::StrSplit(*r, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (f.size() >= 4) peers.insert(std::string(f[3]));
    }
    return peers;
  }
  // Those not in `before`.
  std::set<std::string> NewPeers(int i, const std::set<std::string>& before) {
    std::set<std::string> now = BackendPeers(i), out;
    for (const std::string& p : now)
      if (!before.count(p)) out.insert(p);
    return out;
  }

  std::string Log() {
    std::ifstream f(lb_log_);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }

  std::map<std::string, uint64_t> Stats() {
    auto r = SendControlCommand(kSock, "stats");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? ParseStats(*r) : std::map<std::string, uint64_t>{};
  }

  std::string Ctl(const std::string& cmd) {
    auto r = SendControlCommand(kSock, cmd);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : "";
  }

  // loadgen's command line against the VIP, JSON out, bounded to max_time_s.
  std::vector<std::string> LoadArgv(const std::vector<std::string>& flags, int max_time_s) {
    std::vector<std::string> argv = {RunfilePath("testing/loadgen/loadgen"),
                                     "--target=198.18.0.10:8080", "--json",
                                     absl::StrCat("--max_time_s=", max_time_s)};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
  }

  // Runs loadgen from client i and returns its JSON.
  std::string Load(int client, std::vector<std::string> flags) {
    auto r = tb_->RunCommand(tb_->client_ns(client), LoadArgv(flags, 100), absl::Seconds(120));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    EXPECT_EQ(r->exit_code, 0) << r->out << r->err << Log();
    return r->out;
  }

  // loadgen on `client` in the background, its JSON to a file; WaitLoad
  // returns the JSON once it exits 0.
  struct BgLoad {
    absl::StatusOr<testbed::Process> proc;
    std::string out;
  };
  BgLoad StartLoad(int client, std::vector<std::string> flags) {
    BgLoad l;
    l.out = absl::StrCat(TempDir(), "/load", client, ".json");
    l.proc = tb_->Spawn(tb_->client_ns(client), LoadArgv(flags, 30), {l.out, ""});
    EXPECT_TRUE(l.proc.ok()) << l.proc.status();
    return l;
  }
  std::string WaitLoad(BgLoad& l) {
    if (!l.proc.ok()) return "";
    auto rc = l.proc->Wait(absl::Seconds(40));
    EXPECT_TRUE(rc.ok()) << rc.status();
    if (rc.ok()) EXPECT_EQ(*rc, 0);
    std::ifstream f(l.out);
    return std::string((std::istreambuf_iterator<char>(f)), {});
  }

  struct Snap {
    std::vector<NstatCounters> hosts;
  };
  Snap TakeNstat() {
    Snap s;
    for (int i = 0; i < 2; i++) s.hosts.push_back(*tb_->Nstat(tb_->client_ns(i)));
    for (int i = 0; i < 3; i++) s.hosts.push_back(*tb_->Nstat(tb_->backend_ns(i)));
    return s;
  }
  // No silent damage on either end: no PAWS drops, no checksum errors, no
  // resets, no skipped ACKs. Retransmissions are allowed up to max_retrans
  // of the segments sent (a lossless run should have essentially none).
  // check_resets=false: for runs whose client aborts its own connections
  // (wrk closes with requests in flight when its duration ends).
  void ExpectClean(const Snap& before, double max_retrans = 0.03,
                   bool check_resets = true) {
    Snap after = TakeNstat();
    const char* names[] = {"c0", "c1", "b0", "b1", "b2"};
    for (size_t i = 0; i < after.hosts.size(); i++) {
      auto d = testbed::NstatDiff(before.hosts[i], after.hosts[i]);
      auto get = [&](const char* k) { return d.count(k) ? d[k] : 0; };
      SCOPED_TRACE(names[i]);
      // PAWS: rare drops (1-2 per ~100k segments) were seen only in runs
      // where the testbed's veth rings overflowed under 8 MiB bursts; their
      // cause is not isolated yet (see the README). Anything beyond that
      // rate fails; every count is printed.
      int64_t in = get("TcpInSegs");
      std::cout << "[nstat] " << names[i] << " PAWSEstab " << get("TcpExtPAWSEstab")
                << " of " << in << " segments in" << std::endl;
      EXPECT_LE(get("TcpExtPAWSEstab"), std::max<int64_t>(2, in / 20000));
      EXPECT_LE(get("TcpExtTCPACKSkippedPAWS"), std::max<int64_t>(2, in / 20000));
      EXPECT_EQ(get("TcpInCsumErrors"), 0);
      bool client = i < 2;
      if (check_resets && client) {
        // Clients are never reset.
        EXPECT_EQ(get("TcpEstabResets"), 0);
        EXPECT_EQ(get("TcpOutRsts"), 0);
        EXPECT_EQ(get("TcpExtTCPAbortOnData"), 0);
      }
      int64_t out = get("TcpOutSegs"), re = get("TcpRetransSegs");
      // Measured and reported; bounded loosely (the testbed's veth rings
      // overflow under bursts, see the README's results).
      std::cout << "[nstat] " << names[i] << " retransmitted " << re << " of " << out
                << " segments, EstabResets " << get("TcpEstabResets") << std::endl;
      EXPECT_LE(re, std::max<int64_t>(50, out * max_retrans))
          << "retransmitted " << re << " of " << out << " segments";
    }
  }

  static sockaddr_in Ipv4Addr(const std::string& ip, uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    return a;
  }
  // The VIP as a connect() address.
  static sockaddr_in Vip() { return Ipv4Addr("198.18.0.10", 8080); }

  // A TCP connection from namespace ns to `to` (blocking); -1, with the
  // failure recorded, if there is none.
  static int ConnectIn(const std::string& ns, const sockaddr_in& to) {
    absl::StatusOr<int> fd = testbed::SocketInNetns(ns, AF_INET, SOCK_STREAM);
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (!fd.ok()) return -1;
    if (connect(*fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to))) {
      ADD_FAILURE() << "connect from " << ns << ": " << strerror(errno);
      close(*fd);
      return -1;
    }
    return *fd;
  }

  // Waits (bounded) until every backend's pooled connections are idle (the
  // `backends` rows' idle/live); then fails for any row that is not, and
  // returns the last `backends` text, with the live connections in *live.
  std::string ExpectPoolsIdle(size_t* live) {
    // (rows, live connections summed), and whether every row is all idle.
    auto rows = [](const std::string& b, bool* all_idle) {
      size_t sum = 0;
      *all_idle = true;
      const std::vector<e2e::BackendRow> rs = e2e::ParseBackends(b);
      for (const e2e::BackendRow& r : rs) {
        sum += r.pool_live;
        if (r.pool_idle != r.pool_live) *all_idle = false;
      }
      return std::make_pair(rs.size(), sum);
    };
    std::string b;
    bool all_idle = false;
    absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline) {
      b = Ctl("backends");
      if (rows(b, &all_idle).first == 3 && all_idle) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    *live = rows(b, &all_idle).second;
    EXPECT_TRUE(all_idle) << "not all pooled connections idle: " << b;
    return b;
  }

  void RunUnframedMoves(uint32_t lost_every);

  // One GET of `size` body bytes (seed `seed`) from client i on a new
  // connection, closed after: the body checked byte for byte, and how long
  // it took from the request's send to the response's end returned (an
  // infinite duration if it failed). Unframed: the head spans two segments,
  // so the request and its response are left to the layer-4 rules.
  absl::Duration FetchOnNewConnection(int client, size_t size, uint64_t seed, bool framed = true) {
    const int fd = ConnectIn(tb_->client_ns(client), Vip());
    if (fd < 0) return absl::InfiniteDuration();
    const absl::Time t0 = absl::Now();
    std::string req = absl::StrCat("GET /r?size=", size, "&seed=", seed, " HTTP/1.1\r\nHost: t\r\n",
                                   framed ? "" : "X-Pad: " + std::string(1500, 'p') + "\r\n",
                                   "\r\n");
    absl::Status sent = backend::testutil::SendAll(fd, req);
    std::string rest;
    absl::StatusOr<backend::testutil::HttpResponse> r =
        sent.ok() ? backend::testutil::ReadResponse(fd, &rest, /*timeout_s=*/10)
                  : absl::StatusOr<backend::testutil::HttpResponse>(sent);
    const absl::Duration took = absl::Now() - t0;
    close(fd);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return absl::InfiniteDuration();
    EXPECT_EQ(r->body.size(), size);
    std::string body(size, 0);
    FillBody(seed, 0, body.data(), size);
    EXPECT_TRUE(r->body == body) << "body differs";
    return r->body == body ? took : absl::InfiniteDuration();
  }

  static Testbed* tb_;
  static std::vector<Process>* procs_;
  static std::string* www_;
  static std::string* setup_error_;
  Process lb_;
  std::string lb_log_;
};

Testbed* E2eTest::tb_ = nullptr;
std::vector<Process>* E2eTest::procs_ = nullptr;
std::string* E2eTest::www_ = nullptr;
std::string* E2eTest::setup_error_ = nullptr;

TEST_F(E2eTest, BodiesAndUploadsByteExactUpTo8MiB) {
  StartLb(Backends(8080), "rr");
  Snap before = TakeNstat();
  std::string j = Load(0, {"--connections=3", "--requests=90",
                           "--sizes=0,1,1000,65536,1048576,8388608",
                           "--upload_sizes=0,1,70000,1048576,8388608", "--timeout_ms=20000"});
  EXPECT_EQ(JsonInt(j, "ok"), 90) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  // curl, independently: an 8 MiB body compared byte for byte.
  std::string file = TempDir() + "/curl8m";
  auto r = tb_->RunCommand(tb_->client_ns(1),
                           {"curl", "-s", "-m", "30", "-o", file,
                            "http://198.18.0.10:8080/r?size=8388608&seed=5"},
                           absl::Seconds(40));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->exit_code, 0) << r->err;
  std::ifstream f(file, std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(f)), {});
  std::string want(8388608, 0);
  FillBody(5, 0, want.data(), want.size());
  EXPECT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "8 MiB body differs";
  // 8 MiB bursts from three backends at once overflow the LB's veth XDP
  // rings (256 frames each) now and then; the same bursts sent directly
  // retransmit ~0.01%. Allow 0.5% here; the 0.1% bound is checked on the
  // mixed workload below.
  ExpectClean(before);
}

TEST_F(E2eTest, NginxThroughRematcherWithCurlAndWrk) {
  StartLb(Backends(8081), "rr");
  Snap before = TakeNstat();
  for (const char* name : {"zero", "one", "k", "m", "m8"}) {
    std::string out = absl::StrCat(TempDir(), "/nginx_", name);
    auto r = tb_->RunCommand(tb_->client_ns(0),
                             {"curl", "-s", "-m", "30", "-o", out,
                              absl::StrCat("http://198.18.0.10:8080/", name)},
                             absl::Seconds(40));
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->exit_code, 0) << name << ": " << r->err;
    std::ifstream a(out, std::ios::binary), b(*www_ + "/" + name, std::ios::binary);
    std::string got((std::istreambuf_iterator<char>(a)), {});
    std::string want((std::istreambuf_iterator<char>(b)), {});
    EXPECT_TRUE(got == want) << name << ": " << got.size() << " vs " << want.size() << " bytes";
  }
  ExpectClean(before);
  before = TakeNstat();
  auto w = tb_->RunCommand(tb_->client_ns(1),
                           {"wrk", "-t1", "-c8", "-d3s", "http://198.18.0.10:8080/k"},
                           absl::Seconds(30));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->exit_code, 0) << w->out << w->err;
  EXPECT_EQ(w->out.find("Socket errors"), std::string::npos) << w->out;
  EXPECT_EQ(w->out.find("Non-2xx"), std::string::npos) << w->out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(w->out, m, std::regex("Requests/sec:\\s+([0-9.]+)"))) << w->out;
  EXPECT_GT(std::stod(m[1].str()), 100.0) << w->out;
  ExpectClean(before, 0.03, /*check_resets=*/false);
}

// A minimal RESP (Redis protocol) client on a blocking socket: commands
// out, one reply at a time in (its type and payload: a bulk string's bytes,
// a simple string's or error's text), nothing on timeout or EOF.
class RespConn {
 public:
  explicit RespConn(int fd) : fd_(fd) {
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RespConn() { close(fd_); }
  static std::string Cmd(const std::vector<std::string>& args) {
    std::string out = absl::StrCat("*", args.size(), "\r\n");
    for (const std::string& a : args) absl::StrAppend(&out, "$", a.size(), "\r\n", a, "\r\n");
    return out;
  }
  bool Send(const std::string& data) { return backend::testutil::SendAll(fd_, data).ok(); }
  std::optional<std::pair<char, std::string>> Read() {
    size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos)
      if (!Fill()) return std::nullopt;
    const char type = buf_[0];
    std::string line = buf_.substr(1, eol - 1);
    if (type != '$') {
      buf_.erase(0, eol + 2);
      return std::make_pair(type, line);
    }
    long len = -1;
    if (!absl::SimpleAtoi(line, &len)) return std::nullopt;
    if (len < 0) {
      buf_.erase(0, eol + 2);
      return std::make_pair(type, std::string("(nil)"));
    }
    while (buf_.size() < eol + 2 + len + 2)
      if (!Fill()) return std::nullopt;
    std::string bulk = buf_.substr(eol + 2, len);
    buf_.erase(0, eol + 2 + len + 2);
    return std::make_pair(type, bulk);
  }

 private:
  bool Fill() {
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof(tmp), 0);
    if (n <= 0) return false;
    buf_.append(tmp, n);
    return true;
  }
  int fd_;
  std::string buf_;
};

// Redis behind rematcher: three redis-servers holding the same keys, every
// client moved at each request boundary (rr). RESP has no framing the head
// reader knows, so every exchange is left to the layer-4 rules: owed ACKs,
// parked connections, pipelining hints. A verifying client checks every
// value byte for byte (up to 300 KB; pauses now and then let its ACKs go
// out alone, so moves park their connections) while redis-benchmark
// (PING, GET, SET, 16 connections) runs through the VIP at the same time.
TEST_F(E2eTest, RedisThroughRematcherMovingAtEveryRequest) {
  constexpr int kKeys = 3000;
  auto value = [](int k) {
    std::string v(k % 100 == 0 ? 300000 : 20 + (k * 37) % 3000, 0);
    FillBody(1000 + k, 0, v.data(), v.size());
    return v;
  };
  std::vector<Process> redis;
  for (int i = 0; i < 3; i++) {
    auto p = tb_->Spawn(tb_->backend_ns(i),
                        {"/usr/bin/redis-server", "--port", "6379", "--bind", tb_->backend_ip(i),
                         "--save", "", "--appendonly", "no", "--protected-mode", "no",
                         "--daemonize", "no", "--logfile", ""},
                        {absl::StrCat(TempDir(), "/redis", i, ".log"),
                         absl::StrCat(TempDir(), "/redis", i, ".log")});
    ASSERT_TRUE(p.ok()) << p.status();
    redis.push_back(std::move(*p));
  }
  for (int i = 0; i < 3; i++) {
    ASSERT_TRUE(tb_->WaitForTcpListener(tb_->backend_ns(i), tb_->backend_ip(i), 6379,
                                        absl::Seconds(10))
                    .ok());
    // The same keys on each, written straight to it, 100 at a time.
    const int fd = ConnectIn(tb_->backend_ns(i), Ipv4Addr(tb_->backend_ip(i), 6379));
    ASSERT_GE(fd, 0);
    RespConn c(fd);
    for (int k0 = 0; k0 < kKeys; k0 += 100) {
      std::string batch;
      for (int k = k0; k < k0 + 100; k++)
        batch += RespConn::Cmd({"SET", absl::StrCat("k:", k), value(k)});
      ASSERT_TRUE(c.Send(batch));
      for (int k = k0; k < k0 + 100; k++) {
        auto r = c.Read();
        ASSERT_TRUE(r && r->first == '+') << "SET on backend " << i;
      }
    }
  }
  StartLb(Backends(6379), "rr", {}, /*pool=*/8);
  Snap before = TakeNstat();
  auto s0 = Stats();
  auto bench = tb_->Spawn(tb_->client_ns(1),
                          {"/usr/bin/redis-benchmark", "-h", tb_->vip(), "-p", "8080", "-c", "16",
                           "-n", "20000", "-t", "ping,get,set", "-q"},
                          {TempDir() + "/redis-benchmark.out", TempDir() + "/redis-benchmark.out"});
  ASSERT_TRUE(bench.ok()) << bench.status();
  std::vector<std::unique_ptr<RespConn>> conns;
  for (int i = 0; i < 8; i++) {
    const int fd = ConnectIn(tb_->client_ns(0), Vip());
    ASSERT_GE(fd, 0);
    conns.push_back(std::make_unique<RespConn>(fd));
  }
  int ok = 0, wrong = 0, failed = 0;
  const absl::Time t0 = absl::Now();
  for (int n = 0; n < 6000; n++) {
    if (n % 500 == 499) absl::SleepFor(absl::Milliseconds(60));
    RespConn& c = *conns[n % conns.size()];
    const int k = (n * 7919) % kKeys;
    if (!c.Send(RespConn::Cmd({"GET", absl::StrCat("k:", k)}))) {
      failed++;
      break;
    }
    auto r = c.Read();
    if (!r) {
      failed++;
      break;
    }
    if (r->first == '$' && r->second == value(k)) {
      ok++;
    } else {
      wrong++;
    }
  }
  const absl::Duration took = absl::Now() - t0;
  conns.clear();
  absl::StatusOr<int> rc = bench->Wait(absl::Seconds(60));
  std::ifstream bf(TempDir() + "/redis-benchmark.out");
  std::string bout((std::istreambuf_iterator<char>(bf)), {});
  // Its -q lines, carriage returns and all.
  std::string lines;
  for (absl::string_view l : absl::StrSplit(bout, absl::ByAnyChar("\r\n"), absl::SkipEmpty()))
    if (absl::StrContains(l, "requests per second")) absl::StrAppend(&lines, l, "\n");
  auto s = Stats();
  std::cout << "[redis] verified GETs: " << ok << " right, " << wrong << " wrong, " << failed
            << " failed in " << absl::FormatDuration(took) << "; rematches "
            << s["rematches"] - s0["rematches"] << ", parked " << s["pool_parked"] - s0["pool_parked"]
            << ", owed ACKs sent " << s["pool_acks_sent"] - s0["pool_acks_sent"] << ", pinned "
            << s["pipelined"] - s0["pipelined"] << ", pool_dead " << s["pool_dead"] - s0["pool_dead"]
            << "\n[redis-benchmark]\n" << lines << std::flush;
  EXPECT_EQ(ok, 6000);
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(failed, 0);
  ASSERT_TRUE(rc.ok()) << rc.status();
  EXPECT_EQ(*rc, 0) << bout;
  for (const char* t : {"PING_INLINE", "PING_MBULK", "SET", "GET"})
    EXPECT_NE(lines.find(absl::StrCat(t, ": ")), std::string::npos) << t << " missing:\n" << bout;
  EXPECT_EQ(bout.find("rror"), std::string::npos) << bout;
  EXPECT_GT(s["rematches"] - s0["rematches"], 3000u);
  EXPECT_GT(s["pool_parked"] - s0["pool_parked"], 0u) << "no move parked its connection";
  EXPECT_EQ(s["pool_parked_shrunk"] - s0["pool_parked_shrunk"],
            s["pool_parked"] - s0["pool_parked"]);
  EXPECT_EQ(s["pool_dead"], s0["pool_dead"]);
  ExpectClean(before);
}

// Responses of every framing nginx sends, through rr (each request on a
// connection decided to another backend): gzipped (chunked, so the end is
// its last chunk), Content-Length, HEAD. The datapath must see each one
// end, or it takes the next request for one written while a response is
// owed and pins the client (pinned_response_owed): the clients must keep
// moving, and every body must match.
TEST_F(E2eTest, NginxChunkedLengthAndHeadResponsesAllEndWhereTheyEnd) {
  StartLb(Backends(8081), "rr");
  Snap before = TakeNstat();
  auto s0 = Stats();
  const std::string vip = "http://198.18.0.10:8080";
  std::vector<std::string> argv = {"curl", "-s", "-m", "30", "--compressed", "-D",
                                   TempDir() + "/heads"};
  const std::vector<std::string> paths = {"gz/text", "gz/small", "k", "gz/text", "m", "gz/small"};
  for (size_t i = 0; i < paths.size(); i++) {
    argv.insert(argv.end(), {"-o", absl::StrCat(TempDir(), "/nx", i), vip + "/" + paths[i]});
  }
  auto r = tb_->RunCommand(tb_->client_ns(0), argv, absl::Seconds(40));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->exit_code, 0) << r->err;
  for (size_t i = 0; i < paths.size(); i++) {
    std::ifstream a(absl::StrCat(TempDir(), "/nx", i), std::ios::binary),
        b(*www_ + "/" + paths[i], std::ios::binary);
    std::string got((std::istreambuf_iterator<char>(a)), {});
    std::string want((std::istreambuf_iterator<char>(b)), {});
    EXPECT_TRUE(got == want) << paths[i] << ": " << got.size() << " vs " << want.size();
  }
  std::ifstream hf(TempDir() + "/heads");
  std::string heads((std::istreambuf_iterator<char>(hf)), {});
  EXPECT_EQ(CountOf(heads, "Transfer-Encoding: chunked"), 4) << heads;
  EXPECT_EQ(CountOf(heads, "Content-Encoding: gzip"), 4) << heads;
  // HEAD requests (a Content-Length, no body), then a body, on one
  // connection.
  auto h = tb_->RunCommand(tb_->client_ns(0),
                           {"curl", "-s", "-m", "30", "-I", vip + "/m", "-I", vip + "/k", "-I",
                            vip + "/m"},
                           absl::Seconds(40));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->exit_code, 0) << h->err;
  EXPECT_EQ(CountOf(h->out, "Content-Length: 1048576"), 2) << h->out;
  auto w = tb_->RunCommand(tb_->client_ns(1),
                           {"wrk", "-t1", "-c8", "-d3s", "-H", "Accept-Encoding: gzip",
                            vip + "/gz/text"},
                           absl::Seconds(30));
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->exit_code, 0) << w->out << w->err;
  EXPECT_EQ(w->out.find("Socket errors"), std::string::npos) << w->out;
  EXPECT_EQ(w->out.find("Non-2xx"), std::string::npos) << w->out;
  auto s = Stats();
  std::cout << "[framing] nginx: rematches " << s["rematches"] - s0["rematches"]
            << ", pinned_response_owed " << s["pinned_response_owed"] - s0["pinned_response_owed"]
            << ", pipelined " << s["pipelined"] - s0["pipelined"] << std::endl;
  EXPECT_EQ(s["pinned_response_owed"], s0["pinned_response_owed"]);
  EXPECT_GT(s["rematches"] - s0["rematches"], 500u) << "clients kept moving";
  ExpectClean(before, 0.03, /*check_resets=*/false);
}

TEST_F(E2eTest, TenThousandShortConnectionsLeakNothing) {
  StartLb(Backends(8080), "rr");
  Snap before = TakeNstat();
  // Half close from the client side (the pooled connection is reused), half
  // send "Connection: close" (the backend closes it: retired and replaced).
  std::string j = Load(0, {"--connections=4", "--requests=5000", "--new_conn_per_request",
                           "--close_header=false", "--sizes=100"});
  EXPECT_EQ(JsonInt(j, "ok"), 5000) << j;
  int64_t opened = JsonInt(j, "connections_opened");
  EXPECT_GE(opened, 5000) << j;
  auto s = Stats();
  EXPECT_EQ(s["handshakes"], static_cast<uint64_t>(opened));
  EXPECT_GE(s["closed_clean"], 5000u);
  EXPECT_EQ(s["pool_retired"], 0u);
  // Each closing client's pending decision (made at its request's start
  // for a next request that never comes) is dropped at its close, not
  // re-asked until it expires.
  std::cout << "[pending] forgotten " << s["pending_forgotten"] << ", redecided "
            << s["policy_redecided"] << std::endl;
  EXPECT_GE(s["pending_forgotten"], 4500u);
  // Each response was framed (Content-Length) and had all passed when its
  // client closed: the backend owed nothing, so the pooled connection went
  // straight back to the idle queue, without the two verification probes.
  std::cout << "[pool] released whole " << s["pool_released_whole"] << ", verified "
            << s["pool_verify"] << std::endl;
  EXPECT_GE(s["pool_released_whole"], 4500u);
  // Each of those closes owed its pooled connection the ACK its FIN
  // carried: sent on by the datapath in place of the client's final ACK
  // (unless another client took the connection first: its splice carried
  // it), not by the core, which the close no longer wakes.
  std::cout << "[close] owed ACKs sent by the datapath " << s["pool_ack_on_close"]
            << ", by the core " << s["pool_acks_sent"] << ", carried or already sent "
            << s["pool_acks_carried"] << std::endl;
  EXPECT_GE(s["pool_ack_on_close"], 4000u);
  EXPECT_LT(s["pool_acks_sent"], 250u);
  j = Load(1, {"--connections=4", "--requests=5000", "--new_conn_per_request", "--sizes=100"});
  EXPECT_EQ(JsonInt(j, "ok"), 5000) << j;
  EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
  opened += JsonInt(j, "connections_opened");
  // Every one of those used up a pooled connection. Their replacements are
  // finished as soon as they connect: first requests rarely find every
  // pool empty (each that does waits for its retransmission, 200 ms).
  // Measured 0-4 of 5,000; 76-118 when replacements were only picked up
  // at the core's next 100 ms tick.
  auto s2 = Stats();
  std::cout << "[pool] first requests that waited for a pooled connection: "
            << s2["no_pool_wait"] - s["no_pool_wait"] << " of 5000" << std::endl;
  EXPECT_LT(s2["no_pool_wait"] - s["no_pool_wait"], 40u);
  // Closes that ran through the pooled connection forget theirs too.
  std::cout << "[pending] forgotten " << s2["pending_forgotten"] - s["pending_forgotten"]
            << " in the backend-closed half" << std::endl;
  EXPECT_GE(s2["pending_forgotten"] - s["pending_forgotten"], 4500u);
  // The backend closed each of those: the records linger closed, and the
  // control socket's closing view shows them finished (both FINs seen and
  // acknowledged, nothing unacknowledged either way).
  std::string closing = Ctl("clients 5 closing");
  EXPECT_NE(closing.find("be_unacked"), std::string::npos) << closing;
  std::vector<std::string> rows = absl::StrSplit(closing, '\n', absl::SkipEmpty());
  ASSERT_GE(rows.size(), 2u) << closing;
  std::smatch row;
  EXPECT_TRUE(std::regex_search(rows[1], row, std::regex(" closed .* 0x0f +0 +0 ")))
      << closing;
  // Linger (2 s) plus a GC pass: every client record must be gone.
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::string clients;
  while (absl::Now() < deadline) {
    clients = Ctl("clients");
    if (std::count(clients.begin(), clients.end(), '\n') == 1) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  EXPECT_EQ(std::count(clients.begin(), clients.end(), '\n'), 1) << clients;
  s = Stats();
  EXPECT_EQ(s["handshakes"], static_cast<uint64_t>(opened));
  EXPECT_EQ(s["drop_no_pool"], 0u);
  EXPECT_EQ(s["tx_rst"], 0u);
  // Each backend-closed connection retired exactly its pooled connection.
  EXPECT_EQ(s["pool_retired"], 5000u);
  EXPECT_EQ(s["pool_dead"], 5000u);
  // Pools are back to their size, all idle, and no socket leaked in the LB
  // namespace: exactly one per pooled connection.
  size_t live = 0;
  std::string b = ExpectPoolsIdle(&live);
  EXPECT_GE(live, 48u) << b;
  auto ss = tb_->Run(tb_->lb_ns(), {"ss", "-Htan", "state", "established"});
  ASSERT_TRUE(ss.ok());
  EXPECT_EQ(static_cast<size_t>(std::count(ss->begin(), ss->end(), '\n')), live) << *ss;
  auto all = tb_->Run(tb_->lb_ns(), {"ss", "-Htan"});
  EXPECT_EQ(std::count(all->begin(), all->end(), '\n'),
            std::count(ss->begin(), ss->end(), '\n'))
      << "sockets in other states: " << *all;
  ExpectClean(before);
}

// A client's clean close owes its pooled connection's backend the ACK its
// FIN carried. The client's final ACK takes it there from the datapath
// (pool_ack_on_close); when that final ACK is lost, the core sends it
// (pool_acks_sent) a moment later. Here an nftables rule in the client's
// namespace drops every bare ACK the client sends to the VIP, so the only
// acknowledgement of the response is the one on the FIN, and the final
// ACK never reaches the LB: without the core's copy the backend would be
// left with its response unacknowledged and retransmit it (its loss probe,
// 200 ms for a single segment), which nstat would show.
TEST_F(E2eTest, AClosesOwedAckGoesOnTheFinalAckOrFromTheCoreIfThatIsLost) {
  StartLb(absl::StrCat(tb_->backend_ip(0), ":8080"), "rr");
  const std::string ns = tb_->client_ns(0);
  const std::string get = "GET /r?size=100&seed=7 HTTP/1.1\r\nHost: t\r\n\r\n";
  auto exchange_and_close = [&] {
    const int fd = ConnectIn(ns, Vip());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(backend::testutil::SendAll(fd, get).ok());
    std::string rest;
    auto r = backend::testutil::ReadResponse(fd, &rest, /*timeout_s=*/10);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->body.size(), 100u);
    close(fd);
  };
  for (bool lose : {false, true}) {
    SCOPED_TRACE(lose ? "final ACK lost" : "final ACK arrives");
    if (lose) {
      ASSERT_TRUE(tb_->Run(ns, {"nft", "add", "table", "ip", "rmfinal"}).ok());
      ASSERT_TRUE(tb_->Run(ns, {"nft", "add", "chain", "ip", "rmfinal", "out",
                                "{ type filter hook output priority 0 ; }"})
                      .ok());
      ASSERT_TRUE(tb_->Run(ns, {"nft", "add", "rule", "ip", "rmfinal", "out", "ip", "daddr",
                                tb_->vip(), "tcp", "flags", "&", "(fin|syn|rst|psh|ack|urg)",
                                "==", "ack", "drop"})
                      .ok());
    }
    auto s0 = Stats();
    Snap before = TakeNstat();
    exchange_and_close();
    // Past the core's wait for the final ACK and the backend's loss probe.
    absl::SleepFor(absl::Milliseconds(600));
    auto s1 = Stats();
    Snap after = TakeNstat();
    if (lose) ASSERT_TRUE(tb_->Run(ns, {"nft", "delete", "table", "ip", "rmfinal"}).ok());
    auto d = [&](const char* k) { return s1[k] - s0[k]; };
    std::cout << "[close] " << (lose ? "lost" : "arrived") << ": pool_ack_on_close "
              << d("pool_ack_on_close") << ", core pool_acks_sent " << d("pool_acks_sent")
              << ", pool_released_whole " << d("pool_released_whole") << std::endl;
    EXPECT_EQ(d("closed_clean"), 1u);
    EXPECT_EQ(d("pool_released_whole"), 1u);
    EXPECT_EQ(d("pool_ack_on_close"), lose ? 0u : 1u);
    EXPECT_EQ(d("pool_acks_sent"), lose ? 1u : 0u);
    auto b0 = testbed::NstatDiff(before.hosts[2], after.hosts[2]);
    EXPECT_EQ(b0.count("TcpRetransSegs") ? b0["TcpRetransSegs"] : 0, 0)
        << "the backend retransmitted: its response was never acknowledged";
  }
}

TEST_F(E2eTest, RoundRobinSpreadsRequestsNotConnections) {
  StartLb(Backends(8080), "rr");
  Snap before = TakeNstat();
  // Open loop at a rate this 2-core box sustains with CPU to spare: the
  // property under test is spreading by request. (Decision rates at full
  // closed-loop load are a benchmark figure: see the README.)
  std::string j = Load(0, {"--connections=4", "--requests=6000", "--mode=open", "--rate=1000",
                           "--sizes=100,5000"});
  ASSERT_EQ(JsonInt(j, "ok"), 6000) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0);
  auto counts = BackendCounts(j);
  ASSERT_EQ(counts.size(), 3u) << j;
  for (auto& [name, n] : counts) {
    EXPECT_GT(n, 6000 / 3 * 0.9) << name << " " << j;
    EXPECT_LT(n, 6000 / 3 * 1.1) << name << " " << j;
  }
  // 4 connections, 6000 requests: spread by request means most consecutive
  // requests on a connection change backend.
  EXPECT_GT(JsonInt(j, "backend_switches"), 3000) << j;
  auto s = Stats();
  EXPECT_GT(s["rematches"], 3000u);
  double applied = s["decision_applied"], late = s["decision_late"];
  std::cout << "[decisions] applied " << applied << " late " << late << " ("
            << 100 * applied / (applied + late) << "% applied)" << std::endl;
  // Issue 3 targets 99%; measured 97-99.85% here, late decisions also at
  // 1,000 req/s (so not only CPU starvation): an open item, see the README.
  EXPECT_GE(applied / (applied + late), 0.95) << "applied " << applied << " late " << late;
  ExpectClean(before);
}

// Stopped (without --pin_dir, so the datapath goes too), rematcher resets
// its pooled connections at the backends instead of leaving them open
// there until the backends' own timeouts (the sockets themselves close
// silently: they are in repair mode).
TEST_F(E2eTest, StoppingResetsThePooledConnections) {
  std::vector<std::set<std::string>> stale;
  for (int i = 0; i < 3; i++) stale.push_back(BackendPeers(i));
  StartLb(Backends(8080), "p2c");
  std::string j = Load(0, {"--connections=4", "--requests=400", "--sizes=100"});
  ASSERT_EQ(JsonInt(j, "ok"), 400) << j;
  for (int i = 0; i < 3; i++) EXPECT_GE(NewPeers(i, stale[i]).size(), 16u) << "backend " << i;
  StopLb();
  EXPECT_NE(Log().find("pooled connections at their backends"), std::string::npos) << Log();
  for (int i = 0; i < 3; i++) {
    std::set<std::string> left;
    for (int k = 0; k < 30; k++) {
      left = NewPeers(i, stale[i]);
      if (left.empty()) break;
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_EQ(left.size(), 0u) << "backend " << i << " still holds e.g. "
                               << (left.empty() ? "" : *left.begin());
  }
}

// The core asks the policy about a client's next request twice (when the
// request starts and again when it is done): a round robin that counted
// both as turns kept a lone client on one of two backends for good. With
// the repeat flagged (RM_REQUEST_REPEAT) every request takes a turn.
TEST_F(E2eTest, RoundRobinTakesTurnsForALoneClient) {
  StartLb(absl::StrCat(tb_->backend_ip(0), ":8080,", tb_->backend_ip(1), ":8080"), "rr");
  std::string j = Load(0, {"--connections=1", "--requests=400", "--mode=open", "--rate=400",
                           "--sizes=100"});
  ASSERT_EQ(JsonInt(j, "ok"), 400) << j;
  auto counts = BackendCounts(j);
  ASSERT_EQ(counts.size(), 2u) << j;
  for (auto& [name, n] : counts) EXPECT_NEAR(n, 200, 10) << name << " " << j;
  auto s = Stats();
  std::cout << "[turns] switches " << JsonInt(j, "backend_switches") << ", decisions applied "
            << s["decision_applied"] << " late " << s["decision_late"] << ", p99 "
            << JsonInt(j, "p99") << " us" << std::endl;
  // Each request whose decision was there in time goes to the other
  // backend than the last; a late one leaves it in place (1-5 of 400 here,
  // 25 in a CI run where the other tests kept both CPUs busy and p99 was
  // 12 ms). A late one also costs the next turn: the client stayed on A,
  // and the turn asked for at its request's start (not a repeat, so the
  // cursor moves on) names A again, which is applied without a switch. So
  // each late decision may take one applied decision's switch with it (a
  // local run under load: 381 applied, 369 switches). Counting the repeat
  // as a turn kept the client in place at every applied decision instead.
  const int64_t applied = s["decision_applied"];
  const int64_t late = s["decision_late"];
  EXPECT_GE(applied, 200) << "decisions mostly late: the test says nothing";
  EXPECT_GE(JsonInt(j, "backend_switches"), applied - late - 5) << j;
}

// A policy's pick whose backend has no pooled connection to give (none
// idle, its pool at --max_conns_per_backend) keeps the client where it is
// (policy_pick_full) rather than becoming a decision the datapath can only
// skip. Before, such decisions counted as load to come on the full backend
// and rr kept them when asked again at the request's end: under overload
// every decision of stress_test's 2,000 clients came to name one full
// backend and rematching all but stopped. Here 4 clients fill two pools of
// 2 exactly, so every rr turn to the other backend is such a pick: half of
// the requests. Without the rule, all of those were skipped rematches.
TEST_F(E2eTest, RoundRobinPickOfAFullBackendKeepsTheClientInPlace) {
  StartLb(absl::StrCat(tb_->backend_ip(0), ":8080,", tb_->backend_ip(1), ":8080"), "rr",
          {"--max_conns_per_backend=2", "--idle_release_ms=0"}, /*pool=*/2);
  std::string j = Load(0, {"--connections=4", "--requests=2000", "--mode=closed", "--sizes=100"});
  ASSERT_EQ(JsonInt(j, "ok"), 2000) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  auto s = Stats();
  std::cout << "[full] policy_pick_full " << s["policy_pick_full"] << " rematch_skipped_no_idle "
            << s["rematch_skipped_no_idle"] << " rematches " << s["rematches"]
            << " first_request_elsewhere " << s["first_request_elsewhere"] << std::endl;
  // Each client's first request may land where the others left no room
  // (first_request_elsewhere) and moves; after that no connection is free.
  EXPECT_GE(s["policy_pick_full"], 800u);
  EXPECT_LE(s["rematch_skipped_no_idle"], 20u);
  EXPECT_LE(s["rematches"], 20u);
  EXPECT_EQ(s["drop_no_pool"], 0u);
  EXPECT_EQ(s["tx_rst"], 0u);
}

// A move is not free (an owed ACK, a pooled connection swapped), so p2c
// keeps a client where it is on a tie (stick=0), and the decision asked at
// a request's start does not count that request against its own backend
// (it will be answered before the next one goes out). A lone client on
// three idle, equal backends therefore stays put, even when its next
// request comes before the core has decided again at the response's end
// (closed loop). With stick=-1 (ties broken afresh) this test saw 369
// moves in 3,000 requests; it allows 30.
TEST_F(E2eTest, P2cKeepsALoneClientOnEqualBackends) {
  StartLb(Backends(8080), "p2c");
  std::string j = Load(0, {"--connections=1", "--requests=3000", "--mode=closed", "--sizes=100"});
  ASSERT_EQ(JsonInt(j, "ok"), 3000) << j;
  EXPECT_LE(JsonInt(j, "backend_switches"), 30) << j;
  auto s = Stats();
  EXPECT_LE(s["rematches"], 30u);
  EXPECT_LE(s["pool_acks_sent"], 30u);
}

// Under a saturating closed loop the core stops being woken per event and
// reads the ring on its own clock (--poll_us); when the load stops it goes
// back to a wakeup per event. Both halves must keep decisions on time: a
// core that never polled, or that kept the datapath's wakeups off after
// the load (each event then waits for the 100 ms timeout), fails here.
TEST_F(E2eTest, CorePollsUnderLoadAndIsWokenAgainAfter) {
  // stick=-1, as when the 0.8 below was measured: with the default (ties
  // stay) 72-92% of decisions were on time in 6 runs against 84-96% in 3
  // with stick=-1; a client that stays comes back sooner (no pooled
  // connection swapped) is the likely reason, not isolated.
  StartLb(Backends(8080), "p2c", {"--policy_args=stick=-1"});
  Snap before = TakeNstat();
  auto s0 = Stats();
  std::string j = Load(0, {"--connections=16", "--requests=40000", "--sizes=0,100,2000"});
  ASSERT_EQ(JsonInt(j, "ok"), 40000) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  auto s1 = Stats();
  std::cout << "[poll] under load: polls " << s1["core_ring_polls"] - s0["core_ring_polls"]
            << ", wakeups " << s1["core_ring_wakeups"] - s0["core_ring_wakeups"]
            << ", entries " << s1["core_poll_entries"] - s0["core_poll_entries"] << std::endl;
  EXPECT_GE(s1["core_poll_entries"], s0["core_poll_entries"] + 1);
  // 40,000 requests and their 80,000+ events, read in far fewer wakeups.
  EXPECT_GT(s1["core_ring_polls"], s0["core_ring_polls"] + 100);
  EXPECT_LT(s1["core_ring_wakeups"] - s0["core_ring_wakeups"], 20000u);
  double applied = s1["decision_applied"] - s0["decision_applied"];
  double late = s1["decision_late"] - s0["decision_late"];
  std::cout << "[poll] under load: decisions applied " << applied << " late " << late << std::endl;
  // The test backend answers at once, so a client's next request follows
  // its last within a few hundred microseconds: measured 93% applied with
  // --poll_us=0, 72-96% polling at 100-200 us, on a shared two-core host
  // that also runs the clients and backends (one CI run: 79.7%). How many
  // are on time under full load is a benchmark figure (README, decision
  // rates); what this asserts is that a polling core keeps deciding: one
  // that stopped would be near 0.
  EXPECT_GE(applied / (applied + late), 0.5) << "applied " << applied << " late " << late;
  // Idle: out of polling within a few 10 ms windows.
  auto await_idle = [&] {
    absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline && Stats()["core_polling"] != 0)
      absl::SleepFor(absl::Milliseconds(50));
  };
  await_idle();
  auto s2 = Stats();
  ASSERT_EQ(s2["core_polling"], 0u);
  // A light open loop: every event wakes the core again, and decisions are
  // on time (each request 10 ms after the last on its connection).
  j = Load(1, {"--connections=2", "--requests=400", "--mode=open", "--rate=200", "--sizes=100"});
  ASSERT_EQ(JsonInt(j, "ok"), 400) << j;
  auto s3 = Stats();
  applied = s3["decision_applied"] - s2["decision_applied"];
  late = s3["decision_late"] - s2["decision_late"];
  std::cout << "[poll] light load: decisions applied " << applied << " late " << late
            << ", wakeups " << s3["core_ring_wakeups"] - s2["core_ring_wakeups"] << ", polling "
            << s3["core_polling"] << std::endl;
  EXPECT_EQ(s3["core_polling"], 0u);
  EXPECT_GE(s3["core_ring_wakeups"] - s2["core_ring_wakeups"], 300u);
  EXPECT_GE(applied / (applied + late), 0.99) << "applied " << applied << " late " << late;
  // A busy open loop whose clients come back milliseconds later (64
  // connections at 8,000 req/s): polling, and since no decision comes late
  // the interval stretches towards --poll_max_us (1 ms): far fewer reads
  // than one per --poll_us (200 us), and decisions still on time.
  const double kSeconds = 3;
  j = Load(1, {"--connections=64", "--mode=open", "--rate=8000",
               absl::StrCat("--requests=", static_cast<int>(8000 * kSeconds)), "--sizes=0,100"});
  ASSERT_EQ(JsonInt(j, "ok"), 8000 * kSeconds) << j;
  auto s4 = Stats();
  const uint64_t polls = s4["core_ring_polls"] - s3["core_ring_polls"];
  applied = s4["decision_applied"] - s3["decision_applied"];
  late = s4["decision_late"] - s3["decision_late"];
  std::cout << "[poll] open loop 8k req/s: polls " << polls << ", wakeups "
            << s4["core_ring_wakeups"] - s3["core_ring_wakeups"] << ", interval now "
            << s4["core_poll_interval_us"] << " us, decisions applied " << applied << " late "
            << late << std::endl;
  EXPECT_GE(s4["core_poll_entries"], s3["core_poll_entries"] + 1);
  EXPECT_LT(polls, kSeconds * 1e6 / 200 / 2) << "the interval did not stretch";
  EXPECT_GE(applied / (applied + late), 0.99) << "applied " << applied << " late " << late;
  ExpectClean(before);
}

TEST_F(E2eTest, ThousandsOfRematchesMixedSizesByteExact) {
  // Ties broken afresh (stick=-1): as many moves as p2c makes, for the
  // splice's sake; the default keeps a client in place on a tie.
  StartLb(Backends(8080), "p2c", {"--policy_args=stick=-1"});
  Snap before = TakeNstat();
  std::string j = Load(1, {"--connections=8", "--requests=15000",
                           "--sizes=0,100,10000,300000", "--upload_sizes=0,0,5000,100000"});
  EXPECT_EQ(JsonInt(j, "ok"), 15000) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
  auto s = Stats();
  EXPECT_GT(s["rematches"], 2000u);
  EXPECT_EQ(s["drop_malformed"], 0u);
  EXPECT_EQ(s["pool_dead"], 0u);
  // Every response was acknowledged: unanswered and outstanding are back to
  // 0 on every backend (accounted to the backend that served it, never
  // underflowing).
  std::string b = Ctl("backends");
  int rows = 0;
  for (const std::string& line : std::vector<std::string>(absl::StrSplit(b, '\n'))) {
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(" [0-9]+/[0-9]+ +([0-9]+) +([0-9]+) "))) continue;
    rows++;
    EXPECT_EQ(m[1].str(), "0") << b;
    EXPECT_EQ(m[2].str(), "0") << b;
  }
  EXPECT_EQ(rows, 3) << b;
  ExpectClean(before);
}

TEST_F(E2eTest, PipeliningClientStaysCorrect) {
  StartLb(Backends(8080), "rr");
  Snap before = TakeNstat();
  // Batches of 4 requests written back to back, the next batch after all
  // responses: boundaries fall between batches, and every byte must match.
  std::string j = Load(0, {"--connections=4", "--requests=4000", "--pipeline=4",
                           "--sizes=100,20000"});
  EXPECT_EQ(JsonInt(j, "ok"), 4000) << j;
  EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  ExpectClean(before);
}

// HTTP/1.1 pipelining as client libraries do it: the first two requests
// go out in one segment, and each next one as a response completes, so a
// response is always owed when the next request leaves, and every request
// boundary after the first looks clean at layer 4. One request in three
// makes the backend wait 3 ms, so the owed response often comes after the
// next request. rr would move the client at every request: its owed
// responses would then arrive on a pooled connection it left, for the next
// client that takes it. Before the framing check (the datapath reads a
// request's HTTP head), clients beside such a one got its responses
// ("verify failure (seed)") and the pipelining client hung waiting.
TEST_F(E2eTest, PipeliningClientsNeverGetAnotherClientsResponse) {
  StartLb(Backends(8080), "rr");
  Snap before = TakeNstat();
  BgLoad victim = StartLoad(1, {"--connections=8", "--duration_s=5", "--sizes=100,2000"});
  std::string j = Load(0, {"--connections=4", "--requests=1500", "--pipeline=2",
                           "--pipeline_refill", "--delay_us=3000", "--delay_one_in=3",
                           "--sizes=100,2000", "--timeout_ms=3000"});
  std::string v = WaitLoad(victim);
  EXPECT_EQ(JsonInt(j, "ok"), 1500) << j;
  EXPECT_GT(JsonInt(v, "ok"), 1000) << v;
  for (const std::string& r : {j, v}) {
    EXPECT_EQ(JsonInt(r, "errors"), 0) << r;
    EXPECT_EQ(JsonInt(r, "verify_failures"), 0) << r;
  }
  auto s = Stats();
  std::cout << "[framing] pinned_framing " << s["pinned_framing"] << ", pipelined "
            << s["pipelined"] << ", rematches " << s["rematches"] << std::endl;
  EXPECT_GE(s["pinned_framing"], 4u) << "each pipelining connection pinned on its framing";
  EXPECT_GT(s["rematches"], 1000u) << "the other clients still move";
  ExpectClean(before);
}

// A client that writes its next request mid-response: the backend pauses
// each 60 kB response after 20 kB (a response generated as it goes), and
// the client, having read and acknowledged those 20 kB, writes ahead. At
// layer 4 that is a clean boundary (everything sent both ways is
// acknowledged), and rr would move the client: the response's other 40 kB
// would then go to the pooled connection's next client. Before the
// datapath read response heads, that client hung or got bytes not its own
// ("verify failure"), and so did the clients beside it.
TEST_F(E2eTest, WritingAheadMidResponseNeverMovesTheRestElsewhere) {
  StartLb(Backends(8080), "rr");
  Snap before = TakeNstat();
  BgLoad victim = StartLoad(1, {"--connections=8", "--duration_s=5", "--sizes=100,2000"});
  std::string j = Load(0, {"--connections=4", "--requests=400", "--pipeline=2",
                           "--pipeline_refill", "--write_early_at=20000", "--pause_at=20000",
                           "--pause_us=5000", "--sizes=60000", "--timeout_ms=3000"});
  std::string v = WaitLoad(victim);
  EXPECT_EQ(JsonInt(j, "ok"), 400) << j;
  EXPECT_GT(JsonInt(v, "ok"), 1000) << v;
  for (const std::string& r : {j, v}) {
    EXPECT_EQ(JsonInt(r, "errors"), 0) << r;
    EXPECT_EQ(JsonInt(r, "verify_failures"), 0) << r;
  }
  auto s = Stats();
  std::cout << "[framing] pinned_response_owed " << s["pinned_response_owed"] << ", pipelined "
            << s["pipelined"] << ", rematches " << s["rematches"] << std::endl;
  EXPECT_GE(s["pinned_response_owed"], 1u) << "a connection writing ahead pinned";
  EXPECT_GT(s["rematches"], 1000u) << "the other clients still move";
  ExpectClean(before);
}

// A client that stops reading in the middle of a large response: its
// receive buffer fills, it advertises a zero window, and nothing moves but
// the backend's window probes, so the client looks idle. Handing its pooled
// connection back then (--idle_release_ms) would strand the rest of the
// response: the backend sends it as soon as anything reopens the window
// (the hand-back's verification probe did), onto a connection no client
// owns. The client stays on it until the response is done: by its framing
// when the request was read (a short head), and, when it was not (a head
// over 1 KiB, left to the layer-4 rules), because its window is closed.
// (Were it handed back, verification now opens the window and waits for a
// second answer, so the backend's rest would give it back: the packet test
// VerifyWaitsForASecondAnswerFromABackendHeldBack.)
// Each reads 1 MB after pausing 2 s, with a 200 ms idle release.
TEST_F(E2eTest, SlowReaderIsNeverHandedOffMidResponse) {
  StartLb(Backends(8080), "rr", {"--idle_release_ms=200"});
  const std::string pad(1500, 'p');
  for (bool framed : {true, false}) {
    SCOPED_TRACE(framed ? "framed request" : "request left to the layer-4 rules");
    auto s0 = Stats();
    absl::StatusOr<int> fd = testbed::SocketInNetns(tb_->client_ns(0), AF_INET, SOCK_STREAM);
    ASSERT_TRUE(fd.ok()) << fd.status();
    int rcvbuf = 8192;
    setsockopt(*fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    timeval tv{10, 0};
    setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const sockaddr_in vip = Vip();
    ASSERT_EQ(connect(*fd, reinterpret_cast<const sockaddr*>(&vip), sizeof(vip)), 0)
        << strerror(errno);
    const size_t size = 1000000;
    std::string req = absl::StrCat("GET /r?size=", size, "&seed=77 HTTP/1.1\r\nHost: t\r\n",
                                   framed ? "" : "X-Pad: " + pad + "\r\n", "\r\n");
    ASSERT_EQ(send(*fd, req.data(), req.size(), 0), ssize_t(req.size()));
    absl::SleepFor(absl::Seconds(2));
    std::string got;
    char buf[65536];
    size_t want = 0;
    while (want == 0 || got.size() < want) {
      ssize_t n = recv(*fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      got.append(buf, n);
      size_t he = got.find("\r\n\r\n");
      if (want == 0 && he != std::string::npos) want = he + 4 + size;
    }
    close(*fd);
    ASSERT_NE(want, 0u) << "no response head";
    auto s1 = Stats();
    std::cout << "[slow reader] " << (framed ? "framed" : "unframed") << ": got "
              << got.size() << " of " << want << " bytes; pool_verify "
              << s1["pool_verify"] - s0["pool_verify"] << " pool_reattached "
              << s1["pool_reattached"] - s0["pool_reattached"] << " pool_dead "
              << s1["pool_dead"] - s0["pool_dead"] << std::endl;
    std::string moved;
    for (auto& [k, v] : s1)
      if (v != s0[k]) absl::StrAppend(&moved, " ", k, "+", v - s0[k]);
    ASSERT_EQ(got.size(), want) << "the response stalled; counters moved:" << moved;
    std::string body(size, 0);
    FillBody(77, 0, body.data(), size);
    EXPECT_TRUE(got.compare(want - size, size, body) == 0) << "body differs";
    EXPECT_EQ(s1["pool_dead"], s0["pool_dead"]) << "a pooled connection died";
    // Not handed back at all (verification would give it back: 1 here
    // without the window rule).
    EXPECT_EQ(s1["pool_reattached"], s0["pool_reattached"]) << "handed back mid-response";
  }
}

// A pooled connection's backend keeps the send window its last client
// advertised: megabytes, after a client that downloads. Linux takes a
// smaller window only from a newer segment, and a new client's request is
// not one (same sequence number, nothing new acknowledged), so unless the
// LB shrinks the window when a client is done with the connection, the
// backend bursts its congestion window into the new client's ~64 KB and
// waits out its retransmission timer for the excess.
TEST_F(E2eTest, ANewClientsFirstLargeResponseFitsItsWindow) {
  StartLb(Backends(8080), "rr", {}, /*pool=*/2);
  auto c0 = [&] { return *tb_->Nstat(tb_->client_ns(0)); };
  auto backends = [&] {
    std::vector<NstatCounters> v;
    for (int i = 0; i < 3; i++) v.push_back(*tb_->Nstat(tb_->backend_ns(i)));
    return v;
  };
  NstatCounters c0_before = c0();
  std::vector<NstatCounters> b_before = backends();
  absl::Duration slowest;
  int fetched = 0;
  for (int round = 0; round < 3; round++) {
    // Another client grows its window (and the pooled connections'
    // congestion windows) on every backend.
    std::string warm = Load(1, {"--connections=4", "--duration_s=1", "--sizes=0,100,10000,300000,1m",
                                absl::StrCat("--seed=", 40 + round)});
    ASSERT_GT(JsonInt(warm, "ok"), 0) << warm;
    for (int i = 0; i < 6; i++) {
      const absl::Duration took = FetchOnNewConnection(0, 300000, 31);
      ASSERT_NE(took, absl::InfiniteDuration());
      slowest = std::max(slowest, took);
      fetched++;
    }
  }
  auto d = testbed::NstatDiff(c0_before, c0());
  std::vector<NstatCounters> b_after = backends();
  int64_t timeouts = 0;
  for (int i = 0; i < 3; i++) {
    auto bd = testbed::NstatDiff(b_before[i], b_after[i]);
    timeouts += bd.count("TcpExtTCPTimeouts") ? bd["TcpExtTCPTimeouts"] : 0;
  }
  const int64_t beyond = d.count("TcpExtBeyondWindow") ? d["TcpExtBeyondWindow"] : 0;
  std::cout << "[first response] " << fetched << " new connections, 300 KB each: slowest "
            << absl::FormatDuration(slowest) << ", client BeyondWindow " << beyond
            << ", backend TCPTimeouts " << timeouts << std::endl;
  // Nothing the backend sent fell outside the client's window ...
  EXPECT_EQ(beyond, 0) << "segments beyond the new client's window";
  // ... so no response waited out a retransmission timer (200 ms at least);
  // going direct, the slowest of these takes ~40 ms here.
  EXPECT_LT(slowest, absl::Milliseconds(200));
}

// The same after an unframed response, whose connection is verified before
// reuse: verification has to open the window (a backend held back by it
// must show what it owes), so its first window update is a zero one and the
// next ones a modest 32 KiB. Without the zero one, the window the last
// client left stays: a larger one than 32 KiB is not taken at the same
// sequence number.
TEST_F(E2eTest, ANewClientsFirstLargeResponseFitsItsWindowAfterVerification) {
  // One pooled connection, never more: each client takes the one the
  // other left.
  StartLb(absl::StrCat(tb_->backend_ip(0), ":8080"), "rr", {"--max_conns_per_backend=1"},
          /*pool=*/1);
  NstatCounters c0_before = *tb_->Nstat(tb_->client_ns(0));
  absl::Duration slowest;
  for (int round = 0; round < 4; round++) {
    auto s0 = Stats();
    // client 1 grows its window on the one pooled connection, then closes.
    ASSERT_NE(FetchOnNewConnection(1, 4 << 20, 32, /*framed=*/false), absl::InfiniteDuration());
    // Verified (two probe answers ~10 ms apart) and idle again.
    absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (Stats()["pool_verified"] == s0["pool_verified"] && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(10));
    ASSERT_GT(Stats()["pool_verified"], s0["pool_verified"]) << "not verified";
    const absl::Duration t = FetchOnNewConnection(0, 300000, 32);
    ASSERT_NE(t, absl::InfiniteDuration());
    slowest = std::max(slowest, t);
    auto s1 = Stats();
    std::string moved;
    for (auto& [k, v] : s1)
      if (v != s0[k] && k.rfind("pool_", 0) == 0) absl::StrAppend(&moved, " ", k, "+", v - s0[k]);
    std::cout << "[round " << round << "]" << moved << std::endl;
    EXPECT_EQ(s1["pool_established"], s0["pool_established"]) << "a new pooled connection";
  }
  auto d = testbed::NstatDiff(c0_before, *tb_->Nstat(tb_->client_ns(0)));
  const int64_t beyond = d.count("TcpExtBeyondWindow") ? d["TcpExtBeyondWindow"] : 0;
  std::cout << "[first response after verification] slowest " << absl::FormatDuration(slowest)
            << ", client BeyondWindow " << beyond << std::endl;
  EXPECT_EQ(beyond, 0) << "segments beyond the new client's window";
  EXPECT_LT(slowest, absl::Milliseconds(200));
}

// The same when a client moves at a layer-4 boundary (its response
// unframed) with no ACK owed: its last ACK, with its own window, had
// reached the backend before its next request, which went elsewhere. No
// owed ACK (which acknowledges something new) can lower that window, so
// the datapath parks the connection (RM_P_PARKED) and the core sends a zero
// window, then one unit, before queueing it. Without that the next client
// inherits megabytes of window: its first 300 KB took 200+ ms (the
// backend's retransmission timer) and the client dropped segments beyond
// its window.
TEST_F(E2eTest, ANewClientsFirstLargeResponseFitsItsWindowAfterAnUnframedMove) {
  // One pooled connection per backend: the new client takes the one the
  // mover left.
  StartLb(absl::StrCat(tb_->backend_ip(0), ":8080,", tb_->backend_ip(1), ":8080"), "rr",
          {"--max_conns_per_backend=1"}, /*pool=*/1);
  // The send window the backend of the connection that served the most
  // (the pooled one client 1 downloaded on; -1 if none), as its kernel has
  // it (ss).
  auto pooled_snd_wnd = [&](int backend) -> int64_t {
    auto r = tb_->Run(tb_->backend_ns(backend), {"ss", "-tin", "state", "established"});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return -1;
    int64_t best_sent = -1, wnd = -1;
    for (const e2e::SsTcpInfo& i : e2e::ParseSsTcpInfo(*r)) {
      if (i.bytes_sent > best_sent) {
        best_sent = i.bytes_sent;
        wnd = i.snd_wnd;
      }
    }
    return wnd;
  };
  NstatCounters c0_before = *tb_->Nstat(tb_->client_ns(0));
  const std::string pad = "X-Pad: " + std::string(1500, 'p') + "\r\n";  // unframed
  auto get = [&](int fd, size_t size, uint64_t seed) {
    std::string req = absl::StrCat("GET /r?size=", size, "&seed=", seed,
                                   " HTTP/1.1\r\nHost: t\r\n", pad, "\r\n");
    ASSERT_TRUE(backend::testutil::SendAll(fd, req).ok());
    std::string rest;
    auto r = backend::testutil::ReadResponse(fd, &rest, /*timeout_s=*/10);
    ASSERT_TRUE(r.ok()) << r.status();
    std::string body(size, 0);
    FillBody(seed, 0, body.data(), size);
    EXPECT_TRUE(r->body == body) << "body differs";
  };
  auto backends = [&] {
    std::vector<NstatCounters> v;
    for (int i = 0; i < 2; i++) v.push_back(*tb_->Nstat(tb_->backend_ns(i)));
    return v;
  };
  absl::Duration slowest;
  int64_t retrans = 0, max_wnd = 0;
  for (int round = 0; round < 4; round++) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    auto s0 = Stats();
    const int fd = ConnectIn(tb_->client_ns(1), Vip());
    ASSERT_GE(fd, 0);
    // Client 1 grows its window on one backend's connection ...
    get(fd, 4 << 20, 50 + round);
    if (HasFatalFailure()) return;
    // ... its last ACK goes out on its own (delayed ACKs wait 40 ms at
    // most), and its next request is sent to the other backend.
    absl::SleepFor(absl::Milliseconds(150));
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len), 0);
    const std::string port = absl::StrCat(":", ntohs(local.sin_port), " ");
    std::string id, backend;
    for (absl::string_view row : absl::StrSplit(Ctl("clients"), '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(row, ' ', absl::SkipEmpty());
      if (f.size() >= 4 && absl::StrContains(absl::StrCat(f[1], " "), port)) {
        id = f[0];
        backend = f[3];
      }
    }
    ASSERT_TRUE(backend == "0" || backend == "1") << Ctl("clients");
    const std::string other = backend == "0" ? "1" : "0";
    ASSERT_EQ(Ctl(absl::StrCat("rematch ", id, " ", other)),
              "ok (applied at the client's next request)\n");
    get(fd, 100, 60 + round);
    if (HasFatalFailure()) return;
    // Parked, shrunk and queued.
    absl::Time deadline = absl::Now() + absl::Seconds(2);
    while (Stats()["pool_parked_shrunk"] == s0["pool_parked_shrunk"] && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(5));
    auto s1 = Stats();
    EXPECT_EQ(s1["rematches"] - s0["rematches"], 1u);
    EXPECT_EQ(s1["pool_parked"] - s0["pool_parked"], 1u) << "no ACK owed: parked";
    EXPECT_EQ(s1["pool_parked_shrunk"] - s0["pool_parked_shrunk"], 1u);
    // The backend's send window on it: one unit of the LB's scale, not the
    // megabytes client 1 offered.
    const int64_t wnd = pooled_snd_wnd(backend == "0" ? 0 : 1);
    EXPECT_GE(wnd, 0);
    EXPECT_LE(wnd, 16 << 10) << "the backend kept client 1's window for whoever comes next";
    max_wnd = std::max(max_wnd, wnd);
    // Client 0's first request finds only that connection idle (client 1
    // holds the other backend's one). What its backend retransmits is what
    // it sent past client 0's window: lost there, or in the veth ring a
    // burst that size overflows.
    const std::vector<NstatCounters> b_before = backends();
    const absl::Duration t = FetchOnNewConnection(0, 300000, 70 + round);
    ASSERT_NE(t, absl::InfiniteDuration());
    slowest = std::max(slowest, t);
    const std::vector<NstatCounters> b_after = backends();
    int64_t re = 0;
    for (int i = 0; i < 2; i++) {
      auto bd = testbed::NstatDiff(b_before[i], b_after[i]);
      re += bd.count("TcpRetransSegs") ? bd["TcpRetransSegs"] : 0;
    }
    retrans += re;
    close(fd);
    // Client 1's close hands its connection back through verification.
    deadline = absl::Now() + absl::Seconds(5);
    while (Stats()["pool_verified"] == s1["pool_verified"] && absl::Now() < deadline)
      absl::SleepFor(absl::Milliseconds(10));
    auto s2 = Stats();
    std::string moved;
    for (auto& [k, v] : s2)
      if (v != s0[k] && k.rfind("pool_", 0) == 0) absl::StrAppend(&moved, " ", k, "+", v - s0[k]);
    std::cout << "[round " << round << "] client 1 on backend " << backend << " -> " << other
              << " (backend's send window then " << wnd << " bytes), client 0 took "
              << absl::FormatDuration(t) << ", backend retransmitted " << re
              << ";" << moved << std::endl;
    EXPECT_EQ(s2["pool_established"], s0["pool_established"]) << "a new pooled connection";
  }
  auto d = testbed::NstatDiff(c0_before, *tb_->Nstat(tb_->client_ns(0)));
  const int64_t beyond = d.count("TcpExtBeyondWindow") ? d["TcpExtBeyondWindow"] : 0;
  std::cout << "[first response after an unframed move] slowest " << absl::FormatDuration(slowest)
            << ", client BeyondWindow " << beyond << ", backends retransmitted " << retrans
            << ", largest window left " << max_wnd << " bytes" << std::endl;
  EXPECT_EQ(beyond, 0) << "segments beyond the new client's window";
  EXPECT_LT(slowest, absl::Milliseconds(200));
}

// Many clients at once on unframed exchanges (request heads past the 1 KiB
// head reader), moving at every boundary round robin: the moves with no ACK
// owed park their old connection, and every parked one is shrunk and
// queued by the core (none left parked, none lost: pools whole and idle
// afterwards), with every body byte exact. `lost_every`: every Nth park
// event is ignored (--test_skip_park_every), as a lost one would be, and
// the pool scan must find those connections, with no idle timeout set
// (the scan then runs every second).
void E2eTest::RunUnframedMoves(uint32_t lost_every) {
  std::vector<std::string> flags;
  if (lost_every)
    flags = {absl::StrCat("--test_skip_park_every=", lost_every), "--pool_idle_timeout_ms=0"};
  StartLb(Backends(8080), "rr", flags, /*pool=*/8);
  Snap before = TakeNstat();
  auto s0 = Stats();
  std::string j = Load(1, {"--connections=16", "--duration_s=3", "--pad_head=1500",
                           "--sizes=0,1000,100000,300000", "--seed=91"});
  ASSERT_GT(JsonInt(j, "ok"), 500) << j;
  EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  // Settled: the clients closed, their connections verified and idle.
  size_t live = 0;
  std::string b = ExpectPoolsIdle(&live);
  EXPECT_GE(live, 24u) << b;
  auto s = Stats();
  const uint64_t parked = s["pool_parked"] - s0["pool_parked"];
  const uint64_t shrunk = s["pool_parked_shrunk"] - s0["pool_parked_shrunk"];
  const uint64_t late = s["pool_parked_by_scan"] - s0["pool_parked_by_scan"];
  std::cout << "[unframed] " << JsonInt(j, "ok") << " requests, " << s["rematches"] - s0["rematches"]
            << " rematches, " << parked << " parked, " << shrunk << " shrunk and queued (" << late
            << " by the scan, " << s["pool_parked_reread"] - s0["pool_parked_reread"]
            << " sent again from a locked copy); pool_dead " << s["pool_dead"] - s0["pool_dead"] << "\n"
            << b << std::endl;
  EXPECT_GT(parked, 0u) << "no move parked its connection";
  EXPECT_EQ(shrunk, parked) << "a parked connection was never queued, or queued twice";
  if (lost_every) {
    // About one in lost_every, found by the scan.
    EXPECT_GE(late, parked / lost_every / 2) << "the scan did not find the skipped ones";
  } else {
    EXPECT_EQ(late, 0u) << "an event was lost (or the scan took one still to come)";
  }
  EXPECT_EQ(s["pool_dead"], s0["pool_dead"]);
  ExpectClean(before);
}

// A client that writes its next request while the backend is held
// mid-response (Redis-style pipelining, here over HTTP with heads the head
// reader cannot frame): it stops reading a 2 MB response, its window
// closes and the backend stops mid-write with everything it sent
// acknowledged, so the moment looks like a layer-4 boundary. Its last
// segment is the window probe, which Linux marks with PSH, but the
// client's window is shut, so the datapath pins the client where it is
// (pinned_response_held) instead of moving it, and both responses arrive
// whole, in order. Moved (before
// RM_CF_RPUSHED), the rest of the first response was left on a pooled
// connection the client had left: it got the second response in its
// place.
TEST_F(E2eTest, AClientWritingAheadOfAResponseHeldMidWriteStaysPut) {
  StartLb(absl::StrCat(tb_->backend_ip(0), ":8080,", tb_->backend_ip(1), ":8080"), "rr");
  const std::string pad = "X-Pad: " + std::string(1500, 'p') + "\r\n";  // unframed
  auto request = [&](size_t size, uint64_t seed) {
    return absl::StrCat("GET /r?size=", size, "&seed=", seed, " HTTP/1.1\r\nHost: t\r\n", pad,
                        "\r\n");
  };
  auto expect_body = [](const backend::testutil::HttpResponse& r, size_t size, uint64_t seed) {
    std::string body(size, 0);
    FillBody(seed, 0, body.data(), size);
    EXPECT_EQ(r.body.size(), size);
    EXPECT_TRUE(r.body == body) << "body of seed " << seed << " differs";
  };
  auto s0 = Stats();
  constexpr int kRounds = 4;
  for (int round = 0; round < kRounds; round++) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const int fd = ConnectIn(tb_->client_ns(0), Vip());
    ASSERT_GE(fd, 0);
    // A first exchange, read whole: the next request is a turn for rr.
    ASSERT_TRUE(backend::testutil::SendAll(fd, request(1000, 10 + round)).ok());
    std::string rest;
    auto r0 = backend::testutil::ReadResponse(fd, &rest, /*timeout_s=*/10);
    ASSERT_TRUE(r0.ok()) << r0.status();
    expect_body(*r0, 1000, 10 + round);
    // The big one, not read: the client's window closes with everything
    // the backend sent acknowledged, and the backend waits mid-write.
    ASSERT_TRUE(backend::testutil::SendAll(fd, request(2 << 20, 20 + round)).ok());
    absl::SleepFor(absl::Milliseconds(150));
    ASSERT_TRUE(backend::testutil::SendAll(fd, request(3000, 30 + round)).ok());
    auto r1 = backend::testutil::ReadResponse(fd, &rest, /*timeout_s=*/10);
    auto moved = [&] {
      std::string out;
      auto s1 = Stats();
      for (auto& [k, v] : s1)
        if (v != s0[k]) absl::StrAppend(&out, " ", k, "+", v - s0[k]);
      return out;
    };
    ASSERT_TRUE(r1.ok()) << r1.status() << ";" << moved();
    expect_body(*r1, 2 << 20, 20 + round);
    auto r2 = backend::testutil::ReadResponse(fd, &rest, /*timeout_s=*/10);
    ASSERT_TRUE(r2.ok()) << r2.status();
    expect_body(*r2, 3000, 30 + round);
    EXPECT_EQ(r1->Header("x-backend"), r2->Header("x-backend")) << "moved while owed a response";
    close(fd);
  }
  auto s = Stats();
  std::cout << "[write-ahead] pinned_response_held "
            << s["pinned_response_held"] - s0["pinned_response_held"] << ", rematches "
            << s["rematches"] - s0["rematches"] << ", pool_dead " << s["pool_dead"] - s0["pool_dead"]
            << std::endl;
  EXPECT_EQ(s["pinned_response_held"] - s0["pinned_response_held"], uint64_t(kRounds));
  EXPECT_EQ(s["pool_dead"], s0["pool_dead"]);
}

TEST_F(E2eTest, UnframedMovesUnderLoadParkAndLoseNoConnection) { RunUnframedMoves(0); }

TEST_F(E2eTest, ParkedConnectionsWhoseEventIsLostAreFoundByThePoolScan) {
  RunUnframedMoves(/*lost_every=*/7);
}

TEST_F(E2eTest, RemovingABackendUnderLoadLosesNoRequest) {
  const std::set<std::string> stale = BackendPeers(2);
  StartLb(Backends(8080), "rr");
  BgLoad load = StartLoad(0, {"--connections=6", "--duration_s=6", "--sizes=100,5000"});
  ASSERT_TRUE(load.proc.ok());
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(Ctl("remove 2"), "ok\n");
  auto before_counts = Stats();
  std::string j = WaitLoad(load);
  EXPECT_GT(JsonInt(j, "ok"), 1000) << j;
  EXPECT_EQ(JsonInt(j, "errors"), 0) << j;
  EXPECT_EQ(JsonInt(j, "verify_failures"), 0) << j;
  auto counts = BackendCounts(j);
  // Backend 2 served only the first ~2 of 6 seconds.
  EXPECT_LT(counts["b2"], counts["b0"] * 0.6) << j;
  std::string b = Ctl("backends");
  EXPECT_EQ(b.find("198.18.2.3:8080      1      up"), std::string::npos) << b;
  // The removed backend keeps no pooled connection: the idle ones closed
  // at the removal, the busy ones once their clients moved on (not after
  // --pool_idle_timeout_ms, 60 s).
  std::set<std::string> left;
  for (int i = 0; i < 50; i++) {
    left = NewPeers(2, stale);
    if (left.empty()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(left.size(), 0u) << "connections still open on the removed backend, e.g. "
                             << (left.empty() ? "" : *left.begin()) << "\n" << Ctl("backends");
  EXPECT_NE(Log().find("idle pooled connections closed"), std::string::npos) << Log();
}

}  // namespace
}  // namespace rematcher
