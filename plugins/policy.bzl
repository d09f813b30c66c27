"""rematcher_policy: build a load-balancing policy plugin as lib<name>.so.

    load("//plugins:policy.bzl", "rematcher_policy")
    rematcher_policy(name = "mine", srcs = ["mine.cc"])

Produces:
  lib<name>.so   the plugin (cc_binary, linkshared). Load it with
                 --policy=<name> (searched in the policy dirs) or
                 --policy=/path/to/lib<name>.so.
  <name>_lib     a cc_library with the same code (alwayslink), so a unit test
                 can call rematcher_policy_entry() directly without dlopen.

The plugin exports rematcher_policy_entry and nothing else (compiled with
-fvisibility=hidden, linked with policy_exports.lds, which also hides the
std:: template code it instantiates), and is linked with --no-undefined so a
missing symbol fails the build instead of dlopen. It
depends only on the ABI header and the header-only C++ adapter; add `deps`
only for what the policy itself needs (they are linked statically into the
.so).
"""

load("@rules_cc//cc:defs.bzl", "cc_binary", "cc_library")

# Resolved relative to this .bzl, so the macro also works from another
# workspace that depends on this one.
_EXPORTS_SCRIPT = Label("//plugins:policy_exports.lds")

_ABI_DEPS = [
    "//plugins:rematcher_policy",
    "//plugins:policy_cc",
]

def rematcher_policy(
        name,
        srcs,
        deps = [],
        copts = [],
        local_defines = [],
        visibility = ["//visibility:public"],
        testonly = False):
    cc_library(
        name = name + "_lib",
        srcs = srcs,
        deps = _ABI_DEPS + deps,
        copts = ["-fvisibility=hidden", "-fvisibility-inlines-hidden"] + copts,
        local_defines = local_defines,
        alwayslink = True,
        visibility = visibility,
        testonly = testonly,
    )
    cc_binary(
        name = "lib%s.so" % name,
        deps = [":" + name + "_lib"],
        linkshared = True,
        linkopts = [
            "-Wl,--no-undefined",
            "-Wl,--version-script=$(location %s)" % _EXPORTS_SCRIPT,
        ],
        additional_linker_inputs = [_EXPORTS_SCRIPT],
        visibility = visibility,
        testonly = testonly,
    )
