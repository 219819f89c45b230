"""Segmentation benchmarks of the paper's Table 1, its ablation and the robustness claim, on phantoms.

Parts (``--parts``, default all):

- ``cost``: parameters and forward FLOPs per output voxel of the real-size networks at their planned
  patches (DualStream vs the 3D and 2D U-Nets), planned for a 256-voxel phantom data set.
- ``accuracy``: every model (Table 1, the ablation chain, the RWA twins and controls) trained with its CPU
  trainer on fold 0 under one equal budget (same epochs x iterations, or with ``--cpu-seconds`` the same
  process CPU seconds; same seeds), then LiTS metrics on the test phantoms (liver Dice/IoU/sensitivity/
  specificity per case, tumour global and per-case Dice, recall of lesions >= 10 mm, liver overshoot in
  slices), mean +/- std over seeds; learning curves (validation pseudo Dice against CPU seconds,
  ``curves.png``); the RWA control table; the fixed evaluation window of an RWA model swept.
- ``robustness``: the same models on ``imagesTs_shifted`` (the test anatomy under shifted contrast and
  window); the Dice drop of each RWA model against its non-RWA twin (target: at most half).
- ``speed``: CPU training iterations per second and full-volume prediction seconds per case relative to
  the 3D U-Net, and the cost of random windowing per training step (target < 5 %).

Models run one after the other in this one process; results go to ``--out`` as ``results.json`` and
``results.md``, each finished run also to ``runs/<trainer>__<configuration>__seed<k>.json``: a rerun with
the same settings and code skips it, so a long benchmark resumes run by run. Trainers and predictions run
through nnU-Net's own training loop and predictor.

    python scripts/bench_segmentation.py --out bench/segmentation                       # ~1 h on 2 cores
    python scripts/bench_segmentation.py --out bench/converged --preset converged        # hours; resumable
    python scripts/bench_segmentation.py --out /tmp/b --quick                           # minutes: a smoke run
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
    # RWA controls: RWA's own evaluation window (71/213.5 HU) and normalisation, never randomised
    ("3D U-Net, RWA control (fixed 71/213.5)", "LiverUNetRWAControlTrainer_CPU", "3d_fullres"),
    ("DualStream, RWA control (fixed 71/213.5)", "DualStreamRWAControlTrainer_CPU", "3d_fullres"),
]
DUALSTREAM = "DualStream (ablation 3: + context stream)"
# (RWA model, its fixed-window control at RWA's evaluation window, its twin at the paper's fixed window)
RWA_CONTROLS = [("3D U-Net + RWA", "3D U-Net, RWA control (fixed 71/213.5)", "3D U-Net"),
                (DUALSTREAM, "DualStream, RWA control (fixed 71/213.5)", "DualStream without RWA")]
# (RWA model, its non-RWA twin)
TWINS = [("3D U-Net + RWA", "3D U-Net"), ("Ablation 1: + RWA", "Ablation 0: spatial stream, fixed window"),
         (DUALSTREAM, "DualStream without RWA")]
METRICS = ("dice", "iou", "sensitivity", "specificity")
EVAL_WINDOWS = {"centre of the RWA ranges (71/213.5, default)": (71.0, 213.5),
                "Ostmo base (62.5/198.8)": (62.5, 198.8),
                "paper fixed (-100..400 HU)": (150.0, 500.0),
                "narrow liver (60/150)": (60.0, 150.0)}


PRESETS = {
    # smoke run: minutes, learns nothing
    "quick": dict(size=48, fov="abdomen", num_train=5, num_test=2, seeds=[0], epochs=1, iters=2, cpu_seconds=None),
    # the earlier default: whole-abdomen phantoms of 96^2 (~4.7 mm in-plane), 200 iterations per model
    "default": dict(size=96, fov="abdomen", num_train=16, num_test=6, seeds=[0, 1, 2], epochs=8, iters=25,
                    cpu_seconds=None),
    # issue 11: the learnable regime (liver field of view, ~2 mm in-plane) and one equal CPU budget per model,
    # long enough that validation Dice has flattened (see curves.png); hours on 2 cores, resumes run by run
    "converged": dict(size=224, fov="liver", num_train=20, num_test=6, seeds=[0, 1, 2], epochs=10_000, iters=50,
                      cpu_seconds=900.0),
}


def main() -> None:
    from nnunet_liver.cli.main import tolerant_streams

    tolerant_streams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default="cost,accuracy,robustness,speed")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="data and budget (other options override it): quick, default, converged")
    p.add_argument("--size", type=int, help="phantom in-plane matrix of the whole abdomen")
    p.add_argument("--fov", choices=("abdomen", "liver"), help="phantom field of view")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-test", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--cpu-seconds", type=float, help="train every model for this many process CPU seconds "
                   "(instead of --epochs; --iters is then the epoch length)")
    p.add_argument("--models", help="comma-separated subset of the model labels' trainers (default: all)")
    p.add_argument("--quick", action="store_true", help="= --preset quick")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training and prediction device")
    args = p.parse_args()
    if args.quick:
        args.preset = "quick"
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    parts = set(args.parts.split(","))
    models = [m for m in MODELS if not args.models or m[1] in args.models.split(",")]

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ.setdefault("nnUNet_compile", "f")
    import torch

    from nnunet_liver.env import activate

    activate(out / "work")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quick", "parts", "models")}
    report = {"machine": machine(args.device), "settings": settings}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
        (out / "results.md").write_text(markdown(report), encoding="utf-8")

    if "cost" in parts:
        report["cost"] = bench_cost(out / "work")
        save()
    if parts & {"accuracy", "robustness", "speed"}:
        prepare_dataset(args)
        runs: dict[str, list[dict]] = {}
        # seed-major, so that an interrupted run has every model for the first seeds
        for seed in args.seeds:
            for label, trainer, config in models:
                runs.setdefault(label, []).append(cached_run(label, trainer, config, seed, args, out, settings))
                report["runs"] = runs
                save()
        report["accuracy"] = summarise(runs, "normal")
        report["robustness"] = robustness(runs)
        report["rwa_control"] = rwa_control(runs)
        report["window_sweep"] = dict(runs.get(DUALSTREAM, [{}])[0].get("window_sweep", {}))
        report["speed"] = speed(runs)
        report["curves"] = plot_curves(runs, out / "curves.png")
        if "speed" in parts:
            report["speed"]["rwa_overhead"] = bench_rwa_overhead(torch, args.device)
        save()
    print(markdown(report))


def code_fingerprint() -> str:
    """SHA-256 of the trainers', networks' and window code: a saved run made by other code is not reused."""
    import hashlib

    import nnunet_liver
    import nnunet_liver.trainers

    roots = [Path(nnunet_liver.trainers.__file__).parent, Path(nnunet_liver.__file__).parent / "architectures",
             Path(nnunet_liver.__file__).parent / "blocks", Path(nnunet_liver.__file__).parent / "augment"]
    h = hashlib.sha256()
    for f in sorted(p for r in roots for p in r.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def cached_run(label: str, trainer: str, config: str, seed: int, args, out: Path, settings: dict) -> dict:
    """One model and seed: trained, predicted and evaluated once; a rerun with the same settings reads the
    saved result (runs/<trainer>__<config>__seed<k>.json), so a long benchmark resumes run by run."""
    path = out / "runs" / f"{trainer}__{config}__seed{seed}.json"
    key = {**{k: v for k, v in settings.items() if k != "seeds"}, "code": code_fingerprint()}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("settings") == key:
            print(f"== {label}, seed {seed}: done earlier ({path.name})", flush=True)
            return saved
    run = train_and_predict(label, trainer, config, seed, args, out)
    run["settings"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=1, default=float), encoding="utf-8")
    tmp.replace(path)
    return run


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
    settings = SynthSettings(args.num_train, args.num_test, args.size, seed=0, fov=args.fov)
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
                      NNUNET_LIVER_VAL_ITERS="2", NNUNET_LIVER_SEED=str(seed),
                      NNUNET_LIVER_CPU_SECONDS=str(args.cpu_seconds or ""))
    os.environ["nnUNet_results"] = str(out / "work" / f"results_seed{seed}")
    device = torch.device(args.device)
    print(f"== {label} ({trainer_name}, {config}), seed {seed}", flush=True)
    # fold 0: the validation cases give the learning curve (pseudo Dice per epoch against CPU seconds)
    trainer = get_trainer_from_args("990", config, 0, trainer_name, "nnUNetPlans", device=device)
    t = time.perf_counter()
    cpu = time.process_time()
    trainer.run_training()
    train_s, train_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    log = trainer.logger.local_logger.my_fantastic_logging
    epoch_s = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    iters_per_epoch = trainer.num_iterations_per_epoch + trainer.num_val_iterations_per_epoch
    curve = list(getattr(trainer, "learning_curve", []))
    run = {"trainer": trainer_name, "configuration": config, "seed": seed, "train_s": train_s,
           "train_cpu_s": train_cpu_s, "iterations": curve[-1]["iterations"] if curve else None,
           "train_iter_per_s": iters_per_epoch / float(np.median(epoch_s[1:] or epoch_s)),
           "params": sum(q.numel() for q in trainer.network.parameters()), "curve": curve}
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
            sweep[name] = evaluate_split(predictor, raw / "imagesTs", raw / "labelsTs")[0]["tumour"]["dice_global"]
        window.config = original
        run["window_sweep"] = sweep
    return run


def load_predictor(model_dir: Path, device: str = "cpu"):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor


def evaluate_split(predictor, images: Path, labels: Path) -> tuple[dict, float]:
    """LiTS metrics of every case (``nnunet_liver.evaluation.lits``): per structure the per-case means of
    METRICS plus the global Dice, lesion recall for lesions of 10 mm or more, the largest liver overshoot in
    slices; and the mean prediction seconds per case."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_liver.evaluation.lits import aggregate, evaluate_case

    io = SimpleITKIO()
    cases, seconds = {}, []
    for img in sorted(images.glob("*_0000.nii.gz")):
        data, props = io.read_images([str(img)])
        t = time.perf_counter()
        seg = predictor.predict_single_npy_array(data, props)
        seconds.append(time.perf_counter() - t)
        ref_img = sitk.ReadImage(str(labels / img.name.replace("_0000", "")))
        ref = sitk.GetArrayFromImage(ref_img)
        cases[img.name] = evaluate_case(ref, seg.astype(np.uint8), ref_img.GetSpacing()[::-1])
    agg = aggregate(cases)
    summary = {name: {**{m: agg[name]["metrics"][m]["mean"] for m in METRICS},
                      "dice": agg[name]["dice_per_case"], "dice_global": agg[name]["dice_global"]}
               for name in ("liver", "tumour")}
    summary["lesion_recall_10mm"] = agg["lesion_recall_by_size"]["large"]["recall"]
    summary["liver_max_slices_beyond"] = agg["liver_extent"]["max_slices_beyond"]
    return summary, float(np.mean(seconds))


