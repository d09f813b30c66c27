// End to end tests of the loadgen binary against the real backend binary
// (and one in-test server) over loopback.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "testing/backend/body.h"
#include "testing/backend/http_head.h"
#include "testing/backend/test_util.h"
#include "testing/loadgen/loadgen.h"

namespace rematcher::loadgen {
namespace {

using backend::testutil::BackendProcess;
using backend::testutil::CommandResult;
using backend::testutil::RunCommand;
using backend::testutil::RunfilePath;

// The number after "key": in loadgen's JSON (keys are unique in it).
double JsonNumber(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  size_t p = json.find(needle);
  if (p == std::string::npos) {
    ADD_FAILURE() << "no " << key << " in " << json;
    return -1;
  }
  p += needle.size();
  size_t e = json.find_first_of(",}", p);
  double v = -1;
  EXPECT_TRUE(absl::SimpleAtod(json.substr(p, e - p), &v)) << json;
  return v;
}

struct LoadgenRun {
  int exit_code;
  std::string json;
  std::string log;
};

LoadgenRun RunLoadgen(const std::string& target, std::vector<std::string> flags,
                      double timeout_s = 60) {
  std::vector<std::string> argv = {RunfilePath("testing/loadgen/loadgen"),
                                   "--target=" + target, "--json"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  absl::StatusOr<CommandResult> r = RunCommand(argv, timeout_s);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {-1, "", ""};
  return {r->exit_code, r->stdout_text, r->stderr_text};
}

class LoadgenTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> flags = {}) {
    flags.push_back("--name=b1");
    ASSERT_TRUE(backend_.Start(flags).ok());
  }
  BackendProcess backend_;
};

TEST_F(LoadgenTest, SmallResponsesAllVerified) {
  Start({"--threads=2"});
  LoadgenRun r = RunLoadgen(backend_.target(),
                            {"--requests=5000", "--connections=8", "--threads=2",
                             "--sizes=0,1,100,10000"});
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "requests"), 5000);
  EXPECT_EQ(JsonNumber(r.json, "ok"), 5000);
  EXPECT_EQ(JsonNumber(r.json, "errors"), 0);
  EXPECT_EQ(JsonNumber(r.json, "verify_failures"), 0);
  EXPECT_EQ(JsonNumber(r.json, "b1"), 5000);
  EXPECT_EQ(JsonNumber(r.json, "backend_switches"), 0);
  EXPECT_EQ(JsonNumber(r.json, "connections_opened"), 8);
  EXPECT_GT(JsonNumber(r.json, "rps"), 0);
  EXPECT_GT(JsonNumber(r.json, "p50"), 0);
  EXPECT_LE(JsonNumber(r.json, "p50"), JsonNumber(r.json, "p99"));
  EXPECT_LE(JsonNumber(r.json, "p99"), JsonNumber(r.json, "max"));
}

TEST_F(LoadgenTest, LargeResponsesAndEightMiBUploads) {
  Start();
  LoadgenRun r = RunLoadgen(backend_.target(),
                            {"--requests=24", "--connections=3", "--sizes=1m,8m",
                             "--upload_sizes=0,1,8m"});
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "ok"), 24);
  EXPECT_EQ(JsonNumber(r.json, "verify_failures"), 0);
  EXPECT_GT(JsonNumber(r.json, "bytes_received"), 24.0 * (1 << 20));
}

TEST_F(LoadgenTest, PipeliningWithServerClosingEveryFewRequests) {
  // Requests pipelined past a "Connection: close" are resent, not lost.
  Start({"--max_requests_per_conn=5"});
  LoadgenRun r = RunLoadgen(backend_.target(),
                            {"--requests=1000", "--connections=4", "--pipeline=3",
                             "--sizes=0,500"});
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "ok"), 1000);
  EXPECT_GE(JsonNumber(r.json, "connections_opened"), 200);
}

TEST_F(LoadgenTest, CorruptionIsCaught) {
  Start({"--corrupt_every=3"});
  LoadgenRun r = RunLoadgen(backend_.target(),
                            {"--requests=300", "--connections=2", "--sizes=100,5000"});
  EXPECT_EQ(r.exit_code, 1) << r.log << r.json;
  // The backend flips a byte in exactly every third response.
  EXPECT_EQ(JsonNumber(r.json, "verify_failures"), 100);
  EXPECT_EQ(JsonNumber(r.json, "bytes"), 100);
  EXPECT_EQ(JsonNumber(r.json, "ok"), 200);
  EXPECT_EQ(JsonNumber(r.json, "errors"), 0);
  // Without verification nothing is noticed (proves the counter is real).
  LoadgenRun nv = RunLoadgen(backend_.target(), {"--requests=30", "--verify=false",
                                                 "--sizes=100"});
  EXPECT_EQ(nv.exit_code, 0) << nv.log << nv.json;
}

