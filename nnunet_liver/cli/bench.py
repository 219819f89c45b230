"""``nnunet-liver bench``: every benchmark script in one run, one ``results.json`` and one summary.

Runs ``scripts/bench_<name>.py`` of the source tree (segmentation, classification, evaluation, predict), each
into ``<out>/<name>/``, then collects their JSON results into ``<out>/results.json`` and writes
``<out>/summary.md``: the machine (CPU, threads, torch, device), and each benchmark's figures as ratios against
the baseline that the same script measured in the same run. A benchmark that fails is reported and the
others go on; the exit code says whether all passed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

# name -> (script, result file inside its folder)
BENCHMARKS = {
    "segmentation": ("bench_segmentation.py", "results.json"),
    "classification": ("bench_classification.py", "bench_classification.json"),
    "evaluation": ("bench_evaluate.py", "results.json"),
    "predict": ("bench_predict.py", "bench_predict.json"),
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run all benchmark scripts; write bench/results.json and a summary of ratios",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("-o", "--out", default="bench", help="output folder (default ./bench)")
    p.add_argument("--only", nargs="+", choices=tuple(BENCHMARKS), default=None,
                   help="run these benchmarks only (default: all)")
    p.add_argument("--quick", action="store_true", help="each script's smoke-sized settings (minutes, not hours)")
    p.add_argument("--converged", action="store_true",
                   help="segmentation: the converged preset (learnable phantoms, one equal CPU budget per model, 3 "
                   "seeds; hours on 2 cores; an interrupted run resumes model by model with the same -o)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="device of the training/inference benchmarks (cuda: when a GPU is present)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run: results.json, summary.md and each benchmark's folder")
    g = p.add_argument_group("segmentation benchmark (forwarded to scripts/bench_segmentation.py)")
    g.add_argument("--parts", type=_parts, help=f"comma-separated subset of {','.join(SEGMENTATION_PARTS)} (default: "
                   "all); e.g. --only segmentation --parts cost")
    g.add_argument("--cost-inplane", type=int, metavar="N", help="cost: cap the in-plane patch of the CPU step and "
                   "prediction at N (0 = planned; default 128)")
    g.add_argument("--cost-depth", type=int, metavar="N", help="cost: cap the patch's z extent too (smoke tests)")
    g.add_argument("--cost-steps", type=int, metavar="N", help="cost: timed training steps per model (best counts)")
    g.add_argument("--cost-case", metavar="Z,Y,X", help="cost: prediction case size (default 200,512,512)")
    g.add_argument("--cost-cpu-predict", choices=("on", "off"), help="cost: sliding-window prediction on the CPU "
                   "when there is no GPU (slow; default off)")
    g.add_argument("--z-margin-mm", type=float, metavar="MM", help="accuracy/robustness: phantoms with MM above and "
                   "below the liver (default 30; e.g. 70 with --converged)")
    p.set_defaults(func=run)


SEGMENTATION_PARTS = ("cost", "accuracy", "robustness", "speed")
# bench option -> script flag, forwarded to the segmentation script when given
SEGMENTATION_OPTIONS = {"parts": "--parts", "cost_inplane": "--cost-inplane", "cost_depth": "--cost-depth",
                        "cost_steps": "--cost-steps", "cost_case": "--cost-case", "cost_cpu_predict": "--cost-cpu-predict",
                        "z_margin_mm": "--z-margin-mm"}


def _parts(text: str) -> str:
    unknown = set(text.split(",")) - set(SEGMENTATION_PARTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(sorted(unknown))}; choose from "
                                         f"{', '.join(SEGMENTATION_PARTS)}")
    return text


def segmentation_options(args: argparse.Namespace) -> list[str]:
    """The segmentation script's flags among ``args`` (those given)."""
    argv = []
    for attr, flag in SEGMENTATION_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is not None:
            argv += [flag, str(value)]
    return argv


def scripts_dir() -> Path:
    import nnunet_liver

    return Path(nnunet_liver.__file__).resolve().parents[1] / "scripts"


