"""Figures of the report (paper.md Figures 3, 4, 6; Figures 5 and 7 come from ``classify evaluate``).

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through pyplot, so the
report neither needs a display nor changes the process-wide backend.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_liver.evaluation.report.manifest import Manifest, SegmentationModel

SOFT_TISSUE_WINDOW = (40.0, 400.0)  # level, width (HU)
LIVER_COLOUR = "#2ca02c"
TUMOUR_COLOUR = "#ff2d55"
DPI = 110
METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "sensitivity": "Sensitivity", "specificity": "Specificity",
                 "accuracy": "Accuracy", "auc": "AUC", "ppv": "PPV", "f1": "F1"}


class FigureUnavailable(Exception):
    """The inputs of a figure are missing; the message says which."""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")


# --------------------------------------------------------------------------------------------------------
# Figure 3: CT, ground truth and each model's mask on the slice with the largest tumour area


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def _read_lps(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) array in LPS orientation (rows anterior->posterior, columns patient right->left: the
    radiological view) and the (x, y, z) spacing."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:  # a corrupt or truncated file: the figure is left out, with the reason
        raise FigureUnavailable(f"{path}: unreadable ({str(e).strip().splitlines()[-1][:200]})") from None
    if img.GetDimension() != 3:
        raise FigureUnavailable(f"{path}: not a 3D image")
    img = sitk.DICOMOrient(img, "LPS")
    return sitk.GetArrayFromImage(img), img.GetSpacing()


def _case_files(manifest: Manifest, models: Sequence[SegmentationModel]) -> list[dict]:
    """Cases of the reference evaluation with an image, a reference label and each model's prediction."""
    ref_model = manifest.model(manifest.reference) or models[0]
    out = []
    for case, info in ref_model.summary["cases"].items():
        image = _find_nifti(manifest.images, f"{case}_0000")
        label = _find_nifti(manifest.labels, case) if manifest.labels is not None else None
        if label is None and info.get("reference_file") and os.path.isfile(info["reference_file"]):
            label = Path(info["reference_file"])
        if image is None or label is None:
            continue
        preds = {}
        for m in models:
            p = _find_nifti(m.predictions, case) if m.predictions is not None else None
            if p is None:
                f = (m.summary["cases"].get(case) or {}).get("prediction_file")
                p = Path(f) if f and os.path.isfile(f) else None
            preds[m.label] = p
        out.append(dict(case=case, image=image, label=label, predictions=preds))
    return out


