#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest (e.g. -m "not slow", -k phantoms).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest tests -q "$@"
