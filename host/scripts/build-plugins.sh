#!/usr/bin/env bash
# Builds every first-party plugin twice from the same source: as a wasm
# component and as a native library. Needs setup.sh sourced first.
set -euo pipefail
PROFILE="${1:-dev}"
say() { printf '\033[1m[build]\033[0m %s\n' "$*"; }
mapfile -t PLUGINS < <(sed -n 's/^name = "\(amat-[a-z-]*\)"/\1/p' plugins/*/Cargo.toml)
args=(); for p in "${PLUGINS[@]}"; do args+=(-p "$p"); done
say "plugins (${PLUGINS[*]}) as wasm32-wasip2 components, profile $PROFILE"
cargo build --profile "$PROFILE" --target wasm32-wasip2 "${args[@]}"
say "the same plugins as native libraries"
cargo build --profile "$PROFILE" "${args[@]}"
