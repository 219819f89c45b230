"""A results folder made by the real producers, for the report tests.

Segmentation: 3 test phantoms (``nnunet-liver synth``'s writer), predictions that are deterministic
perturbations of the reference labels (no training: the report only reads files), each evaluated with
``nnunet-liver evaluate``. Classification: the tiny fake preprocessed data set of the classification tests,
``classify extract`` + ``classify train -m hybrid3d`` (1 epoch per fold, for a real attention figure), two
baselines whose ``predictions.csv`` are written here for the same lesions, then ``classify evaluate``.
Real CT: the carried ``crlm_liver_ct`` with a perturbation of its radiologist mask as the prediction, evaluated
with ``nnunet-liver evaluate`` (staged under the CT's case name, as the demo does).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunet_liver.cli import main as cli_main
from tests.conftest import set_environ

DATASET = "Dataset990_LiverPhantom"
# folder name -> (liver erosion in-plane, tumour dilation in-plane, fraction of tumour voxels dropped)
PERTURBATIONS = {
    "LiverUNetTrainer_CPU__2d": (2, 1, 0.3),
    "LiverUNetTrainer_CPU__3d_fullres": (1, 1, 0.15),
    "DualStreamTrainer_CPU__3d_fullres": (0, 0, 0.1),
    "DualStreamAblationBaseTrainer_CPU__3d_fullres": (2, 2, 0.2),
    "DualStreamAblationRWATrainer_CPU__3d_fullres": (1, 2, 0.2),
    "DualStreamAblationRWAAttTrainer_CPU__3d_fullres": (1, 1, 0.1),
}
TABLE1 = [("2D U-Net", "LiverUNetTrainer_CPU", "2d"), ("3D U-Net", "LiverUNetTrainer_CPU", "3d_fullres"),
          ("DualStream", "DualStreamTrainer_CPU", "3d_fullres")]
ABLATION = [("Spatial stream", "DualStreamAblationBaseTrainer_CPU"), ("+ RWA", "DualStreamAblationRWATrainer_CPU"),
            ("+ attention gates", "DualStreamAblationRWAAttTrainer_CPU"), ("DualStream", "DualStreamTrainer_CPU")]
COST = {"2D U-Net": {"params": 120000, "flops_per_voxel": 1.1e5, "patch_size": [48, 48], "seconds_per_case": 0.4,
                     "train_seconds": 30.0, "iterations": 8},
        "3D U-Net": {"params": 480000, "flops_per_voxel": 6.5e5, "patch_size": [16, 48, 48],
                     "seconds_per_case": 1.25, "train_seconds": 45.0, "iterations": 8},
        "DualStream": {"params": 264728, "flops_per_voxel": 3.2e5, "patch_size": [8, 48, 48],
                       "seconds_per_case": 0.9}}


def _perturb(label: np.ndarray, erode: int, dilate: int, drop: float, rng) -> np.ndarray:
    from scipy import ndimage

    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)  # in-plane only: thin phantoms keep their slices
    liver = label > 0
    tumour = label == 2
    if erode:
        liver = ndimage.binary_erosion(liver, plane, iterations=erode)
    if dilate:
        tumour = ndimage.binary_dilation(tumour, plane, iterations=dilate) & (label > 0)
    tumour &= rng.random(label.shape) >= drop
    out = np.zeros_like(label)
    out[liver | tumour] = 1
    out[tumour] = 2
    return out


def _segmentation(root: Path) -> list[dict]:
    import SimpleITK as sitk

    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

    write_phantom_dataset(root / "nnunet/nnUNet_raw", SynthSettings(num_train=1, num_test=3, size=48, seed=1),
                          progress=False, num_processes=1)
    labels = root / "nnunet/nnUNet_raw" / DATASET / "labelsTs"
    rng = np.random.default_rng(0)
    for key, (erode, dilate, drop) in PERTURBATIONS.items():
        out = root / "predictions" / key
        out.mkdir(parents=True)
        for f in sorted(labels.glob("*.nii.gz")):
            img = sitk.ReadImage(str(f))
            pred = sitk.GetImageFromArray(_perturb(sitk.GetArrayFromImage(img), erode, dilate, drop, rng))
            pred.CopyInformation(img)
            sitk.WriteImage(pred, str(out / f.name), useCompression=True)
        assert cli_main.main(["evaluate", str(labels), str(out), "-o", str(root / "evaluation" / key), "-np", "1",
                              "--no-progress"]) == 0
    models = []
    for label, trainer, conf in TABLE1:
        key = f"{trainer}__{conf}"
        models.append({"label": label, "group": "table1", "trainer": trainer, "configuration": conf,
                       "predictions": f"predictions/{key}", "evaluation": f"evaluation/{key}/summary.json",
                       "cost": COST[label]})
    for label, trainer in ABLATION:
        models.append({"label": label, "group": "ablation", "trainer": trainer, "configuration": "3d_fullres",
                       "evaluation": f"evaluation/{trainer}__3d_fullres/summary.json"})
    return models


REAL_CASE = "crlm_liver_ct"


def _real_ct(root: Path) -> dict:
    import SimpleITK as sitk

    from nnunet_liver.data.real_ct import CRLM_CT, CRLM_SEG

    rct = root / "real_ct"
    (rct / "reference").mkdir(parents=True)
    (rct / "prediction").mkdir()
    shutil.copyfile(CRLM_SEG, rct / "reference" / f"{REAL_CASE}.nii.gz")
    img = sitk.ReadImage(str(CRLM_SEG))
    pred = sitk.GetImageFromArray(_perturb(sitk.GetArrayFromImage(img), 2, 1, 0.0, np.random.default_rng(0)))
    pred.CopyInformation(img)
    sitk.WriteImage(pred, str(rct / "prediction" / f"{REAL_CASE}.nii.gz"), useCompression=True)
    assert cli_main.main(["evaluate", str(rct / "reference"), str(rct / "prediction"), "-o", str(rct / "evaluation"),
                          "-np", "1", "--no-progress"]) == 0
    return {"label": "crlm_liver_ct (TCIA CRLM, radiologist mask)", "model": "DualStream", "image": str(CRLM_CT),
            "reference": f"real_ct/reference/{REAL_CASE}.nii.gz",
            "prediction": f"real_ct/prediction/{REAL_CASE}.nii.gz", "evaluation": "real_ct/evaluation/summary.json"}


def _classification(root: Path) -> Path:
    from nnunet_liver.classification.training import PREDICTION_COLUMNS

    from tests.classification.fakes import write_fake_dataset

    env = {k: str(root / "cls" / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for v in env.values():
        os.makedirs(v)
    write_fake_dataset(Path(env["nnUNet_preprocessed"]), table=root / "cls" / "lesions.csv")
    cls = root / "cls" / "classification"
    with set_environ(env):
        assert cli_main.main(["classify", "extract", "-d", "991", "--table", str(root / "cls" / "lesions.csv"),
                              "--size", "16", "--crop-mm", "24", "--num-folds", "2", "-o", str(cls / "crops"),
                              "--no-progress"]) == 0
        assert cli_main.main(["classify", "train", "-m", "hybrid3d", "-f", "all", "--preset", "cpu", "--epochs",
                              "1", "--crops", str(cls / "crops"), "-o", str(cls), "--no-progress",
                              "--device", "cpu"]) == 0
        # the 2D baselines: predictions for the same test lesions, as their training would write them
        for model, shift in (("resnet50_2d", 0.25), ("densenet121_2d", 0.1)):
            for fold_dir in sorted((cls / "hybrid3d__cpu").glob("fold_*")):
                with open(fold_dir / "predictions.csv", encoding="utf-8", newline="") as f:
                    rows = list(csv.DictReader(f))
                out = cls / f"{model}__cpu" / fold_dir.name
                out.mkdir(parents=True)
                with open(out / "predictions.csv", "w", encoding="utf-8", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=PREDICTION_COLUMNS, lineterminator="\n")
                    w.writeheader()
                    for i, r in enumerate(rows):
                        prob = min(max(0.5 + shift * (2 * int(r["label"]) - 1) + 0.13 * ((i * 7) % 5 - 2), 0), 1)
                        w.writerow({**r, "prob": f"{prob:.6f}", "pred": int(prob >= 0.5), "n_slices": 3})
        assert cli_main.main(["classify", "evaluate", "-m", "hybrid3d", "resnet50_2d", "densenet121_2d",
                              "--preset", "cpu", "--crops", str(cls / "crops"), "--root", str(cls), "-o",
                              str(cls / "evaluation"), "--n-boot", "50"]) == 0
    return cls / "evaluation"


def manifest(models: list[dict], classification: str | None = "cls/classification/evaluation",
             real_ct: dict | None = None) -> dict:
    out = {
        "format": "nnunet_liver.results/1",
        "title": "report test",
        "provenance": {"data": "synthetic phantoms (Dataset990_LiverPhantom): 1 training / 3 test cases, 48 voxels "
                               "in-plane", "budget": "no training: perturbed reference labels",
                       "device": "cpu", "machine": {"cpu": "test", "threads": 1}, "created": "2026-11-27T04:00:00Z",
                       "synthetic": True, "command": "pytest"},
        "dataset": {"images": f"nnunet/nnUNet_raw/{DATASET}/imagesTs",
                    "labels": f"nnunet/nnUNet_raw/{DATASET}/labelsTs"},
        "segmentation": {"reference": "DualStream", "models": models},
    }
    if classification:
        out["classification"] = {"evaluation": classification, "preset": "cpu"}
    if real_ct:
        out["real_ct"] = real_ct
    return out


@pytest.fixture(scope="session")
def results_source(tmp_path_factory) -> Path:
    """The results folder with results.json (never modified by tests: copy it with ``results``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("results")
        models = _segmentation(root)
        _classification(root)
        real_ct = _real_ct(root)
        (root / "results.json").write_text(json.dumps(manifest(models, real_ct=real_ct), indent=1),
                                           encoding="utf-8")
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture
def results(results_source, tmp_path) -> Path:
    """A private copy of the results folder (tests write reports and edit results.json)."""
    dst = tmp_path / "results"
    shutil.copytree(results_source, dst, ignore=shutil.ignore_patterns("report"))
    return dst
