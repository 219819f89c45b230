"""The numbers of the report, computed from the files the manifest names (no rendering here).

Segmentation (Table 1, ablation): per-case values of ``summary.json`` (``nnunet-liver evaluate``); mean and
standard deviation over the cases where the metric is defined (population std, NaN/null left out: the same
rule as ``summary.json``'s ``aggregate``). Paired tests go through ``nnunet_liver.evaluation.compare``
(paired t-test and Wilcoxon signed-rank on the cases both models hold). Classification (Table 2) is copied
from ``table2.json`` (``nnunet-liver classify evaluate``), which already holds fold means, pooled values with
bootstrap intervals and the paired tests. The real CT (one case) is read from its own ``summary.json``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nnunet_liver.evaluation.report.manifest import Manifest, RealCT, SegmentationModel

STRUCTURES = ("liver", "tumour")
SEG_METRICS = ("dice", "iou", "sensitivity", "specificity")
TEST_METRICS = ("tumour_dice", "liver_dice")
CLS_METRICS = ("accuracy", "sensitivity", "specificity", "auc", "ppv", "f1")
COST_RATIO_KEYS = ("params", "flops_per_voxel", "seconds_per_case", "train_seconds")
REAL_CT_METRICS = ("dice", "iou", "sensitivity", "specificity", "rvd", "assd", "hd95")
#: issue 11: phantom training transfers to a real contrast CT's liver if this one reaches it
REAL_CT_LIVER_DICE_TARGET = 0.85


def _float(x) -> float:
    return math.nan if x is None else float(x)


def _none(x):
    """NaN -> None (JSON null), numpy scalars -> Python numbers."""
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def mean_std(values: Sequence[float]) -> dict:
    """Mean and population std of the defined values, with how many were defined and undefined."""
    v = np.asarray([_float(x) for x in values], dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return dict(mean=None, std=None, n=0, n_nan=int(v.size))
    return dict(mean=float(finite.mean()), std=float(finite.std()), n=int(finite.size),
                n_nan=int(v.size - finite.size))


def case_rows(summary: Mapping) -> dict[str, dict[str, float]]:
    """case -> {"liver_dice": ..., "tumour_iou": ..., ...} (NaN for null) from a summary.json."""
    return {case: {f"{s}_{k}": _float(v[s].get(k)) for s in STRUCTURES for k in SEG_METRICS}
            for case, v in summary["cases"].items()}


def segmentation_row(model: SegmentationModel) -> dict:
    rows = case_rows(model.summary)
    out = dict(label=model.label, trainer=model.trainer, configuration=model.configuration, n_cases=len(rows),
               metrics={s: {k: mean_std([r[f"{s}_{k}"] for r in rows.values()]) for k in SEG_METRICS}
                        for s in STRUCTURES})
    return out


def extent_and_lesions(models: list[SegmentationModel]) -> list[dict]:
    """Per model, from its summary's aggregate: global liver and tumour Dice, reference lesions found below and
    at/above the size split, and the liver predicted beyond the reference liver's slices (models whose
    summary.json predates these figures are left out)."""
    out = []
    for m in models:
        agg = m.summary.get("aggregate") or {}
        if "lesion_recall_by_size" not in agg or "liver_extent" not in agg:  # a summary.json of an older version
            continue
        out.append(dict(label=m.label, liver_dice_global=_none(agg["liver"]["dice_global"]),
                        tumour_dice_global=_none(agg["tumour"]["dice_global"]),
                        lesions=agg["lesion_recall_by_size"], extent=agg["liver_extent"]))
    return out


def paired(model_a: SegmentationModel, model_b: SegmentationModel) -> dict:
    """Paired tests of A - B on per-case tumour and liver Dice over the cases both hold."""
    from nnunet_liver.evaluation.compare import compare_cases

    res = compare_cases(case_rows(model_a.summary), case_rows(model_b.summary), TEST_METRICS)
    out = {"n_paired_cases": res["n_paired_cases"], "only_in_model": res["only_in_a"],
           "only_in_other": res["only_in_b"]}
    for metric, r in res["metrics"].items():
        out[metric] = {k: _none(r[k]) for k in ("n", "n_dropped_nan", "mean_difference", "t_pvalue",
                                                "wilcoxon_pvalue")}
    return out


def table1(manifest: Manifest) -> dict | None:
    models = manifest.group("table1")
    if not models:
        return None
    ref = manifest.model(manifest.reference)
    rows = []
    for m in models:
        row = segmentation_row(m)
        row["tests"] = None if m.label == ref.label else paired(m, ref)
        rows.append(row)
    return dict(reference=ref.label, reference_given=manifest.reference_given, rows=rows)


def ablation(manifest: Manifest) -> dict | None:
    models = manifest.group("ablation")
    if not models:
        return None
    rows, previous, prev_row = [], None, None
    for m in models:
        row = segmentation_row(m)
        if prev_row is None:
            row["delta"] = None
            row["step_tests"] = None
        else:
            row["delta"] = {s: {k: _diff(row["metrics"][s][k]["mean"], prev_row["metrics"][s][k]["mean"])
                                for k in SEG_METRICS} for s in STRUCTURES}
            row["step_tests"] = paired(m, previous)
        rows.append(row)
        previous, prev_row = m, row
    return dict(rows=rows)


def _diff(a, b):
    return None if a is None or b is None else a - b


def _display_names() -> dict[str, str]:
    from nnunet_liver.classification.evaluation import DISPLAY_NAMES

    return DISPLAY_NAMES


def classification_order(models: Sequence[str]) -> list[str]:
    """The producer's order: 2D baselines, the 3D ablation, the proposed model, then anything else."""
    names = _display_names()
    order = [m for m in names if m in models]
    return order + [m for m in models if m not in order]


