// Loads a policy plugin (.so) and wraps it as a rematcher::Policy.
//
// Owns: finding the .so, dlopen (RTLD_NOW | RTLD_LOCAL), checking the plugin's
// descriptor against the ABI (lb/../plugins/rematcher_policy.h), creating the
// instance, and the guard around every call: the returned Policy bounds-checks
// each pick and counts picks, "no preference" answers and plugin errors. Every
// refusal is an absl::Status whose message names the file and the problem.
#ifndef REMATCHER_LB_POLICY_LOADER_H_
#define REMATCHER_LB_POLICY_LOADER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lb/policy.h"
#include "plugins/rematcher_policy.h"

namespace rematcher {

// Loads a policy.
//   spec: a policy name ("rr", "p2c", ...: [A-Za-z0-9_-]+), looked up as
//         <dir>/lib<name>.so and then <dir>/<name>/lib<name>.so in each of
//         search_dirs, in order; or a path containing '/'
//         ("./libmine.so", "/opt/lb/libmine.so"), used as is.
//   args: handed verbatim to the plugin's create() (--policy_args).
// Errors: NotFound (no such file / name not in any dir; lists what was
// tried), FailedPrecondition (dlopen failed, no entry symbol, incompatible
// ABI major, descriptor too small, NULL name or function), InvalidArgument
// (the plugin's create() refused `args`; carries its message).
absl::StatusOr<std::unique_ptr<Policy>> LoadPolicy(
    const std::string& spec, const std::string& args,
    const std::vector<std::string>& search_dirs);

// Validates a descriptor and creates an instance, exactly as LoadPolicy does
// after dlopen. For policies linked into the binary (and their unit tests).
// `origin` names where the descriptor came from in messages.
absl::StatusOr<std::unique_ptr<Policy>> WrapPolicyEntry(
    const rm_policy_v1* entry, const std::string& args,
    const std::string& origin);

// The file LoadPolicy would open for `spec`, without opening it.
absl::StatusOr<std::string> ResolvePolicyPath(
    const std::string& spec, const std::vector<std::string>& search_dirs);

// Where built-in policies are looked for, most specific first, without
// duplicates (directories that do not exist are kept; lookups skip them):
//   $RUNFILES_DIR/rematcher/policies, $TEST_SRCDIR/rematcher/policies,
//   <argv0>.runfiles/rematcher/policies,
//   <exe>.runfiles/rematcher/policies          (exe = /proc/self/exe),
//   <exe dir>/policies, <exe dir>/../policies   (bazel-bin/lb ->
//   bazel-bin/policies), <exe dir>/../lib/rematcher/policies        (installed
//   layout).
std::vector<std::string> DefaultPolicySearchDirs(const std::string& argv0);

}  // namespace rematcher

#endif  // REMATCHER_LB_POLICY_LOADER_H_
