"""rematcher_policy: build a load-balancing policy plugin as lib<name>.so.

    load("//plugins:policy.bzl", "rematcher_policy")
    rematcher_policy(name = "mine", srcs = ["mine.cc"])

Produces:
  lib<name>.so   the plugin (cc_binary, linkshared). Load it with
                 --policy=<name> (searched in the policy dirs) or
                 --policy=/path/to/lib<name>.so.
  <name>_lib     a cc_library with the same code (alwayslink), so a unit test
                 can call rematcher_policy_entry() directly without dlopen.

The plugin is compiled with -fvisibility=hidden so that the only exported
symbol is rematcher_policy_entry (RM_POLICY_EXPORT), and linked with
--no-undefined so a missing symbol fails the build instead of dlopen. It
depends only on the ABI header and the header-only C++ adapter; add `deps`
only for what the policy itself needs (they are linked statically into the
.so).
"""

load("@rules_cc//cc:defs.bzl", "cc_binary", "cc_library")

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
        linkopts = ["-Wl,--no-undefined"],
        visibility = visibility,
        testonly = testonly,
    )
