"""``nnunet-liver predict``: one CT (or a folder of CTs) in, segmentation and a findings report out."""
from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Segments liver and tumour with a trained nnU-Net model (nnU-Net's predictor: sliding window, optional
test-time mirroring, every fold averaged), keeps the largest liver component (or applies the model's
postprocessing.pkl from nnUNetv2_find_best_configuration), measures every lesion (3D connected component of
the tumour label) and, with --classifier, gives its malignancy probability from a classifier of
'nnunet-liver classify train' (crops cut from nnU-Net's preprocessed volume as in training).

INPUT is a NIfTI/NRRD/MetaImage file, a folder holding one DICOM series (--series UID when it holds several),
or a folder of cases (image files and DICOM sub-folders: batch mode, one sub-folder of OUTPUT per case; a
failing case is reported and skipped, and the exit code is 1 if any failed).

Cohorts: --num-parts N --part-id K (nnU-Net's -num_parts/-part_id, K = 0..N-1) runs every N-th case of the
sorted case names from K on, so N machines or GPUs given the same INPUT and OUTPUT share the cases without
overlap. A case folder is moved into place whole when finished; a rerun skips the finished ones (made with the
same models) and redoes the rest. 'nnunet-liver cohort OUTPUT -o cohort.csv' merges the parts' findings.

Writes to OUTPUT (per case): segmentation.nii.gz (the input's exact grid), lesions.csv, findings.json,
lesion_<id>.png (axial slice through each lesion), summary.png; for a DICOM series also segmentation.dcm
(DICOM-SEG: the liver and one segment per lesion on the source series' frames) and findings_sr.dcm (DICOM SR,
TID 1500: each lesion's volume, longest axial diameter, mean/std HU and P(malignant), referencing its segment).
A NIfTI/NRRD/MetaImage input has no study or series to reference: no DICOM output for it.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment a CT and report its lesions (size, HU, malignancy probability)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", dest="input", required=True, help="CT file, DICOM series folder, or folder of cases")
    p.add_argument("-o", dest="output", required=True, help="output folder (batch mode: one sub-folder per case)")
    p.add_argument("-m", "--model-folder", dest="model_folder", required=True,
                   help="trained nnU-Net model folder: "
                   "nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>")
    p.add_argument("-f", dest="folds", nargs="+", default=None,
                   help="folds to ensemble (default: every fold_k that holds the checkpoint; fold_all if none)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name in each fold folder (default checkpoint_final.pth)")
    p.add_argument("--classifier", default=None, metavar="CHECKPOINT",
                   help="lesion classifier checkpoint from 'nnunet-liver classify train' "
                   "(fold_<k>/checkpoint_final.pt); without it the malignancy probability is left empty")
    p.add_argument("--crops", default=None, metavar="CROP_FOLDER",
                   help="crop folder the classifier was trained on, for its crops.json (default: <root>/crops beside "
                   "the classifier's run folder)")
    p.add_argument("--series", default=None, metavar="UID", help="DICOM series instance UID to read")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default cpu)")
    p.add_argument("--mirror", action="store_true",
                   help="test-time mirroring along the axes the checkpoint allows (off by default: up to 8x slower)")
    p.add_argument("--step-size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch size (default 0.5, nnU-Net's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all cores, as nnUNetv2_predict)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-dicom", action="store_true",
                   help="skip segmentation.dcm and findings_sr.dcm (written for DICOM input only)")
    p.add_argument("--num-parts", "-num_parts", dest="num_parts", type=int, default=1, metavar="N",
                   help="split a folder of cases into N parts (default 1; nnU-Net's -num_parts)")
    p.add_argument("--part-id", "-part_id", dest="part_id", type=int, default=0, metavar="K",
                   help="the part this process runs, 0..N-1 (default 0; nnU-Net's -part_id)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output folders (batch mode: finished cases are skipped without it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.io import OutputExistsError
    from nnunet_liver.inference.dicom_outputs import console_note
    from nnunet_liver.inference.inputs import InputError, discover_cases, select_part

    try:
        cases, batch, notes = discover_cases(args.input, series=args.series)
        if args.num_parts != 1 or args.part_id != 0:
            if not batch:
                raise InputError(f"{args.input}: --num-parts/--part-id split a folder of cases; this is one case")
            select_part(cases, args.num_parts, args.part_id)  # checks the numbers before anything else
    except InputError as e:
        raise UsageError(str(e)) from None
    out = args.output
    if batch:  # an output folder inside the input folder is not a case (on a rerun)
        cases = [c for c in cases if os.path.realpath(c.path) != os.path.realpath(out)]
        n_all = len(cases)
        cases = select_part(cases, args.num_parts, args.part_id)
        if args.num_parts > 1:
            notes.append(f"part {args.part_id} of {args.num_parts} (0..{args.num_parts - 1}): {len(cases)} of "
                         f"{n_all} case(s)")
    _refuse_output_over_inputs(cases, out, batch)
    if not batch and os.path.exists(out) and not args.overwrite:
        raise UsageError(f"{out} exists (use --overwrite to replace it)")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be positive, got {args.threads}")
    volume = None
    if not batch:  # a bad input is answered before the model loads
        from nnunet_liver.inference.inputs import read_case

        try:
            volume = read_case(cases[0])
        except InputError as e:
            raise UsageError(str(e)) from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    import torch

    from nnunet_liver.inference.classifier import ClassifierError, load_classifier
    from nnunet_liver.inference.pipeline import CasePredictor, summary_line
    from nnunet_liver.inference.postprocess import load_postprocessing
    from nnunet_liver.inference.segmentation import ModelError, load_segmentation_model

    if args.device == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    t0 = time.perf_counter()
    try:
        model = load_segmentation_model(args.model_folder, args.folds, args.checkpoint, device=args.device,
                                        mirror=args.mirror, step_size=args.step_size,
                                        progress=not args.no_progress and not batch)
        classifier = load_classifier(args.classifier, args.crops, device=args.device) if args.classifier else None
        postprocessing = load_postprocessing(model.folder, model.folds)
        predictor = CasePredictor(model, classifier, postprocessing, figures=not args.no_figures,
                                  load_seconds=time.perf_counter() - t0, dicom=not args.no_dicom)
    except (ModelError, ClassifierError) as e:
        raise UsageError(str(e)) from None
    for note in predictor.notes:
        print(f"note: {note}", file=sys.stderr)
    if postprocessing.source is not None:
        print(f"postprocessing: nnU-Net's {postprocessing.source}", file=sys.stderr)
    if args.mirror and model.predictor.allowed_mirroring_axes is None:
        print("note: --mirror: the checkpoint allows no mirroring axes; predicting without mirroring", file=sys.stderr)
    dicom_note = None if args.no_dicom else console_note(cases)  # after the checks: an error stays one line
    if dicom_note:
        print(f"note: {dicom_note}", file=sys.stderr)

    if not batch:
        t1 = time.perf_counter()
        try:
            findings = predictor.run(cases[0], out, overwrite=args.overwrite, volume=volume)
        except (InputError, OutputExistsError) as e:
            raise UsageError(str(e)) from None
        except PermissionError as e:
            raise UsageError(f"{e.filename or out}: cannot write there ({e.strerror})") from None
        print(summary_line(findings, out, time.perf_counter() - t1))
        for w in findings["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        return 0

    result = predictor.run_many(cases, out, overwrite=args.overwrite, progress=not args.no_progress)
    skipped = f", {len(result.skipped)} finished before (skipped)" if result.skipped else ""
    print(f"{len(result.done)} of {len(cases)} case(s) written to {out}{skipped}")
    if result.failed:
        print(f"{len(result.failed)} case(s) failed, nothing written for them:", file=sys.stderr)
        for name, message in result.failed.items():
            print(f"  {name}: {message}", file=sys.stderr)
        return 1
    return 0


def _refuse_output_over_inputs(cases, out: str, batch: bool) -> None:
    """An output folder that is, or holds, an input would be replaced by ``--overwrite``: refuse it."""
    from pathlib import Path

    from nnunet_liver.cli.main import UsageError

    targets = [Path(out) / c.name for c in cases] if batch else [Path(out)]
    for target in targets:
        t = Path(os.path.realpath(target))
        for c in cases:
            src = Path(os.path.realpath(c.path))
            if src == t or t in src.parents:
                raise UsageError(f"output folder {target} would hold the input {c.path}: choose an -o outside "
                                 "the input (inputs are never replaced)")
