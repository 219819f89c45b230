"""Segmentation benchmarks of the paper's Table 1, its ablation and the robustness claim, on phantoms.

Parts (``--parts``, default all):

- ``cost``: the real-size networks (3D U-Net, DualStream, each ablation step) built from the plans nnU-Net
  makes for LiTS (``nnunet_liver.planners.lits_like``), run after run: parameters, forward FLOPs per output
  voxel, one training step (forward, nnU-Net's Dice + BCE with deep supervision, backward, SGD step; batch 1)
  in ms per million output voxels on the CPU in float32 and, where the CPU has native bf16, in bf16 autocast
  (on CUDA in fp16 AMP when present), the step's peak memory growth per million output voxels, sliding-window
  prediction seconds for one 200 x 512 x 512 case; every figure also as a ratio to the 3D U-Net (see
  :func:`bench_cost`).
- ``accuracy``: every model (Table 1, the ablation chain, the RWA twins and controls) trained with its CPU
  trainer on fold 0 under one equal budget (same epochs x iterations, or with ``--cpu-seconds`` the same
  process CPU seconds; same seeds), then LiTS metrics on the test phantoms (liver Dice/IoU/sensitivity/
  specificity per case, tumour global and per-case Dice, recall of lesions >= 10 mm, liver overshoot in
  slices and the cases with liver 2+ slices beyond), mean +/- std over seeds, scored after ``nnunet-liver
  postprocess`` (the largest liver component, as the demo scores; ``--scoring raw``: the raw predictions)
  with Table 1 of the raw predictions beside; learning curves (validation pseudo Dice against CPU seconds,
  ``curves.png``); the RWA control table; the fixed evaluation window of an RWA model swept.
- ``robustness``: the same models on ``imagesTs_shifted`` (the test anatomy under shifted contrast and
  window); the Dice drop of each RWA model against its non-RWA twin (target: at most half).
- ``speed``: CPU training iterations per second and full-volume prediction seconds per case relative to
  the 3D U-Net, and the cost of random windowing per training step (target < 5 %).

Models run one after the other in this one process; results go to ``--out`` as ``results.json`` and
``results.md``, each finished run also to ``runs/<trainer>__<configuration>__seed<k>.json``: a rerun with
the same settings and code skips it, so a long benchmark resumes run by run; ``--saved-only`` writes the
tables from the runs saved so far (on any CPU; a clean clone's ``runs/`` suffice) and trains nothing.
Each run's predictions stay under
``work/predictions/seed<k>/<trainer>__<configuration>/{normal,shifted}/`` for inspection
(``scripts/false_liver_tissues.py --labels ... --predictions ...``). Trainers and predictions run through
nnU-Net's own training loop and predictor.

    python scripts/bench_segmentation.py --out bench/segmentation                       # ~1 h on 2 cores
    python scripts/bench_segmentation.py --out bench/converged --preset converged        # hours; resumable
    python scripts/bench_segmentation.py --out bench/converged --preset converged --jobs 2 --saved-only
                                      # the tables so far (the options of the training runs, --jobs included)
    python scripts/bench_segmentation.py --out /tmp/b --quick                           # minutes: a smoke run
    python scripts/bench_segmentation.py --out bench/cost --parts cost           # cost only: CPU at <= 128^2
    python scripts/bench_segmentation.py --out bench/cost --parts cost --cost-inplane 0
                                      # the CPU step at the planned patches too (far more than 24 GB of RAM)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shutil
import time
import warnings
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


def select_models(spec: str | None) -> list[tuple[str, str, str]]:
    """The MODELS that ``--models`` names, in MODELS' order: comma-separated TRAINER (all its configurations) or
    TRAINER:CONFIGURATION; None or empty: all. Raises ValueError for a name that matches no model."""
    if not spec or not spec.strip():
        return list(MODELS)
    chosen = set()
    for name in (w.strip() for w in spec.split(",") if w.strip()):
        trainer, _, config = name.partition(":")
        hits = [m for m in MODELS if m[1] == trainer and (not config or m[2] == config)]
        if not hits:
            known = ", ".join(f"{m[1]}:{m[2]}" for m in MODELS)
            raise ValueError(f"--models: {name!r} names no model of this benchmark; choose from {known} "
                             "(or a trainer alone)")
        chosen.update(hits)
    return [m for m in MODELS if m in chosen]


SPLITS = ("normal", "shifted")  # the test scans as made, and under shifted contrast and window
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
# the cost part's CPU measurement sizes per preset: in-plane patch cap (0 = the planned patch), depth cap (None:
# planned), timed steps, prediction case (z, y, x), CPU prediction on/off (minutes per model at 512^2)
COST_PRESETS = {
    "quick": dict(cost_inplane=64, cost_depth=32, cost_steps=1, cost_case=(48, 96, 96), cost_cpu_predict="on"),
    "default": dict(cost_inplane=128, cost_depth=None, cost_steps=3, cost_case=(200, 512, 512),
                    cost_cpu_predict="off"),
}
COST_PRESETS["converged"] = COST_PRESETS["default"]
PARTS = ("cost", "accuracy", "robustness", "speed")


def case_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X (three positive integers), got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> None:
    from nnunet_liver.cli.main import tolerant_streams

    tolerant_streams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="data and budget (other options override it): quick, default, converged")
    p.add_argument("--size", type=int, help="phantom in-plane matrix of the whole abdomen")
    p.add_argument("--fov", choices=("abdomen", "liver"), help="phantom field of view")
    p.add_argument("--z-margin-mm", type=float, help="--fov liver: mm kept above and below the liver (default 30, "
                   "as the saved converged runs; bench/margin70: 70)")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-test", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--cpu-seconds", type=float, help="train every model for this many process CPU seconds "
                   "(instead of --epochs; --iters is then the epoch length)")
    p.add_argument("--models", help="comma-separated subset of the models, each as TRAINER (every configuration "
                   "it runs in: LiverUNetTrainer_CPU is the 2D and the 3D U-Net) or TRAINER:CONFIGURATION "
                   "(default: all)")
    p.add_argument("--quick", action="store_true", help="= --preset quick")
    p.add_argument("--saved-only", action="store_true",
                   help="write the tables from the runs saved so far (same settings and code; saved on any "
                   "CPU, which the report names; the data set need not be here); train nothing")
    p.add_argument("--scoring", choices=("largest-component", "raw"), default="largest-component",
                   help="what the tables score: each prediction after `nnunet-liver postprocess` (its largest "
                   "connected liver component, as the demo and a user's pipeline score it; default) or the raw "
                   "nnU-Net prediction; results.md shows Table 1 of the other as well")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time, each in its own process with "
                   "one torch thread per job when > 1 (2 on 2 cores: twice the runs per hour; the thread count is "
                   "part of a saved run's key, so runs of different --jobs are not mixed)")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: one TRAINER:CONFIG:SEED run (a --jobs child)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training and prediction device")
    g = p.add_argument_group("cost part (sizes of the CPU measurement; CUDA, when present, runs the planned patch)")
    g.add_argument("--cost-inplane", type=int, metavar="N",
                   help="cap every network's in-plane patch at N for the CPU step and prediction (per-voxel figures "
                   "stay comparable; 0 = the planned patch; preset default: 128, quick: 64)")
    g.add_argument("--cost-depth", type=int, metavar="N",
                   help="cap the patch's z extent at N as well (smoke tests; z-margin networks then lose a larger "
                   "share of their output voxels; default: planned)")
    g.add_argument("--cost-steps", type=int, metavar="N", help="timed training steps after one warm-up step; the "
                   "best counts (default 3, quick 1)")
    g.add_argument("--cost-case", type=case_shape, metavar="Z,Y,X",
                   help="prediction case in voxels (default 200,512,512)")
    g.add_argument("--cost-cpu-predict", choices=("on", "off"),
                   help="sliding-window prediction on the CPU when there is no CUDA device (slow: minutes per model "
                   "at 512^2; default off, quick on)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset = "quick"
    for key, value in {**PRESETS[args.preset], **COST_PRESETS[args.preset]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.z_margin_mm is not None:
        from nnunet_liver.data.synth_dataset import SynthSettings

        if args.fov != "liver":
            p.error("--z-margin-mm needs the liver field of view (--fov liver, or --preset converged)")
        if args.z_margin_mm == SynthSettings.z_margin_mm:  # the default: the same data and the same run keys as without it
            args.z_margin_mm = None
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        p.error(f"--parts: unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
    try:
        models = select_models(args.models)
    except ValueError as e:
        p.error(str(e))

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ.setdefault("nnUNet_compile", "f")
    import torch

    from nnunet_liver.env import activate

    activate(out / "work")
    # cost options stay out of the training runs' settings: saved runs are reused only when these match
    settings = {k: v for k, v in vars(args).items()
                if k not in ("out", "quick", "parts", "models", "jobs", "run", "saved_only", "scoring")
                and not k.startswith("cost_")
                and not (k == "z_margin_mm" and v is None)}  # runs saved before the option keep their key
    if args.run:  # a --jobs child: one run into runs/, nothing else
        trainer, config, seed = args.run.split(":")
        label = next(m[0] for m in MODELS if m[1] == trainer and m[2] == config)
        cached_run(label, trainer, config, int(seed), args, out, settings)
        return
    report = {"machine": machine(args.device), "settings": settings}
    if args.jobs > 1 and "cost" not in parts:  # the training runs' threads (their children's)
        report["machine"].update(threads=1, jobs=args.jobs)

    def save() -> None:
        (out / "results.json").write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
        (out / "results.md").write_text(markdown(report), encoding="utf-8")

    if args.saved_only:  # tables only: no measurement, and the data set of a running benchmark stays as it is
        parts -= {"cost"}
    if "cost" in parts:
        report["cost"] = bench_cost(inplane=args.cost_inplane, depth=args.cost_depth, steps=args.cost_steps,
                                    case=args.cost_case, cpu_predict=args.cost_cpu_predict == "on")
        report["cost"]["command"] = cost_command(argv)
        save()
    if parts & {"accuracy", "robustness", "speed"}:
        if args.saved_only:
            check_dataset(args, missing_ok=True)
        else:
            prepare_dataset(args)
        runs: dict[str, list[dict]] = {}
        if args.jobs > 1 and not args.saved_only:
            run_in_parallel(models, args, out, argv)
        # seed-major, so that an interrupted run has every model for the first seeds
        for seed in args.seeds:
            for label, trainer, config in models:
                run = cached_run(label, trainer, config, seed, args, out, settings, train=not args.saved_only)
                if run is None:
                    print(f"== {label}, seed {seed}: not saved yet (--saved-only)", flush=True)
                    continue
                runs.setdefault(label, []).append(run)
                report["runs"] = runs
                save()
        if not runs:
            raise SystemExit(f"error: {out / 'runs'} holds no saved run for these options, code and machine: pass "
                             "the options the training runs had (--preset, --seeds, --jobs: one thread per run when "
                             "> 1), on the same kind of CPU")
        if args.saved_only:  # the runs' machine, not this one
            cpus = sorted({r["settings"]["cpu"] for rs in runs.values() for r in rs})
            report["machine"]["cpu"] = "; ".join(cpus)
            report["machine"].pop("cores", None)  # part of each CPU's name
        if args.scoring == "largest-component":  # runs saved before the tables scored the largest component
            ready = _dataset_marker(args)[2]
            for label, trainer, config in models:
                for run in runs.get(label, []):
                    score_kept_largest_component(run, out, trainer, config, ready)
        report["runs"] = runs
        report["scoring"] = args.scoring
        raw_runs = runs
        runs, report["unscored"] = scored_runs(runs, args.scoring)
        report["table_seeds"] = {label: [r["seed"] for r in rs] for label, rs in runs.items()}
        report["accuracy"] = summarise(runs, "normal")
        if args.scoring == "largest-component":
            report["accuracy_raw"] = summarise(raw_runs, "normal")
        report["ablation_steps"] = ablation_steps(runs)
        report["robustness"] = robustness(runs)
        report["rwa_control"] = rwa_control(runs)
        first = raw_runs.get(DUALSTREAM, [{}])[0]  # the first seed's run
        report["window_sweep"] = dict(first.get("window_sweep", {}))
        report["window_sweep_seed"] = first.get("seed")
        report["speed"] = speed(raw_runs)
        report["curves"] = plot_curves(raw_runs, out / "curves.png")
        if "speed" in parts and not args.saved_only:
            report["speed"]["rwa_overhead"] = bench_rwa_overhead(torch, args.device)
        save()
    print(markdown(report))


def _import_closure(module: str, package: str = "nnunet_liver") -> set[Path]:
    """Source files of ``module`` and of every ``package`` module it imports, transitively (function-level
    imports count; the files are parsed with ast, only parent packages get imported to locate them)."""
    import ast
    import importlib.util

    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:  # a name imported from a module is not a module itself
            spec = importlib.util.find_spec(name)
        except (ImportError, AttributeError, ValueError):
            continue
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        seen[name] = Path(spec.origin)
        for node in ast.walk(ast.parse(seen[name].read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == package]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == package:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]  # submodules imported by name
    return set(seen.values())


def code_fingerprint(network_module: str | None = None, trainer: str | None = None) -> str:
    """SHA-256 of the code a saved run depends on, so that a run made by other code is not reused: the trainers
    and the window augmentation, plus the network code (``architectures/`` and ``blocks/``) in the import
    closure of ``network_module`` (the plans' network class's module); without one, all of that network code.
    A change to DualStream's blocks then redoes the DualStream runs and keeps the U-Net runs.

    Each file counts by its code without docstrings, comments or layout (:func:`_code_text`), so these do not
    redo a run. With ``trainer``, the trainer modules leave out every class that is neither one of
    ``trainer``'s bases nor named by the code kept (:func:`_unused_trainer_classes`), so adding or editing
    another trainer keeps this run's key."""
    import hashlib

    trainer_folder, files = _fingerprint_files(network_module)
    unused = _unused_trainer_classes(trainer, sorted(trainer_folder.glob("*.py"))) if trainer else frozenset()
    h = hashlib.sha256()
    for f in files:
        drop = unused | {"__all__"} if trainer and f.parent == trainer_folder else frozenset()
        h.update(f.name.encode() + _code_text(f, drop).encode())
    return h.hexdigest()[:16]


