#include "lb/datapath.h"

#include <errno.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bpf/rematcher_bpf.skel.h"
#include "glog/logging.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

namespace rematcher {
namespace {

absl::Status Errno(int err, absl::string_view what) {
  if (err < 0) err = -err;
  return absl::ErrnoToStatus(err, what);
}

// What the `layout` map holds: the layout version and the sizes of the
// records an adopting process reads in place.
uint64_t LayoutWord() {
  return (uint64_t{RM_LAYOUT_VERSION} << 48) | (uint64_t{sizeof(rm_client)} << 32) |
         (uint64_t{sizeof(rm_pool)} << 16) | sizeof(rm_backend_load);
}

// A record of a map mmap'd from the datapath, copied 32 bits at a time
// without its lock: each word is one the datapath wrote whole, but a
// record being changed meanwhile may mix old and new fields (a hint).
template <typename T>
T ReadWords(const volatile T* src) {
  static_assert(sizeof(T) % 4 == 0, "records are made of 32-bit words");
  T out;
  const volatile uint32_t* w = reinterpret_cast<const volatile uint32_t*>(src);
  uint32_t* dst = reinterpret_cast<uint32_t*>(&out);
  for (size_t i = 0; i < sizeof(T) / 4; i++) dst[i] = w[i];
  return out;
}

// Whether a pinned `layout` map holds this build's LayoutWord().
bool HoldsThisLayout(int layout_fd) {
  uint32_t zero = 0;
  uint64_t word = 0;
  return bpf_map_lookup_elem(layout_fd, &zero, &word) == 0 && word == LayoutWord();
}

std::string PinPath(const std::string& dir, absl::string_view name) {
  return absl::StrCat(dir, "/", name);
}

// Another XDP program on the interface is not replaced silently.
absl::Status RefuseIfXdpAttached(int ifindex) {
  uint32_t existing = 0;
  if (bpf_xdp_query_id(ifindex, 0, &existing) == 0 && existing != 0) {
    char name[IF_NAMESIZE] = "?";
    if_indextoname(ifindex, name);
    return absl::FailedPreconditionError(absl::StrCat(
        "interface ", name, " already has an XDP program (id ", existing,
        "); remove it first (ip link set dev ", name, " xdp off)"));
  }
  return absl::OkStatus();
}

// An exclusive lock on the pin directory itself (flock works on any inode,
// bpffs directories included); the fd holds it.
absl::StatusOr<int> LockPinDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno(errno, absl::StrCat("opening ", dir));
  if (flock(fd, LOCK_EX | LOCK_NB)) {
    int e = errno;
    close(fd);
    if (e == EWOULDBLOCK)
      return absl::FailedPreconditionError(
          absl::StrCat("another rematcher is running with --pin_dir ", dir));
    return Errno(e, absl::StrCat("locking ", dir));
  }
  return fd;
}

}  // namespace

const char* StatName(int stat) {
  static const char* const kNames[RM_ST__MAX] = {
      "rx",
      "pass_not_ip",
      "pass_not_tcp",
      "pass_not_ours",
      "pass_fragment",
      "pass_pool_setup",
      "tx_client_to_backend",
      "tx_backend_to_client",
      "tx_synack",
      "tx_rst",
      "tx_finack",
      "tx_pool_ack",
      "handshakes",
      "splices",
      "rematches",
      "decision_applied",
      "decision_late",
      "pipelined",
      "closed_clean",
      "closed_retire",
      "drop_malformed",
      "drop_table_full",
      "drop_no_pool",
      "drop_mss",
      "drop_stale",
      "drop_bad_state",
      "drop_unsupported",
      "drop_pool_data",
      "pool_dead",
      "consumed",
      "stale_acked",
      "no_pool_wait",
      "rematch_declined_window",
      "events_lost",
      "pinned_response_unacked",
      "pinned_request_unacked",
      "retry_on_backend_close",
      "rematch_skipped_no_idle",
      "unpinned",
      "lock_stolen",
      "pool_verify",
      "pool_verified",
      "pool_unverified",
      "pool_reattached",
      "first_request_elsewhere",
      "arrival_rerouted",
      "pinned_framing",
      "pinned_response_owed",
      "pool_released_whole",
      "pool_parked",
      "pinned_response_held",
      "pool_ack_on_close",
  };
  if (stat < 0 || stat >= RM_ST__MAX) return "unknown";
  return kNames[stat];
}

uint64_t CoarseNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