def _crop_box(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[slice, slice]:
    """A square-ish box around every liver mask of the slice with a margin; the whole slice if empty."""
    union = np.zeros(shape, dtype=bool)
    for m in masks:
        union |= m
    if not union.any():
        return slice(0, shape[0]), slice(0, shape[1])
    ys, xs = np.nonzero(union)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * 1.35 + 4
    half = max(half, min(shape) / 6)
    y0, y1 = int(max(0, math.floor(cy - half))), int(min(shape[0], math.ceil(cy + half + 1)))
    x0, x1 = int(max(0, math.floor(cx - half))), int(min(shape[1], math.ceil(cx + half + 1)))
    return slice(y0, y1), slice(x0, x1)


def _overlay(ax, ct: np.ndarray, label: np.ndarray | None, aspect: float) -> None:
    from matplotlib.colors import to_rgba

    level, width = SOFT_TISSUE_WINDOW
    ax.imshow(ct, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="nearest",
              aspect=aspect)
    if label is not None:
        rgba = np.zeros(label.shape + (4,))
        rgba[label == 1] = to_rgba(LIVER_COLOUR, 0.28)
        rgba[label == 2] = to_rgba(TUMOUR_COLOUR, 0.45)
        ax.imshow(rgba, interpolation="nearest", aspect=aspect)
        for value, colour in ((1, LIVER_COLOUR), (2, TUMOUR_COLOUR)):
            mask = label >= value
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def figure3(manifest: Manifest, path: Path, *, max_cases: int = 4) -> dict:
    """Qualitative comparison: one row per test case (at most ``max_cases``), columns CT, ground truth and
    every model's mask, on the axial slice with the largest reference tumour area (liver if no tumour).

    Returns:
        What was drawn: ``cases`` (case, slice index in the LPS-oriented volume, structure the slice was
        chosen by, per-model tumour and liver Dice of that case from summary.json), ``columns``.

    Raises:
        FigureUnavailable: no images, no labels, or no case with every file.
    """
    models = manifest.unique_models()
    if manifest.images is None:
        raise FigureUnavailable("results.json names no dataset.images (the test CTs, <case>_0000.nii.gz)")
    if not models:
        raise FigureUnavailable("results.json lists no segmentation models")
    cases = _case_files(manifest, models)
    if not cases:
        raise FigureUnavailable(f"no evaluated case has both an image in {manifest.images} and a reference label")
    cases = cases[:max_cases]
    with_pred = [m for m in models if any(c["predictions"][m.label] is not None for c in cases)]
    if not with_pred:
        raise FigureUnavailable("no model has its predictions (segmentation.models[].predictions) on disk")
    columns = ["CT", "Ground truth"] + [m.label for m in with_pred]
    ncol, nrow = len(columns), len(cases)
    fig = _figure(1.9 * ncol + 0.3, 1.95 * nrow + 0.65)
    grid = fig.add_gridspec(nrow, ncol, left=0.035, right=0.995, top=1 - 0.32 / (1.95 * nrow + 0.65),
                            bottom=0.42 / (1.95 * nrow + 0.65), wspace=0.04, hspace=0.1)
    drawn = []
    for r, c in enumerate(cases):
        ct, spacing = _read_lps(c["image"])
        label, _ = _read_lps(c["label"])
        if label.shape != ct.shape:
            raise FigureUnavailable(f"{c['label']}: shape {label.shape[::-1]} differs from {c['image']} "
                                    f"{ct.shape[::-1]}")
        tumour_area = (label == 2).sum(axis=(1, 2))
        structure = "tumour" if tumour_area.any() else "liver"
        area = tumour_area if tumour_area.any() else (label > 0).sum(axis=(1, 2))
        z = int(np.argmax(area))
        preds = {}
        for m in with_pred:
            p = c["predictions"][m.label]
            if p is not None:
                arr, _ = _read_lps(p)
                preds[m.label] = arr[z] if arr.shape == label.shape else None
        box = _crop_box([label[z] > 0] + [p > 0 for p in preds.values() if p is not None], label.shape[1:])
        aspect = spacing[1] / spacing[0]
        dice = {}
        for col, name in enumerate(columns):
            ax = fig.add_subplot(grid[r, col])
            if col == 0:
                _overlay(ax, ct[z][box], None, aspect)
                ax.set_ylabel(f"{c['case']}\nz = {z}", fontsize=8)
            elif col == 1:
                _overlay(ax, ct[z][box], label[z][box], aspect)
            else:
                pred = preds.get(name)
                if pred is None:
                    _overlay(ax, ct[z][box], None, aspect)
                    ax.text(0.5, 0.5, "no prediction" if name not in preds else "shape differs",
                            transform=ax.transAxes, ha="center", va="center", color="yellow", fontsize=8)
                else:
                    _overlay(ax, ct[z][box], pred[box], aspect)
                    v = (manifest.model(name).summary["cases"].get(c["case"]) or {})
                    d = {s: (v.get(s) or {}).get("dice") for s in ("tumour", "liver")}
                    dice[name] = d
                    text = "  ".join(f"{s[0].upper()} {x:.2f}" for s, x in d.items() if x is not None)
                    ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=7, color="white",
                            va="bottom", ha="left", bbox=dict(facecolor="black", alpha=0.55, pad=1.5, lw=0))
            if r == 0:
                ax.set_title(name, fontsize=9)
        drawn.append(dict(case=c["case"], slice=z, chosen_by=structure, dice=dice))
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(facecolor=LIVER_COLOUR, alpha=0.6, label="liver"),
                        Patch(facecolor=TUMOUR_COLOUR, alpha=0.7, label="tumour")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    _save(fig, path)
    return dict(cases=drawn, columns=columns, window=dict(level=SOFT_TISSUE_WINDOW[0], width=SOFT_TISSUE_WINDOW[1]))


# --------------------------------------------------------------------------------------------------------
# Bar charts (Figures 4 and 6)


def grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, Sequence, Sequence]],
                 highlight: str | None = None) -> None:
    """Bars of every series (name, means, stds) over ``groups``; None/NaN means are drawn as 'n/a'."""
    from matplotlib import colormaps

    n = max(len(series), 1)
    width = 0.8 / n
    colours = colormaps["tab10"].colors
    x = np.arange(len(groups))
    for i, (name, means, stds) in enumerate(series):
        pos = x - 0.4 + width * (i + 0.5)
        m = np.array([np.nan if v is None else v for v in means], dtype=float)
        s = np.array([0.0 if v is None or not math.isfinite(v) else v for v in stds], dtype=float)
        ax.bar(pos, np.nan_to_num(m), width * 0.92, yerr=np.where(np.isfinite(m), s, 0), capsize=2,
               color=colours[i % len(colours)], edgecolor="black" if name == highlight else "none",
               linewidth=1.0, label=name, error_kw=dict(lw=0.8))
        for p, v in zip(pos, m, strict=True):
            if not np.isfinite(v):
                ax.text(p, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.1)
    ax.grid(axis="y", lw=0.4, alpha=0.5)
    ax.set_axisbelow(True)


def figure4(table1: dict, path: Path) -> None:
    """Liver and tumour Dice, IoU, sensitivity, specificity of every Table 1 model (mean ± std over cases)."""
    from nnunet_liver.evaluation.report.tables import SEG_METRICS, STRUCTURES

    fig = _figure(10.5, 3.7)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, s in zip(axes, STRUCTURES, strict=True):
        series = [(r["label"], [r["metrics"][s][k]["mean"] for k in SEG_METRICS],
                   [r["metrics"][s][k]["std"] for k in SEG_METRICS]) for r in table1["rows"]]
        grouped_bars(ax, [METRIC_LABELS[k] for k in SEG_METRICS], series, highlight=table1["reference"])
        ax.set_title(s, fontsize=10)
    axes[0].set_ylabel("mean ± std")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.2, wspace=0.05)
    _save(fig, path)


def figure6(table2: dict, path: Path) -> None:
    """Table 2 metrics (mean ± std over folds) of every classifier."""
    from nnunet_liver.evaluation.report.tables import CLS_METRICS

    fig = _figure(9.0, 3.6)
    ax = fig.subplots()
    series = [(r["name"], [r["mean"][k] for k in CLS_METRICS], [r["std"][k] for k in CLS_METRICS])
              for r in table2["rows"]]
    grouped_bars(ax, [METRIC_LABELS[k] for k in CLS_METRICS], series, highlight=table2["reference_name"])
    ax.set_ylabel("mean ± std over folds")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(series), 4), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.95, bottom=0.22)
    _save(fig, path)


def roc_from_runs(table2: dict, path: Path) -> None:
    """Re-plot the ROC curves from the run folders table2.json lists (when roc.png is missing)."""
    from nnunet_liver.classification.evaluation import collect_runs, plot_roc

    run_dirs = table2.get("run_dirs") or {}
    if not run_dirs:
        raise FigureUnavailable("table2.json lists no run folders to re-plot the ROC curves from")
    try:
        runs = collect_runs(run_dirs)
    except ValueError as e:
        raise FigureUnavailable(str(e)) from None
    plot_roc(runs, table2, path)


# --------------------------------------------------------------------------------------------------------
# The real CT ("Phantom to real"): reference and predicted contours on three axial slices and one coronal


REAL_CT_REFERENCE_COLOUR = "#ffd60a"  # yellow
REAL_CT_PREDICTION_COLOUR = "#19c3ff"  # sky blue: apart from yellow for every common colour-vision deficiency


def real_ct_slices(label: np.ndarray) -> dict:
    """Slices of the LPS-oriented reference ``label`` (z, y, x) to show: three axial slices (at a quarter
    and three quarters of the liver's z-extent and through the tumour's largest area; the middle of the liver
    instead when there is no tumour), from superior to inferior, and the coronal row through the tumour's
    centroid (else the liver's).

    Raises:
        FigureUnavailable: the reference has no liver.
    """
    liver = label > 0
    if not liver.any():
        raise FigureUnavailable("the reference label has no liver")
    z = np.flatnonzero(liver.any(axis=(1, 2)))
    z0, z1 = int(z[0]), int(z[-1])
    tumour_area = (label == 2).sum(axis=(1, 2))
    has_tumour = bool(tumour_area.any())
    middle = int(np.argmax(tumour_area)) if has_tumour else (z0 + z1) // 2
    axial = {int(round(z0 + 0.25 * (z1 - z0))), middle, int(round(z0 + 0.75 * (z1 - z0)))}
    for extra in range(z0, z1 + 1):  # a liver of one or two slices: fewer distinct slices
        if len(axial) >= 3:
            break
        axial.add(extra)
    centre = np.argwhere(label == 2) if has_tumour else np.argwhere(liver)
    return dict(axial=sorted(axial, reverse=True), tumour_slice=middle if has_tumour else None,
                coronal=int(round(centre[:, 1].mean())), liver_slices=[z0, z1])