def legacy_code_fingerprint(network_module: str | None = None) -> str:
    """The key of runs saved before the tenth sitting: the files of :func:`code_fingerprint`, the trainer
    modules whole, hashed byte for byte. Such a run is still reused, and still enters the tables, where these
    files are those it ran (a checkout of its commit)."""
    import hashlib

    h = hashlib.sha256()
    for f in _fingerprint_files(network_module)[1]:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _fingerprint_files(network_module: str | None) -> tuple[Path, list[Path]]:
    """The trainers' folder, and the files a run's key hashes in their order: the trainers, the window
    augmentation and the network code in the import closure of ``network_module`` (all of it without one)."""
    import nnunet_liver
    import nnunet_liver.trainers

    package = Path(nnunet_liver.__file__).parent
    trainer_folder = Path(nnunet_liver.trainers.__file__).parent
    files = {p for r in (trainer_folder, package / "augment") for p in r.glob("*.py")}
    network = {p for r in (package / "architectures", package / "blocks") for p in r.glob("*.py")}
    if network_module is not None:
        network &= _import_closure(network_module)
    return trainer_folder, sorted(files | network, key=lambda f: (f.name, str(f)))


def _unused_trainer_classes(trainer: str, files: list[Path]) -> frozenset[str]:
    """The top-level classes of the trainer modules ``files`` that ``trainer`` does not use: all but its bases
    and the classes the code that stays names (transitively): as a name, an attribute, a name imported under
    another name, or a string (``getattr(module, "Name")``)."""
    import ast

    import nnunet_liver.trainers

    trees = [_without_docstrings(ast.parse(f.read_text(encoding="utf-8"))) for f in files]
    classes = {node.name: node for tree in trees for node in tree.body if isinstance(node, ast.ClassDef)}
    keep = {c.__name__ for c in getattr(nnunet_liver.trainers, trainer).__mro__} & classes.keys()
    aliases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname:
                        aliases.setdefault(a.asname, set()).add(a.name)

    def names(node) -> set[str]:
        found = set()
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                found.add(n.id)
            elif isinstance(n, ast.Attribute):
                found.add(n.attr)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                found.add(n.value)
        return found.union(*(aliases.get(name, ()) for name in found))

    rest = [node for tree in trees for node in tree.body if not isinstance(node, ast.ClassDef)
            and not (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                          for t in node.targets))]
    used = set().union(*(names(node) for node in rest))
    while True:
        named = used.union(*(names(classes[k]) for k in keep)) & classes.keys()
        if named <= keep:
            return frozenset(classes.keys() - keep)
        keep |= named


def _code_text(path: Path, drop: frozenset[str] | set[str] = frozenset()) -> str:
    """``path``'s code as ``ast.unparse`` writes it (no docstrings, comments or layout; the same text on every
    Python version that parses it), without the top-level classes, imported names and assignments named in
    ``drop``."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    if drop:
        body = []
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in drop:
                continue
            if isinstance(node, ast.ImportFrom):
                node.names = [a for a in node.names if a.name not in drop]
                if not node.names:
                    continue
            if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id in drop for t in node.targets):
                continue
            body.append(node)
        tree.body = body
    return ast.unparse(_without_docstrings(tree))


def _without_docstrings(tree):
    """``tree`` (an ``ast`` module) with the docstrings of the module, its classes and functions removed."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def network_module(trainer: str, config: str) -> str | None:
    """The module of the network class that ``trainer`` builds for ``config`` from the bench data set's plans
    (None when the plans are not there)."""
    plans_file = Path(os.environ.get("nnUNet_preprocessed", "")) / "Dataset990_LiverPhantom" / "nnUNetPlans.json"
    if not plans_file.is_file():
        return None
    import nnunet_liver.trainers

    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    rewrite = getattr(getattr(nnunet_liver.trainers, trainer), "rewrite_plans", None)
    if rewrite is not None:
        plans = rewrite(plans, config)
    from nnunet_liver.trainers._plans import resolved_configuration

    name = resolved_configuration(plans, config)["architecture"]["network_class_name"]
    return name.rsplit(".", 1)[0]


