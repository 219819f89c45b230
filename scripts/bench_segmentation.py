"""Segmentation benchmarks of the paper's Table 1, its ablation and the robustness claim, on phantoms.

Parts (``--parts``, default all):

- ``cost``: parameters and forward FLOPs per output voxel of the real-size networks at their planned
  patches (DualStream vs the 3D and 2D U-Nets), planned for a 256-voxel phantom data set.
- ``accuracy``: every model trained with its CPU trainer under one equal budget (same epochs,
  iterations and seeds, ``--seeds``), then tumour and liver Dice, IoU, sensitivity and specificity on the
  test phantoms, mean +/- std over seeds; the fixed evaluation window of an RWA model swept.
- ``robustness``: the same models on ``imagesTs_shifted`` (the test anatomy under shifted contrast and
  window); the Dice drop of each RWA model against its non-RWA twin (target: at most half).
- ``speed``: CPU training iterations per second and full-volume prediction seconds per case relative to
  the 3D U-Net, and the cost of random windowing per training step (target < 5 %).

Everything is measured in this one process; results go to ``--out`` as ``results.json`` and
``results.md``. Trainers and predictions run through nnU-Net's own training loop and predictor.

    python scripts/bench_segmentation.py --out bench/segmentation            # ~30-40 min on 2 cores
    python scripts/bench_segmentation.py --out /tmp/b --quick                # minutes: a smoke run
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

# (label, trainer, configuration); the order is the order of the tables
MODELS = [
    ("2D U-Net", "LiverUNetTrainer_CPU", "2d"),
    ("3D U-Net", "LiverUNetTrainer_CPU", "3d_fullres"),
    ("3D U-Net + RWA", "LiverUNetRWATrainer_CPU", "3d_fullres"),
    ("Ablation 0: spatial stream, fixed window", "DualStreamAblationBaseTrainer_CPU", "3d_fullres"),
    ("Ablation 1: + RWA", "DualStreamAblationRWATrainer_CPU", "3d_fullres"),
    ("Ablation 2: + attention gates", "DualStreamAblationRWAAttTrainer_CPU", "3d_fullres"),
    ("DualStream (ablation 3: + context stream)", "DualStreamTrainer_CPU", "3d_fullres"),
    ("DualStream without RWA", "DualStreamNoRWATrainer_CPU", "3d_fullres"),
]
# (RWA model, its non-RWA twin)
TWINS = [("3D U-Net + RWA", "3D U-Net"), ("Ablation 1: + RWA", "Ablation 0: spatial stream, fixed window"),
         ("DualStream (ablation 3: + context stream)", "DualStream without RWA")]
METRICS = ("dice", "iou", "sensitivity", "specificity")
EVAL_WINDOWS = {"centre of the RWA ranges (71/213.5, default)": (71.0, 213.5),
                "Ostmo base (62.5/198.8)": (62.5, 198.8),
                "paper fixed (-100..400 HU)": (150.0, 500.0),
                "narrow liver (60/150)": (60.0, 150.0)}


def main() -> None:
    from nnunet_liver.cli.main import tolerant_streams

    tolerant_streams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default="cost,accuracy,robustness,speed")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--num-train", type=int, default=16)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training and prediction device")
    args = p.parse_args()
    if args.quick:
        args.size, args.num_train, args.num_test, args.seeds, args.epochs, args.iters = 48, 5, 2, [0], 1, 2
    parts = set(args.parts.split(","))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ.setdefault("nnUNet_compile", "f")
    import torch

    from nnunet_liver.env import activate

    activate(out / "work")
    report = {"machine": machine(args.device), "settings": {k: v for k, v in vars(args).items() if k != "out"}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
        (out / "results.md").write_text(markdown(report), encoding="utf-8")

    if "cost" in parts:
        report["cost"] = bench_cost(out / "work")
        save()
    if parts & {"accuracy", "robustness", "speed"}:
        prepare_dataset(args)
        runs = {}
        for label, trainer, config in MODELS:
            runs[label] = [train_and_predict(label, trainer, config, seed, args, out) for seed in args.seeds]
            report["runs"] = runs
            save()
        report["accuracy"] = summarise(runs, "normal")
        report["robustness"] = robustness(runs)
        report["window_sweep"] = {k: v for k, v in runs["DualStream (ablation 3: + context stream)"][0]
                                  .get("window_sweep", {}).items()}
        report["speed"] = speed(runs)
        if "speed" in parts:
            report["speed"]["rwa_overhead"] = bench_rwa_overhead(torch, args.device)
        save()
    print(markdown(report))


def machine(device: str = "cpu") -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---- cost -------------------------------------------------------------------------------------------------

def bench_cost(work: Path) -> dict:
    """Params and FLOPs per output voxel of the real-size networks at their planned patches."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )

    import nnunet_liver.trainers as trainers
    from nnunet_liver.architectures.cost import count_flops_per_voxel
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset
    from nnunet_liver.planners.hu_planner import LiverHUPlanner
    from nnunet_liver.trainers.segmentation import liver_tumour_regions

    raw = Path(os.environ["nnUNet_raw"])
    if not (raw / "Dataset991_CostPhantom").is_dir():
        write_phantom_dataset(raw, SynthSettings(4, 0, 256, seed=0), dataset_id=991, name="CostPhantom",
                              num_processes=2, progress=False)
    extract_fingerprint_dataset(991, num_processes=2, clean=False, verbose=False)
    _, identifier = plan_experiment_dataset(991, LiverHUPlanner)
    plans_file = Path(os.environ["nnUNet_preprocessed"]) / "Dataset991_CostPhantom" / f"{identifier}.json"
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    dataset_json = json.loads((raw / "Dataset991_CostPhantom" / "dataset.json").read_text(encoding="utf-8"))
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    result = {}
    for label, trainer, config in [("2D U-Net", "LiverUNetTrainer", "2d"),
                                   ("3D U-Net", "LiverUNetTrainer", "3d_fullres"),
                                   ("DualStream", "DualStreamTrainer", "3d_fullres")]:
        cls = getattr(trainers, trainer)
        new_plans = cls.rewrite_plans(plans, config)
        pm = PlansManager(new_plans)
        cm = pm.get_configuration(config)
        heads = pm.get_label_manager(liver_tumour_regions(dataset_json)).num_segmentation_heads
        net = cls.build_network_architecture(pm, cm, 1, heads, False)
        patch = list(cm.patch_size)
        flops = count_flops_per_voxel(net, patch, input_channels=1)
        result[label] = {"patch": patch, "params": sum(q.numel() for q in net.parameters()),
                         "flops_per_voxel": flops}
        del net
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    base = result["3D U-Net"]["flops_per_voxel"]
    for r in result.values():
        r["flops_ratio_vs_3d_unet"] = r["flops_per_voxel"] / base
    return result


