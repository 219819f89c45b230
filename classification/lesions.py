"""Lesion tables and their join with the tumour components of nnU-Net's preprocessed segmentations.

A lesion is a 3D connected component (face connectivity, ``scipy.ndimage.label``'s default, as in
``nnunet_liver.evaluation.lits``) of the tumour label, labelled by ``nnunet-liver predict``'s labeller
(``nnunet_liver.inference.lesions.label_lesions``), so training crops and predicted lesions are the same
objects. The lesion table (CSV) names each lesion by case id and lesion id and gives its class; the join
finds, for every row, its component in the *preprocessed* case (cropped to the nonzero box and resampled to
the plans' spacing by nnU-Net).

How a row finds its component. Every row gets a reference centroid in raw voxel coordinates (z, y, x of the
raw image array):

- from the table's ``centroid_{z,y,x}_vox`` columns when present, else from ``centroid_{x,y,z}_mm``
  (physical coordinates, converted with the raw image's origin/direction/spacing stored by nnU-Net);
- else from the raw label image: ``lesion_id`` k is the k-th component of ``scipy.ndimage.label`` on the
  tumour label (its numbering order).

Raw centroids are mapped into the preprocessed grid (transpose, crop box, nnU-Net's resampling convention
``raw = (pre + 0.5) * old / new - 0.5``) and matched one-to-one to the preprocessed components by minimum
total distance (Hungarian assignment), a pair being accepted within a tolerance (see :func:`match_case`).
Every mismatch is reported: rows of unknown cases, rows without a component, components without a row.

With an instance map (raw grid, value = lesion id) the lesions are its instances instead, carried onto the
preprocessed grid (:func:`raw_to_preprocessed_grid`), and rows are joined by lesion id; touching lesions,
one tumour component, then stay separate.

numpy/scipy only: nnU-Net is imported by the callers that load data.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from nnunet_liver.inference.lesions import label_lesions

__all__ = [
    "LABEL_VALUES",
    "CaseGeometry",
    "Component",
    "JoinReport",
    "Lesion",
    "LesionJoinError",
    "LesionTableError",
    "TableRow",
    "instance_components",
    "join_lesions",
    "match_case",
    "physical_to_raw_voxel",
    "preprocessed_to_raw",
    "raw_component_centroids",
    "raw_to_preprocessed",
    "raw_to_preprocessed_grid",
    "read_lesion_table",
    "tumour_components",
]

LABEL_VALUES = {"benign": 0, "malignant": 1, "0": 0, "1": 1}
VOX_COLUMNS = ("centroid_z_vox", "centroid_y_vox", "centroid_x_vox")
MM_COLUMNS = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")


class LesionTableError(ValueError):
    """The lesion table cannot be read (missing columns, bad labels, duplicate rows)."""


class LesionJoinError(ValueError):
    """Table rows and tumour components do not match; the message names every mismatch."""


@dataclass(frozen=True)
class TableRow:
    """One row of the lesion table.

    Attributes:
        case_id, lesion_id: the lesion's key.
        label: 0 benign, 1 malignant.
        subtype: free text ("" when absent).
        centroid_vox: raw voxel (z, y, x) or None.
        centroid_mm: physical (x, y, z) in mm or None.
        line: line number in the CSV (for messages).
    """

    case_id: str
    lesion_id: int
    label: int
    subtype: str = ""
    centroid_vox: tuple[float, float, float] | None = None
    centroid_mm: tuple[float, float, float] | None = None
    line: int = 0

    @property
    def key(self) -> str:
        return f"{self.case_id}/{self.lesion_id}"


@dataclass(frozen=True)
class Component:
    """A tumour component of a preprocessed segmentation.

    Attributes:
        index: its number in ``scipy.ndimage.label``'s output (1..n).
        n_voxels: size in preprocessed voxels.
        centroid: (z, y, x) in preprocessed voxels.
        bbox: ((z0, z1), (y0, y1), (x0, x1)), half-open, preprocessed voxels.
        volume_ml: volume at the preprocessed spacing.
    """

    index: int
    n_voxels: int
    centroid: tuple[float, float, float]
    bbox: tuple[tuple[int, int], ...]
    volume_ml: float

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter."""
        return (6 * self.volume_ml * 1000 / math.pi) ** (1 / 3)


