#!/usr/bin/env bash
# Peak RSS of the same short run over a synthetic nnU-Net v2 folder of N
# cases and of 10 N cases: training (STD, one epoch, stopped before the
# evaluation) reads its samples from the per-case cache at each batch, so
# the two should differ little; so should the whole run with its
# evaluation, whose metrics are taken per case (`eval.aggregate = "case"`,
# one case's predictions held at a time); and the whole run with the metrics
# on every prediction of the split at once (`eval.aggregate = "set"`), which
# grows with the split. Also prints prepare's throughput with --jobs 1 and
# --jobs <cores> and a re-prepare from the cache. Not a test: a measurement
# (minutes).
#
#   bash host/scripts/data-rss.sh [N=40]
#
# X1=DIR X10=DIR: nnU-Net folders to measure instead of the synthetic ones
# (host/scripts/generated-bench.sh passes generated cases); DECODE: the
# decode options (default {"size": 64}).
#
# Uses target/debug/amat-host and the dev wasm segmentation plugin
# (cargo build -p amat-host; bash host/scripts/build-plugins.sh dev).
set -euo pipefail
N=${1:-40}
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/debug/amat-host
plugin=$target/wasm32-wasip2/debug/amat_segmentation.wasm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

decode=${DECODE:-'{"size": 64}'}
cores=$(nproc)
if [ -n "${X1:-}" ]; then
    ln -s "$(realpath "$X1")" "$work/x1"
    ln -s "$(realpath "$X10")" "$work/x10"
else
# Cases: 48 x 48 x 24 uint8 volumes, a bright ellipsoid labelled 1 in 16 slices.
python3 - "$work" "$N" <<'PY'
import gzip, json, os, random, struct, sys
work, n = sys.argv[1], int(sys.argv[2])
X, Y, Z = 48, 48, 24
def nifti(data):
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, X, Y, Z, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, 2, 8)
    struct.pack_into("<4f", h, 76, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352)
    struct.pack_into("<h", h, 254, 1)
    for row, at in enumerate((280, 296, 312)):
        v = [0.0] * 4
        v[row] = 1.0
        struct.pack_into("<4f", h, at, *v)
    h[344:348] = b"n+1\0"
    return gzip.compress(bytes(h) + bytes(data), 1)
for name, count in (("x1", n), ("x10", 10 * n)):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "imagesTr"))
    os.makedirs(os.path.join(d, "labelsTr"))
    json.dump({"channel_names": {"0": "T1"}, "labels": {"background": 0, "blob": 1},
               "numTraining": count, "file_ending": ".nii.gz"}, open(os.path.join(d, "dataset.json"), "w"))
    for k in range(count):
        r = random.Random(k)
        cx, cy, rx, ry = r.uniform(18, 30), r.uniform(18, 30), r.uniform(6, 12), r.uniform(6, 12)
        img, lab = bytearray(), bytearray()
        for z in range(Z):
            for y in range(Y):
                for x in range(X):
                    inside = 4 <= z < 20 and ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
                    img.append(min(255, (180 if inside else 40) + r.randrange(30)))
                    lab.append(1 if inside else 0)
        open(os.path.join(d, "imagesTr", f"case_{k:04d}_0000.nii.gz"), "wb").write(nifti(img))
        open(os.path.join(d, "labelsTr", f"case_{k:04d}.nii.gz"), "wb").write(nifti(lab))
PY
fi
count() { find "$work/$1/imagesTr/" -name '*_0000.nii.gz' | wc -l; }

prepare() { # folder out jobs
    "$bin" data prepare --plugin "$plugin" --spec "$work/$1" --out "$work/$2" \
        --decode "$decode" --jobs "$3" | tail -1
}
echo "prepare ($(count x1) cases, $cores cores):"
prepare x1 p1-jobs1 1
prepare x1 p1 "$cores"
echo "re-prepare from the cache:"
prepare x1 p1 "$cores"
echo "prepare ($(count x10) cases):"
prepare x10 p10-jobs1 1
prepare x10 p10 "$cores"

rss() { # prepared [run flags]; AGGREGATE: eval.aggregate (default case)
    cat > "$work/$1.toml" <<EOF
[run]
method = "std"
device = "cpu"
threads = 1
plugin = "$plugin"
[data]
manifest = "$work/$1/manifest.json"
[model]
depth = 2
width = 8
[train]
epochs = 2
batch_size = 16
[eval]
eps = [0.0]
restarts = 1
batch_size = 32
aggregate = "${AGGREGATE:-case}"
[eval.attack]
steps = 1
EOF
    rm -rf "$work/run-$1"
    /usr/bin/time -v "$bin" run --config "$work/$1.toml" --out "$work/run-$1" "${@:2}" \
        2> "$work/$1.time" > /dev/null
    grep "Maximum resident set size" "$work/$1.time" | awk '{print $NF}'
}
ratio() { python3 -c "import sys; a, b = int(sys.argv[2]), int(sys.argv[3]); print(f'peak RSS, {sys.argv[1]}: {a / 1024:.0f} MiB (1x), {b / 1024:.0f} MiB (10x), ratio {b / a:.3f}')" "$@"; }
ratio "training (one epoch)" "$(rss p1 --stop-after 1)" "$(rss p10 --stop-after 1)"
ratio "whole run (two epochs and the evaluation)" "$(rss p1)" "$(rss p10)"
export AGGREGATE=set
ratio "whole run, metrics on the whole split at once (eval.aggregate = set)" "$(rss p1)" "$(rss p10)"
