"""``nnunet-liver convert lits|ircadb``: public liver-CT releases to nnU-Net raw data sets."""
from __future__ import annotations

import argparse
import os

LITS_DESCRIPTION = """\
Convert LiTS into Dataset<ID>_<name> under $nnUNet_raw (or -o). SRC holds volume-N.nii and
segmentation-N.nii (training) and test-volume-N.nii (test), .nii or .nii.gz, directly or in sub-folders
(Training Batch 1, Training Batch 2, ...). Case ids: lits_NNN (training, from volume-N) and lits_test_NNN
(imagesTs, from test-volume-N); case_mapping.json maps them back (submit uses it).

Voxels and geometry are copied unchanged; labels become uint8 0/1/2 (float-stored labels are accepted when
their values are exact integers). Every pair is checked first (partner present, same shape, spacing, origin,
direction); labels other than 0/1/2, NaN and unreadable files stop the run with exit code 2.

Cases are written one by one and moved into place when complete; dataset.json is written last. A re-run
skips the cases already converted from unchanged files (an interrupted run resumes); --overwrite rebuilds
the data set, replacing the old one only when the new one is complete. SRC is never written to.
"""

IRCADB_DESCRIPTION = """\
Convert 3D-IRCADb-01 into Dataset<ID>_<name> under $nnUNet_raw (or -o). SRC holds the patient folders
3Dircadb1.N (or is one), each with PATIENT_DICOM and MASKS_DICOM as folders or as zip files holding them.
Case ids: ircadb_NNN.

CT: the PATIENT_DICOM series (one series UID; slices sorted by position), HU and DICOM geometry (spacing,
origin, direction) kept. Masks (MASKS_DICOM/<structure>, one series each, same grid as the CT): liver;
tumours livertumor01, livertumor1, livertumors, ...; cysts livercyst, liverkyst, liverkyste (possibly
numbered); other structures are ignored. Labels: 1 liver = liver + tumour + cyst masks, 2 tumour = tumour
masks (and cyst masks with --cysts-as-tumour).

lesions.csv: one row per 3D connected component of every tumour and cyst mask: case_id, lesion_id (the
connected component of label 2 that holds it; empty for a cyst labelled liver), mask, mask_component, kind
(tumour/cyst), label (malignant/benign), segmentation_label (1/2), centroid in mm and voxels, volume_ml.

Re-runs, --overwrite and errors as in 'convert lits'. Zips are unpacked into a temporary folder beside the
output; SRC is never written to.
"""


def _common(p: argparse.ArgumentParser, dataset_id: int, name: str) -> None:
    p.add_argument("source", metavar="SRC", help="source folder")
    p.add_argument("-d", dest="dataset_id", type=int, default=dataset_id, help=f"dataset id (default {dataset_id})")
    p.add_argument("--name", default=name, help=f"dataset name (default {name})")
    p.add_argument("-o", dest="raw_root", default=None, help="raw data root (default: $nnUNet_raw)")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes, each holding one case (default min(2, cores))")
    p.add_argument("--overwrite", action="store_true", help="rebuild the data set even where cases are done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert LiTS or 3D-IRCADb into nnU-Net raw data sets",
                              description="Convert a public liver-CT release into an nnU-Net raw data set.")
    sub = p.add_subparsers(dest="source_kind", metavar="SOURCE")
    sub.required = True
    lits = sub.add_parser("lits", help="LiTS volume-N/segmentation-N/test-volume-N NIfTI files",
                          description=LITS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(lits, 501, "LiTS")
    lits.set_defaults(func=run)
    ircadb = sub.add_parser("ircadb", help="3D-IRCADb-01 DICOM patient folders",
                            description=IRCADB_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(ircadb, 502, "3DIRCADb")
    ircadb.add_argument("--cysts-as-tumour", action="store_true",
                        help="label cysts 2 (tumour) in the label maps; default 1 (liver)")
    ircadb.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError, check_num_processes, raw_root

    root = raw_root(args)
    check_num_processes(args)
    options = dict(dataset_id=args.dataset_id, name=args.name, overwrite=args.overwrite,
                   num_processes=args.num_processes, progress=not args.no_progress)
    try:
        if args.source_kind == "lits":
            from nnunet_liver.data.converters.lits import convert_lits

            result = convert_lits(args.source, root, **options)
        else:
            from nnunet_liver.data.converters.ircadb import convert_ircadb

            result = convert_ircadb(args.source, root, cysts_as_tumour=args.cysts_as_tumour, **options)
    except (ValueError, FileExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    print(f"{result.folder}: {len(result.converted)} case(s) converted, {len(result.skipped)} already done")
    return 0
