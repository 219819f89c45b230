"""Assemble the report: numbers (``tables``), figures (``figures``), blocks (``render``), and write them.

Outputs, in a folder built under a temporary name and moved into place when complete:

- ``report.html``: one self-contained page (inline CSS, figures as data URIs, no external requests);
- ``report.md`` with the figures in ``figures/``;
- ``report_data.json``: every number printed in the tables (full precision), what each figure shows, the
  sections that are missing and the command that produces each, and the inputs.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_liver.evaluation.report import figures as figs
from nnunet_liver.evaluation.report import tables
from nnunet_liver.evaluation.report.manifest import Manifest, ManifestError, load_manifest
from nnunet_liver.evaluation.report.render import (
    Cell,
    Figure,
    Heading,
    ListBlock,
    Note,
    Para,
    Table,
    to_html,
    to_markdown,
)

DATA_FORMAT = "nnunet_liver.report_data/1"
OUTPUTS = ("report.html", "report.md", "report_data.json", "figures")
FIGURE_FILES = dict(figure3="figure3_qualitative.png", figure4="figure4_segmentation_metrics.png",
                    figure5="figure5_attention.png", figure6="figure6_classification_metrics.png",
                    figure7="figure7_roc.png", real_ct="real_ct_contours.png")
SEG_HEADERS = dict(dice="Dice", iou="IoU", sensitivity="Sensitivity", specificity="Specificity")
CLS_HEADERS = dict(accuracy="Accuracy", sensitivity="Sensitivity", specificity="Specificity", auc="AUC", ppv="PPV",
                   f1="F1")

COMMANDS = dict(
    segmentation="`nnUNetv2_predict -i IMAGES -o PRED -d DATASET -c CONFIGURATION -tr TRAINER`, then "
                 "`nnunet-liver evaluate LABELS PRED -o EVAL`, and list each model under `segmentation.models` "
                 "in results.json (`nnunet-liver demo` does all of it)",
    ablation="train, predict and evaluate `DualStreamAblationBaseTrainer`, `DualStreamAblationRWATrainer`, "
             "`DualStreamAblationRWAAttTrainer` and `DualStreamTrainer` (`nnUNetv2_train`, `nnUNetv2_predict`, "
             "`nnunet-liver evaluate`), then list them in that order with `\"group\": \"ablation\"`",
    classification="`nnunet-liver classify extract -d DATASET`, `nnunet-liver classify train -m MODEL -f all` "
                    "for each model, `nnunet-liver classify evaluate`, then set `classification.evaluation` "
                    "in results.json",
    attention="`nnunet-liver classify evaluate` (without `--no-attention`; needs a finished hybrid3d fold)",
    roc="`nnunet-liver classify evaluate` (writes roc.png)",
    dataset="set `dataset.images` (the test CTs, <case>_0000.nii.gz) and `dataset.labels` in results.json",
    predictions="`nnUNetv2_predict -i IMAGES -o PRED ...` and set `segmentation.models[].predictions`",
    cost="set `segmentation.models[].cost` in results.json (`nnunet-liver demo` measures parameters, "
         "FLOPs per voxel and time per case)",
    provenance="`nnunet-liver demo` writes it; for your own runs add a `provenance` section to results.json",
    real_ct="`nnunet-liver predict -i CT -o PRED -m MODEL_FOLDER -f 0` on a real CT with a reference mask, "
            "`nnunet-liver evaluate REF_DIR PRED_DIR -o EVAL` (the label and the prediction under the same case "
            "name), then set `real_ct` in results.json (`nnunet-liver demo` does it for the carried "
            "crlm_liver_ct)",
)


# --------------------------------------------------------------------------------------------------------
# Number formats (tests format the inputs with these functions and look for the text in the page)


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def fmt_num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if _finite(v) else "n/a"


def fmt_mean_std(stat: dict, digits: int = 3) -> str:
    if not _finite(stat.get("mean")):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {fmt_num(stat.get('std'), digits)}"


def fmt_p(p) -> str:
    if not _finite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_delta(v, digits: int = 3) -> str:
    return f"{v:+.{digits}f}" if _finite(v) else "n/a"


def fmt_int(v) -> str:
    return f"{int(round(v)):,}" if _finite(v) else "n/a"


def fmt_si(v) -> str:
    """3 significant digits with k, M, G, T."""
    if not _finite(v):
        return "n/a"
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= factor:
            return f"{v / factor:.3g} {unit}"
    return f"{v:.3g}"


def fmt_seconds(v) -> str:
    if not _finite(v):
        return "n/a"
    return f"{v:.2f} s" if v < 10 else f"{v:.1f} s" if v < 1000 else f"{v:,.0f} s"


def fmt_ratio(v) -> str:
    return f"{v:.2f}×" if _finite(v) else "n/a"


def fmt_ci(value, ci, digits: int = 3) -> str:
    lo, hi = (ci or (None, None))[:2]
    return f"{fmt_num(value, digits)} [{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"


# --------------------------------------------------------------------------------------------------------


@dataclass
class ReportResult:
    out_dir: Path
    data: dict
    missing: list[dict]


class _Builder:
    def __init__(self, manifest: Manifest, figure_dir: Path):
        self.m = manifest
        self.figure_dir = figure_dir
        self.blocks: list = []
        self.toc: list[tuple[str, str]] = []
        self.missing: list[dict] = []
        self.data: dict[str, Any] = {"format": DATA_FORMAT, "figures": {}}

    # helpers
    def rel(self, p: Path | str | None) -> str:
        if p is None:
            return "n/a"
        p = Path(p)
        try:
            return os.path.relpath(p, self.m.folder) if p.resolve().is_relative_to(self.m.folder) else str(p)
        except ValueError:
            return str(p)

    def note_missing(self, section: str, text: str, command: str) -> None:
        self.missing.append(dict(section=section, message=text, command=command))
        self.blocks.append(Note("missing", text, command))

    def heading(self, level: int, text: str, anchor: str, toc: str | None = None) -> None:
        self.blocks.append(Heading(level, text, anchor))
        if toc:
            self.toc.append((anchor, toc))

    def figure(self, key: str, caption: str, alt: str) -> Path:
        path = self.figure_dir / FIGURE_FILES[key]
        self.blocks.append(Figure(f"{key}-image", caption, path, alt))
        return path

    # sections
    def provenance(self) -> None:
        prov = self.m.provenance
        self.data["provenance"] = prov
        if prov is None:
            self.note_missing("provenance", "results.json has no provenance: nothing says which data and which "
                              "training budget produced these numbers, so treat them as unverified.",
                              COMMANDS["provenance"])
            return
        if prov.get("synthetic"):
            self.blocks.append(Note(
                "synthetic", "**Demo numbers on synthetic phantoms, not LiTS results.** Every number and figure "
                "below comes from computer-generated liver phantoms and a short training budget. They show that "
                "the pipeline runs end to end; they say nothing about how well these methods segment or classify "
                "real CT, and must not be compared with the paper's Tables 1 and 2."))
        parts = []
        if prov.get("data"):
            parts.append(f"**Data:** {prov['data']}.")
        if prov.get("budget"):
            parts.append(f"**Training budget:** {prov['budget']}.")
        if prov.get("postprocessing"):
            parts.append(f"**Post-processing:** {prov['postprocessing']}.")
        device = prov.get("device")
        machine = prov.get("machine")
        if isinstance(machine, dict):
            machine = ", ".join(f"{k} {v}" for k, v in machine.items())
        if device or machine:
            parts.append("**Device:** " + " ".join(x for x in (device, f"({machine})" if machine and device else
                                                                 machine) if x) + ".")
        if prov.get("created"):
            parts.append(f"**Created:** {prov['created']}.")
        if prov.get("command"):
            parts.append(f"**Command:** `{prov['command']}`.")
        if prov.get("synthetic") is False:
            parts.append("**Data type:** real CT.")
        self.blocks.append(Para(" ".join(parts) or "The provenance section of results.json is empty.",
                                css="provenance"))

    def _model_cell(self, row: dict) -> Cell:
        sub = " ".join(x for x in (row.get("trainer"), row.get("configuration")) if x) or None
        return Cell(row["label"], sub=sub)

    def _metric_cells(self, rows: list[dict], deltas: bool = False) -> list[list[Cell]]:
        """mean ± std cells of the 8 segmentation metrics, best mean of each column bold."""
        keys = [(s, k) for s in tables.STRUCTURES for k in tables.SEG_METRICS]
        best = {}
        for s, k in keys:
            values = [r["metrics"][s][k]["mean"] for r in rows if _finite(r["metrics"][s][k]["mean"])]
            # a column where every row ties has no best
            best[(s, k)] = max(values) if len(rows) > 1 and values and min(values) < max(values) else None
        out = []
        for r in rows:
            cells = []
            for s, k in keys:
                st = r["metrics"][s][k]
                subs = []
                if deltas and r.get("delta"):
                    subs.append("Δ " + fmt_delta(r["delta"][s][k]))
                if st["n_nan"]:
                    subs.append(f"[{st['n_nan']} undefined]")
                cells.append(Cell(fmt_mean_std(st), sub=" ".join(subs) or None,
                                  strong=best[(s, k)] is not None and st["mean"] == best[(s, k)]))
            out.append(cells)
        return out

    @staticmethod
    def _seg_header() -> tuple[list[str], list[str], list[tuple[str, int]]]:
        metrics = [SEG_HEADERS[k] for k in tables.SEG_METRICS]
        full = ["Model", "Cases"] + [f"Liver {h}" for h in metrics] + [f"Tumour {h}" for h in metrics]
        short = ["Model", "Cases"] + metrics + metrics
        return full, short, [("", 2), ("Liver", 4), ("Tumour", 4)]

    def _tests_table(self, anchor: str, caption: str, rows: list[dict], key: str, first: str,
                     notes: list[str]) -> Table:
        """Paired tests on per-case tumour and liver Dice: pairs, Δ, t-test p, Wilcoxon p."""
        body = []
        for r in rows:
            tests = r[key]
            cells: list = [self._model_cell(r)]
            if tests is None:
                cells += [Cell(first)] + [Cell("—")] * 6
            else:
                cells.append(str(tests["n_paired_cases"]))
                for metric in tables.TEST_METRICS:
                    t = tests[metric]
                    cells += [fmt_delta(t["mean_difference"]), fmt_p(t["t_pvalue"]), fmt_p(t["wilcoxon_pvalue"])]
            body.append(cells)
        full = ["Model", "Paired cases", "Tumour Dice Δ", "Tumour Dice t-test p", "Tumour Dice Wilcoxon p",
                "Liver Dice Δ", "Liver Dice t-test p", "Liver Dice Wilcoxon p"]
        short = ["Model", "Paired cases", "Δ mean", "t-test p", "Wilcoxon p", "Δ mean", "t-test p", "Wilcoxon p"]
        return Table(anchor, caption, full, body, groups=[("", 2), ("Tumour Dice", 3), ("Liver Dice", 3)],
                     html_header=short, notes=notes + self._small_n_note(rows, key))

    @staticmethod
    def _extent_table(rows: list[dict]) -> Table:
        """Data-set figures per model: global Dice, lesions found by size, liver beyond the reference liver."""
        def found(r: dict, key: str) -> str:
            f, n = r["lesions"][key]["found"], r["lesions"][key]["n"]
            return f"{f}/{n} ({f / n:.0%})" if n else "none"

        split = rows[0]["lesions"]["split_mm"] if rows else 10.0
        body = [[Cell(r["label"]), fmt_num(r["liver_dice_global"]), fmt_num(r["tumour_dice_global"]),
                 found(r, "large"), found(r, "small"),
                 "—" if r["extent"]["n"] == 0 else str(r["extent"]["max_slices_beyond"]),
                 f"{r['extent']['cases_2_or_more']}/{r['extent']['n']}"] for r in rows]
        header = ["Model", "Liver Dice (global)", "Tumour Dice (global)", f"Lesions >= {split:g} mm found",
                  f"Lesions < {split:g} mm found", "Liver slices beyond the liver (max)",
                  "Cases with liver 2+ slices beyond"]
        return Table("table1-extent", "Over the whole test set: global Dice, lesions found, liver beyond the liver",
                     header, body, notes=[
                         "Global Dice: 2 |ref ∩ pred| / (|ref| + |pred|) over all test voxels together (LiTS's "
                         "'Dice global'). A lesion counts as found when a predicted tumour component overlaps it "
                         f"(IoU > 0); sizes are equivalent-sphere diameters, split at {split:g} mm. Slices beyond: "
                         "axial slices with predicted liver above the reference liver's first or below its last "
                         "slice (the larger side, per case)."])

    @staticmethod
    def _small_n_note(rows: list[dict], key: str) -> list[str]:
        ns = [r[key]["tumour_dice"]["n"] for r in rows if r.get(key)]
        if ns and min(ns) < 6:
            n = min(ns)
            return [f"With {n} paired cases the smallest two-sided Wilcoxon p-value possible is "
                    f"{2 / 2 ** n:.3g}: it cannot reach 0.05 below 6 cases, and the t-test's normality cannot be "
                    "checked on so few."]
        return []

    def segmentation(self) -> None:
        self.heading(2, "Segmentation", "segmentation", "Segmentation")
        t1, abl = tables.table1(self.m), tables.ablation(self.m)
        self.data["table1"], self.data["ablation"] = t1, abl
        if not self.m.models:
            self.note_missing("segmentation", "No segmentation results: Table 1, the ablation table, Figures 3 "
                              "and 4 and the cost table need them.", COMMANDS["segmentation"])
            for key in ("figure3", "figure4"):
                self.data["figures"][key] = None
            self.data["cost"] = None
            return
        synthetic = (self.m.provenance or {}).get("synthetic")
        tag = " (synthetic phantoms, not LiTS)" if synthetic else ""
        self.heading(3, "Table 1: Segmentation performance" + tag, "table1", "Table 1")
        full, short, groups = self._seg_header()
        if t1 is None:
            self.note_missing("table1", "No model has `\"group\": \"table1\"` in results.json.",
                              COMMANDS["segmentation"])
        else:
            cells = self._metric_cells(t1["rows"])
            rows = [[self._model_cell(r), str(r["n_cases"])] + c
                    for r, c in zip(t1["rows"], cells, strict=True)]
            self.blocks.append(Table(
                "table1-metrics", None, full, rows, groups=groups, html_header=short,
                notes=["Mean ± standard deviation over the test cases of each model, from its summary.json "
                       "(`nnunet-liver evaluate`; population std over the cases where the metric is defined, "
                       "undefined cases counted in brackets). Best mean of each column in bold (none where all tie)."]))
            ref_how = "" if t1["reference_given"] else " (the first Table 1 model: results.json names no reference)"
            self.blocks.append(self._tests_table(
                "table1-tests", f"Paired tests vs the reference, {t1['reference']}", t1["rows"], "tests", "reference",
                [f"Paired t-test and Wilcoxon signed-rank test (two-sided) of each model against "
                 f"**{t1['reference']}**{ref_how} on per-case Dice over the cases both hold; Δ: mean difference, "
                 "model - reference. No correction for multiple comparisons."]))
            extent = tables.extent_and_lesions(self.m.group("table1"))
            self.data["table1_extent"] = extent
            if extent:
                table = self._extent_table(extent)
                left_out = [m.label for m in self.m.group("table1") if m.label not in {r["label"] for r in extent}]
                if left_out:
                    table.notes.append(f"Not shown: {', '.join(left_out)}, whose summary.json predates these "
                                       "figures; rerun `nnunet-liver evaluate` on its predictions.")
                self.blocks.append(table)

        self.heading(3, "Ablation study" + tag, "ablation", "Ablation")
        if abl is None:
            self.note_missing("ablation", "No ablation models (`\"group\": \"ablation\"`) in results.json.",
                              COMMANDS["ablation"])
        else:
            cells = self._metric_cells(abl["rows"], deltas=True)
            rows = [[self._model_cell(r), str(r["n_cases"])] + c
                    for r, c in zip(abl["rows"], cells, strict=True)]
            self.blocks.append(Table(
                "ablation-metrics", None, full, rows, groups=groups, html_header=short,
                notes=["Each row adds one component to the row above (in the order results.json lists them). "
                       "Mean ± std over test cases, with Δ: the change of the mean vs the previous row."]))
            self.blocks.append(self._tests_table(
                "ablation-tests", "Paired tests of each step vs the previous row", abl["rows"], "step_tests",
                "first step", ["Paired t-test and Wilcoxon signed-rank test (two-sided) of each row against the "
                               "row above on per-case Dice; Δ: mean difference, row - previous row."]))

        self.heading(3, "Figure 3: Qualitative comparison", "figure3", "Figure 3")
        try:
            info = figs.figure3(self.m, self.figure_dir / FIGURE_FILES["figure3"])
        except figs.FigureUnavailable as e:
            self.data["figures"]["figure3"] = None
            self.note_missing("figure3", f"Figure 3 not drawn: {e}.",
                              COMMANDS["dataset"] if self.m.images is None else COMMANDS["predictions"])
        else:
            self.data["figures"]["figure3"] = dict(file=f"figures/{FIGURE_FILES['figure3']}", **info)
            level, width = figs.SOFT_TISSUE_WINDOW
            cases = ", ".join(f"{c['case']} (z = {c['slice']}, largest {c['chosen_by']} area)" for c in info["cases"])
            self.figure("figure3", f"Figure 3: Test cases {cases}: CT (soft-tissue window, level {level:g} HU, "
                        f"width {width:g} HU), ground truth, then each model's prediction on the same axial slice "
                        "(radiological view, cropped around the liver). Green: liver, red: tumour; bottom left "
                        "of each prediction: that case's tumour (T) and liver (L) Dice from summary.json.",
                        "CT slices with ground truth and predicted liver and tumour masks")

        self.heading(3, "Figure 4: Segmentation metrics", "figure4", "Figure 4")
        if t1 is None:
            self.data["figures"]["figure4"] = None
            self.note_missing("figure4", "Figure 4 needs Table 1 models.", COMMANDS["segmentation"])
        else:
            path = self.figure("figure4", "Figure 4: Liver and tumour Dice, IoU, sensitivity and specificity of the "
                               "Table 1 models (bars: mean over test cases; error bars: std; outlined: the "
                               "reference).", "grouped bar chart of segmentation metrics")
            figs.figure4(t1, path)
            self.data["figures"]["figure4"] = dict(file=f"figures/{path.name}")
        self.cost()

    def cost(self) -> None:
        self.heading(3, "Cost table", "cost", "Cost")
        c = tables.cost(self.m)
        self.data["cost"] = c
        if c is None:
            self.note_missing("cost", "No cost figures (parameters, FLOPs, time per case) in results.json.",
                              COMMANDS["cost"])
            return
        base = c["baseline"]

        def cell(row, key, fmt):
            v = row.get(key)
            sub = None
            if row["ratio"] is not None and key in tables.COST_RATIO_KEYS and _finite(row["ratio"].get(key)):
                sub = f"{fmt_ratio(row['ratio'][key])} {base}"
            return Cell(fmt(v) if v is not None else "—", sub=sub)

        rows = [[self._model_cell(r), cell(r, "params", fmt_int), cell(r, "flops_per_voxel", fmt_si),
                 cell(r, "seconds_per_case", fmt_seconds), cell(r, "train_seconds", fmt_seconds),
                 Cell(fmt_int(r["iterations"]) if r.get("iterations") is not None else "—"),
                 Cell(" × ".join(map(str, r["patch_size"])) if r.get("patch_size") else "—")] for r in c["rows"]]
        device = (self.m.provenance or {}).get("device")
        notes = [("Below each value: its ratio to the " + f"**{base}** row." if base else
                  "No 3D U-Net row (set `segmentation.cost_baseline`), so no ratios.")
                 + " FLOPs: forward pass per output voxel (convolutions and matrix products, 2 per multiply-add). "
                 + (f"Times measured on {device}." if device else "Device of the times not stated.")
                 + " — : not given in results.json."]
        self.blocks.append(Table("cost-table", None, ["Model", "Parameters", "FLOPs per voxel",
                                                            "Seconds per case", "Training seconds", "Iterations",
                                                            "Patch size"], rows, notes=notes))

    def real_ct(self) -> None:
        self.heading(2, "Phantom to real: one real CT", "real-ct", "Real CT")
        r = tables.real_ct(self.m)
        self.data["real_ct"] = r
        if r is None:
            self.data["figures"]["real_ct"] = None
            self.note_missing("real_ct", "No real CT in results.json: nothing here says whether the models "
                              "segment a real CT's liver.", COMMANDS["real_ct"])
            return
        rct = self.m.real_ct
        model = f"**{r['model']}**" if r["model"] else "The model"
        folder = f" (`{self.rel(rct.model_folder)}`)" if rct.model_folder is not None else ""
        name = r["label"] or r["case"]
        self.blocks.append(Para(
            f"**{name}**, case `{r['case']}`: {model}{folder} segmented it with `nnunet-liver predict`, and "
            f"`nnunet-liver evaluate` compared that with the reference mask (`{self.rel(rct.evaluation)}`)."))
        target, dice = r["target"], r["liver"]["dice"]
        verdict = {True: "met", False: "not met", None: "not measured"}[target["met"]]
        self.blocks.append(Para(f"**Target: liver Dice ≥ {target['threshold']:.2f}: {verdict}** (liver Dice "
                                f"{fmt_num(dice)}).", css=f"verdict {verdict.replace(' ', '-')}"))

        def ml(v):
            return f"{v:,.1f}" if _finite(v) else "n/a"

        def mm(v):
            return f"{v:.1f}" if _finite(v) else "n/a"

        rows = [[Cell(s.capitalize()), fmt_num(r[s]["dice"]), fmt_num(r[s]["iou"]), fmt_num(r[s]["sensitivity"]),
                 fmt_num(r[s]["specificity"]), ml(r[s]["reference_ml"]), ml(r[s]["prediction_ml"]),
                 f"{r[s]['rvd'] * 100:+.1f}%" if _finite(r[s]["rvd"]) else "n/a", mm(r[s]["assd"]),
                 mm(r[s]["hd95"])] for s in tables.STRUCTURES]
        voxel = f"{r['voxel_ml'] * 1000:.2f} mm³" if _finite(r["voxel_ml"]) else "unknown"
        self.blocks.append(Table(
            "real-ct-metrics", None, ["Structure", "Dice", "IoU", "Sensitivity", "Specificity",
                                      "Reference volume (ml)", "Predicted volume (ml)", "Volume difference",
                                      "ASSD (mm)", "HD95 (mm)"], rows,
            notes=[f"From {self.rel(rct.evaluation)}: one case, so no mean, spread or test. Liver = every label "
                   f">= 1 (tumour included). Volumes: voxels × the voxel volume ({voxel}); volume difference: "
                   "(predicted - reference) / reference."]))
        les = r["lesions"]
        rows = []
        for key, counts in les["detection"].items():
            rows.append([Cell(key.replace("iou>", "IoU > ")), str(les["n_reference"]), str(les["n_prediction"]),
                         str(counts["tp"]), str(counts["fn"]), str(counts["fp"])])
        if rows:
            self.blocks.append(Table(
                "real-ct-lesions", "Lesion detection", ["Detected when", "Reference lesions", "Predicted lesions",
                                                        "Detected", "Missed", "False positives"], rows,
                notes=["Lesions: 3D connected components of the tumour label; overlapping lesions are merged "
                       "and counted once, as the LiTS scorer does."]))

        self.heading(3, "Figure: the real CT, reference and prediction", "real-ct-figure")
        path = self.figure_dir / FIGURE_FILES["real_ct"]
        try:
            info = figs.real_ct_figure(rct, path, title=f"{r['case']}: liver Dice {fmt_num(dice)}, tumour Dice "
                                       f"{fmt_num(r['tumour']['dice'])}" + (f" ({r['model']})" if r["model"] else ""))
        except figs.FigureUnavailable as e:
            self.data["figures"]["real_ct"] = None
            self.note_missing("real_ct_figure", f"The real-CT figure is not drawn: {e}.", COMMANDS["real_ct"])
        else:
            self.data["figures"]["real_ct"] = dict(file=f"figures/{path.name}", **info)
            level, width = figs.SOFT_TISSUE_WINDOW
            axial = ", ".join(str(z) for z in info["axial"])
            tumour = info["tumour_slice"] is not None
            self.figure("real_ct", f"{r['case']}, CT in a soft-tissue window (level {level:g} HU, width {width:g} "
                        f"HU): axial slices z = {axial} (superior first; a quarter and three quarters down the "
                        "reference liver, and " + ("the largest reference tumour area" if tumour else "its middle")
                        + ") in the radiological view (patient's right on the left, anterior up), and the coronal "
                        f"slice through the reference {'tumour' if tumour else 'liver'}'s centre (y = "
                        f"{info['coronal']}, superior up). Yellow: reference, blue: prediction; solid: liver, dashed: "
                        "tumour.", "real CT slices with reference and predicted liver and tumour contours")

        self.heading(3, "What this shows and what it does not", "real-ct-meaning")
        synthetic = (self.m.provenance or {}).get("synthetic")
        trained = ("The model was trained on synthetic phantoms only and was never trained or tuned on this CT: "
                   "it is a check, not a training or validation case." if synthetic else
                   "This check assumes that the model was never trained or tuned on this CT; results.json does not "
                   "record it.")
        if target["met"] is None:
            outcome = "Its liver Dice is not defined, so this case says nothing either way."
        elif synthetic:
            outcome = (f"Its liver Dice ({fmt_num(dice)}) says whether what the phantoms teach carries over to the "
                       "liver of a real CT: " +
                       (f"here it does, at the {target['threshold']:.2f} target or above." if target["met"] else
                        f"here it does not (target {target['threshold']:.2f}): this model, trained on phantoms with "
                        "the budget stated at the top, did not give a usable liver on this CT. That alone does not "
                        "separate what phantoms cannot teach from what a short training did not learn."))
        else:
            outcome = (f"Its liver Dice ({fmt_num(dice)}) is {'at or above' if target['met'] else 'below'} the "
                       f"{target['threshold']:.2f} target.")
        self.blocks.append(Para(f"**What it shows.** One real CT, {name}, with a reference liver and tumour mask. "
                                f"{trained} {outcome}"))
        n = les["n_reference"]
        lesions = ("One lesion" if n == 1 else f"{n} lesions in one CT" if isinstance(n, int) and n > 1 else
                   "One CT")
        self.blocks.append(Para(
            "**What it does not show.** One case gives no spread, no confidence interval and no comparison between "
            f"models: another CT could land elsewhere. {lesions} cannot estimate tumour performance; the tumour "
            "Dice and detection above are a single observation. This is not a LiTS result and must not be "
            "compared with the paper's tables."))

    def classification(self) -> None:
        self.heading(2, "Lesion classification", "classification", "Classification")
        t2 = tables.table2(self.m)
        self.data["table2"] = t2
        if t2 is None:
            self.note_missing("classification", "No classification results: Table 2 and Figures 5, 6 and 7 need "
                              "them.", COMMANDS["classification"])
            for key in ("figure5", "figure6", "figure7"):
                self.data["figures"][key] = None
            return
        synthetic = (self.m.provenance or {}).get("synthetic")
        tag = " (synthetic phantoms, not LiTS)" if synthetic else ""
        preset = f", preset {self.m.classification_preset}" if self.m.classification_preset else ""
        self.heading(3, "Table 2: Classification performance" + tag, "table2", "Table 2")
        heads = [CLS_HEADERS[k] for k in tables.CLS_METRICS]
        names = {r["model"]: r["name"] for r in t2["rows"]}
        ref = t2["reference"]

        def name_cell(r):
            return Cell(r["name"], sub=f"{r['model']}, {len(r['folds'] or [])} folds, {r['n_lesions']} lesions "
                        f"({r['n_malignant']} malignant)")

        best = {}
        for k in tables.CLS_METRICS:
            vals = [r["mean"][k] for r in t2["rows"] if _finite(r["mean"][k])]
            best[k] = max(vals) if vals and len(t2["rows"]) > 1 and min(vals) < max(vals) else None
        rows = [[name_cell(r)] + [Cell(fmt_mean_std({"mean": r["mean"][k], "std": r["std"][k]}),
                                       strong=best[k] is not None and r["mean"][k] == best[k])
                                  for k in tables.CLS_METRICS] for r in t2["rows"]]
        self.blocks.append(Table("table2-folds", "Benign vs malignant lesions: mean ± std over cross-validation "
                                 "folds", ["Model"] + heads, rows,
                                 notes=[f"From table2.json (`nnunet-liver classify evaluate`{preset}): metrics of "
                                        "each fold's test lesions, mean ± standard deviation over folds; best mean "
                                        "in bold."]))
        rows = [[name_cell(r)] + [fmt_ci(r["pooled"][k], r["pooled_ci"][k]) for k in tables.CLS_METRICS]
                for r in t2["rows"]]
        self.blocks.append(Table("table2-pooled", "Pooled: all folds' test lesions together, with 95% "
                                 "bootstrap intervals", ["Model"] + heads, rows,
                                 notes=["Percentile bootstrap over patients (whole patients resampled), as "
                                        "table2.json holds them."]))
        rows = []
        for r in t2["rows"]:
            t = r["tests"]
            if t is None:
                continue
            d = t["delong"]
            rows.append([Cell(r["name"]), str(len(t["folds"] or [])), fmt_delta(t["auc_ttest"]["mean_diff"]),
                         fmt_p(t["auc_ttest"]["p"]), fmt_delta(t["accuracy_ttest"]["mean_diff"]),
                         fmt_p(t["accuracy_ttest"]["p"]),
                         f"{fmt_num(d['auc'])} vs {fmt_num(d['auc_reference'])} (n = {d['n']})", fmt_p(d["p"])])
        if rows:
            self.blocks.append(Table(
                "table2-tests", f"Paired tests vs the reference, {names.get(ref, ref)}",
                ["Model", "Folds", "ΔAUC (folds)", "t-test p (AUC)", "ΔAccuracy (folds)", "t-test p (accuracy)",
                 "Pooled AUC vs reference", "DeLong p"], rows,
                notes=["Δ: model - reference, mean over the folds both finished; paired t-test across folds (the "
                       "paper's test; needs two folds or more) and DeLong's test of the pooled AUCs on the lesions "
                       "both scored."]))
        else:
            self.blocks.append(Note("info", f"Only {names.get(ref, ref)} was evaluated: no paired tests."))

        src = self.m.classification_dir
        self.heading(3, "Figure 5: Attention", "figure5", "Figure 5")
        if (src / "attention.png").is_file():
            path = self.figure("figure5", "Figure 5: Channel-attention weights of the hybrid 3D CNN (benign vs "
                               "malignant test lesions) and Grad-CAM heat maps over axial slices of a malignant and "
                               "a benign crop (attention.png of `nnunet-liver classify evaluate`).",
                               "attention weights and Grad-CAM heat maps")
            shutil.copyfile(src / "attention.png", path)
            att = (self.m.table2 or {}).get("attention") or {}
            self.data["figures"]["figure5"] = dict(file=f"figures/{path.name}", source=self.rel(src / "attention.png"),
                                                   lesions=att.get("lesions"))
        else:
            self.data["figures"]["figure5"] = None
            self.note_missing("figure5", f"Figure 5 not drawn: {self.rel(src)} holds no attention.png.",
                              COMMANDS["attention"])

        self.heading(3, "Figure 6: Classification metrics", "figure6", "Figure 6")
        path = self.figure("figure6", "Figure 6: Table 2 metrics per model (bars: mean over folds; error bars: "
                           "std; outlined: the reference).", "grouped bar chart of classification metrics")
        figs.figure6(t2, path)
        self.data["figures"]["figure6"] = dict(file=f"figures/{path.name}")

        self.heading(3, "Figure 7: ROC curves", "figure7", "Figure 7")
        path = self.figure_dir / FIGURE_FILES["figure7"]
        caption = ("Figure 7: ROC curves of the pooled cross-validation test lesions, AUC with 95% bootstrap "
                   "interval in the legend")
        if (src / "roc.png").is_file():
            shutil.copyfile(src / "roc.png", path)
            self.figure("figure7", caption + " (roc.png of `nnunet-liver classify evaluate`).", "ROC curves")
            self.data["figures"]["figure7"] = dict(file=f"figures/{path.name}", source=self.rel(src / "roc.png"))
        else:
            try:
                figs.roc_from_runs(self.m.table2, path)
            except figs.FigureUnavailable as e:
                self.data["figures"]["figure7"] = None
                self.note_missing("figure7", f"Figure 7 not drawn: {self.rel(src)} holds no roc.png, and {e}.",
                                  COMMANDS["roc"])
            else:
                self.figure("figure7", caption + " (re-plotted from the run folders table2.json lists, because "
                            "roc.png is missing).", "ROC curves")
                self.data["figures"]["figure7"] = dict(file=f"figures/{path.name}", source="run_dirs")

    def inputs(self) -> None:
        self.heading(2, "Inputs and the commands that produced them", "inputs", "Inputs")
        m = self.m
        made_by = (m.provenance or {}).get("command") or "nnunet-liver demo (or by hand)"
        items = [f"`{self.rel(m.path)}`: the results manifest, by `{made_by}`."]
        inputs = [dict(what="manifest", path=str(m.path), command=made_by)]
        synthetic = (m.provenance or {}).get("synthetic")
        data_cmd = "nnunet-liver synth" if synthetic else "nnunet-liver convert lits|ircadb (or nnunet-liver synth)"
        for key, p in (("test images", m.images), ("test labels", m.labels)):
            if p is not None:
                items.append(f"`{self.rel(p)}`: {key} (`{data_cmd}`).")
                inputs.append(dict(what=key, path=str(p), command=data_cmd))
        for model in m.models:
            s = model.summary
            ref_dir, pred_dir = s.get("reference_dir", "LABELS"), s.get("prediction_dir", "PRED")
            cmd = (f"nnunet-liver evaluate {self.rel(ref_dir)} {self.rel(pred_dir)} "
                   f"-o {self.rel(model.evaluation.parent)}")
            items.append(f"`{self.rel(model.evaluation)}`: {model.label} ({model.group}), by `{cmd}`.")
            inputs.append(dict(what=f"evaluation of {model.label} ({model.group})", path=str(model.evaluation),
                               command=cmd))
            if model.predictions is not None:
                pcmd = (f"nnUNetv2_predict -i {self.rel(m.images) if m.images else 'IMAGES'} -o "
                        f"{self.rel(model.predictions)} -d DATASET -c {model.configuration or 'CONFIGURATION'} "
                        f"-tr {model.trainer or 'TRAINER'}")
                items.append(f"`{self.rel(model.predictions)}`: predictions of {model.label}, by `{pcmd}`.")
                inputs.append(dict(what=f"predictions of {model.label}", path=str(model.predictions), command=pcmd))
        if m.real_ct is not None:
            items += self._real_ct_inputs(inputs)
        if m.classification_dir is not None:
            preset = f" --preset {m.classification_preset}" if m.classification_preset else ""
            cmd = f"nnunet-liver classify evaluate{preset}"
            items.append(f"`{self.rel(m.classification_dir)}`: table2.json, roc.png, attention.png, by `{cmd}`; "
                         "its inputs, the run folders of `nnunet-liver classify train`: " + ", ".join(
                             f"{k} `{self.rel(v)}`" for k, v in (m.table2.get("run_dirs") or {}).items()) + ".")
            inputs.append(dict(what="classification evaluation", path=str(m.classification_dir), command=cmd,
                               run_dirs=m.table2.get("run_dirs")))
        self.blocks.append(ListBlock(items))
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.blocks.append(Para(f"Rendered by `nnunet-liver report {self.rel(m.path)}` (nnunet-liver {_version()}) "
                                f"on {now}. Every number of the tables is in report_data.json beside this page."))
        self.data["inputs"] = inputs


    def _real_ct_inputs(self, inputs: list[dict]) -> list[str]:
        rct, items = self.m.real_ct, []
        model = f"-m {self.rel(rct.model_folder)}" if rct.model_folder is not None else "-m MODEL_FOLDER"
        predict = f"nnunet-liver predict -i {self.rel(rct.image) if rct.image else 'CT'} -o PRED {model} -f 0"
        s = rct.summary
        evaluate = (f"nnunet-liver evaluate {self.rel(s.get('reference_dir', 'REF_DIR'))} "
                    f"{self.rel(s.get('prediction_dir', 'PRED_DIR'))} -o {self.rel(rct.evaluation.parent)}")
        for what, p, cmd in (("real CT", rct.image, None), ("real CT reference", rct.reference, None),
                             ("real CT prediction (segmentation.nii.gz)", rct.prediction, predict),
                             ("real CT evaluation", rct.evaluation, evaluate)):
            if p is None:
                continue
            items.append(f"`{self.rel(p)}`: {what}" + (f", by `{cmd}`." if cmd else "."))
            inputs.append(dict(what=what, path=str(p), command=cmd))
        return items


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunet-liver")
    except PackageNotFoundError:
        return "not installed"


def _check_out_dir(manifest: Manifest, out: Path) -> None:
    """Refuse an output folder whose replacement would delete an input."""
    out = out.resolve()
    paths = [manifest.path, manifest.images, manifest.labels, manifest.classification_dir]
    for model in manifest.models:
        paths += [model.evaluation, model.predictions]
    if manifest.real_ct is not None:
        rct = manifest.real_ct
        paths += [rct.evaluation, rct.image, rct.reference, rct.prediction, rct.model_folder]
    for p in paths:
        if p is None:
            continue
        p = Path(p).resolve()
        if p == out or out in p.parents:
            raise ManifestError(f"output folder {out} holds the input {p}; choose another output folder")


def build_report(results: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 overwrite: bool = False) -> ReportResult:
    """Render the report of a results manifest.

    Args:
        results: ``results.json`` or the folder holding it.
        out_dir: output folder (default ``<manifest folder>/report``).
        overwrite: replace an existing output folder.

    Raises:
        ManifestError: bad manifest or input file, or an output folder holding an input.
        nnunet_liver.data.io.OutputExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    from nnunet_liver.data.io import json_safe, staged_dir

    manifest = load_manifest(results)
    out = Path(out_dir) if out_dir is not None else manifest.folder / "report"
    _check_out_dir(manifest, out)
    title = manifest.title or "nnunet-liver results"
    with staged_dir(out, overwrite=overwrite) as tmp:
        figure_dir = tmp / "figures"
        figure_dir.mkdir()
        b = _Builder(manifest, figure_dir)
        b.data.update(title=title, manifest=str(manifest.path))
        b.provenance()
        b.segmentation()
        b.real_ct()
        b.classification()
        b.inputs()
        b.data["missing"] = b.missing
        (tmp / "report.html").write_text(to_html(title, b.blocks, b.toc), encoding="utf-8")
        (tmp / "report.md").write_text(to_markdown(title, b.blocks), encoding="utf-8")
        (tmp / "report_data.json").write_text(json.dumps(json_safe(b.data), indent=1, ensure_ascii=False,
                                                         allow_nan=False) + "\n", encoding="utf-8")
    return ReportResult(out, b.data, b.missing)