@dataclass(frozen=True)
class Lesion:
    """A table row joined with its preprocessed component."""

    row: TableRow
    component: Component
    distance_mm: float

    @property
    def key(self) -> str:
        return self.row.key


@dataclass
class JoinReport:
    """Result of :func:`join_lesions`.

    Attributes:
        lesions: matched lesions, sorted by case id and lesion id.
        unknown_cases: case ids of the table that are not in the data set.
        unmatched_rows: (row, reason) for rows of known cases without a component.
        unmatched_components: (case_id, component, raw centroid (z, y, x)) for components without a row.
    """

    lesions: list[Lesion] = field(default_factory=list)
    unknown_cases: list[str] = field(default_factory=list)
    unmatched_rows: list[tuple[TableRow, str]] = field(default_factory=list)
    unmatched_components: list[tuple[str, Component, tuple[float, float, float]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unknown_cases or self.unmatched_rows or self.unmatched_components)

    def n_skipped(self) -> int:
        return len(self.unmatched_rows) + len(self.unmatched_components)

    def describe(self, limit: int = 8) -> str:
        """One line naming the mismatches (the first ``limit`` of each kind)."""

        def listing(items: list[str]) -> str:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.unknown_cases:
            parts.append(f"{len(self.unknown_cases)} unknown case(s) in the table: {listing(self.unknown_cases)}")
        if self.unmatched_rows:
            parts.append(f"{len(self.unmatched_rows)} table lesion(s) without a tumour component: "
                         + listing([f"{r.key} ({why})" for r, why in self.unmatched_rows]))
        if self.unmatched_components:
            parts.append(f"{len(self.unmatched_components)} tumour component(s) missing from the table: "
                         + listing([f"{cid} component at raw voxel (z, y, x) "
                                    f"({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}), {comp.n_voxels} voxels"
                                    for cid, comp, c in self.unmatched_components]))
        return "; ".join(parts)


def _parse_float(value: str, what: str, line: int) -> float:
    try:
        out = float(value)
    except ValueError:
        raise LesionTableError(f"line {line}: {what} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise LesionTableError(f"line {line}: {what} {value!r} is not finite")
    return out


def read_lesion_table(path: str | os.PathLike) -> list[TableRow]:
    """Read a lesion table.

    Required columns: ``case_id``, ``lesion_id`` (integer), ``label`` (benign/malignant or 0/1, case-insensitive).
    Optional: ``subtype``, ``centroid_z_vox, centroid_y_vox, centroid_x_vox`` (raw voxel indices, array order)
    or ``centroid_x_mm, centroid_y_mm, centroid_z_mm`` (physical coordinates). Other columns are ignored (the
    phantom table's ``split``, ``volume_ml``...).

    Raises:
        LesionTableError: file missing, columns missing, bad values, duplicate (case_id, lesion_id), no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LesionTableError(f"lesion table not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("case_id", "lesion_id", "label") if c not in columns]
        if missing:
            raise LesionTableError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns)})")
        has_vox = all(c in columns for c in VOX_COLUMNS)
        has_mm = all(c in columns for c in MM_COLUMNS)
        rows: list[TableRow] = []
        seen: dict[tuple[str, int], int] = {}
        for line, raw in enumerate(reader, start=2):
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not any(raw.values()):
                continue
            case = raw["case_id"]
            if not case:
                raise LesionTableError(f"{path}, line {line}: empty case_id")
            try:
                lesion_id = int(raw["lesion_id"])
            except ValueError:
                raise LesionTableError(f"{path}, line {line}: lesion_id {raw['lesion_id']!r} is not an integer") from None
            label = LABEL_VALUES.get(raw["label"].lower())
            if label is None:
                raise LesionTableError(f"{path}, line {line}: label {raw['label']!r} is not benign/malignant or 0/1")
            if (case, lesion_id) in seen:
                raise LesionTableError(f"{path}: lesion {case}/{lesion_id} appears on lines {seen[case, lesion_id]} "
                                       f"and {line}")
            seen[case, lesion_id] = line
            vox = mm = None
            if has_vox and all(raw[c] for c in VOX_COLUMNS):
                vox = tuple(_parse_float(raw[c], c, line) for c in VOX_COLUMNS)
            if has_mm and all(raw[c] for c in MM_COLUMNS):
                mm = tuple(_parse_float(raw[c], c, line) for c in MM_COLUMNS)
            rows.append(TableRow(case, lesion_id, label, raw.get("subtype", ""), vox, mm, line))
    if not rows:
        raise LesionTableError(f"{path}: no lesions in the table")
    return rows


def tumour_components(seg: np.ndarray, tumour_label: int, spacing: Sequence[float]) -> tuple[np.ndarray, list[Component]]:
    """Connected components of ``seg == tumour_label``.

    Args:
        seg: (z, y, x) label array (a leading singleton channel axis is dropped).
        tumour_label: the tumour value.
        spacing: (z, y, x) voxel size in mm.

    Returns:
        The labelled array (int32, 0 background) and one :class:`Component` per label, in label order.
    """
    seg = np.asarray(seg)
    if seg.ndim == 4 and seg.shape[0] == 1:
        seg = seg[0]
    if seg.ndim != 3:
        raise ValueError(f"expected a (z, y, x) segmentation, got shape {seg.shape}")
    labelled, n = label_lesions(seg, tumour_label)  # the predict path's labeller: one definition of a lesion
    if n == 0:
        return labelled, []
    index = np.arange(1, n + 1)
    counts = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    centroids = ndimage.center_of_mass(np.ones_like(labelled, dtype=np.float32), labelled, index)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    comps = []
    for i, (sl, c, cnt) in enumerate(zip(ndimage.find_objects(labelled), centroids, counts), start=1):
        comps.append(Component(index=i, n_voxels=int(cnt), centroid=tuple(float(v) for v in c),
                               bbox=tuple((s.start, s.stop) for s in sl), volume_ml=float(cnt) * voxel_ml))
    return labelled, comps


def _geometry(properties: Mapping, transpose_forward: Sequence[int], shape: Sequence[int]):
    """(bbox start, cropped shape, preprocessed shape), all in nnU-Net's transposed array order."""
    bbox = np.asarray(properties["bbox_used_for_cropping"], dtype=np.float64)
    cropped = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    return bbox[:, 0], cropped, np.asarray(shape, dtype=np.float64)


def raw_to_preprocessed(points: np.ndarray, properties: Mapping, transpose_forward: Sequence[int],
                        shape: Sequence[int]) -> np.ndarray:
    """Map raw voxel coordinates to the preprocessed grid.

    Args:
        points: (n, 3) raw voxel coordinates in the raw array's axis order (z, y, x for SimpleITK readers).
        properties: nnU-Net's per-case properties (``bbox_used_for_cropping``,
            ``shape_after_cropping_and_before_resampling``: after transposition).
        transpose_forward: the plans' ``transpose_forward``.
        shape: spatial shape of the preprocessed case.

    Returns:
        (n, 3) coordinates in the preprocessed array's axes; nnU-Net resamples with
        ``old = (new + 0.5) * old_shape / new_shape - 0.5`` (scikit-image's convention), inverted here.
    """
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))[:, list(transpose_forward)]
    start, cropped, new = _geometry(properties, transpose_forward, shape)
    return (p - start + 0.5) * new / cropped - 0.5