# ---- training and prediction ------------------------------------------------------------------------------

def prepare_dataset(args) -> None:
    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset
    from nnunet_liver.planners.api import plan_and_preprocess

    raw = Path(os.environ["nnUNet_raw"])
    marker = Path(os.environ["nnUNet_preprocessed"]) / "Dataset990_LiverPhantom" / ".bench_ready"
    settings = SynthSettings(args.num_train, args.num_test, args.size, seed=0)
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == dataclasses.asdict(settings):
        return
    write_phantom_dataset(raw, settings, overwrite=True, num_processes=2, progress=False)
    plan_and_preprocess(990, configurations=("2d", "3d_fullres"), num_processes=2, overwrite=True)
    marker.write_text(json.dumps(dataclasses.asdict(settings)), encoding="utf-8")


def train_and_predict(label: str, trainer_name: str, config: str, seed: int, args, out: Path) -> dict:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    # augmentation in this process, so a seed repeats (set here: nnU-Net's planner cannot run with 0)
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ.update(NNUNET_LIVER_EPOCHS=str(args.epochs), NNUNET_LIVER_ITERS=str(args.iters),
                      NNUNET_LIVER_VAL_ITERS="1", NNUNET_LIVER_SEED=str(seed))
    os.environ["nnUNet_results"] = str(out / "work" / f"results_seed{seed}")
    device = torch.device(args.device)
    print(f"== {label} ({trainer_name}, {config}), seed {seed}", flush=True)
    trainer = get_trainer_from_args("990", config, "all", trainer_name, "nnUNetPlans", device=device)
    t = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t
    log = trainer.logger.local_logger.my_fantastic_logging
    epoch_s = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    iters_per_epoch = trainer.num_iterations_per_epoch + trainer.num_val_iterations_per_epoch
    run = {"trainer": trainer_name, "configuration": config, "seed": seed, "train_s": train_s,
           "train_iter_per_s": iters_per_epoch / float(np.median(epoch_s[1:] or epoch_s)),
           "params": sum(q.numel() for q in trainer.network.parameters())}
    model_dir = Path(trainer.output_folder_base)
    del trainer

    predictor = load_predictor(model_dir, args.device)
    raw = Path(os.environ["nnUNet_raw"]) / "Dataset990_LiverPhantom"
    run["normal"], run["predict_s_per_case"] = evaluate_split(predictor, raw / "imagesTs", raw / "labelsTs")
    run["shifted"], _ = evaluate_split(predictor, raw / "imagesTs_shifted", raw / "labelsTs")
    window = getattr(predictor.network, "window", None)
    if window is not None and window.config.is_random and seed == args.seeds[0]:
        sweep = {}
        original = window.config
        for name, (level, width) in EVAL_WINDOWS.items():
            window.config = dataclasses.replace(original, eval_level=level, eval_width=width)
            sweep[name] = evaluate_split(predictor, raw / "imagesTs", raw / "labelsTs")[0]["tumour"]["dice"]
        window.config = original
        run["window_sweep"] = sweep
    return run


