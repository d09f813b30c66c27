// Small helpers shared by the built-in policies. Header-only and standard
// library only, so each policy .so links nothing but libstdc++.
#ifndef REMATCHER_POLICIES_COMMON_POLICY_UTIL_H_
#define REMATCHER_POLICIES_COMMON_POLICY_UTIL_H_

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
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


// The `stick` option shared by the load-aware policies: a client stays on
// the backend it is on when that backend is still a candidate (see
// Candidates) and has at most `stick` more requests in flight than the
// backend the policy picked. Moving a client is not free: the pooled
// connection it leaves is owed an ACK that the core sends from userspace,
// and the one it takes must be found and swapped in by the datapath. Among
// equally loaded backends a move buys nothing, so by default (stick=0) ties
// keep the client where it is; stick=N trades up to N requests of
// imbalance for fewer moves; stick=-1 moves on every tie (the behaviour
// before 2026-12-05). stick_pct=P widens the slack to P% of the current
// backend's count when that is more (default 25; 0: off): under a closed
// loop with tens of requests per backend, counts a few apart are noise,
// and every move they caused cost the core a raw ACK. Measured side by
// side (bench full-20261206-180533: equal, slow and stalls, 13 points, 3
// reps): rematches 30-50% fewer in the closed loops below 1,000
// connections and 50-85% in the open ones; the LB's CPU per request lower
// at all 26 points of p2c and least_outstanding, req/s higher at 16 of the
// 20 closed-loop ones, p99 lower at 19 of 26. At a count below 4 it
// changes nothing.
class Stickiness {
 public:
  static constexpr int64_t kDefault = 0;
  static constexpr int64_t kDefaultPct = 25;
  // The weighted policies default to -1: keeping clients in place at low
  // load moved shares towards the heavier backends (whose +1 per request
  // weighs least), away from the weights (simulation: the weight-1 backend
  // of 1:2:4 got 9% of requests instead of 14%).
  explicit Stickiness(int64_t default_slack = kDefault, int64_t default_pct = kDefaultPct)
      : slack_(default_slack), pct_(default_slack < 0 ? 0 : default_pct) {}

  bool Read(rematcher_plugin::PolicyArgs& args, std::string* error) {
    const bool pct_given = args.Has("stick_pct");
    uint64_t pct = static_cast<uint64_t>(pct_);
    if (!args.GetUint64("stick_pct", &pct, error)) return false;
    if (pct > 100) {
      *error = "option 'stick_pct': " + std::to_string(pct) + " is not a percentage 0..100";
      return false;
    }
    pct_ = static_cast<int64_t>(pct);
    if (!args.Has("stick")) {
      // A share asked for turns stickiness on where it defaults to off.
      if (pct_given && pct_ > 0 && slack_ < 0) slack_ = 0;
      return true;
    }
    std::string text;
    args.GetString("stick", &text);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0 || v < -1 || v > 1000000) {
      *error = "option 'stick': '" + text +
               "' is not -1 (off) or a number of requests 0..1000000";
      return false;
    }
    if (v < 0 && pct_given && pct_ > 0) {
      *error = "option 'stick_pct' needs stickiness on: stick=-1 turns it off";
      return false;
    }
    slack_ = v;
    if (slack_ < 0) pct_ = 0;
    return true;
  }

  // `pick` (an index into snap, or kNoPreference) or the current backend.
  template <typename IsCandidate>
  int32_t Apply(const rematcher_plugin::Snapshot& snap, const rm_request& req,
                const IsCandidate& candidate, int32_t pick) const {
    return Decide(snap, req, candidate, pick,
                  [&](const rm_backend_info& cur, const rm_backend_info& other) {
                    return static_cast<int64_t>(cur.outstanding) - Slack(cur) <=
                           static_cast<int64_t>(other.outstanding);
                  });
  }

  // The same for the weighted policies, by load per unit of weight: stays
  // while (current's outstanding - N + 1) / its weight is at most
  // (the pick's outstanding + 1) / its weight. Equal weights: as Apply.
  template <typename IsCandidate>
  int32_t ApplyWeighted(const rematcher_plugin::Snapshot& snap, const rm_request& req,
                        const IsCandidate& candidate, int32_t pick) const {
    return Decide(snap, req, candidate, pick,
                  [&](const rm_backend_info& cur, const rm_backend_info& other) {
                    if (cur.weight == 0 || other.weight == 0) return false;
                    // Fits easily: outstanding < 2^32, slack <= 10^6, weight < 2^32.
                    return (static_cast<__int128>(cur.outstanding) - Slack(cur) + 1) * other.weight <=
                           (static_cast<__int128>(other.outstanding) + 1) * cur.weight;
                  });
  }

  int64_t slack() const { return slack_; }

 private:
  // Requests of imbalance a client on `cur` stays through (slack_ >= 0).
  int64_t Slack(const rm_backend_info& cur) const {
    return std::max<int64_t>(slack_, static_cast<int64_t>(cur.outstanding) * pct_ / 100);
  }

  // The current backend if it is another candidate than the pick and
  // `stays(current, pick)`, else the pick.
  template <typename IsCandidate, typename Stays>
  int32_t Decide(const rematcher_plugin::Snapshot& snap, const rm_request& req,
                 const IsCandidate& candidate, int32_t pick, const Stays& stays) const {
    if (slack_ < 0 || pick < 0 || req.current_backend < 0 ||
        static_cast<size_t>(req.current_backend) >= snap.size() ||
        req.current_backend == pick)
      return pick;
    const rm_backend_info& cur = snap[static_cast<size_t>(req.current_backend)];
    if (!candidate(cur)) return pick;
    return stays(cur, snap[static_cast<size_t>(pick)]) ? req.current_backend : pick;
  }

  int64_t slack_;
  int64_t pct_;
};

}  // namespace rematcher_policies

#endif  // REMATCHER_POLICIES_COMMON_POLICY_UTIL_H_