# ---- summaries ----------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("liver_dice", "liver_iou", "liver_sensitivity", "liver_specificity", "tumour_dice_global",
                 "tumour_dice", "tumour_sensitivity", "lesion_recall_10mm", "liver_max_slices_beyond")


def _value(split: dict, column: str) -> float:
    if column in ("lesion_recall_10mm", "liver_max_slices_beyond"):
        return split[column]
    structure, metric = column.split("_", 1)
    return split[structure][metric]


def summarise(runs: dict, split: str) -> dict:
    """Per model, mean and std over seeds of each TABLE_COLUMNS figure (liver: per-case means; tumour: global
    Dice over all voxels, as LiTS ranks, and the per-case mean, where tumour-free cases count 1 when empty)."""
    return {label: {c: (float(np.nanmean(v)), float(np.nanstd(v)))
                    for c in TABLE_COLUMNS for v in [[_value(r[split], c) for r in seeds]]}
            for label, seeds in runs.items()}


def robustness(runs: dict) -> dict:
    def drop(seeds, structure, metric):
        return float(np.mean([r["normal"][structure][metric] - r["shifted"][structure][metric] for r in seeds]))

    drops = {label: drop(seeds, "tumour", "dice_global") for label, seeds in runs.items()}
    liver = {label: drop(seeds, "liver", "dice") for label, seeds in runs.items()}
    pairs = []
    for rwa, twin in TWINS:
        if rwa in drops and twin in drops:
            ratio = drops[rwa] / drops[twin] if drops[twin] > 1e-9 else float("nan")
            pairs.append({"rwa": rwa, "twin": twin, "tumour_dice_drop_rwa": drops[rwa],
                          "tumour_dice_drop_twin": drops[twin], "ratio": ratio,
                          "liver_dice_drop_rwa": liver[rwa], "liver_dice_drop_twin": liver[twin],
                          "target_met": bool(drops[rwa] <= 0.5 * drops[twin]) if drops[twin] > 0 else None})
    return {"tumour_dice_drop": drops, "liver_dice_drop": liver, "pairs": pairs}


