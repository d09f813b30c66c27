// idle_clients: many idle client connections held through rematcher while
// other connections run requests (issue 4, "Capacity and load").
//
//   bazel run //tools/bench/idle:idle_clients            (root; ~3 minutes)
//   bazel run //tools/bench/idle:idle_clients -- --idle=20000 --out=/tmp/idle.md
//
// What it does, on its own namespace testbed (prefix --prefix, default rmst:
// 198.18.0.0/16, three test backends, the real rematcher with rr):
//   0. A 3 s warm-up load, so the pools have grown before anything counts.
//   1. Phase "0 idle": a closed-loop load (--load_connections, for req/s)
//      and an open-loop load (--load_rate, for latency at a fixed rate) from
//      the last client namespace; the XDP program's own run time per packet
//      from the kernel's BPF statistics (BPF_ENABLE_STATS) over each run.
//   2. Opens --idle connections to the VIP from the other client namespaces
//      (--idle_namespaces; ephemeral port range widened to 1024-65535
//      there, as 50,000 exceed the default 28,232), each one optionally
//      making one request (a keep-alive client between requests) and then
//      going idle.
//      They are held by worker processes (this binary with --worker), at
//      most --per_process each: RLIMIT_NOFILE's hard limit can only be
//      raised with CAP_SYS_RESOURCE, which a container may not grant (this
//      CI machine: hard limit 20,000, CAP_SYS_RESOURCE absent), so several
//      processes are the portable way past it.
//   3. Phase "N idle": the same loads again while every idle connection is
//      held; afterwards a sample of the idle connections makes a request to
//      show they still work.
//   4. Closes the idle connections (--close_rate), waits for the core's GC
//      to free their records (reporting what is left, by state, and what the
//      clients' kernels counted), and runs phase "0 idle (after)" for drift.
// Reported: memory per client on the LB side (BPF map memlock of the tables
// sized by --max_clients, all preallocated), proof that the LB kernel holds
// no socket per client (ss -tan in the LB namespace: only the pooled
// connections), rematcher's RSS before/after, load req/s, p50/p99 and XDP
// ns/packet per phase. Prints markdown tables (and writes them to --out).
//
// If the target is not reached it says where opening stopped and why (the
// errno of the failing connects, the LB's refusal counters).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "lb/control_client.h"
#include "testing/testbed/netns.h"
#include "testing/testbed/process.h"
#include "testing/testbed/testbed.h"
#include "tools/bench/idle/xdp_probe.h"

DEFINE_string(prefix, "rmst", "testbed prefix (namespaces <prefix>-*)");
DEFINE_int32(idle, 50000, "idle client connections to hold");
DEFINE_int32(idle_namespaces, 1, "client namespaces the idle connections come from");
DEFINE_int32(connect_parallel, 1000, "connects in flight at once while opening");
DEFINE_bool(idle_request, true,
            "each idle connection makes one request (empty body) before going idle, so its "
            "client record was spliced and released like a keep-alive client between requests");
DEFINE_double(idle_request_rate, 1000,
              "requests per second on the idle connections (each holds a pooled connection "
              "until about --idle_release_ms + 1 s after its response)");
DEFINE_int32(load_connections, 64, "connections of the measured loads");
DEFINE_double(load_seconds, 10, "length of each measured load");
DEFINE_double(load_rate, 3000, "open-loop rate of the latency load (requests/s)");
DEFINE_string(load_sizes, "100,1000,10000", "response sizes of the measured loads");
DEFINE_int32(check_sample, 1000, "idle connections that make a request after the held phase");
DEFINE_uint32(max_clients, 65536, "rematcher --max_clients");
DEFINE_uint32(max_conns_per_backend, 1024, "rematcher --max_conns_per_backend");
DEFINE_double(max_total_s, 1200, "watchdog: everything is torn down after this long");
DEFINE_string(out, "", "also write the markdown report to this file");
DEFINE_double(close_rate, 10000, "idle connections closed per second at the end");
DEFINE_int32(per_process, 16000,
             "idle connections per worker process (capped by RLIMIT_NOFILE's hard limit)");
// Worker mode (internal): hold connections from one namespace, take
// commands on stdin, answer one line each on stdout.
DEFINE_bool(worker, false, "internal: run as an idle-connection worker");
DEFINE_string(worker_ns, "", "internal: namespace of the worker's connections");
DEFINE_int32(worker_count, 0, "internal: connections the worker opens");
DEFINE_double(worker_deadline_s, 300, "internal: the worker's bound on opening");

namespace rematcher {
namespace {

namespace tb = testbed;
constexpr int kBackends = 3;
constexpr uint16_t kPort = 8080;
constexpr char kVip[] = "198.18.0.10";

double JsonNum(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\":(-?[0-9.]+)"))) return -1;
  return std::stod(m[1].str());
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

uint64_t RssKiB(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    uint64_t v = 0;
    if (line.rfind("VmRSS:", 0) == 0 &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(6), "kB")), &v))
      return v;
  }
  return 0;
}

std::string ErrnoName(int e) { return e ? strerror(e) : "ok"; }

// Counters that say what the clients' kernels did with their sockets when
// they were closed.
constexpr const char* kCloseCounters[] = {"TcpOutRsts", "TcpRetransSegs", "TcpExtTCPTimeouts",
                                          "TcpExtTCPAbortOnMemory", "TcpExtTCPAbortOnClose"};

// ---------------------------------------------------------------- idle set

struct OpenReport {
  int opened = 0;
  std::map<std::string, int> failures;  // reason -> count
  std::string stopped_by;               // empty: target reached
  double seconds = 0;
};

