#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up what is missing, builds
# the plugins (wasm and native), fetches the bundled real data the tests
# read, and runs every test.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../host/scripts/setup.sh"
bash host/scripts/fetch-data.sh
bash host/scripts/build-plugins.sh dev
printf '\033[1m[test]\033[0m cargo test --workspace\n'
cargo test --workspace --no-fail-fast
