#!/usr/bin/env bash
# The Plexus demo: three pods with several networks each, attached by the plexus CNI
# plugin exactly as a container runtime would run it, real traffic between them,
# then everything deleted and checked gone. Needs root (it creates network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p plexus -p plexus-demo
exec ./target/release/plexus-demo