// Opens up to `want` connections to the VIP from namespace `ns` (the
// sockets are created inside it), keeping `parallel` connects in flight.
// Appends the connected fds to `fds`.
OpenReport OpenIdle(const std::string& ns, int want, int parallel, absl::Time deadline,
                    std::vector<int>* fds) {
  OpenReport rep;
  absl::Time start = absl::Now();
  auto in = tb::ScopedNetns::Enter(ns);
  if (!in.ok()) {
    rep.stopped_by = in.status().ToString();
    return rep;
  }
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(kPort);
  inet_pton(AF_INET, kVip, &dst.sin_addr);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  std::map<int, absl::Time> pending;  // fd -> connect started
  int consecutive_failures = 0;
  auto fail = [&](const std::string& why) {
    rep.failures[why]++;
    consecutive_failures++;
  };
  while (rep.opened < want && absl::Now() < deadline) {
    while (static_cast<int>(pending.size()) < parallel &&
           rep.opened + static_cast<int>(pending.size()) < want && consecutive_failures < 1000) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        fail(absl::StrCat("socket(): ", ErrnoName(errno)));
        break;
      }
      int rc = connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst));
      if (rc != 0 && errno != EINPROGRESS) {
        fail(absl::StrCat("connect(): ", ErrnoName(errno)));
        close(fd);
        break;
      }
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.fd = fd;
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      pending[fd] = absl::Now();
    }
    if (consecutive_failures >= 1000 && pending.empty()) {
      rep.stopped_by = "1000 consecutive failures";
      break;
    }
    epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
      pending.erase(fd);
      if (err == 0) {
        fds->push_back(fd);
        rep.opened++;
        consecutive_failures = 0;
      } else {
        fail(absl::StrCat("connect: ", ErrnoName(err)));
        close(fd);
      }
    }
    absl::Time now = absl::Now();
    for (auto it = pending.begin(); it != pending.end();) {
      if (now - it->second > absl::Seconds(10)) {
        fail("connect: no answer in 10 s");
        epoll_ctl(ep, EPOLL_CTL_DEL, it->first, nullptr);
        close(it->first);
        it = pending.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& [fd, t] : pending) close(fd);
  close(ep);
  if (rep.opened < want && rep.stopped_by.empty())
    rep.stopped_by = absl::Now() >= deadline ? "deadline" : "failures";
  rep.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return rep;
}

struct RequestReport {
  int ok = 0;
  std::map<std::string, int> failures;
  double seconds = 0;
};

// One "GET /r?size=0" on each fd, at most `rate` per second and at most
// 4096 in flight; checks for a 200 with Content-Length: 0.
RequestReport RequestOnEach(const std::vector<int>& fds, double rate, absl::Time deadline) {
  RequestReport rep;
  const std::string req =
      absl::StrCat("GET /r?size=0&seed=1 HTTP/1.1\r\nHost: ", kVip, ":", kPort, "\r\n\r\n");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct Pending {
    std::string in;
    absl::Time sent;
  };
  std::map<int, Pending> pending;
  size_t next = 0;
  absl::Time start = absl::Now();
  auto done = [&](int fd, const std::string& failure) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    pending.erase(fd);
    if (failure.empty()) {
      rep.ok++;
    } else {
      rep.failures[failure]++;
    }
  };
  while ((next < fds.size() || !pending.empty()) && absl::Now() < deadline) {
    double allowed = rate * absl::ToDoubleSeconds(absl::Now() - start) + 1;
    while (next < fds.size() && next < allowed && pending.size() < 4096) {
      int fd = fds[next++];
      ssize_t w = send(fd, req.data(), req.size(), MSG_NOSIGNAL);
      if (w != static_cast<ssize_t>(req.size())) {
        rep.failures[absl::StrCat("send: ", ErrnoName(w < 0 ? errno : 0))]++;
        continue;
      }
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      pending[fd] = {"", absl::Now()};
    }
    epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, 10);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      auto it = pending.find(fd);
      if (it == pending.end()) continue;
      char buf[4096];
      ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (r <= 0) {
        done(fd, r == 0 ? "closed by the LB" : absl::StrCat("recv: ", ErrnoName(errno)));
        continue;
      }
      it->second.in.append(buf, r);
      const std::string& in = it->second.in;
      size_t end = in.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      bool ok = in.rfind("HTTP/1.1 200", 0) == 0 && in.find("Content-Length: 0\r\n") < end &&
                in.size() == end + 4;
      done(fd, ok ? "" : "unexpected response");
    }
    absl::Time now = absl::Now();
    std::vector<int> late;
    for (auto& [fd, p] : pending)
      if (now - p.sent > absl::Seconds(10)) late.push_back(fd);
    for (int fd : late) done(fd, "no response in 10 s");
  }
  if (!pending.empty()) rep.failures["unfinished at the deadline"] += pending.size();
  close(ep);
  rep.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return rep;
}

// Idle connections still open and not reset: a peek sees no data, no EOF.
int CountAlive(const std::vector<int>& fds) {
  int alive = 0;
  for (int fd : fds) {
    char c;
    ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) alive++;
  }
  return alive;
}

// ------------------------------------------------------------- workers

// "k=v;k=v" with spaces as '_' (one line on the worker pipe) and back.
std::string EncodeFailures(const std::map<std::string, int>& f) {
  std::vector<std::string> parts;
  for (auto& [k, v] : f) {
    std::string key = k;
    std::replace(key.begin(), key.end(), ' ', '_');
    std::replace(key.begin(), key.end(), ';', ',');
    std::replace(key.begin(), key.end(), '=', ':');
    parts.push_back(absl::StrCat(key, "=", v));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, ";");
}

