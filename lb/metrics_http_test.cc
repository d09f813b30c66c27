// MetricsHttpServer on 127.0.0.1, ephemeral port, with a fake provider and
// an event loop of the test's own (the way the Core drives it: the server's
// fd in an outer epoll set, OnReady() on readiness, Tick() periodically).
// Plus ParseListenAddress and LatencyHistogram.
#include "lb/metrics_http.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace rematcher {
namespace {

#define EXPECT_HAS_SUBSTR(haystack, needle)        \
  EXPECT_TRUE(absl::StrContains(haystack, needle)) \
      << "text: " << (haystack) << "\nexpected to contain: " << (needle)

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string raw;
};

Response Parse(const std::string& raw) {
  Response r;
  r.raw = raw;
  size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  std::vector<std::string> lines = absl::StrSplit(raw.substr(0, end), "\r\n");
  std::vector<std::string> sl = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (sl.size() < 2 || sl[0] != "HTTP/1.1" || !absl::SimpleAtoi(sl[1], &r.status)) return r;
  for (size_t i = 1; i < lines.size(); i++) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    r.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  r.body = raw.substr(end + 4);
  return r;
}

class MetricsHttpTest : public ::testing::Test {
 protected:
  void TearDown() override { StopLoop(); }

  // Starts a server and the loop thread that drives it.
  void Start(MetricsHttpOptions opts = {}) {
    opts.addr = "127.0.0.1:0";
    auto s = MetricsHttpServer::Create(opts, [this] {
      provider_calls_++;
      provider_on_loop_ = provider_on_loop_ && std::this_thread::get_id() == loop_id_;
      return body_;
    });
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    ASSERT_NE(server_->port(), 0);
    ASSERT_EQ(server_->address(), absl::StrCat("127.0.0.1:", server_->port()));
    stop_ = false;
    loop_ = std::thread([this] {
      loop_id_ = std::this_thread::get_id();
      int ep = epoll_create1(EPOLL_CLOEXEC);
      epoll_event e{};
      e.events = EPOLLIN;
      e.data.fd = server_->fd();
      epoll_ctl(ep, EPOLL_CTL_ADD, server_->fd(), &e);
      while (!stop_) {
        epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, 10);
        if (n > 0) server_->OnReady();
        server_->Tick();
      }
      close(ep);
    });
    while (loop_id_ == std::thread::id()) absl::SleepFor(absl::Milliseconds(1));
  }

  // Joins the loop; after this the server may be inspected from the test.
  void StopLoop() {
    stop_ = true;
    if (loop_.joinable()) loop_.join();
  }

  int Connect() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(server_->port());
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << strerror(errno);
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
  }

  static bool SendAll(int fd, const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += n;
    }
    return true;
  }

  // Reads until EOF (or error/timeout, which the caller sees as a short
  // response).
  static std::string ReadAll(int fd) {
    std::string out;
    char buf[65536];
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, n);
    }
    return out;
  }

  Response Exchange(const std::string& request) {
    int fd = Connect();
    EXPECT_TRUE(SendAll(fd, request));
    std::string raw = ReadAll(fd);
    close(fd);
    return Parse(raw);
  }

  std::string body_ = "# TYPE x counter\nx 1\n";
  std::atomic<int> provider_calls_{0};
  std::atomic<bool> provider_on_loop_{true};
  std::unique_ptr<MetricsHttpServer> server_;
  std::thread loop_;
  std::atomic<std::thread::id> loop_id_{};
  std::atomic<bool> stop_{false};
};

TEST_F(MetricsHttpTest, MetricsIsTheProviderTextWithContentLength) {
  Start();
  Response r = Exchange("GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_TRUE(absl::StartsWith(r.headers["content-type"], "text/plain; version=0.0.4"))
      << r.headers["content-type"];
  EXPECT_EQ(r.headers["content-length"], absl::StrCat(body_.size()));
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_EQ(r.body, body_);
  // HTTP/1.0 needs no Host; a query string is ignored.
  r = Exchange("GET /metrics?debug=1 HTTP/1.0\r\n\r\n");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body, body_);
  StopLoop();
  EXPECT_EQ(provider_calls_, 2);
  EXPECT_TRUE(provider_on_loop_) << "provider called off the loop thread";
  EXPECT_EQ(server_->stats().ok, 2u);
}

