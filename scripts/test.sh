#!/usr/bin/env bash
# The whole test suite: installs the peers it needs, then formatting, lints, and every test
# (unit, integration, end-to-end with the real Nix client). CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-peers.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
