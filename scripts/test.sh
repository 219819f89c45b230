#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest (e.g. -m "not slow", -k phantoms, -n 0 for one process).
# Two pytest-xdist workers of one torch thread each: most of the suite's time is single-threaded (processes
# starting, nnU-Net's preprocessing, I/O), so one process with two threads kept about one core busy. Files
# that share a fixture run on one worker (tests/conftest.py groups them). PYTEST_WORKERS sets the count.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest tests -q -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
