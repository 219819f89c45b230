"""Lesion-centred cubes from nnU-Net's preprocessed data, cached on disk.

Geometry. A crop is a cube of ``cube_mm`` millimetres centred on the lesion's centroid (preprocessed voxel
coordinates), sampled on a ``size``^3 grid whose sample ``i`` lies at ``centre + (i + 0.5 - size / 2) *
cube_mm / size`` mm along each axis (so the centroid sits at the middle of the grid, between samples
``size / 2 - 1`` and ``size / 2``). The image is interpolated linearly and keeps raw HU; outside the volume
it is air (-1000 HU, ``pad_hu``): lesions at the border are padded, never dropped. The lesion's own
component (other lesions excluded) is sampled as a 0/1 mask (linear, >= 0.5; nearest-neighbour if that
leaves it empty).

Size. ``CropSpec(crop_mm=64)`` (default) gives every lesion the same physical field of view, so the
network sees absolute size; ``crop_mm=None`` is lesion-adaptive, ``max(min_mm, diameter_factor x
equivalent diameter)`` (48 mm, 2x by default), which keeps large lesions whole with context at the cost of
absolute scale.

Cache layout (one folder)::

    <case_id>__<lesion_id>.npz   image float32 (size^3, HU), mask uint8 (size^3), meta (JSON string)
    index.csv                    one row per lesion (written last: its presence marks a complete cache);
                                 source_key = hash of what the crop depends on
    crops.json                   data set, plans, configuration, spacing, crop parameters, table
    splits.json                  cross-validation folds (see ``splits.py``)

``meta`` records the source files' names, sizes and modification times, a hash of the lesion's voxels and
every crop parameter; a crop whose meta matches is not extracted again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_liver.classification.lesions import (
    CaseGeometry,
    Component,
    JoinReport,
    Lesion,
    LesionJoinError,
    TableRow,
    instance_components,
    join_lesions,
    raw_component_centroids,
    raw_to_preprocessed_grid,
    tumour_components,
)

__all__ = [
    "AIR_HU",
    "CROP_FORMAT",
    "INDEX_COLUMNS",
    "CropEntry",
    "CropError",
    "CropSpec",
    "ExtractResult",
    "PreprocessedData",
    "crop_component",
    "crop_coordinates",
    "extract_crop",
    "extract_crops",
    "load_crop",
    "load_segmentations",
    "open_preprocessed",
    "raw_centroids_from_folder",
    "raw_reader",
    "read_index",
    "tumour_label_from_dataset_json",
]

CROP_FORMAT = 1
AIR_HU = -1000.0
INDEX_COLUMNS = ("case_id", "lesion_id", "label", "subtype", "file", "cube_mm", "diameter_mm", "n_voxels",
                 "centre_z", "centre_y", "centre_x", "padded", "match_distance_mm", "source_key")


class CropError(ValueError):
    """Crops cannot be made or read (no HU, no lesions, missing cache)."""


@dataclass(frozen=True)
class CropSpec:
    """Crop parameters.

    Attributes:
        size: samples per side of the cube.
        crop_mm: side of the cube in mm; None for lesion-adaptive ``max(min_mm, diameter_factor * diameter)``.
        min_mm, diameter_factor: the adaptive rule.
        pad_hu: value outside the volume.
        channel: image channel of the preprocessed data.
    """

    size: int = 64
    crop_mm: float | None = 64.0
    min_mm: float = 48.0
    diameter_factor: float = 2.0
    pad_hu: float = AIR_HU
    channel: int = 0

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ValueError(f"crop size must be >= 4 samples, got {self.size}")
        if self.crop_mm is not None and not (math.isfinite(self.crop_mm) and self.crop_mm > 0):
            raise ValueError(f"crop side must be a positive number of mm, got {self.crop_mm}")
        if self.min_mm <= 0 or self.diameter_factor <= 0:
            raise ValueError("min_mm and diameter_factor must be positive")

    def cube_mm(self, diameter_mm: float) -> float:
        """Side of the cube for a lesion of this equivalent diameter."""
        if self.crop_mm is not None:
            return float(self.crop_mm)
        return float(max(self.min_mm, self.diameter_factor * diameter_mm))

    def describe(self) -> str:
        side = f"{self.crop_mm:g} mm" if self.crop_mm is not None else \
            f"max({self.min_mm:g} mm, {self.diameter_factor:g} x diameter)"
        return f"{self.size}^3 samples over {side}"


def crop_coordinates(centre: Sequence[float], spacing: Sequence[float], cube_mm: float, size: int) -> list[np.ndarray]:
    """Sample positions of a crop along each axis, in voxels of the source grid.

    Args:
        centre: (z, y, x) centre in voxels.
        spacing: (z, y, x) voxel size in mm.
        cube_mm: side of the cube in mm.
        size: samples per side.

    Returns:
        Three (size,) arrays.
    """
    offsets_mm = ((np.arange(size) + 0.5) / size - 0.5) * cube_mm
    return [c + offsets_mm / s for c, s in zip(centre, spacing)]


def _sample(volume: np.ndarray, coords: list[np.ndarray], *, order: int, cval: float,
            select: int | None = None) -> np.ndarray:
    """Interpolate ``volume`` (or ``volume == select``) on the grid ``coords`` (outer product), reading only the
    box it needs."""
    lo = [max(math.floor(c.min()) - 1, 0) for c in coords]
    hi = [min(math.ceil(c.max()) + 2, n) for c, n in zip(coords, volume.shape)]
    size = tuple(len(c) for c in coords)
    if any(h <= l for l, h in zip(lo, hi)):  # entirely outside
        return np.full(size, cval, dtype=np.float32)
    box = volume[tuple(slice(l, h) for l, h in zip(lo, hi))]
    box = np.ascontiguousarray(box if select is None else box == select, dtype=np.float32)
    grid = np.meshgrid(*[c - l for c, l in zip(coords, lo)], indexing="ij")
    # grid-constant: beyond the box (= beyond the volume, the box only stops at its edges) is cval, also
    # for interpolation between the last voxel and the outside
    return ndimage.map_coordinates(box, grid, order=order, mode="grid-constant", cval=cval,
                                   prefilter=False).astype(np.float32)


def extract_crop(image: np.ndarray, spacing: Sequence[float], centre: Sequence[float], cube_mm: float, size: int,
                 *, mask: np.ndarray | None = None, mask_value: int | None = None,
                 pad_hu: float = AIR_HU) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """One lesion-centred cube.

    Args:
        image: (z, y, x) HU.
        spacing: (z, y, x) mm.
        centre: (z, y, x) voxels.
        cube_mm: side in mm.
        size: samples per side.
        mask: optional (z, y, x) lesion mask (non-zero = lesion) or labelled array on the same grid.
        mask_value: with a labelled ``mask``, the lesion's value (compared only inside the crop's box).
        pad_hu: value outside the volume.

    Returns:
        (image crop float32 (size, size, size), mask crop uint8 or None, whether the cube reaches outside the
        volume).
    """
    coords = crop_coordinates(centre, spacing, cube_mm, size)
    padded = any(c.min() < 0 or c.max() > n - 1 for c, n in zip(coords, image.shape))
    crop = _sample(image, coords, order=1, cval=pad_hu)
    mask_crop = None
    if mask is not None:
        if mask_value is None:
            mask, mask_value = mask != 0, True
        m = _sample(mask, coords, order=1, cval=0.0, select=mask_value)
        mask_crop = (m >= 0.5).astype(np.uint8)
        if not mask_crop.any():
            mask_crop = (_sample(mask, coords, order=0, cval=0.0, select=mask_value) > 0).astype(np.uint8)
    return crop, mask_crop, padded


def crop_component(image: np.ndarray, spacing: Sequence[float], component: Component, labelled: np.ndarray,
                   spec: CropSpec) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """The crop of one lesion component: a cube of ``spec.cube_mm(component.diameter_mm)`` around its centroid,
    with the component's own voxels (value ``component.index`` of ``labelled``) as the mask.

    Args:
        image: (z, y, x) HU of the preprocessed case (``spec.channel`` already selected).
        spacing: (z, y, x) mm of that grid.
        component: the lesion, from ``tumour_components`` or ``instance_components`` on the same grid.
        labelled: (z, y, x) labelled lesions of that grid.
        spec: crop parameters.

    Returns:
        As :func:`extract_crop`.
    """
    return extract_crop(image, spacing, component.centroid, spec.cube_mm(component.diameter_mm), spec.size,
                        mask=labelled, mask_value=component.index, pad_hu=spec.pad_hu)


@dataclass
class PreprocessedData:
    """One preprocessed configuration of a data set, as nnU-Net wrote it."""

    dataset_name: str
    folder: Path  # nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>
    plans: dict
    dataset_json: dict
    configuration: str

    @property
    def spacing(self) -> list[float]:
        return [float(s) for s in self.plans["configurations"][self.configuration]["spacing"]]

    @property
    def transpose_forward(self) -> list[int]:
        return list(self.plans.get("transpose_forward", [0, 1, 2]))

    def case_ids(self) -> list[str]:
        return sorted(self.dataset().identifiers)

    def dataset(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        return infer_dataset_class(str(self.folder))(str(self.folder))

    def source_files(self, case_id: str) -> list[Path]:
        """Files of one case (data, segmentation, properties), for the cache's freshness check."""
        names = sorted(p for p in self.folder.iterdir()
                       if p.is_file() and (p.stem == case_id or p.stem == f"{case_id}_seg"))
        return names


