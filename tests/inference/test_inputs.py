"""Reading cases: files, DICOM series, folders of cases, and the refusal of anything that is not a CT."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.inference.inputs import (
    CaseInput,
    InputError,
    case_name,
    check_ct,
    discover_cases,
    read_case,
)
from tests.inference.helpers import write_dicom_series


def ct_image(shape=(6, 24, 20), spacing=(0.8, 0.7, 2.5), origin=(-10.0, 5.0, 100.0), seed=0) -> sitk.Image:
    """Air around a water-like body with some fat: a small valid CT."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, np.int16)
    arr[:, 4:-4, 4:-4] = (40 + rng.normal(0, 10, (shape[0], shape[1] - 8, shape[2] - 8))).astype(np.int16)
    arr[:, 6:9, 6:9] = -100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def file_case(path) -> CaseInput:
    return CaseInput(case_name(path), path, "file")


def test_nifti_and_dicom_read_the_same_volume(tmp_path):
    img = ct_image()
    sitk.WriteImage(img, str(tmp_path / "ct_0000.nii.gz"))
    uid = write_dicom_series(img, tmp_path / "dicom")
    (nii,), batch, _ = discover_cases(tmp_path / "ct_0000.nii.gz")
    (dcm,), batch2, _ = discover_cases(tmp_path / "dicom")
    assert not batch and not batch2 and nii.name == "ct" and dcm.kind == "dicom"
    a, b = read_case(nii), read_case(dcm)
    assert np.array_equal(a.array, b.array) and a.array.dtype == np.float32
    assert b.image.GetSpacing() == pytest.approx(img.GetSpacing())
    assert b.image.GetOrigin() == pytest.approx(img.GetOrigin())
    assert b.info["format"] == "DICOM" and b.info["series_uid"] == uid and b.info["n_files"] == 6
    assert a.info["format"] == "NIfTI"


def test_several_series_need_a_choice(tmp_path):
    folder = tmp_path / "mixed"
    uid_a = write_dicom_series(ct_image(seed=1), folder, description="portal venous", prefix="a")
    uid_b = write_dicom_series(ct_image(seed=2), folder, description="arterial", prefix="b")
    (case,), _, _ = discover_cases(folder)
    with pytest.raises(InputError) as e:
        read_case(case)
    msg = str(e.value)
    assert str(folder) in msg and uid_a in msg and uid_b in msg and "--series" in msg and "arterial" in msg
    (chosen,), _, _ = discover_cases(folder, series=uid_b)
    vol = read_case(chosen)
    assert vol.info["series_uid"] == uid_b
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ct_image(seed=2)).astype(np.float32))
    with pytest.raises(InputError, match="no DICOM series 1.2.3"):
        read_case(CaseInput("x", folder, "dicom", "1.2.3"))


@pytest.mark.parametrize("problem, kwargs, expected", [
    ("no rescale", dict(rescale=False), "RescaleSlope/RescaleIntercept"),
    ("MR", dict(modality="MR"), "modality MR, not CT"),
    ("missing slice", dict(skip=(3,)), "slice spacing varies"),
])
def test_bad_dicom_is_refused(tmp_path, problem, kwargs, expected):
    folder = tmp_path / "series"
    write_dicom_series(ct_image(), folder, **kwargs)
    (case,), _, _ = discover_cases(folder)
    with pytest.raises(InputError, match=expected) as e:
        read_case(case)
    assert str(folder) in str(e.value)


def test_not_a_ct(tmp_path):
    mr = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 800, (6, 20, 20)).astype(np.float32))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    with pytest.raises(InputError, match="no negative values") as e:
        read_case(file_case(tmp_path / "mr.nii.gz"))
    assert str(tmp_path / "mr.nii.gz") in str(e.value)
    no_air = sitk.GetImageFromArray(np.full((6, 20, 20), -100, np.int16))
    with pytest.raises(InputError, match="no air"):
        check_ct(no_air, "x")
    flat = sitk.GetImageFromArray(np.full((1, 20, 20), -1000, np.int16))  # one slice
    with pytest.raises(InputError, match="2D image"):
        check_ct(flat, "x")
    with pytest.raises(InputError, match="2D image"):
        check_ct(sitk.GetImageFromArray(np.full((20, 20), -1000, np.int16)), "x")
    rgb = sitk.GetImageFromArray(np.zeros((6, 20, 20, 3), np.uint8), isVector=True)
    with pytest.raises(InputError, match="colour or vector"):
        check_ct(rgb, "x")


def test_skewed_direction_and_unreadable_files(tmp_path):
    img = ct_image()
    img.SetDirection((1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "skew.mha"))  # MetaImage keeps a skewed matrix (NIfTI would coerce it)
    with pytest.raises(InputError, match="not orthonormal") as e:
        read_case(file_case(tmp_path / "skew.mha"))
    assert "skew.mha" in str(e.value)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image" * 10)
    with pytest.raises(InputError, match="cannot read") as e:
        read_case(file_case(tmp_path / "broken.nii.gz"))
    assert "broken.nii.gz" in str(e.value) and "Exception thrown" not in str(e.value)
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported file type"):
        discover_cases(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        discover_cases(tmp_path / "missing.nii.gz")


def test_folder_of_cases(tmp_path):
    sitk.WriteImage(ct_image(), str(tmp_path / "a_0000.nii.gz"))
    sitk.WriteImage(ct_image(), str(tmp_path / "b.mha"))
    write_dicom_series(ct_image(), tmp_path / "c")
    (tmp_path / "README.txt").write_text("x", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    cases, batch, notes = discover_cases(tmp_path)
    assert batch and [(c.name, c.kind) for c in cases] == [("a", "file"), ("b", "file"), ("c", "dicom")]
    assert notes and "README.txt" in notes[0]
    with pytest.raises(InputError, match="--series"):
        discover_cases(tmp_path, series="1.2.3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        discover_cases(tmp_path / "empty")


def test_output_folder_over_the_input_is_refused(tmp_path):
    """--overwrite replaces the output folder: one that is, or holds, the input is refused before anything."""
    import subprocess
    import sys

    import numpy as np
    import SimpleITK as sitk

    case_dir = tmp_path / "p1"
    case_dir.mkdir()
    img = sitk.GetImageFromArray(np.full((4, 8, 8), -1000, np.int16))
    ct = case_dir / "ct.nii.gz"
    sitk.WriteImage(img, str(ct))
    for out in (case_dir, tmp_path):
        r = subprocess.run([sys.executable, "-m", "nnunet_liver.cli.main", "predict", "-i", str(ct), "-o", str(out),
                            "-m", str(tmp_path / "no_model"), "--overwrite"], capture_output=True, text=True)
        assert r.returncode == 2 and "would hold the input" in r.stderr, r.stderr
    assert ct.is_file()
