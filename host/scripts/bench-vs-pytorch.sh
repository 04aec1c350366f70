#!/usr/bin/env bash
# amat against the same training in PyTorch-Python (BENCHMARKS.md): builds the
# plugins (release), then runs the interleaved benchmark and the scaling sweep.
#   bash host/scripts/bench-vs-pytorch.sh                 # CPU, default sizes
#   bash host/scripts/bench-vs-pytorch.sh --device cuda   # the same on the first GPU
#   bash host/scripts/bench-vs-pytorch.sh --help          # sizes, threads, rounds, ...
# Needs libtorch from torch==2.13 (setup.sh) and a Python with torch and numpy
# for the reference ($AMAT_PYTHON, else python3 on the PATH).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [ -d "$ROOT/.venv/bin" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
export LIBTORCH_USE_PYTORCH=1
bash host/scripts/build-plugins.sh release >&2
exec cargo bench -p amat-host --bench vs_pytorch -- "$@"
