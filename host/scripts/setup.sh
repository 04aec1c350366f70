#!/usr/bin/env bash
# Sets up what is missing, idempotently: the wasm target, a project-local
# virtualenv with libtorch (PyPI torch==2.13.0, the version tch 0.26 expects),
# and the environment the build needs. Source it: `. host/scripts/setup.sh`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TORCH_VERSION="2.13.0"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "adding the rust target wasm32-wasip2"
  rustup target add wasm32-wasip2
fi

VENV="$ROOT/.venv"
if [ ! -f "$VENV/.torch-$TORCH_VERSION" ]; then
  say "installing torch==$TORCH_VERSION into $VENV (libtorch for tch; once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  touch "$VENV/.torch-$TORCH_VERSION"
else
  say "libtorch: torch==$TORCH_VERSION in $VENV"
fi

export PATH="$VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
# Compiled wasm components are cached here rather than in the user's home.
export AMAT_CACHE_DIR="${AMAT_CACHE_DIR:-$ROOT/target/component-cache}"
cd "$ROOT"
