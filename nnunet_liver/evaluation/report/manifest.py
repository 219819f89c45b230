"""The results manifest (``results.json``) that ``nnunet-liver report`` reads: load, validate, resolve paths.

Format ``nnunet_liver.results/1``; every section but ``format`` is optional, and a report is rendered from
whatever is there. Paths are relative to the manifest's folder (absolute paths are allowed)::

    {
     "format": "nnunet_liver.results/1",
     "title": "nnunet-liver demo",
     "provenance": {"data": "...", "budget": "...", "device": "cpu", "machine": {"cpu": "...", ...},
                    "created": "2026-11-27T04:00:00Z", "synthetic": true,
                    "command": "the command that produced the results, e.g. nnunet-liver demo --out DIR"},
     "dataset": {"images": "imagesTs folder (<case>_0000.nii.gz)", "labels": "labelsTs folder (<case>.nii.gz)"},
     "segmentation": {
        "reference": "DualStream",              # label of the model the paired tests compare against
        "cost_baseline": "3D U-Net",            # label of the row the cost ratios divide by (default: see below)
        "models": [{"label": "DualStream", "group": "table1" | "ablation",
                    "trainer": "...", "configuration": "...",
                    "predictions": "folder of <case>.nii.gz", "evaluation": "summary.json of nnunet-liver evaluate",
                    "cost": {"params", "flops_per_voxel", "patch_size", "seconds_per_case", "train_seconds",
                             "iterations"}}, ...]},
     "classification": {"evaluation": "folder of nnunet-liver classify evaluate", "preset": "cpu"},
     "real_ct": {"label": "crlm_liver_ct (TCIA CRLM, radiologist mask)",  # one real CT outside every training set
                 "model": "DualStream", "model_folder": "nnU-Net model folder given to nnunet-liver predict -m",
                 "image": "the CT", "reference": "its label (0/1/2)", "prediction": "the predicted label map",
                 "evaluation": "summary.json of nnunet-liver evaluate (exactly one case)"}
    }

In ``real_ct`` only ``evaluation`` is required; the figure needs ``image``, ``reference`` and ``prediction``.
Unknown keys are errors (a misspelt key would otherwise drop a section silently). Every error names the
manifest file and the key.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "nnunet_liver.results/1"
MANIFEST_NAME = "results.json"
GROUPS = ("table1", "ablation")
COST_KEYS = ("params", "flops_per_voxel", "patch_size", "seconds_per_case", "train_seconds", "iterations")
PROVENANCE_KEYS = ("data", "budget", "postprocessing", "device", "machine", "created", "synthetic", "command")
TOP_KEYS = ("format", "title", "provenance", "dataset", "segmentation", "classification", "real_ct")
MODEL_KEYS = ("label", "group", "trainer", "configuration", "predictions", "evaluation", "cost")
REAL_CT_KEYS = ("label", "model", "model_folder", "image", "reference", "prediction", "evaluation")
CLASSIFICATION_FILES = ("table2.json", "table2.md", "roc.png", "metrics.png", "attention.png")


class ManifestError(ValueError):
    """The manifest or a file it names cannot be used; the message names the file and the problem."""


@dataclass
class SegmentationModel:
    """One row of Table 1 or of the ablation table."""

    label: str
    group: str
    evaluation: Path
    summary: dict
    trainer: str | None = None
    configuration: str | None = None
    predictions: Path | None = None
    cost: dict = field(default_factory=dict)


@dataclass
class RealCT:
    """One real CT predicted by a model that never saw it (the report's "Phantom to real" section)."""

    evaluation: Path
    summary: dict
    case: str  # the one case of ``summary``
    label: str | None = None
    model: str | None = None
    model_folder: Path | None = None
    image: Path | None = None
    reference: Path | None = None
    prediction: Path | None = None


@dataclass
class Manifest:
    """A validated ``results.json`` with absolute paths and the loaded evaluation files."""

    path: Path
    title: str | None = None
    provenance: dict | None = None
    images: Path | None = None
    labels: Path | None = None
    models: list[SegmentationModel] = field(default_factory=list)
    reference: str | None = None
    reference_given: bool = False
    cost_baseline: str | None = None
    classification_dir: Path | None = None
    classification_preset: str | None = None
    table2: dict | None = None
    real_ct: RealCT | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    def group(self, name: str) -> list[SegmentationModel]:
        return [m for m in self.models if m.group == name]

    def model(self, label: str) -> SegmentationModel | None:
        """The first entry with this label (table1 entries come before ablation entries of the same label)."""
        ordered = self.group("table1") + self.group("ablation")
        return next((m for m in ordered if m.label == label), None)

    def unique_models(self) -> list[SegmentationModel]:
        """One entry per label: Table 1 rows first, then ablation rows not already in Table 1."""
        seen, out = set(), []
        for m in self.group("table1") + self.group("ablation"):
            if m.label not in seen:
                seen.add(m.label)
                out.append(m)
        return out


def find_manifest(results: str | os.PathLike) -> Path:
    """``results.json`` itself, or the one inside a folder."""
    p = Path(results)
    if p.is_dir():
        p = p / MANIFEST_NAME
        if not p.is_file():
            raise ManifestError(f"{results}: no {MANIFEST_NAME} in this folder")
    elif not p.is_file():
        raise ManifestError(f"{results}: no such file or folder")
    return p.resolve()


class _Checker:
    """Type checks with messages of the form '<file>: <key>: <problem>'."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be an object, got {_kind(value)}")
        if allowed is not None:
            unknown = [k for k in value if k not in allowed]
            if unknown:
                raise self.fail(key, f"unknown key {unknown[0]!r} (expected one of: {', '.join(allowed)})")
        return value

    def string(self, value: Any, key: str, *, optional: bool = True) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {_kind(value)}")
        return value

    def number(self, value: Any, key: str) -> float | int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number or null, got {_kind(value)}")
        if value < 0:
            raise self.fail(key, f"must not be negative, got {value}")
        return value

    def path_(self, value: Any, key: str, *, kind: str) -> Path:
        """A path relative to the manifest's folder that must exist (``kind``: 'file', 'folder' or 'any')."""
        text = self.string(value, key, optional=False)
        p = Path(os.path.expanduser(text))
        if not p.is_absolute():
            p = self.path.parent / p
        if kind == "folder" and not p.is_dir():
            raise self.fail(key, f"{text} is not a folder" + (" (it is a file)" if p.is_file() else ""))
        if kind == "file" and not p.is_file():
            raise self.fail(key, f"{text} does not exist" if not p.exists() else f"{text} is not a file")
        if kind == "any" and not p.exists():
            raise self.fail(key, f"{text} does not exist")
        return p


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: f"the string {value!r}", bool: f"{str(value).lower()}"}.get(
        type(value), repr(value))