absl::StatusOr<std::unique_ptr<Datapath>> Datapath::Load(const DatapathOptions& opts) {
  if (opts.max_clients == 0 || opts.max_clients > (1u << 22))
    return absl::InvalidArgumentError(
        absl::StrCat("max_clients must be in 1..", 1u << 22, ", got ", opts.max_clients));
  if (opts.max_pool == 0 || opts.max_pool > (1u << 20))
    return absl::InvalidArgumentError(
        absl::StrCat("max_pool must be in 1..", 1u << 20, ", got ", opts.max_pool));
  std::unique_ptr<Datapath> dp(new Datapath(opts));
  libbpf_set_strict_mode(LIBBPF_STRICT_ALL);
  dp->skel_ = rematcher_bpf__open();
  if (!dp->skel_) return Errno(errno, "opening the BPF object");
  auto* s = dp->skel_;
  int err = 0;
#if defined(__x86_64__) || defined(__i386__)
  // x86 keeps stores in order after earlier loads and stores: the records'
  // lock is released with a plain store (see rm_unlock).
  s->rodata->rm_store_is_release = 1;
#endif
  s->rodata->rm_ts_estimate = opts.estimate_backend_ts_clock ? 1 : 0;
  for (bpf_map* m : {s->maps.client_ids, s->maps.clients, s->maps.free_client_ids,
                     s->maps.decisions}) {
    if ((err = bpf_map__set_max_entries(m, opts.max_clients)))
      return Errno(err, "sizing client tables");
  }
  for (bpf_map* m : {s->maps.pool_ids, s->maps.pools}) {
    if ((err = bpf_map__set_max_entries(m, opts.max_pool)))
      return Errno(err, "sizing pool tables");
  }
  if (!opts.pin_dir.empty()) {
    if (auto st = dp->ReusePinnedMaps(); !st.ok()) return st;
  }
  // The idle queues' kind is the inner-map template's, checked by the
  // kernel on every queue installed (an adopted datapath keeps its own).
  const bpf_map_type idle_type = opts.idle_lifo ? BPF_MAP_TYPE_STACK : BPF_MAP_TYPE_QUEUE;
  if (bpf_map* inner = bpf_map__inner_map(s->maps.idle_pools);
      inner == nullptr || (err = bpf_map__set_type(inner, idle_type)))
    return Errno(inner ? err : -EINVAL, "setting the idle queues' kind");
  if ((err = rematcher_bpf__load(s)))
    return Errno(err, "loading the XDP program (verifier log above)");

  int ncpus = libbpf_num_possible_cpus();
  if (ncpus < 1) return Errno(ncpus, "counting CPUs");
  dp->ncpus_ = ncpus;

  if (dp->adopted_) {
    // The idle queues are the pinned outer map's: open them by id.
    for (uint32_t b = 0; b < RM_MAX_BACKENDS; b++) {
      uint32_t inner_id = 0;
      if (bpf_map_lookup_elem(bpf_map__fd(s->maps.idle_pools), &b, &inner_id))
        return Errno(errno, "reading the pinned idle-pool queues");
      int fd = bpf_map_get_fd_by_id(inner_id);
      if (fd < 0) return Errno(errno, "opening a pinned idle-pool queue");
      dp->idle_queue_fds_.push_back(fd);
    }
    // The pinned queues keep the kind they were created with.
    bpf_map_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(dp->idle_queue_fds_[0], &info, &len) == 0) {
      dp->idle_lifo_ = info.type == BPF_MAP_TYPE_STACK;
      if (dp->idle_lifo_ != opts.idle_lifo)
        LOG(WARNING) << "adopted idle pools are " << (dp->idle_lifo_ ? "LIFO" : "FIFO")
                     << " (the pinned datapath's); the requested order applies from the next "
                        "fresh start";
    }
  } else {
    // One idle queue per backend slot, created up front so the datapath
    // never sees a missing inner map.
    for (uint32_t b = 0; b < RM_MAX_BACKENDS; b++) {
      int fd = bpf_map_create(idle_type, "rm_idle", 0, sizeof(uint32_t),
                              RM_MAX_POOL_PER_BACKEND, nullptr);
      if (fd < 0) return Errno(errno, "creating an idle-pool queue");
      dp->idle_queue_fds_.push_back(fd);
      if (bpf_map_update_elem(bpf_map__fd(s->maps.idle_pools), &b, &fd, BPF_ANY))
        return Errno(errno, "installing an idle-pool queue");
    }
    for (uint32_t id = 0; id < opts.max_clients; id++) {
      if (bpf_map_update_elem(bpf_map__fd(s->maps.free_client_ids), nullptr, &id, 0))
        return Errno(errno, "filling the free client-id queue");
    }
    uint32_t zero = 0;
    uint64_t word = LayoutWord();
    if (bpf_map_update_elem(bpf_map__fd(s->maps.layout), &zero, &word, BPF_ANY))
      return Errno(errno, "writing the layout word");
    if (!opts.pin_dir.empty()) {
      if (auto st = dp->PinMaps(); !st.ok()) return st;
    }
  }

  dp->load_len_ = sizeof(rm_backend_load) * RM_MAX_BACKENDS;
  void* p = mmap(nullptr, dp->load_len_, PROT_READ | PROT_WRITE, MAP_SHARED,
                 bpf_map__fd(s->maps.backend_load), 0);
  if (p == MAP_FAILED) return Errno(errno, "mmap of backend_load");
  dp->load_ = static_cast<rm_backend_load*>(p);
  dp->decisions_len_ = sizeof(uint64_t) * opts.max_clients;
  p = mmap(nullptr, dp->decisions_len_, PROT_READ | PROT_WRITE, MAP_SHARED,
           bpf_map__fd(s->maps.decisions), 0);
  if (p == MAP_FAILED) return Errno(errno, "mmap of decisions");
  dp->decisions_ = static_cast<volatile uint64_t*>(p);
  static_assert(sizeof(rm_pool) % 8 == 0, "mmap'd array stride is the value size rounded to 8");
  dp->pools_len_ = sizeof(rm_pool) * opts.max_pool;
  p = mmap(nullptr, dp->pools_len_, PROT_READ, MAP_SHARED, bpf_map__fd(s->maps.pools), 0);
  if (p == MAP_FAILED) return Errno(errno, "mmap of pools");
  dp->pools_ = static_cast<const volatile rm_pool*>(p);
  static_assert(sizeof(rm_client) % 8 == 0,
                "mmap'd array stride is the value size rounded to 8");
  dp->clients_len_ = sizeof(rm_client) * opts.max_clients;
  p = mmap(nullptr, dp->clients_len_, PROT_READ, MAP_SHARED, bpf_map__fd(s->maps.clients), 0);
  if (p == MAP_FAILED) return Errno(errno, "mmap of clients");
  dp->clients_ = static_cast<const volatile rm_client*>(p);
  return dp;
}