def _config_value(plans: dict, configuration: str, key: str):
    config = plans["configurations"][configuration]
    while key not in config and "inherits_from" in config:
        config = {**plans["configurations"][config["inherits_from"]], **{k: v for k, v in config.items()
                                                                           if k != "inherits_from"}}
    return config.get(key)


def open_preprocessed(preprocessed_root: str | os.PathLike, dataset_id: int, plans_name: str = "nnUNetPlans",
                      configuration: str = "3d_fullres", channel: int = 0) -> PreprocessedData:
    """Locate and check a preprocessed data set.

    Raises:
        CropError: missing data set, plans, configuration or preprocessed folder; or the image channel is not
            stored in HU (normalization scheme other than ``NoNormalization``).
    """
    from nnunet_liver.data.io import datasets_with_id

    root = Path(preprocessed_root)
    found = datasets_with_id(root, dataset_id)
    if not found:
        raise CropError(f"no Dataset{int(dataset_id):03d}_* folder in nnUNet_preprocessed ({root}): run "
                        f"nnunet-liver plan_and_preprocess -d {dataset_id} -c {configuration} first")
    if len(found) > 1:
        raise CropError(f"dataset id {dataset_id} is ambiguous in {root}: {', '.join(p.name for p in found)}")
    base = found[0]
    plans_file = base / f"{plans_name}.json"
    if not plans_file.is_file():
        raise CropError(f"{plans_file}: no such plans (-p {plans_name})")
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    if configuration not in plans.get("configurations", {}):
        raise CropError(f"{plans_file}: no configuration {configuration!r} (has: "
                        f"{', '.join(plans.get('configurations', {}))})")
    schemes = _config_value(plans, configuration, "normalization_schemes") or []
    if channel >= len(schemes):
        raise CropError(f"{plans_file}: channel {channel} does not exist ({len(schemes)} channel(s))")
    if schemes[channel] != "NoNormalization":
        raise CropError(f"{plans_file}, configuration {configuration}: channel {channel} is normalised with "
                        f"{schemes[channel]}, so the preprocessed data hold no Hounsfield units; the classifier "
                        f"windows raw HU: re-plan with nnunet-liver plan_and_preprocess (keeps HU)")
    identifier = _config_value(plans, configuration, "data_identifier") or f"{plans_name}_{configuration}"
    folder = base / identifier
    if not folder.is_dir() or not any(folder.iterdir()):
        raise CropError(f"{folder}: not preprocessed (run nnunet-liver plan_and_preprocess -d {dataset_id} "
                        f"-c {configuration})")
    ds_file = base / "dataset.json"
    dataset_json = json.loads(ds_file.read_text(encoding="utf-8")) if ds_file.is_file() else {}
    return PreprocessedData(base.name, folder, plans, dataset_json, configuration)


