#include "tools/bench/suite/stats.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace rematcher::bench {
namespace {

// Linear interpolation between closest ranks on a sorted sample.
double Quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  double pos = q * (sorted.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  double frac = pos - lo;
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

Spread Summarize(std::vector<double> v) {
  Spread s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = Quantile(v, 0.5);
  s.p25 = Quantile(v, 0.25);
  s.p75 = Quantile(v, 0.75);
  return s;
}

int64_t Percentile(std::vector<int64_t>* v, double q) {
  if (v->empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q / 100.0 * v->size() - 1e-9));
  if (rank < 1) rank = 1;
  if (rank > v->size()) rank = v->size();
  std::nth_element(v->begin(), v->begin() + (rank - 1), v->end());
  return (*v)[rank - 1];
}

std::optional<double> JsonNumber(absl::string_view json, absl::string_view key) {
  std::string needle = absl::StrCat("\"", key, "\":");
  size_t p = json.find(needle);
  if (p == absl::string_view::npos) return std::nullopt;
  p += needle.size();
  size_t e = p;
  while (e < json.size() && (isdigit(static_cast<unsigned char>(json[e])) || json[e] == '.' ||
                             json[e] == '-' || json[e] == 'e' || json[e] == 'E' || json[e] == '+'))
    ++e;
  double d;
  if (!absl::SimpleAtod(json.substr(p, e - p), &d)) return std::nullopt;
  return d;
}

std::map<std::string, int64_t> JsonIntObject(absl::string_view json, absl::string_view key) {
  std::map<std::string, int64_t> out;
  std::string needle = absl::StrCat("\"", key, "\":{");
  size_t p = json.find(needle);
  if (p == absl::string_view::npos) return out;
  p += needle.size();
  size_t e = json.find('}', p);
  if (e == absl::string_view::npos) return out;
  for (absl::string_view item : absl::StrSplit(json.substr(p, e - p), ',', absl::SkipEmpty())) {
    size_t colon = item.rfind(':');
    if (colon == absl::string_view::npos) continue;
    absl::string_view name = item.substr(0, colon);
    absl::ConsumePrefix(&name, "\"");
    absl::ConsumeSuffix(&name, "\"");
    int64_t n;
    if (absl::SimpleAtoi(item.substr(colon + 1), &n)) out[std::string(name)] = n;
  }
  return out;
}

absl::StatusOr<LoadResult> ParseLoadgenJson(absl::string_view json) {
  LoadResult r;
  auto rps = JsonNumber(json, "rps");
  auto ok = JsonNumber(json, "ok");
  if (!rps || !ok) return absl::InvalidArgumentError(absl::StrCat("not a loadgen report: ", json));
  r.rps = *rps;
  r.ok = static_cast<int64_t>(*ok);
  r.errors = static_cast<int64_t>(JsonNumber(json, "errors").value_or(0));
  r.verify_failures = static_cast<int64_t>(JsonNumber(json, "verify_failures").value_or(0));
  r.duration_s = JsonNumber(json, "duration_s").value_or(0);
  r.p50_us = static_cast<int64_t>(JsonNumber(json, "p50").value_or(0));
  r.p99_us = static_cast<int64_t>(JsonNumber(json, "p99").value_or(0));
  r.p999_us = static_cast<int64_t>(JsonNumber(json, "p999").value_or(0));
  r.backend_switches = static_cast<int64_t>(JsonNumber(json, "backend_switches").value_or(0));
  r.backends = JsonIntObject(json, "backends");
  return r;
}

absl::StatusOr<LoadResult> ParseWrkLine(absl::string_view out) {
  size_t p = out.find("RMBENCH ");
  if (p == absl::string_view::npos)
    return absl::InvalidArgumentError(absl::StrCat("no RMBENCH line in wrk output: ", out));
  absl::string_view line = out.substr(p + 8);
  line = line.substr(0, line.find('\n'));
  std::map<std::string, double> kv;
  for (absl::string_view item : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(item, absl::MaxSplits('=', 1));
    double d;
    if (f.size() == 2 && absl::SimpleAtod(f[1], &d)) kv[std::string(f[0])] = d;
  }
  LoadResult r;
  r.rps = kv["rps"];
  r.ok = static_cast<int64_t>(kv["ok"]);
  r.errors = static_cast<int64_t>(kv["errors"]);
  r.p50_us = static_cast<int64_t>(kv["p50_us"]);
  r.p99_us = static_cast<int64_t>(kv["p99_us"]);
  r.p999_us = static_cast<int64_t>(kv["p999_us"]);
  r.duration_s = kv["duration_s"];
  return r;
}

absl::StatusOr<HostCpu> ParseProcStat(absl::string_view text) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, "cpu ")) continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 9) break;
    double v[8];
    for (int i = 0; i < 8; i++) {
      if (!absl::SimpleAtod(f[i + 1], &v[i])) return absl::InvalidArgumentError("bad /proc/stat");
    }
    const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
    HostCpu c;
    c.user = v[0] / hz;
    c.nice = v[1] / hz;
    c.system = v[2] / hz;
    c.idle = v[3] / hz;
    c.iowait = v[4] / hz;
    c.irq = v[5] / hz;
    c.softirq = v[6] / hz;
    c.steal = v[7] / hz;
    return c;
  }
  return absl::InvalidArgumentError("no cpu line in /proc/stat");
}

absl::StatusOr<HostCpu> ReadHostCpu() { return ParseProcStat(ReadFile("/proc/stat")); }

absl::StatusOr<double> ParsePidStatCpu(absl::string_view text) {
  // comm may hold spaces and parentheses: fields start after the last ')'.
  size_t p = text.rfind(')');
  if (p == absl::string_view::npos) return absl::InvalidArgumentError("bad /proc/<pid>/stat");
  std::vector<absl::string_view> f = absl::StrSplit(text.substr(p + 1), ' ', absl::SkipEmpty());
  // After ')': state(3) ppid(4) ... utime is field 14, stime 15 -> indexes 11, 12.
  if (f.size() < 13) return absl::InvalidArgumentError("short /proc/<pid>/stat");
  double ut, st;
  if (!absl::SimpleAtod(f[11], &ut) || !absl::SimpleAtod(f[12], &st))
    return absl::InvalidArgumentError("bad utime/stime");
  return (ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

absl::StatusOr<double> ReadPidCpu(pid_t pid) {
  std::string text = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  if (text.empty()) return absl::NotFoundError(absl::StrCat("no /proc/", pid, "/stat"));
  return ParsePidStatCpu(text);
}

std::map<std::string, int64_t> ParseKeyValueLines(absl::string_view text) {
  std::map<std::string, int64_t> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t n;
    if (f.size() == 2 && absl::SimpleAtoi(f[1], &n)) out[std::string(f[0])] = n;
  }
  return out;
}

std::string CsvField(absl::string_view s) {
  if (s.find_first_of(",\"\n") == absl::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

absl::StatusOr<std::string> SummarizeDatapathBench(absl::string_view out) {
  std::string rows, ratio;
  for (absl::string_view l : absl::StrSplit(out, '\n')) {
    l = absl::StripAsciiWhitespace(l);
    if (absl::StrContains(l, "(ns/pkt)")) absl::StrAppend(&rows, "`", l, "`; ");
    if (absl::StartsWith(l, "ratio")) ratio = std::string(l);
  }
  if (ratio.empty())
    return absl::NotFoundError(absl::StrCat("no ratio line in: ", out.substr(0, 300)));
  return absl::StrCat(rows, "`", ratio, "`");
}

}  // namespace rematcher::bench
