"""``nnunet-liver classify``: lesion crops, classifier training, evaluation (Table 2) and prediction.

Default folders (``DatasetXXX_Name`` is found in ``$nnUNet_preprocessed``)::

    $nnUNet_results/DatasetXXX_Name/classification/crops/                 classify extract
    $nnUNet_results/DatasetXXX_Name/classification/<model>__<preset>/fold_<k>/   classify train
    $nnUNet_results/DatasetXXX_Name/classification/evaluation__<preset>/  classify evaluate
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from nnunet_liver.classification.presets import (
    MODELS,  # dataclasses only: --help stays instant
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="lesion classification: extract crops, train, evaluate, predict",
        description="Benign/malignant lesion classification on lesion-centred crops of nnU-Net's preprocessed "
        "data (raw HU): the hybrid 3D network, its no-attention ablation and the ResNet-50/DenseNet-121 slice "
        "baselines, with patient-level stratified cross-validation.",
    )
    sub = p.add_subparsers(dest="classify_command", metavar="STEP")
    sub.required = True

    e = sub.add_parser("extract", help="join the lesion table with the tumour components and cache crops",
                       description="Crops a cube around every lesion of the table (3D connected components of "
                       "the tumour label in the preprocessed segmentation), writes <crop>.npz, index.csv, "
                       "crops.json and splits.json. Crops already up to date are skipped. Any mismatch between "
                       "the table and the components is an error unless --skip-unmatched.")
    e.add_argument("-d", dest="dataset_id", type=int, required=True, help="dataset id")
    e.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    e.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    e.add_argument("--table", default=None,
                   help="lesion table CSV: case_id, lesion_id, label (benign/malignant or 0/1), optional subtype "
                   "and centroid_{z,y,x}_vox or centroid_{x,y,z}_mm (default: $nnUNet_raw/<dataset>/lesions.csv)")
    e.add_argument("--instances", default=None,
                   help="folder of raw instance maps <case_id><file_ending> (value = lesion id): lesions are "
                   "their instances, joined by id (default: tumour components, joined by centroid; tables "
                   "without centroids number the components of the raw labelsTr images in scipy.ndimage.label "
                   "order)")
    e.add_argument("--tumour-label", type=int, default=None, help="tumour label value (default from dataset.json)")
    e.add_argument("--crop-mm", default="64",
                   help="cube side in mm, or 'auto' for max(48 mm, 2 x lesion diameter) (default 64)")
    e.add_argument("--size", type=int, default=64, help="samples per cube side (default 64)")
    e.add_argument("--channel", type=int, default=0, help="image channel (default 0)")
    e.add_argument("--tolerance-mm", type=float, default=5.0,
                   help="centroid matching tolerance (default 5 mm, at least half the lesion diameter)")
    e.add_argument("--skip-unmatched", action="store_true",
                   help="skip unmatched table rows and components with a warning instead of failing")
    e.add_argument("--num-folds", type=int, default=5, help="cross-validation folds (default 5)")
    e.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    e.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of each fold's training cases used for early stopping (default 0.15)")
    e.add_argument("-o", dest="output", default=None, help="crop folder (default: see above)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run_extract)

    t = sub.add_parser("train", help="train a classifier on one fold or all folds",
                       description="Trains on the fold's training lesions, stops early on the validation AUC and "
                       "predicts the fold's test lesions (predictions.csv). Checkpoints, training_log.json and "
                       "progress.png go to <root>/<model>__<preset>/fold_<k>.")
    t.add_argument("-d", dest="dataset_id", type=int, default=None, help="dataset id (for the default folders)")
    t.add_argument("-m", dest="model", required=True, choices=MODELS, help="model")
    t.add_argument("-f", dest="fold", required=True, help="fold number, or 'all' for every fold in turn (unlike nnU-Net's 'all', "
                   "which trains one model on every case)")
    t.add_argument("--preset", default="default", choices=("cpu", "default"),
                   help="training preset (cpu: tiny network, 32^3 input, few epochs)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and augmentation (default 0)")
    t.add_argument("--crops", default=None, help="crop folder (default: see above)")
    t.add_argument("-o", dest="root", default=None, help="classification results root (default: see above)")
    t.add_argument("--continue", dest="resume", action="store_true", help="resume from checkpoint_latest.pt")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run of this fold and start again")
    t.add_argument("--pretrained", default=None, help="local state_dict file for the 2D baselines")
    t.add_argument("--epochs", type=int, default=None, help="override the preset's maximum epochs")
    t.add_argument("--patience", type=int, default=None, help="override the preset's early-stopping patience")
    t.add_argument("--max-time-s", type=float, default=None, help="wall-clock budget per fold in seconds")
    t.add_argument("--with-mask", action="store_true", default=None, help="lesion mask as a second input channel")
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:i]")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)

    v = sub.add_parser("evaluate", help="Table 2, ROC curves, paired tests, attention figure",
                       description="Per-fold and pooled metrics (95%% patient-bootstrap intervals), table2.md/json, "
                       "roc.png, metrics.png, paired t-tests across folds and DeLong tests on pooled predictions "
                       "against hybrid3d, and attention.png (channel attention + Grad-CAM).")
    v.add_argument("-d", dest="dataset_id", type=int, default=None, help="dataset id (for the default folders)")
    v.add_argument("-m", dest="models", nargs="+", default=list(MODELS), choices=MODELS,
                   help="models to include (default: all that have finished folds)")
    v.add_argument("--preset", default="default", choices=("cpu", "default"), help="preset of the runs")
    v.add_argument("--seed", type=int, default=0, help="seed of the runs (default 0)")
    v.add_argument("--reference", default="hybrid3d", choices=MODELS, help="model the others are compared with")
    v.add_argument("--crops", default=None, help="crop folder (default: see above)")
    v.add_argument("--root", default=None, help="classification results root (default: see above)")
    v.add_argument("-o", dest="output", default=None, help="output folder (default <root>/evaluation__<preset>)")
    v.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    v.add_argument("--no-attention", action="store_true", help="skip the attention figure")
    v.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    v.add_argument("--device", default="cpu", help="device for Grad-CAM (default cpu)")
    v.set_defaults(func=run_evaluate)

    r = sub.add_parser("predict", help="per-lesion probabilities of cached crops with a checkpoint",
                       description="Writes case_id, lesion_id, label, prob (P(malignant); 2D: mean over slices), "
                       "pred (2D: majority vote of slices) and n_slices for every lesion of a crop folder.")
    r.add_argument("-i", dest="crops", required=True, help="crop folder (from classify extract)")
    r.add_argument("-chk", dest="checkpoint", required=True, help="checkpoint_final.pt (or _best/_latest)")
    r.add_argument("-m", dest="model", default=None, choices=MODELS, help="expected model (checked)")
    r.add_argument("-o", dest="output", required=True, help="output CSV")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    r.set_defaults(func=run_predict)


def _classification_root(dataset_id: int | None, what: str) -> Path:
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.io import datasets_with_id
    from nnunet_liver.env import require_paths

    if dataset_id is None:
        raise UsageError(f"pass -d DATASET_ID or {what}")
    paths = require_paths("nnUNet_preprocessed", "nnUNet_results")
    found = datasets_with_id(paths["nnUNet_preprocessed"], dataset_id)
    if len(found) != 1:
        raise UsageError(f"dataset {dataset_id}: {'not found' if not found else 'ambiguous'} in nnUNet_preprocessed "
                         f"({paths['nnUNet_preprocessed']})")
    return paths["nnUNet_results"] / found[0].name / "classification"


def _user_errors():
    from nnunet_liver.classification.crops import CropError
    from nnunet_liver.classification.evaluation import EvaluationError
    from nnunet_liver.classification.lesions import LesionJoinError, LesionTableError
    from nnunet_liver.classification.splits import SplitError
    from nnunet_liver.classification.training import CheckpointError
    from nnunet_liver.data.io import OutputExistsError

    return (CropError, EvaluationError, LesionJoinError, LesionTableError, SplitError, CheckpointError,
            OutputExistsError, FileNotFoundError, PermissionError, ValueError)


def run_extract(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError

    try:
        return _extract(args)
    except _user_errors() as e:
        raise UsageError(str(e)) from None


def _extract(args: argparse.Namespace) -> int:
    import json

    from nnunet_liver.classification.crops import (
        CropSpec,
        extract_crops,
        open_preprocessed,
        raw_centroids_from_folder,
        raw_reader,
        tumour_label_from_dataset_json,
    )
    from nnunet_liver.classification.lesions import read_lesion_table
    from nnunet_liver.classification.splits import (
        SplitError,
        fold_labels,
        load_splits,
        make_splits,
        write_splits,
    )
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.env import require_paths

    paths = require_paths("nnUNet_preprocessed")
    crop_mm = None if args.crop_mm.lower() == "auto" else _positive_float(args.crop_mm, "--crop-mm")
    spec = CropSpec(size=args.size, crop_mm=crop_mm, channel=args.channel)
    data = open_preprocessed(paths["nnUNet_preprocessed"], args.dataset_id, args.plans, args.configuration,
                             channel=args.channel)
    raw_dir = Path(os.environ["nnUNet_raw"]) / data.dataset_name if os.environ.get("nnUNet_raw") else None
    table = Path(args.table) if args.table else (raw_dir / "lesions.csv" if raw_dir else None)
    if table is None:
        raise UsageError("no lesion table: pass --table CSV (or set nnUNet_raw to use <dataset>/lesions.csv)")
    rows = read_lesion_table(table)
    tumour_label = args.tumour_label if args.tumour_label is not None else tumour_label_from_dataset_json(data.dataset_json)
    file_ending = data.dataset_json.get("file_ending", ".nii.gz")
    instance_maps = None
    if args.instances:
        if not Path(args.instances).is_dir():
            raise UsageError(f"--instances: no such folder: {args.instances}")
        instance_maps = raw_reader(args.instances, file_ending, data.dataset_json)
    if raw_dir is not None and (raw_dir / "labelsTr").is_dir():
        raw_centroids = raw_centroids_from_folder(raw_dir / "labelsTr", file_ending, tumour_label=tumour_label,
                                                  reader_json=data.dataset_json)
    else:
        raw_centroids = None
    out = Path(args.output) if args.output else _classification_root(args.dataset_id, "-o") / "crops"
    splits: dict = {}

    def make_folds(lesions) -> None:
        keys, labels = [les.key for les in lesions], [les.row.label for les in lesions]
        try:
            old = load_splits(out / "splits.json", keys)
            same = (old["n_folds"], old["seed"], old["val_fraction"]) == (args.num_folds, args.split_seed,
                                                                           args.val_fraction)
        except (SplitError, KeyError, ValueError):
            old, same = None, False
        splits["value"] = old if same else make_splits(keys, labels, n_folds=args.num_folds, seed=args.split_seed,
                                                       val_fraction=args.val_fraction)
        splits["new"] = not same

    result = extract_crops(data, rows, out, spec=spec, tumour_label=tumour_label, raw_centroids=raw_centroids,
                           instance_maps=instance_maps,
                           strict=not args.skip_unmatched, tolerance_mm=args.tolerance_mm,
                           progress=not args.no_progress, table_path=str(table), validate=make_folds,
                           log=lambda m: print(m, file=sys.stderr))
    if splits["new"]:
        write_splits(out / "splits.json", splits["value"])
    labels = {les.key: les.row.label for les in result.lesions}
    for k in range(len(splits["value"]["folds"])):
        try:
            fold_labels(splits["value"], k, labels)
        except SplitError as e:
            print(f"warning: {e}", file=sys.stderr)
    n_mal = sum(labels.values())
    rate = f", {result.lesions_per_s:.1f} lesions/s" if result.written else ""
    print(f"{len(result.lesions)} lesions ({n_mal} malignant, {len(labels) - n_mal} benign) from "
          f"{len({les.row.case_id for les in result.lesions})} cases; {result.written} crops written, "
          f"{result.skipped} up to date, {result.removed} stale removed ({result.seconds:.1f} s{rate}); "
          f"{spec.describe()}")
    print(f"crops: {out}")
    print(json.dumps({"folds": [{k: len(v) for k, v in f.items()} for f in splits["value"]["folds"]]}))
    return 0


def _positive_float(value: str, flag: str) -> float:
    from nnunet_liver.cli.main import UsageError

    try:
        v = float(value)
    except ValueError:
        raise UsageError(f"{flag} must be a number of mm or 'auto', got {value!r}") from None
    if not v > 0:
        raise UsageError(f"{flag} must be positive, got {value}")
    return v


def run_train(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError

    try:
        return _train(args)
    except _user_errors() as e:
        raise UsageError(str(e)) from None


def _train(args: argparse.Namespace) -> int:
    import shutil

    from nnunet_liver.classification.crops import read_index
    from nnunet_liver.classification.presets import get_preset
    from nnunet_liver.classification.splits import fold_labels, load_splits
    from nnunet_liver.classification.training import (
        resolve_device,
        run_folder,
        train_fold,
    )
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.env import activate

    activate()
    if args.resume and args.overwrite:
        raise UsageError("--continue and --overwrite exclude each other")
    crops = Path(args.crops) if args.crops else _classification_root(args.dataset_id, "--crops and -o") / "crops"
    root = Path(args.root) if args.root else _classification_root(args.dataset_id, "--crops and -o")
    config = get_preset(args.preset, epochs=args.epochs, patience=args.patience, max_time_s=args.max_time_s,
                        with_mask=args.with_mask)
    if config.epochs < 1 or config.patience < 1:
        raise UsageError("--epochs and --patience must be positive")
    splits = load_splits(crops / "splits.json")
    n_folds = len(splits["folds"])
    if args.fold == "all":
        folds = list(range(n_folds))
    else:
        try:
            folds = [int(args.fold)]
        except ValueError:
            raise UsageError(f"-f must be a fold number or 'all', got {args.fold!r}") from None
        if not 0 <= folds[0] < n_folds:
            raise UsageError(f"fold {folds[0]} does not exist: {crops / 'splits.json'} has folds 0..{n_folds - 1}")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise UsageError(f"--pretrained: file not found: {args.pretrained}")
    labels = {e.key: e.label for e in read_index(crops)}
    for k in folds:  # every requested fold must be trainable before any is trained
        fold_labels(splits, k, labels)
    device = resolve_device(args.device)
    run = run_folder(root, args.model, config.preset, args.seed)
    for k in folds:
        out = run / f"fold_{k}"
        if args.overwrite and out.exists():
            shutil.rmtree(out)
        s = train_fold(crop_dir=crops, out_dir=out, model_name=args.model, fold=k, config=config, seed=args.seed,
                       device=device, resume=args.resume, pretrained=args.pretrained,
                       progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
        print(f"{args.model} fold {k}: {s['epochs_run']} epochs ({s['stop_reason']}), best epoch {s['best_epoch']} "
              f"(val AUC {_num(s['best_val_auc'])}), test AUC {_num(s['test_auc'])}, accuracy "
              f"{_num(s['test_accuracy'])}, {s['train_seconds']:.1f} s -> {out}")
    return 0


def _num(v) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def run_evaluate(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError

    try:
        return _evaluate(args)
    except _user_errors() as e:
        raise UsageError(str(e)) from None


def _evaluate(args: argparse.Namespace) -> int:
    from nnunet_liver.classification.evaluation import evaluate_classification
    from nnunet_liver.classification.training import resolve_device, run_folder

    crops = Path(args.crops) if args.crops else _classification_root(args.dataset_id, "--crops and --root") / "crops"
    root = Path(args.root) if args.root else _classification_root(args.dataset_id, "--crops and --root")
    suffix = f"evaluation__{args.preset}" + (f"__seed{args.seed}" if args.seed else "")
    out = Path(args.output) if args.output else root / suffix
    run_dirs = {m: run_folder(root, m, args.preset, args.seed) for m in dict.fromkeys(args.models)}
    folder, result = evaluate_classification(run_dirs, crops, out, reference=args.reference, n_boot=args.n_boot,
                                             overwrite=args.overwrite, attention=not args.no_attention,
                                             device=str(resolve_device(args.device)))
    missing = [m for m in run_dirs if m not in result["models"]]
    if missing:
        print(f"warning: no finished folds for {', '.join(missing)}", file=sys.stderr)
    print((folder / "table2.md").read_text(encoding="utf-8"))
    print(f"wrote {folder}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError

    try:
        return _predict(args)
    except _user_errors() as e:
        raise UsageError(str(e)) from None


def _predict(args: argparse.Namespace) -> int:
    from nnunet_liver.classification.training import (
        load_checkpoint,
        load_crop_data,
        model_from_checkpoint,
        predict_lesions,
        resolve_device,
        write_predictions,
    )

    ckpt = load_checkpoint(args.checkpoint, expected_model=args.model)
    model, config = model_from_checkpoint(ckpt)
    device = resolve_device(args.device)
    data = load_crop_data(args.crops, config.input_size)
    pred = predict_lesions(model.to(device), ckpt["model"], data, config, device)
    write_predictions(args.output, data, pred, overwrite=args.overwrite)
    print(f"{len(data.entries)} lesions ({ckpt['model']}, fold {ckpt.get('fold')}) -> {args.output}")
    return 0