TEST_F(MetricsHttpTest, LargeBodyArrivesWholeThroughPartialWrites) {
  // Far more than the socket buffers (tcp_wmem/tcp_rmem max 4/6 MiB): the
  // server must finish on EPOLLOUT.
  body_.clear();
  for (int i = 0; body_.size() < 8 << 20; i++)
    absl::StrAppend(&body_, "rematcher_x{backend=\"", i, "\"} ", i * 7, "\n");
  Start();
  int fd = Connect();
  ASSERT_TRUE(SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  absl::SleepFor(absl::Milliseconds(100));  // let the server hit a full buffer
  Response r = Parse(ReadAll(fd));
  close(fd);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-length"], absl::StrCat(body_.size()));
  EXPECT_TRUE(r.body == body_) << "body of " << r.body.size() << " bytes differs";
}

TEST_F(MetricsHttpTest, HealthzHeadNotFoundAndMethods) {
  Start();
  Response r = Exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body, "ok\n");
  EXPECT_EQ(r.headers["content-length"], "3");

  r = Exchange("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.headers["content-length"], absl::StrCat(body_.size()));
  EXPECT_EQ(r.body, "");

  for (const char* path : {"/", "/metrics/", "/metricsx", "/favicon.ico", "/healthz/x"}) {
    r = Exchange(absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(r.status, 404) << path << ": " << r.raw;
    EXPECT_EQ(r.headers["content-length"], absl::StrCat(r.body.size()));
  }
  r = Exchange("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_EQ(r.status, 405) << r.raw;
  EXPECT_EQ(r.headers["allow"], "GET, HEAD");
  // Absolute form (as sent to a proxy) names the same resource.
  r = Exchange("GET http://127.0.0.1:9100/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  EXPECT_EQ(r.status, 200) << r.raw;
  // Bare LF line ends are accepted; leading empty lines are skipped.
  r = Exchange("\r\nGET /healthz HTTP/1.0\n\n");
  EXPECT_EQ(r.status, 200) << r.raw;
  StopLoop();
  EXPECT_EQ(provider_calls_, 1);  // HEAD renders (for the length), 404/405 do not
}

TEST_F(MetricsHttpTest, MalformedRequestsGet400) {
  Start();
  struct Case {
    const char* what;
    std::string request;
    int status;
  };
  std::vector<Case> cases = {
      {"garbage", "hello there\r\n\r\n", 400},
      {"no version", "GET /metrics\r\n\r\n", 400},
      {"two spaces", "GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"bad version", "GET /metrics HTTP/one\r\nHost: x\r\n\r\n", 400},
      {"relative target", "GET metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"header without colon", "GET /metrics HTTP/1.1\r\nHost: x\r\nBroken\r\n\r\n", 400},
      {"space before colon", "GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400},
      {"obsolete folding", "GET /metrics HTTP/1.1\r\nHost: x\r\n continued\r\n\r\n", 400},
      {"1.1 without Host", "GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n", 400},
      {"two Hosts", "GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
      {"control byte in target", std::string("GET /met\x01rics HTTP/1.1\r\nHost: x\r\n\r\n"),
       400},
      {"binary", std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 13), 400},
      {"HTTP/2", "GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505},
  };
  for (const Case& c : cases) {
    Response r = Exchange(c.request);
    EXPECT_EQ(r.status, c.status) << c.what << ": " << r.raw;
    EXPECT_EQ(r.headers["content-length"], absl::StrCat(r.body.size())) << c.what;
  }
  // A request cut short by the client's FIN is answered, not dropped.
  int fd = Connect();
  ASSERT_TRUE(SendAll(fd, "GET /metrics HTTP/1.1\r\nHo"));
  shutdown(fd, SHUT_WR);
  EXPECT_EQ(Parse(ReadAll(fd)).status, 400);
  close(fd);
  StopLoop();
  EXPECT_EQ(provider_calls_, 0);
  EXPECT_EQ(server_->stats().errors, cases.size() + 1);
}

TEST_F(MetricsHttpTest, OversizedRequestIsRefusedAndTheServerKeepsServing) {
  MetricsHttpOptions o;
  o.max_request_bytes = 8 * 1024;
  Start(o);
  // Headers past the cap, never finished: 431 at the cap, not a wait.
  std::string big = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  while (big.size() < 16 * 1024) big += "X-Filler: " + std::string(100, 'a') + "\r\n";
  Response r = Exchange(big);
  EXPECT_EQ(r.status, 431) << r.raw.substr(0, 200);
  // A request line alone past the cap.
  r = Exchange("GET /" + std::string(9000, 'm') + " HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 414) << r.raw.substr(0, 200);
  // Just under the cap is fine.
  std::string fits = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ";
  fits += std::string(o.max_request_bytes - fits.size() - 4, 'b') + "\r\n\r\n";
  ASSERT_EQ(fits.size(), o.max_request_bytes);
  r = Exchange(fits);
  EXPECT_EQ(r.status, 200) << r.raw;
  // A client that keeps streaming after its answer cannot wedge anything.
  int fd = Connect();
  std::string flood = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + std::string(1 << 20, 'z');
  SendAll(fd, flood);  // may fail part-way once the server closes: fine
  EXPECT_EQ(Parse(ReadAll(fd)).status, 200);
  close(fd);
  EXPECT_EQ(Exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
}

TEST_F(MetricsHttpTest, SilentAndSlowClientsAreClosedAfterTheTimeout) {
  MetricsHttpOptions o;
  o.timeout = absl::Milliseconds(300);
  Start(o);
  int silent = Connect();
  int slow = Connect();
  absl::Time t0 = absl::Now();
  ASSERT_TRUE(SendAll(slow, "GET /metr"));  // and nothing more
  char c;
  EXPECT_EQ(recv(silent, &c, 1, 0), 0) << "expected EOF";
  absl::Duration took = absl::Now() - t0;
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_LE(recv(slow, &c, 1, 0), 0) << "slow client not closed";
  close(silent);
  close(slow);
  // The server still answers.
  EXPECT_EQ(Exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
  absl::SleepFor(absl::Milliseconds(100));  // for the server to see that client's close
  StopLoop();
  EXPECT_EQ(server_->stats().timed_out, 2u);
  EXPECT_EQ(server_->connections(), 0u);
}

TEST_F(MetricsHttpTest, ConnectionsBeyondTheCapAreRefusedAndTheServerRecovers) {
  MetricsHttpOptions o;
  o.max_connections = 64;
  o.timeout = absl::Seconds(30);  // the held ones must not expire mid-test
  Start(o);
  // 64 idle connections take every slot (the accept queue is FIFO, so
  // they are accepted before any of the extra ones below).
  std::vector<int> held;
  for (int i = 0; i < 64; i++) held.push_back(Connect());
  // 200 more at once: every one is refused at once (503 or closed), none
  // waits for a timeout, and none is served.
  std::vector<int> extra;
  for (int i = 0; i < 200; i++) extra.push_back(Connect());
  absl::Time t0 = absl::Now();
  int refused = 0;
  for (int fd : extra) {
    Response r = Parse(ReadAll(fd));
    if (r.status == 503 || r.raw.empty()) refused++;
    close(fd);
  }
  EXPECT_EQ(refused, 200);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  // Freeing the slots lets requests through again.
  for (int fd : held) close(fd);
  Response r;
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (absl::Now() < deadline) {
    r = Exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    if (r.status == 200) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body, body_);
  StopLoop();
  EXPECT_GE(server_->stats().refused, 200u);
}

TEST(MetricsHttpCreateTest, BindFailuresNameTheAddress) {
  MetricsHttpOptions o;
  o.addr = "127.0.0.1:0";
  auto first = MetricsHttpServer::Create(o, [] { return std::string(); });
  ASSERT_TRUE(first.ok()) << first.status();
  o.addr = absl::StrCat("127.0.0.1:", (*first)->port());
  auto busy = MetricsHttpServer::Create(o, [] { return std::string(); });
  ASSERT_FALSE(busy.ok());
  EXPECT_HAS_SUBSTR(busy.status().message(), o.addr);
  // Not an address of this host (TEST-NET-1).
  o.addr = "192.0.2.1:9100";
  auto foreign = MetricsHttpServer::Create(o, [] { return std::string(); });
  ASSERT_FALSE(foreign.ok());
  EXPECT_HAS_SUBSTR(foreign.status().message(), "192.0.2.1:9100");
  o.addr = "localhost:9100";
  EXPECT_FALSE(MetricsHttpServer::Create(o, [] { return std::string(); }).ok());
}

TEST(ParseListenAddressTest, NumericAddressesOnly) {
  for (const char* ok : {"127.0.0.1:9100", "198.18.0.2:9100", "0.0.0.0:1", "[::1]:9100",
                         "[::]:65535", "127.0.0.1:0"}) {
    auto a = ParseListenAddress(ok);
    ASSERT_TRUE(a.ok()) << ok << ": " << a.status();
    EXPECT_EQ(ListenAddressString(a->addr), ok);
  }
  EXPECT_EQ(ParseListenAddress("127.0.0.1:9100")->port, 9100);
  for (const char* bad : {"", "9100", ":9100", "localhost:9100", "127.0.0.1:", "127.0.0.1:65536",
                          "127.0.0.1:+80", "127.0.0.1: 80", "::1:9100", "[::1]9100", "[::1]:",
                          "1.2.3:80", "1.2.3.4.5:80", "[127.0.0.1]:80", "127.0.0.1:80x"}) {
    auto a = ParseListenAddress(bad);
    EXPECT_FALSE(a.ok()) << "'" << bad << "' accepted";
    if (!a.ok()) {
      EXPECT_HAS_SUBSTR(a.status().message(), "IP:PORT");
    }
  }
}

TEST(LatencyHistogramTest, BucketsAreInclusiveAndCumulative) {
  LatencyHistogram h;
  h.Observe(0);
  h.Observe(100'000);        // exactly 100 us: le="0.0001"
  h.Observe(100'001);        // just over: le="0.00025"
  h.Observe(3'000'000);      // 3 ms: le="0.005"
  h.Observe(10'000'000'000); // 10 s: le="10"
  h.Observe(60'000'000'000); // 1 min: +Inf only
  EXPECT_EQ(h.count(), 6u);
  EXPECT_EQ(h.bucket(0), 2u);
  EXPECT_EQ(h.bucket(1), 1u);
  EXPECT_EQ(h.bucket(LatencyHistogram::kBounds), 1u);
  std::string out;
  h.AppendPrometheus(&out, "rt_seconds", "backend=\"0\"");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"0.0001\"} 2\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"0.00025\"} 3\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"0.0025\"} 3\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"0.005\"} 4\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"5\"} 4\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"10\"} 5\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_bucket{backend=\"0\",le=\"+Inf\"} 6\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_sum{backend=\"0\"} 70.003200001\n");
  EXPECT_HAS_SUBSTR(out, "rt_seconds_count{backend=\"0\"} 6\n");
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), LatencyHistogram::kBounds + 1 + 2);
  // Without labels.
  LatencyHistogram empty;
  out.clear();
  empty.AppendPrometheus(&out, "x", "");
  EXPECT_HAS_SUBSTR(out, "x_bucket{le=\"+Inf\"} 0\nx_sum 0.000000000\nx_count 0\n");
  h.Reset();
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.sum_ns(), 0u);
}

}  // namespace
}  // namespace rematcher
