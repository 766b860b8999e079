#!/usr/bin/env bash
# Runs every check and every test: formatting, clippy, unit tests, fixture tests and
# the integration tests in real network namespaces with the real reference plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

locked=()
[ -n "${CI:-}" ] && locked=(--locked)
cargo fmt --all -- --check
cargo clippy "${locked[@]}" --workspace --all-targets -- -D warnings
cargo test "${locked[@]}" --workspace 2>&1 | tee target/test-output.log
# A namespace or a temporary directory left behind is a test bug.
left=$(ip netns list | grep -E '^(hst|ctr|plx|dmo)' || true)
if [ -n "$left" ]; then
  echo "test namespaces left behind: $left" >&2
  exit 1
fi