def load_predictor(model_dir: Path, device: str = "cpu"):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=("all",),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor


def evaluate_split(predictor, images: Path, labels: Path) -> tuple[dict, float]:
    """Per-case metrics (mean over cases, NaN-aware) for liver (labels >= 1) and tumour (label 2)."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_liver.evaluation.lits import overlap_metrics

    io = SimpleITKIO()
    per_case = {"liver": [], "tumour": []}
    seconds = []
    for img in sorted(images.glob("*_0000.nii.gz")):
        data, props = io.read_images([str(img)])
        t = time.perf_counter()
        seg = predictor.predict_single_npy_array(data, props)
        seconds.append(time.perf_counter() - t)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / img.name.replace("_0000", ""))))
        for name, r, q in (("liver", ref >= 1, seg >= 1), ("tumour", ref == 2, seg == 2)):
            i = int(np.count_nonzero(r & q))
            per_case[name].append(overlap_metrics(int(r.sum()), int(q.sum()), i, r.size))
    summary = {name: {m: float(np.nanmean([c[m] for c in cases])) for m in METRICS}
               for name, cases in per_case.items()}
    return summary, float(np.mean(seconds))


# ---- summaries ----------------------------------------------------------------------------------------------

def summarise(runs: dict, split: str) -> dict:
    table = {}
    for label, seeds in runs.items():
        table[label] = {}
        for structure in ("tumour", "liver"):
            for m in METRICS:
                values = [r[split][structure][m] for r in seeds]
                table[label][f"{structure}_{m}"] = (float(np.mean(values)), float(np.std(values)))
    return table


def robustness(runs: dict) -> dict:
    drops = {label: float(np.mean([r["normal"]["tumour"]["dice"] - r["shifted"]["tumour"]["dice"] for r in seeds]))
             for label, seeds in runs.items()}
    liver = {label: float(np.mean([r["normal"]["liver"]["dice"] - r["shifted"]["liver"]["dice"] for r in seeds]))
             for label, seeds in runs.items()}
    pairs = []
    for rwa, twin in TWINS:
        if rwa in drops and twin in drops:
            ratio = drops[rwa] / drops[twin] if drops[twin] > 1e-9 else float("nan")
            pairs.append({"rwa": rwa, "twin": twin, "tumour_dice_drop_rwa": drops[rwa],
                          "tumour_dice_drop_twin": drops[twin], "ratio": ratio,
                          "liver_dice_drop_rwa": liver[rwa], "liver_dice_drop_twin": liver[twin],
                          "target_met": bool(drops[rwa] <= 0.5 * drops[twin]) if drops[twin] > 0 else None})
    return {"tumour_dice_drop": drops, "liver_dice_drop": liver, "pairs": pairs}


def speed(runs: dict) -> dict:
    base = runs["3D U-Net"]
    base_it = np.mean([r["train_iter_per_s"] for r in base])
    base_pred = np.mean([r["predict_s_per_case"] for r in base])
    return {label: {"train_iter_per_s": float(np.mean([r["train_iter_per_s"] for r in seeds])),
                    "train_speed_vs_3d_unet": float(np.mean([r["train_iter_per_s"] for r in seeds]) / base_it),
                    "predict_s_per_case": float(np.mean([r["predict_s_per_case"] for r in seeds])),
                    "predict_time_vs_3d_unet": float(np.mean([r["predict_s_per_case"] for r in seeds]) / base_pred),
                    "params": seeds[0]["params"]}
            for label, seeds in runs.items()}


def bench_rwa_overhead(torch, device: str = "cpu", repeats: int = 20) -> dict:
    """Seconds of a CPU training step (forward + backward) of DualStreamTrainer_CPU's network with random
    windows versus the same network with its fixed window: the whole cost of RWA in the data path."""
    import nnunet_liver.augment.window as W
    from nnunet_liver.architectures.dual_stream import DualStreamAttentionNet

    kwargs = dict(strides=[[1, 1, 1]] + [[1, 2, 2]] * 4, features_per_stage=(8, 16, 16, 32, 32),
                  n_blocks_per_stage=(1, 3, 4, 6, 3), context_features_per_stage=(8, 16, 16), deep_supervision=True)
    x = torch.randn(2, 1, 8, 64, 64, device=device) * 200
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = {}
    for name, window in (("fixed", W.FIXED_PAPER.to_dict()), ("random", W.PAPER.to_dict())):
        torch.manual_seed(0)
        net = DualStreamAttentionNet(1, 2, window=window, **kwargs).to(device).train()
        for _ in range(3):
            sum(o.mean() for o in net(x)).backward()
        sync()
        t = time.perf_counter()
        for _ in range(repeats):
            sum(o.mean() for o in net(x)).backward()
        sync()
        result[f"step_s_{name}"] = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for _ in range(200):
        level, width = W.sample_windows(W.PAPER, 2, device=device)
        W.apply_window(x, level, width)
    sync()
    result["window_only_s"] = (time.perf_counter() - t) / 200
    result["overhead_ratio"] = result["step_s_random"] / result["step_s_fixed"] - 1
    result["window_share_of_step"] = result["window_only_s"] / result["step_s_fixed"]
    return result


def fmt(v) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{v[0]:.3f} ± {v[1]:.3f}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(report: dict) -> str:
    s = report.get("settings", {})
    lines = [f"# Segmentation benchmarks (synthetic phantoms, {report['machine'].get('device', 'cpu').upper()})", "",
             f"Machine: {report['machine']}. Data: {s.get('num_train')} training / {s.get('num_test')} test phantoms "
             f"of {s.get('size')} voxels; budget per model: {s.get('epochs')} epochs x {s.get('iters')} iterations, "
             f"seeds {s.get('seeds')}. Synthetic data and a tiny CPU budget: not LiTS results.", ""]
    if "cost" in report:
        lines += ["## Cost at the planned patch (real-size networks)", "",
                  "| model | patch | params | FLOPs / output voxel | vs 3D U-Net |", "|---|---|---|---|---|"]
        for k, r in report["cost"].items():
            lines.append(f"| {k} | {r['patch']} | {r['params']:,} | {r['flops_per_voxel']:.3g} | "
                         f"{r['flops_ratio_vs_3d_unet']:.2f}x |")
        lines.append("")
    for key, title in (("accuracy", "Accuracy (test phantoms, mean ± std over seeds)"),):
        if key in report:
            cols = [f"tumour_{m}" for m in METRICS] + [f"liver_{m}" for m in METRICS]
            lines += [f"## {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for label, row in report[key].items():
                lines.append(f"| {label} | " + " | ".join(fmt(row[c]) for c in cols) + " |")
            lines.append("")
    if "robustness" in report:
        lines += ["## Robustness (imagesTs_shifted): Dice drop normal - shifted", "",
                  "| RWA model | non-RWA twin | tumour drop RWA | tumour drop twin | ratio | target <= 0.5 met |"
                  " liver drop RWA | liver drop twin |", "|---|---|---|---|---|---|---|---|"]
        for r in report["robustness"]["pairs"]:
            lines.append(f"| {r['rwa']} | {r['twin']} | {r['tumour_dice_drop_rwa']:.3f} | "
                         f"{r['tumour_dice_drop_twin']:.3f} | {r['ratio']:.2f} | {r['target_met']} | "
                         f"{r['liver_dice_drop_rwa']:.3f} | {r['liver_dice_drop_twin']:.3f} |")
        lines.append("")
    if report.get("window_sweep"):
        lines += ["## Fixed evaluation window of the RWA-trained DualStream (seed 0, tumour Dice)", "",
                  "| window | tumour Dice |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in report["window_sweep"].items()] + [""]
    if "speed" in report:
        lines += ["## Speed (CPU)", "", "| model | params | train it/s | vs 3D U-Net | predict s/case | vs 3D U-Net |",
                  "|---|---|---|---|---|---|"]
        for label, r in report["speed"].items():
            if label == "rwa_overhead":
                continue
            lines.append(f"| {label} | {r['params']:,} | {r['train_iter_per_s']:.2f} | {r['train_speed_vs_3d_unet']:.2f}x "
                         f"| {r['predict_s_per_case']:.2f} | {r['predict_time_vs_3d_unet']:.2f}x |")
        if "rwa_overhead" in report["speed"]:
            o = report["speed"]["rwa_overhead"]
            lines += ["", f"RWA cost per training step: {o['overhead_ratio'] * 100:+.1f} % (random vs fixed window, "
                          f"forward+backward); the window alone is {o['window_share_of_step'] * 100:.2f} % of a step."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
