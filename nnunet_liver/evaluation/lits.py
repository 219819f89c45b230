"""LiTS metrics for liver and tumour segmentations, after the official CodaLab scorer.

Structures: liver = every label >= 1 (liver includes tumour), tumour = label 2. Arrays are in SimpleITK's
(z, y, x) order and ``spacing`` is in the same order (SimpleITK's ``GetSpacing()`` reversed), in mm.

Per case and structure: Dice, IoU (Jaccard), sensitivity, specificity, VOE = 1 - IoU,
RVD = (|pred| - |ref|) / |ref|, and the symmetric surface distances ASSD, RMSD, MSD (maximum symmetric
surface distance = Hausdorff) and HD95, in mm.

Surfaces and distances follow the scorer's ``Surface`` class (the one medpy shipped): a surface voxel is a
foreground voxel removed by one binary erosion with ``generate_binary_structure(ndim, 2)`` (18-neighbourhood
in 3D), the image border counting as background. The distance of a surface voxel is the Euclidean distance
(with the voxel spacing) to the nearest surface voxel of the other mask. All distances of both directions
are pooled: ASSD is their mean, RMSD the root of the mean square, MSD the maximum, HD95 the 95th percentile
(``numpy.percentile``, linear interpolation, as medpy's ``hd95``). Every computation is cropped to the
bounding box of reference and prediction, so the cost follows the size of the structure, not of the scan.

Empty masks (LiTS conventions where the scorer has one):

=====================  =====  =====  =====  ====  ===========  ===========  =========
reference, prediction  Dice   IoU    VOE    RVD   sensitivity  specificity  distances
=====================  =====  =====  =====  ====  ===========  ===========  =========
empty, empty           1      1      0      0     1            1            0
empty, non-empty       0      0      1      NaN   NaN          < 1          NaN
non-empty, empty       0      0      1      -1    0            1            NaN
=====================  =====  =====  =====  ====  ===========  ===========  =========

NaN means undefined (the scorer writes a large penalty there instead); aggregates use ``nanmean`` and report
how many cases were undefined.

Lesions: 3D connected components of label 2 with ``scipy.ndimage.label``'s default structure (face
connectivity, 6-neighbourhood in 3D), as the scorer. Reference and predicted components that overlap are
grouped, transitively (the connected components of the overlap graph), which is what the scorer's merging
of reference lesions spanned by one prediction and of predictions spanning one reference lesion amounts to.
A group counts as one reference lesion and one predicted lesion; it is detected at threshold t when
IoU(union of its reference components, union of its predicted components) > t. Over the whole data set,
TP = detected groups, FP = merged predicted lesions - TP, FN = merged reference lesions - TP (a group with
IoU <= t is both a FP and a FN). Precision and recall are reported at IoU > 0 and IoU > 0.5; like the
scorer, a ratio with a zero denominator is reported as 0. Each group detected at IoU > 0.5 gets Dice, IoU,
VOE, RVD, ASSD, RMSD, MSD and HD95, averaged over all detected lesions of the data set.

Tumour burden = tumour voxels / liver voxels (liver including tumour), NaN when the liver is empty; the
error is prediction - reference; RMSE and maximum absolute error are taken over the cases where both are
defined, with the number of undefined cases reported.
"""
from __future__ import annotations

import math
import os
from itertools import product
from typing import Iterable, Mapping, Sequence

import numpy as np

STRUCTURES = ("liver", "tumour")
#: lesions at or above this equivalent diameter (of a sphere of the lesion's volume) are "large" in the
#: size-stratified recall; predict's `small` flag uses the longest axial diameter instead
SIZE_SPLIT_MM = 10.0
OVERLAP_METRICS = ("dice", "iou", "sensitivity", "specificity", "voe", "rvd")
DISTANCE_METRICS = ("assd", "rmsd", "msd", "hd95")
STRUCTURE_METRICS = OVERLAP_METRICS + DISTANCE_METRICS
LESION_METRICS = ("dice", "iou", "voe", "rvd") + DISTANCE_METRICS
DETECTION_THRESHOLDS = (0.0, 0.5)
LESION_METRIC_THRESHOLD = 0.5
SURFACE_CONNECTIVITY = 2


class EvaluationInputError(ValueError):
    """A reference or prediction file cannot be evaluated (labels, shape, missing file)."""