TEST_F(LoadgenTest, OpenLoopCountsQueueingBehindStalls) {
  // Latency runs from the intended send time, so a 150 ms stall shows in p99
  // even though each request is quick once it is served.
  Start({"--stall_every_ms=500", "--stall_ms=150"});
  LoadgenRun r = RunLoadgen(backend_.target(),
                            {"--mode=open", "--rate=1000", "--duration_s=1.5",
                             "--connections=4", "--sizes=100"});
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "requests"), 1500);
  EXPECT_EQ(JsonNumber(r.json, "ok"), 1500);
  EXPECT_GE(JsonNumber(r.json, "p99"), 50000);
  EXPECT_GE(JsonNumber(r.json, "duration_s"), 1.4);
}

TEST_F(LoadgenTest, NewConnectionPerRequest) {
  Start();
  LoadgenRun r = RunLoadgen(backend_.target(),
                            {"--requests=500", "--connections=4",
                             "--new_conn_per_request", "--sizes=10"});
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "ok"), 500);
  EXPECT_GE(JsonNumber(r.json, "connections_opened"), 500);
}

TEST_F(LoadgenTest, RequestsPerConnectionReconnects) {
  Start();
  LoadgenRun r = RunLoadgen(backend_.target(), {"--requests=500", "--connections=4",
                                                "--requests_per_conn=10", "--sizes=10"});
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "ok"), 500);
  EXPECT_EQ(JsonNumber(r.json, "errors"), 0);
  // 10 per connection; the last few connections of the run may carry fewer.
  EXPECT_GE(JsonNumber(r.json, "connections_opened"), 50);
  EXPECT_LE(JsonNumber(r.json, "connections_opened"), 54);
  LoadgenRun both = RunLoadgen(backend_.target(), {"--requests=5", "--requests_per_conn=2",
                                                   "--new_conn_per_request"});
  EXPECT_EQ(both.exit_code, 3) << both.log;
}

TEST_F(LoadgenTest, DeadTargetIsAnErrorAndTheRunEnds) {
  absl::StatusOr<int> port = backend::testutil::UnusedLoopbackPort();
  ASSERT_TRUE(port.ok());
  const std::string target = absl::StrCat("127.0.0.1:", *port);
  LoadgenRun r = RunLoadgen(target, {"--requests=50", "--connections=2"});
  EXPECT_EQ(r.exit_code, 2) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "requests"), 50);
  EXPECT_EQ(JsonNumber(r.json, "connect"), 50);
  LoadgenRun allowed =
      RunLoadgen(target, {"--requests=5", "--connections=1", "--allow_errors"});
  EXPECT_EQ(allowed.exit_code, 0) << allowed.log;
}

TEST_F(LoadgenTest, TimeoutsAndMaxTimeBoundTheRun) {
  Start();
  const auto t0 = std::chrono::steady_clock::now();
  LoadgenRun r = RunLoadgen(
      backend_.target(), {"--duration_s=30", "--max_time_s=1.5", "--connections=2",
                          "--delay_us=400000", "--timeout_ms=200", "--allow_errors"});
  const double secs = std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - t0)
                          .count();
  EXPECT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_LT(secs, 5);
  EXPECT_GT(JsonNumber(r.json, "timeout"), 0);
  EXPECT_EQ(JsonNumber(r.json, "ok"), 0);
}

TEST_F(LoadgenTest, LatencyCsvHasOneRowPerRequest) {
  Start();
  const std::string csv = backend::testutil::TempDir() + "/lat.csv";
  LoadgenRun r = RunLoadgen(backend_.target(), {"--requests=123", "--connections=2",
                                                "--sizes=10", "--latency_csv=" + csv});
  ASSERT_EQ(r.exit_code, 0) << r.log;
  std::ifstream f(csv);
  std::string line;
  int rows = 0;
  std::getline(f, line);
  EXPECT_EQ(line, "index,intended_us,latency_us,size,upload_size,status,outcome,backend,conn");
  std::set<std::string> conns;
  while (std::getline(f, line)) {
    ++rows;
    EXPECT_NE(line.find(",ok,b1,"), std::string::npos) << line;
    conns.insert(line.substr(line.rfind(',') + 1));
  }
  EXPECT_EQ(rows, 123);
  // Each row names the connection it went out on: two of them here.
  EXPECT_EQ(conns.size(), 2u);
  EXPECT_EQ(conns.count("0"), 0u) << "a request sent on no connection";
}

// A listening socket on an ephemeral loopback port (its address in `sa`),
// or -1.
int ListenLoopback(sockaddr_in* sa) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) return -1;
  *sa = sockaddr_in{};
  sa->sin_family = AF_INET;
  sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(*sa);
  if (bind(lfd, reinterpret_cast<sockaddr*>(sa), sizeof(*sa)) != 0 || listen(lfd, 4) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr*>(sa), &len) != 0) {
    close(lfd);
    return -1;
  }
  return lfd;
}

