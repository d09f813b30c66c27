// PawsTrace; see paws_trace.h.
#include "testing/tcpdrops/paws_trace.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "testing/tcpdrops/paws_trace_bpf.skel.h"
#include "testing/tcpdrops/paws_trace_shared.h"

namespace rematcher::tcpdrops {
static_assert(kAgeBuckets == PT_AGE_BUCKETS);
static_assert(kLogFreshSlots == PT_LOG_FRESH_SLOTS);
static_assert(kLogOldSlots == PT_LOG_SLOTS - PT_LOG_FRESH_SLOTS);
namespace {

std::string Ip(uint32_t net_order) {
  char buf[INET_ADDRSTRLEN] = {};
  in_addr a;
  a.s_addr = net_order;
  inet_ntop(AF_INET, &a, buf, sizeof(buf));
  return buf;
}

}  // namespace

int PawsCounts::max_age() const {
  for (int a = kAgeBuckets - 1; a >= 0; --a)
    if (age[a] != 0) return a;
  return -1;
}

std::string PawsCounts::ToString() const {
  std::string s = absl::StrCat("stale ", stale, " fresh ", fresh, " pure_ack ", pure_ack,
                               " request ", request, " timewait ", timewait, " ages");
  for (int a = 0; a < kAgeBuckets; ++a)
    if (age[a] != 0) absl::StrAppend(&s, " ", a, a == kAgeBuckets - 1 ? "+" : "", ":", age[a]);
  return s;
}

std::string PawsDrop::ToString() const {
  return absl::StrCat(kind, " ", from, " -> ", to, " seq ", seq, "..", end_seq, " rcv_nxt ", rcv_nxt,
                      " tsval ", tsval, " ts_recent ", ts_recent, " (",
                      static_cast<int32_t>(ts_recent - tsval), " ticks old)");
}

absl::StatusOr<std::unique_ptr<PawsTrace>> PawsTrace::Start() {
  std::unique_ptr<PawsTrace> t(new PawsTrace());
  t->skel_ = paws_trace_bpf__open();
  if (t->skel_ == nullptr)
    return absl::UnavailableError(absl::StrCat("paws_trace: open: ", strerror(errno)));
  int err = paws_trace_bpf__load(t->skel_);
  if (err) {
    int e = -err;
    if (e == EPERM || e == EACCES)
      return absl::PermissionDeniedError(absl::StrCat("paws_trace: load: ", strerror(e)));
    return absl::UnavailableError(absl::StrCat(
        "paws_trace: load failed (", strerror(e),
        "): the kernel needs BTF and skb:kfree_skb with its receiving socket (>= 6.11)"));
  }
  err = paws_trace_bpf__attach(t->skel_);
  if (err)
    return absl::UnavailableError(absl::StrCat("paws_trace: attach: ", strerror(-err)));
  return t;
}

PawsTrace::~PawsTrace() {
  if (skel_ != nullptr) paws_trace_bpf__destroy(skel_);
}

std::map<std::string, PawsCounts> PawsTrace::ByAddress() const {
  std::map<std::string, PawsCounts> out;
  int fd = bpf_map__fd(skel_->maps.counts);
  uint32_t key = 0, next = 0;
  uint32_t* prev = nullptr;
  // Bounded by the map's size; entries are never deleted while we walk.
  for (int i = 0; i < 1024 && bpf_map_get_next_key(fd, prev, &next) == 0; ++i) {
    pt_counts v = {};
    if (bpf_map_lookup_elem(fd, &next, &v) == 0) {
      PawsCounts& c = out[Ip(next)];
      c = PawsCounts{v.stale, v.fresh, v.pure_ack, v.request, v.timewait};
      for (int a = 0; a < kAgeBuckets; ++a) c.age[a] = v.age[a];
    }
    key = next;
    prev = &key;
  }
  return out;
}

PawsCounts PawsTrace::For(const std::string& addr) const {
  auto all = ByAddress();
  auto it = all.find(addr);
  return it == all.end() ? PawsCounts{} : it->second;
}

std::vector<PawsDrop> PawsTrace::LoggedDrops() const {
  std::vector<PawsDrop> out;
  const uint64_t fresh = std::min<uint64_t>(
      __atomic_load_n(&skel_->bss->logged, __ATOMIC_RELAXED), PT_LOG_FRESH_SLOTS);
  const uint64_t old = std::min<uint64_t>(
      __atomic_load_n(&skel_->bss->logged_old, __ATOMIC_RELAXED),
      PT_LOG_SLOTS - PT_LOG_FRESH_SLOTS);
  std::vector<uint32_t> slots;
  for (uint32_t i = 0; i < fresh; ++i) slots.push_back(i);
  for (uint32_t i = 0; i < old; ++i) slots.push_back(PT_LOG_FRESH_SLOTS + i);
  int fd = bpf_map__fd(skel_->maps.drop_log);
  for (uint32_t i : slots) {
    pt_drop d = {};
    if (bpf_map_lookup_elem(fd, &i, &d) != 0) continue;
    const char* kind = d.kind == PT_FRESH ? "fresh" : d.kind == PT_STALE ? "stale" : "pure_ack";
    out.push_back({kind, absl::StrCat(Ip(d.saddr), ":", d.sport),
                   absl::StrCat(Ip(d.daddr), ":", d.dport), d.seq, d.end_seq, d.rcv_nxt, d.tsval,
                   d.ts_recent});
  }
  return out;
}

void PawsTrace::ClearLog() {
  __atomic_store_n(&skel_->bss->logged, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&skel_->bss->logged_old, 0, __ATOMIC_RELAXED);
}

void PawsTrace::SetLogMinAge(uint32_t ticks) {
  __atomic_store_n(&skel_->bss->log_min_age, ticks, __ATOMIC_RELAXED);
}

}  // namespace rematcher::tcpdrops