def _read_json(path: Path, what: str, checker: _Checker, key: str) -> dict:
    """A JSON object from ``path``; ``key``: the manifest key that names the file ('' for the manifest)."""
    named = f"; named by {checker.path} {key}" if key else ""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}){named}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e}){named}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: must be {what}, got {_kind(data)}{named}")
    return data


def _check_summary(summary: dict, path: Path, checker: _Checker, key: str) -> None:
    from nnunet_liver.evaluation.lits import STRUCTURES

    problem = None
    if not isinstance(summary.get("cases"), dict) or not isinstance(summary.get("aggregate"), dict):
        problem = "no 'cases' and 'aggregate' objects"
    elif not summary["cases"]:
        problem = "no cases"
    else:
        for case, v in summary["cases"].items():
            if not isinstance(v, dict) or any(not isinstance(v.get(s), dict) for s in STRUCTURES):
                problem = f"case {case!r} has no liver/tumour metrics"
                break
            missing = [f"{s}.{m}" for s in STRUCTURES for m in ("dice", "iou", "sensitivity", "specificity")
                       if m not in v[s]]
            if missing:
                problem = f"case {case!r} lacks {missing[0]}"
                break
    if problem:
        raise ManifestError(f"{path}: not a summary.json of nnunet-liver evaluate ({problem}); "
                            f"named by {checker.path} {key}")