def preprocessed_to_raw(points: np.ndarray, properties: Mapping, transpose_forward: Sequence[int],
                        shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`raw_to_preprocessed`."""
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    start, cropped, new = _geometry(properties, transpose_forward, shape)
    t = (p + 0.5) * cropped / new - 0.5 + start
    back = np.argsort(np.asarray(transpose_forward))
    return t[:, back]


def physical_to_raw_voxel(points_xyz: np.ndarray, sitk_stuff: Mapping) -> np.ndarray:
    """Physical (x, y, z) mm to raw voxel (z, y, x), with SimpleITK's origin, direction and spacing."""
    p = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))
    origin = np.asarray(sitk_stuff["origin"], dtype=np.float64)
    spacing = np.asarray(sitk_stuff["spacing"], dtype=np.float64)
    direction = np.asarray(sitk_stuff["direction"], dtype=np.float64).reshape(3, 3)
    index_xyz = np.linalg.solve(direction * spacing[None, :], (p - origin).T).T
    return index_xyz[:, ::-1]


def raw_component_centroids(label: np.ndarray, tumour_label: int | None = None) -> dict[int, tuple[float, float, float]]:
    """Raw centroids (z, y, x) per lesion id.

    Args:
        label: raw label or instance array (z, y, x).
        tumour_label: for a label image, the tumour value: ids are ``scipy.ndimage.label``'s numbering of
            its components. None: ``label`` is an instance map whose values are the lesion ids.
    """
    label = np.asarray(label)
    if tumour_label is None:
        inst = label.astype(np.int64)
    else:
        inst, _ = label_lesions(label, tumour_label)
    ids = [int(i) for i in np.unique(inst) if i != 0]
    if not ids:
        return {}
    cents = ndimage.center_of_mass(np.ones(inst.shape, np.float32), inst, ids)
    return {i: tuple(float(v) for v in c) for i, c in zip(ids, cents)}


