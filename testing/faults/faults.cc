// FaultInjector; see faults.h for the contract.
#include "testing/faults/faults.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "glog/logging.h"
#include "testing/faults/faults_bpf.skel.h"
#include "testing/faults/faults_shared.h"
#include "testing/faults/relay.h"
#include "testing/testbed/netns.h"
#include "testing/testbed/process.h"

namespace rematcher::faults {
namespace {

static_assert(sizeof(flt_config) == 32, "flt_config layout");

// Linux 6.6 UAPI; Debian 12's headers predate tcx.
constexpr int kBpfTcxIngress = 46;
constexpr int kBpfTcxEgress = 47;

constexpr absl::Duration kCommandTimeout = absl::Seconds(10);

absl::StatusOr<std::string> Ip(const std::string& netns, std::vector<std::string> args) {
  std::vector<std::string> argv = {"ip", "-n", netns};
  argv.insert(argv.end(), args.begin(), args.end());
  return testbed::RunOk(argv, kCommandTimeout);
}

absl::Status EthtoolTxOff(const std::string& netns, const std::string& dev) {
  absl::StatusOr<std::string> ethtool = testbed::ResolveExecutable("ethtool");
  if (!ethtool.ok()) return ethtool.status();
  return testbed::RunOk({"ip", "netns", "exec", netns, *ethtool, "-K", dev, "tx", "off"},
                        kCommandTimeout)
      .status();
}

// The word after `key` in `ip -o link show dev` output ("master br0", "mtu 1500").
std::string LinkAttr(const std::string& line, const std::string& key) {
  std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
  for (size_t i = 0; i + 1 < words.size(); ++i)
    if (words[i] == key) return words[i + 1];
  return "";
}

uint32_t Ppm(double p) { return static_cast<uint32_t>(std::llround(p * FLT_PPM)); }

bool Applies(Direction d, int dir) {
  return d == Direction::kBoth || (d == Direction::kFromHost && dir == FLT_DIR_FROM_HOST) ||
         (d == Direction::kToHost && dir == FLT_DIR_TO_HOST);
}

const char* DirName(Direction d) {
  switch (d) {
    case Direction::kFromHost: return "from_host";
    case Direction::kToHost: return "to_host";
    case Direction::kBoth: return "both";
  }
  return "?";
}

}  // namespace

absl::Status ValidateFaultSpec(const FaultSpec& s) {
  for (auto [name, p] : {std::pair<const char*, double>{"loss", s.loss},
                         {"duplicate", s.duplicate},
                         {"reorder", s.reorder},
                         {"corrupt", s.corrupt}}) {
    if (!(p >= 0 && p <= 1))
      return absl::InvalidArgumentError(absl::StrCat(name, " must be in [0, 1], got ", p));
  }
  if (s.drop_resets > 0x7fffffffu)
    return absl::InvalidArgumentError("drop_resets must be below 2^31");
  if (s.drop_acks_for < absl::ZeroDuration() || s.drop_acks_for > absl::Minutes(10))
    return absl::InvalidArgumentError("drop_acks_for must be in [0, 10m]");
  if (s.reorder_gap_frames < 0) return absl::InvalidArgumentError("reorder_gap_frames < 0");
  if (s.reorder_max_hold <= absl::ZeroDuration() || s.reorder_max_hold > absl::Seconds(1))
    return absl::InvalidArgumentError("reorder_max_hold must be in (0, 1s]");
  return absl::OkStatus();
}

std::string FaultSpecString(const FaultSpec& s) {
  std::string out =
      absl::StrFormat("loss=%g%% dup=%g%% reorder=%g%% corrupt=%g%% dir=%s seed=%d", s.loss * 100,
                      s.duplicate * 100, s.reorder * 100, s.corrupt * 100, DirName(s.dir), s.seed);
  if (s.drop_resets) absl::StrAppend(&out, " drop_resets=", s.drop_resets);
  if (s.drop_acks_for > absl::ZeroDuration())
    absl::StrAppend(&out, " drop_acks_for=", absl::FormatDuration(s.drop_acks_for));
  return out;
}

std::string FaultCounters::ToString() const {
  std::string out;
  for (auto [name, c] : {std::pair<const char*, const DirectionCounters*>{"from_host", &from_host},
                         {"to_host", &to_host}}) {
    absl::StrAppendFormat(&out,
                          "%-9s seen=%d dropped=%d duplicated=%d dup_failed=%d corrupted=%d/%d "
                          "resets_dropped=%d acks_dropped=%d relayed=%d held=%d reordered=%d "
                          "held_alone=%d relay_lost=%d\n",
                          name, c->seen, c->dropped, c->duplicated, c->duplicate_failed,
                          c->corrupted, c->corrupt_eligible, c->resets_dropped,
                          c->acks_dropped, c->relayed,
                          c->held, c->reordered, c->held_alone, c->relay_lost);
  }
  return out;
}

FaultInjector::FaultInjector(std::string netns, std::string ifname, const FaultSpec& spec)
    : netns_(std::move(netns)), ifname_(std::move(ifname)), spec_(spec) {}

FaultInjector::~FaultInjector() {
  absl::Status s = Detach();
  if (!s.ok()) LOG(ERROR) << "fault injector on " << netns_ << "/" << ifname_ << ": " << s;
}

absl::StatusOr<std::unique_ptr<FaultInjector>> FaultInjector::Attach(
    const testbed::Testbed& tb, const std::string& switch_side_ifname, const FaultSpec& spec) {
  return Attach(tb.switch_ns(), switch_side_ifname, spec);
}

absl::StatusOr<std::unique_ptr<FaultInjector>> FaultInjector::Attach(const std::string& netns,
                                                                     const std::string& ifname,
                                                                     const FaultSpec& spec) {
  if (absl::Status s = ValidateFaultSpec(spec); !s.ok()) return s;
  std::unique_ptr<FaultInjector> f(new FaultInjector(netns, ifname, spec));
  // On failure the destructor undoes whatever Setup() got to.
  if (absl::Status s = f->Setup(); !s.ok())
    return absl::Status(s.code(), absl::StrCat("attaching faults to ", netns, "/", ifname, ": ",
                                               s.message()));
  LOG(INFO) << "faults on " << netns << "/" << ifname << ": " << FaultSpecString(spec)
            << (f->relay_spliced() ? " (relay spliced in)" : "");
  return f;
}

absl::Status FaultInjector::Setup() {
  if (absl::StatusOr<int> idx = testbed::IfIndexInNetns(netns_, ifname_); !idx.ok())
    return idx.status();
  skel_ = faults_bpf::open_and_load();
  if (skel_ == nullptr) return absl::ErrnoToStatus(errno, "loading faults_bpf");
  if (absl::Status s = WriteConfig(); !s.ok()) return s;
  hooks_[FLT_DIR_FROM_HOST] = {ifname_, /*ingress=*/true};
  hooks_[FLT_DIR_TO_HOST] = {ifname_, /*ingress=*/false};
  if (spec_.reorder > 0) {
    if (absl::Status s = SpliceRelay(); !s.ok()) return s;
    // AF_PACKET taps run before tc ingress on the peer, and the relay's
    // sends bypass tc egress, so both programs sit on the bridge port of
    // the new pair: from-host frames after the relay, to-host ones before.
    hooks_[FLT_DIR_FROM_HOST].ifname = pair_bridge_;
    hooks_[FLT_DIR_TO_HOST].ifname = pair_bridge_;
  }
  return AttachPrograms();
}

absl::Status FaultInjector::WriteConfig() {
  for (int d = 0; d < FLT_DIRS; ++d) {
    flt_config c = {};
    if (Applies(spec_.dir, d)) {
      c.loss_ppm = Ppm(spec_.loss);
      c.dup_ppm = Ppm(spec_.duplicate);
      c.corrupt_ppm = Ppm(spec_.corrupt);
      c.drop_resets = spec_.drop_resets;
      if (spec_.drop_acks_for > absl::ZeroDuration()) {
        timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);  // bpf_ktime_get_ns's clock
        c.drop_acks_until_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000ull + now.tv_nsec +
                               absl::ToInt64Nanoseconds(spec_.drop_acks_for);
      }
    }
    c.seed = spec_.seed == 0 ? 0 : spec_.seed * 2 + d;  // the two directions differ
    uint32_t key = d;
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.config), &key, &c, BPF_ANY) < 0)
      return absl::ErrnoToStatus(errno, "writing fault config");
    // Zero the per-CPU generator state so the new seed takes effect.
    std::vector<uint64_t> zero(libbpf_num_possible_cpus(), 0);
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.rng), &key, zero.data(), BPF_ANY) < 0)
      return absl::ErrnoToStatus(errno, "resetting fault rng");
  }
  return absl::OkStatus();
}