void DecodeFailures(const std::string& s, std::map<std::string, int>* out) {
  if (s == "-") return;
  for (absl::string_view kv : absl::StrSplit(s, ';', absl::SkipEmpty())) {
    std::vector<std::string> p = absl::StrSplit(kv, '=');
    int v = 0;
    if (p.size() != 2 || !absl::SimpleAtoi(p[1], &v)) continue;
    std::replace(p[0].begin(), p[0].end(), '_', ' ');
    (*out)[p[0]] += v;
  }
}

// Worker: opens --worker_count connections from --worker_ns, then answers
// commands on stdin, one line each on stdout:
//   (at start)   opened N SECONDS STOPPED_BY FAILURES
//   request R -> request OK SECONDS FAILURES     (one request on each, R/s)
//   alive     -> alive N
//   sample K  -> sample OK K FAILURES             (K spread over the set)
//   close R   -> closed                            (closes R/s, then exits)
//   EOF       -> (closes everything and exits)
int WorkerMain() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  std::vector<int> fds;
  OpenReport o = OpenIdle(FLAGS_worker_ns, FLAGS_worker_count, FLAGS_connect_parallel,
                          absl::Now() + absl::Seconds(FLAGS_worker_deadline_s), &fds);
  std::string stopped = o.stopped_by.empty() ? "-" : o.stopped_by;
  std::replace(stopped.begin(), stopped.end(), ' ', '_');
  printf("opened %d %.3f %s %s\n", o.opened, o.seconds, stopped.c_str(),
         EncodeFailures(o.failures).c_str());
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof(line), stdin) != nullptr) {
    std::vector<std::string> a = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ');
    double x = 0;
    if (a.size() == 2 && a[0] == "request" && absl::SimpleAtod(a[1], &x)) {
      RequestReport r = RequestOnEach(fds, x, absl::Now() + absl::Seconds(600));
      printf("request %d %.3f %s\n", r.ok, r.seconds, EncodeFailures(r.failures).c_str());
    } else if (a[0] == "alive") {
      printf("alive %d\n", CountAlive(fds));
    } else if (a.size() == 2 && a[0] == "sample" && absl::SimpleAtod(a[1], &x)) {
      std::vector<int> sample;
      const size_t k = static_cast<size_t>(x);
      for (size_t i = 0; i < fds.size() && sample.size() < k;
           i += std::max<size_t>(1, fds.size() / std::max<size_t>(1, k)))
        sample.push_back(fds[i]);
      RequestReport r = RequestOnEach(sample, 500, absl::Now() + absl::Seconds(120));
      printf("sample %d %d %s\n", r.ok, static_cast<int>(sample.size()),
             EncodeFailures(r.failures).c_str());
    } else if (a.size() == 2 && a[0] == "close" && absl::SimpleAtod(a[1], &x) && x > 0) {
      absl::Time t0 = absl::Now();
      for (size_t i = 0; i < fds.size(); i++) {
        absl::Time due = t0 + absl::Seconds(i / x);
        if (due > absl::Now()) absl::SleepFor(due - absl::Now());
        close(fds[i]);
      }
      fds.clear();
      break;
    } else {
      printf("error unknown command\n");
    }
    fflush(stdout);
  }
  for (int fd : fds) close(fd);
  printf("closed\n");
  fflush(stdout);
  return 0;
}

// The parent's handle on a worker: a child process with pipes to its stdin
// and stdout. Dies with the parent (PDEATHSIG); killed when destroyed.
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Start(const std::string& ns, int count,
                                                       int parallel, double deadline_s) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) return absl::ErrnoToStatus(errno, "readlink /proc/self/exe");
    exe[n] = 0;
    std::vector<std::string> args = {exe,
                                     "--worker",
                                     "--worker_ns=" + ns,
                                     absl::StrCat("--worker_count=", count),
                                     absl::StrCat("--connect_parallel=", parallel),
                                     absl::StrCat("--worker_deadline_s=", deadline_s),
                                     "--logtostderr"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) return absl::ErrnoToStatus(errno, "pipe");
    pid_t pid = fork();
    if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
    if (pid == 0) {
      // Async-signal-safe calls only until execv.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(in[0], 0);
      dup2(out[1], 1);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    std::unique_ptr<Worker> w(new Worker());
    w->pid_ = pid;
    w->to_ = in[1];
    w->from_ = out[0];
    return w;
  }

  ~Worker() {
    if (to_ >= 0) close(to_);  // EOF: the worker closes its sockets and exits
    if (pid_ > 0) {
      for (int i = 0; i < 100; i++) {
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
          pid_ = -1;
          break;
        }
        usleep(50000);
      }
      if (pid_ > 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
      }
    }
    if (from_ >= 0) close(from_);
  }

  absl::Status Send(const std::string& cmd) {
    std::string l = cmd + "\n";
    if (write(to_, l.data(), l.size()) != static_cast<ssize_t>(l.size()))
      return absl::ErrnoToStatus(errno, "writing to a worker");
    return absl::OkStatus();
  }

  // One line of the worker's stdout, bounded.
  absl::StatusOr<std::vector<std::string>> Read(absl::Duration timeout) {
    absl::Time deadline = absl::Now() + timeout;
    while (true) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return std::vector<std::string>(absl::StrSplit(line, ' '));
      }
      int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (ms <= 0) return absl::DeadlineExceededError("worker did not answer");
      pollfd p{from_, POLLIN, 0};
      if (poll(&p, 1, std::min(ms, 1000)) <= 0) continue;
      char b[4096];
      ssize_t r = read(from_, b, sizeof(b));
      if (r <= 0) return absl::UnavailableError("worker exited");
      buf_.append(b, r);
    }
  }

 private:
  Worker() = default;
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buf_;
};

// ---------------------------------------------------------------- the run