def _contours(ax, label: np.ndarray, colour: str) -> None:
    for value, style, width in ((1, "solid", 1.1), (2, (0, (2.5, 1.5)), 1.5)):
        mask = label >= value
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=width, linestyles=[style])


def _orientation(ax, left: str, right: str, top: str) -> None:
    from matplotlib import patheffects

    style = dict(transform=ax.transAxes, color="white", fontsize=8, fontweight="bold",
                 path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    ax.text(0.015, 0.5, left, ha="left", va="center", **style)
    ax.text(0.985, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.985, top, ha="center", va="top", **style)


def real_ct_figure(real_ct, path: Path, *, title: str | None = None) -> dict:
    """CT in the soft-tissue window with the reference and predicted liver (solid) and tumour (dashed)
    contours: three axial slices in the radiological view (patient's right on the left, anterior up) and one
    coronal slice (superior up, patient's right on the left), at the slices of ``real_ct_slices``.

    Args:
        real_ct: the manifest's ``RealCT`` (its image, reference and prediction are read).

    Returns:
        What was drawn: ``axial`` (slice indices of the LPS-oriented volume, superior first),
        ``tumour_slice``, ``coronal`` (row index), ``liver_slices`` and ``window``.

    Raises:
        FigureUnavailable: a file is not named or unreadable, or the three grids differ.
    """
    files = {k: getattr(real_ct, k) for k in ("image", "reference", "prediction")}
    absent = [k for k, v in files.items() if v is None]
    if absent:
        raise FigureUnavailable(f"results.json names no real_ct.{' or real_ct.'.join(absent)}")
    ct, spacing = _read_lps(files["image"])
    label, _ = _read_lps(files["reference"])
    pred, _ = _read_lps(files["prediction"])
    for name, arr in (("reference", label), ("prediction", pred)):
        if arr.shape != ct.shape:
            raise FigureUnavailable(f"{files[name]}: shape {arr.shape[::-1]} differs from {files['image']} "
                                    f"{ct.shape[::-1]}")
    where = real_ct_slices(label)
    level, width = SOFT_TISSUE_WINDOW
    window = dict(cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="nearest")
    sx, sy, sz = spacing
    panels = [(f"axial z = {z}" + (" (tumour)" if z == where["tumour_slice"] else ""), ct[z], label[z], pred[z],
               sy / sx, ("R", "L", "A")) for z in where["axial"]]
    y = where["coronal"]
    # rows of the coronal slice: z runs inferior -> superior in LPS, flipped so that superior is up
    panels.append((f"coronal y = {y}", ct[::-1, y, :], label[::-1, y, :], pred[::-1, y, :], sz / sx,
                   ("R", "L", "S")))
    heights = [p[1].shape[0] * p[4] for p in panels]
    widths = [p[1].shape[1] for p in panels]
    scale = 2.9 / max(widths)
    height = max(heights) * scale / 0.7
    fig = _figure(sum(widths) * scale + 0.4, height)
    grid = fig.add_gridspec(1, len(panels), width_ratios=widths, left=0.01, right=0.99, top=0.83, bottom=0.13,
                            wspace=0.04)
    for i, (name, img, ref, prd, aspect, letters) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(img, aspect=aspect, **window)
        _contours(ax, ref, REAL_CT_REFERENCE_COLOUR)
        _contours(ax, prd, REAL_CT_PREDICTION_COLOUR)
        _orientation(ax, *letters)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=w, ls=ls, label=f"{who} {what}")
               for who, c in (("reference", REAL_CT_REFERENCE_COLOUR), ("predicted", REAL_CT_PREDICTION_COLOUR))
               for what, ls, w in (("liver", "-", 1.4), ("tumour", "--", 1.6))]
    legend = fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=True, facecolor="#3a3a3a",
                        edgecolor="none")
    for text in legend.get_texts():
        text.set_color("white")
    if title:
        fig.suptitle(title, fontsize=10, y=0.985)
    _save(fig, path)
    return dict(**where, window=dict(level=level, width=width))