absl::Status Datapath::ReusePinnedMaps() {
  const std::string& dir = opts_.pin_dir;
  if (mkdir(dir.c_str(), 0700) && errno != EEXIST)
    return Errno(errno, absl::StrCat("creating pin directory ", dir));
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs)) return Errno(errno, absl::StrCat("statfs ", dir));
  if (fs.f_type != BPF_FS_MAGIC)
    return absl::InvalidArgumentError(absl::StrCat(
        "--pin_dir ", dir, " is not on a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)"));
  // One process per pinned datapath: two would both decide, ACK and
  // manage the same pools. Held until this process exits.
  auto lock = LockPinDir(dir);
  if (!lock.ok()) return lock.status();
  pin_lock_fd_ = *lock;
  std::vector<std::pair<bpf_map*, int>> found;
  auto close_all = [&] {
    for (auto& [m, fd] : found) close(fd);
  };
  std::string missing;
  bpf_map* m;
  bpf_object__for_each_map(m, skel_->obj) {
    if (bpf_map__is_internal(m)) continue;
    int fd = bpf_obj_get(PinPath(dir, bpf_map__name(m)).c_str());
    if (fd < 0) {
      if (errno != ENOENT) {
        int e = errno;
        close_all();
        return Errno(e, absl::StrCat("opening pinned map ", PinPath(dir, bpf_map__name(m))));
      }
      if (missing.empty()) missing = bpf_map__name(m);
      continue;
    }
    found.push_back({m, fd});
  }
  if (found.empty()) return absl::OkStatus();  // nothing pinned: a fresh start
  if (!missing.empty()) {
    close_all();
    return absl::FailedPreconditionError(absl::StrCat(
        "the datapath pinned in ", dir, " is incomplete (no map '", missing,
        "'); remove it with --unload"));
  }
  // Same layout and sizes, or no adoption: a record read in another
  // layout would be silently wrong.
  for (auto& [map, fd] : found) {
    bpf_map_info info{};
    uint32_t len = sizeof(info);
    absl::Status bad;
    if (bpf_obj_get_info_by_fd(fd, &info, &len)) {
      bad = Errno(errno, "reading a pinned map's info");
    } else if (info.type != bpf_map__type(map) || info.key_size != bpf_map__key_size(map) ||
               info.map_flags != bpf_map__map_flags(map)) {
      bad = absl::FailedPreconditionError(absl::StrCat(
          "pinned map '", bpf_map__name(map), "' in ", dir,
          " has another type, key or flags than this build's (pinned by another version "
          "of rematcher?); remove it with --unload"));
    } else if (info.value_size != bpf_map__value_size(map) ||
               info.max_entries != bpf_map__max_entries(map)) {
      bad = absl::FailedPreconditionError(absl::StrCat(
          "pinned map '", bpf_map__name(map), "' in ", dir, " has ", info.max_entries,
          " entries of ", info.value_size, " bytes where this build and these flags need ",
          bpf_map__max_entries(map), " of ", bpf_map__value_size(map),
          " (was it pinned with other --max_clients, --max_backends or "
          "--max_conns_per_backend?); remove it with --unload"));
    } else if (absl::string_view(bpf_map__name(map)) == "layout") {
      if (!HoldsThisLayout(fd))
        bad = absl::FailedPreconditionError(absl::StrCat(
            "the datapath pinned in ", dir,
            " was made by a build with another record layout; remove it with --unload"));
    }
    if (!bad.ok()) {
      close_all();
      return bad;
    }
  }
  for (auto& [map, fd] : found) {
    int err = bpf_map__reuse_fd(map, fd);
    if (err) {
      close_all();
      return Errno(err, absl::StrCat("reusing pinned map ", bpf_map__name(map)));
    }
  }
  close_all();  // reuse_fd took duplicates
  adopted_ = true;
  return absl::OkStatus();
}