absl::Status FaultInjector::SpliceRelay() {
  absl::StatusOr<int> ifindex = testbed::IfIndexInNetns(netns_, ifname_);
  if (!ifindex.ok()) return ifindex.status();
  const std::string bridge_port = absl::StrCat("flt", *ifindex, "b");
  const std::string relay_end = absl::StrCat("flt", *ifindex, "r");
  // A crashed injector may have left its pair: take its bridge, remove it.
  std::string stale_bridge;
  if (absl::StatusOr<std::string> old = Ip(netns_, {"-o", "link", "show", "dev", bridge_port});
      old.ok()) {
    stale_bridge = LinkAttr(*old, "master");
    LOG(WARNING) << "removing stale relay pair " << bridge_port << " in " << netns_;
    if (auto r = Ip(netns_, {"link", "del", bridge_port}); !r.ok()) return r.status();
  }
  absl::StatusOr<std::string> link = Ip(netns_, {"-o", "link", "show", "dev", ifname_});
  if (!link.ok()) return link.status();
  bridge_ = LinkAttr(*link, "master");
  if (bridge_.empty()) bridge_ = stale_bridge;
  if (bridge_.empty())
    return absl::FailedPreconditionError(
        absl::StrCat(ifname_, " is not a bridge port: reordering splices a relay into a bridge link"));
  const std::string mtu = LinkAttr(*link, "mtu");

  pair_bridge_ = bridge_port;
  pair_relay_ = relay_end;
  std::vector<std::vector<std::string>> steps = {
      {"link", "add", bridge_port, "mtu", mtu, "type", "veth", "peer", "name", relay_end, "mtu", mtu},
  };
  for (auto& step : steps)
    if (auto r = Ip(netns_, step); !r.ok()) return r.status();
  for (const std::string& dev : {bridge_port, relay_end})
    if (absl::Status s = EthtoolTxOff(netns_, dev); !s.ok()) return s;
  for (const std::string& dev : {bridge_port, relay_end})
    if (auto r = Ip(netns_, {"link", "set", dev, "up"}); !r.ok()) return r.status();

  absl::StatusOr<int> host_fd = OpenPacketSocket(netns_, ifname_);
  if (!host_fd.ok()) return host_fd.status();
  absl::StatusOr<int> bridge_fd = OpenPacketSocket(netns_, relay_end);
  if (!bridge_fd.ok()) {
    close(*host_fd);
    return bridge_fd.status();
  }
  RelayOptions ro;
  for (int d = 0; d < FLT_DIRS; ++d) ro.reorder_ppm[d] = Applies(spec_.dir, d) ? Ppm(spec_.reorder) : 0;
  ro.gap_frames = spec_.reorder_gap_frames;
  ro.max_hold = spec_.reorder_max_hold;
  ro.seed = spec_.seed;
  absl::StatusOr<std::unique_ptr<FrameRelay>> relay = FrameRelay::Start(*host_fd, *bridge_fd, ro);
  if (!relay.ok()) return relay.status();
  relay_ = std::move(*relay);

  // The relay runs before the swap, so frames are carried as soon as the
  // peer leaves the bridge.
  unbridged_ = true;
  if (auto r = Ip(netns_, {"link", "set", ifname_, "nomaster"}); !r.ok()) return r.status();
  return Ip(netns_, {"link", "set", bridge_port, "master", bridge_}).status();
}

