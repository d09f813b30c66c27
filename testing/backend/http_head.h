// Minimal HTTP/1.x head parsing for the test backend and load generator.
//
// Owns: splitting a request or response head (everything before the blank
// line, without the final CRLFCRLF) into the few fields the test tools act on.
// It is strict on purpose: anything it does not understand is an error, so a
// load balancer that mangles a head is caught rather than tolerated.
// Views returned point into the caller's buffer and live as long as it does.

#ifndef REMATCHER_TESTING_BACKEND_HTTP_HEAD_H_
#define REMATCHER_TESTING_BACKEND_HTTP_HEAD_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace rematcher::backend {

// Heads longer than this are rejected (request: 400, response: protocol error).
inline constexpr size_t kMaxHeadBytes = 64 * 1024;

struct Header {
  absl::string_view name;
  absl::string_view value;
};

struct RequestHead {
  absl::string_view method;
  absl::string_view path;   // target before '?'
  absl::string_view query;  // target after '?', may be empty
  int version_minor = 1;    // HTTP/1.<minor>
  bool keep_alive = true;   // from version and Connection header
  int64_t content_length = 0;
  std::vector<Header> headers;
};

struct ResponseHead {
  int status = 0;
  bool keep_alive = true;
  int64_t content_length = -1;  // -1: absent
  std::vector<Header> headers;

  // Value of the first header named `name` (case-insensitive), or empty.
  absl::string_view Find(absl::string_view name) const;
};

absl::StatusOr<RequestHead> ParseRequestHead(absl::string_view head);
absl::StatusOr<ResponseHead> ParseResponseHead(absl::string_view head);

// Value of `key` in an a=1&b=2 query string; `def` when absent; error when
// present but not a decimal uint64.
absl::StatusOr<uint64_t> QueryUint(absl::string_view query,
                                   absl::string_view key, uint64_t def);

}  // namespace rematcher::backend

#endif  // REMATCHER_TESTING_BACKEND_HTTP_HEAD_H_
