// Client side of the control socket: one command per connection, the reply
// is read until the server closes. Used by the CLI and by tests.
#ifndef REMATCHER_LB_CONTROL_CLIENT_H_
#define REMATCHER_LB_CONTROL_CLIENT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rematcher {

absl::StatusOr<std::string> SendControlCommand(const std::string& socket_path,
                                               const std::string& command,
                                               absl::Duration timeout = absl::Seconds(5));

}  // namespace rematcher

#endif  // REMATCHER_LB_CONTROL_CLIENT_H_
