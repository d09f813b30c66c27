// Kernel SNMP/netstat counters of one namespace, as `nstat -asz` prints them.
#ifndef REMATCHER_TESTING_TESTBED_NSTAT_H_
#define REMATCHER_TESTING_TESTBED_NSTAT_H_

#include <cstdint>
#include <map>
#include <ostream>
#include <string>

#include "absl/strings/string_view.h"

namespace rematcher::testbed {

using NstatCounters = std::map<std::string, uint64_t>;        // absolute values
using NstatDelta = std::map<std::string, int64_t>;            // after - before

// Parses `nstat -a -s -z` text ("#kernel" header, then "Name value rate").
NstatCounters ParseNstat(absl::string_view text);
// Counters whose value changed (missing on one side counts as 0).
NstatDelta NstatDiff(const NstatCounters& before, const NstatCounters& after);
// The changed counters, one "Name +N" per line, sorted by name.
std::string FormatNstatDiff(const NstatDelta& delta);
void PrintNstatDiff(std::ostream& os, const std::string& title, const NstatDelta& delta);

// Counters that reveal splice damage (DESIGN.md): zero in a healthy run.
inline constexpr const char* kDamageCounters[] = {
    "TcpInCsumErrors", "TcpExtPAWSEstab", "TcpExtTCPACKSkippedPAWS", "TcpExtTCPACKSkippedSeq",
    "TcpExtTCPACKSkippedSynRecv", "TcpExtTCPACKSkippedFinWait2", "TcpExtTCPACKSkippedTimeWait",
    "TcpExtTCPACKSkippedChallenge", "TcpRetransSegs", "TcpExtTCPTimeouts",
};

}  // namespace rematcher::testbed

#endif  // REMATCHER_TESTING_TESTBED_NSTAT_H_
