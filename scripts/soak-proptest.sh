#!/usr/bin/env bash
# Soak the property tests of the network-facing parsers (tests/properties.rs) with many more cases than
# the test suite runs: PROPTEST_CASES (default 100000) per property, optimised build.
#   scripts/soak-proptest.sh            # 100000 cases each (about 10 minutes on 2 cores)
#   PROPTEST_CASES=1000000 scripts/soak-proptest.sh
# A failure prints the minimal failing input and records its seed in tests/proptest-regressions/, so the
# normal test run replays it from then on: commit that file with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-100000}"
echo "property tests with $PROPTEST_CASES cases each"
exec cargo test --release --locked --test properties -- --test-threads="$(nproc)"