struct Phase {
  std::string name;
  int idle = 0;
  double closed_rps = 0, closed_p50_ms = 0, closed_p99_ms = 0;
  double open_rps = 0, open_p50_ms = 0, open_p99_ms = 0;
  double closed_ns_pkt = 0, open_ns_pkt = 0;
  double closed_pkts_req = 0;
  int64_t load_errors = 0;
  uint64_t lb_estab = 0, lb_clients = 0, pool_live = 0;
  uint64_t rss_kib = 0;
  std::string ss_tcp;  // the "TCP:" line of ss -s in the LB namespace
};

class IdleBench {
 public:
  absl::Status Run();
  std::string Report() const { return report_; }

 private:
  absl::Status Setup();
  absl::StatusOr<std::map<std::string, uint64_t>> Stats() const;
  absl::StatusOr<uint64_t> ClientRecords() const;
  uint64_t PoolLive() const;
  absl::Status Measure(Phase* p);
  absl::StatusOr<std::string> Load(const std::vector<std::string>& flags, double* ns_pkt,
                                   double* pkts_per_req);
  void CloseIdle();

  std::string runfiles_ = tb::RunfilesRoot();
  std::string sock_;
  std::string dir_;
  std::unique_ptr<tb::Testbed> bed_;
  std::vector<tb::Process> procs_;
  tb::Process lb_;
  std::unique_ptr<bench::XdpProbe> probe_;
  int stats_fd_ = -1;
  std::vector<std::unique_ptr<Worker>> workers_;
  int load_ns_ = 0;
  std::string report_;

 public:
  ~IdleBench() {
    CloseIdle();
    if (stats_fd_ >= 0) close(stats_fd_);
    probe_.reset();
    if (lb_.valid()) lb_.Stop(absl::Seconds(10)).IgnoreError();
    procs_.clear();
    bed_.reset();
  }
};

void IdleBench::CloseIdle() {
  const double rate = std::max(1.0, FLAGS_close_rate / std::max<size_t>(1, workers_.size()));
  for (auto& w : workers_) w->Send(absl::StrCat("close ", rate)).IgnoreError();
  for (auto& w : workers_) w->Read(absl::Seconds(120)).IgnoreError();  // "closed"
  workers_.clear();  // waits for each to exit (bounded), then kills
}

absl::StatusOr<std::map<std::string, uint64_t>> IdleBench::Stats() const {
  auto r = SendControlCommand(sock_, "stats", absl::Seconds(10));
  if (!r.ok()) return r.status();
  return ParseStats(*r);
}

absl::StatusOr<uint64_t> IdleBench::ClientRecords() const {
  // `clients 0` prints the header and "... N more" when N > 0.
  auto r = SendControlCommand(sock_, "clients 0", absl::Seconds(20));
  if (!r.ok()) return r.status();
  std::smatch m;
  if (std::regex_search(*r, m, std::regex("\\.\\.\\. ([0-9]+) more"))) return std::stoull(m[1]);
  return 0;
}

uint64_t IdleBench::PoolLive() const {
  auto r = SendControlCommand(sock_, "backends", absl::Seconds(10));
  if (!r.ok()) return 0;
  uint64_t live = 0;
  std::smatch m;
  std::string text = *r;
  std::regex re(" ([0-9]+)/([0-9]+) ");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
       ++it)
    live += std::stoull((*it)[2].str());
  return live;
}

absl::Status IdleBench::Setup() {
  tb::TestbedOptions o;
  o.prefix = FLAGS_prefix;
  o.num_clients = FLAGS_idle_namespaces + 1;
  o.num_backends = kBackends;
  o.command_timeout = absl::Seconds(30);
  auto bed = tb::Testbed::Create(o);
  if (!bed.ok()) return bed.status();
  bed_ = std::move(*bed);
  load_ns_ = FLAGS_idle_namespaces;
  dir_ = absl::StrCat("/tmp/", FLAGS_prefix, "-idle");
  mkdir(dir_.c_str(), 0755);
  mkdir("/run/rematcher", 0700);
  sock_ = absl::StrCat("/run/rematcher/", FLAGS_prefix, ".sock");
  // Each idle namespace may use (almost) every port towards the VIP.
  for (int i = 0; i < FLAGS_idle_namespaces; i++) {
    auto r = bed_->Run(bed_->client_ns(i),
                       {"sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"});
    if (!r.ok()) return r.status();
  }
  std::vector<std::string> backends;
  for (int i = 0; i < kBackends; i++) {
    auto p = bed_->Spawn(bed_->backend_ns(i),
                         {runfiles_ + "/testing/backend/backend",
                          absl::StrCat("--listen=0.0.0.0:", kPort), absl::StrCat("--name=b", i)},
                         {"", absl::StrCat(dir_, "/backend", i, ".log")});
    if (!p.ok()) return p.status();
    procs_.push_back(std::move(*p));
    backends.push_back(absl::StrCat(bed_->backend_ip(i), ":", kPort));
  }
  for (int i = 0; i < kBackends; i++) {
    auto st = bed_->WaitForTcpListener(bed_->backend_ns(i), bed_->backend_ip(i), kPort,
                                       absl::Seconds(10));
    if (!st.ok()) return st;
  }
  std::string log = dir_ + "/rematcher.log";
  auto p = bed_->Spawn(
      bed_->lb_ns(),
      {runfiles_ + "/lb/rematcher", "--iface=eth0", absl::StrCat("--vip=", kVip, ":", kPort),
       "--backends=" + absl::StrJoin(backends, ","), "--policy=rr",
       "--policy_dir=" + runfiles_ + "/policies", "--stats_interval_s=0", "--conns_per_backend=16",
       absl::StrCat("--max_conns_per_backend=", FLAGS_max_conns_per_backend),
       absl::StrCat("--max_clients=", FLAGS_max_clients),
       // Idle clients must outlive the run: no idle GC.
       "--client_idle_timeout_s=36000", "--control_socket=" + sock_},
      {log, log});
  if (!p.ok()) return p.status();
  lb_ = std::move(*p);
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (true) {
    auto s = Stats();
    if (s.ok() && (*s)["pool_established"] >= 16u * kBackends) break;
    if (!lb_.Running()) return absl::InternalError("rematcher exited; see " + log);
    if (absl::Now() > deadline) return absl::DeadlineExceededError("pools not up; see " + log);
    absl::SleepFor(absl::Milliseconds(200));
  }
  auto probe = bench::XdpProbe::Open(bed_->lb_ns(), bed_->lb_ifname());
  if (!probe.ok()) return probe.status();
  probe_ = std::move(*probe);
  auto fd = bench::EnableRunStats();
  if (!fd.ok()) return fd.status();
  stats_fd_ = *fd;
  return absl::OkStatus();
}

