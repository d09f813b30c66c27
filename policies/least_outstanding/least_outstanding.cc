// least_outstanding: the eligible backend with the fewest requests in flight
// (among those not stalled, if any: RM_BACKEND_STALLED).
//
// Ties are broken round-robin: the scan starts one past the previous choice,
// and the first backend with the minimum wins, so equally loaded backends
// take turns instead of the lowest index taking everything (which matters at
// low load, where every backend has 0 outstanding); a client whose current
// backend is among the least loaded stays there.
//
// Options: stick=N  stay on the current backend unless the least loaded has
//                   more than N fewer requests in flight (default 0: ties
//                   stay; -1: ties rotate for everyone). See Stickiness.
//          stick_pct=P  or fewer by more than P% of the current backend's
//                   count, if that is more (default 25; 0: off).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "plugins/policy_cc.h"
#include "policies/common/policy_util.h"

namespace {

using rematcher_plugin::PolicyArgs;
using rematcher_plugin::Snapshot;

class LeastOutstanding {
 public:
  static std::unique_ptr<LeastOutstanding> Create(PolicyArgs& args, std::string* error) {
    auto policy = std::make_unique<LeastOutstanding>();
    if (!policy->stick_.Read(args, error)) return nullptr;
    return policy;
  }

  int32_t Pick(const Snapshot& snap, const rm_request& req) {
    const size_t n = snap.size();
    int64_t best = -1;
    const rematcher_policies::Candidates candidate(snap);
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (next_ + k) % n;
      if (!candidate(snap[i])) continue;
      if (best < 0 || snap[i].outstanding < snap[best].outstanding) {
        best = static_cast<int64_t>(i);
      }
    }
    if (best < 0) return rematcher_plugin::kNoPreference;
    // A repeat keeps the earlier choice while it is still among the least
    // loaded, rather than flipping to the next in the rotation.
    const int32_t earlier = rm_request_previous(&req, &snap.raw());
    if (earlier >= 0 && earlier != best && candidate(snap[earlier]) &&
        snap[earlier].outstanding == snap[best].outstanding)
      best = earlier;
    const int32_t pick = stick_.Apply(snap, req, candidate, static_cast<int32_t>(best));
    // The rotation moves on only for a tie broken for a first decision (a
    // repeat, RM_REQUEST_REPEAT, is not another turn).
    if (pick == best && (req.flags & RM_REQUEST_REPEAT) == 0) next_ = static_cast<size_t>(best) + 1;
    return pick;
  }

 private:
  size_t next_ = 0;
  rematcher_policies::Stickiness stick_;
};

}  // namespace

REMATCHER_DEFINE_POLICY(LeastOutstanding, "least_outstanding")
