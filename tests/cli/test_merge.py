"""``nnunet-liver merge`` and ``splits``: prefixed ids, near-duplicates across re-exports found with their
evidence, dropped or kept and grouped, folds that never split a group, lesion tables, re-runs, bad input."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.cli.main import main
from tests.data.converters.fixtures import (
    lits_label,
    lits_volume,
    make_ircadb_patient,
    make_lits,
    tree_hashes,
    write_nifti,
)

ARGS = ["--no-progress", "-np", "1"]


@pytest.fixture(autouse=True)
def no_nnunet_env(monkeypatch):
    """Folders come from the command line only (a developer's own $nnUNet_preprocessed is never written)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def assert_folds_keep_groups(splits: list[dict], cases: set[str], groups: list[set[str]]) -> None:
    """nnU-Net's format, every training case validated exactly once, and no group on both sides of a fold."""
    assert len(splits) == 5 and all(set(f) == {"train", "val"} for f in splits)
    assert sorted(c for f in splits for c in f["val"]) == sorted(cases)
    for f in splits:
        assert set(f["train"]) | set(f["val"]) == cases and not set(f["train"]) & set(f["val"])
        for g in groups:
            assert g <= set(f["val"]) or not g & set(f["val"]), (g, f["val"])


def two_datasets(tmp_path: Path, capsys, *, extra_a: tuple[int, ...] = ()) -> Path:
    """Dataset601_A (4 training + 1 test case, plus volumes ``extra_a``) and Dataset602_B, whose volume-0 is
    A's volume-1 (as int32: the same values stored in another type, with another label) and whose volume-5
    is new; both with a lesions.csv."""
    a = make_lits(tmp_path / "a", batches=False, tests=1)
    for n in extra_a:
        write_nifti(lits_volume(n), a / f"volume-{n}.nii")
        write_nifti(lits_label(n), a / f"segmentation-{n}.nii")
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


def test_merge_drops_duplicates_with_evidence(tmp_path, capsys):
    raw = two_datasets(tmp_path, capsys)
    pre = tmp_path / "preprocessed"
    before = tree_hashes(raw)
    code, out, err = run_cli(["merge", "601", "Dataset602_B", "-d", 610, "-o", raw, "--preprocessed", pre, *ARGS],
                             capsys)
    assert code == 0, err
    ds = raw / "Dataset610_A_B"
    assert ("duplicate: Dataset602_B/lits_000 = A_lits_001 (dropped): score 1.000; detail NCC 1.000; voxel NCC "
            "1.000; header: same; array flips: none; no z shift; LABELS DIFFER: liver Dice 1.000, tumour Dice 0.800"
            ) in out
    assert "check which annotation to trust: the merged data set uses A_lits_001's" in out
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
    dups = read_csv(ds / "duplicates.csv")
    assert len(dups) == 1
    row = dups[0]
    assert {k: row[k] for k in ("case_id", "source_dataset", "source_case", "duplicate_of", "same_label", "action",
                                "header", "array_flips", "z_shift_slices", "overlap_slices")} == {
        "case_id": "B_lits_000", "source_dataset": "Dataset602_B", "source_case": "lits_000",
        "duplicate_of": "A_lits_001", "same_label": "False", "action": "dropped", "header": "same",
        "array_flips": "none", "z_shift_slices": "0.0", "overlap_slices": "8"}
    assert float(row["score"]) == 1.0 and float(row["detail_ncc"]) == 1.0 and float(row["voxel_ncc"]) == 1.0
    assert float(row["hu_offset"]) == 0.0
    assert float(row["label_dice_liver"]) == 1.0 and float(row["label_dice_tumour"]) == 0.8
    mapping = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))
    assert mapping["cases"]["A_lits_test_000"]["lits_name"] == "test-volume-0"  # submit can map back
    assert [{k: str(v) for k, v in d.items()} for d in mapping["duplicates"]] == dups
    assert mapping["near_duplicate_search"]["pairs_scored"] == 21  # 7 cases in all, every pair
    lesions = read_csv(ds / "lesions.csv")
    assert [(r["case_id"], r["lesion_id"], r["source_dataset"], r["extra"]) for r in lesions] == [
        ("A_lits_000", "1", "Dataset601_A", ""), ("A_lits_001", "1", "Dataset601_A", ""),
        ("A_lits_001", "2", "Dataset601_A", ""), ("B_lits_005", "1", "Dataset602_B", "x")]
    assert "note: 1 lesions.csv row(s) of dropped copies left out" in out
    # folds: in the merged data set (nnU-Net's planner copies it) and in the preprocessed folder
    splits = json.loads((ds / "splits_final.json").read_text(encoding="utf-8"))
    assert_folds_keep_groups(splits, {n[:-len("_0000.nii.gz")] for n in images}, [])
    assert json.loads((pre / "Dataset610_A_B/splits_final.json").read_text(encoding="utf-8")) == splits
    assert f"folds: {pre / 'Dataset610_A_B/splits_final.json'}" in out
    assert {k: v for k, v in tree_hashes(raw).items() if not k.startswith("Dataset610")} == before

    # a re-run touches nothing (fingerprints and verifications come from the cache); another order keeps
    # B's copy instead
    watched = [*ds.rglob("*"), pre / "Dataset610_A_B/splits_final.json"]
    mtimes = {p: p.stat().st_mtime_ns for p in watched}
    code, out, _ = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, "--preprocessed", pre, *ARGS], capsys)
    assert code == 0 and "(0 copied, 6 already done)" in out
    assert {p: p.stat().st_mtime_ns for p in watched} == mtimes
    code, out, _ = run_cli(["merge", "602", "601", "-d", 611, "--name", "BA", "-o", raw, *ARGS], capsys)
    assert code == 0 and "duplicate: Dataset601_A/lits_001 = B_lits_000 (dropped)" in out
    merged = raw / "Dataset611_BA"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(merged / "imagesTr/B_lits_000_0000.nii.gz"))),
                          lits_volume(1))


