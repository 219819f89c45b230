"""Stock nnUNetv2_train / nnUNetv2_predict find and run our trainers, under fork and spawn."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import subprocess_env

pytestmark = pytest.mark.slow

SPAWN_WRAPPER = (
    "import multiprocessing as mp, sys; mp.set_start_method({method!r}, force=True); "
    "sys.argv = {argv!r}; from {module} import {entry}; sys.exit({entry}())"
)


def stock(command: list[str], env: dict[str, str], start_method: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a stock nnU-Net console script (``nnUNetv2_train``, ``nnUNetv2_predict``, ...) in a fresh
    interpreter whose multiprocessing start method is ``start_method``."""
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name=command[0])
    module, entry = ep.value.split(":")
    code = SPAWN_WRAPPER.format(method=start_method, argv=command, module=module, entry=entry)
    return subprocess.run([sys.executable, "-c", code], env=subprocess_env(env), cwd=cwd,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=900)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_stock_train_and_predict_with_smoke_trainer(tiny_phantoms, tmp_path, start_method):
    env = dict(tiny_phantoms)
    env["nnUNet_results"] = str(tmp_path / "results")
    raw = Path(env["nnUNet_raw"]) / "Dataset990_LiverPhantom"

    train = stock(["nnUNetv2_train", "990", "3d_fullres", "all", "-tr", "LiverSmokeTrainer", "-device", "cpu"],
                  env, start_method, tmp_path)
    assert_ok(train)
    out = Path(env["nnUNet_results"]) / "Dataset990_LiverPhantom" / "LiverSmokeTrainer__nnUNetPlans__3d_fullres"
    assert (out / "fold_all" / "checkpoint_final.pth").is_file()
    assert (out / "fold_all" / "validation" / "summary.json").is_file()
    assert "Using trainer 'LiverSmokeTrainer'" in train.stdout

    pred_dir = tmp_path / "pred"
    predict = stock(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred_dir), "-d", "990",
                     "-c", "3d_fullres", "-f", "all", "-tr", "LiverSmokeTrainer", "-device", "cpu",
                     "--disable_tta", "-npp", "1", "-nps", "1"], env, start_method, tmp_path)
    assert_ok(predict)
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert images
    for img_path in images:
        pred_path = pred_dir / img_path.name.replace("_0000.nii.gz", ".nii.gz")
        assert pred_path.is_file(), pred_path
        img, pred = sitk.ReadImage(str(img_path)), sitk.ReadImage(str(pred_path))
        assert pred.GetSize() == img.GetSize()
        assert pred.GetSpacing() == pytest.approx(img.GetSpacing())
        assert pred.GetOrigin() == pytest.approx(img.GetOrigin())
        assert pred.GetDirection() == pytest.approx(img.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}


def test_unknown_trainer_is_reported(tiny_phantoms, tmp_path):
    env = dict(tiny_phantoms)
    env["nnUNet_results"] = str(tmp_path / "results")
    proc = stock(["nnUNetv2_train", "990", "3d_fullres", "all", "-tr", "NoSuchLiverTrainer", "-device", "cpu"],
                 env, "fork", tmp_path)
    assert proc.returncode != 0
    assert "NoSuchLiverTrainer" in proc.stderr
