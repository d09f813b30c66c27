#!/usr/bin/env bash
# Installs the Debian packages rematcher needs to build, test and benchmark.
# Idempotent: does nothing when everything is already present.
set -euo pipefail
PKGS=(
  # build
  bazel-bootstrap bazel-rules-cc bazel-rules-java g++ clang llvm bpftool pkg-config
  libbpf-dev libelf-dev zlib1g-dev libabsl-dev libgoogle-glog-dev libgflags-dev
  libgtest-dev libgmock-dev
  # testbed and end-to-end tests
  iproute2 ethtool iputils-ping nginx-light curl wrk procps redis-server redis-tools
  # peers for side-by-side benchmarks
  haproxy nftables gnuplot-nox
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then echo "install_deps: need root to apt-get install" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# nginx and redis are only used inside test namespaces; keep the host's own
# instances off.
if systemctl is-active --quiet nginx 2>/dev/null; then systemctl stop nginx || true; fi
if systemctl is-active --quiet redis-server 2>/dev/null; then systemctl stop redis-server || true; fi
# BPF pinning needs bpffs.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true; fi