def lits_copy_of_ircadb(raw: Path, lits: Path, number: int) -> None:
    """The converted 3D-IRCADb patient stored as LiTS stores it: the array flipped along x with the direction
    matrix saying so, float32 instead of int16, 1 slice cropped at the top; as volume/segmentation-<number>."""
    image = sitk.ReadImage(str(raw / "Dataset502_3DIRCADb/imagesTr/ircadb_001_0000.nii.gz"))
    label = sitk.ReadImage(str(raw / "Dataset502_3DIRCADb/labelsTr/ircadb_001.nii.gz"))

    def lits_style(img, pixel):
        flipped = sitk.Flip(img, [True, False, False])
        assert flipped.GetDirection()[0] == -img.GetDirection()[0]  # the header tells the flip
        return sitk.Cast(flipped, pixel)[:, :, :-1]

    sitk.WriteImage(lits_style(image, sitk.sitkFloat32), str(lits / f"volume-{number}.nii"))
    sitk.WriteImage(lits_style(label, sitk.sitkFloat32), str(lits / f"segmentation-{number}.nii"))


@pytest.fixture
def lits_and_ircadb(tmp_path, capsys) -> Path:
    """Dataset501_LiTS (cases 0-3, a copy of 3D-IRCADb patient 1 as volume-7, one test volume) and
    Dataset502_3DIRCADb (patients 1 and 2)."""
    raw = tmp_path / "raw"
    for n in (1, 2):
        make_ircadb_patient(tmp_path / "ircadb" / f"3Dircadb1.{n}", seed=n)
    assert run_cli(["convert", "ircadb", tmp_path / "ircadb", "-o", raw, *ARGS], capsys)[0] == 0
    lits = make_lits(tmp_path / "lits", tests=1)
    lits_copy_of_ircadb(raw, lits, 7)
    assert run_cli(["convert", "lits", lits, "-o", raw, *ARGS], capsys)[0] == 0
    return raw


