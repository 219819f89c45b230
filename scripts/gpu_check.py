"""One prepared GPU check of the segmentation trainers: training speed and memory, compile on/off, prediction.

Synthesises phantoms, plans/preprocesses them (raw HU) and makes one prediction case of ``--predict-shape``
voxels (x y z, default 512 512 200) by resampling a test phantom. Then, each in its own subprocess:

1. every trainer (``--trainers``, by name; the real-size ones by default) trains ``--epochs`` x ``--iters``
   iterations with nnU-Net's own loop, torch.compile off (``nnUNet_compile=f``);
2. every trainer's checkpoint predicts the prediction case with nnU-Net's predictor (default tile step 0.5,
   test-time mirroring as the checkpoint allows; ``--disable-tta``), the stock ``predict_from_files`` path;
3. every trainer trains again with torch.compile on (``nnUNet_compile=t``), ``--compile-epochs`` x
   ``--compile-iters`` iterations, into a separate results folder.

Per training run: training iterations per second over the last epoch's train steps (data loading
included; ``data_wait_share`` says how much of it was waiting for a batch), the first step's seconds (the
compile, when on), epoch seconds, and peak GPU memory (``torch.cuda.max_memory_allocated``; a fresh
process per run, so the peak is that trainer's). Per prediction: total seconds (preprocessing, sliding
window, export), the network's seconds and peak GPU memory.

nnU-Net reads ``nnUNet_compile`` when a trainer initialises (``nnUNetTrainer._do_i_compile``), not at
import; the runs are still separate processes so that each peak, each dynamo cache and each set of
augmentation workers is its own, and so that a crash or a hang (``--budget-s``) ends only that run.
``gpu_check.json`` and ``gpu_check.md`` in ``--out`` are rewritten after every step (and a training run
writes its epochs as it goes), so a run cut short still reports what it finished. Steps run in the order
above, each with a timeout from what is left of ``--budget-s``; the compile runs share what the others
leave. On the CPU nnU-Net never compiles (``_do_i_compile``), so the CPU default is ``--compile off``.

    python scripts/gpu_check.py --out OUT                     # one H200: about 7.5 minutes (--budget-s 450)
    python scripts/gpu_check.py --out OUT --device cpu --size 48 --num-train 5 --iters 3 --val-iters 1 \\
        --predict-shape 48 48 16 -np 1 --threads 1 --budget-s 900          # CPU dry run, about 2 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

DATASET = "Dataset990_LiverPhantom"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
#: seconds a step is guaranteed by the steps before it (those get at most what is left minus these)
FLOOR_S = {"train": 40.0, "predict": 40.0, "train_compiled": 60.0}
#: the step processes running now (their groups are stopped when this script is)
_RUNNING: list = []


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where gpu_check.json/md and the step logs go")
    p.add_argument("--work", default="/tmp/nnunet_liver_gpu_check",
                   help="nnU-Net folders; its Dataset990 and the checked trainers' results are replaced")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--size", type=int, default=256, help="phantom in-plane size (voxels)")
    p.add_argument("--num-train", type=int, default=8)
    p.add_argument("--num-test", type=int, default=1)
    p.add_argument("--trainers", nargs="+", default=["DualStreamTrainer", "LiverUNetTrainer"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iters", type=int, default=40, help="training iterations per epoch, compile off")
    p.add_argument("--compile", nargs="+", choices=("off", "on"), default=None,
                   help="compile settings to train with (default: off on with cuda, off on the CPU)")
    p.add_argument("--compile-epochs", type=int, default=2)
    p.add_argument("--compile-iters", type=int, default=20, help="training iterations per epoch, compile on")
    p.add_argument("--val-iters", type=int, default=2, help="nnU-Net's validation iterations per epoch")
    p.add_argument("--predict-shape", type=int, nargs=3, default=(512, 512, 200), metavar=("X", "Y", "Z"))
    p.add_argument("--disable-tta", action="store_true", help="no test-time mirroring in prediction")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the whole run")
    p.add_argument("-np", dest="num_processes", type=int, default=12,
                   help="processes for synthesis, preprocessing and data augmentation")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the steps (CPU runs)")
    p.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step (a JSON spec) in this process
    p.add_argument("--step-result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.num_train < 5:
        p.error("--num-train must be at least 5 (nnU-Net splits the training cases into 5 folds)")
    if args.compile is None:
        args.compile = ["off", "on"] if args.device == "cuda" else ["off"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.step:
        return run_step(json.loads(args.step), Path(args.step_result))
    start = time.perf_counter()
    deadline = start + args.budget_s

    os.environ.setdefault("nnUNet_n_proc_DA", str(args.num_processes))
    os.environ.setdefault("nnUNet_def_n_proc", str(args.num_processes))
    os.environ["nnUNet_compile"] = "f"
    from nnunet_liver.env import activate

    work = Path(args.work)
    activate(work)
    import torch

    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    report = {
        # the steps name the GPU: CUDA stays uninitialised here, before nnU-Net's preprocessing forks
        "machine": {"device": "(a GPU)" if cuda else (platform.processor() or platform.machine()),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "nnunetv2": _dist_version("nnunetv2"),
                    "cpus": os.cpu_count(),
                    "nnUNet_n_proc_DA": os.environ["nnUNet_n_proc_DA"]},
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("step")},
        "steps": {}, "data": {}, "training": {}, "prediction": {},
    }

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        _write_atomic(out / "gpu_check.json", json.dumps(report, indent=2))
        _write_atomic(out / "gpu_check.md", markdown(report))

    try:
        case = prepare_data(args, report, save)
    except Exception as e:  # noqa: BLE001  nothing else can run without data
        report["steps"]["error"] = f"{type(e).__name__}: {e}"
        save()
        print(markdown(report))
        return 1

    # Installed only now: with it installed before prepare_data, nnU-Net's fork pools there hung twice in
    # Pool.terminate() on the CPU dry run (a pool worker that inherited it did not die)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_running_and_exit)
    steps = [{"kind": "train", "trainer": t, "compile": False} for t in args.trainers if "off" in args.compile]
    steps += [{"kind": "predict", "trainer": t} for t in args.trainers if "off" in args.compile]  # its checkpoints
    steps += [{"kind": "train", "trainer": t, "compile": True} for t in args.trainers if "on" in args.compile]
    results = work / "nnUNet_results"
    for t in args.trainers:  # a stale checkpoint must not stand in for a failed training run
        for root in (results, work / "nnUNet_results_compiled"):
            shutil.rmtree(root / DATASET / f"{t}__{PLANS}__{CONFIGURATION}", ignore_errors=True)
        shutil.rmtree(work / "predictions" / t, ignore_errors=True)
    for i, step in enumerate(steps):
        kind = _kind(step)
        timeout = step_timeout(steps, i, deadline - time.perf_counter())
        key = f"{step['trainer']} compile {'on' if step.get('compile') else 'off'}" if step["kind"] == "train" \
            else step["trainer"]
        section = report["training" if step["kind"] == "train" else "prediction"]
        if timeout < FLOOR_S[kind]:
            section[key] = {"status": f"skipped: {max(0.0, timeout):.0f} s of the budget left for it"}
            save()
            continue
        spec = dict(step, device=args.device, threads=args.threads)
        env = dict(os.environ, nnUNet_compile="t" if step.get("compile") else "f")
        if step["kind"] == "train":
            spec.update(epochs=args.compile_epochs if step["compile"] else args.epochs,
                        iters=args.compile_iters if step["compile"] else args.iters, val_iters=args.val_iters)
            if step["compile"]:  # keep the compile-off checkpoint that the predictions use
                env["nnUNet_results"] = str(work / "nnUNet_results_compiled")
        else:
            spec.update(model=str(results / DATASET / f"{step['trainer']}__{PLANS}__{CONFIGURATION}"),
                        case=str(case), output=str(work / "predictions" / step["trainer"]),
                        tta=not args.disable_tta)
        log = out / "logs" / f"{step['kind']}_{key.replace(' ', '_')}.log"

        def partial(r: dict, key=key, section=section) -> None:
            section[key] = {**{k: v for k, v in r.items() if k != "done"}, "status": "running"}
            save()

        section[key] = run_child(spec, env, timeout, log, partial)
        if "gpu" in section[key]:
            report["machine"]["device"] = section[key].pop("gpu")
        save()
    print(markdown(report))
    return 0


def _kind(step: dict) -> str:
    return "train_compiled" if step.get("compile") else step["kind"]


def step_timeout(steps: list[dict], i: int, remaining_s: float) -> float:
    """Seconds step ``i`` may take: what is left minus the later steps' floors; compile runs share equally."""
    later = steps[i + 1:]
    if _kind(steps[i]) == "train_compiled":
        fixed = sum(FLOOR_S[_kind(s)] for s in later if _kind(s) != "train_compiled")
        return (remaining_s - fixed) / (1 + sum(_kind(s) == "train_compiled" for s in later))
    return remaining_s - sum(FLOOR_S[_kind(s)] for s in later)


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def prepare_data(args, report: dict, save) -> Path:
    """Phantoms, plans and preprocessed data, and the prediction case; returns the case's image file."""
    from nnunet_liver.planners.api import plan_and_preprocess

    from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

    raw = Path(os.environ["nnUNet_raw"])
    t = time.perf_counter()
    write_phantom_dataset(raw, SynthSettings(args.num_train, args.num_test, args.size, seed=0), overwrite=True,
                          num_processes=args.num_processes, progress=False)
    report["steps"]["synth_s"] = round(time.perf_counter() - t, 1)
    save()
    t = time.perf_counter()
    plans_file = plan_and_preprocess(990, configurations=(CONFIGURATION,), num_processes=args.num_processes,
                                     overwrite=True)
    report["steps"]["plan_and_preprocess_s"] = round(time.perf_counter() - t, 1)
    cfg = json.loads(Path(plans_file).read_text(encoding="utf-8"))["configurations"][CONFIGURATION]
    report["data"].update(phantoms=args.num_train + args.num_test, phantom_size=args.size,
                          median_shape_zyx=cfg["median_image_size_in_voxels"],
                          spacing_zyx=[round(s, 4) for s in cfg["spacing"]],
                          planned_unet_patch_zyx=cfg["patch_size"], planned_unet_batch=cfg["batch_size"])
    save()
    t = time.perf_counter()
    folder = raw / DATASET
    source = sorted((folder / "imagesTs").glob("*_0000.nii.gz")) or sorted((folder / "imagesTr").glob("*_0000.nii.gz"))
    case = Path(args.work) / "predict_case" / "case_0000.nii.gz"
    report["data"]["prediction_case"] = make_prediction_case(source[0], case, args.predict_shape,
                                                             spacing_xyz=cfg["spacing"][::-1])
    report["steps"]["prediction_case_s"] = round(time.perf_counter() - t, 1)
    save()
    return case