def script_args(name: str, out: Path, quick: bool, device: str, converged: bool = False) -> list[str]:
    if name == "segmentation" and converged:
        return ["--out", str(out), "--device", device, "--preset", "converged"]
    if name in ("segmentation", "classification"):
        return ["--out", str(out), "--device", device] + (["--quick"] if quick else [])
    if name == "evaluation":
        return ["--out", str(out)] + (["--shape", "120", "256", "256", "--repeats", "2"] if quick else [])
    if name == "predict":  # CPU by design: the target is seconds per case on the CPU
        return ["--out", str(out)] + (["--size", "64", "--num-train", "10", "--epochs", "2", "--iters", "4",
                                       "--repeats", "1"] if quick else [])
    raise KeyError(name)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.io import check_writable_dir, json_safe, staged_file

    if args.quick and getattr(args, "converged", False):
        raise UsageError("--quick and --converged contradict each other: choose one")

    names = args.only or list(BENCHMARKS)
    if segmentation_options(args) and "segmentation" not in names:
        raise UsageError("--parts and --cost-* options apply to the segmentation benchmark, which --only leaves out")
    scripts = scripts_dir()
    missing = [BENCHMARKS[n][0] for n in names if not (scripts / BENCHMARKS[n][0]).is_file()]
    if missing:
        raise UsageError(f"benchmark script(s) not found in {scripts}: {', '.join(missing)} (the scripts ship with "
                         "the source tree: run from a clone of the repository)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device on this machine")
    out = Path(args.out).resolve()
    try:
        check_writable_dir(out)
    except PermissionError as e:
        raise UsageError(str(e)) from None
    for f in ("results.json", "summary.md"):
        if (out / f).exists() and not args.overwrite:
            raise UsageError(f"{out / f} exists; pass --overwrite to replace it")

    results = {"machine": machine(args.device), "quick": args.quick, "device": args.device,
               "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "benchmarks": {}}
    if args.only and (out / "results.json").is_file():  # --only --overwrite: keep the other benchmarks' entries
        try:
            earlier = json.loads((out / "results.json").read_text(encoding="utf-8"))
            results["benchmarks"] = {k: v for k, v in earlier.get("benchmarks", {}).items() if k not in names}
        except (OSError, ValueError) as e:
            raise UsageError(f"{out / 'results.json'}: unreadable ({e}); move it away or run without --only") from None
    for i, name in enumerate(names, 1):
        script, result_file = BENCHMARKS[name]
        folder = out / name
        argv = [sys.executable, str(scripts / script),
                *script_args(name, folder, args.quick, args.device, getattr(args, "converged", False)),
                *(segmentation_options(args) if name == "segmentation" else [])]
        print(f"[{i}/{len(names)}] {name}: {' '.join(argv[1:])}", flush=True)
        if args.overwrite and folder.exists():  # a fresh run: scripts refuse work folders made with other settings
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(folder / "log.txt", "w", encoding="utf-8") as log:
            code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
        entry = {"command": " ".join(["python", f"scripts/{script}", *argv[2:]]), "exit_code": code,
                 "seconds": round(seconds, 1), "log": str(folder / "log.txt")}
        if code == 0 and (folder / result_file).is_file():
            try:
                entry["result"] = json.loads((folder / result_file).read_text(encoding="utf-8"))
                entry["ratios"] = RATIOS[name](entry["result"], args.device)
            except (ValueError, KeyError, TypeError) as e:  # one bad result file does not stop the others
                entry.pop("result", None)
                entry["error"] = f"{folder / result_file}: cannot read its figures ({type(e).__name__}: {e})"
        else:
            entry["error"] = f"exit code {code}" + ("" if code else f", no {result_file}")
        if "error" not in entry:
            print(f"[{i}/{len(names)}] {name}: done in {seconds:.0f} s", flush=True)
        else:
            tail = (folder / "log.txt").read_text(errors="replace", encoding="utf-8").splitlines()[-5:]
            print(f"[{i}/{len(names)}] {name}: FAILED ({entry['error']}); log {folder / 'log.txt'}:\n  "
                  + "\n  ".join(tail), flush=True)
        results["benchmarks"][name] = entry
        for path, text in ((out / "results.json", json.dumps(json_safe(results), indent=1, allow_nan=False)),
                           (out / "summary.md", summary_markdown(results))):
            with staged_file(path, overwrite=True) as tmp:
                tmp.write_text(text, encoding="utf-8")
    print((out / "summary.md").read_text(encoding="utf-8"))
    failed = [n for n, e in results["benchmarks"].items() if "error" in e]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def machine(device: str) -> dict:
    import torch

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": device}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return info


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- ratios: (figure, value, baseline, ratio, target) rows taken from each script's own results ----------

def _row(figure: str, value, baseline, ratio, target: str = "") -> dict:
    return {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "target": target}


# cost figures of bench_segmentation.py (per output voxel = per voxel that enters the loss) -> row text
COST_FIGURES = {
    "params": "parameters",
    "cpu_fp32_step_ms_per_mvoxel": "CPU fp32 training step, ms per million output voxels",
    "cpu_bf16_step_ms_per_mvoxel": "CPU bf16 training step, ms per million output voxels",
    "cpu_fp32_peak_mib_per_mvoxel": "CPU fp32 training step, peak live MiB per million output voxels",
    "cpu_bf16_peak_mib_per_mvoxel": "CPU bf16 training step, peak live MiB per million output voxels",
    "cpu_fp32_rss_mib_per_mvoxel": "CPU fp32 training step, peak RSS MiB per million output voxels",
    "cuda_fp16_step_ms_per_mvoxel": "CUDA fp16 training step, ms per million output voxels",
    "cuda_fp16_peak_mib_per_mvoxel": "CUDA fp16 training step, peak MiB per million output voxels",
    "predict_s_per_case": "sliding-window prediction, s per case",
}


def _cost_ratios(cost: dict) -> list[dict]:
    rows = []
    models = cost.get("models", cost)  # results before the LiTS-plan cost part: {label: figures}
    for label, c in models.items():
        rows.append(_row(f"FLOPs per output voxel, {label} (real-size network)", c["flops_per_voxel"],
                         "3D U-Net", c["flops_ratio_vs_3d_unet"],
                         "<= 0.8 (paper: ~20% fewer)" if label == "DualStream" else ""))
        for key, what in COST_FIGURES.items():
            if key in c.get("vs_3d_unet", {}):
                rows.append(_row(f"{what}, {label}", c[key], "3D U-Net", c["vs_3d_unet"][key]))
    return rows


def _seg_ratios(r: dict, device: str = "cpu") -> list[dict]:
    rows = _cost_ratios(r.get("cost", {}))
    for label, s in r.get("speed", {}).items():
        if label == "rwa_overhead":
            rows.append(_row("training step with random windows vs fixed window", s["step_s_random"],
                             s["step_s_fixed"], 1 + s["overhead_ratio"], "< 1.05"))
            continue
        rows.append(_row(f"{device.upper()} training iterations/s, {label}", s["train_iter_per_s"], "3D U-Net",
                         s["train_speed_vs_3d_unet"]))
        rows.append(_row(f"prediction s/case, {label}", s["predict_s_per_case"], "3D U-Net",
                         s["predict_time_vs_3d_unet"]))
    for label, row in r.get("accuracy", {}).items():
        for key, what in (("tumour_dice", "tumour Dice (per-case mean)"),
                          ("tumour_dice_global", "tumour Dice (global)"), ("liver_dice", "liver Dice")):
            base = r["accuracy"].get("3D U-Net", {}).get(key)
            v = row.get(key)
            if v and base:
                rows.append(_row(f"{what}, {label}", v[0], "3D U-Net", v[0] / base[0] if base[0] else None))
    for pair in r.get("robustness", {}).get("pairs", []):
        rows.append(_row(f"tumour Dice drop on shifted scans, {pair['rwa']}", pair["tumour_dice_drop_rwa"],
                         pair["twin"], pair["ratio"], "<= 0.5"))
    return rows


def _cls_ratios(r: dict, device: str = "cpu") -> list[dict]:
    rows = []
    models = r.get("models", {})
    base_auc = (models.get("resnet50_2d") or {}).get("auc", [None])[0]
    for m, v in models.items():
        for key, what in (("flops_per_lesion", "FLOPs per lesion"), ("inference_lesions_per_s", "inference lesions/s"),
                          ("train_seconds_per_epoch", f"{device.upper()} training s/epoch"), ("parameters", "parameters")):
            if key in v:
                rows.append(_row(f"{what}, {m}", v[key], "resnet50_2d", v.get(f"{key}_vs_resnet50_2d")))
        auc = (v.get("auc") or [None])[0]
        rows.append(_row(f"AUC (mean over seeds), {m}", auc, "resnet50_2d",
                         auc / base_auc if auc is not None and base_auc else None))
    ref = r.get("feature_reference")
    if ref:
        rows.append(_row("AUC, hand-made features + gradient boosting (learnability check, not a paper model)",
                         ref["auc_pooled"], "resnet50_2d", ref["auc_pooled"] / base_auc if base_auc else None))
    ex = r.get("extraction", {})
    if ex:
        rows.append(_row("crop extraction, lesions/s", ex.get("lesions_per_s"), "", None))
    return rows


def _eval_ratios(r: dict, device: str = "cpu") -> list[dict]:
    return [_row(f"full LiTS metric set vs Dice alone ({'x'.join(map(str, r['shape'][::-1]))})",
                 r["full_seconds"], r["dice_seconds"], r["ratio"])]


def _predict_ratios(r: dict, device: str = "cpu") -> list[dict]:
    ours, stock = r.get("nnunet_liver_predict", {}), r.get("nnunet_stock_predict", {})
    rows = []
    for key, value_key, what, target in (
            ("ratio_median", "median_s", "nnunet-liver predict (seg + classification + report), s/case, median", "<= 1.2"),
            ("ratio_min", "min_s", "nnunet-liver predict, s/case, minimum", "<= 1.2"),
            ("peak_rss_ratio", "peak_rss_mib", "nnunet-liver predict, peak resident MiB", "")):
        if isinstance(r.get(key), (int, float)):
            rows.append(_row(what, ours.get(value_key), stock.get(value_key), r[key], target))
    if isinstance(r.get("ratio_with_reference_lesions"), (int, float)):
        rows.append(_row("s/case had the model found the reference lesions (estimate)", None,
                         stock.get("median_s"), r["ratio_with_reference_lesions"], "<= 1.2"))
    return rows


RATIOS: dict[str, Callable[..., list[dict]]] = {"segmentation": _seg_ratios, "classification": _cls_ratios,
                                                     "evaluation": _eval_ratios, "predict": _predict_ratios}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def summary_markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# nnunet-liver benchmarks", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
             f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}; {m['platform']}. "
             f"{'Quick (smoke-sized) settings. ' if results['quick'] else ''}Created {results['created']}.", "",
             "Every ratio compares two figures measured by the same script in the same run.", ""]
    for name, e in results["benchmarks"].items():
        lines += [f"## {name}", "", f"`{e['command']}` ({e['seconds']:.0f} s)", ""]
        if "error" in e:
            lines += [f"**Failed**: {e['error']}; see `{e['log']}`.", ""]
            continue
        rows = e.get("ratios", [])
        if not rows:
            lines += ["(no ratios in this benchmark's results)", ""]
            continue
        lines += ["| figure | value | baseline | ratio | target |", "|---|---|---|---|---|"]
        lines += [f"| {r['figure']} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | "
                  f"{_fmt(r['ratio']) + 'x' if r['ratio'] is not None else 'n/a'} | {r['target']} |" for r in rows]
        lines += ["", f"Details: `{name}/`.", ""]
    return "\n".join(lines) + "\n"
