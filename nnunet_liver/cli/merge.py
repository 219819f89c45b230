"""``nnunet-liver merge``: one raw data set from several, near-duplicates found, folds that keep patients whole."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Merge nnU-Net raw liver data sets (one CT channel, labels 0/1/2, .nii.gz) into Dataset<ID>_<name> under
$nnUNet_raw (or -o). Sources are data set ids, folder names in the raw root, or paths.

Case ids become <source name>_<case id> (LiTS_lits_003). The same scan stored twice is found even when
re-exported (LiTS holds the 3D-IRCADb patients, converted in its own orientation and data type): flipped
or permuted axes (read from the direction matrix, and also tried on the array in case a header lies),
another data type, a constant HU offset, a few slices cropped or padded, resampling or noise. Each image
is fingerprinted once (cached in the merged data set), every pair is scored from the fingerprints, and
pairs scoring at least 0.9 are compared voxel by voxel after alignment (an NCC of at least 0.7 between
their 8 mm detail makes a duplicate). The first copy, in the order given, is kept (a labelled training
copy before an unlabelled test copy) and the others dropped (--keep-duplicates keeps them, grouped);
each other copy is printed and listed in duplicates.csv with its evidence: scores, header and array
flips, z shift, HU offset, label Dice after alignment (labels that differ: check which to trust).

Folds: splits_final.json (nnU-Net's format, 5 folds) is written into the merged data set (nnU-Net's
planner copies it) and into $nnUNet_preprocessed/Dataset<ID>_<name>/ (or --preprocessed), so that stock
nnUNetv2_train uses it: copies of one scan and cases of one patient (a patient_id in a source's
case_mapping.json or lesions.csv) never sit on both sides of a fold. An existing different splits file
there is refused unless --overwrite. lesions.csv tables of the sources are concatenated.

Re-runs skip finished cases; --overwrite rebuilds. The sources are never written to.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge raw data sets into one: near-duplicates found, patient-safe folds",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="DATASET", help="data set id, folder name or path (two or more)")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="id of the merged data set")
    p.add_argument("--name", default=None, help="name of the merged data set (default: the source names joined "
                   "by '_')")
    p.add_argument("-o", dest="raw_root", default=None, help="raw data root (default: $nnUNet_raw)")
    p.add_argument("--preprocessed", default=None, metavar="DIR",
                   help="nnU-Net preprocessed root that receives splits_final.json (default: $nnUNet_preprocessed; "
                   "without either, only the merged raw data set holds it)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep every copy of a scan (grouped in one fold) instead of dropping the later ones")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes for fingerprints and copying (default min(2, cores))")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the merged data set and replace a different splits_final.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def describe(d: dict) -> str:
    """One line of evidence for a duplicates.csv row."""
    shift = float(d["z_shift_slices"])
    parts = [f"score {float(d['score']):.3f}", f"detail NCC {float(d['detail_ncc']):.3f}",
             f"voxel NCC {float(d['voxel_ncc']):.3f}", f"header: {d['header']}",
             f"array flips: {d['array_flips']}",
             f"z shift {shift:+g} slice(s)" if shift else "no z shift"]
    if abs(float(d["hu_offset"])) >= 0.5:
        parts.append(f"HU offset {float(d['hu_offset']):+.1f}")
    text = "; ".join(parts)
    if d["same_label"] == "True":
        text += "; same label"
    elif d["same_label"] == "False":
        text += (f"; LABELS DIFFER: liver Dice {float(d['label_dice_liver']):.3f}, tumour Dice "
                 f"{float(d['label_dice_tumour']):.3f}, tumour {d['tumour_ml_kept']} ml in {d['duplicate_of']} vs "
                 f"{d['tumour_ml_duplicate']} ml here (check which annotation to trust: the merged data set uses "
                 f"{d['duplicate_of']}'s; give the sources in the other order to keep this one)")
    return text


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError, check_num_processes, raw_root
    from nnunet_liver.data.merge import merge_datasets

    root = raw_root(args)
    if len(args.sources) < 2:
        raise UsageError("merge needs two or more data sets")
    check_num_processes(args)
    preprocessed = args.preprocessed or os.environ.get("nnUNet_preprocessed") or None
    try:
        result = merge_datasets(root, args.sources, dataset_id=args.dataset_id, name=args.name,
                                keep_duplicates=args.keep_duplicates, preprocessed_root=preprocessed,
                                overwrite=args.overwrite, num_processes=args.num_processes,
                                progress=not args.no_progress)
    except (ValueError, FileExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    for d in result.duplicates:
        print(f"duplicate: {d['source_dataset']}/{d['source_case']} = {d['duplicate_of']} ({d['action']}): "
              f"{describe(d)}")
    kept = "kept" if args.keep_duplicates else "dropped"
    print(f"{result.folder}: {len(result.records)} case(s) ({len(result.converted)} copied, "
          f"{len(result.skipped)} already done), {len(result.duplicates)} duplicate(s) {kept}")
    for path in result.split_files or ():
        print(f"folds: {path}")
    for note in result.notes or ():
        print(f"note: {note}")
    return 0