absl::Status FaultInjector::AttachPrograms() {
  int fds[FLT_DIRS];
  fds[FLT_DIR_FROM_HOST] = bpf_program__fd(skel_->progs.fault_from_host);
  fds[FLT_DIR_TO_HOST] = bpf_program__fd(skel_->progs.fault_to_host);
  absl::StatusOr<testbed::ScopedNetns> in = testbed::ScopedNetns::Enter(netns_);
  if (!in.ok()) return in.status();
  for (int d = 0; d < FLT_DIRS; ++d)
    if (absl::Status s = AttachHook(hooks_[d], fds[d]); !s.ok()) return s;
  return absl::OkStatus();
}

// Called inside netns_.
absl::Status FaultInjector::AttachHook(Hook& hook, int prog_fd) {
  int ifindex = static_cast<int>(if_nametoindex(hook.ifname.c_str()));
  if (ifindex == 0) return absl::ErrnoToStatus(errno, hook.ifname);
  const char* where = hook.ingress ? "ingress" : "egress";
  int fd = bpf_link_create(prog_fd, ifindex,
                           static_cast<bpf_attach_type>(hook.ingress ? kBpfTcxIngress : kBpfTcxEgress),
                           nullptr);
  if (fd >= 0) {
    hook.link_fd = fd;
    return absl::OkStatus();
  }
  if (fd != -EINVAL)
    return absl::ErrnoToStatus(-fd, absl::StrCat("tcx ", where, " attach on ", hook.ifname));
  // A kernel before 6.6: classic clsact with a direct-action filter.
  LIBBPF_OPTS(bpf_tc_hook, h, .ifindex = ifindex,
              .attach_point = hook.ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
  int rc = bpf_tc_hook_create(&h);
  if (rc < 0 && rc != -EEXIST)
    return absl::ErrnoToStatus(-rc, absl::StrCat("clsact on ", hook.ifname));
  hook.made_qdisc = rc == 0;
  LIBBPF_OPTS(bpf_tc_opts, o, .prog_fd = prog_fd);
  rc = bpf_tc_attach(&h, &o);
  if (rc < 0) return absl::ErrnoToStatus(-rc, absl::StrCat("tc ", where, " filter on ", hook.ifname));
  hook.clsact = true;
  hook.handle = o.handle;
  hook.priority = o.priority;
  return absl::OkStatus();
}

// Called inside netns_.
absl::Status FaultInjector::DetachHook(Hook& hook) {
  if (hook.link_fd >= 0) {
    close(hook.link_fd);  // a tcx link detaches when its last fd closes
    hook.link_fd = -1;
  }
  absl::Status result;
  if (hook.clsact) {
    int ifindex = static_cast<int>(if_nametoindex(hook.ifname.c_str()));
    if (ifindex != 0) {  // a deleted device took its filters with it
      LIBBPF_OPTS(bpf_tc_hook, h, .ifindex = ifindex,
                  .attach_point = hook.ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
      LIBBPF_OPTS(bpf_tc_opts, o, .handle = hook.handle, .priority = hook.priority);
      int rc = bpf_tc_detach(&h, &o);
      if (rc < 0 && rc != -ENOENT) result = absl::ErrnoToStatus(-rc, "tc filter detach");
      if (hook.made_qdisc) {
        h.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
        rc = bpf_tc_hook_destroy(&h);
        if (rc < 0 && rc != -ENOENT && result.ok()) result = absl::ErrnoToStatus(-rc, "clsact destroy");
      }
    }
    hook.clsact = false;
    hook.made_qdisc = false;
  }
  return result;
}

absl::Status FaultInjector::Detach() {
  absl::Status first;
  auto note = [&](absl::Status s) {
    if (!s.ok() && first.ok()) first = s;
  };
  {
    absl::StatusOr<testbed::ScopedNetns> in = testbed::ScopedNetns::Enter(netns_);
    bool any = false;
    for (Hook& h : hooks_) any |= h.link_fd >= 0 || h.clsact;
    if (any && !in.ok()) {
      note(in.status());
      for (Hook& h : hooks_) {  // the namespace is gone, and the links with it
        if (h.link_fd >= 0) close(h.link_fd);
        h.link_fd = -1;
        h.clsact = false;
      }
    } else if (in.ok()) {
      for (Hook& h : hooks_) note(DetachHook(h));
    }
  }
  // Relay last among the data movers: held frames are flushed on stop.
  relay_.reset();
  if (!pair_bridge_.empty()) {
    note(Ip(netns_, {"link", "del", pair_bridge_}).status());
    pair_bridge_.clear();
    pair_relay_.clear();
  }
  if (unbridged_) {
    note(Ip(netns_, {"link", "set", ifname_, "master", bridge_}).status());
    unbridged_ = false;
  }
  if (skel_ != nullptr) {
    faults_bpf::destroy(skel_);
    skel_ = nullptr;
  }
  return first;
}

absl::Status FaultInjector::Update(const FaultSpec& spec) {
  if (absl::Status s = ValidateFaultSpec(spec); !s.ok()) return s;
  if (skel_ == nullptr) return absl::FailedPreconditionError("detached");
  if (spec.reorder != spec_.reorder || spec.reorder_gap_frames != spec_.reorder_gap_frames ||
      spec.reorder_max_hold != spec_.reorder_max_hold ||
      (spec_.reorder > 0 && spec.dir != spec_.dir))
    return absl::FailedPreconditionError("reordering is fixed at Attach; detach and attach again");
  FaultSpec old = spec_;
  spec_ = spec;
  absl::Status s = WriteConfig();
  if (!s.ok()) spec_ = old;
  return s;
}

absl::StatusOr<FaultCounters> FaultInjector::Counters() const {
  if (skel_ == nullptr) return absl::FailedPreconditionError("detached");
  const int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return absl::ErrnoToStatus(-ncpu, "counting CPUs");
  uint64_t sum[FLT_DIRS][FLT_CTR_MAX] = {};
  std::vector<uint64_t> per_cpu(ncpu);
  for (uint32_t key = 0; key < FLT_DIRS * FLT_CTR_MAX; ++key) {
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.counters), &key, per_cpu.data()) < 0)
      return absl::ErrnoToStatus(errno, "reading fault counters");
    for (uint64_t v : per_cpu) sum[key / FLT_CTR_MAX][key % FLT_CTR_MAX] += v;
  }
  FaultCounters c;
  RelayCounters rc;
  if (relay_ != nullptr) rc = relay_->Counters();
  for (int d = 0; d < FLT_DIRS; ++d) {
    DirectionCounters& o = d == FLT_DIR_FROM_HOST ? c.from_host : c.to_host;
    o.seen = sum[d][FLT_CTR_SEEN];
    o.dropped = sum[d][FLT_CTR_DROPPED];
    o.duplicated = sum[d][FLT_CTR_DUPLICATED];
    o.duplicate_failed = sum[d][FLT_CTR_DUP_FAILED];
    o.corrupt_eligible = sum[d][FLT_CTR_CORRUPT_ELIGIBLE];
    o.corrupted = sum[d][FLT_CTR_CORRUPTED];
    o.resets_dropped = sum[d][FLT_CTR_RST_DROPPED];
    o.acks_dropped = sum[d][FLT_CTR_ACK_DROPPED];
    const RelayDirectionCounters& r = rc.dir[d];
    o.relayed = r.received;
    o.held = r.held;
    o.reordered = r.reordered;
    o.held_alone = r.held_alone;
    o.relay_lost = r.kernel_drops + r.send_errors;
  }
  return c;
}

