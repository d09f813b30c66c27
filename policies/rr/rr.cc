// rr: round robin over eligible backends (healthy, not draining, weight > 0).
//
// A cursor walks the snapshot by index; ineligible backends are skipped, so
// a backend that goes away only shifts the rotation. Weights are ignored
// except that weight 0 excludes a backend (see weighted_rr). A repeat
// (the core asking again about a next request it already asked about,
// RM_REQUEST_REPEAT) keeps the earlier choice, unless that backend is now
// stalled or out of service, and is not another turn: the
// core asks twice per request, and counting both sent a lone client to
// every other backend only (one of two, for good). No options.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "plugins/policy_cc.h"

namespace {

using rematcher_plugin::PolicyArgs;
using rematcher_plugin::Snapshot;

class RoundRobin {
 public:
  static std::unique_ptr<RoundRobin> Create(PolicyArgs&, std::string*) {
    return std::make_unique<RoundRobin>();
  }

  int32_t Pick(const Snapshot& snap, const rm_request& req) {
    const int32_t earlier = rm_request_previous(&req, &snap.raw());
    if (earlier >= 0 && rematcher_plugin::IsPreferred(snap[earlier])) return earlier;
    const size_t n = snap.size();
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (next_ + k) % n;
      if (rematcher_plugin::IsEligible(snap[i])) {
        next_ = i + 1;
        return static_cast<int32_t>(i);
      }
    }
    return rematcher_plugin::kNoPreference;
  }

 private:
  size_t next_ = 0;
};

}  // namespace

REMATCHER_DEFINE_POLICY(RoundRobin, "rr")
