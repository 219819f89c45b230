"""Compare nnU-Net trainers on the demo's phantoms over several seeds, scored as the demo scores them.

Each (trainer, seed) trains with the stock ``nnUNetv2_train`` on the demo's preprocessed data (fold 0, the
default demo's training variables, ``training_environment`` of ``nnunet_liver.cli.demo``, with the run's seed
and iterations: by default those the demo chooses on this machine), predicts the demo's
test cases with ``nnUNetv2_predict``, keeps the largest liver component (``nnunet-liver postprocess``) and
evaluates (``nnunet-liver evaluate``). One training seed changes the weights' initialisation, the patches
and the augmentation; the data stay the demo's. Trainers from other folders on ``nnUNet_extTrainer`` work
too.

    bash scripts/demo.sh                      # once: the data (nnunet_liver_demo/nnunet)
    .venv/bin/python scripts/compare_trainers.py DualStreamTrainer_CPU DualStreamBNTrainer_CPU --seeds 0 1 2

About 3.5 minutes per run on 2 cores at 600 iterations. Every finished run is saved to
``<out>/runs/<trainer>__seed<k>.json`` and skipped by a rerun with the same iterations, data (plans and
dataset.json) and bf16 setting (``--overwrite`` redoes it); the table goes
to ``<out>/results.md`` and ``results.json``. What each lesion subtype's voxels became, and on which tissues
the false liver lies, per seed:

    .venv/bin/python scripts/false_liver_tissues.py --labels nnunet_liver_demo/nnunet/nnUNet_raw/*/labelsTs \
        --predictions bench/compare_trainers/work/seed0/predictions
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path


def _write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    from nnunet_liver.data.io import staged_file

    with staged_file(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def lost_to_background(labels: Path, predictions: Path) -> float:
    """Share of the reference tumour voxels (all test cases together) that the prediction calls background."""
    import numpy as np
    import SimpleITK as sitk

    tumour = lost = 0
    for ref_path in sorted(labels.glob("*.nii.gz")):
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path))) == 2
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / ref_path.name)))
        tumour += int(ref.sum())
        lost += int(np.count_nonzero(ref & (pred == 0)))
    return lost / tumour if tumour else float("nan")


def score(summary: dict) -> dict:
    agg = summary["aggregate"]
    large = agg["lesion_recall_by_size"]["large"]
    return {"liver_dice": agg["liver"]["dice_per_case"], "tumour_dice_global": agg["tumour"]["dice_global"],
            "large_found": large["found"], "large_n": large["n"],
            "slices_beyond": [c["liver_extent"]["slices_beyond"] for c in summary["cases"].values()]}


def data_fingerprint(raw: Path, preprocessed: Path) -> str:
    """SHA-256 (16 hex) of the data set's plans and dataset.json: regenerated or replanned data do not match."""
    h = hashlib.sha256()
    for f in (preprocessed / "nnUNetPlans.json", raw / "dataset.json"):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_one(trainer: str, seed: int, iterations: int, dataset: Path, preprocessed: Path, out: Path,
            bin_dir: Path) -> dict:
    from dataclasses import replace

    from nnunet_liver.cli.demo import PRESETS, training_environment
    from nnunet_liver.env import nnunet_environment

    preset = PRESETS["default"]
    preset = replace(preset, epochs=iterations // preset.iters, cpu_seconds=None)
    work = out / "work" / f"seed{seed}"
    raw = work / "raw_predictions" / trainer
    post = work / "predictions" / trainer  # the layout scripts/false_liver_tissues.py --predictions reads
    evaluation = work / "evaluation" / trainer
    env = dict(os.environ, **nnunet_environment(), nnUNet_raw=str(dataset.parent),
               nnUNet_preprocessed=str(preprocessed.parent), nnUNet_results=str(work / "results"),
               nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "2"),
               **training_environment(preset, "cpu", seed=seed))
    dataset_id = dataset.name.split("_")[0].replace("Dataset", "")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{trainer}__seed{seed}.log"

    def call(*cmd: str) -> None:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{cmd[0]} failed (exit {done.returncode}) for {trainer} seed {seed}: see {log_path}")

    log_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    call(str(bin_dir / "nnUNetv2_train"), dataset_id, "3d_fullres", "0", "-tr", trainer, "-device", "cpu")
    seconds = time.perf_counter() - t0
    call(str(bin_dir / "nnUNetv2_predict"), "-i", str(dataset / "imagesTs"), "-o", str(raw), "-d", dataset_id,
         "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "0", "-nps", "0",
         "--disable_progress_bar")
    call(str(bin_dir / "nnunet-liver"), "postprocess", "-i", str(raw), "-o", str(post), "--overwrite")
    call(str(bin_dir / "nnunet-liver"), "evaluate", str(dataset / "labelsTs"), str(post), "-o", str(evaluation),
         "-np", "2", "--overwrite")
    summary = json.loads((evaluation / "summary.json").read_text(encoding="utf-8"))
    lost = lost_to_background(dataset / "labelsTs", post)
    return {"trainer": trainer, "seed": seed, "iterations": iterations, "train_seconds": round(seconds, 1),
            **score(summary), "tumour_lost_to_background": None if math.isnan(lost) else lost}