def tumour_label_from_dataset_json(dataset_json: Mapping) -> int:
    """The tumour label value from ``dataset.json`` ("tumor", "tumour" or "lesion"), else 2."""
    labels = dataset_json.get("labels", {})
    for name in ("tumor", "tumour", "lesion", "Tumor", "Tumour", "Lesion"):
        if name in labels:
            value = labels[name]
            if isinstance(value, (list, tuple)):
                if len(value) != 1:
                    raise CropError(f"dataset.json: tumour region {value} is not a single label; pass --tumour-label")
                value = value[0]
            return int(value)
    return 2


def _crop_file(row: TableRow) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in row.case_id)
    return f"{safe}__{row.lesion_id}.npz"


def _meta(data: PreprocessedData, lesion: Lesion, spec: CropSpec, tumour_label: int, labelled: np.ndarray) -> dict:
    sources = []
    for p in data.source_files(lesion.row.case_id):
        st = p.stat()
        sources.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {
        "format": CROP_FORMAT,
        "dataset": data.dataset_name,
        "data_identifier": data.folder.name,
        "case_id": lesion.row.case_id,
        "lesion_id": lesion.row.lesion_id,
        "label": lesion.row.label,
        "component_centroid": [round(v, 4) for v in lesion.component.centroid],
        # the lesion's voxels: a changed instance map (or label) renews the crop even if its centroid stays
        "mask_sha1": _mask_digest(labelled, lesion.component),
        "tumour_label": tumour_label,
        "spec": asdict(spec),
        "sources": sources,
    }