def run_in_parallel(models, args, out: Path, argv: list[str] | None) -> None:
    """Every (seed, model) run not saved yet, ``args.jobs`` at a time, each in a child process of this script
    (``--run``) with one torch/OpenMP thread, seed-major; a failed child stops the benchmark with its log.
    The caller then reads the saved runs as a one-job benchmark would."""
    import subprocess
    import sys

    base = list(sys.argv[1:] if argv is None else argv)
    todo = [(seed, m) for seed in args.seeds for m in models]
    _write_default_splits()  # else concurrent trainers would each write splits_final.json
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, Path]] = []

    def reap(block: bool) -> None:
        for proc, log in list(running):
            if block or proc.poll() is not None:
                if proc.wait() != 0:
                    for other, _ in running:
                        other.kill()
                    raise RuntimeError(f"benchmark run failed (exit code {proc.returncode}); log: {log}")
                running.remove((proc, log))
                break

    for seed, (label, trainer, config) in todo:
        while len(running) >= args.jobs:
            time.sleep(5)
            reap(block=False)
        log = out / "logs" / f"{trainer}__{config}__seed{seed}.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--run", f"{trainer}:{config}:{seed}"]
        print(f"== {label}, seed {seed}: started (log {log.name})", flush=True)
        with open(log, "a", encoding="utf-8") as f:
            running.append((subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), log))
    while running:
        reap(block=True)


def _write_default_splits() -> None:
    """nnU-Net's default 5-fold split of the bench data set (``nnUNetTrainer.do_split``: seed 12345), written
    once, atomically, if the preprocessed folder has none."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    base = Path(os.environ["nnUNet_preprocessed"]) / "Dataset990_LiverPhantom"
    splits = base / "splits_final.json"
    if splits.is_file():
        return
    folder = str(base / "nnUNetPlans_3d_fullres")
    keys = sorted(infer_dataset_class(folder).get_identifiers(folder))
    tmp = splits.with_suffix(".tmp")
    tmp.write_text(json.dumps(generate_crossval_split(keys, seed=12345, n_splits=5), indent=4), encoding="utf-8")
    tmp.replace(splits)


def run_path(out: Path, trainer: str, config: str, seed: int) -> Path:
    """Where a finished run's figures are saved."""
    return out / "runs" / f"{trainer}__{config}__seed{seed}.json"


def kept_path(out: Path, trainer: str, config: str, seed: int) -> Path:
    """Where a run's test predictions are kept (``normal/`` and ``shifted/`` under it)."""
    return out / "work" / "predictions" / f"seed{seed}" / f"{trainer}__{config}"