def make_prediction_case(source: Path, target: Path, shape_xyz, spacing_xyz) -> dict:
    """Resample ``source`` over its own field of view to ``shape_xyz`` voxels, then label it ``spacing_xyz``.

    Labelled with the plans' spacing, the predictor does not resample it: all of its voxels go through the
    sliding window, as a LiTS case of this size does at its own planned spacing (the anatomy looks larger
    than in the phantoms; only time and memory are measured).
    """
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    size = [int(s) for s in shape_xyz]
    spacing_in = np.array(image.GetSpacing())
    spacing_out = np.array(image.GetSize()) * spacing_in / size
    # the same outer voxel edges: every new voxel centre lies inside the source
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((spacing_out - spacing_in) / 2)
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing_out.tolist(),
                              image.GetDirection(), -1000.0, image.GetPixelID())
    resampled.SetSpacing([float(s) for s in spacing_xyz])
    target.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(resampled, str(target), useCompression=True)
    return {"source": source.name, "shape_xyz": size, "spacing_xyz": [round(float(s), 4) for s in spacing_xyz]}


def run_child(spec: dict, env: dict, timeout_s: float, log: Path, save_partial) -> dict:
    """Run one step in a fresh process group; stop the group after ``timeout_s``. Returns its result."""
    result_file = log.with_suffix(".json")
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(log.parent), "--step", json.dumps(spec),
           "--step-result", str(result_file)]
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.append(proc)
        status, seen = None, None
        try:
            while proc.poll() is None:
                if time.perf_counter() - t > timeout_s:
                    status = f"timeout: stopped after {timeout_s:.0f} s"
                    _stop_group(proc)
                    break
                time.sleep(1.0)
                if result_file.exists() and result_file.stat().st_mtime != seen:  # a training run's epochs
                    seen = result_file.stat().st_mtime
                    try:
                        save_partial(json.loads(result_file.read_text(encoding="utf-8")))
                    except (json.JSONDecodeError, OSError):
                        pass
        finally:
            _RUNNING.remove(proc)
    result = {}
    if result_file.exists():
        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            result = {}
    if status is None:
        status = "ok" if proc.returncode == 0 and result.get("done") else f"failed: exit code {proc.returncode}"
    result.pop("done", None)
    result["status"] = status
    result["step_wall_s"] = round(time.perf_counter() - t, 1)
    if status != "ok":
        result["log_tail"] = log.read_text(encoding="utf-8", errors="replace")[-1500:]
    return result


