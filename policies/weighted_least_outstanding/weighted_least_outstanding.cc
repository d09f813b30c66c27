// weighted_least_outstanding: the eligible backend (not stalled, if any are
// not) with the lowest
// (outstanding + 1) / weight, i.e. the fewest requests in flight per unit of
// capacity. The +1 counts the request being placed, so at equal load the
// heavier backend wins, and an idle weight-1 backend loses to a weight-4
// backend until the latter has 3 requests in flight. At steady load the
// in-flight counts settle in proportion to the weights.
//
// Scores are compared exactly (cross-multiplied integers). Ties are broken
// round-robin from one past the previous choice.
//
// Options: stick=N  stay on the current backend unless the least loaded
//                   one's score is lower even with N requests taken off the
//                   current one's (default -1: ties rotate for everyone,
//                   so shares follow the weights; 0: ties stay). See
//                   Stickiness::ApplyWeighted.
//          stick_pct=P  N is at least P% of the current backend's count
//                   (default 0; given alone, it turns stick on at 0).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "plugins/policy_cc.h"
#include "policies/common/policy_util.h"

namespace {

using rematcher_plugin::PolicyArgs;
using rematcher_plugin::Snapshot;

class WeightedLeastOutstanding {
 public:
  static std::unique_ptr<WeightedLeastOutstanding> Create(PolicyArgs& args,
                                                          std::string* error) {
    auto policy = std::make_unique<WeightedLeastOutstanding>();
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
      if (best < 0 ||
          rematcher_policies::CompareWeightedLoad(snap[i], snap[best]) < 0) {
        best = static_cast<int64_t>(i);
      }
    }
    if (best < 0) return rematcher_plugin::kNoPreference;
    // A repeat keeps the earlier choice while it is still among the least
    // loaded (per unit of weight).
    const int32_t earlier = rm_request_previous(&req, &snap.raw());
    if (earlier >= 0 && earlier != best && candidate(snap[earlier]) &&
        rematcher_policies::CompareWeightedLoad(snap[earlier], snap[best]) == 0)
      best = earlier;
    const int32_t pick = stick_.ApplyWeighted(snap, req, candidate, static_cast<int32_t>(best));
    // A repeat (RM_REQUEST_REPEAT) is not another turn of the tie rotation.
    if (pick == best && (req.flags & RM_REQUEST_REPEAT) == 0) next_ = static_cast<size_t>(best) + 1;
    return pick;
  }

 private:
  size_t next_ = 0;
  rematcher_policies::Stickiness stick_{-1};
};

}  // namespace

REMATCHER_DEFINE_POLICY(WeightedLeastOutstanding, "weighted_least_outstanding")