absl::StatusOr<std::string> IdleBench::Load(const std::vector<std::string>& flags, double* ns_pkt,
                                            double* pkts_per_req) {
  std::vector<std::string> argv = {runfiles_ + "/testing/loadgen/loadgen",
                                   absl::StrCat("--target=", kVip, ":", kPort),
                                   "--json",
                                   "--allow_errors",
                                   "--sizes=" + FLAGS_load_sizes,
                                   absl::StrCat("--duration_s=", FLAGS_load_seconds),
                                   absl::StrCat("--max_time_s=", FLAGS_load_seconds + 30)};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto s0 = probe_->RunStats();
  if (!s0.ok()) return s0.status();
  auto r =
      bed_->RunCommand(bed_->client_ns(load_ns_), argv, absl::Seconds(FLAGS_load_seconds + 60));
  if (!r.ok()) return r.status();
  auto s1 = probe_->RunStats();
  if (!s1.ok()) return s1.status();
  if (r->exit_code == 1 || r->exit_code == 3)
    return absl::InternalError(absl::StrCat("loadgen exited ", r->exit_code, ": ", r->err));
  uint64_t cnt = s1->run_cnt - s0->run_cnt, ns = s1->run_time_ns - s0->run_time_ns;
  *ns_pkt = cnt ? static_cast<double>(ns) / cnt : 0;
  double ok = JsonNum(r->out, "ok");
  *pkts_per_req = ok > 0 ? cnt / ok : 0;
  return r->out;
}

absl::Status IdleBench::Measure(Phase* p) {
  LOG(INFO) << "phase '" << p->name << "': loads";
  double pr = 0;
  auto c = Load({absl::StrCat("--connections=", FLAGS_load_connections)}, &p->closed_ns_pkt,
                &p->closed_pkts_req);
  if (!c.ok()) return c.status();
  p->closed_rps = JsonNum(*c, "rps");
  p->closed_p50_ms = JsonNum(*c, "p50") / 1000;
  p->closed_p99_ms = JsonNum(*c, "p99") / 1000;
  p->load_errors += static_cast<int64_t>(JsonNum(*c, "errors"));
  auto o = Load({absl::StrCat("--connections=", FLAGS_load_connections), "--mode=open",
                 absl::StrCat("--rate=", FLAGS_load_rate)},
                &p->open_ns_pkt, &pr);
  if (!o.ok()) return o.status();
  p->open_rps = JsonNum(*o, "rps");
  p->open_p50_ms = JsonNum(*o, "p50") / 1000;
  p->open_p99_ms = JsonNum(*o, "p99") / 1000;
  p->load_errors += static_cast<int64_t>(JsonNum(*o, "errors"));
  LOG(INFO) << "closed: " << *c;
  LOG(INFO) << "open: " << *o;
  // Every TCP socket of the LB namespace, any state (the netlink dump is
  // per namespace; the totals of `ss -s` come from global counters).
  auto ss = bed_->Run(bed_->lb_ns(), {"ss", "-Htan"});
  if (ss.ok()) p->lb_estab = std::count(ss->begin(), ss->end(), '\n');
  auto sockstat = bed_->Run(bed_->lb_ns(), {"cat", "/proc/net/sockstat"});
  if (sockstat.ok()) {
    for (absl::string_view line : absl::StrSplit(*sockstat, '\n'))
      if (absl::StartsWith(line, "TCP:")) p->ss_tcp = std::string(line);
  }
  auto n = ClientRecords();
  if (n.ok()) p->lb_clients = *n;
  p->pool_live = PoolLive();
  p->rss_kib = RssKiB(lb_.pid());
  return absl::OkStatus();
}