absl::Status Datapath::PinMaps() {
  bpf_map* m;
  bpf_object__for_each_map(m, skel_->obj) {
    if (bpf_map__is_internal(m)) continue;
    std::string path = PinPath(opts_.pin_dir, bpf_map__name(m));
    if (int err = bpf_map__pin(m, path.c_str()))
      return Errno(err, absl::StrCat("pinning map at ", path));
  }
  return absl::OkStatus();
}

absl::Status Datapath::AttachPinned(int ifindex) {
  const std::string path = PinPath(opts_.pin_dir, "link");
  int lfd = bpf_obj_get(path.c_str());
  if (lfd >= 0) {
    bpf_link_info info{};
    uint32_t len = sizeof(info);
    absl::Status bad;
    if (bpf_obj_get_info_by_fd(lfd, &info, &len)) {
      bad = Errno(errno, absl::StrCat("reading pinned link ", path));
    } else if (info.type != BPF_LINK_TYPE_XDP || info.xdp.ifindex != static_cast<uint32_t>(ifindex)) {
      bad = absl::FailedPreconditionError(absl::StrCat(
          "the link pinned at ", path, " is not XDP on this interface; remove it with --unload"));
    } else if (!adopted_) {
      bad = absl::FailedPreconditionError(absl::StrCat(
          "a link is pinned at ", path, " but no maps beside it; remove it with --unload"));
    } else if (bpf_link_update(lfd, prog_fd(), nullptr)) {
      bad = Errno(errno, absl::StrCat("swapping the program in pinned link ", path));
    }
    if (!bad.ok()) {
      close(lfd);
      return bad;
    }
    pinned_link_fd_ = lfd;
    return absl::OkStatus();
  }
  if (errno != ENOENT) return Errno(errno, absl::StrCat("opening pinned link ", path));
  if (auto st = RefuseIfXdpAttached(ifindex); !st.ok()) return st;
  bpf_link* l = bpf_program__attach_xdp(skel_->progs.xdp_rematcher, ifindex);
  if (!l) return Errno(errno, "attaching XDP in native mode (--pin_dir needs native XDP)");
  if (int err = bpf_link__pin(l, path.c_str())) {
    bpf_link__destroy(l);
    return Errno(err, absl::StrCat("pinning the XDP link at ", path));
  }
  link_ = l;  // destroying it only closes our fd: the pin keeps it attached
  return absl::OkStatus();
}

namespace {
// Every live record of the pinned `pools` map, if the pinned layout is this
// build's (-1 if not, or if the maps cannot be read).
int64_t ForEachPinnedPool(const std::string& pin_dir,
                          const std::function<void(const rm_pool&)>& fn) {
  int layout = bpf_obj_get(PinPath(pin_dir, "layout").c_str());
  int pools = bpf_obj_get(PinPath(pin_dir, "pools").c_str());
  int clients = bpf_obj_get(PinPath(pin_dir, "clients").c_str());
  int64_t seen = -1;
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  if (layout >= 0 && pools >= 0 && HoldsThisLayout(layout) &&
      bpf_obj_get_info_by_fd(pools, &info, &len) == 0 &&
      info.value_size == sizeof(rm_pool)) {
    seen = 0;
    rm_pool rec;
    for (uint32_t k = 0; k < info.max_entries; k++) {
      if (bpf_map_lookup_elem(pools, &k, &rec)) continue;
      if (!PoolLive(rec)) continue;
      rm_client c;
      if (rec.state == RM_P_BUSY && clients >= 0 &&
          bpf_map_lookup_elem(clients, &rec.owner, &c) == 0)
        UseOwnerSeqs(&rec, k, c);
      fn(rec);
      seen++;
    }
  }
  for (int fd : {layout, pools, clients})
    if (fd >= 0) close(fd);
  return seen;
}
}  // namespace

