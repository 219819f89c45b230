"""Cross-validated evaluation of the lesion classifiers (paper.md 4.2: Table 2, Figures 5-7).

Inputs are the per-fold ``predictions.csv`` of each model (test lesions of that fold). For every model:

- per-fold metrics and their mean ± standard deviation over folds (the "± x" of Table 2);
- pooled metrics (all folds' test lesions together) with 95% percentile bootstrap intervals, resampling
  whole patients (``bootstrap_ci(groups=case ids)``);
- accuracy, sensitivity, specificity, PPV, NPV and F1 from the model's lesion decision (2D baselines: the
  majority vote of slices), AUC and ROC from its score (2D: mean slice probability).

Comparisons with the reference model (``hybrid3d``): paired t-test across folds of the per-fold AUC and
accuracy (the paper's test), and DeLong's test of the pooled AUCs on the lesions both models scored.

Figures: ``roc.png`` (pooled ROC of every model), ``metrics.png`` (bar chart of Table 2), and
``attention.png`` (at the hybrid network's attended layer: mean channel-attention weights of benign vs
malignant test lesions, and attention-weighted feature maps and Grad-CAM heat maps over axial slices of a
malignant and a benign crop).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_liver.evaluation.classification_metrics import (
    auc_score,
    binary_metrics,
    bootstrap_ci,
    fold_mean_std,
    roc_points,
)
from nnunet_liver.evaluation.statistics import delong_test, paired_ttest

__all__ = [
    "DISPLAY_NAMES",
    "TABLE_METRICS",
    "EvaluationError",
    "FoldPredictions",
    "attention_figure",
    "collect_runs",
    "compare_models",
    "evaluate_classification",
    "evaluate_runs",
    "lesion_metrics",
    "plot_metrics",
    "plot_roc",
    "read_predictions",
    "summarize_model",
    "table2_markdown",
]

DISPLAY_NAMES = {
    "resnet50_2d": "ResNet 50 (2D)",
    "densenet121_2d": "DenseNet 121 (2D)",
    "hybrid3d_noatt": "Hybrid 3D, no attention",
    "hybrid3d": "Hybrid 3D (proposed)",
}
TABLE_METRICS = ("accuracy", "sensitivity", "specificity", "auc", "ppv", "npv", "f1")
_LABELS = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "auc": "AUC",
           "ppv": "PPV", "npv": "NPV", "f1": "F1"}


class EvaluationError(ValueError):
    """Nothing to evaluate, or predictions that cannot be compared."""


@dataclass
class FoldPredictions:
    """Test predictions of one model on one fold."""

    keys: list[str]
    cases: np.ndarray
    y: np.ndarray
    prob: np.ndarray
    pred: np.ndarray


def read_predictions(path: str | os.PathLike) -> FoldPredictions:
    """Read a ``predictions.csv`` written by training (labels required)."""
    keys, cases, y, prob, pred = [], [], [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] == "":
                raise EvaluationError(f"{path}: lesion {r['case_id']}/{r['lesion_id']} has no label")
            keys.append(f"{r['case_id']}/{r['lesion_id']}")
            cases.append(r["case_id"])
            y.append(int(r["label"]))
            prob.append(float(r["prob"]))
            pred.append(int(r["pred"]))
    return FoldPredictions(keys, np.asarray(cases), np.asarray(y, dtype=np.int64), np.asarray(prob),
                           np.asarray(pred, dtype=np.int64))


def collect_runs(run_dirs: Mapping[str, str | os.PathLike]) -> dict[str, dict[int, FoldPredictions]]:
    """``{model: {fold: predictions}}`` from each model's run folder (``fold_<k>/predictions.csv``).

    Models without any finished fold are left out; none at all raises :class:`EvaluationError`.
    """
    runs: dict[str, dict[int, FoldPredictions]] = {}
    for model, folder in run_dirs.items():
        folds = {}
        for p in sorted(Path(folder).glob("fold_*/predictions.csv")):
            try:
                k = int(p.parent.name.split("_", 1)[1])
            except ValueError:
                continue
            folds[k] = read_predictions(p)
        if folds:
            runs[model] = dict(sorted(folds.items()))
    if not runs:
        raise EvaluationError("no finished fold (predictions.csv) in: " + ", ".join(map(str, run_dirs.values())))
    return runs


def lesion_metrics(y: np.ndarray, prob: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Threshold metrics of the decisions ``pred`` and the AUC of the scores ``prob``."""
    m = binary_metrics(y, pred.astype(np.float64), threshold=0.5)
    m["auc"] = auc_score(y, prob)
    return m


