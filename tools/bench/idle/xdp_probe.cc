#include "tools/bench/idle/xdp_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "testing/testbed/netns.h"

namespace rematcher::bench {
namespace {

absl::Status Errno(int e, const std::string& what) { return absl::ErrnoToStatus(e, what); }

}  // namespace

uint64_t FdMemlock(int fd) {
  std::ifstream f(absl::StrCat("/proc/self/fdinfo/", fd));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("memlock:", 0) != 0) continue;
    uint64_t v = 0;
    std::string num = line.substr(8);
    num.erase(0, num.find_first_not_of(" \t"));
    if (absl::SimpleAtoi(num, &v)) return v;
  }
  return 0;
}

absl::StatusOr<int> EnableRunStats() {
  int fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
  if (fd < 0) return Errno(errno, "BPF_ENABLE_STATS");
  return fd;
}

absl::StatusOr<std::unique_ptr<XdpProbe>> XdpProbe::Open(const std::string& ns,
                                                         const std::string& ifname) {
  uint32_t prog_id = 0;
  {
    auto in = testbed::ScopedNetns::Enter(ns);
    if (!in.ok()) return in.status();
    int ifindex = static_cast<int>(if_nametoindex(ifname.c_str()));
    if (ifindex == 0) return Errno(errno, absl::StrCat(ifname, " in ", ns));
    int rc = bpf_xdp_query_id(ifindex, 0, &prog_id);
    if (rc < 0) return Errno(-rc, absl::StrCat("XDP query on ", ifname, " in ", ns));
  }
  if (prog_id == 0)
    return absl::NotFoundError(absl::StrCat("no XDP program on ", ifname, " in ", ns));
  std::unique_ptr<XdpProbe> p(new XdpProbe());
  p->prog_id_ = prog_id;
  p->prog_fd_ = bpf_prog_get_fd_by_id(prog_id);
  if (p->prog_fd_ < 0) return Errno(errno, absl::StrCat("program id ", prog_id));
  // Two passes: the first learns how many maps, the second fetches their ids.
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(p->prog_fd_, &info, &len)) return Errno(errno, "program info");
  uint32_t nr_maps = info.nr_map_ids;
  std::vector<uint32_t> ids(nr_maps);
  info = {};
  info.nr_map_ids = nr_maps;
  info.map_ids = reinterpret_cast<uint64_t>(ids.data());
  len = sizeof(info);
  if (bpf_obj_get_info_by_fd(p->prog_fd_, &info, &len)) return Errno(errno, "program map ids");
  p->prog_name_ = info.name;
  auto add = [&](uint32_t id, bool inner) -> absl::Status {
    int fd = bpf_map_get_fd_by_id(id);
    if (fd < 0) return Errno(errno, absl::StrCat("map id ", id));
    bpf_map_info mi{};
    uint32_t ml = sizeof(mi);
    if (bpf_obj_get_info_by_fd(fd, &mi, &ml)) {
      int e = errno;
      close(fd);
      return Errno(e, absl::StrCat("map info of id ", id));
    }
    MapInfo m;
    m.id = id;
    m.name = mi.name;
    m.type = mi.type;
    m.key_size = mi.key_size;
    m.value_size = mi.value_size;
    m.max_entries = mi.max_entries;
    m.flags = mi.map_flags;
    m.memlock = FdMemlock(fd);
    m.inner = inner;
    p->maps_.push_back(m);
    p->map_fds_.push_back(fd);
    return absl::OkStatus();
  };
  for (uint32_t i = 0; i < nr_maps && i < ids.size(); i++)
    if (auto st = add(ids[i], false); !st.ok()) return st;
  // Inner maps of array-of-maps: a lookup from userspace yields the inner
  // map's id.
  size_t outer = p->maps_.size();
  for (size_t i = 0; i < outer; i++) {
    if (p->maps_[i].type != BPF_MAP_TYPE_ARRAY_OF_MAPS) continue;
    for (uint32_t k = 0; k < p->maps_[i].max_entries; k++) {
      uint32_t inner_id = 0;
      if (bpf_map_lookup_elem(p->map_fds_[i], &k, &inner_id) || inner_id == 0) continue;
      if (auto st = add(inner_id, true); !st.ok()) return st;
    }
  }
  return p;
}

XdpProbe::~XdpProbe() {
  for (int fd : map_fds_) close(fd);
  if (prog_fd_ >= 0) close(prog_fd_);
}

const MapInfo* XdpProbe::map(const std::string& name) const {
  for (const MapInfo& m : maps_)
    if (m.name == name.substr(0, 15)) return &m;
  return nullptr;
}

absl::StatusOr<std::vector<uint64_t>> XdpProbe::PerCpuU64(const std::string& name,
                                                          uint32_t key) const {
  auto i = Index(name);
  if (!i.ok()) return i.status();
  if (maps_[*i].type != BPF_MAP_TYPE_PERCPU_ARRAY || maps_[*i].value_size != 8)
    return absl::InvalidArgumentError(absl::StrCat(name, " is not a per-CPU u64 array"));
  int ncpus = libbpf_num_possible_cpus();
  if (ncpus < 1) return Errno(-ncpus, "counting CPUs");
  std::vector<uint64_t> v(ncpus);
  if (bpf_map_lookup_elem(map_fds_[*i], &key, v.data()))
    return Errno(errno, absl::StrCat("lookup in ", name));
  return v;
}

absl::StatusOr<size_t> XdpProbe::Index(const std::string& name) const {
  for (size_t i = 0; i < maps_.size(); i++)
    if (maps_[i].name == name.substr(0, 15)) return i;
  return absl::NotFoundError(absl::StrCat("no map ", name));
}

absl::StatusOr<std::vector<std::string>> XdpProbe::ArrayValues(const std::string& name) const {
  auto i = Index(name);
  if (!i.ok()) return i.status();
  const MapInfo& m = maps_[*i];
  if (m.type != BPF_MAP_TYPE_ARRAY || m.key_size != 4)
    return absl::InvalidArgumentError(absl::StrCat(name, " is not an array"));
  std::vector<std::string> out(m.max_entries, std::string(m.value_size, '\0'));
  for (uint32_t k = 0; k < m.max_entries; k++)
    if (bpf_map_lookup_elem(map_fds_[*i], &k, out[k].data()))
      return Errno(errno, absl::StrCat("lookup of ", k, " in ", name));
  return out;
}

absl::StatusOr<uint64_t> XdpProbe::KeyCount(const std::string& name) const {
  auto i = Index(name);
  if (!i.ok()) return i.status();
  const MapInfo& m = maps_[*i];
  std::string key(m.key_size, '\0'), next(m.key_size, '\0');
  uint64_t n = 0;
  const void* prev = nullptr;
  // Bounded: a hash map holds at most max_entries keys.
  while (n <= m.max_entries) {
    if (bpf_map_get_next_key(map_fds_[*i], prev, next.data())) {
      if (errno == ENOENT) return n;
      return Errno(errno, absl::StrCat("walking ", name));
    }
    n++;
    key = next;
    prev = key.data();
  }
  return absl::InternalError(absl::StrCat(name, ": more keys than max_entries"));
}

absl::StatusOr<ProgRunStats> XdpProbe::RunStats() const {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd_, &info, &len)) return Errno(errno, "program info");
  return ProgRunStats{info.run_time_ns, info.run_cnt};
}

}  // namespace rematcher::bench
