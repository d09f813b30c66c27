// loadgen: a verifying HTTP/1.1 load client for the rematcher test backend.
//
// Owns: client connections (one epoll loop per thread), request scheduling
// (closed loop, or open loop at fixed intended send times), byte-exact
// verification of every response against testing/backend/body.h, and the
// report. Every request attempted is accounted exactly once: ok, an error of
// one kind, or a verify failure. A run always ends by max_time_s.

#ifndef REMATCHER_TESTING_LOADGEN_LOADGEN_H_
#define REMATCHER_TESTING_LOADGEN_LOADGEN_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rematcher::loadgen {

enum class Mode { kClosed, kOpen };

struct Options {
  std::string target;  // IPv4 "IP:PORT"
  int connections = 1;
  int threads = 1;
  uint64_t requests = 0;      // 0: run for duration_s
  double duration_s = 10;
  double max_time_s = 120;    // hard bound on the whole run
  Mode mode = Mode::kClosed;
  double rate = 0;            // open loop: total requests per second
  std::vector<uint64_t> sizes = {0};
  std::vector<uint64_t> upload_sizes;  // non-empty: POST with these sizes
  uint64_t seed = 1;
  uint64_t delay_us = 0;
  // Only one request in this many (picked by its index, deterministically)
  // carries delay_us; 1: every request.
  uint64_t delay_one_in = 1;
  int pipeline = 1;
  // Closed loop with pipeline > 1: keep `pipeline` requests in flight,
  // writing the next as each response completes, instead of batches whose
  // next one waits for every response (HTTP/1.1 pipelining as a client
  // library does it: responses are still owed when a new request goes out).
  bool pipeline_refill = false;
  // Ask the backend to pause each response pause_us after its first
  // pause_at body bytes (streaming); 0: no pause.
  uint64_t pause_at = 0;
  uint64_t pause_us = 0;
  // With pipeline > 1: a request goes out while another is in flight only
  // once write_early_at bytes of the oldest one's body have arrived (a
  // client that writes ahead mid-response, with all it got acknowledged
  // when the backend pauses); 0: no such wait.
  uint64_t write_early_at = 0;
  bool new_conn_per_request = false;
  // With new_conn_per_request: send "Connection: close" (the server closes
  // first) or not (the client closes first after the response).
  bool close_header = true;
  // An X-Pad header of this many bytes in each request head (0: none).
  // Past rematcher's 1 KiB head reader, so requests and their responses
  // are left to its layer-4 rules, as an unframed protocol's would be.
  uint64_t pad_head = 0;
  // Keep-alive connections that each carry this many requests, then are
  // closed by the client (FIN after the last response) and replaced by a
  // new one; 0: as many as the run has.
  uint64_t requests_per_conn = 0;
  int64_t timeout_ms = 5000;
  bool verify = true;
  std::string latency_csv;  // empty: none
};

enum ErrorKind {
  kErrConnect,    // connect failed or timed out
  kErrReset,      // read/write error (RST)
  kErrEof,        // peer closed with requests outstanding
  kErrTimeout,    // no complete response within timeout_ms
  kErrBadStatus,  // status other than 200
  kErrProtocol,   // unparseable or unsolicited response
  kErrUnfinished, // still outstanding (or never issued) at max_time_s
  kNumErrorKinds,
};
const char* ErrorKindName(int kind);

enum VerifyKind {
  kVerifyLength,   // Content-Length differs from the requested size
  kVerifySeed,     // X-Seed differs from the requested seed
  kVerifyBytes,    // a body byte differs from body.h
  kVerifyBodyFnv,  // X-Body-Fnv absent or differs from the received body
  kVerifyUpload,   // X-Upload-Len / X-Upload-Fnv differ from what was sent
  kNumVerifyKinds,
};
const char* VerifyKindName(int kind);

struct Report {
  uint64_t requests = 0;
  uint64_t ok = 0;
  uint64_t errors = 0;
  uint64_t errors_by_kind[kNumErrorKinds] = {};
  uint64_t verify_failures = 0;
  uint64_t verify_failures_by_kind[kNumVerifyKinds] = {};
  double duration_s = 0;
  double rps = 0;  // ok responses per second
  // Over every request that got a complete response. Closed loop: from
  // assignment to a connection; open loop: from the intended send time.
  int64_t latency_p50_us = 0, latency_p90_us = 0, latency_p99_us = 0,
          latency_p999_us = 0, latency_max_us = 0, latency_mean_us = 0;
  std::map<std::string, uint64_t> backends;  // X-Backend -> responses
  uint64_t backend_switches = 0;
  uint64_t connections_opened = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
};

absl::Status ValidateOptions(const Options& options);
absl::StatusOr<Report> Run(const Options& options);

std::string ReportJson(const Options& options, const Report& report);
std::string ReportText(const Options& options, const Report& report);

// "0,100,10000" -> {0, 100, 10000}; suffixes k/m for KiB/MiB accepted.
absl::StatusOr<std::vector<uint64_t>> ParseSizeList(absl::string_view list);

}  // namespace rematcher::loadgen

#endif  // REMATCHER_TESTING_LOADGEN_LOADGEN_H_