def _mask_digest(labelled: np.ndarray, component) -> str:
    """SHA-1 of the component's voxel positions (read inside its bounding box only)."""
    box = tuple(slice(a, b) for a, b in component.bbox)
    where = np.argwhere(labelled[box] == component.index) + np.array([a for a, _ in component.bbox])
    return hashlib.sha1(np.ascontiguousarray(where, dtype=np.int64).tobytes()).hexdigest()


def _meta_key(meta: Mapping) -> str:
    """Hash of what a crop depends on (``padded`` is a result, not an input)."""
    inputs = {k: v for k, v in meta.items() if k != "padded"}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _cached_meta(path: Path) -> dict | None:
    try:
        with np.load(path) as f:
            return json.loads(str(f["meta"]))
    except Exception:  # missing, truncated or foreign file: extract again
        return None


@dataclass
class ExtractResult:
    """What :func:`extract_crops` did."""

    folder: Path
    lesions: list[Lesion]
    written: int
    skipped: int
    removed: int
    seconds: float
    report: JoinReport

    @property
    def lesions_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 and self.written else float("nan")


def _load_preprocessed(data: PreprocessedData, ds, case_id: str, channel: int | None = None):
    """(segmentation (z, y, x), properties) of one preprocessed case, or with ``channel`` (image of that
    channel as float32, properties); a corrupt file or non-finite image values are a :class:`CropError` naming
    the case's files."""
    files = ", ".join(p.name for p in data.source_files(case_id)) or f"{case_id}.*"
    try:
        d, seg, _, props = ds.load_case(case_id)
        out = np.asarray(seg[0]) if channel is None else np.asarray(d[channel], dtype=np.float32)
    except Exception as e:  # blosc2, numpy and pickle raise many kinds for a truncated or corrupt file
        text = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise CropError(f"{data.folder}: preprocessed case {case_id} ({files}) cannot be read ({type(e).__name__}"
                        f"{': ' + text if text else ''}); run nnunet-liver plan_and_preprocess again") from None
    if channel is not None and not np.isfinite(out).all():
        raise CropError(f"{data.folder}: preprocessed case {case_id} ({files}) holds NaN or infinite values in "
                        f"channel {channel} (from NaN voxels in its raw image): fix the image and preprocess again")
    return out, props


