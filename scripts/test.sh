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
# Every binary first: integration tests execute plexus, plexus-shim, plexusd and the test plugin.
cargo build "${locked[@]}" --workspace --bins
cargo test "${locked[@]}" --workspace --all-targets 2>&1 | tee target/test-output.log
# A namespace or a temporary directory left behind is a test bug.
left=$(ip netns list | grep -E '^(hst|ctr|plx|dmo)' || true)
if [ -n "$left" ]; then
  echo "test namespaces left behind: $left" >&2
  exit 1
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' target/test-output.log
