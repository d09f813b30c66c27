// # Writing your own rematcher policy
//
// This file is a complete custom policy, meant to be copied out of the tree
// and edited. It is a Linkerd-style "peak EWMA" balancer: each backend scores
//
//     score = latency_ewma_first_byte_ns * (requests in flight + 1)
//
// (how long a backend takes to answer, times how many would be ahead of it),
// and the lower score of two backends drawn at random wins. Slow or overloaded
// backends are avoided without the herding of a strict minimum.
//
// ## The contract in six lines
//
// - Write a class with `static std::unique_ptr<T> Create(PolicyArgs&,
// std::string* error)`
//   and `int32_t Pick(const rematcher_plugin::Snapshot&, const rm_request&)`
//   (optionally `void OnResult(const rm_result&)`), then
//   `REMATCHER_DEFINE_POLICY(T, "name")` once. See plugins/policy_cc.h.
// - Pick returns an index into the snapshot, or `kNoPreference` to keep the
//   client where it is. It runs on the request path: no blocking, no I/O.
// - The snapshot is borrowed: read it during Pick only, never keep pointers.
// - Pick is called from one thread at a time per instance: no locks needed
//   for members, but globals/statics need their own.
// - The host refuses out-of-range or ineligible (unhealthy, draining,
//   weight 0) picks and counts them as plugin errors; skip those backends
//   yourself with `rematcher_plugin::IsEligible`.
// - The same client's next request may be asked about more than once (at
//   its request's start and end, and when its backend falls behind): the
//   later asks carry RM_REQUEST_REPEAT and the earlier choice
//   (`rm_request_previous(&req, &snap.raw())`). A policy with a rotation or
//   credits should not count a repeat as another turn; this one draws
//   afresh, which is fine.
//
// ## Build it
//
// Inside the rematcher tree (or a Bazel workspace that depends on it), a
// BUILD file next to your source:
//
//     load("//plugins:policy.bzl", "rematcher_policy")
//     rematcher_policy(name = "mine", srcs = ["mine.cc"])
//
//     bazel build //path/to:libmine.so
//
// Without Bazel, the plugin needs only two headers, plugins/rematcher_policy.h
// and plugins/policy_cc.h (keep them under a `plugins/` directory, or point
// -I at a rematcher checkout):
//
//     mkdir -p mine/plugins
//     cp rematcher/plugins/{rematcher_policy.h,policy_cc.h} mine/plugins/
//     cp rematcher/plugins/example/peak_ewma.cc mine/mine.cc    # then edit
//     g++ -std=c++17 -O2 -fPIC -shared -fvisibility=hidden -Wl,--no-undefined
//         -I mine mine/mine.cc -o libmine.so                    # one line
//     nm -D --defined-only libmine.so | grep rematcher_policy_entry  # listed
//
// (add `-Wl,--version-script=rematcher/plugins/policy_exports.lds` to export
// nothing but the entry point, as the Bazel macro does). Build against the
// headers of the rematcher you will run: a plugin from another ABI major
// version is refused at load time with an error naming both versions.
//
// ## Run it
//
//     rematcher ... --policy=/path/to/libmine.so
//     --policy_args=seed=7,unknown_latency_ns=500000
//
// A --policy without '/' is a built-in name (rr, p2c, ...). Errors in
// --policy_args (unknown key, bad number) stop the LB at startup with the
// message from your Create. The log shows "policy 'peak_ewma' loaded from
// ... (plugin ABI 1.3, host 1.3)" on success.
//
// ## Options of this example
//
//     seed=N                 reproducible random draws (default: random)
//     unknown_latency_ns=N   latency assumed for a backend with no sample yet
//                            (default 1000000 = 1 ms); lower explores new
//                            backends more eagerly
//     count_pending=0|1      1: count the decisions not started yet as load
//                            too (the snapshot's outstanding); default 0:
//                            only the requests in flight (ABI 1.3)
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "plugins/policy_cc.h"