# --------------------------------------------------------------------------------------------------------
# Bounding boxes and surfaces


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Smallest box holding every non-zero voxel of ``mask``, grown by ``margin`` and clipped to the array.

    Returns None for an empty mask. Costs about one pass over ``mask``: the first axis is reduced with a
    SIMD maximum over contiguous rows, the remaining axes on the (smaller) projection.
    """
    m = mask.view(np.uint8) if mask.dtype == np.bool_ else mask
    if m.size == 0:
        return None
    box = []
    arr = m
    for axis in range(m.ndim):
        n = arr.shape[0]
        if arr.ndim == 1:
            proj = arr
        else:
            proj = np.asarray(arr).reshape(n, -1).max(axis=1)
        nz = np.flatnonzero(proj)
        if nz.size == 0:
            return None
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        box.append(slice(max(lo - margin, 0), min(hi + margin, m.shape[axis])))
        if arr.ndim > 1:
            arr = arr[lo:hi].max(axis=0)
    return tuple(box)


def _neighbour_offsets(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    return [o for o in product((-1, 0, 1), repeat=ndim) if 0 < sum(map(abs, o)) <= connectivity]


def surface(mask: np.ndarray, connectivity: int = SURFACE_CONNECTIVITY) -> np.ndarray:
    """Foreground voxels with a background neighbour: ``mask ^ binary_erosion(mask, structure)``.

    Same result as scipy's ``binary_erosion`` with ``generate_binary_structure(ndim, connectivity)`` and
    the outside of the array as background, computed with shifted ANDs (several times faster).
    """
    mask = np.asarray(mask, dtype=bool)
    eroded = mask.copy()
    for offset in _neighbour_offsets(mask.ndim, connectivity):
        dst = tuple(slice(0, -1) if o > 0 else slice(1, None) if o < 0 else slice(None) for o in offset)
        src = tuple(slice(1, None) if o > 0 else slice(0, -1) if o < 0 else slice(None) for o in offset)
        eroded[dst] &= mask[src]
    for axis in range(mask.ndim):  # neighbours outside the array are background
        index = [slice(None)] * mask.ndim
        for end in (0, -1):
            index[axis] = end
            eroded[tuple(index)] = False
    return mask & ~eroded


def surface_distances(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    *,
    connectivity: int = SURFACE_CONNECTIVITY,
    method: str = "kdtree",
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the nearest surface voxel of the other.

    Args:
        reference: boolean mask, (*spatial); must not be empty.
        prediction: boolean mask of the same shape; must not be empty.
        spacing: voxel size per axis, in the order of the array axes.
        connectivity: erosion structure for the surfaces (2: 18-neighbourhood in 3D, as the LiTS scorer).
        method: "kdtree" (nearest neighbour among surface points; voxels on both surfaces are at 0 and
            are not queried) or "edt" (``distance_transform_edt`` with ``sampling=spacing`` on the box).
            Both are exact and give the same values.

    Returns:
        (prediction surface -> reference surface, reference surface -> prediction surface), 1D arrays.
    """
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    spacing = np.asarray(spacing, dtype=np.float64)
    if reference.shape != prediction.shape or spacing.shape != (reference.ndim,):
        raise ValueError(f"shape mismatch: {reference.shape}, {prediction.shape}, spacing {spacing.shape}")
    box = bounding_box(reference | prediction, margin=1)
    if box is None or not reference.any() or not prediction.any():
        raise ValueError("surface distances need a non-empty reference and prediction")
    s_ref = surface(reference[box], connectivity)
    s_pred = surface(prediction[box], connectivity)
    if method == "edt":
        from scipy.ndimage import distance_transform_edt

        d_pred = distance_transform_edt(~s_ref, sampling=spacing)[s_pred]
        d_ref = distance_transform_edt(~s_pred, sampling=spacing)[s_ref]
        return d_pred, d_ref
    if method != "kdtree":
        raise ValueError(f"method must be 'kdtree' or 'edt', got {method!r}")
    from scipy.spatial import cKDTree

    # Flat indices are ~10x cheaper to collect than argwhere's coordinates on a large box.
    flat_ref, flat_pred = np.flatnonzero(s_ref), np.flatnonzero(s_pred)
    shape = s_ref.shape

    def points(flat: np.ndarray) -> np.ndarray:
        return np.stack(np.unravel_index(flat, shape), axis=1) * spacing

    def directed(source: np.ndarray, target: np.ndarray, target_mask: np.ndarray) -> np.ndarray:
        # A source voxel that is also on the target surface is at distance 0: only the others are queried.
        on_target = target_mask.ravel()[source]
        d = np.zeros(source.size)
        if not on_target.all():
            # An unbalanced tree builds ~2x faster and queries as fast on voxel grids.
            tree = cKDTree(points(target), balanced_tree=False, compact_nodes=False)
            d[~on_target] = tree.query(points(source[~on_target]))[0]
        return d

    return directed(flat_pred, flat_ref, s_ref), directed(flat_ref, flat_pred, s_pred)


