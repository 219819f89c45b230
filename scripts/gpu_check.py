"""One prepared GPU check of the segmentation trainers: CUDA training, validation and prediction.

Synthesises phantoms, plans/preprocesses them (raw HU), then for each trainer trains two short epochs on
the device with nnU-Net's own training loop, runs nnU-Net's final validation (sliding window) and predicts
the test cases with nnU-Net's predictor, recording iterations per second, seconds per case and peak GPU
memory. Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` after every trainer, so a run cut short
still reports what it finished.

    python scripts/gpu_check.py --out OUT [--device cuda] [--size 256] [--iters 40]

The same script runs on the CPU with tiny settings (``--device cpu --size 48 --iters 2``) as a dry run.
torch.compile is off (``nnUNet_compile=f``): its compile time would dominate a short check.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/nnunet_liver_gpu_check")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--num-train", type=int, default=8)
    p.add_argument("--num-test", type=int, default=2)
    p.add_argument("--iters", type=int, default=40, help="training iterations per epoch (2 epochs)")
    p.add_argument("--trainers", nargs="+", default=["DualStreamTrainer", "LiverUNetTrainer"])
    p.add_argument("-np", dest="num_processes", type=int, default=8)
    args = p.parse_args()

    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("nnUNet_n_proc_DA", str(args.num_processes))
    os.environ.setdefault("nnUNet_def_n_proc", str(args.num_processes))
    from nnunet_liver.env import activate

    activate(args.work)
    import torch

    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset
    from nnunet_liver.planners.api import plan_and_preprocess

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    report = {"machine": {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor(),
                          "torch": torch.__version__, "compile": os.environ["nnUNet_compile"]},
              "settings": vars(args), "steps": {}, "trainers": {}}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "gpu_check.md").write_text(markdown(report), encoding="utf-8")

    t = time.perf_counter()
    raw = Path(os.environ["nnUNet_raw"])
    write_phantom_dataset(raw, SynthSettings(args.num_train, args.num_test, args.size, seed=0), overwrite=True,
                          num_processes=args.num_processes, progress=False)
    report["steps"]["synth_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    plan_and_preprocess(990, configurations=("3d_fullres",), num_processes=args.num_processes, overwrite=True)
    report["steps"]["plan_and_preprocess_s"] = round(time.perf_counter() - t, 1)
    save()

    for name in args.trainers:
        try:
            report["trainers"][name] = check_trainer(name, device, args.iters, raw / "Dataset990_LiverPhantom", out)
        except Exception as e:  # report and go on with the next trainer
            report["trainers"][name] = {"error": f"{type(e).__name__}: {e}"}
        save()
    print(markdown(report))


def check_trainer(name: str, device, iters: int, raw: Path, out: Path) -> dict:
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    cuda = device.type == "cuda"
    trainer = get_trainer_from_args("990", "3d_fullres", 0, name, "nnUNetPlans", device=device)
    trainer.num_epochs = 2
    trainer.num_iterations_per_epoch = iters
    trainer.num_val_iterations_per_epoch = max(1, iters // 8)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t
    starts, ends = (trainer.logger.local_logger.my_fantastic_logging[k] for k in ("epoch_start_timestamps", "epoch_end_timestamps"))
    epoch2_s = ends[-1] - starts[-1]
    res = {
        "patch_size": list(trainer.configuration_manager.patch_size),
        "batch_size": trainer.configuration_manager.batch_size,
        "parameters": sum(p.numel() for p in trainer.network.parameters()),
        "train_total_s": round(train_s, 1),
        "epoch2_s": round(epoch2_s, 2),
        "train_iter_per_s": round((iters + trainer.num_val_iterations_per_epoch) / epoch2_s, 2),
        "train_peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.perform_actual_validation(False)
    res["validation_s"] = round(time.perf_counter() - t, 1)
    summary = json.loads((Path(trainer.output_folder) / "validation" / "summary.json").read_text(encoding="utf-8"))
    res["validation_dice"] = {k: round(v["Dice"], 4) for k, v in summary["mean"].items()}
    del trainer
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    model = Path(os.environ["nnUNet_results"]) / "Dataset990_LiverPhantom" / f"{name}__nnUNetPlans__3d_fullres"
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    pred_dir = Path(os.environ["nnUNet_results"]) / f"pred_{name}"
    t = time.perf_counter()
    predictor.predict_from_files([[str(i)] for i in images], str(pred_dir), save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=2, num_processes_segmentation_export=2)
    res["predict_s_per_case"] = round((time.perf_counter() - t) / len(images), 2)
    res["predict_peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None
    import SimpleITK as sitk

    geometry_ok = []
    for i in images:
        a, b = sitk.ReadImage(str(i)), sitk.ReadImage(str(pred_dir / i.name.replace("_0000", "")))
        geometry_ok.append(a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
                           and np.allclose(a.GetOrigin(), b.GetOrigin()))
    res["prediction_geometry_matches_input"] = all(geometry_ok)
    return res


def markdown(report: dict) -> str:
    lines = [f"GPU check on {report['machine']['device']} (torch {report['machine']['torch']}, "
             f"nnUNet_compile={report['machine']['compile']}); steps: {report['steps']}", "",
             "| trainer | patch | batch | params | train it/s | train peak GiB | validation s | predict s/case | "
             "predict peak GiB | geometry ok | val Dice |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["trainers"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |")
            continue
        lines.append(f"| {name} | {r['patch_size']} | {r['batch_size']} | {r['parameters']:,} | "
                     f"{r['train_iter_per_s']} | {r['train_peak_mem_gib']} | {r['validation_s']} | "
                     f"{r.get('predict_s_per_case')} | {r.get('predict_peak_mem_gib')} | "
                     f"{r.get('prediction_geometry_matches_input')} | {r.get('validation_dice')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
