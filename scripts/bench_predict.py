#!/usr/bin/env python
"""Seconds per case of ``nnunet-liver predict`` against the stock ``nnUNetv2_predict``, and peak memory.

One CT (default: the real CT ``nnunet_liver/data/real/crlm_liver_ct.nii.gz`` that the repository carries), one fold, no test-time mirroring,
CPU. Compared, each as a fresh command line (interpreter start, imports and model loading included, as a user
runs them):

- ``nnunet-liver predict``: segmentation + postprocessing + lesion measurements + malignancy classification +
  report (segmentation.nii.gz, lesions.csv, findings.json, one PNG per lesion, summary.png);
- ``nnUNetv2_predict_from_modelfolder`` (stock nnU-Net, segmentation alone) with the same model folder and
  fold, ``--disable_tta``, ``-npp 1 -nps 1``.

Runs alternate (stock, ours, stock, ours, ...) ``--repeats`` times; the ratio of the medians is the result
(target: at most 1.2). A phantom-trained model may find no lesion on the real CT; the cost of lesions is then
measured with the case's reference segmentation (``--reference-seg``, default ``crlm_liver_seg.nii.gz``, one
metastasis) through the same lesion, classification and report code, and added to our median for a second
ratio. Peak memory is the largest resident set of any process of the command (its own, or a
worker's), from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper process that runs only that command.

Without ``--model-folder`` the script first trains tiny CPU models on phantoms in ``<out>/work``: phantoms
(``nnunet-liver synth``), planning that keeps HU (``nnunet-liver plan_and_preprocess``), the 3D U-Net
baseline with the stock ``nnUNetv2_train ... -tr LiverUNetTrainer_CPU`` (``--trainer``; its budget from
``--epochs``/``--iters``), and the hybrid 3D lesion classifier (``nnunet-liver classify extract`` and
``classify train --preset cpu``).

    python scripts/bench_predict.py --out bench/predict                      # ~10 min on 2 cores
    python scripts/bench_predict.py --out /tmp/b --model-folder M --classifier C [--crops DIR] --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Runs a command and prints its wall time and the peak RSS of its largest process (KiB on Linux).
WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
           "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, "
           "encoding='utf-8', errors='replace'); "
           "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter() - t, "
           "'max_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'stderr': p.stderr[-2000:]}))")


def default_case() -> Path:
    from nnunet_liver.data.real_ct import CRLM_CT

    return CRLM_CT


def run(cmd: list[str], env: dict, log: Path) -> None:
    """A set-up step; its output goes to ``log``."""
    t = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    print(f"  {time.perf_counter() - t:6.1f} s  {Path(cmd[0]).name} {' '.join(cmd[1:4])}", flush=True)


def train_models(work: Path, args, env: dict) -> tuple[Path, Path, Path]:
    """Phantoms -> plans (HU) -> 3D U-Net fold 0 -> hybrid classifier; returns (model folder, classifier, crops)."""
    from nnunet_liver.env import paths_for_root

    env.update(paths_for_root(work))
    for v in paths_for_root(work).values():
        Path(v).mkdir(parents=True, exist_ok=True)
    env.update(NNUNET_LIVER_EPOCHS=str(args.epochs), NNUNET_LIVER_ITERS=str(args.iters),
               NNUNET_LIVER_VAL_ITERS="1", NNUNET_LIVER_SEED="0")
    log = work / "setup.log"
    from nnunet_liver.data.phantoms import PHANTOM_VERSION

    settings = {**{k: getattr(args, k) for k in ("trainer", "size", "num_train", "epochs", "iters")},
                "phantoms": PHANTOM_VERSION}
    stamp = work / "settings.json"
    earlier = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else None
    if earlier is not None and json.loads(earlier) != settings:
        raise SystemExit(f"{work} holds models trained with other settings ({earlier}); "
                         f"use another --out or delete {work}")
    stamp.write_text(json.dumps(settings) + "\n", encoding="utf-8")
    results = Path(env["nnUNet_results"]) / "Dataset990_LiverPhantom"
    model = results / f"{args.trainer}__nnUNetPlans__3d_fullres"
    classifier = results / "classification" / "hybrid3d__cpu" / "fold_0" / "checkpoint_final.pt"
    crops = results / "classification" / "crops"
    cli = str(BIN / "nnunet-liver")
    print("training the models on phantoms (once; reused from --out/work afterwards)", flush=True)
    if not (Path(env["nnUNet_raw"]) / "Dataset990_LiverPhantom").is_dir():
        run([cli, "synth", "-d", "990", "--num-train", str(args.num_train), "--num-test", "0", "--size",
             str(args.size), "--seed", "0", "--no-progress"], env, log)
    if not (Path(env["nnUNet_preprocessed"]) / "Dataset990_LiverPhantom" / "nnUNetPlans_3d_fullres").is_dir():
        run([cli, "plan_and_preprocess", "-d", "990", "-c", "3d_fullres", "-np", "1"], env, log)
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        run([str(BIN / "nnUNetv2_train"), "990", "3d_fullres", "0", "-tr", args.trainer, "-device", "cpu"], env, log)
    if not classifier.is_file():
        run([cli, "classify", "extract", "-d", "990", "--size", "32", "--num-folds", "3", "--no-progress"], env, log)
        run([cli, "classify", "train", "-d", "990", "-m", "hybrid3d", "-f", "0", "--preset", "cpu", "--device", "cpu",
             "--no-progress"], env, log)
    return model, classifier, crops


def timed(cmd: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], env=env, capture_output=True, text=True,
                         encoding="utf-8", errors="replace")
    if out.returncode:
        raise SystemExit(f"wrapper failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise SystemExit(f"failed ({result['rc']}): {' '.join(cmd)}\n{result['stderr']}")
    return result


def reference_lesion_cost(case: Path, reference: Path, model: Path, classifier: Path | None, crops: Path | None,
                          fold: str, out: Path) -> dict:
    """Classification and report cost of the reference segmentation's lesions on the case, in this process.

    A phantom-trained model may find no tumour on a real CT, so the timed runs may not classify anything;
    this measures what the lesions a good model would find cost: the reference label map goes through the
    same postprocessing, lesion, classification and writing code as a prediction.
    """
    import SimpleITK as sitk
    import torch

    from nnunet_liver.inference.classifier import load_classifier
    from nnunet_liver.inference.inputs import CaseInput, read_case
    from nnunet_liver.inference.pipeline import CasePredictor, analyse_segmentation
    from nnunet_liver.inference.postprocess import Postprocessing
    from nnunet_liver.inference.segmentation import load_segmentation_model

    torch.set_num_threads(os.cpu_count() or 1)
    seg_model = load_segmentation_model(model, [fold], progress=False)
    clf = load_classifier(classifier, crops) if classifier else None
    t0 = time.perf_counter()
    volume = read_case(CaseInput("reference", case, "file"))
    geometry = {"spacing": volume.image.GetSpacing(), "origin": volume.image.GetOrigin(),
                "direction": volume.image.GetDirection()}
    pre, props = seg_model.preprocess(volume.array, geometry)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    analysis = analyse_segmentation(volume, label, tumour_label=seg_model.tumour_label(),
                                    postprocessing=Postprocessing(), classifier=clf, preprocessed=pre,
                                    preprocessed_spacing=seg_model.preprocessed_spacing(props), properties=props,
                                    transpose_forward=seg_model.transpose_forward)
    predictor = CasePredictor(seg_model, clf, Postprocessing())
    findings = predictor.findings(volume.source, volume, analysis, {})
    t1 = time.perf_counter()
    predictor.write(out / "pred_reference", volume, analysis, findings, overwrite=True, t_start=t0)
    return {"reference": str(reference), "n_lesions": len(analysis.lesions),
            "lesions_s": analysis.timings["lesions"], "classify_s": analysis.timings.get("classify", 0.0),
            "write_s": time.perf_counter() - t1,
            "probabilities": analysis.probabilities}


def summarise(runs: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    return {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs), "runs_s": secs,
            "peak_rss_mib": max(r["max_rss_kib"] for r in runs) / 1024}


def markdown(report: dict) -> str:
    ours, stock = report["nnunet_liver_predict"], report["nnunet_stock_predict"]
    lines = [
        "# `nnunet-liver predict` vs stock `nnUNetv2_predict`",
        "",
        f"Case: `{report['case']}` ({report['case_size']}); model `{report['model_folder']}` fold "
        f"{report['fold']}, no mirroring, CPU ({report['machine']['cpus']} cores, {report['machine']['platform']}); "
        f"{report['repeats']} alternating runs each, fresh processes.",
        "",
        "| command | median s | min s | max s | peak RSS MiB |",
        "|---|---|---|---|---|",
        f"| nnunet-liver predict (segmentation + classification + report) | {ours['median_s']:.1f} | "
        f"{ours['min_s']:.1f} | {ours['max_s']:.1f} | {ours['peak_rss_mib']:.0f} |",
        f"| nnUNetv2_predict_from_modelfolder (segmentation) | {stock['median_s']:.1f} | {stock['min_s']:.1f} | "
        f"{stock['max_s']:.1f} | {stock['peak_rss_mib']:.0f} |",
        "",
        f"**Ratio (medians): {report['ratio_median']:.2f}** (minimums: {report['ratio_min']:.2f}); target <= "
        f"{report['target_ratio']}: {'met' if report['target_met'] else 'NOT met'}.",
        "",
        f"Findings of the case: {report['findings']['n_lesions']} lesion(s), liver "
        f"{report['findings']['liver_volume_ml']:.0f} ml, tumour {report['findings']['tumour_volume_ml']:.1f} ml.",
        "",
        "Where `nnunet-liver predict` spends its time (last run, seconds, from findings.json; the rest is "
        "interpreter start, imports and model loading):",
        "",
        "| " + " | ".join(report["findings"]["timings_s"]) + " |",
        "|" + "---|" * len(report["findings"]["timings_s"]),
        "| " + " | ".join(f"{v:.2f}" for v in report["findings"]["timings_s"].values()) + " |",
        "",
        f"Model loading (segmentation + classifier): {report['findings']['load_seconds']:.2f} s.",
    ]
    ref = report.get("reference_lesions")
    if ref:
        lines += [
            "",
            f"With the reference segmentation's {ref['n_lesions']} lesion(s) (`{Path(ref['reference']).name}`, "
            f"through the same lesion, classification and report code): lesions {ref['lesions_s']:.2f} s, "
            f"classification {ref['classify_s']:.2f} s, writing with overlays {ref['write_s']:.2f} s; "
            f"estimated ratio had the model found them: **{report['ratio_with_reference_lesions']:.2f}** "
            f"(median of ours + these steps, over the stock median).",
        ]
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from nnunet_liver.cli.main import tolerant_streams

    tolerant_streams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (bench_predict.json, bench_predict.md, work/)")
    p.add_argument("--case", default=None, help="CT to predict (default: the real CT crlm_liver_ct.nii.gz)")
    p.add_argument("--model-folder", default=None, help="trained nnU-Net model folder (default: train one)")
    p.add_argument("--classifier", default=None, help="classifier checkpoint (with --model-folder)")
    p.add_argument("--crops", default=None, help="the classifier's crop folder, if not beside its run folder")
    p.add_argument("--reference-seg", default=None,
                   help="label map of the case for the reference-lesion cost (default: crlm_liver_seg.nii.gz beside "
                   "the default case); 'none' to skip")
    p.add_argument("-f", dest="fold", default="0", help="fold (default 0)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trainer", default="LiverUNetTrainer_CPU", choices=("LiverUNetTrainer_CPU", "LiverSmokeTrainer"))
    p.add_argument("--size", type=int, default=96, help="phantom size when training (default 96)")
    p.add_argument("--num-train", type=int, default=10, help="training phantoms (default 10)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the CPU trainer (default 6)")
    p.add_argument("--iters", type=int, default=20, help="iterations per epoch (default 20)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be positive")
    if args.classifier and not args.model_folder:
        p.error("--classifier goes with --model-folder")

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    case = Path(args.case).resolve() if args.case else default_case()
    from nnunet_liver.env import nnunet_environment

    env = dict(os.environ)
    env.update(nnunet_environment())
    env.setdefault("nnUNet_compile", "f")
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    notes = []
    if args.model_folder:
        model = Path(args.model_folder).resolve()
        classifier = Path(args.classifier).resolve() if args.classifier else None
        crops = Path(args.crops).resolve() if args.crops else None
        if classifier is None:
            notes.append("no --classifier: the predict run has no classification step")
    else:
        setup_env = dict(env, nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1")
        model, classifier, crops = train_models(out / "work", args, setup_env)
        notes.append(f"models trained here on {args.num_train} phantoms of size {args.size}: {args.trainer} "
                     f"({args.epochs} x {args.iters} iterations), hybrid3d classifier (preset cpu); a phantom-trained "
                     f"model's findings on a real CT are not meaningful, only its cost is")

    inputs = out / "input"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    shutil.copy(case, inputs / "case_0000.nii.gz")  # nnU-Net's naming for the stock command
    ours_cmd = [str(BIN / "nnunet-liver"), "predict", "-i", str(inputs / "case_0000.nii.gz"), "-o",
                str(out / "pred_ours"), "-m", str(model), "-f", args.fold, "--device", "cpu", "--overwrite",
                "--no-progress"]
    if classifier is not None:
        ours_cmd += ["--classifier", str(classifier)] + (["--crops", str(crops)] if crops else [])
    stock_cmd = [str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", str(out / "pred_stock"),
                 "-m", str(model), "-f", args.fold, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1",
                 "--disable_progress_bar"]

    ours, stock = [], []
    print(f"timing {args.repeats} alternating runs of each on {case.name}", flush=True)
    for i in range(args.repeats):
        shutil.rmtree(out / "pred_stock", ignore_errors=True)
        stock.append(timed(stock_cmd, env))
        ours.append(timed(ours_cmd, env))
        print(f"  run {i + 1}: stock {stock[-1]['seconds']:.1f} s, ours {ours[-1]['seconds']:.1f} s", flush=True)

    import SimpleITK as sitk

    findings = json.loads((out / "pred_ours" / "findings.json").read_text(encoding="utf-8"))
    a, b = summarise(ours), summarise(stock)
    stock_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "pred_stock" / "case.nii.gz")))
    ours_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "pred_ours" / "segmentation.nii.gz")))
    changed = int((stock_seg != ours_seg).sum())
    notes.append(f"{changed} voxel(s) differ between the stock segmentation and ours (ours is postprocessed: "
                 f"{findings['postprocessing']['liver_voxels_dropped']} liver and "
                 f"{findings['postprocessing']['tumour_voxels_dropped']} tumour voxel(s) dropped)")
    report = {
        "case": str(case), "case_size": "x".join(str(s) for s in sitk.ReadImage(str(case)).GetSize()),
        "model_folder": str(model), "classifier": str(classifier) if classifier else None, "fold": args.fold,
        "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "nnunet_liver_predict": {**a, "command": " ".join(ours_cmd)},
        "nnunet_stock_predict": {**b, "command": " ".join(stock_cmd)},
        "ratio_median": a["median_s"] / b["median_s"], "ratio_min": a["min_s"] / b["min_s"],
        "target_ratio": 1.2, "target_met": a["median_s"] / b["median_s"] <= 1.2,
        "peak_rss_ratio": a["peak_rss_mib"] / b["peak_rss_mib"],
        "findings": {"n_lesions": findings["n_lesions"], "liver_volume_ml": findings["liver_volume_ml"],
                     "tumour_volume_ml": findings["tumour_volume_ml"], "timings_s": findings["timings_s"],
                     "load_seconds": findings["models"]["load_seconds"]},
        "memory_method": "getrusage(RUSAGE_CHILDREN).ru_maxrss of a wrapper running only the command: the largest "
                         "resident set of any one process of it (psutil is not a dependency)",
        "notes": notes,
    }
    reference = args.reference_seg
    if reference is None and args.case is None:
        reference = str(case.parent / "crlm_liver_seg.nii.gz")
    if reference and reference != "none":
        ref = reference_lesion_cost(case, Path(reference), model, classifier, crops, args.fold, out)
        report["reference_lesions"] = ref
        report["ratio_with_reference_lesions"] = (a["median_s"] + ref["lesions_s"] + ref["classify_s"]
                                                  + ref["write_s"]) / b["median_s"]
    (out / "bench_predict.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "bench_predict.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
