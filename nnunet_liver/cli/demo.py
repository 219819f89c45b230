"""``nnunet-liver demo``: the whole pipeline on synthetic phantoms, on this machine's CPU.

Steps: synthesise phantoms -> plan and preprocess (raw HU kept) -> train with the stock ``nnUNetv2_train``
-> predict the test cases with the stock ``nnUNetv2_predict``. Everything lives under ``--out``; nnU-Net's
environment variables are set for this run only; a rerun resumes finished steps.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

PRESETS = {
    # name: (num_train, num_test, size)
    "quick": (6, 2, 64),
    "default": (24, 8, 128),
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on synthetic phantoms (CPU, minutes)",
        description="Synthesise phantoms, plan/preprocess with raw HU, train with the stock nnUNetv2_train, "
        "predict with the stock nnUNetv2_predict. All folders under --out; rerun to resume.",
    )
    p.add_argument("--out", default="nnunet_liver_demo", help="output folder (default ./nnunet_liver_demo)")
    p.add_argument("--quick", action="store_true", help="smallest preset (a few minutes)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training/prediction device")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default min(2, cores))")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.cli.steps import Pipeline
    from nnunet_liver.data.io import check_writable_dir
    from nnunet_liver.env import activate

    out = Path(args.out).resolve()
    try:
        check_writable_dir(out)
    except PermissionError as e:
        raise UsageError(str(e)) from None
    env = activate(out / "nnunet")
    env["nnUNet_n_proc_DA"] = os.environ.get("nnUNet_n_proc_DA", str(args.num_processes))
    os.environ.update(env)
    num_train, num_test, size = PRESETS["quick" if args.quick else "default"]
    dataset_id, dataset = 990, "Dataset990_LiverPhantom"
    raw = Path(env["nnUNet_raw"]) / dataset
    pipe = Pipeline(out=out, env=env, signature={"preset": "quick" if args.quick else "default",
                                                 "device": args.device})
    print(f"nnunet-liver demo: {num_train} training + {num_test} test phantoms of {size} voxels, out={out}")

    def synth():
        from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

        write_phantom_dataset(env["nnUNet_raw"], SynthSettings(num_train, num_test, size, seed=0),
                              dataset_id=dataset_id, overwrite=True, num_processes=args.num_processes)

    def preprocess():
        from nnunet_liver.planners.api import plan_and_preprocess

        plan_and_preprocess(dataset_id, configurations=("3d_fullres",), num_processes=args.num_processes,
                            verify=True, overwrite=True)

    def train():
        pipe.run(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-tr", "LiverSmokeTrainer",
                  "-device", args.device], "train_LiverSmokeTrainer")

    def predict():
        pipe.run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out / "predictions" / "LiverSmoke"),
                  "-d", str(dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", "LiverSmokeTrainer",
                  "-device", args.device, "-npp", "1", "-nps", "1"], "predict_LiverSmokeTrainer")

    steps = [("synthesise phantoms", synth), ("plan and preprocess (raw HU)", preprocess),
             ("train LiverSmokeTrainer (nnUNetv2_train)", train),
             ("predict test cases (nnUNetv2_predict)", predict)]
    for i, (name, fn) in enumerate(steps, 1):
        pipe.step(name, fn, i, len(steps))
    print(f"demo finished in {pipe.elapsed()}; results under {out}")
    return 0
