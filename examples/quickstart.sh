#!/usr/bin/env bash
# The main job, from a fresh clone: sets up what is missing, builds the host
# and the plugins (wasm and native), and shows the segmentation plugin at work.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../host/scripts/setup.sh"
say() { printf '\033[1m[quickstart]\033[0m %s\n' "$*"; }

bash host/scripts/build-plugins.sh release
say "building amat-host (release)"
cargo build --release -p amat-host
AMAT=target/release/amat-host

for p in target/wasm32-wasip2/release/amat_segmentation.wasm target/release/libamat_segmentation.so; do
  say "amat-host plugin info $p"
  "$AMAT" plugin info "$p"
done
