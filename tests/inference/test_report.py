"""Figures and tables of a predicted case: radiological orientation whatever the storage order, files written."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from nnunet_liver.inference.lesions import label_lesions, measure_lesions
from nnunet_liver.inference.report import (
    AXIAL,
    CORONAL,
    RED,
    axis_map,
    lesion_rows,
    oriented_slice,
    write_lesion_csv,
    write_lesion_overlay,
    write_summary_figure,
)

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def marked_volume() -> np.ndarray:
    """(z, y, x) = (5, 6, 7) in LPS storage; distinct values everywhere, so any flip or transpose shows."""
    return np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)


def test_axis_map():
    assert axis_map(IDENTITY) == [(2, 1.0), (1, 1.0), (0, 1.0)]
    assert axis_map((-1, 0, 0, 0, -1, 0, 0, 0, 1)) == [(2, 1.0), (1, -1.0), (0, -1.0)]
    # stored sagittally: index x runs along S, index z along L
    assert axis_map((0, 0, 1, 0, 1, 0, 1, 0, 0)) == [(0, 1.0), (1, 1.0), (2, 1.0)]


@pytest.mark.parametrize("view", [AXIAL, CORONAL])
def test_same_patient_same_view_in_any_storage_order(view):
    lps = marked_volume()
    spacing = (3.0, 2.0, 1.0)
    ref, ref_sp, _ = oriented_slice(lps, axis_map(IDENTITY), spacing, index=2, **view)
    # the same patient stored RAS-like (x and y flipped): slice index along the normal unchanged for axial,
    # mirrored for coronal (y flipped)
    ras = lps[:, ::-1, ::-1]
    k = 2 if view is AXIAL else lps.shape[1] - 1 - 2
    out, sp, _ = oriented_slice(ras, axis_map((-1, 0, 0, 0, -1, 0, 0, 0, 1)), spacing, index=k, **view)
    if view is CORONAL:  # index 2 of the LPS volume along y is the coronal plane; compare the same plane
        ref, ref_sp, _ = oriented_slice(lps, axis_map(IDENTITY), spacing, index=lps.shape[1] - 1 - k, **view)
    assert np.array_equal(out, ref) and sp == ref_sp
    # stored with axes permuted (numpy (x, y, z) order: the direction says index x runs along S)
    perm = np.ascontiguousarray(lps.transpose(2, 1, 0))
    index = 2 if view is AXIAL else 2
    out, sp, _ = oriented_slice(perm, axis_map((0, 0, 1, 0, 1, 0, 1, 0, 0)), spacing[::-1], index=index, **view)
    ref2, ref2_sp, _ = oriented_slice(lps, axis_map(IDENTITY), spacing, index=index, **view)
    assert np.array_equal(out, ref2) and sp == ref2_sp


def test_axial_view_is_radiological():
    vol = np.zeros((3, 10, 12), np.float32)
    vol[1, 0, 0] = 1  # anterior (y = 0) and patient right (x = 0) in LPS
    out, _, _ = oriented_slice(vol, axis_map(IDENTITY), (1, 1, 1), index=1, **AXIAL)
    assert out[0, 0] == 1  # top left: anterior up, patient right on the viewer's left
    out, _, _ = oriented_slice(vol, axis_map(IDENTITY), (1, 1, 1), index=0, **CORONAL)
    assert out[1, 0] == 1  # coronal: head (higher z) up, so z = 1 of 3 is the middle row


def test_files(tmp_path):
    import SimpleITK as sitk
    from PIL import Image

    seg = np.zeros((6, 40, 50), np.uint8)
    seg[1:5, 5:35, 5:45] = 1
    seg[2:4, 10:16, 10:20] = 2
    seg[3, 25:27, 30:32] = 2
    image = np.where(seg == 1, 60.0, np.where(seg == 2, 10.0, -1000.0)).astype(np.float32)
    ref = sitk.GetImageFromArray(image)
    ref.SetSpacing((0.8, 0.8, 3.0))
    labelled, n = label_lesions(seg, 2)
    lesions = measure_lesions(labelled, n, image, ref)
    probs = {1: 0.25, 2: 0.9}
    rows = lesion_rows("case", lesions, probs)
    write_lesion_csv(tmp_path / "lesions.csv", rows)
    with open(tmp_path / "lesions.csv", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert [float(r["malignancy_prob"]) for r in back] == [0.25, 0.9] and back[1]["small"] == "1"
    write_lesion_csv(tmp_path / "none.csv", lesion_rows("case", lesions, None))
    with open(tmp_path / "none.csv", encoding="utf-8") as f:
        assert [r["malignancy_prob"] for r in csv.DictReader(f)] == ["", ""]
    common = dict(case="case", image=image, seg=seg, labelled=labelled, direction=IDENTITY,
                  spacing_zyx=(3.0, 0.8, 0.8), tumour_label=2)
    write_lesion_overlay(tmp_path / "lesion_001.png", lesion=lesions[0], probability=0.25, **common)
    write_summary_figure(tmp_path / "summary.png", lesions=lesions, probabilities=probs, liver_ml=1.0,
                         tumour_ml=0.1, **common)
    for name in ("lesion_001.png", "summary.png"):
        px = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert px.shape[0] > 200 and px.shape[1] > 400
        assert (px == RED).all(axis=-1).sum() > 20  # the lesion's contour is drawn
