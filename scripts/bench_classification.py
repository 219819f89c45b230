#!/usr/bin/env python
"""Benchmark of the lesion classifiers on phantom lesions under one equal CPU budget.

Steps: synthetic phantoms -> nnU-Net planning/preprocessing with raw HU -> crop extraction (timed) ->
patient-level stratified folds -> for every seed, model and fold a training run capped by the same
budget of process CPU seconds, so a busy machine does not shrink it (the ``cpu`` preset: no early stopping,
every model gets the whole budget and keeps its last epoch) -> test predictions of each fold.

Reported (``bench_classification.json`` and ``.md`` in ``--out``):

- AUC and accuracy on the pooled test folds, mean ± sd over seeds, per model; paired t-tests of the hybrid
  network against each other model over (seed, fold) AUCs, and DeLong's test on the pooled predictions of
  each seed;
- parameters, forward FLOPs per lesion (2D: per slice x mean lesion slices), training seconds per epoch and
  epochs reached within the budget, inference lesions/s (up to 32 crops, best of 3), relative to ResNet-50 2D;
- crop extraction throughput (lesions/s, from preprocessed data to cached crops).

Defaults take about 10 minutes on an idle CPU core: 40 phantoms with the liver field of view at 224^2
in-plane voxels (about 2 mm, ~90 lesions), 32^3 crops over 32 mm, 3 folds, 3 seeds, 4 models, 10 CPU s
of training per run (36 runs; the budget is checked after each epoch: a run stops when one more epoch
would end further past it than it is short of it, so the 2D baselines, whose epoch is most of the budget,
get one).
At these settings the hybrid network learns (issue 11: at 24 whole-abdomen phantoms of 64^2, crops over
64 mm and the old recipe every CNN sat at chance); with fewer lesions it learns less (README). ``--quick``
runs a tiny version (a minute or two) to check that everything works. The data set is kept in ``--work``
and reused when its settings match.

    python scripts/bench_classification.py --out bench_out            # full
    python scripts/bench_classification.py --out bench_out --quick    # smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

MODELS = ("hybrid3d", "hybrid3d_noatt", "resnet50_2d", "densenet121_2d")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_classification_out", help="results folder")
    p.add_argument("--work", default=None, help="data folder (default <out>/work)")
    p.add_argument("--num-cases", type=int, default=40, help="phantom cases (default 40)")
    p.add_argument("--size", type=int, default=224, help="phantom in-plane voxels (default 224)")
    p.add_argument("--fov", default="liver", choices=("liver", "abdomen"),
                   help="phantom field of view (default liver: about 2 mm in-plane at 224 voxels)")
    p.add_argument("--crop-size", type=int, default=32, help="crop samples per side (default 32)")
    p.add_argument("--crop-mm", type=float, default=32.0, help="crop side in mm (default 32: 1 mm samples)")
    p.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds, at least 3 (default 3)")
    p.add_argument("--budget-s", type=float, default=10.0,
                   help="training CPU seconds per run, checked after each epoch (default 10)")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience on the validation AUC, keeping the best epoch (default: none, "
                   "every run uses its whole budget and keeps its last epoch)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="training and inference device (default cpu; on cuda the budget is wall-clock seconds)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: 8 cases of 96^2, 2 folds, 3 seeds, 3 s per run")
    args = p.parse_args(argv)
    if args.quick:
        args.num_cases, args.size, args.folds, args.budget_s = 8, 96, 2, 3.0
    if args.seeds < 3:
        p.error("--seeds must be at least 3")
    return args


def prepare_data(work: Path, args) -> None:
    """Phantoms and preprocessing, reused when the settings match."""
    from nnunet_liver.data.phantoms import PHANTOM_VERSION
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset
    from nnunet_liver.planners.api import plan_and_preprocess

    # "version": this stamp's; "phantoms": the generator's (other phantoms, other crops)
    settings = {"num_cases": args.num_cases, "size": args.size, "fov": args.fov, "seed": 0, "version": 2,
                "phantoms": PHANTOM_VERSION}
    stamp = work / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == settings:
        return
    if work.exists():
        shutil.rmtree(work)
    from nnunet_liver.env import activate

    activate(work)
    t0 = time.perf_counter()
    write_phantom_dataset(os.environ["nnUNet_raw"], SynthSettings(num_train=args.num_cases, num_test=0,
                                                                  size=args.size, seed=0, fov=args.fov),
                          progress=False)
    plan_and_preprocess(990, configurations=("3d_fullres",), num_processes=1)
    print(f"data: {args.num_cases} phantoms planned and preprocessed in {time.perf_counter() - t0:.0f} s", flush=True)
    stamp.write_text(json.dumps(settings), encoding="utf-8")


def fmt(v, d=3):
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{d}f}"


def feature_reference(crops: Path, splits: dict) -> dict:
    """A learnability check, not a model of the paper: six hand-made features per crop (mean and std HU inside
    the lesion mask, mean HU of a 2-voxel ring around it, lesion-minus-ring contrast, rim-minus-core HU, log
    lesion volume) fed to scikit-learn's gradient boosting, on the same patient-level folds (train + val ->
    test). AUC near the CNNs' says the data are hard; far above says the CNNs are under-trained."""
    import numpy as np
    from scipy import ndimage
    from sklearn.ensemble import HistGradientBoostingClassifier

    from nnunet_liver.classification.crops import load_crop, read_index
    from nnunet_liver.evaluation.classification_metrics import auc_score

    feats, labels = {}, {}
    for entry in read_index(crops):
        im, m = load_crop(crops, entry)
        m = m > 0
        if not m.any():
            continue
        ring = ndimage.binary_dilation(m, iterations=2) & ~m
        core = ndimage.binary_erosion(m)
        core = core if core.any() else m
        rim = (m & ~core) if (m & ~core).any() else m
        feats[entry.key] = [im[m].mean(), im[m].std(), im[ring].mean(), im[m].mean() - im[ring].mean(),
                            im[rim].mean() - im[core].mean(), np.log(m.sum())]
        labels[entry.key] = entry.label
    y_all, p_all, fold_auc = [], [], []
    for fold in splits["folds"]:
        train = [k for k in fold["train"] + fold["val"] if k in feats]
        test = [k for k in fold["test"] if k in feats]
        clf = HistGradientBoostingClassifier(max_depth=3, max_iter=100, min_samples_leaf=5, random_state=0)
        clf.fit(np.array([feats[k] for k in train]), np.array([labels[k] for k in train]))
        prob = clf.predict_proba(np.array([feats[k] for k in test]))[:, 1]
        y = np.array([labels[k] for k in test])
        fold_auc.append(auc_score(y, prob))
        y_all += list(y)
        p_all += list(prob)
    return {"auc_pooled": auc_score(np.array(y_all), np.array(p_all)), "auc_per_fold": fold_auc,
            "lesions": len(feats)}