absl::Status Datapath::Unload(const std::string& pin_dir,
                              const std::function<void(const rm_pool&)>& on_pool,
                              int64_t* pools_seen) {
  auto lock = LockPinDir(pin_dir);
  if (!lock.ok()) {
    if (absl::IsNotFound(lock.status()))
      return absl::NotFoundError(absl::StrCat("nothing is pinned in ", pin_dir));
    return lock.status();
  }
  struct Unlock {
    int fd;
    ~Unlock() { close(fd); }
  } unlock{*lock};
  DIR* d = opendir(pin_dir.c_str());
  if (!d) return Errno(errno, absl::StrCat("opening ", pin_dir));
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  // The link first: the program stops before its maps go.
  std::sort(names.begin(), names.end(), [](const std::string& a, const std::string& b) {
    return (a == "link") > (b == "link") || ((a == "link") == (b == "link") && a < b);
  });
  bool pools_done = on_pool == nullptr;
  for (const std::string& n : names) {
    std::string path = PinPath(pin_dir, n);
    if (!pools_done && n != "link") {
      // The link is gone (sorted first): nothing changes the records now.
      pools_done = true;
      const int64_t seen = ForEachPinnedPool(pin_dir, on_pool);
      if (pools_seen) *pools_seen = seen;
    }
    if (unlink(path.c_str())) return Errno(errno, absl::StrCat("removing ", path));
  }
  if (rmdir(pin_dir.c_str())) return Errno(errno, absl::StrCat("removing ", pin_dir));
  return absl::OkStatus();
}

Datapath::~Datapath() {
  Detach();
  if (pin_lock_fd_ >= 0) close(pin_lock_fd_);
  if (load_) munmap(load_, load_len_);
  if (decisions_) munmap(const_cast<uint64_t*>(decisions_), decisions_len_);
  if (pools_) munmap(const_cast<rm_pool*>(pools_), pools_len_);
  if (clients_) munmap(const_cast<rm_client*>(clients_), clients_len_);
  for (int fd : idle_queue_fds_) close(fd);
  if (skel_) rematcher_bpf__destroy(skel_);
}

absl::Status Datapath::Attach(int ifindex, bool allow_generic) {
  if (link_ || generic_ || pinned_link_fd_ >= 0)
    return absl::FailedPreconditionError("already attached");
  if (!opts_.pin_dir.empty()) return AttachPinned(ifindex);
  if (auto st = RefuseIfXdpAttached(ifindex); !st.ok()) return st;
  bpf_link* l = bpf_program__attach_xdp(skel_->progs.xdp_rematcher, ifindex);
  if (l) {
    link_ = l;
    return absl::OkStatus();
  }
  int native_err = errno;
  if (!allow_generic)
    return Errno(native_err,
                 "attaching XDP in native mode (pass --allow_generic_xdp to fall back)");
  LIBBPF_OPTS(bpf_xdp_attach_opts, o);
  if (bpf_xdp_attach(ifindex, bpf_program__fd(skel_->progs.xdp_rematcher),
                     XDP_FLAGS_SKB_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST, &o))
    return Errno(errno, "attaching XDP in generic mode");
  generic_ = true;
  generic_ifindex_ = ifindex;
  LOG(WARNING) << "!!! XDP attached in GENERIC (skb) mode: native attach failed ("
               << strerror(native_err) << "). Expect several times the CPU cost "
               << "per packet; this is for testing only. !!!";
  return absl::OkStatus();
}

void Datapath::Detach() {
  if (pinned_link_fd_ >= 0) {
    close(pinned_link_fd_);  // the pin keeps it attached
    pinned_link_fd_ = -1;
  }
  if (link_) {
    bpf_link__destroy(link_);
    link_ = nullptr;
  }
  if (generic_) {
    bpf_xdp_detach(generic_ifindex_, XDP_FLAGS_SKB_MODE, nullptr);
    generic_ = false;
  }
}

int Datapath::prog_fd() const { return bpf_program__fd(skel_->progs.xdp_rematcher); }
int Datapath::ctl_prog_fd() const { return bpf_program__fd(skel_->progs.xdp_ctl); }
int Datapath::events_fd() const { return bpf_map__fd(skel_->maps.events); }

absl::Status Datapath::SetEventWakeups(bool on) {
  // rb_send wakes when the consumer has caught up with the last wakeup's
  // position: 0 makes the next event wake, all-ones makes none do.
  uint32_t z = 0;
  uint64_t v = on ? 0 : ~0ull;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.events_woken), &z, &v, BPF_ANY))
    return Errno(errno, "events_woken update");
  return absl::OkStatus();
}

absl::Status Datapath::SetConfig(const rm_config& cfg) {
  uint32_t z = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.config), &z, &cfg, BPF_ANY))
    return Errno(errno, "writing config");
  return absl::OkStatus();
}

