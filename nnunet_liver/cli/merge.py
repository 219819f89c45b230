"""``nnunet-liver merge``: one raw data set from several, exact duplicates removed."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Merge nnU-Net raw liver data sets (one CT channel, labels 0/1/2, .nii.gz) into Dataset<ID>_<name> under
$nnUNet_raw (or -o). Sources are data set ids, folder names in the raw root, or paths.

Case ids become <source name>_<case id> (LiTS_lits_003). Images with the same voxel values, shape and
spacing are duplicates (3D-IRCADb is reported to be inside LiTS; only exact copies are found): the first,
in the order given, is kept; each dropped case is printed and listed in duplicates.csv with the case it
duplicates and whether the labels agree. lesions.csv tables of the sources are concatenated.

Re-runs skip finished cases; --overwrite rebuilds. The sources are never written to.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge raw data sets into one, dropping exact duplicates",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="DATASET", help="data set id, folder name or path (two or more)")
    p.add_argument("-d", dest="dataset_id", type=int, required=True, help="id of the merged data set")
    p.add_argument("--name", default=None, help="name of the merged data set (default: the source names joined "
                   "by '_')")
    p.add_argument("-o", dest="raw_root", default=None, help="raw data root (default: $nnUNet_raw)")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes for copying (default min(2, cores))")
    p.add_argument("--overwrite", action="store_true", help="rebuild the merged data set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError, check_num_processes, raw_root
    from nnunet_liver.data.merge import merge_datasets

    root = raw_root(args)
    if len(args.sources) < 2:
        raise UsageError("merge needs two or more data sets")
    check_num_processes(args)
    try:
        result = merge_datasets(root, args.sources, dataset_id=args.dataset_id, name=args.name,
                                overwrite=args.overwrite, num_processes=args.num_processes,
                                progress=not args.no_progress)
    except (ValueError, FileExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    for d in result.duplicates:
        agree = {"True": ", same label", "False": ", labels differ"}.get(d["same_label"], "")
        print(f"duplicate: {d['source_dataset']}/{d['source_case']} = {d['duplicate_of']}{agree} (dropped)")
    print(f"{result.folder}: {len(result.records)} case(s) ({len(result.converted)} copied, "
          f"{len(result.skipped)} already done), {len(result.duplicates)} duplicate(s) dropped")
    return 0
