"""Lesion measurements: exact values on hand-made label maps, and the phantom generator's own lesion table."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.inference.lesions import (
    axial_axis,
    label_lesions,
    max_inplane_distance,
    measure_lesions,
)


def image_like(arr: np.ndarray, spacing=(0.5, 0.8, 2.0), origin=(10.0, -20.0, 30.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def test_box_lesion_exact_values():
    seg = np.zeros((6, 20, 30), np.uint8)
    seg[2:4, 5:8, 10:15] = 2  # 2 slices x 3 rows x 5 columns
    seg[0, 0, 0] = 1  # liver only: not a lesion
    hu = np.full(seg.shape, 50.0, np.float32)
    hu[2, 5:8, 10:15] = 30.0
    hu[3, 5:8, 10:15] = 70.0
    ref = image_like(seg)
    labelled, n = label_lesions(seg, 2)
    (les,) = measure_lesions(labelled, n, hu, ref)
    assert n == 1 and les.lesion_id == 1 and les.n_voxels == 30
    assert les.volume_ml == pytest.approx(30 * 0.5 * 0.8 * 2.0 / 1000)
    # centre to centre: 4 columns x 0.5 mm and 2 rows x 0.8 mm
    assert les.axial_diameter_mm == pytest.approx(math.hypot(4 * 0.5, 2 * 0.8))
    assert les.centroid_index == pytest.approx((12.0, 6.0, 2.5))  # (x, y, z) SimpleITK index
    assert les.centroid_mm == pytest.approx((10 + 12 * 0.5, -20 + 6 * 0.8, 30 + 2.5 * 2.0))
    assert les.mean_hu == pytest.approx(50.0) and les.std_hu == pytest.approx(20.0)
    assert les.small and les.bbox == ((2, 4), (5, 8), (10, 15))


def test_face_connectivity_and_small_flag():
    seg = np.zeros((3, 40, 40), np.uint8)
    seg[1, 2:4, 2:4] = 2
    seg[1, 4:6, 4:6] = 2  # touches the first only diagonally: a second lesion
    yy, xx = np.mgrid[:40, :40]
    seg[1][(yy - 25) ** 2 + (xx - 25) ** 2 <= 36] = 2  # disc of radius 6 voxels = 6 mm
    labelled, n = label_lesions(seg, 2)
    lesions = measure_lesions(labelled, n, np.zeros(seg.shape, np.float32), image_like(seg, spacing=(1, 1, 1)))
    assert n == 3
    big = max(lesions, key=lambda x: x.n_voxels)
    assert big.axial_diameter_mm == pytest.approx(12.0)
    assert not big.small and all(les.small for les in lesions if les is not big)


def test_axial_is_the_plane_across_the_head_foot_axis():
    # a volume stored sagittally: index z runs along patient x, index x along patient z (S)
    direction = (0, 0, 1,
                 0, 1, 0,
                 1, 0, 0)
    assert axial_axis(direction) == 2  # numpy axis 2 = SimpleITK index x
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[1:7, 3, 2] = 2  # 6 voxels along numpy z in one axial plane (x index 2): 5 x 1.5 mm
    seg[2, 3, 2:6] = 2  # along the head-foot axis: not an axial distance
    labelled, n = label_lesions(seg, 2)
    (les,) = measure_lesions(labelled, n, np.zeros(seg.shape, np.float32),
                             image_like(seg, spacing=(3.0, 1.0, 1.5), direction=direction))
    assert les.axial_diameter_mm == pytest.approx(5 * 1.5)
    assert les.axial_slice == 2


def test_max_inplane_distance_hull_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 2)) * [3.0, 1.0]
    brute = max(np.linalg.norm(a - b) for a in pts[::5] for b in pts)
    full = max(np.linalg.norm(pts[:, None] - pts[None], axis=-1).ravel())
    assert max_inplane_distance(pts) == pytest.approx(full)
    assert full >= brute
    line = np.stack([np.arange(30.0), np.zeros(30)], axis=1)  # collinear: no hull
    assert max_inplane_distance(line) == pytest.approx(29.0)
    assert max_inplane_distance(np.zeros((1, 2))) == 0.0


@pytest.mark.slow  # the tiny_phantoms fixture plans and preprocesses with nnU-Net
def test_phantom_ground_truth_matches_the_generator_table(tiny_phantoms):
    """Measured on the phantoms' ground-truth labels, lesions above 1 cm have the table's volume within 10%."""
    from pathlib import Path

    raw = Path(tiny_phantoms["nnUNet_raw"]) / "Dataset990_LiverPhantom"
    with open(raw / "lesions.csv", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    compared = 0
    for case_id in sorted({r["case_id"] for r in table}):
        rows = [r for r in table if r["case_id"] == case_id]
        split = "Tr" if rows[0]["split"] == "train" else "Ts"
        lbl = sitk.ReadImage(str(raw / f"labels{split}" / f"{case_id}.nii.gz"))
        img = sitk.ReadImage(str(raw / f"images{split}" / f"{case_id}_0000.nii.gz"))
        seg, hu = sitk.GetArrayFromImage(lbl), sitk.GetArrayFromImage(img).astype(np.float32)
        labelled, n = label_lesions(seg, 2)
        lesions = {les.lesion_id: les for les in measure_lesions(labelled, n, hu, lbl)}
        owner = {}
        for r in rows:
            vox = tuple(int(round(float(r[f"centroid_{a}_vox"]))) for a in "zyx")
            owner.setdefault(int(labelled[vox]), []).append(r)
        for lid, rs in owner.items():
            if lid == 0 or len(rs) != 1 or float(rs[0]["diameter_mm"]) <= 10:
                continue  # touching lesions form one component; the table has them apart
            r, les = rs[0], lesions[lid]
            assert les.volume_ml == pytest.approx(float(r["volume_ml"]), rel=0.10), (case_id, lid)
            table_mm = [float(r[f"centroid_{a}_mm"]) for a in "xyz"]
            assert np.linalg.norm(np.subtract(les.centroid_mm, table_mm)) < 1.0
            assert 0.4 * float(r["diameter_mm"]) < les.axial_diameter_mm < 2.5 * float(r["diameter_mm"])
            assert les.mean_hu == pytest.approx(float(hu[labelled == lid].mean()), abs=1e-3)
            compared += 1
    assert compared >= 5
