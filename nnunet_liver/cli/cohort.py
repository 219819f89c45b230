"""``nnunet-liver cohort``: one lesion table and one case table from a batch ``predict`` output folder."""
from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Merges the findings of 'nnunet-liver predict -i CASES -o PRED_DIR' (one run, or N runs with --num-parts N
--part-id K writing into the same PRED_DIR, or PRED_DIR folders copied together) into two CSV tables:

  -o cohort.csv        one row per lesion: case, liver_volume_ml, tumour_volume_ml, tumour_burden (tumour /
                       liver volume), n_lesions, then the lesion's columns as in lesions.csv (lesion_id,
                       centroids, volume_ml, axial_diameter_mm, mean/std HU, malignancy_prob, small); a case
                       without lesions has one row with the lesion columns empty
  cohort_cases.csv     (beside it) one row per case: lesion counts (all, small, P(malignant) >= 0.5), volumes,
                       tumour burden, largest axial diameter, input, model, number of warnings

Only finished cases (PRED_DIR/<case>/findings.json) are read. With -i CASES, every case of the input
folder must be finished (exit 2 naming the missing ones, nothing written) unless --partial.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cohort", help="merge a batch predict folder (all parts) into cohort CSV tables",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred_dir", metavar="PRED_DIR", help="output folder of nnunet-liver predict (batch mode)")
    p.add_argument("-o", dest="output", required=True, metavar="CSV", help="lesion table to write (cohort.csv)")
    p.add_argument("-i", dest="input", default=None, metavar="CASES",
                   help="the input folder given to predict: check that every case is finished")
    p.add_argument("--partial", action="store_true", help="with -i: write the tables although cases are missing")
    p.add_argument("--overwrite", action="store_true", help="replace existing tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.io import OutputExistsError
    from nnunet_liver.inference.cohort import CohortError, collect, write_cohort
    from nnunet_liver.inference.inputs import InputError, discover_cases

    expected = None
    if args.input is not None:
        try:
            cases, batch, _ = discover_cases(args.input)
        except InputError as e:
            raise UsageError(str(e)) from None
        if not batch:
            raise UsageError(f"-i {args.input}: a single case; -i takes the folder of cases given to predict")
        expected = [c.name for c in cases if os.path.realpath(c.path) != os.path.realpath(args.pred_dir)]
    try:
        cohort = collect(args.pred_dir, expected)
        if cohort.missing and not args.partial:
            shown = ", ".join(cohort.missing[:10]) + (f" and {len(cohort.missing) - 10} more"
                                                      if len(cohort.missing) > 10 else "")
            raise UsageError(f"{args.pred_dir}: {len(cohort.missing)} of {len(expected)} case(s) of {args.input} "
                             f"are not finished: {shown} (run the missing parts, or --partial)")
        lesions_csv, cases_csv = write_cohort(cohort, args.output, overwrite=args.overwrite)
    except (CohortError, OutputExistsError) as e:
        raise UsageError(str(e)) from None
    n_lesions = sum(len(f["lesions"]) for f in cohort.findings.values())
    print(f"{len(cohort.findings)} case(s), {n_lesions} lesion(s) -> {lesions_csv}, {cases_csv}")
    if cohort.missing:
        print(f"warning: {len(cohort.missing)} case(s) not finished: {', '.join(cohort.missing[:10])}",
              file=sys.stderr)
    if cohort.partial:
        print(f"note: {len(cohort.partial)} case(s) being written or interrupted (hidden .partial folders) were "
              f"not read", file=sys.stderr)
    return 0