def main(argv=None) -> int:
    from nnunet_liver.cli.main import tolerant_streams

    tolerant_streams()
    args = parse_args(argv)
    import numpy as np
    import torch

    from nnunet_liver.classification.crops import (
        CropSpec,
        extract_crops,
        open_preprocessed,
        read_index,
    )
    from nnunet_liver.classification.evaluation import collect_runs, lesion_metrics
    from nnunet_liver.classification.lesions import read_lesion_table
    from nnunet_liver.classification.presets import get_preset
    from nnunet_liver.classification.splits import make_splits, write_splits
    from nnunet_liver.classification.training import (
        _slices,
        build_model,
        count_flops_per_lesion,
        count_parameters,
        load_crop_data,
        predict_lesions,
        train_fold,
    )
    from nnunet_liver.data.io import json_safe
    from nnunet_liver.env import activate
    from nnunet_liver.evaluation.statistics import delong_test, paired_ttest

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    prepare_data(work, args)
    activate(work)

    # crop extraction throughput: always from scratch
    crops = out / "crops"
    if crops.exists():
        shutil.rmtree(crops)
    data = open_preprocessed(os.environ["nnUNet_preprocessed"], 990)
    rows = read_lesion_table(Path(os.environ["nnUNet_raw"]) / data.dataset_name / "lesions.csv")
    # a phantom lesion of a voxel or two can vanish in nnU-Net's resampling: skipped, counted, reported
    warnings: list[str] = []
    ex = extract_crops(data, rows, crops, spec=CropSpec(size=args.crop_size, crop_mm=args.crop_mm), progress=False,
                       strict=False, log=warnings.append)
    for w in warnings:
        print(w, flush=True)
    entries = read_index(crops)
    labels = [e.label for e in entries]
    splits = make_splits([e.key for e in entries], labels, n_folds=args.folds, seed=0)
    write_splits(crops / "splits.json", splits)
    print(f"crops: {len(entries)} lesions ({sum(labels)} malignant) in {ex.seconds:.2f} s = "
          f"{ex.lesions_per_s:.1f} lesions/s", flush=True)

    config = get_preset("cpu", input_size=args.crop_size, epochs=100000, max_time_s=args.budget_s,
                        budget_clock="cpu" if args.device == "cpu" else "wall",
                        patience=args.patience if args.patience else 10**9,
                        select="best" if args.patience else None)  # early stopping keeps the best epoch
    runs_root = out / "runs"
    if runs_root.exists():
        shutil.rmtree(runs_root)
    summaries = []
    t_all = time.perf_counter()
    for seed in range(args.seeds):
        for model in args.models:
            for fold in range(args.folds):
                s = train_fold(crop_dir=crops, out_dir=runs_root / f"seed{seed}" / model / f"fold_{fold}",
                               model_name=model, fold=fold, config=config, seed=seed, device=args.device,
                               progress=False,
                               log=lambda m: None)
                summaries.append(s)
                print(f"seed {seed} {model:15s} fold {fold}: {s['epochs_run']:3d} epochs in {s['train_seconds']:.1f} s, "
                      f"best epoch {s['best_epoch']}, test AUC {fmt(s['test_auc'])}", flush=True)
    print(f"training: {time.perf_counter() - t_all:.0f} s", flush=True)

    # accuracy per model and seed on the pooled test folds
    per_seed = {m: [] for m in args.models}
    fold_auc = {m: {} for m in args.models}
    pooled = {m: {} for m in args.models}
    for seed in range(args.seeds):
        runs = collect_runs({m: runs_root / f"seed{seed}" / m for m in args.models})
        for m in args.models:
            folds = runs[m]
            y = np.concatenate([f.y for f in folds.values()])
            prob = np.concatenate([f.prob for f in folds.values()])
            pred = np.concatenate([f.pred for f in folds.values()])
            keys = [k for f in folds.values() for k in f.keys]
            order = np.argsort(keys)
            pooled[m][seed] = (y[order], prob[order])
            met = lesion_metrics(y, prob, pred)
            per_seed[m].append({"seed": seed, "auc": met["auc"], "accuracy": met["accuracy"],
                                "sensitivity": met["sensitivity"], "specificity": met["specificity"]})
            for k, f in folds.items():
                fold_auc[m][(seed, k)] = lesion_metrics(f.y, f.prob, f.pred)["auc"]

    def mean_sd(values):
        v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
        return (float(v.mean()) if v.size else float("nan"), float(v.std(ddof=1)) if v.size > 1 else float("nan"))

    # cost
    all_data = load_crop_data(crops, config.input_size)
    mean_slices = float(_slices(all_data)[0].shape[0]) / len(all_data.entries)
    timed = all_data.subset(all_data.keys[:32])  # the 2D baselines take ~20 ms a slice on one core
    cost = {}
    for m in args.models:
        net = build_model(m, config).eval().to(args.device)
        predict_lesions(net, m, timed, config, args.device)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            predict_lesions(net, m, timed, config, args.device)
            times.append(time.perf_counter() - t0)
        runs_m = [s for s in summaries if s["model"] == m]
        cost[m] = {
            "parameters": count_parameters(net),
            "flops_per_lesion": count_flops_per_lesion(m, config, mean_slices=mean_slices),
            "train_seconds_per_run": float(np.mean([s["train_seconds"] for s in runs_m])),
            "epochs_per_run": float(np.mean([s["epochs_run"] for s in runs_m])),
            "train_seconds_per_epoch": float(np.mean([s["train_seconds"] / max(s["epochs_run"], 1) for s in runs_m])),
            "inference_lesions_per_s": len(timed.entries) / min(times),
        }
    ref = cost.get("resnet50_2d")
    for m in args.models:
        for k in ("parameters", "flops_per_lesion", "train_seconds_per_epoch", "inference_lesions_per_s"):
            cost[m][f"{k}_vs_resnet50_2d"] = cost[m][k] / ref[k] if ref and ref[k] else float("nan")

    comparisons = {}
    if "hybrid3d" in args.models:
        for m in args.models:
            if m == "hybrid3d":
                continue
            units = sorted(fold_auc["hybrid3d"])
            t = paired_ttest([fold_auc["hybrid3d"][u] for u in units], [fold_auc[m][u] for u in units])
            delong = []
            for seed in range(args.seeds):
                y, ph = pooled["hybrid3d"][seed]
                _, po = pooled[m][seed]
                if y.min() != y.max():
                    a, b, _, p = delong_test(y, ph, po)
                    delong.append({"seed": seed, "auc_hybrid3d": a, f"auc_{m}": b, "p": p})
            comparisons[m] = {"auc_diff_hybrid_minus_model": t.mean_diff, "ttest_n": t.n, "ttest_p": t.p,
                              "delong_per_seed": delong}

    result = {
        "settings": {k: v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "data": {"lesions": len(entries), "malignant": int(sum(labels)), "cases": len({e.case_id for e in entries}),
                 "mean_lesion_slices": mean_slices, "join_warnings": warnings},
        "extraction": {"lesions": ex.written, "seconds": ex.seconds, "lesions_per_s": ex.lesions_per_s},
        "models": {m: {"auc": mean_sd([r["auc"] for r in per_seed[m]]),
                       "accuracy": mean_sd([r["accuracy"] for r in per_seed[m]]),
                       "per_seed": per_seed[m], **cost[m]} for m in args.models},
        "comparisons_vs_hybrid3d": comparisons,
        "feature_reference": feature_reference(crops, splits),
        "runs": summaries,
    }

    (out / "bench_classification.json").write_text(json.dumps(json_safe(result), indent=1), encoding="utf-8")
    lines = [
        f"# Lesion classification benchmark (phantoms, {args.device.upper()})", "",
        f"{result['data']['lesions']} lesions ({result['data']['malignant']} malignant) from "
        f"{result['data']['cases']} phantom cases ({args.size}^2 in-plane, {args.fov} field of view), crops {args.crop_size}^3 over "
        f"{args.crop_mm:g} mm{' (' + '; '.join(warnings) + ')' if warnings else ''}; {args.folds}-fold patient-level CV; {args.seeds} seeds; every run capped at "
        f"{args.budget_s:g} {'CPU ' if args.device == 'cpu' else 'wall-clock '}s of training on "
        f"{args.device} ({torch.get_num_threads()} CPU thread(s)) "
        f"({'no early stopping' if not args.patience else f'patience {args.patience}'}; "
        f"{'last' if config.select == 'last' else 'best validation'} epoch kept); "
        f"`cpu` preset. {result['machine']['platform']}, torch {torch.__version__}.", "",
        "| Model | AUC (pooled folds, mean ± sd over seeds) | Accuracy | Parameters | MFLOPs / lesion | s / epoch | "
        "epochs in budget | inference lesions/s | vs ResNet-50 2D: FLOPs, lesions/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in args.models:
        r = result["models"][m]
        lines.append(f"| {m} | {fmt(r['auc'][0])} ± {fmt(r['auc'][1])} | {fmt(r['accuracy'][0])} ± "
                     f"{fmt(r['accuracy'][1])} | {r['parameters']:,} | {r['flops_per_lesion'] / 1e6:.1f} | "
                     f"{r['train_seconds_per_epoch']:.2f} | {r['epochs_per_run']:.1f} | "
                     f"{r['inference_lesions_per_s']:.1f} | {fmt(r['flops_per_lesion_vs_resnet50_2d'], 2)}x, "
                     f"{fmt(r['inference_lesions_per_s_vs_resnet50_2d'], 2)}x |")
    if comparisons:
        lines += ["", "Hybrid 3D against each model: mean AUC difference over (seed, fold) pairs with a paired "
                      "t-test; DeLong p per seed on the pooled test folds.", "",
                  "| Model | ΔAUC (hybrid3d - model) | t-test p (n) | DeLong p per seed |", "|---|---|---|---|"]
        for m, c in comparisons.items():
            dl = ", ".join(fmt(d["p"]) for d in c["delong_per_seed"]) or "n/a"
            lines.append(f"| {m} | {fmt(c['auc_diff_hybrid_minus_model'])} | {fmt(c['ttest_p'])} ({c['ttest_n']}) | "
                         f"{dl} |")
    ref = result["feature_reference"]
    lines += ["", f"Learnability check (not a paper model): six hand-made lesion features + gradient boosting on "
                  f"the same folds: pooled AUC {fmt(ref['auc_pooled'])} (per fold "
                  f"{', '.join(fmt(a) for a in ref['auc_per_fold'])}). A CNN far below it is under-trained or "
                  f"mis-set-up at this budget: the lesions are separable."]
    lines += ["", f"Crop extraction: {ex.written} lesions in {ex.seconds:.2f} s = {ex.lesions_per_s:.1f} lesions/s "
                  f"(preprocessed blosc2 -> .npz cache, join included).", "",
              "Read with care: phantom lesions, a few dozen of them, a tiny CPU budget; differences within the "
              "seed spread or with p >= 0.05 are not evidence either way."]
    (out / "bench_classification.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
