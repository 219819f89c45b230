"""Shared converter pieces: label and value checks, geometry, the case-by-case writer, image digests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.data.converters import (
    CaseJob,
    ConversionError,
    geometry_difference,
    label_array,
    read_image,
    write_cases,
)
from nnunet_liver.data.images import ImageError, check_file
from nnunet_liver.data.io import OutputExistsError
from nnunet_liver.data.merge import image_digest
from nnunet_liver.data.submission import keep_largest_liver
from tests.data.converters.fixtures import tree_hashes, write_nifti

DATASET_JSON = dict(name="T", description="test")


def image(arr: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_label_array_accepts_integer_values_of_any_type(dtype):
    arr = np.array([[[0, 1], [2, 1]]], dtype=dtype)
    out = label_array(image(arr), "x.nii")
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


@pytest.mark.parametrize("value, message", [(0.5, "non-integer values"), (np.nan, "NaN values"),
                                            (3, "unknown label value(s) 3 (expected 0 background"),
                                            (-1, "unknown label value(s) -1"), (np.inf, "unknown label value(s) inf")])
def test_label_array_refuses(value, message):
    arr = np.zeros((2, 2, 2), np.float32)
    arr[1, 1, 1] = value
    with pytest.raises(ConversionError) as e:
        label_array(image(arr), "seg.nii")
    assert str(e.value).startswith("seg.nii: ") and message in str(e.value)


def test_nan_in_nifti_is_found_although_simpleitk_hides_it(tmp_path):
    arr = np.zeros((70, 4, 3), np.float32)
    write_nifti(arr, tmp_path / "ok.nii")
    check_file(tmp_path / "ok.nii")
    arr[69, 3, 2] = np.nan
    for name in ("nan.nii", "nan.nii.gz"):
        write_nifti(arr, tmp_path / name)
        assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name)))).any()
        with pytest.raises(ImageError, match=f"{name}: holds 1 NaN voxel value"):
            check_file(tmp_path / name)
    with pytest.raises(ConversionError, match="nan.nii.gz: holds 1 NaN voxel value.*a segmentation needs finite"):
        read_image(tmp_path / "nan.nii.gz", "segmentation")
    arr[69, 3, 2] = -np.inf
    arr[0, 0, 0] = np.nan
    write_nifti(arr, tmp_path / "inf.nii")
    with pytest.raises(ImageError, match="holds 1 NaN and 1 infinite voxel value"):
        check_file(tmp_path / "inf.nii")


def test_geometry_difference():
    a = image(np.zeros((2, 3, 4), np.uint8))
    b = image(np.zeros((2, 3, 4), np.uint8))
    assert geometry_difference(a, b) is None
    b.SetSpacing((1.0, 1.0, 2.00001))
    assert geometry_difference(a, b) is None  # float noise of a header
    b.SetSpacing((1.0, 1.0, 2.5))
    assert geometry_difference(a, b).startswith("spacing (1.0, 1.0, 2.0) differs from (1.0, 1.0, 2.5)")
    b.SetSpacing((1.0, 1.0, 2.0))
    b.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert geometry_difference(a, b).startswith("direction")
    assert geometry_difference(a, image(np.zeros((2, 3, 5), np.uint8))).startswith("shape (4, 3, 2) differs from "
                                                                                  "(5, 3, 2)")


# ------------------------------------------------------------------------------------------------------
# write_cases


def tiny_writer(job: CaseJob, staging: Path) -> dict:
    """Writes a 2x2x2 image and label whose values are ``job.payload``; payload "bad" fails."""
    if job.payload == "bad":
        raise ConversionError(f"{job.case_id}: bad source")
    (staging / "imagesTr").mkdir()
    (staging / "labelsTr").mkdir()
    sitk.WriteImage(image(np.full((2, 2, 2), job.payload, np.int16)),
                    str(staging / f"imagesTr/{job.case_id}_0000.nii.gz"))
    sitk.WriteImage(image(np.ones((2, 2, 2), np.uint8)), str(staging / f"labelsTr/{job.case_id}.nii.gz"))
    return {"value": job.payload}


def jobs(values) -> list[CaseJob]:
    return [CaseJob(f"c_{i}", "train", fingerprint=str(v), payload=v) for i, v in enumerate(values)]


def write(folder: Path, values, **kw):
    return write_cases(folder, jobs(values), tiny_writer, kind="test", header={}, dataset_json=DATASET_JSON,
                       progress=False, **kw)


def test_writer_records_and_resumes(tmp_path):
    ds = tmp_path / "Dataset001_T"
    result = write(ds, [1, 2])
    assert result.converted == ["c_0", "c_1"] and (ds / "dataset.json").is_file()
    state = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))
    assert state["written_by"] == "test" and state["cases"]["c_1"]["value"] == 2
    assert state["cases"]["c_1"]["files"] == ["imagesTr/c_1_0000.nii.gz", "labelsTr/c_1.nii.gz"]
    result = write(ds, [1, 5])  # c_1's source changed
    assert result.converted == ["c_1"] and result.skipped == ["c_0"]
    with pytest.raises(ConversionError, match=r"holds case\(s\) not in this source \(c_1\); use --overwrite"):
        write(ds, [1])
    assert write(ds, [1], overwrite=True).converted == ["c_0"]
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == ["c_0_0000.nii.gz"]
    with pytest.raises(OutputExistsError, match="written by 'test'"):
        write_cases(ds, jobs([1]), tiny_writer, kind="other", header={}, dataset_json=DATASET_JSON, progress=False)


def test_failed_overwrite_keeps_the_old_dataset(tmp_path):
    ds = tmp_path / "Dataset001_T"
    write(ds, [1, 2, 3])
    before = tree_hashes(tmp_path)
    with pytest.raises(ConversionError, match="c_1: bad source"):
        write(ds, [4, "bad", 6], overwrite=True)
    assert tree_hashes(tmp_path) == before  # the old data set, untouched, and nothing else


@pytest.mark.parametrize("num_processes", [1, 2])
def test_failing_case_leaves_only_whole_cases(tmp_path, num_processes):
    ds = tmp_path / "Dataset001_T"
    with pytest.raises(ConversionError, match="c_2: bad source"):
        write(ds, [1, 2, "bad", 4], num_processes=num_processes)
    assert not (ds / "dataset.json").exists()
    assert [p for p in tmp_path.rglob("*") if ".partial-" in p.name] == []
    cases = json.loads((ds / "case_mapping.json").read_text(encoding="utf-8"))["cases"] if ds.exists() else {}
    if num_processes == 1:
        assert sorted(cases) == ["c_0", "c_1"]
    images = sorted(p.name for p in (ds / "imagesTr").iterdir()) if cases else []
    assert images == sorted(f"{c}_0000.nii.gz" for c in cases)  # whole cases only, each recorded
    result = write(ds, [1, 2, 3, 4], num_processes=num_processes)
    assert set(result.converted) == {"c_0", "c_1", "c_2", "c_3"} - set(cases) and (ds / "dataset.json").is_file()


# ------------------------------------------------------------------------------------------------------
# merge digests, submission post-processing


def test_image_digest_compares_values_not_storage(tmp_path):
    arr = np.arange(2 * 3 * 40).reshape(40, 3, 2).astype(np.int16) - 100
    write_nifti(arr, tmp_path / "a.nii.gz")
    write_nifti(arr.astype(np.float32), tmp_path / "b.nii")
    write_nifti(arr, tmp_path / "c.nii.gz", spacing=(0.75, 0.75, 2.5))
    arr[39, 2, 1] += 1
    write_nifti(arr, tmp_path / "d.nii.gz")
    a, b, c, d = (image_digest(tmp_path / f"{x}.nii{'' if x == 'b' else '.gz'}") for x in "abcd")
    assert a == b and a != c and a != d


def test_keep_largest_liver():
    lab = np.zeros((5, 8, 8), np.uint8)
    lab[1:4, 1:5, 1:5] = 1
    lab[2, 2, 2] = 2
    lab[0, 7, 7] = 1
    lab[4, 7, 6:8] = 2  # tumour outside the liver component
    out = keep_largest_liver(lab)
    expected = lab.copy()
    expected[0, 7, 7] = 0
    expected[4, 7, 6:8] = 0
    assert np.array_equal(out, expected)
    assert keep_largest_liver(np.zeros((2, 2, 2), np.uint8)).sum() == 0


def test_source_inside_the_output_is_refused_before_overwrite_can_delete_it(tmp_path):
    from nnunet_liver.data.converters.lits import convert_lits
    from tests.data.converters.fixtures import make_lits

    src = make_lits(tmp_path / "raw" / "Dataset501_LiTS" / "download", batches=False, tests=0)
    before = tree_hashes(src)
    with pytest.raises(ConversionError, match="must not be inside the output folder"):
        convert_lits(src, tmp_path / "raw", overwrite=True, progress=False)
    assert tree_hashes(src) == before