def test_ircadb_patient_inside_lits_is_found(lits_and_ircadb, capsys):
    """The issue's scenario: `convert ircadb`, the same patient LiTS-style through `convert lits`, merged."""
    raw = lits_and_ircadb
    before = tree_hashes(raw)
    code, out, err = run_cli(["merge", "501", "502", "-d", 503, "-o", raw, "--no-progress", "-np", "2"], capsys)
    assert code == 0, err
    line, = (ln for ln in out.splitlines() if ln.startswith("duplicate:"))
    assert line.startswith("duplicate: Dataset502_3DIRCADb/ircadb_001 = LiTS_lits_007 (dropped): score 0.99")
    assert line.endswith("detail NCC 1.000; voxel NCC 1.000; header: flip x; array flips: none; no z shift; "
                         "same label")
    ds = raw / "Dataset503_LiTS_3DIRCADb"
    train = sorted(p.name[:-len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir())
    assert train == ["3DIRCADb_ircadb_002", *(f"LiTS_lits_00{n}" for n in (0, 1, 2, 3, 7))]
    row, = read_csv(ds / "duplicates.csv")
    assert row["overlap_slices"] == "5" and row["same_label"] == "True" and float(row["label_dice_tumour"]) == 1.0
    assert float(row["hu_offset"]) == 0.0
    assert_folds_keep_groups(json.loads((ds / "splits_final.json").read_text(encoding="utf-8")), set(train), [])
    assert "note: 5 lesions.csv row(s) of dropped copies left out" in out
    assert tree_hashes(raw) == {**before, **{k: v for k, v in tree_hashes(raw).items() if k.startswith("Dataset503")}}

    # the other order keeps 3D-IRCADb's copy (and its lesion table)
    code, out, err = run_cli(["merge", "502", "501", "-d", 504, "-o", raw, *ARGS], capsys)
    assert code == 0 and "duplicate: Dataset501_LiTS/lits_007 = 3DIRCADb_ircadb_001 (dropped)" in out, err
    lesions = read_csv(raw / "Dataset504_3DIRCADb_LiTS/lesions.csv")
    assert {r["case_id"] for r in lesions} == {"3DIRCADb_ircadb_001", "3DIRCADb_ircadb_002"}


def test_keep_duplicates_groups_copies_in_one_fold(lits_and_ircadb, capsys):
    raw = lits_and_ircadb
    code, out, err = run_cli(["merge", "501", "502", "-d", 503, "-o", raw, "--keep-duplicates", *ARGS], capsys)
    assert code == 0, err
    assert "duplicate: Dataset502_3DIRCADb/ircadb_001 = LiTS_lits_007 (kept):" in out
    assert "1 duplicate(s) kept" in out and "lesions.csv row(s) of dropped copies" not in out
    ds = raw / "Dataset503_LiTS_3DIRCADb"
    train = {p.name[:-len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir()}
    assert {"LiTS_lits_007", "3DIRCADb_ircadb_001"} <= train and len(train) == 7
    assert read_csv(ds / "duplicates.csv")[0]["action"] == "kept"
    mapping = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))
    assert mapping["split_groups"] == [["3DIRCADb_ircadb_001", "LiTS_lits_007"]]
    assert mapping["cases"]["3DIRCADb_ircadb_001"]["group"] == mapping["cases"]["LiTS_lits_007"]["group"]
    splits = json.loads((ds / "splits_final.json").read_text(encoding="utf-8"))
    assert_folds_keep_groups(splits, train, [{"LiTS_lits_007", "3DIRCADb_ircadb_001"}])
    assert any({"LiTS_lits_007", "3DIRCADb_ircadb_001"} <= set(f["val"]) for f in splits)

    # `splits` rebuilds the same folds from the merged data set into the preprocessed folder
    pre = raw.parent / "preprocessed"
    code, out, err = run_cli(["splits", "-d", 503, "--raw", raw, "-o", pre], capsys)
    assert code == 0 and "written" in out and "1 group(s) of cases kept together" in out, err
    assert json.loads((pre / ds.name / "splits_final.json").read_text(encoding="utf-8")) == splits
    code, out, _ = run_cli(["splits", "-d", 503, "--raw", raw, "-o", pre], capsys)
    assert code == 0 and "unchanged" in out


