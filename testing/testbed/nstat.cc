// nstat parsing; see nstat.h.
#include "testing/testbed/nstat.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace rematcher::testbed {

NstatCounters ParseNstat(absl::string_view text) {
  NstatCounters c;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint64_t v;
    if (f.size() >= 2 && absl::SimpleAtoi(f[1], &v)) c[std::string(f[0])] = v;
  }
  return c;
}

NstatDelta NstatDiff(const NstatCounters& before, const NstatCounters& after) {
  NstatDelta d;
  for (const auto& [k, v] : after) {
    auto it = before.find(k);
    int64_t diff = static_cast<int64_t>(v - (it == before.end() ? 0 : it->second));
    if (diff != 0) d[k] = diff;
  }
  for (const auto& [k, v] : before)
    if (!after.count(k) && v != 0) d[k] = -static_cast<int64_t>(v);
  return d;
}

std::string FormatNstatDiff(const NstatDelta& delta) {
  std::string out;
  for (const auto& [k, v] : delta) absl::StrAppend(&out, k, " ", v > 0 ? "+" : "", v, "\n");
  return out;
}

void PrintNstatDiff(std::ostream& os, const std::string& title, const NstatDelta& delta) {
  os << "nstat delta " << title << ":\n" << FormatNstatDiff(delta);
}

}  // namespace rematcher::testbed
