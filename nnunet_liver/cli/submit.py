"""``nnunet-liver submit``: LiTS challenge submission zip from predictions, or a check of an existing one."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Build a LiTS submission: for every test-volume-N.nii(.gz) in --test-images, the prediction in PRED_DIR
becomes test-segmentation-N.nii (uncompressed NIfTI, uint8, labels 0/1/2, with the test volume's shape,
spacing, origin and direction, verified file by file), all at the top of one zip (-o). Predictions are
named test-volume-N / test-segmentation-N (.nii or .nii.gz), or by converted case id (lits_test_007) with
--mapping pointing at the converted data set (or its case_mapping.json). Every test volume needs a
prediction. The zip's entries are deflated unless --store; the NIfTI files in it are plain .nii.

--check ZIP: validate an existing submission against --test-images instead, print every problem (missing
or extra files, folders in the zip, compressed files, wrong voxel type, labels outside 0/1/2, shape or
geometry different from the test volume) and exit with 2 if there is any.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("submit", help="LiTS submission zip from predictions (or --check an existing one)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred_dir", nargs="?", metavar="PRED_DIR", help="predicted label files")
    p.add_argument("--test-images", required=True, metavar="DIR", help="folder with the test-volume-N.nii files")
    p.add_argument("-o", dest="output", metavar="ZIP", help="submission zip to write")
    p.add_argument("--mapping", metavar="PATH", help="converted data set folder, or its case_mapping.json, to "
                   "map case ids back to test-volume numbers")
    p.add_argument("--keep-largest-liver", action="store_true",
                   help="keep only the largest connected component of labels >= 1 (tumour outside it dropped)")
    p.add_argument("--store", action="store_true", help="store the zip entries without deflating them")
    p.add_argument("--check", metavar="ZIP", help="validate this submission zip instead of writing one")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes (default min(2, cores))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from nnunet_liver.cli.main import UsageError, check_num_processes
    from nnunet_liver.data import submission

    try:
        if args.check:
            if args.pred_dir or args.output:
                raise UsageError("--check takes no PRED_DIR or -o")
            if not os.path.isfile(args.check):
                raise UsageError(f"--check: {args.check} is not a file")
            problems = submission.check_submission(args.check, args.test_images)
            for line in problems:
                print(line)
            if problems:
                print(f"nnunet-liver submit: error: {args.check}: {len(problems)} problem(s)", file=sys.stderr)
                return 2
            print(f"{args.check}: valid ({len(submission.list_test_volumes(args.test_images))} segmentations)")
            return 0
        if not args.pred_dir or not args.output:
            raise UsageError("PRED_DIR and -o ZIP are needed (or --check ZIP)")
        check_num_processes(args)
        names = submission.write_submission(
            args.pred_dir, args.test_images, args.output, mapping=args.mapping,
            largest_liver=args.keep_largest_liver, compress=not args.store, overwrite=args.overwrite,
            num_processes=args.num_processes, progress=not args.no_progress)
    except (ValueError, FileExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {args.output}: {len(names)} segmentation(s)")
    return 0