def table(rows: list[dict], trainers: list[str]) -> str:
    import numpy as np

    def share(value) -> str:
        return "-" if value is None else f"{value:.0%}"

    lines = ["| trainer | seed | liver Dice (mean of cases) | tumour Dice (global) | lesions >= 10 mm found | "
             "liver slices beyond, per case | cases 2+ beyond | tumour voxels (all lesions) called background |",
             "|---|---|---|---|---|---|---|---|"]
    for trainer in trainers:
        mine = sorted((r for r in rows if r["trainer"] == trainer), key=lambda r: r["seed"])
        for r in mine:
            beyond = r["slices_beyond"]
            lines.append(f"| {trainer} | {r['seed']} | {r['liver_dice']:.3f} | {r['tumour_dice_global']:.3f} | "
                         f"{r['large_found']}/{r['large_n']} | {'/'.join(map(str, beyond))} | "
                         f"{sum(b >= 2 for b in beyond)} | {share(r['tumour_lost_to_background'])} |")
        if len(mine) > 1:
            def mean(key):
                return float(np.mean([r[key] for r in mine]))

            found = sum(r["large_found"] for r in mine)
            total = sum(r["large_n"] for r in mine)
            lost = [r["tumour_lost_to_background"] for r in mine if r["tumour_lost_to_background"] is not None]
            lines.append(f"| **{trainer}** | mean of {len(mine)} | **{mean('liver_dice'):.3f}** | "
                         f"**{mean('tumour_dice_global'):.3f}** | {share(found / total if total else None)} | | "
                         f"{np.mean([sum(b >= 2 for b in r['slices_beyond']) for r in mine]):.2f} | "
                         f"{share(float(np.mean(lost)) if lost else None)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trainers", nargs="+", help="nnU-Net trainer class names (3d_fullres)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int,
                        help="training iterations per run, a multiple of the demo's epoch length (default: what the "
                             "default demo trains on this machine, 600 with native bf16, else 300)")
    parser.add_argument("--demo", type=Path, default=Path("nnunet_liver_demo"),
                        help="the demo's output folder (default ./nnunet_liver_demo)")
    parser.add_argument("--out", type=Path, default=Path("bench/compare_trainers"))
    parser.add_argument("--overwrite", action="store_true", help="redo runs saved before")
    args = parser.parse_args(argv)

    from nnunet_liver.cli.demo import PRESETS

    preset = PRESETS["default"]
    if args.iterations is not None and (args.iterations < preset.iters or args.iterations % preset.iters):
        parser.error(f"--iterations must be a positive multiple of {preset.iters}, got {args.iterations}")
    root = args.demo / "nnunet"
    found = sorted((root / "nnUNet_raw").glob("Dataset*_*"))
    ready = [d for d in found if (root / "nnUNet_preprocessed" / d.name / "nnUNetPlans.json").is_file()
             and (d / "labelsTs").is_dir()]
    if len(ready) != 1:
        print(f"error: {args.demo}: expected one preprocessed data set with test labels under nnunet/ (a finished "
              f"`nnunet-liver demo --out {args.demo}`), found {[d.name for d in ready] or 'none'}", file=sys.stderr)
        return 2
    dataset = ready[0].resolve()
    preprocessed = (root / "nnUNet_preprocessed" / ready[0].name).resolve()

    from nnunet_liver.cli.demo import fast_training
    from nnunet_liver.env import activate

    activate()  # our trainers on nnUNet_extTrainer before fast_training imports nnU-Net
    bf16 = fast_training("cpu")
    iterations = args.iterations or preset.iters * (preset.epochs_fast if bf16 and preset.epochs_fast
                                                    else preset.epochs)
    fingerprint = data_fingerprint(dataset, preprocessed)
    bin_dir = Path(sys.executable).parent
    out = args.out.resolve()
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    todo = [(t, s) for t in args.trainers for s in args.seeds]
    setting = {"iterations": iterations, "data": fingerprint, "bf16": bf16}
    for i, (trainer, seed) in enumerate(todo, 1):
        saved = runs / f"{trainer}__seed{seed}.json"
        if saved.is_file() and not args.overwrite:
            row = json.loads(saved.read_text(encoding="utf-8"))
            if all(row.get(k) == v for k, v in setting.items()):
                print(f"[{i}/{len(todo)}] {trainer} seed {seed}: saved run", flush=True)
                rows.append(row)
                continue
        print(f"[{i}/{len(todo)}] {trainer} seed {seed}: training {iterations} iterations ...", flush=True)
        row = {**run_one(trainer, seed, iterations, dataset, preprocessed, out, bin_dir), **setting,
               "dataset": str(dataset)}
        _write(saved, json.dumps(row, indent=1))
        print(f"[{i}/{len(todo)}] {trainer} seed {seed}: liver {row['liver_dice']:.3f}, tumour (global) "
              f"{row['tumour_dice_global']:.3f}, slices beyond {row['slices_beyond']}", flush=True)
        rows.append(row)
    text = (f"Trainers on {dataset.name} ({args.demo}), {iterations} iterations (bf16: {bf16}), fold 0, seeds "
            f"{' '.join(map(str, args.seeds))}; test cases after the largest liver component.\n\n"
            + table(rows, args.trainers))
    _write(out / "results.md", text)
    _write(out / "results.json", json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
