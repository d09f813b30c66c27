// least_outstanding: the eligible backend with the fewest requests in flight
// (among those not stalled, if any: RM_BACKEND_STALLED).
//
// Ties are broken round-robin: the scan starts one past the previous choice,
// and the first backend with the minimum wins, so equally loaded backends
// take turns instead of the lowest index taking everything (which matters at
// low load, where every backend has 0 outstanding). No options.
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
  static std::unique_ptr<LeastOutstanding> Create(PolicyArgs&, std::string*) {
    return std::make_unique<LeastOutstanding>();
  }

  int32_t Pick(const Snapshot& snap, const rm_request&) {
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
    next_ = static_cast<size_t>(best) + 1;
    return static_cast<int32_t>(best);
  }

 private:
  size_t next_ = 0;
};

}  // namespace

REMATCHER_DEFINE_POLICY(LeastOutstanding, "least_outstanding")