def _check_table2(table2: dict, path: Path, checker: _Checker) -> None:
    models = table2.get("models")
    problem = None
    if not isinstance(models, dict) or not models:
        problem = "no 'models'"
    else:
        for name, m in models.items():
            if not isinstance(m, dict) or any(not isinstance(m.get(k), dict) for k in ("mean", "std", "pooled")):
                problem = f"model {name!r} lacks mean/std/pooled"
                break
    if problem is None and not isinstance(table2.get("comparisons", {}), dict):
        problem = "'comparisons' is not an object"
    if problem:
        raise ManifestError(f"{path}: not a table2.json of nnunet-liver classify evaluate ({problem}); "
                            f"named by {checker.path} classification.evaluation")


def default_cost_baseline(models: list[SegmentationModel]) -> str | None:
    """The 3D U-Net row: trainer LiverUNetTrainer* in 3d_fullres, else a label that reads '3D U-Net'."""
    for m in models:
        trainer = (m.trainer or "").split("__")[0]
        if trainer.startswith("LiverUNetTrainer") and "RWA" not in trainer and m.configuration == "3d_fullres":
            return m.label
    for m in models:
        if m.label.lower().replace(" ", "").replace("-", "").replace("_", "") in ("3dunet", "unet3d"):
            return m.label
    return None