# --------------------------------------------------------------------------------------------------------
# Binary metrics


def _ratio(num: float, den: float, *, both_zero: float = math.nan) -> float:
    if den == 0:
        return both_zero if num == 0 else math.nan
    return float(num) / float(den)


def overlap_metrics(
    n_reference: int, n_prediction: int, n_intersection: int, n_total: int
) -> dict[str, float]:
    """Dice, IoU, sensitivity, specificity, VOE and RVD from voxel counts (empty-mask conventions above)."""
    r, p, i = int(n_reference), int(n_prediction), int(n_intersection)
    union = r + p - i
    if r == 0 and p == 0:
        return dict(dice=1.0, iou=1.0, sensitivity=1.0, specificity=1.0, voe=0.0, rvd=0.0)
    iou = i / union
    return dict(
        dice=2.0 * i / (r + p),
        iou=iou,
        sensitivity=_ratio(i, r),
        specificity=_ratio(n_total - union, n_total - r),
        voe=1.0 - iou,
        rvd=_ratio(p - r, r),
    )


def distance_metrics(d_prediction: np.ndarray, d_reference: np.ndarray) -> dict[str, float]:
    """ASSD, RMSD, MSD and HD95 from the two directed surface-distance arrays (mm), pooled."""
    d = np.concatenate([np.ravel(d_prediction), np.ravel(d_reference)])
    return dict(
        assd=float(d.mean()),
        rmsd=float(np.sqrt(np.mean(np.square(d)))),
        msd=float(d.max()),
        hd95=float(np.percentile(d, 95)),
    )


def binary_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    *,
    total_voxels: int | None = None,
    distances: bool = True,
    connectivity: int = SURFACE_CONNECTIVITY,
    method: str = "kdtree",
) -> dict[str, float]:
    """Overlap and surface-distance metrics of two boolean masks, (*spatial).

    Args:
        total_voxels: voxels of the whole image when the masks are a crop of it (for specificity);
            default: the size of the masks.
        distances: also compute ASSD, RMSD, MSD and HD95 (NaN when exactly one mask is empty).

    Returns:
        The metrics plus ``reference_voxels``, ``prediction_voxels`` and ``intersection_voxels``.
    """
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, prediction {prediction.shape}")
    r = int(np.count_nonzero(reference))
    p = int(np.count_nonzero(prediction))
    i = int(np.count_nonzero(reference & prediction)) if r and p else 0
    n_total = reference.size if total_voxels is None else int(total_voxels)
    out: dict[str, float] = overlap_metrics(r, p, i, n_total)
    if distances:
        if r and p:
            out.update(distance_metrics(*surface_distances(
                reference, prediction, spacing, connectivity=connectivity, method=method)))
        else:
            value = 0.0 if r == p == 0 else math.nan
            out.update({k: value for k in DISTANCE_METRICS})
    out.update(reference_voxels=r, prediction_voxels=p, intersection_voxels=i)
    return out


# --------------------------------------------------------------------------------------------------------
# Lesion detection


