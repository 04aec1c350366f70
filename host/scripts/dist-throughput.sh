#!/usr/bin/env bash
# Training throughput (samples/s) of one process and of data-parallel
# ranks on this machine (Gloo over loopback), on the same synthetic
# segmentation work: 64 x 64 images, the quick config's U-Net (depth 2,
# width 8, instance norm), SAT with a 3-step attack, global batch 8.
# Epoch 1 is a warm-up; epochs 2-3 are timed (their `seconds` in
# epochs.jsonl). Not a test: a measurement (a few minutes).
#
#   bash host/scripts/dist-throughput.sh ["RANKSxTHREADS ..."="1x1 1x2 2x1"]
#
# Uses target/debug/amat-host and the debug native segmentation plugin
# (cargo build -p amat-host; bash host/scripts/build-plugins.sh dev).
# Each case is N ranks with T libtorch threads each (OMP_NUM_THREADS; the
# config leaves run.threads = 0 so that it applies).
set -euo pipefail
CASES=${1:-"1x1 1x2 2x1"}
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/debug/amat-host
plugin=$target/debug/libamat_segmentation.so
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/run.toml" <<TOML
[run]
method = "sat"
threads = 0
plugin = "$plugin"
[data.synthetic]
train = 96
test = 2
size = 64
[model]
depth = 2
width = 8
norm = "instance"
[train]
epochs = 4
batch_size = 8
[train.attack]
steps = 3
TOML
for case in $CASES; do
  n=${case%x*} t=${case#*x}
  OMP_NUM_THREADS=$t "$bin" run --nproc "$n" --config "$work/run.toml" --out "$work/$case" \
    --stop-after 3 >/dev/null
  python3 - "$work/$case/epochs.jsonl" "$n rank(s) x $t thread(s)" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])][1:]
secs = sum(r["seconds"] for r in recs)
each = ", ".join("%.2f" % r["seconds"] for r in recs)
print(f"{sys.argv[2]}: {96 * len(recs) / secs:.1f} samples/s ({each} s per epoch of 96)")
PY
done
