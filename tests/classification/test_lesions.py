"""Lesion table reading, coordinate mapping and the table/component join (both directions)."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_liver.classification.lesions import (
    CaseGeometry,
    LesionTableError,
    TableRow,
    join_lesions,
    physical_to_raw_voxel,
    preprocessed_to_raw,
    raw_component_centroids,
    raw_to_preprocessed,
    read_lesion_table,
    tumour_components,
)
from tests.classification.fakes import sphere


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_table_labels_and_centroids(tmp_path):
    rows = read_lesion_table(write(tmp_path / "t.csv",
                                   "case_id,lesion_id,label,subtype,centroid_z_vox,centroid_y_vox,centroid_x_vox\n"
                                   "a,1,Malignant,hcc,1,2,3\n"
                                   "a,2,benign,,,,\n"
                                   "b,1,0,cyst,4.5,5,6\n"))
    assert [(r.case_id, r.lesion_id, r.label) for r in rows] == [("a", 1, 1), ("a", 2, 0), ("b", 1, 0)]
    assert rows[0].centroid_vox == (1.0, 2.0, 3.0) and rows[1].centroid_vox is None
    assert rows[0].subtype == "hcc"


@pytest.mark.parametrize("text, message", [
    ("case_id,label\na,benign\n", "missing column(s) lesion_id"),
    ("case_id,lesion_id,label\na,1,maybe\n", "label 'maybe'"),
    ("case_id,lesion_id,label\na,x,benign\n", "lesion_id 'x'"),
    ("case_id,lesion_id,label\na,1,benign\na,1,malignant\n", "a/1 appears on lines 2 and 3"),
    ("case_id,lesion_id,label\n", "no lesions"),
])
def test_read_table_errors(tmp_path, text, message):
    with pytest.raises(LesionTableError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_lesion_table(write(tmp_path / "t.csv", text))


def test_components_are_face_connected_and_ordered():
    seg = np.zeros((5, 6, 6), np.int16)
    seg[1, 1, 1] = seg[2, 2, 2] = 2  # diagonal neighbours: two lesions with face connectivity
    seg[3:5, 4:6, 4:6] = 2
    seg[0, 5, 0] = 1  # liver is not tumour
    labelled, comps = tumour_components(seg[None], 2, (2.0, 1.0, 1.0))
    assert [c.n_voxels for c in comps] == [1, 1, 8]
    assert comps[2].centroid == (3.5, 4.5, 4.5)
    assert comps[2].bbox == ((3, 5), (4, 6), (4, 6))
    assert comps[2].volume_ml == pytest.approx(8 * 2e-3)
    assert labelled.max() == 3
    # the same lesions, numbered alike, as nnunet-liver predict finds them
    from nnunet_liver.inference.lesions import label_lesions

    predicted, n = label_lesions(seg, 2)
    np.testing.assert_array_equal(labelled, predicted)
    assert n == len(comps) and labelled.dtype == np.int32


def test_raw_preprocessed_round_trip_with_crop_resample_and_transpose():
    props = {"bbox_used_for_cropping": [[2, 22], [5, 45], [0, 30]],
             "shape_after_cropping_and_before_resampling": (20, 40, 30)}
    shape = (40, 20, 30)  # z upsampled x2, y downsampled x2
    raw = np.array([[2.0, 5.0, 0.0], [12.5, 24.5, 14.5], [21.0, 44.0, 29.0]])
    pre = raw_to_preprocessed(raw, props, [0, 1, 2], shape)
    # nnU-Net/scikit-image convention: new = (old + 0.5) * new_shape / old_shape - 0.5, after the crop shift
    np.testing.assert_allclose(pre[0], [(0.5) * 2 - 0.5, (0.5) * 0.5 - 0.5, 0.0])
    np.testing.assert_allclose(preprocessed_to_raw(pre, props, [0, 1, 2], shape), raw)
    # transposed plans: raw axes (a, b, c) are stored as (c, a, b)
    props_t = {"bbox_used_for_cropping": [[0, 30], [2, 22], [5, 45]],
               "shape_after_cropping_and_before_resampling": (30, 20, 40)}
    pre_t = raw_to_preprocessed(raw, props_t, [2, 0, 1], (30, 20, 40))
    np.testing.assert_allclose(pre_t[:, 0], raw[:, 2])
    np.testing.assert_allclose(preprocessed_to_raw(pre_t, props_t, [2, 0, 1], (30, 20, 40)), raw)


def test_physical_to_raw_voxel():
    sitk_stuff = {"spacing": (0.5, 0.8, 2.0), "origin": (10.0, -5.0, 3.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}
    # voxel (z, y, x) = (2, 3, 4) -> physical x = 10 + 4 * 0.5, y = -5 + 3 * 0.8, z = 3 + 2 * 2
    np.testing.assert_allclose(physical_to_raw_voxel([12.0, -2.6, 7.0], sitk_stuff), [[2, 3, 4]])
    flipped = {**sitk_stuff, "direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)}
    np.testing.assert_allclose(physical_to_raw_voxel([8.0, -7.4, 7.0], flipped), [[2, 3, 4]])


def test_raw_component_numbering_and_instances():
    lab = np.zeros((4, 8, 8), np.uint8)
    lab[1, 1, 1] = 2
    lab[2, 5:7, 5:7] = 2
    assert raw_component_centroids(lab, tumour_label=2) == {1: (1.0, 1.0, 1.0), 2: (2.0, 5.5, 5.5)}
    inst = np.zeros_like(lab)
    inst[2, 5:7, 5:7] = 7
    assert raw_component_centroids(inst, tumour_label=None) == {7: (2.0, 5.5, 5.5)}


def geometry(shape=(10, 20, 20), centres=((3, 5, 5), (7, 14, 14))):
    seg = np.ones(shape, np.int16)
    for c in centres:
        seg[sphere(shape, c, 1.6)] = 2
    _, comps = tumour_components(seg, 2, (2.0, 1.0, 1.0))
    props = {"bbox_used_for_cropping": [[0, s] for s in shape], "shape_after_cropping_and_before_resampling": shape,
             "sitk_stuff": {"spacing": (1.0, 1.0, 2.0), "origin": (0.0, 0.0, 0.0),
                            "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}
    return CaseGeometry(comps, props, shape)


def join(rows, cases, **kw):
    return join_lesions(rows, cases, transpose_forward=[0, 1, 2], spacing=(2.0, 1.0, 1.0), **kw)


def test_join_matches_by_centroid_not_by_id_order():
    cases = {"a": geometry()}
    # the table numbers lesions in another order than scipy's labelling, with slightly off centroids
    rows = [TableRow("a", 1, 1, centroid_vox=(7.2, 13.8, 14.1)), TableRow("a", 2, 0, centroid_vox=(3.0, 5.3, 4.9))]
    report = join(rows, cases)
    assert report.ok, report.describe()
    matched = {les.row.lesion_id: les.component.index for les in report.lesions}
    assert matched == {1: 2, 2: 1}


def test_join_with_physical_centroids_and_raw_numbering():
    cases = {"a": geometry()}
    mm = [TableRow("a", 1, 1, centroid_mm=(5.0, 5.0, 6.0)), TableRow("a", 2, 0, centroid_mm=(14.0, 14.0, 14.0))]
    assert join(mm, cases).ok
    bare = [TableRow("a", 1, 1), TableRow("a", 2, 0)]
    raw = {"a": {1: (3.0, 5.0, 5.0), 2: (7.0, 14.0, 14.0)}}
    report = join(bare, cases, raw_centroids=raw)
    assert report.ok and [les.component.index for les in report.lesions] == [1, 2]
    report = join(bare, cases)
    assert not report.ok and "no centroid in the table" in report.describe()


def test_join_reports_every_mismatch():
    cases = {"a": geometry(), "b": geometry(centres=((3, 5, 5),))}
    rows = [
        TableRow("a", 1, 1, centroid_vox=(3, 5, 5)),  # a's second component is missing from the table
        TableRow("b", 1, 0, centroid_vox=(3, 5, 5)),
        TableRow("b", 2, 1, centroid_vox=(8, 18, 2)),  # no component there
        TableRow("zzz", 1, 1, centroid_vox=(1, 1, 1)),  # unknown case
    ]
    report = join(rows, cases)
    assert not report.ok
    assert report.unknown_cases == ["zzz"]
    assert [r.key for r, _ in report.unmatched_rows] == ["b/2"]
    assert [(cid, c.index) for cid, c, _ in report.unmatched_components] == [("a", 2)]
    text = report.describe()
    assert "unknown case(s) in the table: zzz" in text
    assert "b/2 (no tumour component at its centroid)" in text
    assert "a component at raw voxel (z, y, x) (7.0, 14.0, 14.0)" in text
    assert len(report.lesions) == 2


def test_one_component_is_matched_once():
    cases = {"a": geometry(centres=((3, 5, 5),))}
    rows = [TableRow("a", 1, 1, centroid_vox=(3, 5, 5)), TableRow("a", 2, 0, centroid_vox=(3, 5, 6))]
    report = join(rows, cases)
    assert [les.row.lesion_id for les in report.lesions] == [1]
    assert [r.key for r, _ in report.unmatched_rows] == ["a/2"]
