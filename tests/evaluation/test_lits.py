"""LiTS metrics: hand-computed values, an independent implementation (medpy), empty-mask conventions,
lesion detection, tumour burden, global vs per-case Dice, label reading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_liver.evaluation import lits


def cube(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, centre, spacing))
    return d2 <= radius ** 2


def blobs(seed: int, shape=(24, 30, 28)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.binary_dilation(rng.random(shape) > 0.985, iterations=2)


# ---------------------------------------------------------------------------------------------- surfaces


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_surface_equals_scipy_erosion(connectivity):
    m = blobs(0)
    m[0, :6, :6] = True  # touches the border: outside counts as background
    structure = ndimage.generate_binary_structure(3, connectivity)
    expected = m ^ ndimage.binary_erosion(m, structure)
    np.testing.assert_array_equal(lits.surface(m, connectivity), expected)


def test_surface_2d():
    m = cube((6, 7), (1, 1), (5, 6))
    expected = m ^ ndimage.binary_erosion(m, ndimage.generate_binary_structure(2, 2))
    np.testing.assert_array_equal(lits.surface(m, 2), expected)


def test_bounding_box():
    m = np.zeros((10, 12, 14), np.uint8)
    m[2:5, 3, 7:9] = 2
    assert lits.bounding_box(m) == (slice(2, 5), slice(3, 4), slice(7, 9))
    assert lits.bounding_box(m, margin=3) == (slice(0, 8), slice(0, 7), slice(4, 12))
    assert lits.bounding_box(np.zeros((3, 4), bool)) is None


# ---------------------------------------------------------------------------------------------- overlap


def test_overlap_of_half_overlapping_cubes():
    shape = (20, 20, 20)
    ref = cube(shape, (0, 0, 0), (10, 10, 10))  # 1000 voxels
    pred = cube(shape, (0, 0, 5), (10, 10, 15))  # 1000 voxels, 500 shared
    m = lits.binary_metrics(ref, pred, (1, 1, 1), distances=False)
    assert m["dice"] == 0.5
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["voe"] == pytest.approx(2 / 3)
    assert m["rvd"] == 0.0
    assert m["sensitivity"] == 0.5
    assert m["specificity"] == pytest.approx((8000 - 1500) / (8000 - 1000))
    assert (m["reference_voxels"], m["prediction_voxels"], m["intersection_voxels"]) == (1000, 1000, 500)


def test_overlap_of_nested_cubes_and_total_voxels():
    shape = (20, 20, 20)
    ref = cube(shape, (0, 0, 0), (10, 10, 10))  # 1000
    pred = cube(shape, (0, 0, 0), (10, 10, 12))  # 1200 containing ref
    m = lits.binary_metrics(ref, pred, (1, 1, 1), distances=False, total_voxels=100_000)
    assert m["dice"] == pytest.approx(2000 / 2200)
    assert m["iou"] == pytest.approx(1000 / 1200)
    assert m["voe"] == pytest.approx(200 / 1200)
    assert m["rvd"] == pytest.approx(0.2)
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == pytest.approx((100_000 - 1200) / (100_000 - 1000))


# ---------------------------------------------------------------------------------------------- distances


@pytest.mark.parametrize("axis,k", [(0, 3), (2, 2), (1, 1)])
def test_shifted_cube_hausdorff_is_shift_times_spacing(axis, k):
    spacing = (2.5, 0.7, 0.9)
    shape = (24, 24, 24)
    ref = cube(shape, (4, 4, 4), (12, 12, 12))
    lo, hi = [4, 4, 4], [12, 12, 12]
    lo[axis] += k
    hi[axis] += k
    pred = cube(shape, lo, hi)
    for method in ("kdtree", "edt"):
        m = lits.binary_metrics(ref, pred, spacing, method=method)
        assert m["msd"] == pytest.approx(k * spacing[axis], abs=1e-9)
        assert 0 < m["assd"] < m["rmsd"] < m["msd"]


def test_identical_masks_have_zero_distances():
    m = ball((20, 20, 20), (10, 9, 11), 6)
    out = lits.binary_metrics(m, m, (1.5, 0.8, 0.8))
    assert out["dice"] == 1.0 and out["rvd"] == 0.0
    assert out["assd"] == out["rmsd"] == out["msd"] == out["hd95"] == 0.0


def test_sphere_pair_matches_medpy():
    binary = pytest.importorskip("medpy.metric.binary")
    spacing = (2.0, 0.75, 0.9)
    shape = (30, 48, 44)
    ref = ball(shape, (15, 24, 22), 14.0, spacing)
    pred = ball(shape, (14, 26, 21), 12.5, spacing) | cube(shape, (12, 5, 20), (14, 10, 22))  # with a spur
    m = lits.binary_metrics(ref, pred, spacing)
    # connectivity=2: the LiTS scorer's 18-neighbourhood surfaces; medpy pools both directions as LiTS does.
    assert m["msd"] == pytest.approx(binary.hd(pred, ref, spacing, connectivity=2), abs=1e-9)
    assert m["hd95"] == pytest.approx(binary.hd95(pred, ref, spacing, connectivity=2), abs=1e-9)
    assert m["assd"] == pytest.approx(binary.assd(pred, ref, spacing, connectivity=2), abs=1e-9)
    assert m["dice"] == pytest.approx(binary.dc(pred, ref), abs=1e-12)
    assert m["iou"] == pytest.approx(binary.jc(pred, ref), abs=1e-12)
    assert m["rvd"] == pytest.approx(binary.ravd(pred, ref), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(binary.sensitivity(pred, ref), abs=1e-12)
    assert m["specificity"] == pytest.approx(binary.specificity(pred, ref), abs=1e-12)


def test_kdtree_and_edt_give_the_same_distances():
    spacing = (1.7, 0.6, 0.8)
    ref, pred = blobs(1), blobs(2)
    a = np.sort(np.concatenate(lits.surface_distances(ref, pred, spacing, method="kdtree")))
    b = np.sort(np.concatenate(lits.surface_distances(ref, pred, spacing, method="edt")))
    np.testing.assert_allclose(a, b, atol=1e-9)
    d = lits.distance_metrics(*lits.surface_distances(ref, pred, spacing))
    assert d["rmsd"] == pytest.approx(math.sqrt(np.mean(b ** 2)))
    assert d["hd95"] == pytest.approx(np.percentile(b, 95))


def test_distances_ignore_empty_space_around_the_masks():
    spacing = (1.2, 0.9, 0.7)
    small = (ball((16, 16, 16), (8, 8, 8), 5), ball((16, 16, 16), (7, 8, 9), 4))
    large = tuple(np.pad(m, ((30, 5), (0, 40), (3, 0))) for m in small)
    a = lits.binary_metrics(*small, spacing)
    b = lits.binary_metrics(*large, spacing, total_voxels=small[0].size)
    assert a == b


# ---------------------------------------------------------------------------------------------- empty masks


def test_empty_reference_and_prediction():
    z = np.zeros((8, 8, 8), bool)
    m = lits.binary_metrics(z, z, (1, 1, 1))
    assert (m["dice"], m["iou"], m["voe"], m["rvd"]) == (1.0, 1.0, 0.0, 0.0)
    assert m["assd"] == m["rmsd"] == m["msd"] == m["hd95"] == 0.0


def test_empty_reference_nonempty_prediction():
    z = np.zeros((8, 8, 8), bool)
    p = cube(z.shape, (2, 2, 2), (4, 4, 4))
    m = lits.binary_metrics(z, p, (1, 1, 1))
    assert (m["dice"], m["iou"], m["voe"]) == (0.0, 0.0, 1.0)
    assert math.isnan(m["rvd"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx((512 - 8) / 512)
    assert all(math.isnan(m[k]) for k in lits.DISTANCE_METRICS)


def test_nonempty_reference_empty_prediction():
    z = np.zeros((8, 8, 8), bool)
    r = cube(z.shape, (2, 2, 2), (4, 4, 4))
    m = lits.binary_metrics(r, z, (1, 1, 1))
    assert (m["dice"], m["iou"], m["voe"], m["rvd"], m["sensitivity"], m["specificity"]) == (0, 0, 1, -1, 0, 1)
    assert all(math.isnan(m[k]) for k in lits.DISTANCE_METRICS)


def test_case_without_tumour_anywhere_and_blank_case():
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[2:8, 2:10, 2:10] = 1
    case = lits.evaluate_case(ref, ref.copy(), (2.0, 1.0, 1.0))
    assert case["tumour"]["dice"] == 1.0 and case["tumour"]["hd95"] == 0.0
    assert case["liver"]["dice"] == 1.0
    assert case["lesions"]["detection"]["iou>0.5"] == dict(tp=0, fp=0, fn=0)
    assert case["tumour_burden"] == dict(reference=0.0, prediction=0.0, error=0.0)
    blank = lits.evaluate_case(np.zeros((5, 6, 7), np.uint8), np.zeros((5, 6, 7), np.uint8), (1, 1, 1))
    assert blank["liver"]["dice"] == 1.0 and blank["liver"]["msd"] == 0.0
    assert math.isnan(blank["tumour_burden"]["error"])
    agg = lits.aggregate({"a": case, "b": blank})
    assert agg["tumour_burden"]["n"] == 1 and agg["tumour_burden"]["n_undefined"] == 1
    assert agg["lesion_detection"]["iou>0.5"]["precision"] == 0.0  # the scorer's 0/0 convention


def test_aggregate_uses_nanmean_and_counts_undefined():
    shape = (12, 12, 12)
    ref = np.zeros(shape, np.uint8)
    ref[2:10, 2:10, 2:10] = 1
    with_tumour = ref.copy()
    with_tumour[4:6, 4:6, 4:6] = 2
    hit = lits.evaluate_case(with_tumour, with_tumour, (1, 1, 1))
    missed = lits.evaluate_case(with_tumour, ref, (1, 1, 1))
    agg = lits.aggregate({"hit": hit, "missed": missed})
    hd = agg["tumour"]["metrics"]["hd95"]
    assert (hd["mean"], hd["n"], hd["n_nan"]) == (0.0, 1, 1)
    assert agg["tumour"]["dice_per_case"] == 0.5


# ---------------------------------------------------------------------------------------------- lesions


def liver_with_lesions(shape, lesions) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[1:-1, 1:-1, 1:-1] = 1
    for lo, hi in lesions:
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = 2
    return out


def test_lesion_detection_precision_recall_at_both_thresholds():
    shape = (20, 40, 40)
    a, b, c = ((4, 4, 4), (8, 8, 8)), ((4, 20, 4), (8, 24, 8)), ((4, 4, 25), (8, 8, 29))  # 64 voxels each
    ref = liver_with_lesions(shape, [a, b, c])
    pred = liver_with_lesions(shape, [
        a,                                   # A exactly: IoU 1
        ((4, 20, 4), (8, 22, 6)),            # inside B: 16 of 64 voxels, IoU 0.25
        ((12, 30, 30), (15, 33, 33)),        # false positive; C is missed
    ])
    case = lits.evaluate_case(ref, pred, (1.0, 1.0, 1.0))
    les = case["lesions"]
    assert (les["n_reference"], les["n_prediction"]) == (3, 3)
    assert les["detection"]["iou>0"] == dict(tp=2, fp=1, fn=1)
    assert les["detection"]["iou>0.5"] == dict(tp=1, fp=2, fn=2)
    ious = sorted(g["iou"] for g in les["groups"])
    assert ious == pytest.approx([0.25, 1.0])
    detected = [g for g in les["groups"] if "metrics" in g]
    assert len(detected) == 1 and detected[0]["metrics"]["dice"] == 1.0 and detected[0]["metrics"]["msd"] == 0.0
    assert les["reference_lesion_voxels"] == [64, 64, 64]
    det = lits.aggregate({"x": case})["lesion_detection"]
    assert det["iou>0"]["precision"] == pytest.approx(2 / 3) and det["iou>0"]["recall"] == pytest.approx(2 / 3)
    assert det["iou>0.5"]["precision"] == pytest.approx(1 / 3) and det["iou>0.5"]["recall"] == pytest.approx(1 / 3)
    seg = lits.aggregate({"x": case})["lesion_segmentation"]
    assert seg["n_lesions"] == 1 and seg["metrics"]["dice"]["mean"] == 1.0


def test_detection_counts_are_summed_over_cases():
    shape = (20, 40, 40)
    a = ((4, 4, 4), (8, 8, 8))
    ref = liver_with_lesions(shape, [a])
    one = lits.evaluate_case(ref, ref, (1, 1, 1))
    none = lits.evaluate_case(ref, liver_with_lesions(shape, []), (1, 1, 1))
    det = lits.aggregate({"one": one, "none": none})["lesion_detection"]["iou>0.5"]
    assert (det["tp"], det["fp"], det["fn"], det["precision"], det["recall"]) == (1, 0, 1, 1.0, 0.5)


def test_merged_and_split_lesions_count_once():
    shape = (16, 30, 30)
    # Two reference lesions bridged by one predicted slab: one merged reference lesion, detected.
    ref = liver_with_lesions(shape, [((4, 4, 4), (8, 8, 8)), ((4, 4, 10), (8, 8, 14))])
    pred = liver_with_lesions(shape, [((4, 4, 4), (8, 8, 14))])
    les = lits.evaluate_case(ref, pred, (1, 1, 1))["lesions"]
    assert les["groups"][0]["reference_ids"] == [1, 2] and les["groups"][0]["prediction_ids"] == [1]
    assert les["groups"][0]["iou"] == pytest.approx(128 / 160)
    assert les["detection"]["iou>0.5"] == dict(tp=1, fp=0, fn=0)
    # One reference lesion split into two predictions: merged predictions, one detection, no FP.
    ref = liver_with_lesions(shape, [((4, 4, 4), (8, 8, 14))])
    pred = liver_with_lesions(shape, [((4, 4, 4), (8, 8, 8)), ((4, 4, 10), (8, 8, 14))])
    les = lits.evaluate_case(ref, pred, (1, 1, 1))["lesions"]
    assert les["groups"][0]["prediction_ids"] == [1, 2]
    assert les["detection"]["iou>0"] == dict(tp=1, fp=0, fn=0)
    assert les["groups"][0]["metrics"]["dice"] == pytest.approx(2 * 128 / (160 + 128))


def test_lesions_use_face_connectivity():
    shape = (10, 10, 10)
    ref = np.zeros(shape, np.uint8)
    ref[1:9, 1:9, 1:9] = 1
    ref[3, 3, 3] = ref[4, 4, 4] = 2  # touch at a corner only: two lesions with scipy's default structure
    les = lits.evaluate_case(ref, ref, (1, 1, 1))["lesions"]
    assert les["n_reference"] == 2 and les["detection"]["iou>0.5"]["tp"] == 2


# ---------------------------------------------------------------------------------------------- burden, Dice


def test_tumour_burden_rmse_and_max_error():
    shape = (12, 12, 12)

    def case_with_burden(n_tumour: int) -> np.ndarray:
        out = np.zeros(shape, np.uint8)
        out[1:11, 1:11, 1:11] = 1  # 1000 liver voxels including tumour
        out.reshape(-1)[np.flatnonzero(out.reshape(-1))[:n_tumour]] = 2
        return out

    c1 = lits.evaluate_case(case_with_burden(100), case_with_burden(200), (1, 1, 1))  # 0.1 -> 0.2
    c2 = lits.evaluate_case(case_with_burden(200), case_with_burden(150), (1, 1, 1))  # 0.2 -> 0.15
    assert c1["tumour_burden"]["reference"] == pytest.approx(0.1)
    assert c1["tumour_burden"]["error"] == pytest.approx(0.1)
    assert c2["tumour_burden"]["error"] == pytest.approx(-0.05)
    tb = lits.aggregate({"1": c1, "2": c2})["tumour_burden"]
    assert tb["rmse"] == pytest.approx(math.sqrt((0.1 ** 2 + 0.05 ** 2) / 2))
    assert tb["max_abs_error"] == pytest.approx(0.1)
    assert (tb["n"], tb["n_undefined"]) == (2, 0)


def test_global_and_per_case_dice_differ_as_expected():
    shape = (20, 20, 20)
    big = liver_with_lesions(shape, [((2, 2, 2), (12, 12, 12))])  # 1000 tumour voxels, found exactly
    small_ref = liver_with_lesions(shape, [((2, 2, 2), (3, 3, 12))])  # 10 tumour voxels, missed
    small_pred = liver_with_lesions(shape, [])
    cases = {"big": lits.evaluate_case(big, big, (1, 1, 1)),
             "small": lits.evaluate_case(small_ref, small_pred, (1, 1, 1))}
    agg = lits.aggregate(cases)["tumour"]
    assert agg["dice_per_case"] == pytest.approx(0.5)
    assert agg["dice_global"] == pytest.approx(2 * 1000 / (2000 + 10))


# ---------------------------------------------------------------------------------------------- files


def write(path, array, spacing=(0.8, 0.7, 2.5), dtype=np.uint8):
    image = sitk.GetImageFromArray(np.asarray(array).astype(dtype))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_read_segmentation_spacing_order_and_label_remap(tmp_path):
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 1, 1], arr[2, 2, 2] = 5, 7
    write(tmp_path / "x.nii.gz", arr, spacing=(0.8, 0.7, 2.5))
    labels, spacing, geo = lits.read_segmentation(tmp_path / "x.nii.gz", labels=(5, 7))
    assert labels.shape == (4, 5, 6) and spacing == pytest.approx([2.5, 0.7, 0.8])
    assert labels[1, 1, 1] == 1 and labels[2, 2, 2] == 2 and labels.sum() == 3
    with pytest.raises(lits.EvaluationInputError, match=r"x\.nii\.gz: unknown label value\(s\) 5, 7"):
        lits.read_segmentation(tmp_path / "x.nii.gz")


def test_read_segmentation_float_labels(tmp_path):
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 1, 1] = 2.0
    write(tmp_path / "f.nii", arr, dtype=np.float32)
    labels, _, _ = lits.read_segmentation(tmp_path / "f.nii")
    assert labels.dtype == np.uint8 and labels[1, 1, 1] == 2
    arr[0, 0, 0] = 0.5
    write(tmp_path / "g.nii", arr, dtype=np.float32)
    with pytest.raises(lits.EvaluationInputError, match="non-integer"):
        lits.read_segmentation(tmp_path / "g.nii")


def test_match_cases_pairs_nii_with_nii_gz(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    for name in ("segmentation-0.nii", "segmentation-1.nii", "b.nii.gz"):
        (tmp_path / "ref" / name).touch()
    for name in ("segmentation-0.nii.gz", "b.nii.gz", "extra.nii.gz", "notes.txt"):
        (tmp_path / "pred" / name).touch()
    pairs, missing, extra = lits.match_cases(tmp_path / "ref", tmp_path / "pred")
    assert [p[0] for p in pairs] == ["b", "segmentation-0"]
    assert pairs[1][2].endswith("segmentation-0.nii.gz")
    assert missing == ["segmentation-1"] and extra == ["extra"]


# ---------------------------------------------------------------------------------- extent and size recall


def test_liver_extent_counts_predicted_slices_beyond_the_reference():
    ref = cube((20, 10, 10), (5, 2, 2), (12, 8, 8))  # slices 5..11
    assert lits.liver_extent(ref, ref)["slices_beyond"] == 0
    over = ref.copy()
    over[2, 4, 4] = True  # 3 slices below
    over[13, 4, 4] = True  # 2 slices above
    e = lits.liver_extent(ref, over)
    assert e == {"reference_slices": [5, 11], "prediction_slices": [2, 13], "slices_beyond": 3}
    under = cube((20, 10, 10), (7, 2, 2), (10, 8, 8))  # a shorter prediction overshoots nothing
    assert lits.liver_extent(ref, under)["slices_beyond"] == 0
    assert lits.liver_extent(ref, np.zeros_like(ref))["slices_beyond"] == 0


def test_recall_by_size_splits_lesions_at_10_mm():
    spacing = (2.0, 1.0, 1.0)
    shape = (30, 40, 40)
    big = ball(shape, (8, 10, 10), 7.0, spacing)  # ~14 mm
    small = ball(shape, (20, 30, 30), 3.0, spacing)  # ~6 mm
    other_big = ball(shape, (20, 10, 30), 6.0, spacing)  # ~12 mm, missed
    ref = np.zeros(shape, np.uint8)
    ref[big | small | other_big] = 2
    pred = np.zeros(shape, np.uint8)
    pred[big | small] = 2
    case = lits.evaluate_case(ref, pred, spacing)
    diam = [lits.equivalent_diameter_mm(v, spacing) for v in case["lesions"]["reference_lesion_voxels"]]
    assert sorted(d >= 10 for d in diam) == [False, True, True]
    r = lits.aggregate({"a": case})["lesion_recall_by_size"]
    assert r["large"] == {"found": 1, "n": 2, "recall": 0.5}
    assert r["small"] == {"found": 1, "n": 1, "recall": 1.0}
    assert lits.aggregate({"a": case})["liver_extent"]["max_slices_beyond"] == 0
