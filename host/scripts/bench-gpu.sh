#!/usr/bin/env bash
# amat against PyTorch on the first GPU (BENCHMARKS.md, "GPU"): builds the
# plugins and the bench, runs every implementation on the GPU with PyTorch
# eager (plain and fair) and torch.compile(mode="reduce-overhead"), and writes
# the GPU table to host/benches/results/results-gpu.md (raw rounds in
# results-gpu.json). Takes a few minutes on a GPU machine; fails at once,
# saying so, on a machine without one.
#   bash host/scripts/bench-gpu.sh                 # 5 timed rounds
#   ROUNDS=9 bash host/scripts/bench-gpu.sh        # more rounds
#   bash host/scripts/bench-gpu.sh --batch 16      # any option of bench-vs-pytorch.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [ -d "$ROOT/.venv/bin" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
PY="${AMAT_PYTHON:-python3}"
fail() { echo "bench-gpu: $*" >&2; exit 2; }
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    fail "no NVIDIA GPU here (nvidia-smi is missing or lists none); this benchmark needs one. The CPU benchmark is bash host/scripts/bench-vs-pytorch.sh"
fi
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || fail "$PY's torch sees no CUDA device (a CPU-only torch, or a driver too old for it)"
nvidia-smi -L
OUT="$ROOT/target/vs-pytorch-gpu"
bash host/scripts/bench-vs-pytorch.sh --device cuda --rounds "${ROUNDS:-5}" --out "$OUT" \
    --impls builtin,wasm,builtin-rf,builtin-bf16,pytorch,pytorch-fair,pytorch-compiled-ro "$@"
mkdir -p host/benches/results
cp "$OUT/results.md" host/benches/results/results-gpu.md
cp "$OUT/results.json" host/benches/results/results-gpu.json
echo "GPU table: host/benches/results/results-gpu.md"
