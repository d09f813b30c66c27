// Small helpers shared by the built-in policies. Header-only and standard
// library only, so each policy .so links nothing but libstdc++.
#ifndef REMATCHER_POLICIES_COMMON_POLICY_UTIL_H_
#define REMATCHER_POLICIES_COMMON_POLICY_UTIL_H_

#include <cstdint>
#include <random>
#include <string>

#include "plugins/policy_cc.h"

namespace rematcher_policies {

// The `seed` option shared by randomised policies: seed=N makes the choice
// sequence reproducible (tests, simulations); without it, each instance is
// seeded from std::random_device.
inline bool ReadSeed(rematcher_plugin::PolicyArgs& args, std::mt19937_64* rng,
                     std::string* error) {
  uint64_t seed = 0;
  bool given = args.Has("seed");
  if (!args.GetUint64("seed", &seed, error)) return false;
  if (!given)
    seed = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  rng->seed(seed);
  return true;
}

// The backends a load-aware policy chooses among: the preferred ones
// (eligible, not stalled) if there are any, else every eligible one. A
// stalled backend's outstanding count is still low at the start of its
// stall, which is when sending it more does the most harm.
class Candidates {
 public:
  explicit Candidates(const rematcher_plugin::Snapshot& snap) {
    for (size_t i = 0; i < snap.size(); ++i)
      if (rematcher_plugin::IsPreferred(snap[i])) {
        preferred_only_ = true;
        break;
      }
  }
  bool operator()(const rm_backend_info& b) const {
    return preferred_only_ ? rematcher_plugin::IsPreferred(b) : rematcher_plugin::IsEligible(b);
  }

 private:
  bool preferred_only_ = false;
};

// Uniform integer in [0, n). n > 0.
inline size_t UniformIndex(std::mt19937_64& rng, size_t n) {
  return std::uniform_int_distribution<size_t>(0, n - 1)(rng);
}

// (a.outstanding + 1) / a.weight < (b.outstanding + 1) / b.weight, exactly,
// by cross-multiplication (both products fit in 64 bits). Weights are > 0 for
// eligible backends.
inline int CompareWeightedLoad(const rm_backend_info& a,
                               const rm_backend_info& b) {
  uint64_t lhs = (uint64_t{a.outstanding} + 1) * b.weight;
  uint64_t rhs = (uint64_t{b.outstanding} + 1) * a.weight;
  return lhs < rhs ? -1 : (lhs > rhs ? 1 : 0);
}

}  // namespace rematcher_policies

#endif  // REMATCHER_POLICIES_COMMON_POLICY_UTIL_H_