def match_case(components: Sequence[Component], centroids: Sequence[np.ndarray | None],
               spacing: Sequence[float], tolerance_mm: float) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Match reference centroids (preprocessed voxels) to components one-to-one.

    A pair (row, component) is allowed when the centroid lies inside the component's bounding box grown by
    one voxel, or within ``max(tolerance_mm, 0.5 * component diameter)`` of its centroid; among allowed
    pairs the assignment minimises the total distance.

    Args:
        components: the case's components.
        centroids: per row, its centroid in preprocessed voxels (z, y, x), or None when unknown.
        spacing: preprocessed (z, y, x) spacing in mm.
        tolerance_mm: distance tolerance.

    Returns:
        (pairs as (row index, component index, distance mm), unmatched row indices, unmatched component indices).
    """
    n_r, n_c = len(centroids), len(components)
    if n_r == 0 or n_c == 0:
        return [], list(range(n_r)), list(range(n_c))
    sp = np.asarray(spacing, dtype=np.float64)
    big = 1e9
    cost = np.full((n_r, n_c), big)
    dist = np.full((n_r, n_c), np.inf)
    for i, c in enumerate(centroids):
        if c is None:
            continue
        c = np.asarray(c, dtype=np.float64)
        for j, comp in enumerate(components):
            d = float(np.linalg.norm((c - np.asarray(comp.centroid)) * sp))
            inside = all(lo - 1 <= v <= hi for v, (lo, hi) in zip(c, comp.bbox))
            if inside or d <= max(tolerance_mm, 0.5 * comp.diameter_mm):
                cost[i, j] = d
                dist[i, j] = d
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(r), int(c), float(dist[r, c])) for r, c in zip(rows, cols) if cost[r, c] < big]
    matched_r = {p[0] for p in pairs}
    matched_c = {p[1] for p in pairs}
    return (pairs, [i for i in range(n_r) if i not in matched_r], [j for j in range(n_c) if j not in matched_c])


def _match_ids(components: Sequence[Component], rows: Sequence[TableRow], centroids: Sequence[np.ndarray | None],
               spacing: Sequence[float]) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Pairs (row, component) with ``component.index == row.lesion_id``; distance NaN without a centroid."""
    by_index = {c.index: j for j, c in enumerate(components)}
    pairs, lost_rows = [], []
    for i, r in enumerate(rows):
        j = by_index.get(r.lesion_id)
        if j is None:
            lost_rows.append(i)
            continue
        c = centroids[i]
        d = float("nan") if c is None else float(np.linalg.norm(
            (np.asarray(c) - np.asarray(components[j].centroid)) * np.asarray(spacing, dtype=np.float64)))
        pairs.append((i, j, d))
    matched = {j for _, j, _ in pairs}
    return pairs, lost_rows, [j for j in range(len(components)) if j not in matched]


def instance_components(instances: np.ndarray, spacing: Sequence[float]) -> list[Component]:
    """One :class:`Component` per non-zero value of an instance map; ``index`` is the lesion id."""
    inst = np.asarray(instances)
    if inst.size and inst.min() < 0:
        raise ValueError("instance maps must not hold negative values")
    inst = inst.astype(np.int64, copy=False)
    ids = [int(i) for i in np.unique(inst) if i != 0]
    if not ids:
        return []
    cents = ndimage.center_of_mass(np.ones(inst.shape, np.float32), inst, ids)
    counts = np.bincount(inst.ravel())
    boxes = ndimage.find_objects(inst)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return [Component(index=i, n_voxels=int(counts[i]), centroid=tuple(float(v) for v in c),
                      bbox=tuple((sl.start, sl.stop) for sl in boxes[i - 1]), volume_ml=float(counts[i]) * voxel_ml)
            for i, c in zip(ids, cents)]