absl::Status IdleBench::Run() {
  absl::Time deadline = absl::Now() + absl::Seconds(FLAGS_max_total_s - 60);
  if (auto st = Setup(); !st.ok()) return st;
  const uint64_t rss_start = RssKiB(lb_.pid());

  // Warm-up: the pools grow under the first load (to their limit, see the
  // README's capacity notes); grow them before anything is measured.
  {
    double a = 0, b = 0;
    auto w =
        Load({absl::StrCat("--connections=", FLAGS_load_connections), "--duration_s=3"}, &a, &b);
    if (!w.ok()) return w.status();
  }
  std::vector<Phase> phases(3);
  phases[0].name = "0 idle";
  if (auto st = Measure(&phases[0]); !st.ok()) return st;

  // Open the idle connections: worker processes of at most --per_process
  // connections each (RLIMIT_NOFILE), spread over the idle namespaces,
  // opening in parallel.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  const int per_process = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(FLAGS_per_process, int64_t(rl.rlim_max) - 200)));
  const int nworkers = (FLAGS_idle + per_process - 1) / per_process;
  auto st0 = Stats();  // the opening's counters are taken from here
  if (!st0.ok()) return st0.status();
  LOG(INFO) << "opening " << FLAGS_idle << " idle connections with " << nworkers
            << " worker processes (RLIMIT_NOFILE hard limit " << rl.rlim_max << ")";
  double open_secs = 0;
  std::map<std::string, int> open_failures;
  std::string stopped;
  int opened = 0;
  for (int i = 0; i < nworkers; i++) {
    int want = FLAGS_idle / nworkers + (i < FLAGS_idle % nworkers ? 1 : 0);
    auto w = Worker::Start(bed_->client_ns(i % FLAGS_idle_namespaces), want,
                           std::max(1, FLAGS_connect_parallel / nworkers),
                           std::max(30.0, absl::ToDoubleSeconds(deadline - absl::Now()) - 180));
    if (!w.ok()) return w.status();
    workers_.push_back(std::move(*w));
  }
  for (size_t i = 0; i < workers_.size(); i++) {
    auto l = workers_[i]->Read(deadline - absl::Now());
    if (!l.ok()) return l.status();
    if (l->size() != 5 || (*l)[0] != "opened")
      return absl::InternalError(absl::StrCat("worker said '", absl::StrJoin(*l, " "), "'"));
    opened += std::stoi((*l)[1]);
    open_secs = std::max(open_secs, std::stod((*l)[2]));
    if ((*l)[3] != "-") absl::StrAppend(&stopped, "worker ", i, ": ", (*l)[3], "; ");
    DecodeFailures((*l)[4], &open_failures);
  }
  LOG(INFO) << "opened " << opened << " in " << open_secs << " s";
  auto after_open = Stats();
  if (!after_open.ok()) return after_open.status();
  // Every worker runs the same command at once; sums the answers.
  auto all = [&](const std::string& cmd, absl::Duration timeout, int* a, int* b,
                 std::map<std::string, int>* failures) -> absl::Status {
    for (auto& w : workers_)
      if (auto st = w->Send(cmd); !st.ok()) return st;
    for (auto& w : workers_) {
      auto l = w->Read(timeout);
      if (!l.ok()) return l.status();
      if (l->size() >= 2) *a += std::stoi((*l)[1]);
      if (l->size() >= 3 && b != nullptr) *b += static_cast<int>(std::stod((*l)[2]));
      if (l->size() >= 4 && failures != nullptr) DecodeFailures((*l)[3], failures);
    }
    return absl::OkStatus();
  };

  RequestReport first;
  if (FLAGS_idle_request && opened > 0) {
    LOG(INFO) << "one request on each idle connection at " << FLAGS_idle_request_rate << "/s";
    absl::Time t0 = absl::Now();
    int unused = 0;
    if (auto st = all(absl::StrCat("request ", FLAGS_idle_request_rate / workers_.size()),
                      absl::Seconds(700), &first.ok, &unused, &first.failures);
        !st.ok())
      return st;
    first.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    LOG(INFO) << "requests ok " << first.ok << " in " << first.seconds << " s";
    // Their pooled connections go back after --idle_release_ms (1 s) and a
    // GC pass; wait until every pool is idle again (bounded).
    absl::Time until = absl::Now() + absl::Seconds(15);
    while (absl::Now() < until) {
      auto r = SendControlCommand(sock_, "backends");
      bool quiet = r.ok();
      if (r.ok()) {
        std::regex re(" ([0-9]+)/([0-9]+) ");
        std::string text = *r;
        for (auto it = std::sregex_iterator(text.begin(), text.end(), re);
             it != std::sregex_iterator(); ++it)
          if ((*it)[1].str() != (*it)[2].str()) quiet = false;
      }
      if (quiet) break;
      absl::SleepFor(absl::Milliseconds(250));
    }
  }
  int alive_before = 0, alive_after = 0;
  if (auto st = all("alive", absl::Seconds(60), &alive_before, nullptr, nullptr); !st.ok())
    return st;

  phases[1].name = absl::StrCat(opened, " idle");
  phases[1].idle = opened;
  if (auto st = Measure(&phases[1]); !st.ok()) return st;
  if (auto st = all("alive", absl::Seconds(60), &alive_after, nullptr, nullptr); !st.ok())
    return st;
  auto held = Stats();
  if (!held.ok()) return held.status();

  // A sample of the held connections still works.
  RequestReport check;
  int sampled = 0;
  if (auto st =
          all(absl::StrCat("sample ", std::max<size_t>(1, FLAGS_check_sample / workers_.size())),
              absl::Seconds(180), &check.ok, &sampled, &check.failures);
      !st.ok())
    return st;
  LOG(INFO) << "sample requests ok " << check.ok << " of " << sampled;

  // Close them all: the client's FIN between requests is answered in XDP;
  // the records linger 2 s and are collected.
  auto nstat_sum = [&]() {
    std::map<std::string, int64_t> sum;
    for (int i = 0; i < FLAGS_idle_namespaces; i++) {
      auto n = bed_->Nstat(bed_->client_ns(i));
      if (!n.ok()) continue;
      for (const char* k : kCloseCounters) {
        auto it = n->find(k);
        if (it != n->end()) sum[k] += it->second;
      }
    }
    return sum;
  };
  auto close_nstat0 = nstat_sum();
  auto close_lb0 = Stats();
  absl::Time close_start = absl::Now();
  CloseIdle();  // every worker closes its sockets and exits
  uint64_t left = 0;
  while (absl::Now() < close_start + absl::Seconds(60)) {
    auto n = ClientRecords();
    if (n.ok()) left = *n;
    if (n.ok() && left == 0) break;
    absl::SleepFor(absl::Milliseconds(500));
  }
  double gc_secs = absl::ToDoubleSeconds(absl::Now() - close_start);
  auto close_nstat1 = nstat_sum();
  auto close_lb1 = Stats();
  std::map<std::string, int> left_states;
  if (left > 0) {
    // What the records left behind are: `clients N` lists id, client,
    // state, ... one per line.
    auto text = SendControlCommand(sock_, absl::StrCat("clients ", left + 10), absl::Seconds(30));
    if (text.ok()) {
      for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
        std::vector<std::string> col = absl::StrSplit(line, ' ', absl::SkipEmpty());
        if (col.size() >= 3 && col[0] != "id" && col[0] != "...") left_states[col[2]]++;
      }
    }
  }
  LOG(INFO) << "client records left after closing: " << left << " (" << gc_secs << " s)";

  phases[2].name = "0 idle (after)";
  if (auto st = Measure(&phases[2]); !st.ok()) return st;
  auto st_end = Stats();
  if (!st_end.ok()) return st_end.status();

  // ---------------------------------------------------------- the report
  std::string& r = report_;
  auto d = [&](const char* k) { return (*after_open)[k] - (*st0)[k]; };
  absl::StrAppend(&r, "## Idle clients through rematcher\n\n");
  absl::StrAppendFormat(&r,
                        "Target %d idle connections from %d client namespace(s); opened **%d** "
                        "in %.1f s (%.0f/s), %d connects in flight.\n",
                        FLAGS_idle, FLAGS_idle_namespaces, opened, open_secs,
                        open_secs > 0 ? opened / open_secs : 0.0, FLAGS_connect_parallel);
  if (opened < FLAGS_idle) {
    absl::StrAppend(&r, "\n**Target not reached.** Stopped by: ", stopped, "\n");
    for (auto& [k, v] : open_failures) absl::StrAppend(&r, "- ", v, " x ", k, "\n");
    absl::StrAppend(&r, "- LB counters meanwhile: drop_table_full ", d("drop_table_full"),
                    ", tx_rst ", d("tx_rst"), ", handshakes ", d("handshakes"), "\n");
  } else if (!open_failures.empty()) {
    for (auto& [k, v] : open_failures) absl::StrAppend(&r, "- retried: ", v, " x ", k, "\n");
  }
  absl::StrAppend(&r, "Handshakes answered by XDP while opening: ", d("handshakes"), " (tx_synack ",
                  d("tx_synack"), "); refused: drop_table_full ", d("drop_table_full"), ", tx_rst ",
                  d("tx_rst"), ".\n");
  if (FLAGS_idle_request)
    absl::StrAppendFormat(&r, "One request on each before idling: %d ok in %.1f s%s.\n", first.ok,
                          first.seconds, first.failures.empty() ? "" : " (failures below)");
  for (auto& [k, v] : first.failures) absl::StrAppend(&r, "- ", v, " x ", k, "\n");
  absl::StrAppendFormat(&r,
                        "Still open and not reset: %d before and %d after the held phase; a "
                        "sample of %d then made a request: %d ok.\n",
                        alive_before, alive_after, sampled, check.ok);
  for (auto& [k, v] : check.failures) absl::StrAppend(&r, "- ", v, " x ", k, "\n");
  absl::StrAppendFormat(&r,
                        "After closing them (%.0f/s): %d client records left after %.1f s (FIN "
                        "answered in XDP, 2 s linger, GC)",
                        FLAGS_close_rate, static_cast<int>(left), gc_secs);
  for (auto& [k, v] : left_states) absl::StrAppend(&r, "; ", v, " in state ", k);
  absl::StrAppend(&r, ". Meanwhile the idle namespaces counted");
  for (const char* k : kCloseCounters)
    absl::StrAppend(&r, " ", k, " +", close_nstat1[k] - close_nstat0[k]);
  if (close_lb0.ok() && close_lb1.ok()) {
    absl::StrAppend(&r, "; the LB's counters moved:");
    for (auto& [k, v] : *close_lb1) {
      uint64_t d = v - (*close_lb0)[k];
      if (d && k.rfind("pass_", 0) != 0) absl::StrAppend(&r, " ", k, " +", d);
    }
  }
  absl::StrAppend(&r, ".\n\n");

  absl::StrAppendFormat(
      &r,
      "Load from another client namespace: closed loop %d connections and open loop %.0f "
      "req/s, %.0f s each, sizes %s. XDP ns/packet is the kernel's run time of the attached "
      "program divided by its runs (BPF_ENABLE_STATS) over that load.\n\n",
      FLAGS_load_connections, FLAGS_load_rate, FLAGS_load_seconds, FLAGS_load_sizes);
  absl::StrAppend(&r, "| | ", phases[0].name, " | ", phases[1].name, " | ", phases[2].name,
                  " |\n|---|---|---|---|\n");
  auto row = [&](const std::string& name, auto f) {
    absl::StrAppend(&r, "| ", name, " |");
    for (const Phase& p : phases) absl::StrAppend(&r, " ", f(p), " |");
    absl::StrAppend(&r, "\n");
  };
  row("closed loop req/s", [](const Phase& p) { return absl::StrFormat("%.0f", p.closed_rps); });
  row("closed loop p50 / p99 ms", [](const Phase& p) {
    return absl::StrFormat("%.2f / %.2f", p.closed_p50_ms, p.closed_p99_ms);
  });
  row("open loop req/s achieved",
      [](const Phase& p) { return absl::StrFormat("%.0f", p.open_rps); });
  row("open loop p50 / p99 ms",
      [](const Phase& p) { return absl::StrFormat("%.2f / %.2f", p.open_p50_ms, p.open_p99_ms); });
  row("XDP ns/packet closed / open", [](const Phase& p) {
    return absl::StrFormat("%.0f / %.0f", p.closed_ns_pkt, p.open_ns_pkt);
  });
  row("XDP packets per request",
      [](const Phase& p) { return absl::StrFormat("%.1f", p.closed_pkts_req); });
  row("load errors", [](const Phase& p) { return absl::StrCat(p.load_errors); });
  row("client records in the LB", [](const Phase& p) { return absl::StrCat(p.lb_clients); });
  row("TCP sockets in the LB namespace (ss -tan)",
      [](const Phase& p) { return absl::StrCat(p.lb_estab); });
  row("pooled connections (live)", [](const Phase& p) { return absl::StrCat(p.pool_live); });
  row("rematcher RSS MiB",
      [](const Phase& p) { return absl::StrFormat("%.1f", p.rss_kib / 1024.0); });
  absl::StrAppend(&r, "\n/proc/net/sockstat in the LB namespace with the idle connections held: `",
                  phases[1].ss_tcp,
                  "` (inuse is per namespace; alloc is machine-wide, so it "
                  "counts the clients' own sockets too).\n");
  absl::StrAppendFormat(&r, "rematcher RSS at start %.1f MiB.\n\n", rss_start / 1024.0);

  // Memory per client: the tables sized by --max_clients, all preallocated.
  uint64_t per_client_maps = 0, total = 0;
  absl::StrAppend(&r,
                  "| BPF map | type | entries | value B | memlock KiB |\n|---|---|---|---|---|\n");
  std::map<std::string, std::pair<int, uint64_t>> inner;
  for (const bench::MapInfo& m : probe_->maps()) {
    total += m.memlock;
    if (m.inner) {
      inner[m.name].first++;
      inner[m.name].second += m.memlock;
      continue;
    }
    bool per_client = m.max_entries == FLAGS_max_clients &&
                      (m.name == "client_ids" || m.name == "clients" ||
                       m.name == "free_client_ids" || m.name == "decisions");
    if (per_client) per_client_maps += m.memlock;
    absl::StrAppendFormat(&r, "| %s%s | %u | %u | %u | %.1f |\n", m.name,
                          per_client ? " (per client)" : "", m.type, m.max_entries, m.value_size,
                          m.memlock / 1024.0);
  }
  for (auto& [name, v] : inner)
    absl::StrAppendFormat(&r, "| %d x %s (inner) | | | | %.1f |\n", v.first, name,
                          v.second / 1024.0);
  absl::StrAppendFormat(&r,
                        "\nMemory per client connection on the LB: %.0f bytes of BPF maps "
                        "(client_ids + clients + free_client_ids + decisions memlock, %.1f MiB, "
                        "/ --max_clients %u), preallocated at load, so holding %d idle clients "
                        "adds no kernel memory; no socket per client (the LB's established "
                        "sockets are the pooled connections). All maps: %.1f MiB.\n",
                        static_cast<double>(per_client_maps) / FLAGS_max_clients,
                        per_client_maps / 1048576.0, FLAGS_max_clients, opened, total / 1048576.0);
  absl::StrAppendFormat(
      &r,
      "rematcher RSS: %.1f MiB at start, %.1f MiB with %d idle (%+.0f bytes per idle client).\n",
      rss_start / 1024.0, phases[1].rss_kib / 1024.0, opened,
      opened ? (phases[1].rss_kib - static_cast<double>(phases[0].rss_kib)) * 1024 / opened : 0.0);
  auto dh = [&](const char* k) { return (*held)[k] - (*after_open)[k]; };
  absl::StrAppend(&r, "\nLB counters during the held phase: drop_table_full ",
                  dh("drop_table_full"), ", tx_rst ", dh("tx_rst"), ", drop_no_pool ",
                  dh("drop_no_pool"), ", drop_malformed ", dh("drop_malformed"),
                  ", drop_bad_state ", dh("drop_bad_state"), ".\n");
  LOG(INFO) << "final stats: tx_rst " << (*st_end)["tx_rst"] << " drop_table_full "
            << (*st_end)["drop_table_full"];
  if (opened < FLAGS_idle) return absl::ResourceExhaustedError("target not reached (see report)");
  if (check.ok != sampled || alive_after != opened)
    return absl::InternalError("idle connections did not survive (see report)");
  return absl::OkStatus();
}

}  // namespace
}  // namespace rematcher

