// Pure helpers of the benchmark suite: summaries over repetitions, latency
// percentiles, tiny parsers for the tools' outputs (loadgen JSON, wrk's Lua
// report line, /proc CPU counters), CSV quoting. No I/O besides the /proc
// readers, so everything else is unit-tested.
#ifndef REMATCHER_TOOLS_BENCH_SUITE_STATS_H_
#define REMATCHER_TOOLS_BENCH_SUITE_STATS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rematcher::bench {

// Median and spread of one figure over the repetitions of a point.
struct Spread {
  int n = 0;
  double median = 0, min = 0, max = 0, p25 = 0, p75 = 0;
};
Spread Summarize(std::vector<double> values);

// Nearest-rank percentile (q in [0,100]) of an unsorted sample; 0 if empty.
int64_t Percentile(std::vector<int64_t>* values, double q);

// The first number after "key": in a flat-ish JSON text (loadgen's report has
// unique key names, so no real parser is needed).
std::optional<double> JsonNumber(absl::string_view json, absl::string_view key);
// "backends":{"b0":12,"b1":3} -> {b0:12, b1:3}.
std::map<std::string, int64_t> JsonIntObject(absl::string_view json, absl::string_view key);

// One load run's figures, whatever tool produced them.
struct LoadResult {
  double rps = 0;
  double duration_s = 0;
  int64_t ok = 0, errors = 0, verify_failures = 0;
  int64_t p50_us = 0, p99_us = 0, p999_us = 0;
  std::map<std::string, int64_t> backends;  // X-Backend -> responses (loadgen only)
  int64_t backend_switches = 0;
};
absl::StatusOr<LoadResult> ParseLoadgenJson(absl::string_view json);
// The line our wrk Lua script prints: "RMBENCH rps=.. ok=.. errors=.. p50_us=..
// p99_us=.. p999_us=.. duration_s=..".
absl::StatusOr<LoadResult> ParseWrkLine(absl::string_view out);

// Host CPU time from /proc/stat's "cpu" line, in seconds (USER_HZ ticks).
struct HostCpu {
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
         steal = 0;
  double busy() const { return user + nice + system + irq + softirq + steal; }
};
absl::StatusOr<HostCpu> ParseProcStat(absl::string_view text);
absl::StatusOr<HostCpu> ReadHostCpu();
// utime+stime of a process (all its threads), seconds, from /proc/<pid>/stat.
absl::StatusOr<double> ParsePidStatCpu(absl::string_view text);
absl::StatusOr<double> ReadPidCpu(pid_t pid);

// "key value" lines (rematcher's `stats`) -> map.
std::map<std::string, int64_t> ParseKeyValueLines(absl::string_view text);

std::string CsvField(absl::string_view s);

// One line for results.md from //tools/bench:datapath_bench's output: its
// "(ns/pkt)" lines and its "ratio" line, each in backquotes; NotFound when
// there is no ratio line.
absl::StatusOr<std::string> SummarizeDatapathBench(absl::string_view out);

}  // namespace rematcher::bench

#endif  // REMATCHER_TOOLS_BENCH_SUITE_STATS_H_