def raw_to_preprocessed_grid(raw: np.ndarray, properties: Mapping, transpose_forward: Sequence[int],
                             shape: Sequence[int]) -> np.ndarray:
    """Carry a raw label/instance array onto the preprocessed grid (nearest neighbour).

    Transposes, crops with ``bbox_used_for_cropping`` and resamples with nnU-Net's coordinate convention, so an
    instance map lands on the voxels of the preprocessed image.
    """
    arr = np.transpose(np.asarray(raw), list(transpose_forward))
    box = tuple(slice(int(a), int(b)) for a, b in properties["bbox_used_for_cropping"])
    arr = arr[box]
    old = np.asarray(arr.shape, dtype=np.float64)
    axes = [np.clip(np.rint((np.arange(n) + 0.5) * o / n - 0.5), 0, o - 1).astype(np.intp)
            for n, o in zip(shape, old)]
    return arr[np.ix_(*axes)]


@dataclass(frozen=True)
class CaseGeometry:
    """What the join needs from one preprocessed case.

    Attributes:
        components: the case's lesions in the preprocessed grid.
        properties: nnU-Net's per-case properties.
        shape: preprocessed spatial shape.
        by_id: the components come from an instance map and their ``index`` is the lesion id: rows are joined
            by id instead of by centroid.
    """

    components: list[Component]
    properties: Mapping
    shape: tuple[int, int, int]
    by_id: bool = False


def join_lesions(rows: Iterable[TableRow], cases: Mapping[str, CaseGeometry], *, transpose_forward: Sequence[int],
                 spacing: Sequence[float], raw_centroids: Mapping[str, Mapping[int, tuple[float, float, float]]] | None = None,
                 tolerance_mm: float = 5.0) -> JoinReport:
    """Join table rows with the tumour components of the preprocessed cases.

    Args:
        rows: the lesion table.
        cases: every preprocessed case of the data set, by case id.
        transpose_forward: the plans' ``transpose_forward``.
        spacing: preprocessed (z, y, x) spacing in mm.
        raw_centroids: per case, lesion id -> raw centroid (z, y, x), used for rows without centroid columns
            (from an instance map or the raw label's component numbering).
        tolerance_mm: see :func:`match_case`.

    Returns:
        A :class:`JoinReport`; nothing is raised here, the caller decides how strict to be.
    """
    report = JoinReport()
    by_case: dict[str, list[TableRow]] = {}
    for r in rows:
        by_case.setdefault(r.case_id, []).append(r)
    report.unknown_cases = sorted(c for c in by_case if c not in cases)
    for case_id in sorted(cases):
        geo = cases[case_id]
        case_rows = sorted(by_case.get(case_id, []), key=lambda r: r.lesion_id)
        cents: list[np.ndarray | None] = []
        reasons: list[str] = []
        for r in case_rows:
            raw = None
            if r.centroid_vox is not None:
                raw = np.asarray(r.centroid_vox)
            elif r.centroid_mm is not None and "sitk_stuff" in geo.properties:
                raw = physical_to_raw_voxel(r.centroid_mm, geo.properties["sitk_stuff"])[0]
            elif raw_centroids is not None and case_id in raw_centroids:
                found = raw_centroids[case_id].get(r.lesion_id)
                raw = None if found is None else np.asarray(found)
            if raw is None:
                cents.append(None)
                reasons.append("no such lesion id" if raw_centroids is not None and case_id in raw_centroids
                               else "no centroid in the table and no raw labels or instance map to number lesions")
                continue
            cents.append(raw_to_preprocessed(raw, geo.properties, transpose_forward, geo.shape)[0])
            reasons.append("no tumour component at its centroid")
        if geo.by_id:
            pairs, lost_rows, lost_comps = _match_ids(geo.components, case_rows, cents, spacing)
            reasons = ["no such instance in the instance map"] * len(case_rows)
        else:
            pairs, lost_rows, lost_comps = match_case(geo.components, cents, spacing, tolerance_mm)
        for ri, ci, d in pairs:
            report.lesions.append(Lesion(case_rows[ri], geo.components[ci], d))
        report.unmatched_rows += [(case_rows[i], reasons[i]) for i in lost_rows]
        for j in lost_comps:
            comp = geo.components[j]
            raw = preprocessed_to_raw(comp.centroid, geo.properties, transpose_forward, geo.shape)[0]
            report.unmatched_components.append((case_id, comp, tuple(float(v) for v in raw)))
    report.lesions.sort(key=lambda les: (les.row.case_id, les.row.lesion_id))
    return report

