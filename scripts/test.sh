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
./scripts/check-deps.sh
# Every binary first: integration tests execute plexus, plexus-shim, plexusd and the test plugin.
cargo build "${locked[@]}" --workspace --bins --examples
cargo test "${locked[@]}" --workspace --all-targets 2>&1 | tee target/test-output.log
# The engine's logic is tested over fakes: its unit tests must pass without root too.
engine_tests=$(cargo test "${locked[@]}" -p plexus-engine --lib --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*plexus_engine-[^"]*\)".*/\1/p' | head -n 1)
[ -n "$engine_tests" ] || { echo "plexus-engine unit tests not built" >&2; exit 1; }
# A copy in a directory of its own: the checkout's parents need not be open to others.
unpriv=$(mktemp -d)
chmod 1777 "$unpriv"
cp "$engine_tests" "$unpriv/engine-tests"
(cd "$unpriv" && setpriv --reuid=65534 --regid=65534 --clear-groups env TMPDIR="$unpriv" ./engine-tests -q 2>&1) \
  | sed 's/^test result:/unprivileged engine tests:/'
rm -rf "$unpriv"
# A namespace or a temporary directory left behind is a test bug.
left=$(ip netns list | grep -E '^(hst|ctr|plx|dmo)' || true)
if [ -n "$left" ]; then
  echo "test namespaces left behind: $left" >&2
  exit 1
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' target/test-output.log