def table2(manifest: Manifest) -> dict | None:
    t2 = manifest.table2
    if t2 is None:
        return None
    names = _display_names()
    comparisons = t2.get("comparisons") or {}
    rows = []
    for name in classification_order(list(t2["models"])):
        s = t2["models"][name]
        ci = s.get("pooled_ci") or {}
        row = dict(model=name, name=names.get(name, name), folds=s.get("folds"), n_lesions=s.get("n_lesions"),
                   n_malignant=s.get("n_malignant"),
                   mean={k: _none(s["mean"].get(k)) for k in CLS_METRICS},
                   std={k: _none(s["std"].get(k)) for k in CLS_METRICS},
                   pooled={k: _none(s["pooled"].get(k)) for k in CLS_METRICS},
                   pooled_ci={k: [_none(x) for x in (ci.get(k) or (None, None))] for k in CLS_METRICS},
                   tests=None)
        c = comparisons.get(name)
        if c is not None:
            row["tests"] = dict(
                folds=c.get("folds"),
                auc_ttest={k: _none(c.get("auc_ttest", {}).get(k)) for k in ("n", "mean_diff", "p")},
                accuracy_ttest={k: _none(c.get("accuracy_ttest", {}).get(k)) for k in ("n", "mean_diff", "p")},
                delong={k: _none(c.get("delong", {}).get(k)) for k in ("n", "auc", "auc_reference", "p")})
        rows.append(row)
    ref = t2.get("reference")
    return dict(reference=ref, reference_name=names.get(ref, ref), rows=rows)


def cost(manifest: Manifest) -> dict | None:
    models = manifest.unique_models()
    if not any(m.cost for m in models):
        return None
    base = manifest.model(manifest.cost_baseline) if manifest.cost_baseline else None
    base_cost = base.cost if base is not None else {}
    rows = []
    for m in models:
        ratios = {}
        for k in COST_RATIO_KEYS:
            v, b = m.cost.get(k), base_cost.get(k)
            ratios[k] = v / b if v is not None and b else None
        rows.append(dict(label=m.label, trainer=m.trainer, configuration=m.configuration,
                         **{k: m.cost.get(k) for k in ("params", "flops_per_voxel", "patch_size",
                                                       "seconds_per_case", "train_seconds", "iterations")},
                         ratio=ratios if base is not None else None))
    return dict(baseline=base.label if base is not None else None, rows=rows)


def real_ct(manifest: Manifest) -> dict | None:
    """The real CT's numbers: per structure the metrics of its summary.json and the reference and predicted
    volumes (voxels x the voxel volume of the case's spacing), lesion counts and detection, and the liver Dice
    target with whether it is met."""
    rct: RealCT | None = manifest.real_ct
    if rct is None:
        return None
    case = rct.summary["cases"][rct.case]
    spacing = case.get("spacing")
    voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing else None
    structures = {}
    for s in STRUCTURES:
        v = case[s]
        ml = {k: (v[f"{k}_voxels"] * voxel_ml if voxel_ml is not None and v.get(f"{k}_voxels") is not None
                  else None) for k in ("reference", "prediction")}
        structures[s] = dict({k: _none(v.get(k)) for k in REAL_CT_METRICS},
                             reference_ml=ml["reference"], prediction_ml=ml["prediction"],
                             reference_voxels=v.get("reference_voxels"), prediction_voxels=v.get("prediction_voxels"))
    lesions = case.get("lesions") or {}
    dice = structures["liver"]["dice"]
    return dict(label=rct.label, model=rct.model, case=rct.case, spacing=spacing, voxel_ml=voxel_ml, **structures,
                lesions=dict(n_reference=lesions.get("n_reference"), n_prediction=lesions.get("n_prediction"),
                             detection=lesions.get("detection") or {}),
                target=dict(metric="liver dice", threshold=REAL_CT_LIVER_DICE_TARGET,
                            met=None if dice is None else bool(dice >= REAL_CT_LIVER_DICE_TARGET)))
