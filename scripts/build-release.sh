#!/usr/bin/env bash
# Release binaries: plexus (thin plugin), plexusd, plexus-bench and the test plugin, and
# plexus-shim linked statically: the shim is copied onto hosts whose C library may be
# older than the one it was built with, it resolves no host names (a unix socket only),
# and a static binary starts faster (no dynamic loader), which every pod's ADD pays.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p plexus -p plexus-daemon -p plexus-e2e "$@"
cargo rustc --release --locked -p plexus-shim --bin plexus-shim -- -C target-feature=+crt-static
