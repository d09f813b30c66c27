// BPF_PROG_TEST_RUN wrapper for datapath tests.
//
// Owns: running a loaded XDP program on one packet through the kernel's test
// runner and returning what the kernel returned; and deciding whether this
// process can use BPF at all (so tests SKIP with a reason instead of failing).
//
// Contract: RunXdp never modifies its input; a kernel error becomes a Status
// naming the errno. The kernel test runner needs at least an Ethernet header
// (14 bytes): shorter input is rejected with EINVAL, reported as such.
#ifndef REMATCHER_TESTING_BPF_FIXTURE_BPF_FIXTURE_H_
#define REMATCHER_TESTING_BPF_FIXTURE_BPF_FIXTURE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rematcher::bpf_fixture {

struct TestRunResult {
  uint32_t retval = 0;           // the XDP verdict (XDP_PASS, XDP_TX, ...)
  std::vector<uint8_t> output;   // the packet after the program, data_size_out bytes
  uint32_t duration_ns = 0;      // kernel-reported average per repetition
};

struct XdpRunOptions {
  uint32_t repeat = 1;
  // Optional xdp_md context; 0 leaves ctx_in unset (kernel defaults: the
  // loopback device, queue 0).
  uint32_t ingress_ifindex = 0;
  uint32_t rx_queue_index = 0;
  // Room for output beyond the input size; programs that grow the packet
  // (bpf_xdp_adjust_head / _tail) need it.
  uint32_t extra_output_bytes = 4096;
};

absl::StatusOr<TestRunResult> RunXdp(int prog_fd, const std::vector<uint8_t>& in,
                                     uint32_t repeat = 1);
absl::StatusOr<TestRunResult> RunXdp(int prog_fd, const std::vector<uint8_t>& in,
                                     const XdpRunOptions& options);

// OK when this process is root and the kernel accepts a two-instruction XDP
// program; otherwise a Status whose message says why (for GTEST_SKIP).
absl::Status BpfAvailable();

// "XDP_PASS", "XDP_TX", ... or the number.
std::string XdpVerdictName(uint32_t verdict);

}  // namespace rematcher::bpf_fixture

// In a gtest body: skip with "SKIPPED: <reason>" when BPF is unusable.
#define REMATCHER_SKIP_WITHOUT_BPF()                                                   \
  do {                                                                                 \
    ::absl::Status rematcher_bpf_status = ::rematcher::bpf_fixture::BpfAvailable();    \
    if (!rematcher_bpf_status.ok())                                                    \
      GTEST_SKIP() << "SKIPPED: BPF unavailable: " << rematcher_bpf_status.message(); \
  } while (0)

#endif  // REMATCHER_TESTING_BPF_FIXTURE_BPF_FIXTURE_H_
