#include "lb/testing/e2e_fixture.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <iterator>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "lb/control_client.h"
#include "testing/backend/test_util.h"

namespace rematcher::e2e {

using backend::testutil::RunfilePath;
using backend::testutil::TempDir;
using testbed::Process;

int64_t JsonInt(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\":(-?[0-9]+)");
  if (!std::regex_search(json, m, re)) return -1;
  int64_t v = -1;
  if (!absl::SimpleAtoi(m[1].str(), &v)) return -1;
  return v;
}

std::map<std::string, int64_t> BackendCounts(const std::string& json) {
  std::map<std::string, int64_t> out;
  auto p = json.find("\"backends\":{");
  if (p == std::string::npos) return out;
  auto e = json.find('}', p);
  std::string body = json.substr(p + 12, e - p - 12);
  for (absl::string_view kv : absl::StrSplit(body, ',', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(kv, ':');
    if (parts.size() != 2) continue;
    int64_t v;
    absl::string_view name = absl::StripAsciiWhitespace(parts[0]);
    if (name.size() >= 2 && absl::SimpleAtoi(parts[1], &v))
      out[std::string(name.substr(1, name.size() - 2))] = v;
  }
  return out;
}

std::map<std::string, uint64_t> ParseStats(const std::string& text) {
  std::map<std::string, uint64_t> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(line, ' ');
    uint64_t v;
    if (kv.size() == 2 && absl::SimpleAtoi(kv[1], &v)) out[kv[0]] = v;
  }
  return out;
}

std::vector<BackendRow> ParseBackends(const std::string& text) {
  // id address weight state idle/live wait out requests rematch_in reroute_in ewma ewma
  std::vector<BackendRow> rows;
  std::regex re(
      R"(^\s*([0-9]+)\s+(\S+)\s+[0-9]+\s+(\S+)\s+([0-9]+)/([0-9]+)\s+([0-9]+)\s+([0-9]+)\s+([0-9]+)\s+([0-9]+)\s+([0-9]+))");
  // Printed from a u32: a counter that went below zero shows as 2^32 - k.
  auto count = [](const std::string& s) {
    uint64_t v = std::stoull(s);
    return v >= (1ull << 31) ? static_cast<int64_t>(v) - (1ll << 32) : static_cast<int64_t>(v);
  };
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::smatch m;
    std::string l(line);
    if (!std::regex_search(l, m, re)) continue;
    BackendRow r;
    r.id = std::stoul(m[1].str());
    r.addr = m[2].str();
    r.state = m[3].str();
    r.pool_idle = std::stoul(m[4].str());
    r.pool_live = std::stoul(m[5].str());
    r.unanswered = count(m[6].str());
    r.outstanding = count(m[7].str());
    r.requests = std::stoull(m[8].str());
    r.rematched_in = std::stoull(m[9].str());
    r.rerouted_in = std::stoull(m[10].str());
    rows.push_back(r);
  }
  return rows;
}