def load_segmentations(data: PreprocessedData, tumour_label: int, case_ids: Sequence[str] | None = None, *,
                       instance_maps: Callable[[str], np.ndarray | None] | None = None,
                       table_cases: Sequence[str] = ()) -> dict[str, tuple[CaseGeometry, np.ndarray]]:
    """Lesions of every case: ``{case_id: (geometry, labelled array)}``.

    Without ``instance_maps`` the lesions are the tumour components of the preprocessed segmentation; with
    them (``case_id -> raw instance array``) each instance, carried onto the preprocessed grid, is a lesion
    whose id is its value (touching lesions stay apart).

    Raises:
        CropError: instance maps are given but missing for a case that has tumour voxels or table rows.
    """
    ds = data.dataset()
    out, missing = {}, []
    for cid in case_ids if case_ids is not None else sorted(ds.identifiers):
        seg0, props = _load_preprocessed(data, ds, cid)
        raw = instance_maps(cid) if instance_maps is not None else None
        if raw is not None:
            labelled = raw_to_preprocessed_grid(raw, props, data.transpose_forward, seg0.shape).astype(np.int32)
            out[cid] = (CaseGeometry(instance_components(labelled, data.spacing), props, tuple(seg0.shape),
                                     by_id=True), labelled)
            continue
        labelled, comps = tumour_components(seg0, tumour_label, data.spacing)
        if instance_maps is not None and (comps or cid in table_cases):
            missing.append(cid)
        out[cid] = (CaseGeometry(comps, props, tuple(seg0.shape)), labelled)
    if missing:
        where = getattr(instance_maps, "folder", "the instance folder")
        raise CropError(f"no instance map for {len(missing)} case(s) with lesions in {where}: "
                        f"{', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}")
    return out