def match_lesions(
    reference_labels: np.ndarray,
    prediction_labels: np.ndarray,
    n_reference: int | None = None,
    n_prediction: int | None = None,
) -> list[dict]:
    """Group overlapping reference and predicted lesions (connected components of the overlap graph).

    Args:
        reference_labels: integer component map of the reference lesions, (*spatial), 0 = background.
        prediction_labels: same for the prediction.
        n_reference, n_prediction: number of components (default: the maximum label).

    Returns:
        One dict per group with ``reference_ids``, ``prediction_ids`` (sorted label lists),
        ``reference_voxels``, ``prediction_voxels``, ``intersection_voxels`` and ``iou``, sorted by the
        smallest reference id. Lesions that overlap nothing are not listed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ref = np.asarray(reference_labels)
    pred = np.asarray(prediction_labels)
    n_ref = int(ref.max(initial=0)) if n_reference is None else int(n_reference)
    n_pred = int(pred.max(initial=0)) if n_prediction is None else int(n_prediction)
    if n_ref == 0 or n_pred == 0:
        return []
    both = np.flatnonzero((ref.ravel() > 0) & (pred.ravel() > 0))
    if both.size == 0:
        return []
    codes = ref.ravel()[both].astype(np.int64) * (n_pred + 1) + pred.ravel()[both]
    codes, inter = np.unique(codes, return_counts=True)
    r_ids, p_ids = codes // (n_pred + 1), codes % (n_pred + 1)
    ref_sizes = _component_sizes(ref, n_ref)
    pred_sizes = _component_sizes(pred, n_pred)
    # Nodes: reference lesion k -> k - 1, predicted lesion k -> n_ref + k - 1.
    n_nodes = n_ref + n_pred
    graph = coo_matrix((np.ones(len(codes)), (r_ids - 1, n_ref + p_ids - 1)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    groups = []
    for c in np.unique(component[r_ids - 1]):
        in_group = component[r_ids - 1] == c
        refs = np.unique(r_ids[in_group])
        preds = np.unique(p_ids[in_group])
        i = int(inter[in_group].sum())
        r = int(ref_sizes[refs].sum())
        p = int(pred_sizes[preds].sum())
        groups.append(dict(reference_ids=refs.tolist(), prediction_ids=preds.tolist(), reference_voxels=r,
                           prediction_voxels=p, intersection_voxels=i, iou=i / (r + p - i)))
    groups.sort(key=lambda g: g["reference_ids"][0])
    return groups


def _component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels per label 0..n; label 0 is not counted. Counting only the labelled voxels is ~5x faster than
    ``bincount`` over the whole box."""
    flat = labels.ravel()
    sizes = np.bincount(flat[np.flatnonzero(flat)], minlength=n + 1)
    sizes[0] = 0
    return sizes


def detection_counts(groups: Sequence[Mapping], n_reference: int, n_prediction: int,
                     threshold: float) -> dict[str, int]:
    """TP, FP, FN at IoU > ``threshold`` for one case, merged lesions counted once (as the LiTS scorer)."""
    tp = sum(1 for g in groups if g["iou"] > threshold)
    ref_merged = n_reference - sum(len(g["reference_ids"]) - 1 for g in groups)
    pred_merged = n_prediction - sum(len(g["prediction_ids"]) - 1 for g in groups)
    return dict(tp=tp, fp=pred_merged - tp, fn=ref_merged - tp)


def _threshold_key(t: float) -> str:
    return f"iou>{t:g}"


def _union_box(slices: Iterable[tuple[slice, ...]]) -> tuple[slice, ...]:
    slices = list(slices)
    return tuple(slice(min(s[a].start for s in slices), max(s[a].stop for s in slices))
                 for a in range(len(slices[0])))


def lesion_evaluation(
    reference_tumour: np.ndarray,
    prediction_tumour: np.ndarray,
    spacing: Sequence[float],
    *,
    thresholds: Sequence[float] = DETECTION_THRESHOLDS,
    metric_threshold: float = LESION_METRIC_THRESHOLD,
    connectivity: int = SURFACE_CONNECTIVITY,
    method: str = "kdtree",
) -> dict:
    """Lesion detection and per-lesion metrics of one case.

    Args:
        reference_tumour, prediction_tumour: boolean tumour masks, (*spatial).
        thresholds: IoU thresholds for the detection counts (detected when IoU > threshold).
        metric_threshold: groups with IoU above it get Dice, IoU, VOE, RVD and surface distances.

    Returns:
        ``n_reference``, ``n_prediction`` (components before merging), ``detection``
        ({"iou>t": {tp, fp, fn}}), ``groups`` (see ``match_lesions``; detected ones carry ``metrics``) and
        ``reference_lesion_voxels`` (size of every reference component, for size-stratified analyses).
    """
    from scipy import ndimage

    reference_tumour = np.asarray(reference_tumour, dtype=bool)
    prediction_tumour = np.asarray(prediction_tumour, dtype=bool)
    box = bounding_box(reference_tumour | prediction_tumour)
    if box is None:  # no lesion on either side
        box = tuple(slice(0, 0) for _ in reference_tumour.shape)
    # Components, overlaps and sizes are the same in the box of all lesions, which is often much smaller.
    ref_lab, n_ref = ndimage.label(reference_tumour[box])
    pred_lab, n_pred = ndimage.label(prediction_tumour[box])
    groups = match_lesions(ref_lab, pred_lab, n_ref, n_pred)
    if groups and any(g["iou"] > metric_threshold for g in groups):
        ref_boxes = ndimage.find_objects(ref_lab)
        pred_boxes = ndimage.find_objects(pred_lab)
        for g in groups:
            if g["iou"] <= metric_threshold:
                continue
            box = _union_box([ref_boxes[k - 1] for k in g["reference_ids"]]
                             + [pred_boxes[k - 1] for k in g["prediction_ids"]])
            r = np.isin(ref_lab[box], g["reference_ids"])
            p = np.isin(pred_lab[box], g["prediction_ids"])
            m = binary_metrics(r, p, spacing, connectivity=connectivity, method=method)
            g["metrics"] = {k: m[k] for k in LESION_METRICS}
    ref_sizes = _component_sizes(ref_lab, n_ref)[1:]
    # a group exists only where reference and prediction overlap, so its reference lesions are found (IoU > 0)
    found = {k for g in groups for k in g["reference_ids"]}
    return dict(
        n_reference=int(n_ref),
        n_prediction=int(n_pred),
        detection={_threshold_key(t): detection_counts(groups, n_ref, n_pred, t) for t in thresholds},
        groups=groups,
        reference_lesion_voxels=ref_sizes.tolist(),
        reference_lesion_found=[k + 1 in found for k in range(n_ref)],
    )


