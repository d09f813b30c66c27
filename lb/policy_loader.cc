#include "lb/policy_loader.h"

#include <dlfcn.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"

namespace rematcher {
namespace {

constexpr size_t kCreateErrorBytes = 512;

struct DlcloseDeleter {
  void operator()(void* handle) const {
    if (handle != nullptr) dlclose(handle);
  }
};
using DlHandle = std::unique_ptr<void, DlcloseDeleter>;

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsValidPolicyName(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string CreateErrorText(const char* buf) {
  std::string msg(buf, strnlen(buf, kCreateErrorBytes));
  return msg.empty() ? "(the plugin gave no message)" : msg;
}

// The guard between the core and one plugin instance.
class PluginPolicy final : public Policy {
 public:
  PluginPolicy(DlHandle handle, const rm_policy_v1* entry, void* instance,
               std::string origin)
      : handle_(std::move(handle)),
        entry_(entry),
        instance_(instance),
        name_(entry->name),
        origin_(std::move(origin)),
        abi_{entry->abi_major, entry->abi_minor},
        on_result_(RM_HAS_FIELD(entry, rm_policy_v1, on_result)
                       ? entry->on_result
                       : nullptr) {}

  ~PluginPolicy() override {
    // The instance must go before the code that implements it.
    entry_->destroy(instance_);
    instance_ = nullptr;
  }

  std::optional<size_t> Pick(const Snapshot& snapshot,
                             const Request& request) override {
    calls_.fetch_add(1, std::memory_order_relaxed);
    const size_t n = snapshot.backends.size();
    if (n == 0 || n > UINT32_MAX) {
      no_preference_.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    rm_snapshot snap = {};
    snap.struct_size = sizeof(snap);
    snap.num_backends = static_cast<uint32_t>(n);
    snap.now_ns = snapshot.now_ns;
    snap.backends = snapshot.backends.data();
    // ABI 1.3: passed only if there is one count per backend.
    snap.pending = snapshot.pending.size() == n ? snapshot.pending.data() : nullptr;

    rm_request req = {};
    req.struct_size = sizeof(req);
    req.client_id = request.client_id;
    req.current_backend =
        request.current_backend.has_value() && *request.current_backend < n
            ? static_cast<int32_t>(*request.current_backend)
            : -1;
    req.client_ipv4 = request.client_ipv4;
    req.client_port = request.client_port;
    req.requests_on_connection = request.requests_on_connection;
    req.connection_start_ns = request.connection_start_ns;
    req.previous_pick = -1;
    if (request.repeat) {
      req.flags |= RM_REQUEST_REPEAT;
      if (request.previous_pick.has_value() && *request.previous_pick < n)
        req.previous_pick = static_cast<int32_t>(*request.previous_pick);
    }

    const int32_t choice = entry_->pick(instance_, &snap, &req);
    if (choice < 0) {
      no_preference_.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    const size_t index = static_cast<size_t>(choice);
    if (index >= n) {
      plugin_errors_.fetch_add(1, std::memory_order_relaxed);
      LOG_EVERY_N(ERROR, 1000)
          << "policy " << name_ << " (" << origin_ << ") picked backend index "
          << choice << " but the snapshot has " << n
          << " backends; ignored, client stays on its current backend ("
          << google::COUNTER << " such errors so far)";
      return std::nullopt;
    }
    if (!IsEligible(snapshot.backends[index])) {
      plugin_errors_.fetch_add(1, std::memory_order_relaxed);
      const BackendInfo& b = snapshot.backends[index];
      LOG_EVERY_N(ERROR, 1000)
          << "policy " << name_ << " (" << origin_ << ") picked backend id "
          << b.id << " (index " << choice << ") which is not eligible (flags 0x"
          << std::hex << b.flags << std::dec << ", weight " << b.weight
          << "); ignored (" << google::COUNTER << " such errors so far)";
      return std::nullopt;
    }
    picked_.fetch_add(1, std::memory_order_relaxed);
    return index;
  }

  void OnResult(const Result& result) override {
    if (on_result_ == nullptr) return;
    rm_result res = {};
    res.struct_size = sizeof(res);
    res.backend_id = result.backend_id;
    res.status = result.ok ? RM_RESULT_OK : RM_RESULT_FAILED;
    res.first_byte_ns = result.first_byte_ns;
    res.last_byte_ns = result.last_byte_ns;
    on_result_(instance_, &res);
  }

  const std::string& name() const override { return name_; }
  AbiVersion abi_version() const override { return abi_; }
  const std::string& origin() const override { return origin_; }

  PolicyStats stats() const override {
    PolicyStats s;
    s.calls = calls_.load(std::memory_order_relaxed);
    s.picked = picked_.load(std::memory_order_relaxed);
    s.no_preference = no_preference_.load(std::memory_order_relaxed);
    s.plugin_errors = plugin_errors_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  DlHandle handle_;  // declared first: closed last
  const rm_policy_v1* const entry_;
  void* instance_;
  const std::string name_;
  const std::string origin_;
  const AbiVersion abi_;
  void (*const on_result_)(void*, const rm_result*);
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> picked_{0};
  std::atomic<uint64_t> no_preference_{0};
  std::atomic<uint64_t> plugin_errors_{0};
};

// Checks everything the host relies on before calling into the plugin.
absl::Status ValidateEntry(const rm_policy_v1* entry,
                           const std::string& origin) {
  if (entry == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("policy plugin ", origin, ": ", RM_POLICY_ENTRY_SYMBOL,
                     "() returned NULL instead of a policy descriptor"));
  }
  if (entry->struct_size < RM_POLICY_PREFIX_SIZE) {
    return absl::FailedPreconditionError(absl::StrCat(
        "policy plugin ", origin, ": descriptor struct_size is ",
        entry->struct_size, " bytes, smaller than the ", RM_POLICY_PREFIX_SIZE,
        "-byte header every ABI version starts with; corrupt descriptor"));
  }
  if (entry->abi_major != RM_POLICY_ABI_MAJOR) {
    return absl::FailedPreconditionError(absl::StrCat(
        "policy plugin ", origin, " was built against policy ABI ",
        entry->abi_major, ".", entry->abi_minor, " but this rematcher speaks ",
        RM_POLICY_ABI_MAJOR, ".", RM_POLICY_ABI_MINOR,
        "; major versions are incompatible, rebuild the plugin against this "
        "rematcher's plugins/rematcher_policy.h"));
  }
  if (entry->struct_size < RM_POLICY_V1_MIN_SIZE) {
    return absl::FailedPreconditionError(absl::StrCat(
        "policy plugin ", origin, ": descriptor struct_size is ",
        entry->struct_size, " bytes but ABI ", RM_POLICY_ABI_MAJOR,
        ".0 needs at least ", RM_POLICY_V1_MIN_SIZE,
        " (create, destroy, pick, on_result); corrupt or hand-built "
        "descriptor"));
  }
  if (entry->name == nullptr || entry->name[0] == '\0') {
    return absl::FailedPreconditionError(absl::StrCat(
        "policy plugin ", origin, ": descriptor has a NULL or empty name"));
  }
  const char* missing = entry->create == nullptr    ? "create"
                        : entry->destroy == nullptr ? "destroy"
                        : entry->pick == nullptr    ? "pick"
                                                    : nullptr;
  if (missing != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("policy plugin ", origin, " (policy '", entry->name,
                     "'): required function '", missing, "' is NULL"));
  }
  if (entry->abi_minor > RM_POLICY_ABI_MINOR) {
    LOG(INFO) << "policy plugin " << origin << " was built against ABI "
              << entry->abi_major << "." << entry->abi_minor
              << ", newer than this rematcher's " << RM_POLICY_ABI_MAJOR << "."
              << RM_POLICY_ABI_MINOR
              << "; what it added is ignored (compatible by the ABI rules)";
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Policy>> Instantiate(DlHandle handle,
                                                    const rm_policy_v1* entry,
                                                    const std::string& args,
                                                    const std::string& origin) {
  absl::Status valid = ValidateEntry(entry, origin);
  if (!valid.ok()) return valid;
  char err[kCreateErrorBytes] = {0};
  void* instance = entry->create(args.c_str(), err, sizeof(err));
  err[sizeof(err) - 1] = '\0';
  if (instance == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy '", entry->name, "' (", origin, ") refused --policy_args=\"",
        args, "\": ", CreateErrorText(err)));
  }
  LOG(INFO) << "policy '" << entry->name << "' loaded from " << origin
            << " (plugin ABI " << entry->abi_major << "." << entry->abi_minor
            << ", host " << RM_POLICY_ABI_MAJOR << "." << RM_POLICY_ABI_MINOR
            << ")" << (args.empty() ? "" : " args: " + args);
  return std::unique_ptr<Policy>(
      new PluginPolicy(std::move(handle), entry, instance, origin));
}

}  // namespace

absl::StatusOr<std::string> ResolvePolicyPath(
    const std::string& spec, const std::vector<std::string>& search_dirs) {
  if (spec.empty()) {
    return absl::InvalidArgumentError(
        "empty policy: give a built-in name (e.g. rr, p2c) or a path to a "
        ".so containing '/'");
  }
  if (spec.find('/') != std::string::npos) {
    if (!IsRegularFile(spec)) {
      return absl::NotFoundError(absl::StrCat(
          "policy plugin ", spec, " does not exist or is not a regular file"));
    }
    return spec;
  }
  if (!IsValidPolicyName(spec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy name '", spec,
        "' is not a valid name ([A-Za-z0-9_-]+); for a file in the current "
        "directory write ./",
        spec));
  }
  std::vector<std::string> tried;
  const std::string file = absl::StrCat("lib", spec, ".so");
  for (const std::string& dir : search_dirs) {
    for (const std::string& candidate :
         {absl::StrCat(dir, "/", file),
          absl::StrCat(dir, "/", spec, "/", file)}) {
      if (IsRegularFile(candidate)) return candidate;
      tried.push_back(candidate);
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "policy '", spec, "' not found: no ", file, " in any policy directory (",
      tried.empty() ? "no directories given" : absl::StrJoin(tried, ", "),
      "); pass a path containing '/' to load a custom plugin"));
}

absl::StatusOr<std::unique_ptr<Policy>> LoadPolicy(
    const std::string& spec, const std::string& args,
    const std::vector<std::string>& search_dirs) {
  absl::StatusOr<std::string> path = ResolvePolicyPath(spec, search_dirs);
  if (!path.ok()) return path.status();

  dlerror();
  DlHandle handle(dlopen(path->c_str(), RTLD_NOW | RTLD_LOCAL));
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(absl::StrCat(
        "policy plugin ", *path,
        " could not be loaded: ", why != nullptr ? why : "dlopen failed"));
  }
  dlerror();
  void* sym = dlsym(handle.get(), RM_POLICY_ENTRY_SYMBOL);
  if (sym == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "policy plugin ", *path, " does not export ", RM_POLICY_ENTRY_SYMBOL,
        "(): not a rematcher policy (build it with the rematcher_policy() "
        "Bazel macro or REMATCHER_DEFINE_POLICY, see plugins/example)"));
  }
  auto entry_fn = reinterpret_cast<rm_policy_entry_fn>(sym);
  const rm_policy_v1* entry = entry_fn();
  return Instantiate(std::move(handle), entry, args, *path);
}