def rwa_control(runs: dict) -> list[dict]:
    """Random windows against the same window held fixed (the control) and against the paper's wider fixed
    window (the twin), on the normal and the shifted test scans: tumour global Dice and liver Dice, mean over
    seeds. RWA minus control is the effect of randomising alone; control minus twin that of the narrower window."""
    rows = []
    for rwa, control, twin in RWA_CONTROLS:
        if not all(k in runs for k in (rwa, control, twin)):
            continue
        row = {"rwa": rwa, "control": control, "twin": twin}
        for split in ("normal", "shifted"):
            for structure, metric in (("tumour", "dice_global"), ("liver", "dice")):
                for role, label in (("rwa", rwa), ("control", control), ("twin", twin)):
                    row[f"{split}_{structure}_{role}"] = float(np.mean([r[split][structure][metric]
                                                                        for r in runs[label]]))
        rows.append(row)
    return rows


def plot_curves(runs: dict, path: Path) -> dict:
    """Validation pseudo Dice (liver, tumour) against training CPU seconds for every model (mean over seeds
    at each epoch the seeds share); writes ``path`` and returns the plotted series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
    for label, seeds in runs.items():
        curves = [r.get("curve") or [] for r in seeds]
        n = min((len(c) for c in curves), default=0)
        if not n:
            continue
        cpu = [float(np.mean([c[i]["cpu_seconds"] for c in curves])) for i in range(n)]
        dice = np.array([[c[i]["pseudo_dice"] for i in range(n)] for c in curves]).mean(axis=0)
        series[label] = {"cpu_seconds": cpu, "liver": dice[:, 0].tolist(), "tumour": dice[:, 1].tolist()}
        for ax, k in zip(axes, (0, 1)):
            ax.plot(cpu, dice[:, k], label=label, lw=1.4)
    for ax, title in zip(axes, ("liver (labels 1+2)", "tumour (label 2)")):
        ax.set_title(f"validation pseudo Dice, {title}")
        ax.set_xlabel("training CPU seconds")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return series


def speed(runs: dict) -> dict:
    if "3D U-Net" not in runs:  # --models without the baseline: no ratios
        return {}
    base = runs["3D U-Net"]
    base_it = np.mean([r["train_iter_per_s"] for r in base])
    base_pred = np.mean([r["predict_s_per_case"] for r in base])
    return {label: {"train_iter_per_s": float(np.mean([r["train_iter_per_s"] for r in seeds])),
                    "train_speed_vs_3d_unet": float(np.mean([r["train_iter_per_s"] for r in seeds]) / base_it),
                    "predict_s_per_case": float(np.mean([r["predict_s_per_case"] for r in seeds])),
                    "predict_time_vs_3d_unet": float(np.mean([r["predict_s_per_case"] for r in seeds]) / base_pred),
                    "iterations": float(np.mean([r.get("iterations") or 0 for r in seeds])),
                    "params": seeds[0]["params"]}
            for label, seeds in runs.items()}


def bench_rwa_overhead(torch, device: str = "cpu", repeats: int = 20) -> dict:
    """Seconds of a CPU training step (forward + backward) of DualStreamTrainer_CPU's network with random
    windows versus the same network with its fixed window: the whole cost of RWA in the data path."""
    import nnunet_liver.augment.window as W
    from nnunet_liver.architectures.dual_stream import DualStreamAttentionNet

    kwargs = dict(strides=[[1, 1, 1]] + [[1, 2, 2]] * 4, features_per_stage=(8, 16, 16, 32, 32),
                  n_blocks_per_stage=(1, 3, 4, 6, 3), context_features_per_stage=(8, 16, 16), deep_supervision=True)
    x = torch.randn(2, 1, 8, 96, 96, device=device) * 200  # DualStreamTrainer_CPU's patch
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
    budget = (f"{s.get('cpu_seconds'):g} CPU seconds of training (epochs of {s.get('iters')} iterations)"
              if s.get("cpu_seconds") else f"{s.get('epochs')} epochs x {s.get('iters')} iterations")
    lines = [f"# Segmentation benchmarks (synthetic phantoms, {report['machine'].get('device', 'cpu').upper()})", "",
             f"Machine: {report['machine']}. Data: {s.get('num_train')} training / {s.get('num_test')} test phantoms "
             f"(whole-abdomen matrix {s.get('size')}, field of view: {s.get('fov')}); budget per model: {budget}, "
             f"fold 0, seeds {s.get('seeds')}. Synthetic data on a CPU: not LiTS results.", ""]
    if "cost" in report:
        lines += ["## Cost at the planned patch (real-size networks)", "",
                  "| model | patch | params | FLOPs / output voxel | vs 3D U-Net |", "|---|---|---|---|---|"]
        for k, r in report["cost"].items():
            lines.append(f"| {k} | {r['patch']} | {r['params']:,} | {r['flops_per_voxel']:.3g} | "
                         f"{r['flops_ratio_vs_3d_unet']:.2f}x |")
        lines.append("")
    for key, title in (("accuracy", "Accuracy (test phantoms, mean ± std over seeds)"),):
        if key in report:
            cols = list(TABLE_COLUMNS)
            lines += [f"## {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for label, row in report[key].items():
                lines.append(f"| {label} | " + " | ".join(fmt(row[c]) for c in cols) + " |")
            lines.append("")
    if report.get("rwa_control"):
        lines += ["## RWA control: random windows vs the same window held fixed (mean over seeds)", "",
                  "RWA models evaluate at 71/213.5 HU (-36..178 HU); the twin trains and evaluates at the paper's "
                  "-100..400 HU. The control holds RWA's evaluation window fixed in training: RWA - control is "
                  "the effect of randomising alone.", "",
                  "| model | split | tumour Dice (global) RWA / control / twin | liver Dice RWA / control / twin |",
                  "|---|---|---|---|"]
        for r in report["rwa_control"]:
            for split in ("normal", "shifted"):
                t = " / ".join(f"{r[f'{split}_tumour_{k}']:.3f}" for k in ("rwa", "control", "twin"))
                v = " / ".join(f"{r[f'{split}_liver_{k}']:.3f}" for k in ("rwa", "control", "twin"))
                lines.append(f"| {r['rwa']} | {split} | {t} | {v} |")
        lines.append("")
    if report.get("curves"):
        lines += ["Learning curves (validation pseudo Dice against training CPU seconds): `curves.png`.", ""]
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
        lines += ["## Fixed evaluation window of the RWA-trained DualStream (seed 0, tumour global Dice)", "",
                  "| window | tumour Dice |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in report["window_sweep"].items()] + [""]
    if "speed" in report:
        lines += ["## Speed (CPU)", "", "| model | params | iterations in budget | train it/s | vs 3D U-Net | "
                  "predict s/case | vs 3D U-Net |", "|---|---|---|---|---|---|---|"]
        for label, r in report["speed"].items():
            if label == "rwa_overhead":
                continue
            lines.append(f"| {label} | {r['params']:,} | {r.get('iterations', 0):.0f} | {r['train_iter_per_s']:.2f} | "
                         f"{r['train_speed_vs_3d_unet']:.2f}x "
                         f"| {r['predict_s_per_case']:.2f} | {r['predict_time_vs_3d_unet']:.2f}x |")
        if "rwa_overhead" in report["speed"]:
            o = report["speed"]["rwa_overhead"]
            lines += ["", f"RWA cost per training step: {o['overhead_ratio'] * 100:+.1f} % (random vs fixed window, "
                          f"forward+backward); the window alone is {o['window_share_of_step'] * 100:.2f} % of a step."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
