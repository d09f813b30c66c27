// Runs the reference programs of //bpf:trivial through BPF_PROG_TEST_RUN.
#include "testing/bpf_fixture/bpf_fixture.h"

#include <linux/bpf.h>

#include <iostream>
#include <memory>

#include "bpf/trivial.skel.h"
#include "gtest/gtest.h"
#include "testing/packet/packet.h"
#include "testing/packet/packet_gtest.h"

namespace rematcher::bpf_fixture {
namespace {

using packet::Bytes;
using packet::PacketBuilder;
using packet::PacketsEqual;

struct SkelDeleter {
  void operator()(trivial* s) const { trivial::destroy(s); }
};

class BpfFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REMATCHER_SKIP_WITHOUT_BPF();
    skel_.reset(trivial::open_and_load());
    ASSERT_NE(skel_, nullptr) << "trivial::open_and_load failed, errno " << errno;
  }
  std::unique_ptr<trivial, SkelDeleter> skel_;
};

Bytes Request() {
  return PacketBuilder()
      .Eth("02:00:00:00:01:01", "02:00:00:00:00:02")
      .Ipv4("198.18.1.1", "198.18.0.10")
      .Tcp(40000, 8080)
      .Flags(packet::ACK | packet::PSH)
      .Seq(1000)
      .Ack(2000)
      .Timestamps(1, 2)
      .Nop()
      .Nop()
      .Payload("GET / HTTP/1.1\r\n\r\n")
      .Build();
}

TEST_F(BpfFixtureTest, PassReturnsInputUnchanged) {
  Bytes in = Request();
  absl::StatusOr<TestRunResult> r = RunXdp(bpf_program__fd(skel_->progs.xdp_pass), in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->retval, XDP_PASS) << XdpVerdictName(r->retval);
  EXPECT_TRUE(PacketsEqual(in, r->output));
}

TEST_F(BpfFixtureTest, TxSwapSwapsMacs) {
  Bytes in = Request();
  absl::StatusOr<TestRunResult> r = RunXdp(bpf_program__fd(skel_->progs.xdp_tx_swap), in);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->retval, XDP_TX) << XdpVerdictName(r->retval);
  Bytes want = PacketBuilder()
                   .Eth("02:00:00:00:00:02", "02:00:00:00:01:01")
                   .Ipv4("198.18.1.1", "198.18.0.10")
                   .Tcp(40000, 8080)
                   .Flags(packet::ACK | packet::PSH)
                   .Seq(1000)
                   .Ack(2000)
                   .Timestamps(1, 2)
                   .Nop()
                   .Nop()
                   .Payload("GET / HTTP/1.1\r\n\r\n")
                   .Build();
  EXPECT_TRUE(PacketsEqual(want, r->output));
  packet::ParsedPacket p = packet::Parse(r->output);
  EXPECT_TRUE(p.Ipv4ChecksumOk());
  EXPECT_TRUE(p.TcpChecksumOk());
}

TEST_F(BpfFixtureTest, RepeatReportsDuration) {
  absl::StatusOr<TestRunResult> r =
      RunXdp(bpf_program__fd(skel_->progs.xdp_tx_swap), Request(), 1000);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->retval, XDP_TX);
  EXPECT_GT(r->duration_ns, 0u);
  EXPECT_LT(r->duration_ns, 100000u) << "a MAC swap should not take 100us";
  RecordProperty("xdp_tx_swap_ns", static_cast<int>(r->duration_ns));
  std::cout << "xdp_tx_swap: " << r->duration_ns << " ns per run (kernel average of 1000)\n";
}

TEST_F(BpfFixtureTest, ShortPacketsAreRejectedByTheKernel) {
  // The test runner wants at least an Ethernet header.
  absl::StatusOr<TestRunResult> r = RunXdp(bpf_program__fd(skel_->progs.xdp_pass), Bytes(13, 0));
  EXPECT_FALSE(r.ok());
  absl::StatusOr<TestRunResult> ok = RunXdp(bpf_program__fd(skel_->progs.xdp_pass), Bytes(14, 0));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_F(BpfFixtureTest, OutputBufferOfInputSizeIsEnough) {
  XdpRunOptions o;
  o.extra_output_bytes = 0;
  Bytes in = Request();
  absl::StatusOr<TestRunResult> r = RunXdp(bpf_program__fd(skel_->progs.xdp_pass), in, o);
  ASSERT_TRUE(r.ok()) << r.status();  // exactly the input size is enough
  EXPECT_EQ(r->output.size(), in.size());
}

TEST_F(BpfFixtureTest, InvalidFd) { EXPECT_FALSE(RunXdp(-1, Request()).ok()); }

}  // namespace
}  // namespace rematcher::bpf_fixture