def test_patient_ids_of_a_source_keep_its_cases_in_one_fold(tmp_path, capsys):
    raw = two_datasets(tmp_path, capsys, extra_a=(6, 7, 8, 9))
    with open(raw / "Dataset601_A" / "lesions.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "lesion_id", "label", "patient_id"])
        w.writerows([["lits_000", 1, "malignant", "p1"], ["lits_003", 1, "benign", "p1"],
                     ["lits_006", 1, "benign", "p2"], ["lits_007", 1, "benign", "p2"], ["lits_008", 1, "benign", "p2"]])
    mapping_file = raw / "Dataset602_B" / "case_mapping.json"
    mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
    mapping["cases"]["lits_005"]["patient_id"] = "p1"  # B's own patient p1: another person than A's p1
    mapping_file.write_text(json.dumps(mapping), encoding="utf-8")
    code, out, err = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 0, err
    ds = raw / "Dataset610_A_B"
    records = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))["cases"]
    assert records["A_lits_003"]["patient_id"] == "Dataset601_A:p1" and records["B_lits_005"]["patient_id"] == \
        "Dataset602_B:p1"
    train = {p.name[:-len("_0000.nii.gz")] for p in (ds / "imagesTr").iterdir()}
    assert len(train) == 9
    splits = json.loads((ds / "splits_final.json").read_text(encoding="utf-8"))
    groups = [{"A_lits_000", "A_lits_003"}, {"A_lits_006", "A_lits_007", "A_lits_008"}]
    assert_folds_keep_groups(splits, train, groups)
    assert sorted(len(f["val"]) for f in splits) == [1, 1, 2, 2, 3]
    assert json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))["split_groups"] == [
        ["A_lits_000", "A_lits_003"], ["A_lits_006", "A_lits_007", "A_lits_008"]]  # B's p1 is not A's p1
    assert {r["patient_id"] for r in read_csv(ds / "lesions.csv")} == {"Dataset601_A:p1", "Dataset601_A:p2", ""}
    pre = tmp_path / "preprocessed"
    code, out, err = run_cli(["splits", "-d", 610, "--raw", raw, "-o", pre], capsys)  # from the merged set alone
    assert code == 0 and "2 group(s) of cases kept together" in out, err
    assert json.loads((pre / ds.name / "splits_final.json").read_text(encoding="utf-8")) == splits

    # a case given two patient ids is refused, naming the file
    with open(raw / "Dataset601_A" / "lesions.csv", "a", encoding="utf-8", newline="") as f:
        csv.writer(f).writerow(["lits_000", 2, "benign", "p9"])
    code, _, err = run_cli(["merge", "601", "602", "-d", 612, "-o", raw, *ARGS], capsys)
    assert code == 2 and "Dataset601_A/lesions.csv: case lits_000 has patient_id 'p9'" in err


def test_existing_different_splits_are_not_overwritten(tmp_path, capsys):
    raw = two_datasets(tmp_path, capsys)
    pre = tmp_path / "preprocessed"
    other = pre / "Dataset610_A_B" / "splits_final.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps([{"train": ["x"], "val": ["y"]}]), encoding="utf-8")
    code, _, err = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, "--preprocessed", pre, *ARGS], capsys)
    assert code == 2 and f"{other} exists with other folds (use --overwrite" in err
    assert not (raw / "Dataset610_A_B").exists()  # refused before any copying
    code, _, err = run_cli(["splits", "-d", 601, "--raw", raw, "-o", pre], capsys)
    assert code == 2 and "4 training case group(s) cannot make 5 folds" in err
    code, out, err = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, "--preprocessed", pre, "--overwrite",
                              *ARGS], capsys)
    assert code == 0, err
    assert json.loads(other.read_text(encoding="utf-8")) == \
        json.loads((raw / "Dataset610_A_B/splits_final.json").read_text(encoding="utf-8"))


