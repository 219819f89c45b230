"""The files of one predicted case: lesion table, findings, overlay figures.

``lesions.csv`` and ``findings.json`` hold the same lesions (``LESION_COLUMNS``); the figures show slices in
the radiological convention whatever the file's orientation (axial: patient right on the left, anterior up;
coronal: head up), in a soft-tissue window (level 40, width 400 HU), with the lesion's contour in red and the
liver's in green.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_liver.data.io import json_safe

__all__ = ["LESION_COLUMNS", "SOFT_TISSUE", "axis_map", "lesion_rows", "oriented_slice", "write_findings",
           "write_lesion_csv", "write_lesion_overlay", "write_summary_figure"]

LESION_COLUMNS = (
    "case", "lesion_id", "centroid_x_vox", "centroid_y_vox", "centroid_z_vox", "centroid_x_mm", "centroid_y_mm",
    "centroid_z_mm", "volume_ml", "axial_diameter_mm", "mean_hu", "std_hu", "malignancy_prob", "small",
)
SOFT_TISSUE = (40.0, 400.0)  # level, width (HU)


def lesion_rows(case: str, lesions: Sequence, probabilities: dict[int, float] | None) -> list[dict]:
    """One dict per lesion with ``LESION_COLUMNS`` (probability None without a classifier)."""
    rows = []
    for les in lesions:
        p = None if probabilities is None else probabilities.get(les.lesion_id)
        rows.append({
            "case": case, "lesion_id": les.lesion_id,
            "centroid_x_vox": round(les.centroid_index[0], 3), "centroid_y_vox": round(les.centroid_index[1], 3),
            "centroid_z_vox": round(les.centroid_index[2], 3),
            "centroid_x_mm": round(les.centroid_mm[0], 3), "centroid_y_mm": round(les.centroid_mm[1], 3),
            "centroid_z_mm": round(les.centroid_mm[2], 3),
            "volume_ml": round(les.volume_ml, 4), "axial_diameter_mm": round(les.axial_diameter_mm, 2),
            "mean_hu": round(les.mean_hu, 2), "std_hu": round(les.std_hu, 2),
            "malignancy_prob": None if p is None else round(p, 4), "small": les.small,
        })
    return rows


def write_lesion_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """``lesions.csv``: an empty ``malignancy_prob`` cell means no classifier; ``small`` is 0/1."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LESION_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "malignancy_prob": "" if r["malignancy_prob"] is None else r["malignancy_prob"],
                        "small": int(r["small"])})


