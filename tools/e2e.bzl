"""rematcher_e2e_test: a test that runs the real rematcher binary.

Every such test starts //lb:rematcher over a namespace testbed with the
test backend and load generator, so it needs root, BPF and namespaces
(tagged `local`: Bazel's sandbox cannot load BPF) and the machine to
itself (`exclusive`: its figures are timing-sensitive). `long = True`
marks the long form of a CI test (`manual`: run by name only).
"""

load("@rules_cc//cc:defs.bzl", "cc_test")

def rematcher_e2e_test(name, srcs, deps, size = "large", data = [], long = False, **kwargs):
    cc_test(
        name = name,
        size = size,
        srcs = srcs,
        data = ["//lb:rematcher", "//testing/backend", "//testing/loadgen"] + data,
        tags = ["exclusive", "local"] + (["manual"] if long else []),
        deps = deps + ["@absl", "@gtest//:gtest_main"],
        **kwargs
    )
