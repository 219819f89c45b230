#!/usr/bin/env bash
# The test suite. Extra arguments go to pytest (e.g. -m "not slow", -k phantoms, -n 0 for one process).
# Two pytest-xdist workers of one torch thread each: most of the suite's time is single-threaded (processes
# starting and importing nnU-Net, its preprocessing, I/O), so one process with two threads kept about one
# core busy. --dist loadfile keeps each file on one worker, so a module fixture runs once (loadgroup would
# also share session fixtures, but its grouping is silently lost with pytest 9.2: pytest-xdist issue 1386).
# PYTEST_WORKERS sets the count.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest tests -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
