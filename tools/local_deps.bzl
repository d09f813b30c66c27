"""Repository rules that make Debian's packages usable from Bazel 4.2.3 offline.

- patched_rules_cc: Debian's rules_cc 0.0.4 loads `use_cpp_toolchain`, which
  Bazel 4.2.3's @bazel_tools lacks. We copy the tree and replace that symbol
  with the toolchain type it stands for.
- coverage_tools_stub: every test pulls @remote_coverage_tools; without a local
  stub Bazel tries to download it.
- system_library: a library installed by apt. Headers are in /usr/include
  (already on the compiler's default search path), so the target only carries
  link options. The probe header turns a missing package into a clear error.
"""

def _patched_rules_cc_impl(rctx):
    src = rctx.path(rctx.attr.path)
    if not src.exists:
        fail("rules_cc not found at %s: apt-get install bazel-rules-cc" % src)
    rctx.execute(["cp", "-r", str(src) + "/.", "."])
    for f in [
        "cc/private/rules_impl/compiler_flag.bzl",
        "cc/private/rules_impl/cc_flags_supplier.bzl",
    ]:
        content = rctx.read(f)
        content = content.replace(', "use_cpp_toolchain")', ")")
        content = content.replace("use_cpp_toolchain()", '["@bazel_tools//tools/cpp:toolchain_type"]')
        rctx.file(f, content)

patched_rules_cc = repository_rule(
    implementation = _patched_rules_cc_impl,
    attrs = {"path": attr.string(mandatory = True)},
    local = True,
)

def _coverage_tools_stub_impl(rctx):
    rctx.file("WORKSPACE", 'workspace(name = "remote_coverage_tools")\n')
    rctx.file("BUILD", """
filegroup(name = "coverage_report_generator", srcs = [], visibility = ["//visibility:public"])
filegroup(name = "lcov_merger", srcs = [], visibility = ["//visibility:public"])
""")

coverage_tools_stub = repository_rule(implementation = _coverage_tools_stub_impl)

def _system_library_impl(rctx):
    if not rctx.path(rctx.attr.probe_header).exists:
        fail("%s is missing: run tools/install_deps.sh (Debian packages)" % rctx.attr.probe_header)
    build = """
cc_library(
    name = "{name}",
    linkopts = {linkopts},
    visibility = ["//visibility:public"],
)
""".format(name = rctx.attr.name, linkopts = repr(rctx.attr.linkopts))
    if rctx.attr.main_linkopts:
        build += """
cc_library(
    name = "{name}_main",
    linkopts = {linkopts},
    deps = [":{name}"],
    visibility = ["//visibility:public"],
)
""".format(name = rctx.attr.name, linkopts = repr(rctx.attr.main_linkopts + rctx.attr.linkopts))
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.attr.name)
    rctx.file("BUILD", build)

system_library = repository_rule(
    implementation = _system_library_impl,
    attrs = {
        "linkopts": attr.string_list(),
        "main_linkopts": attr.string_list(),
        "probe_header": attr.string(mandatory = True),
    },
    local = True,
)