namespace {

using rematcher_plugin::PolicyArgs;
using rematcher_plugin::Snapshot;

class PeakEwma {
 public:
  static std::unique_ptr<PeakEwma> Create(PolicyArgs& args,
                                          std::string* error) {
    auto policy = std::make_unique<PeakEwma>();
    uint64_t seed = std::random_device{}();
    if (!args.GetUint64("seed", &seed, error)) return nullptr;
    if (!args.GetUint64("unknown_latency_ns", &policy->unknown_latency_ns_,
                        error)) {
      return nullptr;
    }
    uint64_t count_pending = 0;
    if (!args.GetUint64("count_pending", &count_pending, error)) return nullptr;
    if (count_pending > 1) {
      *error = "count_pending must be 0 or 1";
      return nullptr;
    }
    policy->count_pending_ = count_pending == 1;
    if (policy->unknown_latency_ns_ == 0) {
      *error = "unknown_latency_ns must be > 0";
      return nullptr;
    }
    policy->rng_.seed(seed);
    return policy;
  }

  int32_t Pick(const Snapshot& snap, const rm_request& /*req*/) {
    // Backends in service that are not stalled, if there are any; else
    // any in service. A stalled backend (RM_BACKEND_STALLED: no response
    // has begun for several times its usual latency) keeps its EWMA from
    // before the pause until the pause ends, so the score alone would keep
    // sending it requests through the pause. The built-ins skip stalled
    // backends the same way.
    eligible_.clear();
    for (size_t i = 0; i < snap.size(); ++i) {
      if (rematcher_plugin::IsPreferred(snap[i])) eligible_.push_back(i);
    }
    if (eligible_.empty()) {
      for (size_t i = 0; i < snap.size(); ++i) {
        if (rematcher_plugin::IsEligible(snap[i])) eligible_.push_back(i);
      }
    }
    if (eligible_.empty()) return rematcher_plugin::kNoPreference;
    if (eligible_.size() == 1) return static_cast<int32_t>(eligible_[0]);

    std::uniform_int_distribution<size_t> first(0, eligible_.size() - 1);
    std::uniform_int_distribution<size_t> second(0, eligible_.size() - 2);
    const size_t x = first(rng_);
    size_t y = second(rng_);
    if (y >= x) ++y;  // two distinct candidates
    const size_t a = eligible_[x];
    const size_t b = eligible_[y];
    const double sa = Score(snap, a);
    const double sb = Score(snap, b);
    if (sa == sb) return static_cast<int32_t>((rng_() & 1) ? a : b);
    return static_cast<int32_t>(sa < sb ? a : b);
  }

 private:
  double Score(const Snapshot& snap, size_t i) const {
    const rm_backend_info& b = snap[i];
    // The first byte, not the last: a response's last byte counts until
    // the client acknowledged it, and a client that waits to send its next
    // request delays that ACK (delayed ACKs, or none until it has more to
    // say). In an open loop of 5,000 req/s over 64 connections that wait,
    // several ms, was the same on every backend, and the last-byte score
    // sent a backend 5x slower 20% of the requests.
    const uint64_t latency_ns = b.latency_ewma_first_byte_ns != 0
                                    ? b.latency_ewma_first_byte_ns
                                    : unknown_latency_ns_;
    // What waits ahead of the request: the requests in flight there, not
    // the decisions for other clients' next requests (snap.pending(i)),
    // which the host counts in `outstanding` by default. Every idle client
    // holds one, so in an open loop they are tens per backend, and a score
    // that multiplied them by the latency split them in inverse proportion
    // to it: a backend 5x slower got one client in eight. The random pair
    // keeps decisions taken from one snapshot from all naming one backend.
    const uint32_t load = count_pending_ ? b.outstanding : snap.in_flight(i);
    // double: latency_ns * (load + 1) can exceed 64 bits.
    return static_cast<double>(latency_ns) * (static_cast<double>(load) + 1.0);
  }

  std::mt19937_64 rng_;
  uint64_t unknown_latency_ns_ = 1000000;
  bool count_pending_ = false;
  std::vector<size_t> eligible_;  // reused across picks: no allocation
};

}  // namespace

REMATCHER_DEFINE_POLICY(PeakEwma, "peak_ewma")
