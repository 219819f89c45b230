"""scripts/compare_trainers.py: trainers over seeds on the demo's data, scored as the demo scores them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import load_script

script = load_script("compare_trainers")


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_lost_to_background_pools_the_cases(tmp_path):
    ref_a = np.zeros((2, 3, 3))
    ref_a[0, :2, :2] = 2  # 4 tumour voxels
    pred_a = ref_a.copy()
    pred_a[0, 0, 0] = 0  # one called background
    pred_a[0, 0, 1] = 1  # one called liver: not lost to background
    ref_b = np.zeros((2, 3, 3))
    ref_b[1, 0, 0] = 2
    pred_b = np.zeros_like(ref_b)  # the one tumour voxel called background
    for name, ref, pred in (("a", ref_a, pred_a), ("b", ref_b, pred_b)):
        _write(tmp_path / "labels" / f"{name}.nii.gz", ref)
        _write(tmp_path / "pred" / f"{name}.nii.gz", pred)
    assert script.lost_to_background(tmp_path / "labels", tmp_path / "pred") == pytest.approx(2 / 5)
    for p in (tmp_path / "labels").glob("*"):
        _write(p, np.zeros((2, 3, 3)))
    assert math.isnan(script.lost_to_background(tmp_path / "labels", tmp_path / "pred"))


def _row(trainer, seed, liver, tumour, beyond, found=5):
    return {"trainer": trainer, "seed": seed, "liver_dice": liver, "tumour_dice_global": tumour,
            "large_found": found, "large_n": 6, "slices_beyond": beyond, "tumour_lost_to_background": 0.25}


def test_table_lists_each_seed_and_the_mean_per_trainer():
    rows = [_row("B", 1, 0.90, 0.40, [0, 0, 3, 0]), _row("A", 0, 0.95, 0.50, [1, 2, 3, 12]),
            _row("B", 0, 0.94, 0.60, [0, 1, 0, 0], found=3)]
    text = script.table(rows, ["A", "B"])
    lines = text.strip().splitlines()
    assert lines[2].startswith("| A | 0 | 0.950 | 0.500 | 5/6 | 1/2/3/12 | 3 | 25% |")
    assert lines[3].startswith("| B | 0 | 0.940 | 0.600 | 3/6 | 0/1/0/0 | 0 |")  # seeds in order
    assert lines[4].startswith("| B | 1 |")
    # the mean row only for a trainer with more than one seed
    assert lines[5] == "| **B** | mean of 2 | **0.920** | **0.500** | 67% | | 0.50 | 25% |"
    assert len(lines) == 6


def test_refuses_a_folder_without_the_demo_data(tmp_path, capsys):
    assert script.main(["DualStreamTrainer_CPU", "--demo", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["DualStreamTrainer_CPU", "--iterations", "30"])


@pytest.mark.slow
def test_trains_predicts_scores_and_reuses_a_saved_run(tiny_phantoms, tmp_path, capsys):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "nnunet").symlink_to(tiny_phantoms["nnUNet_raw"].rsplit("/", 1)[0], target_is_directory=True)
    out = tmp_path / "out"
    args = ["LiverUNetTrainer_CPU", "--seeds", "0", "--iterations", "25", "--demo", str(demo), "--out", str(out)]
    assert script.main(args) == 0
    row = json.loads((out / "runs" / "LiverUNetTrainer_CPU__seed0.json").read_text())
    assert row["iterations"] == 25 and row["seed"] == 0 and 0 <= row["liver_dice"] <= 1
    assert len(row["slices_beyond"]) == 2  # the two test cases
    assert "| LiverUNetTrainer_CPU | 0 |" in (out / "results.md").read_text()
    assert (out / "work" / "seed0" / "results").is_dir()  # nnU-Net's results folder of the run
    assert len(row["data"]) == 16 and isinstance(row["bf16"], bool)
    capsys.readouterr()
    assert script.main(args) == 0
    assert "saved run" in capsys.readouterr().out
    # a saved run of other data (regenerated or replanned) is not reused
    saved = out / "runs" / "LiverUNetTrainer_CPU__seed0.json"
    saved.write_text(json.dumps(dict(row, data="0" * 16)))
    assert script.main(args) == 0
    assert "training 25 iterations" in capsys.readouterr().out
    assert json.loads(saved.read_text())["data"] == row["data"]


def test_trains_with_the_demo_training_variables(tmp_path, monkeypatch):
    from nnunet_liver.cli.demo import PRESETS, training_environment

    seen = {}

    def fake_run(cmd, env, stdout, stderr):
        seen.setdefault(cmd[0].rsplit("/", 1)[-1], env)
        raise_after = cmd[0].endswith("nnUNetv2_train")
        return type("Done", (), {"returncode": 1 if raise_after else 0})()

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    monkeypatch.setenv("NNUNET_LIVER_CPU_SECONDS", "99")  # a stray budget in the shell must not leak in
    dataset = tmp_path / "raw" / "Dataset990_LiverPhantom"
    with pytest.raises(RuntimeError, match="nnUNetv2_train failed"):
        script.run_one("T", 3, 100, dataset, tmp_path / "pre" / dataset.name, tmp_path / "out", tmp_path)
    env = seen["nnUNetv2_train"]
    expected = training_environment(PRESETS["default"], "cpu", seed=3)
    expected["NNUNET_LIVER_EPOCHS"] = str(100 // PRESETS["default"].iters)
    assert {k: env[k] for k in expected} == expected
    assert env["NNUNET_LIVER_CPU_SECONDS"] == ""
    assert env["nnUNet_preprocessed"] == str(tmp_path / "pre")
