// PawsTrace against the real kernel: a TCP connection on loopback inside a
// namespace of its own, then two segments forged with a TSval far older than
// the receiver's ts_recent, one repeating bytes it already has and one
// carrying new bytes. The kernel drops both under PAWS (nstat PAWSEstab +2),
// and the tracer must file the first as stale and the second as fresh,
// with the second's sequence range logged.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "testing/packet/packet.h"
#include "testing/tcpdrops/paws_trace.h"
#include "testing/testbed/netns.h"
#include "testing/testbed/nstat.h"
#include "testing/testbed/process.h"

namespace rematcher::tcpdrops {
namespace {

using packet::PacketBuilder;

// Loopback addresses of this test only (the namespace has its own lo).
constexpr char kServer[] = "127.83.0.1";
constexpr char kClient[] = "127.83.0.2";

sockaddr_in Addr(const char* ip, uint16_t port) {
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

uint64_t PawsEstab(const std::string& ns) {
  auto out = testbed::RunOk({"ip", "netns", "exec", ns, "nstat", "-asz"}, absl::Seconds(10));
  if (!out.ok()) return UINT64_MAX;
  auto c = testbed::ParseNstat(*out);
  auto it = c.find("TcpExtPAWSEstab");
  return it == c.end() ? 0 : it->second;
}

class PawsTraceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (namespaces, BPF tracing)";
    auto t = PawsTrace::Start();
    if (!t.ok()) GTEST_SKIP() << "SKIPPED: " << t.status();
    trace_ = std::move(*t);
    ns_ = absl::StrCat("rmpw", getpid());
    ASSERT_TRUE(testbed::CreateNetns(ns_).ok());
    made_ns_ = true;
    ASSERT_TRUE(testbed::RunOk({"ip", "-n", ns_, "link", "set", "lo", "up"}, absl::Seconds(10)).ok());
  }
  void TearDown() override {
    for (int fd : {srv_, lsn_, cli_, raw_})
      if (fd >= 0) close(fd);
    if (made_ns_) {
      EXPECT_TRUE(testbed::DeleteNetns(ns_).ok());
    }
  }

  int Sock(int domain, int type, int proto) {
    auto fd = testbed::SocketInNetns(ns_, domain, type, proto);
    EXPECT_TRUE(fd.ok()) << fd.status();
    return fd.ok() ? *fd : -1;
  }