absl::StatusOr<rm_config> Datapath::GetConfig() const {
  uint32_t z = 0;
  rm_config cfg{};
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.config), &z, &cfg))
    return Errno(errno, "reading config");
  return cfg;
}

absl::Status Datapath::SetBackend(uint32_t id, const rm_backend& b) {
  if (id >= RM_MAX_BACKENDS) return absl::OutOfRangeError(absl::StrCat("backend id ", id));
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.backends), &id, &b, BPF_ANY))
    return Errno(errno, "writing backend");
  return absl::OkStatus();
}

absl::StatusOr<rm_backend> Datapath::GetBackend(uint32_t id) const {
  rm_backend b{};
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.backends), &id, &b))
    return Errno(errno, "reading backend");
  return b;
}

absl::Status Datapath::SetBackendList(const std::vector<uint32_t>& ids) {
  if (ids.size() > RM_MAX_BACKENDS) return absl::OutOfRangeError("too many backends");
  for (uint32_t i = 0; i < ids.size(); i++) {
    if (bpf_map_update_elem(bpf_map__fd(skel_->maps.backend_list), &i, &ids[i], BPF_ANY))
      return Errno(errno, "writing backend list");
  }
  auto cfg = GetConfig();
  if (!cfg.ok()) return cfg.status();
  cfg->num_backends = ids.size();
  return SetConfig(*cfg);
}

const rm_backend_load& Datapath::BackendLoad(uint32_t id) const {
  CHECK_LT(id, static_cast<uint32_t>(RM_MAX_BACKENDS));
  return load_[id];
}

void Datapath::SetBackendAlt(uint32_t id, uint32_t alt) {
  CHECK_LT(id, static_cast<uint32_t>(RM_MAX_BACKENDS));
  const uint32_t v = alt < RM_MAX_BACKENDS ? alt + 1 : 0;
  volatile uint32_t* slot = &load_[id].alt;
  if (*slot != v) *slot = v;
}

void Datapath::ResetBackendLoad(uint32_t id) {
  CHECK_LT(id, static_cast<uint32_t>(RM_MAX_BACKENDS));
  memset(&load_[id], 0, sizeof(load_[id]));
}

absl::Status Datapath::PutPool(uint32_t pid, const rm_pool& p, bool map_tuple) {
  if (pid >= opts_.max_pool) return absl::OutOfRangeError(absl::StrCat("pool id ", pid));
  if (auto st = RecordCtl(RM_CTL_PUT_POOL, pid, &p, nullptr, sizeof(p)); !st.ok())
    return absl::Status(st.code(), absl::StrCat("writing pool record: ", st.message()));
  if (map_tuple && bpf_map_update_elem(bpf_map__fd(skel_->maps.pool_ids), &p.key, &pid, BPF_ANY))
    return Errno(errno, "mapping pool tuple");
  return absl::OkStatus();
}

absl::StatusOr<rm_pool> Datapath::GetPool(uint32_t pid) const {
  rm_pool p{};
  if (auto st = RecordCtl(RM_CTL_GET_POOL, pid, nullptr, &p, sizeof(p)); !st.ok())
    return absl::Status(st.code(), absl::StrCat("reading pool record: ", st.message()));
  return p;
}

std::optional<rm_pool> Datapath::PeekPool(uint32_t pid) const {
  if (pid >= opts_.max_pool || !pools_) return std::nullopt;
  return ReadWords(&pools_[pid]);
}

std::optional<rm_client> Datapath::PeekClient(uint32_t id) const {
  if (id >= opts_.max_clients || !clients_) return std::nullopt;
  return ReadWords(&clients_[id]);
}

absl::Status Datapath::DeletePool(uint32_t pid, const rm_pool_key& key) {
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.pool_ids), &key);
  rm_pool p{};
  p.state = RM_P_FREE;
  p.owner = RM_NO_ID;
  if (auto st = RecordCtl(RM_CTL_PUT_POOL, pid, &p, nullptr, sizeof(p)); !st.ok())
    return absl::Status(st.code(), absl::StrCat("clearing pool record: ", st.message()));
  return absl::OkStatus();
}

absl::Status Datapath::RecordCtl(uint32_t op, uint32_t id, const void* in_rec, void* out_rec,
                                 size_t len) const {
  rm_ctl cmd{};
  cmd.op = op;
  cmd.client_id = id;
  auto r = RunCtlWith(cmd, in_rec, out_rec, len);
  if (!r.ok()) return r.status();
  if (*r != 0) return absl::NotFoundError(absl::StrCat("no record ", id));
  return absl::OkStatus();
}