def write_findings(path: str | os.PathLike, findings: dict) -> None:
    Path(path).write_text(json.dumps(json_safe(findings), indent=2, allow_nan=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# orientation


def axis_map(direction: Sequence[float]) -> list[tuple[int, float]]:
    """For each numpy axis (z, y, x) of a SimpleITK array: the patient axis (0 x/L, 1 y/P, 2 z/S) it runs along
    and the sign. A one-to-one assignment, so oblique volumes still get three different axes."""
    from scipy.optimize import linear_sum_assignment

    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)  # column j: index axis j in LPS
    phys, index = linear_sum_assignment(-np.abs(d))
    by_index = {int(j): int(p) for p, j in zip(phys, index, strict=True)}
    return [(by_index[2 - a], 1.0 if d[by_index[2 - a], 2 - a] >= 0 else -1.0) for a in range(3)]


def oriented_slice(volume: np.ndarray, amap: list[tuple[int, float]], spacing_zyx: Sequence[float], normal: int,
                   index: int, rows: tuple[int, float], cols: tuple[int, float]):
    """A 2D view: the slice ``index`` along the numpy axis that runs along patient axis ``normal``, oriented so
    that rows run along patient axis ``rows[0]`` in direction ``rows[1]`` and columns likewise.

    Returns:
        (2D view, (row spacing, column spacing) in mm, the numpy axis sliced).
    """
    ax = next(a for a in range(3) if amap[a][0] == normal)
    sl = np.take(volume, index, axis=ax)
    rest = [a for a in range(3) if a != ax]
    if amap[rest[0]][0] != rows[0]:
        sl, rest = sl.T, rest[::-1]
    if amap[rest[0]][1] != rows[1]:
        sl = sl[::-1, :]
    if amap[rest[1]][1] != cols[1]:
        sl = sl[:, ::-1]
    return sl, (float(spacing_zyx[rest[0]]), float(spacing_zyx[rest[1]])), ax


AXIAL = dict(normal=2, rows=(1, 1.0), cols=(0, 1.0))  # anterior up, patient right on the left
CORONAL = dict(normal=1, rows=(2, -1.0), cols=(0, 1.0))  # head up, patient right on the left


# ----------------------------------------------------------------------------------------------------------------
# figures (drawn with Pillow: a figure per lesion must cost milliseconds, not the ~0.1 s of a matplotlib figure)

RED, ORANGE, GREEN, YELLOW, WHITE = (255, 40, 40), (255, 160, 0), (60, 220, 60), (255, 230, 0), (255, 255, 255)
BACKGROUND = (20, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _windowed(image2d: np.ndarray) -> np.ndarray:
    level, width = SOFT_TISSUE
    g = np.clip((image2d.astype(np.float32) - (level - width / 2)) / width, 0, 1) * 255
    return g.astype(np.uint8)


def _panel(image2d: np.ndarray, spacing2d: Sequence[float], overlays: Sequence[tuple[np.ndarray, tuple, int]],
           size_px: int, box: tuple[float, float, float, float] | None = None, labels=()):
    """A windowed slice with contours, resampled to square pixels, the longer side ``size_px``.

    Args:
        image2d: (rows, cols) HU.
        spacing2d: (row, column) spacing in mm.
        overlays: (mask, colour, thickness in pixels) drawn as outlines, in order.
        box: (row0, row1, col0, col1) in mm to show (default: the whole slice); outside the slice is black.
        labels: (row mm, col mm, text) drawn at those places.

    Returns:
        (PIL image, function mapping (row mm, col mm) to pixel (x, y)).
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    sr, sc = float(spacing2d[0]), float(spacing2d[1])
    if box is None:
        box = (0.0, image2d.shape[0] * sr, 0.0, image2d.shape[1] * sc)
    r0, r1, c0, c1 = box
    scale = size_px / max(r1 - r0, c1 - c0)  # pixels per mm
    h, w = max(1, int(round((r1 - r0) * scale))), max(1, int(round((c1 - c0) * scale)))
    rows = np.floor((r0 + (np.arange(h) + 0.5) / scale) / sr).astype(np.int64)
    cols = np.floor((c0 + (np.arange(w) + 0.5) / scale) / sc).astype(np.int64)
    rin = (rows >= 0) & (rows < image2d.shape[0])
    cin = (cols >= 0) & (cols < image2d.shape[1])
    rr, cc = np.clip(rows, 0, image2d.shape[0] - 1), np.clip(cols, 0, image2d.shape[1] - 1)
    inside = rin[:, None] & cin[None, :]
    gray = np.where(inside, _windowed(image2d)[np.ix_(rr, cc)], 0).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    for mask, colour, thickness in overlays:
        m = mask[np.ix_(rr, cc)] & inside
        if m.any():
            edge = m & ~ndimage.binary_erosion(m, iterations=max(1, thickness), border_value=0)
            rgb[edge] = colour
    img = Image.fromarray(rgb)

    def to_px(row_mm: float, col_mm: float) -> tuple[float, float]:
        return (col_mm - c0) * scale, (row_mm - r0) * scale

    if labels:
        draw = ImageDraw.Draw(img)
        font = _font(12)
        for row_mm, col_mm, text in labels:
            x, y = to_px(row_mm, col_mm)
            draw.text((x, y), text, fill=YELLOW, font=font, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0))
    return img, to_px


TABLE_ROW_PX = 16


def _compose(panels: Sequence, header: Sequence[tuple[str, tuple]], table: Sequence[Sequence[str]] = (),
             columns: Sequence[int] = ()):
    """Panels side by side under a header of (line, colour); optionally a table on the right whose cells are
    right-aligned at the x offsets ``columns``."""
    from PIL import Image, ImageDraw

    pad, line_h = 8, 20
    head_h = pad + line_h * len(header) + pad
    table_w = (columns[-1] + pad) if table else 0
    width = pad + sum(p.width + pad for p in panels) + table_w
    height = head_h + max([p.height for p in panels] + [len(table) * TABLE_ROW_PX]) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    for i, (line, colour) in enumerate(header):
        draw.text((pad, pad + i * line_h), line, fill=colour, font=font)
    x = pad
    for p in panels:
        canvas.paste(p, (x, head_h))
        x += p.width + pad
    small = _font(12)
    for i, row in enumerate(table):
        y = head_h + i * TABLE_ROW_PX
        if len(row) == 1:  # a note across the table
            draw.text((x, y), row[0], fill=WHITE, font=small)
            continue
        for cell, right in zip(row, columns, strict=True):
            draw.text((x + right, y), cell, fill=ORANGE if cell == "small" else WHITE, font=small, anchor="ra")
    return canvas


def _save_png(image, path: str | os.PathLike) -> None:
    image.save(path, format="PNG", compress_level=1)


def _prob_text(p: float | None) -> str:
    return "P(malignant): not computed (no classifier)" if p is None else f"P(malignant) = {p:.2f}"


def _centre_mm(mask2d: np.ndarray, spacing2d: Sequence[float]) -> tuple[float, float] | None:
    if not mask2d.any():
        return None
    rr, cc = np.nonzero(mask2d)
    return (rr.mean() + 0.5) * spacing2d[0], (cc.mean() + 0.5) * spacing2d[1]


def write_lesion_overlay(path: str | os.PathLike, *, case: str, image: np.ndarray, seg: np.ndarray,
                         labelled: np.ndarray, lesion, probability: float | None, direction: Sequence[float],
                         spacing_zyx: Sequence[float], tumour_label: int, size_px: int = 420) -> None:
    """One lesion: the axial slice through its centroid (whole slice and a zoom), its contour in red, other
    lesions orange, the liver green, with its size, HU and probability above."""
    amap = axis_map(direction)
    ax_np = next(a for a in range(3) if amap[a][0] == 2)
    k = int(np.clip(round(lesion.centroid_index[::-1][ax_np]), 0, image.shape[ax_np] - 1))
    img2, sp, _ = oriented_slice(image, amap, spacing_zyx, index=k, **AXIAL)
    lab2, _, _ = oriented_slice(labelled, amap, spacing_zyx, index=k, **AXIAL)
    seg2, _, _ = oriented_slice(seg, amap, spacing_zyx, index=k, **AXIAL)
    this = lab2 == lesion.lesion_id
    overlays = [(seg2 >= 1, GREEN, 1), ((seg2 == tumour_label) & ~this, ORANGE, 1), (this, RED, 2)]
    full, _ = _panel(img2, sp, overlays, size_px)
    centre = _centre_mm(this, sp) or (img2.shape[0] * sp[0] / 2, img2.shape[1] * sp[1] / 2)
    extent = max(img2.shape[0] * sp[0], img2.shape[1] * sp[1])
    half = max(25.0, min(1.5 * lesion.axial_diameter_mm, extent / 4))
    zoom, _ = _panel(img2, sp, overlays, full.height, box=(centre[0] - half, centre[0] + half,
                                                            centre[1] - half, centre[1] + half))
    header = [
        (f"{case}  lesion {lesion.lesion_id}   axial slice {k} (soft-tissue window; right: zoom)", WHITE),
        (f"{lesion.axial_diameter_mm:.1f} mm longest axial diameter, {lesion.volume_ml:.2f} ml, "
         f"{lesion.mean_hu:.0f} +/- {lesion.std_hu:.0f} HU", WHITE),
        (_prob_text(probability) + ("   |   under 10 mm: low confidence" if lesion.small else ""),
         ORANGE if lesion.small else YELLOW),
    ]
    _save_png(_compose([full, zoom], header), path)


def write_summary_figure(path: str | os.PathLike, *, case: str, image: np.ndarray, seg: np.ndarray,
                         labelled: np.ndarray, lesions: Sequence, probabilities: dict[int, float] | None,
                         direction: Sequence[float], spacing_zyx: Sequence[float], tumour_label: int,
                         liver_ml: float, tumour_ml: float, max_rows: int = 30, size_px: int = 420) -> None:
    """Axial and coronal slices through the largest lesion (or the liver's centre) with every contour and the
    lesion ids, and the lesion table."""
    amap = axis_map(direction)
    if lesions:
        centre = max(lesions, key=lambda les: les.n_voxels).centroid_index[::-1]
    elif (seg >= 1).any():
        centre = np.argwhere(seg >= 1).mean(axis=0)
    else:
        centre = (np.asarray(image.shape) - 1) / 2
    panels = []
    for view in (AXIAL, CORONAL):
        ax_np = next(a for a in range(3) if amap[a][0] == view["normal"])
        k = int(np.clip(round(centre[ax_np]), 0, image.shape[ax_np] - 1))
        img2, sp, _ = oriented_slice(image, amap, spacing_zyx, index=k, **view)
        seg2, _, _ = oriented_slice(seg, amap, spacing_zyx, index=k, **view)
        lab2, _, _ = oriented_slice(labelled, amap, spacing_zyx, index=k, **view)
        labels = []
        for lid in np.unique(lab2[lab2 > 0])[:40]:
            c = _centre_mm(lab2 == lid, sp)
            labels.append((c[0], c[1], str(int(lid))))
        panel, _ = _panel(img2, sp, [(seg2 >= 1, GREEN, 1), (seg2 == tumour_label, RED, 2)], size_px, labels=labels)
        panels.append(panel)
    table = [("id", "diam mm", "ml", "HU", "P(mal)", "")]
    for les in sorted(lesions, key=lambda x: -x.volume_ml)[:max_rows]:
        p = None if probabilities is None else probabilities.get(les.lesion_id)
        table.append((str(les.lesion_id), f"{les.axial_diameter_mm:.1f}", f"{les.volume_ml:.2f}", f"{les.mean_hu:.0f}",
                      "n/a" if p is None else f"{p:.2f}", "small" if les.small else ""))
    if len(lesions) > max_rows:
        table.append((f"... {len(lesions) - max_rows} smaller lesion(s) in lesions.csv",))
    if not lesions:
        table.append(("no lesions",))
    header = [(f"{case}: liver {liver_ml:.0f} ml, tumour {tumour_ml:.1f} ml in {len(lesions)} lesion(s)", WHITE),
              ("axial and coronal slices through the largest lesion; liver green, tumour red"
               + ("" if probabilities is not None else "; no classifier: no malignancy probabilities"), WHITE)]
    _save_png(_compose(panels, header, table, columns=(30, 95, 160, 205, 260, 305)), path)
