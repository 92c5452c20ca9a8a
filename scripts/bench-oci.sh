#!/usr/bin/env bash
# Refreshing a large OCI index while serving: narinfo latency idle vs during a refresh.
# Starts a local docker-registry (no auth) on a free loopback port, runs examples/refresh_latency.rs.
# Usage: scripts/bench-oci.sh [ENTRIES=100000] [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-peers.sh
W=$(mktemp -d)
reg=""
cleanup() { if [ -n "$reg" ]; then kill "$reg" 2>/dev/null || true; wait "$reg" 2>/dev/null || true; fi; rm -rf "$W"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s/reg}}\nhttp: {addr: "127.0.0.1:%s"}\n' "$W" "$port" > "$W/reg.yml"
docker-registry serve "$W/reg.yml" > "$W/reg.log" 2>&1 &
reg=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
cargo build --release --locked --example refresh_latency
echo "# nixcache OCI refresh under load — $(date -u +%Y-%m-%d), $(nproc) cores, $(git rev-parse --short HEAD)"
target/release/examples/refresh_latency "http://127.0.0.1:$port" "${1:-100000}" "${2:-10}"
