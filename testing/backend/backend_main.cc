// backend: HTTP/1.1 keep-alive test backend for end-to-end tests and benches.
//
// Request API:
//   GET  /r?size=N&delay_us=D&seed=S   -> 200, N body bytes (see body.h)
//   POST /r?size=N&...  + body         -> same, plus X-Upload-Len and
//                                         X-Upload-Fnv of the received body
//   ...&pause_at=P&pause_us=U          -> the body's first P bytes, nothing
//                                         for U microseconds, then the rest
//   ...&reset_at=P[&pause_us=U]        -> the first P bytes, U (50 ms), then
//                                         the connection ends with an RST
// Response headers: Content-Length, X-Backend, X-Seed, X-Body-Fnv,
// Connection. Unknown paths: 404. Malformed requests: 400 and close.
//
// This file only parses flags and handles signals; the server is server.h.

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gflags/gflags.h"
#include "glog/logging.h"
#include "testing/backend/server.h"

DEFINE_string(listen, "0.0.0.0:8080", "IPv4 IP:PORT to listen on (port 0: ephemeral)");
DEFINE_string(name, "", "X-Backend value (default: hostname)");
DEFINE_int32(threads, 1, "event loop threads, each with its own SO_REUSEPORT listener");
DEFINE_int64(service_us, 0, "extra service time added to every request, microseconds");
DEFINE_int64(stall_every_ms, 0, "every this many ms, stall (GC-like pause); 0 = never");
DEFINE_int64(stall_ms, 0, "length of each stall in ms (answers nothing meanwhile)");
DEFINE_int64(max_requests_per_conn, 0,
             "answer the Nth request with Connection: close and close; 0 = unlimited");
DEFINE_int64(keepalive_timeout_ms, 0, "close connections idle this long; 0 = never");
DEFINE_int64(corrupt_every, 0,
             "TESTING ONLY: flip one body byte in every Nth response; 0 = never");
DEFINE_string(unhealthy_file, "",
              "GET /health answers 503 while this file exists, else 200 (empty: always 200)");
DEFINE_string(port_file, "",
              "if set, write the bound port here once listening (for tests and port 0)");

namespace {

std::string Hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "backend";
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  gflags::SetUsageMessage("HTTP/1.1 keep-alive test backend with verifiable bodies");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;

  // Block the stop signals in every thread; main waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  rematcher::backend::ServerOptions options;
  options.listen = FLAGS_listen;
  options.name = FLAGS_name.empty() ? Hostname() : FLAGS_name;
  options.threads = FLAGS_threads;
  options.service_us = FLAGS_service_us;
  options.stall_every_ms = FLAGS_stall_every_ms;
  options.stall_ms = FLAGS_stall_ms;
  options.max_requests_per_conn = FLAGS_max_requests_per_conn;
  options.keepalive_timeout_ms = FLAGS_keepalive_timeout_ms;
  options.corrupt_every = FLAGS_corrupt_every;
  options.unhealthy_file = FLAGS_unhealthy_file;

  auto server = rematcher::backend::Server::Create(options);
  if (!server.ok()) {
    LOG(ERROR) << "backend: " << server.status();
    return 1;
  }
  if (absl::Status s = (*server)->Start(); !s.ok()) {
    LOG(ERROR) << "backend: " << s;
    return 1;
  }
  LOG(INFO) << "backend '" << options.name << "' listening on port "
            << (*server)->port() << " with " << options.threads << " thread(s)";
  if (options.corrupt_every > 0) {
    LOG(WARNING) << "corrupting every " << options.corrupt_every
                 << "th response body on purpose (--corrupt_every)";
  }
  if (!FLAGS_port_file.empty()) {
    // Write then rename so a reader never sees a partial number.
    const std::string tmp = FLAGS_port_file + ".tmp";
    {
      std::ofstream f(tmp);
      f << (*server)->port() << "\n";
    }
    if (rename(tmp.c_str(), FLAGS_port_file.c_str()) != 0) {
      PLOG(ERROR) << "rename " << tmp;
      return 1;
    }
  }

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LOG(INFO) << "backend: signal " << sig << ", stopping";
  (*server)->Stop();
  rematcher::backend::ServerStats stats = (*server)->Wait();
  LOG(INFO) << "backend: served " << stats.requests << " requests on "
            << stats.connections_accepted << " connections, "
            << stats.bad_requests << " bad, " << stats.body_bytes_sent
            << " body bytes, " << stats.corrupted_responses << " corrupted, " << stats.resets
            << " reset";
  return 0;
}
