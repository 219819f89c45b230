"""The README's main job: ``nnunet-liver demo --quick`` end to end on a fresh folder, then resumed."""
from __future__ import annotations

import subprocess
import sys

import pytest
import SimpleITK as sitk

from tests.conftest import subprocess_env

pytestmark = pytest.mark.slow


def run_demo(out):
    return subprocess.run([sys.executable, "-m", "nnunet_liver.cli.main", "demo", "--quick", "--out", str(out)],
                          env=subprocess_env({"nnUNet_def_n_proc": "1"}), capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=1200)


def test_quick_demo_runs_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in ("[1/4] synthesise phantoms", "[2/4] plan and preprocess", "[3/4] train", "[4/4] predict"):
        assert step in first.stdout
    raw = out / "nnunet" / "nnUNet_raw" / "Dataset990_LiverPhantom"
    preds = sorted((out / "predictions" / "LiverSmoke").glob("*.nii.gz"))
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(preds) == len(images) == 2
    for img, pred in zip(images, preds):
        assert sitk.ReadImage(str(pred)).GetSize() == sitk.ReadImage(str(img)).GetSize()
    assert (out / "logs" / "train_LiverSmokeTrainer.log").is_file()

    second = run_demo(out)
    assert second.returncode == 0
    assert second.stdout.count("done in an earlier run, skipped") == 4
