// rematcher_ctl: talks to a running rematcher over its control socket.
//   rematcher_ctl backends | clients [N] | stats | metrics | add IP:PORT [W] |
//                 remove ID | drain ID | rematch CLIENT BACKEND | watch
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_join.h"
#include "gflags/gflags.h"
#include "lb/control_client.h"

DEFINE_string(socket, "/run/rematcher/rematcher.sock",
              "Control socket (the sandbox uses /run/rematcher/sandbox.sock).");
DEFINE_double(interval_s, 1.0, "Refresh period of `watch`.");

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "rematcher_ctl [--socket=PATH] backends | clients [N] | stats | metrics | "
      "add IP:PORT [WEIGHT] | remove ID | drain ID | rematch CLIENT BACKEND | watch");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) words.push_back("help");
  if (words[0] == "watch") {
    // Live view in the terminal: backends and counters, refreshed.
    for (;;) {
      auto b = rematcher::SendControlCommand(FLAGS_socket, "backends");
      auto s = rematcher::SendControlCommand(FLAGS_socket, "stats");
      if (!b.ok()) {
        fprintf(stderr, "rematcher_ctl: %s\n", b.status().ToString().c_str());
        return 1;
      }
      printf("\033[H\033[2J%s\n%s", b->c_str(), s.ok() ? s->c_str() : "");
      fflush(stdout);
      usleep(static_cast<useconds_t>(FLAGS_interval_s * 1e6));
    }
  }
  auto r = rematcher::SendControlCommand(FLAGS_socket, absl::StrJoin(words, " "));
  if (!r.ok()) {
    fprintf(stderr, "rematcher_ctl: %s\n", r.status().ToString().c_str());
    return 1;
  }
  fputs(r->c_str(), stdout);
  return r->rfind("error:", 0) == 0 ? 1 : 0;
}
