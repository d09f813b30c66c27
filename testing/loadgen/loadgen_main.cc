// loadgen: verifying HTTP/1.1 load client. Flag parsing and exit codes only;
// the engine is loadgen.h.
//
// Exit codes: 0 all requests ok; 1 verify failures (always fatal);
// 2 errors (unless --allow_errors); 3 bad flags or setup failure.

#include <signal.h>

#include <cstdio>
#include <iostream>

#include "gflags/gflags.h"
#include "glog/logging.h"
#include "testing/loadgen/loadgen.h"

DEFINE_string(target, "127.0.0.1:8080", "IPv4 IP:PORT to load");
DEFINE_int32(connections, 1, "concurrent connections");
DEFINE_int32(threads, 1, "event loop threads (connections are spread over them)");
DEFINE_uint64(requests, 0, "total requests; 0 = run for --duration_s");
DEFINE_double(duration_s, 10, "issue requests for this long when --requests=0");
DEFINE_double(max_time_s, 120, "hard bound on the run; outstanding requests become errors");
DEFINE_string(mode, "closed", "closed | open");
DEFINE_double(rate, 0, "open loop: total requests per second at fixed intended send times");
DEFINE_string(sizes, "0", "response sizes, comma separated (k/m suffixes ok), picked per request");
DEFINE_string(upload_sizes, "", "if set, POST bodies of these sizes, verified via X-Upload-*");
DEFINE_uint64(seed, 1, "seed for the deterministic per-request choices");
DEFINE_uint64(delay_us, 0, "delay_us passed to the backend");
DEFINE_uint64(delay_one_in, 1, "only one request in this many carries --delay_us (1: all)");
DEFINE_int32(pipeline, 1, "requests written back to back per connection before reading");
DEFINE_bool(pipeline_refill, false,
            "closed loop: keep --pipeline requests in flight, writing the next as each "
            "response completes (responses still owed), instead of whole batches");
DEFINE_uint64(pause_at, 0, "with --pause_us: the backend pauses each response after this many body bytes");
DEFINE_uint64(pause_us, 0, "the backend's mid-body pause, microseconds (0: none)");
DEFINE_uint64(write_early_at, 0,
              "with --pipeline > 1: the next request goes out once this many bytes of the "
              "oldest response's body arrived, not sooner (0: no such wait)");
DEFINE_bool(new_conn_per_request, false, "connect, one request (Connection: close), close");
DEFINE_uint64(requests_per_conn, 0,
              "keep-alive connections carry this many requests each, then the client closes "
              "and opens a new one (0: unlimited)");
DEFINE_uint64(pad_head, 0,
              "an X-Pad header of this many bytes per request (past 1 KiB: rematcher leaves "
              "the exchange to its layer-4 rules, as for an unframed protocol)");
DEFINE_bool(close_header, true,
            "with --new_conn_per_request: send Connection: close (server closes first); "
            "false: the client closes first after reading the response");
DEFINE_int64(timeout_ms, 5000, "per request (and per connect) timeout");
DEFINE_bool(verify, true, "verify every body byte, X-Body-Fnv and uploads");
DEFINE_bool(json, false, "print one JSON object instead of text");
DEFINE_string(latency_csv, "", "if set, write per-request latencies here");
DEFINE_bool(allow_errors, false, "exit 0 despite errors (verify failures still fail)");

int main(int argc, char** argv) {
  gflags::SetUsageMessage("verifying HTTP/1.1 load client for the rematcher test backend");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  signal(SIGPIPE, SIG_IGN);

  namespace lg = rematcher::loadgen;
  lg::Options o;
  o.target = FLAGS_target;
  o.connections = FLAGS_connections;
  o.threads = FLAGS_threads;
  o.requests = FLAGS_requests;
  o.duration_s = FLAGS_duration_s;
  o.max_time_s = FLAGS_max_time_s;
  if (FLAGS_mode == "closed") {
    o.mode = lg::Mode::kClosed;
  } else if (FLAGS_mode == "open") {
    o.mode = lg::Mode::kOpen;
  } else {
    LOG(ERROR) << "--mode must be closed or open, not '" << FLAGS_mode << "'";
    return 3;
  }
  o.rate = FLAGS_rate;
  auto sizes = lg::ParseSizeList(FLAGS_sizes);
  auto uploads = lg::ParseSizeList(FLAGS_upload_sizes);
  if (!sizes.ok() || !uploads.ok()) {
    LOG(ERROR) << (sizes.ok() ? uploads.status() : sizes.status());
    return 3;
  }
  o.sizes = *sizes;
  o.upload_sizes = *uploads;
  o.seed = FLAGS_seed;
  o.delay_us = FLAGS_delay_us;
  o.pipeline = FLAGS_pipeline;
  o.pipeline_refill = FLAGS_pipeline_refill;
  o.pause_at = FLAGS_pause_at;
  o.pause_us = FLAGS_pause_us;
  o.write_early_at = FLAGS_write_early_at;
  o.delay_one_in = FLAGS_delay_one_in;
  o.new_conn_per_request = FLAGS_new_conn_per_request;
  o.close_header = FLAGS_close_header;
  o.pad_head = FLAGS_pad_head;
  o.requests_per_conn = FLAGS_requests_per_conn;
  if (o.requests_per_conn > 0 && o.new_conn_per_request) {
    LOG(ERROR) << "--requests_per_conn and --new_conn_per_request are exclusive";
    return 3;
  }
  o.timeout_ms = FLAGS_timeout_ms;
  o.verify = FLAGS_verify;
  o.latency_csv = FLAGS_latency_csv;

  absl::StatusOr<lg::Report> report = lg::Run(o);
  if (!report.ok()) {
    LOG(ERROR) << "loadgen: " << report.status();
    return 3;
  }
  std::cout << (FLAGS_json ? lg::ReportJson(o, *report) + "\n"
                           : lg::ReportText(o, *report))
            << std::flush;
  if (report->verify_failures > 0) return 1;
  if (report->errors > 0 && !FLAGS_allow_errors) return 2;
  return 0;
}
