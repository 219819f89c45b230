"""Model sharing: a DualStreamTrainer model through nnU-Net's nnUNetv2_export_model_to_zip ->
nnUNetv2_install_pretrained_model_from_zip round trip predicts exactly as before, and ``nnunet-liver predict -m``
takes the installed folder."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.cli import main as cli_main
from tests.conftest import set_environ, subprocess_env

pytestmark = pytest.mark.slow

DATASET = "Dataset990_LiverPhantom"
MODEL = "DualStreamTrainer_CPU__nnUNetPlans__3d_fullres"
BUDGET = {"NNUNET_LIVER_EPOCHS": "1", "NNUNET_LIVER_ITERS": "2", "NNUNET_LIVER_VAL_ITERS": "1",
          "NNUNET_LIVER_SEED": "0"}


def stock(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], env=subprocess_env(env),
                          cwd=cwd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=900,
                          check=False)
    assert proc.returncode == 0, f"{command[0]}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dual_stream(tiny_phantoms, tmp_path_factory) -> dict:
    """DualStreamTrainer_CPU, fold 0, one epoch of two iterations."""
    env = dict(tiny_phantoms, **BUDGET)
    env["nnUNet_results"] = str(tmp_path_factory.mktemp("sharing_results"))
    stock(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", "DualStreamTrainer_CPU", "-device", "cpu"], env,
          Path(env["nnUNet_results"]))
    return env


def test_export_install_round_trip_predicts_the_same(dual_stream, tmp_path, capsys):
    env = dual_stream
    model = Path(env["nnUNet_results"]) / DATASET / MODEL
    archive = tmp_path / "model.zip"
    stock(["nnUNetv2_export_model_to_zip", "-d", "990", "-o", str(archive), "-c", "3d_fullres", "-tr",
           "DualStreamTrainer_CPU", "-f", "0"], env, tmp_path)

    # what predict needs from the model folder travels: the trainer's rewritten plans (dual-stream network,
    # thin patches), the liver/tumour regions of its dataset.json, the checkpoint
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth"):
            assert f"{DATASET}/{MODEL}/{name}" in names, sorted(names)
            assert z.read(f"{DATASET}/{MODEL}/{name}") == (model / name).read_bytes(), name
    plans = json.loads((model / "plans.json").read_text(encoding="utf-8"))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "nnunet_liver.architectures.dual_stream.DualStreamAttentionNet"
    assert json.loads((model / "dataset.json").read_text(encoding="utf-8"))["labels"]["liver"] == [1, 2]

    # installed on a machine that has nothing but the zip (no raw or preprocessed data)
    elsewhere = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
                 "nnUNet_results": str(tmp_path / "results")}
    for folder in elsewhere.values():
        Path(folder).mkdir()
    stock(["nnUNetv2_install_pretrained_model_from_zip", str(archive)], elsewhere, tmp_path)
    installed = tmp_path / "results" / DATASET / MODEL
    assert (installed / "fold_0" / "checkpoint_final.pth").is_file()

    ct = Path(env["nnUNet_raw"]) / DATASET / "imagesTs" / "liver_005_0000.nii.gz"
    outputs = {}
    for name, folder, environ in (("original", model, env), ("installed", installed, elsewhere)):
        out = tmp_path / name
        with set_environ(environ):
            assert cli_main.main(["predict", "-i", str(ct), "-o", str(out), "-m", str(folder), "--threads", "1",
                                  "--no-progress", "--no-figures"]) == 0
        outputs[name] = out
    capsys.readouterr()
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[n] / "segmentation.nii.gz")))
            for n in ("original", "installed"))
    assert np.array_equal(a, b)
    fa, fb = (json.loads((outputs[n] / "findings.json").read_text(encoding="utf-8")) for n in ("original", "installed"))
    assert fa["lesions"] == fb["lesions"] and fa["liver_volume_ml"] == fb["liver_volume_ml"]
    assert fb["models"]["segmentation"]["trainer"] == "DualStreamTrainer_CPU"
    assert fb["models"]["segmentation"]["folder"] == str(installed)