def extract_crops(data: PreprocessedData, rows: Sequence[TableRow], out_dir: str | os.PathLike, *,
                  spec: CropSpec = CropSpec(), tumour_label: int | None = None,
                  raw_centroids: Callable[[str], Mapping[int, tuple[float, float, float]]] | None = None,
                  instance_maps: Callable[[str], np.ndarray | None] | None = None,
                  strict: bool = True, tolerance_mm: float = 5.0, progress: bool = True,
                  table_path: str | None = None, log: Callable[[str], None] = print,
                  validate: Callable[[list[Lesion]], None] | None = None) -> ExtractResult:
    """Join the table with the preprocessed components and write (or refresh) the crop cache.

    Args:
        data: from :func:`open_preprocessed`.
        rows: the lesion table.
        out_dir: cache folder (created).
        spec: crop parameters.
        tumour_label: tumour value; default from dataset.json.
        raw_centroids: ``case_id -> {lesion_id: raw (z, y, x)}`` for tables without centroid columns (from
            raw labels); called only for cases that need it.
        instance_maps: ``case_id -> raw instance array`` (see :func:`raw_reader`): lesions are the instances,
            joined with the table by lesion id.
        strict: raise on any mismatch; False skips unmatched rows/components with a warning.
        tolerance_mm: matching tolerance (see ``lesions.match_case``).
        progress: tqdm progress bar.
        table_path: recorded in crops.json.
        log: where warnings go.
        validate: called with the joined lesions before anything is written; raise to abort (e.g. folds
            that cannot be made).

    Raises:
        LesionJoinError: mismatches (strict) — nothing is written then.
        CropError: no lesion to crop.
    """
    from tqdm import tqdm

    from nnunet_liver.data.io import check_writable_dir, staged_file

    t0 = time.perf_counter()
    tumour_label = tumour_label_from_dataset_json(data.dataset_json) if tumour_label is None else tumour_label
    segs = load_segmentations(data, tumour_label, instance_maps=instance_maps,
                              table_cases=sorted({r.case_id for r in rows}))
    cases = {cid: geo for cid, (geo, _) in segs.items()}
    need_raw = {r.case_id for r in rows if r.centroid_vox is None and r.centroid_mm is None and r.case_id in cases}
    raw = {cid: raw_centroids(cid) for cid in sorted(need_raw)} if (need_raw and raw_centroids) else None
    report = join_lesions(rows, cases, transpose_forward=data.transpose_forward, spacing=data.spacing,
                          raw_centroids=raw, tolerance_mm=tolerance_mm)
    if not report.ok:
        if strict:
            raise LesionJoinError(report.describe())
        log(f"warning: skipping {report.n_skipped()} unmatched lesion(s)/component(s) and "
            f"{len(report.unknown_cases)} unknown case(s): {report.describe(limit=3)}")
    lesions = report.lesions
    if not lesions:
        raise CropError(f"no lesions to crop: the table and {data.dataset_name} ({data.folder.name}) share no "
                        f"tumour component (label {tumour_label})")

    if validate is not None:
        validate(lesions)
    out = Path(out_dir)
    index_path = out / "index.csv"
    plan = []
    for les in lesions:
        meta = _meta(data, les, spec, tumour_label, segs[les.row.case_id][1])
        path = out / _crop_file(les.row)
        cached = _cached_meta(path) if path.is_file() else None
        plan.append((les, meta, path, cached is not None and _meta_key(cached) == _meta_key(meta)))
    todo = [item for item in plan if not item[3]]
    ds = data.dataset() if todo else None
    for cid in sorted({les.row.case_id for les, _, _, _ in todo}):
        _load_preprocessed(data, ds, cid, spec.channel)  # unreadable or non-finite images: stop before writing
    out = check_writable_dir(out_dir)
    stale = [p for p in out.glob("*__*.npz") if p.name not in {_crop_file(les.row) for les in lesions}]
    if (todo or stale) and index_path.exists():
        index_path.unlink()  # the cache is incomplete until the new index is written

    current_case, image = None, None
    index_rows = []
    by_key = {}
    for les, meta, path, fresh in tqdm(plan, desc="crops", unit="lesion", disable=not progress, leave=False):
        cube = spec.cube_mm(les.component.diameter_mm)
        if not fresh:
            if les.row.case_id != current_case:
                image, _ = _load_preprocessed(data, ds, les.row.case_id, spec.channel)
                current_case = les.row.case_id
            crop, mask, padded = crop_component(image, data.spacing, les.component, segs[les.row.case_id][1], spec)
            meta["padded"] = bool(padded)
            with staged_file(path, overwrite=True) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, image=crop, mask=mask, meta=np.array(json.dumps(meta)))
        else:
            meta = _cached_meta(path)
        by_key[les.key] = meta
        index_rows.append({
            "case_id": les.row.case_id, "lesion_id": les.row.lesion_id, "label": les.row.label,
            "subtype": les.row.subtype, "file": path.name, "cube_mm": round(cube, 3),
            "diameter_mm": round(les.component.diameter_mm, 3), "n_voxels": les.component.n_voxels,
            "centre_z": round(les.component.centroid[0], 3), "centre_y": round(les.component.centroid[1], 3),
            "centre_x": round(les.component.centroid[2], 3), "padded": int(bool(meta.get("padded", False))),
            "match_distance_mm": round(les.distance_mm, 3) if math.isfinite(les.distance_mm) else "",
            "source_key": _meta_key(meta)[:16],
        })
    for p in stale:
        p.unlink()
    info = {
        "format": CROP_FORMAT, "dataset": data.dataset_name, "data_identifier": data.folder.name,
        "configuration": data.configuration, "spacing": data.spacing, "tumour_label": tumour_label,
        "spec": asdict(spec), "table": table_path, "n_lesions": len(lesions),
        "n_malignant": int(sum(les.row.label for les in lesions)),
        "skipped": {"unknown_cases": report.unknown_cases,
                    "unmatched_rows": [r.key for r, _ in report.unmatched_rows],
                    "unmatched_components": len(report.unmatched_components)},
    }
    with staged_file(out / "crops.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    with staged_file(index_path, overwrite=True) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(index_rows)
    written = len(todo)
    return ExtractResult(out, lesions, written, len(plan) - written, len(stale), time.perf_counter() - t0, report)


@dataclass(frozen=True)
class CropEntry:
    """One row of ``index.csv``."""

    case_id: str
    lesion_id: int
    label: int
    subtype: str
    file: str
    cube_mm: float
    diameter_mm: float

    @property
    def key(self) -> str:
        return f"{self.case_id}/{self.lesion_id}"


def read_index(crop_dir: str | os.PathLike) -> list[CropEntry]:
    """The lesions of a crop cache, in index order.

    Raises:
        CropError: no (complete) cache in ``crop_dir`` or an empty one.
    """
    path = Path(crop_dir) / "index.csv"
    if not path.is_file():
        raise CropError(f"no crop index in {crop_dir} (missing, or an extraction did not finish): run "
                        f"nnunet-liver classify extract")
    with open(path, encoding="utf-8", newline="") as f:
        entries = [CropEntry(r["case_id"], int(r["lesion_id"]), int(r["label"]) if r["label"] != "" else -1,
                             r.get("subtype", ""), r["file"], float(r["cube_mm"]), float(r["diameter_mm"]))
                   for r in csv.DictReader(f)]
    if not entries:
        raise CropError(f"{path}: empty lesion set")
    return entries


def load_crop(crop_dir: str | os.PathLike, entry: CropEntry) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 HU, mask uint8) of one cached lesion, each (size, size, size)."""
    path = Path(crop_dir) / entry.file
    try:
        with np.load(path) as f:
            return f["image"], f["mask"]
    except (OSError, KeyError, ValueError) as e:
        raise CropError(f"{path}: unreadable crop ({e}); run classify extract again") from None


def raw_reader(folder: str | os.PathLike, file_ending: str, reader_json: Mapping | None = None,
               ) -> Callable[[str], np.ndarray | None]:
    """``case_id -> (z, y, x) array`` of ``<folder>/<case_id><file_ending>`` read with nnU-Net's reader (None if absent).

    Args:
        folder: raw label folder (``labelsTr``) or an instance-map folder.
        file_ending: e.g. ".nii.gz".
        reader_json: dataset.json (to pick nnU-Net's reader/writer as nnU-Net does).
    """
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
    )

    folder = Path(folder)

    def read(case_id: str) -> np.ndarray | None:
        from nnunet_liver.data.images import ImageError, check_file, label_array_checked

        path = folder / f"{case_id}{file_ending}"
        if not path.is_file():
            return None
        try:  # the shared checks first (empty, truncated, corrupt, NaN, zero-length axes, 4D), then nnU-Net's
            # own reader, so that the array has exactly the axes and orientation of the preprocessed data
            check_file(path, "label map")
            rw = determine_reader_writer_from_dataset_json(dict(reader_json or {"file_ending": file_ending}),
                                                           str(path), allow_nonmatching_filename=True,
                                                           verbose=False)()
            try:
                seg, _ = rw.read_seg(str(path))
            except Exception as e:  # nnU-Net's readers raise RuntimeError, AssertionError, ...
                raise ImageError(f"{path}: cannot read the label map ({type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''})") from None
            if seg.ndim != 4 or seg.shape[0] != 1:
                raise ImageError(f"{path}: a label map of shape {tuple(seg.shape[1:])} with {seg.shape[0]} "
                                 f"channel(s); one 3D label map expected")
            return np.asarray(label_array_checked(seg[0], str(path), what="label map", max_value=2**31 - 1))
        except ImageError as e:
            raise CropError(str(e)) from None

    read.folder = folder  # for messages
    read.file_ending = file_ending
    return read


def raw_centroids_from_folder(folder: str | os.PathLike, file_ending: str, *, tumour_label: int | None,
                              reader_json: Mapping | None = None) -> Callable[[str], dict[int, tuple[float, float, float]]]:
    """A ``raw_centroids`` callback: lesion id -> raw centroid, from label images (``tumour_label``: ids number
    their components in ``scipy.ndimage.label`` order) or instance maps (``tumour_label=None``)."""
    read = raw_reader(folder, file_ending, reader_json)

    def centroids(case_id: str) -> dict[int, tuple[float, float, float]]:
        arr = read(case_id)
        return {} if arr is None else raw_component_centroids(arr, tumour_label)

    return centroids