absl::StatusOr<int32_t> Datapath::RunCtlWith(const rm_ctl& cmd, const void* in_rec,
                                             void* out_rec, size_t len) const {
  static_assert(sizeof(rm_client) <= RM_CTL_RECORD_MAX && sizeof(rm_pool) <= RM_CTL_RECORD_MAX,
                "RM_CTL_RECORD_MAX too small");
  CHECK_LE(len, static_cast<size_t>(RM_CTL_RECORD_MAX));
  // The command after a 14-byte dummy Ethernet header, then the record.
  constexpr size_t kHdr = 14 + sizeof(rm_ctl);
  unsigned char in[kHdr + RM_CTL_RECORD_MAX] = {};
  unsigned char out[sizeof(in) + 64] = {};
  memcpy(in + 14, &cmd, sizeof(cmd));
  if (in_rec) memcpy(in + kHdr, in_rec, len);
  LIBBPF_OPTS(bpf_test_run_opts, o);
  o.data_in = in;
  o.data_size_in = kHdr + len;
  o.data_out = out;
  o.data_size_out = sizeof(out);
  o.repeat = 1;
  if (bpf_prog_test_run_opts(ctl_prog_fd(), &o)) return Errno(errno, "running xdp_ctl");
  rm_ctl res;
  memcpy(&res, out + 14, sizeof(res));
  if (res.result == 0 && out_rec) memcpy(out_rec, out + kHdr, len);
  return res.result;
}

absl::Status Datapath::PushIdle(uint32_t backend, uint32_t pid, uint16_t gen) {
  if (backend >= idle_queue_fds_.size()) return absl::OutOfRangeError("backend id");
  uint32_t entry = RM_IDLE_ENTRY(pid, gen & 0xfff);
  if (bpf_map_update_elem(idle_queue_fds_[backend], nullptr, &entry, 0))
    return Errno(errno, "queueing idle pooled connection");
  __atomic_fetch_add(&load_[backend].idle, 1, __ATOMIC_RELAXED);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<uint32_t>> Datapath::PopIdle(uint32_t backend) {
  if (backend >= idle_queue_fds_.size()) return absl::OutOfRangeError("backend id");
  uint32_t pid;
  if (bpf_map_lookup_and_delete_elem(idle_queue_fds_[backend], nullptr, &pid)) {
    if (errno == ENOENT) return std::optional<uint32_t>();
    return Errno(errno, "popping idle pooled connection");
  }
  __atomic_fetch_sub(&load_[backend].idle, 1, __ATOMIC_RELAXED);
  return std::optional<uint32_t>(RM_IDLE_PID(pid));
}

void Datapath::UncountIdle(uint32_t backend) {
  if (backend < RM_MAX_BACKENDS) __atomic_fetch_sub(&load_[backend].idle, 1, __ATOMIC_RELAXED);
}

absl::StatusOr<size_t> Datapath::CompactIdle(uint32_t backend) {
  if (backend >= idle_queue_fds_.size()) return absl::OutOfRangeError("backend id");
  int fd = idle_queue_fds_[backend];
  std::vector<uint32_t> keep;
  size_t dropped = 0;
  for (uint32_t i = 0; i <= RM_MAX_POOL_PER_BACKEND; i++) {
    uint32_t e;
    if (bpf_map_lookup_and_delete_elem(fd, nullptr, &e)) {
      if (errno == ENOENT) break;
      return Errno(errno, "compacting idle queue");
    }
    // A peek: a locked read per entry was a syscall each, milliseconds of
    // a CPU for a queue of thousands. The connections whose entries are out of
    // the queue cannot be taken meanwhile; the datapath can only kill one
    // (IDLE -> DEAD, one word), and the generation changes only on this
    // thread. A dead one kept by a stale read is skipped by the datapath.
    std::optional<rm_pool> rec = PeekPool(RM_IDLE_PID(e));
    if (rec && rec->state == RM_P_IDLE && (rec->gen & 0xfff) == RM_IDLE_GEN(e))
      keep.push_back(e);
    else
      dropped++;
  }
  // Back in the order they were: a queue pops oldest first, a stack
  // newest first (its warmest connection must stay on top).
  if (idle_lifo_) std::reverse(keep.begin(), keep.end());
  for (uint32_t e : keep)
    if (bpf_map_update_elem(fd, nullptr, &e, 0))
      return Errno(errno, "requeueing idle pooled connection");
  return dropped;
}

absl::StatusOr<rm_client> Datapath::GetClient(uint32_t id) const {
  rm_client c{};
  if (auto st = RecordCtl(RM_CTL_GET_CLIENT, id, nullptr, &c, sizeof(c)); !st.ok())
    return absl::Status(st.code(), absl::StrCat("reading client record: ", st.message()));
  return c;
}

absl::StatusOr<std::optional<uint32_t>> Datapath::LookupClient(const rm_flow_key& key) const {
  uint32_t id;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.client_ids), &key, &id)) {
    if (errno == ENOENT) return std::optional<uint32_t>();
    return Errno(errno, "looking up client");
  }
  return std::optional<uint32_t>(id);
}

