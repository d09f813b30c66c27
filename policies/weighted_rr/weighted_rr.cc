// weighted_rr: smooth weighted round robin (nginx's algorithm).
//
// Every pick, each eligible backend's current weight grows by its weight; the
// largest current weight wins and is lowered by the total. Over any window of
// sum(weights) picks each backend gets exactly its weight's share, and the
// picks of a heavy backend are interleaved with the others instead of coming
// in bursts (weights 5,1,1 give a a b a c a a, not a a a a a b c).
//
// State is keyed by backend id, not index, so backends coming and going do
// not shuffle the others' credit. A repeat (RM_REQUEST_REPEAT) keeps the
// earlier choice and takes no credit: see rr. No options.
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "plugins/policy_cc.h"

namespace {

using rematcher_plugin::PolicyArgs;
using rematcher_plugin::Snapshot;

class SmoothWeightedRoundRobin {
 public:
  static std::unique_ptr<SmoothWeightedRoundRobin> Create(PolicyArgs&,
                                                          std::string*) {
    return std::make_unique<SmoothWeightedRoundRobin>();
  }

  int32_t Pick(const Snapshot& snap, const rm_request& req) {
    const int32_t earlier = rm_request_previous(&req, &snap.raw());
    if (earlier >= 0 && rematcher_plugin::IsPreferred(snap[earlier])) return earlier;
    int64_t total = 0;
    int64_t best = -1;
    int64_t best_current = 0;
    for (size_t i = 0; i < snap.size(); ++i) {
      const rm_backend_info& b = snap[i];
      if (!rematcher_plugin::IsEligible(b)) continue;
      int64_t& current = current_[b.id];
      current += b.weight;
      total += b.weight;
      if (best < 0 || current > best_current) {
        best = static_cast<int64_t>(i);
        best_current = current;
      }
    }
    if (best < 0) return rematcher_plugin::kNoPreference;
    current_[snap[best].id] -= total;
    if (current_.size() > 2 * snap.size() + 16) Prune(snap);
    return static_cast<int32_t>(best);
  }

 private:
  // Forget backends that left the snapshot, so the map stays O(backends).
  void Prune(const Snapshot& snap) {
    std::unordered_set<uint32_t> live;
    for (const rm_backend_info& b : snap) live.insert(b.id);
    for (auto it = current_.begin(); it != current_.end();) {
      it = live.count(it->first) ? std::next(it) : current_.erase(it);
    }
  }

  std::unordered_map<uint32_t, int64_t> current_;  // backend id -> credit
};

}  // namespace

REMATCHER_DEFINE_POLICY(SmoothWeightedRoundRobin, "weighted_rr")
