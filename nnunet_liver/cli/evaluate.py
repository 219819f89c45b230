"""``nnunet-liver evaluate``: LiTS metrics of a prediction folder, optionally compared with another one."""
from __future__ import annotations

import argparse
import os

OUTPUTS = ("summary.json", "per_case.csv", "summary.md")
COMPARE_OUTPUTS = ("comparison.json", "comparison.md")
HEADERS = dict(dice="Dice", iou="IoU", sensitivity="sensitivity", specificity="specificity", voe="VOE", rvd="RVD",
               assd="ASSD", rmsd="RMSD", msd="MSD (Hausdorff)", hd95="HD95")

DESCRIPTION = """\
LiTS metrics (as the official CodaLab scorer) of the predictions in PRED_DIR against the references in
REF_DIR. Files are matched by case name: REF_DIR/x.nii(.gz) with PRED_DIR/x.nii(.gz); a reference without
a prediction is an error unless --chill. Liver = every label >= 1, tumour = label 2 (see --labels).

Per case and structure: Dice, IoU, sensitivity, specificity, VOE, RVD, and ASSD, RMSD, MSD (Hausdorff),
HD95 in mm with the reference spacing. Data set: per-case and global Dice, lesion detection precision and
recall at IoU > 0 and IoU > 0.5 (3D connected components, face connectivity), metrics of the lesions
detected at IoU > 0.5, tumour-burden RMSE and maximum absolute error. Empty reference and prediction: Dice 1,
distances 0; one side empty: distances NaN (written as null / nan), left out of the means and counted.

Writes summary.json, per_case.csv and summary.md to OUT_DIR (default PRED_DIR).

--compare OTHER: also evaluates OTHER (a prediction folder, with the same options, or the summary.json of an
earlier run) and writes comparison.json and comparison.md: per metric, paired t-test and Wilcoxon
signed-rank test over the common cases, differences PRED_DIR - OTHER, NaN pairs dropped and counted.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="LiTS liver/tumour metrics of a prediction folder (optionally a paired comparison)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ref_dir", metavar="REF_DIR", help="reference label files (.nii.gz / .nii)")
    p.add_argument("pred_dir", metavar="PRED_DIR", help="predicted label files, same case names")
    p.add_argument("-o", dest="out_dir", default=None, help="output folder (default: PRED_DIR)")
    p.add_argument("--labels", type=int, nargs=2, default=(1, 2), metavar=("LIVER", "TUMOUR"),
                   help="label values of liver and tumour in both folders (default 1 2); any other "
                   "non-zero value is an error")
    p.add_argument("-np", dest="num_processes", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="worker processes, each holding one case pair (~1.5 GB for a 512x512x500 scan; "
                   "default min(2, cores))")
    p.add_argument("--chill", action="store_true", help="evaluate only the cases that have a prediction")
    p.add_argument("--compare", metavar="OTHER", default=None,
                   help="second prediction folder, or summary.json of an earlier run, to compare with")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from nnunet_liver.cli.main import UsageError, check_num_processes
    from nnunet_liver.evaluation import compare, lits

    for label, folder in (("REF_DIR", args.ref_dir), ("PRED_DIR", args.pred_dir)):
        if not os.path.isdir(folder):
            raise UsageError(f"{label} {folder} is not a folder")
    check_num_processes(args)
    liver, tumour = args.labels
    if liver == tumour or not (0 < liver < 256 and 0 < tumour < 256):
        raise UsageError(f"--labels needs two different values in 1..255, got {liver} {tumour}")
    out_dir = args.out_dir or args.pred_dir
    names = OUTPUTS + (COMPARE_OUTPUTS if args.compare else ())
    existing = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
    if existing and not args.overwrite:
        raise UsageError(f"{out_dir} already holds {', '.join(existing)} (--overwrite to replace)")
    if args.compare and not os.path.exists(args.compare):
        raise UsageError(f"--compare: {args.compare} does not exist")

    options = dict(labels=(liver, tumour), chill=args.chill, num_processes=args.num_processes,
                   progress=not args.no_progress)
    try:
        summary = lits.evaluate_folders(args.ref_dir, args.pred_dir, **options)
        other = None
        if args.compare:
            if os.path.isdir(args.compare):
                other = lits.evaluate_folders(args.ref_dir, args.compare, **options)
            else:
                with open(args.compare, encoding="utf-8") as f:
                    other = json.load(f)
                if "cases" not in other:
                    raise UsageError(f"--compare: {args.compare} is not a summary.json of nnunet-liver evaluate")
    except lits.EvaluationInputError as e:
        raise UsageError(str(e)) from None

    for s in (summary,) if other is None else (summary, other):
        for message in s.get("warnings", ()):
            print(f"warning: {message}", file=sys.stderr)
        if s.get("missing_predictions"):
            print(f"warning: {s['prediction_dir']}: {len(s['missing_predictions'])} reference case(s) without "
                  f"prediction skipped (--chill): {', '.join(s['missing_predictions'])}", file=sys.stderr)
    files = {
        "summary.json": _json_text(summary),
        "per_case.csv": per_case_csv(summary),
        "summary.md": summary_markdown(summary),
    }
    if other is not None:
        comparison = compare.compare_summaries(summary, other)
        comparison["b_aggregate"] = other.get("aggregate")
        files["comparison.json"] = _json_text(comparison)
        files["comparison.md"] = compare.comparison_markdown(comparison)
    try:
        _write_all(out_dir, files, overwrite=args.overwrite)
    except FileExistsError as e:
        raise UsageError(str(e)) from None
    agg = summary["aggregate"]
    det = agg["lesion_detection"].get("iou>0.5", {})
    print(f"{agg['n_cases']} cases: liver Dice {agg['liver']['dice_per_case']:.4f} per case, "
          f"{agg['liver']['dice_global']:.4f} global; tumour Dice {agg['tumour']['dice_per_case']:.4f} per case, "
          f"{agg['tumour']['dice_global']:.4f} global; lesion precision {det.get('precision', float('nan')):.3f} "
          f"recall {det.get('recall', float('nan')):.3f} (IoU > 0.5)")
    print(f"wrote {', '.join(files)} to {out_dir}")
    return 0


def _json_text(obj) -> str:
    import json

    from nnunet_liver.data.io import json_safe

    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def per_case_csv(summary) -> str:
    """``per_case.csv``: one row per case (``lits.flatten_case``), NaN written as ``nan``."""
    import csv
    import io

    from nnunet_liver.evaluation.lits import flatten_case

    rows = [{"case": c, **flatten_case(v)} for c, v in summary["cases"].items()]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _f(x, digits: int = 4) -> str:
    import math

    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list], align_first_left: bool = True) -> list[str]:
    rule = ["---" if i == 0 and align_first_left else "---:" for i in range(len(header))]
    return ["| " + " | ".join(map(str, r)) + " |" for r in [header, rule, *rows]]


def summary_markdown(summary) -> str:
    """``summary.md``: aggregate tables and a per-case table."""
    from nnunet_liver.evaluation.lits import STRUCTURE_METRICS, STRUCTURES

    agg = summary["aggregate"]
    lines = ["# LiTS evaluation", "",
             f"Reference: `{summary['reference_dir']}`  ", f"Prediction: `{summary['prediction_dir']}`  ",
             f"Cases: {agg['n_cases']}; missing predictions: {len(summary['missing_predictions'])}", "",
             "## Segmentation", "",
             "Mean over cases; [k]: k cases where the metric is undefined (one side empty), left out. "
             "Distances in mm.", ""]
    rows = []
    for s in STRUCTURES:
        cells = [s, _f(agg[s]["dice_per_case"]), _f(agg[s]["dice_global"])]
        for m in STRUCTURE_METRICS[1:]:
            st = agg[s]["metrics"][m]
            cells.append(_f(st["mean"]) + (f" [{st['n_nan']}]" if st["n_nan"] else ""))
        rows.append(cells)
    lines += _table(["structure", "Dice per case", "Dice global"] + [HEADERS[m] for m in STRUCTURE_METRICS[1:]],
                    rows)
    lines += ["", "## Lesion detection (summed over cases)", ""]
    lines += _table(["IoU", "TP", "FP", "FN", "precision", "recall", "F1"],
                    [[key.replace("iou", ""), d["tp"], d["fp"], d["fn"], _f(d["precision"]), _f(d["recall"]),
                      _f(d["f1"])] for key, d in agg["lesion_detection"].items()])
    ls = agg["lesion_segmentation"]
    lines += ["", f"## Detected lesions (IoU > 0.5): {ls['n_lesions']}", ""]
    lines += _table([HEADERS[m] for m in ls["metrics"]], [[_f(v["mean"]) for v in ls["metrics"].values()]],
                    align_first_left=False)
    tb = agg["tumour_burden"]
    lines += ["", "## Tumour burden (tumour / liver volume)", ""]
    lines += _table(["RMSE", "max abs error", "cases", "undefined"],
                    [[_f(tb["rmse"]), _f(tb["max_abs_error"]), tb["n"], tb["n_undefined"]]], align_first_left=False)
    lines += ["", "## Per case", ""]
    rows = []
    for c, v in summary["cases"].items():
        det = v["lesions"]["detection"].get("iou>0.5", {"tp": "-", "fp": "-", "fn": "-"})
        rows.append([c, _f(v["liver"]["dice"]), _f(v["liver"]["hd95"], 2), _f(v["tumour"]["dice"]),
                     _f(v["tumour"]["hd95"], 2), f"{v['lesions']['n_reference']}/{v['lesions']['n_prediction']}",
                     f"{det['tp']}/{det['fp']}/{det['fn']}", _f(v["tumour_burden"]["error"])])
    lines += _table(["case", "liver Dice", "liver HD95", "tumour Dice", "tumour HD95", "lesions ref/pred",
                     "TP/FP/FN IoU>0.5", "burden error"], rows)
    return "\n".join(lines) + "\n"


def _write_all(out_dir: str, files: dict[str, str], *, overwrite: bool) -> None:
    """Write every file under a temporary name, then move them all into place."""
    os.makedirs(out_dir, exist_ok=True)
    staged = []
    try:
        for name, text in files.items():
            tmp = os.path.join(out_dir, f".{name}.tmp-{os.getpid()}")
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            staged.append((tmp, os.path.join(out_dir, name)))
        for tmp, final in staged:
            if os.path.exists(final) and not overwrite:  # appeared while we were evaluating
                raise FileExistsError(f"{final} appeared during the evaluation; nothing replaced")
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