def test_too_few_cases_for_five_folds(tmp_path, capsys):
    raw = tmp_path / "raw"
    for n, name in ((601, "A"), (602, "B")):
        src = tmp_path / name
        write_nifti(lits_volume(n), src / "volume-0.nii")
        write_nifti(lits_label(n), src / "segmentation-0.nii")
        assert run_cli(["convert", "lits", src, "-o", raw, "-d", n, "--name", name, *ARGS], capsys)[0] == 0
    code, out, err = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 0, err
    assert "note: splits_final.json not written: 2 training case group(s) cannot make 5 folds" in out
    assert not (raw / "Dataset610_A_B" / "splits_final.json").exists()


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
    shutil.copytree(raw / "Dataset602_B", raw / "Dataset604_D")
    broken = raw / "Dataset604_D" / "imagesTr" / "lits_005_0000.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    before = tree_hashes(raw)
    code, _, err = run_cli(["merge", "601", "604", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 2 and f"{broken}: cannot read the image" in err
    assert tree_hashes(raw) == before
    assert not any(p.name.startswith("Dataset610") for p in raw.iterdir())
    code, _, err = run_cli(["splits", "-d", 699, "--raw", raw, "-o", tmp_path / "pre"], capsys)
    assert code == 2 and "dataset 699: not found" in err


def test_converted_and_merged_datasets_pass_nnunet_verification(tmp_path, capsys):
    """LiTS + 3D-IRCADb conversions merged: nnU-Net's own integrity check accepts the result."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    raw = tmp_path / "raw"
    assert run_cli(["convert", "lits", make_lits(tmp_path / "lits", tests=1), "-o", raw, *ARGS], capsys)[0] == 0
    make_ircadb_patient(tmp_path / "ircadb" / "3Dircadb1.1")
    assert run_cli(["convert", "ircadb", tmp_path / "ircadb", "-o", raw, *ARGS], capsys)[0] == 0
    code, out, err = run_cli(["merge", "501", "502", "-d", 510, "-o", raw, *ARGS], capsys)
    assert code == 0 and "6 case(s) (6 copied" in out and "0 duplicate(s)" in out, err
    verify_dataset_integrity(str(raw / "Dataset510_LiTS_3DIRCADb"), num_processes=1)  # raises on a problem
    lesions = read_csv(raw / "Dataset510_LiTS_3DIRCADb" / "lesions.csv")
    assert {r["case_id"] for r in lesions} == {"3DIRCADb_ircadb_001"} and len(lesions) == 5


def test_labelled_copy_is_kept_before_an_unlabelled_test_copy(tmp_path, capsys):
    """A's test volume is B's training volume: the labelled copy stays although B comes second."""
    raw = tmp_path / "raw"
    a = make_lits(tmp_path / "a", batches=False, tests=1)
    b = tmp_path / "b"
    write_nifti(lits_volume(100), b / "volume-0.nii")  # make_lits' test-volume-0
    write_nifti(lits_label(0), b / "segmentation-0.nii")
    for src, n, name in ((a, 601, "A"), (b, 602, "B")):
        assert run_cli(["convert", "lits", src, "-o", raw, "-d", n, "--name", name, *ARGS], capsys)[0] == 0
    code, out, err = run_cli(["merge", "601", "602", "-d", 610, "-o", raw, *ARGS], capsys)
    assert code == 0, err
    assert "duplicate: Dataset601_A/lits_test_000 = B_lits_000 (dropped): score 1.000; detail NCC 1.000" in out
    ds = raw / "Dataset610_A_B"
    assert not (ds / "imagesTs").exists() and (ds / "labelsTr" / "B_lits_000.nii.gz").is_file()
    assert read_csv(ds / "duplicates.csv")[0]["same_label"] == ""  # no label to compare with
