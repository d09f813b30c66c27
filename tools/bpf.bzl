"""bpf_program: compile a .bpf.c into a BPF object and a libbpf skeleton.

Produces:
  <name>.bpf.o        the BPF ELF object (also usable by tests / bpftool)
  <name>.skel.h       `bpftool gen skeleton` output
  cc_library <name>   exposing the skeleton header, linked against libbpf

clang and bpftool come from Debian (clang, bpftool packages). The BPF code
uses only UAPI headers, so no vmlinux.h is needed: XDP touches packet bytes
and maps, never kernel structs.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def bpf_program(name, src, hdrs = [], visibility = None, copts = []):
    obj = name + ".bpf.o"
    skel = name + ".skel.h"
    native.genrule(
        name = name + "_obj",
        srcs = [src] + hdrs,
        outs = [obj],
        cmd = " ".join([
            "clang -target bpf -O2 -g -Wall -Werror",
            "-mcpu=v3",
            "-I/usr/include/$$(uname -m)-linux-gnu",
            "-I$$(dirname $(location %s))" % src,
            "-iquote .",
            " ".join(copts),
            "-c $(location %s) -o $@" % src,
        ]),
        visibility = visibility,
    )
    native.genrule(
        name = name + "_skel",
        srcs = [obj],
        outs = [skel],
        cmd = "bpftool gen skeleton $(location %s) name %s > $@" % (obj, name),
        visibility = visibility,
    )
    cc_library(
        name = name,
        hdrs = [skel],
        deps = ["@libbpf"],
        visibility = visibility,
    )
