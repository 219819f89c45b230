"""``nnunet-liver report``: the paper's tables and figures as one HTML page and markdown, from results.json."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Render the report of a results manifest (results.json, written by `nnunet-liver demo` or by hand): Table 1
(liver and tumour Dice, IoU, sensitivity, specificity, mean +/- std over test cases, paired t-test and
Wilcoxon p-values vs the reference model), the ablation table, Table 2 (lesion classification), Figures 3-7,
the cost table, "Phantom to real: one real CT" (liver and tumour Dice of one real CT against its reference
mask, the liver Dice >= 0.85 target, contour figure), and a statement of the data and training budget behind
the numbers. Sections whose inputs are missing are named in the report with the command that produces them.

Writes OUT_DIR/report.html (self-contained: figures embedded, no external requests), OUT_DIR/report.md with
OUT_DIR/figures/*.png, and OUT_DIR/report_data.json (every number of the tables). The folder is built
under a temporary name and moved into place when complete.

results.json (paths relative to its folder; every section but "format" optional):
  {"format": "nnunet_liver.results/1", "title": "...",
   "provenance": {"data", "budget", "device", "machine", "created", "synthetic": true|false, "command"},
   "dataset": {"images": "imagesTs", "labels": "labelsTs"},
   "segmentation": {"reference": "LABEL", "cost_baseline": "LABEL",
                    "models": [{"label", "group": "table1"|"ablation", "trainer", "configuration",
                                "predictions": "folder", "evaluation": "summary.json of nnunet-liver evaluate",
                                "cost": {"params", "flops_per_voxel", "patch_size", "seconds_per_case",
                                         "train_seconds", "iterations"}}]},
   "classification": {"evaluation": "folder of nnunet-liver classify evaluate", "preset": "cpu"},
   "real_ct": {"label", "model", "model_folder", "image": "CT", "reference": "label", "prediction": "label",
               "evaluation": "summary.json of nnunet-liver evaluate, one case"}}
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="render the paper's tables and figures (HTML + markdown) from a results.json",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", metavar="RESULTS", help="results.json, or the folder holding it")
    p.add_argument("-o", dest="out_dir", default=None, help="output folder (default: <RESULTS folder>/report)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_liver.cli.main import UsageError
    from nnunet_liver.data.io import OutputExistsError
    from nnunet_liver.evaluation.report import ManifestError, build_report

    try:
        result = build_report(args.results, args.out_dir, overwrite=args.overwrite)
    except (ManifestError, OutputExistsError, PermissionError) as e:
        raise UsageError(str(e)) from None
    for m in result.missing:
        print(f"note: {m['message']}")
    print(f"wrote report.html, report.md, report_data.json and figures/ to {result.out_dir}")
    return 0
