# Sourced by scripts/test.sh and scripts/quickstart.sh: create or reuse .venv in the repo and
# install segkit (editable) with the extras named in SEGKIT_EXTRAS. Reinstalls only when
# pyproject.toml changed since the last install, so a second run starts in seconds.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python_bin="${PYTHON:-python3}"

if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "segkit needs Python >= 3.10 (found: $("$python_bin" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "[segkit] creating $venv"
    "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
extras="${SEGKIT_EXTRAS:-}"
stamp="$venv/.segkit-install-stamp"
project="$(sha256sum < "$repo/pyproject.toml" | cut -d' ' -f1)"
want="$project extras=$extras"
have="$(cat "$stamp" 2>/dev/null || true)"
# Up to date: the same pyproject.toml installed with these extras, or with the test extra (a
# superset: the quickstart needs none) when no extra is asked for.
if [ "$have" != "$want" ] && ! { [ -z "$extras" ] && [ "$have" = "$project extras=test" ]; }; then
    echo "[segkit] installing dependencies into $venv (first run takes a few minutes)"
    # The pinned torch/torchvision are the versions this project is tested with; pip takes
    # them from a local wheel cache when one is configured.
    quiet_pip() { "$py" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
    quiet_pip "torch==${SEGKIT_TORCH:-2.14.1}" "torchvision==${SEGKIT_TORCHVISION:-0.29.1}"
    spec="$repo"
    [ -n "$extras" ] && spec="$repo[$extras]"
    quiet_pip -e "$spec"
    echo "$want" > "$stamp"
fi
