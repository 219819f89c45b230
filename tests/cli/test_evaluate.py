"""``nnunet-liver evaluate`` in-process, through the real entry point with only this command registered."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.cli import main as cli_main

SPACING = (0.8, 0.7, 2.5)  # x, y, z as SimpleITK


@pytest.fixture
def run_cli(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMANDS", ("nnunet_liver.cli.evaluate",))

    def run(*argv: str) -> int:
        return cli_main.main(["evaluate", "--no-progress", *map(str, argv)])

    return run


def write(path, array, spacing=SPACING):
    image = sitk.GetImageFromArray(np.asarray(array, np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def labels(tumour: bool = True, shift: int = 0) -> np.ndarray:
    out = np.zeros((12, 20, 20), np.uint8)
    out[2:10, 3:17, 3 + shift:17 + shift] = 1
    if tumour:
        out[4:7, 6:10, 6 + shift:10 + shift] = 2
    return out


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    write(ref / "case_0.nii.gz", labels())
    write(pred / "case_0.nii.gz", labels())
    write(ref / "case_1.nii", labels())  # LiTS-style .nii reference, nnU-Net-style .nii.gz prediction
    write(pred / "case_1.nii.gz", labels(shift=1))
    write(ref / "case_2.nii.gz", labels(tumour=False))
    write(pred / "case_2.nii.gz", labels(tumour=False))
    return ref, pred


def read_json_strict(path):
    def no_nan(token):
        raise AssertionError(f"{path} holds {token}, not valid JSON")

    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=no_nan)


def test_writes_the_three_outputs(run_cli, folders, tmp_path, capsys):
    ref, pred = folders
    out = tmp_path / "out"
    assert run_cli(ref, pred, "-o", out, "-np", 1) == 0
    assert sorted(os.listdir(out)) == ["per_case.csv", "summary.json", "summary.md"]
    summary = read_json_strict(out / "summary.json")
    assert list(summary["cases"]) == ["case_0", "case_1", "case_2"]
    agg = summary["aggregate"]
    assert agg["n_cases"] == 3
    assert summary["cases"]["case_0"]["liver"]["dice"] == 1.0
    assert summary["cases"]["case_1"]["liver"]["msd"] == pytest.approx(0.8, abs=1e-6)  # 1 voxel along x
    assert summary["cases"]["case_2"]["tumour"]["dice"] == 1.0  # empty / empty
    assert agg["lesion_detection"]["iou>0"] == {"tp": 2, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0,
                                                "f1": 1.0}
    with open(out / "per_case.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_0", "case_1", "case_2"]
    assert float(rows[1]["liver_dice"]) == pytest.approx(summary["cases"]["case_1"]["liver"]["dice"])
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "| liver |" in md and "| tumour |" in md and "| case_1 |" in md
    assert "wrote summary.json" in capsys.readouterr().out


def test_default_output_is_the_prediction_folder_and_no_overwrite(run_cli, folders, capsys):
    ref, pred = folders
    assert run_cli(ref, pred) == 0
    before = (pred / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli(ref, pred) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (pred / "summary.json").stat().st_mtime_ns == before
    assert run_cli(ref, pred, "--overwrite") == 0
    assert not [n for n in os.listdir(pred) if n.startswith(".")]  # no temporary files left


def test_missing_prediction_is_an_error_unless_chill(run_cli, folders, tmp_path, capsys):
    ref, pred = folders
    os.remove(pred / "case_1.nii.gz")
    assert run_cli(ref, pred, "-o", tmp_path / "o1") == 2
    err = capsys.readouterr().err
    assert "case_1" in err and "--chill" in err
    assert not (tmp_path / "o1").exists()
    assert run_cli(ref, pred, "-o", tmp_path / "o2", "--chill") == 0
    summary = read_json_strict(tmp_path / "o2" / "summary.json")
    assert summary["missing_predictions"] == ["case_1"] and list(summary["cases"]) == ["case_0", "case_2"]
    assert "case_1" in capsys.readouterr().err


def test_unknown_label_names_the_file(run_cli, folders, tmp_path, capsys):
    ref, pred = folders
    bad = labels()
    bad[0, 0, 0] = 3
    write(pred / "case_2.nii.gz", bad)
    assert run_cli(ref, pred, "-o", tmp_path / "o", "-np", 1) == 2
    err = capsys.readouterr().err
    assert "case_2.nii.gz" in err and "3" in err


def test_unknown_label_in_worker_process(run_cli, folders, tmp_path, capsys):
    ref, pred = folders
    bad = labels()
    bad[0, 0, 0] = 3
    write(ref / "case_0.nii.gz", bad)
    assert run_cli(ref, pred, "-o", tmp_path / "o", "-np", 2) == 2
    assert "case_0.nii.gz" in capsys.readouterr().err


def test_shape_mismatch_names_the_file(run_cli, folders, tmp_path, capsys):
    ref, pred = folders
    write(pred / "case_0.nii.gz", labels()[:, :, :15])
    assert run_cli(ref, pred, "-o", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "case_0.nii.gz" in err and "shape" in err


def test_custom_labels(run_cli, tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    remapped = np.select([labels() == 1, labels() == 2], [4, 9], 0)
    write(ref / "a.nii.gz", remapped)
    write(pred / "a.nii.gz", remapped)
    assert run_cli(ref, pred, "--labels", 4, 9) == 0
    case = read_json_strict(pred / "summary.json")["cases"]["a"]
    assert case["liver"]["dice"] == 1.0 and case["tumour"]["reference_voxels"] == 3 * 4 * 4


def test_pool_gives_the_same_numbers(run_cli, folders, tmp_path):
    ref, pred = folders
    assert run_cli(ref, pred, "-o", tmp_path / "serial", "-np", 1) == 0
    assert run_cli(ref, pred, "-o", tmp_path / "pool", "-np", 2) == 0
    a = read_json_strict(tmp_path / "serial" / "summary.json")
    b = read_json_strict(tmp_path / "pool" / "summary.json")
    assert a["cases"] == b["cases"] and a["aggregate"] == b["aggregate"]


def test_compare_with_a_folder_and_with_a_summary(run_cli, folders, tmp_path):
    ref, pred = folders
    other = tmp_path / "other"
    other.mkdir()
    for i in range(3):
        write(other / f"case_{i}.nii.gz", labels(tumour=False))
    assert run_cli(ref, pred, "-o", tmp_path / "c1", "--compare", other) == 0
    comparison = read_json_strict(tmp_path / "c1" / "comparison.json")
    td = comparison["metrics"]["tumour_dice"]
    # case_1's tumour is shifted by one of its four voxels along x: Dice 0.75; OTHER finds tumour nowhere
    # (Dice 0, but 1 on case_2 where there is none).
    assert td["n"] == 3 and td["mean_a"] == pytest.approx(2.75 / 3) and td["mean_b"] == pytest.approx(1 / 3)
    assert td["mean_difference"] == pytest.approx(1.75 / 3)
    assert comparison["metrics"]["tumour_hd95"]["n_dropped_nan"] == 2
    assert "| tumour_dice |" in (tmp_path / "c1" / "comparison.md").read_text(encoding="utf-8")
    # The other side as an earlier run's summary.json gives the same comparison.
    assert run_cli(ref, other, "-o", tmp_path / "other_eval") == 0
    assert run_cli(ref, pred, "-o", tmp_path / "c2", "--compare", tmp_path / "other_eval" / "summary.json") == 0
    again = read_json_strict(tmp_path / "c2" / "comparison.json")
    assert again["metrics"] == comparison["metrics"]


def test_bad_folders_and_options(run_cli, folders, tmp_path, capsys):
    ref, pred = folders
    assert run_cli(tmp_path / "nope", pred) == 2
    assert "REF_DIR" in capsys.readouterr().err
    assert run_cli(ref, pred, "--labels", 2, 2) == 2
    assert run_cli(ref, pred, "-np", 0) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(empty, pred) == 2
    assert "no .nii.gz or .nii files" in capsys.readouterr().err


def test_help_lists_compare(capsys):
    import argparse

    from nnunet_liver.cli import evaluate

    parser = argparse.ArgumentParser(prog="nnunet-liver")
    evaluate.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--compare OTHER" in text and "--chill" in text and "-np" in text