absl::StatusOr<std::unique_ptr<Policy>> WrapPolicyEntry(
    const rm_policy_v1* entry, const std::string& args,
    const std::string& origin) {
  return Instantiate(DlHandle(nullptr), entry, args, origin);
}

std::vector<std::string> DefaultPolicySearchDirs(const std::string& argv0) {
  constexpr const char* kRunfilesSuffix = "rematcher/policies";
  std::vector<std::string> dirs;
  auto add = [&dirs](const std::string& dir) {
    if (dir.empty()) return;
    for (const std::string& d : dirs) {
      if (d == dir) return;
    }
    dirs.push_back(dir);
  };
  if (const char* r = std::getenv("RUNFILES_DIR"); r != nullptr && *r) {
    add(absl::StrCat(r, "/", kRunfilesSuffix));
  }
  if (const char* t = std::getenv("TEST_SRCDIR"); t != nullptr && *t) {
    add(absl::StrCat(t, "/", kRunfilesSuffix));
  }
  if (!argv0.empty()) {
    add(absl::StrCat(argv0, ".runfiles/", kRunfilesSuffix));
  }
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len > 0) {
    std::string self(exe, static_cast<size_t>(len));
    add(absl::StrCat(self, ".runfiles/", kRunfilesSuffix));
    std::string dir = DirName(self);
    add(absl::StrCat(dir, "/policies"));
    add(absl::StrCat(dir, "/../policies"));
    add(absl::StrCat(dir, "/../lib/rematcher/policies"));
  }
  return dirs;
}

}  // namespace rematcher
