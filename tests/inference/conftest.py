"""One phantom-trained segmentation model (stock nnUNetv2_train, LiverSmokeTrainer fold 0) and one lesion
classifier (classify extract/train, preset cpu) for the whole session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import set_environ, subprocess_env

DATASET = "Dataset990_LiverPhantom"


@pytest.fixture(scope="session")
def predict_models(tiny_phantoms, tmp_path_factory) -> dict:
    """Paths: env (nnU-Net folders), raw (phantom data set), model (model folder), classifier (checkpoint),
    crops (its crop folder)."""
    from nnunet_liver.cli import main as cli_main

    env = dict(tiny_phantoms)
    env["nnUNet_results"] = str(tmp_path_factory.mktemp("predict_results"))
    train = subprocess.run(
        [str(Path(sys.executable).parent / "nnUNetv2_train"), "990", "3d_fullres", "0", "-tr", "LiverSmokeTrainer",
         "-device", "cpu"], env=subprocess_env(env), capture_output=True, text=True, encoding="utf-8",
        errors="replace", timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    results = Path(env["nnUNet_results"]) / DATASET
    model = results / "LiverSmokeTrainer__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()

    crops, root = results / "classification" / "crops", results / "classification"
    with set_environ(env):
        # the table also lists the test cases, which are not preprocessed: --skip-unmatched
        assert cli_main.main(["classify", "extract", "-d", "990", "--size", "32", "--num-folds", "2",
                              "--skip-unmatched", "--no-progress", "-o", str(crops)]) == 0
        assert cli_main.main(["classify", "train", "-m", "hybrid3d", "-f", "0", "--preset", "cpu", "--epochs", "3",
                              "--crops", str(crops), "-o", str(root), "--no-progress", "--device", "cpu"]) == 0
    classifier = root / "hybrid3d__cpu" / "fold_0" / "checkpoint_final.pt"
    assert classifier.is_file()
    return {"env": env, "raw": Path(env["nnUNet_raw"]) / DATASET, "model": model, "classifier": classifier,
            "crops": crops}
