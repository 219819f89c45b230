#!/usr/bin/env bash
# Create ./.venv and install nnunet-liver (editable) with its test extras, once; later calls are instant.
# torchvision's wheels pin the torch they were built for, so pip installs a matching pair; the check at the
# end fails loudly if the pair does not match (nnU-Net's trainer lookup imports torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.nnunet-liver-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[bootstrap] installing nnunet-liver and its dependencies into .venv (first run: a few minutes)"
    .venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]'
    .venv/bin/python - <<'PY'
import torch, torchvision
from torchvision.ops import nms  # raises "operator torchvision::nms does not exist" for a mismatched pair
nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
print(f"[bootstrap] torch {torch.__version__} + torchvision {torchvision.__version__}: a matching pair")
PY
    touch "$stamp"
fi
