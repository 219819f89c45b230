"""``nnunet-liver merge``: prefixed ids, exact duplicates dropped and reported, lesion tables, re-runs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_liver.cli.main import main
from tests.data.converters.fixtures import lits_label, lits_volume, make_lits, tree_hashes, write_nifti

ARGS = ["--no-progress", "-np", "1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def two_datasets(tmp_path: Path, capsys) -> Path:
    """Dataset601_A (4 training + 1 test case) and Dataset602_B, whose volume-0 is A's volume-1 (as int32:
    the same values stored in another type) and whose volume-5 is new; both with a lesions.csv."""
    a = make_lits(tmp_path / "a", batches=False, tests=1)
    b = tmp_path / "b"
    write_nifti(lits_volume(1).astype(np.int32), b / "volume-0.nii")
    write_nifti(lits_label(0), b / "segmentation-0.nii")  # another label for the same image
    write_nifti(lits_volume(5), b / "volume-5.nii.gz")
    write_nifti(lits_label(5), b / "segmentation-5.nii.gz")
    raw = tmp_path / "raw"
    assert run_cli(["convert", "lits", a, "-o", raw, "-d", 601, "--name", "A", *ARGS], capsys)[0] == 0
    assert run_cli(["convert", "lits", b, "-o", raw, "-d", 602, "--name", "B", *ARGS], capsys)[0] == 0
    for name, rows in (("Dataset601_A", [("lits_000", 1), ("lits_001", 1), ("lits_001", 2)]),
                       ("Dataset602_B", [("lits_000", 1), ("lits_005", 1)])):
        with open(raw / name / "lesions.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "lesion_id", "label"] + (["extra"] if name.endswith("B") else []))
            w.writerows([[c, i, "malignant"] + (["x"] if name.endswith("B") else []) for c, i in rows])
    return raw


def test_merge_drops_exact_duplicates(tmp_path, capsys):
    raw = two_datasets(tmp_path, capsys)
    before = tree_hashes(raw)
    code, out, err = run_cli(["merge", "601", "Dataset602_B", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 0, err
    ds = raw / "Dataset610_A_B"
    assert "duplicate: Dataset602_B/lits_000 = A_lits_001, labels differ (dropped)" in out
    assert "6 case(s)" in out and "1 duplicate(s) dropped" in out
    images = sorted(p.name for p in (ds / "imagesTr").iterdir())
    assert images == ["A_lits_000_0000.nii.gz", "A_lits_001_0000.nii.gz", "A_lits_002_0000.nii.gz",
                      "A_lits_003_0000.nii.gz", "B_lits_005_0000.nii.gz"]
    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == ["A_lits_test_000_0000.nii.gz"]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [n.replace("_0000", "") for n in images]
    # files are copied byte for byte
    assert (ds / "labelsTr/B_lits_005.nii.gz").read_bytes() == \
        (raw / "Dataset602_B/labelsTr/lits_005.nii.gz").read_bytes()
    info = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert info["numTraining"] == 5 and info["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    dups = list(csv.DictReader(open(ds / "duplicates.csv", encoding="utf-8")))
    assert dups == [{"case_id": "B_lits_000", "source_dataset": "Dataset602_B", "source_case": "lits_000",
                     "duplicate_of": "A_lits_001", "same_label": "False"}]
    mapping = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))
    assert mapping["cases"]["A_lits_test_000"]["lits_name"] == "test-volume-0"  # submit can map back
    assert mapping["duplicates"] == dups
    lesions = list(csv.DictReader(open(ds / "lesions.csv", encoding="utf-8")))
    assert [(r["case_id"], r["lesion_id"], r["source_dataset"], r["extra"]) for r in lesions] == [
        ("A_lits_000", "1", "Dataset601_A", ""), ("A_lits_001", "1", "Dataset601_A", ""),
        ("A_lits_001", "2", "Dataset601_A", ""), ("B_lits_005", "1", "Dataset602_B", "x")]
    assert {k: v for k, v in tree_hashes(raw).items() if not k.startswith("Dataset610")} == before

    # a re-run touches nothing; another order keeps B's copy instead
    mtimes = {p: p.stat().st_mtime_ns for p in ds.rglob("*")}
    code, out, _ = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 0 and "(0 copied, 6 already done)" in out
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*")} == mtimes
    code, out, _ = run_cli(["merge", "602", "601", "-d", 611, "--name", "BA", "-o", raw, *ARGS], capsys)
    assert code == 0 and "duplicate: Dataset601_A/lits_001 = B_lits_000" in out
    merged = raw / "Dataset611_BA"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(merged / "imagesTr/B_lits_000_0000.nii.gz"))),
                          lits_volume(1))


def test_merge_bad_input(tmp_path, capsys):
    raw = two_datasets(tmp_path, capsys)
    code, _, err = run_cli(["merge", "601", "699", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 2 and "no data set with id 699" in err
    code, _, err = run_cli(["merge", "601", "601", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 2 and "have the same name 'A'" in err
    code, _, err = run_cli(["merge", "601", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 2 and "two or more" in err
    shutil.copytree(raw / "Dataset602_B", raw / "Dataset603_C")
    (raw / "Dataset603_C" / "dataset.json").unlink()
    code, _, err = run_cli(["merge", "601", "603", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 2 and "Dataset603_C: no dataset.json" in err
    code, _, err = run_cli(["merge", "601", "602", "-d", 601, "-o", raw, *ARGS], capsys)
    assert code == 2 and "dataset id 601 is already used" in err
    assert not any(p.name.startswith("Dataset610") for p in raw.iterdir())


def test_converted_and_merged_datasets_pass_nnunet_verification(tmp_path, capsys):
    """LiTS + 3D-IRCADb conversions merged: nnU-Net's own integrity check accepts the result."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from tests.data.converters.fixtures import make_ircadb_patient

    raw = tmp_path / "raw"
    assert run_cli(["convert", "lits", make_lits(tmp_path / "lits", tests=1), "-o", raw, *ARGS], capsys)[0] == 0
    make_ircadb_patient(tmp_path / "ircadb" / "3Dircadb1.1")
    assert run_cli(["convert", "ircadb", tmp_path / "ircadb", "-o", raw, *ARGS], capsys)[0] == 0
    code, out, err = run_cli(["merge", "501", "502", "-d", 510, "-o", raw, *ARGS], capsys)
    assert code == 0 and "6 case(s) (6 copied" in out and "0 duplicate(s)" in out, err
    verify_dataset_integrity(str(raw / "Dataset510_LiTS_3DIRCADb"), num_processes=1)  # raises on a problem
    lesions = list(csv.DictReader(open(raw / "Dataset510_LiTS_3DIRCADb" / "lesions.csv", encoding="utf-8")))
    assert {r["case_id"] for r in lesions} == {"3DIRCADb_ircadb_001"} and len(lesions) == 5