// The in-test servers' answer to the request head ending at `end` in `in`
// (which it consumes): the test backend's response for its size and seed,
// from backend `name`; the body's size in `size_out`.
std::string TakeRequestAnswer(std::string* in, size_t end, const char* name,
                              uint64_t* size_out = nullptr) {
  auto head = backend::ParseRequestHead(absl::string_view(*in).substr(0, end));
  uint64_t size = head.ok() ? *backend::QueryUint(head->query, "size", 0) : 0;
  uint64_t seed = head.ok() ? *backend::QueryUint(head->query, "seed", 0) : 0;
  in->erase(0, end + 4);
  if (size_out) *size_out = size;
  std::string body(size, '\0');
  backend::FillBody(seed, 0, body.data(), size);
  return absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: ", size, "\r\nX-Backend: ", name,
                      "\r\nX-Seed: ", seed, "\r\nX-Body-Fnv: ",
                      backend::FnvHex(backend::Fnv1a64Of(body.data(), size)), "\r\n\r\n",
                      body);
}

// A one-connection server that alternates X-Backend between "a" and "b", as
// a per-request rematching load balancer would.
TEST(LoadgenSwitchTest, CountsBackendSwitchesPerConnection) {
  sockaddr_in sa{};
  const int lfd = ListenLoopback(&sa);
  ASSERT_GE(lfd, 0);
  std::thread server([lfd] {
    int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    std::string in;
    char buf[4096];
    for (int i = 0;; ++i) {
      size_t end;
      while ((end = in.find("\r\n\r\n")) == std::string::npos) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          close(fd);
          return;
        }
        in.append(buf, static_cast<size_t>(n));
      }
      std::string resp = TakeRequestAnswer(&in, end, i % 2 ? "b" : "a");
      send(fd, resp.data(), resp.size(), MSG_NOSIGNAL);
    }
  });
  LoadgenRun r = RunLoadgen(absl::StrCat("127.0.0.1:", ntohs(sa.sin_port)),
                            {"--requests=10", "--connections=1", "--sizes=100"});
  server.join();
  close(lfd);
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "backend_switches"), 9);
  EXPECT_EQ(JsonNumber(r.json, "a"), 5);
  EXPECT_EQ(JsonNumber(r.json, "b"), 5);
}

// --write_early_at: the next request goes out mid-response, once that many
// body bytes of the one in flight arrived. An in-test server sends each
// response's first half, then waits (up to 1 s) for the next request's head
// before the rest: every request but the last must come in that wait, and
// none before.
TEST(LoadgenWriteEarlyTest, NextRequestGoesOutMidResponse) {
  sockaddr_in sa{};
  const int lfd = ListenLoopback(&sa);
  ASSERT_GE(lfd, 0);
  std::atomic<int> early{0}, too_soon{0};
  std::thread server([lfd, &early, &too_soon] {
    int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    std::string in;
    char buf[4096];
    // Reads into `in` until it holds a whole head; false on EOF, error or
    // (with a deadline) time out.
    auto read_head = [&](int timeout_ms) {
      while (in.find("\r\n\r\n") == std::string::npos) {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0) return false;
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) return false;
        in.append(buf, static_cast<size_t>(n));
      }
      return true;
    };
    while (read_head(5000)) {
      uint64_t size = 0;
      std::string resp = TakeRequestAnswer(&in, in.find("\r\n\r\n"), "a", &size);
      const size_t half = resp.size() - size / 2;
      if (in.find("\r\n\r\n") != std::string::npos) too_soon++;
      send(fd, resp.data(), half, MSG_NOSIGNAL);
      if (read_head(1000)) early++;
      send(fd, resp.data() + half, resp.size() - half, MSG_NOSIGNAL);
    }
    close(fd);
  });
  LoadgenRun r = RunLoadgen(absl::StrCat("127.0.0.1:", ntohs(sa.sin_port)),
                            {"--requests=5", "--connections=1", "--sizes=20000", "--pipeline=2",
                             "--pipeline_refill", "--write_early_at=10000"});
  server.join();
  close(lfd);
  ASSERT_EQ(r.exit_code, 0) << r.log << r.json;
  EXPECT_EQ(JsonNumber(r.json, "ok"), 5);
  EXPECT_EQ(JsonNumber(r.json, "verify_failures"), 0);
  EXPECT_EQ(early.load(), 4) << "each next request written mid-response";
  EXPECT_EQ(too_soon.load(), 0) << "none before its predecessor's response began";
}

TEST(ParseSizeListTest, Suffixes) {
  auto s = ParseSizeList("0, 100,1k,8m");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, (std::vector<uint64_t>{0, 100, 1024, 8u << 20}));
  EXPECT_TRUE(ParseSizeList("")->empty());
  EXPECT_FALSE(ParseSizeList("1,x").ok());
  EXPECT_FALSE(ParseSizeList("-1").ok());
}

}  // namespace
}  // namespace rematcher::loadgen
