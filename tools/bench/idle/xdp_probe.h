// XdpProbe: read-only introspection of the XDP program attached to an
// interface in a named network namespace (the rematcher of a testbed), from
// another process: its maps (name, type, sizes, the kernel's memlock charge),
// per-CPU counters, and the kernel's run-time statistics of the program.
//
// Used by //tools/bench/idle:idle_clients (memory per client, per-packet
// cost) and //lb:stress_test (per-CPU packet counts). Needs root (CAP_BPF,
// CAP_SYS_ADMIN for setns). Nothing is written to any map.
#ifndef REMATCHER_TOOLS_BENCH_IDLE_XDP_PROBE_H_
#define REMATCHER_TOOLS_BENCH_IDLE_XDP_PROBE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rematcher::bench {

struct MapInfo {
  uint32_t id = 0;
  std::string name;
  uint32_t type = 0;  // BPF_MAP_TYPE_*
  uint32_t key_size = 0, value_size = 0, max_entries = 0, flags = 0;
  uint64_t memlock = 0;  // bytes charged, from /proc/self/fdinfo of the map fd
  bool inner = false;    // an inner map reached through a map-in-map
};

struct ProgRunStats {
  uint64_t run_time_ns = 0;
  uint64_t run_cnt = 0;
};

class XdpProbe {
 public:
  // The program attached (native/driver mode or link) to `ifname` inside
  // namespace `ns`, with every map it uses and the inner maps of its
  // map-in-maps.
  static absl::StatusOr<std::unique_ptr<XdpProbe>> Open(const std::string& ns,
                                                        const std::string& ifname);
  ~XdpProbe();
  XdpProbe(const XdpProbe&) = delete;
  XdpProbe& operator=(const XdpProbe&) = delete;

  uint32_t prog_id() const { return prog_id_; }
  const std::string& prog_name() const { return prog_name_; }
  const std::vector<MapInfo>& maps() const { return maps_; }
  // The first map named `name` (kernel names are cut at 15 chars), or null.
  const MapInfo* map(const std::string& name) const;

  // Values of a per-CPU u64 array map at `key`, one per possible CPU.
  absl::StatusOr<std::vector<uint64_t>> PerCpuU64(const std::string& map, uint32_t key) const;
  // Every value of an array map, by index (a plain copy: spin locks inside
  // the values are not taken; read a quiet datapath).
  absl::StatusOr<std::vector<std::string>> ArrayValues(const std::string& map) const;
  // Keys present in a hash map (walked with get_next_key).
  absl::StatusOr<uint64_t> KeyCount(const std::string& map) const;
  // Cumulative run time and run count of the program (advance only while
  // statistics are enabled, see EnableRunStats).
  absl::StatusOr<ProgRunStats> RunStats() const;

 private:
  XdpProbe() = default;
  absl::StatusOr<size_t> Index(const std::string& name) const;
  int prog_fd_ = -1;
  uint32_t prog_id_ = 0;
  std::string prog_name_;
  std::vector<MapInfo> maps_;
  std::vector<int> map_fds_;  // parallel to maps_
};

// Turns on the kernel's BPF run-time statistics (BPF_ENABLE_STATS) for as
// long as the returned fd is open; close it to turn them off again. The
// kernel counts users, so this never switches off someone else's.
absl::StatusOr<int> EnableRunStats();

// "memlock:" of /proc/self/fdinfo/<fd>; 0 when absent.
uint64_t FdMemlock(int fd);

}  // namespace rematcher::bench

#endif  // REMATCHER_TOOLS_BENCH_IDLE_XDP_PROBE_H_
