// PawsTrace: which TCP segments the kernel dropped under PAWS, and whether
// they carried anything the receiver did not already have.
//
// nstat's PAWSEstab counts every such drop alike. A network that duplicates
// frames, or delays one past its own retransmission, produces old copies
// that PAWS rightly drops (the direct path shows them too); a load balancer
// that lets a TSval go backwards makes the receiver drop new data. The
// tracer (paws_trace.bpf.c, a BTF tracepoint on skb:kfree_skb) tells the
// two apart per receiving address:
//   stale     every byte of the dropped segment was below rcv_nxt;
//   fresh     it carried new bytes (logged: the first kLogFreshSlots);
//   pure_ack  no data (an old ACK the kernel did not excuse as disordered);
//   request   received by a request or listening socket (the receiver had
//             not completed the handshake; keyed by the segment's
//             destination), counted in PAWSEstab but not classified;
//   timewait  received by a TIME_WAIT socket (PAWSTimewait on Linux >= 6.15);
// and how old each was (ts_recent - TSval, in the receiver's ms ticks).
// The tracepoint is global: drops in every namespace are seen, keyed by the
// receiving socket's address. Needs root and kernel >= 6.11 (the
// tracepoint's receiving socket argument); Start() says Unavailable if not.
#ifndef REMATCHER_TESTING_TCPDROPS_PAWS_TRACE_H_
#define REMATCHER_TESTING_TCPDROPS_PAWS_TRACE_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

struct paws_trace_bpf;

namespace rematcher::tcpdrops {

inline constexpr int kAgeBuckets = 32;  // PT_AGE_BUCKETS
// LoggedDrops' capacity: new-data drops, and the others at least
// SetLogMinAge ticks old, each in slots of their own.
inline constexpr int kLogFreshSlots = 48;  // PT_LOG_FRESH_SLOTS
inline constexpr int kLogOldSlots = 16;    // PT_LOG_SLOTS - PT_LOG_FRESH_SLOTS

struct PawsCounts {
  uint64_t stale = 0;
  uint64_t fresh = 0;
  uint64_t pure_ack = 0;
  uint64_t request = 0;
  uint64_t timewait = 0;
  // age[a]: drops a TS ticks older than ts_recent (the last: that or more).
  std::array<uint64_t, kAgeBuckets> age = {};
  uint64_t total() const { return stale + fresh + pure_ack + request + timewait; }
  // The oldest drop's age (kAgeBuckets - 1 means that or more); -1: none.
  int max_age() const;
  // "stale 3 fresh 0 pure_ack 0 request 0 timewait 0 ages 2:2 3:1"
  std::string ToString() const;
};

struct PawsDrop {
  std::string kind;      // "stale" | "fresh" | "pure_ack"
  std::string from, to;  // "198.18.2.1:8080"
  uint32_t seq = 0, end_seq = 0, rcv_nxt = 0, tsval = 0, ts_recent = 0;
  std::string ToString() const;
};

class PawsTrace {
 public:
  // Loads and attaches the tracer. Unavailable when the kernel lacks BTF
  // or the tracepoint's receiving-socket argument; PermissionDenied without
  // the privileges to load it.
  static absl::StatusOr<std::unique_ptr<PawsTrace>> Start();
  ~PawsTrace();
  PawsTrace(const PawsTrace&) = delete;
  PawsTrace& operator=(const PawsTrace&) = delete;

  // Counts so far per receiving IPv4 address ("198.18.2.1").
  std::map<std::string, PawsCounts> ByAddress() const;
  PawsCounts For(const std::string& addr) const;  // zeros when none
  // The logged drops: the first kLogFreshSlots fresh ones, then the first
  // kLogOldSlots others at least SetLogMinAge ticks old (each in the order
  // seen; separate slots, so many fresh drops cannot hide an old copy).
  std::vector<PawsDrop> LoggedDrops() const;
  void SetLogMinAge(uint32_t ticks);
  // Empties the log (the counts stay): from here on it holds this phase's
  // drops, not an earlier test's that used up the slots.
  void ClearLog();

 private:
  PawsTrace() = default;
  paws_trace_bpf* skel_ = nullptr;
};

}  // namespace rematcher::tcpdrops

#endif  // REMATCHER_TESTING_TCPDROPS_PAWS_TRACE_H_