std::vector<SsTcpInfo> ParseSsTcpInfo(const std::string& text) {
  std::vector<SsTcpInfo> out;
  const std::regex sent_re("bytes_sent:([0-9]+)"), wnd_re("snd_wnd:([0-9]+)");
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::string l(line);
    std::smatch m;
    if (!std::regex_search(l, m, wnd_re)) continue;
    SsTcpInfo i;
    i.snd_wnd = std::stoll(m[1].str());
    if (std::regex_search(l, m, sent_re)) i.bytes_sent = std::stoll(m[1].str());
    out.push_back(i);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<E2eBed>> E2eBed::Create(const BedOptions& options) {
  if (getuid() != 0) return absl::FailedPreconditionError("needs root (namespaces, XDP, BPF)");
  if (absl::Status s = testbed::Testbed::Available(); !s.ok())
    return absl::FailedPreconditionError(s.ToString());
  std::unique_ptr<E2eBed> bed(new E2eBed(options));
  auto tb = testbed::Testbed::Create(options.testbed);
  if (!tb.ok()) return tb.status();
  bed->tb_ = std::move(*tb);
  bed->backends_.resize(options.testbed.num_backends);
  bed->dir_ = absl::StrCat(TempDir(), "/", options.testbed.prefix);
  mkdir(bed->dir_.c_str(), 0755);
  mkdir("/run/rematcher", 0700);
  auto paws = tcpdrops::PawsTrace::Start();
  if (paws.ok()) {
    bed->paws_ = std::move(*paws);
    bed->paws_->SetLogMinAge(7);
  } else {
    bed->paws_trace_error_ = paws.status().ToString();
  }
  return bed;
}

absl::Status E2eBed::CheckPawsAttribution(const std::string& host, const testbed::NstatDelta& d,
                                          int max_age) const {
  auto get = [&](const std::string& k) -> int64_t {
    auto it = d.find(k);
    return it == d.end() ? 0 : it->second;
  };
  if (!paws_) {
    std::cout << "[paws] " << host << ": PAWS drops not attributed, the tracer is not running ("
              << paws_trace_error_ << ")" << std::endl;
    return absl::OkStatus();
  }
  const int64_t paws = get("TcpExtPAWSEstab"), stale = get(kPawsStale),
                fresh = get(kPawsFresh), ack = get(kPawsPureAck), req = get(kPawsRequest);
  std::string ages;
  int oldest = -1;
  int64_t too_old = 0;
  for (int a = 0; a < tcpdrops::kAgeBuckets; ++a) {
    int64_t n = get(absl::StrCat(kPawsAge, a));
    if (n <= 0) continue;
    oldest = a;
    if (max_age >= 0 && a > max_age) too_old += n;
    absl::StrAppend(&ages, " ", a, a == tcpdrops::kAgeBuckets - 1 ? "+" : "", ":", n);
  }
  std::cout << "[paws] " << host << ": PAWSEstab " << paws << " = old copies " << stale
            << " + new data " << fresh << " + pure ACKs " << ack
            << " + before the handshake completed " << req << "; ticks old (age:count)"
            << (ages.empty() ? " -" : ages) << std::endl;
  // A request socket's drop (tcp_check_req) counts in PAWSEstab too: a
  // segment older than the SYN reaching a backend whose handshake ACK was
  // lost (a pooled connection is used as soon as its own side completes).
  if (stale + fresh + ack + req != paws)
    return absl::InternalError(absl::StrCat(host, ": PAWSEstab ", paws, " but the tracer saw ",
                                            stale + fresh + ack + req, " PAWS drops"));
  if (too_old > 0) {
    std::cout << "[paws] " << host << ": " << too_old << " drop(s) more than " << max_age
              << " ticks old (the oldest " << oldest << "), " << kPawsOutliersAllowed
              << " allowed" << std::endl;
  }
  if (too_old > kPawsOutliersAllowed) {
    // TSvals older than the faults explain reached this host, more often
    // than a frame stuck in a starved CPU's queue does: a splice that made
    // the TSval leap ahead (see do_splice's TS offset), or copies kept
    // somewhere. The drops logged so far say which connection.
    return absl::InternalError(absl::StrCat(
        host, ": ", too_old, " PAWS drops more than ", max_age,
        " ticks old (the oldest ", oldest, oldest == tcpdrops::kAgeBuckets - 1 ? "+" : "",
        "), more than the injected faults explain; logged drops (the ",
        "first ", tcpdrops::kLogFreshSlots, " new-data ones of this phase, then the first ",
        tcpdrops::kLogOldSlots, " others 7+ ticks old):\n",
        absl::StrJoin(LoggedPawsDrops(), "\n")));
  }
  return absl::OkStatus();
}

std::vector<std::string> E2eBed::LoggedPawsDrops() const {
  std::vector<std::string> out;
  if (paws_)
    for (const tcpdrops::PawsDrop& d : paws_->LoggedDrops()) out.push_back(d.ToString());
  return out;
}

E2eBed::~E2eBed() {
  StopLb();
  backends_.clear();  // SIGKILLs and reaps
  tb_.reset();        // deletes the namespaces
}

std::string E2eBed::TempPath(const std::string& name) const { return dir_ + "/" + name; }

absl::Status E2eBed::StartBackend(int i, const std::vector<std::string>& extra) {
  if (i < 0 || i >= static_cast<int>(backends_.size()))
    return absl::InvalidArgumentError(absl::StrCat("no backend ", i));
  backends_[i] = Process();
  std::vector<std::string> argv = {RunfilePath("testing/backend/backend"),
                                   absl::StrCat("--listen=0.0.0.0:", options_.backend_port),
                                   absl::StrCat("--name=b", i)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  std::string log = TempPath(absl::StrCat("backend", i, ".log"));
  auto p = tb_->Spawn(tb_->backend_ns(i), argv, {"", log});
  if (!p.ok()) return p.status();
  backends_[i] = std::move(*p);
  return tb_->WaitForTcpListener(tb_->backend_ns(i), tb_->backend_ip(i), options_.backend_port,
                                 absl::Seconds(10));
}

void E2eBed::KillBackend(int i, int sig) {
  if (i < 0 || i >= static_cast<int>(backends_.size()) || !backends_[i].valid()) return;
  backends_[i].Signal(sig);
  if (sig == SIGKILL) {
    backends_[i].Wait(absl::Seconds(5)).IgnoreError();
    backends_[i] = Process();
  }
}

bool E2eBed::BackendRunning(int i) {
  return i >= 0 && i < static_cast<int>(backends_.size()) && backends_[i].valid() &&
         backends_[i].Running();
}

std::string E2eBed::BackendList() const {
  std::vector<std::string> b;
  for (int i = 0; i < tb_->num_backends(); i++)
    b.push_back(absl::StrCat(tb_->backend_ip(i), ":", options_.backend_port));
  return absl::StrJoin(b, ",");
}

absl::Status E2eBed::StartLb(const std::string& policy, const std::vector<std::string>& extra,
                             int conns_per_backend) {
  StopLb();
  std::vector<std::string> argv = {RunfilePath("lb/rematcher"),
                                   "--iface=eth0",
                                   "--vip=" + options_.vip,
                                   "--backends=" + BackendList(),
                                   "--policy=" + policy,
                                   "--stats_interval_s=0",
                                   absl::StrCat("--conns_per_backend=", conns_per_backend),
                                   "--control_socket=" + options_.control_socket};
  argv.insert(argv.end(), extra.begin(), extra.end());
  lb_log_ = TempPath("rematcher.log");
  auto p = tb_->Spawn(tb_->lb_ns(), argv, {lb_log_, lb_log_});
  if (!p.ok()) return p.status();
  lb_ = std::move(*p);
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  const uint64_t want = static_cast<uint64_t>(conns_per_backend) * tb_->num_backends();
  while (absl::Now() < deadline) {
    auto s = Stats();
    if (s.ok() && (*s)["pool_established"] >= want) return absl::OkStatus();
    if (!lb_.Running()) return absl::InternalError("rematcher exited: " + LbLog());
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError("pools not established in time: " + LbLog());
}

void E2eBed::StopLb() {
  if (lb_.valid()) lb_.Stop(absl::Seconds(5)).IgnoreError();
  lb_ = Process();
}

bool E2eBed::LbRunning() { return lb_.valid() && lb_.Running(); }

std::string E2eBed::LbLog() const {
  std::ifstream f(lb_log_);
  std::string s((std::istreambuf_iterator<char>(f)), {});
  if (s.size() > 8000) s = "..." + s.substr(s.size() - 8000);
  return s;
}

absl::StatusOr<std::string> E2eBed::Ctl(const std::string& cmd) const {
  return SendControlCommand(options_.control_socket, cmd);
}

absl::StatusOr<std::map<std::string, uint64_t>> E2eBed::Stats() const {
  auto r = Ctl("stats");
  if (!r.ok()) return r.status();
  return ParseStats(*r);
}

absl::StatusOr<std::vector<BackendRow>> E2eBed::Backends() const {
  auto r = Ctl("backends");
  if (!r.ok()) return r.status();
  return ParseBackends(*r);
}

std::vector<BackendRow> E2eBed::WaitPoolsQuiet(uint32_t min_live, absl::Duration timeout) const {
  absl::Time deadline = absl::Now() + timeout;
  std::vector<BackendRow> rows;
  while (true) {
    auto r = Backends();
    if (r.ok()) {
      rows = *r;
      bool quiet = !rows.empty();
      for (const BackendRow& b : rows) {
        if (b.state == "removed") continue;
        if (b.pool_idle != b.pool_live || b.pool_live < min_live) quiet = false;
      }
      if (quiet) return rows;
    }
    if (absl::Now() >= deadline) return rows;
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::StatusOr<E2eBed::LoadResult> E2eBed::Load(int client, const std::vector<std::string>& flags,
                                                absl::Duration timeout) {
  std::vector<std::string> argv = {RunfilePath("testing/loadgen/loadgen"),
                                   "--target=" + options_.vip, "--json"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  absl::Time start = absl::Now();
  auto r = tb_->RunCommand(tb_->client_ns(client), argv, timeout);
  if (!r.ok()) return r.status();
  LoadResult out;
  out.exit_code = r->exit_code;
  out.json = r->out;
  out.err = r->err.size() > 4000 ? r->err.substr(0, 4000) + "..." : r->err;
  out.elapsed = absl::Now() - start;
  return out;
}

absl::StatusOr<Process> E2eBed::SpawnLoad(int client, const std::vector<std::string>& flags,
                                          const std::string& out_path) {
  std::vector<std::string> argv = {RunfilePath("testing/loadgen/loadgen"),
                                   "--target=" + options_.vip, "--json"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return tb_->Spawn(tb_->client_ns(client), argv, {out_path, out_path + ".err"});
}

absl::StatusOr<E2eBed::Snap> E2eBed::TakeNstat() const {
  Snap s;
  std::map<std::string, tcpdrops::PawsCounts> paws;
  if (paws_) paws = paws_->ByAddress();
  auto add = [&](const std::string& name, const std::string& ns,
                 const std::string& ip) -> absl::Status {
    auto n = tb_->Nstat(ns);
    if (!n.ok()) return n.status();
    if (paws_) {
      const tcpdrops::PawsCounts& p = paws[ip];
      (*n)[kPawsStale] = p.stale;
      (*n)[kPawsFresh] = p.fresh;
      (*n)[kPawsPureAck] = p.pure_ack;
      (*n)[kPawsRequest] = p.request;
      for (int a = 0; a < tcpdrops::kAgeBuckets; ++a)
        (*n)[absl::StrCat(kPawsAge, a)] = p.age[a];
    }
    s.hosts.emplace_back(name, *n);
    return absl::OkStatus();
  };
  for (int i = 0; i < tb_->num_clients(); i++)
    if (absl::Status st = add(absl::StrCat("c", i), tb_->client_ns(i), tb_->client_ip(i));
        !st.ok())
      return st;
  for (int i = 0; i < tb_->num_backends(); i++)
    if (absl::Status st = add(absl::StrCat("b", i), tb_->backend_ns(i), tb_->backend_ip(i));
        !st.ok())
      return st;
  return s;
}

std::map<std::string, testbed::NstatDelta> E2eBed::Diff(const Snap& before, const Snap& after) {
  std::map<std::string, testbed::NstatDelta> out;
  for (size_t i = 0; i < after.hosts.size() && i < before.hosts.size(); i++)
    out[after.hosts[i].first] = testbed::NstatDiff(before.hosts[i].second, after.hosts[i].second);
  return out;
}

}  // namespace rematcher::e2e
