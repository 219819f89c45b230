"""Cohort tables from a batch ``predict`` output folder (one sub-folder per case, from one or many parts).

Two CSV tables, both sorted by case name:

- the lesion table (``cohort.csv``): one row per lesion; the case's own figures (liver and tumour volume,
  tumour burden, number of lesions) repeated on each of its rows, so that the table alone answers per-lesion
  and per-case questions. A case without lesions has one row with the lesion columns empty: every finished
  case appears;
- the case table (``cohort_cases.csv``): one row per case.

A case is finished when its folder holds ``findings.json`` (the pipeline moves the folder into place whole);
hidden ``.<case>.partial-*`` folders (a part still running, or killed) are counted, never read.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_liver.inference.report import LESION_COLUMNS

__all__ = ["CASE_COLUMNS", "COHORT_COLUMNS", "Cohort", "CohortError", "collect", "write_cohort"]

CASE_COLUMNS = (
    "case", "n_lesions", "n_small", "n_malignant", "liver_volume_ml", "tumour_volume_ml", "tumour_burden",
    "max_axial_diameter_mm", "input", "trainer", "configuration", "folds", "classifier", "n_warnings",
)
_CASE_IN_LESION_ROWS = ("liver_volume_ml", "tumour_volume_ml", "tumour_burden", "n_lesions")
COHORT_COLUMNS = ("case", *_CASE_IN_LESION_ROWS, *[c for c in LESION_COLUMNS if c != "case"])


class CohortError(ValueError):
    """A prediction folder that cannot be merged; the message names the folder or file."""


@dataclass
class Cohort:
    """The finished cases of a prediction folder.

    Attributes:
        findings: {case: findings.json content}, sorted by case.
        partial: hidden staging folders found (cases being written, or left by a killed run).
        missing: expected cases without a finished folder (only when the expected list was given).
    """

    findings: dict[str, dict] = field(default_factory=dict)
    partial: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def collect(folder: str | os.PathLike, expected: list[str] | None = None) -> Cohort:
    """Read every finished case folder of ``folder``.

    Args:
        expected: case names that should be there (e.g. the cases of the input folder).

    Raises:
        CohortError: not a folder, a findings.json that is not readable, or no finished case at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CohortError(f"{folder}: not a folder")
    cohort = Cohort()
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            if ".partial-" in child.name:
                cohort.partial.append(child.name)
            continue
        path = child / "findings.json"
        if not (child.is_dir() and path.is_file()):
            continue
        try:
            findings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CohortError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(findings, dict) or not isinstance(findings.get("lesions"), list):
            raise CohortError(f"{path}: not a findings.json of nnunet-liver predict (no lesion list)")
        cohort.findings[child.name] = findings
    if expected is not None:
        cohort.missing = sorted(set(expected) - set(cohort.findings))
    if not cohort.findings:
        raise CohortError(f"{folder}: no finished case (no <case>/findings.json from nnunet-liver predict)")
    return cohort


def _burden(f: dict) -> float | None:
    liver, tumour = f.get("liver_volume_ml"), f.get("tumour_volume_ml")
    if liver is None or tumour is None or not liver > 0:
        return None
    return round(tumour / liver, 6)


def case_row(case: str, f: dict) -> dict:
    lesions = f["lesions"]
    probs = [r["malignancy_prob"] for r in lesions if r.get("malignancy_prob") is not None]
    seg = (f.get("models") or {}).get("segmentation") or {}
    clf = (f.get("models") or {}).get("classifier")
    diameters = [r["axial_diameter_mm"] for r in lesions if r.get("axial_diameter_mm") is not None]
    return {
        "case": case, "n_lesions": len(lesions), "n_small": sum(1 for r in lesions if r.get("small")),
        "n_malignant": sum(p >= 0.5 for p in probs) if clf else None,
        "liver_volume_ml": f.get("liver_volume_ml"), "tumour_volume_ml": f.get("tumour_volume_ml"),
        "tumour_burden": _burden(f), "max_axial_diameter_mm": max(diameters) if diameters else None,
        "input": (f.get("input") or {}).get("path"), "trainer": seg.get("trainer"),
        "configuration": seg.get("configuration"), "folds": " ".join(map(str, seg.get("folds") or [])),
        "classifier": clf.get("checkpoint") if clf else None, "n_warnings": len(f.get("warnings") or []),
    }


def lesion_rows(case: str, f: dict) -> list[dict]:
    common = {"case": case, "liver_volume_ml": f.get("liver_volume_ml"),
              "tumour_volume_ml": f.get("tumour_volume_ml"), "tumour_burden": _burden(f),
              "n_lesions": len(f["lesions"])}
    if not f["lesions"]:
        return [common]
    return [{**common, **{k: r.get(k) for k in LESION_COLUMNS if k != "case"}} for r in f["lesions"]]


def _cell(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def _write_csv(path: Path, columns, rows, overwrite: bool) -> None:
    from nnunet_liver.data.io import staged_file

    with staged_file(path, overwrite=overwrite) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})


def cases_path(lesion_csv: str | os.PathLike) -> Path:
    """``cohort.csv`` -> ``cohort_cases.csv`` beside it."""
    p = Path(lesion_csv)
    return p.with_name(f"{p.stem}_cases{p.suffix or '.csv'}")


def write_cohort(cohort: Cohort, output: str | os.PathLike, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write the lesion table to ``output`` and the case table beside it (:func:`cases_path`); each file is
    moved into place when complete. Returns both paths.

    Raises:
        OutputExistsError: a table exists and ``overwrite`` is off (checked for both before writing).
    """
    from nnunet_liver.data.io import OutputExistsError

    output = Path(output)
    cases = cases_path(output)
    for p in (output, cases):
        if p.exists() and not overwrite:
            raise OutputExistsError(f"{p} exists (use --overwrite to replace it)")
    _write_csv(output, COHORT_COLUMNS, [r for c, f in cohort.findings.items() for r in lesion_rows(c, f)],
               overwrite)
    _write_csv(cases, CASE_COLUMNS, [case_row(c, f) for c, f in cohort.findings.items()], overwrite)
    return output, cases
