"""Phantoms -> nnU-Net planning/preprocessing (HU kept) -> classify extract -> train -> evaluate -> predict."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from nnunet_liver.cli import main as cli_main

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


@pytest.fixture
def phantoms(tmp_path, monkeypatch):
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset
    from nnunet_liver.env import nnunet_environment
    from nnunet_liver.planners.api import plan_and_preprocess

    env = nnunet_environment(tmp_path)
    env.update(nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    write_phantom_dataset(env["nnUNet_raw"], SynthSettings(num_train=8, num_test=0, size=48, seed=5), progress=False)
    plan_and_preprocess(990, configurations=("3d_fullres",), num_processes=1)
    monkeypatch.setattr(cli_main, "COMMANDS", ("nnunet_liver.cli.classify",))
    return tmp_path


def run(*argv) -> int:
    return cli_main.main(["classify", *map(str, argv)])


def test_phantom_pipeline(phantoms, capsys):
    table = phantoms / "nnUNet_raw/Dataset990_LiverPhantom/lesions.csv"
    with open(table, encoding="utf-8") as f:
        n_rows = sum(1 for _ in csv.DictReader(f))
    # the phantom table numbers lesions by placement, not by scipy's labelling: the join goes by centroid
    assert run("extract", "-d", 990, "--size", 32, "--num-folds", 2, "--no-progress") == 0
    out = capsys.readouterr().out
    assert f"{n_rows} lesions" in out and f"{n_rows} crops written" in out
    root = phantoms / "nnUNet_results/Dataset990_LiverPhantom/classification"
    info = json.loads((root / "crops/crops.json").read_text(encoding="utf-8"))
    assert info["n_lesions"] == n_rows and info["skipped"]["unmatched_rows"] == []

    for model in ("hybrid3d", "resnet50_2d"):
        assert run("train", "-d", 990, "-m", model, "-f", "all", "--preset", "cpu", "--epochs", 2,
                   "--no-progress", "--device", "cpu") == 0, capsys.readouterr().err
    for k in (0, 1):
        assert (root / f"hybrid3d__cpu/fold_{k}/predictions.csv").is_file()
    capsys.readouterr()

    assert run("evaluate", "-d", 990, "--preset", "cpu", "--n-boot", 100) == 0
    ev = root / "evaluation__cpu"
    assert {p.name for p in ev.iterdir()} == {"table2.md", "table2.json", "roc.png", "metrics.png", "attention.png"}
    result = json.loads((ev / "table2.json").read_text(encoding="utf-8"))
    assert set(result["models"]) == {"hybrid3d", "resnet50_2d"}
    assert result["models"]["hybrid3d"]["n_lesions"] == n_rows  # every lesion tested once across the folds
    assert result["comparisons"]["resnet50_2d"]["auc_ttest"]["n"] == 2
    assert "Hybrid 3D (proposed)" in capsys.readouterr().out

    pred = phantoms / "pred.csv"
    assert run("predict", "-i", root / "crops", "-chk", root / "resnet50_2d__cpu/fold_0/checkpoint_final.pt",
               "-o", pred) == 0
    with open(pred, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_rows and all(0 <= float(r["prob"]) <= 1 and int(r["n_slices"]) >= 1 for r in rows)
