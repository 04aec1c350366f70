#!/usr/bin/env bash
# The main job, from a fresh clone: sets up what is missing, fetches the
# bundled real data, builds the host and the plugins, prepares the
# segmentation dataset (Colin27 slices, AAL regions grouped into 8 classes),
# trains STD, SAT and AMAT on it, evaluates all three under PGD at several
# noise levels and writes a report comparing them.
#
#   bash examples/quickstart.sh [CONFIG]     (default: examples/segmentation.toml)
#
# Idempotent: finished runs are kept, an interrupted one is resumed from its
# last checkpoint. Results: runs/<config name>/comparison.{md,png}.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../host/scripts/setup.sh"
say() { printf '\033[1m[quickstart]\033[0m %s\n' "$*"; }

CONFIG="${1:-examples/segmentation.toml}"
# One folder per config, so a finished quick run is never taken for a long one.
OUT="runs/$(basename "$CONFIG" .toml)"

bash host/scripts/fetch-data.sh
bash host/scripts/build-plugins.sh release
say "building amat-host (release)"
cargo build --release -p amat-host
AMAT=target/release/amat-host
PLUGIN=target/wasm32-wasip2/release/amat_segmentation.wasm

say "amat-host plugin info $PLUGIN"
"$AMAT" plugin info "$PLUGIN"

# The quick config reads the plain slices, the long one the augmented set.
for spec in examples/data/segmentation.toml examples/data/segmentation-aug.toml; do
  say "amat-host data prepare --spec $spec"
  "$AMAT" data prepare --plugin "$PLUGIN" --spec "$spec"
done

for method in std sat amat; do
  dir="$OUT/$method"
  if [ -f "$dir/robustness.json" ]; then
    say "$method: finished earlier ($dir)"
  elif [ -d "$dir/checkpoints" ]; then
    say "$method: resuming $dir"
    "$AMAT" run --resume "$dir"
  else
    rm -rf "$dir"
    say "$method: amat-host run --method $method --config $CONFIG --out $dir"
    "$AMAT" run --plugin "$PLUGIN" --method "$method" --config "$CONFIG" --out "$dir"
  fi
done

say "amat-host compare $OUT/{std,sat,amat}"
"$AMAT" compare "$OUT/std" "$OUT/sat" "$OUT/amat" --out "$OUT"
say "report: $OUT/comparison.md, plot: $OUT/comparison.png, per run: $OUT/<method>/summary.md"
