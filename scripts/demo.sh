#!/usr/bin/env bash
# The Plexus demo: three pods with several networks each, attached by the plexus CNI
# plugin exactly as a container runtime would run it, real traffic between them; then
# plexusd (thick mode) plugs a network into a running pod and out again; then everything
# deleted and checked gone. Needs root (it creates network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p plexus -p plexus-shim -p plexus-daemon -p plexus-demo
exec ./target/release/plexus-demo
