#!/usr/bin/env bash
# Installs what Plexus needs on a fresh Debian machine (root): the reference CNI
# plugins, iproute2, ping, and curl and nsenter (the tests' HTTPS client, kubectl-plexus's
# look into a pod). Idempotent and quiet when everything is there.
set -euo pipefail

need=()
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v curl >/dev/null || need+=(curl)
command -v nsenter >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "cargo (Rust stable) is required" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
  echo "Plexus tests and the demo create network namespaces: run as root" >&2
  exit 1
fi