std::vector<uint32_t> FaultInjector::prog_ids() const {
  std::vector<uint32_t> ids;
  if (skel_ == nullptr) return ids;
  for (bpf_program* p : {skel_->progs.fault_from_host, skel_->progs.fault_to_host}) {
    bpf_prog_info info = {};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len) == 0) ids.push_back(info.id);
  }
  return ids;
}

absl::StatusOr<std::vector<std::unique_ptr<FaultInjector>>> AttachToLinks(
    const testbed::Testbed& tb, LinkSet links, const FaultSpec& spec) {
  std::vector<std::string> names;
  if (links != LinkSet::kBackends)
    for (int i = 0; i < tb.num_clients(); ++i) names.push_back(tb.client_peer_ifname(i));
  if (links != LinkSet::kClients)
    for (int i = 0; i < tb.num_backends(); ++i) names.push_back(tb.backend_peer_ifname(i));
  std::vector<std::unique_ptr<FaultInjector>> out;
  for (const std::string& n : names) {
    absl::StatusOr<std::unique_ptr<FaultInjector>> f = FaultInjector::Attach(tb, n, spec);
    if (!f.ok()) return f.status();  // `out` detaches the ones already made
    out.push_back(std::move(*f));
  }
  return out;
}

}  // namespace rematcher::faults
