"""``nnunet-liver splits``: nnU-Net's splits_final.json with every patient (and every copy of a scan) in one fold."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Write splits_final.json (nnU-Net's format: 5 folds of {"train": [...], "val": [...]}) for raw data set
Dataset<ID> into $nnUNet_preprocessed/Dataset<ID>_<name>/ (or -o), where stock nnUNetv2_train reads it.
Cases that belong together never sit on both sides of a fold: the groups a merged data set records
(copies of one scan kept with merge --keep-duplicates, patients) and cases sharing a patient_id (in
case_mapping.json records or a lesions.csv column). `nnunet-liver merge` writes the same file itself; this
command redoes it, e.g. for a data set that was not merged or after adding patient ids. An existing
different file is refused unless --overwrite.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("splits", help="patient-grouped 5-fold splits_final.json for nnU-Net",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="raw data set id")
    p.add_argument("--raw", dest="raw_root", default=None, help="raw data root (default: $nnUNet_raw)")
    p.add_argument("-o", dest="preprocessed", default=None,
                   help="preprocessed root (default: $nnUNet_preprocessed)")
    p.add_argument("--overwrite", action="store_true", help="replace a different splits_final.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.io import datasets_with_id
    from nnunet_liver.data.splits import (
        SPLITS_FILE,
        SplitsError,
        dataset_groups,
        grouped_folds,
        training_cases,
        union_groups,
        write_splits,
    )

    raw = args.raw_root or os.environ.get("nnUNet_raw")
    pre = args.preprocessed or os.environ.get("nnUNet_preprocessed")
    if not raw or not pre:
        raise UsageError("no raw or preprocessed root: pass --raw and -o, or set nnUNet_raw and nnUNet_preprocessed")
    found = datasets_with_id(raw, args.dataset_id)
    if len(found) != 1:
        raise UsageError(f"dataset {args.dataset_id}: {'not found' if not found else 'ambiguous'} in {raw}")
    dataset = found[0]
    try:
        groups = dataset_groups(dataset)
        cases = training_cases(dataset)
        splits = grouped_folds(cases, groups)
        path = os.path.join(pre, dataset.name, SPLITS_FILE)
        changed = write_splits(path, splits, overwrite=args.overwrite)
    except (SplitsError, FileExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    sizes = ", ".join(str(len(f["val"])) for f in splits)
    joined = sum(1 for g in union_groups(cases, groups) if len(g) > 1)
    print(f"{path}: {'written' if changed else 'unchanged'}; {len(splits)} folds of {sizes} validation case(s); "
          f"{joined} group(s) of cases kept together")
    return 0
