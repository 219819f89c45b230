"""Crop geometry (centre, size in mm, air padding) and the on-disk crop cache."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nnunet_liver.classification.crops import (
    AIR_HU,
    CropError,
    CropSpec,
    crop_coordinates,
    extract_crop,
    extract_crops,
    load_crop,
    open_preprocessed,
    read_index,
)
from nnunet_liver.classification.lesions import LesionJoinError, read_lesion_table
from tests.classification.fakes import SPACING, write_fake_dataset


def weighted_centre(a):
    idx = np.indices(a.shape).reshape(3, -1)
    w = a.reshape(-1)
    return (idx * w).sum(1) / w.sum()


@pytest.mark.parametrize("size", [16, 17])
def test_bright_voxel_lands_at_the_crop_centre(size):
    img = np.zeros((20, 30, 30), np.float32)
    pos = (9, 13, 17)
    img[pos] = 1000.0
    spacing = (2.0, 1.0, 0.5)
    crop, _, padded = extract_crop(img, spacing, pos, cube_mm=8.0, size=size, pad_hu=0.0)
    assert crop.shape == (size,) * 3 and not padded
    np.testing.assert_allclose(weighted_centre(crop), [(size - 1) / 2] * 3, atol=1e-4)


def test_crop_spans_its_size_in_mm():
    # a volume whose value is the x position in mm: the crop must run over cube_mm around the centre
    spacing = (3.0, 1.5, 0.75)
    x_mm = np.arange(80) * spacing[2]
    img = np.broadcast_to(x_mm, (10, 40, 80)).astype(np.float32)
    centre = (5.0, 20.0, 40.0)
    crop, _, _ = extract_crop(img, spacing, centre, cube_mm=24.0, size=8)
    step = 24.0 / 8
    expected = centre[2] * spacing[2] + (np.arange(8) + 0.5 - 4) * step
    np.testing.assert_allclose(crop[0, 0], expected, atol=1e-4)
    assert np.ptp(crop[:, :, 3]) == 0  # constant along z and y
    coords = crop_coordinates(centre, spacing, 24.0, 8)
    np.testing.assert_allclose(np.diff(coords[0]), step / spacing[0])


def test_border_lesion_is_padded_with_air():
    img = np.full((10, 10, 10), 50.0, np.float32)
    mask = np.zeros_like(img, dtype=np.uint8)
    mask[0:2, 0:2, 0:2] = 1
    crop, mcrop, padded = extract_crop(img, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), cube_mm=10.0, size=10, mask=mask)
    assert padded
    assert crop[0, 0, 0] == AIR_HU and crop[-1, -1, -1] == 50.0
    # samples at -4.5 .. 4.5 voxels: the first four are outside, the fifth (-0.5) blends air and tissue
    np.testing.assert_array_equal(crop[:4, 7, 7], AIR_HU)
    assert crop[4, 7, 7] == pytest.approx((AIR_HU + 50.0) / 2)
    np.testing.assert_array_equal(crop[5:, 7, 7], 50.0)
    assert mcrop.dtype == np.uint8 and mcrop[5, 5, 5] == 1 and mcrop[9, 9, 9] == 0
    # entirely outside: all air, nothing dropped
    crop, mcrop, padded = extract_crop(img, (1.0, 1.0, 1.0), (-50, -50, -50), cube_mm=4.0, size=4, mask=mask)
    assert padded and np.all(crop == AIR_HU) and not mcrop.any()


def test_adaptive_cube_size():
    spec = CropSpec(crop_mm=None)
    assert spec.cube_mm(10.0) == 48.0 and spec.cube_mm(40.0) == 80.0
    assert CropSpec(crop_mm=64).cube_mm(40.0) == 64.0
    with pytest.raises(ValueError):
        CropSpec(crop_mm=-1)


@pytest.fixture
def fake(tmp_path):
    info = write_fake_dataset(tmp_path / "pre", table=tmp_path / "lesions.csv")
    return tmp_path, info


def test_extract_cache_skips_fresh_and_refreshes_changed(fake):
    tmp, info = fake
    data = open_preprocessed(tmp / "pre", 991)
    rows = read_lesion_table(info["table"])
    spec = CropSpec(size=16, crop_mm=24.0)
    out = tmp / "crops"
    first = extract_crops(data, rows, out, spec=spec, progress=False)
    assert (first.written, first.skipped) == (12, 0)
    entries = read_index(out)
    assert len(entries) == 12 and {e.label for e in entries} == {0, 1}
    image, mask = load_crop(out, entries[0])
    assert image.shape == mask.shape == (16, 16, 16)
    # the lesion sits in the middle of its crop, with its HU (0 benign, 140 malignant)
    assert mask[7:9, 7:9, 7:9].all() and not mask[0].any()
    assert image[8, 8, 8] == pytest.approx(140.0 if entries[0].label else 0.0)
    assert json.loads((out / "crops.json").read_text(encoding="utf-8"))["spec"]["crop_mm"] == 24.0

    again = extract_crops(data, rows, out, spec=spec, progress=False)
    assert (again.written, again.skipped) == (0, 12)
    # a changed source file makes its crops stale; other cases stay cached
    src = info["folder"] / "case_03.npz"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = extract_crops(data, rows, out, spec=spec, progress=False)
    assert (third.written, third.skipped) == (2, 10)
    # other crop parameters: every crop again
    fourth = extract_crops(data, rows, out, spec=CropSpec(size=16, crop_mm=30.0), progress=False)
    assert fourth.written == 12


def test_extract_is_strict_and_writes_nothing_on_mismatch(tmp_path):
    info = write_fake_dataset(tmp_path / "pre", table=tmp_path / "lesions.csv", drop_rows=[("case_01", 2)])
    data = open_preprocessed(tmp_path / "pre", 991)
    rows = read_lesion_table(info["table"])
    with pytest.raises(LesionJoinError, match=r"1 tumour component\(s\) missing from the table: case_01 component"):
        extract_crops(data, rows, tmp_path / "crops", progress=False)
    assert not (tmp_path / "crops").exists()
    warnings = []
    res = extract_crops(data, rows, tmp_path / "crops", spec=CropSpec(size=8), strict=False, progress=False,
                        log=warnings.append)
    assert len(res.lesions) == 11 and "skipping 1 unmatched" in warnings[0]


def test_non_hu_plans_are_refused(tmp_path):
    write_fake_dataset(tmp_path / "pre", normalization="CTNormalization")
    with pytest.raises(CropError, match="normalised with CTNormalization.*no Hounsfield units"):
        open_preprocessed(tmp_path / "pre", 991)


def test_missing_dataset_and_configuration(tmp_path):
    with pytest.raises(CropError, match="no Dataset992_"):
        open_preprocessed(tmp_path, 992)
    write_fake_dataset(tmp_path / "pre")
    with pytest.raises(CropError, match="no configuration '2d'"):
        open_preprocessed(tmp_path / "pre", 991, configuration="2d")


def test_spacing_is_read_from_plans(fake):
    tmp, _ = fake
    assert open_preprocessed(tmp / "pre", 991).spacing == list(SPACING)


def test_instance_maps_split_touching_lesions(tmp_path):
    import SimpleITK as sitk

    from nnunet_liver.classification.crops import raw_reader
    from tests.classification.fakes import OFFSET, SHAPE

    # two touching lesions: one tumour component, two instances
    cases = {"case_00": [((6, 12, 9), 0), ((6, 12, 13), 1)], "case_01": [((4, 7, 7), 1), ((8, 16, 16), 0)]}
    info = write_fake_dataset(tmp_path / "pre", cases)
    inst_dir = tmp_path / "instances"
    inst_dir.mkdir()
    raw_shape = tuple(s + 2 * o for s, o in zip(SHAPE, OFFSET))
    zz, yy, xx = np.indices(raw_shape)
    for cid, lesions in cases.items():
        inst = np.zeros(raw_shape, np.uint8)
        for k, (c, _) in enumerate(lesions, start=1):
            c = [a + o for a, o in zip(c, OFFSET)]
            inst[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 2.2 ** 2) & (inst == 0)] = k
        sitk.WriteImage(sitk.GetImageFromArray(inst), str(inst_dir / f"{cid}.nii.gz"))
    table = tmp_path / "t.csv"
    table.write_text("case_id,lesion_id,label\ncase_00,1,benign\ncase_00,2,malignant\ncase_01,1,malignant\n"
                     "case_01,2,benign\n", encoding="utf-8")
    data = open_preprocessed(tmp_path / "pre", 991)
    rows = read_lesion_table(table)
    with pytest.raises(LesionJoinError):  # components cannot separate the touching pair
        extract_crops(data, rows, tmp_path / "c1", progress=False)
    res = extract_crops(data, rows, tmp_path / "c2", spec=CropSpec(size=8, crop_mm=12.0), progress=False,
                        instance_maps=raw_reader(inst_dir, ".nii.gz"))
    assert [les.key for les in res.lesions] == ["case_00/1", "case_00/2", "case_01/1", "case_01/2"]
    a, b = (les.component for les in res.lesions[:2])
    assert a.centroid[2] < b.centroid[2] and a.n_voxels > 10 and b.n_voxels > 10
    # an instance that the table lacks is reported, by id
    table.write_text("case_id,lesion_id,label\ncase_00,1,benign\ncase_01,1,malignant\ncase_01,2,benign\n",
                     encoding="utf-8")
    with pytest.raises(LesionJoinError, match="case_00 component"):
        extract_crops(data, read_lesion_table(table), tmp_path / "c3", progress=False,
                      instance_maps=raw_reader(inst_dir, ".nii.gz"))
    assert info["folder"].is_dir()
