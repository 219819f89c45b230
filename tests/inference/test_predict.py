"""``nnunet-liver predict`` end to end on a phantom-trained model: NIfTI and DICOM, the real CT's geometry,
batch mode with a broken case, and clear errors for bad models, classifiers and inputs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_liver.cli import main as cli_main
from tests.inference.helpers import lesion_region, rotated_copy, write_dicom_series

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

OUTPUTS = {"segmentation.nii.gz", "lesions.csv", "findings.json", "summary.png"}


@pytest.fixture
def env(predict_models, monkeypatch):
    for k, v in predict_models["env"].items():
        monkeypatch.setenv(k, v)
    return predict_models


def predict(models, *argv) -> int:
    return cli_main.main(["predict", "-m", str(models["model"]), "--threads", "1", "--no-progress",
                          *map(str, argv)])


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
            and a.GetDirection() == b.GetDirection())


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_nifti_and_dicom_input_give_the_same_lesions(env, tmp_path, capsys):
    nii = tmp_path / "liver_005_0000.nii.gz"  # the phantom's lesion region (bounds the time, see lesion_region)
    image = lesion_region(env["raw"] / "imagesTs" / "liver_005_0000.nii.gz",
                          env["raw"] / "labelsTs" / "liver_005.nii.gz", nii)
    dicom = tmp_path / "dicom" / "liver_005"
    write_dicom_series(image, dicom)
    a, b = tmp_path / "a", tmp_path / "b"
    assert predict(env, "-i", nii, "-o", a, "--classifier", env["classifier"]) == 0
    assert "liver_005:" in capsys.readouterr().out
    # the classifier's input is the same preprocessed array for both (tested below): not run twice
    assert predict(env, "-i", dicom, "-o", b, "--no-figures") == 0

    findings = json.loads((a / "findings.json").read_text(encoding="utf-8"))
    n = findings["n_lesions"]
    # a smoke model's output is arbitrary, but its lesions are the tumour components of what it wrote
    from scipy import ndimage

    assert ndimage.label(sitk.GetArrayFromImage(sitk.ReadImage(str(a / "segmentation.nii.gz"))) == 2)[1] == n
    assert {p.name for p in a.iterdir()} == OUTPUTS | {f"lesion_{i:03d}.png" for i in range(1, n + 1)}
    assert {p.name for p in b.iterdir()} == OUTPUTS - {"summary.png"}
    seg_a, seg_b = sitk.ReadImage(str(a / "segmentation.nii.gz")), sitk.ReadImage(str(b / "segmentation.nii.gz"))
    assert same_geometry(seg_a, image)
    assert seg_b.GetSize() == image.GetSize() and np.allclose(seg_b.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayFromImage(seg_a), sitk.GetArrayFromImage(seg_b))

    rows_a, rows_b = read_rows(a / "lesions.csv"), read_rows(b / "lesions.csv")
    assert len(rows_a) == n == len(findings["lesions"])
    assert [r["case"] for r in rows_b] == ["liver_005"] * n
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ra:
            if key not in ("case", "malignancy_prob"):
                assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-3), key
    assert all(0 <= float(r["malignancy_prob"]) <= 1 for r in rows_a)
    assert all(r["malignancy_prob"] == "" for r in rows_b)

    assert findings["case"] == "liver_005" and findings["input"]["format"] == "NIfTI"
    assert findings["models"]["segmentation"]["trainer"] == "LiverSmokeTrainer"
    assert findings["models"]["segmentation"]["folds"] == [0]
    assert findings["models"]["classifier"]["model"] == "hybrid3d" and findings["device"] == "cpu"
    assert findings["postprocessing"]["method"] == "largest liver component"
    assert set(findings["timings_s"]) >= {"read", "preprocess", "network", "postprocess", "lesions", "classify",
                                          "write", "total"}
    dicom_findings = json.loads((b / "findings.json").read_text(encoding="utf-8"))
    assert dicom_findings["input"]["format"] == "DICOM" and dicom_findings["input"]["n_files"] == image.GetDepth()
    seg = sitk.GetArrayFromImage(seg_a)
    assert findings["tumour_volume_ml"] == pytest.approx((seg == 2).sum() * np.prod(image.GetSpacing()) / 1000,
                                                         rel=1e-3)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_real_ct_geometry_round_trip(env, real_dir, tmp_path):
    original = sitk.ReadImage(str(real_dir / "crlm_liver_ct.nii.gz"))
    assert original.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)  # identity: test a rotated copy as well
    rotated = rotated_copy(real_dir / "crlm_liver_ct.nii.gz", tmp_path / "crlm_rot.nii.gz")
    assert not np.allclose(rotated.GetDirection(), original.GetDirection())
    out = tmp_path / "out"
    # no figures: a smoke model marks hundreds of specks on a real CT (figures are tested on phantoms)
    assert predict(env, "-i", tmp_path / "crlm_rot.nii.gz", "-o", out, "--no-figures") == 0
    seg = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    assert same_geometry(seg, rotated)
    findings = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    assert findings["input"]["direction"] == list(rotated.GetDirection())
    assert findings["models"]["classifier"] is None and "no --classifier" in findings["classification"]
    # lesions.csv rounds both centroids to 3 decimals: the mm value is within 0.0005 of the exact one, and the
    # voxel index's rounding (up to 0.0005 per axis) moves the recomputed point by sum_j |D_ij| s_j * 0.0005
    axes = np.abs(np.array(rotated.GetDirection()).reshape(3, 3)) * np.array(rotated.GetSpacing())
    tol = 0.0005 * (1 + axes.sum(axis=1)) + 1e-9
    for row in read_rows(out / "lesions.csv"):
        assert row["malignancy_prob"] == ""
        index = [float(row[f"centroid_{a}_vox"]) for a in "xyz"]
        mm = rotated.TransformContinuousIndexToPhysicalPoint(index)
        got = [float(row[f"centroid_{a}_mm"]) for a in "xyz"]
        assert np.all(np.abs(np.subtract(got, mm)) <= tol), (got, mm, tol)
    # the same voxels under the original geometry: the same segmentation
    out2 = tmp_path / "out2"
    assert predict(env, "-i", real_dir / "crlm_liver_ct.nii.gz", "-o", out2, "--no-figures") == 0
    seg2 = sitk.ReadImage(str(out2 / "segmentation.nii.gz"))
    assert same_geometry(seg2, original)
    assert np.array_equal(sitk.GetArrayFromImage(seg2), sitk.GetArrayFromImage(seg))


def test_batch_with_a_broken_case(env, tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("liver_005_0000.nii.gz", "liver_006_0000.nii.gz"):
        shutil.copy(env["raw"] / "imagesTs" / name, cases / name)
    (cases / "broken_0000.nii.gz").write_bytes(b"\x00" * 500)
    out = tmp_path / "out"
    assert predict(env, "-i", cases, "-o", out, "--no-figures") == 1
    captured = capsys.readouterr()
    assert "2 of 3 case(s) written" in captured.out
    assert "broken" in captured.err and "broken_0000.nii.gz" in captured.err and "cannot read" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["liver_005", "liver_006"]
    for name in ("liver_005", "liver_006"):
        assert {p.name for p in (out / name).iterdir()} == {"segmentation.nii.gz", "lesions.csv", "findings.json"}
    # a rerun without --overwrite skips the finished cases (changing nothing) and tries the broken one again
    before = (out / "liver_005" / "findings.json").read_text(encoding="utf-8")
    assert predict(env, "-i", cases, "-o", out, "--no-figures") == 1
    captured = capsys.readouterr()
    assert "0 of 3 case(s) written" in captured.out and "2 finished before (skipped)" in captured.out
    assert "broken_0000.nii.gz" in captured.err
    assert (out / "liver_005" / "findings.json").read_text(encoding="utf-8") == before


def test_errors_exit_2_and_write_nothing(env, tmp_path, capsys):
    nii = env["raw"] / "imagesTs" / "liver_005_0000.nii.gz"
    out = tmp_path / "out"

    def fails(*argv, expect: str, model=None) -> None:
        args = ["predict", "-m", str(model or env["model"]), "--threads", "1", "--no-progress", *map(str, argv)]
        assert cli_main.main(args) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1, err
        assert not out.exists()

    fails("-i", nii, "-o", out, expect="model folder not found", model=tmp_path / "nope")
    fails("-i", nii, "-o", out, "-chk", "checkpoint_other.pth", expect="no fold_* folder holds checkpoint_other.pth")
    fails("-i", nii, "-o", out, "-f", "3", expect="no checkpoint_final.pth for fold(s) 3 (available: 0)")
    fails("-i", nii, "-o", out, "--classifier", tmp_path / "missing.pt", expect="checkpoint not found")
    mr = tmp_path / "mr.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 900, (8, 32, 32)).astype(np.float32)),
                    str(mr))
    fails("-i", mr, "-o", out, expect=f"{mr}: intensities")
    mixed = tmp_path / "mixed"
    image = sitk.ReadImage(str(nii))
    uids = [write_dicom_series(image, mixed, prefix=p, description=p) for p in ("a", "b")]
    fails("-i", mixed, "-o", out, expect="--series UID")
    assert predict(env, "-i", mixed, "-o", out, "--series", uids[1], "--no-figures") == 0
    assert json.loads((out / "findings.json").read_text(encoding="utf-8"))["input"]["series_uid"] == uids[1]
    capsys.readouterr()
    before = (out / "findings.json").read_text(encoding="utf-8")
    assert cli_main.main(["predict", "-m", str(env["model"]), "-i", str(nii), "-o", str(out)]) == 2
    assert "exists (use --overwrite" in capsys.readouterr().err
    assert (out / "findings.json").read_text(encoding="utf-8") == before