def load_manifest(results: str | os.PathLike) -> Manifest:
    """Read and validate a results manifest (a file, or the folder holding ``results.json``).

    Loads the evaluation files it names (summary.json per model, table2.json) and checks their shape, so
    that rendering never fails half-way on a bad input.

    Raises:
        ManifestError: naming the file (the manifest, or the file it points to) and the problem.
    """
    path = find_manifest(results)
    c = _Checker(path)
    data = _read_json(path, "a JSON object", c, "")
    c.mapping(data, "", TOP_KEYS)
    if data.get("format") != FORMAT:
        found = data.get("format")
        raise c.fail("format", f"expected {FORMAT!r}, got {found!r}" if found is not None
                     else f"missing (expected {FORMAT!r})")
    m = Manifest(path=path, title=c.string(data.get("title"), "title"))

    if data.get("provenance") is not None:
        prov = dict(c.mapping(data["provenance"], "provenance", PROVENANCE_KEYS))
        for k in ("data", "budget", "postprocessing", "device", "created", "command"):
            c.string(prov.get(k), f"provenance.{k}")
        machine = prov.get("machine")
        if machine is not None and not isinstance(machine, (dict, str)):
            raise c.fail("provenance.machine", f"must be an object or a string, got {_kind(machine)}")
        if prov.get("synthetic") is not None and not isinstance(prov["synthetic"], bool):
            raise c.fail("provenance.synthetic", f"must be true or false, got {_kind(prov['synthetic'])}")
        m.provenance = prov

    if data.get("dataset") is not None:
        ds = c.mapping(data["dataset"], "dataset", ("images", "labels"))
        if ds.get("images") is not None:
            m.images = c.path_(ds["images"], "dataset.images", kind="folder")
        if ds.get("labels") is not None:
            m.labels = c.path_(ds["labels"], "dataset.labels", kind="folder")

    if data.get("segmentation") is not None:
        seg = c.mapping(data["segmentation"], "segmentation", ("reference", "cost_baseline", "models"))
        models = seg.get("models")
        if not isinstance(models, list) or not models:
            raise c.fail("segmentation.models", f"must be a non-empty list, got {_kind(models)}")
        seen = set()
        for i, entry in enumerate(models):
            key = f"segmentation.models[{i}]"
            c.mapping(entry, key, MODEL_KEYS)
            label = c.string(entry.get("label"), f"{key}.label", optional=False)
            group = entry.get("group", "table1")
            if group not in GROUPS:
                raise c.fail(f"{key}.group", f"must be 'table1' or 'ablation', got {group!r}")
            if (label, group) in seen:
                raise c.fail(f"{key}.label", f"{label!r} appears twice in group {group!r}")
            seen.add((label, group))
            if entry.get("evaluation") is None:
                raise c.fail(f"{key}.evaluation", "missing: the summary.json written by nnunet-liver evaluate")
            ev = c.path_(entry["evaluation"], f"{key}.evaluation", kind="any")
            if ev.is_dir():
                ev = ev / "summary.json"
                if not ev.is_file():
                    raise c.fail(f"{key}.evaluation", f"{entry['evaluation']} holds no summary.json")
            summary = _read_json(ev, "a summary.json of nnunet-liver evaluate", c, f"{key}.evaluation")
            _check_summary(summary, ev, c, f"{key}.evaluation")
            cost = {}
            if entry.get("cost") is not None:
                raw_cost = c.mapping(entry["cost"], f"{key}.cost", COST_KEYS)
                for k, v in raw_cost.items():
                    if k == "patch_size":
                        if v is not None and (not isinstance(v, list) or not v or not all(
                                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
                            raise c.fail(f"{key}.cost.patch_size", f"must be a list of positive integers, "
                                         f"got {_kind(v)}")
                    else:
                        c.number(v, f"{key}.cost.{k}")
                    if v is not None:
                        cost[k] = v
            m.models.append(SegmentationModel(
                label=label, group=group, evaluation=ev, summary=summary,
                trainer=c.string(entry.get("trainer"), f"{key}.trainer"),
                configuration=c.string(entry.get("configuration"), f"{key}.configuration"),
                predictions=(c.path_(entry["predictions"], f"{key}.predictions", kind="folder")
                             if entry.get("predictions") is not None else None),
                cost=cost))
        labels = [x.label for x in m.models]
        ref = c.string(seg.get("reference"), "segmentation.reference")
        if ref is not None:
            if ref not in labels:
                raise c.fail("segmentation.reference", f"{ref!r} is not the label of a model "
                             f"(labels: {', '.join(dict.fromkeys(labels))})")
            m.reference, m.reference_given = ref, True
        else:
            first = m.group("table1") or m.models
            m.reference = first[0].label
        base = c.string(seg.get("cost_baseline"), "segmentation.cost_baseline")
        if base is not None and base not in labels:
            raise c.fail("segmentation.cost_baseline", f"{base!r} is not the label of a model")
        m.cost_baseline = base if base is not None else default_cost_baseline(m.unique_models())

    if data.get("classification") is not None:
        cls = c.mapping(data["classification"], "classification", ("evaluation", "preset"))
        if cls.get("evaluation") is None:
            raise c.fail("classification.evaluation", "missing: the folder written by nnunet-liver classify evaluate")
        folder = c.path_(cls["evaluation"], "classification.evaluation", kind="any")
        if folder.is_file() and folder.name == "table2.json":
            folder = folder.parent
        if not (folder / "table2.json").is_file():
            raise c.fail("classification.evaluation", f"{cls['evaluation']} holds no table2.json "
                         "(written by nnunet-liver classify evaluate)")
        m.classification_dir = folder
        m.classification_preset = c.string(cls.get("preset"), "classification.preset")
        m.table2 = _read_json(folder / "table2.json", "a table2.json", c, "classification.evaluation")
        _check_table2(m.table2, folder / "table2.json", c)

    if data.get("real_ct") is not None:
        m.real_ct = _real_ct(data["real_ct"], c)
    return m


def _real_ct(entry: Any, c: _Checker) -> RealCT:
    c.mapping(entry, "real_ct", REAL_CT_KEYS)
    if entry.get("evaluation") is None:
        raise c.fail("real_ct.evaluation", "missing: the summary.json written by nnunet-liver evaluate")
    ev = c.path_(entry["evaluation"], "real_ct.evaluation", kind="any")
    if ev.is_dir():
        ev = ev / "summary.json"
        if not ev.is_file():
            raise c.fail("real_ct.evaluation", f"{entry['evaluation']} holds no summary.json")
    summary = _read_json(ev, "a summary.json of nnunet-liver evaluate", c, "real_ct.evaluation")
    _check_summary(summary, ev, c, "real_ct.evaluation")
    if len(summary["cases"]) != 1:
        raise ManifestError(f"{ev}: holds {len(summary['cases'])} cases ({', '.join(summary['cases'])}); the "
                            f"real-CT section shows one; named by {c.path} real_ct.evaluation")

    def path(key: str, kind: str) -> Path | None:
        return c.path_(entry[key], f"real_ct.{key}", kind=kind) if entry.get(key) is not None else None

    return RealCT(evaluation=ev, summary=summary, case=next(iter(summary["cases"])),
                  label=c.string(entry.get("label"), "real_ct.label"),
                  model=c.string(entry.get("model"), "real_ct.model"),
                  model_folder=path("model_folder", "folder"), image=path("image", "file"),
                  reference=path("reference", "file"), prediction=path("prediction", "file"))
