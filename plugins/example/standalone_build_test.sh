#!/bin/bash
# Builds the example the way peak_ewma.cc tells a user to, outside Bazel's C++
# rules, and checks the result exports the entry point and nothing else.
set -euo pipefail
src="${TEST_SRCDIR}/rematcher/plugins"
work="${TEST_TMPDIR}/mine"
mkdir -p "${work}/plugins"
cp "${src}/rematcher_policy.h" "${src}/policy_cc.h" "${work}/plugins/"
cp "${src}/example/peak_ewma.cc" "${work}/mine.cc"
g++ -std=c++17 -O2 -fPIC -shared -fvisibility=hidden \
    -Wl,--no-undefined -Wl,--version-script="${src}/policy_exports.lds" \
    -I "${work}" "${work}/mine.cc" -o "${work}/libmine.so"
exported="$(nm -D --defined-only "${work}/libmine.so" | awk '{print $3}' | grep -v '^$')"
if [[ "${exported}" != "rematcher_policy_entry" ]]; then
  echo "FAIL: expected only rematcher_policy_entry exported, got:"
  echo "${exported}"
  exit 1
fi
echo "PASS: ${work}/libmine.so exports only rematcher_policy_entry"