def equivalent_diameter_mm(voxels: int, spacing: Sequence[float]) -> float:
    """Diameter of the sphere with the volume of ``voxels`` voxels of size ``spacing`` (mm)."""
    return float((6.0 * voxels * float(np.prod(spacing)) / math.pi) ** (1.0 / 3.0))


def liver_extent(reference_liver: np.ndarray, prediction_liver: np.ndarray) -> dict:
    """Slices (array axis 0, z) spanned by the reference and predicted liver, and how many predicted slices lie
    beyond the reference's first or last slice (the larger of the two overshoots; 0 when either is empty)."""
    def span(mask):
        z = np.flatnonzero(np.asarray(mask).reshape(mask.shape[0], -1).any(axis=1))
        return [int(z[0]), int(z[-1])] if z.size else None

    ref, pred = span(reference_liver), span(prediction_liver)
    beyond = max(ref[0] - pred[0], pred[1] - ref[1], 0) if ref and pred else 0
    return dict(reference_slices=ref, prediction_slices=pred, slices_beyond=int(beyond))


# --------------------------------------------------------------------------------------------------------
# Cases


def tumour_burden(liver_voxels: int, tumour_voxels: int) -> float:
    """Tumour volume / liver volume (liver including tumour); NaN for an empty liver."""
    return _ratio(tumour_voxels, liver_voxels)


