// The core's view of a load-balancing policy.
//
// The core keeps one `std::vector<BackendInfo>` (== rm_backend_info, the
// plugin ABI struct, so nothing is converted per call), wraps it in a
// Snapshot and, each time a client's request finishes, calls Policy::Pick to
// choose the backend for that client's NEXT request. The Policy returned by
// the loader (lb/policy_loader.h) bounds-checks the plugin and counts every
// outcome, so the core can trust whatever Pick returns:
//   - an index i < snapshot.backends.size() of an ELIGIBLE backend
//     (healthy, not draining, weight > 0), or
//   - std::nullopt: keep the client where it is.
//
// Threading: Pick/OnResult on one thread at a time per Policy (the plugin ABI
// contract); stats() may be called from any thread at any time.
#ifndef REMATCHER_LB_POLICY_H_
#define REMATCHER_LB_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/types/span.h"
#include "plugins/rematcher_policy.h"

namespace rematcher {

// Same type as the plugin ABI's, so the core's vector is handed to the plugin
// as is. Flags: RM_BACKEND_HEALTHY, RM_BACKEND_DRAINING, RM_BACKEND_STALLED.
using BackendInfo = rm_backend_info;

inline bool IsEligible(const BackendInfo& b) {
  return rm_backend_eligible(&b) != 0;
}

// A read-only, borrowed view of the backends at one instant. OWNERSHIP: the
// core owns `backends`; it must outlive the Pick call (and nothing longer).
struct Snapshot {
  uint64_t now_ns = 0;  // CLOCK_MONOTONIC
  absl::Span<const BackendInfo> backends;
  // Parallel to backends, or empty: of each backend's outstanding, the
  // decisions made for it and not started yet (rm_snapshot.pending).
  absl::Span<const uint32_t> pending;
};

// The client whose request just finished.
struct Request {
  uint32_t client_id = 0;
  // Index into Snapshot::backends of the backend serving it now, if any.
  std::optional<size_t> current_backend;
  // This client's next request was decided before (at its request's start,
  // or by an earlier re-decision) and this call replaces that choice
  // (RM_REQUEST_REPEAT): previous_pick is the index of the backend chosen
  // then, if it is still in the snapshot.
  bool repeat = false;
  std::optional<size_t> previous_pick;
  uint64_t requests_on_connection = 0;  // including the one that finished
  uint32_t client_ipv4 = 0;             // network byte order
  uint16_t client_port = 0;             // network byte order
  uint64_t connection_start_ns = 0;     // CLOCK_MONOTONIC
};

// Feedback once a response has completed (forwarded only to plugins that
// asked for it).
struct Result {
  uint32_t backend_id = 0;  // BackendInfo::id
  bool ok = true;           // false: reset / closed mid-response
  uint64_t first_byte_ns = 0;
  uint64_t last_byte_ns = 0;
};

struct AbiVersion {
  uint16_t major = 0;
  uint16_t minor = 0;
};

// Monotonic counters. calls == picked + no_preference + plugin_errors.
struct PolicyStats {
  uint64_t calls = 0;          // Pick calls
  uint64_t picked = 0;         // returned a backend
  uint64_t no_preference = 0;  // plugin declined (or no backends at all)
  // Plugin returned something the host refused (index out of range, or a
  // backend that is not eligible); treated as no preference.
  uint64_t plugin_errors = 0;
};

class Policy {
 public:
  virtual ~Policy() = default;

  // The backend for the client's next request, or nullopt for "keep it where
  // it is". Never fails and never returns an out-of-range or ineligible index.
  virtual std::optional<size_t> Pick(const Snapshot& snapshot,
                                     const Request& request) = 0;

  // Feedback; a no-op for policies that did not ask for it.
  virtual void OnResult(const Result& result) = 0;

  // The plugin's own name (rm_policy_v1.name), e.g. "p2c".
  virtual const std::string& name() const = 0;
  // The ABI version the plugin was built against.
  virtual AbiVersion abi_version() const = 0;
  // Where it came from (the .so path), for logs and status pages.
  virtual const std::string& origin() const = 0;
  virtual PolicyStats stats() const = 0;
};

}  // namespace rematcher

#endif  // REMATCHER_LB_POLICY_H_
