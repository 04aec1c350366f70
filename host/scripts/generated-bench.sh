#!/usr/bin/env bash
# Prepare throughput and peak RSS on generated cases (`amat-host data
# generate`: deformations of the two real subjects, Colin27 and MNI152): 10
# and 100 cases at 4 mm, then host/scripts/data-rss.sh over them (prepare
# with --jobs 1 and --jobs <cores>, re-prepare from the cache, and the peak
# RSS of the same short run over 1x and 10x the cases). Not a test: a
# measurement (minutes).
#
#   bash host/scripts/generated-bench.sh [CASES_PER_SOURCE=5]
#
# Uses target/debug/amat-host and the dev wasm segmentation plugin.
set -euo pipefail
n=${1:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/debug/amat-host
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for k in 1 10; do
    start=$(date +%s.%N)
    "$bin" data generate --source colin27,mni152 --cases $((k * n)) --spacing 4 --seed 0 \
        --raw "$root/data/raw" --out "$work/x$k" 2>/dev/null | head -1
    python3 -c "import sys; print(f'generated in {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" \
        "$start" "$(date +%s.%N)"
done
# All labelled axial slices of each 46 x 55 x 46 case (about 37), at 64 x 64.
X1=$work/x1 X10=$work/x10 DECODE='{"size": 64}' bash "$root/host/scripts/data-rss.sh" "$n"