def cached_run(label: str, trainer: str, config: str, seed: int, args, out: Path, settings: dict,
               train: bool = True) -> dict | None:
    """One model and seed: trained, predicted and evaluated once; a rerun with the same settings reads the
    saved result (runs/<trainer>__<config>__seed<k>.json), so a long benchmark resumes run by run. With
    ``train=False`` a run not saved yet gives None."""
    path = run_path(out, trainer, config, seed)
    # the machine is part of the key: CPU seconds on another CPU (or with/without native bf16) buy other runs
    from nnunet_liver.data.phantoms import PHANTOM_VERSION

    key = {**{k: v for k, v in settings.items() if k != "seeds"}, "phantoms": PHANTOM_VERSION,
           "code": code_fingerprint(network_module(trainer, config), trainer), "cpu": cpu_identity(),
           "threads": 1 if args.jobs > 1 else _torch_threads()}  # --jobs children train on one thread
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        legacy = {**key, "code": legacy_code_fingerprint(network_module(trainer, config))}
        if saved.get("settings") in (key, legacy):
            print(f"== {label}, seed {seed}: done earlier ({path.name})", flush=True)
            return saved
        if not train and tables_may_use(saved.get("settings") or {}, key, trainer, config):
            print(f"== {label}, seed {seed}: saved on {saved['settings']['cpu']} ({path.name})", flush=True)
            return saved
    if not train:
        return None
    run = train_and_predict(label, trainer, config, seed, args, out)
    run["settings"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    from nnunet_liver.data.io import staged_file

    with staged_file(path, overwrite=True) as tmp:  # a unique temporary name, as the back-fill's
        tmp.write_text(json.dumps(run, indent=1, default=float), encoding="utf-8")
    return run


def tables_may_use(saved: dict, key: dict, trainer: str, config: str) -> bool:
    """--saved-only: a run saved on another CPU still goes into the tables (the report names the runs' CPUs;
    training would not reuse it), and so does one whose data set is not here (a clean clone keeps only
    ``runs/``): its settings must be these and its code this code, for the network the plans name or,
    without the plans, for one of the networks a run can build."""
    def rest(k: dict) -> dict:
        return {name: v for name, v in k.items() if name not in ("cpu", "code")}

    if "cpu" not in saved or rest(saved) != rest(key):
        return False
    module = network_module(trainer, config)
    if module is not None:
        return saved.get("code") in (key["code"], legacy_code_fingerprint(module))
    return saved.get("code") in {key["code"], *_code_candidates(trainer)}


@functools.cache
def _code_candidates(trainer: str) -> frozenset[str]:
    import nnunet_liver.architectures

    folder = Path(nnunet_liver.architectures.__file__).parent
    modules = [f"nnunet_liver.architectures.{f.stem}" for f in folder.glob("*.py") if f.stem != "__init__"]
    # nnU-Net's own U-Net (dynamic_network_architectures) imports none of our network code
    modules += ["dynamic_network_architectures.architectures.unet"]
    return frozenset({code_fingerprint(m, trainer) for m in modules} | {legacy_code_fingerprint(m) for m in modules})


def cpu_identity() -> str:
    """What a CPU-seconds budget buys depends on: the CPU model, its core count and native bf16 (the CPU
    presets train under bf16 autocast only where it is native, unless ``NNUNET_LIVER_BF16`` says otherwise,
    which is then named). Part of a saved run's key."""
    from nnunet_liver.cli.bench import cpu_name
    from nnunet_liver.trainers._mixins import cpu_bf16_supported

    try:
        from nnunet_liver.trainers._mixins import cpu_bf16_requested
    except ImportError:  # the package of a checkout before it (tables of runs saved there): bf16 where native
        def cpu_bf16_requested() -> bool:
            return cpu_bf16_supported()

    native, autocast = cpu_bf16_supported(), cpu_bf16_requested()
    identity = f"{cpu_name()}, {os.cpu_count()} cores, native bf16 {'yes' if native else 'no'}"
    if autocast != native:
        identity += f", bf16 autocast {'forced on' if autocast else 'off'} (NNUNET_LIVER_BF16)"
    return identity


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine(device: str = "cpu") -> dict:
    import torch

    info = {"cpu": cpu_identity(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---- cost -------------------------------------------------------------------------------------------------

# (label, trainer, configuration) of the cost part; the 3D U-Net is the baseline of every ratio
COST_MODELS = [
    ("3D U-Net", "LiverUNetTrainer", "3d_fullres"),
    ("Ablation 0: spatial stream, fixed window", "DualStreamAblationBaseTrainer", "3d_fullres"),
    ("Ablation 1: + RWA", "DualStreamAblationRWATrainer", "3d_fullres"),
    ("Ablation 2: + attention gates", "DualStreamAblationRWAAttTrainer", "3d_fullres"),
    ("DualStream", "DualStreamTrainer", "3d_fullres"),
]
COST_BASELINE = "3D U-Net"
# figures compared with the 3D U-Net (key -> what, for the table); lower is cheaper for all of them
COST_FIGURES = {
    "params": "params",
    "flops_per_voxel": "FLOPs / output voxel",
    "cpu_fp32_step_ms_per_mvoxel": "CPU fp32 step ms / Mvoxel",
    "cpu_bf16_step_ms_per_mvoxel": "CPU bf16 step ms / Mvoxel",
    "cpu_fp32_peak_mib_per_mvoxel": "CPU fp32 peak live MiB / Mvoxel",
    "cpu_bf16_peak_mib_per_mvoxel": "CPU bf16 peak live MiB / Mvoxel",
    "cpu_fp32_rss_mib_per_mvoxel": "CPU fp32 peak RSS MiB / Mvoxel",
    "cuda_fp16_step_ms_per_mvoxel": "CUDA fp16 step ms / Mvoxel",
    "cuda_fp16_peak_mib_per_mvoxel": "CUDA fp16 peak MiB / Mvoxel",
    "predict_s_per_case": "prediction s / case",
}
MIB = 2.0 ** 20


def cost_command(argv: list[str] | None) -> str:
    """The command line that reproduces (and prints) the cost table."""
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "scripts/bench_segmentation.py", *(shlex.quote(a) for a in args)])


def _malloc_in_use():
    """A function returning the bytes glibc's malloc has handed out and not got back (``mallinfo2``:
    ``uordblks`` + ``hblkhd``), or None where there is no glibc 2.33+."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2

    def in_use() -> int:
        info = fn()
        return int(info.uordblks + info.hblkhd)

    return in_use


class PeakRSS:
    """Peak growth of this process's resident set size, and of the bytes malloc has handed out ("live"),
    while the ``with`` block runs.

    The live figure is the CPU's counterpart of ``torch.cuda.max_memory_allocated``: the tensors alive at
    the worst moment, whatever the allocator keeps besides. RSS adds what glibc holds in a fragmented heap
    (freed blocks between live ones), which depends on the order of allocations more than on the network.

    A background thread reads ``/proc/self/statm`` every ``interval`` seconds (torch's kernels release the
    GIL, so it samples while they run); the figure is the largest sample minus the RSS just before the block.
    Freed heap memory is first handed back to the OS (glibc ``malloc_trim``), so memory that an earlier step
    freed but the allocator kept does not hide this step's growth. Spikes shorter than the interval can be
    missed: a lower bound. ``growth_bytes`` is None where there is no ``/proc`` (not Linux).
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.growth_bytes: float | None = None
        self.live_growth_bytes: float | None = None
        self._in_use = _malloc_in_use()

    @staticmethod
    def _trim() -> None:
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def _rss(self) -> int:
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def __enter__(self):
        import threading

        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None
            return self
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._trim()
        self._base = self._peak = self._rss()
        self._live_base = self._live_peak = self._in_use() if self._in_use else 0
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                if self._in_use:
                    self._live_peak = max(self._live_peak, self._in_use())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        os.close(self._fd)
        self.growth_bytes = float(self._peak - self._base)
        if self._in_use:
            self.live_growth_bytes = float(self._live_peak - self._live_base)


def _loss_voxels(patch, z_margin: int, batch: int = 1) -> int:
    """Voxels that enter the loss: z_margin slices at each z end of the patch are left out."""
    z, *rest = patch
    return int(batch * (z - 2 * z_margin) * np.prod(rest))


def _crop_z(tensors, z_margin: int, depth: int) -> list:
    """Each scale cropped by z_margin slices at both z ends (scaled where a deep-supervision output is
    downsampled in z; a DualStream's deep-supervision outputs keep the full depth)."""
    if not z_margin:
        return list(tensors)
    cropped = []
    for t in tensors:
        m = round(z_margin * t.shape[2] / depth)
        cropped.append(t[:, :, m:t.shape[2] - m] if m else t)
    return cropped


def _fitting_patch(net, planned, inplane_cap: int | None, depth_cap: int | None, divisors, z_margin: int) -> list[int]:
    """The planned patch with its in-plane (and optionally z) extent capped: per axis the largest multiple of
    the plan's stride product up to the cap on which the network runs and returns outputs of the input's
    size, else the smallest above the cap (probed on the meta device in training mode, so the network stays
    a black box: instance norm needs more than one voxel at the bottleneck, a contextual stream may pool
    further); the planned extent where none of the 8 + 8 candidates does."""
    import copy

    import torch

    probe = copy.deepcopy(net).to("meta").train()

    def runs(patch) -> bool:
        try:
            with torch.no_grad():
                out = probe(torch.zeros(1, 1, *patch, device="meta"))
        except (RuntimeError, ValueError, IndexError):
            return False
        out = out[0] if isinstance(out, (list, tuple)) else out
        return list(out.shape[2:]) == list(patch)

    patch = list(planned)
    for axis, cap in ((1, inplane_cap), (2, inplane_cap), (0, depth_cap)):
        if not cap or cap >= planned[axis]:
            continue
        d = int(divisors[axis])
        low = 2 * z_margin + 1 if axis == 0 else 1
        start = max(d, (cap // d) * d)
        below = [k for k in range(start, 0, -d) if k >= low][:8]  # the cap or under it, largest first
        above = list(range(start + d, planned[axis], d))[:8]  # else the smallest that runs
        for n in below + above:
            if runs([*patch[:axis], n, *patch[axis + 1:]]):
                patch[axis] = n
                break
    return patch


def _bare_trainer(cls, plans_manager, configuration_manager, label_manager):
    """The trainer class without its __init__ (which needs data folders): enough state for its own
    ``_build_loss`` and ``_get_deep_supervision_scales``, so the loss is the one that trainer trains with."""
    import torch

    trainer = object.__new__(cls)
    trainer.plans_manager, trainer.configuration_manager = plans_manager, configuration_manager
    trainer.label_manager = label_manager
    trainer.is_ddp, trainer.enable_deep_supervision = False, True
    trainer.device = torch.device("cpu")  # no torch.compile of the loss
    trainer.print_to_log_file = lambda *a, **k: None
    return trainer


def _region_targets(patch, ds_scales, generator) -> list:
    """Random labels 0/1/2 on the patch, downsampled for deep supervision as nnU-Net does (nearest-exact to
    round(size * scale)), then as the regions liver (1+2) and tumour (2): (1, 2, *shape) bool per scale."""
    import torch
    import torch.nn.functional as F

    labels = torch.randint(0, 3, (1, 1, *patch), generator=generator).float()
    targets = []
    for scale in ds_scales or [[1.0] * len(patch)]:
        shape = [round(n * s) for n, s in zip(patch, scale)]
        seg = labels if shape == list(patch) else F.interpolate(labels, shape, mode="nearest-exact")
        targets.append(torch.cat([seg > 0, seg == 2], dim=1))
    return targets


def measure_step(net, loss_fn, ds_scales, patch, z_margin: int, *, device: str, precision: str, steps: int) -> dict:
    """One training step as ``nnUNetTrainer.train_step`` does it (zero grad, forward and loss under autocast,
    backward, gradient clipping at 12, SGD step; fp16 with a GradScaler), batch 1: best of ``steps`` timed
    steps after a warm-up step, then one more step for memory (CPU: :class:`PeakRSS`; CUDA: the peak of
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the allocation before it).
    Per-voxel figures divide by the output voxels that enter the loss."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 1, *patch, generator=gen) * 150 + 40).to(device)  # HU-like; the networks window it
    targets = [t.to(device) for t in _region_targets(patch, ds_scales, gen)]
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    depth = patch[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = net(x)
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            tgt = targets[:len(out)]
            out, tgt = _crop_z(out, z_margin, depth), _crop_z(tgt, z_margin, depth)
            loss = loss_fn(out, tgt) if len(out) > 1 or ds_scales else loss_fn(out[0], tgt[0])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
            optimizer.step()
        sync()

    step()  # warm-up: optimiser state, oneDNN/cuDNN algorithm choice
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        peak_abs = float(torch.cuda.max_memory_allocated())
        growth = peak_abs - before
    else:
        with PeakRSS() as rss:
            step()
        growth, peak_abs = rss.live_growth_bytes, None
        if growth is None:  # no mallinfo2: RSS
            growth = rss.growth_bytes
    optimizer.zero_grad(set_to_none=True)
    voxels = _loss_voxels(patch, z_margin)
    result = {"patch": list(patch), "output_voxels": voxels, "step_s": min(times),
              "step_ms_per_mvoxel": min(times) * 1e3 / (voxels / 1e6),
              "peak_growth_mib": None if growth is None else growth / MIB,
              "peak_mib_per_mvoxel": None if growth is None else growth / MIB / (voxels / 1e6)}
    if peak_abs is not None:
        result["peak_allocated_mib"] = peak_abs / MIB
    if device != "cuda" and rss.growth_bytes is not None:
        result["rss_peak_mib_per_mvoxel"] = rss.growth_bytes / MIB / (voxels / 1e6)
    return result


def measure_prediction(net, plans: dict, configuration: str, patch, dataset_json: dict, trainer: str, case,
                       device: str) -> dict:
    """Seconds of nnU-Net's ``predict_sliding_window_return_logits`` for one random-HU case of ``case`` voxels
    (z, y, x): tiles of ``patch`` (the configuration's patch, possibly capped), step 0.5, Gaussian weighting,
    mirroring off, fp16 autocast on CUDA as nnU-Net does."""
    import contextlib
    import copy
    import io

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = copy.deepcopy(plans)
    plans["configurations"][configuration]["patch_size"] = [int(n) for n in patch]
    pm = PlansManager(plans)
    dev = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(net.to(dev), pm, pm.get_configuration(configuration), None, dataset_json,
                                        trainer, None)
    image = torch.randn(1, *case, generator=torch.Generator().manual_seed(1)) * 150 + 40
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    logits = predictor.predict_sliding_window_return_logits(image)
    sync()
    seconds = time.perf_counter() - t
    assert tuple(logits.shape[1:]) == tuple(case), (logits.shape, case)
    del logits, predictor, image
    return {"device": device, "tile": [int(n) for n in patch], "case": list(case), "seconds": seconds}


def bench_cost(*, inplane: int | None = 128, depth: int | None = None, steps: int = 3,
               case=(200, 512, 512), cpu_predict: bool = False, models=COST_MODELS) -> dict:
    """Compute and memory of the real-size networks at the plans nnU-Net makes for LiTS, one model after
    the other in this process (see the module docstring for what is measured).

    Each network is built as its trainer builds it (``rewrite_plans``, ``PlansManager``,
    ``build_network_architecture``) and otherwise treated as a black box. Output voxels are the voxels that
    enter the loss: batch x (Z - 2 z_margin) x Y x X with ``z_margin = getattr(net, "z_margin", 0)``; outputs
    and targets of every deep-supervision scale are cropped by it before the loss. The CPU step and CPU
    prediction run on the planned patch with its in-plane extent capped at ``inplane`` (and z at ``depth``)
    so that they fit in memory; CUDA, when present, runs the planned patch. Params and FLOPs are those of
    the planned patch.
    """
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_liver import trainers
    from nnunet_liver.architectures.cost import count_flops_per_voxel
    from nnunet_liver.planners.lits_like import lits_like_plans
    from nnunet_liver.trainers.segmentation import liver_tumour_regions

    plans, dataset_json = lits_like_plans("hu")
    regions_json = liver_tumour_regions(dataset_json)
    cuda = torch.cuda.is_available()
    planned = plans["configurations"]["3d_fullres"]
    result = {
        "plan": {"source": "nnunet_liver.planners.lits_like (nnU-Net's planner on a LiTS-like fingerprint)",
                 "patch_3d_fullres": planned["patch_size"], "batch_size_3d_fullres": planned["batch_size"],
                 "spacing": planned["spacing"], "median_image": planned["median_image_size_in_voxels"]},
        "settings": {"cpu_inplane_cap": inplane or None, "cpu_depth_cap": depth, "steps": steps, "batch": 1,
                     "case": list(case), "cpu_predict": cpu_predict, "cuda": cuda,
                     "threads": torch.get_num_threads()},
        "models": {},
    }
    for label, trainer_name, config in models:
        print(f"== cost: {label} ({trainer_name}, {config})", flush=True)
        cls = getattr(trainers, trainer_name)
        new_plans = cls.rewrite_plans(plans, config)
        pm = PlansManager(new_plans)
        cm = pm.get_configuration(config)
        lm = pm.get_label_manager(regions_json)
        net = cls.build_network_architecture(pm, cm, 1, lm.num_segmentation_heads, True)
        z_margin = int(getattr(net, "z_margin", 0))
        patch = [int(n) for n in cm.patch_size]
        # count_flops_per_voxel divides by the full output (= input patch, nnU-Net's contract); re-divide by
        # the voxels that enter the loss
        flops = count_flops_per_voxel(net, patch) * float(np.prod(patch)) / _loss_voxels(patch, z_margin)
        row = {"trainer": trainer_name, "configuration": config, "patch": patch, "batch_size": cm.batch_size,
               "z_margin": z_margin, "params": int(sum(q.numel() for q in net.parameters())),
               "flops_per_voxel": flops}
        divisors = np.prod(np.array(cm.pool_op_kernel_sizes), axis=0)
        cpu_patch = _fitting_patch(net, patch, inplane, depth, divisors, z_margin)
        bare = _bare_trainer(cls, pm, cm, lm)
        loss_fn, ds_scales = bare._build_loss(), bare._get_deep_supervision_scales()
        row["loss"] = type(loss_fn).__name__ + (f"({type(loss_fn.loss).__name__})" if hasattr(loss_fn, "loss") else "")
        # bf16 only where the CPU has it natively (AVX512-BF16 / AMX): elsewhere autocast emulates it, slower
        # than float32 and far from what a trainer does there (the CPU presets train in float32 on such CPUs)
        from nnunet_liver.trainers._mixins import cpu_bf16_supported

        for precision in ("fp32", "bf16") if cpu_bf16_supported() else ("fp32",):
            m = measure_step(net, loss_fn, ds_scales, cpu_patch, z_margin, device="cpu", precision=precision,
                             steps=steps)
            row[f"cpu_{precision}"] = m
            row[f"cpu_{precision}_step_ms_per_mvoxel"] = m["step_ms_per_mvoxel"]
            row[f"cpu_{precision}_peak_mib_per_mvoxel"] = m["peak_mib_per_mvoxel"]
            if "rss_peak_mib_per_mvoxel" in m:
                row[f"cpu_{precision}_rss_mib_per_mvoxel"] = m["rss_peak_mib_per_mvoxel"]
        if cuda:
            try:
                m = measure_step(net, loss_fn, ds_scales, patch, z_margin, device="cuda", precision="fp16",
                                 steps=steps)
                row["cuda_fp16"] = m
                row["cuda_fp16_step_ms_per_mvoxel"] = m["step_ms_per_mvoxel"]
                row["cuda_fp16_peak_mib_per_mvoxel"] = m["peak_mib_per_mvoxel"]
            except torch.cuda.OutOfMemoryError as e:
                row["cuda_fp16"] = {"patch": patch, "error": f"out of memory: {str(e).splitlines()[0]}"}
            net.to("cpu")
            torch.cuda.empty_cache()
        if cuda or cpu_predict:
            device = "cuda" if cuda else "cpu"
            pred_net = cls.build_network_architecture(pm, cm, 1, lm.num_segmentation_heads, False)
            pred_net.load_state_dict(net.state_dict())
            del net
            try:
                row["predict"] = measure_prediction(pred_net, new_plans, config, patch if cuda else cpu_patch,
                                                    regions_json, trainer_name, case, device)
                row["predict_s_per_case"] = row["predict"]["seconds"]
            except torch.cuda.OutOfMemoryError as e:
                row["predict"] = {"device": device, "error": f"out of memory: {str(e).splitlines()[0]}"}
            del pred_net
            if cuda:
                torch.cuda.empty_cache()
        else:
            del net
        result["models"][label] = row
        print(f"   {_cost_line(row)}", flush=True)
    add_cost_ratios(result["models"])
    return result


def add_cost_ratios(models: dict) -> None:
    """``vs_3d_unet`` per model: each of COST_FIGURES divided by the 3D U-Net's (1.0 for the U-Net itself;
    absent where either is missing); ``flops_ratio_vs_3d_unet`` kept for older readers."""
    base = models.get(COST_BASELINE, {})
    for row in models.values():
        row["vs_3d_unet"] = {k: row[k] / base[k] for k in COST_FIGURES
                             if isinstance(row.get(k), (int, float)) and isinstance(base.get(k), (int, float))
                             and base[k] > 0}
        if "flops_per_voxel" in row["vs_3d_unet"]:
            row["flops_ratio_vs_3d_unet"] = row["vs_3d_unet"]["flops_per_voxel"]


def _cost_line(row: dict) -> str:
    return ", ".join(f"{COST_FIGURES[k]} {row[k]:.4g}" for k in COST_FIGURES if isinstance(row.get(k), (int, float)))


def cost_markdown(cost: dict) -> list[str]:
    models = cost.get("models", {})
    if not models:
        return []
    s, plan = cost.get("settings", {}), cost.get("plan", {})
    figures = [k for k in COST_FIGURES if any(isinstance(r.get(k), (int, float)) for r in models.values())]

    def cell(row: dict, key: str) -> str:
        v = row.get(key)
        if not isinstance(v, (int, float)):
            return "n/a"
        text = f"{v:,}" if key == "params" else f"{v:.3g}"
        ratio = row.get("vs_3d_unet", {}).get(key)
        return text + (f" ({ratio:.2f}x)" if ratio is not None else "")

    cpu_patch = {k: r.get("cpu_fp32", {}).get("patch") for k, r in models.items()}
    lines = [f"## Cost at nnU-Net's LiTS plan (3d_fullres {plan.get('patch_3d_fullres')}, batch "
             f"{plan.get('batch_size_3d_fullres')}, spacing {plan.get('spacing')})", "",
             "Per output voxel = per voxel that enters the loss (a network's z_margin end slices excluded). "
             "Training step: forward + Dice/BCE with deep supervision + backward + SGD step, batch 1, best of "
             f"{s.get('steps')} after a warm-up; CPU at {s.get('threads')} thread(s) on the planned patch "
             f"capped in-plane at {s.get('cpu_inplane_cap') or 'none'}"
             + (f" and in z at {s.get('cpu_depth_cap')}" if s.get("cpu_depth_cap") else "")
             + "; peak = the step's growth of resident memory (CPU, sampled every 2 ms) or of CUDA allocated "
             f"memory; prediction: one {'x'.join(map(str, s.get('case', [])))} (z x y x x) case, sliding window, "
             "step 0.5, no mirroring. In brackets: ratio to the 3D U-Net.", "",
             "| model | planned patch | CPU patch | z margin | " + " | ".join(COST_FIGURES[k] for k in figures) + " |",
             "|---" * (4 + len(figures)) + "|"]
    for label, r in models.items():
        lines.append(f"| {label} | {r.get('patch')} | {cpu_patch[label]} | {r.get('z_margin', 0)} | "
                     + " | ".join(cell(r, k) for k in figures) + " |")
    errors = [f"{label}: {k} {r[k]['error']}" for label, r in models.items() for k in ("cuda_fp16", "predict")
              if isinstance(r.get(k), dict) and "error" in r[k]]
    lines += [""] + [f"- {e}" for e in errors] + ([""] if errors else [])
    if cost.get("command"):
        lines += [f"Command: `{cost['command']}`", ""]
    return lines


# ---- training and prediction ------------------------------------------------------------------------------

def _dataset_marker(args):
    """The bench data set's marker file, its synthesis settings for these options, and whether the data set on
    disk was made with them."""
    from nnunet_liver.data.phantoms import PHANTOM_VERSION
    from nnunet_liver.data.synth_dataset import SynthSettings

    marker = Path(os.environ["nnUNet_preprocessed"]) / "Dataset990_LiverPhantom" / ".bench_ready"
    settings = SynthSettings(args.num_train, args.num_test, args.size, seed=0, fov=args.fov,
                             **({"z_margin_mm": args.z_margin_mm} if args.z_margin_mm is not None else {}))
    # as settings objects: a marker written before a field existed holds that field's default
    try:
        saved = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
        # a marker without a version was written by the phantoms of version 1
        ready = (isinstance(saved, dict) and saved.pop("phantom_version", 1) == PHANTOM_VERSION
                 and SynthSettings(**saved) == settings)
    except (TypeError, ValueError):  # a marker of another version, or damaged: not this data set
        ready = False
    return marker, settings, ready


def check_dataset(args, missing_ok: bool = False) -> None:
    """--saved-only: the data set must be the one these options would make (never rewritten here); with
    ``missing_ok``, or absent."""
    marker, settings, ready = _dataset_marker(args)
    if not ready and not (missing_ok and not marker.is_file()):
        from nnunet_liver.data.phantoms import PHANTOM_VERSION

        raise SystemExit(f"error: {marker}: missing, or made with other data settings than these "
                         f"({dataclasses.asdict(settings)}, phantoms of version {PHANTOM_VERSION}); pass the "
                         "--preset of the training runs (runs of another phantom version need a checkout of it)")


def prepare_dataset(args) -> None:
    from nnunet_liver.data.phantoms import PHANTOM_VERSION
    from nnunet_liver.data.synth_dataset import write_phantom_dataset
    from nnunet_liver.planners.api import plan_and_preprocess

    raw = Path(os.environ["nnUNet_raw"])
    marker, settings, ready = _dataset_marker(args)
    if ready:
        return
    marker.unlink(missing_ok=True)  # an interrupted rewrite must not leave the old settings' marker behind
    write_phantom_dataset(raw, settings, overwrite=True, num_processes=2, progress=False)
    plan_and_preprocess(990, configurations=("2d", "3d_fullres"), num_processes=2, overwrite=True)
    marker.write_text(json.dumps({**dataclasses.asdict(settings), "phantom_version": PHANTOM_VERSION}), encoding="utf-8")


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
    keep = kept_path(out, trainer_name, config, seed)
    run["normal"], run["predict_s_per_case"], run["shifted"] = evaluate_splits(predictor, raw, keep)
    window = getattr(predictor.network, "window", None)
    if window is not None and window.config.is_random and seed == args.seeds[0]:
        sweep = {}
        original = window.config
        for name, (level, width) in EVAL_WINDOWS.items():
            window.config = dataclasses.replace(original, eval_level=level, eval_width=width)
            sweep[name] = evaluate_split(predictor, raw / "imagesTs", raw / "labelsTs",
                                         largest=False)[0]["tumour"]["dice_global"]
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


def evaluate_splits(predictor, raw: Path, keep: Path) -> tuple[dict, float, dict]:
    """The normal and the shifted test scans of the raw data set ``raw``: their summaries (see
    :func:`evaluate_split`) and the normal scans' prediction seconds per case. The predictions are kept in
    ``keep/normal`` and ``keep/shifted``, written to a temporary folder and moved into place when both are
    complete (a redone run replaces the folder whole)."""
    tmp = keep.with_name(keep.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    normal, seconds = evaluate_split(predictor, raw / "imagesTs", raw / "labelsTs", tmp / "normal")
    shifted, _ = evaluate_split(predictor, raw / "imagesTs_shifted", raw / "labelsTs", tmp / "shifted")
    shutil.rmtree(keep, ignore_errors=True)
    tmp.replace(keep)
    return normal, seconds, shifted


def evaluate_split(predictor, images: Path, labels: Path, save_to: Path | None = None,
                   largest: bool = True) -> tuple[dict, float]:
    """LiTS metrics of every case (``nnunet_liver.evaluation.lits``) as :func:`split_summary` gives them, with
    those after the largest liver component under ``"largest_component"`` (``largest=False``: the raw
    predictions only); and the mean prediction seconds per case. ``save_to``: also write each case's
    segmentation there (the reference's grid; written to a temporary name, then moved into place)."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    io = SimpleITKIO()
    cases, largest_cases, seconds = {}, {}, []
    for img in sorted(images.glob("*_0000.nii.gz")):
        data, props = io.read_images([str(img)])
        t = time.perf_counter()
        seg = predictor.predict_single_npy_array(data, props)
        seconds.append(time.perf_counter() - t)
        name = img.name.replace("_0000", "")
        ref_img = sitk.ReadImage(str(labels / name))
        scores = score_case(ref_img, seg.astype(np.uint8), largest)
        cases[img.name] = scores[0]
        if largest:
            largest_cases[img.name] = scores[1]
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            seg_img = sitk.GetImageFromArray(seg.astype(np.uint8))
            seg_img.CopyInformation(ref_img)
            tmp = save_to / f".{name}.tmp.nii.gz"
            sitk.WriteImage(seg_img, str(tmp), useCompression=True)
            tmp.replace(save_to / name)
    summary = split_summary(cases)
    if largest:
        summary["largest_component"] = split_summary(largest_cases)
    return summary, float(np.mean(seconds))


def score_case(ref_img, seg: np.ndarray, largest: bool = True) -> tuple[dict, dict | None]:
    """``evaluate_case`` of a prediction against the reference image (spacing from it), and of its largest
    connected liver component (``nnunet-liver postprocess``; None with ``largest=False``)."""
    import SimpleITK as sitk

    from nnunet_liver.evaluation.lits import evaluate_case
    from nnunet_liver.inference.postprocess import keep_largest_liver

    ref, spacing = sitk.GetArrayFromImage(ref_img), ref_img.GetSpacing()[::-1]
    raw = evaluate_case(ref, seg, spacing)
    return raw, evaluate_case(ref, keep_largest_liver(seg)[0], spacing) if largest else None


def split_summary(cases: dict) -> dict:
    """The tables' figures of one split from ``evaluate_case`` results keyed by case: per structure the per-case
    means of METRICS, the per-case mean Dice and the global Dice; recall of lesions of 10 mm or more; the
    largest liver overshoot in slices and the number of cases with liver 2 or more slices beyond the true
    liver's extent (the demo's target is none)."""
    from nnunet_liver.evaluation.lits import aggregate

    agg = aggregate(cases)
    summary = {name: {**{m: agg[name]["metrics"][m]["mean"] for m in METRICS},
                      "dice": agg[name]["dice_per_case"], "dice_global": agg[name]["dice_global"]}
               for name in ("liver", "tumour")}
    summary["lesion_recall_10mm"] = agg["lesion_recall_by_size"]["large"]["recall"]
    summary["liver_max_slices_beyond"] = agg["liver_extent"]["max_slices_beyond"]
    summary["liver_cases_2_beyond"] = agg["liver_extent"]["cases_2_or_more"]
    return summary


def score_kept_largest_component(run: dict, out: Path, trainer: str, config: str, data_ready: bool = True) -> bool:
    """A run saved before the benchmark scored the largest liver component: score its kept predictions
    (:func:`kept_path`) that way and add the result to the run and to its saved file. The kept predictions
    count as the run's only if their raw figures reproduce the saved ones (liver Dice, tumour global Dice,
    lesion recall, every split), so predictions of another run or another data set are never scored for it.
    The file is replaced (through a temporary file) only if it still holds the run as it was read. False when
    the run has no such score and cannot get one here: the data set is not the benchmark's (``data_ready``),
    the labels or predictions are missing or unreadable (a clean clone keeps only ``runs/``), or they do not
    reproduce the run. The raw figures get the columns added since the run was saved (its own stay)."""
    if all({"largest_component", "liver_cases_2_beyond"} <= run.get(split, {}).keys() for split in SPLITS):
        return True
    import SimpleITK as sitk

    from nnunet_liver.data.io import staged_file

    labels = Path(os.environ.get("nnUNet_raw", "")) / "Dataset990_LiverPhantom" / "labelsTs"
    keep = kept_path(out, trainer, config, run["seed"])
    references = sorted(labels.glob("*.nii.gz")) if data_ready and labels.is_dir() else []
    if not references or not all((keep / split / r.name).is_file() for split in SPLITS for r in references):
        return False
    name = f"{trainer} {config}, seed {run['seed']}"
    largest, raw = {}, {}
    try:
        for split in SPLITS:
            cases, largest_cases = {}, {}
            for ref_path in references:
                seg = sitk.GetArrayFromImage(sitk.ReadImage(str(keep / split / ref_path.name))).astype(np.uint8)
                cases[ref_path.name], largest_cases[ref_path.name] = score_case(sitk.ReadImage(str(ref_path)), seg)
            raw[split] = split_summary(cases)
            if not _same_figures(raw[split], run[split]):
                print(f"== {name}: its kept {split} predictions do not reproduce its saved figures; not scored "
                      "after the largest component", flush=True)
                return False
            largest[split] = run[split].get("largest_component") or split_summary(largest_cases)
    except (RuntimeError, OSError) as e:  # SimpleITK raises RuntimeError for a file it cannot read
        print(f"== {name}: its kept predictions could not be read ({e}); not scored after the largest component",
              flush=True)
        return False
    path = run_path(out, trainer, config, run["seed"])
    try:
        on_disk = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        on_disk = None
    scored = {**run, **{split: {**raw[split], **run[split], "largest_component": largest[split]} for split in SPLITS}}
    def text(value) -> str:  # NaN figures compare equal as JSON text
        return json.dumps(value, sort_keys=True, default=float)

    if on_disk is not None and all(text(on_disk.get(k)) == text(run.get(k)) for k in ("settings", *SPLITS)):
        with staged_file(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(scored, indent=1, default=float), encoding="utf-8")
    else:
        print(f"== {name}: {path.name} changed since it was read; scored for these tables only", flush=True)
    run.update(scored)
    print(f"== {name}: scored its kept predictions after the largest liver component", flush=True)
    return True


def _same_figures(a: dict, b: dict) -> bool:
    """Whether two split summaries agree on liver Dice, tumour global Dice and lesion recall (NaN = NaN)."""
    pairs = [(a["liver"]["dice"], b["liver"]["dice"]), (a["tumour"]["dice_global"], b["tumour"]["dice_global"]),
             (a["lesion_recall_10mm"], b["lesion_recall_10mm"])]
    return all((np.isnan(x) and np.isnan(y)) or abs(x - y) <= 1e-6 for x, y in pairs)


def scored_runs(runs: dict, scoring: str) -> tuple[dict, list[str]]:
    """The runs as the tables score them: ``raw`` as saved; ``largest-component`` with each split's figures
    those after the largest liver component. A run without those (its predictions were not here to score) is
    left out of the tables and named in the second value."""
    if scoring == "raw":
        return runs, []
    out, unscored = {}, []
    for label, seeds in runs.items():
        for r in seeds:
            if all("largest_component" in r.get(split, {}) for split in SPLITS):
                out.setdefault(label, []).append({**r, **{split: r[split]["largest_component"] for split in SPLITS}})
            else:
                unscored.append(f"{label}, seed {r['seed']}")
    return out, unscored


# ---- summaries ----------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("liver_dice", "liver_iou", "liver_sensitivity", "liver_specificity", "tumour_dice_global",
                 "tumour_dice", "tumour_sensitivity", "lesion_recall_10mm", "liver_max_slices_beyond",
                 "liver_cases_2_beyond")


def _value(split: dict, column: str) -> float:
    if column in ("lesion_recall_10mm", "liver_max_slices_beyond", "liver_cases_2_beyond"):
        return split.get(column)  # None: a run saved before the column existed
    structure, metric = column.split("_", 1)
    return split[structure][metric]


def summarise(runs: dict, split: str) -> dict:
    """Per model, mean and std over seeds of each TABLE_COLUMNS figure (liver: per-case means; tumour: global
    Dice over all voxels, as LiTS ranks, and the per-case mean, where tumour-free cases count 1 when empty)."""
    def mean_std(values: list[float | None]) -> tuple[float, float]:
        if any(v is None for v in values):  # a figure some seeds lack is not the mean of the others
            return float("nan"), float("nan")
        values = [v for v in values if not np.isnan(v)]  # undefined figures (NaN) are skipped
        return (float(np.mean(values)), float(np.std(values))) if values else (float("nan"), float("nan"))

    return {label: {c: mean_std([_value(r[split], c) for r in seeds]) for c in TABLE_COLUMNS}
            for label, seeds in runs.items()}


def shared_seeds(runs: dict, labels) -> tuple[list[int], dict[str, list[dict]]]:
    """The seeds every one of ``labels`` has, and each label's runs of those seeds (a comparison of means
    over different seeds would mix the seeds' spread into the difference)."""
    if not all(label in runs for label in labels):
        return [], {}
    seeds = sorted(set.intersection(*({r["seed"] for r in runs[label]} for label in labels)))
    return seeds, {label: [r for r in runs[label] if r["seed"] in seeds] for label in labels}


ABLATION = ("Ablation 0: spatial stream, fixed window", "Ablation 1: + RWA", "Ablation 2: + attention gates",
            DUALSTREAM)


def ablation_steps(runs: dict) -> list[dict]:
    """Each ablation step against the step before it, paired by seed (the seeds both have): liver Dice and
    tumour global Dice on the normal test scans, the per-seed differences, their mean, and in how many seeds
    the step raised the figure."""
    rows = []
    for before, after in zip(ABLATION, ABLATION[1:]):
        seeds, paired = shared_seeds(runs, (before, after))
        if not seeds:
            continue
        a, b = ({r["seed"]: r for r in paired[label]} for label in (before, after))
        row = {"before": before, "after": after, "seeds": seeds}
        for name, (structure, metric) in (("liver_dice", ("liver", "dice")),
                                          ("tumour_dice_global", ("tumour", "dice_global"))):
            deltas = [b[k]["normal"][structure][metric] - a[k]["normal"][structure][metric] for k in seeds]
            row[name] = {"deltas": deltas, "mean": float(np.mean(deltas)), "raised": int(sum(d > 0 for d in deltas))}
        rows.append(row)
    return rows


def robustness(runs: dict) -> dict:
    """Dice drop from the normal to the shifted test scans per model (mean over its seeds) and, for each RWA
    model and its fixed-window twin, over the seeds both have."""
    def drop(seeds, structure, metric):
        return float(np.mean([r["normal"][structure][metric] - r["shifted"][structure][metric] for r in seeds]))

    drops = {label: drop(seeds, "tumour", "dice_global") for label, seeds in runs.items()}
    liver = {label: drop(seeds, "liver", "dice") for label, seeds in runs.items()}
    pairs = []
    for rwa, twin in TWINS:
        seeds, paired = shared_seeds(runs, (rwa, twin))
        if not seeds:
            continue
        t_rwa, t_twin = drop(paired[rwa], "tumour", "dice_global"), drop(paired[twin], "tumour", "dice_global")
        ratio = t_rwa / t_twin if t_twin > 1e-9 else float("nan")
        pairs.append({"rwa": rwa, "twin": twin, "seeds": seeds, "tumour_dice_drop_rwa": t_rwa,
                      "tumour_dice_drop_twin": t_twin, "ratio": ratio,
                      "liver_dice_drop_rwa": drop(paired[rwa], "liver", "dice"),
                      "liver_dice_drop_twin": drop(paired[twin], "liver", "dice"),
                      "target_met": bool(t_rwa <= 0.5 * t_twin) if t_twin > 0 else None})
    return {"tumour_dice_drop": drops, "liver_dice_drop": liver, "pairs": pairs}


def rwa_control(runs: dict) -> list[dict]:
    """Random windows against the same window held fixed (the control) and against the paper's wider fixed
    window (the twin), on the normal and the shifted test scans: tumour global Dice and liver Dice, mean over
    seeds the three share. RWA minus control is the effect of randomising alone; control minus twin that of the
    narrower window."""
    rows = []
    for rwa, control, twin in RWA_CONTROLS:
        seeds, paired = shared_seeds(runs, (rwa, control, twin))
        if not seeds:
            continue
        row = {"rwa": rwa, "control": control, "twin": twin, "seeds": seeds}
        for split in ("normal", "shifted"):
            for structure, metric in (("tumour", "dice_global"), ("liver", "dice")):
                for role, label in (("rwa", rwa), ("control", control), ("twin", twin)):
                    row[f"{split}_{structure}_{role}"] = float(np.mean([r[split][structure][metric]
                                                                        for r in paired[label]]))
        rows.append(row)
    return rows


def _seed_list(seeds) -> str:
    return ", ".join(map(str, seeds))


def plot_curves(runs: dict, path: Path) -> dict:
    """Validation pseudo Dice (liver, tumour) against training CPU seconds for every model (mean over seeds
    at each epoch the seeds share); writes ``path`` and returns the plotted series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    # nnU-Net's progress plot sets seaborn's global style (font scale 2.5) in this process: draw in matplotlib's
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharex=True)
        for index, (label, seeds) in enumerate(runs.items()):
            curves = [r.get("curve") or [] for r in seeds]
            n = min((len(c) for c in curves), default=0)
            if not n:
                continue
            cpu = [float(np.mean([c[i]["cpu_seconds"] for c in curves])) for i in range(n)]
            dice = np.array([[c[i]["pseudo_dice"] for i in range(n)] for c in curves]).mean(axis=0)
            series[label] = {"cpu_seconds": cpu, "liver": dice[:, 0].tolist(), "tumour": dice[:, 1].tolist()}
            # the pseudo Dice of a few validation batches is noisy: raw epochs faint, a running mean solid
            width = max(1, n // 15)
            with warnings.catch_warnings():  # a window of NaN epochs only (no tumour in the batches) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                smooth = np.array([np.nanmean(dice[max(0, j - width + 1):j + 1], axis=0) for j in range(n)])
            colour = f"C{index % 10}"
            for ax, k in zip(axes, (0, 1)):
                ax.plot(cpu, dice[:, k], color=colour, lw=0.6, alpha=0.3)
                ax.plot(cpu, smooth[:, k], color=colour, lw=1.6, label=label)
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


def fmt(v, n_seeds: int = 2) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{v[0]:.3f} ± {v[1]:.3f}" if n_seeds > 1 else f"{v[0]:.3f}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown(report: dict) -> str:
    s = report.get("settings", {})
    budget = (f"{s.get('cpu_seconds'):g} CPU seconds of training (epochs of {s.get('iters')} iterations)"
              if s.get("cpu_seconds") else f"{s.get('epochs')} epochs x {s.get('iters')} iterations")
    if "runs" in report:
        lines = [f"# Segmentation benchmarks (synthetic phantoms, {report['machine'].get('device', 'cpu').upper()})",
                 "", f"Machine: {report['machine']}. Data: {s.get('num_train')} training / {s.get('num_test')} test "
                 f"phantoms (whole-abdomen matrix {s.get('size')}, field of view: {s.get('fov')}"
                 + (f", {s['z_margin_mm']:g} mm above and below the liver" if s.get("z_margin_mm") is not None else "")
                 + "); budget per model: "
                 f"{budget}, fold 0, seeds {s.get('seeds')}. Synthetic data on a CPU: not LiTS results.", ""]
    else:  # the cost part alone: no phantoms involved
        lines = ["# Segmentation benchmarks: cost", "", f"Machine: {report['machine']}.", ""]
    if "cost" in report:
        cost = report["cost"]
        if "models" in cost:
            lines += cost_markdown(cost)
        else:  # results of the earlier cost part (a phantom plan, FLOPs only)
            lines += ["## Cost at the planned patch (real-size networks)", "",
                      "| model | patch | params | FLOPs / output voxel | vs 3D U-Net |", "|---|---|---|---|---|"]
            for k, r in cost.items():
                lines.append(f"| {k} | {r['patch']} | {r['params']:,} | {r['flops_per_voxel']:.3g} | "
                             f"{r['flops_ratio_vs_3d_unet']:.2f}x |")
            lines.append("")
    scoring = report.get("scoring", "raw")  # results written before the option scored the raw predictions
    if "accuracy" in report:
        lines += [("The tables score each prediction after `nnunet-liver postprocess` (its largest connected liver "
                   "component), as the demo does; the second accuracy table and the window sweep score the raw "
                   "predictions." if scoring == "largest-component" else
                   "The tables score the raw nnU-Net predictions (`--scoring raw`)."), ""]
        if report.get("unscored"):
            lines += ["Left out of these tables (saved without the largest-component score, and their kept "
                      "predictions are not here to score): " + "; ".join(report["unscored"]) + ".", ""]
    raw_title = "Accuracy of the raw predictions, before the largest component (mean ± std over seeds)"
    for key, title in (("accuracy", "Accuracy (test phantoms, mean ± std over seeds)"), ("accuracy_raw", raw_title)):
        if key in report:
            cols = list(TABLE_COLUMNS)
            runs_seeds = {label: [r["seed"] for r in rs] for label, rs in report.get("runs", {}).items()}
            seeds = report.get("table_seeds", runs_seeds) if key == "accuracy" else runs_seeds
            lines += [f"## {title}", "", "A single seed shows no ± (no spread to show).", "",
                      "| model | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
            for label, row in report[key].items():
                n = len(seeds.get(label, [])) or 2
                lines.append(f"| {label} | {_seed_list(seeds.get(label, []))} | "
                             + " | ".join(fmt(row[c], n) for c in cols) + " |")
            lines.append("")
    if report.get("ablation_steps"):
        lines += ["## Ablation, step by step (paired by seed; normal test scans)", "",
                  "Each step minus the step before it, per seed; \"raised\": in how many of the seeds the step "
                  "raised the figure.", "",
                  "| step | seeds | liver Dice: per seed (mean) | raised "
                  "| tumour global Dice: per seed (mean) | raised |",
                  "|---|---|---|---|---|---|"]
        for r in report["ablation_steps"]:
            cells = []
            for name in ("liver_dice", "tumour_dice_global"):
                d = r[name]
                cells += [", ".join(f"{x:+.3f}" for x in d["deltas"]) + f" ({d['mean']:+.3f})",
                          f"{d['raised']} of {len(r['seeds'])}"]
            lines.append(f"| {r['before']} -> {r['after']} | {_seed_list(r['seeds'])} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    if report.get("rwa_control"):
        lines += ["## RWA control: random windows vs the same window held fixed (mean over the seeds all three "
                  "have)", "",
                  "RWA models evaluate at 71/213.5 HU (-36..178 HU); the twin trains and evaluates at the paper's "
                  "-100..400 HU. The control holds RWA's evaluation window fixed in training: RWA - control is "
                  "the effect of randomising alone.", "",
                  "| model | seeds | split | tumour Dice (global) RWA / control / twin | liver Dice RWA / control / "
                  "twin |", "|---|---|---|---|---|"]
        for r in report["rwa_control"]:
            for split in ("normal", "shifted"):
                t = " / ".join(f"{r[f'{split}_tumour_{k}']:.3f}" for k in ("rwa", "control", "twin"))
                v = " / ".join(f"{r[f'{split}_liver_{k}']:.3f}" for k in ("rwa", "control", "twin"))
                lines.append(f"| {r['rwa']} | {_seed_list(r['seeds'])} | {split} | {t} | {v} |")
        lines.append("")
    if report.get("curves"):
        lines += ["Learning curves (validation pseudo Dice against training CPU seconds): `curves.png`.", ""]
    if "robustness" in report:
        lines += ["## Robustness (imagesTs_shifted): Dice drop normal - shifted (mean over the seeds both have)", "",
                  "| RWA model | non-RWA twin | seeds | tumour drop RWA | tumour drop twin | ratio | "
                  "target <= 0.5 met | liver drop RWA | liver drop twin |", "|---|---|---|---|---|---|---|---|---|"]
        for r in report["robustness"]["pairs"]:
            lines.append(f"| {r['rwa']} | {r['twin']} | {_seed_list(r['seeds'])} | {r['tumour_dice_drop_rwa']:.3f} | "
                         f"{r['tumour_dice_drop_twin']:.3f} | {r['ratio']:.2f} | {r['target_met']} | "
                         f"{r['liver_dice_drop_rwa']:.3f} | {r['liver_dice_drop_twin']:.3f} |")
        lines.append("")
    if report.get("window_sweep"):
        seed = report.get("window_sweep_seed")
        lines += [f"## Fixed evaluation window of the RWA-trained DualStream (seed {'?' if seed is None else seed}, "
                  "tumour global Dice)", "",
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
