#!/usr/bin/env bash
# Set up .venv (created or reused) with segkit and its test extra, then run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_encoders.py -k vgg`.
# SEGKIT_SLOW=1 also runs the tests marked slow.
set -euo pipefail
SEGKIT_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$repo"
marker=(-m "not slow")
[ "${SEGKIT_SLOW:-0}" = "1" ] && marker=()
# Two workers: the suite is CPU-bound and machines here have two cores.
workers=(-n "${SEGKIT_TEST_WORKERS:-2}")
# One intra-op thread per worker, so two workers do not fight over two cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$py" -m pytest "${workers[@]}" "${marker[@]}" "$@"
