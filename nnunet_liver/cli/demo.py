"""``nnunet-liver demo``: the whole pipeline on synthetic phantoms, on this machine's CPU.

Steps: synthesise phantoms -> plan and preprocess (raw HU kept; ``2d`` and ``3d_fullres``) -> train
DualStream, the 3D U-Net and the 2D U-Net (CPU presets) with the stock ``nnUNetv2_train`` -> predict the test
cases with the stock ``nnUNetv2_predict`` -> ``nnunet-liver postprocess`` (the largest connected liver component,
as ``nnunet-liver predict`` keeps) -> LiTS metrics and cost (parameters, FLOPs, seconds per case) ->
lesion crops from the preprocessed data -> hybrid 3D CNN, its no-attention ablation, ResNet-50 2D and
DenseNet-121 2D, cross-validated -> Table 2 -> ``nnunet-liver predict`` with DualStream on the real CT the
repository carries (``crlm_liver_ct``, a radiologist's liver and tumour mask; never trained or tuned on) and
``nnunet-liver evaluate`` of it -> ``results.json`` -> ``nnunet-liver report``.

Everything lives under ``--out``; nnU-Net's environment variables are set for this run only; a rerun
resumes finished steps (a step is redone when the preset or device changed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

DATASET_ID, DATASET = 990, "Dataset990_LiverPhantom"
CLASSIFIERS = ("hybrid3d", "hybrid3d_noatt", "resnet50_2d", "densenet121_2d")


@dataclass(frozen=True)
class DemoPreset:
    num_train: int
    num_test: int
    size: int  # in-plane voxels of a phantom's whole abdominal field of view
    epochs: int  # segmentation: epochs x iterations per model, or epochs of `iters` until `cpu_seconds` are spent
    iters: int
    val_iters: int
    cls_folds: int  # classification: patient-level cross-validation folds
    cls_seconds: float  # training budget per classifier and fold (wall-clock seconds)
    crop_size: int = 32
    crop_mm: float = 32.0  # classify --preset cpu: 1 mm samples (64 mm crops: pooled AUC 0.76 vs 0.87, README)
    fov: str = "abdomen"  # phantom field of view: "abdomen", or "liver" (cropped around the liver)
    z_margin_mm: float = 30.0  # "liver" field of view: mm kept above and below the liver
    cpu_seconds: float | None = None  # segmentation: equal CPU-seconds budget per model (None: epochs x iters)
    #: epochs where training is fast (CUDA, or a CPU with native bf16, which trains about 2.7x faster here than
    #: one without): what fits the 15-minute demo there (None: ``epochs`` everywhere)
    epochs_fast: int | None = None


PRESETS = {
    "quick": DemoPreset(num_train=8, num_test=2, size=48, epochs=2, iters=5, val_iters=1, cls_folds=2,
                        cls_seconds=2.0),
    # the learnable regime of issue 11: liver field of view at ~2 mm in-plane (a 10 mm lesion spans ~5 voxels),
    # every segmentation model the same number of iterations. Not a CPU-seconds budget: with other work on the
    # machine, OpenMP threads spin-waiting burn CPU seconds without progress (a 150 CPU s budget gave the 3D
    # U-Net 50 iterations on a loaded machine, where a quiet one spends about 0.5 CPU s per iteration), so the
    # models' quality followed the load.
    # 30 mm above and below the liver: at 300 iterations every model paints liver on every slice beyond the
    # liver with 70 mm as with 30 mm (27 and 12 slices), and 70 mm costs liver Dice (DualStream 0.839 vs 0.859
    # after post-processing, 2026-12-03); 70 mm pays off only after thousands of iterations (README)
    # 600 iterations where training is fast: tumours appear between 300 and 600 (DualStream, tumour global Dice
    # 0.014 -> 0.366, lesions >= 10 mm found 2 -> 5 of 6; whole demo 7:58 -> 10:49 on a Xeon with AMX,
    # 2026-12-03); a float32 CPU (13:58 at 300 on an AMD EPYC) would need about 20 minutes for 600. Those were
    # phantoms v1; on v2 (bowel loops) at 600: DualStream liver 0.947, tumour 0.500, whole demo 11:14
    "default": DemoPreset(num_train=24, num_test=4, size=224, fov="liver", z_margin_mm=30.0, epochs=12, iters=25,
                          val_iters=2, cls_folds=3, cls_seconds=10.0, epochs_fast=24),
}


@dataclass(frozen=True)
class SegModel:
    label: str
    trainer: str
    configuration: str

    @property
    def key(self) -> str:
        return f"{self.trainer}__{self.configuration}"


SEG_MODELS = (
    SegModel("DualStream", "DualStreamTrainer_CPU", "3d_fullres"),
    SegModel("3D U-Net", "LiverUNetTrainer_CPU", "3d_fullres"),
    SegModel("2D U-Net", "LiverUNetTrainer_CPU", "2d"),
)
#: the model that segments the real CT (report section "Phantom to real")
REAL_CT_MODEL = SEG_MODELS[0]


def fast_training(device: str) -> bool:
    """CUDA, or a CPU with native bf16 that the CPU presets train in (``NNUNET_LIVER_BF16`` as the trainers read
    it; bf16 forced on a CPU without it is emulated, not fast). Imports nnU-Net: call it after the run's nnU-Net
    variables are set."""
    from nnunet_liver.trainers._mixins import cpu_bf16_requested, cpu_bf16_supported

    return device == "cuda" or (cpu_bf16_requested() and cpu_bf16_supported())


def training_environment(p: DemoPreset, device: str, seed: int = 0) -> dict[str, str]:
    """The variables the demo trains each segmentation model with (the CPU trainers read them)."""
    return {"NNUNET_LIVER_EPOCHS": str(p.epochs), "NNUNET_LIVER_ITERS": str(p.iters),
            "NNUNET_LIVER_VAL_ITERS": str(p.val_iters), "NNUNET_LIVER_SEED": str(seed),
            "NNUNET_LIVER_CPU_SECONDS": f"{p.cpu_seconds:g}" if p.cpu_seconds else "",
            # the demo scores its test cases; fold 0's final validation would cost a minute per 3D model
            "NNUNET_LIVER_SKIP_VALIDATION": "1",
            # augmentation in the training process: no worker start-up, and seeded runs repeat
            "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0" if device == "cpu"
                                               else str(max(1, min(12, (os.cpu_count() or 2) - 1))))}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on synthetic phantoms and write the report (CPU, minutes)",
        description="Synthesise phantoms, plan/preprocess with raw HU, train DualStream, 3D U-Net and 2D U-Net "
        "with the stock nnUNetv2_train (CPU presets), predict with the stock nnUNetv2_predict, evaluate "
        "(LiTS metrics), train and cross-validate the lesion classifiers, and write the report. All folders "
        "under --out; rerun to resume.",
    )
    p.add_argument("--out", default="nnunet_liver_demo", help="output folder (default ./nnunet_liver_demo)")
    p.add_argument("--quick", action="store_true", help="smallest preset (about 4 minutes on 2 cores)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="training iterations of every segmentation model, a multiple of the epoch length (default "
                   "preset, epochs of 25: 600 on CUDA or a CPU with native bf16, 300 on other CPUs, where 600 "
                   "would take about 20 minutes on 2 cores)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="training/prediction device")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default min(2, cores))")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError, check_num_processes
    from nnunet_liver.cli.steps import Pipeline
    from nnunet_liver.data.io import check_writable_dir
    from nnunet_liver.env import activate

    check_num_processes(args)
    preset_name = "quick" if args.quick else "default"
    preset = PRESETS[preset_name]
    if args.iterations is not None:
        if args.iterations < preset.iters or args.iterations % preset.iters:
            raise UsageError(f"--iterations must be a positive multiple of the epoch length, {preset.iters}, "
                             f"got {args.iterations}")
        preset = replace(preset, epochs=args.iterations // preset.iters)
    out = Path(args.out).resolve()
    try:
        check_writable_dir(out)
    except PermissionError as e:
        raise UsageError(str(e)) from None
    env = activate(out / "nnunet")
    # nnU-Net's export and validation pools default to 8 processes, each importing torch: on a laptop CPU
    # they cost more than the work itself
    env["nnUNet_def_n_proc"] = os.environ.get("nnUNet_def_n_proc", str(args.num_processes))
    os.environ.update(env)
    if args.iterations is None and preset.epochs_fast is not None and fast_training(args.device):
        preset = replace(preset, epochs=preset.epochs_fast)
    from nnunet_liver.data.phantoms import PHANTOM_VERSION

    # a rerun after the phantoms changed redoes every step
    pipe = Pipeline(out=out, env=env, signature={"preset": preset_name, "device": args.device, **asdict(preset),
                                                 "phantoms": PHANTOM_VERSION})
    demo = _Demo(out, env, preset, preset_name, args.device, args.num_processes, pipe)
    print(f"nnunet-liver demo ({preset_name}): {preset.num_train} training + {preset.num_test} test phantoms of "
          f"{preset.size} voxels, {preset.epochs * preset.iters} iterations per segmentation model; out={out}")
    steps = [("synthesise phantoms", demo.synth),
             ("plan and preprocess, raw HU (2d, 3d_fullres)", demo.preprocess)]
    steps += [(f"train {m.label} ({m.trainer}, {m.configuration}) with nnUNetv2_train", partial(demo.train, m))
              for m in SEG_MODELS]
    steps += [(f"predict the test cases with nnUNetv2_predict: {m.label}", partial(demo.predict, m))
              for m in SEG_MODELS]
    steps += [("evaluate segmentations (LiTS metrics) and measure cost", demo.evaluate_segmentation),
              ("extract lesion crops from the preprocessed data", demo.extract),
              ("train the lesion classifiers (cross-validation)", demo.train_classifiers),
              ("evaluate the classifiers (Table 2, ROC, attention)", demo.evaluate_classifiers),
              (f"predict and evaluate the real CT crlm_liver_ct with nnunet-liver predict: {REAL_CT_MODEL.label}",
               demo.real_ct),
              ("write results.json and the report", demo.report)]
    for i, (name, fn) in enumerate(steps, 1):
        try:
            pipe.step(name, fn, i, len(steps))
        except (RuntimeError, OSError) as e:  # the message names the command, its exit code and its log
            print(f"nnunet-liver demo: step [{i}/{len(steps)}] {name} failed: {e}\n"
                  f"Fix the cause and rerun the same command: finished steps are skipped.", file=sys.stderr)
            return 1
    print(f"demo finished in {pipe.elapsed()}; report: {out / 'report' / 'report.html'}")
    return 0


class _Demo:
    """The steps, sharing the demo's folders: ``<out>/nnunet`` (nnU-Net's three folders),
    ``predictions/<trainer>__<configuration>``, ``evaluation/...``, ``classification/...``, ``report/``."""

    def __init__(self, out: Path, env: dict, preset: DemoPreset, preset_name: str, device: str,
                 num_processes: int, pipe):
        self.out, self.env, self.preset, self.preset_name = out, env, preset, preset_name
        self.device, self.np, self.pipe = device, num_processes, pipe
        self.raw = Path(env["nnUNet_raw"]) / DATASET
        self.cls_root = out / "classification"

    # -- segmentation ----------------------------------------------------------------------------------
    def synth(self) -> None:
        from nnunet_liver.data.synth_dataset import SynthSettings, write_phantom_dataset

        p = self.preset
        settings = SynthSettings(p.num_train, p.num_test, p.size, seed=0, fov=p.fov, z_margin_mm=p.z_margin_mm)
        write_phantom_dataset(self.env["nnUNet_raw"], settings, dataset_id=DATASET_ID, overwrite=True,
                              num_processes=self.np)

    def preprocess(self) -> None:
        from nnunet_liver.planners.api import plan_and_preprocess

        plan_and_preprocess(DATASET_ID, configurations=("2d", "3d_fullres"), num_processes=self.np,
                            verify=True, overwrite=True)

    def train(self, m: SegModel) -> None:
        budget = training_environment(self.preset, self.device)
        t0 = time.perf_counter()
        self.pipe.run(["nnUNetv2_train", str(DATASET_ID), m.configuration, "0", "-tr", m.trainer,
                       "-device", self.device], f"train_{m.key}", extra_env=budget)
        self._record(m, train_seconds=time.perf_counter() - t0, iterations=self._iterations(m))

    def _iterations(self, m: SegModel) -> int:
        """Training iterations done: from the learning curve the CPU trainers write (a CPU-seconds budget ends
        at an epoch boundary), else epochs x iterations."""
        curve = (Path(self.env["nnUNet_results"]) / DATASET / f"{m.trainer}__nnUNetPlans__{m.configuration}"
                 / "fold_0" / "learning_curve.json")
        if curve.is_file():
            return int(json.loads(curve.read_text(encoding="utf-8"))[-1]["iterations"])
        return self.preset.epochs * self.preset.iters

    def predict(self, m: SegModel) -> None:
        """``nnUNetv2_predict`` into ``raw_predictions/<model>``, then ``nnunet-liver postprocess`` (the largest
        connected liver component, as ``nnunet-liver predict`` keeps) into ``predictions/<model>``."""
        from nnunet_liver.data.io import staged_dir

        raw = self.out / "raw_predictions" / m.key
        # on the CPU, -npp 0 -nps 0: nnU-Net predicts in its own process; its worker processes start by
        # spawn and each imports nnU-Net again (about 10 s per worker on a 2-core machine), which cost more
        # than the demo's small cases take to predict
        workers = "0" if self.device == "cpu" else "1"
        with staged_dir(raw, overwrite=True) as tmp:
            self.pipe.run(["nnUNetv2_predict", "-i", str(self.raw / "imagesTs"), "-o", str(tmp),
                           "-d", str(DATASET_ID), "-c", m.configuration, "-f", "0", "-tr", m.trainer,
                           "-device", self.device, "-npp", workers, "-nps", workers, "--disable_progress_bar"],
                          f"predict_{m.key}")
        self._cli("postprocess", "-i", str(raw), "-o", str(self.out / "predictions" / m.key), "--overwrite")

    @staticmethod
    def _cli(*argv: str) -> None:
        """An ``nnunet-liver`` sub-command in this process; a non-zero exit code fails the step."""
        from nnunet_liver.cli.main import main

        code = main(list(argv))
        if code:
            raise RuntimeError(f"nnunet-liver {' '.join(argv[:2])} failed (exit code {code})")

    def evaluate_segmentation(self) -> None:
        for m in SEG_MODELS:
            self._cli("evaluate", str(self.raw / "labelsTs"), str(self.out / "predictions" / m.key),
                      "-o", str(self.out / "evaluation" / m.key), "-np", str(self.np), "--overwrite")
            # the same before post-processing, for the report's provenance
            self._cli("evaluate", str(self.raw / "labelsTs"), str(self.out / "raw_predictions" / m.key),
                      "-o", str(self.out / "evaluation" / "raw" / m.key), "-np", str(self.np), "--overwrite")
            self._record(m, **self._cost(m))

    def _cost(self, m: SegModel) -> dict:
        """Parameters and forward FLOPs per output voxel of the trained network at its patch, and seconds per
        case of nnU-Net's sliding-window predictor in this process (mean over up to 2 test cases)."""
        import torch
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunet_liver.architectures.cost import count_flops_per_voxel

        model_dir = Path(self.env["nnUNet_results"]) / DATASET / f"{m.trainer}__nnUNetPlans__{m.configuration}"
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device(self.device),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,),
                                                       checkpoint_name="checkpoint_final.pth")
        net = predictor.network
        patch = list(predictor.configuration_manager.patch_size)
        io = SimpleITKIO()
        seconds = []
        images = sorted(self.raw.joinpath("imagesTs").glob("*_0000.nii.gz"))[:2]
        for i, img in enumerate(images[:1] + images):  # the first call, untimed, warms up (cuDNN, allocator)
            data, props = io.read_images([str(img)])
            t0 = time.perf_counter()
            predictor.predict_single_npy_array(data, props)
            if i:
                seconds.append(time.perf_counter() - t0)
        return {"params": sum(q.numel() for q in net.parameters()), "patch_size": patch,
                "flops_per_voxel": count_flops_per_voxel(net, patch, input_channels=1),
                "seconds_per_case": sum(seconds) / len(seconds) if seconds else None}

    def _record(self, m: SegModel, **values) -> None:
        """Merge measurements of a model into ``<out>/evaluation/cost.json`` (kept across resumed runs)."""
        from nnunet_liver.data.io import staged_file

        path = self.out / "evaluation" / "cost.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        data.setdefault(m.key, {}).update(values)
        with staged_file(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")

    # -- classification --------------------------------------------------------------------------------
    def extract(self) -> None:
        import shutil

        crops = self.cls_root / "crops"
        if crops.exists():  # a changed preset: new phantoms, new crops
            shutil.rmtree(crops)
        p = self.preset
        self._cli("classify", "extract", "-d", str(DATASET_ID), "-c", "3d_fullres", "--size", str(p.crop_size),
                  "--crop-mm", f"{p.crop_mm:g}", "--num-folds", str(p.cls_folds), "-o", str(crops),
                  # the table lists the test cases too (not preprocessed), and a lesion of a voxel or two
                  # can vanish in resampling: both are skipped with a warning
                  "--skip-unmatched")

    def train_classifiers(self) -> None:
        for model in CLASSIFIERS:
            self._cli("classify", "train", "-m", model, "-f", "all", "--preset", "cpu", "--crops",
                      str(self.cls_root / "crops"), "-o", str(self.cls_root), "--overwrite",
                      "--max-time-s", f"{self.preset.cls_seconds:g}", "--device", self.device)

    def evaluate_classifiers(self) -> None:
        self._cli("classify", "evaluate", "--preset", "cpu", "--crops", str(self.cls_root / "crops"), "--root",
                  str(self.cls_root), "-o", str(self.cls_root / "evaluation"), "--overwrite",
                  "--n-boot", "200", "--device", self.device)

    # -- the real CT ---------------------------------------------------------------------------------
    def _model_dir(self, m: SegModel) -> Path:
        return Path(self.env["nnUNet_results"]) / DATASET / f"{m.trainer}__nnUNetPlans__{m.configuration}"

    def real_ct(self) -> None:
        """``nnunet-liver predict`` on the carried real CT, then ``nnunet-liver evaluate`` against its mask.

        A check of whether phantom training transfers to real CT: nothing is trained or tuned on it. The
        evaluator pairs files by case name, so the label and the prediction are staged under the CT's name.
        """
        import shutil

        from nnunet_liver.data.io import staged_dir
        from nnunet_liver.data.real_ct import CRLM_CT, CRLM_SEG

        root = self.out / "real_ct"
        root.mkdir(parents=True, exist_ok=True)
        self._cli("predict", "-i", str(CRLM_CT), "-o", str(root / "predict"), "-m",
                  str(self._model_dir(REAL_CT_MODEL)), "-f", "0", "--device", self.device, "--overwrite")
        case = CRLM_CT.name
        for folder, source in (("reference", CRLM_SEG), ("prediction", root / "predict" / "segmentation.nii.gz")):
            with staged_dir(root / folder, overwrite=True) as tmp:
                shutil.copyfile(source, tmp / case)
        self._cli("evaluate", str(root / "reference"), str(root / "prediction"), "-o", str(root / "evaluation"),
                  "-np", "1", "--overwrite")

    # -- results and report ----------------------------------------------------------------------------
    def manifest(self) -> dict:
        from nnunet_liver.cli.bench import machine

        p = self.preset
        cost = json.loads((self.out / "evaluation" / "cost.json").read_text(encoding="utf-8"))
        seg_budget = (f"{p.cpu_seconds:g} CPU seconds of training (iterations in the cost table)" if p.cpu_seconds
                      else f"{p.epochs} epochs x {p.iters} iterations")
        rel = lambda path: os.path.relpath(path, self.out)  # noqa: E731
        models = [{"label": m.label, "group": "table1", "trainer": m.trainer, "configuration": m.configuration,
                   "predictions": rel(self.out / "predictions" / m.key),
                   "evaluation": rel(self.out / "evaluation" / m.key / "summary.json"),
                   "cost": cost.get(m.key, {})} for m in SEG_MODELS]
        return {
            "format": "nnunet_liver.results/1",
            "title": f"nnunet-liver demo ({self.preset_name} preset)",
            "provenance": {
                "data": f"synthetic phantoms ({DATASET}): {p.num_train} training / {p.num_test} test cases, "
                        f"{p.size} voxels in-plane over the abdomen, field of view {p.fov}"
                        + (f" ({p.z_margin_mm:g} mm above and below the liver)" if p.fov == "liver" else ""),
                "postprocessing": self._postprocessing_note(),
                "budget": f"each segmentation model {seg_budget} on fold 0 (CPU presets, AdamW one-cycle, "
                          f"seed 0); classifiers {p.cls_seconds:g} s of training per fold, "
                          f"{p.cls_folds}-fold patient-level cross-validation, {p.crop_size}^3 crops over "
                          f"{p.crop_mm:g} mm",
                "device": self.device,
                "machine": machine(self.device),
                "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "synthetic": True,
                "command": f"nnunet-liver demo{' --quick' if self.preset_name == 'quick' else ''}"
                           f" --iterations {p.epochs * p.iters} "
                           f"--out {self.out} --device {self.device} -np {self.np}",
            },
            "dataset": {"images": rel(self.raw / "imagesTs"), "labels": rel(self.raw / "labelsTs")},
            "segmentation": {"reference": "DualStream", "models": models},
            "classification": {"evaluation": rel(self.cls_root / "evaluation"), "preset": "cpu"},
            "real_ct": self._real_ct_manifest(rel),
        }

    def _postprocessing_note(self) -> str:
        """What the post-processing did, from the evaluations before and after it."""
        def figures(folder: Path) -> tuple[str, str]:
            agg = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["aggregate"]
            dice, beyond = agg["liver"]["dice_per_case"], agg["liver_extent"]["max_slices_beyond"]
            return ("n/a" if dice is None else f"{dice:.3f}"), ("n/a" if beyond is None else f"{beyond}")

        changes = []
        for m in SEG_MODELS:
            (d0, b0), (d1, b1) = (figures(self.out / "evaluation" / "raw" / m.key),
                                  figures(self.out / "evaluation" / m.key))
            changes.append(f"{m.label} {d0} -> {d1} ({b0} -> {b1} slices beyond)")
        return ("nnunet-liver postprocess: each test prediction of nnUNetv2_predict (raw_predictions/) keeps its "
                "largest connected liver component, liver and tumour together, as nnunet-liver predict does by "
                "default (predictions/); "
                "liver Dice, mean over cases, and the most liver slices beyond the reference liver, before -> "
                "after: " + "; ".join(changes))

    def _real_ct_manifest(self, rel) -> dict:
        from nnunet_liver.data.real_ct import CRLM_CT

        root = self.out / "real_ct"
        return {"label": "crlm_liver_ct (TCIA CRLM, radiologist mask)", "model": REAL_CT_MODEL.label,
                "model_folder": rel(self._model_dir(REAL_CT_MODEL)),
                "image": str(CRLM_CT),  # in the installed package, outside --out: absolute
                "reference": rel(root / "reference" / CRLM_CT.name),
                "prediction": rel(root / "prediction" / CRLM_CT.name),
                "evaluation": rel(root / "evaluation" / "summary.json")}

    def report(self) -> None:
        from nnunet_liver.data.io import staged_file

        with staged_file(self.out / "results.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.manifest(), indent=1), encoding="utf-8")
        self._cli("report", str(self.out / "results.json"), "-o", str(self.out / "report"), "--overwrite")