def evaluate_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    *,
    thresholds: Sequence[float] = DETECTION_THRESHOLDS,
    metric_threshold: float = LESION_METRIC_THRESHOLD,
    connectivity: int = SURFACE_CONNECTIVITY,
    method: str = "kdtree",
) -> dict:
    """All LiTS metrics of one case.

    Args:
        reference: label map, (*spatial) in SimpleITK's (z, y, x) order: 0 background, 1 liver, 2 tumour
            (values are not checked here; ``read_segmentation`` checks them; any non-zero value is liver).
        prediction: label map of the same shape.
        spacing: voxel size in mm per array axis (SimpleITK's ``GetSpacing()`` reversed).

    Returns:
        {"liver": metrics, "tumour": metrics, "lesions": see ``lesion_evaluation``,
        "tumour_burden": {"reference", "prediction", "error"}, "liver_extent": see ``liver_extent``,
        "shape", "spacing"}.
    """
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, prediction {prediction.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {spacing} does not match {reference.ndim} array axes")
    n_total = int(reference.size)
    extent = liver_extent(reference > 0, prediction > 0)
    # Everything outside the box of reference | prediction is background in both: crop once, so that the
    # cost of all later steps follows the size of the liver, not of the scan.
    box = bounding_box(reference | prediction, margin=1)
    if box is None:
        box = tuple(slice(0, 0) for _ in reference.shape)
    ref = np.ascontiguousarray(reference[box])
    pred = np.ascontiguousarray(prediction[box])
    options = dict(connectivity=connectivity, method=method)
    ref_tumour, pred_tumour = ref == 2, pred == 2
    result: dict = {}
    for name, (r, p) in (("liver", (ref > 0, pred > 0)), ("tumour", (ref_tumour, pred_tumour))):
        result[name] = binary_metrics(r, p, spacing, total_voxels=n_total, **options)
    result["lesions"] = lesion_evaluation(ref_tumour, pred_tumour, spacing, thresholds=thresholds,
                                          metric_threshold=metric_threshold, **options)
    burden_ref = tumour_burden(result["liver"]["reference_voxels"], result["tumour"]["reference_voxels"])
    burden_pred = tumour_burden(result["liver"]["prediction_voxels"], result["tumour"]["prediction_voxels"])
    result["tumour_burden"] = dict(reference=burden_ref, prediction=burden_pred, error=burden_pred - burden_ref)
    result["liver_extent"] = extent
    result["shape"] = list(reference.shape)
    result["spacing"] = spacing
    return result


def flatten_case(case: Mapping) -> dict[str, float]:
    """One flat row of per-case numbers (the columns of ``per_case.csv``); accepts summary.json cases."""
    row: dict[str, float] = {}
    for s in STRUCTURES:
        for k in STRUCTURE_METRICS + ("reference_voxels", "prediction_voxels"):
            row[f"{s}_{k}"] = _number(case[s][k])
    les = case["lesions"]
    row["lesions_reference"] = les["n_reference"]
    row["lesions_prediction"] = les["n_prediction"]
    for key, counts in les["detection"].items():
        for c in ("tp", "fp", "fn"):
            row[f"lesion_{c}_{key}"] = counts[c]
    tb = case["tumour_burden"]
    row["tumour_burden_reference"] = _number(tb["reference"])
    row["tumour_burden_prediction"] = _number(tb["prediction"])
    row["tumour_burden_error"] = _number(tb["error"])
    row["tumour_burden_abs_error"] = abs(row["tumour_burden_error"])
    if "liver_extent" in case:  # summary.json files written before it existed lack it
        row["liver_slices_beyond"] = case["liver_extent"]["slices_beyond"]
    return row


def _number(x) -> float:
    """JSON null (how summary.json stores NaN) back to NaN."""
    return math.nan if x is None else x


# --------------------------------------------------------------------------------------------------------
# Data set


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    finite = v[~np.isnan(v)]
    if finite.size == 0:
        return dict(mean=math.nan, std=math.nan, median=math.nan, n=0, n_nan=int(v.size))
    return dict(mean=float(finite.mean()), std=float(finite.std()), median=float(np.median(finite)),
                n=int(finite.size), n_nan=int(v.size - finite.size))


def _precision_recall(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0  # the scorer's convention for an empty denominator
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return dict(tp=tp, fp=fp, fn=fn, precision=precision, recall=recall, f1=f1)


def recall_by_size(cases: Sequence[Mapping], split_mm: float = SIZE_SPLIT_MM) -> dict:
    """Reference lesions found (IoU > 0) below and at/above ``split_mm`` equivalent diameter, over all cases
    (cases evaluated before these fields existed are skipped)."""
    counts = {"small": [0, 0], "large": [0, 0]}
    for c in cases:
        les = c["lesions"]
        for voxels, found in zip(les.get("reference_lesion_voxels", []), les.get("reference_lesion_found", [])):
            key = "large" if equivalent_diameter_mm(voxels, c["spacing"]) >= split_mm else "small"
            counts[key][0] += int(found)
            counts[key][1] += 1
    return {"split_mm": split_mm, **{
        f"{key}": dict(found=f, n=n, recall=f / n if n else math.nan) for key, (f, n) in counts.items()}}


def _extent_summary(cases: Sequence[Mapping]) -> dict:
    beyond = [c["liver_extent"]["slices_beyond"] for c in cases if "liver_extent" in c]
    return dict(max_slices_beyond=max(beyond) if beyond else math.nan,
                mean_slices_beyond=float(np.mean(beyond)) if beyond else math.nan,
                cases_2_or_more=sum(b >= 2 for b in beyond), n=len(beyond))


def aggregate(cases: Mapping[str, Mapping]) -> dict:
    """Data-set metrics from ``evaluate_case`` results keyed by case name.

    Returns:
        Per structure: ``dice_per_case`` (mean of per-case Dice), ``dice_global``
        (2 * sum(intersection) / sum(|ref| + |pred|)) and mean/std/median/n/n_nan of every metric;
        ``lesion_detection`` (precision, recall, F1 and counts per IoU threshold, summed over cases);
        ``lesion_segmentation`` (metrics over all lesions detected at IoU > 0.5);
        ``tumour_burden`` (RMSE, max absolute error, n, n_undefined); ``lesion_recall_by_size`` (see
        ``recall_by_size``); ``liver_extent`` (max and mean slices beyond, cases with 2 or more).
    """
    cases = list(cases.values())
    out: dict = {"n_cases": len(cases)}
    for s in STRUCTURES:
        inter = sum(c[s]["intersection_voxels"] for c in cases)
        total = sum(c[s]["reference_voxels"] + c[s]["prediction_voxels"] for c in cases)
        out[s] = dict(
            dice_per_case=_stats([c[s]["dice"] for c in cases])["mean"],
            dice_global=2.0 * inter / total if total else 1.0,
            metrics={k: _stats([c[s][k] for c in cases]) for k in STRUCTURE_METRICS},
        )
    keys = list(cases[0]["lesions"]["detection"]) if cases else [_threshold_key(t) for t in DETECTION_THRESHOLDS]
    out["lesion_detection"] = {
        key: _precision_recall(*(sum(c["lesions"]["detection"][key][x] for c in cases) for x in ("tp", "fp", "fn")))
        for key in keys
    }
    out["lesion_recall_by_size"] = recall_by_size(cases)
    out["liver_extent"] = _extent_summary(cases)
    lesion_rows = [g["metrics"] for c in cases for g in c["lesions"]["groups"] if "metrics" in g]
    out["lesion_segmentation"] = dict(
        n_lesions=len(lesion_rows), metrics={k: _stats([m[k] for m in lesion_rows]) for k in LESION_METRICS})
    errors = np.array([c["tumour_burden"]["error"] for c in cases], dtype=np.float64)
    defined = errors[~np.isnan(errors)]
    out["tumour_burden"] = dict(
        rmse=float(np.sqrt(np.mean(defined ** 2))) if defined.size else math.nan,
        max_abs_error=float(np.max(np.abs(defined))) if defined.size else math.nan,
        n=int(defined.size),
        n_undefined=int(errors.size - defined.size),
    )
    return out


# --------------------------------------------------------------------------------------------------------
# Files


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_name(filename: str) -> str | None:
    """``segmentation-3.nii`` -> ``segmentation-3``; None for files that are not NIfTI."""
    for suffix in NIFTI_SUFFIXES:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def list_cases(folder: str | os.PathLike) -> dict[str, str]:
    """Case name -> path of the ``.nii.gz`` / ``.nii`` files directly in ``folder`` (hidden files skipped)."""
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = case_name(entry.name)
        if name is None or entry.name.startswith(".") or not entry.is_file():
            continue
        if name in found:
            raise EvaluationInputError(
                f"{folder}: case {name!r} exists twice ({os.path.basename(found[name])}, {entry.name})")
        found[name] = entry.path
    return found


def match_cases(reference_dir: str | os.PathLike, prediction_dir: str | os.PathLike
                ) -> tuple[list[tuple[str, str, str]], list[str], list[str]]:
    """Pair files by case name (the extension may differ: ``x.nii`` matches ``x.nii.gz``).

    Returns:
        (pairs as (case, reference path, prediction path), reference cases without a prediction,
        predictions without a reference).
    """
    refs = list_cases(reference_dir)
    preds = list_cases(prediction_dir)
    pairs = [(c, refs[c], preds[c]) for c in refs if c in preds]
    missing = [c for c in refs if c not in preds]
    extra = [c for c in preds if c not in refs]
    return pairs, missing, extra


def read_segmentation(path: str | os.PathLike, labels: tuple[int, int] = (1, 2)
                      ) -> tuple[np.ndarray, list[float], dict]:
    """Read a label image as uint8 0/1/2 in (z, y, x) order.

    Args:
        labels: the file's (liver, tumour) label values; anything else but 0 is an error.

    Returns:
        (labels, spacing in (z, y, x) order, geometry {"spacing", "origin", "direction"} in SimpleITK order).
    """
    from nnunet_liver.data.images import ImageError, label_array_checked, read_image

    try:  # the shared reader: empty, truncated or corrupt files, NIfTI NaN, zero-length axes, 4D images
        image = read_image(path, "label image", dims=(2, 3))
        arr = label_array_checked(image, str(path))
    except ImageError as e:
        raise EvaluationInputError(str(e)) from None
    liver, tumour = labels
    if arr.dtype != np.uint8:
        arr = arr.astype(np.uint8)
    # np.bincount / np.unique would cost ~1 s on a LiTS scan; the maximum settles the usual case in one
    # SIMD pass, and only a file with other values pays for the exact list.
    hi = int(arr.max()) if arr.size else 0
    unknown = []
    if not set(range(hi + 1)) <= {0, liver, tumour}:
        bad = (arr != 0) & (arr != liver) & (arr != tumour)
        unknown = np.unique(arr[bad]).tolist() if bad.any() else []
    if unknown:
        raise EvaluationInputError(
            f"{path}: unknown label value(s) {', '.join(map(str, unknown))} "
            f"(expected 0, liver {liver}, tumour {tumour}; see --labels)")
    if (liver, tumour) != (1, 2):
        lut = np.zeros(256, dtype=np.uint8)
        lut[liver], lut[tumour] = 1, 2
        arr = lut[arr]
    else:
        arr = np.array(arr, dtype=np.uint8, copy=True)
    geometry = dict(spacing=list(image.GetSpacing()), origin=list(image.GetOrigin()),
                    direction=list(image.GetDirection()))
    return arr, list(reversed(image.GetSpacing())), geometry


def evaluate_files(
    reference_path: str | os.PathLike,
    prediction_path: str | os.PathLike,
    *,
    labels: tuple[int, int] = (1, 2),
    thresholds: Sequence[float] = DETECTION_THRESHOLDS,
    metric_threshold: float = LESION_METRIC_THRESHOLD,
) -> dict:
    """``evaluate_case`` on two files, with the reference spacing; geometry differences become warnings."""
    ref, spacing, ref_geo = read_segmentation(reference_path, labels)
    pred, _, pred_geo = read_segmentation(prediction_path, labels)
    if ref.shape != pred.shape:
        raise EvaluationInputError(
            f"{prediction_path}: shape {pred.shape[::-1]} differs from the reference "
            f"{reference_path} {ref.shape[::-1]} (x, y, z)")
    warnings = []
    for key, tol in (("spacing", 1e-3), ("origin", 1e-2), ("direction", 1e-3)):
        if not np.allclose(ref_geo[key], pred_geo[key], atol=tol, rtol=0):
            warnings.append(f"{os.path.basename(prediction_path)}: {key} {pred_geo[key]} differs from the "
                            f"reference {ref_geo[key]}; the reference spacing is used")
    result = evaluate_case(ref, pred, spacing, thresholds=thresholds, metric_threshold=metric_threshold)
    result["reference_file"] = os.path.abspath(reference_path)
    result["prediction_file"] = os.path.abspath(prediction_path)
    result["warnings"] = warnings
    return result


def _evaluate_pair(job: tuple) -> tuple[str, dict]:
    case, ref_path, pred_path, options = job
    return case, evaluate_files(ref_path, pred_path, **options)


def evaluate_folders(
    reference_dir: str | os.PathLike,
    prediction_dir: str | os.PathLike,
    *,
    labels: tuple[int, int] = (1, 2),
    chill: bool = False,
    num_processes: int = 1,
    progress: bool = True,
    thresholds: Sequence[float] = DETECTION_THRESHOLDS,
    metric_threshold: float = LESION_METRIC_THRESHOLD,
) -> dict:
    """Evaluate every reference case that has a prediction of the same name.

    Args:
        labels: (liver, tumour) label values used in both folders.
        chill: evaluate the cases that have predictions instead of failing on missing ones.
        num_processes: worker processes (1: in this process).
        progress: tqdm progress bar on stderr.

    Returns:
        {"reference_dir", "prediction_dir", "labels", "missing_predictions", "unmatched_predictions",
        "warnings", "aggregate": see ``aggregate``, "cases": {case: see ``evaluate_files``}}.

    Raises:
        EvaluationInputError: no reference cases, missing predictions (unless ``chill``), bad labels,
            shape mismatch.
    """
    pairs, missing, extra = match_cases(reference_dir, prediction_dir)
    if not pairs and not missing:
        raise EvaluationInputError(f"{reference_dir}: no .nii.gz or .nii files")
    if missing and not chill:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise EvaluationInputError(
            f"{len(missing)} reference case(s) have no prediction in {prediction_dir}: {shown} (--chill to skip)")
    if not pairs:
        raise EvaluationInputError(f"{prediction_dir}: no prediction matches a reference case")
    options = dict(labels=tuple(labels), thresholds=tuple(thresholds), metric_threshold=metric_threshold)
    jobs = [(case, r, p, options) for case, r, p in pairs]
    from tqdm import tqdm

    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), desc="evaluate", unit="case", disable=not progress)
    try:
        if num_processes <= 1 or len(jobs) == 1:
            for job in jobs:
                case, res = _evaluate_pair(job)
                results[case] = res
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs))) as pool:
                futures = [pool.submit(_evaluate_pair, job) for job in jobs]
                try:
                    for future in as_completed(futures):
                        case, res = future.result()
                        results[case] = res
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    results = {case: results[case] for case, _, _ in pairs}  # reference order, not completion order
    return dict(
        reference_dir=os.path.abspath(reference_dir),
        prediction_dir=os.path.abspath(prediction_dir),
        labels=dict(liver=int(labels[0]), tumour=int(labels[1])),
        missing_predictions=missing,
        unmatched_predictions=extra,
        warnings=[w for r in results.values() for w in r["warnings"]],
        aggregate=aggregate(results),
        cases=results,
    )