absl::Status Datapath::ForEachClient(
    const std::function<void(uint32_t, const rm_client&)>& fn) const {
  if (!clients_) return absl::FailedPreconditionError("client table not mapped");
  // No lock: the records are read as they stand, each word as last
  // written; callers treat them as hints and act through xdp_ctl, which
  // checks again under the lock. A free slot costs one word read (the
  // table is sized for --max_clients, mostly free), not a copy.
  for (uint32_t id = 0; id < opts_.max_clients; id++) {
    const volatile rm_client* src = &clients_[id];
    if (src->state == RM_C_FREE) continue;
    const rm_client c = ReadWords(src);
    if (c.state != RM_C_FREE) fn(id, c);
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> Datapath::RunCtl(uint32_t op, uint32_t id, uint64_t older_than_ns) {
  rm_ctl c{};
  c.op = op;
  c.client_id = id;
  c.older_than_ns = older_than_ns;
  return RunCtl(c);
}

absl::StatusOr<int32_t> Datapath::RunCtl(const rm_ctl& cmd) {
  return RunCtlWith(cmd, nullptr, nullptr, 0);
}

absl::Status Datapath::FreeClient(uint32_t id, uint64_t older_than_ns) {
  return RunCtl(RM_CTL_FREE_CLIENT, id, older_than_ns).status();
}

absl::StatusOr<bool> Datapath::RetireIdlePool(uint32_t pid, uint64_t older_than_ns) {
  auto r = RunCtl(RM_CTL_RETIRE_IDLE_POOL, pid, older_than_ns);
  if (!r.ok()) return r.status();
  return *r == 1;
}

absl::StatusOr<int32_t> Datapath::UnparkPool(uint32_t pid, const rm_pool& sent) {
  rm_ctl c{};
  c.op = RM_CTL_UNPARK_POOL;
  c.client_id = pid;
  c.backend_id = sent.lb_nxt;
  c.older_than_ns = (static_cast<uint64_t>(sent.be_nxt) << 32) | sent.lb_ts_last;
  c.now_ns = sent.be_ts_last;
  return RunCtl(c);
}

absl::Status Datapath::ReleaseIdleClient(uint32_t id, uint64_t older_than_ns) {
  return RunCtl(RM_CTL_RELEASE_IDLE, id, older_than_ns).status();
}

namespace {
// rm_decision_t: the request number it is for, and the backend id + 1.
uint64_t EncodeDecision(uint32_t req_no, uint32_t backend) {
  return (static_cast<uint64_t>(req_no) << 32) | (backend + 1);
}
}  // namespace

void Datapath::SetDecision(uint32_t client, uint32_t req_no, uint32_t backend) {
  if (client >= opts_.max_clients) return;
  __atomic_store_n(const_cast<uint64_t*>(&decisions_[client]), EncodeDecision(req_no, backend),
                   __ATOMIC_RELEASE);
}

bool Datapath::ReplaceDecision(uint32_t client, uint64_t expect, uint32_t req_no,
                               uint32_t backend) {
  if (client >= opts_.max_clients) return false;
  return __atomic_compare_exchange_n(const_cast<uint64_t*>(&decisions_[client]), &expect,
                                     EncodeDecision(req_no, backend), false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE);
}

uint64_t Datapath::GetDecision(uint32_t client) const {
  if (client >= opts_.max_clients) return 0;
  return __atomic_load_n(const_cast<uint64_t*>(&decisions_[client]), __ATOMIC_ACQUIRE);
}

absl::StatusOr<uint64_t> Datapath::SumCounter(uint32_t index,
                                               std::vector<uint64_t>* per_cpu) const {
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.stats), &index, per_cpu->data()))
    return Errno(errno, "reading counters");
  uint64_t sum = 0;
  for (uint64_t v : *per_cpu) sum += v;
  return sum;
}

absl::StatusOr<StatsArray> Datapath::Stats() const {
  StatsArray out{};
  std::vector<uint64_t> per_cpu(ncpus_);
  for (uint32_t i = 0; i < RM_ST__MAX; i++) {
    absl::StatusOr<uint64_t> v = SumCounter(i, &per_cpu);
    if (!v.ok()) return v.status();
    out[i] = *v;
  }
  return out;
}

uint64_t Datapath::Counter(uint32_t index) const {
  if (index >= RM_ST__MAX) return 0;
  std::vector<uint64_t> per_cpu(ncpus_);
  absl::StatusOr<uint64_t> v = SumCounter(index, &per_cpu);
  return v.ok() ? *v : 0;
}

}  // namespace rematcher
