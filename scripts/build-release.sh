#!/usr/bin/env bash
# Release binaries: plexusd, plexus-bench and the test plugin as usual; the two binaries the
# container runtime executes for every pod, plexus (thin mode) and plexus-shim (thick mode),
# linked statically and not position-independent, as Go builds Multus's binaries:
# - they are copied onto hosts whose C library may be older than the one they were built
#   with (a dynamic build needs this machine's glibc symbol versions);
# - every ADD, CHECK and DEL pays their start-up: no dynamic loader, and no relocation of
#   the executable's data at each start (about 22,000 relocations in plexus).
# `cargo rustc` passes the flags to the final binary only (build scripts and proc-macros
# stay as they are); see docs/benchmarks.md for what this saves.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p plexus-daemon -p plexus-e2e -p plexus-conformance "$@"
for bin in plexus plexus-shim; do
  cargo rustc --release --locked -p "$bin" --bin "$bin" "$@" -- \
    -C target-feature=+crt-static -C relocation-model=static
done