def _pool(folds: Mapping[int, FoldPredictions]) -> FoldPredictions:
    parts = list(folds.values())
    return FoldPredictions([k for p in parts for k in p.keys], np.concatenate([p.cases for p in parts]),
                           np.concatenate([p.y for p in parts]), np.concatenate([p.prob for p in parts]),
                           np.concatenate([p.pred for p in parts]))


def summarize_model(folds: Mapping[int, FoldPredictions], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-fold, mean ± sd and pooled metrics (with 95% patient-level bootstrap CIs) of one model."""
    per_fold = {k: lesion_metrics(p.y, p.prob, p.pred) for k, p in folds.items()}
    mean, std = fold_mean_std(per_fold, TABLE_METRICS)
    pooled = _pool(folds)
    pm = lesion_metrics(pooled.y, pooled.prob, pooled.pred)
    ci = {}
    both = pooled.y.min() != pooled.y.max()
    for name in TABLE_METRICS:
        if not both or n_boot <= 0:
            ci[name] = (float("nan"), float("nan"))
            continue
        score = pooled.prob if name == "auc" else pooled.pred.astype(np.float64)
        ci[name] = bootstrap_ci(pooled.y, score, name, n_boot=n_boot, seed=seed, groups=pooled.cases)
    return {"folds": sorted(folds), "per_fold": per_fold, "mean": mean, "std": std, "pooled": pm, "pooled_ci": ci,
            "n_lesions": int(pooled.y.size), "n_malignant": int(pooled.y.sum())}


def compare_models(runs: Mapping[str, Mapping[int, FoldPredictions]], reference: str) -> dict[str, dict]:
    """Paired tests of every model against ``reference``.

    Returns:
        ``{model: {"folds": [...], "auc_ttest": {...}, "accuracy_ttest": {...}, "delong": {...}}}``; t-tests
        pair the per-fold values of the folds both models finished (model minus reference), DeLong uses the
        pooled test lesions both scored.
    """
    out = {}
    ref = runs[reference]
    for model, folds in runs.items():
        if model == reference:
            continue
        common = sorted(set(folds) & set(ref))
        res: dict = {"folds": common}
        for metric in ("auc", "accuracy"):
            a = [lesion_metrics(folds[k].y, folds[k].prob, folds[k].pred)[metric] for k in common]
            b = [lesion_metrics(ref[k].y, ref[k].prob, ref[k].pred)[metric] for k in common]
            t = paired_ttest(a, b)
            res[f"{metric}_ttest"] = {"n": t.n, "mean_diff": t.mean_diff, "t": t.statistic, "p": t.p}
        pa, pr = _pool({k: folds[k] for k in common}), _pool({k: ref[k] for k in common})
        pos = {k: i for i, k in enumerate(pr.keys)}
        shared = [(i, pos[k]) for i, k in enumerate(pa.keys) if k in pos]
        ys = pa.y[[i for i, _ in shared]]
        if min(int((ys == 1).sum()), int((ys == 0).sum())) >= 2:  # DeLong needs two lesions of each class
            ia, ir = map(list, zip(*shared))
            auc_a, auc_r, z, p = delong_test(pa.y[ia], pa.prob[ia], pr.prob[ir])
            res["delong"] = {"n": len(shared), "auc": auc_a, "auc_reference": auc_r, "z": z, "p": p}
        else:
            res["delong"] = {"n": len(shared), "auc": float("nan"), "auc_reference": float("nan"),
                             "z": float("nan"), "p": float("nan")}
        out[model] = res
    return out


def evaluate_runs(runs: Mapping[str, Mapping[int, FoldPredictions]], *, reference: str = "hybrid3d",
                  n_boot: int = 1000, seed: int = 0) -> dict:
    """Summaries of every model and the comparisons with ``reference`` (the first model if it is absent)."""
    if reference not in runs:
        reference = next(iter(runs))
    return {"reference": reference,
            "models": {m: summarize_model(f, n_boot=n_boot, seed=seed) for m, f in runs.items()},
            "comparisons": compare_models(runs, reference)}


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ordered(models: Sequence[str]) -> list[str]:
    order = [m for m in DISPLAY_NAMES if m in models]
    return order + [m for m in models if m not in order]


def table2_markdown(result: dict, *, title: str = "Table 2: Classification performance") -> str:
    """Markdown: mean ± sd over folds, pooled values with 95% CIs, and the paired tests."""
    models = _ordered(list(result["models"]))
    names = [DISPLAY_NAMES.get(m, m) for m in models]
    lines = [f"# {title}", "", "Mean ± standard deviation over cross-validation folds (test fold of each).", "",
             "| Metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(models)]
    for metric in TABLE_METRICS:
        cells = [f"{_fmt(result['models'][m]['mean'][metric])} ± {_fmt(result['models'][m]['std'][metric])}"
                 for m in models]
        lines.append(f"| {_LABELS[metric]} | " + " | ".join(cells) + " |")
    lines += ["", "Pooled test lesions of all folds, 95% bootstrap interval (patients resampled).", "",
              "| Metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(models)]
    for metric in TABLE_METRICS:
        cells = []
        for m in models:
            s = result["models"][m]
            lo, hi = s["pooled_ci"][metric]
            cells.append(f"{_fmt(s['pooled'][metric])} [{_fmt(lo)}, {_fmt(hi)}]")
        lines.append(f"| {_LABELS[metric]} | " + " | ".join(cells) + " |")
    counts = [f"{DISPLAY_NAMES.get(m, m)}: {result['models'][m]['n_lesions']} lesions "
              f"({result['models'][m]['n_malignant']} malignant), folds {result['models'][m]['folds']}" for m in models]
    lines += ["", "Lesions: " + "; ".join(counts) + "."]
    ref = result["reference"]
    if result["comparisons"]:
        lines += ["", f"Paired comparisons with {DISPLAY_NAMES.get(ref, ref)} (difference = model - reference).", "",
                  "| Model | folds | ΔAUC (folds) | t-test p (AUC) | ΔAccuracy (folds) | t-test p (accuracy) | "
                  "pooled AUC vs reference | DeLong p |", "|---|---|---|---|---|---|---|---|"]
        for m in models:
            if m not in result["comparisons"]:
                continue
            c = result["comparisons"][m]
            d = c["delong"]
            lines.append(f"| {DISPLAY_NAMES.get(m, m)} | {len(c['folds'])} | {_fmt(c['auc_ttest']['mean_diff'], 3)} | "
                         f"{_fmt_p(c['auc_ttest']['p'])} | {_fmt(c['accuracy_ttest']['mean_diff'], 3)} | "
                         f"{_fmt_p(c['accuracy_ttest']['p'])} | {_fmt(d['auc'], 3)} vs {_fmt(d['auc_reference'], 3)} | "
                         f"{_fmt_p(d['p'])} |")
        lines += ["", "t-tests need at least two folds; n/a marks undefined values."]
    return "\n".join(lines) + "\n"


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(runs: Mapping[str, Mapping[int, FoldPredictions]], result: dict, path: str | os.PathLike) -> None:
    """Pooled ROC curves of all models in one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for m in _ordered(list(runs)):
        pooled = _pool(runs[m])
        if pooled.y.min() == pooled.y.max():
            continue
        fpr, tpr, _ = roc_points(pooled.y, pooled.prob)
        s = result["models"][m]
        lo, hi = s["pooled_ci"]["auc"]
        ax.plot(fpr, tpr, lw=2 if m == result["reference"] else 1.3,
                label=f"{DISPLAY_NAMES.get(m, m)}: AUC {_fmt(s['pooled']['auc'])} [{_fmt(lo)}, {_fmt(hi)}]")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, pooled cross-validation test lesions", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_aspect("equal")
    fig.tight_layout()
    _savefig(fig, Path(path))


def plot_metrics(result: dict, path: str | os.PathLike) -> None:
    """Bar chart of accuracy, sensitivity, specificity and AUC (mean ± sd over folds) per model."""
    plt = _pyplot()
    models = _ordered(list(result["models"]))
    metrics = ("accuracy", "sensitivity", "specificity", "auc")
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        s = result["models"][m]
        mean = [s["mean"][k] for k in metrics]
        err = [s["std"][k] if math.isfinite(s["std"][k]) else 0.0 for k in metrics]
        ax.bar(np.arange(len(metrics)) + i * width - 0.4 + width / 2, np.nan_to_num(mean), width, yerr=err,
               capsize=2, label=DISPLAY_NAMES.get(m, m))
    ax.set_xticks(np.arange(len(metrics)), [_LABELS[k] for k in metrics])
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Classification metrics (mean ± sd over folds)", fontsize=9)
    fig.tight_layout()
    _savefig(fig, Path(path))


def attention_figure(checkpoint: str | os.PathLike, crop_dir: str | os.PathLike, keys: Sequence[str],
                     path: str | os.PathLike, *, device: str = "cpu", n_slices: int = 3) -> dict:
    """Attention of a hybrid network on test lesions: channel weights, attention-weighted features, Grad-CAM.

    All three are taken at the attended layer, ``model.gradcam_layer`` (the last stage's dense-block output
    after its channel (and spatial) attention, entering the transition conv): the bar chart shows that stage's
    mean channel weights for benign and malignant lesions; per shown lesion, one row of axial slices overlays
    the attention-weighted feature map (mean over channels of the attended map, scaled to its maximum) and one
    the Grad-CAM map of the predicted class at the same layer (``gradcam_3d(target="predicted")``).

    Args:
        checkpoint: a hybrid3d checkpoint (hybrid3d_noatt: no channel weights to show; the maps are drawn).
        crop_dir: crop cache.
        keys: lesions to summarise (the fold's test lesions); the malignant lesion with the highest and the
            benign lesion with the lowest probability are shown.
        path: PNG to write.
        n_slices: axial slices per lesion (across the lesion).

    Returns:
        What was plotted: the lesions shown, the attended layer and the mean channel weights per class.
    """
    import torch
    import torch.nn.functional as F

    from nnunet_liver.architectures.hybrid3d import gradcam_3d
    from nnunet_liver.augment.window import as_window_config
    from nnunet_liver.classification.crops import read_index
    from nnunet_liver.classification.training import (
        load_checkpoint,
        load_crop_data,
        model_from_checkpoint,
        model_input,
    )

    ckpt = load_checkpoint(checkpoint)
    if not ckpt["model"].startswith("hybrid3d"):
        raise EvaluationError(f"{checkpoint}: attention maps need a hybrid3d checkpoint, not {ckpt['model']}")
    model, config = model_from_checkpoint(ckpt)
    model = model.to(device)
    wanted = set(keys)
    entries = [e for e in read_index(crop_dir) if e.key in wanted]
    if not entries:
        raise EvaluationError("no lesions for the attention figure")
    data = load_crop_data(crop_dir, config.input_size, entries)
    captured = []
    handle = model.gradcam_layer.register_forward_hook(lambda _m, _i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            x = model_input(data.images.to(device), data.masks.to(device), config, train=False)
            out = model(x)
    finally:
        handle.remove()
    attended = captured[0].abs().mean(dim=1, keepdim=True)
    attended = F.interpolate(attended, size=x.shape[2:], mode="trilinear", align_corners=False)[:, 0]
    attended = (attended / attended.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)).cpu().numpy()
    weights = out.channel_weights[-1].cpu().numpy() if out.channel_weights else None
    prob = torch.sigmoid(out.logit).cpu().numpy()
    y = data.labels.numpy()
    show = []
    if (y == 1).any():
        show.append(int(np.flatnonzero(y == 1)[np.argmax(prob[y == 1])]))
    if (y == 0).any():
        show.append(int(np.flatnonzero(y == 0)[np.argmin(prob[y == 0])]))
    cams = gradcam_3d(model, x[show], target="predicted").cpu().numpy() if show else np.zeros((0,))

    plt = _pyplot()
    rows = 2 * max(len(show), 1)
    fig = plt.figure(figsize=(3.4 + 2.0 * n_slices, 2.1 * rows + 0.5))
    grid = fig.add_gridspec(rows, n_slices + 1, width_ratios=[2.6] + [1] * n_slices)
    ax = fig.add_subplot(grid[:, 0])
    if weights is not None:
        channels = np.arange(weights.shape[1])
        for cls, name, colour in ((0, "benign", "tab:blue"), (1, "malignant", "tab:red")):
            if (y == cls).any():
                ax.bar(channels + (0.2 if cls else -0.2), weights[y == cls].mean(0), 0.4, color=colour,
                       label=f"{name} (n={(y == cls).sum()})")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no attention\n(ablation)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("feature channel (last stage)")
    ax.set_ylabel("mean channel-attention weight")
    ax.set_title("3D channel attention, last stage", fontsize=9)
    win = as_window_config(config.window)
    lo, hi = win.eval_level - win.eval_width / 2, win.eval_level + win.eval_width / 2
    shown = []
    for k, i in enumerate(show):
        img = data.images[i, 0].numpy()
        msk = data.masks[i, 0].numpy()
        zs = np.flatnonzero(msk.any(axis=(1, 2)))
        centre = int(zs.mean()) if zs.size else img.shape[0] // 2
        half = max(1, (zs.max() - zs.min()) // 2) if zs.size > 1 else 2
        for col, z in enumerate(np.linspace(centre - half, centre + half, n_slices).round().astype(int)):
            z = int(np.clip(z, 0, img.shape[0] - 1))
            for r, (overlay, what) in enumerate(((attended[i], "attended features"), (cams[k], "Grad-CAM"))):
                a = fig.add_subplot(grid[2 * k + r, col + 1])
                a.imshow(img[z], cmap="gray", vmin=lo, vmax=hi)
                a.imshow(overlay[z], cmap="jet", alpha=0.4, vmin=0, vmax=1)
                if msk[z].any():
                    a.contour(msk[z], levels=[0.5], colors="white", linewidths=0.7)
                a.set_xticks([])
                a.set_yticks([])
                a.set_title(f"{what}\n{data.entries[i].key} z={z}, p={prob[i]:.2f}", fontsize=6)
                if col == 0:
                    a.set_ylabel("malignant" if y[i] else "benign", fontsize=7)
        shown.append({"key": data.entries[i].key, "label": int(y[i]), "prob": float(prob[i])})
    fig.suptitle("Attended layer (last stage, after its attention): attention-weighted features and Grad-CAM of "
                 "the predicted class over axial crop slices; white: lesion outline", fontsize=8)
    fig.tight_layout()
    _savefig(fig, Path(path))
    return {"lesions": shown, "layer": "last stage, after its attention (input of the transition conv)",
            "mean_weights": {} if weights is None else
            {name: weights[y == c].mean(0).round(4).tolist() for c, name in ((0, "benign"), (1, "malignant"))
             if (y == c).any()}}


def evaluate_classification(run_dirs: Mapping[str, str | os.PathLike], crop_dir: str | os.PathLike,
                            out_dir: str | os.PathLike, *, reference: str = "hybrid3d", n_boot: int = 1000,
                            seed: int = 0, overwrite: bool = False, attention: bool = True,
                            device: str = "cpu") -> tuple[Path, dict]:
    """Write ``table2.md``, ``table2.json``, ``roc.png``, ``metrics.png`` and ``attention.png`` into ``out_dir``.

    The folder is built under a temporary name and renamed into place when complete.

    Args:
        run_dirs: ``{model: run folder}``; models without finished folds are skipped.
        crop_dir: the crop cache (attention figure).
        out_dir: result folder.
        reference: the model the others are compared with.
        n_boot: bootstrap replicates (0: no intervals).
        seed: bootstrap seed.
        overwrite: replace an existing ``out_dir``.
        attention: draw the attention figure (needs a finished hybrid3d fold).
        device: for Grad-CAM.

    Returns:
        (out_dir, the JSON content).
    """
    from nnunet_liver.data.io import json_safe, staged_dir

    runs = collect_runs(run_dirs)
    result = evaluate_runs(runs, reference=reference, n_boot=n_boot, seed=seed)
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        plot_roc(runs, result, tmp / "roc.png")
        plot_metrics(result, tmp / "metrics.png")
        if attention and "hybrid3d" in runs:
            fold = next(iter(runs["hybrid3d"]))
            ckpt = Path(run_dirs["hybrid3d"]) / f"fold_{fold}" / "checkpoint_final.pt"
            result["attention"] = {"fold": fold, "checkpoint": str(ckpt),
                                   **attention_figure(ckpt, crop_dir, runs["hybrid3d"][fold].keys,
                                                      tmp / "attention.png", device=device)}
        result["run_dirs"] = {m: str(p) for m, p in run_dirs.items() if m in runs}
        (tmp / "table2.md").write_text(table2_markdown(result), encoding="utf-8")
        (tmp / "table2.json").write_text(json.dumps(json_safe(result), indent=1), encoding="utf-8")
    return Path(out_dir), result
