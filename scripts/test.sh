#!/usr/bin/env bash
# The whole test suite: installs the peers it needs, then formatting, lints, and every test
# (unit, integration, end-to-end with the real Nix client, registry, Prometheus, Chromium, avahi, and
# the NixOS side evaluated against nixpkgs by tests/nixos.rs through scripts/nixos-eval.sh, which takes
# the nixpkgs tree from NIXCACHE_NIXPKGS, default ../shared/nixpkgs/*.tar.zst, else flake.lock's input).
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-peers.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Examples are built (clippy above) but have no tests of their own.
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
