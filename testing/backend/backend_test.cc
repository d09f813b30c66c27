// End to end tests of the backend binary over real loopback sockets.

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "testing/backend/body.h"
#include "testing/backend/test_util.h"

namespace rematcher::backend {
namespace {

using testutil::BackendProcess;
using testutil::ConnectLoopback;
using testutil::HttpResponse;
using testutil::ReadResponse;
using testutil::ReferenceFnv1a64;
using testutil::SendAll;
using Clock = std::chrono::steady_clock;

// Owns a client socket.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string Get(uint64_t size, uint64_t seed, uint64_t delay_us = 0,
                absl::string_view extra_headers = "") {
  return absl::StrCat("GET /r?size=", size, "&delay_us=", delay_us, "&seed=", seed,
                      " HTTP/1.1\r\nHost: t\r\n", extra_headers, "\r\n");
}

std::string ExpectedBody(uint64_t seed, uint64_t size) {
  std::string b(size, '\0');
  FillBody(seed, 0, b.data(), b.size());
  return b;
}

void ExpectBody(const HttpResponse& r, uint64_t seed, uint64_t size,
                const std::string& backend = "b1") {
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-length"), absl::StrCat(size));
  EXPECT_EQ(r.Header("x-backend"), backend);
  EXPECT_EQ(r.Header("x-seed"), absl::StrCat(seed));
  ASSERT_EQ(r.body.size(), size);
  EXPECT_TRUE(r.body == ExpectedBody(seed, size)) << "body differs";
  EXPECT_EQ(r.Header("x-body-fnv"),
            absl::StrFormat("%016x", ReferenceFnv1a64(r.body)));
}

class BackendTest : public ::testing::Test {
 protected:
  void StartBackend(std::vector<std::string> flags = {}) {
    flags.push_back("--name=b1");
    ASSERT_TRUE(backend_.Start(flags).ok());
  }
  int Connect() {
    auto fd = ConnectLoopback(backend_.port());
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? *fd : -1;
  }
  BackendProcess backend_;
};

TEST_F(BackendTest, BodiesOfAllSizesOnOneKeepAliveConnection) {
  StartBackend();
  Fd fd(Connect());
  std::string buf;
  uint64_t seed = 11;
  for (uint64_t size : {0u, 1u, 1u << 20, 8u << 20}) {
    ASSERT_TRUE(SendAll(fd.get(), Get(size, seed)).ok());
    auto r = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectBody(*r, seed, size);
    EXPECT_EQ(r->Header("connection"), "keep-alive");
    ++seed;
  }
  EXPECT_EQ(backend_.Stop(), 0);
}

TEST_F(BackendTest, EightMiBUploadIsHashedAndEchoed) {
  StartBackend();
  Fd fd(Connect());
  std::string upload(8u << 20, '\0');
  FillBody(99, 0, upload.data(), upload.size());
  upload[12345] = 'x';  // any content works, not only body.h bytes
  std::string req = absl::StrCat("POST /r?size=100&seed=5 HTTP/1.1\r\nHost: t\r\n",
                                 "Content-Length: ", upload.size(), "\r\n\r\n");
  // Send the head and body in awkward pieces.
  ASSERT_TRUE(SendAll(fd.get(), req.substr(0, 7)).ok());
  ASSERT_TRUE(SendAll(fd.get(), req.substr(7)).ok());
  std::thread writer([&] { ASSERT_TRUE(SendAll(fd.get(), upload).ok()); });
  std::string buf;
  auto r = ReadResponse(fd.get(), &buf);
  writer.join();
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBody(*r, 5, 100);
  EXPECT_EQ(r->Header("x-upload-len"), absl::StrCat(upload.size()));
  EXPECT_EQ(r->Header("x-upload-fnv"),
            absl::StrFormat("%016x", ReferenceFnv1a64(upload)));
  // The connection is still usable afterwards.
  ASSERT_TRUE(SendAll(fd.get(), Get(3, 1)).ok());
  auto r2 = ReadResponse(fd.get(), &buf);
  ASSERT_TRUE(r2.ok()) << r2.status();
  ExpectBody(*r2, 1, 3);
}

TEST_F(BackendTest, PipelinedRequestsAreAnsweredInOrder) {
  // A per-request delay on the first one must not let later ones overtake.
  StartBackend();
  Fd fd(Connect());
  std::string batch = Get(10, 0, /*delay_us=*/100000);
  for (uint64_t i = 1; i < 20; ++i) batch += Get(i * 1000, i);
  ASSERT_TRUE(SendAll(fd.get(), batch).ok());
  std::string buf;
  for (uint64_t i = 0; i < 20; ++i) {
    auto r = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectBody(*r, i, i == 0 ? 10 : i * 1000);
  }
}

TEST_F(BackendTest, RequestSplitIntoSingleBytes) {
  StartBackend();
  Fd fd(Connect());
  std::string req = Get(77, 3);
  for (char c : req) {
    ASSERT_TRUE(SendAll(fd.get(), std::string(1, c)).ok());
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::string buf;
  auto r = ReadResponse(fd.get(), &buf);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBody(*r, 3, 77);
}

TEST_F(BackendTest, MaxRequestsPerConnectionClosesAfterTheLast) {
  StartBackend({"--max_requests_per_conn=3"});
  Fd fd(Connect());
  std::string buf;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(SendAll(fd.get(), Get(5, i)).ok());
    auto r = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectBody(*r, i, 5);
    EXPECT_EQ(r->Header("connection"), i < 2 ? "keep-alive" : "close");
  }
  EXPECT_TRUE(testutil::WaitForPeerClose(fd.get(), 5));
}

TEST_F(BackendTest, ClientConnectionCloseIsHonoured) {
  StartBackend();
  Fd fd(Connect());
  ASSERT_TRUE(SendAll(fd.get(), Get(5, 1, 0, "Connection: close\r\n")).ok());
  std::string buf;
  auto r = ReadResponse(fd.get(), &buf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Header("connection"), "close");
  EXPECT_TRUE(testutil::WaitForPeerClose(fd.get(), 5));
}

TEST_F(BackendTest, DelayIsHonouredAndDoesNotBlockOtherConnections) {
  StartBackend({"--service_us=20000"});
  Fd slow(Connect());
  Fd fast(Connect());
  const auto t0 = Clock::now();
  ASSERT_TRUE(SendAll(slow.get(), Get(10, 1, /*delay_us=*/1500000)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto t1 = Clock::now();
  ASSERT_TRUE(SendAll(fast.get(), Get(10, 2)).ok());
  std::string fbuf, sbuf;
  auto rf = ReadResponse(fast.get(), &fbuf);
  const auto fast_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t1).count();
  ASSERT_TRUE(rf.ok()) << rf.status();
  ExpectBody(*rf, 2, 10);
  EXPECT_GE(fast_ms, 19);    // --service_us applies to every request
  EXPECT_LT(fast_ms, 1000);  // not stuck behind the slow one
  auto rs = ReadResponse(slow.get(), &sbuf);
  const auto slow_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  ASSERT_TRUE(rs.ok()) << rs.status();
  ExpectBody(*rs, 1, 10);
  EXPECT_GE(slow_ms, 1500 + 20 - 1);
}

// pause_at/pause_us: the body's first pause_at bytes, then nothing for
// pause_us, then the rest (a response generated as it goes).
TEST_F(BackendTest, MidBodyPauseSendsTheFirstBytesThenTheRest) {
  StartBackend();
  Fd c(Connect());
  ASSERT_TRUE(SendAll(c.get(), "GET /r?size=100000&seed=4&pause_at=30000&pause_us=400000 "
                               "HTTP/1.1\r\nHost: t\r\n\r\n")
                  .ok());
  const auto t0 = Clock::now();
  std::string got;
  char buf[65536];
  size_t head_end = std::string::npos;
  // Everything before the pause: the head and 30000 body bytes, no more
  // within 200 ms.
  for (;;) {
    pollfd p{c.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) break;
    ssize_t n = recv(c.get(), buf, sizeof(buf), 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
    head_end = got.find("\r\n\r\n");
  }
  ASSERT_NE(head_end, std::string::npos);
  EXPECT_EQ(got.size() - (head_end + 4), 30000u);
  auto r = ReadResponse(c.get(), &got);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBody(*r, 4, 100000);
  EXPECT_GE(ms, 399);
}

// reset_at: the body's first reset_at bytes, then (pause_us later) an RST,
// not a FIN: the client's next read fails with ECONNRESET.
TEST_F(BackendTest, ResetAtSendsTheFirstBytesThenResets) {
  StartBackend();
  Fd c(Connect());
  ASSERT_TRUE(SendAll(c.get(), "GET /r?size=100000&seed=4&reset_at=30000&pause_us=100000 "
                               "HTTP/1.1\r\nHost: t\r\n\r\n")
                  .ok());
  std::string got;
  char buf[65536];
  int err = 0;
  for (;;) {
    pollfd p{c.get(), POLLIN, 0};
    ASSERT_GT(poll(&p, 1, 5000), 0) << "neither data nor a reset within 5 s";
    ssize_t n = recv(c.get(), buf, sizeof(buf), 0);
    if (n > 0) {
      got.append(buf, static_cast<size_t>(n));
      continue;
    }
    err = n < 0 ? errno : 0;
    break;
  }
  EXPECT_EQ(err, ECONNRESET) << "ended by " << (err ? strerror(err) : "a FIN");
  const size_t head_end = got.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos);
  EXPECT_EQ(got.size() - (head_end + 4), 30000u);
  Fd d(Connect());
  ASSERT_TRUE(SendAll(d.get(), "GET /r?size=10&reset_at=5&pause_at=2 HTTP/1.1\r\nHost: t\r\n\r\n")
                  .ok());
  std::string dbuf;
  auto r = ReadResponse(d.get(), &dbuf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400) << "reset_at and pause_at together";
}

TEST_F(BackendTest, StallsPauseAnswers) {
  StartBackend({"--stall_every_ms=300", "--stall_ms=150"});
  Fd fd(Connect());
  std::string buf;
  int64_t max_ms = 0;
  const auto end = Clock::now() + std::chrono::milliseconds(700);
  while (Clock::now() < end) {
    const auto t = Clock::now();
    ASSERT_TRUE(SendAll(fd.get(), Get(1, 1)).ok());
    auto r = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r.ok()) << r.status();
    max_ms = std::max<int64_t>(
        max_ms,
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(max_ms, 50);
  EXPECT_LE(max_ms, 1000);  // loose: the machine is shared
}

TEST_F(BackendTest, KeepAliveTimeoutClosesIdleConnections) {
  StartBackend({"--keepalive_timeout_ms=200"});
  Fd fd(Connect());
  std::string buf;
  ASSERT_TRUE(SendAll(fd.get(), Get(1, 1)).ok());
  ASSERT_TRUE(ReadResponse(fd.get(), &buf).ok());
  const auto t = Clock::now();
  EXPECT_TRUE(testutil::WaitForPeerClose(fd.get(), 5));
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
  EXPECT_GE(ms, 150);
  EXPECT_LT(ms, 2000);
}

// GET /health: 200 until the --unhealthy_file exists, 503 while it does,
// and the connection keeps serving /r either way.
TEST_F(BackendTest, HealthAnswersFromTheUnhealthyFile) {
  const std::string flag = ::testing::TempDir() + "/unhealthy-" + std::to_string(getpid());
  unlink(flag.c_str());
  StartBackend({"--unhealthy_file=" + flag});
  Fd fd(Connect());
  std::string buf;
  auto health = [&]() -> int {
    if (!SendAll(fd.get(), "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").ok()) return -1;
    auto r = ReadResponse(fd.get(), &buf);
    return r.ok() ? r->status : -1;
  };
  EXPECT_EQ(health(), 200);
  { std::ofstream(flag) << "x"; }
  EXPECT_EQ(health(), 503);
  ASSERT_TRUE(SendAll(fd.get(), Get(3, 3)).ok());
  auto r = ReadResponse(fd.get(), &buf);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBody(*r, 3, 3);
  unlink(flag.c_str());
  EXPECT_EQ(health(), 200);
}

TEST_F(BackendTest, NotFoundAndMalformed) {
  StartBackend();
  {
    Fd fd(Connect());
    std::string buf;
    ASSERT_TRUE(SendAll(fd.get(), "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n").ok());
    auto r = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 404);
    EXPECT_TRUE(r->keep_alive);
    ASSERT_TRUE(SendAll(fd.get(), Get(2, 2)).ok());  // still usable
    auto r2 = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r2.ok()) << r2.status();
    ExpectBody(*r2, 2, 2);
  }
  for (const char* bad : {"GARBAGE\r\n\r\n", "GET /r HTTP/9.9\r\n\r\n",
                          "GET /r?size=abc HTTP/1.1\r\n\r\n",
                          "POST /r HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                          "POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"}) {
    Fd fd(Connect());
    std::string buf;
    ASSERT_TRUE(SendAll(fd.get(), bad).ok());
    auto r = ReadResponse(fd.get(), &buf);
    ASSERT_TRUE(r.ok()) << bad << ": " << r.status();
    EXPECT_EQ(r->status, 400) << bad;
    EXPECT_FALSE(r->keep_alive) << bad;
    EXPECT_TRUE(testutil::WaitForPeerClose(fd.get(), 5)) << bad;
  }
}

TEST_F(BackendTest, ClientResetsDoNotCrashOrLeakFds) {
  StartBackend();
  {
    // Settle the baseline after the first accept.
    Fd fd(Connect());
    std::string buf;
    ASSERT_TRUE(SendAll(fd.get(), Get(1, 1)).ok());
    ASSERT_TRUE(ReadResponse(fd.get(), &buf).ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int baseline = backend_.OpenFdCount();
  ASSERT_GT(baseline, 0);
  for (int i = 0; i < 50; ++i) {
    int fd = Connect();
    ASSERT_GE(fd, 0);
    switch (i % 5) {
      case 0:  // reset mid-body of a large response
        ASSERT_TRUE(SendAll(fd, Get(8u << 20, i)).ok());
        break;
      case 1:  // reset with a half-sent head
        ASSERT_TRUE(SendAll(fd, "GET /r?size=10 HT").ok());
        break;
      case 2:  // reset during a delayed response
        ASSERT_TRUE(SendAll(fd, Get(10, i, 50000)).ok());
        break;
      case 3:  // reset mid-upload
        ASSERT_TRUE(
            SendAll(fd, "POST /r HTTP/1.1\r\nContent-Length: 1000000\r\n\r\nabc").ok());
        break;
      case 4:  // plain FIN after pipelining, without reading
        ASSERT_TRUE(SendAll(fd, Get(100000, 1) + Get(100000, 2)).ok());
        close(fd);
        continue;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    linger l{1, 0};  // close() sends RST
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
  }
  // Everything still works, and every connection's fd was released.
  Fd fd(Connect());
  std::string buf;
  ASSERT_TRUE(SendAll(fd.get(), Get(1000, 4)).ok());
  auto r = ReadResponse(fd.get(), &buf);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectBody(*r, 4, 1000);
  int now = -1;
  for (int i = 0; i < 300; ++i) {  // delayed responses and drains finish
    now = backend_.OpenFdCount();
    if (now == baseline + 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(now, baseline + 1);  // +1: the connection above
  EXPECT_EQ(backend_.Stop(), 0);
}

TEST_F(BackendTest, CurlSeesBodyMatchingXBodyFnv) {
  StartBackend({"--threads=2"});
  const std::string dir = testutil::TempDir();
  const std::string body_path = dir + "/curl.body";
  const std::string head_path = dir + "/curl.head";
  auto res = testutil::RunCommand(
      {"/usr/bin/curl", "-sS", "--max-time", "20", "-D", head_path, "-o", body_path,
       absl::StrCat("http://", backend_.target(), "/r?size=3000000&seed=77")},
      30);
  ASSERT_TRUE(res.ok()) << res.status();
  ASSERT_EQ(res->exit_code, 0) << res->stderr_text;
  std::ifstream bf(body_path, std::ios::binary), hf(head_path);
  std::stringstream body, head;
  body << bf.rdbuf();
  head << hf.rdbuf();
  EXPECT_EQ(body.str().size(), 3000000u);
  EXPECT_NE(head.str().find(absl::StrFormat(
                "X-Body-Fnv: %016x", ReferenceFnv1a64(body.str()))),
            std::string::npos)
      << head.str();
  EXPECT_TRUE(body.str() == ExpectedBody(77, 3000000));
}

TEST_F(BackendTest, ManySmallRequestsAcrossThreads) {
  StartBackend({"--threads=2"});
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      auto fd = ConnectLoopback(backend_.port());
      if (!fd.ok()) return;
      Fd f(*fd);
      std::string buf;
      for (int i = 0; i < 2000; ++i) {
        if (!SendAll(f.get(), Get(64, t * 10000 + i)).ok()) return;
        auto r = ReadResponse(f.get(), &buf);
        if (!r.ok() || r->body != ExpectedBody(t * 10000 + i, 64)) return;
        ++ok;
      }
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(ok.load(), 8000);
}

TEST_F(BackendTest, RejectsBadFlags) {
  auto res = testutil::RunCommand(
      {testutil::RunfilePath("testing/backend/backend"), "--listen=127.0.0.1:0",
       "--stall_every_ms=10", "--stall_ms=20"},
      10);
  ASSERT_TRUE(res.ok());
  EXPECT_NE(res->exit_code, 0);
  res = testutil::RunCommand(
      {testutil::RunfilePath("testing/backend/backend"), "--listen=nonsense"}, 10);
  ASSERT_TRUE(res.ok());
  EXPECT_NE(res->exit_code, 0);
}

}  // namespace
}  // namespace rematcher::backend
