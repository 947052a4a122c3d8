#!/usr/bin/env bash
# The README's first command: set up .venv (created or reused), generate the built-in synthetic
# microscopy data, train configs/quickstart.yaml on the CPU, evaluate the best checkpoint on the
# validation split and print its mIoU as a line `mIoU: 0.xxx`.
# About 60 s on 2 idle CPU cores once the packages are installed (README). Nothing is downloaded at run
# time (the first run installs PyTorch and friends from the package index into .venv).
# SEGKIT_QUICKSTART_OUT sets the run directory (default runs/quickstart; replaced on each run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$repo"
segkit="$venv/bin/segkit"
run="${SEGKIT_QUICKSTART_OUT:-runs/quickstart}"
data="data/quickstart"

# A quickstart run directory is this script's own output: start it afresh each time.
if [ -e "$run" ]; then
    [ -f "$run/config.yaml" ] || { echo "$run exists and is not a segkit run; set SEGKIT_QUICKSTART_OUT" >&2; exit 2; }
    rm -rf "$run"
fi
quiet=()
[ -t 2 ] || quiet=(--quiet)   # progress bars only on a terminal
echo "[segkit] training configs/quickstart.yaml -> $run (the built-in data is written to $data on first use)"
"$segkit" train configs/quickstart.yaml --out "$run" "${quiet[@]}"
echo "[segkit] evaluating $run/best.pt on $data (val split)"
"$segkit" evaluate --checkpoint "$run/best.pt" --data "$data" --split val --out "$run/report.json"
