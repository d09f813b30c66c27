#include "testing/backend/http_head.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace rematcher::backend {
namespace {

// Splits header lines after the start line; fills `headers`.
absl::Status ParseHeaderLines(absl::string_view rest,
                              std::vector<Header>* headers) {
  while (!rest.empty()) {
    size_t eol = rest.find("\r\n");
    absl::string_view line = rest.substr(0, eol);
    rest = eol == absl::string_view::npos ? absl::string_view()
                                          : rest.substr(eol + 2);
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("header line without name: '", line.substr(0, 64), "'"));
    }
    absl::string_view name = line.substr(0, colon);
    if (name.find_first_of(" \t") != absl::string_view::npos) {
      return absl::InvalidArgumentError("whitespace in header name");
    }
    headers->push_back(
        {name, absl::StripAsciiWhitespace(line.substr(colon + 1))});
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ParseContentLength(absl::string_view v) {
  uint64_t n = 0;
  if (v.empty() || !absl::SimpleAtoi(v, &n) || v[0] == '+' || v[0] == '-' ||
      n > (uint64_t{1} << 62)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad Content-Length '", v, "'"));
  }
  return static_cast<int64_t>(n);
}

absl::StatusOr<int> ParseVersionMinor(absl::string_view v) {
  if (v.size() != 8 || !absl::StartsWith(v, "HTTP/1.") || v[7] < '0' ||
      v[7] > '9') {
    return absl::InvalidArgumentError(
        absl::StrCat("bad HTTP version '", v.substr(0, 16), "'"));
  }
  return v[7] - '0';
}

// Applies Connection and Content-Length/Transfer-Encoding headers.
absl::Status ApplyFramingHeaders(const std::vector<Header>& headers,
                                 bool* keep_alive, int64_t* content_length) {
  bool seen_length = false;
  for (const Header& h : headers) {
    if (absl::EqualsIgnoreCase(h.name, "Content-Length")) {
      absl::StatusOr<int64_t> n = ParseContentLength(h.value);
      if (!n.ok()) return n.status();
      if (seen_length && *n != *content_length) {
        return absl::InvalidArgumentError("conflicting Content-Length");
      }
      seen_length = true;
      *content_length = *n;
    } else if (absl::EqualsIgnoreCase(h.name, "Transfer-Encoding")) {
      return absl::UnimplementedError("Transfer-Encoding is not supported");
    } else if (absl::EqualsIgnoreCase(h.name, "Connection")) {
      for (absl::string_view tok : absl::StrSplit(h.value, ',')) {
        tok = absl::StripAsciiWhitespace(tok);
        if (absl::EqualsIgnoreCase(tok, "close")) *keep_alive = false;
        if (absl::EqualsIgnoreCase(tok, "keep-alive")) *keep_alive = true;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view ResponseHead::Find(absl::string_view name) const {
  for (const Header& h : headers) {
    if (absl::EqualsIgnoreCase(h.name, name)) return h.value;
  }
  return absl::string_view();
}

absl::StatusOr<RequestHead> ParseRequestHead(absl::string_view head) {
  if (head.size() > kMaxHeadBytes) {
    return absl::InvalidArgumentError("request head too large");
  }
  RequestHead r;
  size_t eol = head.find("\r\n");
  absl::string_view start = head.substr(0, eol);
  absl::string_view rest =
      eol == absl::string_view::npos ? absl::string_view() : head.substr(eol + 2);
  std::vector<absl::string_view> parts = absl::StrSplit(start, ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty() ||
      parts[1][0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("bad request line '", start.substr(0, 64), "'"));
  }
  r.method = parts[0];
  absl::StatusOr<int> minor = ParseVersionMinor(parts[2]);
  if (!minor.ok()) return minor.status();
  r.version_minor = *minor;
  r.keep_alive = r.version_minor >= 1;
  size_t q = parts[1].find('?');
  r.path = parts[1].substr(0, q);
  if (q != absl::string_view::npos) r.query = parts[1].substr(q + 1);
  if (absl::Status s = ParseHeaderLines(rest, &r.headers); !s.ok()) return s;
  if (absl::Status s =
          ApplyFramingHeaders(r.headers, &r.keep_alive, &r.content_length);
      !s.ok()) {
    return s;
  }
  return r;
}

absl::StatusOr<ResponseHead> ParseResponseHead(absl::string_view head) {
  if (head.size() > kMaxHeadBytes) {
    return absl::InvalidArgumentError("response head too large");
  }
  ResponseHead r;
  size_t eol = head.find("\r\n");
  absl::string_view start = head.substr(0, eol);
  absl::string_view rest =
      eol == absl::string_view::npos ? absl::string_view() : head.substr(eol + 2);
  // "HTTP/1.1 200 OK"; the reason phrase may be empty or contain spaces.
  if (start.size() < 12 || start[8] != ' ') {
    return absl::InvalidArgumentError(
        absl::StrCat("bad status line '", start.substr(0, 64), "'"));
  }
  absl::StatusOr<int> minor = ParseVersionMinor(start.substr(0, 8));
  if (!minor.ok()) return minor.status();
  r.keep_alive = *minor >= 1;
  int status = 0;
  if (!absl::SimpleAtoi(start.substr(9, 3), &status) || status < 100 ||
      status > 999 || (start.size() > 12 && start[12] != ' ')) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad status line '", start.substr(0, 64), "'"));
  }
  r.status = status;
  if (absl::Status s = ParseHeaderLines(rest, &r.headers); !s.ok()) return s;
  if (absl::Status s =
          ApplyFramingHeaders(r.headers, &r.keep_alive, &r.content_length);
      !s.ok()) {
    return s;
  }
  return r;
}

absl::StatusOr<uint64_t> QueryUint(absl::string_view query,
                                   absl::string_view key, uint64_t def) {
  for (absl::string_view kv : absl::StrSplit(query, '&')) {
    size_t eq = kv.find('=');
    if (kv.substr(0, eq) != key) continue;
    absl::string_view v =
        eq == absl::string_view::npos ? absl::string_view() : kv.substr(eq + 1);
    uint64_t n = 0;
    if (v.empty() || v[0] == '+' || v[0] == '-' || !absl::SimpleAtoi(v, &n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("query parameter ", key, "='", v.substr(0, 32),
                       "' is not an unsigned integer"));
    }
    return n;
  }
  return def;
}

}  // namespace rematcher::backend
