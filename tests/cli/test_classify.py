"""``nnunet-liver classify`` in-process on a tiny fake preprocessed data set: bad input exits 2, writes nothing."""
from __future__ import annotations

import shutil

import pytest
import torch

from nnunet_liver.cli import main as cli_main
from tests.classification.fakes import write_fake_dataset

torch.set_num_threads(1)


@pytest.fixture
def env(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setattr(cli_main, "COMMANDS", ("nnunet_liver.cli.classify",))
    return tmp_path


def run(*argv) -> int:
    return cli_main.main(["classify", *map(str, argv)])


def extract(env, *extra):
    return run("extract", "-d", 991, "--table", env / "lesions.csv", "--size", 16, "--crop-mm", 24, "--num-folds", 2,
               "--no-progress", *extra)


CROPS = "nnUNet_results/Dataset991_Fake/classification/crops"


def test_extract_train_predict(env, capsys):
    write_fake_dataset(env / "nnUNet_preprocessed", table=env / "lesions.csv")
    assert extract(env) == 0
    assert "12 lesions (6 malignant, 6 benign) from 6 cases; 12 crops written" in capsys.readouterr().out
    crops = env / CROPS
    assert (crops / "index.csv").is_file() and (crops / "splits.json").is_file()
    assert extract(env) == 0
    assert "0 crops written, 12 up to date" in capsys.readouterr().out

    assert run("train", "-d", 991, "-m", "hybrid3d", "-f", 0, "--preset", "cpu", "--epochs", 1, "--no-progress",
               "--device", "cpu") == 0
    run_dir = env / "nnUNet_results/Dataset991_Fake/classification/hybrid3d__cpu/fold_0"
    assert (run_dir / "checkpoint_final.pt").is_file() and (run_dir / "progress.png").is_file()
    out_csv = env / "pred.csv"
    assert run("predict", "-i", crops, "-chk", run_dir / "checkpoint_final.pt", "-m", "hybrid3d", "-o", out_csv) == 0
    assert len(out_csv.read_text(encoding="utf-8").splitlines()) == 13
    capsys.readouterr()

    # a checkpoint of another model: predict and --continue refuse it
    assert run("predict", "-i", crops, "-chk", run_dir / "checkpoint_final.pt", "-m", "resnet50_2d", "-o",
               env / "p2.csv") == 2
    assert "holds a hybrid3d model, not resnet50_2d" in capsys.readouterr().err
    assert not (env / "p2.csv").exists()
    other = env / "nnUNet_results/Dataset991_Fake/classification/resnet50_2d__cpu/fold_0"
    other.mkdir(parents=True)
    shutil.copy(run_dir / "checkpoint_latest.pt", other / "checkpoint_latest.pt")
    assert run("train", "-d", 991, "-m", "resnet50_2d", "-f", 0, "--preset", "cpu", "--continue",
               "--no-progress", "--device", "cpu") == 2
    assert "holds a hybrid3d model, not resnet50_2d" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["checkpoint_latest.pt"]
    # a file that is no checkpoint of ours
    torch.save({"weights": torch.zeros(2)}, env / "foreign.pt")
    assert run("predict", "-i", crops, "-chk", env / "foreign.pt", "-o", env / "p3.csv") == 2
    assert "not a lesion-classifier checkpoint" in capsys.readouterr().err
    # an existing run without --continue, and a fold that does not exist
    assert run("train", "-d", 991, "-m", "hybrid3d", "-f", 0, "--preset", "cpu", "--no-progress") == 2
    assert "--continue" in capsys.readouterr().err
    assert run("train", "-d", 991, "-m", "hybrid3d", "-f", 5, "--preset", "cpu", "--no-progress") == 2
    assert "folds 0..1" in capsys.readouterr().err


@pytest.mark.parametrize("extra_rows, drop, message", [
    ([{"case_id": "case_00", "lesion_id": 9, "label": "benign", "subtype": "", "centroid_z_vox": 2,
       "centroid_y_vox": 20, "centroid_x_vox": 3}], [], "case_00/9 (no tumour component at its centroid)"),
    ([{"case_id": "nobody", "lesion_id": 1, "label": "benign", "subtype": "", "centroid_z_vox": 5,
       "centroid_y_vox": 9, "centroid_x_vox": 10}], [], "1 unknown case(s) in the table: nobody"),
    ([], [("case_02", 1)], "1 tumour component(s) missing from the table: case_02 component at raw voxel"),
])
def test_table_mismatches_exit_2_and_write_nothing(env, capsys, extra_rows, drop, message):
    write_fake_dataset(env / "nnUNet_preprocessed", table=env / "lesions.csv", extra_rows=extra_rows, drop_rows=drop)
    assert extract(env) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (env / "nnUNet_results/Dataset991_Fake").exists()
    assert extract(env, "--skip-unmatched") == 0
    assert "warning: skipping" in capsys.readouterr().err


def test_empty_lesion_set(env, capsys):
    cases = {"case_00": [], "case_01": []}
    write_fake_dataset(env / "nnUNet_preprocessed", cases, table=env / "lesions.csv",
                       extra_rows=[{"case_id": "case_00", "lesion_id": 1, "label": "benign"}])
    assert extract(env, "--skip-unmatched") == 2
    assert "no lesions to crop" in capsys.readouterr().err
    assert not (env / "nnUNet_results/Dataset991_Fake").exists()


def test_non_hu_plans(env, capsys):
    write_fake_dataset(env / "nnUNet_preprocessed", table=env / "lesions.csv", normalization="CTNormalization")
    assert extract(env) == 2
    assert "normalised with CTNormalization, so the preprocessed data hold no Hounsfield units" in capsys.readouterr().err


def test_one_class_training_fold(env, capsys):
    cases = {"case_00": [((4, 7, 7), 0), ((8, 16, 16), 0)], "case_01": [((4, 7, 7), 1), ((8, 16, 16), 1)]}
    write_fake_dataset(env / "nnUNet_preprocessed", cases, table=env / "lesions.csv")
    assert extract(env) == 0
    assert "warning: fold 0: the training part has only" in capsys.readouterr().err
    assert run("train", "-d", 991, "-m", "hybrid3d", "-f", "all", "--preset", "cpu", "--no-progress") == 2
    assert "fold 0: the training part has only" in capsys.readouterr().err
    assert not (env / "nnUNet_results/Dataset991_Fake/classification/hybrid3d__cpu").exists()


def test_bad_options(env, capsys):
    write_fake_dataset(env / "nnUNet_preprocessed", table=env / "lesions.csv")
    assert extract(env, "--crop-mm", "wide") == 2
    assert "--crop-mm must be a number of mm or 'auto'" in capsys.readouterr().err
    assert run("extract", "-d", 991, "--table", env / "missing.csv") == 2
    assert "lesion table not found" in capsys.readouterr().err
    assert extract(env, "--instances", env / "nowhere") == 2
    assert "--instances: no such folder" in capsys.readouterr().err
    (env / "instances").mkdir()
    assert extract(env, "--instances", env / "instances") == 2
    assert "no instance map for 6 case(s) with lesions" in capsys.readouterr().err
    assert run("evaluate", "-d", 991, "--preset", "cpu") == 2
    assert "no finished fold" in capsys.readouterr().err