def _stop_running_and_exit(signum, frame) -> None:
    for proc in _RUNNING:
        _stop_group(proc)
    sys.exit(128 + signum)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the step's own process group (it and its data-augmentation workers)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ----- one step, in its own process ---------------------------------------------------------------------------

def run_step(spec: dict, result_file: Path) -> int:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result: dict = {}
    if spec["device"] == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)

    def write(done: bool = False) -> None:
        _write_atomic(result_file, json.dumps(dict(result, done=done), indent=2))

    try:
        if spec["kind"] == "train":
            train_run(spec, result, write)
        else:
            predict_run(spec, result, write)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        write()
        raise
    write(done=True)
    return 0


def _gib(n: int) -> float:
    return round(n / 2 ** 30, 2)


def train_run(spec: dict, result: dict, write) -> None:
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    trainer = get_trainer_from_args(DATASET, CONFIGURATION, 0, spec["trainer"], PLANS, device=device)
    trainer.num_epochs = spec["epochs"]
    trainer.num_iterations_per_epoch = spec["iters"]
    trainer.num_val_iterations_per_epoch = spec["val_iters"]
    cm = trainer.configuration_manager
    result.update(trainer=spec["trainer"], compile_requested=spec["compile"], patch_size=list(cm.patch_size),
                  batch_size=cm.batch_size, epochs=spec["epochs"], iters_per_epoch=spec["iters"],
                  val_iters_per_epoch=spec["val_iters"])
    steps: dict[str, list[tuple[int, float, float]]] = {"train": [], "val": []}

    def timed(kind: str, fn):
        def call(batch):
            t0 = time.perf_counter()
            out = fn(batch)  # returns the loss on the CPU: the step has finished on the device
            steps[kind].append((trainer.current_epoch, t0, time.perf_counter()))
            return out
        return call

    trainer.train_step = timed("train", trainer.train_step)
    trainer.validation_step = timed("val", trainer.validation_step)

    def reporting(fn):
        # after the train steps (before validation, whose eval-mode graph a compiled net compiles anew) and
        # after each epoch: a run stopped by its timeout still reports what it measured
        def call(*a):
            out = fn(*a)
            try:  # a measuring bug must not lose the run
                summarise()
            except Exception as e:  # noqa: BLE001
                result["summary_error"] = f"{type(e).__name__}: {e}"
            write()
            return out
        return call

    def summarise():
        logger = trainer.logger
        log = getattr(logger, "local_logger", logger).my_fantastic_logging  # nnU-Net >= 2.6: MetaLogger
        result["compiled"] = hasattr(trainer.network, "_orig_mod")  # torch.compile's OptimizedModule
        result["parameters"] = sum(p.numel() for p in trainer.network.parameters())
        ends = log["epoch_end_timestamps"]
        result["epoch_s"] = [round(e - s, 2) for s, e in zip(log["epoch_start_timestamps"], ends)]
        result["train_losses"] = [round(float(v), 4) for v in log["train_losses"]]
        if steps["train"]:
            result["first_train_step_s"] = round(steps["train"][0][2] - steps["train"][0][1], 2)
        if steps["val"]:
            result["first_val_step_s"] = round(steps["val"][0][2] - steps["val"][0][1], 2)
        last = max(e for e, _, _ in steps["train"]) if steps["train"] else None
        run = [(s, e) for ep, s, e in steps["train"] if ep == last]
        if len(run) >= 3:
            # the latest epoch, from the end of its first step (warm-up, compile) to the end of its last:
            # each interval is one batch's wait plus one step
            span = run[-1][1] - run[0][1]
            waits = sum(s - e_prev for (s, _), (_, e_prev) in zip(run[1:], run[:-1]))
            result["train_iter_per_s"] = round((len(run) - 1) / span, 2)
            result["train_step_median_s"] = round(float(np.median([e - s for s, e in run[1:]])), 4)
            result["data_wait_share"] = round(waits / span, 3)
            result["measured_epoch"] = last
        if cuda:
            result["train_peak_mem_gib"] = _gib(torch.cuda.max_memory_allocated(device))
            result["train_peak_reserved_gib"] = _gib(torch.cuda.max_memory_reserved(device))

    trainer.on_train_epoch_end = reporting(trainer.on_train_epoch_end)
    trainer.on_epoch_end = reporting(trainer.on_epoch_end)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    trainer.run_training()
    result["train_total_s"] = round(time.perf_counter() - t, 1)
    summarise()


