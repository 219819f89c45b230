#!/usr/bin/env bash
# The main job: the whole pipeline on synthetic liver-CT phantoms, on the CPU. Extra arguments go to
# `nnunet-liver demo` (e.g. --quick, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/nnunet-liver demo "$@"
