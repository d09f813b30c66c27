// p2c: power of two random choices. Two distinct eligible backends (not
// stalled, if any are not: RM_BACKEND_STALLED) are drawn
// uniformly at random and the one with fewer requests in flight wins (a coin
// decides ties). Unlike least_outstanding it does not herd every decision
// onto the single least loaded backend when many picks are made from the
// same stale load figures.
//
// Options: seed=N   reproducible choices (default: random seed).
//          stick=N  stay on the current backend unless the winner has more
//                   than N fewer requests in flight (default 0: ties stay;
//                   -1: always take the winner). See Stickiness.
//          stick_pct=P  or fewer by more than P% of the current backend's
//                   count, if that is more (default 25; 0: off).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "plugins/policy_cc.h"
#include "policies/common/policy_util.h"

namespace {

using rematcher_plugin::PolicyArgs;
using rematcher_plugin::Snapshot;
using rematcher_policies::UniformIndex;

class PowerOfTwo {
 public:
  static std::unique_ptr<PowerOfTwo> Create(PolicyArgs& args,
                                            std::string* error) {
    auto policy = std::make_unique<PowerOfTwo>();
    if (!rematcher_policies::ReadSeed(args, &policy->rng_, error) ||
        !policy->stick_.Read(args, error)) {
      return nullptr;
    }
    return policy;
  }

  int32_t Pick(const Snapshot& snap, const rm_request& req) {
    eligible_.clear();
    const rematcher_policies::Candidates candidate(snap);
    for (size_t i = 0; i < snap.size(); ++i) {
      if (candidate(snap[i])) eligible_.push_back(i);
    }
    if (eligible_.empty()) return rematcher_plugin::kNoPreference;
    if (eligible_.size() == 1) return static_cast<int32_t>(eligible_[0]);
    const size_t m = eligible_.size();
    const size_t x = UniformIndex(rng_, m);
    size_t y = UniformIndex(rng_, m - 1);
    if (y >= x) ++y;  // distinct from x
    const size_t a = eligible_[x];
    const size_t b = eligible_[y];
    size_t winner;
    if (snap[a].outstanding != snap[b].outstanding) {
      winner = snap[a].outstanding < snap[b].outstanding ? a : b;
    } else {
      winner = (rng_() & 1) ? a : b;
    }
    return stick_.Apply(snap, req, candidate, static_cast<int32_t>(winner));
  }

 private:
  std::mt19937_64 rng_;
  rematcher_policies::Stickiness stick_;
  std::vector<size_t> eligible_;  // reused: no allocation per pick
};

}  // namespace

REMATCHER_DEFINE_POLICY(PowerOfTwo, "p2c")