def predict_run(spec: dict, result: dict, write) -> None:
    import numpy as np
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    checkpoint = Path(spec["model"]) / "fold_0" / "checkpoint_final.pth"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} (did the compile-off training run finish?)")
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=spec["tta"], device=device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(spec["model"], use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    network_s = []
    inner = predictor.predict_logits_from_preprocessed_data

    def timed(data):
        t0 = time.perf_counter()
        out = inner(data)
        if cuda:
            torch.cuda.synchronize(device)
        network_s.append(time.perf_counter() - t0)
        result["network_input_shape_zyx"] = list(data.shape[1:])
        return out

    predictor.predict_logits_from_preprocessed_data = timed
    mirror = predictor.allowed_mirroring_axes if spec["tta"] else None
    result.update(trainer=spec["trainer"], tile_step_size=0.5,
                  mirroring_axes=list(mirror) if mirror else None,
                  patch_size=list(predictor.configuration_manager.patch_size))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    case = Path(spec["case"])
    t = time.perf_counter()
    predictor.predict_from_files([[str(case)]], spec["output"], save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    result["predict_s"] = round(time.perf_counter() - t, 2)
    result["network_s"] = round(sum(network_s), 2)
    if cuda:
        result["predict_peak_mem_gib"] = _gib(torch.cuda.max_memory_allocated(device))
    a = sitk.ReadImage(str(case))
    b = sitk.ReadImage(str(Path(spec["output"]) / case.name.replace("_0000", "")))
    result["geometry_matches_input"] = bool(a.GetSize() == b.GetSize()
                                            and np.allclose(a.GetSpacing(), b.GetSpacing())
                                            and np.allclose(a.GetOrigin(), b.GetOrigin()))
    result["case_shape_xyz"] = list(a.GetSize())


# ----- report ---------------------------------------------------------------------------------------------------

def _cell(r: dict, key: str):
    v = r.get(key)
    return "" if v is None else v


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [(f"GPU check on {m['device']} (torch {m['torch']}, CUDA {m.get('cuda')}, nnunetv2 {m.get('nnunetv2')}, "
             f"{m.get('cpus')} CPUs, {m.get('nnUNet_n_proc_DA')} augmentation workers); "
             f"{report.get('elapsed_s', 0)} s in all"), "",
             f"Set-up: {report['steps']}", "", f"Data: {report['data']}", "",
             ("| trainer | compile | patch | batch | params | train it/s | step s (median) | data wait | "
             "first step s | epoch s | peak GiB (reserved) | status |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in report["training"].items():
        name, _, comp = key.partition(" compile ")
        compiled = r.get("compiled")
        if compiled is not None and compiled != (comp == "on"):
            comp = f"{comp} (nnU-Net compiled: {compiled})"
        peak = r.get("train_peak_mem_gib")
        peak = "" if peak is None else f"{peak} ({r.get('train_peak_reserved_gib')})"
        params = f"{r['parameters']:,}" if "parameters" in r else ""
        lines.append(f"| {name} | {comp} | {_cell(r, 'patch_size')} | {_cell(r, 'batch_size')} | {params} | "
                     f"{_cell(r, 'train_iter_per_s')} | {_cell(r, 'train_step_median_s')} | "
                     f"{_cell(r, 'data_wait_share')} | {_cell(r, 'first_train_step_s')} | {_cell(r, 'epoch_s')} | "
                     f"{peak} | {r.get('status')} |")
    lines += ["", ("| trainer | case (x y z) | network input (z y x) | mirroring | predict s | network s | peak GiB | "
              "geometry ok | status |"), "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["prediction"].items():
        lines.append(f"| {name} | {_cell(r, 'case_shape_xyz')} | {_cell(r, 'network_input_shape_zyx')} | "
                     f"{_cell(r, 'mirroring_axes')} | {_cell(r, 'predict_s')} | {_cell(r, 'network_s')} | "
                     f"{_cell(r, 'predict_peak_mem_gib')} | {_cell(r, 'geometry_matches_input')} | "
                     f"{r.get('status')} |")
    for section in ("training", "prediction"):
        for key, r in report[section].items():
            if r.get("status") not in ("ok", "running") and r.get("log_tail"):
                lines += ["", f"{key} ({r['status']}), end of its log:", "```", r["log_tail"].strip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
