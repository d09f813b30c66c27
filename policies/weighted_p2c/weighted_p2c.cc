// weighted_p2c: power of two choices, weighted. Two distinct eligible
// backends (not stalled, if any are not) are drawn with probability
// proportional to their weight, and the
// one with the lower (outstanding + 1) / weight wins (a coin decides ties).
//
// Drawing by weight makes the weights hold even when load figures are equal
// or stale; comparing load per unit of weight keeps a heavy backend from
// being overloaded just because it is drawn often. At zero load the heavier
// of the two always wins, so light backends get less than their weight's
// share when the LB is idle; under load the shares follow the weights.
//
// Options: seed=N   reproducible choices (default: random seed).
//          stick=N  stay on the current backend unless the winner's load per
//                   unit of weight is lower even with N requests taken off
//                   the current one's (default -1: always take the
//                   winner, so shares follow the weights; 0: ties stay).
//                   See Stickiness::ApplyWeighted.
//          stick_pct=P  N is at least P% of the current backend's count
//                   (default 0; given alone, it turns stick on at 0).
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

class WeightedPowerOfTwo {
 public:
  static std::unique_ptr<WeightedPowerOfTwo> Create(PolicyArgs& args,
                                                    std::string* error) {
    auto policy = std::make_unique<WeightedPowerOfTwo>();
    if (!rematcher_policies::ReadSeed(args, &policy->rng_, error) ||
        !policy->stick_.Read(args, error)) {
      return nullptr;
    }
    return policy;
  }

  int32_t Pick(const Snapshot& snap, const rm_request& req) {
    eligible_.clear();
    uint64_t total = 0;
    const rematcher_policies::Candidates candidate(snap);
    for (size_t i = 0; i < snap.size(); ++i) {
      if (!candidate(snap[i])) continue;
      eligible_.push_back(i);
      total += snap[i].weight;
    }
    if (eligible_.empty()) return rematcher_plugin::kNoPreference;
    if (eligible_.size() == 1) return static_cast<int32_t>(eligible_[0]);
    const size_t a = Draw(snap, total, SIZE_MAX);
    const size_t b = Draw(snap, total - snap[a].weight, a);
    const int cmp = rematcher_policies::CompareWeightedLoad(snap[a], snap[b]);
    size_t winner;
    if (cmp != 0) {
      winner = cmp < 0 ? a : b;
    } else {
      winner = (rng_() & 1) ? a : b;
    }
    return stick_.ApplyWeighted(snap, req, candidate, static_cast<int32_t>(winner));
  }

 private:
  // One eligible backend other than `exclude`, with probability weight/total
  // (total = sum of the weights of the candidates). O(eligible).
  size_t Draw(const Snapshot& snap, uint64_t total, size_t exclude) {
    uint64_t r = std::uniform_int_distribution<uint64_t>(0, total - 1)(rng_);
    size_t last = eligible_[0];
    for (size_t i : eligible_) {
      if (i == exclude) continue;
      last = i;
      if (r < snap[i].weight) return i;
      r -= snap[i].weight;
    }
    return last;  // unreachable when total is right
  }

  std::mt19937_64 rng_;
  rematcher_policies::Stickiness stick_{-1};
  std::vector<size_t> eligible_;  // reused: no allocation per pick
};

}  // namespace

REMATCHER_DEFINE_POLICY(WeightedPowerOfTwo, "weighted_p2c")
