"""``nnunet-liver convert lits|ircadb``: outputs, geometry, resumption and bad input (exit 2, source untouched)."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_liver.cli.main import main
from nnunet_liver.data.converters import lits as lits_converter
from tests.data.converters.fixtures import (
    IRCADB_DIRECTION,
    IRCADB_ORIGIN,
    IRCADB_SPACING,
    LITS_DIRECTION,
    LITS_ORIGIN,
    LITS_SPACING,
    ircadb_ct,
    ircadb_masks,
    lits_label,
    lits_volume,
    make_ircadb_patient,
    make_lits,
    reference_ct,
    tree_hashes,
    write_dicom_series,
    write_nifti,
)

LITS = ["--no-progress", "-np", "1"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".partial-" in p.name]


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ------------------------------------------------------------------------------------------------------
# LiTS


def test_lits_two_batches(tmp_path, capsys):
    src = make_lits(tmp_path / "LiTS", batches=True, tests=1)
    before = tree_hashes(src)
    raw = tmp_path / "raw"
    code, out, err = run_cli(["convert", "lits", src, "-o", raw, *LITS], capsys)
    assert code == 0, err
    ds = raw / "Dataset501_LiTS"
    assert "5 case(s) converted" in out
    assert sorted(str(p.relative_to(ds)) for p in ds.rglob("*.nii.gz")) == [
        "imagesTr/lits_000_0000.nii.gz", "imagesTr/lits_001_0000.nii.gz", "imagesTr/lits_002_0000.nii.gz",
        "imagesTr/lits_003_0000.nii.gz", "imagesTs/lits_test_000_0000.nii.gz", "labelsTr/lits_000.nii.gz",
        "labelsTr/lits_001.nii.gz", "labelsTr/lits_002.nii.gz", "labelsTr/lits_003.nii.gz"]
    for n in range(4):
        img = sitk.ReadImage(str(ds / f"imagesTr/lits_{n:03d}_0000.nii.gz"))
        lbl = sitk.ReadImage(str(ds / f"labelsTr/lits_{n:03d}.nii.gz"))
        assert lbl.GetPixelID() == sitk.sitkUInt8  # segmentation-2 was float32
        assert img.GetPixelID() == sitk.sitkInt16
        for im in (img, lbl):
            assert np.allclose(im.GetSpacing(), LITS_SPACING) and np.allclose(im.GetOrigin(), LITS_ORIGIN)
            assert np.allclose(im.GetDirection(), LITS_DIRECTION)
        assert np.array_equal(sitk.GetArrayFromImage(img), lits_volume(n))
        assert np.array_equal(sitk.GetArrayFromImage(lbl), lits_label(n))
    assert np.array_equal(array(ds / "imagesTs/lits_test_000_0000.nii.gz"), lits_volume(100))
    info = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert info["numTraining"] == 4 and info["file_ending"] == ".nii.gz"
    assert info["labels"] == {"background": 0, "liver": 1, "tumor": 2} and info["channel_names"] == {"0": "CT"}
    mapping = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))["cases"]
    assert mapping["lits_002"]["source"]["label"] == os.path.join("Training Batch 2", "segmentation-2.nii")
    assert mapping["lits_test_000"]["lits_name"] == "test-volume-0"
    assert tree_hashes(src) == before
    assert leftovers(tmp_path) == []


def test_lits_one_folder_rerun_skips_and_overwrite_redoes(tmp_path, capsys):
    src = make_lits(tmp_path / "src", batches=False, tests=0)
    raw = tmp_path / "raw"
    assert run_cli(["convert", "lits", src, "-o", raw, *LITS], capsys)[0] == 0
    ds = raw / "Dataset501_LiTS"
    mtimes = {p: p.stat().st_mtime_ns for p in ds.rglob("*")}
    hashes = tree_hashes(ds)
    code, out, _ = run_cli(["convert", "lits", src, "-o", raw, *LITS], capsys)
    assert code == 0 and "0 case(s) converted, 4 already done" in out
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*")} == mtimes  # nothing touched

    # a changed source file is converted again, the others are not
    write_nifti(lits_volume(7), src / "volume-3.nii")
    code, out, _ = run_cli(["convert", "lits", src, "-o", raw, *LITS], capsys)
    assert code == 0 and "1 case(s) converted, 3 already done" in out
    assert np.array_equal(array(ds / "imagesTr/lits_003_0000.nii.gz"), lits_volume(7))
    assert (ds / "imagesTr/lits_000_0000.nii.gz").stat().st_mtime_ns == mtimes[ds / "imagesTr/lits_000_0000.nii.gz"]

    code, out, _ = run_cli(["convert", "lits", src, "-o", raw, *LITS, "--overwrite"], capsys)
    assert code == 0 and "4 case(s) converted, 0 already done" in out
    assert (ds / "imagesTr/lits_000_0000.nii.gz").stat().st_mtime_ns != mtimes[ds / "imagesTr/lits_000_0000.nii.gz"]
    assert tree_hashes(ds)["labelsTr/lits_000.nii.gz"] == hashes["labelsTr/lits_000.nii.gz"]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_LiTS"]  # no temporary folders left


def test_lits_interrupted_run_resumes(tmp_path, capsys, monkeypatch):
    src = make_lits(tmp_path / "src", tests=1)
    raw = tmp_path / "raw"
    real = lits_converter.write_case
    calls = []

    def interrupted(job, staging):
        calls.append(job.case_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, staging)

    monkeypatch.setattr(lits_converter, "write_case", interrupted)
    assert main(["convert", "lits", str(src), "-o", str(raw), *LITS]) == 130
    ds = raw / "Dataset501_LiTS"
    assert not (ds / "dataset.json").exists()  # does not look complete
    assert leftovers(raw) == []
    mapping = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))
    assert sorted(mapping["cases"]) == ["lits_000", "lits_001"]
    monkeypatch.setattr(lits_converter, "write_case", real)
    capsys.readouterr()
    code, out, _ = run_cli(["convert", "lits", src, "-o", raw, *LITS], capsys)
    assert code == 0 and "3 case(s) converted, 2 already done" in out and (ds / "dataset.json").is_file()


def _missing_partner(src: Path) -> str:
    (src / "Training Batch 1" / "segmentation-1.nii.gz").unlink()
    return "volume-1.nii.gz: no partner segmentation-1"


def _label_three(src: Path) -> str:
    lab = lits_label(3)
    lab[0, 0, 0] = 3
    write_nifti(lab, src / "Training Batch 2" / "segmentation-3.nii")
    return "segmentation-3.nii: unknown label value(s) 3"


def _nan_label(src: Path) -> str:
    lab = lits_label(2, np.float32)
    lab[4, 4, 4] = np.nan
    write_nifti(lab, src / "Training Batch 2" / "segmentation-2.nii")
    return "segmentation-2.nii: holds 1 NaN voxel value(s); a segmentation needs finite values"


def _fractional_label(src: Path) -> str:
    lab = lits_label(2, np.float32)
    lab[4, 4, 4] = 0.5
    write_nifti(lab, src / "Training Batch 2" / "segmentation-2.nii")
    return "segmentation-2.nii: label image has non-integer values"


def _shape_mismatch(src: Path) -> str:
    write_nifti(lits_label(0)[:, :, :15], src / "Training Batch 1" / "segmentation-0.nii")
    return "segmentation-0.nii: shape (15, 16, 8) differs from (16, 16, 8) of volume-0.nii"


def _origin_mismatch(src: Path) -> str:
    write_nifti(lits_label(0), src / "Training Batch 1" / "segmentation-0.nii", origin=(0.0, 0.0, 0.0))
    return "segmentation-0.nii: origin"


def _nan_image(src: Path) -> str:
    vol = lits_volume(1).astype(np.float32)
    vol[1, 2, 3] = np.nan
    write_nifti(vol, src / "Training Batch 1" / "volume-1.nii.gz")
    return "volume-1.nii.gz: holds 1 NaN voxel value(s)"


def _duplicate_number(src: Path) -> str:
    shutil.copy(src / "Training Batch 1" / "volume-0.nii", src / "Training Batch 2" / "volume-0.nii")
    return "volume-0 found twice"


def _corrupt_file(src: Path) -> str:
    (src / "Training Batch 2" / "volume-3.nii").write_bytes(b"not a nifti file")
    return "volume-3.nii: cannot read the image"


@pytest.mark.parametrize("damage", [_missing_partner, _label_three, _nan_label, _fractional_label,
                                    _shape_mismatch, _origin_mismatch, _nan_image, _duplicate_number,
                                    _corrupt_file])
def test_lits_bad_input(tmp_path, capsys, damage):
    src = make_lits(tmp_path / "src", tests=0)
    expected = damage(src)
    before = tree_hashes(src)
    raw = tmp_path / "raw"
    code, out, err = run_cli(["convert", "lits", src, "-o", raw, *LITS], capsys)
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert tree_hashes(src) == before
    ds = raw / "Dataset501_LiTS"
    assert not (ds / "dataset.json").exists() and leftovers(tmp_path) == []
    if ds.exists():  # only cases that were complete before the bad one, each whole
        cases = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))["cases"]
        assert all((ds / f).is_file() for c in cases.values() for f in c["files"])
        assert len(list(ds.rglob("*.nii.gz"))) == sum(len(c["files"]) for c in cases.values())


def test_lits_unknown_layout_and_bad_options(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "src" / "Training_Batch1.zip").write_bytes(b"")
    code, _, err = run_cli(["convert", "lits", tmp_path / "src", "-o", tmp_path / "raw", *LITS], capsys)
    assert code == 2 and "no LiTS files" in err and "unpack Training_Batch1.zip" in err
    code, _, err = run_cli(["convert", "lits", tmp_path / "nowhere", "-o", tmp_path / "raw", *LITS], capsys)
    assert code == 2 and "nowhere: not a folder" in err
    src = make_lits(tmp_path / "src2", tests=0)
    code, _, err = run_cli(["convert", "lits", src, "-o", src / "raw", *LITS], capsys)
    assert code == 2 and "must not be inside the source folder" in err and not (src / "raw").exists()
    (tmp_path / "raw" / "Dataset501_Other").mkdir(parents=True)
    code, _, err = run_cli(["convert", "lits", src, "-o", tmp_path / "raw", *LITS], capsys)
    assert code == 2 and "dataset id 501 is already used" in err
    code, _, err = run_cli(["convert", "lits", src, "-o", tmp_path / "raw", "-d", "502", *LITS], capsys)
    assert code == 0
    # a folder of another origin is not taken over without --overwrite
    (tmp_path / "raw" / "Dataset503_LiTS").mkdir()
    code, _, err = run_cli(["convert", "lits", src, "-o", tmp_path / "raw", "-d", "503", *LITS], capsys)
    assert code == 2 and "exists, written without case_mapping.json (use --overwrite" in err


def test_lits_parallel_workers(tmp_path, capsys):
    src = make_lits(tmp_path / "src", tests=1)
    code, out, err = run_cli(["convert", "lits", src, "-o", tmp_path / "raw", "--no-progress", "-np", "2"], capsys)
    assert code == 0 and "5 case(s) converted" in out, err
    ds = tmp_path / "raw" / "Dataset501_LiTS"
    assert np.array_equal(array(ds / "labelsTr/lits_002.nii.gz"), lits_label(2))


# ------------------------------------------------------------------------------------------------------
# 3D-IRCADb


def _check_ircadb_case(ds: Path, cid: str, patient_dicom: Path | None, cysts_as_tumour: bool) -> None:
    img = sitk.ReadImage(str(ds / f"imagesTr/{cid}_0000.nii.gz"))
    lbl = sitk.ReadImage(str(ds / f"labelsTr/{cid}.nii.gz"))
    assert img.GetPixelID() == sitk.sitkInt16 and lbl.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(img), ircadb_ct(0 if cid.endswith("1") else 1))  # HU kept
    refs = [(IRCADB_SPACING, IRCADB_ORIGIN, IRCADB_DIRECTION)]
    if patient_dicom is not None:
        ref = reference_ct(patient_dicom)
        refs.append((ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection()))
    for im in (img, lbl):
        for spacing, origin, direction in refs:
            assert np.allclose(im.GetSpacing(), spacing, atol=1e-5)
            assert np.allclose(im.GetOrigin(), origin, atol=1e-4)
            assert np.allclose(im.GetDirection(), direction, atol=1e-5)
    m = {k: v > 0 for k, v in ircadb_masks().items()}
    label = sitk.GetArrayFromImage(lbl)
    tumour = m["livertumor01"] | m["livertumor02"] | (m["liverkyst"] if cysts_as_tumour else False)
    assert np.array_equal(label == 2, tumour)
    assert np.array_equal(label >= 1, m["liver"] | m["livertumor01"] | m["livertumor02"] | m["liverkyst"])
    assert not (label[m["bone"] & ~m["liver"]]).any()


def _lesion_table(ds: Path) -> dict[str, list[dict]]:
    by_case: dict[str, list[dict]] = {}
    for row in csv.DictReader(open(ds / "lesions.csv", encoding="utf-8")):
        by_case.setdefault(row["case_id"], []).append(row)
    return by_case


def test_ircadb_folders_and_zips(tmp_path, capsys):
    src = tmp_path / "3Dircadb1"
    make_ircadb_patient(src / "3Dircadb1.1", seed=0)
    make_ircadb_patient(src / "3Dircadb1.2", seed=1, zipped=True)
    before = tree_hashes(src)
    raw = tmp_path / "raw"
    code, out, err = run_cli(["convert", "ircadb", src, "-o", raw, *LITS], capsys)
    assert code == 0 and "2 case(s) converted" in out, err
    ds = raw / "Dataset502_3DIRCADb"
    _check_ircadb_case(ds, "ircadb_001", src / "3Dircadb1.1" / "PATIENT_DICOM", cysts_as_tumour=False)
    _check_ircadb_case(ds, "ircadb_002", None, cysts_as_tumour=False)
    assert json.loads((ds / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 2

    table = _lesion_table(ds)
    for cid in ("ircadb_001", "ircadb_002"):
        rows = table[cid]
        # livertumor01 has three components, livertumor02 one, the cyst one; bone is no lesion
        assert [(r["mask"], r["mask_component"]) for r in rows] == [
            ("liverkyst", "1"), ("livertumor01", "1"), ("livertumor01", "2"), ("livertumor01", "3"),
            ("livertumor02", "1")]
        assert {(r["kind"], r["label"], r["segmentation_label"]) for r in rows} == {
            ("tumour", "malignant", "2"), ("cyst", "benign", "1")}
        label = array(ds / f"labelsTr/{cid}.nii.gz")
        components, n = ndimage.label(label == 2)
        tumours = [r for r in rows if r["kind"] == "tumour"]
        assert sorted(int(r["lesion_id"]) for r in tumours) == list(range(1, n + 1))
        for r in tumours:  # each lesion id is the label-2 component with that lesion's voxels
            assert int(r["voxels"]) == int((components == int(r["lesion_id"])).sum())
            zyx = tuple(int(round(float(r[f"centroid_{a}_vox"]) + 1e-6)) for a in "zyx")
            if int(r["voxels"]) == 1:
                assert components[zyx] == int(r["lesion_id"])
        assert [r["lesion_id"] for r in rows if r["kind"] == "cyst"] == [""]
        cyst = next(r for r in rows if r["kind"] == "cyst")
        assert float(cyst["volume_ml"]) == pytest.approx(12 * np.prod(IRCADB_SPACING) / 1000, rel=1e-3)
        ref = sitk.ReadImage(str(ds / f"labelsTr/{cid}.nii.gz"))
        centre = ref.TransformContinuousIndexToPhysicalPoint([float(cyst[f"centroid_{a}_vox"]) for a in "xyz"])
        assert np.allclose(centre, [float(cyst[f"centroid_{a}_mm"]) for a in "xyz"], atol=1e-2)
    assert tree_hashes(src) == before and leftovers(tmp_path) == []

    # the option changes the labels: every case is converted again
    code, out, err = run_cli(["convert", "ircadb", src, "-o", raw, *LITS, "--cysts-as-tumour"], capsys)
    assert code == 0 and "2 case(s) converted, 0 already done" in out, err
    _check_ircadb_case(ds, "ircadb_001", None, cysts_as_tumour=True)
    cyst = next(r for r in _lesion_table(ds)["ircadb_001"] if r["kind"] == "cyst")
    assert cyst["lesion_id"] != "" and cyst["segmentation_label"] == "2" and cyst["label"] == "benign"
    assert run_cli(["convert", "ircadb", src, "-o", raw, *LITS, "--cysts-as-tumour"], capsys)[1].startswith(
        f"{ds}: 0 case(s) converted, 2 already done")
    assert tree_hashes(src) == before


def _mixed_series(patient: Path) -> str:
    other = patient.parent / "other"
    write_dicom_series(ircadb_ct(5)[:1], other, "1.2.826.0.1.3680043.2.1125.999")
    shutil.move(other / "image_0", patient / "PATIENT_DICOM" / "image_99")
    return f"{patient / 'PATIENT_DICOM'}: mixed DICOM series, 2 series UIDs in one folder"


def _corrupt_slice(patient: Path) -> str:
    (patient / "PATIENT_DICOM" / "image_3").write_bytes(b"\0" * 200)
    return f"{patient / 'PATIENT_DICOM'}: 1 file(s) not readable as part of the series (corrupt or not DICOM): image_3"


def _missing_slice(patient: Path) -> str:
    (patient / "PATIENT_DICOM" / "image_2").unlink()
    return f"{patient / 'PATIENT_DICOM'}: slice positions are not evenly spaced"


def _no_liver_mask(patient: Path) -> str:
    shutil.rmtree(patient / "MASKS_DICOM" / "liver")
    return f"{patient / 'MASKS_DICOM'}: no 'liver' mask"


def _no_patient_dicom(patient: Path) -> str:
    shutil.rmtree(patient / "PATIENT_DICOM")
    return f"{patient}: neither PATIENT_DICOM/ nor PATIENT_DICOM.zip found"


def _mask_on_another_grid(patient: Path) -> str:
    shutil.rmtree(patient / "MASKS_DICOM" / "livertumor02")
    write_dicom_series(ircadb_masks()["livertumor02"][:, :, :12], patient / "MASKS_DICOM" / "livertumor02",
                       "1.2.826.0.1.3680043.2.1125.77", hu=False)
    return "mask livertumor02: shape (12, 12, 6) differs from (16, 12, 6) of the CT series"


@pytest.mark.parametrize("damage", [_mixed_series, _corrupt_slice, _missing_slice, _no_liver_mask,
                                    _no_patient_dicom, _mask_on_another_grid])
def test_ircadb_bad_input(tmp_path, capsys, damage):
    src = tmp_path / "src"
    patient = make_ircadb_patient(src / "3Dircadb1.4")
    expected = damage(patient)
    before = tree_hashes(src)
    raw = tmp_path / "raw"
    code, _, err = run_cli(["convert", "ircadb", src, "-o", raw, *LITS], capsys)
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert tree_hashes(src) == before
    assert not (raw / "Dataset502_3DIRCADb").exists() and leftovers(tmp_path) == []


def test_ircadb_unknown_layout(tmp_path, capsys):
    (tmp_path / "src" / "patient1" / "PATIENT_DICOM").mkdir(parents=True)
    code, _, err = run_cli(["convert", "ircadb", tmp_path / "src", "-o", tmp_path / "raw", *LITS], capsys)
    assert code == 2 and "no 3D-IRCADb patient folders" in err
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_scripts_are_thin_wrappers(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    make_lits(tmp_path / "lits", tests=0)
    make_ircadb_patient(tmp_path / "ircadb" / "3Dircadb1.3", zipped=True)
    for script, src, ds in (("convert_lits.py", "lits", "Dataset501_LiTS"),
                            ("convert_ircadb.py", "ircadb", "Dataset502_3DIRCADb")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), str(tmp_path / src), "-o",
                               str(tmp_path / "raw"), "--no-progress", "-np", "1"],
                              capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "raw" / ds / "dataset.json").is_file()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_lits.py"), str(tmp_path / "none"),
                           "-o", str(tmp_path / "raw")], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert proc.returncode == 2 and "none: not a folder" in proc.stderr