  std::unique_ptr<PawsTrace> trace_;
  std::string ns_;
  bool made_ns_ = false;
  int lsn_ = -1, srv_ = -1, cli_ = -1, raw_ = -1;
};

TEST_F(PawsTraceTest, StaleAndFreshDropsAreToldApart) {
  lsn_ = Sock(AF_INET, SOCK_STREAM, 0);
  cli_ = Sock(AF_INET, SOCK_STREAM, 0);
  raw_ = Sock(AF_INET, SOCK_RAW, IPPROTO_RAW);
  ASSERT_GE(lsn_, 0);
  ASSERT_GE(cli_, 0);
  ASSERT_GE(raw_, 0);
  sockaddr_in s = Addr(kServer, 0), c = Addr(kClient, 0);
  ASSERT_EQ(bind(lsn_, reinterpret_cast<sockaddr*>(&s), sizeof(s)), 0) << strerror(errno);
  socklen_t len = sizeof(s);
  ASSERT_EQ(getsockname(lsn_, reinterpret_cast<sockaddr*>(&s), &len), 0);
  ASSERT_EQ(listen(lsn_, 4), 0);
  ASSERT_EQ(bind(cli_, reinterpret_cast<sockaddr*>(&c), sizeof(c)), 0) << strerror(errno);
  ASSERT_EQ(connect(cli_, reinterpret_cast<sockaddr*>(&s), sizeof(s)), 0) << strerror(errno);
  len = sizeof(c);
  ASSERT_EQ(getsockname(cli_, reinterpret_cast<sockaddr*>(&c), &len), 0);
  srv_ = accept(lsn_, nullptr, nullptr);
  ASSERT_GE(srv_, 0) << strerror(errno);
  timeval tv{2, 0};
  setsockopt(srv_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(cli_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  // One exchange each way: the server's ts_recent is the client's TSval.
  char buf[16];
  ASSERT_EQ(send(cli_, "hello", 5, 0), 5);
  ASSERT_EQ(recv(srv_, buf, sizeof(buf), 0), 5);
  ASSERT_EQ(send(srv_, "ok", 2, 0), 2);
  ASSERT_EQ(recv(cli_, buf, sizeof(buf), 0), 2);
  absl::SleepFor(absl::Milliseconds(20));  // the client's delayed ACK goes out

  // The client's sequence state and TS clock, read in repair mode (the
  // socket then sends nothing of its own).
  int one = 1;
  ASSERT_EQ(setsockopt(cli_, SOL_TCP, TCP_REPAIR, &one, sizeof(one)), 0) << strerror(errno);
  auto queue_seq = [&](int q) {
    setsockopt(cli_, SOL_TCP, TCP_REPAIR_QUEUE, &q, sizeof(q));
    uint32_t v = 0;
    socklen_t l = sizeof(v);
    EXPECT_EQ(getsockopt(cli_, SOL_TCP, TCP_QUEUE_SEQ, &v, &l), 0) << strerror(errno);
    return v;
  };
  const uint32_t snd_nxt = queue_seq(TCP_SEND_QUEUE);
  const uint32_t rcv_nxt = queue_seq(TCP_RECV_QUEUE);
  uint32_t ts = 0;
  len = sizeof(ts);
  ASSERT_EQ(getsockopt(cli_, SOL_TCP, TCP_TIMESTAMP, &ts, &len), 0) << strerror(errno);

  const uint64_t paws_before = PawsEstab(ns_);
  ASSERT_NE(paws_before, UINT64_MAX);
  auto forge = [&](uint32_t seq, const std::string& payload) {
    packet::Bytes frame = PacketBuilder()
                              .Eth("02:00:00:00:00:01", "02:00:00:00:00:02")
                              .Ipv4(kClient, kServer)
                              .Tcp(ntohs(c.sin_port), ntohs(s.sin_port))
                              .Seq(seq)
                              .Ack(rcv_nxt)
                              .Flags(0x18)  // ACK|PSH
                              .Window(1000)
                              .Nop()
                              .Nop()
                              .Timestamps(ts - 100000, 0)
                              .Payload(payload)
                              .Build();
    ASSERT_GT(frame.size(), 14u);
    sockaddr_in dst = Addr(kServer, 0);
    ASSERT_EQ(sendto(raw_, frame.data() + 14, frame.size() - 14, 0,
                     reinterpret_cast<sockaddr*>(&dst), sizeof(dst)),
              static_cast<ssize_t>(frame.size() - 14))
        << strerror(errno);
  };
  trace_->SetLogMinAge(7);      // the stale one is logged too, in its own slots
  forge(snd_nxt - 5, "hello");  // bytes the server has: stale
  forge(snd_nxt, "world");      // bytes it has not: fresh

  // Both dropped: the server reads nothing.
  tv = {0, 300000};
  setsockopt(srv_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  EXPECT_LT(recv(srv_, buf, sizeof(buf), 0), 0) << "a forged old-TSval segment was accepted";
  EXPECT_EQ(PawsEstab(ns_) - paws_before, 2u);

  PawsCounts got = trace_->For(kServer);
  std::cout << "[paws_trace] " << kServer << ": " << got.ToString() << std::endl;
  EXPECT_EQ(got.stale, 1u);
  EXPECT_EQ(got.fresh, 1u);
  EXPECT_EQ(got.pure_ack, 0u);
  EXPECT_EQ(got.request, 0u);
  EXPECT_EQ(got.timewait, 0u);
  // 100,000 ticks old: both in the last bucket.
  EXPECT_EQ(got.age[kAgeBuckets - 1], 2u);
  EXPECT_EQ(got.max_age(), kAgeBuckets - 1);
  bool logged = false, logged_stale = false;
  for (const PawsDrop& d : trace_->LoggedDrops()) {
    std::cout << "[paws_trace] logged: " << d.ToString() << std::endl;
    const bool to_server = d.to == absl::StrCat(kServer, ":", ntohs(s.sin_port));
    if (d.kind == "fresh" && to_server && d.seq == snd_nxt && d.end_seq == snd_nxt + 5 &&
        d.rcv_nxt == snd_nxt && d.tsval == ts - 100000) {
      logged = true;
    }
    if (d.kind == "stale" && to_server && d.seq == snd_nxt - 5 && d.end_seq == snd_nxt)
      logged_stale = true;
  }
  EXPECT_TRUE(logged) << "the fresh drop was not logged with its sequence range";
  EXPECT_TRUE(logged_stale) << "the stale drop (100,000 ticks old) was not logged";
  // A new phase starts with an empty log; the counts stay.
  trace_->ClearLog();
  EXPECT_TRUE(trace_->LoggedDrops().empty());
  EXPECT_EQ(trace_->For(kServer).stale, 1u);
}

}  // namespace
}  // namespace rematcher::tcpdrops