int main(int argc, char** argv) {
  gflags::SetUsageMessage("idle client connections held through rematcher (root)");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  namespace tb = rematcher::testbed;
  if (FLAGS_worker) return rematcher::WorkerMain();
  if (geteuid() != 0) {
    fprintf(stderr, "idle_clients: SKIPPED: needs root (namespaces, XDP, BPF)\n");
    return 0;
  }
  if (absl::Status st = tb::Testbed::Available(); !st.ok()) {
    fprintf(stderr, "idle_clients: SKIPPED: testbed unavailable: %s\n", st.ToString().c_str());
    return 0;
  }
  if (FLAGS_idle < 1 || FLAGS_idle_namespaces < 1 || FLAGS_idle_namespaces > 100) {
    fprintf(stderr, "idle_clients: need --idle >= 1 and --idle_namespaces in 1..100\n");
    return 3;
  }
  // The soft limit up to the hard one (raising the hard limit needs
  // CAP_SYS_RESOURCE, see the file comment); children inherit it.
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  tb::Testbed::InstallSignalCleanup();
  std::thread([] {
    absl::SleepFor(absl::Seconds(FLAGS_max_total_s));
    fprintf(stderr, "idle_clients: over the %.0f s budget; tearing everything down\n",
            FLAGS_max_total_s);
    tb::Testbed::EmergencyCleanup();
    _exit(4);
  }).detach();
  int rc = 0;
  std::string report;
  {
    rematcher::IdleBench bench;
    absl::Status st = bench.Run();
    report = bench.Report();
    if (!st.ok()) {
      fprintf(stderr, "idle_clients: %s\n", st.ToString().c_str());
      rc = 1;
    }
  }  // tears the testbed down
  printf("%s", report.c_str());
  if (!FLAGS_out.empty()) std::ofstream(FLAGS_out) << report;
  return rc;
}
