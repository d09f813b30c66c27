// BPF_PROG_TEST_RUN wrapper; see bpf_fixture.h.
#include "testing/bpf_fixture/bpf_fixture.h"

#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace rematcher::bpf_fixture {

absl::StatusOr<TestRunResult> RunXdp(int prog_fd, const std::vector<uint8_t>& in,
                                     uint32_t repeat) {
  XdpRunOptions options;
  options.repeat = repeat;
  return RunXdp(prog_fd, in, options);
}

absl::StatusOr<TestRunResult> RunXdp(int prog_fd, const std::vector<uint8_t>& in,
                                     const XdpRunOptions& options) {
  if (prog_fd < 0) return absl::InvalidArgumentError("RunXdp: invalid program fd");
  std::vector<uint8_t> out(in.size() + options.extra_output_bytes);
  xdp_md ctx = {};
  ctx.ingress_ifindex = options.ingress_ifindex;
  ctx.rx_queue_index = options.rx_queue_index;

  LIBBPF_OPTS(bpf_test_run_opts, opts);
  opts.data_in = in.data();
  opts.data_size_in = static_cast<uint32_t>(in.size());
  opts.data_out = out.data();
  opts.data_size_out = static_cast<uint32_t>(out.size());
  opts.repeat = options.repeat;
  if (options.ingress_ifindex != 0) {
    opts.ctx_in = &ctx;
    opts.ctx_size_in = sizeof(ctx);
  }
  if (bpf_prog_test_run_opts(prog_fd, &opts) != 0) {
    int err = errno;
    return absl::ErrnoToStatus(
        err, absl::StrCat("BPF_PROG_TEST_RUN (XDP) on a ", in.size(), "-byte packet"));
  }
  TestRunResult r;
  r.retval = opts.retval;
  r.duration_ns = opts.duration;
  out.resize(opts.data_size_out);
  r.output = std::move(out);
  return r;
}

absl::Status BpfAvailable() {
  if (geteuid() != 0) return absl::PermissionDeniedError("not running as root");
  // r0 = XDP_PASS; exit
  const bpf_insn insns[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, XDP_PASS},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, "probe", "GPL", insns, 2, nullptr);
  if (fd < 0) {
    int err = errno;
    return absl::ErrnoToStatus(err, "loading a trivial XDP program (sandboxed? missing CAP_BPF?)");
  }
  close(fd);
  return absl::OkStatus();
}

std::string XdpVerdictName(uint32_t v) {
  switch (v) {
    case XDP_ABORTED: return "XDP_ABORTED";
    case XDP_DROP: return "XDP_DROP";
    case XDP_PASS: return "XDP_PASS";
    case XDP_TX: return "XDP_TX";
    case XDP_REDIRECT: return "XDP_REDIRECT";
  }
  return absl::StrCat(v);
}

}  // namespace rematcher::bpf_fixture
